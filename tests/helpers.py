"""Test helpers: what only the tests need. Daemons, waiting and process trees come
from ``ringd.testing`` (shared with the benchmarks) and are re-exported here under
the names the tests import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ringd.testing import Daemon as Daemon
from ringd.testing import alive as alive
from ringd.testing import kill_pids as kill_pids
from ringd.testing import processes_with_env as processes_with_env
from ringd.testing import wait_until as wait_until

CHILD = str(Path(__file__).with_name("child.py"))


def child_argv(journal: Path, *extra: str) -> list[str]:
    return [sys.executable, CHILD, str(journal), *extra]


def exchange(path: str, payload: bytes, *, half_close: bool = True) -> list[dict[str, Any]]:
    """Send raw bytes to a control socket; the replies (all of them after a half-close,
    else the first line)."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        else:
            with sock.makefile("rb") as replies:
                data = replies.readline()
    return [json.loads(line) for line in data.splitlines()]
