"""Test helpers: real ringd daemons as subprocesses, and process sampling."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ringd.protocol import Client, RemoteError, Unreachable

CHILD = str(Path(__file__).with_name("child.py"))


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (Unreachable, RemoteError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def processes_with_env(marker: str, among: set[int] | None = None) -> dict[int, dict[str, str]]:
    """Live processes (not zombies) whose environment contains ``marker``: pid -> env.

    ``among`` limits the search (e.g. to ``descendants(os.getpid())``): a scan of
    all of /proc is slow on a busy machine.
    """
    found: dict[int, dict[str, str]] = {}
    needle = marker.encode()
    for entry in os.listdir("/proc") if among is None else map(str, among):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                raw = f.read()
        except (OSError, IndexError):
            continue
        if needle in raw:
            env = dict(
                item.split("=", 1)
                for item in raw.decode(errors="replace").split("\0")
                if "=" in item
            )
            found[int(entry)] = env
    return found


def kill_pids(pids: Any) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class Daemon:
    """One ``ringd start`` process with its own socket and state dir."""

    def __init__(
        self,
        name: str,
        *,
        etcd: str | None,
        cluster: str,
        base: Path,
        ttl: float = 2.0,
        config: Path | None = None,
    ) -> None:
        self.name = name
        self.etcd = etcd  # None: the config file names the endpoints
        self.cluster = cluster
        self.base = base
        self.ttl = ttl
        self.config = config
        self.socket = str(base / f"{name}.sock")
        self.state_dir = base / name
        self.process: subprocess.Popen[bytes] | None = None
        self.log = base / f"{name}.log"
        self.extra_args: list[str] = []

    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=30)

    def call(self, op: str, **args: Any) -> Any:
        return self.client.call(op, **args)

    def start(self, *, wait: bool = True) -> Daemon:
        cmd = [
            sys.executable, "-m", "ringd", "start",
            "--name", self.name,
            "--cluster", self.cluster,
            "--socket", self.socket,
            "--state-dir", str(self.state_dir),
            "--lease-ttl", str(self.ttl),
            *self.extra_args,
        ]  # fmt: skip
        if self.etcd is not None:
            cmd += ["--etcd", self.etcd]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        if wait:
            wait_until(self.ready, 20, f"{self.name} ready")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.name} exited {self.process.returncode}:\n{self.log.read_text()}"
            )
        try:
            return self.call("status")["lease"] is not None
        except (Unreachable, RemoteError):
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def child_argv(journal: Path, *extra: str) -> list[str]:
    return [sys.executable, CHILD, str(journal), *extra]


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def exchange(path: str, payload: bytes, *, half_close: bool = True) -> list[dict[str, Any]]:
    """Send raw bytes to a control socket; the replies (all of them after a half-close,
    else the first line)."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        else:
            with sock.makefile("rb") as replies:
                data = replies.readline()
    return [json.loads(line) for line in data.splitlines()]
