"""Process trees of tests and benchmarks: what runs below a pid, what carries a
marker in its environment, and killing by pid (never by name: other people's
processes share the machine)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .. import procfs
from ..procfs import alive as alive
from ..procfs import descendants as descendants

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

Popen = subprocess.Popen[bytes]


def processes_with_env(
    marker: str, among: Iterable[int] | None = None
) -> dict[int, dict[str, str]]:
    """Live processes (not zombies) whose environment contains ``marker`` (a
    substring, e.g. ``NAME=value`` or ``NAME=``): pid -> environment.

    ``among`` limits the search (e.g. to ``descendants(os.getpid())``): a scan of
    all of /proc is slow on a busy machine.
    """
    return {
        pid: procfs.parse_environ(raw)
        for pid, raw in procfs.environ_scan(marker.encode(), among)
        if procfs.alive(pid)
    }


def marked_pids(marker: str | bytes, among: Iterable[int] | None = None) -> list[int]:
    """Live processes whose environment contains ``marker``."""
    needle = marker.encode() if isinstance(marker, str) else marker
    return [pid for pid, _ in procfs.environ_scan(needle, among) if procfs.alive(pid)]


def kill_pids(pids: Iterable[int], signum: int = signal.SIGKILL) -> None:
    """Send ``signum`` to each pid that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for these processes to exit (zombies count as
    gone); returns those still alive."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while (left := [p for p in left if procfs.alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def helpers_of(daemon: int) -> dict[str, int]:
    """A ringd daemon's own long-lived children, by pid: its ``guard``
    (``python -m ringd.guard``) and, in standalone mode, its private ``etcd``."""
    found = {}
    for pid in procfs.children(daemon):
        argv = procfs.cmdline(pid)
        if b"ringd.guard" in argv:
            found["guard"] = pid
        elif argv and os.path.basename(argv[0]) == b"etcd":
            found["etcd"] = pid
    return found


def hard_stop(process: subprocess.Popen[bytes], also: Iterable[int] = ()) -> None:
    """Stop a supervisor at once: freeze it (no more respawns), SIGKILL every
    process below it and the pids ``also`` (its helpers in sessions of their own
    still are below it), then it, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGSTOP)
    kill_pids(procfs.descendants(process.pid) | set(also))
    process.kill()  # a stopped process dies of SIGKILL too
    process.wait()


def start_sampler(command: list[str], out: Path, timeout: float, what: str, cwd: Path) -> Popen:
    """Start a sampler process that writes a JSON report to ``out`` (empty until its
    first scan is done) and return once that scan is done.

    Raises:
        AssertionError: it exited, or did not scan within ``timeout`` (it is killed
            and ``out`` removed): a test must never go on believing it is watched.
    """
    process = subprocess.Popen(command, cwd=cwd)
    deadline = time.monotonic() + timeout
    while out.stat().st_size == 0:
        exited = process.poll() is not None
        if exited or time.monotonic() > deadline:
            process.kill()
            process.wait()
            out.unlink(missing_ok=True)
            raise AssertionError(
                f"{what} exited {process.returncode}"
                if exited
                else f"{what} (pid {process.pid}) did not start within {timeout:g} s"
            )
        time.sleep(0.01)
    return process


def stop_sampler(process: Popen, out: Path, what: str) -> dict[str, Any]:
    """SIGTERM a sampler started by ``start_sampler``, and its report (``out`` removed).

    Raises:
        AssertionError: it failed (a non-zero exit, or no scans in its report).
    """
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    data: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    if process.returncode != 0 or "scans" not in data:
        raise AssertionError(f"{what} failed (exit {process.returncode})")
    return data


def check_kept_up(
    begins: Iterable[float],
    began: float,
    ended: float,
    what: str,
    *,
    min_hz: float,
    max_gap: float = 1.0,
) -> None:
    """Assert a sampler watched all of ``[began, ended]``: no gap between one scan's
    start and the next (or the stop) longer than ``max_gap`` seconds, and at least
    ``min_hz`` scans a second after its first half second.

    The gap is what catches a sampler that stalled or died; the rate alone cannot
    judge a short window (2 scans in 0.5 s on a loaded 2-CPU machine is a sampler
    that kept watching, not one that fell behind).
    """
    starts = sorted(begins)
    assert starts, f"{what} never scanned"
    points = [t for t in starts if t >= began] + [ended]
    gaps = [b - a for a, b in zip([starts[0], *points], points, strict=False) if b > a]
    largest = max(gaps, default=0.0)
    assert largest <= max_gap, (
        f"{what} stalled: {largest:.2f} s without a scan (at most {max_gap:g} s)"
    )
    duration = ended - began
    least = int(min_hz * max(0.0, duration - 0.5))
    assert len(starts) >= least, (
        f"{what} fell behind: {len(starts)} scans in {duration:.1f} s, fewer than {least}"
    )
