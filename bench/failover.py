"""Membership benchmark: failover after SIGKILL, and graceful-leave handoff.

``python -m bench.failover [--runs 5] [--nodes 3] [--children 300] [--ttl 2]``

Starts a private etcd and ``--nodes`` real ``ringd start`` daemons, one of them the
victim ``v``, and ``--children`` children (``/usr/bin/sleep``, so that the figures
are ringd's and etcd's, not Python's start-up); the ring gives the victim about
``children / nodes`` of them. Then, ``--runs`` times each:

* **failover**: wait U(0, 0.5 s) (a random phase against etcd's 500 ms lease
  expiry ticker, see shared/ANCHORS.md), SIGKILL the victim, and time until every
  one of its children runs on another node (a process scan every ~2 ms); the
  victim is then started again and takes its children back.
* **etcd floor**, in the same run: a plain lease of the same TTL, a key under it,
  U(0, 0.5 s), one keepalive, then none: time from that keepalive to the key's
  DELETE seen by a watcher (TTL + U(0, 0.5 s) by etcd's design).
* **graceful handoff**: SIGTERM the victim, time until all its children run
  elsewhere, and where that time goes (its children stopped, its claims deleted,
  its lease revoked, survivors' claims created, processes running), read from an
  etcd watch on the cluster's keys and the process scan.

Prints the medians and ranges as Markdown (the BENCHMARKS.md "Membership" section)
and, with ``--json FILE``, every sample. Every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringd import procfs
from ringd.testing import (
    Daemon,
    descendants,
    etcd3_client,
    helpers_of,
    kill_pids,
    private_etcd,
    processes_with_env,
    wait_until,
)

from .common import interrupt_on
from .etcd_watch import Watcher, etcd_floor
from .failover_report import report, report_sizes

if TYPE_CHECKING:
    from ringd.standalone import PrivateEtcd

SLEEP = shutil.which("sleep") or "/usr/bin/sleep"


# -- processes ---------------------------------------------------------------------


def scan(marker: str) -> dict[int, tuple[str, str]]:
    """Live children of this benchmark's daemons: pid -> (child id, node)."""
    found = processes_with_env(marker, descendants(os.getpid()))
    return {
        pid: (env["RINGD_CHILD_ID"], env["RINGD_NODE"])
        for pid, env in found.items()
        if "RINGD_CHILD_ID" in env
    }


def placement(marker: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for child_id, node in scan(marker).values():
        out.setdefault(child_id, []).append(node)
    return out


def cpu_ms(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat, ns resolution); 0 if gone."""
    return procfs.scheduled_ns(pid) / 1e6


def handoff_floor(children: int, spawners: int) -> float:
    """``bench.handoff_floor``: stop ``children`` and start as many in ``spawners``
    processes, nothing else (seconds)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.handoff_floor", "--children", str(children),
         "--spawners", str(spawners)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return float(json.loads(out.stdout)["total"])


# -- the runs ----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ttl = args.ttl
        self.base = Path(tempfile.mkdtemp(prefix="rbf-", dir="/tmp"))
        self.cluster = "bench" + uuid.uuid4().hex[:8]
        self.marker = f"BENCH_CLUSTER={self.cluster}"
        self.prefix = f"/ringd/{self.cluster}/"
        self.stack = contextlib.ExitStack()
        self.etcd: PrivateEtcd | None = None
        self.daemons: dict[str, Daemon] = {}
        self.client: Any = None
        self.watcher: Watcher | None = None
        self.floor_watcher: Watcher | None = None
        self.ids = [f"c{i:03d}" for i in range(args.children)]

    # setup / teardown

    def __enter__(self) -> Bench:
        try:  # a failed start-up stops what it started, too
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self) -> None:
        self.etcd = self.stack.enter_context(private_etcd(self.base))
        self.client = etcd3_client(self.etcd.url)
        self.watcher = Watcher(self.client, self.prefix)
        self.floor_watcher = Watcher(self.client, "/bench-floor/")
        names = ["v"] + [f"s{i}" for i in range(1, self.args.nodes)]
        for name in names:
            self.daemons[name] = Daemon(
                name,
                self.base,
                etcd=self.etcd.url,
                cluster=self.cluster,
                ttl=self.ttl,
                args=["--log-level", self.args.log_level],
            )
            self.daemons[name].start(timeout=30)
        first = self.daemons["s1"]
        for child_id in self.ids:
            first.call(
                "start_child",
                spec={
                    "id": child_id,
                    "argv": [SLEEP, "3600"],
                    "env": {"BENCH_CLUSTER": self.cluster},
                    "stop_timeout": 5,
                },
            )
        self.victim_ids = self.settle()

    def __exit__(self, *exc: object) -> None:
        for d in self.daemons.values():
            d.cleanup()
        kill_pids(scan(self.marker))
        for w in (self.watcher, self.floor_watcher):
            if w is not None:
                w.close()
        if self.client is not None:
            self.client.close()
        self.stack.close()  # etcd
        if not self.args.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def settle(self) -> set[str]:
        """Wait until every child runs once, the victim included; its ids."""

        def done() -> set[str] | None:
            where = placement(self.marker)
            if len(where) != len(self.ids) or any(len(n) != 1 for n in where.values()):
                return None
            mine = {i for i, n in where.items() if n == ["v"]}
            return mine or None

        mine: set[str] = wait_until(done, 180, "every child running once", interval=0.05)
        time.sleep(0.5)  # let claims publish and reconcilers go quiet
        return mine

    def running_elsewhere(self, ids: set[str]) -> bool:
        where = placement(self.marker)
        return all(len(where.get(i, [])) == 1 and where[i][0] != "v" for i in ids)

    def claim_times(self, since: float, ids: set[str], kind: str, created: bool) -> list[float]:
        assert self.watcher is not None
        keys = {f"{self.prefix}claims/{i}" for i in ids}
        return [
            t
            for t, k, key, c, _ in self.watcher.since(since)
            if key in keys and k == kind and (c or not created)
        ]

    def running_tracker(self, since: float, ids: set[str]) -> Any:
        """A poll function returning when each child's claim was first published
        running on another node. Each call reads only the events that arrived since
        the last one: parsing them all on every poll took 30 ms of CPU per handoff,
        on the CPUs the daemons being measured share."""
        watcher = self.watcher
        assert watcher is not None
        by_key = {f"{self.prefix}claims/{i}": i for i in ids}
        up: dict[str, float] = {}
        cursor = 0

        def poll() -> dict[str, float]:
            nonlocal cursor
            events, cursor = watcher.after(cursor)
            for t, kind, key, _, value in events:
                if t >= since and kind == "put" and key in by_key and by_key[key] not in up:
                    claim = json.loads(value)
                    if claim.get("node") != "v" and claim.get("state") == "running":
                        up[by_key[key]] = t
            return up

        return poll

    def released_at(self, since: float, ids: set[str]) -> dict[str, float]:
        """When the victim deleted each child's claim (its process had exited)."""
        assert self.watcher is not None
        by_key = {f"{self.prefix}claims/{i}": i for i in ids}
        return {
            by_key[key]: t
            for t, kind, key, _, _ in self.watcher.since(since)
            if kind == "delete" and key in by_key
        }

    def event_time(self, since: float, kind: str, key: str) -> float | None:
        assert self.watcher is not None
        return next(
            (t for t, k, name, _, _ in self.watcher.since(since) if (k, name) == (kind, key)),
            None,
        )

    def failover(self) -> dict[str, float]:
        victim = self.daemons["v"]
        ids = set(self.victim_ids)
        pids = [p for p, (i, n) in scan(self.marker).items() if n == "v"]
        time.sleep(random.uniform(0, 0.5))
        t0 = time.monotonic()
        victim.kill()
        wait_until(lambda: not any(map(procfs.alive, pids)), 10, "victim's children dead", 0.002)
        gone = time.monotonic() - t0
        wait_until(lambda: self.running_elsewhere(ids), self.ttl + 60, "failover", 0.002)
        total = time.monotonic() - t0
        expiry = self.event_time(t0, "delete", f"{self.prefix}nodes/v/alive")
        claims = self.claim_times(t0, ids, "put", created=True)
        sample = {
            "children": len(ids),
            "total": total,
            "children_dead": gone,
            "alive_deleted": (expiry or t0) - t0,
            "first_claim": min(claims) - t0 if claims else float("nan"),
            "last_claim": max(claims) - t0 if claims else float("nan"),
        }
        victim.start(timeout=30)
        self.victim_ids = self.settle()
        return sample

    def graceful(self) -> dict[str, float]:
        victim = self.daemons["v"]
        ids = set(self.victim_ids)
        pids = [p for p, (i, n) in scan(self.marker).items() if n == "v"]
        # The same move with nothing of ringd's, on the same CPUs, just before.
        floor = handoff_floor(len(ids), len(self.daemons) - 1)
        time.sleep(random.uniform(0, 0.1))
        assert victim.process is not None
        # Where the CPUs go during the handoff: every process involved, by pid.
        survivors = [d.process.pid for d in self.daemons.values() if d is not victim and d.process]
        accounts = {
            "victim": [victim.process.pid, *helpers_of(victim.process.pid).values()],
            "survivors": survivors,
            "etcd": [self.etcd.process.pid] if self.etcd and self.etcd.process else [],
            "benchmark": [os.getpid()],
        }
        cpu_before = {k: sum(cpu_ms(p) for p in ps) for k, ps in accounts.items()}
        busy_before = procfs.machine_ticks()
        exited = float("nan")
        t0 = time.monotonic()
        running = self.running_tracker(t0, ids)
        victim.process.send_signal(signal.SIGTERM)
        deadline = t0 + 60
        # Timed from the etcd watch, not by scanning processes: a scan every few ms
        # of hundreds of processes takes most of a core from the daemons being
        # measured (on 2 CPUs it tripled the figures). A child is handed over when
        # the victim has deleted its claim (after its process exited) and a survivor
        # has published its new instance running (after its process was spawned).
        while len(up := running()) < len(ids):
            if exited != exited and victim.process.poll() is not None:  # nan: not yet
                exited = time.monotonic() - t0
            if time.monotonic() > deadline:
                raise TimeoutError("graceful handoff")
            time.sleep(0.01)
        total = max(up.values()) - t0
        busy_after = procfs.machine_ticks()
        cpu = {k: sum(cpu_ms(p) for p in ps) - cpu_before[k] for k, ps in accounts.items()}
        for k, ps in accounts.items():
            if any(procfs.state(p) is None for p in ps):
                cpu[k] = float("nan")  # one exited before the last child was up: unknown
        wait_until(lambda: self.running_elsewhere(ids), 30, "processes running elsewhere", 0.002)
        # The new children's own start-up (exec, dynamic loading): all of their CPU.
        cpu["children"] = sum(cpu_ms(p) for p, (i, n) in scan(self.marker).items() if i in ids)
        down = self.released_at(t0, ids)
        downtimes = sorted(up[i] - down.get(i, t0) for i in ids)
        assert victim.process.wait(30) == 0, victim.log_tail(3000)
        if exited != exited:
            exited = time.monotonic() - t0
        dead = [p for p in pids if not procfs.alive(p)]
        assert len(dead) == len(pids)
        released = self.claim_times(t0, ids, "delete", created=False)
        claimed = self.claim_times(t0, ids, "put", created=True)
        status = self.event_time(t0, "put", f"{self.prefix}nodes/v/status")
        revoked = self.event_time(t0, "delete", f"{self.prefix}nodes/v/alive")
        stamps = {
            "children": float(len(ids)),
            "total": total,
            "first_release": min(released) - t0 if released else float("nan"),
            "last_release": max(released) - t0 if released else float("nan"),
            "status_offline": (status or float("nan")) - t0,
            "lease_revoked": (revoked or float("nan")) - t0,
            "first_claim": min(claimed) - t0 if claimed else float("nan"),
            "last_claim": max(claimed) - t0 if claimed else float("nan"),
            "daemon_exited": exited,
            "downtime_median": downtimes[len(downtimes) // 2],
            "downtime_p95": downtimes[int(len(downtimes) * 0.95)],
            "downtime_max": downtimes[-1],
            "floor": floor,
            "busy": (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1),
            **{f"cpu_{k}": v for k, v in cpu.items()},
        }
        victim.start(timeout=30)
        self.victim_ids = self.settle()
        return stamps

    def fences(self) -> int:
        """Self-fencing events so far, all daemons (their logs)."""
        return sum(d.log.read_text().count("fencing node") for d in self.daemons.values())

    def floor(self) -> float:
        assert self.floor_watcher is not None
        return etcd_floor(self.client, self.floor_watcher, "/bench-floor/", int(self.ttl))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3, help="daemons, the victim included")
    parser.add_argument("--children", type=int, default=300, help="children in the cluster")
    parser.add_argument("--ttl", type=float, default=2.0, help="lease TTL (etcd's minimum: 2)")
    parser.add_argument(
        "--graceful-sizes",
        default="30,90",
        help="then graceful leaves only, in clusters of these many children (comma-"
        "separated; '' for none): how the handoff grows with the victim's children",
    )
    parser.add_argument("--json", metavar="FILE", help="write every sample here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--log-level", default="warning", help="the daemons' log level")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes: at least 2 (a victim and a survivor)")
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"CPython {platform.python_version()}",
        "load": [os.getloadavg()[0]],
        "failover": [],
        "graceful": [],
        "floor": [],
    }

    # A SIGTERM (or a closed terminal) unwinds like Ctrl-C: every process this
    # benchmark started is stopped on the way out.
    interrupt_on(signal.SIGTERM, signal.SIGHUP)
    with Bench(args) as bench:
        print(f"victim runs {len(bench.victim_ids)} of {args.children} children", flush=True)
        for run in range(args.runs):
            before = bench.fences()
            results["floor"].append(bench.floor())
            results["failover"].append(bench.failover())
            results["graceful"].append(bench.graceful())
            fo, gr = results["failover"][-1], results["graceful"][-1]
            fenced = bench.fences() - before
            results.setdefault("fenced_runs", []).append(fenced)
            print(
                f"run {run + 1}: floor {results['floor'][-1]:.2f} s, failover "
                f"{fo['total']:.2f} s ({fo['children']} children), graceful "
                f"{gr['total'] * 1000:.0f} ms; self-fencing events {fenced}, "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        results["fences"] = {
            name: d.log.read_text().count("fencing node") for name, d in bench.daemons.items()
        }
        results["load"].append(os.getloadavg()[0])
    sizes = [int(n) for n in args.graceful_sizes.split(",") if n.strip()]
    results["sizes"] = {}
    for size in sizes:
        with Bench(argparse.Namespace(**{**vars(args), "children": size})) as bench:
            samples = [bench.graceful() for _ in range(args.runs)]
            results["sizes"][size] = samples
            print(
                f"{size} children: the victim ran {len(bench.victim_ids)}, graceful "
                + ", ".join(f"{s['total'] * 1000:.0f}" for s in samples) + " ms",
                flush=True,
            )  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    print(report(args, results))
    if results["sizes"]:
        print()
        print(report_sizes(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
