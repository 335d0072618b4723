"""Per-child figures (RSS, CPU) from /proc: measured on demand for this node's
children, and published every ``figures_interval`` under ``nodes/<n>/figures``
(on the node's lease) so that ``which-children`` anywhere can show them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import trio

from .errors import EtcdUnavailable

if TYPE_CHECKING:
    from .etcd import Etcd
    from .keys import Keys
    from .membership import Membership
    from .supervisor import Supervisor

logger = logging.getLogger(__name__)


_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def read_proc(pid: int) -> tuple[float, int]:
    """(CPU seconds, user + system; RSS in bytes) of a process, from /proc.

    Two small reads instead of psutil's Process (~100 us per pid against ~30 here):
    the periodic publication reads every child, and with 1,000 children psutil
    alone cost a third of the daemon's idle CPU budget. The figures are the same
    ones psutil reports (``cpu_times`` user + system, ``memory_info().rss``).
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    with open(f"/proc/{pid}/statm", "rb") as f:
        statm = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICKS, int(statm.split()[1]) * _PAGE


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def start_time(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch: the value psutil's
    ``Process.create_time()`` gives (boot time + the start tick in /proc/<pid>/stat),
    without importing psutil (2.6 MiB of the daemon's RSS) for one field.

    Raises:
        OSError: there is no such process.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
    return ticks / _TICKS + _boot_time()


class Figures:
    """RSS in bytes and CPU in % of one core (since the previous look) per pid.

    Keeps one small tuple per pid, and answers from a reading less than ``fresh``
    seconds old, so that a crowd of ``which-children`` calls reads each child's
    /proc once.
    """

    def __init__(self, fresh: float = 1.0) -> None:
        self.fresh = fresh
        # pid -> (cpu seconds, when, rss, cpu %): the previous reading
        self._last: dict[int, tuple[float, float, int, float]] = {}

    def of(self, pid: int | None) -> tuple[int, float] | None:
        if not pid:
            return None
        now = time.monotonic()
        last = self._last.get(pid)
        if last is not None and now - last[1] < self.fresh:
            return last[2], last[3]
        try:
            cpu, rss = read_proc(pid)
        except (OSError, ValueError, IndexError):  # gone (or a zombie's empty statm)
            self._last.pop(pid, None)
            return None
        percent = 0.0
        if last is not None and now > last[1]:
            percent = max(cpu - last[0], 0.0) / (now - last[1]) * 100
        self._last[pid] = (cpu, now, rss, percent)
        return rss, percent

    def forget_others(self, pids: set[int]) -> None:
        for pid in self._last.keys() - pids:
            del self._last[pid]

    async def publish(
        self,
        *,
        etcd: Etcd,
        keys: Keys,
        node: str,
        supervisor: Supervisor,
        membership: Membership,
        interval: float,
    ) -> None:
        """Put this node's figures in etcd every ``interval`` seconds (while it has children)."""
        published: tuple[int | None, dict[str, Any] | None] = (None, None)  # lease, figures
        while True:
            await trio.sleep(interval)
            lease = membership.lease_id
            if lease is None:
                continue
            figures: dict[str, Any] = {}
            for key, child in list(supervisor.children.items()):
                if (measured := self.of(child.pid)) is not None:
                    # Rounded (64 KiB, 0.1 %), so that idle children make no change.
                    figures[key] = [measured[0] >> 16 << 16, round(measured[1], 1)]
            self.forget_others({c.pid for c in supervisor.children.values() if c.pid})
            if published == (lease, figures):
                continue  # the same again: no write, and no watch event on every node
            try:
                await etcd.put(keys.figures(node), json.dumps(figures).encode(), lease=lease)
                published = (lease, figures)
            except EtcdUnavailable as exc:
                logger.debug("cannot publish figures: %s", exc)
