"""Membership features against real daemons: drain/undrain, forget-node, the watch
stream, and node_update hooks."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from msgspec.structs import replace

from ringd.config import Config
from ringd.etcd import Etcd
from ringd.guard import start_ticks
from ringd.keys import Keys
from ringd.membership import Membership, is_dead_predecessor, pid_namespace
from ringd.protocol import Client, RemoteError
from ringd.records import Alive
from ringd.testing import etcd3_client
from ringd.view import ClusterView

from .helpers import alive, wait_until
from .timeline import descendants

if TYPE_CHECKING:
    from .conftest import Cluster


def start_children(cluster: Cluster, node, n: int) -> None:
    env = {"TEST_CLUSTER": cluster.name}
    for i in range(n):
        node.call("start_child", spec={"id": f"c{i:02d}", "argv": ["sleep", "600"], "env": env})


def placement(node) -> dict[str, str] | None:
    rows = node.call("which_children")
    if all(r["state"] == "running" for r in rows):
        return {r["id"]: r["node"] for r in rows}
    return None


def test_drain_moves_children_away_and_undrain_brings_them_back(cluster: Cluster) -> None:
    a, _b = cluster.daemon("a"), cluster.daemon("b")
    start_children(cluster, a, 12)
    before = wait_until(lambda: (p := placement(a)) and len(p) == 12 and p, 15, "12 running")
    assert set(before.values()) == {"a", "b"}
    assert a.call("drain", node="b", wait=True, timeout=15) == {"node": "b", "draining": True}
    after = wait_until(
        lambda: (p := placement(a)) and set(p.values()) == {"a"} and p, 15, "all on a"
    )
    assert len(after) == 12
    row = next(n for n in a.call("nodes") if n["node"] == "b")
    assert row["status"] == "online" and row["draining"] and row["children"] == 0
    a.call("undrain", node="b")
    back = wait_until(lambda: (p := placement(a)) and p == before and p, 15, "back as before")
    assert back == before
    with pytest.raises(RemoteError) as info:
        a.call("drain", node="nope")
    assert info.value.code == "not_found"


def test_forget_node_only_when_offline(cluster: Cluster) -> None:
    a, b = cluster.daemon("a"), cluster.daemon("b")
    with pytest.raises(RemoteError) as info:
        a.call("forget_node", node="b")
    assert info.value.code == "refused" and "online" in info.value.message
    assert b.stop() == 0
    wait_until(
        lambda: any(n["node"] == "b" and n["status"] == "offline" for n in a.call("nodes")),
        10,
        "b offline",
    )
    assert a.call("forget_node", node="b") == {"node": "b", "forgotten": True}
    assert [n["node"] for n in a.call("nodes")] == ["a"]


def test_watch_streams_node_and_child_events_in_order(cluster: Cluster) -> None:
    a = cluster.daemon("a")
    events: list[dict] = []
    ready = threading.Event()

    def reader() -> None:
        stream = Client(a.socket, timeout=30).stream("watch", what="all")
        ready.set()
        for reply in stream:
            events.append(reply["event"])
            if reply["event"].get("node") == "b" and reply["event"].get("status") == "offline":
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    ready.wait(5)
    # The stream is attached once it reports a change made after it was opened.
    a.call(
        "start_child",
        spec={"id": "sentinel", "argv": ["sleep", "600"], "env": {"TEST_CLUSTER": cluster.name}},
    )
    wait_until(
        lambda: any(e.get("id") == "sentinel" and e.get("state") == "running" for e in events),
        10,
        "the watch attached",
    )
    events.clear()
    b = cluster.daemon("b")
    a.call(
        "start_child",
        spec={"id": "w", "argv": ["sleep", "600"], "env": {"TEST_CLUSTER": cluster.name}},
    )
    # w's own event: the sentinel moving to b also sends one, and b could then stop
    # before w is even claimed.
    wait_until(
        lambda: any(
            e.get("kind") == "child" and e.get("id") == "w" and e.get("state") == "running"
            for e in events
        ),
        10,
        "w running event",
    )
    assert b.stop() == 0
    thread.join(15)
    assert not thread.is_alive()
    nodes = [(e["node"], e["status"], e["old_status"]) for e in events if e["kind"] == "node"]
    assert nodes[0] == ("b", "online", "none")
    assert nodes[-1] == ("b", "offline", "online")
    kinds = [e["kind"] for e in events if e.get("id") == "w"]
    assert kinds[0] == "spec", "w's spec is created before anything claims it"
    assert "child" in kinds
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(revisions), "delivered in etcd's order"


HOOK = """#!/bin/sh
echo "$1 $2 $3 $RINGD_HOOK_NODE $RINGD_HOOK_STATUS $RINGD_HOOK_OLD_STATUS" >> {out}
echo "hook saw $1 $2"
"""


def test_hooks_run_in_order_for_other_nodes_and_failures_do_not_disturb(
    cluster: Cluster, short_tmp: Path
) -> None:
    hooks = short_tmp / "hooks"
    hooks.mkdir()
    out = short_tmp / "hook.out"
    good = hooks / "10-record"
    good.write_text(HOOK.format(out=out))
    bad = hooks / "20-fail"
    bad.write_text("#!/bin/sh\nexit 7\n")
    slow = hooks / "30-hang"
    hung_pids = short_tmp / "hung.pids"
    slow.write_text(f"#!/bin/sh\necho $$ >> {hung_pids}\nexec sleep 600\n")
    # A hook that exits at once but leaves a process behind, holding its output
    # open: killed with its process group at the timeout.
    (hooks / "35-hang-child").write_text(f"#!/bin/sh\nsleep 600 &\necho $! >> {hung_pids}\n")
    # Not hooks: a file without the execute bit, a hidden executable and a directory
    # (searchable, so os.access(X_OK) alone would take it). None may run or be tried.
    never = short_tmp / "never.out"
    (hooks / "40-not-executable").write_text(f"#!/bin/sh\necho not-executable >> {never}\n")
    hidden = hooks / ".45-hidden"
    hidden.write_text(f"#!/bin/sh\necho hidden >> {never}\n")
    (hooks / "50-directory").mkdir()
    for path in (good, bad, slow, hooks / "35-hang-child", hidden):
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    config = short_tmp / "a.toml"
    config.write_text(f'hooks_dir = "{hooks}"\nhook_timeout = 2.0\n')
    a = cluster.daemon("a", start=False)
    a.extra_args = ["--config", str(config)]
    a.start()
    b = cluster.daemon("b")
    assert b.stop() == 0
    c = cluster.daemon("c")
    c.kill()

    def lines():
        return out.read_text().splitlines() if out.exists() else []

    wait_until(lambda: len(lines()) >= 4, 40, "four node changes seen by the hook")
    seen = [line.split() for line in lines()]
    assert [s[:3] for s in seen] == [
        ["b", "online", "none"],
        ["b", "offline", "online"],
        ["c", "online", "none"],
        ["c", "offline", "online"],
    ]
    assert all(s[:3] == s[3:] for s in seen), "the same facts in argv and environment"
    assert not any(s[0] == "a" for s in seen), "not for its own changes"
    log = a.log.read_text()
    assert "hook 10-record: hook saw b offline" in log
    assert "hook 20-fail (b offline) exited with status 7" in log
    assert "hook 30-hang (b offline) killed after 2 s" in log
    assert "hook 35-hang-child (b offline) killed after 2 s" in log
    # Every hook of b's changes has run by now (c's come after them, in order): the
    # files that are not hooks were never run, nor even tried ("could not run").
    assert not never.exists(), never.read_text()
    for name in ("40-not-executable", ".45-hidden", "50-directory"):
        assert name not in log, f"{name} is not a hook"
    assert a.call("ping")["node"] == "a"
    # The hung hooks were killed, not left behind.
    for pid in map(int, hung_pids.read_text().split()):
        wait_until(lambda pid=pid: not alive(pid), 5, f"hung hook {pid} killed")


def test_status_row_json_is_what_nodes_shows(cluster: Cluster) -> None:
    """The node's rows in etcd (``nodes/<n>/status`` and ``alive``) are what
    ``ringctl nodes`` shows: field by field with --json, and in the table."""
    a = cluster.daemon("a")
    client = etcd3_client(cluster.etcd_url)
    try:
        prefix = f"/ringd/{cluster.name}/nodes/a/"
        status, alive = (json.loads(client.get(prefix + key)[0]) for key in ("status", "alive"))
    finally:
        client.close()
    assert (status["status"], status["reason"], alive["pid"]) == ("online", "joined", a.pid)
    ringctl = [str(Path(sys.executable).with_name("ringctl")), "--socket", a.socket]
    env = {**os.environ, "COLUMNS": "250"}  # the table unwrapped
    shown = subprocess.run([*ringctl, "--json", "nodes"], capture_output=True, text=True,
                           timeout=30, check=True, env=env)  # fmt: skip
    (row,) = json.loads(shown.stdout)
    fields = ("node", "status", "last_change", "reason")
    assert {k: row[k] for k in fields} == {k: status[k] for k in fields}
    assert (row["alive"], row["host"], row["pid"]) == (True, alive["host"], alive["pid"])
    table = subprocess.run([*ringctl, "nodes"], capture_output=True, text=True, timeout=30,
                           check=True, env=env).stdout  # fmt: skip
    (line,) = [line for line in table.splitlines() if line.split()[:1] == ["a"]]
    assert line.split()[:3] == ["a", status["status"], status["last_change"]], table
    for value in (status["reason"], alive["host"], str(alive["pid"])):
        assert re.search(rf"(^|\s){re.escape(value)}(\s|$)", line), f"{value!r} not in {line!r}"


class LateKeepalives(Etcd):
    """Every keepalive reply is handled 0.75 s late, as on an event loop kept busy."""

    async def keepalive(self, lease_id: int) -> int:
        remaining = await super().keepalive(lease_id)
        await trio.sleep(0.75)
        return remaining


async def test_late_keepalive_replies_do_not_add_up_to_a_fence(etcd_url: str) -> None:
    """TTL 3 s, margin 1 s: each reply extends the fence deadline to 2 s after its
    keepalive was sent, and keepalives are due every 0.67 s. Were the next one due
    0.67 s after the late reply was handled, two late turns (0.75 + 0.67 + 0.75 s)
    would pass the deadline and fence a healthy node."""
    etcd = LateKeepalives([etcd_url])
    keys = Keys("/ringd-test/late-keepalives/")
    membership = Membership(
        config=Config(name="n1", lease_ttl=3.0, fence_margin=1.0),
        etcd=etcd,
        keys=keys,
        view=ClusterView(etcd, keys),
        instance="late",
    )
    lease, ttl = await etcd.grant(3)
    try:
        membership.lease_id, membership.ttl = lease, float(ttl)
        membership._extend(time.monotonic(), membership.ttl)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(membership._keepalive_loop)
            nursery.start_soon(membership._fence_timer)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert not membership.fenced
        assert await Etcd.keepalive(etcd, lease) > 0
    finally:
        await etcd.revoke(lease)
        etcd.close()


def test_sigterm_ends_a_daemon_still_waiting_for_etcd(cluster: Cluster) -> None:
    """With etcd unreachable the daemon never finishes starting; SIGTERM must still
    end it (it was ignored until start-up completed: only SIGKILL worked, and under
    systemd a failed start cost the whole start and stop timeouts)."""
    # Port 1 on loopback: nothing listens there, connections are refused at once.
    d = cluster.daemon("n1", etcd="http://127.0.0.1:1", start=False).start(wait=False)
    wait_until(lambda: "cannot list cluster state" in d.log.read_text(), 20, "a failed etcd read")
    log = d.log.read_text()
    assert "etcd at http://127.0.0.1:1:" in log, "the first line names the endpoints"
    stopped = time.monotonic()
    assert d.stop(timeout=15) == 0, d.log.read_text()[-3000:]
    took = time.monotonic() - stopped
    assert "SIGTERM: leaving the cluster" in d.log.read_text()
    print(f"\nSIGTERM while waiting for etcd: exited after {took:.2f} s")


def test_dead_predecessor_only_in_this_pid_namespace() -> None:
    """A node's previous daemon may have its lease revoked only if it ran where its
    pid means something here (same boot, same PID namespace) and is dead; a
    same-named host elsewhere is waited out."""
    here = pid_namespace()
    assert here and here.count("/") == 1 and "pid:[" in here
    dead = Alive(node="n1", pid_namespace=here, pid=2**22 + 7, pid_ticks=1, instance="gone-x")
    assert is_dead_predecessor(dead)
    assert not is_dead_predecessor(replace(dead, pid_namespace="other-boot/pid:[1]"))
    assert not is_dead_predecessor(replace(dead, pid_namespace=None))
    me = replace(dead, pid=os.getpid(), pid_ticks=start_ticks(os.getpid()))
    assert not is_dead_predecessor(me), "a running daemon"
    assert is_dead_predecessor(replace(me, pid_ticks=(me.pid_ticks or 0) - 1)), "its pid reused"
    # Only a record with start ticks (not the wall-clock start a clock step moves).
    assert not is_dead_predecessor(replace(dead, pid_ticks=None))


def test_a_killed_daemon_restarted_takes_its_node_back_at_once(cluster: Cluster) -> None:
    """SIGKILL, then start again on the same machine: the new daemon finds its
    predecessor dead (and its children killed by the guard) and revokes its lease
    instead of waiting out the TTL (30 s here)."""
    d = cluster.daemon("n1", ttl=30)
    d.kill()
    restarted = time.monotonic()
    d.start()
    took = time.monotonic() - restarted
    assert took < 15, f"waited {took:.1f} s: the predecessor's lease was waited out"
    assert "revoking the lease of this node's dead predecessor" in d.log.read_text()


def test_a_restarted_daemon_kills_what_its_dead_predecessor_left_running(
    cluster: Cluster,
) -> None:
    """Daemon and guard both SIGKILLed (`pkill -9 -f ringd`): nobody killed the
    children. The next daemon of the node kills them before it takes the node back,
    or it would start each child again beside its old instance."""
    d = cluster.daemon("n1", ttl=30)
    env = {"TEST_CLUSTER": cluster.name}  # found by the cluster's cleanup, whatever happens
    d.call("start_child", spec={"id": "left", "argv": ["sleep", "600"], "env": env})
    old = wait_until(lambda: d.call("find", id="left")["pid"], 10, "running")
    guard = next(
        pid
        for pid in descendants(d.pid)
        if b"ringd.guard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    try:
        os.kill(guard, signal.SIGKILL)
        d.kill()
        assert alive(old), "nobody killed it"
        d.start()
        wait_until(lambda: not alive(old), 5, "the old instance killed")
        new = wait_until(lambda: d.call("find", id="left")["pid"], 10, "running again")
        assert new != old
        assert "after killing 1 processes it left running" in d.log.read_text()
    finally:
        if alive(old):
            os.kill(old, signal.SIGKILL)


def test_watch_shows_drain_and_undrain_as_node_updates(cluster: Cluster) -> None:
    """A drain and an undrain are node_update events like the others (nodes only)."""
    a = cluster.daemon("a")
    cluster.daemon("b")
    events: list[dict] = []

    def reader() -> None:
        for reply in Client(a.socket, timeout=30).stream("watch", what="nodes"):
            events.append(reply["event"])
            if (
                reply["event"].get("status") == "online"
                and reply["event"].get("old_status") == "draining"
            ):
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    # The stream is attached once it reports a change made after it was opened.
    wait_until(lambda: (a.call("drain", node="b"), events)[1] != [], 10, "the drain event")
    a.call("undrain", node="b")
    thread.join(15)
    assert not thread.is_alive()
    assert all(e["kind"] == "node" for e in events), events
    seen = [(e["node"], e["status"], e["old_status"], e["reason"]) for e in events]
    assert seen == [
        ("b", "draining", "online", "drained by a"),
        ("b", "online", "draining", "undrained"),
    ]
    assert all(e["last_change"].endswith("Z") for e in events)


def test_unreachable_etcd_is_logged_once_then_etcd_wait_exits_1(cluster: Cluster) -> None:
    """An unreachable etcd: one line naming the endpoints and the error (then once a
    minute, not once a second), and with --etcd-wait the daemon gives up with exit 1."""
    d = cluster.daemon("n1", etcd="http://127.0.0.1:1", start=False)
    d.extra_args += ["--etcd-wait", "3"]
    process = d.start(wait=False).process
    assert process is not None
    assert process.wait(timeout=30) == 1
    log = d.log.read_text()
    failures = [line for line in log.splitlines() if "cannot list cluster state" in line]
    assert len(failures) == 1, log  # about 10 attempts in 3 s, one line
    assert "etcd at http://127.0.0.1:1:" in failures[0]
    assert log.rstrip().splitlines()[-1] == (
        "ringd: etcd at http://127.0.0.1:1 not reached within 3 s (etcd_wait)"
    ), log
    assert "Traceback" not in log
