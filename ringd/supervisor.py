"""Local supervision of child processes, with OTP semantics.

Every child belongs to a group supervised on this node: a named group (a
``groups/<g>`` spec: strategy, intensity, restart delay) or, for a child without
one, a group of its own (one_for_one with the child's intensity). A child exit
is handled by its group (restart type, strategy, intensity). Past the group's
intensity the node level tears the group down and starts it fresh, at most 2
times in twice the group's period; past that the group has failed, which the
reconciler makes cluster-wide. A child without a group simply fails.

Each child runs in its own session (its own process group), so a signal reaches
every process it started. Children are spawned with ``posix_spawn`` on the trio
thread (no thread hop as in ``trio.lowlevel.open_process``; ``Popen`` only when
a cwd is set, which ``posix_spawn`` cannot do on 3.11); their output and exit
are watched by ``ChildIO`` (a pidfd per child wakes it the moment one exits).
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import itertools
import logging
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from . import metrics
from .childio import ChildIO
from .guard import Guard, kill_instance
from .health import run_check
from .intensity import Intensity
from .logs import RotatingLog
from .spec import ChildSpec, GroupSpec, signal_number, spec_digest

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .records import Health

logger = logging.getLogger(__name__)

# Python ignores these; an exec'd child must get the default dispositions back.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    BACKOFF = "backoff"  # waiting out a restart delay
    STOPPING = "stopping"
    STOPPED = "stopped"  # ended normally and not restarted, or stopped on purpose
    FAILED = "failed"  # intensity exhausted (child or group), or cannot be started


@dataclass(eq=False, slots=True)
class Child:
    """A supervised child and what is known about it now."""

    spec: ChildSpec
    key: str  # the instance: the spec's id, or "<id>/<replica>" for replicas after the first
    fence: int  # the claim's create revision
    group: LocalGroup
    log: RotatingLog
    extra_env: dict[str, str]  # RINGD_ROLE, RINGD_HANDOFF_FILE, ...
    state: State = State.STARTING
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None  # wall clock of the current instance
    reason: str = ""
    last_exit: str = ""
    stopping: bool = False  # its next exit is expected: nobody restarts it
    terminated: bool = False  # stopped by terminate-child: stays stopped
    exited: trio.Event = field(default_factory=trio.Event)
    executable: str | None = None  # argv[0] resolved on the child's PATH
    popen: subprocess.Popen[bytes] | None = None
    revision: int | None = None  # the spec key's mod revision it was started from
    digest: str = ""  # spec_digest(spec)
    ready: bool = False  # the current instance ran min_ready s (and passed a first check)
    health: Health = ""  # "" without a check
    halted: str = ""  # an instance of this spec failed before it was ready (until one is)
    check_failures: int = 0  # in a row
    health_kill: str = ""  # why the current instance is being killed for its health
    tending: trio.CancelScope | None = None  # the current instance's readiness and checks

    @property
    def id(self) -> str:
        """The instance key this supervisor knows the child by."""
        return self.key

    def info(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "instance": self.key,
            "role": self.extra_env.get("RINGD_ROLE", "master"),
            "group": self.spec.group,
            "state": str(self.state),
            "pid": self.pid,
            "restarts": self.restarts,
            "started": self.started_at,
            "reason": self.reason,
            "last_exit": self.last_exit,
            "fence": self.fence,
            "revision": self.revision,
            "digest": self.digest,
            "ready": self.ready,
            "health": self.health,
            "halted": self.halted,
        }


class LocalGroup:
    """One group's supervisor on this node: its members in start order, its intensity,
    and the node-level intensity that restarts it as a whole."""

    __slots__ = ("intensity", "lock", "members", "node_intensity", "node_restarts", "solo", "spec")

    def __init__(self, spec: GroupSpec, *, solo: bool = False) -> None:
        self.spec = spec
        self.solo = solo  # a child without a group: it fails, no node level
        self.members: list[Child] = []
        self.intensity = Intensity(spec.max_restarts, spec.max_seconds)
        # supervisorring: the local supervisor may be restarted 2 times in 2 x its period.
        self.node_intensity = Intensity(2, 2 * spec.max_seconds)
        self.node_restarts = 0
        self.lock = trio.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    def update(self, spec: GroupSpec) -> None:
        if spec != self.spec:
            self.spec = spec
            self.intensity.max_restarts, self.intensity.max_seconds = (
                spec.max_restarts,
                spec.max_seconds,
            )
            self.node_intensity.max_seconds = 2 * spec.max_seconds

    def restart_set(self, child: Child) -> list[Child]:
        """The children a restart of ``child`` involves, in start order (strategy)."""
        if self.spec.strategy == "one_for_one":
            return [child]
        start = 0 if self.spec.strategy == "one_for_all" else self.members.index(child)
        return [c for c in self.members[start:] if not c.terminated]

    def delay(self) -> float:
        """Restart delay: doubles with each restart still in the intensity window."""
        base = self.spec.restart_delay
        if base <= 0:
            return 0.0
        return float(min(base * 2 ** max(len(self.intensity) - 1, 0), self.spec.restart_delay_max))


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


def restart_wanted(restart: str, status: int) -> bool:
    """OTP: permanent always; transient after an abnormal exit; temporary never."""
    if restart == "permanent":
        return True
    if restart == "temporary":
        return False
    return status != 0


@dataclass(frozen=True, slots=True)
class ChildChanged:
    """A child's state or pid changed (the reconciler publishes it in its claim)."""

    key: str


@dataclass(frozen=True, slots=True)
class GroupFailed:
    """A group failed here past its node-level intensity."""

    group: str
    reason: str


SupervisorEvent = ChildChanged | GroupFailed


# The wait status of a child that could not be executed (a shell's "exit 127").
_EXEC_FAILED = 127 << 8
# The wait status a health check's kill counts as (exit 1: abnormal, so restarted).
_HEALTH_FAILED = 1 << 8


def _spawn_error(child: Child, exc: Exception) -> str:
    """Why a spawn failed, naming the path that did (the cwd, not the program,
    when the cwd is missing)."""
    if not isinstance(exc, OSError) or not exc.strerror:
        return str(exc)
    cwd = child.spec.cwd
    if cwd is not None and exc.filename == cwd:
        return f"cwd {cwd!r}: {exc.strerror}"
    return exc.strerror


class Supervisor:
    """Runs this node's children.

    Args:
        node: this node's name (``RINGD_NODE`` of every child).
        log_dir: where each child's output goes (``<id>.log``, rotated).
        instance: a token put in every child's environment so that the guard can
            find them (and anything they forked) if the daemon dies.
        guard: told each child's process group, which it kills too (children that
            overwrite their environment hide the token).
        may_run: False while this node must not run children (fenced).
        events: where to report ``ChildChanged`` (a child's state or pid changed)
            and ``GroupFailed`` (a group failed here past its node-level
            intensity: the reconciler makes that cluster-wide).
    """

    def __init__(
        self,
        *,
        node: str,
        log_dir: Path,
        instance: str,
        log_max_bytes: int = 10 << 20,
        log_backups: int = 3,
        mirror_output: bool = False,
        guard: Guard | None = None,
        may_run: Callable[[], bool] = lambda: True,
        events: trio.MemorySendChannel[SupervisorEvent] | None = None,
    ) -> None:
        self.node = node
        self.log_dir = log_dir
        self.instance = instance
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.mirror_output = mirror_output
        self.guard = guard
        self.may_run = may_run
        self.events = events
        self.children: dict[str, Child] = {}  # in start order
        self.groups: dict[str, LocalGroup] = {}  # named groups with members here
        self._nursery: trio.Nursery | None = None
        self._to_sweep: set[tuple[str, int]] = set()  # (child id, fence) of stopped instances
        self._sweep_wanted = trio.Event()
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("RINGD_")}
        self.io = ChildIO()  # every child's output pipe and exit, in one task
        # (when, sequence, child, pid): instances without a check, ready at ``when``
        self._readiness: list[tuple[float, int, Child, int]] = []
        self._ready_seq = itertools.count()
        self._readiness_changed = trio.Event()

    def _report(self, event: SupervisorEvent) -> None:
        if self.events is not None:
            # Unbounded: never blocks. Closed only once the reconciler has stopped.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self.events.send_nowait(event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.io.run)
                nursery.start_soon(self._mark_ready)
                task_status.started()
                await self._sweep_escapees()
        finally:
            # However we are cancelled, leave no child running.
            for child in self.children.values():
                if child.pid is not None:
                    kill_group(child.pid, signal.SIGKILL)

    def _became_ready(self, child: Child) -> None:
        # An earlier failure of this spec before it was ready no longer halts the
        # rollout (nothing else could resume it).
        child.ready, child.halted = True, ""
        self._report(ChildChanged(child.id))

    async def _mark_ready(self) -> None:
        """Children without a check are ready once they have run ``min_ready``
        seconds (the same instance: a restart meanwhile starts its own timer)."""
        while True:
            now = trio.current_time()
            while self._readiness and self._readiness[0][0] <= now:
                _, _, child, pid = heapq.heappop(self._readiness)
                if child.pid == pid and child.state == State.RUNNING and not child.ready:
                    self._became_ready(child)
            self._readiness_changed = trio.Event()
            with trio.move_on_at(self._readiness[0][0] if self._readiness else math.inf):
                await self._readiness_changed.wait()

    async def _sweep_escapees(self) -> None:
        """Kill processes of stopped children that left their process group (a
        grandchild in a session of its own): one /proc scan per batch of stops."""
        while True:
            await self._sweep_wanted.wait()
            await trio.sleep(0.05)  # let a burst of stops (a move) share one scan
            self._sweep_wanted = trio.Event()
            stopped, self._to_sweep = self._to_sweep, set()
            running = {c.pid for c in self.children.values() if c.pid is not None}
            killed = await trio.to_thread.run_sync(kill_instance, self.instance, stopped, running)
            if killed:
                logger.warning(
                    "killed %d escaped processes of stopped child instances %s",
                    killed,
                    sorted(f"{child}@{fence}" for child, fence in stopped),
                )

    # -- commands ---------------------------------------------------------------------

    def start(
        self,
        spec: ChildSpec,
        *,
        fence: int,
        group: GroupSpec | None = None,
        key: str | None = None,
        env: dict[str, str] | None = None,
        revision: int | None = None,
    ) -> Child:
        """Supervise ``spec`` here: spawn it now and restart it as its group says.

        Args:
            group: the spec of ``spec.group`` (None for a child without a group).
            key: the instance key (default: the spec's id).
            env: more ``RINGD_*`` variables for this instance.
            revision: the mod revision of the spec's key (published in the claim).
        """
        key = key or spec.id
        if key in self.children:
            raise ValueError(f"child {key!r} is already supervised here")
        if group is None:
            # A group of its own: one_for_one with the child's intensity.
            local = LocalGroup(
                GroupSpec(
                    name=key.replace("/", "@"),
                    max_restarts=spec.max_restarts,
                    max_seconds=spec.max_seconds,
                ),
                solo=True,
            )
        else:
            local = self.groups.get(group.name) or self.groups.setdefault(
                group.name, LocalGroup(group)
            )
            local.update(group)
        log = RotatingLog(
            self.log_path(key),
            max_bytes=self.log_max_bytes,
            backups=self.log_backups,
            mirror_prefix=f"{key}| " if self.mirror_output else None,
        )
        child = Child(spec=spec, key=key, fence=fence, group=local, log=log, extra_env=env or {})
        child.revision, child.digest = revision, spec_digest(spec)
        local.members.append(child)
        self.children[key] = child
        self._launch(child)
        return child

    def log_path(self, key: str) -> Path:
        return self.log_dir / (key.replace("/", "@") + ".log")

    def update_group(self, spec: GroupSpec) -> None:
        if local := self.groups.get(spec.name):
            local.update(spec)

    async def stop(self, child_id: str, *, sweep: bool = True) -> None:
        """Stop a child (its stop signal, then SIGKILL after its timeout) and forget it.

        ``sweep`` then also kills, soon after, processes of the child that left its
        process group (one /proc scan for a batch of stops; skipped at shutdown,
        where the guard sweeps once for all).
        """
        child = self.children.get(child_id)
        if child is None:
            return
        async with child.group.lock:
            if self.children.get(child_id) is not child:
                return  # another task stopped it while we waited for the lock
            await self._terminate_process(child)
            child.state = State.STOPPED
            child.group.members.remove(child)
            if not child.group.members and not child.group.solo:
                self.groups.pop(child.group.name, None)
            del self.children[child_id]
        if sweep:
            self._to_sweep.add((child.spec.id, child.fence))
            self._sweep_wanted.set()

    async def stop_all(self, then: Callable[[Child], None] = lambda child: None) -> None:
        """Stop every child; ``then(child)`` after each stops (graceful leave releases
        its claim there, while others are still stopping).

        A group's members stop in reverse start order, each after the next one has
        exited (OTP: a later child may depend on an earlier one). Groups, and the
        children without a group, share no such order: they stop at the same time,
        signalled in reverse start order, so that a node with hundreds of children
        hands them over in about the time of its slowest child, not of their sum.
        """
        units: dict[LocalGroup, list[Child]] = {}
        for child in reversed(list(self.children.values())):
            units.setdefault(child.group, []).append(child)

        async def stop_members(members: list[Child]) -> None:
            for child in members:
                await self.stop(child.id, sweep=False)  # the guard sweeps once at exit
                then(child)

        async with trio.open_nursery() as nursery:
            for members in units.values():
                nursery.start_soon(stop_members, members)

    def kill_all(self) -> None:
        """SIGKILL every child now (fencing): no grace, no restart."""
        for child in self.children.values():
            child.stopping = True
            if child.pid is not None:
                kill_group(child.pid, signal.SIGKILL)

    async def terminate(self, child_id: str) -> Child:
        """Stop a child but keep it here, stopped, until ``restart`` (OTP terminate_child)."""
        child = self.children[child_id]
        async with child.group.lock:
            self._still_supervised(child)
            child.terminated = True
            await self._terminate_process(child)
            child.state, child.reason = State.STOPPED, "terminated by operator"
            self._report(ChildChanged(child.id))
        return child

    async def restart(self, child_id: str) -> Child:
        """Start a terminated, stopped or failed child again; restart a running one."""
        child = self.children[child_id]
        async with child.group.lock:
            self._still_supervised(child)
            await self._terminate_process(child)
            child.terminated = False
            child.reason = ""
            self._launch(child)
        return child

    def _still_supervised(self, child: Child) -> None:
        """After waiting for its group's lock: the child may have been stopped and
        forgotten meanwhile (moved, deleted), its claim released. Starting it then
        would run a process nobody tracks, without a claim.

        Raises:
            KeyError: it is gone.
        """
        if self.children.get(child.key) is not child:
            raise KeyError(child.key)

    def signal(self, child_id: str, signum: int) -> Child:
        child = self.children[child_id]
        if child.pid is None:
            raise ProcessLookupError(f"child {child_id} has no process")
        kill_group(child.pid, signum)
        return child

    # -- processes --------------------------------------------------------------------

    def child_env(self, child: Child) -> dict[str, str]:
        """The environment ``child`` runs with (``ringctl exec`` runs beside it so)."""
        return self._env(child)

    def _env(self, child: Child) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(child.spec.env)
        env.update(child.extra_env)
        env.update(
            RINGD_CHILD_ID=child.spec.id,
            RINGD_NODE=self.node,
            RINGD_FENCE=str(child.fence),
            RINGD_INSTANCE=self.instance,
        )
        return env

    def _spawn(self, child: Child, out: int) -> int:
        env = self._env(child)
        if child.spec.cwd is None:
            if child.executable is None:
                argv0 = child.spec.argv[0]
                found = (
                    argv0 if "/" in argv0 else shutil.which(argv0, path=env.get("PATH", os.defpath))
                )
                if found is None:
                    raise FileNotFoundError(2, "not found on PATH", argv0)
                child.executable = found
            return os.posix_spawn(
                child.executable,
                child.spec.argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, out, 2),
                ],
                setsid=True,
                setsigdef=_RESET_SIGNALS,
            )
        child.popen = subprocess.Popen(
            child.spec.argv,
            env=env,
            cwd=child.spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        return child.popen.pid

    def _launch(self, child: Child) -> bool:
        """Spawn the child's next instance (sync: a few hundred microseconds)."""
        assert self._nursery is not None, "Supervisor.run has not started"
        child.stopping = False
        if not self.may_run():
            child.state, child.reason = State.STOPPED, "node fenced"
            self._report(ChildChanged(child.id))
            return False
        read_fd = write_fd = -1
        pid = None
        try:
            read_fd, write_fd = os.pipe()
            pid = self._spawn(child, write_fd)
            os.close(write_fd)
            write_fd = -1
            child.exited = trio.Event()
            self.io.watch(pid, read_fd, child.log, lambda status: self._exited(child, pid, status))
        except Exception as exc:
            # No descriptors (EMFILE), a program that cannot run, or anything else the
            # spawn refuses: the child fails here; neither a descriptor nor the
            # daemon goes with it (this is also called from a restart's task).
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
            if pid is not None:  # spawned but not watched: it must not run unseen
                kill_group(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                if child.popen is not None:  # reaped here: Popen must never wait for it
                    child.popen.returncode = -signal.SIGKILL
                    child.popen = None
            child.reason = f"cannot start {child.spec.argv[0]!r}: {_spawn_error(child, exc)}"
            logger.error("child %s: %s", child.id, child.reason)
            child.halted = child.halted or child.reason
            if restart_wanted(child.spec.restart, _EXEC_FAILED):
                # A failed start is retried like a crash (supervisord's startretries):
                # under the restart intensity and its backoff, escalating past it.
                child.last_exit = child.reason
                child.state = State.RESTARTING
                self._report(ChildChanged(child.id))
                self._nursery.start_soon(self._handle_exit, child, _EXEC_FAILED)
                return False
            child.state = State.FAILED
            self._report(ChildChanged(child.id))
            return False
        if self.guard is not None:
            self.guard.watch_group(pid)
        child.pid = pid
        child.started_at = time.time()
        child.state = State.RUNNING
        child.ready, child.check_failures, child.health_kill = False, 0, ""
        child.health = "starting" if child.spec.check else ""
        if child.spec.check:
            self._nursery.start_soon(self._tend, child, pid)
        else:  # only readiness: a timer in one shared heap, not a task per child
            due = trio.current_time() + child.spec.min_ready
            heapq.heappush(self._readiness, (due, next(self._ready_seq), child, pid))
            self._readiness_changed.set()
        self._report(ChildChanged(child.id))
        return True

    def _exited(self, child: Child, pid: int, status: int) -> None:
        """ChildIO callback: the child's process exited and is reaped."""
        kill_group(pid, signal.SIGKILL)  # whatever is left of its process group goes with it
        if self.guard is not None:
            self.guard.forget_group(pid)
        child.pid = None
        if child.popen is not None:
            child.popen.returncode = status  # reaped by us; keep Popen from reaping it
            child.popen = None
        if child.tending is not None:
            child.tending.cancel()
            child.tending = None
        child.last_exit = child.health_kill or describe_exit(status)
        if child.health_kill:
            status = _HEALTH_FAILED  # a failure, whatever the process made of the signal
        child.health_kill = ""
        child.exited.set()
        if child.stopping:
            return
        logger.info("child %s (pid %d): %s", child.id, pid, child.last_exit)
        if not child.ready and not child.halted:
            child.halted = f"{child.last_exit} before it was ready"
        assert self._nursery is not None
        self._nursery.start_soon(self._handle_exit, child, status)

    # -- readiness and health ---------------------------------------------------------

    async def _tend(self, child: Child, pid: int) -> None:
        """The current instance's readiness (``min_ready``, and a first passing check)
        and its health checks, until it exits (``_exited`` cancels this)."""
        spec = child.spec
        with trio.CancelScope() as scope:
            child.tending = scope
            start = trio.current_time()
            passed = spec.check is None
            next_check = start + min(1.0, spec.check_interval) if spec.check else math.inf
            while child.pid == pid:
                now = trio.current_time()
                if not child.ready and passed and now >= start + spec.min_ready:
                    self._became_ready(child)
                ready_at = start + spec.min_ready if passed and not child.ready else math.inf
                if min(next_check, ready_at) == math.inf:
                    return
                await trio.sleep_until(min(next_check, ready_at))
                if trio.current_time() >= next_check:
                    healthy, said = await self._run_check(child)
                    next_check = trio.current_time() + spec.check_interval
                    passed = passed or healthy
                    if not self._checked(child, pid, healthy, said):
                        return

    def _checked(self, child: Child, pid: int, healthy: bool, said: str) -> bool:
        """Record one check's result; False once the instance is being restarted."""
        child.check_failures = 0 if healthy else child.check_failures + 1
        health: Health = "healthy" if healthy else "unhealthy"
        if child.health != health:
            child.health = health
            self._report(ChildChanged(child.id))
        if child.check_failures < child.spec.check_failures:
            return True
        # Restarted like a crash: counted by the restart intensity.
        child.health_kill = f"health check failed: {said}"
        logger.warning("child %s (pid %d): %s", child.id, pid, child.health_kill)
        kill_group(pid, signal_number(child.spec.stop_signal))
        assert self._nursery is not None
        self._nursery.start_soon(self._kill_if_still, child, pid, child.spec.stop_timeout)
        return False

    async def _kill_if_still(self, child: Child, pid: int, after: float) -> None:
        await trio.sleep(after)
        if child.pid == pid:
            kill_group(pid, signal.SIGKILL)

    async def _run_check(self, child: Child) -> tuple[bool, str]:
        assert child.spec.check is not None
        # With the child's environment (its token too: the guard kills a check
        # still running when the daemon dies) and cwd.
        return await run_check(
            child.spec.check, self._env(child), child.spec.cwd, child.spec.check_timeout
        )

    async def _terminate_process(self, child: Child) -> None:
        """Stop the child's current instance, if any: stop signal, then SIGKILL."""
        child.stopping = True
        pid = child.pid
        if pid is None:
            return
        child.state = State.STOPPING
        self._report(ChildChanged(child.id))
        kill_group(pid, signal_number(child.spec.stop_signal))
        with trio.move_on_after(child.spec.stop_timeout):
            await child.exited.wait()
        if not child.exited.is_set():
            logger.warning("child %s ignored %s, killing it", child.id, child.spec.stop_signal)
            kill_group(pid, signal.SIGKILL)
            await child.exited.wait()

    # -- supervision ------------------------------------------------------------------

    async def _handle_exit(self, child: Child, status: int) -> None:
        group = child.group
        async with group.lock:
            if child.stopping or self.children.get(child.id) is not child:
                return  # stopped meanwhile (perhaps another instance under the same key)
            if not restart_wanted(child.spec.restart, status):
                child.state, child.reason = State.STOPPED, child.last_exit
                self._report(ChildChanged(child.id))
                return
            if not group.intensity.allow(trio.current_time()):
                await self._escalate(group, f"{child.id}: {child.last_exit}")
                return
            targets = group.restart_set(child)
            for sibling in reversed(targets):
                if sibling is not child:
                    await self._terminate_process(sibling)
            restart = []
            for c in targets:
                if c is not child and c.spec.restart == "temporary":
                    c.state, c.reason = State.STOPPED, f"stopped with its group ({child.id} exited)"
                    self._report(ChildChanged(c.id))
                else:
                    restart.append(c)
            delay = group.delay()
            for c in restart:
                c.restarts += 1
                c.state = State.BACKOFF if delay else State.RESTARTING
            metrics.RESTARTS.labels(group.name if not group.solo else "").inc(len(restart))
            if delay:
                assert self._nursery is not None
                self._nursery.start_soon(self._delayed_launch, group, restart, delay)
                for c in restart:
                    self._report(ChildChanged(c.id))
                return
            for c in restart:
                self._launch(c)

    async def _delayed_launch(self, group: LocalGroup, children: list[Child], delay: float) -> None:
        await trio.sleep(delay)
        async with group.lock:
            for c in children:
                # Not if it was stopped or fenced (kill_all) while it waited.
                if (
                    c.state == State.BACKOFF
                    and c.id in self.children
                    and not (c.terminated or c.stopping)
                ):
                    self._launch(c)

    async def _escalate(self, group: LocalGroup, cause: str) -> None:
        """The group exceeded its intensity on this node (called with its lock held)."""
        spec = group.spec
        reason = (
            f"restart intensity exceeded ({spec.max_restarts} restarts in {spec.max_seconds:g} s)"
            f"; last: {cause}"
        )
        for c in reversed(group.members):
            await self._terminate_process(c)
        if group.solo:
            (child,) = group.members
            child.state, child.reason = State.FAILED, reason
            logger.error("child %s failed: %s", child.id, reason)
            self._report(ChildChanged(child.id))
            return
        if group.node_intensity.allow(trio.current_time()):
            # Step 2: the node level starts the group fresh.
            group.node_restarts += 1
            metrics.ESCALATIONS.labels(group.name, "node").inc()
            group.intensity.reset()
            logger.warning(
                "group %s on %s: %s; restarting the whole group (node level, %d)",
                group.name, self.node, reason, group.node_restarts,
            )  # fmt: skip
            for c in group.members:
                if not c.terminated and c.spec.restart != "temporary":
                    c.restarts += 1
                    self._launch(c)
            return
        # Step 3: the group fails here, and so everywhere.
        reason = (
            f"failed on {self.node} past its node-level intensity "
            f"(2 in {2 * spec.max_seconds:g} s): {reason}"
        )
        logger.error("group %s %s", group.name, reason)
        for c in group.members:
            c.state, c.reason = State.FAILED, f"group {group.name} {reason}"
            self._report(ChildChanged(c.id))
        metrics.ESCALATIONS.labels(group.name, "cluster").inc()
        self._report(GroupFailed(group.name, reason))
