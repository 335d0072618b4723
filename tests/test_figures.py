"""Per-child figures from /proc, on real processes, checked against psutil: RSS,
CPU since the previous reading, and the short cache that keeps a crowd of
callers off /proc."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from ringd.figures import Figures, read_proc


@pytest.fixture
def busy():
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(process.pid).memory_info().rss < 2_000_000:  # Python is up
        assert time.monotonic() < deadline, "the busy process did not start"
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def test_cpu_and_rss_of_a_busy_process(busy: subprocess.Popen[bytes]) -> None:
    figures = Figures(fresh=0.0)
    rss, cpu = figures.of(busy.pid)
    assert rss > 1_000_000 and cpu == 0.0  # no previous reading yet
    time.sleep(0.3)
    rss, cpu = figures.of(busy.pid)
    assert rss > 1_000_000 and cpu > 20.0  # it spins on a core (some, on a busy machine)


def test_a_fresh_reading_is_reused_then_renewed(busy: subprocess.Popen[bytes]) -> None:
    figures = Figures(fresh=60.0)
    first = figures.of(busy.pid)
    time.sleep(0.2)
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
