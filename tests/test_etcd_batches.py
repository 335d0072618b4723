"""Multi-key transactions of the etcd facade, against a real etcd: claims made,
published and released many at a time, start-child creates that share one
transaction when they come together; and handoff state stored in etcd."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest
import trio

from ringd.etcd import Etcd
from ringd.handoff import Handoff
from ringd.keys import Keys

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
async def etcd(etcd_url: str):
    client = Etcd([etcd_url])
    yield client
    client.close()


def prefix() -> str:
    return f"/ringd-test/batch-{secrets.token_hex(4)}/"


async def test_create_many_creates_what_is_absent_and_reports_what_exists(etcd: Etcd) -> None:
    p = prefix()
    _, theirs = await etcd.create(p + "b", b"theirs")
    kvs = await etcd.create_many([(p + "a", b"1"), (p + "b", b"2"), (p + "c", b"3")])
    assert kvs[p + "b"] == theirs  # not overwritten, reported as it is
    assert (kvs[p + "a"].value, kvs[p + "c"].value) == (b"1", b"3")
    # Created together: one create revision (a fence is per key, so that is fine).
    assert kvs[p + "a"].create_revision == kvs[p + "c"].create_revision > theirs.create_revision
    assert (await etcd.get(p + "a")) == kvs[p + "a"]


async def test_put_many_if_writes_only_incarnations_still_current(etcd: Etcd) -> None:
    p = prefix()
    kvs = await etcd.create_many([(p + k, b"old") for k in "xyz"])
    await etcd.delete(p + "y")
    _, y2 = await etcd.create(p + "y", b"new incarnation")
    items = [(p + k, b"updated", kvs[p + k].create_revision) for k in "xyz"]
    assert sorted(await etcd.put_many_if(items)) == [p + "x", p + "z"]
    assert (await etcd.get(p + "y")).value == b"new incarnation"
    assert (await etcd.get(p + "x")).value == b"updated"
    await etcd.delete_many_if([(p + k, kvs[p + k].create_revision) for k in "xyz"])
    assert await etcd.get(p + "x") is None and await etcd.get(p + "z") is None
    assert await etcd.get(p + "y") == y2  # another incarnation: kept


async def test_concurrent_creates_share_transactions_and_each_gets_its_answer(
    etcd: Etcd,
) -> None:
    p = prefix()
    _, taken = await etcd.create(p + "taken", b"first")
    results: dict[str, bytes] = {}

    async def create(name: str, value: bytes) -> None:
        results[name] = (await etcd.create_coalesced(p + name, value)).value

    async with trio.open_nursery() as nursery:
        for i in range(150):  # more than one transaction's worth
            nursery.start_soon(create, f"k{i}", f"v{i}".encode())
        nursery.start_soon(create, "taken", b"second")
    assert results.pop("taken") == b"first"
    assert results == {f"k{i}": f"v{i}".encode() for i in range(150)}
    revisions = {(await etcd.get(p + f"k{i}")).create_revision for i in range(150)}
    assert 3 <= len(revisions) < 150, "creates made together share transactions"


async def test_put_and_delete_is_one_revision(etcd: Etcd) -> None:
    """A graceful leave marks its status row offline and deletes its alive key in one
    transaction: no watcher sees one without the other."""
    p = prefix()
    await etcd.put(p + "alive", b"1")
    before, _ = await etcd.list(p)
    await etcd.put_and_delete((p + "status", b"offline"), p + "alive")
    after, kvs = await etcd.list(p)
    assert [(kv.key, kv.value) for kv in kvs] == [(p + "status", b"offline")]
    assert after == before + 1 == kvs[0].mod_revision


async def test_unreadable_handoff_state_is_skipped_not_raised(
    etcd: Etcd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A child that made its handoff file a directory (or unreadable) loses its state;
    the move, or the graceful leave storing it, goes on (it raised and cut the leave
    short: children SIGKILLed, claims left to the lease)."""
    keys = Keys(prefix())
    handoff = Handoff(etcd=etcd, keys=keys, directory=tmp_path)
    handoff.path("c1").mkdir(parents=True)
    await handoff.store("c1")
    assert await etcd.get(keys.handoff("c1")) is None
    assert "handoff state of c1 cannot be read" in caplog.text


async def test_a_list_is_read_in_pages_at_the_revision_of_the_first(
    etcd: Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No reply is sized by the cluster: pages of ``page`` keys, each read at the first
    page's revision, so that writes made between two pages are not half seen."""
    p = prefix()
    for start in range(0, 50, 10):
        await etcd.create_many([(f"{p}k{i:03d}", b"v") for i in range(start, start + 10)])
    pages: list[int] = []
    real_call = etcd._call

    async def call_and_write(name: str, fn):  # type: ignore[no-untyped-def]
        result = await real_call(name, fn)
        if name == "list":
            pages.append(len(result[1].kvs))
            if len(pages) == 1:  # between the first page and the next
                await real_call("put", lambda c: c.put(f"{p}k000", b"changed"))
                await real_call("put", lambda c: c.put(f"{p}k999", b"new"))
        return result

    monkeypatch.setattr(etcd, "_call", call_and_write)
    revision, kvs = await etcd.list(p, page=7)
    assert pages == [7, 7, 7, 7, 7, 7, 7, 1], pages
    assert [kv.key for kv in kvs] == [f"{p}k{i:03d}" for i in range(50)], "sorted, no gap"
    assert all(kv.value == b"v" for kv in kvs) and revision == kvs[0].mod_revision + 4
