"""The control protocol, the one module both the daemon and ringctl import.

Newline-delimited JSON over a Unix stream socket. A request is
``{"id": 1, "op": "find", "args": {...}}``; the reply is
``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": "...", "message": "..."}}``.
Streaming ops send one ``{"id": .., "ok": true, "event": ...}`` line per event.

Kept to the standard library so that ringctl starts fast.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Generator

# A longer request line is a protocol error: it bounds the memory one client can pin.
MAX_LINE = 1 << 20
# Replies can be long (which-children lists every child, ~250 bytes each); the
# client trusts its daemon but still bounds what it buffers.
MAX_REPLY = 256 << 20
ENV_SOCKET = "RINGD_SOCKET"
# Specs in one start_children request: 1,000 typical specs are ~150 KiB, well
# inside MAX_LINE; ringctl splits a bigger file (by count and by size) into several
# requests.
MAX_BATCH = 1000


def default_socket_path() -> str:
    """Where the daemon listens unless told otherwise (and where ringctl looks)."""
    if env := os.environ.get(ENV_SOCKET):
        return env
    if os.geteuid() == 0:
        return "/run/ringd/ringd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "ringd.sock")
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "ringd", "ringd.sock")


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode(message: dict[str, Any]) -> bytes:
    return dumps(message) + b"\n"


class Encoded:
    """A result already encoded (``dumps``): the daemon sends one it built for a
    crowd of identical requests as is, instead of encoding it per request."""

    __slots__ = ("json",)

    def __init__(self, json: bytes) -> None:
        self.json = json


def ok(request_id: Any, result: Any) -> bytes:
    if isinstance(result, Encoded):  # the same bytes as encode() would give
        return b'{"id":' + dumps(request_id) + b',"ok":true,"result":' + result.json + b"}\n"
    return encode({"id": request_id, "ok": True, "result": result})


def error(request_id: Any, code: str, message: str) -> bytes:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


class RemoteError(Exception):
    """The daemon answered with an error (``code`` is stable, see ringd.errors)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class Unreachable(Exception):
    """No daemon answers on the socket."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"cannot reach ringd at {path}: {reason} (is ringd running?)")


class Client:
    """A blocking client for one request at a time (ringctl, tests, scripts)."""

    def __init__(self, path: str | None = None, *, timeout: float | None = 30.0) -> None:
        self.path = path or default_socket_path()
        self.timeout = timeout
        self._next_id = 0

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise Unreachable(self.path, "socket not found") from None
        except OSError as exc:
            sock.close()
            raise Unreachable(self.path, exc.strerror or str(exc)) from None
        return sock

    def stream(self, op: str, **args: Any) -> Generator[dict[str, Any], None, None]:
        """Send one request and yield every reply line until the daemon closes."""
        self._next_id += 1
        request_id = self._next_id
        with self._connect() as sock, sock.makefile("rb") as replies:
            sock.sendall(encode({"id": request_id, "op": op, "args": args}))
            while True:
                try:
                    line = replies.readline(MAX_REPLY + 1)
                except TimeoutError:
                    raise Unreachable(self.path, "timed out waiting for a reply") from None
                if not line:
                    return
                reply = json.loads(line)
                if not reply.get("ok"):
                    err = reply.get("error") or {}
                    raise RemoteError(err.get("code", "error"), err.get("message", "unknown error"))
                yield reply

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result.

        Raises:
            RemoteError: the daemon refused it.
            Unreachable: no daemon at the socket.
        """
        for reply in self.stream(op, **args):
            return reply.get("result")
        raise Unreachable(self.path, "the daemon closed the connection without answering")
