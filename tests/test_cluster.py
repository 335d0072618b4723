"""End to end: real etcd, real ringd daemons, real children (DESIGN invariants 1-4)."""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from ringd.testing import etcd3_client

from .helpers import child_argv, wait_until
from .timeline import Timeline, check_at_most_once, handovers, journaled, scan

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from .conftest import Cluster
    from .helpers import Daemon


def spec(cluster: Cluster, child_id: str, journal: Path, *extra: str, **fields: object) -> dict:
    return {
        "id": child_id,
        "argv": child_argv(journal, *extra),
        "env": {"TEST_CLUSTER": cluster.name},
        **fields,
    }


def running_rows(daemon, expected: int):
    rows = daemon.call("which_children")
    live = [r for r in rows if r["state"] == "running" and r["pid"]]
    return rows if len(rows) == expected and len(live) == expected else None


def placement(cluster: Cluster, also: Iterable[int] = ()) -> dict[str, list[tuple[int, str]]]:
    """child id -> [(pid, node)] of the live child processes (not grandchildren).

    Looks below the test process, where the daemons and their children are, plus
    ``also`` (pids seen before, in case their daemon died): not all of /proc, which
    takes 100 ms or more on a machine with a few thousand processes.
    """
    where: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for pid, (child_id, node) in scan(cluster.name, os.getpid(), also).items():
        where[child_id].append((pid, node))
    return where


def all_online(daemons: Iterable[Daemon], names: set[str]) -> bool:
    """Every daemon's view has exactly ``names`` online."""
    return all(
        {r["node"] for r in d.call("nodes") if r["status"] == "online"} == names for d in daemons
    )


def test_three_daemons_run_each_child_exactly_once(
    cluster: Cluster, journal: Path, etcd_url: str
) -> None:
    """Watched from the first spec to the last check (journals and a sampler that
    also reads the claims): no child ever runs twice, each starts exactly once (the
    membership is stable, so nothing moves), and in the end each runs once, where
    its claim and the ring say."""
    nodes = [cluster.daemon(n) for n in ("n1", "n2", "n3")]
    wait_until(lambda: all_online(nodes, {"n1", "n2", "n3"}), 10, "every daemon sees all three")
    ids = [f"c{i:02d}" for i in range(30)]
    with Timeline(cluster.name, etcd_url=etcd_url) as timeline:
        for i, child_id in enumerate(ids):
            nodes[i % 3].call("start_child", spec=spec(cluster, child_id, journal))
        rows = wait_until(lambda: running_rows(nodes[0], 30), 20, "30 children running")
        # which-children lists all 30 with node and pid, the same from every daemon.
        assert sorted(r["id"] for r in rows) == ids
        assert all(r["node"] in ("n1", "n2", "n3") and r["pid"] > 0 for r in rows)
        assert {r["node"] for r in rows} == {"n1", "n2", "n3"}, "every node runs some"

        def placed(rows):
            return [(r["id"], r["node"], r["pid"], r["state"]) for r in rows]

        for other in nodes[1:]:
            same = wait_until(lambda o=other: running_rows(o, 30), 5, "same view")
            assert placed(same) == placed(rows)
        # RSS and CPU figures for the children each node runs itself.
        assert all(r["rss"] > 0 for r in rows if r["node"] == "n1")
        # The processes agree with the claims: each child once, where its claim says.
        where = placement(cluster)
        assert {i: len(p) for i, p in where.items()} == {r["id"]: 1 for r in rows}
        assert {i: p[0] for i, p in where.items()} == {r["id"]: (r["pid"], r["node"]) for r in rows}
        # and where the ring says.
        for r in rows[:5]:
            assert nodes[1].call("find", id=r["id"])["owner"] == r["node"]
        wait_until(lambda: journaled(journal, timeline), 5, "start records")
    all_lives = check_at_most_once(journal, timeline, ids)
    started = {i: [(life.node, life.pid) for life in lives] for i, lives in all_lives.items()}
    assert started == {r["id"]: [(r["node"], r["pid"])] for r in rows}, "each started once"
    print(f"\n30 children on 3 nodes: {timeline.samples} scans in {timeline.duration:.1f} s")


def test_sigkilled_node_fails_over_and_takes_children_back(
    cluster: Cluster, journal: Path, etcd_url: str
) -> None:
    """Watched from the first spec to the end of the take-back (journals and a
    sampler that also reads the claims): no child runs twice at any instant, in
    the failover as in the take-back. n3's children die with it, survivors run
    them, and n3 takes back exactly its own: each of them lived three times (on
    n3, killed; on a survivor, stopped; on n3 again), every other child once."""
    nodes = {n: cluster.daemon(n) for n in ("n1", "n2", "n3")}
    ttl = nodes["n3"].ttl
    ids = [f"c{i:02d}" for i in range(30)]
    with Timeline(cluster.name, etcd_url=etcd_url) as timeline:
        for child_id in ids:
            nodes["n1"].call("start_child", spec=spec(cluster, child_id, journal))
        rows = wait_until(lambda: running_rows(nodes["n1"], 30), 20, "30 children running")
        victim_children = {r["id"] for r in rows if r["node"] == "n3"}
        assert victim_children
        wait_until(lambda: journaled(journal, timeline), 5, "start records")

        killed_at = time.monotonic()
        nodes["n3"].kill()
        # Its children die with it (the guard sees the daemon's pipe close).
        wait_until(
            lambda: not any(env["RINGD_NODE"] == "n3" for env in cluster.children().values()),
            ttl + 5, "n3's children dead",
        )  # fmt: skip
        orphans_dead = time.monotonic() - killed_at

        def all_on_survivors():
            rows = running_rows(nodes["n1"], 30)
            return rows if rows and all(r["node"] in ("n1", "n2") for r in rows) else None

        rows = wait_until(all_on_survivors, ttl + 10, "failover to n1, n2")
        failover = time.monotonic() - killed_at
        where = placement(cluster)
        assert sorted(where) == sorted(r["id"] for r in rows)
        assert all(len(p) == 1 and p[0][1] in ("n1", "n2") for p in where.values())

        def n3_offline():
            row = next((n for n in nodes["n1"].call("nodes") if n["node"] == "n3"), None)
            return row if row and row["status"] == "offline" else None

        row = wait_until(n3_offline, 5, "n3 offline")
        assert row["last_change"]
        assert row["reason"] == "lease expired"
        assert not row["alive"]

        # Restart n3: it takes its children back.
        nodes["n3"].start()

        def n3_has_its_children_back():
            rows = running_rows(nodes["n1"], 30)
            return (
                rows
                if rows and {r["id"] for r in rows if r["node"] == "n3"} == victim_children
                else None
            )

        rows = wait_until(n3_has_its_children_back, 20, "n3 takes its children back")
        wait_until(lambda: journaled(journal, timeline), 5, "start records")
    all_lives = check_at_most_once(journal, timeline, ids)
    back = {r["id"] for r in rows if r["node"] == "n3"}
    assert back == victim_children, "the ring gives n3 the same children as before"
    for child_id, instances in all_lives.items():
        if child_id in victim_children:
            # Killed with n3 (no stop record), stopped on a survivor to hand it back.
            first, interim, last = instances
            assert (first.node, first.killed) == ("n3", True), instances
            assert (interim.node != "n3", interim.killed) == (True, False), instances
            assert last.node == "n3", instances
            assert first.end < interim.start < interim.end < last.start
        else:
            assert len(instances) == 1 and instances[0].node != "n3", (child_id, instances)
    n3_row = next(n for n in nodes["n2"].call("nodes") if n["node"] == "n3")
    assert n3_row["status"] == "online"
    gaps = handovers({i: all_lives[i] for i in victim_children}, killed_only=True)
    print(
        f"\nSIGKILL of n3 (TTL {ttl:g} s, {len(victim_children)} of its children): dead "
        f"{orphans_dead:.2f} s after, all on survivors {failover:.2f} s after (smallest gap "
        f"between a killed instance and its successor {min(gaps) * 1000:.0f} ms); "
        f"{timeline.samples} scans in {timeline.duration:.1f} s"
    )


def test_restart_and_intensity(cluster: Cluster, journal: Path) -> None:
    node = cluster.daemon("n1")
    node.call("start_child", spec=spec(cluster, "steady", journal))
    first = wait_until(lambda: running_rows(node, 1), 10, "steady running")[0]
    # A child that exits is restarted (here: killed from outside).
    import os
    import signal

    os.kill(first["pid"], signal.SIGKILL)

    def restarted():
        row = node.call("find", id="steady")
        return row if row["state"] == "running" and row["pid"] not in (None, first["pid"]) else None

    row = wait_until(restarted, 5, "steady restarted")
    assert row["restarts"] == 1

    # One that crashes faster than its intensity allows ends failed, with the reason.
    crash = spec(cluster, "crashy", journal, "0", "3", max_restarts=2, max_seconds=10)
    node.call("start_child", spec=crash)

    def failed():
        row = node.call("find", id="crashy")
        return row if row["state"] == "failed" else None

    row = wait_until(failed, 10, "crashy failed")
    assert row["restarts"] == 2
    assert "restart intensity exceeded" in row["reason"]
    assert "exit status 3" in row["reason"]
    starts = (journal / "crashy.log").read_text().count("start ")
    assert starts == 3, "the first run and two restarts, then no more"
    time.sleep(0.3)
    assert (journal / "crashy.log").read_text().count("start ") == 3

    # A transient child that exits normally is not restarted; temporary never is.
    node.call("start_child", spec=spec(cluster, "once", journal, "0", "0", restart="transient"))
    row = wait_until(
        lambda: (r := node.call("find", id="once"))["state"] == "stopped" and r, 10, "once stopped"
    )
    assert row["restarts"] == 0
    assert row["reason"] == "exit status 0"


def test_graceful_stop_hands_over_at_once(cluster: Cluster, journal: Path) -> None:
    """A graceful stop revokes the node's lease: survivors take its children over at
    once instead of after the lease's 30 s (the time is printed)."""
    nodes = {n: cluster.daemon(n, ttl=30) for n in ("n1", "n2")}
    for i in range(10):
        nodes["n1"].call("start_child", spec=spec(cluster, f"g{i}", journal))
    rows = wait_until(lambda: running_rows(nodes["n1"], 10), 20, "10 children running")
    assert any(r["node"] == "n2" for r in rows)
    lease = int(nodes["n2"].call("status")["lease"], 16)
    client = etcd3_client(cluster.etcd_url, timeout=5)
    try:
        assert client.get_lease_info(lease).TTL > 0
        stopped_at = time.monotonic()
        assert nodes["n2"].stop() == 0
        assert client.get_lease_info(lease).TTL == -1, "revoked, not left to expire"
    finally:
        client.close()
    # Generous, yet well before the 30 s lease could have expired.
    rows = wait_until(
        lambda: (r := running_rows(nodes["n1"], 10)) and all(x["node"] == "n1" for x in r) and r,
        15, "handover to n1",
    )  # fmt: skip
    handover = time.monotonic() - stopped_at
    row = next(n for n in nodes["n1"].call("nodes") if n["node"] == "n2")
    assert row["status"] == "offline"
    assert row["reason"] == "graceful leave"
    assert Counter(env["RINGD_NODE"] for env in cluster.children().values()) == {"n1": 10}
    print(f"\ngraceful stop of n2 (TTL 30 s): n1 runs all 10 {handover:.2f} s after SIGTERM")
