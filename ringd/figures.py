"""Per-child figures (RSS, CPU) from psutil: measured on demand for this node's
children, and published every ``figures_interval`` under ``nodes/<n>/figures``
(on the node's lease) so that ``which-children`` anywhere can show them.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import psutil
import trio

from .errors import EtcdUnavailable

if TYPE_CHECKING:
    from .etcd import Etcd
    from .keys import Keys
    from .membership import Membership
    from .supervisor import Supervisor

logger = logging.getLogger(__name__)


class Figures:
    """RSS in bytes and CPU in % of one core (since the previous look) per pid.

    Keeps one small tuple per pid, not a ``psutil.Process`` (~0.75 KiB each, with
    1,000 children), and answers from a reading less than ``fresh`` seconds old,
    so that a crowd of ``which-children`` calls reads each child's /proc once.
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
            proc = psutil.Process(pid)
            with proc.oneshot():
                cpu = sum(proc.cpu_times()[:2])
                rss = proc.memory_info().rss
        except psutil.Error:
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
        published_empty = False
        while True:
            await trio.sleep(interval)
            lease = membership.lease_id
            if lease is None or (published_empty and not supervisor.children):
                continue
            figures: dict[str, Any] = {}
            for key, child in list(supervisor.children.items()):
                if (measured := self.of(child.pid)) is not None:
                    figures[key] = [measured[0], round(measured[1], 2)]
            self.forget_others({c.pid for c in supervisor.children.values() if c.pid})
            try:
                await etcd.put(keys.figures(node), json.dumps(figures).encode(), lease=lease)
                published_empty = not figures
            except EtcdUnavailable as exc:
                logger.debug("cannot publish figures: %s", exc)
