"""The restart floors: the least a trio supervisor can do to keep N children running.

``python -m bench.floor MODE N FIFO TAG_PREFIX PROBE [PYTHON]`` runs N children
``PROBE FIFO TAG_PREFIX.i`` (``[PYTHON, PROBE, ...]`` for the Python probe) and
respawns each one the moment it exits, forever:

* ``trio``: ``trio.lowlevel.open_process`` + ``await proc.wait()`` in a loop
  (the issue's "minimal trio respawn loop"; ``open_process`` runs ``Popen`` in a
  worker thread);
* ``spawn``: ``os.posix_spawn`` (own session, as ringd does) on the trio thread and
  a pidfd to wait, like ringd's supervisor, minus its output pipe, log and
  bookkeeping.

SIGTERM or SIGINT kills every child and exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import trio


async def _trio_slot(argv: list[str], live: dict[int, int]) -> None:
    while True:
        proc = await trio.lowlevel.open_process(argv)
        live[id(proc)] = proc.pid
        try:
            await proc.wait()
        finally:
            live.pop(id(proc), None)


async def _spawn_slot(argv: list[str], live: dict[int, int]) -> None:
    env = dict(os.environ)
    while True:
        # On the trio thread, as ringd does: posix_spawn returns once the child has exec'd.
        pid = os.posix_spawn(argv[0], argv, env, setsid=True)  # noqa: ASYNC221
        live[pid] = pid
        fd = os.pidfd_open(pid)
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
            live.pop(pid, None)
        os.waitpid(pid, 0)  # noqa: ASYNC222 (a zombie by now: does not block)


async def _main(mode: str, n: int, fifo: str, prefix: str, command: list[str]) -> None:
    slot = _trio_slot if mode == "trio" else _spawn_slot
    live: dict[int, int] = {}
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(slot, [*command, fifo, f"{prefix}.{i}"], live)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        for pid in list(live.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    mode, n, fifo, prefix, *command = argv[1:]
    if mode not in ("trio", "spawn") or not command:
        print(__doc__, file=sys.stderr)
        return 2
    trio.run(_main, mode, int(n), fifo, prefix, command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
