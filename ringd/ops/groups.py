"""Groups: create, list, delete and reset them (their specs live in etcd)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from ..errors import AlreadyExists, NotFound, Refused
from ..protocol import GroupDeleted, GroupRow
from ..spec import GroupRecord, encode, parse_group, parse_group_record

if TYPE_CHECKING:
    from ..protocol import Args, CreateGroupArgs, DeleteGroupArgs, ResetGroupArgs
    from .context import Context


def group_row(ctx: Context, name: str, record: GroupRecord) -> GroupRow:
    members = sum(spec.group == name for spec in ctx.reconciler.specs().values())
    return GroupRow(
        **msgspec.structs.asdict(record.spec),
        state=record.state,
        reason=record.reason,
        failed_node=record.node,
        since=record.since,
        children=members,
    )


async def create_group(ctx: Context, args: CreateGroupArgs) -> GroupRow:
    """Store a group spec; the same spec again is fine."""
    spec = parse_group(args.spec)
    record = GroupRecord(spec=spec, since=time.time())
    created, existing = await ctx.etcd.create(ctx.keys.group(spec.name), encode(record))
    if not created and (existing is None or parse_group_record(existing.value).spec != spec):
        raise AlreadyExists("group", spec.name)
    return group_row(ctx, spec.name, record)


async def groups(ctx: Context, args: Args) -> list[GroupRow]:
    return [
        group_row(ctx, name, stored.value) for name, stored in sorted(ctx.view.groups().items())
    ]


async def delete_group(ctx: Context, args: DeleteGroupArgs) -> GroupDeleted:
    """Remove a group; refused while children use it unless ``force``."""
    specs = ctx.reconciler.specs()
    users = sorted(child_id for child_id, spec in specs.items() if spec.group == args.name)
    if users and not args.force:
        shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
        raise Refused(f"group {args.name} is used by {len(users)} children ({shown}); use --force")
    if not await ctx.etcd.delete(ctx.keys.group(args.name)):
        raise NotFound("group", args.name)
    return GroupDeleted(name=args.name, orphaned_children=users)


async def reset_group(ctx: Context, args: ResetGroupArgs) -> GroupRow:
    """Clear a failed group: its children start again."""
    kv = await ctx.etcd.get(ctx.keys.group(args.name))
    if kv is None:
        raise NotFound("group", args.name)
    record = parse_group_record(kv.value)
    fresh = msgspec.structs.replace(
        record, state="running", reason="reset by operator", node=None, since=time.time()
    )
    if not await ctx.etcd.put_if(kv.key, encode(fresh), mod_revision=kv.mod_revision):
        raise Refused(f"group {args.name} changed while resetting it; try again")
    return group_row(ctx, args.name, fresh)
