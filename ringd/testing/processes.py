"""Process trees of tests and benchmarks: what runs below a pid, what carries a
marker in its environment, and killing by pid (never by name: other people's
processes share the machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from .. import procfs
from ..procfs import alive as alive
from ..procfs import descendants as descendants

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterable


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
