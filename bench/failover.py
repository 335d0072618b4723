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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ringd import etcdpb  # noqa: F401 - before etcd3 (see ringd.etcdpb)

# isort: split
import etcd3
import grpc
from etcd3 import etcdrpc

from ringd.protocol import Client, RemoteError, Unreachable
from ringd.standalone import PrivateEtcd

SLEEP = shutil.which("sleep") or "/usr/bin/sleep"


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except (Unreachable, RemoteError, OSError):
            result = None
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


# -- processes ---------------------------------------------------------------------


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (through each thread's ``children`` file)."""
    out: set[int] = set()
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for kid in kids:
                if kid not in out:
                    out.add(kid)
                    stack.append(kid)
    return out


def cpu_ms(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat, ns resolution); 0 if gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    total = 0
    for tid in tids:
        path = f"/proc/{pid}/task/{tid}/schedstat"
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as f:
            total += int(f.read().split()[0])
    return total / 1e6


def machine_busy() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU so far (/proc/stat)."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def handoff_floor(children: int, spawners: int) -> float:
    """``bench.handoff_floor``: stop ``children`` and start as many in ``spawners``
    processes, nothing else (seconds)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.handoff_floor", "--children", str(children),
         "--spawners", str(spawners)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return float(json.loads(out.stdout)["total"])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def scan(marker: bytes) -> dict[int, tuple[str, str]]:
    """Live children of this benchmark's daemons: pid -> (child id, node)."""
    found = {}
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if marker not in raw:
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        if b"RINGD_CHILD_ID" in env and alive(pid):
            found[pid] = (env[b"RINGD_CHILD_ID"].decode(), env[b"RINGD_NODE"].decode())
    return found


def placement(marker: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for child_id, node in scan(marker).values():
        out.setdefault(child_id, []).append(node)
    return out


# -- etcd --------------------------------------------------------------------------


class Watcher:
    """Every event under a prefix, stamped with time.monotonic() on receipt."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.events: list[tuple[float, str, str, bool, bytes]] = []  # t, kind, key, created, value
        self._lock = threading.Lock()
        self._stop = threading.Event()
        start = prefix.encode()
        end = etcd3.utils.increment_last_byte(start)

        def requests() -> Any:
            create = etcdrpc.WatchCreateRequest(key=start, range_end=end)
            yield etcdrpc.WatchRequest(create_request=create)
            self._stop.wait()

        self._call = etcdrpc.WatchStub(client.channel).Watch(requests())
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _pump(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self._call:
                now = time.monotonic()
                self._ready.set()
                with self._lock:
                    for e in response.events:
                        kind = "delete" if e.type == e.DELETE else "put"
                        created = e.kv.create_revision == e.kv.mod_revision
                        self.events.append((now, kind, e.kv.key.decode(), created, e.kv.value))

    def since(self, t: float) -> list[tuple[float, str, str, bool, bytes]]:
        with self._lock:
            return [e for e in self.events if e[0] >= t]

    def after(self, cursor: int) -> tuple[list[tuple[float, str, str, bool, bytes]], int]:
        """The events from index ``cursor`` on, and the cursor for the next call."""
        with self._lock:
            return self.events[cursor:], len(self.events)

    def close(self) -> None:
        self._stop.set()
        self._call.cancel()
        self._thread.join(5)


def etcd_floor(client: Any, watcher: Watcher, prefix: str, ttl: int) -> float:
    """Last keepalive (sent) -> DELETE of a key under a plain lease, at a watcher."""
    lease = client.lease(ttl)
    key = f"{prefix}{uuid.uuid4().hex}"
    client.put(key, b"x", lease=lease)
    time.sleep(random.uniform(0, 0.5))
    sent = time.monotonic()
    for _ in client.refresh_lease(lease.id):
        break
    seen = wait_for(
        lambda: next((e[0] for e in watcher.since(sent) if e[1:3] == ("delete", key)), None),
        ttl + 5,
        "lease expiry",
    )
    return float(seen - sent)


# -- daemons -----------------------------------------------------------------------


class Daemon:
    def __init__(
        self, name: str, base: Path, etcd: str, cluster: str, ttl: float, log_level: str
    ) -> None:
        self.name = name
        self.socket = str(base / f"{name}.sock")
        self.log = base / f"{name}.log"
        self.cmd = [
            sys.executable, "-m", "ringd", "start", "--name", name, "--etcd", etcd,
            "--cluster", cluster, "--socket", self.socket, "--state-dir", str(base / name),
            "--lease-ttl", str(ttl), "--log-level", log_level,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        wait_for(self.ready, 30, f"{self.name} ready", interval=0.05)

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
        return bool(self.call("status")["lease"])

    def call(self, op: str, **args: Any) -> Any:
        return Client(self.socket, timeout=30).call(op, **args)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# -- the runs ----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ttl = args.ttl
        self.base = Path(tempfile.mkdtemp(prefix="rbf-", dir="/tmp"))
        self.cluster = "bench" + uuid.uuid4().hex[:8]
        self.marker = f"BENCH_CLUSTER={self.cluster}".encode()
        self.prefix = f"/ringd/{self.cluster}/"
        self.etcd = PrivateEtcd(self.base / "etcd", log_path=self.base / "etcd.log")
        self.daemons: dict[str, Daemon] = {}
        self.client: Any = None
        self.watcher: Watcher | None = None
        self.floor_watcher: Watcher | None = None
        self.ids = [f"c{i:03d}" for i in range(args.children)]

    # setup / teardown

    def __enter__(self) -> Bench:
        self.etcd.start()
        host, port = self.etcd.url.removeprefix("http://").split(":")
        self.client = etcd3.client(host=host, port=int(port))
        self.watcher = Watcher(self.client, self.prefix)
        self.floor_watcher = Watcher(self.client, "/bench-floor/")
        names = ["v"] + [f"s{i}" for i in range(1, self.args.nodes)]
        for name in names:
            self.daemons[name] = Daemon(
                name, self.base, self.etcd.url, self.cluster, self.ttl, self.args.log_level
            )
            self.daemons[name].start()
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
        return self

    def __exit__(self, *exc: object) -> None:
        for d in self.daemons.values():
            d.kill()
        for pid in scan(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for w in (self.watcher, self.floor_watcher):
            if w is not None:
                w.close()
        if self.client is not None:
            self.client.close()
        self.etcd.stop()
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

        mine: set[str] = wait_for(done, 180, "every child running once", interval=0.05)
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
        wait_for(lambda: not any(alive(p) for p in pids), 10, "victim's children dead")
        gone = time.monotonic() - t0
        wait_for(lambda: self.running_elsewhere(ids), self.ttl + 60, "failover")
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
        victim.start()
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
            "victim": [victim.process.pid, *self.guards(victim.process.pid)],
            "survivors": survivors,
            "etcd": [self.etcd.process.pid] if self.etcd.process else [],
            "benchmark": [os.getpid()],
        }
        cpu_before = {k: sum(cpu_ms(p) for p in ps) for k, ps in accounts.items()}
        busy_before = machine_busy()
        exited = float("nan")
        t0 = time.monotonic()
        running = self.running_tracker(t0, ids)
        victim.signal(signal.SIGTERM)
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
        busy_after = machine_busy()
        cpu = {k: sum(cpu_ms(p) for p in ps) - cpu_before[k] for k, ps in accounts.items()}
        for k, ps in accounts.items():
            if not all(os.path.exists(f"/proc/{p}") for p in ps):
                cpu[k] = float("nan")  # one exited before the last child was up: unknown
        wait_for(lambda: self.running_elsewhere(ids), 30, "processes running elsewhere")
        # The new children's own start-up (exec, dynamic loading): all of their CPU.
        cpu["children"] = sum(cpu_ms(p) for p, (i, n) in scan(self.marker).items() if i in ids)
        down = self.released_at(t0, ids)
        downtimes = sorted(up[i] - down.get(i, t0) for i in ids)
        assert victim.wait() == 0, victim.log.read_text()[-3000:]
        if exited != exited:
            exited = time.monotonic() - t0
        dead = [p for p in pids if not alive(p)]
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
        victim.start()
        self.victim_ids = self.settle()
        return stamps

    @staticmethod
    def guards(daemon: int) -> list[int]:
        """The daemon's guard process (``python -m ringd.guard``), by pid."""
        found = []
        for pid in descendants(daemon):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"ringd.guard" in f.read():
                    found.append(pid)
        return found

    def fences(self) -> int:
        """Self-fencing events so far, all daemons (their logs)."""
        return sum(d.log.read_text().count("fencing node") for d in self.daemons.values())

    def floor(self) -> float:
        assert self.floor_watcher is not None
        return etcd_floor(self.client, self.floor_watcher, "/bench-floor/", int(self.ttl))


def spread(values: list[float], unit: float = 1.0, fmt: str = "{:.2f}") -> str:
    values = [v * unit for v in values if v == v]  # nan: not measured in that run
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    ttl = args.ttl
    fo, gr, floor = results["failover"], results["graceful"], results["floor"]
    n = statistics.median(s["children"] for s in fo)

    def col(
        samples: list[dict[str, float]], key: str, unit: float = 1.0, fmt: str = "{:.2f}"
    ) -> str:
        return spread([s[key] for s in samples], unit, fmt)

    ms = {"unit": 1000.0, "fmt": "{:.0f}"}
    ratio = statistics.median(s["total"] / ttl for s in fo)
    rows = [
        (
            "failover: SIGKILL -> all the victim's children running elsewhere",
            f"**{col(fo, 'total')} s** = **{ratio:.2f} x TTL** (TTL {ttl:g} s; "
            f"target TTL + 1 s = {(ttl + 1) / ttl:.2f} x TTL)",
        ),
        (
            "etcd floor, same run: last keepalive -> DELETE at a watcher (plain lease)",
            f"**{spread(floor)} s** = {statistics.median(floor) / ttl:.2f} x TTL",
        ),
        ("failover: SIGKILL -> the victim's children dead (its guard)",
         f"{col(fo, 'children_dead', **ms)} ms"),
        ("failover: SIGKILL -> the victim's alive key DELETE seen (lease expiry)",
         f"{col(fo, 'alive_deleted')} s"),
        ("failover: SIGKILL -> survivors' first / last claim created",
         f"{col(fo, 'first_claim')} / {col(fo, 'last_claim')} s"),
        (
            "graceful: SIGTERM -> all the victim's children published running elsewhere",
            f"**{col(gr, 'total', **ms)} ms** (target < 100 ms)",
        ),
        (
            "graceful: each child's handoff (victim's claim deleted -> a survivor's "
            "claim published running), median / p95 / max",
            f"**{col(gr, 'downtime_median', **ms)}** / {col(gr, 'downtime_p95', **ms)} / "
            f"{col(gr, 'downtime_max', **ms)} ms",
        ),
        (
            "graceful: the same move with nothing of ringd's, same run "
            "(`bench.handoff_floor`: SIGTERM and reap the children, then "
            f"{args.nodes - 1} processes `posix_spawn` as many)",
            f"{col(gr, 'floor', **ms)} ms; the handoff took "
            f"**{statistics.median(s['total'] / s['floor'] for s in gr):.2f} x** this floor",
        ),
        (
            "graceful: CPU used from SIGTERM to the last child published, ms: victim "
            "(and its guard) / survivors / etcd / the new children / this benchmark",
            " / ".join(
                col(gr, f"cpu_{k}", fmt="{:.0f}")
                for k in ("victim", "survivors", "etcd", "children", "benchmark")
            )
            + f"; all {os.cpu_count()} CPUs busy {col(gr, 'busy', unit=100, fmt='{:.0f}')} %",
        ),
        ("graceful: SIGTERM -> first / last claim released by the victim",
         f"{col(gr, 'first_release', **ms)} / {col(gr, 'last_release', **ms)} ms"),
        ("graceful: SIGTERM -> status row 'offline' written",
         f"{col(gr, 'status_offline', **ms)} ms"),
        ("graceful: SIGTERM -> out of the ring (alive key DELETE seen)",
         f"{col(gr, 'lease_revoked', **ms)} ms"),
        ("graceful: SIGTERM -> survivors' first / last claim created",
         f"{col(gr, 'first_claim', **ms)} / {col(gr, 'last_claim', **ms)} ms"),
        ("graceful: SIGTERM -> the victim daemon exited", f"{col(gr, 'daemon_exited', **ms)} ms"),
    ]  # fmt: skip
    lines = [
        f"Command: `python -m bench.failover --runs {args.runs} --nodes {args.nodes} "
        f"--children {args.children} --ttl {args.ttl:g}` ({results['when']}, "
        f"{results['machine']}; load average {results['load'][0]:.1f} before, "
        f"{results['load'][1]:.1f} after). Medians of {args.runs} runs, range in "
        f"brackets; the victim ran {n:.0f} children (`sleep`), {args.nodes - 1} survivors. "
        f"Self-fencing events (daemon logs): {results['fences']} in all, "
        f"{results['fenced_runs']} per run.",
        "",
        "| what | figure |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in rows),
    ]
    return "\n".join(lines)


def report_sizes(args: argparse.Namespace, results: dict[str, Any]) -> str:
    """Graceful handoff against the victim's number of children (and the floor)."""
    rows = []
    for size, samples in sorted([*results["sizes"].items(), (args.children, results["graceful"])]):
        n = statistics.median(s["children"] for s in samples)
        ratio = statistics.median(s["total"] / s["floor"] for s in samples)
        rows.append(
            f"| {n:.0f} (of {size}) | **{spread([s['total'] for s in samples], 1000, '{:.0f}')}**"
            f" | {spread([s['floor'] for s in samples], 1000, '{:.0f}')} | {ratio:.2f} x"
            f" | {spread([s['busy'] for s in samples], 100, '{:.0f}')} % |"
        )  # fmt: skip
    return "\n".join(
        [
            f"Graceful leave against the victim's number of children ({args.runs} runs each; "
            "the floor is `bench.handoff_floor` in the same run):",
            "",
            "| victim's children | SIGTERM -> all published running elsewhere, ms "
            "| floor, ms | handoff / floor | CPUs busy |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )


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

    # A SIGTERM (or a closed terminal) unwinds like an exception: every process
    # this benchmark started is stopped on the way out.
    def leave(signum: int, frame: object) -> None:
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # a second one must not cut the cleanup short
        sys.exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, leave)
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
