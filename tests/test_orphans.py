"""No orphans: when a daemon dies, however it dies, its children and theirs die too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from ringd.guard import Guard, kill_groups, start_ticks

from .helpers import alive, wait_until

if TYPE_CHECKING:
    from .conftest import Cluster

# The child starts a grandchild in a new session (so not even its process group
# holds it) and both sleep.
FORKER = """
import os, subprocess, sys, time
env = dict(os.environ, TEST_ROLE="grandchild")
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_daemon_death_leaves_no_process_of_the_tree(cluster: Cluster, how: str) -> None:
    node = cluster.daemon("n1")
    node.call(
        "start_child",
        spec={
            "id": "forker",
            "argv": [sys.executable, "-c", FORKER],
            "env": {"TEST_CLUSTER": cluster.name},
        },
    )
    tree = wait_until(
        lambda: len(cluster.children()) == 2 and cluster.children(), 10, "child and grandchild"
    )
    assert {env.get("TEST_ROLE") for env in tree.values()} == {None, "grandchild"}
    if how == "sigkill":
        node.kill()
    else:
        assert node.stop() == 0
    wait_until(lambda: not cluster.children(), 3, "the whole tree gone")


def test_stopping_a_child_also_stops_what_escaped_its_group(cluster: Cluster) -> None:
    node = cluster.daemon("n1")
    env = {"TEST_CLUSTER": cluster.name}
    node.call(
        "start_child", spec={"id": "forker", "argv": [sys.executable, "-c", FORKER], "env": env}
    )
    node.call("start_child", spec={"id": "bystander", "argv": ["sleep", "600"], "env": env})
    wait_until(lambda: len(cluster.children()) == 3, 10, "forker, its grandchild and the bystander")
    node.call("delete_child", id="forker", wait=True, timeout=10)
    left = wait_until(
        lambda: (c := cluster.children()) and len(c) == 1 and c, 5, "only the bystander left"
    )
    assert [env["RINGD_CHILD_ID"] for env in left.values()] == ["bystander"]


# A child that replaces its environment (as nginx or setproctitle overwrite theirs):
# same pid, same process group, no RINGD_INSTANCE in /proc/<pid>/environ any more.
HIDDEN = ["sh", "-c", "exec env -i /usr/bin/sleep 600"]


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
def test_a_child_that_hid_its_environment_dies_with_its_daemon(cluster: Cluster, how: str) -> None:
    """The guard also kills each child's process group, reported by the daemon at
    spawn: the token scan alone missed this child when its daemon was SIGKILLed or
    frozen, and it ran on while another node started it."""
    node = cluster.daemon("n1", ttl=2)
    node.call("start_child", spec={"id": "hidden", "argv": HIDDEN})
    pid = wait_until(lambda: node.call("find", id="hidden")["pid"], 10, "running")
    # Its environment is gone (env -i ran in its place): only the group finds it.
    wait_until(lambda: b"RINGD_INSTANCE" not in environ(pid), 5, "env -i exec'd")
    try:
        if how == "sigkill":
            node.kill()
        else:
            os.kill(node.pid, signal.SIGSTOP)  # frozen: the guard acts at the deadline
        wait_until(lambda: not alive(pid), 5, "the hidden child killed by the guard")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        if how == "sigstop":
            os.kill(node.pid, signal.SIGCONT)


def environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_kill_groups_spares_a_group_number_taken_by_another_process() -> None:
    """The guard kills a reported group only while its number still names that
    child (same leader start): a number reused by an unrelated process is spared."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        ticks = start_ticks(proc.pid)
        assert ticks is not None
        assert kill_groups({proc.pid: ticks + 1}) == 0 and proc.poll() is None
        assert kill_groups({proc.pid: ticks}) == 1
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_a_guard_started_anew_is_told_the_deadline_and_the_groups() -> None:
    """The guard process died and the daemon's next message starts another: that one
    must know the deadline (it did not until the next keepalive, a frozen daemon
    meanwhile went unnoticed) and the children's groups."""
    token = f"replay{os.getpid()}"
    child = subprocess.Popen(
        ["sleep", "600"], start_new_session=True, env={**os.environ, "RINGD_INSTANCE": token}
    )
    guard = Guard(token)
    try:
        guard.start()
        guard.deadline(time.monotonic() + 1.0)
        first = guard.process
        assert first is not None
        first.kill()
        first.wait()
        guard.watch_group(child.pid)  # not under trio: sent at once, by a new guard
        assert guard.process is not None and guard.process is not first
        assert child.wait(5) == -signal.SIGKILL, "killed at the replayed deadline"
    finally:
        child.kill()
        child.wait()
        guard.close()
