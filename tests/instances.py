"""A sampler of child instances for rolling-update tests: every ``interval`` it reads
which processes of one test cluster run, by child id, replica (``RINGD_REPLICA``)
and spec version (the test's own ``TEST_VERSION`` in the spec's env).

It runs in a process of its own (``python -m tests.instances``), as
``tests.timeline``'s sampler does: in a thread of the test process it would queue
for the GIL behind the test's polling. ``tests.timeline`` tells instances apart by
child id only, which the replicas of one child share; this one keeps the replica.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringd import procfs
from ringd.testing.processes import check_kept_up, start_sampler, stop_sampler

if TYPE_CHECKING:
    import subprocess

_ENTRIES = re.compile(rb"(?:^|\0)(RINGD_CHILD_ID|RINGD_REPLICA|TEST_VERSION)=([^\0]*)")


@dataclass(frozen=True)
class Seen:
    """One instance's process as one scan saw it."""

    child_id: str
    replica: int
    version: str
    pid: int


def scan(cluster_name: str, root: int) -> list[Seen]:
    """The live child processes of one test cluster below ``root`` (not their own
    children: a grandchild inherits the environment)."""
    marker = f"TEST_CLUSTER={cluster_name}".encode()
    below = procfs.descendants(root)
    found = []
    for pid, raw in procfs.environ_scan(marker, below):
        env = dict(_ENTRIES.findall(raw))
        if b"RINGD_CHILD_ID" not in env or _is_grandchild(pid):
            continue
        if procfs.alive(pid):
            found.append(
                Seen(
                    env[b"RINGD_CHILD_ID"].decode(),
                    int(env.get(b"RINGD_REPLICA", b"0")),
                    env.get(b"TEST_VERSION", b"").decode(),
                    pid,
                )
            )
    return found


def _is_grandchild(pid: int) -> bool:
    """Whether ``pid``'s parent is itself a child instance (its environment too)."""
    parent = procfs.parent(pid)
    raw = procfs.environ(parent) if parent is not None else None
    return raw is not None and b"\0RINGD_CHILD_ID=" in b"\0" + raw


@dataclass(frozen=True)
class Scan:
    begin: float  # time.monotonic()
    end: float
    seen: tuple[Seen, ...]

    def of(self, child_id: str) -> list[Seen]:
        return [s for s in self.seen if s.child_id == child_id]


class Sampler:
    """Samples a test cluster's instances every ``interval`` seconds until ``stop()``."""

    def __init__(self, cluster_name: str, *, interval: float = 0.02) -> None:
        self.cluster_name = cluster_name
        self.interval = interval
        self.scans: list[Scan] = []
        self.began = self.ended = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._out = Path(tempfile.mkstemp(prefix="instances-", suffix=".json")[1])

    def start(self, timeout: float = 10.0) -> Sampler:
        """Start the sampler process; return once its first scan is done.

        Raises:
            AssertionError: it exited, or did not scan within ``timeout`` (killed).
        """
        command = [sys.executable, "-m", "tests.instances", self.cluster_name,
                   str(os.getpid()), str(self.interval), str(self._out)]  # fmt: skip
        self._process = start_sampler(
            command, self._out, timeout, "instance sampler", Path(__file__).parent.parent
        )
        self.began = time.monotonic()
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self.ended = time.monotonic()
        data = stop_sampler(process, self._out, "instance sampler")
        self.scans = [
            Scan(begin, end, tuple(Seen(*s) for s in seen)) for begin, end, seen in data["scans"]
        ]

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_rate(self, min_hz: float = 10.0) -> None:
        """The sampler kept up: at least ``min_hz`` scans a second on average (it
        scans ~50 times a second asked for 20 ms on an idle machine)."""
        check_kept_up(
            [s.begin for s in self.scans], self.began, self.ended, "the sampler", min_hz=min_hz
        )

    def fewest(self, child_id: str) -> tuple[int, Scan]:
        """The fewest instances of the child any scan saw, and that scan."""
        scan = min(self.scans, key=lambda s: len(s.of(child_id)))
        return len(scan.of(child_id)), scan

    def doubles(self, child_id: str) -> list[Scan]:
        """Scans that saw two processes of one replica of the child at once."""
        out = []
        for scan in self.scans:
            replicas = [s.replica for s in scan.of(child_id)]
            if len(replicas) != len(set(replicas)):
                out.append(scan)
        return out


def main(argv: list[str]) -> int:
    """``python -m tests.instances CLUSTER ROOT_PID INTERVAL OUT``: sample until SIGTERM
    (or until the test process is gone)."""
    cluster_name, root, interval, out = argv[1], int(argv[2]), float(argv[3]), Path(argv[4])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scans: list[Any] = []
    scan(cluster_name, root)
    out.write_text("{}")  # started
    while not stop.is_set() and os.getppid() == root:
        begin = time.monotonic()
        seen = scan(cluster_name, root)
        scans.append((begin, time.monotonic(), [list(vars(s).values()) for s in seen]))
        stop.wait(interval)
    out.write_text(json.dumps({"scans": scans}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
