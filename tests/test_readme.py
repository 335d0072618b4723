"""The README's quickstart, run as written: three daemons sharing one etcd."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from ringd.testing import kill_pids, processes_with_env, wait_gone

README = Path(__file__).parent.parent / "README.md"


def quickstart_block() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    lines = [line[4:] for line in section.splitlines() if line.startswith("    ")]
    return "\n".join(lines)


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = [
        line.strip() for line in README.read_text().splitlines()[:10] if line.startswith("    ")
    ]
    assert lines[0].endswith(".venv/bin/ringd start")
    assert lines[1].endswith(".venv/bin/pytest")
    ci = (README.parent / ".ci" / "run").read_text()
    assert "Run the tests" in ci, ".ci/run takes its command from the README"


# What the quickstart fixes that a test run must not: etcd's ports and /tmp paths.
# Rewritten to free ports and a directory of the test's own, so that a run never
# collides with a quickstart (or another run) on this machine, and leaves nothing.
README_CLIENT_URL = "http://127.0.0.1:23790"
README_PEER_URL = "http://127.0.0.1:23800"
README_PREFIX = "/tmp/rq-"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rewritten(block: str, where: Path) -> str:
    """The quickstart on free loopback ports, its files under ``where``."""
    for fixed in (README_CLIENT_URL, README_PEER_URL, README_PREFIX):
        assert fixed in block, f"the quickstart no longer uses {fixed}: update this test"
    script = (
        block.replace(README_CLIENT_URL, f"http://127.0.0.1:{free_port()}")
        .replace(README_PEER_URL, f"http://127.0.0.1:{free_port()}")
        .replace(README_PREFIX, f"{where}/rq-")
    )
    for fixed in (":23790", ":23800", "/tmp/rq-"):
        assert fixed not in script, f"{fixed} left in the script"
    return script


def test_quickstart_as_written(short_tmp: Path) -> None:
    # The README's commands use .venv/bin/...: point .venv at the interpreter running us.
    (short_tmp / ".venv").symlink_to(Path(sys.prefix))
    script = rewritten(quickstart_block(), short_tmp)
    script += '\necho "PIDS: $(jobs -p | tr "\\n" " ")"\n'
    # Every process the quickstart starts (etcd, the daemons, their guards and
    # children) inherits this marker: found by it, whatever happens, and killed by pid.
    marker = f"README_QUICKSTART_RUN={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    env.pop("RINGD_SOCKET", None)
    jobs: list[int] = []
    leftovers: list[int] = []
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=short_tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = result.stdout
        if found := re.search(r"PIDS: (.*)", out):
            jobs = [int(p) for p in found.group(1).split()]
        assert result.returncode == 0, result.stderr
        assert len(jobs) == 4, f"etcd and three daemons in the background: {out}"
        for i in range(1, 7):
            assert re.search(rf"started sleeper{i} on n[123] \(pid \d+\)", out), out
        assert "3 children stored, all running" in out, out
        for n in ("n1", "n2", "n3"):
            assert re.search(rf"^{n}\s+online\s", out, re.M), out
        rows = re.findall(r"^(sleeper\d|batch\d)\s+(n[123])\s+(\d+)\s+running", out, re.M)
        assert sorted(r[0] for r in rows) == [
            *(f"batch{i}" for i in range(1, 4)),
            *(f"sleeper{i}" for i in range(1, 7)),
        ], out
        assert len({r[1] for r in rows}) >= 2, "spread over the nodes"
    finally:
        # `kill $(jobs -p)`, as the README says: the daemons stop their children and
        # leave. Without the job list (the script failed or timed out), every process
        # of this run.
        started = jobs or list(processes_with_env(marker))
        kill_pids(started, signal.SIGTERM)
        kill_pids(wait_gone(started, 30))
        # Whatever is left (a child, a guard) is a failure of the README's promise.
        leftovers = list(processes_with_env(marker))
        kill_pids(leftovers)
        assert not wait_gone(leftovers, 10), "every process of the run killed"
    assert not leftovers, "every child stopped with its daemon"
