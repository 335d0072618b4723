"""An in-memory etcd with the interface of ``ringd.etcd.Etcd``, for unit tests.

It keeps what ringd relies on: one revision counter, create and mod revisions,
a multi-key write sharing one revision, leases that expire on trio's clock (so a
``MockClock`` drives them), watches that replay history from a revision, and an
outage switch (``down``) that makes every call fail as an unreachable etcd does.
Behaviour that involves the real etcd is tested against the real one; this is for
deciding logic, in milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .errors import EtcdUnavailable, WatchBroken
from .etcd import KV, Event

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence


@dataclass(slots=True)
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryEtcd:
    """One etcd member in memory. ``down = True`` makes every call raise
    ``EtcdUnavailable`` and every watch ``WatchBroken``, until set back."""

    txn_ops = 64
    endpoints = ["memory://"]
    endpoint = "memory://"

    def __init__(self) -> None:
        self.kvs: dict[str, KV] = {}
        self.revision = 1
        self.compacted = 0
        self.down = False
        self.calls: dict[str, int] = {}  # op name -> count, for tests that count requests
        self._history: list[tuple[int, builtins.list[Event]]] = []
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self._changed = trio.Event()

    # -- the machinery ----------------------------------------------------------------

    def _enter(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.down:
            raise EtcdUnavailable(self.endpoint, "connection refused (memory store is down)")
        self._expire()

    def _expire(self) -> None:
        now = trio.current_time()
        for lease_id in [i for i, lease in self._leases.items() if lease.deadline <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None and lease.keys:
            self._commit([], sorted(lease.keys))

    def _commit(self, puts: Sequence[tuple[str, bytes, int]], deletes: Sequence[str]) -> int:
        """Apply puts ``(key, value, lease)`` and deletes as one revision."""
        events: list[Event] = []
        revision = self.revision + 1
        for key, value, lease in puts:
            old = self.kvs.get(key)
            if old is not None and old.lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            if lease:
                if lease not in self._leases:
                    raise EtcdUnavailable(self.endpoint, "etcdserver: requested lease not found")
                self._leases[lease].keys.add(key)
            created = old.create_revision if old is not None else revision
            kv = KV(key, value, created, revision, lease)
            self.kvs[key] = kv
            events.append(Event("put", kv))
        for key in deletes:
            old = self.kvs.pop(key, None)
            if old is None:
                continue
            if old.lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            events.append(Event("delete", KV(key, b"", 0, revision, 0)))
        if events:
            self.revision = revision
            self._history.append((revision, events))
            self._changed.set()
            self._changed = trio.Event()
        return self.revision

    def compact(self) -> None:
        """Forget the history: a watch from an older revision is told to re-list."""
        self.compacted = self.revision
        self._history.clear()

    def close(self) -> None:
        pass

    # -- keys -------------------------------------------------------------------------

    async def list(self, prefix: str, *, page: int = 10_000) -> tuple[int, builtins.list[KV]]:
        self._enter("list")
        kvs = [kv for key, kv in sorted(self.kvs.items()) if key.startswith(prefix)]
        return self.revision, kvs

    async def pages(
        self, prefix: str, *, page: int = 10_000
    ) -> AsyncIterator[tuple[int, builtins.list[KV]]]:
        """As ``list``, ``page`` keys at a time (all read at one revision)."""
        revision, kvs = await self.list(prefix)
        for start in range(0, len(kvs), page):
            yield revision, kvs[start : start + page]
            await trio.lowlevel.checkpoint()  # another task may change the store meanwhile

    async def count(self, prefix: str) -> int:
        self._enter("count")
        return sum(key.startswith(prefix) for key in self.kvs)

    async def get(self, key: str) -> KV | None:
        self._enter("get")
        return self.kvs.get(key)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        self._enter("put")
        self._commit([(key, value, lease or 0)], [])

    async def delete(self, key: str) -> bool:
        self._enter("delete")
        existed = key in self.kvs
        self._commit([], [key])
        return existed

    async def put_and_delete(self, put: tuple[str, bytes], delete: str) -> None:
        self._enter("put")
        self._commit([(put[0], put[1], 0)], [delete])

    async def create(
        self, key: str, value: bytes, *, lease: int | None = None
    ) -> tuple[bool, KV | None]:
        self._enter("create")
        if key in self.kvs:
            return False, self.kvs[key]
        self._commit([(key, value, lease or 0)], [])
        return True, self.kvs[key]

    async def create_coalesced(self, key: str, value: bytes) -> KV:
        _, kv = await self.create(key, value)
        assert kv is not None
        return kv

    async def create_many(
        self, items: Sequence[tuple[str, bytes]], *, lease: int | None = None
    ) -> dict[str, KV]:
        assert len(items) <= self.txn_ops, "too many keys for one transaction"
        self._enter("create")
        absent = [(key, value, lease or 0) for key, value in items if key not in self.kvs]
        self._commit(absent, [])
        return {key: self.kvs[key] for key, _ in items}

    async def put_many_if(
        self, items: Sequence[tuple[str, bytes, int]], *, lease: int | None = None
    ) -> builtins.list[str]:
        assert len(items) <= self.txn_ops, "too many keys for one transaction"
        self._enter("put_if")
        ok = [(k, v, lease or 0) for k, v, rev in items if self._created_at(k) == rev]
        self._commit(ok, [])
        return [k for k, _, _ in ok]

    async def delete_many_if(self, items: Sequence[tuple[str, int]]) -> None:
        assert len(items) <= self.txn_ops, "too many keys for one transaction"
        self._enter("delete_if")
        self._commit([], [k for k, rev in items if self._created_at(k) == rev])

    async def put_if(
        self,
        key: str,
        value: bytes,
        *,
        mod_revision: int | None = None,
        create_revision: int | None = None,
        lease: int | None = None,
    ) -> bool:
        self._enter("put_if")
        current = self.kvs.get(key)
        if mod_revision is not None and (current.mod_revision if current else 0) != mod_revision:
            return False
        if create_revision is not None and self._created_at(key) != create_revision:
            return False
        self._commit([(key, value, lease or 0)], [])
        return True

    async def write_if(
        self,
        puts: Sequence[tuple[str, bytes, int]],
        deletes: Sequence[tuple[str, int]] = (),
    ) -> bool:
        assert len(puts) + len(deletes) <= self.txn_ops, "too many keys for one transaction"
        self._enter("put_if")
        for key, rev in [*((k, r) for k, _, r in puts), *deletes]:
            current = self.kvs.get(key)
            if (current.mod_revision if current is not None else 0) != rev:
                return False
        self._commit([(k, v, 0) for k, v, _ in puts], [k for k, _ in deletes])
        return True

    async def delete_if(self, key: str, *, create_revision: int) -> bool:
        self._enter("delete_if")
        if self._created_at(key) != create_revision:
            return False
        self._commit([], [key])
        return True

    def _created_at(self, key: str) -> int:
        kv = self.kvs.get(key)
        return kv.create_revision if kv is not None else 0

    # -- leases -----------------------------------------------------------------------

    async def grant(self, ttl: float) -> tuple[int, int]:
        self._enter("grant")
        self._next_lease += 1
        granted = math.ceil(ttl)
        self._leases[self._next_lease] = _Lease(granted, trio.current_time() + granted)
        return self._next_lease, granted

    async def keepalive(self, lease_id: int) -> int:
        self._enter("keepalive")
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        lease.deadline = trio.current_time() + lease.ttl
        return lease.ttl

    async def revoke(self, lease_id: int) -> None:
        self._enter("revoke")
        self._drop_lease(lease_id)

    def expire(self, lease_id: int) -> None:
        """End a lease now, as etcd does when its TTL passes without a keepalive."""
        self._drop_lease(lease_id)

    def lease_keys(self, lease_id: int) -> set[str]:
        lease = self._leases.get(lease_id)
        return set(lease.keys) if lease else set()

    # -- watches ----------------------------------------------------------------------

    async def watch(
        self,
        prefix: str,
        start_revision: int,
        on_events: Callable[[builtins.list[Event], int], Awaitable[None]],
    ) -> None:
        """Deliver every change under ``prefix`` from ``start_revision``; never returns.

        Raises:
            WatchBroken: the store went down, or the revision was compacted.
        """
        self._enter("watch")
        if start_revision <= self.compacted:
            raise WatchBroken(f"revision {start_revision} compacted", compacted=True)
        seen = start_revision - 1
        while True:
            for revision, events in [h for h in self._history if h[0] > seen]:
                seen = revision
                mine = [e for e in events if e.kv.key.startswith(prefix)]
                if mine:
                    await on_events(mine, revision)
            if self.down:
                raise WatchBroken("watch stream failed: UNAVAILABLE")
            deadlines = [lease.deadline for lease in self._leases.values()]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._changed.wait()
            self._expire()

    def fail(self) -> None:
        """Take the store down (calls fail, watches break) until ``recover``."""
        self.down = True
        self._changed.set()
        self._changed = trio.Event()

    def recover(self) -> None:
        self.down = False
