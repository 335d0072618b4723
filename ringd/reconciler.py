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
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .errors import EtcdUnavailable, InvalidSpec
from .membership import decode
from .placement import Instance, NodeInfo, Placer
from .spec import ChildSpec, GroupRecord, encode, parse_child, parse_group_record
from .supervisor import Child, State

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .etcd import KV, Etcd
    from .handoff import Handoff
    from .keys import Keys
    from .membership import Membership
    from .supervisor import Supervisor
    from .view import ClusterView

logger = logging.getLogger(__name__)


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
        self._placed: dict[str, tuple[ChildSpec, list[Instance]]] = {}
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
        drained = self.view.by_kind("nodes", "drain")
        out = {}
        for name, kv in self.view.by_kind("nodes", "alive").items():
            if name in drained:
                continue
            info = decode(kv)
            labels = info.get("labels") if isinstance(info.get("labels"), dict) else {}
            groups = info.get("groups") if isinstance(info.get("groups"), list) else []
            out[name] = NodeInfo(name, labels, frozenset(g for g in groups if isinstance(g, str)))
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
            if cached[1] is not None:
                out[name] = (cached[1], kv)
        for gone in cache.keys() - kvs.keys():
            del cache[gone]
        return out

    def specs(self) -> dict[str, ChildSpec]:
        """Every valid child spec, in the order they were created (their start order)."""
        parsed = self._parsed("children", parse_child, lambda s: s.id)
        ordered = sorted(parsed.items(), key=lambda item: item[1][1].create_revision)
        return {name: spec for name, (spec, _) in ordered}

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

    def place(self) -> dict[str, list[Instance]]:
        """Every runnable spec's instances (spec id -> instances, master first).

        Cached per spec while the nodes and groups stay the same, so that a burst of
        start-child calls costs one placement each, not one per spec per pass.
        """
        with_kv = self.groups()
        groups = {name: record for name, (record, _) in with_kv.items()}
        nodes = self.nodes()
        inputs = (
            frozenset((n, tuple(sorted(i.labels.items())), i.groups) for n, i in nodes.items()),
            frozenset(groups.items()),
        )
        if inputs != self._placed_for:
            self._placed_for, self._placed = inputs, {}
        placed: dict[str, list[Instance]] = {}
        for child_id, spec in self.specs().items():
            if self.blocked(spec, with_kv):
                continue
            hit = self._placed.get(child_id)
            if hit is None or hit[0] is not spec:  # parsed specs are reused while unchanged
                group = groups.get(spec.group) if spec.group else None
                instances = [
                    Instance(spec, r, node)
                    for r, node in enumerate(self.placer.owners(spec, nodes, group))
                ]
                hit = self._placed[child_id] = (spec, instances)
            placed[child_id] = hit[1]
        for gone in self._placed.keys() - placed.keys():
            del self._placed[gone]
        return placed

    def desired(self) -> dict[str, Instance]:
        """The instances this node should run, by instance key, in start order."""
        return {
            instance.key: instance
            for instances in self.place().values()
            for instance in instances
            if instance.node == self.node
        }

    def why_pending(self, spec: ChildSpec) -> str:
        groups = self.groups()
        if blocked := self.blocked(spec, groups):
            return blocked
        record = groups.get(spec.group)[0] if spec.group and spec.group in groups else None
        return (
            self.placer.why_unplaced(spec, self.nodes(), record)
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
            while True:
                self._wake = trio.Event()
                try:
                    await self.reconcile()
                except EtcdUnavailable as exc:
                    logger.warning("reconcile: %s", exc)
                    with trio.move_on_after(1.0):
                        await self._wake.wait()
                    continue
                except Exception:
                    # A bug must not take the node's children down with the daemon:
                    # log it loudly and try again from the current state.
                    logger.exception("reconcile failed; retrying in 1 s")
                    await trio.sleep(1.0)
                    continue
                wait = min(self.resync_interval, max(self._next_retry - time.time(), 0.05))
                self._next_retry = math.inf
                with trio.move_on_after(wait):
                    await self._wake.wait()

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

    async def reconcile(self) -> None:
        """One pass: stop what is no longer ours, start what is ours and free."""
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
        claims = self.view.by_kind("claims")

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
            and (claims.get(key) is None or claims[key].lease == lease)
        ]
        claimed = await self._claim(key for key, _ in wanted) if wanted else {}
        for key, instance in wanted:  # in start order, whatever order the claims came in
            claim = claimed.get(key)
            if claim is None or not self.membership.may_run():
                continue
            spec = instance.spec
            env = {"RINGD_ROLE": instance.role, "RINGD_REPLICA": str(instance.replica)}
            if spec.handoff:
                env["RINGD_HANDOFF_FILE"] = str(await self.handoff.restore(key))
            group = groups[spec.group][0].spec if spec.group else None
            self.supervisor.start(spec, key=key, fence=claim.create_revision, group=group, env=env)

        # Claims of ours that nothing here runs any more (e.g. left by a failed stop).
        for child_id, claim in claims.items():
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

        async def claim(key: str) -> None:
            async with self._claim_limiter:
                try:
                    _, kv = await self.etcd.create(self.keys.claim(key), value, lease=lease)
                except EtcdUnavailable as exc:
                    failed.append(exc)
                    return
            if kv is not None and kv.lease == lease == self.membership.lease_id:
                claimed[key] = kv

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(claim, key)
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
        """Graceful shutdown: stop every child in reverse start order (OTP), releasing
        each claim as soon as its child has stopped, so survivors take over child by
        child while the next one is stopping."""
        self.stopping = True  # no new reconcile pass; one in flight may still stop some
        async with trio.open_nursery() as releases:
            await self.supervisor.stop_all(lambda child: releases.start_soon(self._release, child))

    async def _release(self, child: Child) -> None:
        async with self._claim_limiter:
            try:
                if child.spec.handoff:
                    await self.handoff.store(child.id)
                await self.etcd.delete_if(self.keys.claim(child.id), create_revision=child.fence)
            except EtcdUnavailable as exc:
                logger.warning("cannot release %s (the lease revoke will): %s", child.id, exc)

    async def _publish_claims(self) -> None:
        """Write each child's state, pid and restarts into its claim (coalesced)."""
        while True:
            await self._claims_dirty.wait()
            self._claims_dirty = trio.Event()
            dirty, self._dirty_claims = self._dirty_claims, set()
            lease = self.membership.lease_id
            for child_id in dirty:
                child = self.supervisor.children.get(child_id)
                if child is None or lease is None or child.state == State.STOPPING:
                    continue
                try:
                    await self.etcd.put_if(
                        self.keys.claim(child_id),
                        self._claim_value(child),
                        create_revision=child.fence,
                        lease=lease,
                    )
                except EtcdUnavailable as exc:
                    logger.warning("cannot publish claim of %s: %s", child_id, exc)
                    self._dirty_claims.add(child_id)
            if self._dirty_claims:
                await trio.sleep(0.5)
                self._claims_dirty.set()
