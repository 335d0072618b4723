"""etcd stopped, then restarted on the same data dir at the same URL: no spec lost,
no daemon crashed, every child running again once etcd is back (issue 4). Children
die during the outage (every node fences: nobody can know who holds what), and
never run twice. How soon they are back is printed, not asserted (timings belong
to bench/; the deadline here only fails a cluster that does not come back).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from ringd.standalone import PrivateEtcd

from .conftest import Cluster
from .helpers import wait_until
from .test_cluster import running_rows
from .test_faults import (
    assert_running,
    check_lives,
    each_once,
    placed,
    settled,
    start_children,
)
from .timeline import Timeline

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def own_etcd(short_tmp: Path) -> Iterator[PrivateEtcd]:
    """An etcd of this test's own, restartable at the same URL on the same data dir
    (its ports are picked once, in the constructor)."""
    server = PrivateEtcd(short_tmp / "etcd", log_path=short_tmp / "etcd.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.parametrize(
    "outage", [6.0, pytest.param(20.0, marks=pytest.mark.slow)], ids=lambda s: f"{s:g}s"
)
def test_etcd_outage_loses_nothing_and_children_return_soon_after_etcd(
    own_etcd: PrivateEtcd, short_tmp: Path, journal: Path, outage: float
) -> None:
    cluster = Cluster(own_etcd.url, short_tmp)
    try:
        nodes = [cluster.daemon(n) for n in ("n1", "n2", "n3")]
        ttl = nodes[0].ttl
        pids = [d.pid for d in nodes]
        with Timeline(cluster.name) as timeline:
            ids = start_children(cluster, nodes[0], journal, 15)
            settled(timeline, journal, ids, {"n1", "n2", "n3"})

            down_at = time.monotonic()
            own_etcd.stop()
            # Nobody can know who holds what: every node fences, every child dies.
            wait_until(lambda: not placed(timeline), ttl + 1, "all children fenced")
            all_dead = time.monotonic() - down_at
            for d in nodes:
                assert_running(d)
                assert d.call("status")["fenced"] is True  # answers, from its own state
            time.sleep(max(0.0, outage - (time.monotonic() - down_at)))

            own_etcd.start()
            up_at = time.monotonic()
            wait_until(
                lambda: each_once(timeline, ids, {"n1", "n2", "n3"}), ttl + 15, "children back"
            )
            back = time.monotonic() - up_at
            time.sleep(0.3)
        for d, pid in zip(nodes, pids, strict=True):
            assert_running(d)
            assert d.pid == pid
            assert d.call("status")["fenced"] is False
        # Each daemon says it rejoined (the same process: not a restart).
        rows = {r["node"]: r for r in nodes[0].call("nodes")}
        assert {n: (r["status"], r["reason"].split(" ")[0]) for n, r in rows.items()} == {
            n: ("online", "rejoined") for n in ("n1", "n2", "n3")
        }  # "rejoined", or "rejoined after being fenced (...)" when the outage outlived the lease
        # No spec lost: all in etcd, and every daemon lists them.
        rows = wait_until(lambda: running_rows(nodes[1], len(ids)), 10, "rows")
        assert sorted(r["id"] for r in rows) == ids
        check_lives(journal, timeline, ids)
        print(
            f"\netcd outage of {outage:g} s (TTL {ttl:g} s, {len(ids)} children on 3 nodes): "
            f"all children fenced {all_dead:.2f} s after etcd stopped; all running again "
            f"{back:.2f} s after etcd was back (design: about TTL + a little)"
        )
    except BaseException:
        cluster.print_logs(150)
        raise
    finally:
        cluster.cleanup()
