"""The local supervisor with real child processes (no etcd): restart types,
strategies, intensity and escalation, restart delay, shutdown, logs."""

from __future__ import annotations

import errno
import itertools
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import psutil
import pytest
import trio
import trio.testing

from ringd.intensity import Intensity
from ringd.logs import RotatingLog
from ringd.spec import ChildSpec, GroupSpec
from ringd.supervisor import Child, GroupFailed, LocalGroup, State, Supervisor, restart_wanted

if TYPE_CHECKING:
    from pathlib import Path

SLEEP = ["sleep", "600"]


class Harness:
    def __init__(
        self, supervisor: Supervisor, tmp: Path, events: trio.MemoryReceiveChannel
    ) -> None:
        self.sup = supervisor
        self.tmp = tmp
        self.events = events
        self._failed: list[tuple[str, str]] = []

    @property
    def failed_groups(self) -> list[tuple[str, str]]:
        """The GroupFailed events the supervisor reported (ChildChanged ones are skipped)."""
        while True:
            try:
                event = self.events.receive_nowait()
            except trio.WouldBlock:
                return self._failed
            if isinstance(event, GroupFailed):
                self._failed.append((event.group, event.reason))

    def start(
        self, child_id: str, argv: list[str], group: GroupSpec | None = None, **fields
    ) -> Child:
        spec = ChildSpec(id=child_id, argv=argv, group=group.name if group else None, **fields)
        return self.sup.start(spec, fence=1, group=group)

    def counter(self, name: str) -> list[str]:
        """An argv that appends one line to <tmp>/<name> per start, then sleeps."""
        return ["sh", "-c", f'echo "$$" >> {self.tmp / name}; exec sleep 600']

    def starts(self, name: str) -> int:
        path = self.tmp / name
        return len(path.read_text().splitlines()) if path.exists() else 0


async def until(predicate, timeout: float = 5.0, what: str = "condition"):
    with trio.move_on_after(timeout):
        while not (result := predicate()):
            await trio.sleep(0.01)
        return result
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def h(tmp_path: Path, nursery: trio.Nursery):
    send, receive = trio.open_memory_channel(math.inf)
    sup = Supervisor(
        node="n1", log_dir=tmp_path / "logs", instance="test" + str(os.getpid()), events=send
    )
    await nursery.start(sup.run)
    harness = Harness(sup, tmp_path, receive)
    yield harness
    sup.kill_all()
    for child in list(sup.children.values()):
        if child.pid:
            await child.exited.wait()


def live_in_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    live = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                live.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return live


def running_pid(child: Child) -> int | None:
    return child.pid if child.state == State.RUNNING else None


def test_restart_types() -> None:
    assert restart_wanted("permanent", 0) and restart_wanted("permanent", 1)
    assert not restart_wanted("transient", 0)
    assert restart_wanted("transient", 1) and restart_wanted("transient", -9)
    assert not restart_wanted("temporary", 1)


async def test_permanent_transient_temporary(h: Harness) -> None:
    perm = h.start(
        "perm",
        ["sh", "-c", f"echo x >> {h.tmp / 'perm'}; sleep 0.05; exit 0"],
        max_restarts=100,
        max_seconds=1,
    )
    trans_ok = h.start("trans-ok", ["sh", "-c", "exit 0"], restart="transient")
    trans_bad = h.start("trans-bad", h.counter("tb"), restart="transient")
    temp = h.start("temp", ["sh", "-c", "exit 3"], restart="temporary")
    await until(lambda: h.starts("perm") >= 3, what="permanent restarted after a normal exit")
    await until(lambda: trans_ok.state == State.STOPPED and temp.state == State.STOPPED)
    assert trans_ok.restarts == 0 and trans_ok.reason == "exit status 0"
    assert temp.restarts == 0 and temp.reason == "exit status 3"
    # transient: a signal ringd did not send is abnormal, so it is restarted.
    pid = await until(lambda: running_pid(trans_bad) and h.starts("tb") == 1 and trans_bad.pid)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: h.starts("tb") == 2 and running_pid(trans_bad))
    assert trans_bad.restarts == 1 and trans_bad.last_exit == "killed by SIGKILL"
    # ...but one ringd stops on purpose is not.
    await h.sup.stop("trans-bad")
    assert "trans-bad" not in h.sup.children
    assert perm.restarts >= 2


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [("one_for_one", {"b"}), ("one_for_all", {"a", "b", "c"}), ("rest_for_one", {"b", "c"})],
)
async def test_strategies(h: Harness, strategy: str, restarted: set[str]) -> None:
    group = GroupSpec(name="g", strategy=strategy, max_restarts=5, max_seconds=10)
    children = {name: h.start(name, h.counter(name), group) for name in "abc"}
    pids = {name: await until(lambda c=c: running_pid(c)) for name, c in children.items()}
    await until(lambda: all(h.starts(n) == 1 for n in "abc"), what="first starts recorded")
    os.kill(pids["b"], signal.SIGKILL)
    await until(
        lambda: all(h.starts(n) == (2 if n in restarted else 1) for n in "abc"),
        what="strategy restarts",
    )
    await until(lambda: all(running_pid(c) for c in children.values()))
    for name, child in children.items():
        assert (child.pid != pids[name]) == (name in restarted), name
        assert child.restarts == (1 if name in restarted else 0)


async def test_one_for_all_drops_temporary_siblings(h: Harness) -> None:
    group = GroupSpec(name="g", strategy="one_for_all", max_restarts=5, max_seconds=10)
    temp = h.start("t", h.counter("t"), group, restart="temporary")
    perm = h.start("p", h.counter("p"), group)
    pid = await until(lambda: running_pid(perm))
    await until(lambda: running_pid(temp) and h.starts("p") == h.starts("t") == 1)
    os.kill(pid, signal.SIGKILL)
    await until(
        lambda: h.starts("p") == 2 and running_pid(perm),
        what=f"p restarted: {perm.info()} {temp.info()}",
    )
    assert temp.state == State.STOPPED and "stopped with its group" in temp.reason
    assert h.starts("t") == 1


async def test_escalation_child_then_node_then_cluster(h: Harness) -> None:
    """Step 1: restarts within the group's intensity; step 2: past it, the node level
    restarts the whole group (2 times in 2 x max_seconds); step 3: the group fails."""
    group = GroupSpec(name="g", strategy="one_for_one", max_restarts=1, max_seconds=30)
    steady = h.start("steady", h.counter("steady"), group)
    crashy = h.start("crashy", ["sh", "-c", f"echo x >> {h.tmp / 'crashy'}; exit 1"], group)
    await until(lambda: h.failed_groups, timeout=10, what="group failure")
    # Each round: the first run and 1 restart; the node level adds 2 more rounds.
    assert h.starts("crashy") == 6
    # The steady child was torn down and started fresh with its group at each step 2.
    assert h.starts("steady") == 3
    assert h.sup.groups["g"].node_restarts == 2
    ((name, reason),) = h.failed_groups
    assert name == "g"
    assert "node-level intensity (2 in 60 s)" in reason and "crashy: exit status 1" in reason
    assert crashy.state == State.FAILED and steady.state == State.FAILED
    assert steady.pid is None, "a failed group's children are stopped"


async def test_solo_child_fails_past_its_intensity(h: Harness) -> None:
    child = h.start(
        "solo", ["sh", "-c", f"echo x >> {h.tmp / 'solo'}; exit 2"], max_restarts=2, max_seconds=30
    )
    await until(lambda: child.state == State.FAILED, what="solo failed")
    assert h.starts("solo") == 3 and child.restarts == 2
    assert (
        child.reason == "restart intensity exceeded (2 restarts in 30 s); last: solo: exit status 2"
    )
    assert h.failed_groups == []


def test_restart_delay_doubles_up_to_its_cap() -> None:
    group = LocalGroup(
        GroupSpec(name="g", max_restarts=10, max_seconds=60, restart_delay=0.5, restart_delay_max=3)
    )
    delays = []
    for t in range(6):
        group.intensity.allow(float(t))
        delays.append(group.delay())
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert LocalGroup(GroupSpec(name="h")).delay() == 0.0  # OTP default: immediate


async def test_restart_delay_is_applied(h: Harness) -> None:
    group = GroupSpec(
        name="g", max_restarts=10, max_seconds=60, restart_delay=0.2, restart_delay_max=0.4
    )
    path = h.tmp / "times"
    child = h.start("slow", ["sh", "-c", f"date +%s.%N >> {path}; exit 1"], group)
    await until(lambda: child.state == State.BACKOFF, what="backoff state")
    await until(lambda: path.exists() and len(path.read_text().split()) >= 4, timeout=5)
    times = [float(t) for t in path.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.4, gaps


async def test_stop_escalates_to_sigkill_and_signals_the_group(h: Harness) -> None:
    trapped = h.tmp / "trapped"
    stubborn = h.start(
        "stubborn",
        ["sh", "-c", f"trap '' TERM; touch {trapped}; sleep 600 & wait; sleep 600"],
        stop_timeout=0.3,
    )
    pid = await until(lambda: running_pid(stubborn))
    await until(trapped.exists, what="the shell's trap set")
    started = time.monotonic()
    await h.sup.stop("stubborn")
    assert 0.3 <= time.monotonic() - started < 3
    await until(lambda: not live_in_group(pid), timeout=2, what="its process group empty")


async def test_shutdown_stops_in_reverse_start_order(h: Harness) -> None:
    journal = h.tmp / "journal"
    journal.mkdir()
    child_py = str(__import__("pathlib").Path(__file__).with_name("child.py"))
    group = GroupSpec(name="g")
    for name in ("first", "second", "third"):
        h.start(name, [sys.executable, child_py, str(journal)], group)
    await until(lambda: len(list(journal.iterdir())) == 3, what="children started")
    await h.sup.stop_all()
    stops = sorted(
        (float(line.split()[4]), line.split()[1])
        for path in journal.iterdir()
        for line in path.read_text().splitlines()
        if line.startswith("stop")
    )
    assert [name for _, name in stops] == ["third", "second", "first"]


async def test_shutdown_waits_within_a_group_not_across_groups(h: Harness) -> None:
    """A group's members stop one after the other (reverse start order); separate
    groups and children without a group stop at the same time."""
    journal = h.tmp / "shutdown.log"

    def slow_to_stop(name: str) -> list[str]:
        def record(what: str) -> str:
            return f"echo {what} {name} $(date +%s%N) >> {journal}"

        on_term = f"{record('term')}; sleep 0.3; {record('exit')}; exit 0"
        trapped = h.tmp / f"{name}.trapped"
        # Single quotes: $(date) runs when the signal comes, not when the trap is set.
        return [
            "sh",
            "-c",
            f"trap '{on_term}' TERM; touch {trapped}; while :; do sleep 1 & wait $!; done",
        ]

    group = GroupSpec(name="g")
    children = [
        h.start("g1", slow_to_stop("g1"), group),
        h.start("g2", slow_to_stop("g2"), group),
        h.start("solo1", slow_to_stop("solo1")),
        h.start("solo2", slow_to_stop("solo2")),
    ]
    for child in children:
        await until(lambda c=child: running_pid(c), what=f"{child.id} running")
        trapped = h.tmp / f"{child.id}.trapped"
        await until(trapped.exists, what=f"{child.id}'s trap set")
    released = []
    await h.sup.stop_all(then=lambda child: released.append(child.id))
    assert sorted(released) == ["g1", "g2", "solo1", "solo2"] and not h.sup.children
    events = {
        (what, name): int(t)
        for what, name, t in (line.split() for line in journal.read_text().splitlines())
    }
    assert events[("exit", "g2")] <= events[("term", "g1")], "g1 stops only after g2 exited"
    concurrent = ("g2", "solo1", "solo2")
    assert max(events[("term", n)] for n in concurrent) < min(
        events[("exit", n)] for n in concurrent
    ), f"the group and the solo children stop at the same time: {events}"


async def test_terminate_then_restart(h: Harness) -> None:
    child = h.start("t", h.counter("t"))
    await until(lambda: running_pid(child) and h.starts("t") == 1)
    await h.sup.terminate("t")
    assert child.state == State.STOPPED and child.terminated and child.pid is None
    await trio.sleep(0.1)
    assert h.starts("t") == 1, "a terminated child stays stopped"
    await h.sup.restart("t")
    await until(lambda: running_pid(child) and h.starts("t") == 2)
    assert not child.terminated


async def test_a_program_that_cannot_start_is_retried_under_intensity_then_fails(
    h: Harness,
) -> None:
    """A failed exec counts as a failed start: restarted like a crash until the
    restart intensity (3 in 5 s by default) is exceeded, then failed with the reason."""
    child = h.start("ghost", ["/nonexistent/program"])
    assert child.state == State.RESTARTING
    await until(lambda: child.state == State.FAILED, what="failed past its intensity")
    assert child.restarts == 3, child.restarts
    assert "restart intensity exceeded" in child.reason
    assert "cannot start '/nonexistent/program': No such file or directory" in child.reason


async def test_a_temporary_program_that_cannot_start_fails_at_once(h: Harness) -> None:
    child = h.start("ghost", ["/nonexistent/program"], restart="temporary")
    assert child.state == State.FAILED and child.restarts == 0
    assert child.reason == "cannot start '/nonexistent/program': No such file or directory"


async def test_a_missing_cwd_is_named_not_the_program(h: Harness) -> None:
    child = h.start("badcwd", ["sleep", "100"], cwd="/no/such/dir", restart="temporary")
    assert child.state == State.FAILED
    assert child.reason == "cannot start 'sleep': cwd '/no/such/dir': No such file or directory"


async def test_a_failed_start_backs_off_like_a_crash(h: Harness) -> None:
    group = GroupSpec(name="g", restart_delay=0.2, max_restarts=5, max_seconds=30)
    started = trio.current_time()
    child = h.start("ghost", ["/nonexistent/program"], group=group)
    await until(lambda: child.restarts == 3, what="three retries")
    # The third is scheduled after two backoffs, 0.2 s then 0.4 s (doubling),
    # not in an immediate loop.
    assert trio.current_time() - started >= 0.6 - 0.05
    assert child.state == State.BACKOFF


async def test_log_rotation_keeps_the_bound(tmp_path: Path, nursery: trio.Nursery) -> None:
    bound = 64 * 1024
    sup = Supervisor(
        node="n1", log_dir=tmp_path / "logs", instance="rot", log_max_bytes=bound, log_backups=2
    )
    await nursery.start(sup.run)
    code = "import sys\nfor i in range(40000): sys.stdout.write(f'line {i:06d} ' + 'x' * 20 + '\\n')\nsys.stdout.flush()"
    child = sup.start(
        ChildSpec(id="chatty", argv=[sys.executable, "-c", code], restart="temporary"), fence=1
    )
    biggest = 0
    last_line = "line 039999 " + "x" * 20
    log = tmp_path / "logs" / "chatty.log"

    def drained() -> bool:
        """The child has exited and the pump has written its last line."""
        try:
            return child.state == State.STOPPED and log.read_text().rstrip().endswith(last_line)
        except FileNotFoundError:  # between a rotation and the next write
            return False

    with trio.fail_after(20):
        while not drained():
            for path in (tmp_path / "logs").glob("chatty.log*"):
                biggest = max(biggest, path.stat().st_size)
            await trio.sleep(0.005)
    files = sorted(p.name for p in (tmp_path / "logs").glob("chatty.log*"))
    assert files == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    sizes = [(tmp_path / "logs" / f).stat().st_size for f in files]
    assert max([*sizes, biggest]) <= bound
    assert log.read_text().rstrip().endswith(last_line)


def test_intensity_window_is_exact() -> None:
    window = Intensity(1, 1.0)
    assert window.allow(0.0) and not window.allow(1.0) and window.allow(1.01)


def test_daemon_raises_its_open_files_limit() -> None:
    """Two descriptors per child: a soft limit of 1024 would refuse children past
    ~500. Checked in a subprocess whose soft limit starts at 1024."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")
    code = (
        "import resource; from ringd.daemon import raise_fd_limit;"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE);"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard));"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    raised, soft, hard = (int(x) for x in out.stdout.split())
    assert raised == soft == (hard if hard != resource.RLIM_INFINITY else 1 << 20)


async def test_one_task_watches_every_child_without_leaking_descriptors(h: Harness) -> None:
    """ChildIO: output of many children reaches their logs, a chatty child does not
    hold up the others' exits, and stopping them leaves no descriptor behind."""
    fds_before = len(os.listdir("/proc/self/fd"))
    chatty = h.start("chatty", ["sh", "-c", "yes chatty-line"], stop_timeout=1)
    quiet = [
        h.start(f"q{i}", ["sh", "-c", f"echo hello-{i}; exec sleep 600"], restart="temporary")
        for i in range(20)
    ]
    for child in quiet:
        await until(
            lambda c=child: (
                "hello" in h.sup.log_path(c.id).read_text()
                if h.sup.log_path(c.id).exists()
                else False
            ),
            what=f"{child.id} output",
        )
    assert len(h.sup.io) == 2 * 21  # a pipe and a pidfd per running child
    for child in quiet[:5]:
        os.kill(child.pid, signal.SIGKILL)
    # The exits are seen while the chatty child keeps its pipe full.
    await until(lambda: all(c.state == State.STOPPED for c in quiet[:5]), what="exits seen")
    assert chatty.state == State.RUNNING and h.sup.log_path("chatty").stat().st_size > 0
    await h.sup.stop_all()
    await until(lambda: len(h.sup.io) == 0, what="every descriptor closed")
    assert len(os.listdir("/proc/self/fd")) <= fds_before


async def test_a_log_that_cannot_be_written_loses_output_not_the_daemon(h: Harness) -> None:
    """The logs directory removed under a chatty child: its output is lost until the
    directory is back (re-created at the next write), and nothing else happens (an
    OSError from the write used to end ChildIO's task, and with it the daemon)."""
    child = h.start("chatty", ["sh", "-c", "while :; do echo tick; sleep 0.02; done"])
    log = h.sup.log_path("chatty")
    await until(lambda: log.exists() and "tick" in log.read_text(), what="output logged")
    shutil.rmtree(log.parent)
    await until(lambda: log.exists() and "tick" in log.read_text(), what="the log back")
    assert child.state == State.RUNNING and child.pid is not None
    assert len(h.sup.io) == 2, "its pipe and pidfd still watched"


def test_failed_log_writes_warn_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")  # where its directory should be: every write fails
    log = RotatingLog(tmp_path / "file" / "x.log", max_bytes=1024, backups=1)
    for _ in range(3):
        log.write(b"lost\n")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "5 bytes of output lost" in warnings[0], warnings


async def test_a_spawn_that_cannot_be_watched_fails_the_child_and_kills_it(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors after the spawn (EMFILE from pidfd_open): the process just
    spawned is killed (it must not run unseen), the child is failed with the reason,
    and the caller (a restart's task, a reconcile pass) gets no exception."""
    spawned: list[int] = []
    spawn = h.sup._spawn

    def spawn_and_remember(child: Child, out: int) -> int:
        spawned.append(spawn(child, out))
        return spawned[-1]

    def no_descriptors(*args: object) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(h.sup, "_spawn", spawn_and_remember)
    monkeypatch.setattr(h.sup.io, "watch", no_descriptors)
    child = h.start("unwatched", SLEEP)
    assert child.state == State.RESTARTING and child.pid is None, "retried as a failed start"
    await until(lambda: child.state == State.FAILED, what="failed past its intensity")
    assert "Too many open files" in child.reason
    assert len(spawned) == 4, "the start and 3 restarts"
    assert not any(psutil.pid_exists(pid) for pid in spawned), "each killed and reaped"


async def test_restart_waiting_on_a_stop_does_not_bring_the_child_back(
    h: Harness, nursery: trio.Nursery
) -> None:
    """restart-child that waited for the group lock while the child was being
    stopped for good (a move, a delete: its claim released next) must not start it:
    that process would run without a claim, tracked by nobody."""
    argv = ["sh", "-c", f"trap '' TERM; echo $$ >> {h.tmp / 'slow'}; exec sleep 600"]
    h.start("slow", argv, stop_timeout=0.5)  # ignores SIGTERM: the stop holds the lock
    await until(lambda: h.starts("slow") == 1, what="started")
    nursery.start_soon(h.sup.stop, "slow")
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(KeyError):
        await h.sup.restart("slow")
    with pytest.raises(KeyError):
        await h.sup.terminate("slow")
    assert "slow" not in h.sup.children
    await trio.sleep(0.2)
    assert h.starts("slow") == 1, "not started again"


# -- readiness and health checks ------------------------------------------------------


async def test_a_failing_health_check_restarts_the_child_counted_by_intensity(
    h: Harness,
) -> None:
    ok = h.tmp / "ok"
    ok.touch()
    check = ["sh", "-c", f"test -e {ok} && echo fine || {{ echo 'no ok file'; exit 1; }}"]
    child = h.start(
        "web", h.counter("web"), check=check, check_interval=0.2, check_failures=2, min_ready=0
    )
    assert child.health == "starting"
    await until(lambda: child.health == "healthy", what="healthy")
    assert child.ready
    ok.unlink()
    await until(lambda: child.health == "unhealthy", what="unhealthy")
    assert child.restarts == 0, "one failure is not enough"
    await until(lambda: child.restarts == 1 and h.starts("web") == 2, what="a restart")
    assert child.last_exit == "health check failed: no ok file"
    assert len(child.group.intensity) == 1, "counted like an exit"
    # The new instance starts unchecked again; three more failures and the
    # intensity (3 in 5 s) is exceeded.
    await until(lambda: child.state == State.FAILED, timeout=15, what="failed past intensity")
    assert "health check failed: no ok file" in child.reason


async def test_ready_only_after_min_ready_and_a_first_passing_check(h: Harness) -> None:
    gate = h.tmp / "gate"
    check = ["sh", "-c", f"test -e {gate}"]
    started = trio.current_time()
    child = h.start("web", SLEEP, check=check, check_interval=0.1, min_ready=0.3)
    # Past min_ready, and a check has run and failed (not a fixed sleep: on a busy
    # machine the first check may not have run 0.5 s after the start).
    await until(
        lambda: trio.current_time() - started >= 0.3 and child.health == "unhealthy",
        what="a failed check past min_ready",
    )
    assert not child.ready
    gate.touch()
    await until(lambda: child.ready, what="ready")
    assert child.health == "healthy"


async def test_an_exit_before_ready_is_recorded_as_halting(h: Harness) -> None:
    child = h.start("flaky", ["sh", "-c", "exit 3"], min_ready=5, restart="transient")
    await until(lambda: child.halted, what="halted")
    assert child.halted == "exit status 3 before it was ready"
    steady = h.start("steady", SLEEP, min_ready=0.1)
    await until(lambda: steady.ready, what="ready")
    assert steady.halted == ""


async def test_an_instance_that_becomes_ready_no_longer_halts(h: Harness) -> None:
    """It failed once before it was ready, then its restart ran and is ready: the
    rollout may go on. Halted for good, an operator could not resume it (the same
    spec again changes nothing, and restart-child keeps the child's record)."""
    once = h.tmp / "failed-once"
    argv = ["sh", "-c", f"test -e {once} && exec sleep 600; touch {once}; exit 3"]
    child = h.start("flaky", argv, min_ready=0.2)
    await until(lambda: child.restarts == 1, what="a restart")
    assert child.halted == "exit status 3 before it was ready"
    await until(lambda: child.ready, what="ready")
    assert child.halted == ""
