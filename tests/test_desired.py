"""The deciding half of reconciling (``ringd/desired.py``), as pure functions: which
nodes are eligible, why a child runs nowhere, the incremental placement, the plan of
a pass, move pacing and group retries. No I/O, no processes: milliseconds."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ringd.desired import (
    DesiredState,
    Inputs,
    MovePacer,
    blocked,
    eligible_nodes,
    plan,
    retries_due,
    why_pending,
)
from ringd.placement import Instance, NodeInfo, Placer
from ringd.records import Alive
from ringd.ring import Ring
from ringd.spec import ChildSpec, GroupRecord, GroupSpec

if TYPE_CHECKING:
    import random


def child(child_id: str, **fields: object) -> ChildSpec:
    fields.setdefault("argv", ["sleep", "60"])
    return ChildSpec(id=child_id, **fields)  # type: ignore[arg-type]


def group(name: str, **fields: object) -> GroupRecord:
    spec_fields = {k: fields.pop(k) for k in ("retry_after", "restricted") if k in fields}
    return GroupRecord(spec=GroupSpec(name=name, **spec_fields), **fields)  # type: ignore[arg-type]


def nodes(*names: str, **labels: dict[str, str]) -> dict[str, NodeInfo]:
    return {n: NodeInfo(n, labels.get(n, {})) for n in names}


def inputs(*names: str, groups: dict[str, GroupRecord] | None = None) -> Inputs:
    return Inputs(nodes=nodes(*names), groups=groups or {})


def never_held(key: str) -> bool:
    return False


# -- eligible nodes, blocked, why pending --------------------------------------------


def test_eligible_nodes_exclude_draining_ones_and_keep_labels_and_groups() -> None:
    alive = {
        "n1": Alive(node="n1", labels={"zone": "a"}, groups=["g"]),
        "n2": Alive(node="n2"),
        "n3": Alive(node="n3"),
    }
    eligible = eligible_nodes(alive, {"n2", "gone"})
    assert list(eligible) == ["n1", "n3"]
    assert eligible["n1"] == NodeInfo("n1", {"zone": "a"}, frozenset({"g"}))
    assert eligible_nodes(alive, alive.keys()) == {}


def test_blocked_by_a_missing_or_failed_group_only() -> None:
    assert blocked(child("a"), {}) == ""
    assert blocked(child("a", group="g"), {}) == "group g does not exist"
    running = {"g": group("g")}
    assert blocked(child("a", group="g"), running) == ""
    failed = {"g": group("g", state="failed", reason="too many restarts")}
    assert blocked(child("a", group="g"), failed) == "group g failed: too many restarts"


def test_why_pending_names_the_reason() -> None:
    placer = Placer()
    spec = child("web")
    assert why_pending(spec, Inputs(nodes={}, groups={}), placer) == "no node is online"
    everyone_draining = Inputs(nodes={}, groups={}, draining=frozenset({"n1", "n2"}))
    assert why_pending(spec, everyone_draining, placer) == "every node in the ring is draining"
    zoned = Inputs(nodes=nodes("n1", n1={"zone": "b"}), groups={})
    assert why_pending(child("web", on={"zone": "a"}), zoned, placer) == (
        "no eligible node: needs zone=a"
    )
    restricted = {"g": group("g", restricted=True)}
    assert why_pending(child("web", group="g"), inputs("n1", groups=restricted), placer) == (
        "no eligible node: needs a node declaring group g"
    )
    declared = Inputs(nodes={"n1": NodeInfo("n1", {}, frozenset({"g"}))}, groups=restricted)
    assert why_pending(child("web", group="g"), declared, placer) == (
        "waiting for its node to claim it"
    )
    assert why_pending(spec, inputs("n1"), placer) == "waiting for its node to claim it"
    # A blocked child says so first, whatever the nodes.
    failed = {"g": group("g", state="failed", reason="boom")}
    assert why_pending(child("web", group="g"), Inputs(nodes={}, groups=failed), placer) == (
        "group g failed: boom"
    )
    assert why_pending(child("web", group="nope"), inputs("n1"), placer) == (
        "group nope does not exist"
    )


# -- the incremental placement --------------------------------------------------------


def test_update_places_only_the_changed_specs_again() -> None:
    state = DesiredState()
    specs = {i: child(i) for i in ("a", "b", "c")}
    first = dict(state.update(specs, None, inputs("n1", "n2")))
    assert list(first) == ["a", "b", "c"]
    token = state.token

    specs["b"] = child("b", argv=["sleep", "61"])
    second = state.update(specs, {"b"}, inputs("n1", "n2"))
    assert state.token is token, (
        "same nodes and groups: the same object (the listing compares by identity)"
    )
    assert second["a"] is first["a"] and second["c"] is first["c"], "not placed again"
    assert second["b"] is not first["b"]
    assert [i.spec for i in second["b"]] == [specs["b"]]

    unchanged = state.update(specs, set(), inputs("n1", "n2"))
    assert all(unchanged[i] is second[i] for i in specs)

    del specs["c"]
    specs["d"] = child("d")
    third = state.update(specs, ["c", "d"], inputs("n1", "n2"))
    assert list(third) == ["a", "b", "d"], "a deleted spec disappears; a new one goes last"
    assert third["a"] is first["a"]


def test_the_placer_keeps_only_the_current_ring_of_each_need() -> None:
    """A join or leave replaces a need's ring; the replaced one is dropped (at 300
    nodes the replaced rings were ~30 MiB of a daemon that saw the cluster grow). A
    need none of whose children moved keeps the ring it was last placed with."""
    state = DesiredState()
    specs = {"a": child("a"), "b": child("b", on={"disk": "ssd"})}
    ssd = {"disk": "ssd"}

    def place(*names: str) -> None:
        labelled = {n: NodeInfo(n, ssd if n in ("n1", "n3") else {}) for n in names}
        state.update(specs, (), Inputs(nodes=labelled, groups={}))

    state.update(specs, None, Inputs(nodes=nodes("n1", "n2"), groups={}))
    for members in (("n1", "n2"), ("n1", "n2", "n3"), ("n1", "n2", "n3", "n4"), ("n1", "n2")):
        place(*members)
        rings = state.placer._rings
        assert set(rings) == set(state._eligible.values()) and len(rings) <= 2, members
        assert frozenset(members) & {"n1", "n3"} in rings, "b (on ssd) is placed on every join"
        assert state.placer._points == sum(r.points for r in rings.values())
    assert frozenset(("n1", "n2", "n3", "n4")) not in state.placer._rings


def test_update_places_everything_again_when_the_nodes_or_groups_change() -> None:
    state = DesiredState()
    groups = {"g": group("g")}

    def specs_of(version: int) -> dict[str, ChildSpec]:
        # New spec objects each time, named as changed by nobody (``set()``): only
        # a pass over every spec places them.
        argv = ["sleep", str(version)]
        return {"a": child("a", argv=argv), "b": child("b", group="g", argv=argv)}

    specs = specs_of(1)
    state.update(specs, None, inputs("n1", groups=groups))
    token = state.token

    specs = specs_of(2)
    more_nodes = dict(state.update(specs, set(), inputs("n1", "n2", groups=groups)))
    assert state.token != token
    assert all(more_nodes[i][0].spec is specs[i] for i in specs), "nodes changed: all placed"

    failed = {"g": group("g", state="failed", reason="boom")}
    specs = specs_of(3)
    after = state.update(specs, set(), inputs("n1", "n2", groups=failed))
    assert list(after) == ["a"], "a blocked spec has no instances"
    assert after["a"][0].spec is specs["a"], "groups changed: all placed again"

    specs = specs_of(4)
    labels = Inputs(nodes=nodes("n1", "n2", n2={"zone": "a"}), groups=failed)
    assert state.update(specs, set(), labels)["a"][0].spec is specs["a"], "labels count too"


def test_update_keeps_a_specs_list_when_it_is_placed_again_on_the_same_nodes() -> None:
    placer = Placer()
    state = DesiredState(placer)
    names = [f"n{i}" for i in range(8)]
    specs = {f"c{i}": child(f"c{i}", replicas=1 + i % 3) for i in range(200)}
    before = dict(state.update(specs, None, inputs(*names)))
    joined = dict(state.update(specs, None, inputs(*names, "new")))
    ring = placer.ring(frozenset([*names, "new"]))
    moved = 0
    for child_id, spec in specs.items():
        owners = ring.owners(child_id, spec.replicas)
        assert [(i.spec, i.replica, i.node) for i in joined[child_id]] == [
            (spec, r, node) for r, node in enumerate(owners)
        ]
        if owners == [i.node for i in before[child_id]]:
            assert joined[child_id] is before[child_id], "same nodes: the same list"
        else:
            assert joined[child_id] is not before[child_id]
            moved += 1
    assert 0 < moved < len(specs)
    # A new spec object (its content changed) gets new instances, on the same nodes.
    specs["c0"] = child("c0", argv=["sleep", "61"])
    changed = state.update(specs, {"c0"}, inputs(*names, "new"))
    assert changed["c0"] is not joined["c0"] and changed["c0"][0].spec is specs["c0"]
    assert [i.node for i in changed["c0"]] == [i.node for i in joined["c0"]]


def test_replicas_go_on_distinct_nodes_master_first() -> None:
    placer = Placer()
    state = DesiredState(placer)
    spec = child("db", replicas=3)
    four = inputs("n1", "n2", "n3", "n4")
    placed = state.update({"db": spec}, None, four)["db"]
    assert [(i.key, i.role, i.replica) for i in placed] == [
        ("db", "master", 0),
        ("db/1", "replica", 1),
        ("db/2", "replica", 2),
    ]
    assert [i.node for i in placed] == placer.owners(spec, four.nodes, None)
    assert len({i.node for i in placed}) == 3
    degraded = state.update({"db": spec}, None, inputs("n1", "n2"))["db"]
    assert sorted(i.node for i in degraded) == ["n1", "n2"], "fewer nodes than replicas"

    by_node = {n: state.on_node(n) for n in ("n1", "n2", "n3")}
    assert by_node["n3"] == {}
    assert sorted(k for on in by_node.values() for k in on) == ["db", "db/1"]
    for node, on in by_node.items():
        assert all(i.node == node and key == i.key for key, i in on.items())


def test_new_specs_are_placed_in_the_order_of_specs_whatever_the_order_of_changed() -> None:
    state = DesiredState()
    state.update({}, None, inputs("n1"))
    specs = {i: child(i) for i in ("a", "b", "c")}
    placed = state.update(specs, ["c", "b", "a"], inputs("n1"))
    assert list(placed) == ["a", "b", "c"]


def test_on_node_keeps_the_start_order() -> None:
    state = DesiredState()
    specs = {i: child(i) for i in ("z", "y", "x", "w")}
    state.update(specs, None, inputs("n1"))
    assert list(state.on_node("n1")) == ["z", "y", "x", "w"]
    assert state.on_node("n2") == {}


# -- the plan of a pass --------------------------------------------------------------


def test_plan_updates_a_child_whose_spec_changed_and_restarts_one_that_is_gone() -> None:
    old, new = child("a"), child("a", argv=["sleep", "99"])
    changed = plan({"a": Instance(new, 0, "n1")}, {"a": old}, {"a": new}, {}, never_held)
    assert (changed.updates, changed.restarts, changed.moves, changed.starts) == (
        ["a"],
        [],
        [],
        [],
    )

    gone = plan({}, {"a": old}, {}, {}, never_held)
    assert (gone.restarts, gone.moves, gone.starts) == (["a"], [], [])


def test_plan_moves_a_child_owned_elsewhere_now() -> None:
    spec = child("a")
    moved = plan({}, {"a": spec}, {"a": spec}, {}, never_held)
    assert (moved.restarts, moved.moves) == ([], ["a"])
    # An unchanged child that stays is left alone.
    kept = plan({"a": Instance(spec, 0, "n1")}, {"a": spec}, {"a": spec}, {}, never_held)
    assert (kept.restarts, kept.moves, kept.starts) == ([], [], [])


def test_plan_restarts_rather_than_moves_a_member_of_a_failed_group() -> None:
    spec = child("a", group="g")
    failed = {"g": group("g", state="failed", reason="boom")}
    out = plan({}, {"a": spec}, {"a": spec}, failed, never_held)
    assert (out.restarts, out.moves) == (["a"], [])
    missing = plan({}, {"a": spec}, {"a": spec}, {}, never_held)
    assert (missing.restarts, missing.moves) == (["a"], [])


def test_plan_starts_in_order_but_waits_for_a_claim_held_elsewhere() -> None:
    a, b, c = child("a"), child("b"), child("c")
    desired = {s.id: Instance(s, 0, "n1") for s in (a, b, c)}
    specs = {s.id: s for s in (a, b, c)}
    out = plan(desired, {"b": b}, specs, {}, lambda key: key == "c")
    assert out.starts == [desired["a"]], "b runs already; c's claim is another lease's"
    free = plan(desired, {}, specs, {}, never_held)
    assert [i.key for i in free.starts] == ["a", "b", "c"]


# -- move pacing and group retries ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pacer_of_rate_zero_lets_every_move_go() -> None:
    pacer = MovePacer(0, FakeClock())
    assert pacer.take(500) == (500, math.inf)
    assert pacer.take(500) == (500, math.inf)


def test_a_pacer_grants_a_burst_then_one_move_per_period() -> None:
    clock = FakeClock()
    pacer = MovePacer(2, clock)
    assert pacer.take(5) == (2, 0.5), "a burst of 2, ask again in 1/rate"
    assert pacer.take(3) == (0, 0.5)
    clock.now += 0.5
    assert pacer.take(3) == (1, 0.5)
    clock.now += 0.25
    assert pacer.take(2) == (0, 0.5), "half a token is none"
    clock.now += 0.25
    assert pacer.take(2) == (1, 0.5)
    clock.now += 0.5
    assert pacer.take(1) == (1, math.inf), "all granted: nothing to ask again for"
    clock.now += 60
    assert pacer.take(10) == (2, 0.5), "the burst stays capped after idling"
    assert pacer.take(0) == (0, math.inf)


def test_a_full_period_always_grants_a_move() -> None:
    clock = FakeClock()
    clock.now = 1.51
    pacer = MovePacer(2, clock)
    assert pacer.take(3) == (2, 0.5)
    clock.now = 2.01  # 0.5 s later, as floats go
    assert pacer.take(1) == (1, math.inf)


def test_a_slow_pacer_still_lets_one_move_go_first() -> None:
    clock = FakeClock()
    pacer = MovePacer(0.5, clock)
    assert pacer.take(3) == (1, 2.0)
    clock.now += 1.9
    assert pacer.take(2) == (0, 2.0)
    clock.now += 0.1
    assert pacer.take(2) == (1, 2.0)


def test_retries_due() -> None:
    groups = {
        "due": group("due", state="failed", since=100.0, retry_after=5.0),
        "later": group("later", state="failed", since=100.0, retry_after=10.0),
        "manual": group("manual", state="failed", since=100.0),  # no retry_after
        "fine": group("fine", since=100.0, retry_after=1.0),  # running
    }
    assert retries_due(groups, 104.9) == ([], 105.0)
    assert retries_due(groups, 105.0) == (["due"], 110.0)
    assert retries_due(groups, 200.0) == (["due", "later"], math.inf)
    assert retries_due({"manual": groups["manual"]}, 1e12) == ([], math.inf)


# -- a property of placement ---------------------------------------------------------

NODE_NAMES = [f"n{i}" for i in range(6)]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[dict[str, Alive], set[str], dict[str, ChildSpec]]:
    names = draw(st.lists(st.sampled_from(NODE_NAMES), unique=True, max_size=6))
    alive = {
        n: Alive(node=n, labels=draw(st.sampled_from([{}, {"zone": "a"}, {"zone": "b"}])))
        for n in names
    }
    draining = set(draw(st.lists(st.sampled_from(names), unique=True))) if names else set()
    specs = {}
    for i in range(draw(st.integers(0, 8))):
        on = draw(st.sampled_from([{}, {"zone": "a"}]))
        specs[f"c{i}"] = child(f"c{i}", replicas=draw(st.integers(1, 4)), on=on)
    return alive, draining, specs


@settings(max_examples=60, deadline=None)
@given(clusters(), st.randoms(use_true_random=False))
def test_placement_is_on_eligible_distinct_nodes_whatever_the_node_order(
    cluster: tuple[dict[str, Alive], set[str], dict[str, ChildSpec]], rnd: random.Random
) -> None:
    alive, draining, specs = cluster
    eligible = eligible_nodes(alive, draining)
    placed = dict(DesiredState().update(specs, None, Inputs(nodes=eligible, groups={})))
    assert list(placed) == list(specs)
    for child_id, instances in placed.items():
        spec = specs[child_id]
        fits = {
            n for n, i in eligible.items() if all(i.labels.get(k) == v for k, v in spec.on.items())
        }
        assert {i.node for i in instances} <= fits
        assert len({i.node for i in instances}) == len(instances) == min(spec.replicas, len(fits))
        assert [i.replica for i in instances] == list(range(len(instances)))

    shuffled = list(alive.items())
    rnd.shuffle(shuffled)
    again = eligible_nodes(dict(shuffled), set(draining))
    assert DesiredState().update(specs, None, Inputs(nodes=again, groups={})) == placed


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(["delete", "edit", "group", "missing-group"]),
            st.sampled_from(["", "n1", "n2", "n3"]),  # a node joining too ("": none)
        ),
        max_size=12,
    )
)
def test_incremental_placement_equals_placing_from_scratch(
    steps: list[tuple[str, str, str]],
) -> None:
    specs = {i: child(i) for i in ("a", "b", "c")}
    groups = {"g": group("g")}
    state = DesiredState()
    names = {"n0"}
    state.update(specs, None, inputs(*names, groups=groups))
    for step, (child_id, edit, joining) in enumerate(steps):
        if edit == "delete":
            specs.pop(child_id, None)
        elif edit == "edit":
            specs[child_id] = child(child_id, argv=["sleep", str(step)], replicas=1 + step % 3)
        else:
            specs[child_id] = child(child_id, group="g" if edit == "group" else "h")
        names |= {joining} - {""}
        now = inputs(*sorted(names), groups=groups)
        incremental = dict(state.update(specs, {child_id}, now))
        fresh = DesiredState()
        assert incremental == fresh.update(specs, None, now)
        for node in names:  # its index too: what each node runs
            assert state.on_node(node) == fresh.on_node(node)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "leave", "relabel", "spec"]),
            st.sampled_from([f"n{i}" for i in range(8)]),
            st.integers(min_value=0, max_value=59),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_a_join_or_leave_places_again_only_what_moves_and_equals_placing_from_scratch(
    steps: list[tuple[str, str, int]],
) -> None:
    """One node joining or leaving (or draining) re-places only the children it
    gains or loses (found from the ring's arcs, or the node's own list), children
    with replicas, labels or a restricted group included; every step's placement
    and every node's list equal those computed from scratch."""
    groups = {"r": group("r", restricted=True)}
    specs = {f"c{i}": child(f"c{i}") for i in range(60)}
    specs["c1"] = child("c1", replicas=3)
    specs["c2"] = child("c2", on={"zone": "a"})
    specs["c3"] = child("c3", group="r")
    labels = {f"n{i}": {"zone": "a" if i % 2 else "b"} for i in range(8)}
    members = {"n0", "n1", "n2"}

    def now() -> Inputs:
        return Inputs(
            nodes={
                n: NodeInfo(n, labels[n], frozenset({"r"}) if n in ("n1", "n4") else frozenset())
                for n in members
            },
            groups=groups,
        )

    state = DesiredState()
    state.update(specs, None, now())
    edits = 0
    for op, node, number in steps:
        changed: list[str] = []
        was_member = node in members
        if op == "join":
            members.add(node)
        elif op == "leave":
            members.discard(node)
        elif op == "relabel":  # a node's labels change: every child may move
            labels[node] = {"zone": "c"}
        else:  # a new spec, or one edited, with the membership unchanged
            specs[f"c{number}"] = child(f"c{number}", argv=["sleep", str(len(steps))])
            changed = [f"c{number}"]
            edits += 1
        had = {i.spec.id for i in state.on_node(node).values()}
        with mock.patch.object(Ring, "owners", autospec=True, side_effect=Ring.owners) as owners:
            placed = dict(state.update(specs, changed, now()))
        fresh = DesiredState()
        assert placed == fresh.update(specs, None, now())
        for name in labels:
            assert state.on_node(name) == fresh.on_node(name)
        if op == "leave":  # exactly the children it ran are placed again
            assert owners.call_count == (len(had) if was_member else 0)
        elif op == "join" and not was_member:
            # Its plain children, the 3 with replicas or needs, and at most the
            # specs created since the arcs' index was made: not all 60.
            taken = {i.spec.id for i in state.on_node(node).values()} - {"c1", "c2", "c3"}
            assert owners.call_count <= len(taken) + 3 + edits


# -- rolling updates ----------------------------------------------------------------------


def test_rollout_restarts_the_lowest_outdated_replica_only_while_the_others_are_ready() -> None:
    from ringd.desired import Running, rollout

    old, new = Running("v1", True, True), Running("v2", True, True)
    assert rollout("v2", {0: old, 1: old, 2: old}).next == 0
    assert rollout("v2", {0: new, 1: old, 2: old}).next == 1
    # The replica just restarted is not ready yet: nobody else goes.
    assert rollout("v2", {0: Running("v2", True, False), 1: old, 2: old}).next is None
    # ... nor while it is down.
    assert rollout("v2", {0: None, 1: old, 2: old}).next is None
    assert rollout("v2", {0: new, 1: new, 2: new}) == rollout("v2", {0: new})
    assert rollout("v2", {0: new, 1: new, 2: new}).state == "done"
    # One instance: simply restarted (stopped, then started).
    assert rollout("v2", {0: old}).next == 0
    assert rollout("v2", {0: Running("v1", False, False)}).next == 0


def test_a_rollout_halts_when_a_new_instance_fails_before_it_is_ready() -> None:
    from ringd.desired import Running, rollout

    old = Running("v2", True, True)
    broken = Running("v3", False, False, halted="exit status 1 before it was ready")
    halted = rollout("v3", {0: broken, 1: old, 2: old})
    assert (halted.state, halted.next, halted.outdated) == ("halted", None, (1, 2))
    assert halted.reason == "exit status 1 before it was ready"
    # Back to v2: the broken instance is the outdated one, the others are ready.
    resumed = rollout("v2", {0: broken, 1: old, 2: old})
    assert (resumed.state, resumed.next) == ("in progress", 0)


def test_a_rollout_restarts_a_down_outdated_instance_first_and_skips_settled_ones() -> None:
    from ringd.desired import Running, rollout

    old, new = Running("v1", True, True), Running("v2", True, True)
    crashed = Running("v1", False, False, settled=True)
    # Replica 2 is down on the old spec: restarting it costs nothing, it goes first.
    assert rollout("v2", {0: old, 1: old, 2: crashed}).next == 2
    # A replica stopped for good (a temporary one that ended) does not hold it up.
    stopped_new = Running("v2", False, False, settled=True)
    assert rollout("v2", {0: old, 1: stopped_new, 2: new}).next == 0
    # One still coming up does.
    starting = Running("v2", False, False)
    assert rollout("v2", {0: old, 1: starting, 2: new}).next is None
