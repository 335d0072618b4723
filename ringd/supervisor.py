"""Local supervision of child processes.

Each child runs in its own process group (its own session), so a signal reaches
every process it started. Restarts follow the child's restart type within its
restart intensity; a child that exhausts it is ``failed`` with the reason.

Children are spawned with ``subprocess.Popen`` on the trio thread (about 0.2 ms,
and no thread hop as in ``trio.lowlevel.open_process``) and awaited through a
pidfd, which wakes trio the moment the child exits.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .guard import kill_instance
from .intensity import Intensity
from .spec import ChildSpec, signal_number

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"  # ended normally and not restarted, or stopped on purpose
    FAILED = "failed"  # restart intensity exceeded, or cannot be started


@dataclass
class Child:
    """A supervised child and what is known about it now."""

    spec: ChildSpec
    fence: int  # the claim's create revision
    env: dict[str, str]
    intensity: Intensity
    state: State = State.STARTING
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None  # wall clock of the current instance
    reason: str = ""
    last_exit: str = ""
    stopping: bool = False
    popen: subprocess.Popen[bytes] | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def id(self) -> str:
        return self.spec.id

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": str(self.state),
            "pid": self.pid,
            "restarts": self.restarts,
            "started": self.started_at,
            "reason": self.reason,
            "last_exit": self.last_exit,
            "fence": self.fence,
        }


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def kill_group(pid: int, sig: int) -> None:
    """Signal a child's whole process group; a group that is gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Supervisor:
    """Runs and restarts this node's children.

    Args:
        node: this node's name (``RINGD_NODE`` of every child).
        log_dir: where each child's stdout and stderr go (``<id>.log``).
        instance: a token put in every child's environment so that the guard can
            find them (and anything they forked) if the daemon dies.
        may_run: False while this node must not run children (fenced).
        on_change: called with a child whenever its state or pid changes.
    """

    def __init__(
        self,
        *,
        node: str,
        log_dir: Path,
        instance: str,
        may_run: Callable[[], bool] = lambda: True,
        on_change: Callable[[Child], None] = lambda child: None,
    ) -> None:
        self.node = node
        self.log_dir = log_dir
        self.instance = instance
        self.may_run = may_run
        self.on_change = on_change
        self.children: dict[str, Child] = {}  # in start order
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            # However we are cancelled, leave no child running.
            for child in self.children.values():
                if child.pid is not None:
                    kill_group(child.pid, signal.SIGKILL)

    # -- commands ---------------------------------------------------------------------

    def start(self, spec: ChildSpec, *, fence: int, env: dict[str, str] | None = None) -> Child:
        """Start supervising ``spec`` (spawns at once, restarts in the background)."""
        assert self._nursery is not None, "Supervisor.run has not started"
        if spec.id in self.children:
            raise ValueError(f"child {spec.id!r} is already supervised here")
        child_env = dict(os.environ)
        child_env.update(spec.env)
        child_env.update(env or {})
        child_env.update(
            RINGD_CHILD_ID=spec.id,
            RINGD_NODE=self.node,
            RINGD_FENCE=str(fence),
            RINGD_INSTANCE=self.instance,
        )
        child = Child(
            spec=spec,
            fence=fence,
            env=child_env,
            intensity=Intensity(spec.max_restarts, spec.max_seconds),
        )
        self.children[spec.id] = child
        self._nursery.start_soon(self._supervise, child)
        return child

    async def stop(self, child_id: str, *, sweep: bool = True) -> None:
        """Stop a child (its stop signal, then SIGKILL after its timeout) and forget it.

        ``sweep`` also kills processes of the child that left its process group
        (a /proc scan: skipped at shutdown, where the guard sweeps once for all).
        """
        child = self.children.get(child_id)
        if child is None:
            return
        child.stopping = True
        if child.pid is not None:
            child.state = State.STOPPING
            self.on_change(child)
            kill_group(child.pid, signal_number(child.spec.stop_signal))
            with trio.move_on_after(child.spec.stop_timeout):
                await child.done.wait()
            if not child.done.is_set() and child.pid is not None:
                logger.warning("child %s ignored %s, killing it", child_id, child.spec.stop_signal)
                kill_group(child.pid, signal.SIGKILL)
        await child.done.wait()
        if sweep:
            await trio.to_thread.run_sync(kill_instance, self.instance, child_id)
        self.children.pop(child_id, None)

    async def stop_all(self) -> None:
        """Stop every child, in reverse start order."""
        for child_id in reversed(list(self.children)):
            await self.stop(child_id, sweep=False)

    def kill_all(self) -> None:
        """SIGKILL every child now (fencing): no grace, no restart."""
        for child in self.children.values():
            child.stopping = True
            if child.pid is not None:
                kill_group(child.pid, signal.SIGKILL)

    # -- supervision ------------------------------------------------------------------

    def _spawn(self, child: Child) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{child.id}.log"
        with open(log_path, "ab", buffering=0) as log:
            return subprocess.Popen(
                child.spec.argv,
                env=child.env,
                cwd=child.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )

    async def _wait(self, popen: subprocess.Popen[bytes]) -> int:
        fd = os.pidfd_open(popen.pid)
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        return popen.wait()  # already a zombie: does not block

    def _restart_wanted(self, child: Child, status: int) -> bool:
        restart = child.spec.restart
        if restart == "permanent":
            return True
        if restart == "temporary":
            return False
        # transient: only after an abnormal exit (a signal ringd did not send counts).
        return status != 0

    async def _supervise(self, child: Child) -> None:
        try:
            while not child.stopping:
                if not self.may_run():
                    child.state, child.reason = State.STOPPED, "node fenced"
                    break
                try:
                    popen = self._spawn(child)
                except OSError as exc:
                    child.state = State.FAILED
                    child.reason = f"cannot start {child.spec.argv[0]!r}: {exc.strerror or exc}"
                    logger.error("child %s: %s", child.id, child.reason)
                    break
                child.popen, child.pid = popen, popen.pid
                child.started_at = time.time()
                child.state = State.RUNNING
                self.on_change(child)
                try:
                    status = await self._wait(popen)
                finally:
                    # Whatever is left of its process group goes with it.
                    kill_group(popen.pid, signal.SIGKILL)
                    child.pid = None
                child.last_exit = describe_exit(status)
                if child.stopping:
                    child.state = State.STOPPED
                    break
                logger.info("child %s (pid %d): %s", child.id, popen.pid, child.last_exit)
                if not self._restart_wanted(child, status):
                    child.state, child.reason = State.STOPPED, child.last_exit
                    break
                if not child.intensity.allow(time.monotonic()):
                    child.state = State.FAILED
                    child.reason = (
                        f"restart intensity exceeded ({child.spec.max_restarts} restarts in "
                        f"{child.spec.max_seconds:g} s); last: {child.last_exit}"
                    )
                    logger.error("child %s failed: %s", child.id, child.reason)
                    break
                child.restarts += 1
                child.state = State.RESTARTING
        finally:
            child.pid = None
            child.done.set()
            self.on_change(child)
