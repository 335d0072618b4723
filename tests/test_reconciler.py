"""The acting half of reconciling (``ringd/reconciler.py``) on the in-memory store, a
real ``ClusterView`` and stand-ins for membership and the supervisor: what it claims
in the store and what it tells the supervisor, on trio's mock clock (milliseconds)."""

from __future__ import annotations

import itertools
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import msgspec
import pytest
import trio
import trio.testing

from ringd import records
from ringd.errors import EtcdUnavailable
from ringd.handoff import Handoff
from ringd.keys import Keys
from ringd.memstore import MemoryEtcd
from ringd.placement import Placer
from ringd.reconciler import Reconciler
from ringd.records import Alive, Claim, encode
from ringd.spec import ChildSpec, GroupRecord, GroupSpec, spec_digest
from ringd.supervisor import ChildChanged, GroupFailed, State, SupervisorEvent
from ringd.view import ClusterView

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from ringd.etcd import Etcd
    from ringd.membership import Membership
    from ringd.supervisor import Supervisor

KEYS = Keys("/ringd/t/")
LEASE_TTL = 3600  # long enough that no test's mock time ends a lease by itself
EPOCH = 1_700_000_000.0


# -- stand-ins -----------------------------------------------------------------------


class FakeMembership:
    """A node's registration: a lease from the store and its ``alive`` record under it."""

    def __init__(self, etcd: MemoryEtcd, node: str) -> None:
        self.etcd = etcd
        self.node = node
        self.lease_id: int | None = None
        self.fenced = False
        self.changed = trio.Event()

    def may_run(self) -> bool:
        return self.lease_id is not None and not self.fenced

    async def join(self, **alive: Any) -> int:
        lease, _ = await self.etcd.grant(LEASE_TTL)
        record = Alive(node=self.node, lease=lease, **alive)
        await self.etcd.put(KEYS.alive(self.node), encode(record), lease=lease)
        self.lease_id = lease
        self.notify()
        return lease

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass(eq=False)
class FakeChild:
    spec: ChildSpec
    key: str
    fence: int
    group: GroupSpec | None
    env: dict[str, str]
    state: State = State.RUNNING
    pid: int | None = None
    restarts: int = 0
    revision: int | None = None
    ready: bool = True
    halted: str = ""

    @property
    def id(self) -> str:
        return self.key

    @property
    def digest(self) -> str:
        return spec_digest(self.spec)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "instance": self.key,
            "role": self.env.get("RINGD_ROLE", "master"),
            "group": self.spec.group,
            "state": str(self.state),
            "pid": self.pid,
            "restarts": self.restarts,
            "started": None,
            "reason": "",
            "last_exit": "",
            "fence": self.fence,
            "revision": self.revision,
            "digest": self.digest,
            "ready": self.ready,
            "halted": self.halted,
        }


class FakeSupervisor:
    """Records what it is told; ``start`` also records the claim the store held then."""

    def __init__(self, etcd: MemoryEtcd) -> None:
        self.etcd = etcd
        self.children: dict[str, FakeChild] = {}
        self.calls: list[tuple[str, str]] = []
        self.stop_times: list[float] = []  # trio time of each stop
        self.claim_at_start: dict[str, int | None] = {}  # key -> the claim's create revision
        self.on_update_group: Callable[[], None] = lambda: None

    def start(
        self,
        spec: ChildSpec,
        *,
        key: str,
        fence: int,
        group: GroupSpec | None,
        env: dict[str, str],
        revision: int | None = None,
    ) -> FakeChild:
        assert key not in self.children, f"{key} started twice"
        kv = self.etcd.kvs.get(KEYS.claim(key))
        self.claim_at_start[key] = kv.create_revision if kv is not None else None
        self.calls.append(("start", key))
        child = self.children[key] = FakeChild(spec, key, fence, group, env, revision=revision)
        return child

    async def stop(self, key: str) -> None:
        self.calls.append(("stop", key))
        self.stop_times.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        self.children.pop(key, None)

    async def stop_all(self, on_stopped: Callable[[FakeChild], None]) -> None:
        for key in reversed(list(self.children)):
            child = self.children.pop(key)
            self.calls.append(("stop", key))
            on_stopped(child)

    def kill_all(self) -> None:
        self.calls.append(("kill_all", ""))

    def update_group(self, spec: GroupSpec) -> None:
        self.on_update_group()

    def started(self) -> list[str]:
        return [key for call, key in self.calls if call == "start"]

    def stopped(self) -> list[str]:
        return [key for call, key in self.calls if call == "stop"]


class WallClock:
    """Wall-clock time for the reconciler: follows trio's (mock) clock."""

    def __call__(self) -> float:
        return EPOCH + trio.current_time()


@dataclass
class Node:
    """One node under test: its reconciler and the stand-ins it acts through."""

    etcd: MemoryEtcd
    membership: FakeMembership
    supervisor: FakeSupervisor
    reconciler: Reconciler
    events: trio.MemorySendChannel[SupervisorEvent]
    clock: WallClock = field(default_factory=WallClock)

    @property
    def lease(self) -> int:
        assert self.membership.lease_id is not None
        return self.membership.lease_id

    def claim(self, key: str) -> tuple[Claim, int, int] | None:
        """The claim in the store: its record, lease and create revision."""
        kv = self.etcd.kvs.get(KEYS.claim(key))
        if kv is None:
            return None
        return msgspec.json.decode(kv.value, type=Claim), kv.lease, kv.create_revision


@asynccontextmanager
async def cluster(
    tmp_path: Path, *, rebalance_rate: float = 0.0, run: bool = False
) -> AsyncIterator[Node]:
    """A store, a view of it, node ``n1`` in the ring and its reconciler (running
    its loop when ``run``; else the test calls ``reconcile`` itself)."""
    etcd = MemoryEtcd()
    view = ClusterView(cast("Etcd", etcd), KEYS, max_backoff=0.2)
    membership = FakeMembership(etcd, "n1")
    await membership.join()
    supervisor = FakeSupervisor(etcd)
    send, receive = trio.open_memory_channel[SupervisorEvent](math.inf)
    clock = WallClock()
    reconciler = Reconciler(
        node="n1",
        etcd=cast("Etcd", etcd),
        keys=KEYS,
        view=view,
        membership=cast("Membership", membership),
        supervisor=cast("Supervisor", supervisor),
        handoff=Handoff(etcd=cast("Etcd", etcd), keys=KEYS, directory=tmp_path),
        events=receive,
        resync_interval=30.0,
        rebalance_rate=rebalance_rate,
        clock=clock,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        if run:
            await nursery.start(reconciler.run)
        yield Node(etcd, membership, supervisor, reconciler, send, clock)
        nursery.cancel_scope.cancel()


async def settle(seconds: float = 0.01) -> None:
    """Let the view (and a running reconciler) catch up: mock time, so instant."""
    await trio.sleep(seconds)


def child(child_id: str, **fields: Any) -> ChildSpec:
    fields.setdefault("argv", ["sleep", "60"])
    return ChildSpec(id=child_id, **fields)


async def put_spec(etcd: MemoryEtcd, spec: ChildSpec) -> None:
    await etcd.put(KEYS.child(spec.id), msgspec.json.encode(spec))


async def put_group(etcd: MemoryEtcd, record: GroupRecord) -> None:
    await etcd.put(KEYS.group(record.spec.name), msgspec.json.encode(record))


async def other_node(etcd: MemoryEtcd, name: str, *, alive: bool = True) -> int:
    """Another node's lease (and its ``alive`` record: in the ring) with no reconciler."""
    lease, _ = await etcd.grant(LEASE_TTL)
    if alive:
        await etcd.put(KEYS.alive(name), encode(Alive(node=name, lease=lease)), lease=lease)
    return lease


def ids_placed_on(node: str, nodes: set[str], count: int, prefix: str = "c") -> list[str]:
    """``count`` child ids the ring places on ``node`` among ``nodes``."""
    ring = Placer().ring(frozenset(nodes))
    found: list[str] = []
    i = 0
    while len(found) < count:
        if ring.owners(f"{prefix}{i}", 1) == [node]:
            found.append(f"{prefix}{i}")
        i += 1
    return found


# -- (a), (b): what is claimed and started ---------------------------------------------


async def test_a_child_placed_here_is_claimed_then_started(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as n1:
        await put_spec(n1.etcd, child("web"))
        await settle()
        await n1.reconciler.reconcile()

        claim = n1.claim("web")
        assert claim is not None, "claimed"
        record, lease, revision = claim
        assert (record.node, lease) == ("n1", n1.lease)
        assert n1.supervisor.started() == ["web"]
        assert n1.supervisor.claim_at_start["web"] == revision, "the claim existed first"
        started = n1.supervisor.children["web"]
        assert started.fence == revision, "the fence is the claim's create revision"
        assert started.env == {"RINGD_ROLE": "master", "RINGD_REPLICA": "0"}
        assert started.group is None

        await settle()
        await n1.reconciler.reconcile()
        assert n1.supervisor.calls == [("start", "web")], "a second pass changes nothing"


async def test_a_child_placed_on_another_node_is_not_claimed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as n1:
        await other_node(n1.etcd, "n2")
        both = {"n1", "n2"}
        (mine,) = ids_placed_on("n1", both, 1)
        (theirs, replicated) = ids_placed_on("n2", both, 2)
        for spec in (child(mine), child(theirs), child(replicated, replicas=2)):
            await put_spec(n1.etcd, spec)
        await settle()
        await n1.reconciler.reconcile()

        assert n1.claim(theirs) is None and n1.claim(replicated) is None
        assert n1.supervisor.started() == [mine, f"{replicated}/1"]
        replica = n1.supervisor.children[f"{replicated}/1"]
        assert replica.env == {"RINGD_ROLE": "replica", "RINGD_REPLICA": "1"}
        claim = n1.claim(f"{replicated}/1")
        assert claim is not None and claim[1] == n1.lease and replica.fence == claim[2]


# -- (c): a claim another lease holds ---------------------------------------------------


async def test_a_claim_held_by_another_lease_is_waited_for_then_taken(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, run=True) as n1:
        # n2 left the ring (its alive key is gone) but its lease, and claim, live on.
        lease2 = await other_node(n1.etcd, "n2", alive=False)
        await n1.etcd.put(KEYS.claim("web"), encode(Claim(node="n2")), lease=lease2)
        await put_spec(n1.etcd, child("web"))
        await settle(5)
        assert n1.supervisor.started() == []
        claim = n1.claim("web")
        assert claim is not None and (claim[0].node, claim[1]) == ("n2", lease2), "left alone"

        n1.etcd.expire(lease2)  # its lease ends: the claim goes
        await settle()
        assert n1.supervisor.started() == ["web"]
        claim = n1.claim("web")
        assert claim is not None and (claim[0].node, claim[1]) == ("n1", n1.lease)
        assert n1.supervisor.children["web"].fence == claim[2]


# -- (d): moves when a node joins ----------------------------------------------------------


async def test_a_joining_node_takes_its_children_stopped_and_released_here(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    specs = [child(f"c{i}") for i in range(12)]
    moving = set(ids_placed_on("n2", {"n1", "n2"}, 12)) & {s.id for s in specs}
    assert 2 <= len(moving) < len(specs)
    async with cluster(tmp_path, run=True) as n1:
        for spec in specs:
            await put_spec(n1.etcd, spec)
        await settle()
        assert sorted(n1.supervisor.started()) == sorted(s.id for s in specs)
        fences = {k: c.fence for k, c in n1.supervisor.children.items()}

        await other_node(n1.etcd, "n2")
        await settle()
        assert set(n1.supervisor.stopped()) == moving
        assert set(n1.supervisor.children) == {s.id for s in specs} - moving
        for spec in specs:
            claim = n1.claim(spec.id)
            if spec.id in moving:
                assert claim is None, f"{spec.id}: released"
            else:
                assert claim is not None and claim[2] == fences[spec.id], f"{spec.id}: kept"
        assert n1.reconciler.moves_pending == 0
        assert len(n1.supervisor.started()) == len(specs), "nothing started again"


async def test_moves_are_paced_by_the_rebalance_rate(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    specs = [child(f"c{i}") for i in range(16)]
    moving = set(ids_placed_on("n2", {"n1", "n2"}, 16)) & {s.id for s in specs}
    assert len(moving) >= 5
    async with cluster(tmp_path, rebalance_rate=2.0, run=True) as n1:
        for spec in specs:
            await put_spec(n1.etcd, spec)
        await settle()
        assert len(n1.supervisor.children) == len(specs)

        await other_node(n1.etcd, "n2")
        joined = trio.current_time()
        await settle()
        assert len(n1.supervisor.stopped()) == 2, "a burst of rate moves"
        assert n1.reconciler.moves_pending == len(moving) - 2
        assert sum(n1.claim(k) is None for k in moving) == 2

        await settle(len(moving) * 0.5 + 1)
        assert set(n1.supervisor.stopped()) == moving
        assert n1.reconciler.moves_pending == 0
        assert all(n1.claim(k) is None for k in moving)
        times = n1.supervisor.stop_times
        assert times[1] - joined < 0.1, "the burst goes at once"
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert all(gap >= 0.5 - 1e-9 for gap in gaps), gaps
        # No period lost to rounding (test_desired's pacer test).
        assert times[-1] - joined <= (len(moving) - 2) * 0.5 + 0.1


# -- (e): fencing and a new lease -------------------------------------------------------


async def test_a_fenced_node_stops_every_child_and_starts_none(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, run=True) as n1:
        for name in ("a", "b"):
            await put_spec(n1.etcd, child(name))
        await settle()
        assert sorted(n1.supervisor.children) == ["a", "b"]

        n1.membership.fenced = True
        n1.membership.notify()
        await settle()
        assert sorted(n1.supervisor.stopped()) == ["a", "b"]
        assert n1.supervisor.children == {}
        await put_spec(n1.etcd, child("c"))
        await settle(40)  # a periodic pass too
        assert sorted(n1.supervisor.started()) == ["a", "b"], "nothing started while fenced"
        assert n1.claim("c") is None


async def test_children_of_an_old_lease_are_forgotten(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as n1:
        for name in ("a", "b"):
            await put_spec(n1.etcd, child(name))
        await settle()
        await n1.reconciler.reconcile()
        old_lease = n1.lease
        old = {k: c.fence for k, c in n1.supervisor.children.items()}

        # Registered again (the node fenced and came back) before any pass saw it:
        # the old lease and its claims still live.
        await n1.membership.join()
        await settle()
        await n1.reconciler.reconcile()
        assert n1.supervisor.stopped() == ["a", "b"], "the old lease's children"
        assert n1.supervisor.started() == ["a", "b"], "not again while old claims live"
        assert all(c is not None and c[1] == old_lease for c in map(n1.claim, "ab"))

        n1.etcd.expire(old_lease)
        await settle()
        await n1.reconciler.reconcile()
        assert n1.supervisor.started() == ["a", "b", "a", "b"]
        for key in "ab":
            claim = n1.claim(key)
            assert claim is not None and claim[1] == n1.lease
            assert n1.supervisor.children[key].fence == claim[2] > old[key]


# -- (f), (g): group failure and retry ---------------------------------------------------


async def test_a_group_failed_here_is_marked_failed_and_its_members_stopped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, run=True) as n1:
        await put_group(n1.etcd, GroupRecord(spec=GroupSpec(name="g")))
        for spec in (child("a", group="g"), child("b", group="g"), child("solo")):
            await put_spec(n1.etcd, spec)
        await settle()
        assert list(n1.supervisor.children) == ["a", "b", "solo"]
        assert n1.supervisor.children["a"].group == GroupSpec(name="g")

        n1.events.send_nowait(GroupFailed("g", "too many restarts"))
        failed_at = n1.clock()
        await settle()
        kv = n1.etcd.kvs[KEYS.group("g")]
        record = records.decode("groups", "", "g", kv.value)
        assert (record.state, record.node, record.reason) == ("failed", "n1", "too many restarts")
        assert record.since == pytest.approx(failed_at, abs=0.1)
        assert sorted(n1.supervisor.stopped()) == ["a", "b"]
        assert list(n1.supervisor.children) == ["solo"]
        assert n1.claim("a") is None and n1.claim("b") is None and n1.claim("solo") is not None
        await settle(40)
        assert n1.supervisor.started() == ["a", "b", "solo"], "not started again"


async def test_a_failed_group_is_retried_after_its_delay_not_before(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, run=True) as n1:
        failed = GroupRecord(
            spec=GroupSpec(name="g", retry_after=5.0),
            state="failed",
            reason="boom",
            node="n2",
            since=n1.clock(),
        )
        await put_group(n1.etcd, failed)
        await put_spec(n1.etcd, child("a", group="g"))
        await settle(4.9)
        kv = n1.etcd.kvs[KEYS.group("g")]
        assert records.decode("groups", "", "g", kv.value) == failed
        assert n1.supervisor.started() == []

        await settle(0.2)
        record = records.decode("groups", "", "g", n1.etcd.kvs[KEYS.group("g")].value)
        assert (record.state, record.node, record.reason) == ("running", None, "retried after 5 s")
        assert record.since == pytest.approx(failed.since + 5.0, abs=0.05)  # type: ignore[operator]
        assert n1.supervisor.started() == ["a"]


# -- (h): the store goes down --------------------------------------------------------------


async def test_no_start_without_a_claim_when_the_store_goes_down_during_a_pass(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as n1:
        await put_group(n1.etcd, GroupRecord(spec=GroupSpec(name="g")))
        await put_spec(n1.etcd, child("web"))
        await settle()
        n1.supervisor.on_update_group = n1.etcd.fail  # after the pass read the view
        with pytest.raises(EtcdUnavailable):
            await n1.reconciler.reconcile()
        assert n1.supervisor.started() == []
        assert n1.claim("web") is None

        n1.supervisor.on_update_group = lambda: None
        n1.etcd.recover()
        await settle(1)
        await n1.reconciler.reconcile()
        claim = n1.claim("web")
        assert claim is not None and n1.supervisor.children["web"].fence == claim[2]


async def test_the_loop_carries_on_once_the_store_is_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, run=True) as n1:
        await put_group(n1.etcd, GroupRecord(spec=GroupSpec(name="g")))
        await settle()
        n1.supervisor.on_update_group = n1.etcd.fail
        await put_spec(n1.etcd, child("web"))
        await settle(3)
        assert n1.etcd.down and n1.supervisor.started() == []
        n1.supervisor.on_update_group = lambda: None
        n1.etcd.recover()
        await settle(2)
        assert n1.supervisor.started() == ["web"]
        claim = n1.claim("web")
        assert claim is not None and n1.supervisor.children["web"].fence == claim[2]


# -- (i): a child's state in its claim -----------------------------------------------------


async def test_a_child_change_is_published_in_its_claim(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, run=True) as n1:
        await put_spec(n1.etcd, child("web"))
        await settle()
        before = n1.claim("web")
        assert before is not None and before[0].state == "starting"
        web = n1.supervisor.children["web"]
        web.state, web.pid, web.restarts = State.RUNNING, 4242, 2
        n1.events.send_nowait(ChildChanged("web"))
        await settle()
        after = n1.claim("web")
        assert after is not None
        record, lease, revision = after
        assert (lease, revision) == (before[1], before[2]), "the same claim, the same lease"
        assert record == Claim(
            node="n1",
            state="running",
            id="web",
            instance="web",
            role="master",
            pid=4242,
            restarts=2,
            fence=revision,
            revision=web.revision,
            digest=spec_digest(web.spec),
            ready=True,
        )
        assert web.revision == n1.etcd.kvs[KEYS.child("web")].mod_revision, "its spec's"

        web.state = State.STOPPING  # about to go: not published
        n1.events.send_nowait(ChildChanged("web"))
        await settle()
        assert n1.claim("web") == after


async def test_children_created_together_start_in_creation_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path, run=True) as n1:
        await settle()  # the first pass is done: the next ones are incremental
        ids = [f"c{i}" for i in range(12)]
        for child_id in ids:  # one start-children call: one burst of specs
            await put_spec(n1.etcd, child(child_id))
        await settle()
        assert n1.supervisor.started() == ids


async def test_release_all_stops_every_child_and_releases_its_claim(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as n1:
        for name in ("a", "b"):
            await put_spec(n1.etcd, child(name))
        await settle()
        await n1.reconciler.reconcile()
        assert n1.claim("a") is not None and n1.claim("b") is not None
        await n1.reconciler.release_all()
        assert sorted(n1.supervisor.stopped()) == ["a", "b"]
        assert n1.claim("a") is None and n1.claim("b") is None
        await settle()
        await n1.reconciler.reconcile()
        assert len(n1.supervisor.started()) == 2, "no pass starts anything once stopping"


async def test_inputs_are_made_again_only_when_a_node_drain_or_group_key_changes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Every pass asks for the inputs: the same object while no node, drain or group
    key changed (a claim or a spec does not count), a fresh one as soon as one does."""
    async with cluster(tmp_path) as n1:
        await settle()
        first = n1.reconciler.inputs()
        await put_spec(n1.etcd, child("web"))
        await n1.etcd.put(KEYS.claim("other"), encode(Claim(node="n9")))
        await settle()
        assert n1.reconciler.inputs() is first
        assert set(first.nodes) == {"n1"}

        await other_node(n1.etcd, "n2")
        await settle()
        joined = n1.reconciler.inputs()
        assert joined is not first and set(joined.nodes) == {"n1", "n2"}

        await n1.etcd.put(KEYS.drain("n2"), b"{}")
        await settle()
        drained = n1.reconciler.inputs()
        assert set(drained.nodes) == {"n1"} and drained.draining == {"n2"}

        await put_group(n1.etcd, GroupRecord(spec=GroupSpec(name="g")))
        await settle()
        assert set(n1.reconciler.inputs().groups) == {"g"}


def test_a_claim_is_stored_without_its_default_values_and_read_back_whole() -> None:
    """Every daemon holds every claim: its defaults are not stored (a reader fills
    them in), and an older claim written with every field reads the same."""
    claim = Claim(node="n1", state="running", id="web", instance="web", pid=42, ready=True)
    stored = encode(claim)
    assert b"role" not in stored and b"halted" not in stored and b"restarts" not in stored
    assert records.decode("claims", "", "web", stored) == claim
    every_field = msgspec.json.encode(msgspec.structs.asdict(claim))
    assert len(stored) < len(every_field) - 60
    assert records.decode("claims", "", "web", every_field) == claim
