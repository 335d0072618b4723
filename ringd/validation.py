"""msgspec's validation errors in an operator's words, with the path of the field.

msgspec stops at the first error and speaks in its own terms ("Expected `str`
matching regex ..."); a configuration or specs file with several mistakes should
get all of them at once, each naming its key. ``problems`` converts field by
field to find every one.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

# A letter or digit first: a name beginning with "-" reads as an option on a
# command line ("start-child -x" stored argv ["--", ...]).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
LABEL_PATTERN = r"^[A-Za-z0-9._-]{1,63}$"
LABEL_RULE = "1-63 letters, digits, '.', '_' or '-'"

_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
    "null": "nothing",
}
# Patterns an operator cannot be expected to read, said in words.
PATTERN_WORDS = {NAME_PATTERN: f"must be {NAME_RULE}", LABEL_PATTERN: f"must be {LABEL_RULE}"}

_AT = re.compile(r" - at `(?P<path>[^`]*)`(?: in `(?P<outer>[^`]*)`)?$")


def _path(match: re.Match[str] | None) -> str:
    if match is None:
        return ""
    path = match.group("path")
    if match.group("outer"):  # "at `key` in `$.labels`": a key of that table
        return match.group("outer").removeprefix("$.").removeprefix("$") + " (a key)"
    return path.removeprefix("$.").removeprefix("$").replace("[...]", " (a value)")


def describe(exc: msgspec.ValidationError | msgspec.DecodeError) -> tuple[str, str]:
    """``(path, problem)`` for one error: ``("lease_ttl", "must be a number, not a string")``."""
    text = str(exc)
    match = _AT.search(text)
    path, problem = _path(match), (text[: match.start()] if match else text)
    if unknown := re.fullmatch(r"Object contains unknown field `([^`]+)`", problem):
        return (f"{path}.{unknown.group(1)}" if path else unknown.group(1)), "unknown key"
    if missing := re.fullmatch(r"Object missing required field `([^`]+)`", problem):
        return (f"{path}.{missing.group(1)}" if path else missing.group(1)), "is required"
    if wrong := re.fullmatch(r"Expected `(\w+)`, got `(\w+)`", problem):
        want, got = (_TYPES.get(t, t) for t in wrong.groups())
        return path, f"must be {want}, not {got}"
    if regex := re.fullmatch(r"Expected `str` matching regex '(.*)'", problem):
        return path, PATTERN_WORDS.get(regex.group(1), f"does not match {regex.group(1)}")
    if bound := re.fullmatch(r"Expected `(\w+)` (of length )?([<>]=?) (.+)", problem):
        _, length, op, limit = bound.groups()
        limit = limit.removesuffix(".0")
        if length and op == ">=" and limit == "1":
            return path, "must not be empty"
        what = "its length" if length else "it"
        return path, f"{what} must be {op} {limit}"
    if enum := re.fullmatch(r"Invalid enum value (.+)", problem):
        return path, f"{enum.group(1)} is not one of the allowed values"
    return path, problem


def problems(data: dict[str, Any], into: type[T]) -> list[tuple[str, str]]:
    """Every wrong key of ``data`` (a table decoded from TOML or JSON) for the
    struct ``into``, each as ``(path, problem)``: each key is converted alone (the
    others left to their defaults), so that one mistake does not hide the next."""
    found = []
    for key, value in data.items():
        try:
            msgspec.convert({key: value}, into)
        except msgspec.ValidationError as exc:
            path, problem = describe(exc)
            if problem == "is required":
                continue  # another key's absence: reported by the whole conversion
            if isinstance(value, dict) and path.endswith(("(a key)", "(a value)")):
                # msgspec does not say which entry of a table: find each one.
                found += [
                    (f"{key}.{entry}", describe(inner)[1])
                    for entry, item in value.items()
                    if (inner := _error({key: {entry: item}}, into)) is not None
                ]
                continue
            found.append((path or key or "(empty key)", problem))
    if not found:
        try:
            msgspec.convert(data, into)
        except msgspec.ValidationError as exc:
            found.append(describe(exc))
    return found


def _error(data: dict[str, Any], into: type[Any]) -> msgspec.ValidationError | None:
    try:
        msgspec.convert(data, into)
    except msgspec.ValidationError as exc:
        return exc
    return None
