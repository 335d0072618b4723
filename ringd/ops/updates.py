"""Changing stored specs in place: update a child or a group, apply a specs file,
export the specs, and where a child's rolling update stands.

A spec is written only if it differs from the stored one (an unchanged spec
restarts nothing), and only while the stored one is still the one compared (a
transaction on its mod revision): a concurrent change is reported, never lost.
``apply`` computes its plan here, in the daemon, so that two operators see the
same one. The instances of a changed child move onto its new spec one at a time
(``desired.rollout``, carried out by each owner's reconciler).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .. import desired
from ..errors import (
    CannotRun,
    InvalidSpec,
    InvalidSpecs,
    NotFound,
    Refused,
    RolloutHalted,
    TimedOut,
)
from ..placement import instance_key
from ..protocol import (
    Applied,
    ChildUpdated,
    Exported,
    GroupUpdated,
    PlanEntry,
    RolloutInstance,
    RolloutStatus,
    check_timeout,
)
from ..spec import (
    ChildSpec,
    GroupRecord,
    GroupSpec,
    child_problems,
    encode,
    group_problems,
    parse_child,
    parse_group,
    parse_group_record,
    spec_digest,
    written,
)
from .groups import group_row

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..etcd import KV
    from ..protocol import ApplyArgs, ExportArgs, RolloutArgs, UpdateChildArgs, UpdateGroupArgs
    from .context import Context

NOT_PLACED = "not placed"


# -- update-child, update-group --------------------------------------------------------


async def update_child(ctx: Context, args: UpdateChildArgs) -> ChildUpdated:
    """Replace a child's spec with this one (the whole spec); its instances move
    onto it one at a time. The same spec again changes nothing."""
    timeout = check_timeout(args.timeout) if args.wait else None  # checked before acting
    spec = parse_child(args.spec)
    key = ctx.keys.child(spec.id)
    kv = await ctx.etcd.get(key)
    if kv is None:
        raise NotFound("child", spec.id)
    changed = _stored_child(kv) != spec
    if changed and not await ctx.etcd.put_if(key, encode(spec), mod_revision=kv.mod_revision):
        raise Refused(
            f"child {spec.id} was changed by someone else while this updated it: "
            "nothing written; look at it again and retry"
        )
    digest = spec_digest(spec)
    if timeout is not None:
        await wait_rolled_out(ctx, {spec.id: digest}, timeout)
    state, reason = settled(ctx, spec.id, digest)
    return ChildUpdated(id=spec.id, changed=changed, digest=digest, rollout=state, reason=reason)


async def update_group(ctx: Context, args: UpdateGroupArgs) -> GroupUpdated:
    """Replace a group's spec, keeping its state (running, or failed and why)."""
    spec = parse_group(args.spec)
    key = ctx.keys.group(spec.name)
    kv = await ctx.etcd.get(key)
    if kv is None:
        raise NotFound("group", spec.name)
    record = _stored_group(kv)
    changed = record is None or record.spec != spec
    if record is None:  # not a valid record: start it afresh
        record = GroupRecord(spec=spec, since=time.time())
    elif changed:
        record = msgspec.structs.replace(record, spec=spec)
    if changed and not await ctx.etcd.put_if(key, encode(record), mod_revision=kv.mod_revision):
        raise Refused(
            f"group {spec.name} was changed by someone else while this updated it: "
            "nothing written; look at it again and retry"
        )
    row = group_row(ctx, spec.name, record)
    return GroupUpdated(**msgspec.structs.asdict(row), changed=changed)


def _stored_child(kv: KV) -> ChildSpec | None:
    try:
        return parse_child(kv.value)
    except InvalidSpec:
        return None  # not a valid spec: any valid one replaces it


def _stored_group(kv: KV) -> GroupRecord | None:
    try:
        return parse_group_record(kv.value)
    except InvalidSpec:
        return None


# -- waiting for a rollout -------------------------------------------------------------


def settled(ctx: Context, child_id: str, digest: str) -> tuple[str, str]:
    """``("done", "")`` once every placed instance runs the spec of ``digest``, is
    running and ready; ``("halted", why)``; ``("in progress", "")``; or
    ``("not placed", "")`` when no node may run the child."""
    stored = ctx.view.spec(child_id)
    if stored is None or spec_digest(stored.value) != digest:
        return "in progress", ""  # the view has not seen the new spec yet
    found = ctx.reconciler.instances(child_id)
    if found is None:
        return NOT_PLACED, ""
    _, instances = found
    state = desired.rollout(digest, instances)
    if state.state == "halted":
        return "halted", state.reason
    if all(
        i is not None and i.digest == digest and i.running and i.ready for i in instances.values()
    ):
        return "done", ""
    return "in progress", ""


async def wait_rolled_out(ctx: Context, digests: Mapping[str, str], timeout: float) -> None:
    """Wait until every child (id -> the digest of its new spec) is ``settled``.

    Raises:
        RolloutHalted: as soon as one halts (each halted one named, with why).
        CannotRun: as soon as one is known not to be able to run anywhere (no
            eligible node, its group missing or failed).
        TimedOut: not all were done in time (each one not done named).
    """
    from .children import cannot_run  # children imports this module

    seen = -1
    states: dict[str, tuple[str, str]] = {}
    with trio.move_on_after(timeout):
        while True:
            states = {i: settled(ctx, i, digest) for i, digest in digests.items()}
            halted = {i: why for i, (state, why) in states.items() if state == "halted"}
            if halted:
                raise RolloutHalted(
                    "; ".join(f"child {i}: rollout halted: {why}" for i, why in halted.items())
                )
            unplaced = {
                i: why
                for i, (state, _) in states.items()
                if state == NOT_PLACED and (why := cannot_run(ctx, i))
            }
            if unplaced:
                raise CannotRun(
                    "; ".join(f"child {i} cannot run: {why}" for i, why in unplaced.items())
                )
            if all(state == "done" for state, _ in states.values()):
                return
            seen = await ctx.view.wait_changed(seen)
    waiting = [f"child {i} ({state})" for i, (state, _) in states.items() if state != "done"]
    raise TimedOut(f"rollout not done within {timeout:g} s: " + "; ".join(waiting))


# -- apply -----------------------------------------------------------------------------


async def apply(ctx: Context, args: ApplyArgs) -> Applied:
    """Make the stored specs equal to a specs file's: create what is missing, update
    what differs, leave the same untouched, and with ``prune`` delete what the file
    does not list. All or nothing on a file with errors: every one is named with
    its position in the file."""
    timeout = check_timeout(args.timeout) if args.wait else None
    groups, children = validate_file(args.groups, args.children)
    _, group_kvs = await ctx.etcd.list(ctx.keys.group(""))
    _, child_kvs = await ctx.etcd.list(ctx.keys.child(""))
    stored_groups = _by_name(ctx, group_kvs)
    stored_children = _by_name(ctx, child_kvs)
    if args.prune:
        _check_prune(children, groups, stored_groups)

    plan: list[PlanEntry] = []
    # (key, value or None to delete, mod revision the key must still have; 0: absent)
    writes: list[tuple[str, bytes | None, int]] = []
    for spec in groups.values():
        kv = stored_groups.get(spec.name)
        record = _stored_group(kv) if kv is not None else None
        if kv is not None and record is not None and record.spec == spec:
            plan.append(PlanEntry(kind="group", id=spec.name, action="unchanged"))
            continue
        if record is None:
            record = GroupRecord(spec=spec, since=time.time())
        else:
            record = msgspec.structs.replace(record, spec=spec)  # its state is kept
        action = "create" if kv is None else "update"
        plan.append(PlanEntry(kind="group", id=spec.name, action=action))
        writes.append((ctx.keys.group(spec.name), encode(record), kv.mod_revision if kv else 0))
    digests: dict[str, str] = {}
    for child in children.values():
        kv = stored_children.get(child.id)
        if kv is not None and _stored_child(kv) == child:
            plan.append(PlanEntry(kind="child", id=child.id, action="unchanged"))
            continue
        action = "create" if kv is None else "update"
        plan.append(PlanEntry(kind="child", id=child.id, action=action))
        writes.append((ctx.keys.child(child.id), encode(child), kv.mod_revision if kv else 0))
        digests[child.id] = spec_digest(child)
    if args.prune:
        for kind, stored, listed, key_of in (
            ("child", stored_children, children, ctx.keys.child),
            ("group", stored_groups, groups, ctx.keys.group),
        ):
            for name in sorted(stored.keys() - listed.keys()):
                plan.append(PlanEntry(kind=kind, id=name, action="delete"))
                writes.append((key_of(name), None, stored[name].mod_revision))
    if args.dry_run or not writes:
        return Applied(dry_run=args.dry_run, plan=plan)

    transactions = 0
    for start in range(0, len(writes), ctx.etcd.txn_ops):
        batch = writes[start : start + ctx.etcd.txn_ops]
        puts = [(key, value, rev) for key, value, rev in batch if value is not None]
        deletes = [(key, rev) for key, value, rev in batch if value is None]
        if not await ctx.etcd.write_if(puts, deletes):
            raise Refused(
                "the stored specs changed while this applied the file (another apply or "
                f"update?): {start} of {len(writes)} changes were written, no more; "
                "run it again (--dry-run shows what is left)"
            )
        transactions += 1
    if timeout is not None:
        await wait_rolled_out(ctx, digests, timeout)
    return Applied(dry_run=False, plan=plan, transactions=transactions)


def _position(kind: str, index: int, item: Any, name_key: str) -> str:
    """``child 3 (id web)``: a spec by its 1-based place among its file's tables."""
    name = item.get(name_key) if isinstance(item, dict) else None
    return f"{kind} {index + 1}" + (f" ({name_key} {name})" if isinstance(name, str) else "")


def validate_file(
    group_items: list[Any], child_items: list[Any]
) -> tuple[dict[str, GroupSpec], dict[str, ChildSpec]]:
    """The file's specs by name, in file order.

    Raises:
        InvalidSpecs: every wrong field of every spec, and every name listed twice.
    """
    lines: list[str] = []
    groups: dict[str, GroupSpec] = {}
    children: dict[str, ChildSpec] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(group_items):
        where = _position("group", index, item, "name")
        try:
            spec = parse_group(item) if isinstance(item, dict) else None
        except InvalidSpec:
            spec = None
        if spec is None:  # every problem, not only msgspec's first
            found = group_problems(item) or [("group", "is not valid")]
            lines += [f"{where}: {path or 'group'}: {why}" for path, why in found]
            continue
        if spec.name in groups:
            lines.append(f"{where}: name: {spec.name!r} appears twice (group {first[spec.name]})")
            continue
        groups[spec.name], first[spec.name] = spec, index + 1
    first = {}
    for index, item in enumerate(child_items):
        where = _position("child", index, item, "id")
        try:
            child = parse_child(item) if isinstance(item, dict) else None
        except InvalidSpec as exc:
            # Every problem of the spec, not only the first; one child_problems does not
            # know is still named.
            found = child_problems(item) or [(exc.field, exc.problem)]
            lines += [f"{where}: {path or 'child'}: {why}" for path, why in found]
            continue
        if child is None:
            lines += [f"{where}: {path or 'child'}: {why}" for path, why in child_problems(item)]
            continue
        if child.id in children:
            lines.append(f"{where}: id: {child.id!r} appears twice (child {first[child.id]})")
            continue
        children[child.id], first[child.id] = child, index + 1
    if lines:
        raise InvalidSpecs(lines, "file")
    return groups, children


def _check_prune(
    children: Mapping[str, ChildSpec],
    groups: Mapping[str, GroupSpec],
    stored_groups: Mapping[str, KV],
) -> None:
    """With ``prune``, a child of the file may not use a stored group the file
    leaves out: pruning would delete the group from under it.

    Raises:
        InvalidSpecs: naming each such child.
    """
    lines = [
        f"{_position('child', index, {'id': child.id}, 'id')}: group: group {child.group} "
        "is not in the file, and --prune would delete it"
        for index, child in enumerate(children.values())
        if child.group is not None and child.group not in groups and child.group in stored_groups
    ]
    if lines:
        raise InvalidSpecs(lines, "file")


def _by_name(ctx: Context, kvs: list[KV]) -> dict[str, KV]:
    """Stored specs by name, in creation order (their start order)."""
    out = {}
    for kv in sorted(kvs, key=lambda kv: kv.create_revision):
        parsed = ctx.keys.parse(kv.key)
        if parsed is not None and parsed[0] in ("children", "groups") and "/" not in parsed[1]:
            out[parsed[1]] = kv
    return out


# -- export ----------------------------------------------------------------------------


async def export(ctx: Context, args: ExportArgs) -> Exported:
    """The stored specs (all, or those named: children or groups) as a specs file
    has them: only the fields that differ from the defaults."""
    _, group_kvs = await ctx.etcd.list(ctx.keys.group(""))
    _, child_kvs = await ctx.etcd.list(ctx.keys.child(""))
    stored_groups = _by_name(ctx, group_kvs)
    stored_children = _by_name(ctx, child_kvs)
    if args.ids:
        wanted = set(args.ids)
        for name in args.ids:
            if name not in stored_groups and name not in stored_children:
                raise NotFound("child or group", name)
        stored_groups = {n: kv for n, kv in stored_groups.items() if n in wanted}
        stored_children = {n: kv for n, kv in stored_children.items() if n in wanted}
    groups, children, invalid = [], [], []
    for name, kv in stored_groups.items():
        record = _stored_group(kv)
        if record is None:
            invalid.append(f"group {name}")
        else:
            groups.append(written(record.spec))
    for name, kv in stored_children.items():
        spec = _stored_child(kv)
        if spec is None:
            invalid.append(f"child {name}")
        else:
            children.append(written(spec))
    return Exported(groups=groups, children=children, invalid=invalid)


# -- rollout ---------------------------------------------------------------------------


async def rollout(ctx: Context, args: RolloutArgs) -> RolloutStatus:
    """Which instance runs which spec revision, and whether the move to the current
    spec is in progress, done or halted."""
    stored = ctx.view.spec(args.id)
    if stored is None:
        kv = await ctx.etcd.get(ctx.keys.child(args.id))
        if kv is None:
            raise NotFound("child", args.id)
        # Written a moment ago (not in the view yet), or not a valid spec.
        return RolloutStatus(
            id=args.id,
            state=NOT_PLACED,
            reason="the spec is new or not valid",
            revision=kv.mod_revision,
            digest="",
            instances=[],
        )
    spec, digest = stored.value, spec_digest(stored.value)
    state = ctx.reconciler.rollout(args.id)
    instances = []
    for replica in range(spec.replicas):
        key = instance_key(args.id, replica)
        claim = ctx.view.claim(key)
        if claim is None:
            instances.append(
                RolloutInstance(
                    instance=key,
                    replica=replica,
                    node=None,
                    state="not running",
                    revision=None,
                    current=False,
                    ready=False,
                    health="",
                )
            )
            continue
        value = claim.value
        instances.append(
            RolloutInstance(
                instance=key,
                replica=replica,
                node=value.node,
                state=value.state,
                revision=value.revision,
                current=value.digest == digest,
                ready=value.ready,
                health=value.health,
            )
        )
    return RolloutStatus(
        id=args.id,
        state=state.state if state is not None else NOT_PLACED,
        reason=state.reason if state is not None else "",
        revision=stored.kv.mod_revision,
        digest=digest,
        instances=instances,
    )
