"""A local mirror of the cluster's keys in etcd: list, then watch from that revision.

Every part reads cluster state from here instead of asking etcd. A broken watch
is resumed from the last revision seen, and so is one quiet for
``resync_interval``; only a compacted revision forces a re-list (paged, at one
revision). etcd reports a quiet watch's progress, so that its revision follows
etcd's even when nothing under the prefix changes.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import trio

from . import records
from .errors import EtcdUnavailable, WatchBroken
from .etcd import KV
from .outage import OutageLog
from .spec import ChildSpec, encode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, KeysView, Mapping

    from .etcd import Etcd, Event
    from .keys import Keys
    from .records import Alive, Claim, Drain, Status
    from .spec import GroupRecord

logger = logging.getLogger(__name__)
_EMPTY: dict[str, KV] = {}
_INVALID = object()
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stored(Generic[T]):
    """A record as the view holds it: its decoded ``value`` and the ``kv`` it came
    from (revisions and lease: a claim's fence is ``kv.create_revision``)."""

    value: T
    kv: KV


# Lease ids, one int object each: the claims of a node share its lease (100,000
# claims held 100,000 equal ints). Emptied when full: leases change as nodes restart.
_LEASES: dict[int, int] = {}
MAX_LEASES = 4096


class NamedKV(KV):
    """A key as the view holds one of many of a kind (a claim, a spec): its text is
    made when read from a prefix they all share and its name, which the index holds
    anyway (~70 bytes less a key: 100,000 claims are 100,000 keys)."""

    __slots__ = ("_name", "_prefix")
    _name: str
    _prefix: str

    def __init__(self, kv: KV, name: str, value: bytes | None) -> None:
        """``value``: None when a subclass makes it (``SpecKV``)."""
        setattr_ = object.__setattr__  # not KV.__init__: ``key`` is a property here
        setattr_(self, "_prefix", sys.intern(kv.key[: len(kv.key) - len(name)]))
        if len(_LEASES) >= MAX_LEASES:
            _LEASES.clear()
        setattr_(self, "_name", name)
        setattr_(self, "create_revision", kv.create_revision)
        # One int object when equal (a key never changed since it was created).
        same = kv.mod_revision == kv.create_revision
        setattr_(self, "mod_revision", kv.create_revision if same else kv.mod_revision)
        setattr_(self, "lease", _LEASES.setdefault(kv.lease, kv.lease))
        if value is not None:
            setattr_(self, "value", value)

    @property
    def key(self) -> str:
        return self._prefix + self._name


class SpecKV(NamedKV):
    """A valid child spec's key as the view holds it: the decoded ``spec`` instead of
    its raw value, which is the spec's canonical encoding (what ringd writes) and is
    encoded again when read (``value``). One object per spec, where a plain KV plus a
    decoded record held the value twice (see BENCHMARKS.md, "Scale")."""

    __slots__ = ("spec",)
    spec: ChildSpec

    def __init__(self, kv: KV, spec: ChildSpec) -> None:
        super().__init__(kv, spec.id, None)
        object.__setattr__(self, "spec", spec)

    @property
    def value(self) -> bytes:
        return encode(self.spec)


class ClaimKV(NamedKV):
    """A claim's key as the view holds it: the decoded ``claim`` (its strings shared
    where equal, see ``_compact_claim``) instead of its raw value, which is the
    claim's canonical encoding (what ringd writes), encoded again when read. Every
    daemon holds every claim: raw bytes, a decoded copy and a cache entry were
    ~1 KiB a claim, this is ~0.3 KiB (BENCHMARKS.md, "Scale")."""

    __slots__ = ("claim",)
    claim: Claim

    def __init__(self, kv: KV, name: str, claim: Claim) -> None:
        super().__init__(kv, name, None)
        object.__setattr__(self, "claim", claim)

    @property
    def value(self) -> bytes:
        return encode(self.claim)


def same_kv(a: KV | None, b: KV) -> bool:
    """The same key at the same version with the same value (a ``SpecKV`` equals the
    KV it was made from)."""
    return a is b or (
        a is not None
        and a.key == b.key
        and a.mod_revision == b.mod_revision
        and a.create_revision == b.create_revision
        and a.lease == b.lease
        and a.value == b.value
    )


# The default values of a spec's fields, shared by every spec that has them.
_DEFAULTS = {
    f.name: f.default
    for f in msgspec.structs.fields(ChildSpec)
    if f.default is not msgspec.NODEFAULT and f.default is not None
}
_NO_ENTRIES: dict[str, str] = {}  # every empty env and ``on``: never changed in place


def _compact(spec: ChildSpec) -> ChildSpec:
    """``spec`` with its repeated values shared: default values, empty mappings,
    argv's strings (interned). The same spec, encoded the same."""
    changes: dict[str, Any] = {}
    for name, default in _DEFAULTS.items():
        value = getattr(spec, name)
        if value is not default and type(value) is type(default) and value == default:
            changes[name] = default
    changes["argv"] = [sys.intern(arg) for arg in spec.argv]
    if spec.check is not None:
        changes["check"] = [sys.intern(arg) for arg in spec.check]
    for name in ("cwd", "group"):
        if (value := getattr(spec, name)) is not None:
            changes[name] = sys.intern(value)
    for name in ("env", "on"):
        if not getattr(spec, name):
            changes[name] = _NO_ENTRIES
    if spec.on:  # labels: few distinct sets, each shared by many children
        changes["on"] = _shared_labels(spec.on)
    return msgspec.structs.replace(spec, **changes)


_LABEL_SETS: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
MAX_LABEL_SETS = 4096  # past this, a spec keeps its own dict (the cache stops growing)


def _shared_labels(on: dict[str, str]) -> dict[str, str]:
    """One dict per distinct ``on``, in its order (it encodes the same); never
    changed in place: specs are frozen."""
    key = tuple(on.items())
    shared = _LABEL_SETS.get(key)
    if shared is None:
        if len(_LABEL_SETS) >= MAX_LABEL_SETS:
            return on
        shared = _LABEL_SETS[key] = {sys.intern(k): sys.intern(v) for k, v in on.items()}
    return shared


def _canonical(kind: str, name: str, kv: KV) -> Any:
    """The record in ``kv``, or None if it is invalid (logged by ``record()``, once
    per revision) or not stored in canonical form (it could not be encoded back
    byte for byte: its raw value is kept)."""
    try:
        record = records.decode(kind, "", name, kv.value)
    except records.InvalidRecord:
        return None
    return record if encode(record) == kv.value else None


def _as_spec(kv: KV, name: str) -> SpecKV | None:
    """A child spec's KV as the view keeps it, or None to keep the KV itself (an
    invalid spec: its raw value is what lists it; or one not in canonical form)."""
    spec: ChildSpec | None = _canonical("children", name, kv)
    return None if spec is None else SpecKV(kv, _compact(spec))


def _compact_claim(claim: Claim, name: str, fence: int, revision: int | None) -> Claim:
    """``claim`` with its repeated values shared, encoded the same: the claim key's
    ``name`` for its instance and id, interned node, state, role and group names,
    and the given ints (the key's create revision, the spec's mod revision) where
    equal."""
    changes: dict[str, Any] = {}
    child_id = name.partition("/")[0]
    if claim.instance == name:
        changes["instance"] = name
    if claim.id == child_id:
        changes["id"] = name if child_id == name else sys.intern(child_id)
    for field in ("node", "state", "role", "group", "health"):
        if (value := getattr(claim, field)) is not None:
            changes[field] = sys.intern(value)
    if claim.fence == fence:
        changes["fence"] = fence
    if revision is not None and claim.revision == revision:
        changes["revision"] = revision
    return msgspec.structs.replace(claim, **changes)


def _as_claim(kv: KV, name: str, spec: KV | None) -> ClaimKV | None:
    """A claim's KV as the view keeps it, or None to keep the raw KV (invalid, or not
    in canonical form)."""
    claim: Claim | None = _canonical("claims", name, kv)
    if claim is None:
        return None
    held = ClaimKV(kv, name, claim)  # its ints are the ones the claim's fields share
    spec_revision = spec.mod_revision if spec is not None else None
    compact = _compact_claim(claim, held._name, held.create_revision, spec_revision)
    object.__setattr__(held, "claim", compact)
    return held


def _held_form(
    kv: KV, parsed: tuple[str, str, str], spec_of: Callable[[str], KV | None]
) -> tuple[KV, str]:
    """A key as the view holds it, and its name in its kind's index: a valid spec as
    a ``SpecKV``, a claim as a ``ClaimKV`` (or a ``NamedKV``, its raw value kept),
    sharing the name string of its child's spec, found with ``spec_of(child id)``;
    any other key as it is."""
    kind, name, _ = parsed
    if isinstance(kv, SpecKV):
        return kv, kv.spec.id
    if isinstance(kv, NamedKV):
        return kv, kv._name
    if kind == "children":
        spec = _as_spec(kv, name)
        return (kv, name) if spec is None else (spec, spec.spec.id)
    if kind == "claims":
        held = spec_of(name.partition("/")[0])  # a replica's instance: <id>/<n>
        if isinstance(held, SpecKV) and name == held.spec.id:
            name = held.spec.id  # one string for the spec's and claim's names
        return _as_claim(kv, name, held) or NamedKV(kv, name, kv.value), name
    return kv, name


@dataclass(frozen=True, slots=True)
class Change:
    """One key changed: ``kv`` is the new value (for a delete, the last one known) and
    ``previous`` what the view held before (None if the key is new)."""

    kind: str  # "put" | "delete"
    kv: KV
    previous: KV | None


class ClusterView:
    """The keys under one prefix, kept current.

    Args:
        etcd: the etcd facade.
        keys: the key layout (its prefix is what is mirrored).
        resync_interval: seconds after which a quiet watch is opened again
            (resumed from its revision, not re-listed).
        max_backoff: the longest wait (before jitter) between reconnection attempts.
    """

    def __init__(
        self,
        etcd: Etcd,
        keys: Keys,
        *,
        resync_interval: float = 30.0,
        max_backoff: float = 1.0,
    ) -> None:
        self.etcd = etcd
        self.keys = keys
        self.resync_interval = resync_interval
        # Between reconnection attempts while etcd is away. Nothing is placed or
        # started from a stale view, so after an outage this is time children stay
        # down: keep it well under a lease TTL (one list or watch per second per
        # daemon is no load for etcd).
        self.max_backoff = max_backoff
        # Keys of no kind the view knows (each known key is only in ``_index``: a
        # second map of every key cost ~10 MiB at 200,000 keys).
        self._other: dict[str, KV] = {}
        self.revision = 0
        self.version = 0  # bumped on every change; see wait_changed
        self._changed = trio.Event()
        # (kind, sub) -> {name: kv}, each in create-revision order (start order)
        self._index: dict[tuple[str, str], dict[str, KV]] = {}
        # (kind, sub) -> names changed since the last re-list, in order; see changes()
        self._log: dict[tuple[str, str], list[str]] = {}
        self._epoch = 0  # bumped by every re-list: consumers start over
        self._subscribers: set[trio.MemorySendChannel[Change]] = set()
        # key -> (mod revision, record or _INVALID): each value decoded once
        self._records: dict[str, tuple[int, Any]] = {}
        self.outage = OutageLog(logger, "list cluster state", etcd)

    # -- reading ----------------------------------------------------------------------

    def by_kind(self, kind: str, sub: str = "") -> dict[str, KV]:
        """``{name: kv}`` for one kind of key (``children``, ``claims``, ``nodes``+``alive``),
        in create-revision order.

        A copy: callers iterate it across awaits while the view changes.
        """
        return dict(self._index.get((kind, sub), _EMPTY))

    def live(self, kind: str, sub: str = "") -> Mapping[str, KV]:
        """Like ``by_kind`` but no copy: only for reading between two awaits."""
        return MappingProxyType(self._index.get((kind, sub), _EMPTY))

    def get(self, kind: str, name: str, sub: str = "") -> KV | None:
        """One key of a kind, without copying the kind."""
        return self._index.get((kind, sub), _EMPTY).get(name)

    def count(self, kind: str, sub: str = "") -> int:
        return len(self._index.get((kind, sub), _EMPTY))

    # -- reading typed records ----------------------------------------------------------

    def record(self, kind: str, name: str, sub: str = "") -> Stored[Any] | None:
        """The decoded record at one key, or None if absent or corrupt (a corrupt
        value, written by a third party, is logged once per revision and skipped)."""
        kv = self._index.get((kind, sub), _EMPTY).get(name)
        if kv is None:
            return None
        if isinstance(kv, SpecKV):
            return Stored(kv.spec, kv)
        if isinstance(kv, ClaimKV):
            return Stored(kv.claim, kv)
        cached = self._records.get(kv.key)
        if cached is None or cached[0] != kv.mod_revision:
            try:
                value = records.decode(kind, sub, name, kv.value)
            except records.InvalidRecord as exc:
                logger.error("skipping invalid %s at %s: %s", kind, kv.key, exc)
                value = _INVALID
            cached = self._records[kv.key] = (kv.mod_revision, value)
        return None if cached[1] is _INVALID else Stored(cached[1], kv)

    def records(self, kind: str, sub: str = "") -> dict[str, Stored[Any]]:
        """Every valid record of one kind, in create-revision order (a copy)."""
        out = {}
        for name in list(self._index.get((kind, sub), _EMPTY)):
            if (stored := self.record(kind, name, sub)) is not None:
                out[name] = stored
        return out

    def alive_nodes(self) -> dict[str, Stored[Alive]]:
        """The nodes in the ring (their alive key exists), whether draining or not."""
        return self.records("nodes", "alive")

    def alive(self, node: str) -> Stored[Alive] | None:
        return self.record("nodes", node, "alive")

    def statuses(self) -> dict[str, Stored[Status]]:
        return self.records("nodes", "status")

    def status(self, node: str) -> Stored[Status] | None:
        return self.record("nodes", node, "status")

    def drains(self) -> dict[str, Stored[Drain]]:
        return self.records("nodes", "drain")

    def draining(self) -> KeysView[str]:
        """The nodes drained: a drain key exists (whatever its value says)."""
        return self._index.get(("nodes", "drain"), _EMPTY).keys()

    def in_ring(self) -> KeysView[str]:
        """The nodes whose alive key exists (whatever its value says)."""
        return self._index.get(("nodes", "alive"), _EMPTY).keys()

    def claim_kvs(self) -> dict[str, KV]:
        """Every claim's key as stored (lease, fence), undecoded; a copy."""
        return self.by_kind("claims")

    def stored_specs(self) -> Mapping[str, KV]:
        """Every child spec's key as stored, valid or not (read between awaits only)."""
        return self.live("children")

    def claims(self) -> dict[str, Stored[Claim]]:
        """Every claim by instance key (``id`` or ``id/<n>``)."""
        return self.records("claims")

    def claim(self, instance: str) -> Stored[Claim] | None:
        return self.record("claims", instance)

    def specs(self) -> dict[str, Stored[ChildSpec]]:
        """Every valid child spec by id, in creation order (their start order)."""
        return self.records("children")

    def spec(self, child_id: str) -> Stored[ChildSpec] | None:
        return self.record("children", child_id)

    def groups(self) -> dict[str, Stored[GroupRecord]]:
        return self.records("groups")

    def group(self, name: str) -> Stored[GroupRecord] | None:
        return self.record("groups", name)

    def changes(
        self, kind: str, cursor: tuple[int, int] | None, sub: str = ""
    ) -> tuple[list[str] | None, tuple[int, int]]:
        """The names of one kind changed since ``cursor`` (None: since ever), and the
        cursor to pass next time. The names are None when the consumer must start
        over from ``by_kind`` (first call, or a re-list happened since).

        This lets a reader of thousands of keys do work per change, not per key.
        """
        now = self.stamp(kind, sub)
        if cursor is None or cursor[0] != self._epoch:
            return None, now
        return self._log.get((kind, sub), [])[cursor[1] :], now

    def stamp(self, kind: str, sub: str = "") -> tuple[int, int]:
        """Changes whenever a key of this kind does (or the view re-lists): equal
        stamps, the same keys and values (what a reader can cache on)."""
        return self._epoch, len(self._log.get((kind, sub), ()))

    def _log_change(self, bucket: tuple[str, str], name: str) -> None:
        log = self._log.setdefault(bucket, [])
        log.append(name)
        if len(log) > 10_000:  # bounded: a reader this far behind starts over (cheap)
            self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch += 1
        self._log = {}

    def held(self, key: str) -> KV | None:
        """The key as the view holds it, by its full key."""
        parsed = self.keys.parse(key)
        if parsed is None:
            return self._other.get(key)
        return self._index.get((parsed[0], parsed[2]), _EMPTY).get(parsed[1])

    def _keys(self) -> list[str]:
        """Every key held."""
        out = list(self._other)
        for bucket in self._index.values():
            out += [kv.key for kv in bucket.values()]
        return out

    def _put(self, kv: KV) -> KV | None:
        previous = self.held(kv.key)
        if parsed := self.keys.parse(kv.key):
            kv, name = _held_form(kv, parsed, lambda i: self.get("children", i))
            if self._records and isinstance(kv, (SpecKV, ClaimKV)):
                self._records.pop(kv.key, None)  # what an invalid value left
            bucket = self._index.setdefault((parsed[0], parsed[2]), {})
            if previous is not None and previous.create_revision != kv.create_revision:
                bucket.pop(name, None)  # a new incarnation: it goes last
            bucket[name] = kv
            self._log_change((parsed[0], parsed[2]), name)
        else:
            self._other[kv.key] = kv
        return previous

    def _delete(self, key: str) -> KV | None:
        self._records.pop(key, None)
        parsed = self.keys.parse(key)
        if parsed is None:
            return self._other.pop(key, None)
        previous = None
        if bucket := self._index.get((parsed[0], parsed[2])):
            previous = bucket.pop(parsed[1], None)
            self._log_change((parsed[0], parsed[2]), parsed[1])
        return previous

    @contextlib.contextmanager
    def subscribe(self, buffer: int = 10_000) -> Iterator[trio.MemoryReceiveChannel[Change]]:
        """Every change, in etcd's order, from now on (a re-list sends the differences).

        A subscriber more than ``buffer`` changes behind is dropped: its channel closes.
        """
        send, receive = trio.open_memory_channel[Change](buffer)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def _publish(self, change: Change) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(change)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                logger.warning("dropping a subscriber that fell behind")
                self._subscribers.discard(send)
                send.close()

    async def wait_changed(self, seen: int) -> int:
        """Wait until ``version`` differs from ``seen``; return the new version."""
        while self.version == seen:
            await self._changed.wait()
        return self.version

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    # -- keeping current --------------------------------------------------------------

    async def _relist(self) -> None:
        # Read a page at a time, each spec and claim kept as it will be held (or as
        # the same object, if unchanged): the raw values of 100,000 specs and claims
        # (~60 MB) are never all held at once, and the heap does not keep that peak
        # for ever.
        # A first list (an empty view: a daemon starting) has nothing to compare
        # with or delete, so each key is held as its page arrives: no map of every
        # key until the end (~40 MB at 200,000 keys, a peak the heap keeps).
        first = not self._other and not any(self._index.values())
        revision, fresh = 0, {}
        async for read_at, page in self.etcd.pages(self.keys.prefix):
            revision = read_at
            for kv in page:
                if first:
                    if parsed := self.keys.parse(kv.key):
                        kv, _ = _held_form(kv, parsed, lambda i: self.get("children", i))
                    self._publish(Change("put", kv, self._put(kv)))
                    continue
                held = self.held(kv.key)
                if held is not None and (held.mod_revision, held.create_revision, held.lease) == (
                    kv.mod_revision,
                    kv.create_revision,
                    kv.lease,
                ):
                    fresh[kv.key] = held  # the same version: the same value
                    continue
                if parsed := self.keys.parse(kv.key):  # a child's spec comes before its claims
                    kv, _ = _held_form(kv, parsed, lambda i: fresh.get(self.keys.child(i)))
                fresh[kv.key] = kv
        # What a watch would have told us, had it not broken.
        for key in [] if first else [k for k in self._keys() if k not in fresh]:
            previous = self._delete(key)
            assert previous is not None
            self._publish(Change("delete", previous, previous))
        for key, kv in fresh.items():
            if not same_kv(self.held(key), kv):
                self._publish(Change("put", kv, self._put(kv)))
        # Keep every kind in create-revision order (what a watch alone keeps), and
        # make readers of changes() start over from the fresh state.
        for bucket, named in self._index.items():
            self._index[bucket] = dict(sorted(named.items(), key=lambda i: i[1].create_revision))
        self._new_epoch()
        self.revision = revision
        self._bump()

    async def _apply(self, events: list[Event], revision: int) -> None:
        if not events:  # progress: nothing changed up to ``revision``
            self.revision = max(self.revision, revision)
            return
        for event in events:
            if event.kind == "delete":
                self._publish(Change("delete", event.kv, self._delete(event.kv.key)))
            else:
                self._publish(Change("put", event.kv, self._put(event.kv)))
        self.revision = max(self.revision, revision)
        self._bump()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """List, then watch forever; ``started`` after the first successful list."""
        backoff = 0.1
        started = False
        need_list = True
        watched_since = 0.0
        while True:
            try:
                if need_list:
                    await self._relist()
                    self.outage.succeeded()
                    need_list = False
                    if not started:
                        started = True
                        task_status.started()
                watched_since = trio.current_time()
                with trio.move_on_after(self.resync_interval):
                    await self.etcd.watch(self.keys.prefix, self.revision + 1, self._apply)
                # A watch that was quiet that long is opened again from the revision
                # seen: a stream that died without a word (a half-open connection)
                # must not leave the view stale, and resuming costs what changed
                # since, not a read of the whole cluster.
            except WatchBroken as exc:
                # Resume from the last revision seen unless it is gone.
                need_list = need_list or exc.compacted
                logger.warning(
                    "cluster watch broken (%s); %s",
                    exc,
                    "re-listing" if exc.compacted else "resuming",
                )
                if trio.current_time() - watched_since > 2 * backoff:
                    backoff = 0.1  # the watch was healthy for a while: not a flapping loop
            except EtcdUnavailable as exc:
                self.outage.failed(exc)
            await trio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)
