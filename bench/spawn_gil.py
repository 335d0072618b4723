"""What a spawn costs a daemon whose other threads are busy (the GIL).

    python -m bench.spawn_gil [--spawns 300]

ringd spawns children with ``os.posix_spawn``, which CPython calls without
releasing the GIL: while the kernel clones and the child execs, no other
thread of the daemon runs, and between spawns the event loop competes for the
GIL with the threads that run the etcd client (pure-Python protobuf). This
measures, in one run, ms per spawn of ``/usr/bin/sleep`` from the main thread
and how fast a second, busy Python thread runs meanwhile, for ``posix_spawn``
and ``subprocess.Popen`` (whose fork/exec releases the GIL), each alone (the
baseline) and next to the busy thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

SLEEP = shutil.which("sleep") or "/usr/bin/sleep"


def posix_spawn() -> int:
    return os.posix_spawn(SLEEP, ["sleep", "3600"], dict(os.environ), setsid=True)


def popen() -> int:
    process = subprocess.Popen([SLEEP, "3600"], start_new_session=True)
    process.returncode = 0  # reaped below, by pid
    return process.pid


class Spinner:
    """A Python thread that counts as fast as the GIL lets it."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop:
            self.count += 1

    def close(self) -> None:
        self._stop = True
        self._thread.join()


def measure(spawn: Callable[[], int], n: int, spinner: Spinner | None) -> tuple[float, float]:
    """(ms per spawn, the spinner's millions of counts per second or nan)."""
    before = spinner.count if spinner else 0
    start = time.perf_counter()
    pids = [spawn() for _ in range(n)]
    took = time.perf_counter() - start
    rate = (spinner.count - before) / took / 1e6 if spinner else float("nan")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    return took / n * 1e3, rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spawn_gil", description=__doc__)
    parser.add_argument("--spawns", type=int, default=300, help="spawns per measurement")
    args = parser.parse_args(argv)
    spinner_alone = Spinner()
    start, before = time.perf_counter(), spinner_alone.count
    time.sleep(0.5)
    idle_rate = (spinner_alone.count - before) / (time.perf_counter() - start) / 1e6
    spinner_alone.close()
    print(f"`python -m bench.spawn_gil --spawns {args.spawns}`, child `{SLEEP} 3600`\n")
    print(
        "| spawn | alone: ms/spawn | with a busy thread: ms/spawn | busy thread's speed meanwhile |"
    )
    print("|---|---|---|---|")
    for name, spawn in (("os.posix_spawn (ringd)", posix_spawn), ("subprocess.Popen", popen)):
        alone, _ = measure(spawn, args.spawns, None)
        spinner = Spinner()
        try:
            busy, rate = measure(spawn, args.spawns, spinner)
        finally:
            spinner.close()
        print(
            f"| {name} | {alone:.3f} | {busy:.3f} ({busy / alone:.1f} x alone) |"
            f" {rate / idle_rate * 100:.0f} % of its speed alone |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
