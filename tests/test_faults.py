"""Real faults against real daemons (DESIGN invariant 1, at most once; issue 4).

* a partition (a fault proxy stalls one daemon's etcd connection): the node fences
  itself, its children are dead before any survivor starts them, and it rejoins
  and takes them back when the partition heals;
* a frozen daemon (SIGSTOP for 2 x TTL): the guard process kills its children in
  time, and the node rejoins after SIGCONT.

The etcd outage is in test_etcd_outage.py.

Each test keeps a ``Timeline`` (a process sampler) and the children's journals,
and checks that no two instances of any child overlap in time. Figures are
printed (``pytest -s``) rather than asserted tightly: timings belong to bench/.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING

from .faultproxy import FaultProxy
from .helpers import wait_until
from .test_cluster import running_rows, spec
from .timeline import Timeline, handovers, lives, overlaps

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Cluster
    from .helpers import Daemon


def placed(timeline: Timeline) -> dict[str, list[str]]:
    """child id -> nodes of its live processes."""
    out: dict[str, list[str]] = {}
    for env in timeline.live().values():
        out.setdefault(env["RINGD_CHILD_ID"], []).append(env["RINGD_NODE"])
    return out


def each_once(timeline: Timeline, ids: list[str], nodes: set[str]) -> dict[str, str] | None:
    """{id: node} if every id runs exactly once, on one of ``nodes``; else None."""
    where = placed(timeline)
    if sorted(where) != sorted(ids):
        return None
    if any(len(n) != 1 or n[0] not in nodes for n in where.values()):
        return None
    return {i: n[0] for i, n in where.items()}


def assert_running(daemon: Daemon) -> None:
    """The daemon has not exited, and its log has no traceback."""
    assert daemon.process is not None
    code = daemon.process.poll()
    log = daemon.log.read_text()
    assert code is None, f"{daemon.name} exited {code}:\n{log}"
    assert "Traceback" not in log, log


def node_row(daemon: Daemon, node: str) -> dict:
    return next(r for r in daemon.call("nodes") if r["node"] == node)


def start_children(cluster: Cluster, daemon: Daemon, journal: Path, n: int) -> list[str]:
    ids = [f"c{i:02d}" for i in range(n)]
    for child_id in ids:
        daemon.call("start_child", spec=spec(cluster, child_id, journal))
    wait_until(lambda: running_rows(daemon, n), 20, f"{n} children running")
    return ids


def settled(timeline: Timeline, journal: Path, ids: list[str], nodes: set[str]) -> dict[str, str]:
    """Wait until every id runs once on ``nodes`` and has journaled its start."""
    where = wait_until(lambda: each_once(timeline, ids, nodes), 10, "each child once")
    wait_until(lambda: journaled(journal, timeline), 5, "start records")
    return where


def journaled(journal: Path, timeline: Timeline) -> bool:
    """True once every live child has written its start record (a child stopped
    before that, during Python's start-up, leaves no trace in its journal)."""
    for pid, env in timeline.live().items():
        path = journal / f"{env['RINGD_CHILD_ID']}.log"
        if not path.exists() or f" {pid} " not in path.read_text():
            return False
    return True


def check_lives(journal: Path, timeline: Timeline, ids: list[str]) -> dict:
    """No overlap for any id (journals + sampler); returns the lives."""
    assert timeline.samples > 20, "the sampler ran"
    assert timeline.violations == [], timeline.violations[:5]
    all_lives = lives(journal, timeline)
    assert sorted(all_lives) == sorted(ids)
    assert overlaps(all_lives) == []
    return all_lives


def test_partitioned_node_fences_before_survivors_take_over_and_rejoins(
    cluster: Cluster, journal: Path, etcd_url: str
) -> None:
    with FaultProxy(etcd_url) as proxy:
        n1 = cluster.daemon("n1")
        cluster.daemon("n2")
        n3 = cluster.daemon("n3", etcd=proxy.url)
        ttl = n3.ttl
        with Timeline(cluster.name) as timeline:
            ids = start_children(cluster, n1, journal, 20)
            before = settled(timeline, journal, ids, {"n1", "n2", "n3"})
            mine = sorted(i for i, node in before.items() if node == "n3")
            assert mine, "n3 runs some children"
            assert proxy.connections >= 1, "n3 talks to etcd through the proxy"
            assert proxy.bytes["down"] > 0

            time.sleep(0.5 * os.urandom(1)[0] / 255)  # a random phase against etcd's 500 ms ticker
            stalled_at = time.monotonic()
            proxy.stall()
            wait_until(lambda: not any("n3" in n for n in placed(timeline).values()), ttl, "fenced")
            fenced_after = time.monotonic() - stalled_at
            after = wait_until(
                lambda: each_once(timeline, ids, {"n1", "n2"}), ttl + 5, "survivors run all"
            )
            takeover = time.monotonic() - stalled_at
            assert Counter(after.values()).keys() <= {"n1", "n2"}
            # n3 is cut off but still serving its socket, and says it is fenced.
            assert_running(n3)
            status = n3.call("status")
            assert status["fenced"] is True
            assert n3.process is not None
            assert n3.process.poll() is None, "n3 keeps running"
            row = wait_until(
                lambda: (r := node_row(n1, "n3"))["status"] == "offline" and r, 5, "n3 offline"
            )
            assert row["reason"] == "lease expired"
            time.sleep(1.0)  # the partition lasts on a while: nothing changes

            healed_at = time.monotonic()
            proxy.heal()
            row = wait_until(
                lambda: (r := node_row(n1, "n3"))["status"] == "online" and r, 20, "n3 online"
            )
            assert row["reason"].startswith("rejoined after being fenced")
            rejoin = time.monotonic() - healed_at
            back = wait_until(
                lambda: (
                    (w := each_once(timeline, ids, {"n1", "n2", "n3"}))
                    and sorted(i for i, node in w.items() if node == "n3") == mine
                    and w
                ),
                20,
                "n3 takes its children back",
            )
            taken_back = time.monotonic() - healed_at
            assert back.keys() == set(ids)
            assert n3.call("status")["fenced"] is False
            time.sleep(0.3)  # keep sampling while the last moves settle

    all_lives = check_lives(journal, timeline, ids)
    # n3's first instances were SIGKILLed (no stop record) when it fenced itself,
    # within TTL of the stall; survivors started them only after that.
    for child_id in mine:
        first, second, third = all_lives[child_id][:3]
        assert (first.node, first.killed) == ("n3", True)
        assert first.end - stalled_at < ttl
        assert second.node in ("n1", "n2")
        assert second.start > first.end
        assert third.node == "n3"
        assert not second.killed, "stopped, not killed, to hand back"
        assert third.start > second.end
    margin = min(handovers({i: all_lives[i] for i in mine}, killed_only=True))
    print(
        f"\npartition (TTL {ttl:g} s, {len(ids)} children, {len(mine)} on n3): "
        f"n3's children dead {fenced_after:.2f} s after the stall, survivors ran all "
        f"{takeover:.2f} s after it (smallest gap between a killed instance's end and "
        f"its successor's start: {margin * 1000:.0f} ms); after the heal n3 was online "
        f"in {rejoin:.2f} s and ran its {len(mine)} children again in {taken_back:.2f} s; "
        f"{timeline.samples} samples"
    )


def test_frozen_daemon_guard_kills_children_in_time_and_node_rejoins(
    cluster: Cluster, journal: Path
) -> None:
    n1, _, n3 = (cluster.daemon(n) for n in ("n1", "n2", "n3"))
    ttl = n3.ttl
    with Timeline(cluster.name) as timeline:
        ids = start_children(cluster, n1, journal, 15)
        before = settled(timeline, journal, ids, {"n1", "n2", "n3"})
        mine = sorted(i for i, node in before.items() if node == "n3")
        assert mine

        time.sleep(0.5 * os.urandom(1)[0] / 255)
        frozen_at = time.monotonic()
        os.kill(n3.pid, signal.SIGSTOP)  # the daemon only: the guard is its own process
        try:
            wait_until(lambda: not any("n3" in n for n in placed(timeline).values()), ttl, "guard")
            killed_after = time.monotonic() - frozen_at
            wait_until(lambda: each_once(timeline, ids, {"n1", "n2"}), ttl + 5, "survivors")
            takeover = time.monotonic() - frozen_at
            time.sleep(max(0.0, 2 * ttl - (time.monotonic() - frozen_at)))
        finally:
            os.kill(n3.pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        row = wait_until(
            lambda: (r := node_row(n1, "n3"))["status"] == "online" and r, 20, "n3 online"
        )
        assert row["reason"].startswith("rejoined")
        wait_until(
            lambda: (
                (w := each_once(timeline, ids, {"n1", "n2", "n3"}))
                and sorted(i for i, node in w.items() if node == "n3") == mine
            ),
            20,
            "n3 takes its children back",
        )
        taken_back = time.monotonic() - thawed_at
        assert n3.process is not None
        assert n3.process.poll() is None, "the same daemon, still running"
        time.sleep(0.3)

    all_lives = check_lives(journal, timeline, ids)
    for child_id in mine:
        first, second = all_lives[child_id][:2]
        assert (first.node, first.killed) == ("n3", True)
        assert first.end - frozen_at < ttl
        assert second.node != "n3"
        assert second.start > first.end
    assert "daemon missed its deadline" in n3.log.read_text()
    margin = min(handovers({i: all_lives[i] for i in mine}, killed_only=True))
    print(
        f"\nfrozen daemon (TTL {ttl:g} s, SIGSTOP {2 * ttl:g} s, {len(mine)} of {len(ids)} "
        f"children on n3): the guard killed them {killed_after:.2f} s after the freeze, "
        f"survivors ran all {takeover:.2f} s after it (smallest gap {margin * 1000:.0f} ms); "
        f"after SIGCONT n3 ran its children again in {taken_back:.2f} s"
    )


def test_graceful_stop_survivors_take_over_well_within_a_ttl(
    cluster: Cluster, journal: Path
) -> None:
    """SIGTERM: the leaving node stops its children, releases their claims and
    revokes its lease, so survivors start them at once, not after the TTL (10 s
    here, so that a lease expiry could not pass for a handover)."""
    n1, _, n3 = (cluster.daemon(n, ttl=10) for n in ("n1", "n2", "n3"))
    with Timeline(cluster.name) as timeline:
        ids = start_children(cluster, n1, journal, 20)
        before = settled(timeline, journal, ids, {"n1", "n2", "n3"})
        mine = sorted(i for i, node in before.items() if node == "n3")
        assert mine
        stopped_at = time.monotonic()
        assert n3.stop() == 0
        exited = time.monotonic() - stopped_at
        wait_until(lambda: each_once(timeline, ids, {"n1", "n2"}), 10, "survivors run all")
        handover = time.monotonic() - stopped_at
        time.sleep(0.3)
    all_lives = check_lives(journal, timeline, ids)
    for child_id in mine:
        first, second = all_lives[child_id][:2]
        assert first.node == "n3"
        assert not first.killed, "stopped with its stop signal, not killed"
        assert second.node in ("n1", "n2")
        assert second.start > first.end
    gaps = handovers({i: all_lives[i] for i in mine})
    row = node_row(n1, "n3")
    assert (row["status"], row["reason"]) == ("offline", "graceful leave")
    print(
        f"\ngraceful stop (TTL 10 s, {len(mine)} of {len(ids)} children on n3): daemon exited "
        f"{exited:.2f} s after SIGTERM; all running on survivors {handover:.2f} s after it; "
        f"stop record -> successor's start record {min(gaps) * 1000:.0f}-"
        f"{max(gaps) * 1000:.0f} ms"
    )
    assert handover < 10 / 2, "well before one TTL"
