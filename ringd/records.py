"""Every value ringd stores in etcd, as a typed record (see docs/design.md, "etcd keys").

One msgspec struct per kind of key. Records written by ringd decode back to the
same struct; records are read leniently (unknown fields are ignored, so that a
newer daemon's additions do not break an older one during a rolling upgrade),
but a value of the wrong shape is an ``InvalidRecord``: the view logs it once and
skips it. Child and group specs are validated more strictly in ``spec.py``.

Handoff state (``<cluster>:data/handoff/<instance>``) is the child's own bytes and
has no record. Figures and handoff state live outside the prefix every daemon
mirrors (``Keys.data_prefix``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .errors import InvalidSpec
from .spec import ChildSpec, GroupRecord, parse_child, parse_group_record

if TYPE_CHECKING:
    from collections.abc import Callable

NodeStatus = Literal["online", "offline"]
Health = Literal["", "starting", "healthy", "unhealthy"]  # "": no check


class Alive(msgspec.Struct, frozen=True, kw_only=True):
    """``nodes/<n>/alive``, under the node's lease: the node is in the ring."""

    node: str
    host: str = ""
    pid: int | None = None
    pid_namespace: str | None = None  # boot id + PID namespace: where ``pid`` means something
    pid_start: float | None = None  # wall clock, for people
    pid_ticks: int | None = None  # start in clock ticks after boot: a clock step leaves it
    instance: str = ""  # this daemon's token, in its children's environment
    version: str = ""
    labels: dict[str, str] = {}
    groups: list[str] = []
    started: str = ""
    lease: int | None = None
    peer_address: str = ""  # host:port of its peer listener; "": it takes no peer connections


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """``nodes/<n>/status`` (no lease): online or offline since ``last_change``, and why."""

    node: str
    status: NodeStatus
    last_change: str | None = None  # RFC 3339
    reason: str = ""


class Drain(msgspec.Struct, frozen=True, kw_only=True):
    """``nodes/<n>/drain``: the node takes no children while this key exists."""

    since: float | None = None
    by: str = ""


class Claim(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """``claims/<instance>``, under the owner's lease: the instance runs there (or is
    about to). Its create revision is the instance's fencing token. Stored without
    its default values (every daemon holds every claim: ~85 bytes less each;
    readers fill the defaults in)."""

    node: str
    state: str = "starting"
    id: str | None = None
    instance: str | None = None
    role: str = "master"
    group: str | None = None
    pid: int | None = None
    restarts: int = 0
    started: float | None = None
    reason: str = ""
    last_exit: str = ""
    fence: int | None = None
    # Which spec it runs: the spec key's mod revision when it was started, and the
    # spec's digest (equal digests, equal specs), so any daemon tells old from new.
    revision: int | None = None
    digest: str = ""
    ready: bool = False  # ran ``min_ready`` seconds (and passed a first check)
    health: Health = ""
    halted: str = ""  # why it failed before it was ready: halts a rolling update


# ``<cluster>:data/figures/<n>``, under the node's lease: instance -> [rss bytes, cpu %].
NodeFigures = dict[str, tuple[int, float]]


class InvalidRecord(ValueError):
    """A stored value that is not a record of its kind."""


def _decoder(record_type: Any) -> Callable[[bytes], Any]:
    decoder = msgspec.json.Decoder(record_type)

    def decode(data: bytes) -> Any:
        try:
            return decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidRecord(str(exc)) from exc

    return decode


def _spec(data: bytes) -> ChildSpec:
    try:
        return parse_child(data)
    except InvalidSpec as exc:
        raise InvalidRecord(str(exc)) from exc


def _group(data: bytes) -> GroupRecord:
    try:
        return parse_group_record(data)
    except InvalidSpec as exc:
        raise InvalidRecord(str(exc)) from exc


# (kind, sub) as ``Keys.parse`` names them -> the decoder of their values.
DECODERS: dict[tuple[str, str], Callable[[bytes], Any]] = {
    ("nodes", "alive"): _decoder(Alive),
    ("nodes", "status"): _decoder(Status),
    ("nodes", "drain"): _decoder(Drain),
    ("claims", ""): _decoder(Claim),
    ("children", ""): _spec,
    ("groups", ""): _group,
}


def named(kind: str, value: Any) -> str | None:
    """The name a record carries for its own key (a spec's id, a group's name), if any."""
    if kind == "children":
        return str(value.id)
    if kind == "groups":
        return str(value.spec.name)
    return None


def decode(kind: str, sub: str, name: str, data: bytes) -> Any:
    """The record at ``<kind>/<name>[/<sub>]``.

    Raises:
        InvalidRecord: the value is not a record of that kind, or names another key.
    """
    value = DECODERS[(kind, sub)](data)
    own = named(kind, value)
    if own is not None and own != name:
        raise InvalidRecord(f"{own!r} does not match its key")
    return value


def rfc3339(unix: float | None = None) -> str:
    """A time as records write it (``last_change``): UTC, milliseconds; None: now."""
    when = datetime.now(UTC) if unix is None else datetime.fromtimestamp(unix, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


decode_figures: Callable[[bytes], NodeFigures] = _decoder(NodeFigures)

_encoder = msgspec.json.Encoder()


def encode(record: msgspec.Struct | NodeFigures) -> bytes:
    """The JSON stored in etcd for a record."""
    return _encoder.encode(record)
