"""Commands on children: start, find, list, delete, and the ones the node a child runs
on carries out (terminate, restart, signal). ``logs`` is in ``commands_streams.py``."""

from __future__ import annotations

import shlex
from typing import IO, TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.text import Text

from ringd.protocol import RemoteError

from .app import (
    EXIT_ERROR,
    CtlError,
    allow_wait,
    call,
    cli,
    daemon_errors,
    emit,
    json_option,
    pass_client,
    wait_options,
)
from .completion import complete_child_id, complete_group, complete_node, complete_signal
from .format import (
    dash,
    dim_line,
    error_line,
    human_bytes,
    key_values,
    listing,
    one_line,
    percent,
    show,
    signal_name,
    state_text,
    uptime,
    warn_line,
    warning_line,
)
from .specs import (
    child_options,
    child_spec,
    file_format,
    read_specs_file,
    shift_spec_index,
    spec_batches,
)

if TYPE_CHECKING:
    from ringd.protocol import Client

# -- formatters ----------------------------------------------------------------------

# A health check's verdict, coloured as states are ("" without a check).
HEALTH_STYLES = {"healthy": "green", "starting": "yellow", "unhealthy": "red"}


def health_text(health: str | None) -> Text:
    return Text(dash(health), style=HEALTH_STYLES.get(health or "", ""))


def yes_no(value: Any) -> str:
    """``ready``: yes or no; ``-`` when the row has none (no claim)."""
    return "-" if not isinstance(value, bool) else "yes" if value else "no"


def show_started(row: dict[str, Any]) -> None:
    name = escape(dash(row.get("id")))
    if row.get("pid") is not None:
        node = escape(dash(row.get("node")))
        one_line(f"started [bold]{name}[/] on [bold]{node}[/] (pid {row['pid']})")
    else:
        one_line(f"[bold]{name}[/] accepted ({escape(dash(row.get('state') or 'pending'))})")


def show_stored(result: dict[str, Any], wait: bool) -> None:
    stored = result["stored"]
    one_line(
        f"{stored} {'child' if stored == 1 else 'children'} stored"
        + (", all running" if wait else "")
    )
    for name in result["conflicts"]:
        what = name if name.startswith("group ") else f"child {name}"  # ids have no spaces
        error_line(f"ringctl: {escape(what)} already exists with another spec")


def show_child(row: dict[str, Any]) -> None:
    """``find``: the child's fields, then its instances when it has replicas."""
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
            ("revision", row.get("revision")),
            ("ready", yes_no(row.get("ready"))),
            ("health", row.get("health")),
            ("rollout", row.get("rollout")),
            ("argv", shlex.join(argv) if isinstance(argv, list) else argv),
        ]
    )
    instances = row.get("instances") or []
    if len(instances) > 1:
        table = listing("INSTANCE", "ROLE", "NODE", "PID", "STATE", "HEALTH", "REV", "REASON")
        for inst in instances:
            table.add_row(
                Text(dash(inst.get("instance"))),
                dash(inst.get("role")),
                Text(dash(inst.get("node"))),
                dash(inst.get("pid")),
                state_text(inst.get("state")),
                health_text(inst.get("health")),
                dash(inst.get("revision")),
                Text(dash(inst.get("reason"))),
            )
        show(table)
        if row.get("degraded"):
            warn_line("degraded: fewer eligible nodes than replicas")


def show_children(rows: list[dict[str, Any]]) -> None:
    """``which-children``: one row per instance."""
    if not rows:
        dim_line("no children")
        return
    table = listing(
        "ID", "NODE", "PID", "STATE", "READY", "HEALTH", "REV", "RESTARTS", "RSS", "CPU",
        "UPTIME", "REASON",
        right=("PID", "REV", "RSS", "CPU"),
    )  # fmt: skip
    for row in rows:
        table.add_row(
            Text(dash(row.get("instance") or row.get("id"))),
            Text(dash(row.get("node"))),
            dash(row.get("pid")),
            state_text(row.get("state")),
            yes_no(row.get("ready")),
            health_text(row.get("health")),
            dash(row.get("revision")),
            dash(row.get("restarts")),
            human_bytes(row.get("rss")),
            percent(row.get("cpu")),
            uptime(row.get("started")),
            Text(dash(row.get("reason"))),
        )
    show(table)


def show_deleted(row: dict[str, Any], child_id: str, wait: bool) -> None:
    done = " (stopped)" if wait else ""
    one_line(f"deleted [bold]{escape(str(row.get('id', child_id)))}[/]{done}")


def show_terminated(row: dict[str, Any], child_id: str) -> None:
    name = escape(dash(row.get("id", child_id)))
    one_line(f"terminated [bold]{name}[/] on [bold]{escape(dash(row.get('node')))}[/]")


def show_restarted(row: dict[str, Any], child_id: str) -> None:
    name = escape(dash(row.get("id", child_id)))
    node = escape(dash(row.get("node")))
    pid = f" (pid {row['pid']})" if row.get("pid") is not None else ""
    one_line(f"restarted [bold]{name}[/] on [bold]{node}[/]{pid}")


def show_signalled(row: dict[str, Any], child_id: str, sig: str) -> None:
    name = escape(dash(row.get("id", child_id)))
    sent = escape(signal_name(row.get("signal"), sig))
    pid = f" (pid {row['pid']})" if row.get("pid") is not None else ""
    one_line(f"sent {sent} to [bold]{name}[/]{pid}")


# -- commands ------------------------------------------------------------------------


@cli.command("start-child")
@click.argument("child_id", metavar="ID")
@click.argument("argv", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
@child_options
@wait_options("it runs somewhere")
@json_option
@pass_client
def start_child(
    client: Client,
    /,
    child_id: str,
    argv: tuple[str, ...],
    wait: bool,
    timeout: float,
    **options: Any,
) -> None:
    """Start a child, supervised somewhere in the cluster.

    The command goes after `--`, e.g. `ringctl start-child web -- python -m http.server`.
    """
    spec = child_spec(child_id, argv, options)
    allow_wait(client, wait, timeout)
    result = call(client, "start_child", spec=spec, wait=wait, timeout=timeout)
    for warning in result.get("warnings", []):
        warning_line(warning)
    emit(result, show_started)


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
def start_children(
    client: Client, file: IO[str], fmt: str | None, wait: bool, timeout: float
) -> None:
    """Start every child a specs file lists (FILE, or - for stdin), as start-child
    would one by one, in a few etcd transactions.

    A TOML file has one [[child]] table per child, with the fields of start-child:
    id, argv, restart, env, cwd, group, max_restarts, max_seconds, stop_signal,
    stop_timeout, replicas, on, handoff, min_ready, check, check_interval,
    check_timeout, check_failures; and one [[group]] table per group, with the
    fields of create-group (name, strategy, ...), created first. Nothing is stored
    if any spec is invalid (a request holds up to 1,000 specs and 1 MiB; bigger
    files go in several). A child or group already stored with another spec is a
    conflict: the others are still started. To change stored specs, see apply.
    """
    found = read_specs_file(file.read(), file_format(file.name, fmt))
    specs = found.children
    allow_wait(client, wait, timeout)
    result: dict[str, Any] = {"stored": 0, "conflicts": []}
    for index, group in enumerate(found.groups):
        with daemon_errors(client):
            try:
                client.call("create_group", spec=group)
            except RemoteError as exc:
                if exc.code != "exists":  # an invalid group: nothing more is stored
                    raise RemoteError(exc.code, f"group {index + 1}: {exc.message}") from None
                result["conflicts"].append(f"group {group.get('name')}")
    for start, chunk in spec_batches(specs):
        try:
            part = call(client, "start_children", specs=chunk, wait=wait, timeout=timeout)
        except CtlError as exc:
            # Name the spec by its place in the whole file, not in this request.
            raise CtlError(shift_spec_index(exc.message, start), exc.exit_code) from None
        result["stored"] += part["stored"]
        result["conflicts"] += part["conflicts"]
    emit(result, lambda stored: show_stored(stored, wait))
    if result["conflicts"]:
        raise SystemExit(EXIT_ERROR)


@cli.command("find")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@json_option
@pass_client
def find(client: Client, child_id: str) -> None:
    """Show where a child runs and how it is doing."""
    emit(call(client, "find", id=child_id), show_child)


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
    emit(call(client, "which_children", **args), show_children)


@cli.command("delete-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@wait_options("it has stopped")
@json_option
@pass_client
def delete_child(client: Client, child_id: str, wait: bool, timeout: float) -> None:
    """Delete a child: it is stopped wherever it runs and not restarted."""
    allow_wait(client, wait, timeout)
    result = call(client, "delete_child", id=child_id, wait=wait, timeout=timeout)
    emit(result, lambda row: show_deleted(row, child_id, wait))


@cli.command("terminate-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@json_option
@pass_client
def terminate_child(client: Client, child_id: str) -> None:
    """Stop a child where it runs; it stays stopped until restart-child.

    Another node's daemon asks that node (peer_address). Not cluster-wide: if
    the child moves (drain, join, node failure), its new node starts it.
    """
    result = call(client, "terminate_child", id=child_id)
    emit(result, lambda row: show_terminated(row, child_id))


@cli.command("restart-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@json_option
@pass_client
def restart_child(client: Client, child_id: str) -> None:
    """Restart a child where it runs (also a terminated, stopped or failed one)."""
    result = call(client, "restart_child", id=child_id)
    emit(result, lambda row: show_restarted(row, child_id))


@cli.command("signal-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@click.argument("sig", metavar="SIG", shell_complete=complete_signal)
@json_option
@pass_client
def signal_child(client: Client, child_id: str, sig: str) -> None:
    """Send a signal (HUP, SIGUSR1, 15, ...) to a child where it runs."""
    result = call(client, "signal_child", id=child_id, signal=sig)
    emit(result, lambda row: show_signalled(row, child_id, sig))
