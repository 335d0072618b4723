"""sd_notify: datagrams to a real socket, from the notifier and from a real daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import pytest
import trio

from ringd.protocol import Client, Unreachable
from ringd.sdnotify import Notifier

from .helpers import kill_pids, processes_with_env, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Listener:
    """What systemd does: a datagram socket that learns each sender's pid (SO_PASSCRED)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.received: list[tuple[int, list[str]]] = []

    def receive(self, timeout: float) -> tuple[int, list[str]] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                pid = struct.unpack("iII", payload[:12])[0]
        message = (pid, data.decode().split("\n"))
        self.received.append(message)
        return message

    def wait_for(self, line: str, timeout: float) -> tuple[int, list[str]]:
        """Receive until a datagram holds ``line``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is not None and line in message[1]:
                return message
        raise AssertionError(f"no {line} within {timeout} s; got {self.received}")

    def lines(self) -> list[str]:
        return [line for _, lines in self.received for line in lines]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(short_tmp: Path) -> Iterator[Listener]:
    sock = Listener(str(short_tmp / "notify"))
    yield sock
    sock.close()


# -- the notifier ---------------------------------------------------------------------


def test_unset_notify_socket_is_a_no_op() -> None:
    env = {"PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert env == {"PATH": "/bin"}


def test_path_socket_and_variables_taken_from_the_environment(
    listener: Listener, short_tmp: Path
) -> None:
    env = {
        "NOTIFY_SOCKET": str(short_tmp / "notify"),
        "WATCHDOG_USEC": "3000000",
        "WATCHDOG_PID": str(os.getpid()),
        "HOME": "/root",
    }
    notifier = Notifier.from_environ(env)
    assert env == {"HOME": "/root"}, "children must not inherit systemd's variables"
    assert notifier.watchdog == 3.0
    notifier.ready("serving")
    notifier.status("serving")  # unchanged: not sent again
    notifier.stopping("leaving")
    assert listener.receive(5) == (os.getpid(), ["READY=1", "STATUS=serving"])
    assert listener.receive(5) == (os.getpid(), ["STOPPING=1", "STATUS=leaving"])
    assert listener.receive(0.1) is None


def test_abstract_socket_name() -> None:
    name = f"ringd-test-{uuid.uuid4().hex}"
    sock = Listener("\0" + name)
    try:
        assert Notifier(f"@{name}").notify("READY=1")
        assert sock.receive(5) == (os.getpid(), ["READY=1"])
    finally:
        sock.close()


def test_watchdog_for_another_pid_or_garbage_is_off() -> None:
    other = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(other).watchdog is None
    garbage = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}
    assert Notifier.from_environ(garbage).watchdog is None


def test_unreachable_or_unsupported_socket_does_not_raise(short_tmp: Path) -> None:
    assert Notifier(str(short_tmp / "nobody")).notify("READY=1") is False
    notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False


async def test_run_pings_at_half_the_watchdog_and_sends_status_changes(
    listener: Listener, short_tmp: Path, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = Notifier(str(short_tmp / "notify"), watchdog=4.0)
    start = trio.current_time()

    def status() -> str:
        return "early" if trio.current_time() - start < 2.5 else "late"

    with trio.move_on_after(9.5):
        await notifier.run(status, period=1.0)
    assert trio.current_time() - start == 9.5
    # Pings at 0, 2, 4, 6 and 8 s; STATUS= only when the text changes (at 3 s).
    lines = []
    while (message := listener.receive(0.01)) is not None:
        lines += message[1]
    assert lines == ["WATCHDOG=1", "STATUS=early", "WATCHDOG=1", "STATUS=late"] + ["WATCHDOG=1"] * 3
    notifier.stopping("bye")
    with trio.move_on_after(2.5):
        await notifier.run(lambda: "changed", period=1.0)
    rest = []
    while (message := listener.receive(0.01)) is not None:
        rest += message[1]
    # After STOPPING=1 only the watchdog is fed.
    assert rest == ["STOPPING=1", "STATUS=bye", "WATCHDOG=1", "WATCHDOG=1"]


# -- a real daemon --------------------------------------------------------------------

ENV_PROBE = """
import json, os, sys
keys = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({k: os.environ.get(k) for k in keys}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
"""


def test_daemon_notifies_ready_watchdog_and_stopping(listener: Listener, short_tmp: Path) -> None:
    """A standalone ``ringd start`` under a fake systemd: READY=1 only once it serves."""
    sock_path = short_tmp / "ringd.sock"
    marker = uuid.uuid4().hex
    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(short_tmp / "notify"),
        WATCHDOG_USEC="1000000",  # pings every 0.5 s
    )
    env.pop("RINGD_SOCKET", None)
    log = short_tmp / "ringd.log"
    cmd = [
        sys.executable, "-m", "ringd", "start", "--name", "sd1",
        "--socket", str(sock_path), "--state-dir", str(short_tmp / "state"),
        "--lease-ttl", "3",
    ]  # fmt: skip
    with open(log, "wb") as out:
        daemon = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
    try:
        pid, lines = listener.wait_for("READY=1", 60)
        # The socket serves and the node is registered in etcd (it holds a lease).
        assert sock_path.exists()
        status = Client(str(sock_path), timeout=10).call("status")
        assert status["lease"] is not None
        assert status["node"] == "sd1"
        assert pid == daemon.pid
        assert any(line.startswith("STATUS=serving: node sd1") for line in lines)
        assert "STATUS=starting the private etcd" in listener.lines()

        before = len(listener.received)
        listener.wait_for("WATCHDOG=1", 5)
        listener.wait_for("WATCHDOG=1", 5)
        assert len(listener.received) - before <= 5, "pings about every 0.5 s"

        # Children (and the private etcd) do not inherit systemd's variables.
        probe = short_tmp / "probe.json"
        spec = {
            "id": "envprobe",
            "argv": [sys.executable, "-c", ENV_PROBE, str(probe)],
            "restart": "temporary",
            "env": {"TEST_MARKER": marker},
        }
        Client(str(sock_path), timeout=30).call("start_child", spec=spec)
        wait_until(probe.exists, 20, "the child's environment probe")
        assert json.loads(probe.read_text()) == dict.fromkeys(
            ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        )

        daemon.send_signal(signal.SIGTERM)
        pid, lines = listener.wait_for("STOPPING=1", 20)
        assert pid == daemon.pid
        assert daemon.wait(30) == 0, log.read_text()
        with pytest.raises(Unreachable):
            Client(str(sock_path), timeout=5).call("status")
        # NotifyAccess=main: every datagram came from the daemon itself.
        senders = {sender for sender, _ in listener.received}
        assert senders == {daemon.pid}, listener.received
        assert listener.lines().count("READY=1") == 1
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        kill_pids(processes_with_env(f"TEST_MARKER={marker}"))
