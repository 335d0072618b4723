"""The systems ``bench.supervision`` compares, and the probe they all supervise:
ringd (a real ``ringd start``, ``ringd.testing.Daemon``), the trio and spawn
floors (``bench/floor.py``) and supervisord, each a process whose children write
their start stamps into one FIFO (``Stamps``)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringd import procfs
from ringd.protocol import MAX_BATCH, Client, Unreachable
from ringd.testing import Daemon, hard_stop, helpers_of, kill_pids, wait_until
from ringd.testing.waiting import RETRY as _RETRY

from .common import ROOT, log

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .supervision import Bench

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
SYSTEMS = ["ringd", "trio floor", "spawn floor", "supervisord"]
PREFIX = {"ringd": "r", "trio floor": "t", "spawn floor": "s", "supervisord": "v"}
START_CONCURRENCY = 8  # start_child calls in flight (one socket connection each)
PER_CALL = "ringd, a call each"  # ringd started by one start_child call per child
RETRY = (*_RETRY, xmlrpc.client.Error)


class Crashed(RuntimeError):
    """A daemon under test died."""


def wait_alive(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float,
    alive: Callable[[], None] = lambda: None,
) -> Any:
    """``wait_until`` that also calls ``alive`` before each look: it raises Crashed
    if the daemon died, which ends the wait at once."""

    def condition() -> Any:
        alive()
        return predicate()

    return wait_until(condition, timeout, what, interval, retry=RETRY)


def rss_mib(pid: int) -> float:
    return procfs.rss(pid) / MIB


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
        hard_stop(self.process, self.helpers().values())


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
            hard_stop(self.process)


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
        self.daemon = Daemon(
            "bench",
            bench.tmp,
            socket=self.dir / "s.sock",
            state_dir=self.dir / "state",
            log=self.log,
            new_session=True,  # Ctrl-C is for the bench, which cleans up
            cwd=ROOT,
        )
        self._helpers: dict[str, int] = {}
        self.startup = math.nan

    def call(self, op: str, **args: Any) -> Any:
        try:
            return Client(self.daemon.socket, timeout=120).call(op, **args)
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
        self.launched = time.monotonic()
        self.process = self.daemon.spawn()
        self.bench.instances.append(self)
        wait_alive(lambda: self.call("status")["lease"], 60, "ringd ready", 0.05, self.check)
        self.startup = time.monotonic() - self.launched
        self._helpers = helpers_of(self.pid)

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
        wait_alive(lambda: self.running() == n, timeout, "ringd: all running", 0.05, self.check)
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
            hard_stop(self.process, self.helpers().values())
        self.stop_helpers()

    def stop_helpers(self) -> None:
        kill_pids(pid for pid in self.helpers().values() if procfs.alive(pid))
