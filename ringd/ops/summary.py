"""The cluster at a glance: ``summary``, from the view and the listing (no etcd read)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..protocol import Misplaced, ReasonCount, RolloutSummary, Summary

if TYPE_CHECKING:
    from ..protocol import Args, ChildRow
    from .context import Context

# Reasons listed per kind, the most common first.
TOP_REASONS = 5
# Instance states that say something went wrong (their reasons are "failure reasons").
FAILING = frozenset({"failed", "invalid", "backoff", "restarting", "degraded"})


def _where_it_should(row: ChildRow) -> bool:
    """The instance runs on the ring's owner, or ended as its restart type allows."""
    if row.state == "stopped" and row.restart != "permanent":
        return True  # a transient or temporary child that is done
    return row.state == "running" and row.node is not None and row.node == row.owner


def _top(reasons: Counter[str]) -> list[ReasonCount]:
    return [ReasonCount(reason=r, count=n) for r, n in reasons.most_common(TOP_REASONS)]


async def summary(ctx: Context, args: Args) -> Summary:
    """Nodes by status, instances by state with their commonest pending and failure
    reasons, failed groups, moves and rollouts; ``ok`` when every child runs where
    it should."""
    rows = await ctx.listing.everything()
    view = ctx.view
    alive = view.alive_nodes()
    drains = view.draining()
    online, draining, offline = [], [], []
    for node in sorted(alive.keys() | view.statuses().keys() | drains):
        if node not in alive:
            offline.append(node)
        elif node in drains:
            draining.append(node)
        else:
            online.append(node)
    states = Counter(row.state for row in rows)
    pending = Counter(row.reason or "no reason given" for row in rows if row.state == "pending")
    failing = Counter(row.reason or row.state for row in rows if row.state in FAILING)
    misplaced = [
        Misplaced(instance=row.instance, node=row.node, owner=row.owner)
        for row in rows
        if row.node is not None and row.node != row.owner
    ]
    rollouts = []
    for child_id in list(ctx.reconciler.specs()):
        rollout = ctx.reconciler.rollout(child_id)
        if rollout is not None and rollout.state != "done":
            rollouts.append(RolloutSummary(id=child_id, state=rollout.state, reason=rollout.reason))
    groups_failed = {
        name: f"{stored.value.node}: {stored.value.reason}"
        for name, stored in view.groups().items()
        if stored.value.state == "failed"
    }
    moves = ctx.reconciler.moves_pending
    ok = (
        all(_where_it_should(row) for row in rows)
        and not groups_failed
        and not moves
        and not rollouts
    )
    return Summary(
        ok=ok,
        nodes_online=online,
        nodes_draining=draining,
        nodes_offline=offline,
        children=len({row.id for row in rows}),
        instances=len(rows),
        states=dict(sorted(states.items())),
        pending_reasons=_top(pending),
        failure_reasons=_top(failing),
        groups_failed=groups_failed,
        moves_pending=moves,
        misplaced=misplaced,
        rollouts=rollouts,
    )
