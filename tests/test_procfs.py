"""ringd.procfs on real processes, checked against psutil where psutil has the figure."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import psutil
import pytest

from ringd import procfs

TREE = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def tree():
    """A process with one child of its own, both carrying a marker in their
    environment: (parent, child pid, marker)."""
    marker = f"PROCFS_TEST={secrets.token_hex(8)}"
    name, value = marker.split("=")
    process = subprocess.Popen(
        [sys.executable, "-c", TREE], stdout=subprocess.PIPE, env={**os.environ, name: value}
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    yield process, child, marker
    for pid in (child, process.pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    process.wait()
    process.stdout.close()


def test_stat_fields_are_psutils(tree) -> None:
    process, child, _ = tree
    assert procfs.parent(child) == process.pid == psutil.Process(child).ppid()
    assert procfs.state(process.pid) in ("R", "S") and procfs.alive(process.pid)
    assert procfs.start_ticks(child) is not None
    assert procfs.start_ticks(child) >= procfs.start_ticks(process.pid)
    assert procfs.rss(child) == pytest.approx(psutil.Process(child).memory_info().rss, rel=0.2)
    assert procfs.cmdline(child)[-1] == b"import time; time.sleep(60)"


def test_children_descendants_and_the_environment_scan(tree) -> None:
    process, child, marker = tree
    assert procfs.children(process.pid) == [child]
    assert {process.pid, child} <= procfs.descendants(os.getpid())
    found = dict(procfs.environ_scan(marker.encode()))
    assert set(found) == {process.pid, child}
    assert dict(procfs.environ_scan(marker.encode(), among=[child])).keys() == {child}
    name, value = marker.split("=")
    assert procfs.parse_environ(found[child])[name] == value


def test_a_process_that_is_gone() -> None:
    gone = 2**22 + 1  # above pid_max: no such process
    assert procfs.state(gone) is None and not procfs.alive(gone)
    assert procfs.parent(gone) is None and procfs.start_ticks(gone) is None
    assert procfs.children(gone) == [] and procfs.descendants(gone) == set()
    assert procfs.environ(gone) is None and procfs.cmdline(gone) == []
    assert procfs.scheduled_ns(gone) == 0
    with pytest.raises(FileNotFoundError):
        procfs.cpu_and_rss(gone)


def test_a_zombie_is_not_alive() -> None:
    process = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert procfs.state(process.pid) == "Z" and not procfs.alive(process.pid)
    finally:
        process.wait()


def test_machine_ticks_grow() -> None:
    busy, total = procfs.machine_ticks()
    assert 0 < busy < total
    assert procfs.boot_time() == pytest.approx(psutil.boot_time(), abs=1)
