"""The chaos checker's claim rule (tests/timeline.py), on made-up reads: pure."""

from __future__ import annotations

from .timeline import claim_violations


def test_the_chaos_checker_flags_a_child_running_under_another_nodes_claim() -> None:
    before = {"a": ("n1", 10), "b": ("n2", 11), "c": ("n2", 12)}
    after = {"a": ("n1", 10), "b": ("n2", 11), "c": ("n3", 20)}
    live = {
        100: ("a", "n1"),  # its own claim: fine
        101: ("b", "n1"),  # n2 held b before and after: a violation
        102: ("c", "n2"),  # c moved between the reads: not provable, not flagged
        103: ("d", "n3"),  # no claim yet (just started after the read): not flagged
    }
    assert [(i, inst) for _, i, inst in claim_violations(1.0, before, after, live)] == [
        ("b", [(101, "n1"), (0, "claim of n2")])
    ]
