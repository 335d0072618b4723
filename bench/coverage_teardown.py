"""A pytest plugin for ``bench/coverage.sh`` only: the tests' daemons are stopped
with SIGTERM at teardown (SIGKILL after 15 s), not SIGKILLed at once, so that each
writes its coverage data (coverage.py saves on a normal exit; ``sigterm = true``
covers a process that dies of SIGTERM). What a test does to its daemons, a
``kill -9`` included, is unchanged."""

from __future__ import annotations

import contextlib
import subprocess

from ringd.testing.daemon import Daemon

_kill = Daemon.cleanup


def _cleanup(self: Daemon) -> None:
    if self.running():
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.stop(timeout=15)
    _kill(self)


Daemon.cleanup = _cleanup  # type: ignore[method-assign]
