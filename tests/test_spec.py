"""Spec validation: every error names the field (pure, no I/O)."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ringd.errors import InvalidSpec
from ringd.spec import ChildSpec, encode, parse_child, signal_number
from ringd.validation import LABEL_PATTERN, NAME_PATTERN


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


# Spec-shaped input: for each field, values that are right and values that are
# wrong for it (by type, range, pattern or rule), drawn separately so that the
# test knows which fields it made wrong.
NO_NUL = st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))
TEXT = st.text(NO_NUL, max_size=12)
NAME = st.from_regex(NAME_PATTERN, fullmatch=True)
LABEL = st.from_regex(LABEL_PATTERN, fullmatch=True)
ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
    lambda k: not k.startswith("RINGD_")
)
SIGNALS = st.sampled_from(["SIGTERM", "TERM", "term", "SIGINT", "HUP", "SIGUSR1", "15", "9"])
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.text())
)

FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "id": (
        NAME,
        st.one_of(st.sampled_from(["", "a b", "-x", ".x", "x" * 129, "a/b"]), st.integers()),
    ),
    "argv": (
        st.lists(TEXT, max_size=4).flatmap(
            lambda rest: st.text(NO_NUL, min_size=1, max_size=12).map(lambda first: [first, *rest])
        ),
        st.sampled_from([[], [""], ["x", "a\0b"], ["x", 3], "ls -l", None]),
    ),
    "env": (
        st.dictionaries(ENV_NAME, TEXT, max_size=3),
        st.sampled_from([{"1A": "x"}, {"RINGD_NODE": "x"}, {"A": 1}, {"A": "a\0b"}, "A=1"]),
    ),
    "cwd": (
        st.one_of(st.none(), TEXT.map(lambda t: "/" + t)),
        st.sampled_from(["relative", "", "/a\0b", 5]),
    ),
    "restart": (
        st.sampled_from(["permanent", "transient", "temporary"]),
        st.one_of(
            st.sampled_from(["never", "Permanent", 1]),
            TEXT.filter(lambda t: t not in ("permanent", "transient", "temporary")),
        ),
    ),
    "group": (st.one_of(st.none(), NAME), st.sampled_from(["bad group", "", "-g", 7])),
    "max_restarts": (
        st.integers(0, 10_000),
        st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=10_001),
            st.sampled_from(["3", 1.5, True]),
        ),
    ),
    "max_seconds": (
        st.one_of(st.integers(1, 86_400), st.floats(min_value=0.001, max_value=86_400)),
        st.one_of(
            st.floats(max_value=0),
            st.floats(min_value=86_400.5),
            st.sampled_from(["5", None, True]),
        ),
    ),
    "stop_signal": (SIGNALS, st.sampled_from(["SIGFOO", "999", "", 15, None])),
    "stop_timeout": (
        st.floats(min_value=0.001, max_value=3600),
        st.one_of(st.floats(max_value=0), st.floats(min_value=3600.5), st.just("x")),
    ),
    "replicas": (
        st.integers(1, 32),
        st.one_of(st.integers(max_value=0), st.integers(min_value=33), st.just("2")),
    ),
    "on": (
        st.dictionaries(LABEL, LABEL, max_size=3),
        st.sampled_from([{"zone": "eu west"}, {"": "x"}, {"zone": 1}, ["zone"]]),
    ),
    "handoff": (st.booleans(), st.sampled_from(["yes", 1, None])),
    "min_ready": (
        st.floats(min_value=0, max_value=3600),
        st.one_of(st.floats(max_value=-0.001), st.floats(min_value=3600.5), st.just("1")),
    ),
    "check": (
        st.one_of(st.none(), st.lists(TEXT, max_size=2).map(lambda rest: ["true", *rest])),
        st.sampled_from([[], [""], ["x", "a\0b"], "curl -f x", [1]]),
    ),
    "check_interval": (
        st.floats(min_value=0.1, max_value=86_400),
        st.one_of(st.floats(max_value=0.099), st.floats(min_value=86_400.5), st.just(None)),
    ),
    "check_timeout": (
        st.floats(min_value=0.001, max_value=3600),
        st.one_of(st.floats(max_value=0), st.floats(min_value=3600.5), st.just("5")),
    ),
    "check_failures": (
        st.integers(1, 100),
        st.one_of(st.integers(max_value=0), st.integers(min_value=101), st.just(2.5)),
    ),
}
REQUIRED = {"id", "argv"}
UNKNOWN = "(an unknown key)"


@st.composite
def spec_like(
    draw: st.DrawFn, *, wrong: int = 0, only: str | None = None
) -> tuple[dict[str, Any], set[str]]:
    """A spec as a mapping, and the keys made wrong: ``only`` that one, or ``wrong``
    of them (2 means two or three), an unknown key or a missing required field
    among the choices."""
    bad: set[str] = set()
    if only:
        bad = {only}
    elif wrong:
        choices = st.sampled_from([*FIELDS, UNKNOWN])
        bad = {draw(choices)} if wrong == 1 else draw(st.sets(choices, min_size=2, max_size=3))
    data: dict[str, Any] = {}
    for field, (good_values, bad_values) in FIELDS.items():
        if field in bad:
            if field in REQUIRED and draw(st.booleans()):
                continue  # missing
            data[field] = draw(bad_values)
        elif field in REQUIRED or draw(st.booleans()):
            data[field] = draw(good_values)
    if UNKNOWN in bad:
        bad.discard(UNKNOWN)
        # Not a backtick: see test_an_unknown_key_with_a_backtick_is_named.
        key = draw(
            st.text(min_size=1, max_size=8).filter(lambda k: k not in FIELDS and "`" not in k)
        )
        data[key] = draw(JUNK)
        bad.add(key)
    keys = list(data)
    order = draw(st.permutations(keys))  # msgspec and problems() see fields in any order
    return {k: data[k] for k in order}, bad


def field_root(field: str) -> str:
    """``env.1A`` -> ``env``, ``argv[1]`` -> ``argv``, ``on (a value)`` -> ``on`` (JSON
    text does not name a table's entry)."""
    return re.split(r"[.\[ ]", field, maxsplit=1)[0]


def parse_both_ways(data: dict[str, Any]) -> str:
    """``parse_child`` of the mapping and of its JSON text (when JSON can carry it):
    the same answer, "valid" or the field an InvalidSpec names."""
    try:
        texts = [json.dumps(data, allow_nan=False)]
    except ValueError:  # inf or nan: no JSON text carries them
        texts = []
    answers = []
    for given_as in (data, *texts):
        try:
            spec = parse_child(given_as)
        except InvalidSpec as exc:
            assert exc.field and str(exc).startswith(f"{exc.field}: ")
            answers.append(exc.field)
        else:
            assert parse_child(json.loads(encode(spec))) == spec, "stored and read back"
            answers.append("valid")
    # The field named may differ (a mapping names a table's entry), validity not.
    assert len({answer == "valid" for answer in answers}) == 1, (answers, data)
    return answers[0]


def test_arbitrary_input_is_rejected_cleanly_or_valid() -> None:
    """Whatever arrives, the result is a valid spec or an InvalidSpec naming a field
    that was wrong, never another error; a spec with every field right is valid and
    keeps what it was given. Spec-shaped input (all right, or two or three fields
    wrong) and arbitrary mappings, as a mapping and as JSON text: both branches must
    run, often (an earlier version produced 0 valid specs in 500 examples)."""
    outcomes: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.one_of(
            spec_like(),
            spec_like(wrong=2),
            st.dictionaries(st.text(max_size=10), JUNK).map(lambda d: (d, None)),
        )
    )
    def check(case: tuple[dict[str, Any], set[str] | None]) -> None:
        data, bad = case
        answer = parse_both_ways(data)
        if bad is not None and answer == "valid":
            assert not bad, f"wrong {bad} accepted: {data!r}"
            spec = parse_child(data)
            assert {k: getattr(spec, k) for k in data} == data, "what it was given"
        elif bad is not None:
            assert answer in bad or field_root(answer) in bad, (answer, bad, data)
        outcome = "valid" if answer == "valid" else "invalid"
        event(f"{outcome} ({'junk' if bad is None else 'wrong' if bad else 'right'})")
        outcomes[outcome] += 1

    check()
    print(f"\nparse_child outcomes: {dict(outcomes)}")
    total = sum(outcomes.values())
    assert outcomes["valid"] >= total // 5 and outcomes["invalid"] >= total // 5, outcomes


@pytest.mark.parametrize("field", [*FIELDS, UNKNOWN])
def test_a_spec_wrong_in_one_field_is_refused_naming_it(field: str) -> None:
    """Each field alone wrong (by type, range, pattern or rule; a required one also
    missing), the others right or absent: refused, naming that field."""

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(spec_like(only=field))
    def check(case: tuple[dict[str, Any], set[str]]) -> None:
        data, bad = case
        answer = parse_both_ways(data)
        assert answer != "valid", f"{field} wrong, accepted: {data!r}"
        assert answer in bad or field_root(answer) in bad, (answer, data)

    check()


@pytest.mark.xfail(
    strict=True,
    reason="BUG: ringd.validation.describe reads the key out of msgspec's message "
    "(unknown field `KEY`) with a pattern that stops at a backtick, so from JSON text "
    "an unknown key holding one is reported as field 'spec' (a mapping names it)",
)
def test_an_unknown_key_with_a_backtick_is_named() -> None:
    data = {"id": "a", "argv": ["x"], "a`b": 1}
    for given_as in (data, json.dumps(data)):
        with pytest.raises(InvalidSpec) as info:
            parse_child(given_as)
        assert info.value.field == "a`b"


@pytest.mark.parametrize("name", ["-leading", "--", ".hidden", "_x", ""])
def test_an_id_starts_with_a_letter_or_digit(name: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_child({"id": name, "argv": ["sleep", "1"]})
    assert exc.value.field == "id"


@pytest.mark.parametrize("name", ["a", "9", "web-1", "a.b_c-d", "x" * 128])
def test_ids_that_are_fine(name: str) -> None:
    assert parse_child({"id": name, "argv": ["sleep", "1"]}).id == name
