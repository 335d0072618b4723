"""ringctl: the operator's command line, a thin client of the ringd control socket.

Every command is one request (``ringd.protocol.Client.call``); the daemon validates
and decides, ringctl only builds the arguments and shows the answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
import tomllib
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem, get_completion_class
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ringd import __version__, protocol
from ringd.protocol import (
    MAX_BATCH,
    MAX_LINE,
    Client,
    RemoteError,
    Unreachable,
    default_socket_path,
)

from .live import LiveTable

if TYPE_CHECKING:
    from collections.abc import Iterator

# Results for people (and --json for programs) go to stdout, errors to stderr.
# Colour only on a terminal: rich's default.
console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4
EXIT_TIMEOUT = 5

# Error codes of the control protocol (ringd.errors) -> exit codes; others -> 1.
EXIT_CODES = {
    "invalid": EXIT_USAGE,
    "not_found": EXIT_NOT_FOUND,
    "timeout": EXIT_TIMEOUT,
}

# How much longer than the daemon's own --wait timeout the socket waits for its reply.
REPLY_MARGIN = 10.0
JSON_KEY = "ringctl.json"


class CtlError(click.ClickException):
    """An error that ends ringctl with ``exit_code`` and ``ringctl: <message>`` on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        # click declares exit_code on the class but reads it from the instance.
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        err_console.print(
            Text(f"ringctl: {self.format_message()}", style="red"),
            soft_wrap=True,
            highlight=False,
        )


pass_client = click.make_pass_decorator(Client)


@contextlib.contextmanager
def daemon_errors(client: Client) -> Iterator[None]:
    """Daemon and connection errors inside become ``CtlError`` with the documented exit code."""
    try:
        yield
    except RemoteError as exc:
        raise CtlError(exc.message, EXIT_CODES.get(exc.code, EXIT_ERROR)) from None
    except Unreachable as exc:
        raise CtlError(str(exc), EXIT_UNREACHABLE) from None
    except OSError as exc:  # the connection broke after it was made
        raise CtlError(
            f"lost the connection to ringd at {client.path}: {exc.strerror or exc}",
            EXIT_UNREACHABLE,
        ) from None
    except ValueError as exc:  # a reply line that is not JSON
        raise CtlError(f"bad reply from ringd at {client.path}: {exc}") from None


def call(client: Client, op: str, **args: Any) -> Any:
    """One request; daemon errors become ``CtlError`` with the documented exit code."""
    with daemon_errors(client):
        return client.call(op, **args)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[JSON_KEY] = True


def json_option(func: Any) -> Any:
    """``--json`` on the group and on every command (either place works)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_json,
        help="Print the raw result as JSON.",
    )(func)


def emit(result: Any, render: Any) -> None:
    """Print ``result`` as JSON when asked, else hand it to ``render`` for people."""
    if click.get_current_context().meta.get(JSON_KEY):
        click.echo(json.dumps(result, indent=2))
    else:
        render(result)


def wait_options(what: str, default: float = 30.0) -> Any:
    """``--wait`` (return only once ``what``) and its ``--timeout``, for commands that
    change state."""

    def decorate(func: Any) -> Any:
        func = click.option(
            "--timeout",
            type=float,
            default=default,
            show_default=True,
            metavar="S",
            help="How long --wait waits.",
        )(func)
        return click.option("--wait", is_flag=True, help=f"Return only once {what}.")(func)

    return decorate


def allow_wait(client: Client, wait: bool, timeout: float) -> None:
    """Keep the socket open a little longer than the daemon will wait."""
    if wait:
        client.timeout = max(client.timeout or 0, timeout + REPLY_MARGIN)


# -- formatting ----------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def uptime(started: float | None) -> str:
    if started is None:
        return "-"
    return human_duration(time.time() - started)


def since(rfc3339: str | None) -> str:
    """``2024-05-01T12:00:00Z (42s ago)``; the raw text when it does not parse."""
    if not rfc3339:
        return "-"
    try:
        when = datetime.fromisoformat(rfc3339).timestamp()
    except ValueError:
        return rfc3339
    return f"{rfc3339} ({human_duration(time.time() - when)} ago)"


def ago(unix: float | None) -> str:
    """``42s ago`` from a unix time."""
    if not isinstance(unix, int | float):
        return "-"
    return f"{human_duration(time.time() - unix)} ago"


def human_bytes(size: Any) -> str:
    """``12.3M`` (powers of 1024, as ps and top count); ``-`` when unknown."""
    if not isinstance(size, int | float) or isinstance(size, bool):
        return "-"
    if size < 1024:
        return f"{int(size)}B"
    for unit in "KMGT":
        size /= 1024
        if size < 1024 or unit == "T":
            break
    return f"{size:.1f}{unit}"


def percent(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:.1f}%"


def signal_name(number: Any, given: str) -> str:
    """``SIGHUP`` for the number the daemon sent; what the user typed if it is not one."""
    try:
        return signal.Signals(number).name
    except (ValueError, TypeError):
        return given


def dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def number(value: Any) -> str:
    """``5`` for 5.0, ``0.5`` for 0.5."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return dash(value)


def one_line(line: str) -> None:
    """One line of rich markup (callers escape what they did not write)."""
    console.print(line, highlight=False)


def key_values(pairs: list[tuple[str, Any]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(key, Text(dash(value)))
    console.print(grid)


STATE_STYLES = {
    "running": "green",
    "pending": "yellow",
    "starting": "yellow",
    "backoff": "yellow",
    "restarting": "yellow",
    "stopping": "yellow",
    "stopped": "dim",
    "failed": "red",
    "invalid": "red",
}


def state_text(state: str | None) -> Text:
    return Text(dash(state), style=STATE_STYLES.get(state or "", "red"))


# -- shell completion ----------------------------------------------------------------

# Shells whose completion script `ringctl completion SHELL` prints (click's own).
SHELLS = ("bash", "zsh", "fish")
# Completing names asks the daemon; a hung daemon must not hang the shell.
COMPLETE_TIMEOUT = 1.0


def _ask_daemon(ctx: click.Context, op: str, **args: Any) -> Any:
    socket_path = ctx.find_root().params.get("socket_path") or default_socket_path()
    try:
        return Client(socket_path, timeout=COMPLETE_TIMEOUT).call(op, **args)
    except (RemoteError, Unreachable, OSError, ValueError):
        return None  # no daemon, no names: completion offers nothing rather than fail


def complete_child_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Child ids from the daemon, for the ID argument of commands on existing children."""
    rows = _ask_daemon(ctx, "which_children") or []
    ids = sorted({str(row.get("id")) for row in rows if isinstance(row, dict)})
    return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


def complete_group(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    rows = _ask_daemon(ctx, "groups") or []
    groups = sorted({str(row.get("name")) for row in rows if isinstance(row, dict)})
    return [CompletionItem(g) for g in groups if g.startswith(incomplete)]


def complete_signal(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Signal names as signal-child takes them (HUP, USR1, ...); no daemon needed."""
    names = sorted(s.name.removeprefix("SIG") for s in signal.Signals if "_" not in s.name)
    return [CompletionItem(n) for n in names if n.startswith(incomplete.upper())]


def complete_node(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    rows = _ask_daemon(ctx, "nodes") or []
    nodes = sorted({str(row.get("node")) for row in rows if isinstance(row, dict)})
    return [CompletionItem(n) for n in nodes if n.startswith(incomplete)]


# -- commands ------------------------------------------------------------------------


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--socket",
    "socket_path",
    envvar="RINGD_SOCKET",
    default=default_socket_path,
    show_default="$RINGD_SOCKET or the per-user/system default",
    metavar="PATH",
    help="The ringd control socket.",
)
@json_option
@click.version_option(__version__, prog_name="ringctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, socket_path: str) -> None:
    """Control ringd, the distributed process supervisor.

    Talks to the local ringd over its control socket; the daemon does the work
    and owns the cluster state. --json prints the raw result for scripts.

    \b
    Exit codes:
      0  ok
      1  error, or the daemon refused (refused, exists, internal, ...)
      2  usage error, or an invalid spec or argument (invalid)
      3  not found (not_found)
      4  ringd unreachable (no daemon on the socket)
      5  timed out (timeout, e.g. --wait)
    """
    ctx.obj = Client(socket_path)


@cli.command("start-child")
@click.argument("child_id", metavar="ID")
@click.argument("argv", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
@click.option(
    "--restart",
    type=click.Choice(["permanent", "transient", "temporary"]),
    help="Restart policy (daemon default: permanent).",
)
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="K=V",
    help="Environment variable for the child (repeatable).",
)
@click.option("--cwd", metavar="DIR", help="Working directory (absolute).")
@click.option(
    "--group", metavar="G", shell_complete=complete_group, help="Group the child belongs to."
)
@click.option(
    "--max-restarts", type=int, metavar="N", help="Give up after N restarts within --max-seconds."
)
@click.option("--max-seconds", type=float, metavar="S", help="The window --max-restarts counts in.")
@click.option("--stop-signal", metavar="SIG", help="Signal that asks it to stop (e.g. TERM).")
@click.option("--stop-timeout", type=float, metavar="S", help="Seconds before SIGKILL.")
@click.option(
    "--replicas",
    type=click.IntRange(1, 32),
    metavar="N",
    help="Run N instances on N distinct nodes (the first is the master).",
)
@click.option(
    "--on",
    "on",
    multiple=True,
    metavar="K=V",
    help="Node affinity: only nodes labelled K=V (repeatable: all must match).",
)
@click.option(
    "--handoff",
    is_flag=True,
    default=None,
    help="Hand state to the next instance via $RINGD_HANDOFF_FILE when it moves.",
)
@wait_options("it runs somewhere")
@json_option
@pass_client
def start_child(
    client: Client,
    child_id: str,
    argv: tuple[str, ...],
    env: tuple[str, ...],
    wait: bool,
    timeout: float,
    **options: Any,
) -> None:
    """Start a child, supervised somewhere in the cluster.

    The command goes after `--`, e.g. `ringctl start-child web -- python -m http.server`.
    """
    spec: dict[str, Any] = {"id": child_id, "argv": list(argv)}
    if env:
        spec["env"] = parse_env(env)
    if on := options.pop("on"):
        spec["on"] = parse_env(on, "--on")
    spec.update({key: value for key, value in options.items() if value is not None})
    allow_wait(client, wait, timeout)
    result = call(client, "start_child", spec=spec, wait=wait, timeout=timeout)

    def render(row: dict[str, Any]) -> None:
        name = escape(dash(row.get("id")))
        if row.get("pid") is not None:
            node = escape(dash(row.get("node")))
            line = f"started [bold]{name}[/] on [bold]{node}[/] (pid {row['pid']})"
        else:
            line = f"[bold]{name}[/] accepted ({escape(dash(row.get('state') or 'pending'))})"
        console.print(line, highlight=False)

    emit(result, render)


def read_specs(text: str, fmt: str) -> list[Any]:
    """The child specs of a specs file: TOML ``[[child]]`` tables, or JSON (a list of
    specs, or ``{"child": [...]}``). The daemon validates each spec."""
    try:
        data: Any = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"not valid {fmt.upper()}: {exc}", param_hint="'FILE'") from None
    specs = data.get("child") if isinstance(data, dict) else data
    if not isinstance(specs, list) or not specs:
        where = "[[child]] tables" if fmt == "toml" else 'a list of specs or {"child": [...]}'
        raise click.BadParameter(f"holds no child specs: expected {where}", param_hint="'FILE'")
    return specs


def spec_batches(specs: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """``(index of the first, specs)`` per request: at most MAX_BATCH specs, and
    short enough for the daemon's request line (specs with a big env or argv)."""
    room = MAX_LINE - 4096  # the request's envelope
    start, size = 0, 0
    for index, spec in enumerate(specs):
        length = len(protocol.dumps(spec)) + 1  # as the request encodes it, and a comma
        if index > start and (index - start == MAX_BATCH or size + length > room):
            yield start, specs[start:index]
            start, size = index, 0
        size += length
    if start < len(specs):
        yield start, specs[start:]


def shift_spec_index(message: str, offset: int) -> str:
    """``specs[3].argv: ...`` of a request that began at spec ``offset`` of a file."""
    return re.sub(r"specs\[(\d+)\]", lambda m: f"specs[{int(m[1]) + offset}]", message, count=1)


@cli.command("start-children")
@click.argument("file", type=click.File("r"), metavar="FILE")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["toml", "json"]),
    help="FILE's format (default: json for *.json, else toml).",
)
@wait_options("they all run somewhere", 120.0)
@json_option
@pass_client
def start_children(client: Client, file: Any, fmt: str | None, wait: bool, timeout: float) -> None:
    """Start every child a specs file lists (FILE, or - for stdin), as start-child
    would one by one, in a few etcd transactions.

    A TOML file has one [[child]] table per child, with the fields of start-child:
    id, argv, restart, env, cwd, group, max_restarts, max_seconds, stop_signal,
    stop_timeout, replicas, on, handoff. Nothing is stored if any spec is invalid
    (a request holds up to 1,000 specs and 1 MiB; bigger files go in several). A child already
    stored with another spec is a conflict: the others are still started.
    """
    fmt = fmt or ("json" if file.name.endswith(".json") else "toml")
    specs = read_specs(file.read(), fmt)
    allow_wait(client, wait, timeout)
    result: dict[str, Any] = {"stored": 0, "conflicts": []}
    for start, chunk in spec_batches(specs):
        try:
            part = call(client, "start_children", specs=chunk, wait=wait, timeout=timeout)
        except CtlError as exc:
            # Name the spec by its place in the whole file, not in this request.
            raise CtlError(shift_spec_index(exc.message, start), exc.exit_code) from None
        result["stored"] += part["stored"]
        result["conflicts"] += part["conflicts"]

    def render(row: dict[str, Any]) -> None:
        one_line(f"{row['stored']} children stored" + (", all running" if wait else ""))
        for child_id in row["conflicts"]:
            err_console.print(
                f"ringctl: child {escape(child_id)} already exists with another spec",
                highlight=False,
            )

    emit(result, render)
    if result["conflicts"]:
        raise SystemExit(EXIT_ERROR)


def parse_env(values: tuple[str, ...], option: str = "--env") -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint=f"'{option}'")
        env[key] = value
    return env


@cli.command("find")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@json_option
@pass_client
def find(client: Client, child_id: str) -> None:
    """Show where a child runs and how it is doing."""
    result = call(client, "find", id=child_id)

    def render(row: dict[str, Any]) -> None:
        argv = row.get("argv")
        key_values(
            [
                ("id", row.get("id")),
                ("owner", row.get("owner")),
                ("node", row.get("node")),
                ("pid", row.get("pid")),
                ("state", row.get("state")),
                ("restarts", row.get("restarts")),
                ("uptime", uptime(row.get("started"))),
                ("restart", row.get("restart")),
                ("group", row.get("group")),
                ("reason", row.get("reason")),
                ("fence", row.get("fence")),
                ("argv", shlex.join(argv) if isinstance(argv, list) else argv),
            ]
        )
        instances = row.get("instances") or []
        if len(instances) > 1:
            table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
            for name in ("INSTANCE", "ROLE", "NODE", "PID", "STATE", "REASON"):
                table.add_column(name, overflow="fold")
            for inst in instances:
                table.add_row(
                    Text(dash(inst.get("instance"))),
                    dash(inst.get("role")),
                    Text(dash(inst.get("node"))),
                    dash(inst.get("pid")),
                    state_text(inst.get("state")),
                    Text(dash(inst.get("reason"))),
                )
            console.print(table)
            if row.get("degraded"):
                console.print("degraded: fewer eligible nodes than replicas", style="yellow")

    emit(result, render)


@cli.command("which-children")
@click.option("--local", is_flag=True, help="Only children running on this node.")
@click.option(
    "--node", metavar="N", shell_complete=complete_node, help="Only children running on node N."
)
@click.option(
    "--group", metavar="G", shell_complete=complete_group, help="Only children of group G."
)
@json_option
@pass_client
def which_children(client: Client, local: bool, node: str | None, group: str | None) -> None:
    """List children and where they run."""
    args: dict[str, Any] = {"local": local}
    if node is not None:
        args["node"] = node
    if group is not None:
        args["group"] = group
    result = call(client, "which_children", **args)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print("no children", style="dim")
            return
        table = Table(box=None, header_style="bold", pad_edge=False)
        columns = ("ID", "NODE", "PID", "STATE", "RESTARTS", "RSS", "CPU", "UPTIME", "REASON")
        for name in columns:
            # Narrow pages fold cells rather than crop them: nothing is lost.
            table.add_column(
                name,
                overflow="fold",
                justify="right" if name in ("PID", "RSS", "CPU") else "left",
            )
        for row in rows:
            table.add_row(
                Text(dash(row.get("instance") or row.get("id"))),
                Text(dash(row.get("node"))),
                dash(row.get("pid")),
                state_text(row.get("state")),
                dash(row.get("restarts")),
                human_bytes(row.get("rss")),
                percent(row.get("cpu")),
                uptime(row.get("started")),
                Text(dash(row.get("reason"))),
            )
        console.print(table)

    emit(result, render)


@cli.command("delete-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@wait_options("it has stopped")
@json_option
@pass_client
def delete_child(client: Client, child_id: str, wait: bool, timeout: float) -> None:
    """Delete a child: it is stopped wherever it runs and not restarted."""
    allow_wait(client, wait, timeout)
    result = call(client, "delete_child", id=child_id, wait=wait, timeout=timeout)

    def render(row: dict[str, Any]) -> None:
        done = " (stopped)" if wait else ""
        console.print(
            f"deleted [bold]{escape(str(row.get('id', child_id)))}[/]{done}", highlight=False
        )

    emit(result, render)


@cli.command("terminate-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@json_option
@pass_client
def terminate_child(client: Client, child_id: str) -> None:
    """Stop a child on this node; it stays stopped until restart-child.

    Only the node the child runs on does it: ask that node's ringctl.
    """
    result = call(client, "terminate_child", id=child_id)

    def render(row: dict[str, Any]) -> None:
        name = escape(dash(row.get("id", child_id)))
        one_line(f"terminated [bold]{name}[/] on [bold]{escape(dash(row.get('node')))}[/]")

    emit(result, render)


@cli.command("restart-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@json_option
@pass_client
def restart_child(client: Client, child_id: str) -> None:
    """Restart a child on this node (also a terminated, stopped or failed one)."""
    result = call(client, "restart_child", id=child_id)

    def render(row: dict[str, Any]) -> None:
        name = escape(dash(row.get("id", child_id)))
        node = escape(dash(row.get("node")))
        pid = f" (pid {row['pid']})" if row.get("pid") is not None else ""
        one_line(f"restarted [bold]{name}[/] on [bold]{node}[/]{pid}")

    emit(result, render)


@cli.command("signal-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@click.argument("sig", metavar="SIG", shell_complete=complete_signal)
@json_option
@pass_client
def signal_child(client: Client, child_id: str, sig: str) -> None:
    """Send a signal (HUP, SIGUSR1, 15, ...) to a child on this node."""
    result = call(client, "signal_child", id=child_id, signal=sig)

    def render(row: dict[str, Any]) -> None:
        name = escape(dash(row.get("id", child_id)))
        sent = escape(signal_name(row.get("signal"), sig))
        pid = f" (pid {row['pid']})" if row.get("pid") is not None else ""
        one_line(f"sent {sent} to [bold]{name}[/]{pid}")

    emit(result, render)


@cli.command("logs")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    metavar="N",
    help="How many of the last lines to show.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@json_option
@pass_client
def logs(client: Client, child_id: str, lines: int, follow: bool) -> None:
    """Show a child's output (stdout and stderr) from this node's log.

    Only the node the child runs on has it: ask that node's ringctl.
    """
    if follow:
        follow_logs(client, child_id, lines)
        return
    result = call(client, "logs", id=child_id, lines=lines)

    def render(info: dict[str, Any]) -> None:
        # Raw: a child's output is not rich markup.
        for line in info.get("lines") or []:
            click.echo(line)

    emit(result, render)


def follow_logs(client: Client, child_id: str, lines: int) -> None:
    """Echo the ``logs_follow`` stream until the daemon closes it or Ctrl-C."""
    as_json = click.get_current_context().meta.get(JSON_KEY)
    stream_events(
        client,
        lambda line: click.echo(json.dumps(line) if as_json else line),
        "logs_follow",
        id=child_id,
        lines=lines,
    )


def stream_events(client: Client, show: Any, op: str, **args: Any) -> None:
    """Show every event of a streaming op until the daemon closes it or Ctrl-C."""
    client.timeout = None  # a quiet stream may say nothing for hours
    try:
        with contextlib.closing(client.stream(op, **args)) as replies:
            while True:
                # Only the daemon's side maps to daemon errors: a closed stdout is not one.
                with daemon_errors(client):
                    reply = next(replies, None)
                if reply is None:
                    return
                show(reply.get("event"))
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # e.g. `ringctl logs -f web | head`
        # Python would report the failed flush of stdout at exit: point it at /dev/null.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# -- groups --------------------------------------------------------------------------


@cli.command("create-group")
@click.argument("name", metavar="G")
@click.option(
    "--strategy",
    type=click.Choice(["one_for_one", "one_for_all", "rest_for_one"]),
    help="Who restarts with a failed child (daemon default: one_for_one).",
)
@click.option(
    "--max-restarts",
    type=int,
    metavar="N",
    help="Restarts allowed within --max-seconds before the group fails (default 3).",
)
@click.option(
    "--max-seconds", type=float, metavar="T", help="The window --max-restarts counts in (5)."
)
@click.option(
    "--restart-delay",
    type=float,
    metavar="S",
    help="Wait before a restart, doubling per consecutive one (0: at once).",
)
@click.option(
    "--restart-delay-max", type=float, metavar="S", help="The most --restart-delay grows to (30)."
)
@click.option(
    "--retry-after",
    type=float,
    metavar="S",
    help="Retry a group failed cluster-wide after S seconds (default: wait for reset-group).",
)
@click.option(
    "--restricted",
    is_flag=True,
    default=None,
    help="Run only on nodes whose config lists this group.",
)
@json_option
@pass_client
def create_group(client: Client, name: str, **options: Any) -> None:
    """Create a group of children supervised together (like an OTP supervisor)."""
    spec: dict[str, Any] = {"name": name}
    spec.update({key: value for key, value in options.items() if value is not None})
    result = call(client, "create_group", spec=spec)

    def render(row: dict[str, Any]) -> None:
        group = escape(dash(row.get("name", name)))
        one_line(
            f"created group [bold]{group}[/] ({escape(dash(row.get('strategy')))}, "
            f"{dash(row.get('max_restarts'))} restarts in {number(row.get('max_seconds'))} s)"
        )

    emit(result, render)


@cli.command("groups")
@json_option
@pass_client
def groups(client: Client) -> None:
    """List the groups, their intensity and whether they failed."""
    result = call(client, "groups")

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print("no groups", style="dim")
            return
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("GROUP", "STRATEGY", "INTENSITY", "STATE", "SINCE", "CHILDREN", "REASON"):
            table.add_column(
                name,
                overflow="fold",
                justify="right" if name == "CHILDREN" else "left",
            )
        for row in rows:
            reason = dash(row.get("reason"))
            if row.get("state") == "failed" and row.get("failed_node"):
                reason = f"{row['failed_node']}: {reason}"
            intensity = f"{dash(row.get('max_restarts'))} in {number(row.get('max_seconds'))}s"
            table.add_row(
                Text(dash(row.get("name"))),
                Text(dash(row.get("strategy"))),
                intensity,
                state_text(row.get("state")),
                ago(row.get("since")),
                dash(row.get("children")),
                Text(reason),
            )
        console.print(table)

    emit(result, render)


@cli.command("delete-group")
@click.argument("name", metavar="G", shell_complete=complete_group)
@click.option("--force", is_flag=True, help="Delete it even if children use it (they wait for it).")
@json_option
@pass_client
def delete_group(client: Client, name: str, force: bool) -> None:
    """Delete a group; refused while children use it, unless --force."""
    result = call(client, "delete_group", name=name, force=force)

    def render(info: dict[str, Any]) -> None:
        line = f"deleted group [bold]{escape(dash(info.get('name', name)))}[/]"
        orphans = info.get("orphaned_children") or []
        if orphans:
            line += f"; {len(orphans)} children wait for it to exist again: " + escape(
                ", ".join(map(str, orphans))
            )
        one_line(line)

    emit(result, render)


@cli.command("reset-group")
@click.argument("name", metavar="G", shell_complete=complete_group)
@json_option
@pass_client
def reset_group(client: Client, name: str) -> None:
    """Clear a group's failure: its children start again."""
    result = call(client, "reset_group", name=name)

    def render(row: dict[str, Any]) -> None:
        group = escape(dash(row.get("name", name)))
        one_line(f"group [bold]{group}[/] reset: its children start again")

    emit(result, render)


@cli.command("nodes")
@json_option
@pass_client
def nodes(client: Client) -> None:
    """List the cluster's nodes."""
    result = call(client, "nodes")

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print("no nodes", style="dim")
            return
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("NODE", "STATUS", "LAST CHANGE", "REASON", "HOST", "PID", "CHILDREN"):
            right = name in ("PID", "CHILDREN")
            table.add_column(
                name,
                overflow="fold",
                justify="right" if right else "left",
            )
        for row in rows:
            status = dash(row.get("status"))
            if row.get("draining"):
                status += " (draining)"
            style = "green" if status == "online" and row.get("alive") else "red"
            table.add_row(
                Text(dash(row.get("node"))),
                Text(status, style=style),
                since(row.get("last_change")),
                Text(dash(row.get("reason"))),
                Text(dash(row.get("host"))),
                dash(row.get("pid")),
                dash(row.get("children")),
            )
        console.print(table)

    emit(result, render)


@cli.command("status")
@json_option
@pass_client
def status(client: Client) -> None:
    """Show this node's daemon: identity, etcd, lease, children."""
    result = call(client, "status")

    def render(info: dict[str, Any]) -> None:
        local = info.get("children_local") or {}
        ttl = info.get("lease_ttl")
        up = info.get("uptime")
        key_values(
            [
                ("node", info.get("node")),
                ("cluster", info.get("cluster")),
                ("version", info.get("version")),
                ("pid", info.get("pid")),
                ("uptime", human_duration(up) if isinstance(up, int | float) else up),
                ("etcd", info.get("etcd")),
                ("standalone", info.get("standalone")),
                ("lease", info.get("lease")),
                ("lease ttl", f"{ttl}s" if ttl is not None else None),
                (
                    "labels",
                    ", ".join(f"{k}={v}" for k, v in (info.get("labels") or {}).items()) or None,
                ),
                ("moves pending", info.get("moves_pending")),
                ("fenced", info.get("fenced")),
                ("nodes online", ", ".join(info.get("nodes_online") or [])),
                ("children", info.get("children_total")),
                (
                    "children here",
                    ", ".join(f"{k}={v}" for k, v in sorted(local.items())) or "none",
                ),
                ("revision", info.get("revision")),
            ]
        )

    emit(result, render)


@cli.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for bash, zsh or fish.

    Enable it in the shell's start-up file:

    \b
      eval "$(ringctl completion bash)"   # ~/.bashrc
      eval "$(ringctl completion zsh)"    # ~/.zshrc, after compinit
      ringctl completion fish | source    # ~/.config/fish/config.fish
    """
    root = ctx.find_root()
    prog = root.info_name or "ringctl"
    complete_var = "_{}_COMPLETE".format(prog.replace("-", "_").replace(".", "_").upper())
    shell_complete = get_completion_class(shell)
    assert shell_complete is not None  # SHELLS are click's own
    click.echo(shell_complete(root.command, {}, prog, complete_var).source())


# -- membership ----------------------------------------------------------------------


@cli.command("drain")
@click.argument("node", metavar="N", shell_complete=complete_node)
@wait_options("its children have moved away", 60.0)
@json_option
@pass_client
def drain(client: Client, node: str, wait: bool, timeout: float) -> None:
    """Take node N out of the ring while it stays online: its children move away."""
    allow_wait(client, wait, timeout)
    result = call(client, "drain", node=node, wait=wait, timeout=timeout)
    emit(
        result,
        lambda r: one_line(
            f"draining {r['node']}" + (" (its children have moved)" if wait else "")
        ),
    )


@cli.command("undrain")
@click.argument("node", metavar="N", shell_complete=complete_node)
@json_option
@pass_client
def undrain(client: Client, node: str) -> None:
    """Put node N back in the ring: children move back to it."""
    result = call(client, "undrain", node=node)
    emit(result, lambda r: one_line(f"{r['node']} is back in the ring"))


@cli.command("forget-node")
@click.argument("node", metavar="N", shell_complete=complete_node)
@json_option
@pass_client
def forget_node(client: Client, node: str) -> None:
    """Remove offline node N from the node list (an online node cannot be forgotten)."""
    result = call(client, "forget_node", node=node)
    emit(result, lambda r: one_line(f"forgot {r['node']}"))


def describe_event(event: dict[str, Any]) -> str:
    kind = event.get("kind")
    if kind == "node":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"node {event['node']}: {event['old_status']} -> {event['status']}{reason}"
    if kind == "child":
        where = f" on {event['node']}" if event.get("node") else ""
        pid = f" pid {event['pid']}" if event.get("pid") else ""
        return f"child {event['id']}: {event.get('state') or event['event']}{where}{pid}"
    if kind == "spec":
        return f"spec {event['id']} {event['event']}"
    if kind == "group":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"group {event['name']}: {event.get('state') or event['event']}{reason}"
    return json.dumps(event)


@cli.command("watch")
@click.argument("what", type=click.Choice(["nodes", "children", "all"]), default="all")
@json_option
@pass_client
def watch(client: Client, what: str) -> None:
    """Stream changes as they happen: node_update events, children, or all.

    On a terminal, a live table of every node and child, updated in place; one
    JSON object per line with --json; a timestamped line per change when the
    output is not a terminal (a pipe, a file).
    """
    as_json = click.get_current_context().meta.get(JSON_KEY)
    if not as_json and console.is_terminal:
        live_watch(client, what)
        return

    def show(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
        else:
            line = f"{time.strftime('%H:%M:%S')} {describe_event(event or {})}"
            console.print(escape(line), highlight=False, soft_wrap=True)

    stream_events(client, show, "watch", what=what)


def live_watch(client: Client, what: str) -> None:
    """The live table: the state now (nodes, which-children), then every change."""
    table = LiveTable(what)
    with daemon_errors(client):
        table.seed(
            client.call("nodes") if what in ("nodes", "all") else [],
            client.call("which_children") if what in ("children", "all") else [],
        )
    with Live(table.render(), console=console, auto_refresh=False) as live:

        def show(event: dict[str, Any]) -> None:
            table.apply(event or {})
            live.update(table.render(), refresh=True)

        stream_events(client, show, "watch", what=what)


def main() -> None:
    cli(prog_name="ringctl")


if __name__ == "__main__":
    main()
