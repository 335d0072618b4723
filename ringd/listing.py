"""The rows that ``find`` and ``which-children`` answer with, one per child
instance (``protocol.ChildRow``), built from the view's records and kept until
what they show changes.

Built per request, a crowd of which-children calls (1,000 rows: ~25 ms each) held
the event loop so long that lease keepalives missed their deadline and the node
fenced itself. So a child's rows are built again only when its spec, its claims or
its placement changed (compared by identity: the view replaces a key's KV when it
changes); the whole listing once per view version, yielding every ``step``
children; and a which-children reply is encoded once for all the readers of the
same second (the figures in it are that fresh anyway, see ``Figures``).

Rows are frozen and shared: a caller changes a copy (``msgspec.structs.replace``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from . import desired, heap, records
from .placement import instance_key
from .protocol import ChildRow, Encoded, dump_result
from .spec import MAX_REPLICAS, spec_digest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable, Mapping

    from .desired import Rollout, Running
    from .etcd import KV
    from .figures import Figures, PublishedFigures
    from .placement import Instance
    from .reconciler import Reconciler
    from .records import Claim
    from .spec import ChildSpec
    from .view import ClusterView, Stored

INVALID = "the spec in etcd is not valid (see the daemon log)"
# Dropping a reply this big (bytes), or the rows of this many children, gives the
# heap's free pages back (a few milliseconds: not for the odd ``find``'s rows).
BIG_REPLY = 4 * 2**20
BIG_LISTING = 10_000


@dataclass(slots=True)
class Entry:
    """One child's rows (the master's first) and what they were built from."""

    spec_kv: KV
    argv: Any  # as stored (an invalid spec still lists); the rest of the spec is in rows
    placed: list[Instance] | None
    claims: tuple[KV | None, ...]  # per replica: the claim's KV, None if none (or corrupt)
    context: object  # the placement inputs when a row is pending (its reason), else None
    rows: list[ChildRow]


class Listing:
    """Rows per child and for every child, cached; replies encoded once per second.

    Args:
        node: this node's name (its children's figures are measured here).
        fresh: seconds a which-children reply is reused while the view is unchanged.
        step: children (or rows) handled between two checkpoints of the event loop.
        idle_after: seconds without a listing of every child after which the rows
            are dropped (``run``): at 100,000 children they are ~1 KiB a child, held
            while someone lists (a status page, a script) and given back after.
    """

    IDLE_AFTER = 60.0  # seconds: see idle_after

    def __init__(
        self,
        *,
        node: str,
        view: ClusterView,
        reconciler: Reconciler,
        figures: Figures,
        published: PublishedFigures,
        fresh: float = 1.0,
        step: int = 100,
        idle_after: float = IDLE_AFTER,
    ) -> None:
        self.node = node
        self.view = view
        self.reconciler = reconciler
        self.figures = figures
        self.published = published
        self.fresh = fresh
        self.step = step
        self._entries: dict[str, Entry] = {}
        self._all: tuple[int, list[ChildRow]] | None = None  # (view version, rows)
        # One build (and one encoding) at a time: the others wait, then reuse it.
        self._building = trio.Lock()
        self._encoding = trio.Lock()
        self._pending: tuple[object, Any, Any] | None = None  # (inputs, groups, nodes)
        self._replies: dict[Hashable, tuple[int, float, Encoded]] = {}
        self.idle_after = idle_after
        self._listed = -math.inf  # trio.current_time() of the last listing of every child

    async def run(self) -> None:
        """Drop what nobody reads: replies older than ``fresh`` (a listing of
        100,000 children is ~30 MB encoded), and every cached row once no listing
        of every child came for ``idle_after`` seconds."""
        while True:
            await trio.sleep(max(self.fresh, 1.0))
            now = trio.current_time()
            freed = 0  # bytes of replies dropped
            for key, (_, at, reply) in list(self._replies.items()):
                if now - at >= self.fresh:
                    del self._replies[key]
                    freed += len(reply.json)
            dropped = 0  # children whose rows were dropped
            if self._entries and now - self._listed >= self.idle_after:
                dropped = len(self._entries)
                self._entries, self._all, self._pending = {}, None, None
            if freed >= BIG_REPLY or dropped >= BIG_LISTING:
                heap.give_back()  # the heap keeps the pages a big listing freed

    # -- rows -------------------------------------------------------------------------

    def child(self, child_id: str, spec_kv: KV) -> Entry:
        """The rows of one child (``spec_kv`` may be newer than the view)."""
        if len(self._entries) > 2 * self.view.count("children") + 64:
            self._prune()  # children deleted while nobody listed them all
        return self._entry(child_id, spec_kv, self.reconciler.place())

    async def everything(self) -> list[ChildRow]:
        """Every child's rows, by child id."""
        self._listed = trio.current_time()
        if self._all is not None and self._all[0] == self.view.version:
            return self._all[1]
        async with self._building:
            version = self.view.version
            if self._all is not None and self._all[0] == version:
                return self._all[1]  # built while we waited
            # Every key, valid spec or not: an invalid one is listed as such.
            children = sorted(self.view.stored_specs().items())
            rows: list[ChildRow] = []
            placed = self.reconciler.place()
            for i, (child_id, kv) in enumerate(children):
                if i and i % self.step == 0:
                    await trio.lowlevel.checkpoint()
                    placed = self.reconciler.place()  # the view may have changed meanwhile
                rows += self._entry(child_id, kv, placed).rows
            self._prune()
            # Tagged with the version it started from: if the view changed while this
            # yielded, the next call builds again.
            self._all = (version, rows)
            return rows

    def _prune(self) -> None:
        for gone in self._entries.keys() - self.view.stored_specs().keys():
            del self._entries[gone]

    def _entry(self, child_id: str, spec_kv: KV, placed: Mapping[str, list[Instance]]) -> Entry:
        placement = placed.get(child_id)
        entry = self._entries.get(child_id)
        if (
            entry is None
            or entry.spec_kv is not spec_kv
            or entry.placed is not placement
            or (entry.context is not None and entry.context is not self._inputs())
            or any(
                _kv(self.view.claim(instance_key(child_id, replica))) is not kv
                for replica, kv in enumerate(entry.claims)
            )
        ):
            entry = self._build(child_id, spec_kv, placement)
            if self.view.stored_specs().get(child_id) is spec_kv:
                # Only what the view holds: a spec newer than the view (just written)
                # is "just created" only until the view has it.
                self._entries[child_id] = entry
        return entry

    def _inputs(self) -> object:
        self.reconciler.place()  # brings them up to date (a no-op unless the view changed)
        return self.reconciler.placement_inputs

    def _spec(self, child_id: str, kv: KV) -> ChildSpec | None:
        """The spec in ``kv``, or None if it is not a valid spec."""
        stored = self.view.spec(child_id)
        if stored is not None and stored.kv is kv:
            return stored.value  # decoded once by the view
        try:  # newer than the view (just written), or invalid
            spec: ChildSpec = records.decode("children", "", child_id, kv.value)
        except records.InvalidRecord:
            return None
        return spec

    def _build(self, child_id: str, spec_kv: KV, placement: list[Instance] | None) -> Entry:
        spec = self._spec(child_id, spec_kv)
        shown = _Shown.of(spec) if spec is not None else _Shown.stored(spec_kv)
        owners = [i.node for i in placement or ()]
        claims = [self.view.claim(instance_key(child_id, r)) for r in range(shown.replicas)]
        context = None
        rows = []
        for replica, claim in enumerate(claims):
            owner = owners[replica] if replica < len(owners) else None
            if claim is not None:
                rows.append(_claimed(child_id, replica, shown, owner, claim))
                continue
            context = self._inputs()
            state, reason = self._why_not_running(child_id, spec, replica, len(owners))
            rows.append(_pending(child_id, replica, shown, owner, state, reason))
        if spec is not None and placement:
            rows = _with_rollout(rows, _rollout(spec, placement, claims))
        kvs = tuple(_kv(claim) for claim in claims)
        return Entry(spec_kv, shown.argv, placement, kvs, context, rows)

    def _why_not_running(
        self, child_id: str, spec: ChildSpec | None, replica: int, placed: int
    ) -> tuple[str, str]:
        """The state and reason of an instance without a claim."""
        if spec is None:
            return "invalid", INVALID
        if self.view.spec(child_id) is None:
            # Just created (start-child answers before its watch event arrives).
            return "pending", "just created: not placed yet"
        # Groups and nodes once per change of them, not per pending row (after a
        # failover or before the first node is up, every row is pending).
        inputs = self._inputs()
        if self._pending is None or self._pending[0] is not inputs:
            self._pending = (inputs, self.reconciler.groups(), self.reconciler.nodes())
        _, groups, nodes = self._pending
        reason = self.reconciler.why_pending(spec, groups, nodes)
        if reason.startswith("group") and "failed" in reason:
            return "failed", reason
        if placed and replica >= placed:
            return "degraded", f"only {placed} eligible node(s) for {spec.replicas} replicas"
        return "pending", reason

    # -- figures ----------------------------------------------------------------------

    async def with_figures(self, rows: list[ChildRow]) -> list[ChildRow]:
        """``rows`` with RSS and CPU per instance: measured now for this node's
        children, else the figures their node last published (every
        ``figures_interval``). A row with figures is a copy."""
        out = []
        remote = any(row.node not in (None, self.node) for row in rows)
        published = await self.published.by_node() if remote else {}
        for i, row in enumerate(rows):
            if i and i % self.step == 0:
                await trio.lowlevel.checkpoint()  # a stale reading costs a /proc read per row
            node = row.node
            if node == self.node:
                measured = self.figures.of(row.pid)
            elif node is None:
                measured = None
            else:
                measured = published.get(node, {}).get(row.instance)
            if measured:
                row = msgspec.structs.replace(row, rss=measured[0], cpu=measured[1])
            out.append(row)
        return out

    # -- replies ----------------------------------------------------------------------

    async def reply(self, key: Hashable, build: Callable[[], Awaitable[list[ChildRow]]]) -> Encoded:
        """``build()``'s rows, encoded; the same bytes again for the same ``key``
        while the view is unchanged, for at most ``fresh`` seconds."""
        cached = self._replies.get(key)
        if (
            cached is not None
            and cached[0] == self.view.version
            and trio.current_time() - cached[1] < self.fresh
        ):
            return cached[2]
        async with self._encoding:
            version, now = self.view.version, trio.current_time()
            cached = self._replies.get(key)
            if cached is not None and cached[0] == version and now - cached[1] < self.fresh:
                return cached[2]  # encoded while we waited
            rows = await build()
            parts = []
            for start in range(0, len(rows), self.step):
                if start:
                    await trio.lowlevel.checkpoint()
                parts.append(dump_result(rows[start : start + self.step])[1:-1])
            encoded = Encoded(b"[" + b",".join(parts) + b"]")
            if len(self._replies) >= 64:
                self._replies.clear()  # many different filters: keep it bounded
            self._replies[key] = (version, now, encoded)
            return encoded


@dataclass(frozen=True, slots=True)
class _Shown:
    """What a child's rows show of its spec."""

    group: str | None
    restart: str
    replicas: int
    argv: Any

    @classmethod
    def of(cls, spec: ChildSpec) -> _Shown:
        return cls(spec.group, spec.restart, spec.replicas, spec.argv)

    @classmethod
    def stored(cls, kv: KV) -> _Shown:
        """An invalid spec, as far as it reads: its rows show what it says."""
        try:
            value = msgspec.json.decode(kv.value)
        except msgspec.DecodeError:
            value = None
        raw: dict[str, Any] = value if isinstance(value, dict) else {}
        group, restart, replicas = raw.get("group"), raw.get("restart"), raw.get("replicas")
        return cls(
            group if isinstance(group, str) else None,
            restart if isinstance(restart, str) else "permanent",
            # never a huge range for a corrupt one
            min(max(replicas, 1), MAX_REPLICAS) if isinstance(replicas, int) else 1,
            raw.get("argv"),
        )


def _rollout(
    spec: ChildSpec, placement: list[Instance], claims: list[Stored[Claim] | None]
) -> Rollout:
    """Where the child's move to its spec stands, from its claims alone (what every
    node sees alike; the reconciler also looks at its own supervisor)."""
    instances: dict[int, Running | None] = {}
    for instance in placement:
        stored = claims[instance.replica] if instance.replica < len(claims) else None
        claim = stored.value if stored is not None else None
        instances[instance.replica] = None if claim is None else desired.running_from(claim)
    return desired.rollout(spec_digest(spec), instances)


def _with_rollout(rows: list[ChildRow], rollout: Rollout) -> list[ChildRow]:
    """Every row says where the rollout stands; a halted one says why, first."""
    if rollout.state != "halted":
        return [msgspec.structs.replace(row, rollout=rollout.state) for row in rows]
    halted = f"rollout halted: {rollout.reason}"
    return [
        msgspec.structs.replace(
            row, rollout=rollout.state, reason=f"{halted}; {row.reason}" if row.reason else halted
        )
        for row in rows
    ]


def _kv(stored: Stored[Claim] | None) -> KV | None:
    return stored.kv if stored is not None else None


def _claimed(
    child_id: str, replica: int, shown: _Shown, owner: str | None, stored: Stored[Claim]
) -> ChildRow:
    claim = stored.value
    return ChildRow(
        id=child_id,
        instance=instance_key(child_id, replica),
        replica=replica,
        role="master" if replica == 0 else "replica",
        group=shown.group,
        restart=shown.restart,
        owner=owner,
        node=claim.node,
        pid=claim.pid,
        state=claim.state,
        restarts=claim.restarts,
        started=claim.started,
        reason=claim.reason,
        fence=stored.kv.create_revision,
        revision=claim.revision,
        ready=claim.ready,
        health=claim.health,
    )


def _pending(
    child_id: str, replica: int, shown: _Shown, owner: str | None, state: str, reason: str
) -> ChildRow:
    return ChildRow(
        id=child_id,
        instance=instance_key(child_id, replica),
        replica=replica,
        role="master" if replica == 0 else "replica",
        group=shown.group,
        restart=shown.restart,
        owner=owner,
        node=None,
        pid=None,
        state=state,
        restarts=0,
        started=None,
        reason=reason,
        fence=None,
    )
