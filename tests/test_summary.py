"""``summary`` (the cluster at a glance) and the status page's app, on the in-memory
store with the stand-ins of test_ops; a real daemon's in test_web.py."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec

from ringd import records
from ringd.records import Drain, Status
from ringd.spec import GroupRecord, GroupSpec, spec_digest
from ringd.view import Change
from ringd.web import Web

from .test_cli_unit import daemon as daemon  # the fixture: a fake daemon for ringctl
from .test_cli_unit import plain_consoles as plain_consoles  # autouse: no colour
from .test_cli_unit import run
from .test_ops import KEYS, NODE, sleeper
from .test_ops import ops as ops  # the fixture

if TYPE_CHECKING:
    from .test_cli_unit import FakeDaemon
    from .test_ops import Ops


def digest_of(ops: Ops, child_id: str) -> str:
    stored = ops.ctx.view.spec(child_id)
    assert stored is not None
    return spec_digest(stored.value)


async def owner(ops: Ops, child_id: str) -> str:
    row = await ops.call("find", id=child_id)
    assert row.owner is not None
    return str(row.owner)


async def test_every_child_where_it_should_be_is_ok(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.call("start_child", spec=sleeper("a"))
    await ops.call("start_child", spec=sleeper("t", restart="transient"))
    await ops.settle()
    await ops.claim("a", await owner(ops, "a"), digest=digest_of(ops, "a"))
    # A transient child that ended normally is where it should be.
    await ops.claim("t", await owner(ops, "t"), state="stopped", digest=digest_of(ops, "t"))
    result = await ops.call("summary")
    assert result.ok, result
    assert (result.nodes_online, result.nodes_draining, result.nodes_offline) == (
        [NODE, "n2"],
        [],
        [],
    )
    assert (result.children, result.instances) == (2, 2)
    assert result.states == {"running": 1, "stopped": 1}
    assert result.misplaced == result.rollouts == result.pending_reasons == []


async def test_pending_children_with_their_commonest_reasons(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.put(KEYS.drain("n2"), Drain(since=1.0, by=NODE))
    await ops.put(KEYS.status("n3"), Status(node="n3", status="offline", reason="lease expired"))
    for i in range(3):
        await ops.call("start_child", spec=sleeper(f"z{i}", on={"zone": "x"}))
    await ops.call("start_child", spec=sleeper("g", group="nosuch"))
    await ops.settle()
    result = await ops.call("summary")
    assert not result.ok
    assert (result.nodes_online, result.nodes_draining, result.nodes_offline) == (
        [NODE],
        ["n2"],
        ["n3"],
    )
    assert result.states == {"pending": 4}
    top = [(r.reason, r.count) for r in result.pending_reasons]
    assert top[0] == ("no eligible node: needs zone=x", 3)
    assert len(top) == 2 and top[1][1] == 1 and "nosuch" in top[1][0], top


async def test_failures_failed_groups_moves_and_rollouts(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.put(
        KEYS.group("g"),
        GroupRecord(spec=GroupSpec(name="g"), state="failed", node="n2", reason="too many"),
    )
    for child_id in ("f", "m", "r"):
        await ops.call("start_child", spec=sleeper(child_id))
    await ops.settle()
    f_digest = digest_of(ops, "f")
    await ops.claim("f", await owner(ops, "f"), state="failed", reason="exit 3", digest=f_digest)
    elsewhere = "n2" if await owner(ops, "m") == NODE else NODE
    await ops.claim("m", elsewhere, digest=digest_of(ops, "m"))
    await ops.claim("r", await owner(ops, "r"), digest="an older spec")
    result = await ops.call("summary")
    assert not result.ok
    assert result.groups_failed == {"g": "n2: too many"}
    assert [(r.reason, r.count) for r in result.failure_reasons] == [("exit 3", 1)]
    assert [(m.instance, m.node, m.owner) for m in result.misplaced] == [
        ("m", elsewhere, await owner(ops, "m"))
    ]
    assert [(r.id, r.state) for r in result.rollouts] == [("r", "in progress")]
    assert result.states == {"failed": 1, "running": 2}
    # What ringctl --json prints: a plain object.
    assert msgspec.json.decode(msgspec.json.encode(result))["ok"] is False


# -- the status page's app -----------------------------------------------------------


async def request(
    web: Web, method: str, path: str, host: str = "127.0.0.1"
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request to the ASGI app, as hypercorn would make it."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", host.encode())]
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await web.app(scope, receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


async def test_the_page_is_read_only_and_serves_state_and_metrics(ops: Ops) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("a"))
    await ops.settle()
    web = Web("127.0.0.1:0", ops.ctx)
    status, headers, body = await request(web, "GET", "/")
    assert status == 200 and headers[b"content-type"].startswith(b"text/html")
    assert b"<script>" in body and b"http" not in body.split(b"<script>")[1], "no external asset"
    assert b"connect-src 'self'" in headers[b"content-security-policy"]
    status, _, body = await request(web, "GET", "/state")
    state = msgspec.json.decode(body)
    assert status == 200
    assert [c["instance"] for c in state["children"]] == ["a"]
    assert [n["node"] for n in state["nodes"]] == [NODE]
    assert state["summary"]["states"] == {"pending": 1}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = await request(web, method, "/state")
        assert (status, headers[b"allow"]) == (405, b"GET")
    assert (await request(web, "GET", "/nope"))[0] == 404
    assert (await request(web, "POST", "/nope"))[0] == 404


async def test_on_loopback_only_requests_naming_it_are_answered(ops: Ops) -> None:
    """A site whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing."""
    web = Web("127.0.0.1:0", ops.ctx)
    url = web.bind()
    try:
        port = url.rstrip("/").rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST"):
            assert (await request(web, "GET", "/state", host))[0] == 200, host
        for host in (f"evil.example:{port}", "evil.example", ""):
            assert (await request(web, "GET", "/state", host))[0] == 421, host
    finally:
        web.close()


async def test_the_page_keeps_the_last_events(ops: Ops) -> None:
    web = Web("127.0.0.1:0", ops.ctx)
    old = records.encode(Status(node="n2", status="online"))
    new = records.encode(Status(node="n2", status="offline", reason="lease expired"))
    await ops.etcd.put(KEYS.status("n2"), old)
    first = ops.etcd.kvs[KEYS.status("n2")]
    await ops.etcd.put(KEYS.status("n2"), new)
    second = ops.etcd.kvs[KEYS.status("n2")]
    for _ in range(250):
        web.record(Change("put", second, first), KEYS)
    assert len(web.events) == 200
    assert web.events[-1]["text"] == "node n2: online -> offline (lease expired)"


# -- ringctl summary -----------------------------------------------------------------

NOT_OK = {
    "ok": False,
    "nodes_online": ["n1"],
    "nodes_draining": ["n2"],
    "nodes_offline": ["n3"],
    "children": 3,
    "instances": 4,
    "states": {"failed": 1, "pending": 1, "running": 2},
    "pending_reasons": [{"reason": "no eligible node: needs zone=x", "count": 1}],
    "failure_reasons": [{"reason": "exit 3", "count": 1}],
    "groups_failed": {"g": "n2: too many restarts"},
    "moves_pending": 2,
    "misplaced": [{"instance": "m/1", "node": "n2", "owner": "n1"}],
    "rollouts": [{"id": "r", "state": "halted", "reason": "r/1 exited 1"}],
}


def test_ringctl_summary_exits_1_unless_ok_and_says_why(daemon: FakeDaemon) -> None:
    daemon.results["summary"] = NOT_OK
    result = run(daemon, "summary")
    assert result.exit_code == 1, result.output
    out = result.stdout
    for expected in (
        "NOT OK",
        "nodes online\t1 (n1)",
        "nodes draining\t1 (n2)",
        "nodes offline\t1 (n3)",
        "3 (4 instances)",
        "failed=1, pending=1, running=2",
        "1 x no eligible node: needs zone=x",
        "1 x exit 3",
        "g (n2: too many restarts)",
        "m/1 on n2 (owner n1)",
        "r halted: r/1 exited 1",
    ):
        assert expected in out, (expected, out)
    as_json = run(daemon, "summary", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == NOT_OK
    daemon.results["summary"] = {**NOT_OK, "ok": True}
    assert run(daemon, "summary").exit_code == 0
    assert run(daemon, "--json", "summary").exit_code == 0
