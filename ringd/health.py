"""Health checks: a child's ``check`` command, run once; exit 0 is healthy.

When and how often, and what a failing instance costs (a restart counted by the
restart intensity), is the supervisor's (``Supervisor._tend``); this runs one.
"""

from __future__ import annotations

import os
import signal
import subprocess

import trio


async def _kill_process_group(process: trio.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def run_check(
    argv: list[str], env: dict[str, str], cwd: str | None, timeout: float
) -> tuple[bool, str]:
    """Run a check once: (healthy, its last line of output, or why not). Killed with
    its process group at the timeout (what it started goes with it)."""
    done: list[subprocess.CompletedProcess[bytes]] = []
    try:
        with trio.move_on_after(timeout):
            done.append(
                await trio.run_process(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    start_new_session=True,
                    deliver_cancel=_kill_process_group,
                )
            )
    except OSError as exc:
        return False, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    if not done:
        return False, f"timed out after {timeout:g} s"
    result = done[0]
    lines = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()
    code = result.returncode
    quiet = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
    return code == 0, lines[-1].strip()[:200] if lines else quiet
