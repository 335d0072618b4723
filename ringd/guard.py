"""The guard: a small process outside the daemon that kills its children when the
daemon cannot.

The daemon cannot fence itself when it is SIGKILLed or frozen (SIGSTOP, a long
pause), yet its children keep running while its lease runs out. The guard holds
a pipe from the daemon. It kills every process carrying the daemon's instance
token (``RINGD_INSTANCE`` in its environment: children and anything they forked)
when the pipe closes without a goodbye (the daemon died), or when the deadline
the daemon last sent passes (``last keepalive sent + TTL - margin``): the daemon
is frozen and its lease may expire, so another node may soon start the children.

Run as ``python -m ringd.guard TOKEN``; the daemon side is ``Guard``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

# The stdlib only: this module runs as the guard process, kept small.
from .procfs import environ_scan, start_ticks

if TYPE_CHECKING:
    from collections.abc import Collection

    import trio

logger = logging.getLogger(__name__)


def instance_pids(token: str, instances: Collection[tuple[str, int]] | None = None) -> list[int]:
    """Pids of the processes whose environment holds ``RINGD_INSTANCE=token`` (and,
    when given, one of ``instances``: (``RINGD_CHILD_ID``, ``RINGD_FENCE``) pairs of
    particular child instances, so that a new instance of the same child, with a
    new fence, is never mistaken for them; claims made together share a fence)."""
    marker = f"RINGD_INSTANCE={token}".encode()
    wanted = (
        None
        if instances is None
        else {(f"RINGD_CHILD_ID={c}".encode(), f"RINGD_FENCE={f}".encode()) for c, f in instances}
    )
    found = []
    for pid, raw in environ_scan(marker):
        env = raw.split(b"\0")
        if marker in env and (wanted is None or _identity(env) in wanted):
            found.append(pid)
    return found


def _identity(env: list[bytes]) -> tuple[bytes, bytes]:
    """A process's (RINGD_CHILD_ID=..., RINGD_FENCE=...) entries."""
    child = fence = b""
    for entry in env:
        if entry.startswith(b"RINGD_CHILD_ID="):
            child = entry
        elif entry.startswith(b"RINGD_FENCE="):
            fence = entry
    return child, fence


def kill_instance(
    token: str,
    instances: Collection[tuple[str, int]] | None = None,
    spare_groups: Collection[int] = (),
) -> int:
    """SIGKILL every process of the daemon instance (or of these child ``instances``,
    see ``instance_pids``) and its process group, except those in ``spare_groups``
    (running children); returns how many."""
    killed = 0
    for _ in range(5):  # again, for anything forked while we were killing
        pids = []
        for pid in instance_pids(token, instances):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) not in spare_groups:
                    pids.append(pid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed += 1
        time.sleep(0.01)
    return killed


def kill_groups(groups: dict[int, int]) -> int:
    """SIGKILL the process groups of the children the daemon reported (pgid -> its
    leader's start ticks): this finds children that overwrote their environment
    (nginx, PostgreSQL, setproctitle), which the token scan cannot. A number now
    taken by another process (the leader's start differs) is left alone; a group
    whose leader is gone cannot have been reused while members remain."""
    killed = 0
    for pgid, ticks in groups.items():
        now = start_ticks(pgid)
        if now is not None and now != ticks:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
            killed += 1
    return killed


def main(argv: list[str]) -> int:
    token = argv[1]
    # Ctrl-C at the daemon's terminal is for the daemon, which stops children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    deadline = math.inf
    groups: dict[int, int] = {}  # the daemon's children: pgid -> leader's start ticks
    fd = sys.stdin.fileno()
    buffer = b""
    while True:
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            n = kill_groups(groups) + kill_instance(token)
            print(f"ringd-guard: daemon missed its deadline; killed {n} processes", file=sys.stderr)
            deadline = math.inf
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            n = kill_groups(groups) + kill_instance(token)
            if n:
                print(f"ringd-guard: daemon died; killed {n} processes", file=sys.stderr)
            return 0
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line == b"bye":
                # The daemon stopped its children; sweep up anything that escaped
                # their process groups (a grandchild in a session of its own).
                # At normal priority, not lower (tried): the claims are released,
                # so an escapee may already overlap its successor; a sweep that
                # a busy machine delays makes that window longer.
                kill_instance(token)
                return 0
            if line.startswith(b"deadline "):
                deadline = float(line.split()[1])
            elif line.startswith(b"group "):
                _, pgid, ticks = line.split()
                groups[int(pgid)] = int(ticks)
            elif line.startswith(b"ungroup "):
                groups.pop(int(line.split()[1]), None)


class Guard:
    """The daemon's side of the guard."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.process: subprocess.Popen[bytes] | None = None
        self.groups: dict[int, int] = {}  # what the guard was told: pgid -> start ticks
        self._pending: list[str] = []  # group lines not sent yet
        self._deadline = math.inf  # the last one sent

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ringd.guard", self.token],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        # A new guard after the last one died: tell it everything it must watch.
        told = [f"group {g} {t}\n" for g, t in self.groups.items()]
        if self._deadline != math.inf:
            told.append(f"deadline {self._deadline:.3f}\n")
        if told:
            self._write("".join(told).encode())

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Start the guard process; it stays until ``close`` (a clean leave). Not
        closed when the daemon ends otherwise: the guard then kills the children."""
        import trio  # here: the guard process itself runs without trio

        self.start()
        task_status.started()
        await trio.sleep_forever()

    def _send(self, line: bytes) -> None:
        """Send to the guard, starting a new one if it is gone. Never raises: this
        runs from keepalives and from event-loop callbacks, where an exception would
        take the daemon down (and its children would run on unwatched)."""
        if self.process is None or self.process.poll() is not None:
            logger.warning("guard process gone; starting a new one")
            self._discard()
            try:
                self.start()
            except OSError as exc:  # out of processes or descriptors: next time
                logger.error("cannot start the guard process: %s", exc)
                self.process = None
                return
        self._write(line)

    def _write(self, data: bytes) -> None:
        process = self.process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write(data)
            process.stdin.flush()
        except OSError:  # it died meanwhile: the next send starts another
            self._discard()

    def _discard(self) -> None:
        """Forget a guard that is gone, closing our end of its pipe."""
        process, self.process = self.process, None
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def watch_group(self, pid: int) -> None:
        """A child was spawned: its process group (it leads it) dies with the daemon."""
        ticks = start_ticks(pid)
        if ticks is not None:
            self.groups[pid] = ticks
            self._queue(f"group {pid} {ticks}\n")

    def forget_group(self, pid: int) -> None:
        """That child has exited and its group was killed: its number may be reused."""
        if self.groups.pop(pid, None) is not None:
            self._queue(f"ungroup {pid}\n")

    def _queue(self, line: str) -> None:
        # Sent together once the event loop turns: a pass that spawns 1,000 children
        # wakes the guard once, not 1,000 times (that cost 0.13 s of those 1,000
        # starts on 2 CPUs). The token scan covers a child until then.
        self._pending.append(line)
        if len(self._pending) > 1:
            return
        import trio  # the daemon's; the guard process itself never gets here

        try:
            trio.lowlevel.current_trio_token().run_sync_soon(self._flush)
        except RuntimeError:  # not under trio: at once
            self._flush()

    def _flush(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            self._send("".join(lines).encode())

    def deadline(self, monotonic_deadline: float) -> None:
        """Children must be dead by this ``time.monotonic()`` unless renewed."""
        self._deadline = monotonic_deadline
        self._send(f"deadline {monotonic_deadline:.3f}\n".encode())

    def close(self) -> None:
        """The daemon is leaving cleanly (its children are already stopped)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(BrokenPipeError):
            assert process.stdin is not None
            process.stdin.write(b"bye\n")
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
