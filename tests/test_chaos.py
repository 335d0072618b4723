"""Chaos: 5 daemons, 200 children, a seeded random schedule of real faults.

Faults, one after another, each undone before the next: SIGKILL of a daemon (and
its restart), SIGSTOP/SIGCONT of a daemon, a partition of one daemon from etcd
(its fault proxy stalls), an etcd restart, and spec churn (children started and
deleted). The schedule runs in rounds, each kind once per round in a seeded
random order, so every kind happens (the faults go on past the duration until
each kind has). A sampler process looks at every live child process every 50 ms
(by the cluster marker in its environment) and at every claim: no child id may
be alive twice at any instant, nor alive on a node while another node holds its
claim. Within TTL + 5 s of each fault being undone the cluster must be back to
every spec running exactly once; and no spec may be lost.

The default suite runs 60 s of faults; ``pytest -m slow -k chaos --chaos-duration
600`` runs longer. ``test_chaos_many_specs`` (slow) does the same with 10,000 more
specs in the cluster that no node may run (``on = {zone = "nowhere"}``), so that
every daemon's view, placement and listing carry them through the faults. The seed is printed (``RINGD_CHAOS_SEED`` replays one).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest

from ringd.standalone import PrivateEtcd, free_port
from ringd.testing import WaitTimeout

from .faultproxy import FaultProxy
from .helpers import wait_until
from .timeline import Timeline

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from ringd.testing import Daemon

    from .conftest import Cluster

TTL = 2.0
NODES = ("n1", "n2", "n3", "n4", "n5")
KINDS = ("sigkill", "sigstop", "partition", "etcd restart", "spec churn")


def each_once(timeline: Timeline, ids: set[str]) -> bool:
    where: dict[str, int] = defaultdict(int)
    for env in timeline.live().values():
        where[env["RINGD_CHILD_ID"]] += 1
    return set(where) == ids and all(n == 1 for n in where.values())


class Chaos:
    def __init__(self, cluster: Cluster, base: Path, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.etcd = PrivateEtcd(base / "chaos-etcd", client_port=free_port(), peer_port=free_port())
        self.proxies: dict[str, FaultProxy] = {}
        self.ids: set[str] = set()
        self.next_id = 0
        self.convergence: dict[str, list[float]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)

    def env(self) -> dict[str, str]:
        return {"TEST_CLUSTER": self.cluster.name}

    def any_daemon(self) -> Daemon:
        return self.cluster.daemons[self.rng.choice(NODES)]

    def start_children(self, n: int) -> None:
        for _ in range(n):
            child_id = f"k{self.next_id:04d}"
            self.next_id += 1
            self.any_daemon().call(
                "start_child", spec={"id": child_id, "argv": ["sleep", "3600"], "env": self.env()}
            )
            self.ids.add(child_id)

    # -- faults: each returns when the fault has been undone ----------------------------

    def sigkill(self) -> None:
        d = self.any_daemon()
        d.kill()
        time.sleep(self.rng.uniform(0.5, 3))
        d.start()

    def sigstop(self) -> None:
        d = self.any_daemon()
        os.kill(d.pid, signal.SIGSTOP)
        time.sleep(self.rng.uniform(0.5, 2 * TTL))
        os.kill(d.pid, signal.SIGCONT)

    def partition(self) -> None:
        proxy = self.proxies[self.rng.choice(NODES)]
        proxy.stall()
        time.sleep(self.rng.uniform(1, 3 * TTL))
        proxy.heal()

    def etcd_restart(self) -> None:
        self.etcd.stop()
        time.sleep(self.rng.uniform(0.5, 4))
        self.etcd.start()

    def churn(self) -> None:
        for child_id in self.rng.sample(sorted(self.ids), 5):
            self.any_daemon().call("delete_child", id=child_id)
            self.ids.discard(child_id)
        self.start_children(5)

    def schedule(self) -> Iterator[str]:
        """Fault kinds for ever: every kind once per round, in a seeded random order."""
        while True:
            yield from self.rng.sample(KINDS, len(KINDS))

    def misplaced(self, timeline: Timeline) -> str:
        """What keeps the cluster from each spec running once, in words."""
        where: dict[str, list[str]] = defaultdict(list)
        for env in timeline.live().values():
            where[env["RINGD_CHILD_ID"]].append(env["RINGD_NODE"])
        missing = sorted(self.ids - set(where))
        twice = {i: n for i, n in where.items() if len(n) > 1}
        extra = sorted(set(where) - self.ids)
        return (
            f"{len(missing)} not running {missing[:10]}, twice {twice}, deleted but running {extra}"
        )

    def run(self, duration: float, timeline: Timeline) -> None:
        faults = {
            "sigkill": self.sigkill,
            "sigstop": self.sigstop,
            "partition": self.partition,
            "etcd restart": self.etcd_restart,
            "spec churn": self.churn,
        }
        assert set(faults) == set(KINDS)
        end = time.monotonic() + duration
        for number, kind in enumerate(self.schedule(), 1):
            if time.monotonic() >= end and all(self.counts[k] for k in KINDS):
                break
            faults[kind]()
            self.counts[kind] += 1
            undone = time.monotonic()
            try:
                wait_until(lambda: each_once(timeline, self.ids), TTL + 5, kind, interval=0.1)
            except WaitTimeout:
                raise AssertionError(
                    f"fault {number} ({kind}) undone {time.monotonic() - undone:.1f} s ago: "
                    f"not converged within TTL + 5 s: {self.misplaced(timeline)}"
                ) from None
            self.convergence[kind].append(time.monotonic() - undone)
            time.sleep(self.rng.uniform(0, 1))  # a random phase for the next fault


def store_unrunnable(cluster: Cluster, count: int) -> set[str]:
    """``count`` specs no node may run, through ``start_children``, 1,000 a call."""
    ids = [f"u{i:06d}" for i in range(count)]
    for at in range(0, count, 1000):
        specs = [
            {"id": i, "argv": ["sleep", "3600"], "on": {"zone": "nowhere"}}
            for i in ids[at : at + 1000]
        ]
        cluster.daemons[NODES[at // 1000 % len(NODES)]].call("start_children", specs=specs)
    return set(ids)


def run_chaos(cluster: Cluster, short_tmp: Path, duration: float, unrunnable: int = 0) -> None:
    seed = int(os.environ.get("RINGD_CHAOS_SEED", str(random.randrange(1 << 30))))
    print(f"\nchaos seed {seed} (RINGD_CHAOS_SEED={seed} replays it), {duration:g} s of faults")
    chaos = Chaos(cluster, short_tmp, seed)
    chaos.etcd.start()
    try:
        for name in NODES:
            proxy = chaos.proxies[name] = FaultProxy(chaos.etcd.url).__enter__()
            cluster.daemon(name, ttl=TTL, etcd=proxy.url)
        started = time.monotonic()
        idle = store_unrunnable(cluster, unrunnable)
        if unrunnable:
            print(f"{unrunnable} unrunnable specs stored in {time.monotonic() - started:.1f} s")
        with Timeline(cluster.name, interval=0.05, etcd_url=chaos.etcd.url) as timeline:
            chaos.start_children(200)
            wait_until(
                lambda: each_once(timeline, chaos.ids), 60, "200 children once each", interval=0.2
            )
            chaos.run(duration, timeline)
            # And still so now, after the last fault's random pause.
            wait_until(lambda: each_once(timeline, chaos.ids), TTL + 5, "all running at the end")
        # No spec lost: etcd holds exactly the specs that should exist.
        rows = cluster.daemons["n1"].call("which_children")
        assert {r["id"] for r in rows} == chaos.ids | idle
        assert sum(r["id"] in idle and r["node"] is None for r in rows) == unrunnable
        for d in cluster.daemons.values():
            assert d.process is not None and d.process.poll() is None, f"{d.name} died"
    finally:
        for proxy in chaos.proxies.values():
            proxy.__exit__(None, None, None)
        cluster.cleanup()
        chaos.etcd.stop()

    print(f"{'fault':<14} {'count':>5} {'converged (median / max s)':>28}")
    for kind, times in sorted(chaos.convergence.items()):
        print(
            f"{kind:<14} {chaos.counts[kind]:>5} {statistics.median(times):>14.2f} / {max(times):.2f}"
        )
    print(
        f"samples {timeline.samples} in {timeline.duration:.0f} s ({timeline.claims_checked}"
        f" also checked against the claims), violations {len(timeline.violations)}"
    )
    counts = [chaos.counts[k] for k in KINDS]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1, f"every kind, in rounds: {counts}"
    assert timeline.samples > timeline.duration * 5, "the sampler kept up"
    assert timeline.claims_checked > timeline.samples / 2, "the claims were read"
    assert timeline.violations == [], timeline.violations[:5]


def test_chaos(cluster: Cluster, short_tmp: Path) -> None:
    run_chaos(cluster, short_tmp, 60)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_chaos_long(cluster: Cluster, short_tmp: Path, request: pytest.FixtureRequest) -> None:
    run_chaos(cluster, short_tmp, float(request.config.getoption("--chaos-duration")))


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_chaos_many_specs(
    cluster: Cluster, short_tmp: Path, request: pytest.FixtureRequest
) -> None:
    run_chaos(
        cluster, short_tmp, float(request.config.getoption("--chaos-duration")), unrunnable=10_000
    )
