"""find and which-children answer from rows cached per change (ringd/listing.py):
every change still shows at once, and a crowd of readers neither gets wrong
answers nor starves the node's lease."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import etcd3
import msgspec
import pytest

from ringd.protocol import ChildRow, Encoded, RemoteError, dump_result, dumps, ok
from ringd.spec import GroupRecord, encode, parse_group

from .helpers import wait_until

if TYPE_CHECKING:
    from .conftest import Cluster


ROW = ChildRow(
    id="c1", instance="c1", replica=0, role="master", group=None, restart="permanent",
    owner="n1", node="n1", pid=12, state="running", restarts=0, started=1.5,
    reason="ünïcode \n", fence=3, rss=None, cpu=0.5,
)  # fmt: skip


@pytest.mark.parametrize("request_id", [1, None, "é/x", [1, {"a": "b"}]])
@pytest.mark.parametrize(
    "result",
    [[{"id": "c1", "pid": 12, "reason": "ünïcode \n", "cpu": 0.5, "rss": None}], [ROW, ROW]],
)
def test_an_encoded_result_is_sent_as_the_same_bytes(request_id: Any, result: Any) -> None:
    assert ok(request_id, Encoded(dump_result(result))) == ok(request_id, result)
    reply = json.loads(ok(request_id, Encoded(dump_result(result))))
    assert reply["id"] == request_id
    assert reply["result"] == msgspec.to_builtins(result)
    assert "last_exit" not in reply["result"][0]  # an UNSET field is left out


def sleeper(cluster: Cluster, child_id: str, **fields: object) -> dict[str, object]:
    env = {"TEST_CLUSTER": cluster.name}
    return {"id": child_id, "argv": ["sleep", "600"], "env": env, **fields}


def rows_by_id(node: Any) -> dict[str, dict[str, Any]]:
    return {r["instance"]: r for r in node.call("which_children")}


def test_every_change_shows_in_the_cached_rows(cluster: Cluster) -> None:
    a, b = cluster.daemon("a"), cluster.daemon("b")
    for i in range(6):
        a.call("start_child", spec=sleeper(cluster, f"c{i}"))
    a.call("start_child", spec=sleeper(cluster, "r", replicas=2))
    a.call("start_child", spec=sleeper(cluster, "g1", group="g"))
    wait_until(
        lambda: sum(r["state"] == "running" for r in rows_by_id(a).values()) == 8, 15, "8 running"
    )
    for node in (a, b):  # fills the caches
        grouped = node.call("find", id="g1")
        assert (grouped["state"], grouped["reason"]) == ("pending", "group g does not exist")
        assert node.call("find", id="r")["replicas"] == 2

    # A group appears: the pending row's reason came from the groups, so it changes.
    a.call("create_group", spec={"name": "g"})
    for node in (a, b):
        wait_until(lambda n=node: n.call("find", id="g1")["state"] == "running", 15, "g1 runs")

    # A claim changes (terminated on its node): every node lists the new state.
    owner = {"a": a, "b": b}[a.call("find", id="c0")["node"]]
    owner.call("terminate_child", id="c0")
    for node in (a, b):
        wait_until(lambda n=node: rows_by_id(n)["c0"]["state"] == "stopped", 15, "stopped")
        assert node.call("find", id="c0")["reason"] == "terminated by operator"

    # A spec goes: once this node's view has seen it, the very next answer says so
    # (a reply encoded a moment ago is not reused across a change).
    assert "c1" in rows_by_id(a)
    a.call("delete_child", id="c1", wait=True, timeout=15)
    assert "c1" not in rows_by_id(a)
    with pytest.raises(RemoteError) as info:
        a.call("find", id="c1")
    assert info.value.code == "not_found"

    # A blocked child's reason changes while it stays unplaced: its group fails (as
    # a node would mark it), then goes.
    a.call("create_group", spec={"name": "h"})
    a.call("start_child", spec=sleeper(cluster, "h1", group="h"))
    wait_until(lambda: a.call("find", id="h1")["state"] == "running", 15, "h1 runs")
    failed = GroupRecord(spec=parse_group({"name": "h"}), state="failed", reason="boom", node="b")
    host, port = cluster.etcd_url.removeprefix("http://").split(":")
    client = etcd3.client(host=host, port=int(port))
    try:
        client.put(f"/ringd/{cluster.name}/groups/h", encode(failed))
    finally:
        client.close()
    for node in (a, b):
        wait_until(
            lambda n=node: (
                (r := n.call("find", id="h1"))["state"] == "failed"
                and r["reason"] == "group h failed: boom"
            ),
            15,
            "h1 failed with its group",
        )
    a.call("delete_group", name="h", force=True)
    for node in (a, b):
        wait_until(
            lambda n=node: (
                (rows_by_id(n)["h1"]["state"], rows_by_id(n)["h1"]["reason"])
                == ("pending", "group h does not exist")
            ),
            15,
            "h1 pending without its group",
        )
    a.call("delete_child", id="h1", wait=True, timeout=15)

    # Placement changes (b drained): every row shows its new owner and node.
    a.call("drain", node="b", wait=True, timeout=20)

    def all_on_a(node: Any) -> bool:
        masters = [r for r in rows_by_id(node).values() if r["replica"] == 0]
        return all((r["owner"], r["node"], r["state"]) == ("a", "a", "running") for r in masters)

    for node in (a, b):
        wait_until(lambda n=node: all_on_a(n), 20, "every master owned by a")
        replica = node.call("find", id="r")["instances"][1]
        assert (replica["state"], replica["owner"]) == ("degraded", None)
        assert replica["reason"] == "only 1 eligible node(s) for 2 replicas"
    local = {r["instance"]: r for r in a.call("which_children", local=True)}
    assert local and all("last_exit" in r for r in local.values())  # from the supervisor
    assert set(local) == {i for i, r in rows_by_id(a).items() if r["node"] == "a"}


class Reader:
    """One client on one persistent connection: find (80 %) and which-children."""

    def __init__(self, path: str, ids: list[str], *, seed: int) -> None:
        self.path = path
        self.ids = ids
        self.rng = random.Random(seed)
        self.errors: list[str] = []
        self.answered = 0

    def run(self, deadline: float) -> None:
        with socket.socket(socket.AF_UNIX) as sock, sock.makefile("rb") as replies:
            sock.settimeout(30)
            sock.connect(self.path)
            request = 0
            while time.monotonic() < deadline:
                request += 1
                find = self.rng.random() < 0.8
                args = {"id": self.rng.choice(self.ids)} if find else {}
                op = "find" if find else "which_children"
                sock.sendall(dumps({"id": request, "op": op, "args": args}) + b"\n")
                reply = json.loads(replies.readline())
                result = reply.get("result")
                if not reply.get("ok") or reply.get("id") != request:
                    self.errors.append(f"{op} {args}: {reply}")
                elif find and (result["id"], result["state"]) != (args["id"], "running"):
                    self.errors.append(f"find {args}: {result['id']} {result['state']}")
                elif not find and len(result) != len(self.ids):
                    self.errors.append(f"which_children: {len(result)} rows")
                else:
                    self.answered += 1


def test_a_crowd_of_readers_gets_right_answers_and_the_lease_holds(cluster: Cluster) -> None:
    """20 clients on find and which-children (80/20) on persistent connections for
    6 s: every answer right, no fence, every child still on its first pid."""
    node = cluster.daemon("n1", ttl=2.0)
    n = 150
    ids = [f"c{i:03d}" for i in range(n)]
    for child_id in ids:
        node.call("start_child", spec=sleeper(cluster, child_id))
    rows = wait_until(
        lambda: (
            (r := node.call("which_children"))
            and sum(x["state"] == "running" for x in r) == n
            and r
        ),
        60,
        f"{n} running",
    )
    pids = {r["id"]: r["pid"] for r in rows}
    lease = node.call("status")["lease"]
    readers = [Reader(node.socket, ids, seed=k) for k in range(20)]
    deadline = time.monotonic() + 6
    threads = [threading.Thread(target=r.run, args=(deadline,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [e for r in readers for e in r.errors]
    assert not errors, errors[:5]
    answered = sum(r.answered for r in readers)
    assert answered > 100, answered
    status = node.call("status")
    assert not status["fenced"] and status["lease"] == lease
    assert {r["id"]: r["pid"] for r in node.call("which_children")} == pids


def test_start_child_answers_pending_not_invalid_before_the_view_has_the_spec(
    cluster: Cluster,
) -> None:
    """start-child answers as soon as etcd has the spec, often before the daemon's
    own watch delivers it: the reply must say pending, never "invalid"."""
    node = cluster.daemon("n1")
    replies = [node.call("start_child", spec=sleeper(cluster, f"fresh{i}")) for i in range(40)]
    assert {r["state"] for r in replies} <= {"pending", "starting", "running"}, replies
    assert all(r["reason"] != "the spec in etcd is not valid (see the daemon log)" for r in replies)
