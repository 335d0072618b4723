"""Child and group specs from the command line and from specs files (read, and
written by ``export``), and the batches that ``start-children`` sends them in. The
daemon validates every spec."""

from __future__ import annotations

import json
import math
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ringd import protocol
from ringd.protocol import MAX_BATCH, MAX_LINE

from .completion import complete_group

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

F = TypeVar("F", bound="Callable[..., Any]")

# -- from the command line -------------------------------------------------------------


def _check_command(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[str] | None:
    """``--check "CMD ARGS"``: split as a shell would (quotes, no expansion)."""
    if value is None:
        return None
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None
    if not argv:
        raise click.BadParameter("must name a command")
    return argv


def child_options(func: F) -> F:
    """The options of a child spec, shared by ``start-child`` and ``update-child``
    (an option left out is the daemon's default)."""
    options = [
        click.option(
            "--restart",
            type=click.Choice(["permanent", "transient", "temporary"]),
            help="Restart policy (daemon default: permanent).",
        ),
        click.option(
            "--env",
            "env",
            multiple=True,
            metavar="K=V",
            help="Environment variable for the child (repeatable).",
        ),
        click.option("--cwd", metavar="DIR", help="Working directory (absolute)."),
        click.option(
            "--group",
            metavar="G",
            shell_complete=complete_group,
            help="Group the child belongs to.",
        ),
        click.option(
            "--max-restarts",
            type=int,
            metavar="N",
            help="Give up after N restarts within --max-seconds.",
        ),
        click.option(
            "--max-seconds", type=float, metavar="S", help="The window --max-restarts counts in."
        ),
        click.option(
            "--stop-signal", metavar="SIG", help="Signal that asks it to stop (e.g. TERM)."
        ),
        click.option("--stop-timeout", type=float, metavar="S", help="Seconds before SIGKILL."),
        click.option(
            "--replicas",
            type=click.IntRange(1, 32),
            metavar="N",
            help="Run N instances on N distinct nodes (the first is the master).",
        ),
        click.option(
            "--on",
            "on",
            multiple=True,
            metavar="K=V",
            help="Node affinity: only nodes labelled K=V (repeatable: all must match).",
        ),
        click.option(
            "--handoff",
            is_flag=True,
            default=None,
            help="Hand state to the next instance via $RINGD_HANDOFF_FILE when it moves.",
        ),
        click.option(
            "--min-ready",
            type=float,
            metavar="S",
            help="An instance is ready once it has run S seconds (and passed its first "
            "check): a rolling update waits for it (default 1).",
        ),
        click.option(
            "--check",
            metavar='"CMD ARGS"',
            callback=_check_command,
            help="Health check, split like a shell would; exit 0 is healthy.",
        ),
        click.option(
            "--check-interval", type=float, metavar="S", help="Seconds between checks (10)."
        ),
        click.option(
            "--check-timeout", type=float, metavar="S", help="A check running longer fails (5)."
        ),
        click.option(
            "--check-failures",
            type=int,
            metavar="N",
            help="Failed checks in a row that restart the instance (3).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def child_spec(child_id: str, argv: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """The spec ``child_options`` describe (``options``: their values, by name)."""
    spec: dict[str, Any] = {"id": child_id, "argv": list(argv)}
    if env := options.pop("env", ()):
        spec["env"] = parse_env(env)
    if on := options.pop("on", ()):
        spec["on"] = parse_env(on, "--on")
    spec.update({key: value for key, value in options.items() if value is not None})
    return spec


def group_options(func: F) -> F:
    """The options of a group spec, shared by ``create-group`` and ``update-group``."""
    options = [
        click.option(
            "--strategy",
            type=click.Choice(["one_for_one", "one_for_all", "rest_for_one"]),
            help="Who restarts with a failed child (daemon default: one_for_one).",
        ),
        click.option(
            "--max-restarts",
            type=int,
            metavar="N",
            help="Restarts allowed within --max-seconds before the group fails (default 3).",
        ),
        click.option(
            "--max-seconds",
            type=float,
            metavar="T",
            help="The window --max-restarts counts in (5).",
        ),
        click.option(
            "--restart-delay",
            type=float,
            metavar="S",
            help="Wait before a restart, doubling per consecutive one (0: at once).",
        ),
        click.option(
            "--restart-delay-max",
            type=float,
            metavar="S",
            help="The most --restart-delay grows to (30).",
        ),
        click.option(
            "--retry-after",
            type=float,
            metavar="S",
            help="Retry a group failed cluster-wide after S seconds (default: wait for "
            "reset-group).",
        ),
        click.option(
            "--restricted",
            is_flag=True,
            default=None,
            help="Run only on nodes whose config lists this group.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def group_spec(name: str, options: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name}
    spec.update({key: value for key, value in options.items() if value is not None})
    return spec


def parse_env(values: tuple[str, ...], option: str = "--env") -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint=f"'{option}'")
        env[key] = value
    return env


# -- specs files -----------------------------------------------------------------------


@dataclass
class SpecsFile:
    """The specs of a file, in file order (the daemon names a wrong one by its place)."""

    children: list[Any] = field(default_factory=list)
    groups: list[Any] = field(default_factory=list)


def read_specs_file(text: str, fmt: str, *, strict: bool = False) -> SpecsFile:
    """A specs file: TOML ``[[child]]`` and ``[[group]]`` tables, or JSON (a list of
    child specs, or ``{"child": [...], "group": [...]}``). The daemon validates each
    spec. ``strict`` (apply): any other top-level key is an error (``[[children]]``
    would otherwise read as no specs: ``apply --prune`` would delete every one), and
    a file with no specs is fine."""
    try:
        data: Any = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"not valid {fmt.upper()}: {exc}", param_hint="'FILE'") from None
    expected = (
        "[[child]] and [[group]] tables"
        if fmt == "toml"
        else 'a list of child specs, or {"child": [...], "group": [...]}'
    )
    if isinstance(data, list):
        found = SpecsFile(children=data)
    elif isinstance(data, dict):
        unknown = sorted(set(data) - {"child", "group"})
        if unknown and strict:
            raise click.BadParameter(
                f"unknown key {unknown[0]!r}: expected {expected}", param_hint="'FILE'"
            )
        found = SpecsFile(children=data.get("child", []), groups=data.get("group", []))
        for key, value in (("child", found.children), ("group", found.groups)):
            if not isinstance(value, list):
                raise click.BadParameter(
                    f"{key!r} must be a list of tables: expected {expected}", param_hint="'FILE'"
                )
    else:
        raise click.BadParameter(f"expected {expected}", param_hint="'FILE'")
    if not strict and not found.children and not found.groups:
        raise click.BadParameter(f"holds no child specs: expected {expected}", param_hint="'FILE'")
    return found


def read_specs(text: str, fmt: str) -> list[Any]:
    """The child specs of a specs file (see ``read_specs_file``)."""
    found = read_specs_file(text, fmt)
    if not found.children:
        where = "[[child]] tables" if fmt == "toml" else 'a list of specs or {"child": [...]}'
        raise click.BadParameter(f"holds no child specs: expected {where}", param_hint="'FILE'")
    return found.children


def file_format(name: str, fmt: str | None) -> str:
    """A specs file's format: as given, else json for ``*.json``, else toml."""
    return fmt or ("json" if name.endswith(".json") else "toml")


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's, but for DEL, which TOML wants escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return ("-" if value < 0 else "") + ("nan" if math.isnan(value) else "inf")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"no TOML for {value!r}")


def write_specs(children: list[dict[str, Any]], groups: list[dict[str, Any]], fmt: str) -> str:
    """A specs file that ``read_specs_file`` reads back to these specs: TOML tables
    (groups first), or JSON ``{"group": [...], "child": [...]}``."""
    if fmt == "json":
        return json.dumps({"group": groups, "child": children}, indent=2, ensure_ascii=False) + "\n"
    blocks = []
    for kind, specs in (("group", groups), ("child", children)):
        for spec in specs:
            lines = [f"[[{kind}]]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in spec.items()]
            blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def spec_batches(specs: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """``(index of the first, specs)`` per request: at most MAX_BATCH specs, and
    short enough for the daemon's request line (specs with a big env or argv)."""
    room = MAX_LINE - 4096  # the request's envelope
    start, size = 0, 0
    for index, spec in enumerate(specs):
        length = len(protocol.dumps(spec)) + 1  # as the request encodes it, and a comma
        if index > start and (index - start == MAX_BATCH or size + length > room):
            yield start, specs[start:index]
            start, size = index, 0
        size += length
    if start < len(specs):
        yield start, specs[start:]


def shift_spec_index(message: str, offset: int) -> str:
    """``child 3 (id web): ...`` of a request that began at spec ``offset`` of a file:
    the child's place in the whole file (every line of a multi-line message)."""
    return re.sub(r"\bchild (\d+)\b", lambda m: f"child {int(m[1]) + offset}", message)
