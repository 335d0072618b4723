"""Per-child figures from /proc, on real processes, checked against psutil: RSS,
CPU since the previous reading, and the short cache that keeps a crowd of
callers off /proc."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import psutil
import pytest

from ringd.figures import Figures, read_proc

from .helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    """A process spinning on a core; killed and reaped however the test ends (also
    when it fails to start)."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        # Python is up (its RSS grown) and spinning (it has used CPU).
        wait_until(
            lambda: (
                psutil.Process(process.pid).memory_info().rss > 2_000_000
                and read_proc(process.pid)[0] > 0
            ),
            10,
            "the busy process running",
            retry=(psutil.Error, OSError),
        )
        yield process
    finally:
        process.kill()
        process.wait()


def test_cpu_and_rss_of_a_busy_process(busy: subprocess.Popen[bytes]) -> None:
    figures = Figures(fresh=0.0)
    rss, cpu = figures.of(busy.pid)
    assert rss > 1_000_000 and cpu == 0.0  # no previous reading yet
    readings: list[tuple[int, float]] = []

    def spinning() -> bool:
        # Each look is the CPU since the previous one: on a shared 2-CPU machine a
        # spinner may get little of a core for a while, but it gets 20 % at times.
        readings.append(figures.of(busy.pid))
        return readings[-1][1] > 20.0

    wait_until(spinning, 30, "a reading over 20 % of a core", interval=0.3)
    assert all(rss > 1_000_000 for rss, _ in readings), readings


def test_a_fresh_reading_is_reused_then_renewed(busy: subprocess.Popen[bytes]) -> None:
    figures = Figures(fresh=60.0)
    first = figures.of(busy.pid)
    spent = read_proc(busy.pid)[0]
    wait_until(lambda: read_proc(busy.pid)[0] > spent, 30, "more CPU time used")
    assert figures.of(busy.pid) == first  # within 60 s: the same reading
    figures.fresh = 0.0
    assert figures.of(busy.pid)[1] > 0.0  # renewed: CPU since the first one


def test_gone_or_absent_processes_have_no_figures(busy: subprocess.Popen[bytes]) -> None:
    figures = Figures()
    assert figures.of(None) is None
    assert figures.of(busy.pid) is not None
    busy.kill()
    busy.wait()
    figures.fresh = 0.0
    assert figures.of(busy.pid) is None
    figures.forget_others(set())
    assert not figures._last


def test_proc_figures_are_psutils(busy: subprocess.Popen[bytes]) -> None:
    process = psutil.Process(busy.pid)
    with process.oneshot():
        cpu, rss = sum(process.cpu_times()[:2]), process.memory_info().rss
    mine_cpu, mine_rss = read_proc(busy.pid)
    assert abs(mine_rss - rss) <= 256 * 1024  # it runs: its RSS moves between the reads
    assert cpu - 0.05 <= mine_cpu <= cpu + 0.5  # it spins: CPU grows between the reads


def test_start_time_is_psutils_create_time(busy: subprocess.Popen[bytes]) -> None:
    from ringd.figures import start_time

    assert start_time(busy.pid) == pytest.approx(psutil.Process(busy.pid).create_time(), abs=0.011)
    with pytest.raises(FileNotFoundError):
        start_time(2**22 + 1)  # above pid_max: no such process
