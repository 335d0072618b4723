"""The README's quickstart, run as written: three daemons sharing one etcd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import alive, processes_with_env

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


@pytest.mark.skipif(
    os.path.exists("/tmp/rq-etcd"), reason="a quickstart is already running here (/tmp/rq-etcd)"
)
def test_quickstart_as_written(tmp_path: Path) -> None:
    # The README's commands use .venv/bin/...: point .venv at the interpreter running us.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    script = quickstart_block() + '\necho "PIDS: $(jobs -p | tr "\\n" " ")"\n'
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    pids = [int(p) for p in re.search(r"PIDS: (.*)", result.stdout).group(1).split()]
    try:
        assert result.returncode == 0, result.stderr
        out = result.stdout
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
        # `kill $(jobs -p)`, as the README says: the daemons stop their children and leave.
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        leftovers = [
            p
            for marker in ("RINGD_CHILD_ID=sleeper", "RINGD_CHILD_ID=batch")
            for p in processes_with_env(marker)
        ]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        subprocess.run(
            [
                "rm",
                "-rf",
                "/tmp/rq-etcd",
                "/tmp/rq-n1",
                "/tmp/rq-n2",
                "/tmp/rq-n3",
                "/tmp/rq-specs.toml",
            ],
            check=False,
        )
    assert not leftovers, "every child stopped with its daemon"
