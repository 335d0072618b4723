"""What a child writes and what the cluster does: logs, logs -f and watch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, BinaryIO

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
    """The last lines, then every new line as it is written (across rotations).

    Follows the open file, not its name: at a rotation the rest of the old file
    (renamed ``.1``) is read to its end before the new one is opened, so no line
    written between two looks is lost."""
    child = local_child(ctx, args.id)
    path = ctx.supervisor.log_path(child.id)
    for last in await trio.to_thread.run_sync(tail, path, args.lines):
        yield last
    log: BinaryIO | None = None
    partial = b""
    try:
        log = _open(path)
        if log is not None:
            log.seek(0, os.SEEK_END)
        while True:
            await trio.sleep(_FOLLOW_POLL)
            if log is None:
                log = _open(path)
                if log is None:
                    continue
            rotated = _rotated(path, log)
            data = await trio.to_thread.run_sync(log.read)  # the rest, even if rotated
            *complete, partial = (partial + data).split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
            if rotated:
                log.close()
                log = _open(path)
    finally:
        if log is not None:
            log.close()


def _open(path: Path) -> BinaryIO | None:
    """The log opened for reading (kept open across polls: closed by the caller)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _rotated(path: Path, log: BinaryIO) -> bool:
    """The name now points to another file (rotated), or the file was truncated."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False  # between the rename and the new file: look again next time
    if st.st_ino != os.fstat(log.fileno()).st_ino:
        return True
    if st.st_size < log.tell():
        log.seek(0)  # truncated in place: read it from the start
    return False


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
