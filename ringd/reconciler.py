"""Desired (the instances placement gives this node) versus actual (the local
supervisor).

The one rule that keeps an instance at most once: start only after creating its
claim (``claims/<key>``, create-if-absent under this node's lease), and stop it
before deleting the claim. A claim's create revision is the instance's fencing
token (``RINGD_FENCE``). When an instance moves, the old owner stops it, stores
its handoff file in etcd, and only then releases the claim; moves away from this
node are paced by ``rebalance_rate``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import trio

from .errors import EtcdUnavailable, InvalidSpec
from .membership import decode
from .placement import Instance, NodeInfo, Placer
from .spec import ChildSpec, GroupRecord, encode, parse_child, parse_group_record
from .supervisor import Child, State

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from .etcd import KV, Etcd
    from .handoff import Handoff
    from .keys import Keys
    from .membership import Membership
    from .supervisor import Supervisor
    from .view import ClusterView

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Reconciler:
    """Makes the local supervisor run exactly what the ring assigns to this node."""

    def __init__(
        self,
        *,
        node: str,
        etcd: Etcd,
        keys: Keys,
        view: ClusterView,
        membership: Membership,
        supervisor: Supervisor,
        handoff: Handoff,
        resync_interval: float = 30.0,
        rebalance_rate: float = 0.0,
    ) -> None:
        self.node = node
        self.etcd = etcd
        self.keys = keys
        self.view = view
        self.membership = membership
        self.supervisor = supervisor
        self.resync_interval = resync_interval
        self.stopping = False
        self._wake = trio.Event()
        self._dirty_claims: set[str] = set()
        self._claims_dirty = trio.Event()
        # kind -> name -> (mod_revision, parsed value or None if invalid)
        self._cache: dict[str, dict[str, tuple[int, Any]]] = {}
        self._failed_here: dict[str, str] = {}  # groups that failed on this node -> reason
        self.placer = Placer()
        self._placed_for: tuple[frozenset[Any], frozenset[Any]] | None = None
        self._placed: dict[str, list[Instance]] = {}  # spec id -> instances, start order
        self._placed_version = -1  # the view version _placed was computed at
        self._specs: dict[str, ChildSpec] = {}  # valid specs, start order
        self._node_infos: dict[str, tuple[int, NodeInfo]] = {}  # decoded once per revision
        self._to_place: set[str] = set()  # specs changed since the last place()
        self._spec_cursor: tuple[int, int] | None = None  # into view.changes("children")
        self._claim_limiter = trio.CapacityLimiter(32)
        self.handoff = handoff
        self.rebalance_rate = rebalance_rate
        self.moves_pending = 0
        self._move_tokens = max(rebalance_rate, 1.0)
        self._move_time = trio.current_time()
        self._next_retry = math.inf  # unix time of the next failed-group retry
        self._lease: int | None = None  # the lease of the previous pass

    # -- reading the view -------------------------------------------------------------

    def nodes(self) -> dict[str, NodeInfo]:
        """The nodes children may be placed on: online and not draining."""
        drained = self.view.live("nodes", "drain")
        out = {}
        for name, kv in self.view.live("nodes", "alive").items():
            if name in drained:
                continue
            known = self._node_infos.get(name)
            if known is None or known[0] != kv.mod_revision:
                info = decode(kv)
                labels = info.get("labels")
                labels = labels if isinstance(labels, dict) else {}
                groups = info.get("groups")
                groups = groups if isinstance(groups, list) else []
                node = NodeInfo(name, labels, frozenset(g for g in groups if isinstance(g, str)))
                known = self._node_infos[name] = (kv.mod_revision, node)
            out[name] = known[1]
        return out

    def _parsed(
        self, kind: str, parse: Callable[[bytes], Any], name_of: Callable[[Any], str]
    ) -> dict[str, tuple[Any, KV]]:
        """Every valid value of one kind in the view, parsed once per revision;
        corrupt ones (written by a third party) are logged once and skipped."""
        cache = self._cache.setdefault(kind, {})
        out = {}
        kvs = self.view.by_kind(kind)
        for name, kv in kvs.items():
            value = self._parse_one(cache, kind, name, kv, parse, name_of)
            if value is not None:
                out[name] = (value, kv)
        for gone in cache.keys() - kvs.keys():
            del cache[gone]
        return out

    @staticmethod
    def _parse_one(
        cache: dict[str, tuple[int, Any]],
        kind: str,
        name: str,
        kv: KV,
        parse: Callable[[bytes], Any],
        name_of: Callable[[Any], str],
    ) -> Any:
        cached = cache.get(name)
        if cached is None or cached[0] != kv.mod_revision:
            try:
                value = parse(kv.value)
                if name_of(value) != name:
                    raise InvalidSpec("id", f"{name_of(value)!r} does not match key {kv.key!r}")
            except InvalidSpec as exc:
                logger.error("skipping invalid %s at %s: %s", kind, kv.key, exc)
                value = None
            cached = cache[name] = (kv.mod_revision, value)
        return cached[1]

    def _sync_specs(self) -> None:
        """Bring ``_specs`` up to date with the view, one changed spec at a time (a
        burst of start-child calls must not cost a pass over every spec each)."""
        names, self._spec_cursor = self.view.changes("children", self._spec_cursor)
        cache = self._cache.setdefault("children", {})
        if names is None:  # first time, or the view re-listed
            self._specs, self._to_place = {}, set()
            self._placed_for = None
            names = list(self.view.by_kind("children"))  # in start order
            for gone in cache.keys() - set(names):
                del cache[gone]
        for name in dict.fromkeys(names):
            kv = self.view.get("children", name)
            self._to_place.add(name)
            if kv is None:
                self._specs.pop(name, None)
                cache.pop(name, None)
                continue
            known = self._specs.get(name)
            if known is not None and cache[name][0] == kv.mod_revision:
                continue
            spec = self._parse_one(cache, "children", name, kv, parse_child, lambda s: s.id)
            if spec is None:
                self._specs.pop(name, None)
            else:
                self._specs[name] = spec  # a new spec goes last: the newest starts last

    def specs(self) -> Mapping[str, ChildSpec]:
        """Every valid child spec, in the order they were created (their start order)."""
        self._sync_specs()
        return MappingProxyType(self._specs)

    def groups(self) -> dict[str, tuple[GroupRecord, KV]]:
        return self._parsed("groups", parse_group_record, lambda r: r.spec.name)

    def blocked(self, spec: ChildSpec, groups: dict[str, tuple[GroupRecord, KV]]) -> str:
        """Why a child may not run anywhere now ("" if it may)."""
        if spec.group is None:
            return ""
        record = groups.get(spec.group)
        if record is None:
            return f"group {spec.group} does not exist"
        if record[0].state == "failed":
            return f"group {spec.group} failed: {record[0].reason}"
        return ""

    def place(self) -> Mapping[str, list[Instance]]:
        """Every runnable spec's instances (spec id -> instances, master first), in
        start order.

        Kept from pass to pass: only specs that changed are placed again, and all of
        them when the nodes or the groups change. A spec's list is replaced, never
        changed, when it is placed again (``Listing`` compares them by identity).
        """
        if self._placed_version == self.view.version:
            # Nothing changed in the view: the same answer (every find asks).
            return MappingProxyType(self._placed)
        version = self.view.version
        self._sync_specs()
        with_kv = self.groups()
        groups = {name: record for name, (record, _) in with_kv.items()}
        nodes = self.nodes()
        inputs = (
            frozenset((n, tuple(sorted(i.labels.items())), i.groups) for n, i in nodes.items()),
            frozenset(groups.items()),
        )
        if inputs != self._placed_for:
            self._placed_for, self._placed = inputs, {}
            todo: Iterable[str] = list(self._specs)
        else:
            todo = [name for name in self._specs if name in self._to_place]
            todo += [name for name in self._to_place if name not in self._specs]
        self._to_place = set()
        for child_id in todo:
            spec = self._specs.get(child_id)
            if spec is None or self.blocked(spec, with_kv):
                self._placed.pop(child_id, None)
                continue
            group = groups.get(spec.group) if spec.group else None
            self._placed[child_id] = [
                Instance(spec, r, node)
                for r, node in enumerate(self.placer.owners(spec, nodes, group))
            ]
        self._placed_version = version
        return MappingProxyType(self._placed)

    @property
    def placement_inputs(self) -> object:
        """The nodes and groups of the last ``place()``: a new object when they
        change (what ``why_pending`` says depends on nothing else but the spec)."""
        return self._placed_for

    def desired(self) -> dict[str, Instance]:
        """The instances this node should run, by instance key, in start order."""
        return {
            instance.key: instance
            for instances in self.place().values()
            for instance in instances
            if instance.node == self.node
        }

    def why_pending(
        self,
        spec: ChildSpec,
        groups: dict[str, tuple[GroupRecord, KV]] | None = None,
        nodes: dict[str, NodeInfo] | None = None,
    ) -> str:
        """Why a child has no claim; ``groups`` and ``nodes`` (from ``groups()`` and
        ``nodes()``) may be passed by a caller asking for many children."""
        groups = self.groups() if groups is None else groups
        if blocked := self.blocked(spec, groups):
            return blocked
        record = groups[spec.group][0] if spec.group and spec.group in groups else None
        return (
            self.placer.why_unplaced(spec, self.nodes() if nodes is None else nodes, record)
            or "waiting for its node to claim it"
        )

    # -- acting -----------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def child_changed(self, child: Child) -> None:
        """Supervisor callback: publish the child's new state in its claim."""
        self._dirty_claims.add(child.id)
        self._claims_dirty.set()

    def on_fence(self, reason: str) -> None:
        """Membership callback: the lease is (about to be) gone; kill everything now."""
        self.supervisor.kill_all()
        self.wake()

    def _claim_value(self, child: Child) -> bytes:
        info = child.info()
        info["node"] = self.node
        return json.dumps(info).encode()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_claims)
            nursery.start_soon(self._watch_inputs)
            task_status.started()
            full = True
            while True:
                self._wake = trio.Event()
                try:
                    await self.reconcile(full=full)
                except EtcdUnavailable as exc:
                    logger.warning("reconcile: %s", exc)
                    with trio.move_on_after(1.0):
                        await self._wake.wait()
                    full = True
                    continue
                except Exception:
                    # A bug must not take the node's children down with the daemon:
                    # log it loudly and try again from the current state.
                    logger.exception("reconcile failed; retrying in 1 s")
                    await trio.sleep(1.0)
                    full = True
                    continue
                wait = min(self.resync_interval, max(self._next_retry - time.time(), 0.05))
                self._next_retry = math.inf
                with trio.move_on_after(wait) as timer:
                    await self._wake.wait()
                full = timer.cancelled_caught

    async def _watch_inputs(self) -> None:
        seen = -1
        async with trio.open_nursery() as nursery:

            async def membership_changes() -> None:
                while True:
                    await self.membership.changed.wait()
                    self.wake()

            nursery.start_soon(membership_changes)
            while True:
                seen = await self.view.wait_changed(seen)
                self.wake()

    async def reconcile(self, *, full: bool = True) -> None:
        """One pass: stop what is no longer ours, start what is ours and free.

        ``full`` also looks for claims of ours that nothing here runs (the periodic
        pass; a pass after a change skips that scan of every claim)."""
        if self.stopping:
            return
        if not self.membership.may_run():
            # Fenced or not registered: children are being killed; forget them.
            await self._drop_all()
            return
        if self.membership.lease_id != self._lease:
            # A new lease: this node fenced (killing its children) and registered
            # again, possibly while the previous pass was still running, so that
            # no pass saw may_run() false. Forget those children too.
            await self._drop_all()
            self._lease = self.membership.lease_id
        await self._publish_group_failures()
        await self._retry_failed_groups()
        desired = self.desired()
        groups = self.groups()
        specs = self.specs()
        for record, _ in groups.values():
            self.supervisor.update_group(record.spec)
        lease = self.membership.lease_id

        restarts, moves = [], []
        for key, child in self.supervisor.children.items():
            instance = desired.get(key)
            if instance is not None and instance.spec != child.spec:
                restarts.append(child)  # its spec changed: restart it here
            elif instance is None:
                # Still a valid, runnable spec: ownership moved (paced); else it is gone.
                spec = specs.get(child.spec.id)
                if spec is not None and not self.blocked(spec, groups):
                    moves.append(child)
                else:
                    restarts.append(child)
        self.moves_pending = max(len(moves) - self._take_moves(len(moves)), 0)
        moving = moves[: len(moves) - self.moves_pending]
        if restarts or moving:
            async with trio.open_nursery() as nursery:
                for child in restarts:
                    nursery.start_soon(self._stop_and_release, child, child.spec.id in specs)
                for child in moving:
                    nursery.start_soon(self._stop_and_release, child, True)

        wanted = [
            (key, instance)
            for key, instance in desired.items()
            if key not in self.supervisor.children
            # still held by its previous owner: wait for it to let go
            and ((held := self.view.get("claims", key)) is None or held.lease == lease)
        ]
        claimed = await self._claim(key for key, _ in wanted) if wanted else {}
        for key, instance in wanted:  # in start order, whatever order the claims came in
            claim = claimed.get(key)
            if claim is None:
                continue
            spec = instance.spec
            env = {"RINGD_ROLE": instance.role, "RINGD_REPLICA": str(instance.replica)}
            if spec.handoff:
                env["RINGD_HANDOFF_FILE"] = str(await self.handoff.restore(key))
            # Checked after that await too: a fence and a new lease meanwhile mean
            # the claim went with the old lease, and another node may hold it now.
            if not self.membership.may_run() or self.membership.lease_id != lease:
                continue
            group = groups[spec.group][0].spec if spec.group else None
            self.supervisor.start(spec, key=key, fence=claim.create_revision, group=group, env=env)

        # Claims of ours that nothing here runs any more (e.g. left by a failed stop):
        # on the periodic pass only, as this reads every claim.
        if full:
            for child_id, claim in self.view.by_kind("claims").items():
                if claim.lease == lease and child_id not in self.supervisor.children:
                    await self.etcd.delete_if(claim.key, create_revision=claim.create_revision)

    def on_group_failed(self, group: str, reason: str) -> None:
        """Supervisor callback: a group failed here past its node-level intensity."""
        self._failed_here[group] = reason
        self.wake()

    async def _publish_group_failures(self) -> None:
        """Step 3 of escalation: mark the group failed in etcd, so every node stops it."""
        groups = self.groups()
        for name, reason in list(self._failed_here.items()):
            current = groups.get(name)
            if current is not None and current[0].state != "failed":
                record = msgspec.structs.replace(
                    current[0], state="failed", reason=reason, node=self.node, since=time.time()
                )
                if await self.etcd.put_if(
                    current[1].key, encode(record), mod_revision=current[1].mod_revision
                ):
                    logger.error("group %s failed cluster-wide: %s", name, reason)
                    # Published: forget it now. Kept until a pass saw 'failed' in the
                    # view, it failed the group again when an operator reset it first.
                    del self._failed_here[name]
                    continue
            if current is None or current[0].state == "failed":
                del self._failed_here[name]

    async def _retry_failed_groups(self) -> None:
        """A failed group with ``retry_after`` runs again once that delay has passed."""
        now = time.time()
        for name, (record, kv) in self.groups().items():
            retry = record.spec.retry_after
            if record.state != "failed" or retry is None:
                continue
            due = (record.since or 0) + retry
            if now >= due:
                fresh = msgspec.structs.replace(
                    record,
                    state="running",
                    reason=f"retried after {retry:g} s",
                    node=None,
                    since=now,
                )
                if await self.etcd.put_if(kv.key, encode(fresh), mod_revision=kv.mod_revision):
                    logger.info("group %s: retrying after %g s", name, retry)
            else:
                self._next_retry = min(self._next_retry, due)

    async def _claim(self, keys: Iterable[str]) -> dict[str, KV]:
        """Claim instances, many at a time (a failover claims hundreds at once).

        Asks etcd, not the view (which may lag): a claim is ours only if the
        transaction creates it or finds it under our own lease.

        Raises:
            EtcdUnavailable: no claim could be made (when only some failed, the
                ones made are returned and the next pass retries the rest).
        """
        lease = self.membership.lease_id
        value = json.dumps({"node": self.node, "state": "starting"}).encode()
        claimed: dict[str, KV] = {}
        failed: list[EtcdUnavailable] = []

        async def claim(batch: list[str]) -> None:
            async with self._claim_limiter:
                try:
                    kvs = await self.etcd.create_many(
                        [(self.keys.claim(key), value) for key in batch], lease=lease
                    )
                except EtcdUnavailable as exc:
                    failed.append(exc)
                    return
            for key in batch:
                kv = kvs.get(self.keys.claim(key))
                if kv is not None and kv.lease == lease == self.membership.lease_id:
                    claimed[key] = kv

        async with trio.open_nursery() as nursery:
            for batch in _batches(list(keys), self.etcd.txn_ops):
                nursery.start_soon(claim, batch)
        if failed and not claimed:
            raise failed[0]
        return claimed

    def _take_moves(self, wanted: int) -> int:
        """How many of ``wanted`` moves the rate allows now (a token bucket)."""
        if self.rebalance_rate <= 0 or wanted == 0:
            return wanted
        now = trio.current_time()
        burst = max(self.rebalance_rate, 1.0)
        self._move_tokens = min(
            burst, self._move_tokens + (now - self._move_time) * self.rebalance_rate
        )
        self._move_time = now
        granted = min(wanted, int(self._move_tokens))
        self._move_tokens -= granted
        if granted < wanted:
            self._next_retry = min(self._next_retry, time.time() + 1 / self.rebalance_rate)
        return granted

    async def _stop_and_release(self, child: Child, keep_state: bool) -> None:
        """Stop an instance here; hand its state on (if the spec still exists); release."""
        await self.supervisor.stop(child.id)
        try:
            if child.spec.handoff:
                if keep_state:
                    await self.handoff.store(child.id)
                else:
                    await self.handoff.forget(child.id)
            await self.etcd.delete_if(self.keys.claim(child.id), create_revision=child.fence)
        except EtcdUnavailable as exc:
            # Stopped, so safe; a later pass deletes the claim (or the lease ends it).
            logger.warning("child %s stopped but not released yet: %s", child.id, exc)
            return
        logger.info("child %s stopped and released", child.id)

    async def _drop_all(self) -> None:
        for child_id in list(self.supervisor.children):
            await self.supervisor.stop(child_id)

    async def release_all(self) -> None:
        """Graceful shutdown: stop every child (see ``Supervisor.stop_all``), releasing
        claims as soon as their children have stopped (many per transaction), so
        survivors take over while the rest are still stopping."""
        self.stopping = True  # no new reconcile pass; one in flight may still stop some
        send, receive = trio.open_memory_channel[Child](math.inf)
        async with trio.open_nursery() as releases:
            releases.start_soon(self._release_stopped, receive)
            async with send:
                await self.supervisor.stop_all(send.send_nowait)

    async def _release_stopped(self, stopped: trio.MemoryReceiveChannel[Child]) -> None:
        """Release the claims of stopped children: whatever stopped while the last
        transaction was in flight goes in the next one."""
        async for child in stopped:
            batch = [child]
            while len(batch) < self.etcd.txn_ops:
                try:
                    batch.append(stopped.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            try:
                for c in batch:
                    if c.spec.handoff:
                        await self.handoff.store(c.id)
                await self.etcd.delete_many_if([(self.keys.claim(c.id), c.fence) for c in batch])
            except EtcdUnavailable as exc:
                logger.warning(
                    "cannot release %d claims (the lease revoke will): %s", len(batch), exc
                )

    async def _publish_claims(self) -> None:
        """Write each child's state, pid and restarts into its claim (coalesced)."""
        while True:
            await self._claims_dirty.wait()
            self._claims_dirty = trio.Event()
            dirty, self._dirty_claims = self._dirty_claims, set()
            lease = self.membership.lease_id
            if lease is None:
                continue
            publish = [
                child
                for child_id in dirty
                if (child := self.supervisor.children.get(child_id)) is not None
                and child.state != State.STOPPING
            ]
            failed = False
            for batch in _batches(publish, self.etcd.txn_ops):
                items = [(self.keys.claim(c.id), self._claim_value(c), c.fence) for c in batch]
                try:
                    await self.etcd.put_many_if(items, lease=lease)
                except EtcdUnavailable as exc:
                    logger.warning("cannot publish %d claims: %s", len(batch), exc)
                    self._dirty_claims.update(c.id for c in batch)
                    failed = True
            if failed:  # etcd is away: retry later (changes made meanwhile go at once)
                await trio.sleep(0.5)
                self._claims_dirty.set()
