"""The rows that ``find`` and ``which-children`` answer with, one per child
instance, built from the view and kept until what they show changes.

A row is decoded from the child's spec and claims (JSON). Done per request, a
crowd of which-children calls (1,000 rows: ~25 ms each) held the event loop so
long that lease keepalives missed their deadline and the node fenced itself. So
a child's rows are built again only when its spec, its claims or its placement
changed (compared by identity: the view replaces a key's KV when it changes);
the whole listing once per view version, yielding every ``step`` children; and
a which-children reply is encoded once for all the readers of the same second
(the figures in it are that fresh anyway, see ``Figures``).

Rows handed out are shared: a caller copies a row before changing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .membership import decode
from .placement import instance_key
from .protocol import Encoded, dumps
from .spec import MAX_REPLICAS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable, Mapping

    from .etcd import KV
    from .figures import Figures
    from .placement import Instance
    from .reconciler import Reconciler
    from .view import ClusterView

Row = dict[str, Any]


@dataclass(slots=True)
class Entry:
    """One child's rows (the master's first) and what they were built from."""

    spec_kv: KV
    argv: Any  # as stored (an invalid spec still lists); the rest of the spec is in rows
    placed: list[Instance] | None
    claims: tuple[KV | None, ...]  # per replica
    context: object  # the placement inputs when a row is pending (its reason), else None
    rows: list[Row]


class Listing:
    """Rows per child and for every child, cached; replies encoded once per second.

    Args:
        node: this node's name (its children's figures are measured here).
        fresh: seconds a which-children reply is reused while the view is unchanged.
        step: children (or rows) handled between two checkpoints of the event loop.
    """

    def __init__(
        self,
        *,
        node: str,
        view: ClusterView,
        reconciler: Reconciler,
        figures: Figures,
        fresh: float = 1.0,
        step: int = 100,
    ) -> None:
        self.node = node
        self.view = view
        self.reconciler = reconciler
        self.figures = figures
        self.fresh = fresh
        self.step = step
        self._entries: dict[str, Entry] = {}
        self._all: tuple[int, list[Row]] | None = None  # (view version, rows)
        # One build (and one encoding) at a time: the others wait, then reuse it.
        self._building = trio.Lock()
        self._encoding = trio.Lock()
        self._pending: tuple[object, Any, Any] | None = None  # (inputs, groups, nodes)
        self._published: dict[str, tuple[KV | None, dict[str, Any]]] = {}
        self._replies: dict[Hashable, tuple[int, float, Encoded]] = {}

    # -- rows -------------------------------------------------------------------------

    def child(self, child_id: str, spec_kv: KV) -> Entry:
        """The rows of one child (``spec_kv`` may be newer than the view)."""
        if len(self._entries) > 2 * self.view.count("children") + 64:
            self._prune()  # children deleted while nobody listed them all
        return self._entry(child_id, spec_kv, self.reconciler.place())

    async def everything(self) -> list[Row]:
        """Every child's rows, by child id."""
        if self._all is not None and self._all[0] == self.view.version:
            return self._all[1]
        async with self._building:
            version = self.view.version
            if self._all is not None and self._all[0] == version:
                return self._all[1]  # built while we waited
            children = sorted(self.view.by_kind("children").items())
            rows: list[Row] = []
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
        for gone in self._entries.keys() - self.view.live("children").keys():
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
                self.view.get("claims", instance_key(child_id, replica)) is not kv
                for replica, kv in enumerate(entry.claims)
            )
        ):
            entry = self._entries[child_id] = self._build(child_id, spec_kv, placement)
        return entry

    def _inputs(self) -> object:
        self.reconciler.place()  # brings them up to date (a no-op unless the view changed)
        return self.reconciler.placement_inputs

    def _build(self, child_id: str, spec_kv: KV, placement: list[Instance] | None) -> Entry:
        spec = decode(spec_kv)
        owners = [i.node for i in placement or ()]
        replicas = spec.get("replicas", 1) if isinstance(spec.get("replicas"), int) else 1
        replicas = min(max(replicas, 1), MAX_REPLICAS)  # a corrupt spec: never a huge range
        claims = tuple(self.view.get("claims", instance_key(child_id, r)) for r in range(replicas))
        context = None
        rows = []
        for replica, claim_kv in enumerate(claims):
            key = instance_key(child_id, replica)
            claim = decode(claim_kv)
            row = {
                "id": child_id,
                "instance": key,
                "replica": replica,
                "role": "master" if replica == 0 else "replica",
                "group": spec.get("group"),
                "restart": spec.get("restart", "permanent"),
                "owner": owners[replica] if replica < len(owners) else None,
                "node": claim.get("node"),
                "pid": claim.get("pid"),
                "state": claim.get("state", "pending") if claim_kv is not None else "pending",
                "restarts": claim.get("restarts", 0),
                "started": claim.get("started"),
                "reason": claim.get("reason", ""),
                "fence": claim_kv.create_revision if claim_kv is not None else None,
                "rss": None,
                "cpu": None,
            }
            if claim_kv is None:
                context = self._inputs()
                self._why_not_running(row, child_id, replica, len(owners))
            rows.append(row)
        return Entry(spec_kv, spec.get("argv"), placement, claims, context, rows)

    def _why_not_running(self, row: Row, child_id: str, replica: int, placed: int) -> None:
        specs = self.reconciler.specs()
        if child_id not in specs:
            if self.view.get("children", child_id) is None:
                # Just created (start-child answers before its watch event arrives).
                row["reason"] = "just created: not placed yet"
            else:
                row["state"], row["reason"] = (
                    "invalid",
                    "the spec in etcd is not valid (see the daemon log)",
                )
            return
        # Groups and nodes once per change of them, not per pending row (after a
        # failover or before the first node is up, every row is pending).
        inputs = self._inputs()
        if self._pending is None or self._pending[0] is not inputs:
            self._pending = (inputs, self.reconciler.groups(), self.reconciler.nodes())
        _, groups, nodes = self._pending
        reason = self.reconciler.why_pending(specs[child_id], groups, nodes)
        if reason.startswith("group") and "failed" in reason:
            row["state"] = "failed"
        elif placed and replica >= placed:
            row["state"] = "degraded"
            reason = f"only {placed} eligible node(s) for {specs[child_id].replicas} replicas"
        row["reason"] = reason

    # -- figures ----------------------------------------------------------------------

    async def with_figures(self, rows: list[Row]) -> list[Row]:
        """``rows`` with RSS and CPU per instance: measured now for this node's
        children, else the figures their node last published (every
        ``figures_interval``). A row with figures is a copy."""
        out = []
        for i, row in enumerate(rows):
            if i and i % self.step == 0:
                await trio.lowlevel.checkpoint()  # a stale reading costs a /proc read per row
            node = row["node"]
            if node == self.node:
                measured = self.figures.of(row.get("pid"))
            elif node is None:
                measured = None
            else:
                measured = self._published_by(node).get(row["instance"])
            if measured:
                row = {**row, "rss": measured[0], "cpu": measured[1]}
            out.append(row)
        return out

    def _published_by(self, node: str) -> dict[str, Any]:
        """A node's published figures, decoded once per publication."""
        kv = self.view.get("nodes", node, "figures")
        known = self._published.get(node)
        if known is None or known[0] is not kv:
            if len(self._published) > 2 * self.view.count("nodes", "alive") + 16:
                self._published.clear()  # nodes that left
            known = self._published[node] = (kv, decode(kv))
        return known[1]

    # -- replies ----------------------------------------------------------------------

    async def reply(self, key: Hashable, build: Callable[[], Awaitable[list[Row]]]) -> Encoded:
        """``build()``'s rows, encoded; the same bytes again for the same ``key``
        while the view is unchanged, for at most ``fresh`` seconds."""
        cached = self._replies.get(key)
        if (
            cached is not None
            and cached[0] == self.view.version
            and time.monotonic() - cached[1] < self.fresh
        ):
            return cached[2]
        async with self._encoding:
            version, now = self.view.version, time.monotonic()
            cached = self._replies.get(key)
            if cached is not None and cached[0] == version and now - cached[1] < self.fresh:
                return cached[2]  # encoded while we waited
            rows = await build()
            parts = []
            for start in range(0, len(rows), self.step):
                if start:
                    await trio.lowlevel.checkpoint()
                parts.append(dumps(rows[start : start + self.step])[1:-1])
            encoded = Encoded(b"[" + b",".join(parts) + b"]")
            if len(self._replies) >= 64:
                self._replies.clear()  # many different filters: keep it bounded
            self._replies[key] = (version, now, encoded)
            return encoded
