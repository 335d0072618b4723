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


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
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


def _argv_problems(name: str, argv: list[str]) -> list[tuple[str, str]]:
    found = []
    if not argv[0]:
        found.append((f"{name}[0]", "must not be empty"))
    found += [(f"{name}[{i}]", "must not contain NUL") for i, arg in enumerate(argv) if "\0" in arg]
    if sum(len(a) for a in argv) > MAX_ARG_BYTES:
        found.append((name, f"longer than {MAX_ARG_BYTES} bytes"))
    return found


def _rule_problems(spec: ChildSpec) -> list[tuple[str, str]]:
    """The rules msgspec's declarative constraints cannot express, every one broken."""
    found = _argv_problems("argv", spec.argv)
    if spec.check is not None:
        found += _argv_problems("check", spec.check)
    for key, value in spec.env.items():
        if not _ENV_NAME.match(key):
            found.append((f"env.{key}", "not a valid variable name"))
        elif key.startswith(RESERVED_ENV_PREFIX):
            found.append((f"env.{key}", f"names starting with {RESERVED_ENV_PREFIX} are reserved"))
        if "\0" in value:
            found.append((f"env.{key}", "must not contain NUL"))
    if spec.cwd is not None and not os.path.isabs(spec.cwd):
        found.append(("cwd", f"{spec.cwd!r} is not an absolute path"))
    if spec.cwd is not None and "\0" in spec.cwd:
        found.append(("cwd", "must not contain NUL"))
    try:
        signal_number(spec.stop_signal)
    except ValueError as exc:
        found.append(("stop_signal", str(exc)))
    return found


def _check(spec: ChildSpec) -> None:
    """The rules msgspec's declarative constraints cannot express (the first broken)."""
    if found := _rule_problems(spec):
        raise InvalidSpec(*found[0])


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


def _pair(exc: msgspec.ValidationError) -> tuple[str, str]:
    error = _as_invalid(exc)
    return error.field, error.problem


def _top(path: str) -> str:
    """The key of a spec a problem's path starts at: ``env`` of ``env.A``, ``argv``
    of ``argv[0]``, ``on`` of ``on (a key)``."""
    return re.split(r"[.\[ ]", path, maxsplit=1)[0]


def _every_problem(
    data: Any, into: type[msgspec.Struct], placeholders: dict[str, Any]
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Every wrong key of ``data`` for ``into`` and every required one missing, and
    the keys that are right (``validation.problems`` reports a missing key only
    once nothing else is wrong)."""
    if not isinstance(data, dict):
        return [("", "must be a table")], {}
    found = problems(data, into)
    for field in msgspec.structs.fields(into):
        if field.required and field.encode_name not in data:
            found.append((field.encode_name, "is required"))
    found = list(dict.fromkeys(found))  # the whole conversion may repeat a missing key
    bad = {_top(path) for path, _ in found}
    good = {key: value for key, value in data.items() if key not in bad}
    return found, {**placeholders, **good}


def child_problems(data: Any) -> list[tuple[str, str]]:
    """Every problem of a child spec (a table from a specs file) as ``(field,
    problem)``, in the words ``parse_child`` uses; [] when it is a valid spec."""
    found, good = _every_problem(data, ChildSpec, {"id": "x", "argv": ["x"]})
    try:
        spec = msgspec.convert(good, ChildSpec)
    except msgspec.ValidationError as exc:  # keys right alone, wrong together
        return found or [_pair(exc)]
    given = data if isinstance(data, dict) else {}
    found += [(p, why) for p, why in _rule_problems(spec) if _top(p) in given]
    return found


def group_problems(data: Any) -> list[tuple[str, str]]:
    """Every problem of a group spec (a table from a specs file), as ``child_problems``."""
    found, good = _every_problem(data, GroupSpec, {"name": "x"})
    if not found:
        try:
            msgspec.convert(good, GroupSpec)
        except msgspec.ValidationError as exc:
            found.append(_pair(exc))
    return found


def written(spec: msgspec.Struct) -> dict[str, Any]:
    """A spec as an operator would write it: its required fields and those that
    differ from their defaults, as plain values (``export``; ``parse_child`` or
    ``parse_group`` reads it back to an equal spec)."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(spec):
        value = getattr(spec, field.name)
        if not field.required:
            default = (
                field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
            )
            if value == default:
                continue
        out[field.encode_name] = msgspec.to_builtins(value)
    return out


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
