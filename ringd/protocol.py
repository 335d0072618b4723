"""The control protocol, the one module both the daemon and ringctl import.

Newline-delimited JSON over a Unix stream socket. A request is
``{"id": 1, "op": "find", "args": {...}}``; the reply is
``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": "...", "message": "..."}}``.
Streaming ops send one ``{"id": .., "ok": true, "event": ...}`` line per event.

Every op's arguments decode into its request struct (``decode_args``), and its
result is a struct (or a list of them) encoded as a JSON object. Kept free of
trio and etcd so that ringctl starts fast (msgspec is already loaded by ``ringd``).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec

from .errors import InvalidSpec
from .validation import NAME_PATTERN, NAME_RULE, describe

if TYPE_CHECKING:
    from collections.abc import Generator, Mapping

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
    """JSON of a request (or of a request id), as the client sends it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode(message: dict[str, Any]) -> bytes:
    return dumps(message) + b"\n"


_result_encoder = msgspec.json.Encoder()


def dump_result(value: Any) -> bytes:
    """JSON of a result or an event: structs as objects, their fields in order.

    Raises:
        UnicodeEncodeError: a string in it is not valid text (a lone surrogate).
    """
    return _result_encoder.encode(value)


class Encoded:
    """A result already encoded (``dump_result``): the daemon sends one it built for
    a crowd of identical requests as is, instead of encoding it per request."""

    __slots__ = ("json",)

    def __init__(self, json: bytes) -> None:
        self.json = json


def ok(request_id: Any, result: Any) -> bytes:
    body = result.json if isinstance(result, Encoded) else dump_result(result)
    return b'{"id":' + dumps(request_id) + b',"ok":true,"result":' + body + b"}\n"


def event(request_id: Any, value: Any) -> bytes:
    """One line of a streaming op."""
    return b'{"id":' + dumps(request_id) + b',"ok":true,"event":' + dump_result(value) + b"}\n"


def error(request_id: Any, code: str, message: str) -> bytes:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


# -- requests ------------------------------------------------------------------------
#
# One struct per op: ``args`` decode into it (``decode_args``). A field's
# ``description`` is the message a client gets when that field is wrong; without one,
# msgspec's, in an operator's words (``validation.describe``: "must be true or false,
# not a string"). Unknown arguments are ignored, so that a newer ringctl can talk
# to an older daemon.

TIMEOUT_RULE = "must be a number of seconds in (0, 3600]"
MAX_TIMEOUT = 3600.0
MAX_LOG_LINES = 100_000

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, description=f"must be {NAME_RULE}")]
# A child instance: ``id`` (the master) or ``id/<n>`` (its n-th replica).
Instance = Annotated[
    str,
    msgspec.Meta(
        pattern=NAME_PATTERN.removesuffix("$") + r"(/[1-9][0-9]{0,2})?$",
        description="must be a child id, or id/<n> for its n-th replica",
    ),
]
# Checked when the request is decoded: nothing has been stored yet.
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT, description=TIMEOUT_RULE)]
# Checked by the op, and only if it waits (``check_timeout``).
WaitTimeout = Annotated[float, msgspec.Meta(description=TIMEOUT_RULE)]
# Validated by ``spec.parse_child`` / ``parse_group``, which name the bad field.
SpecObject = Annotated[dict[str, Any], msgspec.Meta(description="must be an object")]


class Args(msgspec.Struct, frozen=True, kw_only=True):
    """The arguments of an op that takes none (``ping``, ``status``, ``nodes``, ``groups``)."""


class StartChildArgs(Args, frozen=True, kw_only=True):
    spec: SpecObject
    wait: bool = False
    timeout: Timeout = 30.0


class StartChildrenArgs(Args, frozen=True, kw_only=True):
    specs: Annotated[
        list[Any],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_BATCH,
            description=f"must be a list of 1 to {MAX_BATCH} specs",
        ),
    ]
    wait: bool = False
    timeout: Timeout = 30.0


class DeleteChildArgs(Args, frozen=True, kw_only=True):
    id: Name
    wait: bool = False
    timeout: WaitTimeout = 30.0


class FindArgs(Args, frozen=True, kw_only=True):
    id: Name


class WhichChildrenArgs(Args, frozen=True, kw_only=True):
    local: bool = False
    node: str | None = None  # only rows on this node (any text: no match, no rows)
    group: str | None = None


class CreateGroupArgs(Args, frozen=True, kw_only=True):
    spec: SpecObject


class DeleteGroupArgs(Args, frozen=True, kw_only=True):
    name: Name
    force: bool = False


class ResetGroupArgs(Args, frozen=True, kw_only=True):
    name: Name


class InstanceArgs(Args, frozen=True, kw_only=True):
    """``terminate_child`` and ``restart_child``: a child instance on this node."""

    id: Instance


class SignalChildArgs(Args, frozen=True, kw_only=True):
    id: Instance
    # A name (HUP, SIGTERM) or a number, checked by the op.
    signal: Annotated[str | int, msgspec.Meta(description="must be a signal name or number")]


class LogsArgs(Args, frozen=True, kw_only=True):
    """``logs`` and ``logs_follow``."""

    id: Instance
    lines: Annotated[
        int,
        msgspec.Meta(
            ge=0, le=MAX_LOG_LINES, description=f"must be an integer in [0, {MAX_LOG_LINES}]"
        ),
    ] = 10
    # logs only: the log kept on this node (the previous instance's, after a move),
    # whether or not the instance runs there now
    node: Name | None = None


class ExecArgs(Args, frozen=True, kw_only=True):
    """``exec``: run ``argv`` beside a child instance, where it runs now, with its
    environment and cwd. ``fence``: the instance the caller saw (its claim's create
    revision); the owner refuses when it runs another one. None: the one the
    asked daemon's view names."""

    id: Instance
    argv: Annotated[
        list[str], msgspec.Meta(min_length=1, description="must be a command and its arguments")
    ]
    timeout: Timeout = 60.0
    fence: int | None = None


class NodeArgs(Args, frozen=True, kw_only=True):
    """``undrain`` and ``forget_node``."""

    node: Name


class DrainArgs(Args, frozen=True, kw_only=True):
    node: Name
    wait: bool = False
    timeout: WaitTimeout = 30.0
    force: bool = False  # drain it even if it is the last node children may run on


class UpdateChildArgs(Args, frozen=True, kw_only=True):
    """``update_child``: the whole new spec of an existing child."""

    spec: SpecObject
    wait: bool = False  # until every instance runs it (or the rollout halts)
    timeout: WaitTimeout = 120.0


class UpdateGroupArgs(Args, frozen=True, kw_only=True):
    spec: SpecObject


# Specs in one apply request: all or nothing, so one request (MAX_LINE bounds it too).
MAX_APPLY = 10_000
SpecList = Annotated[
    list[Any],
    msgspec.Meta(max_length=MAX_APPLY, description=f"must be a list of at most {MAX_APPLY} specs"),
]


class ApplyArgs(Args, frozen=True, kw_only=True):
    """``apply``: make the stored specs equal to these (a specs file's tables, in
    file order: errors are named by their position)."""

    children: SpecList = []
    groups: SpecList = []
    prune: bool = False  # also delete the specs not listed
    dry_run: bool = False  # only say what would change
    wait: bool = False  # until every created or updated child runs its spec
    timeout: WaitTimeout = 120.0


class ExportArgs(Args, frozen=True, kw_only=True):
    ids: list[Name] = []  # children or groups; none: every one


class RolloutArgs(Args, frozen=True, kw_only=True):
    id: Name


class WatchArgs(Args, frozen=True, kw_only=True):
    what: Annotated[
        Literal["nodes", "children", "all"],
        msgspec.Meta(description="must be nodes, children or all"),
    ] = "all"


A = TypeVar("A", bound=Args)


def decode_args(kind: type[A], args: Mapping[str, Any]) -> A:
    """``args`` (a request's, as JSON gave them) as the op's request struct.

    Raises:
        InvalidSpec: naming the argument that is wrong (``timeout``, ``specs``).
    """
    try:
        return msgspec.convert(args, kind)
    except msgspec.ValidationError as exc:
        field, problem = describe(exc)
        top = field.split(".")[0].split("[")[0]
        raise InvalidSpec(field or "args", _rules(kind).get(top) or problem) from None


@functools.cache
def _rules(kind: type[Args]) -> dict[str, str]:
    """Each field's message for a bad value (its ``description``), by field name."""
    rules = {}
    for name, hint in typing.get_type_hints(kind, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, msgspec.Meta) and meta.description:
                rules[name] = meta.description
    return rules


def check_timeout(timeout: float) -> float:
    """A ``WaitTimeout`` once the op is going to wait.

    Raises:
        InvalidSpec: out of (0, 3600] seconds.
    """
    if not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidSpec("timeout", TIMEOUT_RULE)
    return timeout


# -- results -------------------------------------------------------------------------
#
# Encoded with ``dump_result``: a struct is a JSON object with its fields in this
# order; an UNSET field is left out.


class Pong(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    version: str


class DaemonStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``status``: this daemon, its lease and its children by state."""

    node: str
    cluster: str
    version: str
    pid: int
    uptime: float
    etcd: str
    standalone: bool
    lease: str | None  # hex
    lease_ttl: float
    fenced: bool
    nodes_online: list[str]
    children_total: int
    children_local: dict[str, int]  # state -> count
    revision: int
    moves_pending: int
    labels: dict[str, str]
    groups_failed: dict[str, str]  # group -> "node: reason"
    web: str | None = None  # the status page's URL (web_address); None: no page


class ChildRow(msgspec.Struct, frozen=True):
    """One child instance, as ``find`` and ``which_children`` list it. Shared by the
    daemon's caches: change a copy (``msgspec.structs.replace``)."""

    id: str
    instance: str  # ``id``, or ``id/<n>`` for the n-th replica
    replica: int
    role: str  # master | replica
    group: str | None
    restart: str
    owner: str | None  # where the ring places it
    node: str | None  # where it runs (its claim)
    pid: int | None
    state: str  # a claim's state, or pending, degraded, failed, invalid
    restarts: int
    started: float | None
    reason: str
    fence: int | None  # the claim's create revision
    rss: int | None = None  # bytes
    cpu: float | None = None  # percent of one core
    # From the claim (absent without one): the spec key's revision the instance was
    # started from, whether it is ready, and its health ("" without a check).
    revision: int | msgspec.UnsetType | None = msgspec.UNSET
    ready: bool | msgspec.UnsetType = msgspec.UNSET
    health: str | msgspec.UnsetType = msgspec.UNSET
    # The child's move to its current spec: done, in progress or halted (absent
    # when it is not placed); a halted one says why in ``reason`` too.
    rollout: str | msgspec.UnsetType = msgspec.UNSET
    # which_children --local only: the supervisor's own (see ``LocalChild``)
    last_exit: str | msgspec.UnsetType = msgspec.UNSET
    digest: str | msgspec.UnsetType = msgspec.UNSET
    halted: str | msgspec.UnsetType = msgspec.UNSET


class ChildFound(ChildRow, frozen=True, kw_only=True):
    """``find`` and ``start_child``: the master's row, then every instance."""

    argv: Any  # as stored (an invalid spec is listed too)
    replicas: int
    degraded: bool
    instances: list[ChildRow]
    warnings: list[str] = []  # start_child: what was accepted but looks like a mistake


class BatchStored(msgspec.Struct, frozen=True, kw_only=True):
    """``start_children``: how many specs are stored, and the ids stored differently."""

    stored: int
    conflicts: list[str]


class ChildDeleted(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    deleted: bool = True


class LocalChild(msgspec.Struct, frozen=True, kw_only=True):
    """A child on this node as its supervisor sees it (terminate, restart, signal)."""

    id: str
    instance: str
    role: str
    group: str | None
    state: str
    pid: int | None
    restarts: int
    started: float | None
    reason: str
    last_exit: str
    fence: int
    revision: int | None = None  # the spec key's revision it was started from
    digest: str = ""  # the spec's digest (equal digests, equal specs)
    ready: bool = False  # ran min_ready seconds (and passed a first check)
    health: str = ""  # "", starting, healthy, unhealthy
    halted: str = ""  # why it failed before it was ready (halts a rolling update)
    node: str
    signal: int | msgspec.UnsetType = msgspec.UNSET  # signal_child only


class LogLines(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    node: str
    lines: list[str]


class NodeRow(msgspec.Struct, frozen=True, kw_only=True):
    """``nodes``: one row of the node tracker."""

    node: str
    status: str  # online | offline | unknown
    last_change: str | None  # RFC 3339
    reason: str
    alive: bool
    host: str | None
    pid: int | None
    draining: bool
    children: int


class NodeDraining(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    draining: bool


class NodeForgotten(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    forgotten: bool = True


class GroupRow(msgspec.Struct, frozen=True, kw_only=True):
    """``groups``, ``create_group``, ``reset_group``: every field of the group's spec
    (``spec.GroupSpec``), then its cluster-wide state and how many children use it."""

    name: str
    strategy: str
    max_restarts: int
    max_seconds: float
    restart_delay: float
    restart_delay_max: float
    retry_after: float | None
    restricted: bool
    state: str  # running | failed
    reason: str
    failed_node: str | None
    since: float | None
    children: int


class GroupUpdated(GroupRow, frozen=True, kw_only=True):
    """``update_group``: the group as it is now; ``changed``: whether its spec was."""

    changed: bool


class ChildUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """``update_child``: whether the stored spec changed (an unchanged spec restarts
    nothing), the digest its instances will say they run, and the rollout."""

    id: str
    changed: bool
    digest: str
    rollout: str  # done, in progress, halted, or "not placed"
    reason: str = ""


class PlanEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One spec of an ``apply``: what happens to it."""

    kind: str  # child | group
    id: str
    action: str  # create | update | delete | unchanged


class Applied(msgspec.Struct, frozen=True, kw_only=True):
    """``apply``: the plan (groups, then children, in the file's order, then the
    deletes), and whether it was carried out (``dry_run``: nothing changed)."""

    dry_run: bool
    plan: list[PlanEntry]
    transactions: int = 0  # etcd transactions it took


class Exported(msgspec.Struct, frozen=True, kw_only=True):
    """``export``: the stored specs in creation order, each with only the fields
    that differ from their defaults (``spec.written``); ``invalid``: stored values
    that are not valid specs, left out."""

    groups: list[dict[str, Any]]
    children: list[dict[str, Any]]
    invalid: list[str] = []


class RolloutInstance(msgspec.Struct, frozen=True, kw_only=True):
    """One placed instance of a child: which spec it runs (from its claim)."""

    instance: str
    replica: int
    node: str | None  # where it runs; None: not claimed
    state: str  # the claim's, or "not running"
    revision: int | None  # the spec key's revision it was started from
    current: bool  # it runs the current spec (its digest is the spec's)
    ready: bool
    health: str


class RolloutStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``rollout``: where moving a child's instances to its current spec stands."""

    id: str
    state: str  # done, in progress, halted, or "not placed"
    reason: str  # why it halted
    revision: int  # the spec key's current mod revision
    digest: str
    instances: list[RolloutInstance]


class ReasonCount(msgspec.Struct, frozen=True, kw_only=True):
    """``summary``: a reason and how many child instances give it."""

    reason: str
    count: int


class Misplaced(msgspec.Struct, frozen=True, kw_only=True):
    """``summary``: an instance that runs on another node than the ring's owner."""

    instance: str
    node: str
    owner: str | None  # None: the ring places it nowhere now


class RolloutSummary(msgspec.Struct, frozen=True, kw_only=True):
    """``summary``: a child whose instances are not all on its current spec."""

    id: str
    state: str  # in progress | halted
    reason: str


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """``summary``: the cluster at a glance. ``ok``: every child instance runs on
    the node the ring places it on, nothing moves and no group failed."""

    ok: bool
    nodes_online: list[str]  # in the ring and not draining
    nodes_draining: list[str]
    nodes_offline: list[str]
    children: int  # child specs
    instances: int
    states: dict[str, int]  # instance state -> count
    pending_reasons: list[ReasonCount]  # the most common first
    failure_reasons: list[ReasonCount]
    groups_failed: dict[str, str]  # group -> "node: reason"
    moves_pending: int  # this node's reconciler: moves it holds back (rate limit)
    misplaced: list[Misplaced]
    rollouts: list[RolloutSummary]


class GroupDeleted(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    deleted: bool = True
    orphaned_children: list[str] = []


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
