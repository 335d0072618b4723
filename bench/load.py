"""Load benchmark: start-child throughput and read load on a real 3-node cluster.

    .venv/bin/python -m bench.load [--quick] [--no-write] [--children N] [--duration S]
                                   [--lease-ttl S] [--keep-logs DIR] [--profile DIR]

A private etcd (``ringd.standalone.PrivateEtcd``) and three real ``ringd start``
daemons on loopback (lease TTL 3 s), each with its own control socket. Phases:

1. **Baselines.** With the daemons up and idle, 1,000 sequential puts through the
   same ``etcd3`` client ringd uses (and the create transaction ``start_child``
   issues, and the puts again from as many threads as there are submitters), so
   that the ringd figures can be read as ratios to what etcd does in the same run.
2. **Start-child throughput.** 1,000 children (``sleep 3600`` with a marker in
   their environment) submitted through the three sockets from a few client
   threads, one connection per request as ringctl does. Accepted = the last
   ``start_child`` reply. Running = the first ``which_children`` that lists every
   child ``running`` with a pid; until the daemons' own ``status`` counts say so,
   only those cheap calls are polled, so that the poller does not load the daemons.
3. **Read load.** 50 client threads in a closed loop for 30 s (10 s with
   ``--quick``), each bound to one of the three sockets: ``ping`` alone first (the
   protocol floor), then ``find`` on random child ids and ``which_children``,
   80/20. Once with a new connection per request (as ringctl does), once with one
   persistent connection per thread.

Every error is printed, and so is every line the daemons log at WARNING or above.
A table of daemon health per phase gives the lease keepalive round trips (from
each daemon's ``/metrics``, on loopback), fences, and the delay a lone ``ping``
sees meanwhile. A daemon that exits is started again after the run, and the next
run waits until every child runs again.

A full run (not ``--quick``) writes the tables into BENCHMARKS.md under "## Load".
Every process started here is stopped by pid in a ``finally`` (Ctrl-C included):
the specs are deleted so that the daemons stop their children, the daemons get
SIGTERM then SIGKILL, and the children are then looked for by their marker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ringd
from ringd.protocol import Client
from ringd.testing import marked_pids, wait_until

from .common import interrupt_on, log, percentile, write_section
from .load_cluster import (
    CHILDREN,
    FIND_SHARE,
    LEASE_TTL,
    MARKER_VAR,
    NODES,
    READERS,
    RETRY,
    SUBMITTERS,
    Cluster,
    CpuMeter,
    Health,
    Metrics,
    Profiler,
    keepalive_summary,
    local_running_count,
    wait_converged,
)
from .load_read import idle_latency, read_load
from .load_report import ms, render, report_errors

if TYPE_CHECKING:
    from collections.abc import Iterable


# -- phase 1: etcd baseline --------------------------------------------------------------


def etcd_baseline(cluster: Cluster, value: bytes, n: int, threads: int) -> dict[str, Any]:
    """Sequential puts, sequential create transactions, and threaded puts."""
    client = cluster.etcd_client()
    prefix = "/loadbench-baseline/"
    try:
        for i in range(50):  # warm-up: channel, first allocations
            client.put(f"{prefix}warm/{i}", value)
        put_lat = []
        start = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            client.put(f"{prefix}put/{i:05d}", value)
            put_lat.append(time.perf_counter() - t)
        put_s = time.perf_counter() - start

        # The transaction ringd.etcd.Etcd.create sends for every start_child.
        txn_lat = []
        tx = client.transactions
        start = time.perf_counter()
        for i in range(n):
            key = f"{prefix}txn/{i:05d}"
            t = time.perf_counter()
            client.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, value), tx.get(key)],
                failure=[tx.get(key)],
            )
            txn_lat.append(time.perf_counter() - t)
        txn_s = time.perf_counter() - start

        def worker(k: int) -> None:
            for i in range(k, n, threads):
                client.put(f"{prefix}par/{i:05d}", value)

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        start = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        par_s = time.perf_counter() - start
        client.delete_prefix(prefix)
    finally:
        client.close()
    return {
        "put_rate": n / put_s,
        "put_p50": percentile(put_lat, 0.5),
        "put_p99": percentile(put_lat, 0.99),
        "txn_rate": n / txn_s,
        "txn_p50": percentile(txn_lat, 0.5),
        "txn_p99": percentile(txn_lat, 0.99),
        "par_rate": n / par_s,
    }


# -- phase 2: start-child throughput -----------------------------------------------------


def child_spec(child_id: str, marker_value: str) -> dict[str, Any]:
    return {"id": child_id, "argv": ["sleep", "3600"], "env": {MARKER_VAR: marker_value}}


def start_children(
    cluster: Cluster, ids: list[str], marker_value: str, profile: Path | None
) -> dict[str, Any]:
    n = len(ids)
    sockets = cluster.sockets
    latencies: list[float] = []
    replied: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def submit(k: int) -> None:
        client = Client(sockets[k % len(sockets)], timeout=60)
        for i in range(k, n, SUBMITTERS):
            t = time.perf_counter()
            try:
                result = client.call("start_child", spec=child_spec(ids[i], marker_value))
                if result.get("id") != ids[i]:
                    raise RuntimeError(f"start_child {ids[i]} answered for {result.get('id')!r}")
            except Exception as exc:
                with lock:
                    errors.append(f"start_child {ids[i]} via {Path(client.path).name}: {exc!r}")
                continue
            done = time.perf_counter()
            with lock:
                latencies.append(done - t)
                replied.append(done)

    profiler = Profiler(cluster.daemons["n1"].pid, profile and profile / "start-n1.txt")
    with CpuMeter(cluster.pids()) as cpu:
        t0 = time.perf_counter()
        pool = [threading.Thread(target=submit, args=(k,), daemon=True) for k in range(SUBMITTERS)]
        for th in pool:
            th.start()
        # Cheap polls first (each daemon's own count of running children), so that the
        # poller does not load the daemons with O(N) which_children calls meanwhile.
        local_running = wait_until(
            lambda: local_running_count(cluster) >= n and time.perf_counter() - t0,
            300,
            f"{n} children running (status)",
            0.05,
            retry=RETRY,
        )
        polls: list[tuple[float, float]] = []
        j = 0

        def all_listed_running() -> float | None:
            nonlocal j, rows
            sent = time.perf_counter()
            rows = Client(sockets[j % len(sockets)], timeout=60).call("which_children")
            j += 1
            polls.append((sent, time.perf_counter()))
            running = sum(1 for r in rows if r["state"] == "running" and r["pid"])
            return time.perf_counter() - t0 if running == len(rows) == n else None

        rows: list[dict[str, Any]] = []
        all_running = wait_until(
            all_listed_running, 120, f"{n} running (which_children)", 0.05, retry=RETRY
        )
        for th in pool:
            th.join()
    profile_text = profiler.stop()
    accepted = (max(replied) - t0) if replied else math.nan
    processes = len(marked_pids(cluster.marker))
    nodes = Counter(r["node"] for r in rows)
    poll_time = [b - a for a, b in polls]
    return {
        "n": n,
        "errors": errors,
        "accepted_s": accepted,
        "accepted_rate": len(replied) / accepted if replied else math.nan,
        "lat_p50": percentile(latencies, 0.5),
        "lat_p99": percentile(latencies, 0.99),
        "lat_max": max(latencies, default=math.nan),
        "local_running_s": local_running,
        "running_s": all_running,
        "running_rate": n / all_running,
        "poll_p50": percentile(poll_time, 0.5),
        "polls": len(polls),
        "processes": processes,
        "nodes": dict(sorted(nodes.items())),
        "cpu": cpu,
        "profile": profile_text,
    }


def stop_children(cluster: Cluster, n: int) -> float:
    """Delete every spec at once in etcd; seconds until no marked process is left."""
    client = cluster.etcd_client()
    try:
        t0 = time.perf_counter()
        client.delete_prefix(cluster.prefix + "children/")
    finally:
        client.close()
    wait_until(lambda: not marked_pids(cluster.marker), 120, f"{n} children stopped", 0.05)
    return time.perf_counter() - t0


# -- main --------------------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="10 s per read run, no write")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--children", type=int, default=CHILDREN)
    parser.add_argument("--lease-ttl", type=float, default=LEASE_TTL, help="daemons' lease TTL")
    parser.add_argument("--keep-logs", metavar="DIR", type=Path, help="copy the logs into DIR")
    parser.add_argument("--duration", type=float, help="seconds per read run (30; 10 quick)")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="py-spy the n1 daemon in each phase into DIR (implies --no-write)",
    )
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 10.0 if args.quick else 30.0
    write = not (args.quick or args.no_write or args.profile or args.lease_ttl != LEASE_TTL)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    interrupt_on(signal.SIGTERM)

    args.loadavg = os.getloadavg()
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    log(f"ringd imported from {Path(ringd.__file__).parent}")
    marker_value = secrets.token_hex(8)
    marker = f"{MARKER_VAR}={marker_value}".encode()
    ids = [f"load-{i:05d}" for i in range(args.children)]
    tmp = Path(tempfile.mkdtemp(prefix="ringd-load-"))
    cluster = Cluster(tmp, marker, lease_ttl=args.lease_ttl)
    all_errors: list[str] = []
    try:
        cluster.start()
        health = Health(cluster)
        metrics = Metrics(cluster)
        metrics.delta()
        value = json.dumps(child_spec(ids[0], marker_value)).encode()
        log(f"baseline: {args.children} etcd puts ({len(value)} bytes each)")
        base = etcd_baseline(cluster, value, args.children, SUBMITTERS)
        log(
            f"  put {base['put_rate']:,.0f}/s, create txn {base['txn_rate']:,.0f}/s, "
            f"{SUBMITTERS} threads {base['par_rate']:,.0f}/s"
        )
        log(f"start_child: {args.children} children through {len(NODES)} sockets")
        start = start_children(cluster, ids, marker_value, args.profile)
        start["daemon"] = health.check()
        start["lease"] = metrics.delta()
        log(f"  {keepalive_summary(start['lease'])}")
        all_errors += start["errors"] + start["daemon"]
        log(
            f"  accepted {start['accepted_rate']:,.0f}/s in {start['accepted_s']:.2f} s, "
            f"all running after {start['running_s']:.2f} s "
            f"({start['running_rate']:,.0f}/s), {start['processes']} processes, "
            f"{start['nodes']}; {start['cpu'].summary()}"
        )
        if start["profile"]:
            print(start["profile"], file=sys.stderr)
        if start["daemon"]:
            wait_converged(cluster, args.children)
            metrics.delta()
        idle = idle_latency(cluster, ids)
        log(f"idle latency: {idle}")
        mixed = {"find": FIND_SHARE, "which_children": 1 - FIND_SHARE}
        # The floors first: they are measured on a cluster that the heavier runs have
        # not disturbed yet.
        runs = [
            ("per request", "ping (floor)", {"ping": 1.0}, False),
            ("persistent", "ping (floor)", {"ping": 1.0}, True),
            ("per request", "find + which_children", mixed, False),
            ("persistent", "find + which_children", mixed, True),
        ]
        reads = []
        for conn, label, mix, persistent in runs:
            log(f"read load: {conn}, {label}, {READERS} clients, {args.duration:g} s")
            slug = f"{'persistent' if persistent else 'per-request'}-{next(iter(mix))}"
            res = read_load(
                cluster,
                ids,
                mix=mix,
                clients=READERS,
                duration=args.duration,
                persistent=persistent,
                profile=args.profile and args.profile / f"{slug}-n1.txt",
            )
            for op, row in res["ops"].items():
                log(
                    f"  {op}: {row['rate']:,.1f}/s p50 {ms(row['p50'])} ms "
                    f"p99 {ms(row['p99'])} ms max {ms(row['max'])} ms errors {row['errors']}"
                )
            log(
                f"  {res['cpu'].summary()}; probe ping p50 {ms(res['probe_p50'])} ms "
                f"p99 {ms(res['probe_p99'])} ms max {ms(res['probe_max'])} ms"
            )
            if res["profile"]:
                print(res["profile"], file=sys.stderr)
            res["daemon"] = health.check()
            res["lease"] = metrics.delta()
            log(f"  {keepalive_summary(res['lease'])}")
            for line in res["daemon"]:
                log(f"  DAEMON: {line}")
            all_errors += res["errors"] + res["daemon"]
            reads.append((conn, label, res))
            res["restarted"], res["recovery"], res["recovery_s"] = [], [], 0.0
            if res["daemon"] or res["errors"]:
                log("  waiting for every child to run again before the next run")
                t = time.perf_counter()
                try:
                    res["restarted"] = wait_converged(cluster, args.children)
                except TimeoutError as exc:
                    # Measuring on a cluster that has not recovered would mean nothing.
                    log(f"  {exc}: no further runs")
                    all_errors.append(f"after the run '{conn}, {label}': {exc}")
                    res["recovery_s"] = math.inf
                    res["recovery"] = health.check()
                    break
                finally:
                    res["recovery_s"] = res["recovery_s"] or time.perf_counter() - t
                res["recovery"] = health.check()
                all_errors += [f"while recovering: {p}" for p in res["recovery"]]
                log(
                    f"  converged again after {res['recovery_s']:.1f} s; restarted "
                    f"{res['restarted'] or 'none'}; {len(res['recovery'])} log lines meanwhile"
                )
                metrics.delta()  # what happened while recovering belongs to no run
            time.sleep(1.0)
        log(f"stopping the {args.children} children by deleting their specs")
        stop_s = stop_children(cluster, args.children)
        text = render(args, base, start, stop_s, idle, reads)
        print(text)
        report_errors(all_errors)
        if write:
            log(f"wrote {write_section('Load', text)}")
    finally:
        problems = cluster.stop()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in tmp.glob("*.log"):
                shutil.copy(path, args.keep_logs / path.name)
            log(f"logs copied into {args.keep_logs}")
        shutil.rmtree(tmp, ignore_errors=True)
        for problem in problems:
            print(f"CLEANUP: {problem}", file=sys.stderr)
        log("cleaned up" if not problems else "cleaned up, with problems (above)")
    return 1 if all_errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
