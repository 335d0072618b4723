"""The timeline (tests/timeline.py): the chaos checker's claim rule on made-up reads
(pure), and a sampler that does not start failing the test instead of watching
nothing."""

from __future__ import annotations

import os
import re
import sys

import pytest

from ringd import procfs
from ringd.testing.processes import check_kept_up

from .timeline import Timeline, claim_violations


def test_the_chaos_checker_flags_a_child_running_under_another_nodes_claim() -> None:
    before = {"a": ("n1", 10), "b": ("n2", 11), "c": ("n2", 12)}
    after = {"a": ("n1", 10), "b": ("n2", 11), "c": ("n3", 20)}
    live = {
        100: ("a", "n1"),  # its own claim: fine
        101: ("b", "n1"),  # n2 held b before and after: a violation
        102: ("c", "n2"),  # c moved between the reads: not provable, not flagged
        103: ("d", "n3"),  # no claim yet (just started after the read): not flagged
    }
    assert [(i, inst) for _, i, inst in claim_violations(1.0, before, after, live)] == [
        ("b", [(101, "n1"), (0, "claim of n2")])
    ]


def test_a_short_window_with_few_scans_passes_but_a_stall_or_a_slow_sampler_fails() -> None:
    # 2 scans in 0.5 s (a loaded machine, a short test): it watched all along.
    check_kept_up([0.0, 0.25], 0.01, 0.5, "s", min_hz=5)
    with pytest.raises(AssertionError, match=r"s stalled: 1\.50 s without a scan"):
        check_kept_up([0.0, 0.1, 1.6], 0.0, 1.7, "s", min_hz=5)
    with pytest.raises(AssertionError, match=r"stalled: 2\.00 s"):  # died before the stop
        check_kept_up([0.0, 0.5, 1.0], 0.0, 3.0, "s", min_hz=1)
    slow = [i * 0.9 for i in range(12)]  # ~1 Hz for 10 s: no gap over 1 s, too few
    with pytest.raises(AssertionError, match=r"fell behind: 12 scans in 10\.0 s, fewer than 47"):
        check_kept_up(slow, 0.0, 10.0, "s", min_hz=5)
    with pytest.raises(AssertionError, match="never scanned"):
        check_kept_up([], 0.0, 1.0, "s", min_hz=5)


def test_a_timeline_samples_and_says_for_how_long() -> None:
    with Timeline("tnobody") as timeline:
        pass
    assert timeline.samples >= 1 and timeline.duration > 0
    assert timeline.seen == {} and timeline.violations == []


def test_a_sampler_that_never_starts_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline("tnobody")
    timeline.startup_timeout = 0.5
    asleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(timeline, "command", lambda: asleep)
    with pytest.raises(AssertionError, match=r"did not start within 0.5 s") as info:
        timeline.start()
    found = re.search(r"pid (\d+)", str(info.value))
    assert found
    pid = int(found.group(1))
    assert not procfs.alive(pid), "killed, not left running"
    assert pid not in procfs.children(os.getpid())


def test_a_sampler_that_exits_at_once_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline("tnobody")
    monkeypatch.setattr(timeline, "command", lambda: [sys.executable, "-c", "exit(3)"])
    with pytest.raises(AssertionError, match="timeline sampler exited 3"):
        timeline.start()
