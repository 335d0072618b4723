"""The handoff floor that bench.failover divides its graceful figure by: it must
measure a stop followed by a start, and leave nothing running."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from ringd.guard import instance_pids

ROOT = Path(__file__).resolve().parent.parent


def test_handoff_floor_times_stop_then_start_and_leaves_nothing_running() -> None:
    token = secrets.token_hex(8)  # in every child's environment: finds them by marker
    out = subprocess.run(
        [sys.executable, "-m", "bench.handoff_floor", "--children", "6", "--spawners", "2",
         "--runs", "2"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "RINGD_INSTANCE": token},
    )  # fmt: skip
    runs = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(runs) == 2
    for run in runs:
        assert 0 < run["stop"] < run["total"], run  # a stop, then a start: both timed
    print(f"\nhandoff floor, 6 children: {[(r['stop'], r['total']) for r in runs]} s")
    assert instance_pids(token) == [], "children of the floor left running"
