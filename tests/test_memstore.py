"""The in-memory store behaves as etcd does for what ringd relies on (revisions,
leases on trio's clock, watches from a revision, outages), and the view runs on it."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from ringd.errors import EtcdUnavailable, WatchBroken
from ringd.keys import Keys
from ringd.memstore import MemoryEtcd
from ringd.records import Claim, encode
from ringd.view import ClusterView

KEYS = Keys("/ringd/t/")


async def test_revisions_and_conditional_writes() -> None:
    etcd = MemoryEtcd()
    created = await etcd.create_many([("a", b"1"), ("b", b"2")])
    assert created["a"].create_revision == created["b"].create_revision, "one transaction"
    again = await etcd.create_many([("a", b"x"), ("c", b"3")])
    assert again["a"].value == b"1" and again["c"].create_revision > created["a"].create_revision
    assert not await etcd.delete_if("a", create_revision=created["a"].create_revision + 99)
    assert await etcd.delete_if("a", create_revision=created["a"].create_revision)
    assert await etcd.put_many_if([("b", b"y", created["b"].create_revision), ("a", b"z", 5)]) == [
        "b"
    ]
    assert (await etcd.get("b")).value == b"y"  # type: ignore[union-attr]
    assert await etcd.get("a") is None
    b = await etcd.get("b")
    assert b is not None
    assert not await etcd.put_if("b", b"w", mod_revision=b.mod_revision - 1)
    assert await etcd.put_if("b", b"w", mod_revision=b.mod_revision)


async def test_count_counts_the_keys_under_a_prefix() -> None:
    etcd = MemoryEtcd()
    assert await etcd.count(KEYS.prefix) == 0
    await etcd.create_many([(KEYS.claim(f"c{i}"), b"x") for i in range(5)])
    await etcd.put(KEYS.child("c0"), b"{}")
    await etcd.put("/ringd/t2/claims/c0", b"another cluster")
    assert await etcd.count(KEYS.prefix + "claims/") == 5
    assert await etcd.count(KEYS.prefix) == 6
    lease, _ = await etcd.grant(5)
    await etcd.put(KEYS.claim("leased"), b"x", lease=lease)
    await etcd.revoke(lease)
    await etcd.delete(KEYS.claim("c0"))
    assert await etcd.count(KEYS.prefix + "claims/") == 4
    assert etcd.calls["count"] == 4
    etcd.fail()
    with pytest.raises(EtcdUnavailable):
        await etcd.count(KEYS.prefix)


async def test_leases_expire_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    etcd = MemoryEtcd()
    lease, ttl = await etcd.grant(2)
    assert ttl == 2
    await etcd.put("k", b"v", lease=lease)
    await trio.sleep(1.5)
    assert await etcd.keepalive(lease) == 2
    await trio.sleep(1.5)
    assert await etcd.get("k") is not None, "kept alive"
    await trio.sleep(0.6)
    assert await etcd.get("k") is None, "expired without a keepalive"
    assert await etcd.keepalive(lease) == 0
    with pytest.raises(EtcdUnavailable, match="lease not found"):
        await etcd.put("k", b"v", lease=lease)


async def test_the_view_follows_the_store_and_resumes_after_an_outage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    etcd = MemoryEtcd()
    view = ClusterView(etcd, KEYS, max_backoff=0.2)
    lease, _ = await etcd.grant(3)
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        await etcd.put(KEYS.claim("web"), encode(Claim(node="n1", state="running")), lease=lease)
        await trio.sleep(0.01)
        claim = view.claim("web")
        assert claim is not None and claim.value.node == "n1" and claim.kv.lease == lease
        etcd.fail()
        await trio.sleep(0.5)
        etcd.recover()
        await etcd.put(KEYS.claim("db"), b"not json")  # a third party's garbage: skipped
        await trio.sleep(1)
        assert list(view.claims()) == ["web"]
        assert view.count("claims") == 2
        etcd.compact()  # the view's next watch must re-list
        etcd.fail()
        await trio.sleep(0.1)
        etcd.recover()
        await trio.sleep(5)  # the lease expires: its claim goes
        assert view.claims() == {}
        nursery.cancel_scope.cancel()


async def test_a_watch_breaks_when_the_store_goes_down() -> None:
    etcd = MemoryEtcd()

    async def ignore(events: object, revision: int) -> None:
        pass

    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with pytest.raises(WatchBroken):
                await etcd.watch("/", 1, ignore)

        nursery.start_soon(watch)
        await trio.testing.wait_all_tasks_blocked()  # the watch is waiting for changes
        etcd.fail()
    etcd.compact()
    etcd.recover()
    with pytest.raises(WatchBroken) as broken:
        await etcd.watch("/", 1, ignore)
    assert broken.value.compacted


async def test_a_quiet_watch_is_resumed_not_re_listed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """etcd load proportional to what changes: after the first list, the view never
    reads the whole prefix again unless a resume is impossible (compaction)."""
    etcd = MemoryEtcd()
    view = ClusterView(etcd, KEYS, resync_interval=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        await trio.sleep(35)  # three quiet periods
        await etcd.put(KEYS.claim("web"), encode(Claim(node="n1")))
        await trio.sleep(1)
        assert view.claim("web") is not None
        assert etcd.calls["list"] == 1, "listed once, at the start"
        assert etcd.calls["watch"] == 4, "opened again after each quiet period"
        etcd.fail()  # the watch breaks ...
        await trio.sleep(0.01)
        etcd.recover()
        await etcd.put(KEYS.claim("db"), encode(Claim(node="n1")))
        etcd.compact()  # ... and the revision it would resume from is gone
        await trio.sleep(2)
        assert view.claim("db") is not None
        assert etcd.calls["list"] == 2, "re-listed: nothing else could catch up"
        nursery.cancel_scope.cancel()
