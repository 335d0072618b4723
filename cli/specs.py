"""Child specs from the command line and from specs files, and the batches that
``start-children`` sends them in. The daemon validates every spec."""

from __future__ import annotations

import json
import re
import tomllib
from typing import TYPE_CHECKING, Any

import click

from ringd import protocol
from ringd.protocol import MAX_BATCH, MAX_LINE

if TYPE_CHECKING:
    from collections.abc import Iterator


def parse_env(values: tuple[str, ...], option: str = "--env") -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint=f"'{option}'")
        env[key] = value
    return env


def read_specs(text: str, fmt: str) -> list[Any]:
    """The child specs of a specs file: TOML ``[[child]]`` tables, or JSON (a list of
    specs, or ``{"child": [...]}``). The daemon validates each spec."""
    try:
        data: Any = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"not valid {fmt.upper()}: {exc}", param_hint="'FILE'") from None
    specs = data.get("child") if isinstance(data, dict) else data
    if not isinstance(specs, list) or not specs:
        where = "[[child]] tables" if fmt == "toml" else 'a list of specs or {"child": [...]}'
        raise click.BadParameter(f"holds no child specs: expected {where}", param_hint="'FILE'")
    return specs


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
    """``specs[3].argv: ...`` of a request that began at spec ``offset`` of a file."""
    return re.sub(r"specs\[(\d+)\]", lambda m: f"specs[{int(m[1]) + offset}]", message, count=1)
