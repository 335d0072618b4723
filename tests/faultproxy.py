"""A fault-injecting TCP proxy for tests: put it between one daemon and etcd.

Plain threads and sockets, loopback only. Modes:

* ``pass``: forward bytes both ways.
* ``stall``: a blackhole, the realistic partition. Existing connections stay
  open but nothing is forwarded in either direction (bytes already read are held
  back, the rest piles up in the kernel's socket buffers, as a real network
  drops packets that TCP will retransmit later); new connections are accepted by
  the kernel but never reach the upstream. etcd3 speaks gRPC over HTTP/2 on one
  long-lived TCP connection, so stalling new connections only would stall
  nothing: the existing one is what must go quiet, and it does.
* ``cut``: every connection is reset (abortive close, like a dead peer or a
  firewall that rejects), and new ones are reset as soon as they arrive (the
  listening port is kept, so healing can never lose it to another process).
* ``heal()``: back to ``pass``. After a stall, the held bytes flow again on the
  same connections, in order, as TCP retransmission would deliver them; after a
  cut, clients reconnect.

Example::

    with FaultProxy(etcd_url) as proxy:
        daemon = start_daemon(etcd=proxy.url)
        proxy.stall()
        ...
        proxy.heal()
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from urllib.parse import urlsplit

PASS, STALL, CUT = "pass", "stall", "cut"
_POLL = 0.05  # seconds: how quickly a blocked thread notices a mode change


def _abort(sock: socket.socket) -> None:
    """Reset the connection: linger 0 makes close() send RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in sendall


class _Link:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.dead = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        t = threading.Thread(target=self._run, name="faultproxy-link", daemon=True)
        self.threads.append(t)
        t.start()

    def _run(self) -> None:
        try:
            # A stalled network does not carry the SYN either: connect upstream only
            # once traffic may flow.
            if not self.proxy._gate(self.dead):
                return
            try:
                self.upstream = socket.create_connection(self.proxy.upstream, timeout=5)
            except OSError:
                return
            self.upstream.settimeout(None)
            self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(
                target=self._pump, args=(self.upstream, self.client, "down"), daemon=True
            )
            self.threads.append(back)
            back.start()
            self._pump(self.client, self.upstream, "up")
            back.join()
        finally:
            self.close()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        """Copy src to dst until EOF (then half-close dst), an error or the link's end."""
        try:
            while not self.dead.is_set():
                if not self.proxy._gate(self.dead):
                    break
                ready, _, _ = select.select([src], [], [], _POLL)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return  # the other direction may still carry data
                # Read just as a stall began: hold these bytes until it heals.
                if not self.proxy._gate(self.dead):
                    break
                self.proxy._count(direction, len(data))
                dst.sendall(data)
        except OSError:
            pass
        self.dead.set()

    def abort(self) -> None:
        self.dead.set()
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)

    def close(self) -> None:
        self.dead.set()
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self.proxy._forget(self)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (a URL or (host, port)).

    Args:
        upstream: where to forward, e.g. etcd's client URL ``http://127.0.0.1:2379``.
        port: the port to listen on (0: a free one).
    """

    def __init__(self, upstream: str | tuple[str, int], *, port: int = 0) -> None:
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            self.scheme = parts.scheme or "http"
            upstream = (parts.hostname or "127.0.0.1", parts.port or 2379)
        else:
            self.scheme = "http"
        if upstream[0] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"faultproxy forwards to loopback only, not {upstream[0]}")
        self.upstream = upstream
        self.mode = PASS
        self._cond = threading.Condition()
        self._links: set[_Link] = set()
        self._closed = False
        self.accepted = 0
        self.bytes = {"up": 0, "down": 0}
        self._listener = socket.create_server(("127.0.0.1", port), backlog=64)
        self._listener.settimeout(_POLL)
        self.port = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        with self._cond:
            return len(self._links)

    # -- faults ----------------------------------------------------------------------

    def stall(self) -> None:
        """Blackhole: forward nothing, on existing and new connections, until heal()."""
        self._set(STALL)

    def cut(self) -> None:
        """Reset every connection now and every new one until heal()."""
        self._set(CUT)
        with self._cond:
            links = list(self._links)
        for link in links:
            link.abort()

    def heal(self) -> None:
        """Forward again (held bytes of stalled connections go first)."""
        self._set(PASS)

    def _set(self, mode: str) -> None:
        with self._cond:
            self.mode = mode
            self._cond.notify_all()

    # -- plumbing --------------------------------------------------------------------

    def _gate(self, dead: threading.Event) -> bool:
        """Block while stalled; False if the link must end (cut, closed or dead)."""
        with self._cond:
            while self.mode == STALL and not self._closed and not dead.is_set():
                self._cond.wait(_POLL)
            return self.mode == PASS and not self._closed and not dead.is_set()

    def _count(self, direction: str, n: int) -> None:
        with self._cond:
            self.bytes[direction] += n

    def _forget(self, link: _Link) -> None:
        with self._cond:
            self._links.discard(link)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                self.accepted += 1
                refuse = self.mode == CUT or self._closed
                link = _Link(self, client)
                if not refuse:
                    self._links.add(link)
            if refuse:
                _abort(client)
                client.close()
                continue
            link.start()

    def close(self) -> None:
        """Stop accepting, reset every connection and join every thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            links = list(self._links)
        for link in links:
            link.abort()
        self._acceptor.join()
        self._listener.close()
        for link in links:
            for t in link.threads:
                t.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
