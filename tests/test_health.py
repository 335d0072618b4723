"""One health check run: exit 0 is healthy, the last line of output says why not,
a check past its timeout is killed with its process group, a missing program is
named."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psutil

from ringd.health import run_check

if TYPE_CHECKING:
    from pathlib import Path

ENV = dict(os.environ)


async def test_exit_0_is_healthy_and_the_last_line_says_why_not(tmp_path: Path) -> None:
    assert await run_check(["sh", "-c", "echo fine"], ENV, None, 5) == (True, "fine")
    failing = ["sh", "-c", "echo starting; echo 'port 80 closed' >&2; exit 3"]
    assert await run_check(failing, ENV, None, 5) == (False, "port 80 closed")
    assert await run_check(["sh", "-c", "exit 4"], ENV, None, 5) == (False, "exit status 4")
    assert await run_check(["sh", "-c", "pwd"], ENV, str(tmp_path), 5) == (True, str(tmp_path))


async def test_a_check_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    marker = f"ringd-health-test-{os.getpid()}"
    hang = ["sh", "-c", f"sleep 300 & echo {marker}; wait"]
    healthy, said = await run_check(hang, {**ENV, "MARK": marker}, None, 0.5)
    assert (healthy, said) == (False, "timed out after 0.5 s")
    left = [
        p.pid
        for p in psutil.process_iter(["environ"])
        if (p.info["environ"] or {}).get("MARK") == marker
    ]
    assert left == [], "the backgrounded sleep went with the check's process group"


async def test_a_check_that_cannot_run_is_unhealthy_and_named() -> None:
    healthy, said = await run_check(["/no/such/check"], ENV, None, 5)
    assert not healthy and said == "cannot run '/no/such/check': No such file or directory"
