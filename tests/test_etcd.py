"""The etcd facade's reads against a real etcd."""

from __future__ import annotations

import secrets

import pytest

from ringd.etcd import Etcd


@pytest.fixture
async def etcd(etcd_url: str):
    client = Etcd([etcd_url])
    yield client
    client.close()


async def test_count_counts_the_keys_under_a_prefix_without_reading_them(etcd: Etcd) -> None:
    p = f"/ringd-test/count-{secrets.token_hex(4)}/"
    assert await etcd.count(p) == 0
    for at in range(0, 150, etcd.txn_ops):  # more than one transaction's worth
        await etcd.create_many(
            [(f"{p}claims/c{i:03d}", b"x") for i in range(at, min(150, at + 64))]
        )
    await etcd.put(p + "clai", b"not under claims/")
    await etcd.put(p.rstrip("/") + "-other/claims/c000", b"another prefix")
    assert await etcd.count(p + "claims/") == 150
    assert await etcd.count(p) == 151
    lease, _ = await etcd.grant(5)
    await etcd.put(f"{p}claims/leased", b"x", lease=lease)
    assert await etcd.count(p + "claims/") == 151
    await etcd.revoke(lease)  # its key goes with it
    await etcd.delete(f"{p}claims/c000")
    assert await etcd.count(p + "claims/") == 149
    revision, kvs = await etcd.list(p + "claims/")
    assert len(kvs) == 149 and revision > 0  # what count says, list reads


async def test_a_page_over_the_reply_limit_is_read_again_in_halves(
    etcd_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page whose reply is over ``MAX_REPLY`` (gRPC refuses it: RESOURCE_EXHAUSTED)
    is read again in halves, and every key still comes, once, in order."""
    monkeypatch.setattr("ringd.etcd.MAX_REPLY", 64 * 1024)  # before the client is made
    etcd = Etcd([etcd_url])
    try:
        p = f"/ringd-test/halves-{secrets.token_hex(4)}/"
        for at in range(0, 120, 40):
            await etcd.create_many([(f"{p}k{i:03d}", b"x" * 2048) for i in range(at, at + 40)])
        sizes = [len(kvs) async for _, kvs in etcd.pages(p, page=100)]
        assert sizes[0] < 32 and sum(sizes) == 120, sizes  # 100 x 2 KiB did not fit
        revision, kvs = await etcd.list(p, page=100)
        assert [kv.key for kv in kvs] == [f"{p}k{i:03d}" for i in range(120)]
    finally:
        etcd.close()
