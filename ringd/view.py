"""A local mirror of the cluster's keys in etcd: list, then watch from that revision.

Every part reads cluster state from here instead of asking etcd. A broken watch
is resumed from the last revision seen; a compacted revision forces a re-list;
and a periodic full re-list catches anything a watch could have missed.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import trio

from .errors import EtcdUnavailable, WatchBroken

if TYPE_CHECKING:
    from .etcd import KV, Etcd, Event
    from .keys import Keys

logger = logging.getLogger(__name__)


class ClusterView:
    """The keys under one prefix, kept current.

    Args:
        etcd: the etcd facade.
        keys: the key layout (its prefix is what is mirrored).
        resync_interval: seconds between full re-lists.
        max_backoff: the longest wait (before jitter) between reconnection attempts.
    """

    def __init__(
        self,
        etcd: Etcd,
        keys: Keys,
        *,
        resync_interval: float = 30.0,
        max_backoff: float = 1.0,
    ) -> None:
        self.etcd = etcd
        self.keys = keys
        self.resync_interval = resync_interval
        # Between reconnection attempts while etcd is away. Nothing is placed or
        # started from a stale view, so after an outage this is time children stay
        # down: keep it well under a lease TTL (one list or watch per second per
        # daemon is no load for etcd).
        self.max_backoff = max_backoff
        self.kvs: dict[str, KV] = {}
        self.revision = 0
        self.version = 0  # bumped on every change; see wait_changed
        self._changed = trio.Event()

    # -- reading ----------------------------------------------------------------------

    def by_kind(self, kind: str, sub: str = "") -> dict[str, KV]:
        """``{name: kv}`` for one kind of key (``children``, ``claims``, ``nodes``+``alive``)."""
        out: dict[str, KV] = {}
        for key, kv in self.kvs.items():
            parsed = self.keys.parse(key)
            if parsed and parsed[0] == kind and parsed[2] == sub:
                out[parsed[1]] = kv
        return out

    async def wait_changed(self, seen: int) -> int:
        """Wait until ``version`` differs from ``seen``; return the new version."""
        while self.version == seen:
            await self._changed.wait()
        return self.version

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    # -- keeping current --------------------------------------------------------------

    async def _relist(self) -> None:
        revision, kvs = await self.etcd.list(self.keys.prefix)
        self.kvs = {kv.key: kv for kv in kvs}
        self.revision = revision
        self._bump()

    async def _apply(self, events: list[Event], revision: int) -> None:
        for event in events:
            if event.kind == "delete":
                self.kvs.pop(event.kv.key, None)
            else:
                self.kvs[event.kv.key] = event.kv
        self.revision = max(self.revision, revision)
        self._bump()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """List, then watch forever; ``started`` after the first successful list."""
        backoff = 0.1
        started = False
        need_list = True
        watched_since = 0.0
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                    if not started:
                        started = True
                        task_status.started()
                watched_since = trio.current_time()
                with trio.move_on_after(self.resync_interval):
                    await self.etcd.watch(self.keys.prefix, self.revision + 1, self._apply)
                need_list = True  # periodic resync
            except WatchBroken as exc:
                # Resume from the last revision seen unless it is gone.
                need_list = need_list or exc.compacted
                logger.warning(
                    "cluster watch broken (%s); %s",
                    exc,
                    "re-listing" if exc.compacted else "resuming",
                )
                if trio.current_time() - watched_since > 2 * backoff:
                    backoff = 0.1  # the watch was healthy for a while: not a flapping loop
            except EtcdUnavailable as exc:
                logger.warning("cannot list cluster state: %s", exc)
            await trio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)
