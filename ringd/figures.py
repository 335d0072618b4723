"""Per-child figures (RSS, CPU) from /proc: measured on demand for this node's
children, and published every ``figures_interval`` under ``nodes/<n>/figures``
(on the node's lease) so that ``which-children`` anywhere can show them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from .errors import EtcdUnavailable
from .procfs import cpu_and_rss
from .procfs import start_time as start_time  # re-exported: tests/test_figures.py
from .records import InvalidRecord, NodeFigures, decode_figures, encode

if TYPE_CHECKING:
    from .etcd import Etcd
    from .keys import Keys
    from .membership import Membership
    from .supervisor import Supervisor

logger = logging.getLogger(__name__)

read_proc = cpu_and_rss  # its name when it lived here (tests/test_figures.py)


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
            cpu, rss = cpu_and_rss(pid)
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


class PublishedFigures:
    """Other nodes' published figures, read from etcd when a listing needs them: one
    read of every node's (small) key, reused for ``fresh`` seconds. Not mirrored by
    the view: a minute's figures of every node would otherwise reach every daemon."""

    def __init__(self, etcd: Etcd, keys: Keys, fresh: float = 1.0) -> None:
        self.etcd = etcd
        self.prefix = keys.figures()
        self.fresh = fresh
        self._read: tuple[float, dict[str, NodeFigures]] | None = None

    async def by_node(self) -> dict[str, NodeFigures]:
        now = time.monotonic()
        if self._read is not None and now - self._read[0] < self.fresh:
            return self._read[1]
        try:
            _, kvs = await self.etcd.list(self.prefix)
        except EtcdUnavailable as exc:
            logger.debug("cannot read published figures: %s", exc)
            return self._read[1] if self._read else {}
        out = {}
        for kv in kvs:
            try:
                out[kv.key.removeprefix(self.prefix)] = decode_figures(kv.value)
            except InvalidRecord:
                continue  # a third party's: no figures for that node
        self._read = (now, out)
        return out


class Publisher:
    """Puts this node's figures in etcd every ``interval`` seconds, under its lease
    (only when they changed: idle children cause no write and no watch event)."""

    def __init__(
        self,
        figures: Figures,
        *,
        etcd: Etcd,
        keys: Keys,
        node: str,
        supervisor: Supervisor,
        membership: Membership,
        interval: float,
    ) -> None:
        self.figures = figures
        self.etcd = etcd
        self.key = keys.figures(node)
        self.supervisor = supervisor
        self.membership = membership
        self.interval = interval

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        published: tuple[int | None, NodeFigures | None] = (None, None)  # lease, figures
        while True:
            await trio.sleep(self.interval)
            lease = self.membership.lease_id
            if lease is None:
                continue
            figures: NodeFigures = {}
            children = self.supervisor.children
            for key, child in list(children.items()):
                if (measured := self.figures.of(child.pid)) is not None:
                    # Rounded (64 KiB, 0.1 %), so that idle children make no change.
                    figures[key] = (measured[0] >> 16 << 16, round(measured[1], 1))
            self.figures.forget_others({c.pid for c in children.values() if c.pid})
            if published == (lease, figures):
                continue
            try:
                await self.etcd.put(self.key, encode(figures), lease=lease)
                published = (lease, figures)
            except EtcdUnavailable as exc:
                logger.debug("cannot publish figures: %s", exc)
