"""What etcd does, seen from outside ringd, for ``bench.failover``: every event
under a prefix stamped on receipt, and the lease-expiry floor (the least a
failover can take)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from typing import Any

from ringd import etcdpb  # noqa: F401 - before etcd3 (see ringd.etcdpb)

# isort: split
import etcd3
import grpc
from etcd3 import etcdrpc

from ringd.testing import wait_until


class Watcher:
    """Every event under a prefix, stamped with time.monotonic() on receipt."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.events: list[tuple[float, str, str, bool, bytes]] = []  # t, kind, key, created, value
        self._lock = threading.Lock()
        self._stop = threading.Event()
        start = prefix.encode()
        end = etcd3.utils.increment_last_byte(start)

        def requests() -> Any:
            create = etcdrpc.WatchCreateRequest(key=start, range_end=end)
            yield etcdrpc.WatchRequest(create_request=create)
            self._stop.wait()

        self._call = etcdrpc.WatchStub(client.channel).Watch(requests())
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _pump(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self._call:
                now = time.monotonic()
                self._ready.set()
                with self._lock:
                    for e in response.events:
                        kind = "delete" if e.type == e.DELETE else "put"
                        created = e.kv.create_revision == e.kv.mod_revision
                        self.events.append((now, kind, e.kv.key.decode(), created, e.kv.value))

    def since(self, t: float) -> list[tuple[float, str, str, bool, bytes]]:
        with self._lock:
            return [e for e in self.events if e[0] >= t]

    def after(self, cursor: int) -> tuple[list[tuple[float, str, str, bool, bytes]], int]:
        """The events from index ``cursor`` on, and the cursor for the next call."""
        with self._lock:
            return self.events[cursor:], len(self.events)

    def close(self) -> None:
        self._stop.set()
        self._call.cancel()
        self._thread.join(5)


def etcd_floor(client: Any, watcher: Watcher, prefix: str, ttl: int) -> float:
    """Last keepalive (sent) -> DELETE of a key under a plain lease, at a watcher."""
    lease = client.lease(ttl)
    key = f"{prefix}{uuid.uuid4().hex}"
    client.put(key, b"x", lease=lease)
    time.sleep(random.uniform(0, 0.5))
    sent = time.monotonic()
    for _ in client.refresh_lease(lease.id):
        break
    seen = wait_until(
        lambda: next((e[0] for e in watcher.since(sent) if e[1:3] == ("delete", key)), None),
        ttl + 5,
        "lease expiry",
        interval=0.002,
    )
    return float(seen - sent)
