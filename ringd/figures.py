"""Per-child figures (RSS, CPU) from psutil: measured on demand for this node's
children, and published every ``figures_interval`` under ``nodes/<n>/figures``
(on the node's lease) so that ``which-children`` anywhere can show them.
"""

from __future__ import annotations

import json
import logging
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
    """RSS in bytes and CPU in % of one core (since the previous look) per pid."""

    def __init__(self) -> None:
        # psutil keeps the previous CPU sample inside each Process: reuse them by pid.
        self._processes: dict[int, psutil.Process] = {}

    def of(self, pid: int | None) -> tuple[int, float] | None:
        if not pid:
            return None
        try:
            proc = self._processes.get(pid)
            if proc is None:
                proc = self._processes[pid] = psutil.Process(pid)
                proc.cpu_percent(None)
            return proc.memory_info().rss, proc.cpu_percent(None)
        except psutil.Error:
            self._processes.pop(pid, None)
            return None

    def forget_others(self, pids: set[int]) -> None:
        for pid in self._processes.keys() - pids:
            del self._processes[pid]

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
