"""The etcd facade under faults, against a real etcd: what a failed call does to
the other users of the same client."""

from __future__ import annotations

import pytest
import trio

from ringd.errors import WatchBroken
from ringd.etcd import Etcd


async def test_watch_on_a_client_another_task_just_closed_is_a_broken_watch(
    etcd_url: str,
) -> None:
    """A failed call drops (closes) the shared client; a watch that took that client
    just before must end as WatchBroken, which the view handles, and not with
    grpc's ValueError("Cannot invoke RPC: Channel closed!"), which crashed the
    daemon during an etcd outage."""
    etcd = Etcd([etcd_url])
    try:
        client = await etcd._call(lambda c: c)
        client.close()  # what _drop_client does in another task, between the two steps

        async def on_events(events: object, revision: int) -> None:
            raise AssertionError("no events expected")

        with pytest.raises(WatchBroken), trio.fail_after(5):
            await etcd.watch("/ringd-test/closed/", 1, on_events)
    finally:
        etcd.close()


async def test_revoking_a_lease_that_is_gone_is_no_error_and_keeps_the_client(
    etcd_url: str,
) -> None:
    etcd = Etcd([etcd_url])
    try:
        lease, _ = await etcd.grant(2)
        await etcd.revoke(lease)
        client = etcd._client
        await etcd.revoke(lease)  # etcd answers NOT_FOUND: etcd is fine, so is the client
        assert etcd._client is client
    finally:
        etcd.close()
