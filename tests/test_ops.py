"""The control socket's ops (``ringd/ops/``) called directly, on the in-memory store,
a real ``ClusterView`` and ``Reconciler`` over it, and stand-ins for membership and
the supervisor: what they decide (validation, conflicts, reasons, refusals) in
milliseconds. What they do to a real etcd and real children is tested in
test_control, test_listing, test_groups and test_cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import msgspec
import pytest
import trio
import trio.testing

from ringd import heap, records
from ringd import listing as listing_module
from ringd.config import Config
from ringd.errors import (
    AlreadyExists,
    CannotRun,
    InvalidSpec,
    InvalidSpecs,
    NotFound,
    Refused,
    RingdError,
    TimedOut,
)
from ringd.figures import Figures
from ringd.handoff import Handoff
from ringd.keys import Keys
from ringd.memstore import MemoryEtcd
from ringd.ops import Context, forward, handlers, stream_handlers
from ringd.protocol import MAX_BATCH, ChildRow, Encoded, GroupRow
from ringd.reconciler import Reconciler
from ringd.records import Alive, Claim, Status
from ringd.spec import GroupRecord, GroupSpec, parse_group
from ringd.supervisor import State, SupervisorEvent
from ringd.view import ClusterView

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from ringd.etcd import Etcd
    from ringd.membership import Membership
    from ringd.peers import PeerClient
    from ringd.supervisor import Supervisor

KEYS = Keys("/ringd/t/")
NODE = "n1"


# -- stand-ins -----------------------------------------------------------------------


@dataclass
class FakeMembership:
    lease_id: int | None = 0x2A
    ttl: float = 10.0
    fenced: bool = False


@dataclass(eq=False)
class FakeChild:
    """What the ops read of a supervised child."""

    key: str
    pid: int | None = 4242
    state: State = State.RUNNING
    last_exit: str = "exit 0"
    fence: int = 7

    @property
    def id(self) -> str:
        return self.key

    def info(self) -> dict[str, Any]:
        return {
            "id": self.key.partition("/")[0],
            "instance": self.key,
            "role": "master" if "/" not in self.key else "replica",
            "group": None,
            "state": str(self.state),
            "pid": self.pid,
            "restarts": 1,
            "started": 1.5,
            "reason": "",
            "last_exit": self.last_exit,
            "fence": 7,
            "revision": 3,
            "digest": "d1",
            "ready": True,
            "health": "healthy",
            "halted": "",
            "future": "a field this daemon's replies do not know yet",
        }


@dataclass
class FakeSupervisor:
    """Records what it is told to do with its children."""

    log_dir: Path
    children: dict[str, FakeChild] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def terminate(self, key: str) -> FakeChild:
        self.calls.append(("terminate", key))
        child = self.children[key]
        child.state = State.STOPPED
        return child

    async def restart(self, key: str) -> FakeChild:
        self.calls.append(("restart", key))
        return self.children[key]

    def signal(self, key: str, signum: int) -> FakeChild:
        self.calls.append((f"signal {signum}", key))
        if self.children[key].pid is None:
            raise ProcessLookupError(f"child {key} is not running")
        return self.children[key]

    def log_path(self, key: str) -> Path:
        return self.log_dir / f"{key}.log"


@dataclass
class Ops:
    """A daemon's ops on node n1 over an in-memory store."""

    etcd: MemoryEtcd
    ctx: Context
    supervisor: FakeSupervisor

    async def call(self, op: str, **args: Any) -> Any:
        """The op as the control socket runs it: ``args`` decoded, then the handler."""
        return await handlers(self.ctx)[op](args)

    async def fails(self, op: str, **args: Any) -> RingdError:
        with pytest.raises(RingdError) as info:
            await self.call(op, **args)
        return info.value

    async def settle(self) -> None:
        """Let the view apply what the store just did."""
        await trio.testing.wait_all_tasks_blocked()

    async def put(self, key: str, record: msgspec.Struct) -> None:
        await self.etcd.put(key, records.encode(record))
        await self.settle()

    async def node(self, name: str, **alive: Any) -> None:
        """A node in the ring, online."""
        await self.put(KEYS.alive(name), Alive(node=name, host=f"{name}.example", pid=100))
        await self.put(KEYS.status(name), Status(node=name, status="online", **alive))

    async def claim(self, instance: str, node: str, **fields: Any) -> None:
        """``instance`` running on ``node``, as that node's reconciler claims it."""
        fields = {"state": "running", "pid": 31337, **fields}
        await self.put(KEYS.claim(instance), Claim(node=node, **fields))

    def stored(self, key: str) -> bytes | None:
        kv = self.etcd.kvs.get(key)
        return kv.value if kv is not None else None


@pytest.fixture
async def ops(tmp_path: Path) -> AsyncIterator[Ops]:
    etcd = MemoryEtcd()
    view = ClusterView(cast("Etcd", etcd), KEYS, max_backoff=0.2)
    supervisor = FakeSupervisor(tmp_path)
    membership = FakeMembership()
    _, events = trio.open_memory_channel[SupervisorEvent](math.inf)
    reconciler = Reconciler(
        node=NODE,
        etcd=cast("Etcd", etcd),
        keys=KEYS,
        view=view,
        membership=cast("Membership", membership),
        supervisor=cast("Supervisor", supervisor),
        handoff=Handoff(etcd=cast("Etcd", etcd), keys=KEYS, directory=tmp_path),
        events=events,
    )
    ctx = Context(
        config=Config(name=NODE, cluster="t", socket=str(tmp_path / "s"), state_dir=str(tmp_path)),
        etcd=cast("Etcd", etcd),
        keys=KEYS,
        view=view,
        membership=cast("Membership", membership),
        supervisor=cast("Supervisor", supervisor),
        reconciler=reconciler,
        figures=Figures(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        yield Ops(etcd, ctx, supervisor)
        nursery.cancel_scope.cancel()


def sleeper(child_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": child_id, "argv": ["sleep", "60"], **fields}


def invalid(error: RingdError) -> str:
    """The message ringctl prints for an ``invalid`` error (``field: problem``)."""
    assert isinstance(error, InvalidSpec), error
    assert error.code == "invalid"
    return str(error)


# -- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("find", {}, "id: must be 1-128 letters"),
        ("find", {"id": "../x"}, "id: must be 1-128 letters"),
        ("find", {"id": "-x"}, "id: must be 1-128 letters"),
        ("find", {"id": 7}, "id: must be 1-128 letters"),
        ("delete_child", {"id": "x", "wait": "yes"}, "wait: must be true or false"),
        ("delete_child", {"id": "x", "timeout": "soon"}, "timeout: must be a number of seconds"),
        ("start_child", {"spec": "ls"}, "spec: must be an object"),
        ("start_child", {}, "spec: must be an object"),
        ("start_children", {"specs": []}, f"specs: must be a list of 1 to {MAX_BATCH} specs"),
        ("start_children", {"specs": {"id": "x"}}, "specs: must be a list of 1 to"),
        ("which_children", {"node": ["n1"]}, "node: "),
        ("which_children", {"local": 1}, "local: must be true or false"),
        ("create_group", {"spec": ["g"]}, "spec: must be an object"),
        ("delete_group", {"name": "g", "force": "yes"}, "force: must be true or false"),
        ("reset_group", {"name": ""}, "name: must be 1-128 letters"),
        ("terminate_child", {"id": "x/0"}, "id: must be a child id, or id/<n>"),
        ("restart_child", {"id": "x/1000"}, "id: must be a child id, or id/<n>"),
        ("signal_child", {"id": "x"}, "signal: must be a signal name or number"),
        ("signal_child", {"id": "x", "signal": [15]}, "signal: must be a signal name or number"),
        ("logs", {"id": "x", "lines": -1}, "lines: must be an integer in [0, 100000]"),
        ("logs", {"id": "x", "lines": True}, "lines: must be an integer in [0, 100000]"),
        ("logs", {"id": "x", "lines": 1.5}, "lines: must be an integer in [0, 100000]"),
        ("drain", {}, "node: must be 1-128 letters"),
        ("undrain", {"node": None}, "node: must be 1-128 letters"),
        ("forget_node", {"node": "a b"}, "node: must be 1-128 letters"),
    ],
)
async def test_a_bad_argument_is_named_with_its_rule(
    ops: Ops, op: str, args: dict[str, Any], message: str
) -> None:
    assert invalid(await ops.fails(op, **args)).startswith(message)


async def test_unknown_arguments_are_ignored(ops: Ops) -> None:
    """A newer ringctl may send more than this daemon knows."""
    assert (await ops.call("ping", verbose=True)).node == NODE
    with pytest.raises(NotFound):
        await ops.call("find", id="x", colour="blue")


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("watch", {"what": "everything"}),
        ("logs_follow", {"id": "x/0"}),
        ("logs_follow", {"id": "x", "lines": "all"}),
    ],
)
async def test_a_stream_op_checks_its_arguments_when_called(
    ops: Ops, op: str, args: dict[str, Any]
) -> None:
    """Before its first event: the control server answers with the error at once."""
    with pytest.raises(InvalidSpec):
        stream_handlers(ops.ctx)[op](args)


def test_a_group_row_has_every_field_of_a_group_spec() -> None:
    """``GroupRow`` repeats the spec's fields: a new one must be added there too."""
    spec_fields = GroupSpec.__struct_fields__
    assert GroupRow.__struct_fields__[: len(spec_fields)] == spec_fields


# -- start_child, start_children -----------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"id": "x", "argv": "ls -l"}, "argv: "),
        ({"id": "x", "argv": []}, "argv: "),
        ({"id": "x", "argv": ["ls"], "env": {"RINGD_FENCE": "1"}}, "env.RINGD_FENCE: "),
        ({"id": "x", "argv": ["ls"], "cwd": "tmp"}, "cwd: 'tmp' is not an absolute path"),
        ({"id": "x", "argv": ["ls"], "restart": "sometimes"}, "restart: "),
        ({"id": "x", "argv": ["ls"], "replicas": 0}, "replicas: "),
        ({"id": "x", "argv": ["ls"], "shell": True}, "shell: unknown key"),
        ({"argv": ["ls"]}, "id: "),
    ],
)
async def test_start_child_names_the_bad_field_and_stores_nothing(
    ops: Ops, spec: dict[str, Any], message: str
) -> None:
    assert invalid(await ops.fails("start_child", spec=spec)).startswith(message)
    assert ops.etcd.calls.get("create", 0) == 0


@pytest.mark.parametrize("timeout", [0, -1, 3601, math.inf, math.nan, "soon", True, None])
async def test_a_bad_timeout_stores_nothing_even_without_wait(ops: Ops, timeout: object) -> None:
    for op, args in (
        ("start_child", {"spec": sleeper("t1")}),
        ("start_children", {"specs": [sleeper("t1")]}),
    ):
        error = await ops.fails(op, **args, timeout=timeout)
        assert invalid(error).startswith("timeout: must be a number of seconds in (0, 3600]")
    assert ops.etcd.calls.get("create", 0) == 0


async def test_start_child_is_idempotent_and_refuses_another_spec(ops: Ops) -> None:
    first = await ops.call("start_child", spec=sleeper("web"))
    # No node is online: the reply says why it waits (the view may not have it yet).
    assert (first.id, first.state, first.argv, first.replicas) == (
        "web",
        "pending",
        ["sleep", "60"],
        1,
    )
    assert first.reason in ("just created: not placed yet", "no node is online")
    await ops.settle()
    again = await ops.call("start_child", spec=sleeper("web"))
    assert (again.state, again.reason) == ("pending", "no node is online")
    error = await ops.fails("start_child", spec=sleeper("web", argv=["sleep", "61"]))
    assert isinstance(error, AlreadyExists) and error.code == "exists"
    assert msgspec.json.decode(ops.stored(KEYS.child("web")) or b"")["argv"] == ["sleep", "60"]


async def test_start_child_answers_a_just_created_child_before_the_view_has_it(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler answers from etcd's reply; the view is a watch event behind."""
    await ops.node("n2")
    monkeypatch.setattr(ops.ctx.view, "spec", lambda child_id: None)  # lagging
    row = await ops.call("start_child", spec=sleeper("fresh"))
    assert (row.state, row.reason) == ("pending", "just created: not placed yet")


async def test_start_children_names_the_bad_spec_by_its_index(ops: Ops) -> None:
    good = sleeper("ok")
    for specs, message in [
        ([good, "ls"], "child 2: child: must be a table"),
        ([good, {"id": "bad", "argv": []}], "child 2 (id bad): argv: "),
        ([good, good], "child 2 (id ok): id: 'ok' appears twice (child 1)"),
        ([sleeper("ok", env={"RINGD_NODE": "x"})], "child 1 (id ok): env.RINGD_NODE: "),
    ]:
        error = await ops.fails("start_children", specs=specs)
        assert isinstance(error, InvalidSpecs), error
        assert error.problems[0].startswith(message), error.problems
    too_many = [sleeper(f"c{i}") for i in range(MAX_BATCH + 1)]
    assert invalid(await ops.fails("start_children", specs=too_many)).startswith(
        "specs: must be a list of 1 to"
    )
    # Every problem at once, each with its 1-based place and id.
    error = await ops.fails(
        "start_children",
        specs=[{"id": "a", "argv": []}, good, {"id": "-b", "argv": ["x"], "env": {"A": 1}}],
    )
    assert isinstance(error, InvalidSpecs)
    assert error.problems == [
        "child 1 (id a): argv: must not be empty",
        "child 3 (id -b): id: must be 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
        "child 3 (id -b): env.A: must be a string, not an integer",
    ]
    assert ops.etcd.calls.get("create", 0) == 0


async def test_start_children_stores_in_transactions_and_names_conflicts(ops: Ops) -> None:
    specs = [sleeper(f"b{i}") for i in range(70)]  # more than one transaction (64)
    result = await ops.call("start_children", specs=specs)
    assert (result.stored, result.conflicts) == (70, [])
    assert ops.etcd.calls["create"] == 2
    again = [*specs[:3], {**specs[3], "argv": ["sleep", "61"]}, sleeper("b70")]
    result = await ops.call("start_children", specs=again)
    assert (result.stored, result.conflicts) == (4, ["b3"])
    assert msgspec.json.decode(ops.stored(KEYS.child("b3")) or b"")["argv"] == ["sleep", "60"]


async def test_waiting_for_a_child_that_never_runs_times_out(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)  # online, but nothing claims it
    with pytest.raises(TimedOut, match=r"not running within 5 s: child w \(pending: waiting"):
        await ops.call("start_child", spec=sleeper("w"), wait=True, timeout=5)
    assert ops.stored(KEYS.child("w")) is not None  # stored all the same


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (sleeper("w"), "no node is online"),
        (sleeper("w", on={"zone": "eu"}), "no eligible node: needs zone=eu"),
        (sleeper("w", group="nosuch"), "group nosuch does not exist"),
    ],
)
async def test_waiting_ends_at_once_when_the_child_cannot_run(
    ops: Ops, autojump_clock: trio.testing.MockClock, spec: dict[str, Any], why: str
) -> None:
    if why != "no node is online":
        await ops.node(NODE)
    with pytest.raises(CannotRun) as exc:
        await ops.call("start_child", spec=spec, wait=True, timeout=30)
    assert str(exc.value) == f"child w cannot run: {why}"
    assert trio.current_time() < 1, "not the whole timeout"


async def test_waiting_ends_when_the_child_failed_and_a_batch_names_each(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)

    async def fail_one() -> None:
        await trio.sleep(1)
        await ops.claim("a", NODE)
        await ops.claim("b", NODE, state="failed", pid=None, reason="cannot start 'nobin'")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_one)
        with pytest.raises(CannotRun) as exc:
            await ops.call(
                "start_children",
                specs=[sleeper("a"), sleeper("b"), sleeper("c", on={"zone": "eu"})],
                wait=True,
                timeout=30,
            )
    assert str(exc.value) == (
        "child b cannot run: cannot start 'nobin'; "
        "child c cannot run: no eligible node: needs zone=eu"
    )


async def test_waiting_for_a_child_returns_once_its_claim_says_running(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)

    async def run_it() -> None:
        await trio.sleep(1)
        await ops.claim("w", NODE, state="starting", pid=None)
        await trio.sleep(1)
        await ops.claim("w", NODE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_it)
        row = await ops.call("start_child", spec=sleeper("w"), wait=True, timeout=30)
    assert trio.current_time() == pytest.approx(2, abs=0.1)
    assert (row.state, row.node, row.pid) == ("running", NODE, 31337)


# -- find ----------------------------------------------------------------------------


async def test_find_unknown_child(ops: Ops) -> None:
    error = await ops.fails("find", id="ghost")
    assert isinstance(error, NotFound) and str(error) == "no child named 'ghost'"


async def test_find_a_pending_child_says_why(ops: Ops) -> None:
    await ops.call("start_child", spec=sleeper("g1", group="g"))
    await ops.call("start_child", spec=sleeper("z", on={"zone": "b"}))
    await ops.call("start_child", spec=sleeper("lonely"))
    await ops.settle()

    async def why(child_id: str) -> tuple[str, str]:
        row = await ops.call("find", id=child_id)
        return row.state, row.reason

    assert await why("lonely") == ("pending", "no node is online")
    assert await why("g1") == ("pending", "group g does not exist")
    await ops.node(NODE)
    assert await why("z") == ("pending", "no eligible node: needs zone=b")
    assert await why("lonely") == ("pending", "waiting for its node to claim it")
    failed = GroupRecord(spec=parse_group({"name": "g"}), state="failed", reason="boom", node="n2")
    await ops.put(KEYS.group("g"), failed)
    assert await why("g1") == ("failed", "group g failed: boom")
    await ops.put(KEYS.drain(NODE), records.Drain())
    assert await why("lonely") == ("pending", "every node in the ring is draining")


async def test_find_a_running_child_with_a_degraded_replica(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("r", replicas=2))
    await ops.claim("r", NODE)
    found = await ops.call("find", id="r")
    assert (found.state, found.node, found.owner, found.pid) == ("running", NODE, NODE, 31337)
    assert found.fence == ops.etcd.kvs[KEYS.claim("r")].create_revision
    assert (found.replicas, found.degraded) == (2, True)
    replica = found.instances[1]
    assert (replica.instance, replica.role, replica.state, replica.owner) == (
        "r/1",
        "replica",
        "degraded",
        None,
    )
    assert replica.reason == "only 1 eligible node(s) for 2 replicas"
    # The reply is the master's row, then argv, replicas, degraded, instances.
    wire = msgspec.json.decode(msgspec.json.encode(found))
    assert list(wire)[:2] == ["id", "instance"]
    assert list(wire)[-5:] == ["argv", "replicas", "degraded", "instances", "warnings"]
    assert "last_exit" not in wire


async def test_find_an_invalid_spec_in_etcd(ops: Ops) -> None:
    await ops.etcd.put(KEYS.child("broken"), b"{not json")
    await ops.etcd.put(KEYS.child("wrongid"), b'{"id": "other", "argv": ["true"], "group": "g"}')
    await ops.settle()
    broken = await ops.call("find", id="broken")
    assert (broken.state, broken.argv) == ("invalid", None)
    wrong = await ops.call("find", id="wrongid")
    assert (wrong.state, wrong.argv, wrong.group) == ("invalid", ["true"], "g")
    assert wrong.reason == "the spec in etcd is not valid (see the daemon log)"
    rows = await ops.call("which_children")
    assert [(r["id"], r["state"]) for r in msgspec.json.decode(rows.json)] == [
        ("broken", "invalid"),
        ("wrongid", "invalid"),
    ]


# -- which_children ------------------------------------------------------------------


async def test_which_children_filters_and_local_rows_come_from_the_supervisor(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.call("create_group", spec={"name": "g"})
    for child_id, group in (("a", None), ("b", "g"), ("c", None)):
        await ops.call("start_child", spec=sleeper(child_id, group=group))
    await ops.claim("a", NODE)
    await ops.claim("b", "n2")
    ops.supervisor.children["a"] = FakeChild("a", pid=555, state=State.BACKOFF)

    async def ids(**args: Any) -> list[str]:
        rows = await ops.call("which_children", **args)
        if isinstance(rows, Encoded):
            rows = msgspec.json.decode(rows.json, type=list[ChildRow])
        return [row.instance for row in rows]

    assert await ids() == ["a", "b", "c"]
    assert await ids(node="n2") == ["b"]
    assert await ids(group="g") == ["b"]
    for missing, what in (({"node": "nowhere"}, "node"), ({"group": "nosuch"}, "group")):
        error = await ops.fails("which_children", **missing)
        assert isinstance(error, NotFound), f"a filter naming no {what} is not found"
    (local,) = await ops.call("which_children", local=True)
    assert (local.id, local.pid, local.state, local.last_exit) == ("a", 555, "backoff", "exit 0")
    assert (local.node, local.ready, local.health) == (NODE, True, "healthy")
    encoded = await ops.call("which_children", node=NODE)  # encoded once for every reader
    assert isinstance(encoded, Encoded)
    (row,) = msgspec.json.decode(encoded.json)
    assert (row["id"], row["pid"], row["state"]) == ("a", 31337, "running")  # its claim
    assert "last_exit" not in row


async def test_listed_rows_are_kept_while_someone_lists_and_dropped_after(
    ops: Ops, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of every child and the encoded replies cost ~1 KiB a child: a listing
    every few seconds keeps them; a minute without one drops them; a reply goes once
    it is older than ``fresh``. Rows built again after are the same rows. The heap's
    free pages are given back after a big listing only."""
    listing = ops.ctx.listing
    given: list[float] = []
    monkeypatch.setattr(heap, "give_back", lambda: given.append(trio.current_time()))
    await ops.node(NODE)
    for child_id in ("a", "b"):
        await ops.call("start_child", spec=sleeper(child_id))
    await ops.claim("a", NODE)
    await ops.settle()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listing.run)
        first = await ops.call("which_children")
        assert isinstance(first, Encoded) and listing._replies and listing._entries
        await trio.sleep(listing.fresh + 1.5)
        assert not listing._replies, "a reply older than fresh is dropped"
        for _ in range(4):  # a status page: every 20 s for 80 s
            await trio.sleep(20)
            await ops.call("which_children")
            assert listing._entries and listing._all is not None
        await trio.sleep(listing.idle_after + 2)
        assert listing._entries == {} and listing._all is None and not listing._replies
        assert given == [], "two children: nothing worth giving back"
        again = await ops.call("which_children")
        assert isinstance(again, Encoded) and again.json == first.json
        monkeypatch.setattr(listing_module, "BIG_LISTING", 2)  # two children is big now
        await trio.sleep(listing.idle_after + 2)
        assert listing._entries == {} and len(given) == 1
        nursery.cancel_scope.cancel()


# -- delete_child --------------------------------------------------------------------


async def test_delete_child(ops: Ops) -> None:
    error = await ops.fails("delete_child", id="ghost")
    assert isinstance(error, NotFound) and error.code == "not_found"
    await ops.call("start_child", spec=sleeper("x"))
    result = await ops.call("delete_child", id="x", wait=True, timeout=5)
    assert msgspec.structs.asdict(result) == {"id": "x", "deleted": True}
    assert ops.stored(KEYS.child("x")) is None


@pytest.mark.parametrize("timeout", [0, -1, 3601, math.nan])
async def test_a_bad_wait_timeout_deletes_and_drains_nothing(ops: Ops, timeout: float) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("kept"))
    for op, args, key in (
        ("delete_child", {"id": "kept"}, KEYS.child("kept")),
        ("drain", {"node": NODE, "force": True}, KEYS.drain(NODE)),
    ):
        before = ops.stored(key)
        error = await ops.fails(op, **args, wait=True, timeout=timeout)
        assert invalid(error) == "timeout: must be a number of seconds in (0, 3600]"
        assert ops.stored(key) == before
        # Without --wait the timeout is not used, so not checked (ringctl always sends one).
        await ops.call(op, **args, timeout=timeout)
        assert ops.stored(key) != before


async def test_deleting_a_child_waits_for_its_claim_to_go(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("x"))
    await ops.claim("x", NODE)
    with pytest.raises(TimedOut, match="child x stopped did not happen within 3 s"):
        await ops.call("delete_child", id="x", wait=True, timeout=3)
    await ops.call("start_child", spec=sleeper("x"))

    async def release() -> None:
        await trio.sleep(2)
        await ops.etcd.delete(KEYS.claim("x"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release)
        start = trio.current_time()
        await ops.call("delete_child", id="x", wait=True, timeout=30)
    assert trio.current_time() - start == pytest.approx(2, abs=0.1)


# -- children on this node -----------------------------------------------------------


async def test_local_ops_refuse_a_child_that_runs_elsewhere(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.call("start_child", spec=sleeper("away", replicas=2))
    await ops.claim("away", "n2")
    for op, args in (
        ("terminate_child", {}),
        ("restart_child", {}),
        ("signal_child", {"signal": "HUP"}),
        ("logs", {}),
    ):
        error = await ops.fails(op, id="away", **args)
        assert isinstance(error, Refused)
        assert str(error) == (
            "child away runs on node n2, not n1, and peer access is off "
            "(n2 has no peer_address): use that node's ringctl"
        )
        error = await ops.fails(op, id="away/1", **args)
        assert str(error) == "child away/1 is not running on any node"
        for missing in ("away/2", "ghost"):
            error = await ops.fails(op, id=missing, **args)
            assert isinstance(error, NotFound) and str(error) == f"no child named '{missing}'"
    assert ops.supervisor.calls == []


async def test_local_ops_act_on_a_child_here(ops: Ops) -> None:
    ops.supervisor.children["here"] = FakeChild("here")
    row = await ops.call("terminate_child", id="here")
    assert (row.id, row.state, row.node, row.last_exit) == ("here", "stopped", NODE, "exit 0")
    assert (row.revision, row.digest, row.ready, row.health) == (3, "d1", True, "healthy")
    wire = msgspec.json.decode(msgspec.json.encode(row))
    assert list(wire)[-2:] == ["halted", "node"] and "signal" not in wire
    await ops.call("restart_child", id="here")
    result = await ops.call("signal_child", id="here", signal="USR1")
    assert result.signal == 10
    await ops.call("signal_child", id="here", signal=15)
    error = await ops.fails("signal_child", id="here", signal="NOPE")
    assert invalid(error) == "signal: 'NOPE' is not a signal"
    assert ops.supervisor.calls == [
        ("terminate", "here"),
        ("restart", "here"),
        ("signal 10", "here"),
        ("signal 15", "here"),
    ]
    ops.supervisor.children["here"].pid = None
    error = await ops.fails("signal_child", id="here", signal="HUP")
    assert isinstance(error, Refused) and str(error) == "child here is not running"


@dataclass
class FakePeers:
    """Records what a daemon forwards to which node (``peers.PeerClient``)."""

    calls: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)

    async def call(self, node: str, address: str, op: str, args: dict[str, Any]) -> Any:
        self.calls.append((node, address, op, args))
        if op == "logs":
            return {"id": args["id"], "node": node, "lines": ["from " + node]}
        return {**FakeChild(args["id"]).info(), "node": node}


async def test_ops_on_a_child_elsewhere_are_forwarded_to_its_node(ops: Ops) -> None:
    """The forwarding decision: the claim's node, at its alive record's peer_address,
    with the claim's create revision as the fence; refused (naming the node) when
    that node has no peer address or this one no credentials."""
    await ops.node(NODE)
    await ops.put(KEYS.alive("n2"), Alive(node="n2", peer_address="127.0.0.1:7001"))
    await ops.put(KEYS.status("n2"), Status(node="n2", status="online"))
    await ops.call("start_child", spec=sleeper("away"))
    await ops.claim("away", "n2")
    error = await ops.fails("terminate_child", id="away")
    assert isinstance(error, Refused) and str(error) == (
        "child away runs on node n2, not n1, and peer access is off "
        "(no peer credentials here): use that node's ringctl"
    )
    peers = FakePeers()
    ops.ctx.peers = cast("PeerClient", peers)
    where = forward.locate(ops.ctx, "away")
    claim = ops.ctx.view.claim("away")
    assert claim is not None
    assert where == forward.There("n2", "127.0.0.1:7001", claim.kv.create_revision)
    row = await ops.call("terminate_child", id="away")
    assert (row.id, row.node, row.state) == ("away", "n2", "running")
    assert (await ops.call("logs", id="away", lines=3)).lines == ["from n2"]
    await ops.call("signal_child", id="away", signal="HUP")
    assert [(c[0], c[2], c[3]) for c in peers.calls] == [
        ("n2", "terminate_child", {"id": "away"}),
        ("n2", "logs", {"id": "away", "lines": 3}),
        ("n2", "signal_child", {"id": "away", "signal": "HUP"}),
    ]
    # Here: the local supervisor's, never forwarded.
    ops.supervisor.children["here"] = FakeChild("here")
    assert forward.locate(ops.ctx, "here") == forward.Here(7)
    await ops.call("restart_child", id="here")
    assert len(peers.calls) == 3 and ops.supervisor.calls == [("restart", "here")]
    # Its claim gone: running nowhere, refused; the spec gone: not found.
    await ops.etcd.delete(KEYS.claim("away"))
    await ops.settle()
    error = await ops.fails("restart_child", id="away")
    assert isinstance(error, Refused) and str(error) == "child away is not running on any node"
    assert isinstance(await ops.fails("logs", id="ghost"), NotFound)


async def test_the_peer_listener_serves_only_ops_on_a_child_here(ops: Ops) -> None:
    """Never forwarded again, and nothing that changes the cluster."""
    served = set(handlers(ops.ctx, peer=True)) | set(stream_handlers(ops.ctx, peer=True))
    assert served == {
        "ping", "terminate_child", "restart_child", "signal_child", "logs", "logs_follow", "exec",
    }  # fmt: skip
    await ops.node(NODE)
    await ops.put(KEYS.alive("n2"), Alive(node="n2", peer_address="127.0.0.1:7001"))
    await ops.call("start_child", spec=sleeper("away"))
    await ops.claim("away", "n2")
    ops.ctx.peers = cast("PeerClient", FakePeers())
    with pytest.raises(Refused, match="runs on node n2, not n1"):
        await handlers(ops.ctx, peer=True)["terminate_child"]({"id": "away"})


async def test_logs_of_a_child_here(ops: Ops) -> None:
    ops.supervisor.children["here"] = FakeChild("here")
    ops.supervisor.log_path("here").write_text("".join(f"line {i}\n" for i in range(20)))
    result = await ops.call("logs", id="here", lines=3)
    assert (result.id, result.node, result.lines) == (
        "here",
        NODE,
        ["line 17", "line 18", "line 19"],
    )
    assert (await ops.call("logs", id="here")).lines[0] == "line 10"  # 10 by default


# -- groups --------------------------------------------------------------------------


async def test_create_group_is_idempotent_and_refuses_another_spec(ops: Ops) -> None:
    row = await ops.call("create_group", spec={"name": "g", "max_restarts": 2})
    assert (row.name, row.max_restarts, row.state, row.children) == ("g", 2, "running", 0)
    await ops.call("create_group", spec={"name": "g", "max_restarts": 2})
    error = await ops.fails("create_group", spec={"name": "g"})
    assert isinstance(error, AlreadyExists) and str(error) == "group 'g' already exists"
    error = await ops.fails("create_group", spec={"name": "h", "strategy": "all_at_once"})
    assert invalid(error).startswith("strategy: ")
    assert ops.stored(KEYS.group("h")) is None


async def test_groups_lists_each_with_its_state_and_children(ops: Ops) -> None:
    await ops.call("create_group", spec={"name": "b"})
    await ops.call("create_group", spec={"name": "a", "strategy": "one_for_all"})
    await ops.call("start_child", spec=sleeper("c1", group="a"))
    await ops.call("start_child", spec=sleeper("c2", group="a"))
    await ops.settle()
    rows = await ops.call("groups")
    assert [(r.name, r.strategy, r.children) for r in rows] == [
        ("a", "one_for_all", 2),
        ("b", "one_for_one", 0),
    ]
    failed = GroupRecord(spec=parse_group({"name": "b"}), state="failed", reason="boom", node="n2")
    await ops.put(KEYS.group("b"), failed)
    row = (await ops.call("groups"))[1]
    assert (row.state, row.reason, row.failed_node) == ("failed", "boom", "n2")
    assert (await ops.call("status")).groups_failed == {"b": "n2: boom"}


async def test_delete_group_is_refused_while_children_use_it(ops: Ops) -> None:
    await ops.call("create_group", spec={"name": "g"})
    for i in range(7):
        await ops.call("start_child", spec=sleeper(f"c{i}", group="g"))
    await ops.settle()
    error = await ops.fails("delete_group", name="g")
    assert isinstance(error, Refused)
    assert str(error) == ("group g is used by 7 children (c0, c1, c2, c3, c4 ...); use --force")
    assert ops.stored(KEYS.group("g")) is not None
    result = await ops.call("delete_group", name="g", force=True)
    assert result.orphaned_children == [f"c{i}" for i in range(7)]
    assert ops.stored(KEYS.group("g")) is None
    error = await ops.fails("delete_group", name="g", force=True)
    assert isinstance(error, NotFound) and str(error) == "no group named 'g'"


async def test_reset_group(ops: Ops) -> None:
    error = await ops.fails("reset_group", name="ghost")
    assert isinstance(error, NotFound)
    failed = GroupRecord(spec=parse_group({"name": "g"}), state="failed", reason="boom", node="n2")
    await ops.put(KEYS.group("g"), failed)
    row = await ops.call("reset_group", name="g")
    assert (row.state, row.reason, row.failed_node) == ("running", "reset by operator", None)
    stored = records.decode("groups", "", "g", ops.stored(KEYS.group("g")) or b"")
    assert (stored.state, stored.spec) == ("running", failed.spec)


async def test_reset_group_refuses_when_the_group_changed_meanwhile(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ops.call("create_group", spec={"name": "g"})

    async def lost_race(key: str, value: bytes, **revisions: Any) -> bool:
        return False  # another node wrote the group between the read and the write

    monkeypatch.setattr(ops.etcd, "put_if", lost_race)
    error = await ops.fails("reset_group", name="g")
    assert isinstance(error, Refused) and "changed while resetting it" in str(error)


# -- nodes ---------------------------------------------------------------------------


async def test_drain_undrain_and_forget_an_unknown_node(ops: Ops) -> None:
    for op in ("drain", "undrain", "forget_node"):
        error = await ops.fails(op, node="ghost")
        assert isinstance(error, NotFound) and str(error) == "no node named 'ghost'"
    assert ops.etcd.calls.get("put", 0) == ops.etcd.calls.get("delete", 0) == 0


async def test_drain_writes_a_drain_record_and_undrain_removes_it(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    result = await ops.call("drain", node="n2")
    assert msgspec.structs.asdict(result) == {"node": "n2", "draining": True}
    drain = records.decode("nodes", "drain", "n2", ops.stored(KEYS.drain("n2")) or b"")
    assert isinstance(drain, records.Drain) and drain.by == NODE and drain.since
    await ops.settle()
    rows = {row.node: row for row in await ops.call("nodes")}
    assert (rows["n2"].draining, rows[NODE].draining) == (True, False)
    # --wait: until no claim is on the node any more.
    await ops.call("start_child", spec=sleeper("x"))
    await ops.claim("x", "n2")
    with pytest.raises(TimedOut, match="node n2 drained did not happen within 2 s"):
        await ops.call("drain", node="n2", wait=True, timeout=2)
    await ops.etcd.delete(KEYS.claim("x"))
    await ops.call("drain", node="n2", wait=True, timeout=2)
    result = await ops.call("undrain", node="n2")
    assert (result.node, result.draining) == ("n2", False)
    assert ops.stored(KEYS.drain("n2")) is None


async def test_forget_node_only_an_offline_one(ops: Ops) -> None:
    await ops.node("n2")
    error = await ops.fails("forget_node", node="n2")
    assert isinstance(error, Refused)
    assert str(error) == "node n2 is online: only an offline node can be forgotten"
    await ops.etcd.delete(KEYS.alive("n2"))
    await ops.put(KEYS.status("n2"), Status(node="n2", status="offline", reason="lease expired"))
    (row,) = await ops.call("nodes")
    assert (row.status, row.alive, row.reason, row.host) == (
        "offline",
        False,
        "lease expired",
        None,
    )
    assert (await ops.call("forget_node", node="n2")).forgotten
    assert ops.stored(KEYS.status("n2")) is None


async def test_nodes_and_status(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.call("start_child", spec=sleeper("a"))
    await ops.call("start_child", spec=sleeper("b"))
    await ops.claim("a", "n2")
    await ops.claim("b", "n2")
    rows = await ops.call("nodes")
    assert [(r.node, r.status, r.alive, r.host, r.pid, r.children) for r in rows] == [
        ("n1", "online", True, "n1.example", 100, 0),
        ("n2", "online", True, "n2.example", 100, 2),
    ]
    ops.supervisor.children["here"] = FakeChild("here")
    status = await ops.call("status")
    assert (status.node, status.cluster, status.lease, status.fenced) == (NODE, "t", "2a", False)
    assert (status.nodes_online, status.children_total) == (["n1", "n2"], 2)
    assert status.children_local == {"running": 1}
    assert status.etcd == "memory://"
    assert (await ops.call("ping")).node == NODE


# -- watch ---------------------------------------------------------------------------


async def test_watch_streams_node_and_child_events(ops: Ops) -> None:
    events: list[dict[str, Any]] = []

    async def collect(what: str) -> None:
        async for event in stream_handlers(ops.ctx)["watch"]({"what": what}):
            events.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, "nodes")
        await ops.settle()
        await ops.node("n2")
        await ops.call("start_child", spec=sleeper("x"))
        await ops.settle()
        nursery.cancel_scope.cancel()
    assert [(e["kind"], e["node"], e["status"]) for e in events] == [("node", "n2", "online")]
    assert events[0]["revision"] == ops.etcd.kvs[KEYS.status("n2")].mod_revision


async def test_draining_the_last_node_is_refused_unless_forced(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.call("drain", node="n2")
    error = await ops.fails("drain", node=NODE)
    assert isinstance(error, Refused)
    assert f"{NODE} is the last node in the ring that is not draining" in str(error)
    assert ops.stored(KEYS.drain(NODE)) is None, "nothing drained"
    await ops.call("drain", node=NODE, force=True)
    assert ops.stored(KEYS.drain(NODE)) is not None
    await ops.call("drain", node=NODE)  # already draining: nothing changes, no refusal
    await ops.call("start_child", spec=sleeper("w"))
    await ops.settle()
    (row,) = (await ops.call("find", id="w")).instances
    assert (row.state, row.reason) == ("pending", "every node in the ring is draining")


async def test_a_child_in_a_group_that_does_not_exist_is_stored_with_a_warning(ops: Ops) -> None:
    await ops.node(NODE)
    row = await ops.call("start_child", spec=sleeper("w", group="nosuch"))
    assert row.warnings == ["group nosuch does not exist: w waits until it is created"]
    assert ops.stored(KEYS.child("w")) is not None, "stored: groups may come later"
    await ops.call("create_group", spec={"name": "g"})
    assert (await ops.call("start_child", spec=sleeper("v", group="g"))).warnings == []
