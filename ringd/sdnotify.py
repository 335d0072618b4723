"""systemd's service notification protocol (sd_notify(3)) in a few lines.

A notification is one datagram of ``KEY=VALUE`` lines to the Unix socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``).
Without that variable every call is a no-op, so the daemon runs the same with
or without systemd. No library: the protocol is one ``sendto``, and the
packages that wrap it either need libsystemd or are unmaintained.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from typing import TYPE_CHECKING, NoReturn

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

logger = logging.getLogger(__name__)

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(name: str) -> str | None:
    if name.startswith("@"):
        return "\0" + name[1:]  # abstract namespace
    if name.startswith("/"):
        return name
    return None  # e.g. vsock: addresses (systemd >= 254 in VMs): not supported


class Notifier:
    """Sends notifications to systemd, or nothing when not run by it.

    Args:
        socket_name: the value of ``$NOTIFY_SOCKET`` (None: disabled).
        watchdog: the watchdog period in seconds (None: no watchdog).
    """

    def __init__(self, socket_name: str | None, watchdog: float | None = None) -> None:
        self.address = _address(socket_name) if socket_name else None
        if socket_name and self.address is None:
            logger.warning("NOTIFY_SOCKET=%r: unsupported address; not notifying", socket_name)
        self.watchdog = watchdog if self.address is not None else None
        self._status: str | None = None
        self._stopping = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read and remove systemd's variables from ``environ`` (default: os.environ).

        They are removed so that children, the guard and a private etcd do not
        inherit them: etcd would send its own READY=1, and a child that is a
        notify-aware daemon would believe it is the service.
        """
        env = os.environ if environ is None else environ
        name, usec, pid = (env.pop(var, None) for var in ENV_VARS)
        watchdog = None
        # WATCHDOG_PID names the process the watchdog is for; absent means us.
        if usec and (pid is None or pid == str(os.getpid())):
            try:
                watchdog = int(usec) / 1e6 or None
            except ValueError:
                logger.warning("WATCHDOG_USEC=%r is not a number; no watchdog", usec)
        return cls(name, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one notification of ``lines`` (e.g. ``"READY=1"``); True if sent.

        Never blocks and never raises: a lost notification must not stop the daemon.
        """
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            logger.warning("sd_notify %s failed: %s", lines[0].split("=")[0], exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        """STOPPING=1; from now on ``run`` only pings the watchdog."""
        self._stopping = True
        self._status = status
        self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Send ``STATUS=`` when it differs from the last one sent."""
        if status != self._status:
            self._status = status
            self.notify(f"STATUS={status}")

    async def run(self, status: Callable[[], str], *, period: float = 1.0) -> NoReturn:
        """Ping the watchdog every half of its period and keep STATUS= current.

        Run it in the daemon's root nursery: if the trio loop is stuck the pings
        stop, and systemd restarts the service after ``WatchdogSec`` (which it
        arms once READY=1 has been sent).

        Args:
            status: called every ``period`` until STOPPING=1; its text is sent
                when it changes.
            period: how often to look at ``status``.
        """
        ping = self.watchdog / 2 if self.watchdog else math.inf
        next_ping = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_ping:
                self.notify("WATCHDOG=1")
                next_ping = now + ping
            if not self._stopping:
                self.status(status())
            await trio.sleep_until(min(next_ping, now + period))
