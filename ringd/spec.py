"""Child specs: the desired state stored under ``children/<id>``.

Pure: parse, validate, defaults. Every error names the field (``InvalidSpec.field``).
msgspec validates while it decodes, reports the path of a bad field and rejects
unknown fields, so a spec cannot smuggle in anything the daemon does not check.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Annotated, Any, Literal

import msgspec
import xxhash

from .errors import InvalidSpec
from .validation import LABEL_PATTERN, NAME_PATTERN, NAME_RULE, describe, problems

__all__ = ["LABEL_PATTERN", "NAME_PATTERN", "NAME_RULE"]  # re-exported: their old home

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
RestartType = Literal["permanent", "transient", "temporary"]
Label = Annotated[str, msgspec.Meta(pattern=LABEL_PATTERN)]
MAX_REPLICAS = 32

MAX_ARGS = 4096
MAX_ARG_BYTES = 128 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables ringd sets for every child; a spec may not override them.
RESERVED_ENV_PREFIX = "RINGD_"


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to run and how to supervise it.

    ``argv`` is a list, never a shell string; ringd execs it directly.
    """

    id: Name
    argv: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_ARGS)]
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    restart: RestartType = "permanent"
    group: Name | None = None
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 3
    max_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 5.0
    stop_signal: str = "SIGTERM"
    stop_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    # n instances on n distinct nodes; the first owner's is the master.
    replicas: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLICAS)] = 1
    # Node affinity: only nodes whose labels include all of these.
    on: dict[Label, Label] = msgspec.field(default_factory=dict)
    # State handed from the old owner to the next through $RINGD_HANDOFF_FILE.
    handoff: bool = False
    # Rolling updates: a new instance counts as ready once it has run this long
    # (and passed its first check, if it has one).
    min_ready: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    # Health check: run in the child's environment and cwd; exit 0 is healthy.
    check: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_ARGS)] | None = None
    check_interval: Annotated[float, msgspec.Meta(ge=0.1, le=86_400)] = 10.0
    check_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    # Consecutive failures before the instance is restarted.
    check_failures: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3


def spec_digest(spec: ChildSpec) -> str:
    """What a running instance says it runs: equal digests, equal specs (so that an
    instance on the previous spec is told from one on the new, on any node)."""
    return f"{xxhash.xxh3_64_intdigest(encode(spec)):016x}"


def _check_argv(name: str, argv: list[str]) -> None:
    if not argv[0]:
        raise InvalidSpec(f"{name}[0]", "must not be empty")
    for i, arg in enumerate(argv):
        if "\0" in arg:
            raise InvalidSpec(f"{name}[{i}]", "must not contain NUL")
    if sum(len(a) for a in argv) > MAX_ARG_BYTES:
        raise InvalidSpec(name, f"longer than {MAX_ARG_BYTES} bytes")


def _check(spec: ChildSpec) -> None:
    """The rules msgspec's declarative constraints cannot express."""
    _check_argv("argv", spec.argv)
    if spec.check is not None:
        _check_argv("check", spec.check)
    for key, value in spec.env.items():
        if not _ENV_NAME.match(key):
            raise InvalidSpec(f"env.{key}", "not a valid variable name")
        if key.startswith(RESERVED_ENV_PREFIX):
            raise InvalidSpec(
                f"env.{key}", f"names starting with {RESERVED_ENV_PREFIX} are reserved"
            )
        if "\0" in value:
            raise InvalidSpec(f"env.{key}", "must not contain NUL")
    if spec.cwd is not None and not os.path.isabs(spec.cwd):
        raise InvalidSpec("cwd", f"{spec.cwd!r} is not an absolute path")
    if spec.cwd is not None and "\0" in spec.cwd:
        raise InvalidSpec("cwd", "must not contain NUL")
    try:
        signal_number(spec.stop_signal)
    except ValueError as exc:
        raise InvalidSpec("stop_signal", str(exc)) from None


def signal_number(name: str) -> int:
    """The number of a signal given as ``"SIGTERM"``, ``"TERM"`` or ``"15"``.

    Raises:
        ValueError: the name is not a signal.
    """
    text = name.upper()
    if text.isdigit():
        number = int(text)
        if number in signal.valid_signals():
            return number
    else:
        full = text if text.startswith("SIG") else "SIG" + text
        member = signal.Signals.__members__.get(full)
        if member is not None:
            return member.value
    raise ValueError(f"{name!r} is not a signal")


def _as_invalid(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidSpec:
    field, problem = describe(exc)
    return InvalidSpec(field or "spec", problem)


def parse_child(data: bytes | str | dict[str, Any]) -> ChildSpec:
    """Decode and validate a child spec from JSON text or a mapping.

    Raises:
        InvalidSpec: naming the field that is wrong.
    """
    try:
        if isinstance(data, dict):
            spec = msgspec.convert(data, ChildSpec)
        else:
            spec = msgspec.json.decode(data, type=ChildSpec)
    except msgspec.ValidationError as exc:
        if isinstance(data, dict) and (found := problems(data, ChildSpec)):
            raise InvalidSpec(*found[0]) from exc  # names a table's entry too
        raise _as_invalid(exc) from exc
    except msgspec.DecodeError as exc:
        raise _as_invalid(exc) from exc
    _check(spec)
    return spec


def encode(spec: msgspec.Struct) -> bytes:
    """The canonical JSON of a spec, as stored in etcd."""
    return msgspec.json.encode(spec)


Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]


class GroupSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A group of children supervised together on each node, like an OTP supervisor.

    ``restart_delay`` > 0 waits before each restart, doubling per consecutive
    restart up to ``restart_delay_max`` (0 keeps OTP's immediate restart).
    ``retry_after`` retries a group that failed cluster-wide after that many
    seconds (None: it stays failed until ``ringctl reset-group``).
    """

    name: Name
    strategy: Strategy = "one_for_one"
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 3
    max_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 5.0
    restart_delay: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    restart_delay_max: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 30.0
    retry_after: Annotated[float, msgspec.Meta(gt=0, le=86_400)] | None = None
    # Run only on nodes that list this group in their config's ``groups`` (like Sworm).
    restricted: bool = False


GroupState = Literal["running", "failed"]


class GroupRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What ``groups/<g>`` holds: the spec and the group's cluster-wide state."""

    spec: GroupSpec
    state: GroupState = "running"
    reason: str = ""
    node: str | None = None
    since: float | None = None  # unix time of the last state change


def parse_group(data: bytes | str | dict[str, Any]) -> GroupSpec:
    """Decode and validate a group spec (JSON text or mapping).

    Raises:
        InvalidSpec: naming the field that is wrong.
    """
    try:
        if isinstance(data, dict):
            return msgspec.convert(data, GroupSpec)
        return msgspec.json.decode(data, type=GroupSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _as_invalid(exc) from exc


def parse_group_record(data: bytes) -> GroupRecord:
    """Decode ``groups/<g>`` as stored in etcd.

    Raises:
        InvalidSpec: naming the field that is wrong.
    """
    try:
        return msgspec.json.decode(data, type=GroupRecord)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _as_invalid(exc) from exc
