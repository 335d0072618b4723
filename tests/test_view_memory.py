"""How the view holds child specs and claims (one small object per valid spec or
claim, the raw value kept only where it cannot be encoded back) and that readers see what they saw
before: values, identities, re-list without spurious changes. Pure, no etcd."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import trio

from ringd.etcd import KV
from ringd.keys import Keys
from ringd.records import Claim
from ringd.spec import ChildSpec, encode
from ringd.view import ClaimKV, ClusterView, SpecKV, same_kv

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEYS = Keys("/ringd/t/")


def view(etcd: Any = None) -> ClusterView:
    return ClusterView(etcd=etcd, keys=KEYS)


def spec_kv(name: str, revision: int, **fields: Any) -> KV:
    value = encode(ChildSpec(id=name, argv=["/bin/sleep", "9"], **fields))
    return KV(KEYS.child(name), value, revision, revision, 0)


def test_a_valid_spec_is_one_object_with_the_same_value_and_record() -> None:
    v = view()
    kv = spec_kv("a", 5, env={"X": "1"})
    v._put(kv)
    held = v.stored_specs()["a"]
    assert isinstance(held, SpecKV)
    assert held.value == kv.value  # encoded back, byte for byte
    assert (held.key, held.create_revision, held.mod_revision, held.lease) == (kv.key, 5, 5, 0)
    assert same_kv(held, kv)
    stored = v.spec("a")
    assert stored is not None and stored.kv is held  # what the listing compares
    assert stored.value == ChildSpec(id="a", argv=["/bin/sleep", "9"], env={"X": "1"})
    assert v.held(kv.key) is held and v.get("children", "a") is held
    assert not v._records  # no second copy


def test_repeated_values_are_shared_between_specs() -> None:
    v = view()
    v._put(spec_kv("a", 1))
    v._put(spec_kv("b", 2))
    a, b = v.spec("a"), v.spec("b")
    assert a is not None and b is not None
    assert a.value.argv[0] is b.value.argv[0]
    assert a.value.on is b.value.on and a.value.env is b.value.env
    assert a.value.max_seconds is b.value.max_seconds
    # The key is not held: made from the spec's id after one shared prefix.
    assert a.kv.key == KEYS.child("a") and b.kv.key == KEYS.child("b")
    assert a.kv._prefix is b.kv._prefix  # type: ignore[attr-defined]


def test_invalid_and_non_canonical_specs_keep_their_raw_value() -> None:
    v = view()
    bad = KV(KEYS.child("bad"), b'{"id": "bad"}', 1, 1, 0)  # no argv
    loose = KV(KEYS.child("loose"), b'{"id": "loose", "argv": ["/bin/true"]}', 2, 2, 0)
    v._put(bad)
    v._put(loose)
    assert v.stored_specs()["bad"] is bad and v.spec("bad") is None
    assert v.stored_specs()["loose"] is loose  # could not be encoded back as stored
    stored = v.spec("loose")
    assert stored is not None and stored.kv is loose and stored.value.argv == ["/bin/true"]
    # A valid spec replacing an invalid one drops the invalid one's cached record.
    v._put(spec_kv("bad", 3))
    assert isinstance(v.stored_specs()["bad"], SpecKV) and KEYS.child("bad") not in v._records


def test_a_changed_spec_is_a_new_object() -> None:
    v = view()
    v._put(spec_kv("a", 1))
    first = v.stored_specs()["a"]
    changed = spec_kv("a", 1, replicas=2)
    v._put(KV(changed.key, changed.value, 1, 7, 0))
    held = v.stored_specs()["a"]
    assert held is not first and held.mod_revision == 7 and held.create_revision == 1
    stored = v.spec("a")
    assert stored is not None and stored.value.replicas == 2


class ListOnly:
    def __init__(self, kvs: list[KV]) -> None:
        self.kvs = kvs

    async def pages(self, prefix: str) -> AsyncIterator[tuple[int, list[KV]]]:
        for kv in self.kvs:  # a page of one key each
            yield 10, [kv]


def test_a_relist_of_the_same_specs_changes_nothing() -> None:
    kvs = [spec_kv("a", 1), KV(KEYS.child("bad"), b"{", 2, 2, 0)]
    v = view(ListOnly(kvs))

    async def main() -> list[str]:
        await v._relist()
        held = dict(v.stored_specs())
        with v.subscribe() as changes:
            await v._relist()
            assert dict(v.stored_specs()) == held
            assert all(v.stored_specs()[k] is held[k] for k in held)
            got = []
            while True:
                try:
                    got.append(changes.receive_nowait().kv.key)
                except trio.WouldBlock:
                    return got

    assert trio.run(main) == []


def test_equal_label_sets_are_shared_in_their_own_order() -> None:
    """``on`` dicts equal in items and order are one dict; another order is another
    dict, so that each spec still encodes as it was stored."""
    v = view()
    for revision, (child_id, on) in enumerate(
        [
            ("a", {"zone": "z1", "disk": "ssd"}),
            ("b", {"zone": "z1", "disk": "ssd"}),
            ("c", {"disk": "ssd", "zone": "z1"}),
        ],
        start=1,
    ):
        spec = ChildSpec(id=child_id, argv=["sleep", "1"], on=on)
        v._put(KV(KEYS.child(child_id), encode(spec), revision, revision, 0))
    a, b, c = (v.spec(i) for i in "abc")
    assert a is not None and b is not None and c is not None
    assert a.value.on is b.value.on and a.value.on is not c.value.on
    for stored in (a, b, c):
        assert stored.kv.value == encode(stored.value)
    assert list(c.value.on) == ["disk", "zone"]


def test_each_key_is_held_once_whatever_its_kind_and_a_relist_drops_the_gone() -> None:
    """A known key lives in its kind's index only (no second map of every key); one
    of no known kind is held apart; a re-list without them deletes both, once."""
    odd = KV(KEYS.prefix + "weird/x/y/z", b"?", 3, 3, 0)
    claim = KV(KEYS.claim("a"), b'{"node":"n1"}', 2, 2, 0)
    v = view(ListOnly([spec_kv("a", 1), claim, odd]))

    async def main() -> list[tuple[str, str]]:
        await v._relist()
        assert v.held(odd.key) is odd and same_kv(v.held(claim.key), claim)
        held = v.held(claim.key)  # a claim's key text is made when read
        assert isinstance(held, ClaimKV) and held.key == claim.key
        spec = v.stored_specs()["a"]  # listed in the same page, before its claim
        assert isinstance(spec, SpecKV) and held._name is spec.spec.id
        assert sorted(v._keys()) == sorted([KEYS.child("a"), claim.key, odd.key])
        assert not hasattr(v, "kvs")
        v.etcd = ListOnly([spec_kv("a", 1)])
        with v.subscribe() as changes:
            await v._relist()
            got = []
            while True:
                try:
                    change = changes.receive_nowait()
                except trio.WouldBlock:
                    return got
                got.append((change.kind, change.kv.key))

    assert sorted(trio.run(main)) == sorted([("delete", claim.key), ("delete", odd.key)])
    assert v.held(odd.key) is None and v.held(claim.key) is None and v.claims() == {}


def claim_kv(name: str, created: int, **fields: Any) -> KV:
    value = encode(Claim(node="n1", **fields))  # decoded, its strings are new ones
    lease = int("7587890000000000042")  # a new int object for each claim, as decoded
    return KV(KEYS.claim(name), value, created, created, lease)


def test_a_valid_claim_is_one_object_sharing_what_it_repeats() -> None:
    """Every daemon holds every claim: decoded once, no raw value and no cached
    record, its names and revisions the objects the view holds anyway."""
    v = view()
    v._put(spec_kv("web", 3))
    v._put(claim_kv("web", 8, state="running", id="web", instance="web", fence=8, revision=3))
    v._put(claim_kv("web/1", 9, state="running", id="web", instance="web/1", role="replica"))
    spec = v.stored_specs()["web"]
    for name, created in (("web", 8), ("web/1", 9)):
        held = v.held(KEYS.claim(name))
        assert isinstance(held, ClaimKV) and v.get("claims", name) is held
        assert (held.key, held.create_revision, held.mod_revision, held.lease) == (
            KEYS.claim(name),
            created,
            created,
            7587890000000000042,
        )
        stored = v.claim(name)
        assert stored is not None and stored.kv is held and stored.value is held.claim
        assert held.value == encode(stored.value)  # byte for byte as stored
        assert stored.value.node is sys.intern("n1") and stored.value.state is sys.intern("running")
        assert stored.value.instance is held._name and stored.value.id == "web"
    web = v.held(KEYS.claim("web"))
    assert isinstance(web, ClaimKV) and isinstance(spec, SpecKV)
    assert web.claim.id is spec.spec.id and web._name is spec.spec.id  # one string
    assert web.claim.fence is web.create_revision and web.claim.revision is spec.mod_revision
    other = v.held(KEYS.claim("web/1"))
    assert other is not None and other.lease is web.lease  # one int per lease
    assert not v._records


def test_invalid_and_non_canonical_claims_keep_their_raw_value() -> None:
    v = view()
    bad = KV(KEYS.claim("bad"), b'{"state": "running"}', 1, 1, 7)  # no node
    loose = KV(KEYS.claim("loose"), b'{"node": "n2"}', 2, 2, 7)
    v._put(bad)
    v._put(loose)
    assert not isinstance(v.held(bad.key), ClaimKV) and v.claim("bad") is None
    held = v.held(loose.key)
    assert not isinstance(held, ClaimKV) and held is not None and held.value == loose.value
    stored = v.claim("loose")
    assert stored is not None and stored.value.node == "n2"
    # A valid claim replacing an invalid one drops the invalid one's cached record.
    v._put(claim_kv("bad", 3))
    assert isinstance(v.held(bad.key), ClaimKV) and bad.key not in v._records


def test_a_first_list_holds_each_key_as_its_page_comes_and_says_so_once() -> None:
    """An empty view (a daemon starting) holds each key as its page arrives, with
    no map of every key until the end; subscribers hear one put per key, and the
    kinds end in create-revision order as after any list."""
    claim = KV(KEYS.claim("b"), b'{"node":"n1"}', 1, 1, 9)  # created before its spec
    kvs = [spec_kv("b", 3), spec_kv("a", 2), claim, KV(KEYS.child("bad"), b"{", 4, 4, 0)]
    v = view(ListOnly(sorted(kvs, key=lambda kv: kv.key)))

    async def main() -> list[tuple[str, str, bool]]:
        with v.subscribe() as changes:
            await v._relist()
            got = []
            while True:
                try:
                    change = changes.receive_nowait()
                except trio.WouldBlock:
                    return got
                got.append((change.kind, change.kv.key, change.previous is None))

    heard = trio.run(main)
    assert sorted(heard) == sorted(("put", kv.key, True) for kv in kvs)
    assert list(v.stored_specs()) == ["a", "b", "bad"]  # create-revision order
    held = v.held(claim.key)
    assert isinstance(held, ClaimKV) and held._name is v.stored_specs()["b"].spec.id  # type: ignore[attr-defined]
