"""The shared harness (ringd.testing) that tests and benchmarks rely on: waiting
with a deadline, finding and stopping processes by pid; and ringd's lazily
imported public names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import trio
import trio.testing

import ringd
from ringd.testing import processes
from ringd.testing.processes import wait_gone
from ringd.testing.waiting import WaitTimeout, wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value_and_retries_errors() -> None:
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("not yet")
        return len(calls)

    assert wait_until(flaky, 5, interval=0.001) == 3


def test_wait_until_says_what_it_waited_for_and_what_it_last_saw() -> None:
    with pytest.raises(WaitTimeout, match=r"waiting for the moon; last: 0"):
        wait_until(lambda: 0, 0.05, "the moon", interval=0.01)
    with pytest.raises(ValueError, match="boom"):  # not a retry: propagates at once
        wait_until(lambda: (_ for _ in ()).throw(ValueError("boom")), 5)


async def test_wait_until_async_runs_on_trio_s_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    assert await wait_until_async(lambda: trio.current_time() - start > 30, 60) is True
    with pytest.raises(WaitTimeout, match="last: OSError"):
        await wait_until_async(lambda: (_ for _ in ()).throw(OSError("x")), 10)


def test_marked_processes_are_found_by_environment_and_stopped_by_pid() -> None:
    marker = f"RINGD_HARNESS_TEST={os.getpid()}"
    child = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, "RINGD_HARNESS_TEST": str(os.getpid())}
    )
    try:
        assert processes.marked_pids(marker) == [child.pid]
        assert child.pid in processes.processes_with_env(marker)
        processes.kill_pids([child.pid, 2**22 + 11], signal.SIGTERM)  # a gone pid is fine
        child.wait(10)
        assert processes.wait_gone([child.pid], 5) == []
        assert processes.marked_pids(marker) == []
    finally:
        child.kill()
        child.wait()


def test_hard_stop_kills_a_supervisor_and_everything_below_it() -> None:
    code = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        below = wait_until(lambda: processes.procfs.descendants(parent.pid), 10, "its child")
        processes.hard_stop(parent)
        assert parent.returncode == -signal.SIGKILL
        assert processes.wait_gone(below, 5) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_ringd_s_public_names_are_imported_on_first_use() -> None:
    assert ringd.Ring.__name__ == "Ring" and ringd.ChildSpec.__name__ == "ChildSpec"
    assert ringd.parse_child({"id": "a", "argv": ["x"]}).id == "a"
    assert issubclass(ringd.RingdError, Exception)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ringd.nothing  # noqa: B018


def test_shutdown_stops_a_daemon_and_leaves_none_of_its_helpers(cluster: Any) -> None:
    """``Daemon.shutdown``: SIGTERM (the daemon leaves the cluster), then whatever of
    its helpers is left is killed by pid: nothing of it runs afterwards."""
    d = cluster.daemon("a")
    helpers = list(d.helpers().values())
    assert helpers, "a daemon has its guard"
    d.shutdown()
    assert not d.running() and d.process is not None and d.process.returncode == 0
    assert wait_gone(helpers, 5) == []
    d.shutdown()  # a second call, with nothing left to stop, is harmless
