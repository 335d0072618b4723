"""Commands on nodes and on this node's daemon: the node list, status, drain,
undrain, forget-node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from .app import allow_wait, call, cli, emit, json_option, pass_client, wait_options
from .completion import complete_node
from .format import dash, dim_line, human_duration, key_values, listing, one_line, show, since

if TYPE_CHECKING:
    from ringd.protocol import Client

# -- formatters ----------------------------------------------------------------------


def show_nodes(rows: list[dict[str, Any]]) -> None:
    if not rows:
        dim_line("no nodes")
        return
    table = listing(
        "NODE", "STATUS", "LAST CHANGE", "REASON", "HOST", "PID", "CHILDREN",
        right=("PID", "CHILDREN"),
    )  # fmt: skip
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
    show(table)


def show_status(info: dict[str, Any]) -> None:
    local = info.get("children_local") or {}
    ttl = info.get("lease_ttl")
    up = info.get("uptime")
    labels = info.get("labels") or {}
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
            ("labels", ", ".join(f"{k}={v}" for k, v in labels.items()) or None),
            ("moves pending", info.get("moves_pending")),
            ("fenced", info.get("fenced")),
            ("nodes online", ", ".join(info.get("nodes_online") or [])),
            ("children", info.get("children_total")),
            ("children here", ", ".join(f"{k}={v}" for k, v in sorted(local.items())) or "none"),
            ("revision", info.get("revision")),
            ("web page", info.get("web")),
        ]
    )


def show_draining(row: dict[str, Any], wait: bool) -> None:
    one_line(f"draining {row['node']}" + (" (its children have moved)" if wait else ""))


def show_undrained(row: dict[str, Any]) -> None:
    one_line(f"{row['node']} is back in the ring")


def show_forgotten(row: dict[str, Any]) -> None:
    one_line(f"forgot {row['node']}")


# -- commands ------------------------------------------------------------------------


@cli.command("nodes")
@json_option
@pass_client
def nodes(client: Client) -> None:
    """List the cluster's nodes."""
    emit(call(client, "nodes"), show_nodes)


@cli.command("status")
@json_option
@pass_client
def status(client: Client) -> None:
    """Show this node's daemon: identity, etcd, lease, children."""
    emit(call(client, "status"), show_status)


@cli.command("drain")
@click.argument("node", metavar="N", shell_complete=complete_node)
@wait_options("its children have moved away", 60.0)
@click.option(
    "--force",
    is_flag=True,
    help="Drain it even if it is the last node children may run on (they stop).",
)
@json_option
@pass_client
def drain(client: Client, node: str, wait: bool, timeout: float, force: bool) -> None:
    """Take node N out of the ring while it stays online: its children move away.

    Refused for the last node in the ring that is not draining, unless --force.
    """
    allow_wait(client, wait, timeout)
    result = call(client, "drain", node=node, wait=wait, timeout=timeout, force=force)
    emit(result, lambda row: show_draining(row, wait))


@cli.command("undrain")
@click.argument("node", metavar="N", shell_complete=complete_node)
@json_option
@pass_client
def undrain(client: Client, node: str) -> None:
    """Put node N back in the ring: children move back to it."""
    emit(call(client, "undrain", node=node), show_undrained)


@cli.command("forget-node")
@click.argument("node", metavar="N", shell_complete=complete_node)
@json_option
@pass_client
def forget_node(client: Client, node: str) -> None:
    """Remove offline node N from the node list (an online node cannot be forgotten)."""
    emit(call(client, "forget_node", node=node), show_forgotten)
