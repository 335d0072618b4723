"""One real ``ringd start`` process, as tests and benchmarks run it: its own
socket, state directory and log file, started, waited for, stopped and killed by
pid."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..protocol import Client, RemoteError, Unreachable
from .processes import helpers_of, kill_pids, wait_gone
from .waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterable


class DaemonExited(AssertionError):
    """The daemon under test exited (the message has the end of its log)."""


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGKILL), in the child before exec: a daemon must not
    # outlive a benchmark that was SIGKILLed.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


class Daemon:
    """``python -m ringd start --name NAME`` with ``NAME.sock``, ``NAME/`` (state)
    and ``NAME.log`` under ``base`` unless told other paths.

    Args:
        name: the node name.
        base: the directory of its files.
        etcd: the endpoint; None for the config file's, or standalone mode (its own
            private etcd) when that names none.
        cluster: the cluster name (the key prefix); None for the default.
        ttl: the lease TTL in seconds; None for the default.
        config: a TOML configuration file.
        args: more ``ringd start`` options (also ``extra_args``, until it starts).
        new_session: in a session of its own, so that a Ctrl-C at the terminal
            reaches the caller only, which stops the daemon in its own order.
        die_with_parent: SIGKILLed by the kernel if the caller dies.
    """

    def __init__(
        self,
        name: str,
        base: Path,
        *,
        etcd: str | None = None,
        cluster: str | None = None,
        ttl: float | None = None,
        config: Path | None = None,
        args: list[str] | None = None,
        socket: Path | None = None,
        state_dir: Path | None = None,
        log: Path | None = None,
        new_session: bool = False,
        die_with_parent: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.base = base
        self.etcd = etcd
        self.cluster = cluster
        self.ttl = ttl
        self.config = config
        self.extra_args: list[str] = list(args or [])
        self.socket = str(socket or base / f"{name}.sock")
        self.state_dir = state_dir or base / name
        self.log = log or base / f"{name}.log"
        self.new_session = new_session
        self.die_with_parent = die_with_parent
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ringd", "start", "--name", self.name]
        cmd += ["--socket", self.socket, "--state-dir", str(self.state_dir)]
        for option, value in (
            ("--cluster", self.cluster),
            ("--lease-ttl", self.ttl),
            ("--etcd", self.etcd),
            ("--config", self.config),
        ):
            if value is not None:
                cmd += [option, str(value)]
        return cmd + self.extra_args

    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=30)

    def call(self, op: str, **args: Any) -> Any:
        return self.client.call(op, **args)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ringctl --socket <this daemon's> ARGS`` as an operator runs it, to the end."""
        ringctl = str(Path(sys.executable).with_name("ringctl"))
        return subprocess.run(
            [ringctl, "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (its output appended to the log); returns at once."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                start_new_session=self.new_session,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        return self.process

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> Daemon:
        """Spawn it and, with ``wait``, wait until it is ``ready``.

        Raises:
            DaemonExited: it exited meanwhile.
            WaitTimeout: it was not ready within ``timeout`` seconds.
        """
        self.spawn()
        if wait:
            wait_until(self.ready, timeout, f"{self.name} ready")
        return self

    def ready(self) -> bool:
        """It holds a lease (registered in etcd).

        Raises:
            DaemonExited: it has exited.
        """
        self.check()
        try:
            return self.call("status")["lease"] is not None
        except (Unreachable, RemoteError):
            return False

    def check(self) -> None:
        """Raise DaemonExited if the process has exited."""
        assert self.process is not None, f"{self.name} was never started"
        if self.process.poll() is not None:
            raise DaemonExited(f"{self.name} exited {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def helpers(self) -> dict[str, int]:
        """Its guard and, in standalone mode, its private etcd, by pid."""
        return helpers_of(self.pid) if self.running() else {}

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: returns the exit status.

        Raises:
            subprocess.TimeoutExpired: it is still running after ``timeout``.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def shutdown(self, helpers: Iterable[int] = (), timeout: float = 60) -> None:
        """Stop it as an operator would (SIGTERM; SIGKILL after ``timeout``), then
        kill whatever of its helpers is left: ``helpers`` (pids read while it ran)
        and those it has now."""
        left = {*helpers, *self.helpers().values()}
        if self.running():
            try:
                self.stop(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        kill_pids(wait_gone(left, 10))

    def cleanup(self) -> None:
        """SIGKILL it if it still runs (its guard then kills its children)."""
        if self.running():
            self.kill()
