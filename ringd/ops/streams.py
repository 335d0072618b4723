"""What a child writes and what the cluster does: logs, logs -f and watch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ..hooks import child_update, node_update
from ..logs import tail
from ..protocol import LogLines
from .local import local_child

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from pathlib import Path

    from ..protocol import LogsArgs, WatchArgs
    from .context import Context

_FOLLOW_POLL = 0.2  # seconds between looks at a followed log


async def logs(ctx: Context, args: LogsArgs) -> LogLines:
    """A child's last lines of output (on the node it runs on)."""
    child = local_child(ctx, args.id)
    path = ctx.supervisor.log_path(child.id)
    lines = await trio.to_thread.run_sync(tail, path, args.lines)
    return LogLines(id=child.id, node=ctx.node, lines=lines)


async def logs_follow(ctx: Context, args: LogsArgs) -> AsyncGenerator[str, None]:
    """The last lines, then every new line as it is written (across rotations)."""
    child = local_child(ctx, args.id)
    path = ctx.supervisor.log_path(child.id)
    for last in await trio.to_thread.run_sync(tail, path, args.lines):
        yield last
    position = path.stat().st_size if path.exists() else 0
    inode = path.stat().st_ino if path.exists() else None
    partial = b""
    while True:
        await trio.sleep(_FOLLOW_POLL)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_ino != inode or st.st_size < position:
            inode, position = st.st_ino, 0  # rotated
        if st.st_size == position:
            continue
        data = await trio.to_thread.run_sync(_read_from, path, position)
        position += len(data)
        *complete, partial = (partial + data).split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")


def _read_from(path: Path, position: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(position)
        return f.read()


async def watch(ctx: Context, args: WatchArgs) -> AsyncGenerator[dict[str, Any], None]:
    """node_update and child events as they happen (``what``: nodes, children, all)."""
    with ctx.view.subscribe() as changes:
        async for change in changes:
            event = None
            if args.what in ("nodes", "all"):
                event = node_update(change, ctx.keys)
            if event is None and args.what in ("children", "all"):
                event = child_update(change, ctx.keys)
            if event is not None:
                event["revision"] = change.kv.mod_revision
                yield event
