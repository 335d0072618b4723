"""Commands that follow a stream from the daemon until it ends or Ctrl-C: ``logs``
(and ``logs -f``) and ``watch``, whose live table on a terminal is ``live.py``'s."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from .app import (
    EXIT_TIMEOUT,
    CtlError,
    as_json,
    call,
    cli,
    daemon_errors,
    emit,
    json_option,
    pass_client,
    stream_events,
)
from .completion import complete_child_id, complete_node
from .format import live_display, now_rfc3339, on_terminal, text_line
from .live import LiveTable

if TYPE_CHECKING:
    from ringd.protocol import Client

# -- formatters ----------------------------------------------------------------------


def show_log(info: dict[str, Any]) -> None:
    # Raw: a child's output is not rich markup.
    for line in info.get("lines") or []:
        click.echo(line)


def describe_event(event: dict[str, Any]) -> str:
    """One line for a watch event, as ``watch`` prints it into a pipe."""
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


def show_event(event: dict[str, Any] | None) -> None:
    text_line(f"{time.strftime('%H:%M:%S')} {describe_event(event or {})}")


def echo_json(item: Any) -> None:
    click.echo(json.dumps(item))


def echo_event_json(event: Any) -> None:
    """A watch event as one JSON line, with ``time`` (RFC 3339, UTC): the daemon's
    when it sends one, else the moment ringctl received the event."""
    if isinstance(event, dict) and "time" not in event:
        event = {**event, "time": now_rfc3339()}
    echo_json(event)


# -- commands ------------------------------------------------------------------------


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
@click.option(
    "--node",
    metavar="N",
    shell_complete=complete_node,
    help="The log kept on node N (a previous instance's, after a move).",
)
@json_option
@pass_client
def logs(client: Client, child_id: str, lines: int, follow: bool, node: str | None) -> None:
    """Show a child's output (stdout and stderr), from the node it runs on.

    Another node's daemon asks that node (peer_address). With -f, it keeps
    following the child when it moves, printing "-- ID: now on NODE (fence F) --"
    and then the new instance's output. With --node N, the log kept on N: the
    output of the instance that ran there before it moved.
    """
    if follow:
        if node is not None:
            raise click.UsageError("--node and --follow go separately")
        follow_logs(client, child_id, lines)
        return
    args: dict[str, object] = {"id": child_id, "lines": lines}
    if node is not None:
        args["node"] = node
    emit(call(client, "logs", **args), show_log)


def follow_logs(client: Client, child_id: str, lines: int) -> None:
    """Echo the ``logs_follow`` stream until the daemon closes it or Ctrl-C."""
    show = echo_json if as_json() else click.echo
    stream_events(client, show, "logs_follow", id=child_id, lines=lines)


@cli.command("exec")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@click.argument("argv", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=60.0,
    show_default=True,
    metavar="S",
    help="Kill CMD (and its process group) after S seconds.",
)
@json_option
@pass_client
def exec_command(client: Client, child_id: str, argv: tuple[str, ...], timeout: float) -> None:
    """Run CMD where the child runs now, with its environment and cwd.

    CMD gets the child's RINGD_* variables (RINGD_NODE, RINGD_FENCE, ...), its
    env and its cwd; its stdout and stderr come back here and ringctl exits with
    its status (128+N if killed by signal N). Refused if the child moved meanwhile
    (the message says where to). At --timeout, CMD is killed: exit 5.
    """
    client.timeout = timeout + 30  # connecting to its node, then CMD's own time
    status: dict[str, Any] = {}
    try:
        with contextlib.closing(
            client.stream("exec", id=child_id, argv=list(argv), timeout=timeout)
        ) as replies:
            while True:
                with daemon_errors(client):
                    reply = next(replies, None)
                if reply is None:
                    break
                event = reply.get("event") or {}
                if as_json():
                    echo_json(event)
                elif "data" in event:
                    out = sys.stderr if event.get("stream") == "stderr" else sys.stdout
                    out.write(str(event["data"]))
                    out.flush()
                if "exit" in event:
                    status = event
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if not status:
        raise CtlError(f"exec on {child_id}: the connection ended before CMD did")
    if status.get("timed_out"):
        raise CtlError(f"exec on {child_id}: {argv[0]} killed after {timeout:g} s", EXIT_TIMEOUT)
    raise SystemExit(int(status["exit"]))


@cli.command("watch")
@click.argument("what", type=click.Choice(["nodes", "children", "all"]), default="all")
@json_option
@pass_client
def watch(client: Client, what: str) -> None:
    """Stream changes as they happen: node_update events, children, or all.

    On a terminal, a live table of every node and child, updated in place; one
    JSON object per line with --json, its "time" in RFC 3339 UTC; a timestamped
    line per change when the output is not a terminal (a pipe, a file).
    """
    if as_json():
        stream_events(client, echo_event_json, "watch", what=what)
    elif on_terminal():
        live_watch(client, what)
    else:
        stream_events(client, show_event, "watch", what=what)


def live_watch(client: Client, what: str) -> None:
    """The live table: the state now (nodes, which-children), then every change."""
    table = LiveTable(what)
    with daemon_errors(client):
        table.seed(
            client.call("nodes") if what in ("nodes", "all") else [],
            client.call("which_children") if what in ("children", "all") else [],
        )
    with live_display(table.render()) as live:

        def show(event: dict[str, Any] | None) -> None:
            table.apply(event or {})
            live.update(table.render(), refresh=True)

        stream_events(client, show, "watch", what=what)
