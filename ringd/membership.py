"""This node's lease and keepalive, the node tracker, and self-fencing.

* ``nodes/<n>/alive`` lives under this node's lease, which this daemon keeps
  alive (the etcd3 client has no background keepalive).
* ``nodes/<n>/status`` is the tracker row: online/offline, ``last_change`` and
  why. When a node's alive key disappears, the survivors record it offline,
  exactly once (a transaction on the row's mod revision).
* Fencing: children may run only until ``last keepalive sent + TTL - margin``.
  If keepalives go unanswered until then, the children are killed before the
  lease can expire, so no other node can start them while they still run.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from typing import TYPE_CHECKING

import msgspec
import trio

from . import __version__, metrics, records
from .errors import EtcdUnavailable
from .guard import kill_instance
from .outage import OutageLog
from .procfs import pid_namespace, start_ticks, start_time
from .records import Alive, InvalidRecord, NodeStatus, Status, encode, rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import Config
    from .etcd import KV, Etcd
    from .guard import Guard
    from .keys import Keys
    from .view import ClusterView

logger = logging.getLogger(__name__)


def now_rfc3339() -> str:
    return rfc3339()


def _read(kv: KV | None, sub: str, node: str) -> Alive | Status | None:
    """This node's own row as read from etcd (not the view), or None if absent or corrupt."""
    if kv is None:
        return None
    try:
        value: Alive | Status = records.decode("nodes", sub, node, kv.value)
    except InvalidRecord as exc:
        logger.warning("ignoring corrupt value at %s: %s", kv.key, exc)
        return None
    return value


def is_dead_predecessor(alive: Alive) -> bool:
    """True if ``alive`` (a node's alive record) is of a daemon in this very PID
    namespace (same boot, same namespace) that is no longer running: its lease can
    be revoked, once what it left running is killed, instead of waited out.
    Anything else (another machine, another container, a record without the
    namespace or the start ticks) is waited out: revoking a live daemon's lease
    would let its children run twice."""
    here = pid_namespace()
    pid, ticks = alive.pid, alive.pid_ticks
    if not here or alive.pid_namespace != here:
        return False
    if pid is None or ticks is None:
        return False
    # Running with the same start (in clock ticks after boot, which a clock step
    # does not move, unlike a wall-clock start time): that daemon is alive.
    return start_ticks(pid) != ticks


class Membership:
    """Registers this node, keeps its lease, tracks the other nodes, fences.

    Args:
        on_fence: called (synchronously) with the reason when children must die now.
    """

    def __init__(
        self,
        *,
        config: Config,
        etcd: Etcd,
        keys: Keys,
        view: ClusterView,
        instance: str,
        guard: Guard | None = None,
        on_fence: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.config = config
        self.etcd = etcd
        self.keys = keys
        self.view = view
        self.instance = instance
        self.guard = guard
        self.on_fence = on_fence
        self.node = config.name
        self.lease_id: int | None = None
        self.ttl = config.lease_ttl
        self.deadline = 0.0  # time.monotonic() until which children may run
        self.fenced = False
        self.leaving = False
        self.changed = trio.Event()  # set (and replaced) when registration changes
        self._registered_once = False
        self._fence_reason = ""
        # host:port of this daemon's peer listener once bound (``ringd.peers``), or "".
        self.peer_address = ""

    # -- state ------------------------------------------------------------------------

    def may_run(self) -> bool:
        """True while this node holds a live lease and children may run."""
        return (
            self.lease_id is not None
            and not self.fenced
            and not self.leaving
            and time.monotonic() < self.deadline
        )

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _extend(self, sent: float, ttl: float) -> None:
        self.deadline = sent + ttl - self.config.fence_margin
        if self.guard is not None:
            self.guard.deadline(self.deadline)

    # -- registration -----------------------------------------------------------------

    def _alive_value(self) -> bytes:
        return encode(
            Alive(
                node=self.node,
                host=socket.gethostname(),
                pid_namespace=pid_namespace(),
                pid=os.getpid(),
                pid_start=start_time(os.getpid()),
                pid_ticks=start_ticks(os.getpid()),
                instance=self.instance,
                version=__version__,
                labels=self.config.labels,
                groups=self.config.groups,
                started=now_rfc3339(),
                lease=self.lease_id,
                peer_address=self.peer_address,
            )
        )

    async def _register(self) -> None:
        """Take ``nodes/<me>/alive`` under a new lease and mark this node online."""
        alive_key = self.keys.alive(self.node)
        waited = False
        while True:
            existing = await self.etcd.get(alive_key)
            if existing is not None:
                old = _read(existing, "alive", self.node)
                if not isinstance(old, Alive):
                    old = Alive(node=self.node)  # corrupt: waited out like a stranger
                if existing.lease and old.instance == self.instance:
                    # Our own key from before we fenced (etcd restored its lease when
                    # it restarted): our children are dead, so let it go at once.
                    logger.info("revoking this daemon's lease from before it fenced")
                    await self.etcd.revoke(existing.lease)
                    continue
                if existing.lease and is_dead_predecessor(old):
                    # Its guard kills what it left running, unless the guard died
                    # too (kill -9 of both): then nobody would, and this node would
                    # start those children again beside them. Kill them first.
                    left = await trio.to_thread.run_sync(kill_instance, old.instance or "-")
                    logger.info(
                        "revoking the lease of this node's dead predecessor (pid %s)%s",
                        old.pid,
                        f", after killing {left} processes it left running" if left else "",
                    )
                    await self.etcd.revoke(existing.lease)
                    continue
                if not waited:
                    logger.warning(
                        "node name %r is held by pid %s on %s; waiting for its lease to expire",
                        self.node, old.pid, old.host,
                    )  # fmt: skip
                    waited = True
                await trio.sleep(1.0)
                continue
            sent = time.monotonic()
            lease_id, ttl = await self.etcd.grant(self.config.lease_ttl)
            self.lease_id, self.ttl = lease_id, float(ttl)
            created, _ = await self.etcd.create(alive_key, self._alive_value(), lease=lease_id)
            if not created:
                await self.etcd.revoke(lease_id)
                continue
            if self.leaving:
                # The leave began while we registered (its one transaction may have
                # run before this create): out of the ring again, at once.
                await self.etcd.revoke(lease_id)
                self.lease_id = None
                return
            self._extend(sent, self.ttl)
            break
        status_kv = await self.etcd.get(self.keys.status(self.node))
        previous = _read(status_kv, "status", self.node)
        if self._fence_reason:
            # This same daemon, after fencing: its row may still say online (nobody
            # could mark it offline while etcd was away), but it did not restart.
            reason = f"rejoined after being fenced ({self._fence_reason})"
            self._fence_reason = ""
        elif self._registered_once:
            reason = "rejoined"
        elif isinstance(previous, Status) and previous.status == "online":
            reason = "restarted (the previous daemon ended without leaving)"
        else:
            reason = "joined"
        if self.leaving:
            # The leave began while we registered: its 'offline' row stands, and
            # leave() revokes the lease just granted (the alive key goes with it).
            return
        await self._write_status("online", reason)
        self.fenced = False
        self._registered_once = True
        logger.info(
            "node %s online (lease %x, ttl %g s): %s", self.node, self.lease_id, self.ttl, reason
        )
        self._notify()

    def _status_value(self, status: NodeStatus, reason: str) -> bytes:
        return encode(
            Status(node=self.node, status=status, last_change=now_rfc3339(), reason=reason)
        )

    async def _write_status(self, status: NodeStatus, reason: str) -> None:
        await self.etcd.put(self.keys.status(self.node), self._status_value(status, reason))

    async def _register_until_done(self) -> None:
        backoff = 0.1
        # Children come back only once we are registered again: after an etcd outage,
        # retry at most every TTL / 4 (jittered), not 5 s, so that they are back
        # within TTL + a little of etcd's return.
        max_backoff = min(5.0, self.config.lease_ttl / 4)
        outage = OutageLog(logger, "register with etcd", self.etcd)
        while not self.leaving:  # a node on its way out does not register again
            try:
                await self._register()
                outage.succeeded()
                return
            except EtcdUnavailable as exc:
                outage.failed(exc)
            await trio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, max_backoff)

    # -- running ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._register_until_done()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive_loop)
            nursery.start_soon(self._fence_timer)
            nursery.start_soon(self._track_loop)

    def fence(self, reason: str) -> None:
        if self.fenced:
            return
        logger.error("fencing node %s: %s; killing its children", self.node, reason)
        self.fenced = True
        self._fence_reason = reason
        metrics.FENCES.inc()
        self.on_fence(reason)
        self._notify()

    async def _fence_timer(self) -> None:
        """Fence at the deadline even if a keepalive call is still hanging."""
        while True:
            remaining = self.deadline - time.monotonic()
            # Also while leaving: children still running must die before the lease can.
            if remaining <= 0 and not self.fenced and self.lease_id is not None:
                self.fence("keepalives unanswered until the fence deadline")
            await trio.sleep(max(remaining, 0.05) if not self.fenced else 0.1)

    async def _keepalive_loop(self) -> None:
        interval = min(self.ttl / 4, (self.ttl - self.config.fence_margin) / 3)
        due = trio.current_time() + interval
        while True:
            # Each keepalive is due `interval` after the previous one was sent, not
            # after its reply was handled: a busy event loop (late replies) must not
            # also push the next keepalive back, or two late turns add up to a fence.
            await trio.sleep_until(due)
            due = trio.current_time() + interval
            if self.lease_id is None and self.leaving:
                return  # the lease is revoked: nothing left to keep alive
            if self.fenced:
                if self.leaving:
                    return  # no point in registering again on the way out
                await self._recover()
                due = trio.current_time() + interval
                continue
            sent = time.monotonic()
            try:
                assert self.lease_id is not None
                remaining = await self.etcd.keepalive(self.lease_id)
            except EtcdUnavailable as exc:
                logger.warning("lease keepalive failed: %s", exc)
                continue
            metrics.LEASE_LATENCY.observe(time.monotonic() - sent)
            if remaining <= 0:
                self.fence("lease expired")
                continue
            metrics.LEASE_RENEWALS.inc()
            self._extend(sent, min(float(remaining), self.ttl))

    async def _recover(self) -> None:
        """After fencing: drop the old lease (its claims go with it) and register anew."""
        old, self.lease_id = self.lease_id, None
        # Releasing the lease frees our claims: first make sure that nothing of ours
        # survived the fence, not even a grandchild that left its process group.
        await trio.to_thread.run_sync(kill_instance, self.instance)
        if old is not None:
            try:
                await self.etcd.revoke(old)
            except EtcdUnavailable:
                pass  # it will expire; the alive key wait in _register covers it
        await self._register_until_done()

    async def _track_loop(self) -> None:
        seen = -1
        while True:
            seen = await self.view.wait_changed(seen)
            try:
                await self.track_offline()
            except EtcdUnavailable as exc:
                logger.warning("cannot update node status rows: %s", exc)

    async def track_offline(self) -> None:
        """Mark offline (once, by transaction) every online node whose alive key is gone."""
        alive = self.view.in_ring()  # the key, valid or not, keeps it online
        for node, row in self.view.statuses().items():
            if node == self.node or node in alive or row.value.status != "online":
                continue
            offline = msgspec.structs.replace(
                row.value, status="offline", last_change=now_rfc3339(), reason="lease expired"
            )
            if await self.etcd.put_if(
                row.kv.key, encode(offline), mod_revision=row.kv.mod_revision
            ):
                logger.info("node %s is offline (lease expired)", node)

    async def announce_leave(self) -> None:
        """First step of a graceful leave: mark this node offline and take it out of
        every ring now (its alive key goes), so survivors claim each child as soon
        as it is released. The lease stays alive (and kept alive) until ``leave``:
        the claims of children not yet stopped stay ours."""
        self.leaving = True
        self._notify()
        if self.lease_id is None:
            return
        # One transaction: survivors see the node offline and out of the ring at once.
        await self.etcd.put_and_delete(
            (self.keys.status(self.node), self._status_value("offline", "graceful leave")),
            self.keys.alive(self.node),
        )

    async def leave(self) -> None:
        """Last step of a graceful leave: revoke the lease (any claim left goes with it)."""
        self.leaving = True
        self._notify()
        lease, self.lease_id = self.lease_id, None
        if lease is not None:
            await self.etcd.revoke(lease)
