"""Makes the local supervisor run what the desired state gives this node: the half
of reconciling that acts (claims, starts, stops, handoff), on the decisions of
``desired.py``.

The one rule that keeps an instance at most once: start only after creating its
claim (``claims/<key>``, create-if-absent under this node's lease), and stop it
before deleting the claim. A claim's create revision is the instance's fencing
token (``RINGD_FENCE``). When an instance moves, the old owner stops it, stores
its handoff file in etcd, and only then releases the claim; moves away from this
node are paced by ``rebalance_rate``.
"""

from __future__ import annotations

import logging
import math
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

import msgspec
import trio

from . import desired
from .desired import DesiredState, Inputs, MovePacer, Rollout, Running, running_from
from .errors import EtcdUnavailable
from .placement import split_key
from .records import Claim, encode
from .spec import spec_digest
from .supervisor import Child, ChildChanged, State, SupervisorEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from .etcd import KV, Etcd
    from .handoff import Handoff
    from .keys import Keys
    from .membership import Membership
    from .placement import Instance, NodeInfo
    from .spec import ChildSpec, GroupRecord
    from .supervisor import Supervisor
    from .view import ClusterView, Stored

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Reconciler:
    """Makes the local supervisor run exactly what the ring assigns to this node.

    Args:
        events: what the supervisor reports (``ChildChanged``, ``GroupFailed``).
        clock: wall-clock time (group failure times and retries are unix times).
    """

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
        events: trio.MemoryReceiveChannel[SupervisorEvent],
        resync_interval: float = 30.0,
        rebalance_rate: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.etcd = etcd
        self.keys = keys
        self.view = view
        self.membership = membership
        self.supervisor = supervisor
        self.handoff = handoff
        self.events = events
        self.resync_interval = resync_interval
        self.clock = clock
        self.stopping = False
        self.state = DesiredState()
        self.pacer = MovePacer(rebalance_rate, trio.current_time)
        self.moves_pending = 0
        self._wake = trio.Event()
        self._dirty_claims: set[str] = set()
        self._claims_dirty = trio.Event()
        self._failed_here: dict[str, str] = {}  # groups that failed on this node -> reason
        self._placed_version = -1  # the view version the placement was computed at
        self._specs: dict[str, ChildSpec] = {}  # valid specs, start order
        self._changed_specs: dict[str, None] = {}  # since the last placement, in change order
        self._spec_cursor: tuple[int, int] | None = None  # into view.changes("children")
        self._claim_limiter = trio.CapacityLimiter(32)
        self._next_retry = math.inf  # unix time of the next failed-group retry or move
        self._lease: int | None = None  # the lease of the previous pass
        self._inputs: tuple[object, Inputs] | None = None  # see inputs()

    # -- reading the view -------------------------------------------------------------

    def nodes(self) -> dict[str, NodeInfo]:
        """The nodes children may be placed on: online and not draining."""
        alive = {name: stored.value for name, stored in self.view.alive_nodes().items()}
        return desired.eligible_nodes(alive, self.view.draining())

    def groups(self) -> dict[str, Stored[GroupRecord]]:
        return self.view.groups()

    def inputs(self) -> Inputs:
        """What placement depends on besides the specs; made again only when a node,
        drain or group key changed (each pass asks: O(nodes) at 1,000 nodes)."""
        view = self.view
        stamp = (view.stamp("nodes", "alive"), view.stamp("nodes", "drain"), view.stamp("groups"))
        if self._inputs is not None and stamp == self._inputs[0]:
            return self._inputs[1]
        drains = view.draining()
        inputs = Inputs(
            nodes=self.nodes(),
            groups={name: stored.value for name, stored in self.groups().items()},
            draining=frozenset(n for n in view.in_ring() if n in drains),
        )
        self._inputs = (stamp, inputs)
        return inputs

    def _sync_specs(self) -> None:
        """Bring ``_specs`` up to date with the view, one changed spec at a time (a
        burst of start-child calls must not cost a pass over every spec each)."""
        names, self._spec_cursor = self.view.changes("children", self._spec_cursor)
        if names is None:  # first time, or the view re-listed
            self._specs = {name: s.value for name, s in self.view.specs().items()}
            self._changed_specs = dict.fromkeys(self._specs)
            self._placed_version = -1
            return
        for name in dict.fromkeys(names):
            self._changed_specs[name] = None  # etcd's order: a batch's creation order
            stored = self.view.spec(name)
            if stored is None:
                self._specs.pop(name, None)
            else:
                self._specs[name] = stored.value  # a new spec goes last: it starts last

    def specs(self) -> Mapping[str, ChildSpec]:
        """Every valid child spec, in the order they were created (their start order)."""
        self._sync_specs()
        return MappingProxyType(self._specs)

    def place(self) -> Mapping[str, list[Instance]]:
        """Every runnable spec's instances (spec id -> instances, master first), in
        start order; see ``DesiredState``."""
        if self._placed_version == self.view.version:
            return self.state.placed  # nothing changed in the view (every find asks)
        version = self.view.version
        self._sync_specs()
        changed = None if self._placed_version < 0 else self._changed_specs
        self.state.update(self._specs, changed, self.inputs())
        self._changed_specs = {}
        self._placed_version = version
        return self.state.placed

    @property
    def placement_inputs(self) -> object:
        """The nodes and groups of the last ``place()``: a new object when they
        change (what ``why_pending`` says depends on nothing else but the spec)."""
        return self.state.token

    def desired(self) -> dict[str, Instance]:
        """The instances this node should run, by instance key, in start order."""
        self.place()
        return self.state.on_node(self.node)

    def why_pending(
        self,
        spec: ChildSpec,
        groups: Mapping[str, Stored[GroupRecord]] | None = None,
        nodes: Mapping[str, NodeInfo] | None = None,
    ) -> str:
        """Why a child has no claim; ``groups`` and ``nodes`` (from ``groups()`` and
        ``nodes()``) may be passed by a caller asking for many children."""
        inputs = self.inputs()
        if groups is not None or nodes is not None:
            inputs = Inputs(
                nodes=inputs.nodes if nodes is None else nodes,
                groups=inputs.groups if groups is None else {n: s.value for n, s in groups.items()},
                draining=inputs.draining,
            )
        return desired.why_pending(spec, inputs, self.state.placer)

    # -- acting -----------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _on_event(self, event: SupervisorEvent) -> None:
        if isinstance(event, ChildChanged):
            self._dirty_claims.add(event.key)  # published in its claim, coalesced
            self._claims_dirty.set()
        else:
            self._failed_here[event.group] = event.reason  # step 3 of escalation
            self.wake()

    async def _receive_events(self) -> None:
        async for event in self.events:
            self._on_event(event)

    def _claim_value(self, child: Child) -> bytes:
        return encode(msgspec.convert({**child.info(), "node": self.node}, Claim))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_events)
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
                wait = min(self.resync_interval, max(self._next_retry - self.clock(), 0.05))
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
        here = self.desired()
        groups = {name: stored.value for name, stored in self.groups().items()}
        specs = self.specs()
        for record in groups.values():
            self.supervisor.update_group(record.spec)
        lease = self.membership.lease_id

        def held_elsewhere(key: str) -> bool:
            held = self.view.get("claims", key)
            return held is not None and held.lease != lease  # wait for it to let go

        children = self.supervisor.children
        todo = desired.plan(
            here, {k: c.spec for k, c in children.items()}, specs, groups, held_elsewhere
        )
        granted, again = self.pacer.take(len(todo.moves))
        self._next_retry = min(self._next_retry, self.clock() + again)
        self.moves_pending = len(todo.moves) - granted
        updates = [key for key in todo.updates if self._may_update(children[key])]
        if todo.restarts or granted or updates:
            async with trio.open_nursery() as nursery:
                for key in todo.restarts:
                    child = children[key]
                    nursery.start_soon(self._stop_and_release, child, child.spec.id in specs)
                for key in updates:
                    logger.info("child %s: restarting onto its new spec", key)
                    nursery.start_soon(self._stop_and_release, children[key], True)
                for key in todo.moves[:granted]:
                    nursery.start_soon(self._stop_and_release, children[key], True)

        claimed = await self._claim(i.key for i in todo.starts) if todo.starts else {}
        for instance in todo.starts:  # in start order, whatever order the claims came in
            claim = claimed.get(instance.key)
            if claim is None:
                continue
            spec = instance.spec
            env = {"RINGD_ROLE": instance.role, "RINGD_REPLICA": str(instance.replica)}
            if spec.handoff:
                env["RINGD_HANDOFF_FILE"] = str(await self.handoff.restore(instance.key))
            # Checked after that await too: a fence and a new lease meanwhile mean
            # the claim went with the old lease, and another node may hold it now.
            if not self.membership.may_run() or self.membership.lease_id != lease:
                continue
            group = groups[spec.group].spec if spec.group else None
            stored = self.view.spec(spec.id)
            self.supervisor.start(
                spec,
                key=instance.key,
                fence=claim.create_revision,
                group=group,
                env=env,
                revision=stored.kv.mod_revision if stored else None,
            )

        # Claims of ours that nothing here runs any more (e.g. left by a failed stop):
        # on the periodic pass only, as this reads every claim.
        if full:
            for child_id, claim in self.view.claim_kvs().items():
                if claim.lease == lease and child_id not in self.supervisor.children:
                    await self.etcd.delete_if(claim.key, create_revision=claim.create_revision)

    def rollout(self, child_id: str) -> Rollout | None:
        """Where the child's move to its current spec stands (None: not placed)."""
        found = self.instances(child_id)
        return None if found is None else desired.rollout(*found)

    def instances(self, child_id: str) -> tuple[str, dict[int, Running | None]] | None:
        """The current spec's digest and what each placed instance runs (replica ->
        its state; None: not running anywhere); None when the child is not placed."""
        placed = self.place().get(child_id)
        stored = self.view.spec(child_id)
        if not placed or stored is None:
            return None
        instances: dict[int, Running | None] = {}
        for instance in placed:
            local = self.supervisor.children.get(instance.key)
            if local is not None:  # fresher than its claim
                instances[instance.replica] = Running(
                    local.digest,
                    local.state == State.RUNNING,
                    local.ready,
                    local.halted,
                    local.state in (State.STOPPED, State.FAILED),
                )
                continue
            claim = self.view.claim(instance.key)
            instances[instance.replica] = None if claim is None else running_from(claim.value)
        return spec_digest(stored.value), instances

    def _may_update(self, child: Child) -> bool:
        """A rolling restart: this instance's turn has come (see ``desired.rollout``)."""
        state = self.rollout(child.spec.id)
        _, replica = split_key(child.key)
        return state is not None and state.next == replica

    async def _publish_group_failures(self) -> None:
        """Step 3 of escalation: mark the group failed in etcd, so every node stops it."""
        for name, reason in list(self._failed_here.items()):
            current = self.view.group(name)
            if current is not None and current.value.state != "failed":
                record = msgspec.structs.replace(
                    current.value, state="failed", reason=reason, node=self.node, since=self.clock()
                )
                if await self.etcd.put_if(
                    current.kv.key, encode(record), mod_revision=current.kv.mod_revision
                ):
                    logger.error("group %s failed cluster-wide: %s", name, reason)
                    # Published: forget it now. Kept until a pass saw 'failed' in the
                    # view, it failed the group again when an operator reset it first.
                    del self._failed_here[name]
                    continue
            if current is None or current.value.state == "failed":
                del self._failed_here[name]

    async def _retry_failed_groups(self) -> None:
        """A failed group with ``retry_after`` runs again once that delay has passed."""
        now = self.clock()
        groups = self.groups()
        due, next_due = desired.retries_due({n: s.value for n, s in groups.items()}, now)
        self._next_retry = min(self._next_retry, next_due)
        for name in due:
            record, kv = groups[name].value, groups[name].kv
            fresh = msgspec.structs.replace(
                record,
                state="running",
                reason=f"retried after {record.spec.retry_after:g} s",
                node=None,
                since=now,
            )
            if await self.etcd.put_if(kv.key, encode(fresh), mod_revision=kv.mod_revision):
                logger.info("group %s: retrying after %g s", name, record.spec.retry_after)

    async def _claim(self, keys: Iterable[str]) -> dict[str, KV]:
        """Claim instances, many at a time (a failover claims hundreds at once).

        Asks etcd, not the view (which may lag): a claim is ours only if the
        transaction creates it or finds it under our own lease.

        Raises:
            EtcdUnavailable: no claim could be made (when only some failed, the
                ones made are returned and the next pass retries the rest).
        """
        lease = self.membership.lease_id
        value = encode(Claim(node=self.node))
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
