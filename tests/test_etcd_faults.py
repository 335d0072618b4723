"""The etcd facade under faults, against a real etcd: what a failed call does to
the other users of the same client."""

from __future__ import annotations

from ringd import etcdpb  # noqa: F401 - before etcd3 (see ringd.etcdpb)

# isort: split
import etcd3.exceptions
import grpc
import pytest
import trio

from ringd.errors import EtcdUnavailable, WatchBroken
from ringd.etcd import Etcd, _connection_lost


async def test_watch_on_a_client_another_task_just_closed_is_a_broken_watch(
    etcd_url: str,
) -> None:
    """A failed call drops (closes) the shared client; a watch that took that client
    just before must end as WatchBroken, which the view handles, and not with
    grpc's ValueError("Cannot invoke RPC: Channel closed!"), which crashed the
    daemon during an etcd outage."""
    etcd = Etcd([etcd_url])
    try:
        client = await etcd._call("get_client", lambda c: c)
        client.close()  # what _drop_client does in another task, between the two steps

        async def on_events(events: object, revision: int) -> None:
            raise AssertionError("no events expected")

        with pytest.raises(WatchBroken), trio.fail_after(5):
            await etcd.watch("/ringd-test/closed/", 1, on_events)
    finally:
        etcd.close()


async def test_revoking_a_lease_that_is_gone_is_no_error_and_keeps_the_client(
    etcd_url: str,
) -> None:
    etcd = Etcd([etcd_url])
    try:
        lease, _ = await etcd.grant(2)
        await etcd.revoke(lease)
        client = etcd._client
        await etcd.revoke(lease)  # etcd answers NOT_FOUND: etcd is fine, so is the client
        assert etcd._client is client
    finally:
        etcd.close()


async def test_a_watch_that_ends_while_events_still_arrive_does_not_crash_trio(
    etcd_url: str,
) -> None:
    """The pump thread hands each response to trio with run_sync_soon; responses it
    handed over just before the watch ended arrive after the receiving side is
    closed. Their callback must drop them quietly: an exception in a run_sync_soon
    callback is a TrioInternalError, which killed the daemon while 100 children
    moved (bench/failover.py) and the view's watch ended mid-burst."""
    import threading

    import etcd3

    host, port = etcd_url.removeprefix("http://").split(":")
    writer = etcd3.client(host=host, port=int(port))
    prefix = "/ringd-test/burst/"
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            writer.put(f"{prefix}{i % 50}", b"x" * 100)
            i += 1

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    etcd = Etcd([etcd_url])
    seen = 0

    async def on_events(events: object, revision: int) -> None:
        nonlocal seen
        seen += 1

    try:
        windows = 0
        # 20 short watches at least, and more until events came in (on a loaded
        # machine opening a watch can take longer than one window).
        with trio.move_on_after(20):
            while windows < 20 or not seen:
                revision, _ = await etcd.list(prefix)
                with trio.move_on_after(0.02 if windows < 20 else 0.2):
                    await etcd.watch(prefix, revision + 1, on_events)
                windows += 1
        await trio.sleep(0.3)  # the late callbacks run now
    finally:
        stop.set()
        thread.join()
        etcd.close()
        writer.delete_prefix(prefix)
        writer.close()
    assert seen > 0


async def test_an_answer_over_a_working_channel_keeps_the_client(etcd_url: str) -> None:
    """etcd refusing a request (here a put under a lease that does not exist) says
    nothing about the connection: the client, and the watch and keepalives sharing
    it, stay; only connection-level failures build a new one."""
    etcd = Etcd([etcd_url])
    try:
        client = await etcd._call("get_client", lambda c: c)
        with pytest.raises(EtcdUnavailable, match="lease not found"):
            await etcd.put("/ringd-test/nolease", b"x", lease=0x7EADBEEF)
        assert await etcd._call("get_client", lambda c: c) is client
    finally:
        etcd.close()


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


@pytest.mark.parametrize(
    ("code", "lost"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.UNAUTHENTICATED, True),  # a new client authenticates again
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
    ],
)
def test_which_failures_drop_the_client(code: grpc.StatusCode, lost: bool) -> None:
    assert _connection_lost(_Rpc(code)) is lost
    try:  # as etcd3 raises them: its own exception, the gRPC error as the context
        try:
            raise _Rpc(code)
        except grpc.RpcError:
            raise etcd3.exceptions.ConnectionFailedError() from None
    except etcd3.exceptions.Etcd3Exception as exc:
        assert _connection_lost(exc) is lost
    assert _connection_lost(ValueError("Cannot invoke RPC on closed channel!"))
