"""Spec validation: every error names the field (pure, no I/O)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringd.errors import InvalidSpec
from ringd.spec import ChildSpec, encode, parse_child, signal_number


def test_defaults() -> None:
    spec = parse_child({"id": "web", "argv": ["python3", "-m", "http.server"]})
    assert spec == ChildSpec(id="web", argv=["python3", "-m", "http.server"])
    assert (spec.restart, spec.max_restarts, spec.max_seconds) == ("permanent", 3, 5.0)
    assert parse_child(encode(spec)) == spec


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"id": "a b", "argv": ["x"]}, "id"),
        ({"id": "", "argv": ["x"]}, "id"),
        ({"id": "x" * 129, "argv": ["x"]}, "id"),
        ({"id": "../etc", "argv": ["x"]}, "id"),
        ({"argv": ["x"]}, "id"),
        ({"id": "a"}, "argv"),
        ({"id": "a", "argv": []}, "argv"),
        ({"id": "a", "argv": "ls -l"}, "argv"),
        ({"id": "a", "argv": [""]}, "argv[0]"),
        ({"id": "a", "argv": ["x", "a\0b"]}, "argv[1]"),
        ({"id": "a", "argv": ["x", 3]}, "argv[1]"),
        ({"id": "a", "argv": ["x"], "restart": "never"}, "restart"),
        ({"id": "a", "argv": ["x"], "env": {"1A": "x"}}, "env.1A"),
        ({"id": "a", "argv": ["x"], "env": {"RINGD_NODE": "x"}}, "env.RINGD_NODE"),
        ({"id": "a", "argv": ["x"], "env": {"A": 1}}, "env.A"),
        ({"id": "a", "argv": ["x"], "on": {"zone": "eu west"}}, "on.zone"),
        ({"id": "a", "argv": ["x"], "cwd": "relative"}, "cwd"),
        ({"id": "a", "argv": ["x"], "cwd": "/tmp/a\0b"}, "cwd"),
        ({"id": "a", "argv": ["x"], "group": "bad group"}, "group"),
        ({"id": "a", "argv": ["x"], "max_restarts": -1}, "max_restarts"),
        ({"id": "a", "argv": ["x"], "max_seconds": 0}, "max_seconds"),
        ({"id": "a", "argv": ["x"], "stop_signal": "SIGFOO"}, "stop_signal"),
        ({"id": "a", "argv": ["x"], "shell": True}, "shell"),
    ],
)
def test_invalid_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_child(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_malformed_json() -> None:
    with pytest.raises(InvalidSpec, match="malformed"):
        parse_child(b"{not json")


def test_signal_names() -> None:
    assert signal_number("TERM") == signal_number("SIGTERM") == signal_number("15") == 15
    with pytest.raises(ValueError, match="not a signal"):
        signal_number("999")


@given(
    st.dictionaries(
        st.text(max_size=10), st.one_of(st.none(), st.integers(), st.text(), st.lists(st.text()))
    )
)
def test_arbitrary_input_is_rejected_cleanly_or_valid(data: dict) -> None:
    """Whatever arrives, the result is a valid spec or an InvalidSpec, never another error."""
    try:
        spec = parse_child(data)
    except InvalidSpec as exc:
        assert exc.field
    else:
        assert parse_child(json.loads(encode(spec))) == spec


@pytest.mark.parametrize("name", ["-leading", "--", ".hidden", "_x", ""])
def test_an_id_starts_with_a_letter_or_digit(name: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_child({"id": name, "argv": ["sleep", "1"]})
    assert exc.value.field == "id"


@pytest.mark.parametrize("name", ["a", "9", "web-1", "a.b_c-d", "x" * 128])
def test_ids_that_are_fine(name: str) -> None:
    assert parse_child({"id": name, "argv": ["sleep", "1"]}).id == name
