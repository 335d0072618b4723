"""The control socket against a real daemon: bad input gets a clear error, and the
daemon keeps serving (DESIGN invariant 6); and the server's connection slots."""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from ringd.control import ControlServer
from ringd.errors import NotFound
from ringd.protocol import MAX_LINE, RemoteError

from .helpers import exchange, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable
    from pathlib import Path

    from .conftest import Cluster


def test_socket_is_not_world_accessible(cluster: Cluster) -> None:
    node = cluster.daemon("n1")
    mode = stat.S_IMODE(os.stat(node.socket).st_mode)
    assert mode & 0o007 == 0, oct(mode)
    assert stat.S_ISSOCK(os.stat(node.socket).st_mode)


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"not json\n", "protocol", "not JSON"),
        (b"[1, 2]\n", "protocol", "JSON object"),
        (b'{"id": 1}\n', "protocol", "'op'"),
        (b'{"id": 1, "op": "launch_missiles"}\n', "protocol", "unknown op"),
        (b'{"id": 1, "op": "find", "args": []}\n', "protocol", "'args'"),
        (b'{"id": 1, "op": "find", "args": {"id": "../x"}}\n', "invalid", "id"),
        (b'{"id": 1, "op": "find", "args": {"id": "nope"}}\n', "not_found", "nope"),
        (b'{"id": 1, "op": "start_child", "args": {"spec": "ls"}}\n', "invalid", "spec"),
        (b'{"id": 1, "op": "start_child", "args": {"spec": {"id": "x", "argv": "ls -l"}}}\n', "invalid", "argv"),
        (b'{"id": 1, "op": "start_child", "args": {"spec": {"id": "x", "argv": ["ls"], "env": {"RINGD_FENCE": "1"}}}}\n',
         "invalid", "env.RINGD_FENCE"),
        (b'{"id": 1, "op": "delete_child", "args": {"id": "ghost"}}\n', "not_found", "ghost"),
        (b'{"id": 1, "op": "start_child", "args": {"spec": {"id": "x", "argv": ["true"]}, "wait": true, "timeout": "soon"}}\n',
         "invalid", "timeout"),
        ("\udcff".encode("utf-8", "surrogatepass") + b"\n", "protocol", "not JSON"),
    ],
)  # fmt: skip
def test_bad_requests_get_clear_errors(
    cluster: Cluster, payload: bytes, code: str, words: str
) -> None:
    node = cluster.daemon("n1") if "n1" not in cluster.daemons else cluster.daemons["n1"]
    (reply,) = exchange(node.socket, payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert words in reply["error"]["message"]
    assert node.call("ping")["node"] == "n1"  # still serving


def test_oversized_and_half_closed_connections(cluster: Cluster) -> None:
    node = cluster.daemon("n1")
    (reply,) = exchange(node.socket, b"x" * (MAX_LINE + 10))
    assert reply["error"]["code"] == "protocol"
    assert "longer than" in reply["error"]["message"]
    assert exchange(node.socket, b'{"id": 1, "op": "ping"') == []  # half a line, then EOF
    # Several requests on one connection, answered in order.
    replies = exchange(
        node.socket, b'{"id": 1, "op": "ping"}\n{"id": 2, "op": "nope"}\n{"id": 3, "op": "ping"}\n'
    )
    assert [(r["id"], r["ok"]) for r in replies] == [(1, True), (2, False), (3, True)]
    assert node.call("status")["node"] == "n1"


def test_start_child_is_idempotent_but_refuses_a_different_spec(cluster: Cluster) -> None:
    node = cluster.daemon("n1")
    child = {"id": "x", "argv": ["sleep", "60"], "env": {"TEST_CLUSTER": cluster.name}}
    node.call("start_child", spec=child)
    node.call("start_child", spec=child)  # same spec again: fine
    with pytest.raises(RemoteError) as info:
        node.call("start_child", spec={**child, "argv": ["sleep", "61"]})
    assert info.value.code == "exists"
    assert node.call("delete_child", id="x", wait=True, timeout=10) == {"id": "x", "deleted": True}
    assert not cluster.children()


def test_corrupt_spec_in_etcd_is_skipped(cluster: Cluster, journal) -> None:
    import etcd3

    node = cluster.daemon("n1")
    host, port = cluster.etcd_url.removeprefix("http://").split(":")
    client = etcd3.client(host=host, port=int(port))
    try:
        client.put(f"/ringd/{cluster.name}/children/broken", b"{not json")
        client.put(
            f"/ringd/{cluster.name}/children/wrongid", json.dumps({"id": "other", "argv": ["true"]})
        )
        node.call(
            "start_child",
            spec={"id": "good", "argv": ["sleep", "60"], "env": {"TEST_CLUSTER": cluster.name}},
        )

        wait_until(lambda: node.call("find", id="good")["state"] == "running", 10, "good running")
        rows = {r["id"]: r for r in node.call("which_children")}
        assert rows["broken"]["state"] == "invalid"
        assert rows["wrongid"]["state"] == "invalid"
        assert node.call("ping")
    finally:
        client.close()


def test_start_children_stores_a_batch_and_names_conflicts(cluster: Cluster) -> None:
    node = cluster.daemon("n1")
    env = {"TEST_CLUSTER": cluster.name}
    specs = [{"id": f"b{i}", "argv": ["sleep", "60"], "env": env} for i in range(70)]
    # 70 specs: more than one transaction (txn_ops is 64).
    result = node.call("start_children", specs=specs, wait=True, timeout=30)
    assert result == {"stored": 70, "conflicts": []}
    assert {r["id"] for r in node.call("which_children") if r["state"] == "running"} == {
        f"b{i}" for i in range(70)
    }
    assert len(cluster.children()) == 70
    # The same batch again is fine; a different spec for b3 is a conflict, b70 is new.
    again = [*specs[:3], {**specs[3], "argv": ["sleep", "61"]}, {**specs[0], "id": "b70"}]
    assert node.call("start_children", specs=again) == {"stored": 4, "conflicts": ["b3"]}
    assert node.call("find", id="b3")["argv"] == ["sleep", "60"]  # unchanged
    wait_until(lambda: node.call("find", id="b70")["state"] == "running", 10, "b70 running")


@pytest.mark.parametrize(
    ("specs", "field"),
    [
        ([], "specs"),
        ("x", "specs"),
        ([{"id": "ok", "argv": ["true"]}, "ls"], "  child 2: child"),
        ([{"id": "ok", "argv": ["true"]}, {"id": "bad", "argv": []}], "  child 2 (id bad): argv"),
        ([{"id": "ok", "argv": ["true"]}, {"id": "ok", "argv": ["true"]}], "  child 2 (id ok): id"),
        (
            [{"id": "ok", "argv": ["true"], "env": {"RINGD_NODE": "x"}}],
            "  child 1 (id ok): env.RINGD_NODE",
        ),
        ([{"id": f"c{i}", "argv": ["true"]} for i in range(1001)], "specs"),
    ],
)
def test_start_children_bad_batch_stores_nothing(
    cluster: Cluster, specs: object, field: str
) -> None:
    node = cluster.daemon("n1")
    with pytest.raises(RemoteError) as info:
        node.call("start_children", specs=specs)
    assert info.value.code == "invalid"
    lines = info.value.message.splitlines()
    first = lines[1] if field.startswith("  ") else lines[0]  # every problem, a line each
    assert first.startswith(f"{field}:"), info.value.message
    assert node.call("which_children") == []  # nothing was stored
    assert node.call("ping")["node"] == "n1"


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("start_child", {"spec": {"id": "t1", "argv": ["true"]}}),
        ("start_children", {"specs": [{"id": "t1", "argv": ["true"]}]}),
    ],
)
def test_a_bad_wait_timeout_stores_nothing(cluster: Cluster, op: str, args: dict) -> None:
    node = cluster.daemon("n1")
    with pytest.raises(RemoteError) as info:
        node.call(op, **args, wait=True, timeout=0)
    assert info.value.code == "invalid"
    assert info.value.message.startswith("timeout:")
    assert node.call("which_children") == []


def test_a_bad_wait_timeout_deletes_and_drains_nothing(cluster: Cluster) -> None:
    node = cluster.daemon("n1")
    env = {"TEST_CLUSTER": cluster.name}  # found by the cluster's cleanup, whatever happens
    node.call("start_child", spec={"id": "kept", "argv": ["sleep", "600"], "env": env})
    wait_until(lambda: node.call("which_children"), 10, "the child listed")  # the view lags
    for op, args in (("delete_child", {"id": "kept"}), ("drain", {"node": "n1"})):
        with pytest.raises(RemoteError) as info:
            node.call(op, **args, wait=True, timeout=-1)
        assert (info.value.code, info.value.message[:8]) == ("invalid", "timeout:"), op
    assert [row["id"] for row in node.call("which_children")] == ["kept"]
    assert [row["draining"] for row in node.call("nodes")] == [False]


async def _request(path: str, op: str) -> trio.SocketStream:
    client = await trio.open_unix_socket(path)
    await client.send_all(json.dumps({"id": 1, "op": op, "args": {}}).encode() + b"\n")
    return client


async def test_a_client_hanging_up_on_a_quiet_stream_frees_its_connection(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    """A stream that says nothing for hours (a watch of a calm cluster) must notice
    its client hang up: with a slot held per abandoned stream, 128 of them (a cron
    job's `timeout 5 ringctl watch`) left the daemon answering "busy" for good.
    A half-close is not a hang-up: that client still reads its events."""
    said = trio.Event()

    async def quiet(args: dict) -> AsyncGenerator[dict, None]:
        await said.wait()
        yield {"said": True}
        await trio.sleep_forever()

    async def ping(args: dict) -> dict:
        return {"pong": True}

    path = str(short_tmp / "c.sock")
    server = ControlServer(path, {"ping": ping}, {"quiet": quiet}, max_connections=1)
    await nursery.start(server.run)

    gone = await _request(path, "quiet")
    await trio.testing.wait_all_tasks_blocked()
    await gone.aclose()
    with trio.fail_after(5):  # noticed within one look at the socket (1 s)
        while True:
            client = await _request(path, "ping")
            reply = json.loads(await client.receive_some(4096))
            await client.aclose()
            if reply["ok"]:
                break
            assert reply["error"]["code"] == "busy"
            await trio.sleep(0.1)

    reader = await _request(path, "quiet")
    await reader.send_eof()  # half-close: done sending, still reading
    await trio.sleep(1.5)  # past a look at the socket: still connected
    said.set()
    with trio.fail_after(5):
        event = json.loads(await reader.receive_some(4096))
    assert event["event"] == {"said": True}
    await reader.aclose()


async def test_a_stream_op_error_keeps_its_code(short_tmp: Path, nursery: trio.Nursery) -> None:
    """`ringctl logs -f` of an unknown child answers not_found, not "internal" (the
    stream runs beside the hang-up watcher, whose nursery wrapped the error)."""

    async def missing(args: dict) -> AsyncGenerator[dict, None]:
        raise NotFound("child", "ghost")
        yield {}  # an async generator, as every stream op

    path = str(short_tmp / "e.sock")
    await nursery.start(ControlServer(path, {}, {"missing": missing}).run)
    client = await _request(path, "missing")
    reply = json.loads(await client.receive_some(4096))
    await client.aclose()
    assert reply["error"] == {"code": "not_found", "message": "no child named 'ghost'"}


# -- one connection, in memory (trio.testing.memory_stream_pair) ----------------------


async def _ping(args: dict) -> dict:
    return {"pong": args.get("n")}


async def _broken(args: dict) -> dict:
    raise ValueError("a bug")


def _server(**streams: Callable[[dict], AsyncGenerator[Any, None]]) -> ControlServer:
    handlers = {"ping": _ping, "broken": _broken}
    return ControlServer("/nonexistent/never-bound.sock", handlers, streams, max_line=256)


async def _converse(server: ControlServer, payload: bytes) -> list[dict]:
    """Send ``payload`` on one connection, half-close, and read every reply."""
    client, served = trio.testing.memory_stream_pair()
    replies = b""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, served)
            await client.send_all(payload)
            await client.send_eof()
            while chunk := await client.receive_some(65536):
                replies += chunk
    return [json.loads(line) for line in replies.splitlines()]


async def test_requests_on_one_connection_are_answered_in_order() -> None:
    replies = await _converse(
        _server(),
        b'{"id": 1, "op": "ping", "args": {"n": 1}}\n'
        b"\n"  # a blank line is skipped, not answered
        b'{"id": "two", "op": "ping"}\n'
        b'{"id": [3], "op": "broken"}\n'
        b'{"id": 4, "op": "ping", "args": {"n": "\xc3\xa9"}}\n'
        b'{"id": 5, "op": "ping"',  # half a line, then end of input: dropped
    )
    assert replies == [
        {"id": 1, "ok": True, "result": {"pong": 1}},
        {"id": "two", "ok": True, "result": {"pong": None}},
        {
            "id": [3],
            "ok": False,
            "error": {"code": "internal", "message": "internal error: ValueError('a bug')"},
        },
        {"id": 4, "ok": True, "result": {"pong": "é"}},
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON: "),
        (b"\xff\xfe", "not JSON: "),
        (b"[" * 200, "not JSON: "),
        (b"[1, 2]", "a request must be a JSON object"),
        (b'{"id": 1}', "'op' must be a string"),
        (b'{"id": 1, "op": ["ping"]}', "'op' must be a string"),
        (b'{"id": 1, "op": "ping", "args": []}', "'args' must be an object"),
        (b'{"id": 1, "op": "launch_missiles"}', "unknown op 'launch_missiles'"),
        # No reply could repeat this id (not valid Unicode): it once took the server down.
        (b'{"id": "\\udcff", "op": "ping"}', "'id' must be valid Unicode text"),
    ],
)
async def test_a_bad_request_is_answered_and_the_connection_goes_on(
    line: bytes, message: str
) -> None:
    bad, good = await _converse(_server(), line + b'\n{"id": 2, "op": "ping"}\n')
    assert bad["ok"] is False and bad["error"]["code"] == "protocol"
    assert bad["error"]["message"].startswith(message), bad
    assert good == {"id": 2, "ok": True, "result": {"pong": None}}


async def test_a_too_long_line_is_answered_and_ends_the_connection() -> None:
    replies = await _converse(_server(), b"x" * 300 + b'\n{"id": 2, "op": "ping"}\n')
    assert replies == [
        {"id": None, "ok": False, "error": {"code": "protocol", "message": "request longer than 256 bytes"}}
    ]  # fmt: skip


async def test_a_stream_op_sends_its_events_then_ends_the_connection() -> None:
    async def count(args: dict) -> AsyncGenerator[int, None]:
        for i in range(args["n"]):
            yield i

    replies = await _converse(
        _server(count=count),
        b'{"id": 7, "op": "count", "args": {"n": 3}}\n{"id": 8, "op": "ping"}\n',
    )
    # What the client sends after a stream request is not answered.
    assert replies == [{"id": 7, "ok": True, "event": i} for i in range(3)]


async def test_a_stream_op_ends_when_its_client_hangs_up() -> None:
    """Noticed at the next event sent: an in-memory stream cannot tell a hang-up
    from a half-close (on a Unix socket, POLLHUP can: see the test above)."""
    tick = trio.Event()
    closed = trio.Event()

    async def ticks(args: dict) -> AsyncGenerator[str, None]:
        nonlocal tick
        try:
            while True:
                await tick.wait()
                tick = trio.Event()
                yield "tick"
        finally:
            closed.set()

    client, served = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_server(ticks=ticks).handle, served)
            await client.send_all(b'{"id": 1, "op": "ticks"}\n')
            tick.set()
            assert json.loads(await client.receive_some(4096))["event"] == "tick"
            await client.aclose()  # hang up
            await trio.testing.wait_all_tasks_blocked()
            assert not closed.is_set()
            tick.set()  # the next event finds nobody: the op is closed, the handler returns
        assert closed.is_set()


async def test_a_connection_past_the_limit_is_told_busy() -> None:
    server = ControlServer("/nonexistent/never-bound.sock", {"ping": _ping}, max_connections=1)
    first, first_served = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, first_served)
            await trio.testing.wait_all_tasks_blocked()  # holds the only slot
            (reply,) = await _converse(server, b'{"id": 1, "op": "ping"}\n')
            assert reply["error"] == {"code": "busy", "message": "too many connections"}
            await first.aclose()
