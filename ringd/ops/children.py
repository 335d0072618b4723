"""Children cluster-wide: store and delete specs, find one, list them all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import trio

from ..errors import AlreadyExists, CannotRun, NotFound, TimedOut
from ..protocol import (
    BatchStored,
    ChildDeleted,
    ChildFound,
    ChildRow,
    Encoded,
    check_timeout,
)
from ..spec import encode, parse_child
from .updates import validate_file

if TYPE_CHECKING:
    from ..etcd import KV
    from ..protocol import (
        DeleteChildArgs,
        FindArgs,
        StartChildArgs,
        StartChildrenArgs,
        WhichChildrenArgs,
    )
    from ..spec import ChildSpec
    from ..supervisor import Child
    from .context import Context

_ROW_FIELDS = frozenset(ChildRow.__struct_fields__)


async def start_child(ctx: Context, args: StartChildArgs) -> ChildFound:
    """Store a child spec (the ring picks its node); the same spec again is fine."""
    spec = parse_child(args.spec)
    value = encode(spec)
    existing = await ctx.etcd.create_coalesced(ctx.keys.child(spec.id), value)
    if existing.value != value:
        raise AlreadyExists("child", spec.id)
    if args.wait:
        await wait_running(ctx, [spec.id], args.timeout)
    # The view may not hold the new spec yet; etcd just answered with it.
    stored = ctx.view.spec(spec.id)
    row = await found(ctx, spec.id, stored.kv if stored is not None else existing)
    if warnings := await _warnings(ctx, spec):
        row = msgspec.structs.replace(row, warnings=warnings)
    return row


async def _warnings(ctx: Context, spec: ChildSpec) -> list[str]:
    """What is accepted (groups may come later) but looks like a mistake."""
    group = spec.group
    if group is None or ctx.view.group(group) is not None:
        return []
    if await ctx.etcd.get(ctx.keys.group(group)) is not None:
        return []  # created a moment ago: not in the view yet
    return [f"group {group} does not exist: {spec.id} waits until it is created"]


async def start_children(ctx: Context, args: StartChildrenArgs) -> BatchStored:
    """Store many child specs at once (a specs file): all are validated before any
    is written, then created a transaction of ``etcd.txn_ops`` at a time. A spec
    already stored unchanged is fine; one stored differently is a conflict, named
    in the reply, and the others are still stored."""
    # Every problem of every spec, named by its 1-based place (child 3 (id web)).
    _, valid = validate_file([], list(args.specs))
    specs = {child_id: encode(spec) for child_id, spec in valid.items()}
    ids = list(specs)
    conflicts: list[str] = []
    for start in range(0, len(ids), ctx.etcd.txn_ops):
        batch = ids[start : start + ctx.etcd.txn_ops]
        now = await ctx.etcd.create_many([(ctx.keys.child(i), specs[i]) for i in batch])
        conflicts += [i for i in batch if now[ctx.keys.child(i)].value != specs[i]]
    if args.wait:
        conflicting = set(conflicts)
        await wait_running(ctx, [i for i in ids if i not in conflicting], args.timeout)
    return BatchStored(stored=len(ids) - len(conflicts), conflicts=conflicts)


# Pending for a reason that passes by itself: not a reason to stop waiting.
_TRANSIENT = ("waiting for its node", "just created")


def cannot_run(ctx: Context, child_id: str) -> str:
    """Why the daemon already knows the child will not run ("" if it may yet):
    its master failed, or no node may run it (no eligible node, its group is
    missing or failed, every node draining)."""
    stored = ctx.view.spec(child_id)
    if stored is None:
        return ""  # not in the view yet
    row = ctx.listing.child(child_id, stored.kv).rows[0]
    if row.state == "failed" or (row.state == "pending" and not row.reason.startswith(_TRANSIENT)):
        return row.reason or row.state
    return ""


async def wait_running(ctx: Context, ids: list[str], timeout: float) -> None:
    """Wait until every child runs; end early, naming each child and why, as soon as
    every one either runs or is known not to be able to.

    Raises:
        CannotRun: some cannot run (each named with its reason).
        TimedOut: not all ran in time (each one not running named, with its state).
    """
    seen = -1
    with trio.move_on_after(timeout):
        while True:
            waiting = [i for i in ids if not running(ctx, i)]
            failing = {i: why for i in waiting if (why := cannot_run(ctx, i))}
            if len(failing) == len(waiting):
                break
            seen = await ctx.view.wait_changed(seen)
        if failing:
            raise CannotRun("; ".join(f"child {i} cannot run: {why}" for i, why in failing.items()))
        return
    raise TimedOut(
        f"not running within {timeout:g} s: "
        + "; ".join(f"child {i} ({_state(ctx, i)})" for i in ids if not running(ctx, i))
    )


def _state(ctx: Context, child_id: str) -> str:
    stored = ctx.view.spec(child_id)
    if stored is None:
        return "not stored"
    row = ctx.listing.child(child_id, stored.kv).rows[0]
    return f"{row.state}: {row.reason}" if row.reason else row.state


def running(ctx: Context, instance: str) -> bool:
    claim = ctx.view.claim(instance)
    return claim is not None and claim.value.state == "running" and claim.value.pid is not None


async def delete_child(ctx: Context, args: DeleteChildArgs) -> ChildDeleted:
    """Remove a spec; its owner stops the child."""
    timeout = check_timeout(args.timeout) if args.wait else None  # checked before acting
    if not await ctx.etcd.delete(ctx.keys.child(args.id)):
        raise NotFound("child", args.id)
    if timeout is not None:
        await ctx.wait_for(
            lambda: ctx.view.claim(args.id) is None, timeout, f"child {args.id} stopped"
        )
    return ChildDeleted(id=args.id)


async def find(ctx: Context, args: FindArgs) -> ChildFound:
    """The master's row, plus every instance with its node, pid and role."""
    stored = ctx.view.spec(args.id)
    kv = stored.kv if stored is not None else None
    if kv is None:
        # Not in the view (written a moment ago, or not a valid spec): ask etcd
        # before saying no.
        kv = await ctx.etcd.get(ctx.keys.child(args.id))
        if kv is None:
            raise NotFound("child", args.id)
    return await found(ctx, args.id, kv)


async def found(ctx: Context, child_id: str, spec_kv: KV) -> ChildFound:
    entry = ctx.listing.child(child_id, spec_kv)
    rows = await ctx.listing.with_figures(entry.rows)
    return ChildFound(
        **msgspec.structs.asdict(rows[0]),
        argv=entry.argv,
        replicas=len(rows),
        degraded=any(r.state == "degraded" for r in rows),
        instances=rows,
    )


async def which_children(ctx: Context, args: WhichChildrenArgs) -> list[ChildRow] | Encoded:
    """Every child instance (``local``: on this node, as its supervisor sees them)."""
    node = ctx.node if args.local else args.node
    # A filter naming nothing that exists is a mistake, not an empty answer.
    if (
        args.group is not None
        and ctx.view.group(args.group) is None
        and not any(
            (stored := ctx.view.spec(name)) is not None and stored.value.group == args.group
            for name in ctx.view.live("children")
        )  # stops at the first: no copy of every spec (100,000 at scale)
    ):
        raise NotFound("group", args.group)
    if node is not None and node not in ctx.view.in_ring() and ctx.view.status(node) is None:
        raise NotFound("node", node)

    async def rows() -> list[ChildRow]:
        rows = await ctx.listing.everything()
        if args.local:
            # This node's own view of its children is fresher than what it published.
            children = ctx.supervisor.children
            rows = [
                _local(row, child, ctx.node)
                if (child := children.get(row.instance)) is not None
                else row
                for row in rows
            ]
        if node is not None:
            rows = [r for r in rows if r.node == node]
        if args.group is not None:
            rows = [r for r in rows if r.group == args.group]
        return await ctx.listing.with_figures(rows)

    if args.local:
        return await rows()  # the supervisor's state is not in the view's version
    return await ctx.listing.reply(("which_children", node, args.group), rows)


def _local(row: ChildRow, child: Child, node: str) -> ChildRow:
    fresh = {k: v for k, v in child.info().items() if k in _ROW_FIELDS}
    return msgspec.structs.replace(row, **fresh, node=node)
