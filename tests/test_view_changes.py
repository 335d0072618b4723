"""The view's per-kind order and change log (the bookkeeping that lets readers of
thousands of keys work per change): pure, no etcd involved."""

from __future__ import annotations

from typing import Any

from ringd.etcd import KV
from ringd.keys import Keys
from ringd.view import ClusterView

KEYS = Keys("/ringd/t/")


def view() -> ClusterView:
    return ClusterView(etcd=Any, keys=KEYS)  # type: ignore[arg-type] - never called here


def put(v: ClusterView, name: str, create: int, mod: int | None = None) -> None:
    v._put(KV(KEYS.child(name), b"{}", create, mod or create, 0))


def test_changes_since_a_cursor_and_starting_over() -> None:
    v = view()
    names, cursor = v.changes("children", None)
    assert names is None  # first call: read everything
    put(v, "a", 1)
    put(v, "b", 2)
    names, cursor = v.changes("children", cursor)
    assert names == ["a", "b"]
    put(v, "a", 1, mod=3)
    v._delete(KEYS.child("b"))
    names, cursor = v.changes("children", cursor)
    assert names == ["a", "b"]
    assert v.changes("children", cursor)[0] == []
    v._new_epoch()  # what a re-list does
    assert v.changes("children", cursor)[0] is None


def test_kinds_keep_create_revision_order() -> None:
    v = view()
    for name, rev in (("b", 1), ("a", 2), ("c", 3)):
        put(v, name, rev)
    put(v, "b", 1, mod=4)  # changed in place: keeps its place
    assert list(v.by_kind("children")) == ["b", "a", "c"]
    v._delete(KEYS.child("b"))
    put(v, "b", 5)  # a new incarnation goes last
    assert list(v.by_kind("children")) == ["a", "c", "b"]
    assert v.get("children", "b").create_revision == 5 and v.count("children") == 3


def test_a_reader_far_behind_starts_over() -> None:
    v = view()
    _, cursor = v.changes("children", None)
    for i in range(10_001):
        put(v, "hot", 1, mod=i + 1)
    assert v.changes("children", cursor)[0] is None
    assert len(v._log.get(("children", ""), [])) <= 10_000
