"""The one place that talks to etcd.

The ``etcd3`` client (0.12) is synchronous and gRPC-based: every call runs in a
worker thread with a deadline, and its errors are translated here into
``EtcdUnavailable`` / ``WatchBroken``. Two of its traps are handled here:

* its watch thread drops every callback when the stream fails and never
  re-watches (and then spins re-opening the stream): we run the Watch stream
  ourselves, end it cleanly, and the caller re-lists and re-watches;
* it talks to one endpoint: on a connection failure we move to the next one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

# gRPC's core logs every failed TLS handshake to stderr at INFO, in a format of its
# own, several times per attempt; describe() below logs the reason once per attempt
# instead. It reads GRPC_VERBOSITY when grpc is first imported, which is here (the
# daemon imports this module lazily); an operator's own setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from . import etcdpb  # noqa: F401 - builds etcd3's messages, so it comes first

# isort: split
import etcd3
import etcd3.exceptions
import etcd3.transactions
import etcd3.utils
import grpc
import trio
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from . import metrics
from .errors import ConfigError, EtcdUnavailable, WatchBroken

if TYPE_CHECKING:
    import builtins  # "list" is also a method of Etcd: its annotations need the type
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Keys a list reads per request. etcd counts every key left in the range for each
# limited Range (etcd-io/etcd#11057, #16510), so a list costs etcd O(keys^2 / PAGE):
# 200,000 keys took etcd 25.6 s of CPU in pages of 1,000 and 2.7 s in pages of
# 10,000 (about 3 MiB of specs a page).
PAGE = 10_000
# The largest reply accepted (gRPC's default is 4 MiB); a bigger page is halved.
MAX_REPLY = 64 * 2**20


@dataclass(eq=False, slots=True)
class _Create:
    """One create waiting for a shared transaction (``Etcd.create_coalesced``)."""

    key: str
    value: bytes
    done: trio.Event = field(default_factory=trio.Event)
    kv: KV | None = None
    error: EtcdUnavailable | None = None


@dataclass(frozen=True, slots=True)
class KV:
    """One key as etcd stores it. ``create_revision`` is the key's fencing token."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """A change seen by a watch: ``kv.value`` is empty for a delete."""

    kind: str  # "put" | "delete"
    kv: KV


@dataclass(frozen=True, slots=True)
class TLS:
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None


def _kv(raw: Any) -> KV:
    return KV(
        key=raw.key.decode(),
        value=raw.value,
        create_revision=raw.create_revision,
        mod_revision=raw.mod_revision,
        lease=raw.lease,
    )


# "... Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL:
# error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get
# local issuer certificate: OK" -> ("CERTIFICATE_VERIFY_FAILED", "unable to get ...")
_SSL_REASON = re.compile(r"OPENSSL_internal:([A-Z0-9_]+)(?::\s*(.*))?$")
_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "is etcd_ca_cert the CA that signed etcd's certificate?",
    "SSLV3_ALERT_BAD_CERTIFICATE": (
        "etcd rejected the client certificate: set etcd_cert and etcd_key to one signed "
        "by a CA that etcd trusts (--trusted-ca-file)"
    ),
    "TLSV1_ALERT_UNKNOWN_CA": "etcd does not trust the CA of etcd_cert",
    "TLSV1_ALERT_CERTIFICATE_REQUIRED": "etcd wants a client certificate (etcd_cert, etcd_key)",
    "WRONG_VERSION_NUMBER": "is this endpoint https? (etcd answered without TLS)",
}


# The channel itself is in doubt (or, for UNAUTHENTICATED, its auth token: only a
# new client authenticates again). Other answers (a lease not found, a full
# database, permission denied) come over a working channel: dropping it would
# also break the watch and the keepalives that share it.
_CHANNEL_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAUTHENTICATED,
}


def _connection_lost(exc: BaseException) -> bool:
    """Whether a failed call means the client must be built anew (next endpoint)."""
    if isinstance(exc, ValueError):
        return True  # the channel is closed
    rpc = exc if isinstance(exc, grpc.RpcError) else exc.__context__
    if not isinstance(rpc, grpc.RpcError) or not hasattr(rpc, "code"):
        return True  # etcd3's own connection errors, and anything unexplained
    return rpc.code() in _CHANNEL_CODES


def describe(exc: BaseException) -> str:
    """One line saying why an etcd call failed, with a hint when it is a setting.

    etcd3 turns gRPC errors into its own exceptions (``ConnectionFailedError``
    says only "etcd connection failed"), raised while handling the gRPC error:
    the gRPC status, with the TLS or auth reason, is in ``__context__``.
    """
    rpc = exc if isinstance(exc, grpc.RpcError) else exc.__context__
    if not isinstance(rpc, grpc.RpcError) or not hasattr(rpc, "code"):
        return type(exc).__name__ + (f": {exc}" if str(exc) else "")
    code = rpc.code()
    details = re.sub(r":\s*OK$", "", (rpc.details() or "").strip())
    if "handshake failed" in details.lower():
        hint = "check etcd_ca_cert, etcd_cert and etcd_key"
        match = _SSL_REASON.search(details)
        if match is None:
            return f"TLS handshake failed: {details} ({hint})"
        reason = match.group(1) + (f": {match.group(2)}" if match.group(2) else "")
        return f"TLS handshake failed: {reason} ({_HINTS.get(match.group(1), hint)})"
    details = details.removeprefix("etcdserver: ")
    if code == grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in details:
        return f"{details} (check etcd_user and etcd_password)"
    if "user name is empty" in details:
        return "etcd has auth enabled: set etcd_user and etcd_password"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"{details} (the etcd user needs read and write on the key prefix)"
    return f"{code.name}: {details}" if details else code.name


def _prefix_end(prefix: str) -> bytes:
    end: bytes = etcd3.utils.increment_last_byte(prefix.encode())
    return end


class Etcd:
    """An async facade over the etcd3 client for a list of endpoints.

    Args:
        endpoints: client URLs, tried in turn on connection failures.
        timeout: deadline of every call, in seconds.
    """

    # Keys per multi-key transaction: etcd refuses more than 128 operations in one
    # (its --max-txn-ops default).
    txn_ops = 64

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        tls: TLS | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigError("etcd: no endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.tls = tls or TLS()
        self._user = user
        self._password = password
        self._index = 0
        self._client: Any = None
        # Worker threads build the client: one at a time, or each would build its own
        # after a drop and all but one would leak their channel (never closed).
        self._client_lock = threading.Lock()
        # etcd calls run in threads of their own, never queued behind other thread
        # work of the daemon (a child's /proc sweep on stop, log tails): when 100
        # children moved at once, their sweeps filled trio's default 40 threads and
        # keepalives waited past the fence deadline. Keepalives have a lane of
        # their own too, so a burst of claim writes cannot delay them either.
        self._limiter = trio.CapacityLimiter(32)
        self._lease_limiter = trio.CapacityLimiter(2)
        self._creates: list[_Create] = []  # waiting for the transaction in flight
        self._creating = False
        for url in self.endpoints:
            if urlsplit(url).scheme == "https" and not self.tls.ca_cert:
                raise ConfigError(f"etcd: {url} is https but etcd_ca_cert is not set")
        # The etcd3 client reads these files when it connects, in a worker thread,
        # where a missing one was an uncaught FileNotFoundError: check them now.
        for name, path in (
            ("etcd_ca_cert", self.tls.ca_cert),
            ("etcd_cert", self.tls.cert),
            ("etcd_key", self.tls.key),
        ):
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from exc

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

    def _new_client(self) -> Any:
        url = urlsplit(self.endpoint)
        return etcd3.client(
            host=url.hostname or "127.0.0.1",
            port=url.port or 2379,
            ca_cert=self.tls.ca_cert if url.scheme == "https" else None,
            cert_key=self.tls.key if url.scheme == "https" else None,
            cert_cert=self.tls.cert if url.scheme == "https" else None,
            timeout=self.timeout,
            user=self._user,
            password=self._password,
            grpc_options=[("grpc.max_receive_message_length", MAX_REPLY)],
        )

    def _client_now(self) -> Any:
        # Runs in a worker thread. Built outside the lock: it may authenticate (a
        # round trip), and the trio thread takes the lock to drop a client.
        client = self._client
        if client is not None:
            return client
        built = self._new_client()
        with self._client_lock:
            if self._client is None:
                self._client = built
                return built
            client = self._client  # another thread was first: use its client
        built.close()
        return client

    def _drop_client(self, client: Any) -> None:
        """Forget ``client`` (None: building one failed) and try the next endpoint."""
        with self._client_lock:
            if self._client is not client:
                return
            self._client = None
            self._index = (self._index + 1) % len(self.endpoints)
        if client is None:
            return
        try:
            client.close()
        except Exception:  # closing a broken channel may raise; it is gone anyway
            logger.debug("closing etcd client", exc_info=True)

    async def _call(
        self, op: str, fn: Callable[[Any], T], *, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        try:
            return await self._call_once(fn, limiter=limiter)
        except EtcdUnavailable:
            metrics.ETCD_ERRORS.labels(op).inc()
            raise

    async def _call_once(
        self, fn: Callable[[Any], T], *, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        """Run ``fn(client)`` in a thread with a deadline; translate failures."""
        box: list[Any] = []

        def run() -> T:
            client = self._client_now()
            box.append(client)
            return fn(client)

        try:
            with trio.fail_after(self.timeout + 0.5):
                return await trio.to_thread.run_sync(
                    run, abandon_on_cancel=True, limiter=limiter or self._limiter
                )
        except trio.TooSlowError:
            endpoint = self.endpoint
            self._drop_client(box[0] if box else None)
            raise EtcdUnavailable(endpoint, "timed out") from None
        except (
            etcd3.exceptions.Etcd3Exception,
            grpc.RpcError,
            ValueError,  # "Cannot invoke RPC on closed channel!"
        ) as exc:
            endpoint = self.endpoint
            if _connection_lost(exc):
                self._drop_client(box[0] if box else None)
            raise EtcdUnavailable(endpoint, describe(exc)) from exc

    def close(self) -> None:
        self._drop_client(self._client)

    # -- keys ------------------------------------------------------------------------

    async def list(self, prefix: str, *, page: int = PAGE) -> tuple[int, builtins.list[KV]]:
        """Every key under ``prefix`` and the revision they were read at (see
        ``pages``)."""
        revision, out = 0, []
        async for read_at, kvs in self.pages(prefix, page=page):
            revision = read_at
            out += kvs
        return revision, out

    async def pages(
        self, prefix: str, *, page: int = PAGE
    ) -> AsyncIterator[tuple[int, builtins.list[KV]]]:
        """Every key under ``prefix``, up to ``page`` keys at a time, every page at
        the revision of the first (yielded with each page): no reply is sized by the
        cluster (one read of 30,000 specs was 8.2 MB, and a daemon could then never
        start), and a reader that keeps less than the raw values holds one page of
        them at a time. A page over the reply limit (``MAX_REPLY``) is read again
        in halves."""
        start, end = prefix.encode(), _prefix_end(prefix)
        revision = 0
        while True:

            def fn(
                c: Any, start: bytes = start, at: int = revision, page: int = page
            ) -> tuple[int, Any]:
                # Built here: etcd3 0.12's range helpers drop limit and revision.
                request = etcdrpc.RangeRequest(
                    key=start,
                    range_end=end,
                    limit=page,
                    revision=at,
                    sort_order=etcdrpc.RangeRequest.ASCEND,
                    sort_target=etcdrpc.RangeRequest.KEY,
                )
                try:
                    resp = c.kvstub.Range(
                        request, c.timeout, credentials=c.call_credentials, metadata=c.metadata
                    )
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and page > 1:
                        return 0, None  # too big a page: read it again in halves
                    raise
                return resp.header.revision, resp

            read_at, resp = await self._call("list", fn)
            if resp is None:
                page //= 2
                continue
            revision = revision or read_at
            yield revision, [_kv(kv) for kv in resp.kvs]
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"  # the next key after the last one read

    async def count(self, prefix: str) -> int:
        """How many keys are under ``prefix``: etcd counts them and sends none (a
        wait for 100,000 claims polls this, not a list of them)."""
        start, end = prefix.encode(), _prefix_end(prefix)

        def fn(c: Any) -> int:
            # Built here, as in list(): etcd3 0.12's range helpers drop count_only.
            request = etcdrpc.RangeRequest(key=start, range_end=end, count_only=True)
            resp = c.kvstub.Range(
                request, c.timeout, credentials=c.call_credentials, metadata=c.metadata
            )
            return int(resp.count)

        return await self._call("count", fn)

    async def get(self, key: str) -> KV | None:
        def fn(c: Any) -> KV | None:
            resp = c.get_response(key)
            return _kv(resp.kvs[0]) if resp.kvs else None

        return await self._call("get", fn)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        await self._call("put", lambda c: c.put(key, value, lease=lease))

    async def delete(self, key: str) -> bool:
        return await self._call("delete", lambda c: bool(c.delete(key)))

    async def put_and_delete(self, put: tuple[str, bytes], delete: str) -> None:
        """Put one key and delete another in one transaction (one round trip)."""
        key, value = put

        def fn(c: Any) -> None:
            writes = [c.transactions.put(key, value), etcd3.transactions.Delete(delete)]
            c.transaction(compare=[], success=writes, failure=[])

        await self._call("put", fn)

    async def create(
        self, key: str, value: bytes, *, lease: int | None = None
    ) -> tuple[bool, KV | None]:
        """Create ``key`` only if absent. Returns (created, the key as it is now)."""

        def fn(c: Any) -> tuple[bool, KV | None]:
            t = c.transactions
            ok, responses = c.transaction(
                compare=[t.create(key) == 0],
                success=[t.put(key, value, lease=lease), t.get(key)],
                failure=[t.get(key)],
            )
            rows = responses[-1]
            if not rows:
                return ok, None
            value_, meta = rows[0]
            return ok, KV(key, value_, meta.create_revision, meta.mod_revision, meta.lease_id)

        return await self._call("create", fn)

    async def create_coalesced(self, key: str, value: bytes) -> KV:
        """Create ``key`` if absent (no lease); returns the key as it is now, ours or
        not. Concurrent calls share transactions: those made while one is in flight
        go together in the next (a burst of start-child calls costs a few
        transactions, not one each)."""
        mine = _Create(key, value)
        self._creates.append(mine)
        if not self._creating:
            self._creating = True
            batch: list[_Create] = []
            try:
                while self._creates:
                    batch = self._creates[: self.txn_ops]
                    del self._creates[: self.txn_ops]
                    error: EtcdUnavailable | None = None
                    try:
                        kvs = await self.create_many([(c.key, c.value) for c in batch])
                    except EtcdUnavailable as exc:
                        kvs, error = {}, exc
                    for c in batch:
                        c.kv, c.error = kvs.get(c.key), error
                        c.done.set()
            finally:
                self._creating = False
                for c in [*batch, *self._creates]:  # cancelled: nobody is left waiting
                    if not c.done.is_set():
                        c.error = EtcdUnavailable(self.endpoint, "create abandoned")
                        c.done.set()
                self._creates.clear()
        await mine.done.wait()
        if mine.error is not None:
            raise mine.error
        assert mine.kv is not None
        return mine.kv

    async def create_many(
        self, items: Sequence[tuple[str, bytes]], *, lease: int | None = None
    ) -> dict[str, KV]:
        """Create each key that is absent, in one transaction (at most ``self.txn_ops``
        keys): the keys as they are now, ours or not (a key created meanwhile by
        someone else comes back with its owner's lease; none is missing).

        All keys created together share one create revision: a fencing token is
        per key, so that is fine.
        """
        assert len(items) <= self.txn_ops, "too many keys for one transaction"

        def fn(c: Any) -> dict[str, KV]:
            t = c.transactions
            todo = dict(items)
            out: dict[str, KV] = {}
            while todo:
                keys = list(todo)
                ok, responses = c.transaction(
                    compare=[t.create(k) == 0 for k in keys],
                    success=[*(t.put(k, todo[k], lease=lease) for k in keys), t.get(keys[0])],
                    failure=[t.get(k) for k in keys],
                )
                if ok:
                    _, meta = responses[-1][0]
                    rev = meta.create_revision
                    out.update((k, KV(k, todo[k], rev, rev, lease or 0)) for k in keys)
                    return out
                # Some exist already: report those; try the rest again.
                for key, rows in zip(keys, responses, strict=True):
                    if rows:
                        value, meta = rows[0]
                        out[key] = KV(
                            key, value, meta.create_revision, meta.mod_revision, meta.lease_id
                        )
                        del todo[key]
            return out

        return await self._call("create", fn)

    async def put_many_if(
        self, items: Sequence[tuple[str, bytes, int]], *, lease: int | None = None
    ) -> builtins.list[str]:
        """Put each ``(key, value, create_revision)`` whose key still has that create
        revision, in one transaction when they all do; returns the keys written."""
        assert len(items) <= self.txn_ops, "too many keys for one transaction"

        def fn(c: Any) -> list[str]:
            t = c.transactions
            ok, _ = c.transaction(
                compare=[t.create(k) == rev for k, _, rev in items],
                success=[t.put(k, v, lease=lease) for k, v, _ in items],
                failure=[],
            )
            if ok:
                return [k for k, _, _ in items]
            written = []  # one is gone (released, or its lease ended): one at a time
            for key, value, rev in items:
                ok, _ = c.transaction(
                    compare=[t.create(key) == rev],
                    success=[t.put(key, value, lease=lease)],
                    failure=[],
                )
                if ok:
                    written.append(key)
            return written

        return await self._call("put_if", fn)

    async def delete_many_if(self, items: Sequence[tuple[str, int]]) -> None:
        """Delete each ``(key, create_revision)`` still of that incarnation, in one
        transaction when they all are."""
        assert len(items) <= self.txn_ops, "too many keys for one transaction"

        def fn(c: Any) -> None:
            t = c.transactions
            ok, _ = c.transaction(
                compare=[t.create(k) == rev for k, rev in items],
                success=[etcd3.transactions.Delete(k) for k, _ in items],
                failure=[],
            )
            if not ok:  # one is another incarnation, or gone: one at a time
                for key, rev in items:
                    c.transaction(
                        compare=[t.create(key) == rev],
                        success=[etcd3.transactions.Delete(key)],
                        failure=[],
                    )

        await self._call("delete_if", fn)

    async def put_if(
        self,
        key: str,
        value: bytes,
        *,
        mod_revision: int | None = None,
        create_revision: int | None = None,
        lease: int | None = None,
    ) -> bool:
        """Put only if the key still has the given mod or create revision (0: absent)."""

        def fn(c: Any) -> bool:
            t = c.transactions
            compare = []
            if mod_revision is not None:
                compare.append(t.mod(key) == mod_revision)
            if create_revision is not None:
                compare.append(t.create(key) == create_revision)
            ok, _ = c.transaction(
                compare=compare, success=[t.put(key, value, lease=lease)], failure=[]
            )
            return bool(ok)

        return await self._call("put_if", fn)

    async def write_if(
        self,
        puts: Sequence[tuple[str, bytes, int]],
        deletes: Sequence[tuple[str, int]] = (),
    ) -> bool:
        """Put each ``(key, value, mod_revision)`` and delete each ``(key,
        mod_revision)`` in one transaction, only if every key still has its mod
        revision (0: absent); nothing is written otherwise. At most ``txn_ops`` keys."""
        assert len(puts) + len(deletes) <= self.txn_ops, "too many keys for one transaction"

        def fn(c: Any) -> bool:
            t = c.transactions
            ok, _ = c.transaction(
                compare=[t.mod(k) == rev for k, _, rev in puts]
                + [t.mod(k) == rev for k, rev in deletes],
                success=[t.put(k, v) for k, v, _ in puts]
                + [etcd3.transactions.Delete(k) for k, _ in deletes],
                failure=[],
            )
            return bool(ok)

        return await self._call("put_if", fn)

    async def delete_if(self, key: str, *, create_revision: int) -> bool:
        """Delete only the incarnation of ``key`` created at ``create_revision``."""

        def fn(c: Any) -> bool:
            t = c.transactions
            ok, _ = c.transaction(
                compare=[t.create(key) == create_revision],
                success=[etcd3.transactions.Delete(key)],
                failure=[],
            )
            return bool(ok)

        return await self._call("delete_if", fn)

    # -- leases ----------------------------------------------------------------------

    async def grant(self, ttl: float) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds)."""

        def fn(c: Any) -> tuple[int, int]:
            lease = c.lease(math.ceil(ttl))
            return lease.id, lease.ttl

        return await self._call("grant", fn)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease; returns the remaining TTL, 0 if the lease is gone."""

        def fn(c: Any) -> int:
            for resp in c.refresh_lease(lease_id):
                return int(resp.TTL)
            return 0

        return await self._call("keepalive", fn, limiter=self._lease_limiter)

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease; one that is already gone (expired, revoked) is no error."""

        def fn(c: Any) -> None:
            try:
                c.revoke_lease(lease_id)
            except grpc.RpcError as exc:
                # etcd's answer, not a broken connection: do not drop the client
                # (and with it the watch stream on its channel).
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._call("revoke", fn)

    # -- watches ---------------------------------------------------------------------

    async def watch(
        self,
        prefix: str,
        start_revision: int,
        on_events: Callable[[builtins.list[Event], int], Awaitable[None]],
    ) -> None:
        """Call ``on_events(events, revision)`` for every change from ``start_revision``
        (and with no events when etcd reports the watch's progress: its revision).

        Never returns; raises ``WatchBroken`` when the stream fails (the caller
        re-lists: with ``compacted`` set, the revision is no longer available).
        We drive the gRPC Watch stream ourselves rather than through etcd3's
        Watcher, whose thread cannot be stopped cleanly.
        """
        client = await self._call("watch", lambda c: c)
        send, receive = trio.open_memory_channel[Any](math.inf)
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()

        def put(item: Any) -> None:  # on the trio thread
            # After the watch ended: send closed (ClosedResourceError) or, before
            # that, receive closed (BrokenResourceError). Either way the item is
            # moot, and raising here (a run_sync_soon callback) would be a
            # TrioInternalError that ends the daemon.
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                send.send_nowait(item)

        def deliver(item: Any) -> None:  # from the pump thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(put, item)

        def requests() -> Iterator[Any]:
            # progress_notify: etcd tells a quiet watch its current revision now and
            # then, so that it resumes from there (not from a compacted revision).
            create = etcdrpc.WatchCreateRequest(
                key=prefix.encode(),
                range_end=_prefix_end(prefix),
                start_revision=start_revision,
                progress_notify=True,
            )
            yield etcdrpc.WatchRequest(create_request=create)
            stop.wait()  # keeps the request side of the stream open until we cancel

        try:
            call = etcdrpc.WatchStub(client.channel).Watch(
                requests(), credentials=client.call_credentials, metadata=client.metadata
            )
        except (ValueError, grpc.RpcError) as exc:
            # Another task's failed call closed this client since we took it
            # ("Cannot invoke RPC: Channel closed!"): a broken watch, not a crash.
            raise WatchBroken(f"watch stream failed: {exc}") from exc

        def pump() -> None:  # in its own thread: blocks on the stream
            try:
                for response in call:
                    deliver(response)
                deliver(WatchBroken("watch stream ended"))
            except grpc.RpcError as exc:
                deliver(WatchBroken(f"watch stream failed: {exc.code().name}"))
            except Exception as exc:  # e.g. ValueError from a closed channel
                deliver(WatchBroken(f"watch stream failed: {exc!r}"))

        threading.Thread(target=pump, name=f"ringd-watch {prefix}", daemon=True).start()
        try:
            async with receive:
                async for response in receive:
                    if isinstance(response, WatchBroken):
                        raise response
                    if response.compact_revision:
                        raise WatchBroken(
                            f"revision {start_revision} compacted "
                            f"(now {response.compact_revision})",
                            compacted=True,
                        )
                    if response.canceled:
                        raise WatchBroken(
                            f"watch canceled: {response.cancel_reason or 'no reason'}"
                        )
                    if response.events:
                        events = [
                            Event("delete" if e.type == kv_pb2.Event.DELETE else "put", _kv(e.kv))
                            for e in response.events
                        ]
                        await on_events(events, response.header.revision)
                    elif response.header.revision and not response.created:
                        await on_events([], response.header.revision)  # progress: no change
        finally:
            stop.set()
            call.cancel()
            send.close()
