"""Ownership against real daemons: replicas with a master, node affinity, handoff
across moves, and a join that moves about 1/N of the children, never running one
twice."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ringd.protocol import RemoteError
from ringd.ring import Ring

from .helpers import wait_until
from .test_cluster import spec
from .timeline import Timeline, check_at_most_once, journaled

if TYPE_CHECKING:
    from .conftest import Cluster

COUNTER = str(Path(__file__).with_name("counter.py"))


def labelled(cluster: Cluster, name: str, **labels: str):
    config = cluster.base / f"{name}.toml"
    config.write_text("labels = { " + ", ".join(f'{k} = "{v}"' for k, v in labels.items()) + " }\n")
    daemon = cluster.daemon(name, start=False)
    daemon.extra_args = ["--config", str(config)]
    return daemon.start()


def env(cluster: Cluster) -> dict[str, str]:
    return {"TEST_CLUSTER": cluster.name}


def test_replicas_on_distinct_nodes_with_a_master(cluster: Cluster) -> None:
    a, b, c = (cluster.daemon(n) for n in "abc")
    a.call(
        "start_child",
        spec={"id": "db", "argv": ["sleep", "600"], "replicas": 2, "env": env(cluster)},
    )
    found = wait_until(
        lambda: (f := a.call("find", id="db")) and all(i["state"] == "running" for i in f["instances"]) and f,
        10, "2 replicas running",
    )  # fmt: skip
    instances = found["instances"]
    assert [i["role"] for i in instances] == ["master", "replica"]
    assert len({i["node"] for i in instances}) == 2, "distinct nodes"
    assert [i["node"] for i in instances] == [i["owner"] for i in instances]
    assert found["node"] == instances[0]["node"] and not found["degraded"]
    # Each process knows its role.
    roles = {
        e["RINGD_NODE"]: (e["RINGD_ROLE"], e["RINGD_REPLICA"]) for e in cluster.children().values()
    }
    assert roles == {instances[0]["node"]: ("master", "0"), instances[1]["node"]: ("replica", "1")}

    # More replicas than nodes: what fits runs, the child is degraded.
    a.call(
        "start_child",
        spec={"id": "wide", "argv": ["sleep", "600"], "replicas": 4, "env": env(cluster)},
    )
    wide = wait_until(
        lambda: (f := a.call("find", id="wide")) and sum(i["state"] == "running" for i in f["instances"]) == 3 and f,
        10, "3 of 4 running",
    )  # fmt: skip
    assert wide["degraded"]
    assert wide["instances"][3]["state"] == "degraded"
    assert "only 3 eligible node(s) for 4 replicas" in wide["instances"][3]["reason"]
    assert {i["node"] for i in wide["instances"][:3]} == {"a", "b", "c"}


def test_affinity_runs_only_on_matching_nodes(cluster: Cluster) -> None:
    a = labelled(cluster, "a", zone="east")
    labelled(cluster, "b", zone="west")
    labelled(cluster, "c", zone="east", disk="ssd")
    for i in range(6):
        a.call(
            "start_child",
            spec={
                "id": f"e{i}",
                "argv": ["sleep", "600"],
                "on": {"zone": "east"},
                "env": env(cluster),
            },
        )
    a.call(
        "start_child",
        spec={
            "id": "fast",
            "argv": ["sleep", "600"],
            "on": {"zone": "east", "disk": "ssd"},
            "env": env(cluster),
        },
    )
    a.call(
        "start_child",
        spec={
            "id": "nowhere",
            "argv": ["sleep", "600"],
            "on": {"zone": "mars"},
            "env": env(cluster),
        },
    )
    rows = wait_until(
        lambda: (r := {x["id"]: x for x in a.call("which_children")})
        and sum(x["state"] == "running" for x in r.values()) == 7 and r,
        10, "7 running",
    )  # fmt: skip
    assert {rows[f"e{i}"]["node"] for i in range(6)} <= {"a", "c"}
    assert rows["fast"]["node"] == "c"
    assert rows["nowhere"]["state"] == "pending"
    assert rows["nowhere"]["reason"] == "no eligible node: needs zone=mars"
    assert a.call("status")["labels"] == {"zone": "east"}


def read_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:  # no state yet: the first instance has not saved
        return 0


def test_handoff_state_survives_three_moves(cluster: Cluster) -> None:
    """A counter (+1 every 20 ms, saved every 0.2 s and on SIGTERM) moved three times
    goes on counting from where it was: each instance starts from at least the last
    count read on the node before, and at each reading the count is what the time
    it has run in all, on every node, implies (the sampler says when each instance
    lived): an instance that began again at 0 would be a whole node's time short."""
    nodes = {n: cluster.daemon(n) for n in "abc"}
    a = nodes["a"]
    readings: list[tuple[float, int, int, str]] = []  # (monotonic, found, count, node)
    with Timeline(cluster.name) as timeline:
        a.call(
            "start_child",
            spec={"id": "ctr", "argv": [sys.executable, COUNTER], "handoff": True,
                  "env": env(cluster)},
        )  # fmt: skip
        for move in range(4):
            row = wait_until(
                lambda: (r := a.call("find", id="ctr"))["state"] == "running" and r,
                15,
                f"running after move {move}",
            )
            here = row["node"]
            handoff_file = Path(
                next(e for e in cluster.children().values() if e["RINGD_CHILD_ID"] == "ctr")[
                    "RINGD_HANDOFF_FILE"
                ]
            )
            # Let it count (and save) a while on this node.
            found = read_count(handoff_file)
            count = wait_until(
                lambda f=handoff_file, c0=found: (c := read_count(f)) >= c0 + 25 and c,
                10,
                f"counting on {here}",
            )
            readings.append((time.monotonic(), found, count, here))
            if move == 3:
                break
            # Drain the node it runs on (undraining the previous one): it must move.
            for other in nodes:
                if other != here:
                    a.call("undrain", node=other)
            a.call("drain", node=here, wait=True, timeout=15)
            wait_until(
                lambda h=here: (
                    (r := a.call("find", id="ctr"))["node"] not in (None, h)
                    and r["state"] == "running"
                ),
                15,
                "moved",
            )
    instances = sorted(timeline.seen.values(), key=lambda s: s.first)
    assert [s.node for s in instances] == [node for *_, node in readings], "one per node"
    report = []
    for (_, _, before, _), (_, found, _, node) in itertools.pairwise(readings):
        assert found >= before, f"{node} started from {found}, after {before} on the node before"
    for at, _, count, node in readings:
        ran = sum(min(s.last, at) - s.first for s in instances if s.first < at)
        started = sum(s.first < at for s in instances)
        # At most one count per 20 ms of life; at least half that, less each instance's
        # start-up (0.15 s) and the save interval (0.2 s) the file may lag by.
        most = 50 * ran + 2 * started
        least = 25 * (ran - 0.15 * started - 0.2)
        report.append(f"{node}: {count} after {ran:.2f} s of life ({least:.0f}..{most:.0f})")
        assert least <= count <= most, report
    starts = [found for _, found, _, _ in readings]
    print(f"\nhandoff counter, 3 moves: {', '.join(report)}; instances started from {starts}")


def test_join_moves_about_a_quarter_and_never_runs_a_child_twice(
    cluster: Cluster, journal: Path, etcd_url: str
) -> None:
    """A fourth node joins 3 nodes running 300 children: exactly the children the
    ring gives the new node move (about a quarter, no more and no fewer), each
    stopped on its old node before it starts on the new one, and no child runs
    twice at any instant (journals and a sampler that also reads the claims)."""
    # A 5 s lease: on 2 busy CPUs, a fence (keepalives starved) with a 2 s lease
    # could turn into a fence storm (every node restarting its 75 Python children
    # at once starves the next keepalives), which is not what this test is about.
    nodes = [cluster.daemon(n, ttl=5) for n in ("n1", "n2", "n3")]
    ids = [f"j{i:03d}" for i in range(300)]
    for child_id in ids:
        # Journaling children, without site (-S: 7 ms of CPU to start instead of 19).
        child = spec(cluster, child_id, journal)
        child["argv"][1:1] = ["-S"]
        nodes[0].call("start_child", spec=child)

    def placement():
        rows = nodes[0].call("which_children")
        if len(rows) == 300 and all(r["state"] == "running" for r in rows):
            return {r["id"]: r["node"] for r in rows}
        return None

    def ring(names: list[str]) -> dict[str, str]:
        """Where the ring over these nodes puts each child."""
        ring = Ring(names)
        return {i: ring.owners(i)[0] for i in ids}

    before = wait_until(placement, 120, "300 running")
    assert before == ring(["n1", "n2", "n3"])
    with Timeline(cluster.name, interval=0.02, etcd_url=etcd_url) as timeline:
        wait_until(lambda: journaled(journal, timeline), 30, "start records", 0.2)
        joined = time.monotonic()
        cluster.daemon("n4", ttl=5)
        # Generous: the moves are paced (rebalance_rate), ~75 of them; it takes ~1 s.
        expected = ring(["n1", "n2", "n3", "n4"])
        after = wait_until(lambda: placement() == expected and expected, 60, "the join's moves")
        settled = time.monotonic() - joined
        wait_until(lambda: journaled(journal, timeline), 30, "start records", 0.2)
    all_lives = check_at_most_once(journal, timeline, ids)
    moved = sorted(i for i in ids if before[i] != after[i])
    assert all(after[i] == "n4" for i in moved), "only moves to the new node"
    fraction = len(moved) / 300
    print(
        f"\njoin 3->4: moved {len(moved)}/300 = {fraction:.3f} (ideal 0.25), settled in "
        f"{settled:.1f} s; {timeline.samples} scans in {timeline.duration:.1f} s"
    )
    assert 0.85 * 0.25 <= fraction <= 1.15 * 0.25, "about a quarter"
    for child_id, instances in all_lives.items():
        if child_id in moved:
            old, new = instances
            assert (old.node, old.killed, new.node) == (before[child_id], False, "n4"), instances
        else:
            assert [life.node for life in instances] == [before[child_id]], instances


def test_a_replica_is_operated_on_by_its_instance_name(cluster: Cluster) -> None:
    """restart-child, terminate-child, logs and signal-child take ``id/<n>`` for the
    n-th replica (they refused the "/" and could reach only the master)."""
    nodes = {n: cluster.daemon(n) for n in "ab"}
    nodes["a"].call(
        "start_child",
        spec={"id": "db", "argv": ["sh", "-c", "echo up; exec sleep 600"], "replicas": 2,
              "env": env(cluster)},
    )  # fmt: skip
    found = wait_until(
        lambda: (f := nodes["a"].call("find", id="db")) and all(i["state"] == "running" for i in f["instances"]) and f,
        10, "2 replicas running",
    )  # fmt: skip
    replica = found["instances"][1]
    there = nodes[replica["node"]]
    before = replica["pid"]
    assert there.call("restart_child", id="db/1")["instance"] == "db/1"
    wait_until(
        lambda: (p := there.call("find", id="db")["instances"][1]["pid"]) and p != before,
        10, "the replica restarted",
    )  # fmt: skip
    assert "up" in there.call("logs", id="db/1")["lines"]
    assert there.call("terminate_child", id="db/1")["state"] == "stopped"
    for bad, code in (("db/2", "not_found"), ("db/0", "invalid"), ("db/x", "invalid")):
        with pytest.raises(RemoteError) as info:
            there.call("restart_child", id=bad)
        assert info.value.code == code, bad
