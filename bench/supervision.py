"""Supervision benchmark: ringd next to the trio floors and supervisord, in one run.

    .venv/bin/python -m bench.supervision [--quick] [--no-write] [--keep] [--seed N]

Every system supervises the same child, a tiny C probe compiled here (``probe.c``;
static if gcc can, else dynamic, else ``probe.py``), which writes
``TAG PID CLOCK_MONOTONIC-ns`` into one FIFO as the first thing it does and then
sleeps. Restart latency is the replacement's stamp minus the time the bench sent
SIGKILL to its predecessor, so no supervisor's API or log is trusted for it.

Systems: ringd (a real ``ringd start`` in standalone mode: its own private etcd,
children started through the control socket), the trio floor (``open_process`` +
``await wait()`` in a loop, ``bench/floor.py trio``), the spawn floor
(``posix_spawn`` + pidfd like ringd, ``bench/floor.py spawn``) and supervisord
(PyPI ``supervisor``, generated config, ``autorestart=true``, ``startsecs=0``).

Phases: (1) restart latency, N=1 and N=10, the systems interleaved round by round
with a U(0, 1 s) pause before every kill (no phase-locking with a poll timer);
(2) fresh instances with 100 children: RSS; (3) fresh instances started with
1,000 children: time to start, RSS, then idle CPU of all of them over the same
30 s; (4) a restart storm per system (SIGKILL all 1,000 children at once).

If a daemon under test dies, the bench says so (with the exception from its log),
reruns that step on a fresh instance (at most twice) and reports the crash.

A full run writes the table into BENCHMARKS.md under "## Supervision".
Every process started here is stopped by pid in a ``finally`` (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ringd.protocol import MAX_BATCH, Client, RemoteError, Unreachable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
SYSTEMS = ["ringd", "trio floor", "spawn floor", "supervisord"]
PREFIX = {"ringd": "r", "trio floor": "t", "spawn floor": "s", "supervisord": "v"}
START_CONCURRENCY = 8  # start_child calls in flight (one socket connection each)
PER_CALL = "ringd, a call each"  # ringd started by one start_child call per child
ATTEMPTS = 3  # a step whose daemon crashed is rerun on a fresh instance, this many times in all
# Targets from issue 3.
LATENCY_RATIO = 2.0
START_RATIO = 0.5
PER_CHILD_KIB = 8.0
RSS_MIB = 60.0
STORM_S = 1.5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Crashed(RuntimeError):
    """A daemon under test died."""


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float,
    alive: Callable[[], None] = lambda: None,
) -> Any:
    """Poll ``predicate`` until truthy; ``alive`` raises Crashed if the daemon died."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        try:
            result = predicate()
        except (Unreachable, RemoteError, OSError, xmlrpc.client.Error):
            alive()
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- the probe and its stamps ------------------------------------------------------------


class Stamps:
    """Reads every probe's ``TAG PID NS`` line from one FIFO (in a thread)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o600)
        self.path = str(path)
        self._rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the reader from seeing EOF between probes.
        self._wfd = os.open(path, os.O_WRONLY)
        os.set_blocking(self._rfd, True)
        self._cond = threading.Condition()
        self.latest: dict[str, tuple[int, int]] = {}  # tag -> (pid, ns)
        self._thread = threading.Thread(target=self._read, name="stamps", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._rfd, 1 << 16):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            with self._cond:
                for line in lines:
                    tag, pid, ns = line.decode().split()
                    self.latest[tag] = (int(pid), int(ns))
                self._cond.notify_all()

    def pid(self, tag: str) -> int:
        with self._cond:
            return self.latest[tag][0]

    def wait_all(
        self,
        tags: Iterable[str],
        timeout: float,
        old: dict[str, int] | None = None,
        alive: Callable[[], None] = lambda: None,
    ) -> dict[str, tuple[int, int]]:
        """Wait until every tag has a stamp from a pid other than ``old[tag]``.

        Returns (pid, ns) per tag. Raises TimeoutError (naming how many are
        missing), or whatever ``alive`` raises (checked every 0.25 s).
        """
        old = old or {}
        missing = set(tags)
        found: dict[str, tuple[int, int]] = {}
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                for tag in list(missing):
                    stamp = self.latest.get(tag)
                    if stamp is not None and stamp[0] != old.get(tag):
                        found[tag] = stamp
                        missing.discard(tag)
                if not missing:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(missing)} children not (re)started in {timeout:g} s")
                self._cond.wait(min(left, 0.25))
            alive()

    def close(self) -> None:
        os.close(self._wfd)
        self._thread.join(2)
        if not self._thread.is_alive():
            os.close(self._rfd)


def build_probe(tmp: Path, stamps: Stamps) -> tuple[list[str], str]:
    """Compile probe.c (static, else dynamic); fall back to probe.py. Smoke-test it."""
    candidates: list[tuple[list[str], str]] = []
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        for flags, kind in ((["-O2", "-static"], "C probe, static"), (["-O2"], "C probe, dynamic")):
            out = tmp / ("probe-static" if "-static" in flags else "probe")
            built = subprocess.run(
                [gcc, *flags, "-o", str(out), str(HERE / "probe.c")],
                capture_output=True,
                check=False,
            )
            if built.returncode == 0:
                candidates.append(([str(out)], kind))
    shutil.copy(HERE / "probe.py", tmp / "probe.py")
    candidates.append(([sys.executable, str(tmp / "probe.py")], "Python probe (+6-7 ms/restart)"))
    for i, (command, kind) in enumerate(candidates):
        tag = f"smoke.{i}"
        proc = subprocess.Popen([*command, stamps.path, tag], stdin=subprocess.DEVNULL)
        try:
            stamps.wait_all([tag], 5)
        except TimeoutError:
            continue
        finally:
            proc.kill()
            proc.wait()
        return command, kind
    raise RuntimeError("no probe works (not even probe.py)")


# -- the systems ---------------------------------------------------------------------------


def last_exception(path: Path) -> str:
    """The exception that ended a daemon, from the traceback at the end of its log:
    the final one, its root cause and the ringd frame that raised the root cause."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    logged = [i for i, line in enumerate(lines) if re.match(r"\d{4}-\d\d-\d\d ", line)]
    block = lines[logged[-1] + 1 :] if logged else lines
    exc = re.compile(r"^[\s|+-]*((?:\w+\.)*\w*(?:Error|Exception|Interrupt|Exit)\b.*)$")
    frame = re.compile(r'File "[^"]*/(ringd/[^"]+)", line (\d+), in (\S+)')
    root = final = where = ""
    for line in block:
        if m := frame.search(line):
            if not root:
                where = f"{m.group(1)}:{m.group(2)} in {m.group(3)}"
        elif (
            (m := exc.match(line))
            and "Traceback" not in line
            and not m.group(1).startswith(("ExceptionGroup", "BaseExceptionGroup"))
        ):
            root = root or m.group(1)
            final = m.group(1)
    if not final:
        return "no traceback at the end of its log"
    return f"{final} (root cause: {root}" + (f", raised at {where})" if where else ")")


class Instance:
    """One supervisor process under test, with children tagged ``prefix.i``."""

    system = ""

    def __init__(self, bench: Bench, prefix: str) -> None:
        self.bench = bench
        self.prefix = prefix
        self.tags: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.launched = 0.0  # monotonic time of the launch
        self.log = bench.tmp / f"{prefix}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def helpers(self) -> dict[str, int]:
        """Other long-lived processes that belong to the system (name -> pid)."""
        return {}

    def check(self) -> None:
        """Raise Crashed if the daemon has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise Crashed(
                f"{self.system} ({self.prefix}) exited with status {self.process.returncode}: "
                + last_exception(self.log)
            )

    def _popen(self, argv: list[str]) -> None:
        with open(self.log, "ab") as out:
            self.launched = time.monotonic()
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C is for the bench, which cleans up
            )
        self.bench.instances.append(self)

    def stop(self) -> None:
        """Stop the daemon and every child it has, by pid."""
        if self.process is None or self.process.poll() is not None:
            return
        hard_stop(self.process, self.helpers())


def hard_stop(process: subprocess.Popen[bytes], helpers: dict[str, int]) -> None:
    """Freeze the daemon (no more respawns), SIGKILL its children and helpers, then it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGSTOP)
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for pid in {c.pid for c in children} | set(helpers.values()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.kill()  # a stopped process dies of SIGKILL too
    process.wait()


class Floor(Instance):
    """``bench/floor.py``: a bare trio respawn loop (``trio`` or ``spawn`` mode)."""

    def __init__(self, bench: Bench, mode: str, prefix: str, n: int) -> None:
        super().__init__(bench, prefix)
        self.mode = mode
        self.system = f"{mode} floor"
        self.tags = [f"{prefix}.{i}" for i in range(n)]

    def start(self) -> None:
        argv = [sys.executable, "-m", "bench.floor", self.mode, str(len(self.tags))]
        self._popen([*argv, self.bench.stamps.path, self.prefix, *self.bench.probe])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # it kills its children
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            hard_stop(self.process, {})


class Supervisord(Instance):
    """supervisord with a generated config of ``n`` programs (defaults but for
    ``autorestart=true`` and ``startsecs=0``)."""

    system = "supervisord"

    def __init__(self, bench: Bench, prefix: str, n: int) -> None:
        super().__init__(bench, prefix)
        self.tags = [f"{prefix}.{i}" for i in range(n)]
        self.dir = bench.tmp / prefix
        self.socket = self.dir / "s.sock"

    def start(self) -> None:
        self.dir.mkdir()
        (self.dir / "logs").mkdir()
        command = " ".join([*self.bench.probe, self.bench.stamps.path])
        lines = [
            "[unix_http_server]",
            f"file={self.socket}",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={self.dir / 'supervisord.log'}",
            f"pidfile={self.dir / 'supervisord.pid'}",
            f"childlogdir={self.dir / 'logs'}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        ]
        for i, tag in enumerate(self.tags):
            lines += [f"[program:p{i}]", f"command={command} {tag}"]
            lines += ["autorestart=true", "startsecs=0"]
        conf = self.dir / "supervisord.conf"
        conf.write_text("\n".join(lines) + "\n")
        supervisord = Path(sys.executable).with_name("supervisord")
        self._popen([str(supervisord), "-c", str(conf)])

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def running(self) -> int:
        infos = self.rpc().supervisor.getAllProcessInfo()
        return sum(1 for info in infos if info["statename"] == "RUNNING")

    def running_at(self) -> float | None:
        """Monotonic time of the last "entered RUNNING state" in supervisord's own log
        (None unless every program has one)."""
        pattern = re.compile(
            r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO success: (p\d+) entered RUNNING"
        )
        seen: dict[str, float] = {}
        with contextlib.suppress(OSError), open(self.dir / "supervisord.log") as f:
            for line in f:
                if m := pattern.match(line):
                    wall = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
                    seen.setdefault(m.group(3), wall + int(m.group(2)) / 1000)
        if len(seen) < len(self.tags):
            return None
        return max(seen.values()) - self.bench.wall_offset


class Ringd(Instance):
    """A real ``ringd start`` in standalone mode (it runs a private etcd)."""

    system = "ringd"

    def __init__(self, bench: Bench, prefix: str) -> None:
        super().__init__(bench, prefix)
        self.dir = bench.tmp / prefix
        self.socket = str(self.dir / "s.sock")
        self._helpers: dict[str, int] = {}
        self.startup = math.nan

    def call(self, op: str, **args: Any) -> Any:
        try:
            return Client(self.socket, timeout=120).call(op, **args)
        except (Unreachable, OSError):
            # A dying daemon closes its socket before it exits: that is a crash, not a
            # network error.
            assert self.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(3)
            self.check()
            raise

    def start(self) -> None:
        self.dir.mkdir()
        argv = [sys.executable, "-m", "ringd", "start", "--name", "bench"]
        argv += ["--socket", self.socket, "--state-dir", str(self.dir / "state")]
        self._popen(argv)
        wait_until(lambda: self.call("status")["lease"], 60, "ringd ready", 0.05, self.check)
        self.startup = time.monotonic() - self.launched
        for child in psutil.Process(self.pid).children():
            cmdline = child.cmdline()
            if "ringd.guard" in cmdline:
                self._helpers["guard"] = child.pid
            elif cmdline and os.path.basename(cmdline[0]) == "etcd":
                self._helpers["etcd"] = child.pid

    def helpers(self) -> dict[str, int]:
        return dict(self._helpers)

    def spec(self, tag: str) -> dict[str, Any]:
        # Default intensity is 3 restarts in 5 s: far too few for a benchmark.
        argv = [*self.bench.probe, self.bench.stamps.path, tag]
        return {"id": tag, "argv": argv, "max_restarts": 10_000, "max_seconds": 1}

    def add(self, count: int, *, per_call: bool = False) -> float:
        """Start ``count`` more children through the socket: as ``ringctl
        start-children FILE`` does (one ``start_children`` request per 1,000 specs),
        or with ``per_call`` one ``start_child`` each, 8 in flight. Returns when every
        call has been answered (monotonic time)."""
        new = [f"{self.prefix}.{i}" for i in range(len(self.tags), len(self.tags) + count)]
        self.tags += new
        if per_call:
            with ThreadPoolExecutor(START_CONCURRENCY) as pool:
                list(pool.map(lambda tag: self.call("start_child", spec=self.spec(tag)), new))
        else:
            for start in range(0, count, MAX_BATCH):
                specs = [self.spec(tag) for tag in new[start : start + MAX_BATCH]]
                self.call("start_children", specs=specs)
        return time.monotonic()

    def running(self) -> int:
        return int(self.call("status")["children_local"].get("running", 0))

    def settle(self, quiet: float = 2.0, timeout: float = 120.0) -> float:
        """Wait until every child runs (returns that moment, monotonic) and then until
        etcd has been quiet for ``quiet`` s (the claims, with state and pid, are
        published)."""
        n = len(self.tags)
        wait_until(lambda: self.running() == n, timeout, "ringd: all running", 0.05, self.check)
        running = time.monotonic()
        deadline = running + timeout
        revision, since = self.call("status")["revision"], time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.call("status")["revision"]
            if now != revision:
                revision, since = now, time.monotonic()
        return running

    def stop(self) -> None:
        """SIGTERM (stops the children, releases the claims, stops etcd); hard stop
        after 30 s."""
        if self.process is None or self.process.poll() is not None:
            self.stop_helpers()
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            log(f"{self.prefix}: ringd did not stop within 30 s; killing it")
            hard_stop(self.process, self.helpers())
        self.stop_helpers()

    def stop_helpers(self) -> None:
        for pid in self.helpers().values():
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    os.kill(pid, signal.SIGKILL)


# -- measurements --------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
        self.stamps = Stamps(self.tmp / "stamps")
        self.wall_offset = time.time() - time.monotonic()
        self.instances: list[Instance] = []
        self.probe: list[str] = []
        self.probe_kind = ""
        self.results: dict[Any, Any] = {}
        self.crashes: list[str] = []
        self._generation = 0

    def load(self, phase: str) -> None:
        """Note the load average (1 min) as a phase starts: the machine is shared."""
        self.results.setdefault("load", {})[phase] = os.getloadavg()[0]

    def crashed(self, step: str, exc: Crashed) -> None:
        self.crashes.append(f"{step}: {exc}")
        log(f"CRASH during {step}: {exc}")

    # -- restart latency -------------------------------------------------------------

    def sample(self, inst: Instance) -> float | None:
        """Kill one random child after a U(0, 1 s) pause; ms until its replacement ran."""
        tag = self.rng.choice(inst.tags)
        old = self.stamps.pid(tag)
        time.sleep(self.rng.uniform(0.0, 1.0))
        inst.check()
        killed = time.monotonic_ns()
        os.kill(old, signal.SIGKILL)
        try:
            stamp = self.stamps.wait_all([tag], 10, {tag: old}, inst.check)[tag]
        except TimeoutError:
            log(f"{inst.system}: no replacement for {tag} within 10 s")
            return None
        return (stamp[1] - killed) / 1e6

    def fresh_ringd(self, n: int, prefix: str) -> Ringd:
        """A new ringd daemon running ``n`` children, settled."""
        self._generation += 1
        ringd = Ringd(self, f"{prefix}{self._generation}")
        ringd.start()
        ringd.add(n)
        self.stamps.wait_all(ringd.tags, 300, alive=ringd.check)
        ringd.settle(quiet=1.0)
        return ringd

    def phase_latency(self) -> None:
        many, few = (8, 3) if self.quick else (30, 8)
        log(f"restart latency: {many} samples per system and N ({few} for supervisord)")
        self.load("latency")
        ringd = self.fresh_ringd(1, "rl")
        self.results["ringd_startup"] = ringd.startup
        for n in (1, 10):
            if n > 1:
                ringd.add(n - 1)
                self.load("latency N=10")
            floors = [Floor(self, "trio", f"tl{n}", n), Floor(self, "spawn", f"sl{n}", n)]
            sup = Supervisord(self, f"vl{n}", n)
            for inst in [*floors, sup]:
                inst.start()
            for inst in [ringd, *floors, sup]:
                self.stamps.wait_all(inst.tags, 60, alive=inst.check)
            ringd.settle(quiet=1.0)
            plan = {ringd.system: many, "trio floor": many, "spawn floor": many, sup.system: few}
            live: dict[str, Instance] = {"ringd": ringd, "trio floor": floors[0]}
            live |= {"spawn floor": floors[1], "supervisord": sup}
            samples: dict[str, list[float]] = {system: [] for system in plan}
            lost = dict.fromkeys(plan, 0)
            # Round robin, random order per round: drift on a shared machine hits all alike.
            for r in range(max(plan.values())):
                todo = [system for system, count in plan.items() if r < count]
                self.rng.shuffle(todo)
                for system in todo:
                    try:
                        ms = self.sample(live[system])
                    except Crashed as exc:
                        if system != "ringd":
                            raise
                        self.crashed(f"restart latency N={n}", exc)
                        ringd.stop()
                        ringd = self.fresh_ringd(n, "rl")
                        live["ringd"] = ringd
                        ms = None
                    if ms is None:
                        lost[system] += 1
                    else:
                        samples[system].append(ms)
            for system, values in samples.items():
                self.results[("latency", n, system)] = values
                self.results[("latency_lost", n, system)] = lost[system]
                if values:
                    log(
                        f"  N={n:<2} {system:<12} median {statistics.median(values):8.3f} ms"
                        f"  p95 {percentile(values, 95):8.3f} ms  ({len(values)} samples)"
                    )
            for inst in [*floors, sup]:
                inst.stop()
        ringd.stop()

    # -- 100 and 1,000 children ------------------------------------------------------

    def start_instance(self, system: str, n: int, prefix: str) -> tuple[Instance, dict[str, float]]:
        """A fresh instance of ``system`` started with ``n`` children, settled.

        Returns it and its start timings (s from the first start request, or from
        launch): all exec'd (probe stamps), all reported running by the system.
        The RSS is measured before anything asks the system for a status list.
        """
        inst: Instance
        if system in ("ringd", PER_CALL):
            for attempt in range(ATTEMPTS):
                self._generation += 1
                ringd = Ringd(self, f"{prefix}{self._generation}")
                try:
                    ringd.start()
                    t0 = time.monotonic()
                    answered = ringd.add(n, per_call=system == PER_CALL)
                    stamps = self.stamps.wait_all(ringd.tags, 300, alive=ringd.check)
                    running = ringd.settle()
                    settled = time.monotonic() - 2.0  # minus the quiet period
                    rss = rss_mib(ringd.pid)
                    break
                except Crashed as exc:
                    self.crashed(f"start {n} (attempt {attempt + 1})", exc)
                    ringd.stop()
                    if attempt + 1 == ATTEMPTS:
                        raise
            executed = max(ns for _, ns in stamps.values()) / 1e9
            timings = {
                "answered": answered - t0,
                "exec": executed - t0,
                "running": running - t0,
                "settled": settled - t0,
                "startup": ringd.startup,
                "rss": rss,
            }
            return ringd, timings
        if system == "supervisord":
            inst = Supervisord(self, f"{prefix}", n)
        else:
            inst = Floor(self, system.split()[0], f"{prefix}", n)
        inst.start()
        t0 = inst.launched
        stamps = self.stamps.wait_all(inst.tags, 300, alive=inst.check)
        executed = max(ns for _, ns in stamps.values()) / 1e9
        time.sleep(1.0)
        timings = {"exec": executed - t0, "running": executed - t0, "rss": rss_mib(inst.pid)}
        if isinstance(inst, Supervisord):
            sup = inst
            t = time.monotonic()
            wait_until(lambda: sup.running() == n, 60, "supervisord: all RUNNING", 0.2, sup.check)
            timings["rpc"] = time.monotonic() - t  # one getAllProcessInfo, usually
            at = sup.running_at()
            timings["running"] = (at if at is not None else math.nan) - t0
        return inst, timings

    def phase_rss100(self) -> None:
        """Fresh instances with 100 children, all at once (only their RSS is measured)."""
        log("100 children: fresh instances, RSS")
        self.load("RSS@100")
        others = [
            Floor(self, "trio", "th", 100),
            Floor(self, "spawn", "sh", 100),
            Supervisord(self, "vh", 100),
        ]
        for inst in others:
            inst.start()
        ringd, timings = self.start_instance("ringd", 100, "rh")
        self.results[("rss", 100, "ringd")] = timings["rss"]
        for name, pid in ringd.helpers().items():
            self.results[("rss", 100, f"ringd {name}")] = rss_mib(pid)
        for inst in others:
            self.stamps.wait_all(inst.tags, 120, alive=inst.check)
        time.sleep(1.0)
        for inst in others:
            self.results[("rss", 100, inst.system)] = rss_mib(inst.pid)
        for inst in [ringd, *others]:
            log(f"  {inst.system:<12} RSS@100 {self.results[('rss', 100, inst.system)]:6.1f} MiB")
            inst.stop()

    def thousand(self, system: str) -> Instance:
        inst, timings = self.start_instance(system, 1000, f"{PREFIX[system]}k")
        self.results[("start", 1000, system)] = timings
        self.results[("rss", 1000, system)] = timings["rss"]
        for name, pid in inst.helpers().items():
            self.results[("rss", 1000, f"ringd {name}")] = rss_mib(pid)
        log(
            f"  {system:<12} all exec'd {timings['exec']:6.2f} s, running"
            f" {timings['running']:6.2f} s, RSS@1000 {timings['rss']:6.1f} MiB"
        )
        return inst

    def phase_thousand(self) -> dict[str, Instance]:
        log("1,000 children: fresh instances, time to start, RSS")
        self.load("start 1,000")
        live = {system: self.thousand(system) for system in SYSTEMS}
        # The same 1,000 through one start_child call each: time only, then stopped.
        inst, timings = self.start_instance(PER_CALL, 1000, "rc")
        self.results[("start", 1000, PER_CALL)] = timings
        log(
            f"  {PER_CALL}: all exec'd {timings['exec']:6.2f} s, running {timings['running']:.2f} s"
        )
        assert inst.process is not None
        hard_stop(inst.process, inst.helpers())
        return live

    def resync_cost(self, ringd: Instance) -> float | None:
        """CPU seconds of one full re-list of ringd's keys (what its periodic resync
        reads), through the same etcd client, in this process: the resync falls
        outside most idle windows, so it is added to ringd's figure amortized."""
        try:
            importlib.import_module("ringd.etcdpb")  # before etcd3 (see ringd.etcdpb)
            import etcd3

            from ringd.config import Config
        except ImportError:
            return None
        status = ringd.call("status")  # type: ignore[attr-defined]
        host, _, port = status["etcd"].rpartition("//")[2].rpartition(":")
        client = etcd3.client(host=host, port=int(port))
        prefix = Config().key_prefix
        try:
            client.get_prefix_response(prefix)  # warm up the channel
            costs = []
            for _ in range(3):
                c0 = time.process_time()
                resp = client.get_prefix_response(prefix)
                costs.append(time.process_time() - c0)
            self.results["resync_keys"] = len(resp.kvs)
            return statistics.median(costs)
        finally:
            client.close()

    def phase_idle(self, live: dict[str, Instance]) -> None:
        # One figures publication (every 60 s) per window; the re-list (every 300 s)
        # is measured separately and amortized.
        window = 10.0 if self.quick else 60.0
        log(f"idle CPU with 1,000 children each: {window:g} s, all systems at once")
        self.load("idle")
        pids = {inst.system: inst.pid for inst in live.values()}
        for name, pid in live["ringd"].helpers().items():
            pids[f"ringd {name}"] = pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        for name, pid in pids.items():
            try:
                pct = 100 * (cpu_seconds(pid) - before[name]) / elapsed
            except psutil.Error:
                self.crashed("idle CPU", Crashed(f"{name} died during the idle window"))
                continue
            self.results[("idle", name)] = pct
            log(f"  {name:<18} {pct:6.2f} % of one core")
        self.results["idle_window"] = window
        cost = self.resync_cost(live["ringd"])
        if cost is not None:
            self.results["resync_cpu"] = cost
            log(f"  ringd resync: {cost * 1000:.0f} ms of CPU per re-list, every 300 s")

    def storm(self, inst: Instance) -> dict[str, float]:
        old = {tag: self.stamps.pid(tag) for tag in inst.tags}
        inst.check()
        t0 = time.monotonic_ns()
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)
        sent = time.monotonic_ns()
        new = self.stamps.wait_all(inst.tags, 60, old, inst.check)
        delays = sorted((ns - t0) / 1e9 for _, ns in new.values())
        return {"all": delays[-1], "half": delays[len(delays) // 2 - 1], "kill": (sent - t0) / 1e9}

    def phase_storm(self, live: dict[str, Instance]) -> None:
        log("restart storm: SIGKILL all 1,000 children at once")
        self.load("storm")
        for system in ["trio floor", "spawn floor", "ringd", "supervisord"]:
            for attempt in range(ATTEMPTS):
                inst = live[system]
                try:
                    result = self.storm(inst)
                    break
                except TimeoutError as exc:
                    log(f"  {system}: {exc}")
                    result = {}
                    break
                except Crashed as exc:
                    self.crashed(f"storm (attempt {attempt + 1})", exc)
                    inst.stop()
                    if system != "ringd" or attempt + 1 == ATTEMPTS:
                        result = {}
                        break
                    live[system], _ = self.start_instance(system, 1000, "rs")
            self.results[("storm", system)] = result
            if result:
                log(f"  {system:<12} all replaced in {result['all']:6.2f} s")
            if isinstance(inst, Ringd) and result:
                try:
                    self.after_storm(inst)
                except Crashed as exc:
                    self.crashed("the claims updates after the storm", exc)
            else:
                time.sleep(1.0)

    def after_storm(self, ringd: Ringd) -> None:
        ringd.settle()
        self.results["rss_after_storm"] = rss_mib(ringd.pid)
        # One which-children --local: its cost, and the memory it leaves behind.
        t = time.monotonic()
        rows = ringd.call("which_children", local=True)
        self.results["which_children_s"] = time.monotonic() - t
        self.results["which_children_running"] = sum(1 for r in rows if r["state"] == "running")
        self.results["rss_after_which"] = rss_mib(ringd.pid)

    # -- run -------------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        self.results["load_start"] = os.getloadavg()[0]
        self.probe, self.probe_kind = build_probe(self.tmp, self.stamps)
        log(f"child: {self.probe_kind} ({' '.join(self.probe)})")
        self.phase_latency()
        self.phase_rss100()
        live = self.phase_thousand()
        self.phase_idle(live)
        self.phase_storm(live)
        for inst in live.values():
            # No graceful stop: ringd's takes ~7 s at 1,000 children, supervisord's ~10 s.
            if inst.process is not None and inst.process.poll() is None:
                hard_stop(inst.process, inst.helpers())
        self.results["wall"] = time.monotonic() - started
        self.results["load_end"] = os.getloadavg()[0]

    def cleanup(self) -> None:
        for inst in reversed(self.instances):
            try:
                inst.stop()
            except Exception as exc:  # keep cleaning up the rest
                log(f"stopping {inst.prefix}: {exc!r}")
        # Anything left that runs our probe (it has our FIFO's path in its argv).
        marker = self.stamps.path
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if marker in (proc.info["cmdline"] or []):
                    os.kill(proc.info["pid"], signal.SIGKILL)
        self.stamps.close()
        r = self.results
        if self.args.keep:
            raw = {" ".join(map(str, k)) if isinstance(k, tuple) else k: v for k, v in r.items()}
            (self.tmp / "results.json").write_text(json.dumps(raw, indent=1))
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# -- report --------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"nproc {len(os.sched_getaffinity(0))} · {model} · {mem:.0f} GiB"
        f" · Linux {platform.release()} · CPython {platform.python_version()}"
        f" · trio {importlib.metadata.version('trio')}"
        f" · supervisor {importlib.metadata.version('supervisor')}"
    )


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def table(r: dict[Any, Any]) -> str:
    rows: list[list[str]] = []
    for n in (1, 10):
        row = [f"restart latency N={n}: median (p95), ms"]
        for s in SYSTEMS:
            values = r.get(("latency", n, s))
            row.append(
                f"{statistics.median(values):.2f} ({percentile(values, 95):.2f})" if values else "-"
            )
        rows.append(row)
    row = ["latency samples, N=1 / N=10"]
    for s in SYSTEMS:
        counts = [len(r.get(("latency", n, s), [])) for n in (1, 10)]
        lost = sum(r.get(("latency_lost", n, s), 0) for n in (1, 10))
        row.append(f"{counts[0]} / {counts[1]}" + (f" ({lost} lost)" if lost else ""))
    rows.append(row)

    def cell(key: Any, fmt: str, field: str | None = None) -> str:
        value = r.get(key)
        if isinstance(value, dict):
            value = value.get(field) if field else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, fmt)

    rows.append(
        ["start 1,000: all exec'd (probe stamps), s"]
        + [cell(("start", 1000, s), ".2f", "exec") for s in SYSTEMS]
    )
    rows.append(
        ["start 1,000: all running (the system's own view), s"]
        + [cell(("start", 1000, s), ".2f", "running") for s in SYSTEMS]
    )
    rows.append(
        [f"start 1,000, ringd by {START_CONCURRENCY} clients' start_child calls: exec'd / running"]
        + [
            f"{cell(('start', 1000, PER_CALL), '.2f', 'exec')} /"
            f" {cell(('start', 1000, PER_CALL), '.2f', 'running')}"
        ]
        + ["-"] * (len(SYSTEMS) - 1)
    )
    rows.append(["daemon RSS @100 children, MiB", *(cell(("rss", 100, s), ".1f") for s in SYSTEMS)])
    rows.append(
        ["daemon RSS @1,000 children, MiB", *(cell(("rss", 1000, s), ".1f") for s in SYSTEMS)]
    )
    rows.append(
        ["memory per child = (RSS@1000 - RSS@100)/900, KiB"]
        + [cell(("per_child", s), ".1f") for s in SYSTEMS]
    )
    rows.append(
        [f"idle CPU @1,000 over {r.get('idle_window', 0):g} s, % of one core"]
        + [cell(("idle", s), ".2f") for s in SYSTEMS]
    )
    storm = []
    for s in SYSTEMS:
        value = r.get(("storm", s))
        if value is None:
            storm.append("-")
        elif not value:
            storm.append("failed")
        else:
            storm.append(f"{value['all']:.2f} (half: {value['half']:.2f})")
    rows.append(["restart storm, 1,000 killed: all replaced, s", *storm])
    header = ["", *SYSTEMS]
    return "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    )


def targets(r: dict[Any, Any]) -> list[str]:
    out = []
    for n in (1, 10):
        ringd, floor = (
            _median(r.get(("latency", n, "ringd"))),
            _median(r.get(("latency", n, "trio floor"))),
        )
        spawn = _median(r.get(("latency", n, "spawn floor")))
        if ringd is not None and floor is not None:
            ratio = ringd / floor
            extra = f"; {ringd / spawn:.2f}x the spawn floor" if spawn else ""
            out.append(
                f"{_verdict(ratio <= LATENCY_RATIO)} restart latency N={n}: ringd median"
                f" {ringd:.2f} ms = {ratio:.2f}x the trio floor's {floor:.2f} ms"
                f" (target ≤ {LATENCY_RATIO:g}x){extra}"
            )
    ringd_start, sup_start = r.get(("start", 1000, "ringd")), r.get(("start", 1000, "supervisord"))
    if ringd_start and sup_start:
        ratio = ringd_start["exec"] / sup_start["exec"]
        also = ringd_start["running"] / sup_start["running"]
        per_call = r.get(("start", 1000, PER_CALL))
        out.append(
            f"{_verdict(ratio < START_RATIO)} start 1,000 (ringd from a specs file, as"
            f" supervisord from its config): ringd {ringd_start['exec']:.2f} s ="
            f" {ratio:.2f}x supervisord's {sup_start['exec']:.2f} s, all exec'd (target"
            f' < {START_RATIO:g}x); by each system\'s own "running": {also:.2f}x'
            + (
                f"; by one start_child call per child, {per_call['exec']:.2f} s ="
                f" {per_call['exec'] / sup_start['exec']:.2f}x"
                if per_call
                else ""
            )
        )
    per_child = r.get(("per_child", "ringd"))
    if per_child is not None:
        floor, sup = r.get(("per_child", "trio floor"), 0), r.get(("per_child", "supervisord"), 0)
        out.append(
            f"{_verdict(per_child <= PER_CHILD_KIB)} memory per child: ringd {per_child:.1f} KiB"
            f" (target ≤ {PER_CHILD_KIB:g} KiB; trio floor {floor:.1f}, supervisord {sup:.1f})"
        )
    rss = r.get(("rss", 1000, "ringd"))
    if rss is not None:
        helpers = sum(r.get(("rss", 1000, f"ringd {h}"), 0) for h in ("guard", "etcd"))
        out.append(
            f"{_verdict(rss < RSS_MIB)} RSS at 1,000: ringd daemon {rss:.1f} MiB (target"
            f" < {RSS_MIB:g} MiB, the daemon process; with its guard and private etcd"
            f" {rss + helpers:.1f} MiB)"
        )
    idle, sup = r.get(("idle", "ringd")), r.get(("idle", "supervisord"))
    if idle is not None and sup is not None:
        etcd = r.get(("idle", "ringd etcd"))
        resync = 100 * r.get("resync_cpu", 0.0) / 300
        out.append(
            f"{_verdict(idle + resync <= sup)} idle CPU at 1,000: ringd daemon {idle:.2f} %"
            f" + {resync:.2f} % for its re-list every 300 s ({r.get('resync_keys', 0)} keys,"
            f" {1000 * r.get('resync_cpu', 0.0):.0f} ms each) vs supervisord {sup:.2f} % of"
            " one core (target ≤ supervisord's)"
            + (f"; ringd's private etcd adds {etcd:.2f} %" if etcd is not None else "")
        )
    storm = r.get(("storm", "ringd"))
    if storm is not None:
        out.append(
            f"{_verdict(bool(storm) and storm['all'] <= STORM_S)} restart storm: ringd "
            + (f"{storm['all']:.2f} s" if storm else "did not finish")
            + f" (target ≤ {STORM_S:g} s)"
        )
    return out


def details(bench: Bench) -> list[str]:
    """Figures that are not in the table."""
    r = bench.results
    out = []
    for system, how in (
        ("ringd", "one start_children request, as `ringctl start-children FILE` sends"),
        (PER_CALL, f"{START_CONCURRENCY} start_child calls in flight"),
    ):
        start = r.get(("start", 1000, system))
        if start:
            out.append(
                f"ringd start 1,000 ({how}, daemon already up): answered"
                f" {start['answered']:.2f} s, all exec'd {start['exec']:.2f} s, all running"
                f" {start['running']:.2f} s, etcd quiet (claims published)"
                f" {start['settled']:.2f} s. Daemon start-up before that (private etcd,"
                f" lease): {start['startup']:.2f} s"
            )
    sup = r.get(("start", 1000, "supervisord"))
    if sup and "rpc" in sup:
        out.append(
            f'supervisord: "running" is the last `entered RUNNING state` in its log;'
            f" one `getAllProcessInfo` at 1,000 programs took {sup['rpc']:.2f} s"
        )
    helpers = []
    for name in ("guard", "etcd"):
        rss = [r.get(("rss", n, f"ringd {name}")) for n in (100, 1000)]
        idle = r.get(("idle", f"ringd {name}"))
        if None not in rss:
            helpers.append(
                f"{name} RSS {rss[0]:.1f} / {rss[1]:.1f} MiB at 100 / 1,000"
                + (f", idle CPU {idle:.2f} %" if idle is not None else "")
            )
    if helpers:
        out.append("ringd's other processes, not counted above: " + "; ".join(helpers))
    if "rss_after_storm" in r:
        out.append(
            f"ringd daemon RSS after the storm {r['rss_after_storm']:.1f} MiB; after one"
            f" `which_children --local` ({r['which_children_s'] * 1000:.0f} ms,"
            f" {r['which_children_running']} running) {r['rss_after_which']:.1f} MiB"
        )
    storms = [f"{s} {r[('storm', s)]['half']:.2f} s" for s in SYSTEMS if r.get(("storm", s))]
    if storms:
        out.append("storm, half replaced: " + ", ".join(storms))
    if "load" in r:
        loads = ", ".join(f"{phase} {value:.1f}" for phase, value in r["load"].items())
        out.append(f"load average (1 min) as each phase started: {loads}")
    for crash in bench.crashes:
        out.append(f"**daemon crash** during {crash}; the step was rerun on a fresh daemon")
    return out


METHOD = """\
Method: every system supervises the same child ({probe}, `bench/probe.c`), which
writes CLOCK_MONOTONIC into a FIFO as the first thing `main` does and then sleeps.
Restart latency = the replacement's stamp - the moment the bench sent SIGKILL to
its predecessor, after a U(0, 1 s) pause (no phase-locking with a poll timer);
the systems take turns round by round, in random order per round. ringd is a
real `ringd start` in standalone mode (private etcd), children started through
the control socket with `max_restarts: 10000, max_seconds: 1`. trio floor =
`trio.lowlevel.open_process` + `await wait()` in a loop; spawn floor =
`os.posix_spawn` (own session) + pidfd on trio, i.e. ringd's way minus its pipe,
log and bookkeeping (`bench/floor.py`). supervisord = generated config,
`autorestart=true`, `startsecs=0`, everything else default (minfds 1024, AUTO
child logs: a log file per program and stream, as ringd keeps a log per child).
Start 1,000: ringd from its request with the daemon already up: the specs
of a file in one `start_children` request (`ringctl start-children FILE`, the
counterpart of supervisord's config file), and, on another fresh daemon, one
`start_child` call per child ({concurrency} in flight); the others from process
launch (supervisord's figure includes reading its config and its first ~1 s
poll). "Running" is ringd's `status` (polled every 50 ms) and supervisord's log.
RSS is the daemon process alone, on fresh instances, read before anything lists
the children (ringd's guard and private etcd are listed separately). Idle CPU is the daemon's
user+system time over the same window for all systems at once (60 s: one of
ringd's figures publications), plus, for ringd, its full re-list of the cluster
keys every 300 s, amortized (the CPU of one such list through the same client,
measured in the bench process). Storm: all 1,000 children
SIGKILLed in one loop; time from the first kill to the last replacement's stamp."""


def write_benchmarks(section: str) -> Path:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Supervision\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.supervision",
        description="ringd vs the trio floors vs supervisord: restart latency, start,"
        " memory, idle CPU, restart storm (see the module docstring).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples; does not write")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, raw results)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the random pauses")
    args = parser.parse_args(argv)
    command = ".venv/bin/python -m bench.supervision" + (" --quick" if args.quick else "")

    # supervisord keeps 3 fds per child and ringd 2: make sure 1,000 children fit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.cleanup()
    r = bench.results
    for s in SYSTEMS:
        if ("rss", 100, s) in r and ("rss", 1000, s) in r:
            r[("per_child", s)] = (r[("rss", 1000, s)] - r[("rss", 100, s)]) * 1024 / 900
    head = (
        f"Command: `{command}` (from the repository root; the run took {r['wall']:.0f} s)  \n"
        f"Run: {when} · {machine()}  \n"
        f"Load average (1 min) at start / end: {r['load_start']:.2f} / {r['load_end']:.2f}"
        f" (a shared machine: compare ratios within the run)  \nChild: {bench.probe_kind}"
    )
    body = table(r)
    goals, notes = targets(r), details(bench)
    print(f"\n{head}\n\n{body}\n")
    for line in goals + notes:
        print(f"- {line}")
    if not args.quick and not args.no_write:
        method = METHOD.format(probe=bench.probe_kind, concurrency=START_CONCURRENCY)
        section = "\n\n".join(
            [
                "## Supervision",
                head,
                body,
                "Targets (issue 3):\n\n" + "\n".join(f"- {t}" for t in goals),
                "Details:\n\n" + "\n".join(f"- {n}" for n in notes),
                method,
            ]
        )
        print(f"\nwritten to {write_benchmarks(section + chr(10))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
