"""The cluster of ``bench.load``: a private etcd and three ``ringd start`` daemons
(``ringd.testing``), what they log and count (``/metrics``) per phase, the CPU
each process uses, and a profiler for one of them."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringd import procfs
from ringd.protocol import Client
from ringd.standalone import PrivateEtcd, free_port
from ringd.testing import Daemon, etcd3_client, kill_pids, marked_pids, wait_gone, wait_until
from ringd.testing.waiting import RETRY as _RETRY

from .common import ROOT, log

NODES = ("n1", "n2", "n3")
LEASE_TTL = 3.0
CHILDREN = 1000
SUBMITTERS = 6  # start_child client threads, two per socket
READERS = 50
FIND_SHARE = 0.8
SEED = 7
# Not RINGD_*: those names are reserved for ringd's own variables in a spec's env.
MARKER_VAR = "LOADBENCH_MARKER"
# ValueError too: a reply cut short by a daemon that died mid-answer.
RETRY = (*_RETRY, ValueError)


class Cluster:
    """A private etcd and three ``ringd start`` daemons under ``base``."""

    def __init__(self, base: Path, marker: bytes, *, lease_ttl: float = LEASE_TTL) -> None:
        self.base = base
        self.lease_ttl = lease_ttl
        self.marker = marker
        self.name = "load-" + secrets.token_hex(4)
        self.etcd = PrivateEtcd(base / "etcd", log_path=base / "etcd.log")
        self.daemons: dict[str, Daemon] = {}
        self.metrics_ports: dict[str, int] = {}
        self.guards: set[int] = set()

    @property
    def sockets(self) -> list[str]:
        return [str(self.base / f"{name}.sock") for name in NODES]

    @property
    def prefix(self) -> str:
        return f"/ringd/{self.name}/"

    def pids(self) -> dict[str, int]:
        pids = {name: d.pid for name, d in self.daemons.items()}
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
        daemon = self.daemons.get(name)
        if daemon is None:
            # The Prometheus endpoint (loopback) gives the lease keepalive round trips.
            port = self.metrics_ports.setdefault(name, free_port())
            config = self.base / f"{name}.toml"
            config.write_text(f'metrics_address = "127.0.0.1:{port}"\n')
            daemon = self.daemons[name] = Daemon(
                name,
                self.base,
                etcd=self.etcd.url,
                cluster=self.name,
                ttl=self.lease_ttl,
                config=config,
                # Our Ctrl-C must not reach them: stop() stops them in order.
                new_session=True,
                die_with_parent=True,
                cwd=ROOT,
            )
        daemon.spawn()

    def wait_online(self, name: str) -> None:
        daemon = self.daemons[name]

        def online() -> bool:
            daemon.check()
            status = Client(daemon.socket, timeout=5).call("status")
            return status["lease"] is not None and len(status["nodes_online"]) == len(NODES)

        wait_until(online, 60, f"{name} registered and seeing every node", 0.1, retry=RETRY)

    def restart_dead(self) -> list[str]:
        """Start again every daemon that has exited; returns their names."""
        dead = [name for name, d in self.daemons.items() if not d.running()]
        for name in dead:
            process = self.daemons[name].process
            log(f"restarting {name} (it exited with status {process and process.returncode})")
            self.spawn(name)
        for name in dead:
            self.wait_online(name)
        return dead

    def etcd_client(self) -> Any:
        return etcd3_client(self.etcd.url, timeout=10)

    def note_guards(self) -> None:
        """Remember each daemon's guard process (``python -m ringd.guard``), by pid."""
        for d in self.daemons.values():
            if guard := d.helpers().get("guard"):
                self.guards.add(guard)

    def stop(self) -> list[str]:
        """Stop everything started here; returns what went wrong (nothing, normally)."""
        problems: list[str] = []
        self.note_guards()
        running = [d for d in self.daemons.values() if d.running()]
        if running and self.etcd.process is not None and marked_pids(self.marker):
            # Deleting the specs makes the daemons stop their children themselves; a
            # daemon stopped first would hand its children over to the others instead.
            try:
                client = self.etcd_client()
                try:
                    client.delete_prefix(self.prefix + "children/")
                finally:
                    client.close()
                wait_until(lambda: not marked_pids(self.marker), 60, "children stopped", 0.2)
            except Exception as exc:
                problems.append(f"stopping the children through their specs: {exc!r}")
        for d in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGTERM)  # all of them first: they stop together
        deadline = time.monotonic() + 30
        for name, d in self.daemons.items():
            assert d.process is not None
            try:
                d.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                problems.append(f"daemon {name} (pid {d.pid}) ignored SIGTERM: killed")
                d.kill()
        # A guard leaves once its daemon has said goodbye or died; give it a moment.
        for pid in wait_gone(self.guards, 5):
            problems.append(f"guard process {pid} outlived its daemon: killed")
            kill_pids([pid])
        left = marked_pids(self.marker)
        if left:
            problems.append(f"{len(left)} children outlived their daemons: killed {left[:10]}")
            kill_pids(left)
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
        for name, d in self.cluster.daemons.items():
            proc = d.process
            if proc is not None and proc.poll() is not None and proc.pid not in self.exited:
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
        for name, d in self.cluster.daemons.items():
            try:
                now = self._scrape(name)
            except OSError:
                continue  # a dead daemon: Health reports it
            pid, before = self.last.get(name, (d.pid, {}))
            if pid != d.pid:
                before = {}
            self.last[name] = (d.pid, now)
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
        return running == len(rows) == n and len(marked_pids(cluster.marker)) == n

    # Twice in a row, a second apart: a cluster that converges only to fall apart
    # again (a fence storm) is not ready.
    deadline = time.monotonic() + timeout
    while True:
        left = max(deadline - time.monotonic(), 1)
        wait_until(converged, left, f"{n} children running", 0.5, retry=RETRY)
        time.sleep(1.0)
        if converged():
            return restarted


def local_running_count(cluster: Cluster) -> int:
    """Children in state running, summed over every daemon's own supervisor."""
    return sum(
        Client(sock, timeout=60).call("status")["children_local"].get("running", 0)
        for sock in cluster.sockets
    )


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
        # CPU seconds all cores have spent busy since boot
        now["machine"] = procfs.machine_ticks()[0] / procfs.CLOCK_TICKS
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 if it is gone."""
    try:
        return procfs.cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return 0.0


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
