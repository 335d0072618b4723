"""The fault proxy itself: a stall really stalls an existing connection (etcd's gRPC
uses one long-lived HTTP/2 connection), a cut resets, a heal restores."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING

import etcd3
import etcd3.exceptions
import grpc
import pytest
from etcd3 import etcdrpc

from .faultproxy import FaultProxy
from .helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A loopback echo server."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield ("127.0.0.1", server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
    server.close()


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def reset(sock: socket.socket) -> bool:
    """True if the connection was closed or reset (which may surface on a read or
    only on a later write)."""
    try:
        for _ in range(10):
            if not sock.recv(1):
                return True
            sock.sendall(b"b")
            time.sleep(0.05)
    except ConnectionError:
        return True
    return False


def refused(proxy: FaultProxy) -> bool:
    """True if a new connection is reset (on connect, or on its first read)."""
    try:
        with connect(proxy) as sock:
            sock.settimeout(2)
            return sock.recv(1) == b""
    except (ConnectionError, OSError):
        return True


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    data = b""
    while len(data) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_pass_stall_heal_on_one_connection(echo: tuple[str, int]) -> None:
    with FaultProxy(echo) as proxy, connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        proxy.stall()
        sock.sendall(b"during the stall")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # the existing connection is silent, not closed
        # A new connection is accepted but nothing reaches the upstream either.
        with connect(proxy) as other:
            other.sendall(b"x")
            other.settimeout(0.3)
            with pytest.raises(TimeoutError):
                other.recv(1)
            proxy.heal()
            other.settimeout(2)
            assert other.recv(1) == b"x"
        # What was held back arrives, in order, on the same connection.
        sock.settimeout(2)
        data = b""
        while len(data) < len(b"during the stall"):
            data += sock.recv(100)
        assert data == b"during the stall"
        assert roundtrip(sock, b"after") == b"after"
        assert proxy.bytes["up"] == len(b"helloduring the stallxafter")


def test_cut_resets_and_refuses_until_heal(echo: tuple[str, int]) -> None:
    with FaultProxy(echo) as proxy:
        sock = connect(proxy)
        assert roundtrip(sock, b"a") == b"a"
        proxy.cut()
        sock.settimeout(2)
        assert reset(sock)
        sock.close()
        assert refused(proxy)
        proxy.heal()
        with connect(proxy) as again:
            assert roundtrip(again, b"c") == b"c"


def test_stall_stalls_etcds_existing_grpc_connection(etcd_url: str) -> None:
    """The etcd3 client keeps one HTTP/2 connection: a stall must freeze calls on it
    and the watch stream on it, and a heal must revive that same channel."""
    with FaultProxy(etcd_url) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        client = etcd3.client(host=host, port=int(port), timeout=1)
        direct_host, direct_port = etcd_url.removeprefix("http://").split(":")
        direct = etcd3.client(host=direct_host, port=int(direct_port))
        key = f"/faultproxy/{time.monotonic_ns()}"
        # A raw Watch stream on the client's channel (etcd3's Watcher thread cannot
        # be stopped cleanly).
        stop = threading.Event()

        def requests() -> Iterator[etcdrpc.WatchRequest]:
            yield etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(key=key.encode()))
            stop.wait()

        got: list[bytes] = []
        created = threading.Event()  # etcd answered the create request: the watch is on
        try:
            client.put(key, b"1")
            assert client.get(key)[0] == b"1"
            call = etcdrpc.WatchStub(client.channel).Watch(requests())

            def read() -> None:
                with contextlib.suppress(grpc.RpcError):
                    for response in call:
                        if response.created:
                            created.set()
                        got.extend(e.kv.value for e in response.events)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            assert created.wait(10), "etcd created the watch"
            assert proxy.accepted == 1, "one long-lived connection"
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(etcd3.exceptions.ConnectionTimeoutError):
                client.get(key)
            assert time.monotonic() - started >= 0.9
            direct.put(key, b"2")
            time.sleep(0.5)
            assert got == [], "no watch event crosses a stall"
            proxy.heal()
            wait_until(lambda: got, 5, "the held event", interval=0.01)
            assert got == [b"2"], "the held event arrives on the same stream"
            assert client.get(key)[0] == b"2"
            assert proxy.accepted == 1, "the same connection carried on"
        finally:
            stop.set()
            with contextlib.suppress(NameError):
                call.cancel()
            direct.delete(key)
            client.close()
            direct.close()
