"""ringctl: the operator's command line, a thin client of the ringd control socket.

Every command is one request (``ringd.protocol.Client.call``); the daemon validates
and decides, ringctl only builds the arguments and shows the answer.
"""

from __future__ import annotations

import json
import shlex
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ringd.protocol import Client, RemoteError, Unreachable, default_socket_path

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
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        err_console.print(
            Text(f"ringctl: {self.format_message()}", style="red"),
            soft_wrap=True,
            highlight=False,
        )


pass_client = click.make_pass_decorator(Client)


def call(client: Client, op: str, **args: Any) -> Any:
    """One request; daemon errors become ``CtlError`` with the documented exit code."""
    try:
        return client.call(op, **args)
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


def dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def key_values(pairs: list[tuple[str, Any]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(key, Text(dash(value)))
    console.print(grid)


def state_text(state: str | None) -> Text:
    style = {"running": "green", "pending": "yellow", "starting": "yellow"}.get(state or "", "red")
    return Text(dash(state), style=style)


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
@click.option("--group", metavar="G", help="Group the child belongs to.")
@click.option(
    "--max-restarts", type=int, metavar="N", help="Give up after N restarts within --max-seconds."
)
@click.option("--max-seconds", type=float, metavar="S", help="The window --max-restarts counts in.")
@click.option("--stop-signal", metavar="SIG", help="Signal that asks it to stop (e.g. TERM).")
@click.option("--stop-timeout", type=float, metavar="S", help="Seconds before SIGKILL.")
@click.option("--wait", is_flag=True, help="Return only once it runs somewhere.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    metavar="S",
    help="How long --wait waits.",
)
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
    spec.update({key: value for key, value in options.items() if value is not None})
    if wait:
        client.timeout = max(client.timeout or 0, timeout + REPLY_MARGIN)
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


def parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint="'--env'")
        env[key] = value
    return env


@cli.command("find")
@click.argument("child_id", metavar="ID")
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

    emit(result, render)


@cli.command("which-children")
@click.option("--local", is_flag=True, help="Only children running on this node.")
@click.option("--node", metavar="N", help="Only children running on node N.")
@click.option("--group", metavar="G", help="Only children of group G.")
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
        for name in ("ID", "NODE", "PID", "STATE", "RESTARTS", "UPTIME", "REASON"):
            # Narrow pages fold cells rather than crop them: nothing is lost.
            table.add_column(
                name,
                overflow="fold",
                justify="right" if name == "PID" else "left",
            )
        for row in rows:
            table.add_row(
                Text(dash(row.get("id"))),
                Text(dash(row.get("node"))),
                dash(row.get("pid")),
                state_text(row.get("state")),
                dash(row.get("restarts")),
                uptime(row.get("started")),
                Text(dash(row.get("reason"))),
            )
        console.print(table)

    emit(result, render)


@cli.command("delete-child")
@click.argument("child_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Return only once it has stopped.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    metavar="S",
    help="How long --wait waits.",
)
@json_option
@pass_client
def delete_child(client: Client, child_id: str, wait: bool, timeout: float) -> None:
    """Delete a child: it is stopped wherever it runs and not restarted."""
    if wait:
        client.timeout = max(client.timeout or 0, timeout + REPLY_MARGIN)
    result = call(client, "delete_child", id=child_id, wait=wait, timeout=timeout)

    def render(row: dict[str, Any]) -> None:
        done = " (stopped)" if wait else ""
        console.print(
            f"deleted [bold]{escape(str(row.get('id', child_id)))}[/]{done}", highlight=False
        )

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


def main() -> None:
    cli(prog_name="ringctl")


if __name__ == "__main__":
    main()
