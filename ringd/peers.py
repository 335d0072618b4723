"""Daemon to daemon: the peer listener and the peer client.

A daemon with ``peer_address`` listens there for other daemons of its cluster and
serves them the ops that act on a child running here (``PEER_OPS`` in
``ops/registry.py``: terminate, restart, signal, logs, logs -f, exec), with the
control socket's line protocol and limits (``ControlServer`` over TCP). Every
connection authenticates first: TLS with a client certificate signed by
``peer_ca_cert`` and/or, as its first line, ``{"token": "..."}`` equal to the first
line of ``peer_token_file``. One that does not gets one refusal line (when TLS
let it get that far) and is closed.

``PeerClient`` is the other end: the daemon that a ringctl asked forwards the op
to the node where the instance runs (its alive record's ``peer_address``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from . import protocol
from .control import ControlServer, listen_tcp, read_lines
from .errors import ConfigError, ProtocolError, Refused, RingdError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from .config import Config
    from .control import Handler, StreamHandler

logger = logging.getLogger(__name__)

# A connection must have authenticated (TLS handshake and token line) by then.
AUTH_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
MAX_AUTH_LINE = 4096
REFUSAL = protocol.error(None, "unauthorized", "peer authentication failed")


@dataclass(frozen=True)
class Credentials:
    """What this daemon proves and checks: the shared token, and TLS contexts."""

    token: str | None
    server_tls: ssl.SSLContext | None
    client_tls: ssl.SSLContext | None


def credentials(config: Config) -> Credentials | None:
    """This daemon's peer credentials, read now (before the node joins); None when
    it has none (then it neither listens nor forwards).

    Raises:
        ConfigError: a token, certificate or key file cannot be read or used.
    """
    token = None
    if config.peer_token_file:
        try:
            with open(config.peer_token_file, encoding="utf-8") as file:
                token = file.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else exc
            raise ConfigError(
                f"peer_token_file: cannot read {config.peer_token_file}: {why}"
            ) from None
        if not token:
            raise ConfigError(f"peer_token_file: {config.peer_token_file} has an empty first line")
    server_tls = client_tls = None
    if config.peer_ca_cert and config.peer_cert and config.peer_key:
        try:
            server_tls = ssl.create_default_context(
                ssl.Purpose.CLIENT_AUTH, cafile=config.peer_ca_cert
            )
            server_tls.verify_mode = ssl.CERT_REQUIRED
            server_tls.load_cert_chain(config.peer_cert, config.peer_key)
            client_tls = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=config.peer_ca_cert
            )
            client_tls.load_cert_chain(config.peer_cert, config.peer_key)
        except (OSError, ssl.SSLError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"peer_ca_cert/peer_cert/peer_key: {problem}") from None
    if token is None and server_tls is None:
        return None
    return Credentials(token, server_tls, client_tls)


class _Prefixed(trio.abc.Stream):
    """A stream that first gives back bytes already read from it (after the token line)."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self.stream = stream
        self.head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.head:
            head, self.head = self.head, b""
            return head
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _read_line(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes] | None:
    """The first line and what came after it; None past MAX_AUTH_LINE or at EOF."""
    buffer = bytearray()
    while b"\n" not in buffer:
        if len(buffer) > MAX_AUTH_LINE:
            return None
        chunk = await stream.receive_some(MAX_AUTH_LINE)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    return line, rest


def _token_of(line: bytes) -> str | None:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    token = message.get("token") if isinstance(message, dict) else None
    return token if isinstance(token, str) else None


class PeerServer:
    """The peer listener at ``address`` (HOST:PORT; port 0: a free one).

    ``bind`` before the node joins (a busy address is a ConfigError), then ``run``.
    """

    def __init__(
        self,
        address: str,
        creds: Credentials,
        handlers: dict[str, Handler],
        streams: dict[str, StreamHandler],
    ) -> None:
        self.address = address
        self.creds = creds
        self.sock: socket.socket | None = None
        self.advertised = ""
        self.server = ControlServer(
            "", handlers, streams, authenticate=self.authenticate, eof_is_hang_up=True
        )

    def bind(self) -> str:
        """Listen at ``address``; returns the address to advertise (HOST:PORT).

        Raises:
            ConfigError: it cannot be listened on.
        """
        if self.sock is not None:
            return self.advertised
        sock = self.sock = listen_tcp(self.address, "peer_address")
        bound_host, bound_port = sock.getsockname()[:2]
        if bound_host in ("0.0.0.0", "::"):  # every interface: peers find it by name
            bound_host = socket.getfqdn()
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.advertised = f"{shown}:{bound_port}"
        return self.advertised

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.bind()
        assert self.sock is not None
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        self.sock = None  # the listener owns it now
        logger.info("peer listener on %s", self.advertised)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.server.handle, [listener])
            task_status.started()

    async def authenticate(self, stream: trio.abc.Stream) -> trio.abc.Stream | None:
        """The TLS handshake and the token line, within AUTH_TIMEOUT."""
        with trio.move_on_after(AUTH_TIMEOUT):
            try:
                if self.creds.server_tls is not None:
                    tls = trio.SSLStream(stream, self.creds.server_tls, server_side=True)
                    await tls.do_handshake()
                    stream = tls
                if self.creds.token is None:
                    return stream
                first = await _read_line(stream)
                token = _token_of(first[0]) if first is not None else None
                if (
                    first is not None
                    and token is not None
                    and hmac.compare_digest(token.encode(), self.creds.token.encode())
                ):
                    return _Prefixed(stream, first[1]) if first[1] else stream
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(REFUSAL)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # not TLS, a certificate we do not trust, or gone
        return None


class PeerError(RingdError):
    """What a peer answered (its code kept), or why it could not be asked."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerClient:
    """Asks other daemons' peer listeners: one connection per request."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds

    async def _connect(self, node: str, address: str) -> trio.abc.Stream:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, int(port))
                if self.creds.client_tls is not None:
                    tls = trio.SSLStream(stream, self.creds.client_tls, server_hostname=host)
                    await tls.do_handshake()
                    stream = tls
                if self.creds.token is not None:
                    await stream.send_all(protocol.encode({"token": self.creds.token}))
        except trio.TooSlowError:
            raise Refused(f"node {node}'s peer listener ({address}) did not answer") from None
        except (OSError, ValueError, trio.BrokenResourceError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise Refused(f"cannot reach node {node} at {address}: {why}") from None
        return stream

    async def stream(
        self, node: str, address: str, op: str, args: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Send one request to ``node``; yield each event (or the one result).

        Raises:
            PeerError: the peer answered with an error (its code kept).
            Refused: it could not be reached.
        """
        conn = await self._connect(node, address)
        try:
            await conn.send_all(protocol.encode({"id": 1, "op": op, "args": args}))
            async with contextlib.aclosing(read_lines(conn, protocol.MAX_REPLY)) as lines:
                async for line in lines:
                    reply = json.loads(line)
                    if not reply.get("ok"):
                        err = reply.get("error") or {}
                        code = str(err.get("code", "error"))
                        message = str(err.get("message", "unknown error"))
                        if code == "unauthorized":
                            message = f"node {node} refused this daemon: {message}"
                        raise PeerError(code, message)
                    yield reply.get("event", reply.get("result"))
        except (trio.BrokenResourceError, ProtocolError, ValueError) as exc:
            raise Refused(f"lost the connection to node {node} at {address}: {exc}") from None
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await conn.aclose()

    async def call(self, node: str, address: str, op: str, args: dict[str, Any]) -> Any:
        """One request to ``node``; its result."""
        async with contextlib.aclosing(self.stream(node, address, op, args)) as replies:
            async for result in replies:
                return result
        raise Refused(f"node {node} closed the connection without answering")
