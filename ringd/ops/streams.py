"""What a child writes and what the cluster does: logs, logs -f and watch."""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import signal
import subprocess
from typing import TYPE_CHECKING, Any, BinaryIO

import trio

from ..errors import NotFound, Refused
from ..hooks import child_update, node_update
from ..logs import tail
from ..protocol import LogLines
from .local import local_child

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from pathlib import Path

    from ..protocol import ExecArgs, LogsArgs, WatchArgs
    from .context import Context

_FOLLOW_POLL = 0.2  # seconds between looks at a followed log


async def logs(ctx: Context, args: LogsArgs) -> LogLines:
    """A child's last lines of output (on the node it runs on; with ``node``, the
    log kept on this node, of an instance that ran here before it moved)."""
    if args.node is None:
        instance = local_child(ctx, args.id).id
    elif ctx.supervisor.log_path(args.id).exists() or args.id in ctx.supervisor.children:
        instance = args.id
    else:
        raise NotFound("log of child", f"{args.id} on {ctx.node}")
    path = ctx.supervisor.log_path(instance)
    lines = await trio.to_thread.run_sync(tail, path, args.lines)
    return LogLines(id=instance, node=ctx.node, lines=lines)


async def logs_follow(ctx: Context, args: LogsArgs) -> AsyncGenerator[str, None]:
    """The last lines, then every new line as it is written (across rotations).

    Follows the open file, not its name: at a rotation the rest of the old file
    (renamed ``.1``) is read to its end before the new one is opened, so no line
    written between two looks is lost. Ends, after its last lines, when this
    instance is no longer supervised here (it moved, or its claim is new)."""
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
            gone = ctx.supervisor.children.get(child.id) is not child
            if log is None:
                log = _open(path)
                if log is None:
                    if gone:
                        return
                    continue
            rotated = _rotated(path, log)
            data = await trio.to_thread.run_sync(log.read)  # the rest, even if rotated
            *complete, partial = (partial + data).split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
            if gone:
                if partial:
                    yield partial.decode(errors="replace")
                return
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


_EXEC_POLL = 0.25  # seconds: the longest wait for output before looking at the clock


async def exec_(ctx: Context, args: ExecArgs) -> AsyncGenerator[dict[str, Any], None]:
    """Run ``argv`` beside a child instance here, with its environment (its
    ``RINGD_*`` variables, the fence included) and cwd, in a process group of its
    own; events ``{"stream": "stdout"|"stderr", "data": text}`` as it writes, then
    ``{"exit": status, "timed_out": bool}`` (status 128+N after signal N). Killed
    with its group at ``timeout``, or when the caller goes away.

    Raises:
        Refused: the instance here is not the one the caller saw (``fence``).
    """
    child = local_child(ctx, args.id)
    if args.fence is not None and child.fence != args.fence:
        raise Refused(
            f"child {args.id} moved or was started again: it runs on node {ctx.node} now "
            f"(fence {child.fence}, not {args.fence})"
        )
    try:
        process = _spawn(args.argv, ctx.supervisor.child_env(child), child.spec.cwd)
    except OSError as exc:
        raise Refused(f"exec {args.argv[0]}: {exc.strerror or exc}") from None
    assert process.stdout is not None
    assert process.stderr is not None
    pipes = {process.stdout.fileno(): "stdout", process.stderr.fileno(): "stderr"}
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in pipes}
    for fd in pipes:
        os.set_blocking(fd, False)
    deadline = trio.current_time() + args.timeout
    timed_out = False
    try:
        open_fds = set(pipes)
        while open_fds or process.poll() is None:
            left = deadline - trio.current_time()
            if left <= 0:
                timed_out = True
                break
            if not open_fds:
                await trio.sleep(min(_EXEC_POLL / 5, left))
                continue
            ready = await trio.to_thread.run_sync(
                _readable, list(open_fds), min(_EXEC_POLL, left), abandon_on_cancel=True
            )
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                text = decoders[fd].decode(data, final=not data)
                if not data:
                    open_fds.discard(fd)
                if text:
                    yield {"stream": pipes[fd], "data": text}
    finally:
        status = _end(process)
    yield {"exit": 128 - status if status < 0 else status, "timed_out": timed_out}


def _spawn(argv: list[str], env: dict[str, str], cwd: str | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _end(process: subprocess.Popen[bytes]) -> int:
    """Its process group killed (what it left there too), its exit status."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    status = process.wait()  # exited, or SIGKILLed just now: at once
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return status


def _readable(fds: list[int], timeout: float) -> list[int]:
    readable, _, _ = select.select(fds, [], [], timeout)
    return readable
