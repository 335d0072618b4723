"""The Unix control socket: newline-delimited JSON requests, one reply each.

Bad input never takes the server down: a malformed line is answered with an
error, an oversized one closes that connection, and an unexpected exception in
an operation is logged and answered as ``internal``.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import select
import socket as stdsocket
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from . import protocol
from .errors import ConfigError, ProtocolError, RingdError

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# A streaming handler yields events until the client goes away.
StreamHandler = Callable[[dict[str, Any]], AsyncGenerator[Any, None]]
# Before a connection's first request (the peer listener's TLS handshake and token):
# the stream to converse on, or None when it did not authenticate (it is then closed).
Authenticator = Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream | None]]
_HANG_UP_POLL = 1.0  # seconds between looks at a half-closed stream's socket


async def read_lines(stream: trio.abc.ReceiveStream, max_line: int) -> AsyncGenerator[bytes, None]:
    """Lines from ``stream`` without their newline; ProtocolError past ``max_line``."""
    buffer = bytearray()
    while True:
        newline = buffer.find(b"\n")
        if newline > max_line:  # arrived whole, with its newline: too long all the same
            raise ProtocolError(f"request longer than {max_line} bytes")
        if newline >= 0:
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            yield line
            continue
        if len(buffer) > max_line:
            raise ProtocolError(f"request longer than {max_line} bytes")
        chunk = await stream.receive_some(65536)
        if not chunk:
            return  # a trailing partial line from a half-closed client is dropped
        buffer += chunk


def _parse(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a request must be a JSON object")
    op = message.get("op")
    args = message.get("args", {})
    if not isinstance(op, str):
        raise ProtocolError("'op' must be a string")
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be an object")
    request_id = message.get("id")
    try:
        protocol.dumps(request_id)  # every reply repeats it
    except (UnicodeEncodeError, RecursionError):
        # A lone surrogate ("\udcff" in the JSON): no reply could carry it.
        raise ProtocolError("'id' must be valid Unicode text") from None
    return request_id, op, args


def listen_tcp(address: str, key: str) -> stdsocket.socket:
    """A listening TCP socket at ``host:port`` (port 0: a free one), for the peer
    listener and the web page.

    Raises:
        ConfigError: naming ``key``, when it cannot be listened on (in use, not a
            local address, malformed).
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        family, kind, proto, _, where = stdsocket.getaddrinfo(
            host, int(port), type=stdsocket.SOCK_STREAM, flags=stdsocket.AI_PASSIVE
        )[0]
        sock = stdsocket.socket(family, kind, proto)
        try:
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"{key}: cannot listen on {address}: {why}") from None
    return sock


class ControlServer:
    """Serves ``handlers`` (op name -> coroutine) on a Unix socket."""

    def __init__(
        self,
        path: str,
        handlers: dict[str, Handler],
        streams: dict[str, StreamHandler] | None = None,
        *,
        mode: int = 0o660,
        group: str | None = None,
        max_connections: int = 128,
        max_concurrent_ops: int = 4,
        max_line: int = protocol.MAX_LINE,
        authenticate: Authenticator | None = None,
        eof_is_hang_up: bool = False,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.streams = streams or {}
        self.mode = mode
        self.group = group
        self.max_line = max_line
        self.authenticate = authenticate
        # A client that ends its input has hung up (peers never half-close): a stream
        # op ends at once instead of at its next event.
        self.eof_is_hang_up = eof_is_hang_up
        self._limit = trio.Semaphore(max_connections)
        self._busy = trio.CapacityLimiter(max_concurrent_ops)
        self._sock: trio.socket.SocketType | None = None

    def bind(self) -> None:
        """Take the socket now (before the node joins the cluster: a daemon that
        cannot serve must never take children away from healthy nodes).

        Raises:
            ConfigError: another daemon serves it, or its group does not exist.
        """
        if self._sock is None:
            self._sock = self._bind()

    def close(self) -> None:
        """Give the socket up (if taken and not served yet: ``run`` gives it up itself)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _bind(self) -> trio.socket.SocketType:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            probe = stdsocket.socket(stdsocket.AF_UNIX)
            try:
                probe.connect(self.path)
            except OSError:
                path.unlink()  # stale: nobody listens there
            else:
                raise ConfigError(f"socket: another daemon is listening on {self.path}")
            finally:
                probe.close()
        sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        # Bind under a umask so the socket is never world-accessible, not even briefly.
        old = os.umask(0o777 & ~self.mode)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except KeyError:
                raise ConfigError(f"socket_group: no group named {self.group!r}") from None
        sock.listen(128)
        return trio.socket.from_stdlib_socket(sock)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.bind()
        assert self._sock is not None
        try:
            listener = trio.SocketListener(self._sock)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self.handle, [listener])
                task_status.started()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until the client closes it (or sends too long a line)."""
        async with stream:
            if self._limit.value == 0:
                await self._send(stream, protocol.error(None, "busy", "too many connections"))
                return
            async with self._limit:
                talk = stream  # or what ``authenticate`` made of it (TLS)
                try:
                    if self.authenticate is not None:
                        authenticated = await self.authenticate(stream)
                        if authenticated is None:
                            return
                        talk = authenticated
                    await self._conversation(talk)
                except ProtocolError as exc:
                    await self._send(talk, protocol.error(None, exc.code, str(exc)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client went away
                finally:
                    if talk is not stream:  # TLS ends with its close_notify
                        with (
                            trio.move_on_after(1),
                            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                        ):
                            await talk.aclose()

    async def _send(self, stream: trio.abc.SendStream, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data)

    async def _stream_events(
        self, stream: trio.abc.Stream, request_id: Any, events: AsyncGenerator[Any, None]
    ) -> None:
        """Send each event of a stream op until it ends or the client hangs up.

        A quiet stream (a watch of a calm cluster, the log of a silent child) sends
        nothing for hours: without looking, a client that went away would be noticed
        only at the next event, holding one of the connection slots until then."""
        try:
            async with contextlib.aclosing(events), trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_on_hang_up, stream, nursery.cancel_scope)
                async for event in events:
                    await stream.send_all(protocol.event(request_id, event))
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The op's own error (not_found, a client gone) as the caller answers any
            # op's, not wrapped by the nursery (that made it "internal").
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _cancel_on_hang_up(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        # Whatever the client sends after a stream request is ignored. End of input
        # may be a half-close (it still reads: "send, shutdown, read" is a fair way
        # to talk) or a hang-up; only a hang-up sets POLLHUP on a Unix socket.
        while await stream.receive_some(4096):
            pass
        if self.eof_is_hang_up:
            scope.cancel()
            return
        if not isinstance(stream, trio.SocketStream):
            return  # no way to tell: a hang-up is noticed at the next event sent
        poller = select.poll()
        poller.register(stream.socket.fileno(), select.POLLHUP)
        while not poller.poll(0):  # noqa: ASYNC110 - a hang-up has no event to wait on
            await trio.sleep(_HANG_UP_POLL)
        scope.cancel()

    async def _conversation(self, stream: trio.abc.Stream) -> None:
        # Closed here, not by the garbage collector, when a stream op ends the talk.
        async with contextlib.aclosing(read_lines(stream, self.max_line)) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                request_id: Any = None
                try:
                    request_id, op, args = _parse(line)
                    if op in self.streams:
                        await self._stream_events(stream, request_id, self.streams[op](args))
                        return
                    handler = self.handlers.get(op)
                    if handler is None:
                        raise ProtocolError(f"unknown op {op!r}")
                    # A few at a time: a crowd of heavy requests (which-children of
                    # thousands) must not hold the event loop so long that this node's
                    # keepalives miss their deadline and it fences itself. Encoding the
                    # reply is part of the work.
                    async with self._busy:
                        reply = protocol.ok(request_id, await handler(args))
                except RingdError as exc:
                    reply = protocol.error(request_id, exc.code, str(exc))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise
                except Exception as exc:
                    logger.exception("control op failed")
                    reply = protocol.error(request_id, "internal", f"internal error: {exc!r}")
                await stream.send_all(reply)
