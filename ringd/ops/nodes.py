"""This daemon and the node tracker: ping, status, nodes, drain, undrain, forget."""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import TYPE_CHECKING

from .. import __version__, records
from ..errors import NotFound, Refused
from ..protocol import DaemonStatus, NodeDraining, NodeForgotten, NodeRow, Pong, check_timeout

if TYPE_CHECKING:
    from ..protocol import Args, DrainArgs, NodeArgs
    from .context import Context


async def ping(ctx: Context, args: Args) -> Pong:
    return Pong(node=ctx.node, version=__version__)


async def status(ctx: Context, args: Args) -> DaemonStatus:
    """This daemon: node, lease, etcd, local children by state."""
    states = Counter(str(child.state) for child in ctx.supervisor.children.values())
    membership = ctx.membership
    return DaemonStatus(
        node=ctx.node,
        cluster=ctx.config.cluster,
        version=__version__,
        pid=os.getpid(),
        uptime=time.time() - ctx.started,
        etcd=ctx.etcd.endpoint,
        standalone=ctx.config.standalone,
        lease=f"{membership.lease_id:x}" if membership.lease_id else None,
        lease_ttl=membership.ttl,
        fenced=membership.fenced,
        nodes_online=sorted(ctx.view.alive_nodes()),
        children_total=ctx.view.count("children"),
        children_local=dict(states),
        revision=ctx.view.revision,
        moves_pending=ctx.reconciler.moves_pending,
        labels=ctx.config.labels,
        groups_failed={
            name: f"{stored.value.node}: {stored.value.reason}"
            for name, stored in ctx.view.groups().items()
            if stored.value.state == "failed"
        },
        web=ctx.web,
    )


async def nodes(ctx: Context, args: Args) -> list[NodeRow]:
    """The node tracker: every node alive, with a status row, or draining."""
    alive = ctx.view.alive_nodes()
    statuses = ctx.view.statuses()
    drains = ctx.view.draining()  # as the reconciler sees it: the key exists
    children = Counter(stored.value.node for stored in ctx.view.claims().values())
    rows = []
    for node in sorted(alive.keys() | statuses.keys() | drains):
        info = alive.get(node)
        row = statuses.get(node)
        rows.append(
            NodeRow(
                node=node,
                status=row.value.status if row else "online" if info else "unknown",
                last_change=row.value.last_change if row else None,
                reason=row.value.reason if row else "",
                alive=info is not None,
                host=info.value.host if info else None,
                pid=info.value.pid if info else None,
                draining=node in drains,
                children=children[node],
            )
        )
    return rows


def known_node(ctx: Context, node: str) -> str:
    """``node`` if the tracker knows it (alive, or with a status row).

    Raises:
        NotFound: it does not.
    """
    if ctx.view.alive(node) is None and ctx.view.status(node) is None:
        raise NotFound("node", node)
    return node


async def drain(ctx: Context, args: DrainArgs) -> NodeDraining:
    """Take a node out of the ring while it stays online: its children move away."""
    node = known_node(ctx, args.node)
    timeout = check_timeout(args.timeout) if args.wait else None  # checked before acting
    # From etcd, not the view: two drains in a row must see each other.
    _, kvs = await ctx.etcd.list(f"{ctx.keys.prefix}nodes/")
    named = [parsed for kv in kvs if (parsed := ctx.keys.parse(kv.key))]
    in_ring = {name for _, name, sub in named if sub == "alive"}
    draining = {name for _, name, sub in named if sub == "drain"}
    if not in_ring - draining - {node} and node not in draining and not args.force:
        # Every child would stop, with nowhere to go: not what "move away" means.
        raise Refused(
            f"{node} is the last node in the ring that is not draining: its children "
            "would stop, not move (drain --force to do it anyway)"
        )
    value = records.encode(records.Drain(since=time.time(), by=ctx.node))
    await ctx.etcd.put(ctx.keys.drain(node), value)
    if timeout is not None:
        await ctx.wait_for(
            lambda: all(claim.value.node != node for claim in ctx.view.claims().values()),
            timeout,
            f"node {node} drained",
        )
    return NodeDraining(node=node, draining=True)


async def undrain(ctx: Context, args: NodeArgs) -> NodeDraining:
    node = known_node(ctx, args.node)
    await ctx.etcd.delete(ctx.keys.drain(node))
    return NodeDraining(node=node, draining=False)


async def forget_node(ctx: Context, args: NodeArgs) -> NodeForgotten:
    """Remove an offline node's tracker row (it stays listed until then)."""
    node = known_node(ctx, args.node)
    if ctx.view.alive(node) is not None:
        raise Refused(f"node {node} is online: only an offline node can be forgotten")
    await ctx.etcd.delete(ctx.keys.status(node))
    await ctx.etcd.delete(ctx.keys.drain(node))
    return NodeForgotten(node=node)
