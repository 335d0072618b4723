"""What should run where, decided from the cluster's records alone (no I/O, no clock
of its own): the half of reconciling that decides, apart from the half that acts
(``reconciler.py``).

Inputs are the specs, the groups, the nodes in the ring and the drains; outputs
are each spec's placed instances, why a child runs nowhere, and for one node the
plan of a pass: what to stop, what moves away (paced) and what to start. Every
daemon computes the placement from the same records, so all agree.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple, cast

from .placement import Instance, NodeInfo, Placer
from .ring import hash64

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Reversible

    from .records import Alive, Claim
    from .ring import Ring
    from .spec import ChildSpec, GroupRecord


def eligible_nodes(alive: Mapping[str, Alive], draining: Collection[str]) -> dict[str, NodeInfo]:
    """The nodes children may be placed on: in the ring and not draining."""
    return {
        name: NodeInfo(name, record.labels, frozenset(record.groups))
        for name, record in alive.items()
        if name not in draining
    }


def blocked(spec: ChildSpec, groups: Mapping[str, GroupRecord]) -> str:
    """Why a child may not run anywhere now, whatever the nodes ("" if it may)."""
    if spec.group is None:
        return ""
    record = groups.get(spec.group)
    if record is None:
        return f"group {spec.group} does not exist"
    if record.state == "failed":
        return f"group {spec.group} failed: {record.reason}"
    return ""


@dataclass(frozen=True, slots=True)
class Inputs:
    """What placement depends on besides the spec itself."""

    nodes: Mapping[str, NodeInfo]  # eligible: in the ring, not draining
    groups: Mapping[str, GroupRecord]
    draining: frozenset[str] = frozenset()  # in the ring but draining (for the reasons)

    def token(self) -> Token:
        """Equal for equal inputs: placements computed from equal inputs are equal."""
        return Token(
            frozenset(
                (n, tuple(sorted(i.labels.items())), i.groups) for n, i in self.nodes.items()
            ),
            frozenset(self.groups.items()),
        )


class Token(NamedTuple):
    """What placement depends on besides the specs, comparable (``Inputs.token``)."""

    nodes: frozenset[tuple[str, tuple[tuple[str, str], ...], frozenset[str]]]
    groups: frozenset[tuple[str, GroupRecord]]


def why_pending(spec: ChildSpec, inputs: Inputs, placer: Placer) -> str:
    """Why a child has no instance running (it is not placed, or not claimed yet)."""
    if reason := blocked(spec, inputs.groups):
        return reason
    if not inputs.nodes and inputs.draining:
        return "every node in the ring is draining"
    group = inputs.groups.get(spec.group) if spec.group else None
    return placer.why_unplaced(spec, inputs.nodes, group) or "waiting for its node to claim it"


# Placer.needs of a child with no ``on`` labels and no group (or an unrestricted one).
_NO_NEEDS: tuple[object, ...] = ((), None)


class DesiredState:
    """Every runnable spec's instances (spec id -> instances, master first), kept
    from call to call: only the specs named as changed are placed again, and all
    of them when the groups change or several nodes change at once. When one node
    joins, leaves or drains, only the children it gains or loses are placed again
    (consistent hashing moves no other child): on a leave, those on the node; on a
    join, those whose hash falls in the node's arcs of the ring, plus every child
    with replicas or needs (their rings differ; they are few). A spec's list is
    replaced, never changed, when it is placed again (readers compare them by
    identity); when a pass places a spec on the same nodes as before, its list is
    kept.
    """

    def __init__(self, placer: Placer | None = None) -> None:
        self.placer = placer or Placer()
        self._token: Token | None = None
        self._inputs: Inputs | None = None  # of the last update (its token is _token)
        self._placed: dict[str, list[Instance]] = {}
        # node -> its instances by key: what ``on_node`` answers without a pass over
        # every child (each claim anywhere wakes a pass on every node).
        self._by_node: dict[str, dict[str, Instance]] = {}
        # Children placed with replicas or needs (placed again on every join).
        self._special: dict[str, None] = {}
        # Placed ids sorted by hash (finds the children a joining node takes; made
        # at a join), and the ids placed since it was made.
        self._hashes: tuple[array[int], list[str]] | None = None
        self._unhashed: dict[str, None] = {}
        # Each need's eligible nodes as last placed: the rings the placer keeps.
        self._eligible: dict[tuple[object, ...], frozenset[str]] = {}

    @property
    def token(self) -> object:
        """The inputs of the last ``update`` (a new object when they changed)."""
        return self._token

    @property
    def placed(self) -> Mapping[str, list[Instance]]:
        return MappingProxyType(self._placed)

    def update(
        self, specs: Mapping[str, ChildSpec], changed: Iterable[str] | None, inputs: Inputs
    ) -> Mapping[str, list[Instance]]:
        """Place ``specs`` (in start order). ``changed``: the ids that may differ
        since the last call (None: all of them). A spec placed anew goes last, as a
        new spec does in ``specs``."""
        if inputs is self._inputs and self._token is not None:
            token = self._token  # the same inputs object (the reconciler keeps it)
        else:
            token = inputs.token()
            if token == self._token:
                token = self._token  # the same object while the inputs are the same
        self._inputs = inputs
        previous = self._placed
        moved = None if changed is None else self._moved(token, inputs)
        if moved is None or changed is None:  # the first pass, or more than one node changed
            self._placed, self._by_node, self._special = {}, {}, {}
            self._hashes, self._unhashed, self._eligible = None, {}, {}
            todo: Iterable[str] = list(specs)
        else:
            todo = list(dict.fromkeys([*moved, *changed]))
            new = {i for i in todo if i not in self._placed and i in specs}
            if new:
                # New specs are placed (and so started) in ``specs``' order. They are
                # its last ones (a spec created goes last): look for them from the
                # end, not over every spec (a pass per batch of 1,000 created).
                ordered = []
                for i in reversed(cast("Reversible[str]", specs)):
                    if i in new:
                        ordered.append(i)
                        if len(ordered) == len(new):
                            break
                todo = ordered[::-1] + [i for i in todo if i not in new]
        # Eligible nodes and their ring per distinct need (labels, restricted group):
        # found once a pass, not once a child (a pass over every node for each of
        # 100,000; and finding a cached ring compares two sets of every node).
        rings: dict[tuple[object, ...], Ring] = {}
        for child_id in todo:
            spec = specs.get(child_id)
            if spec is None or blocked(spec, inputs.groups):
                self._unindex(self._placed.pop(child_id, None))
                self._special.pop(child_id, None)
                continue
            group = inputs.groups.get(spec.group) if spec.group else None
            # Most children need nothing: skip building the key that says so.
            need = _NO_NEEDS if not spec.on and group is None else self.placer.needs(spec, group)
            if need != _NO_NEEDS or spec.replicas != 1:
                self._special[child_id] = None
            else:
                self._special.pop(child_id, None)
            ring = rings.get(need)
            if ring is None:
                among = self._eligible[need] = self.placer.eligible(spec, inputs.nodes, group)
                ring = rings[need] = self.placer.ring(among)
            owners = ring.owners(spec.id, spec.replicas)  # as Placer.owners places it
            # Most children keep their nodes when one node joins or leaves: keep
            # their lists (no new Instances; readers see them unchanged).
            kept = previous.get(child_id)
            if kept and kept[0].spec is spec and [i.node for i in kept] == owners:
                placed = kept
                if self._placed is previous:
                    continue  # indexed already
            else:
                placed = [Instance(spec, r, node) for r, node in enumerate(owners)]
                if self._placed is previous:
                    self._unindex(kept)
            if self._hashes is not None and child_id not in previous:
                self._unhashed[child_id] = None
            self._placed[child_id] = placed
            for instance in placed:
                self._by_node.setdefault(instance.node, {})[instance.key] = instance
        self._token = token
        self.placer.retain(set(self._eligible.values()))
        return self.placed

    def _moved(self, token: Token, inputs: Inputs) -> list[str] | None:
        """The children that may move when the inputs change from the last pass's
        to ``token`` ([] if they are the same); None when every child may (more
        than one node changed, or a group did)."""
        if token is self._token:
            return []
        if self._token is None:
            return None
        if token.groups != self._token.groups:
            return None
        came, gone = token.nodes - self._token.nodes, self._token.nodes - token.nodes
        if len(came) + len(gone) != 1:
            return None  # a node's labels changed, or several nodes at once
        if gone:
            # Only the children a leaving node ran move, whatever their ring.
            ((name, *_),) = gone
            return list(dict.fromkeys(i.spec.id for i in self._by_node.get(name, {}).values()))
        ((name, *_),) = came
        everyone = self._eligible[_NO_NEEDS] = frozenset(inputs.nodes)
        ring = self.placer.ring(everyone)  # the ring of plain children
        if self._hashes is None or len(self._unhashed) > len(self._placed) // 8:
            pairs = sorted((hash64(i), i) for i in self._placed)
            self._hashes = array("Q", [h for h, _ in pairs]), [i for _, i in pairs]
            self._unhashed = {}
        hashes, ids = self._hashes
        taken: list[str] = []
        for lo, hi in ring.arcs(name):
            taken += ids[bisect_left(hashes, lo) : bisect_left(hashes, hi)]
        return [*self._special, *self._unhashed, *taken]

    def _unindex(self, instances: list[Instance] | None) -> None:
        for instance in instances or ():
            mine = self._by_node.get(instance.node)
            if mine is not None and mine.pop(instance.key, None) is not None and not mine:
                del self._by_node[instance.node]

    def on_node(self, node: str) -> dict[str, Instance]:
        """The instances ``node`` should run, by instance key, in start order (an
        instance placed again since goes last)."""
        return dict(self._by_node.get(node, {}))


@dataclass(slots=True)
class Plan:
    """One pass on one node: what to stop (``restarts``: its spec is gone or blocked;
    ``updates``: its spec changed, restarted one instance at a time, see ``rollout``;
    ``moves``: it belongs on another node now) and what to claim and start."""

    restarts: list[str] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)
    starts: list[Instance] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)  # its spec changed: a rolling restart


def plan(
    desired: Mapping[str, Instance],
    running: Mapping[str, ChildSpec],
    specs: Mapping[str, ChildSpec],
    groups: Mapping[str, GroupRecord],
    held_elsewhere: Callable[[str], bool],
) -> Plan:
    """Compare what should run here (``desired``) with what runs (``running``:
    instance key -> the spec it runs). ``held_elsewhere(key)``: its claim is still
    another node's (wait for it to be released before starting it here)."""
    out = Plan()
    for key, spec in running.items():
        instance = desired.get(key)
        if instance is not None and instance.spec != spec:
            out.updates.append(key)  # its spec changed: restart it here, in turn
        elif instance is None:
            # Still a valid, runnable spec: ownership moved (paced); else it is gone.
            current = specs.get(spec.id)
            if current is not None and not blocked(current, groups):
                out.moves.append(key)
            else:
                out.restarts.append(key)
    out.starts = [
        instance
        for key, instance in desired.items()
        if key not in running and not held_elsewhere(key)
    ]
    return out


class MovePacer:
    """A token bucket of ``rate`` moves a second (0: unpaced), on ``clock``."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.clock = clock
        self._tokens = max(rate, 1.0)
        self._time = clock()

    def take(self, wanted: int) -> tuple[int, float]:
        """How many of ``wanted`` moves may go now, and in how many seconds to ask
        again for the rest (inf when none is left)."""
        if self.rate <= 0 or wanted == 0:
            return wanted, math.inf
        now = self.clock()
        self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._time) * self.rate)
        self._time = now
        # The epsilon: a full period's refill computed as 0.9999999999999996 must
        # still grant a move (int() would make it a whole period late).
        granted = min(wanted, int(self._tokens + 1e-9))
        self._tokens -= granted
        return granted, (1 / self.rate if granted < wanted else math.inf)


def retries_due(groups: Mapping[str, GroupRecord], now: float) -> tuple[list[str], float]:
    """Failed groups whose ``retry_after`` has passed, and the unix time of the
    next retry not yet due (inf if none)."""
    due, next_due = [], math.inf
    for name, record in groups.items():
        retry = record.spec.retry_after
        if record.state != "failed" or retry is None:
            continue
        at = (record.since or 0) + retry
        if now >= at:
            due.append(name)
        else:
            next_due = min(next_due, at)
    return due, next_due


@dataclass(frozen=True, slots=True)
class Running:
    """What is known of one placed instance, from its claim (or, on its own node,
    from its supervisor): which spec it runs, and whether it is up and ready."""

    digest: str
    running: bool
    ready: bool
    halted: str = ""
    settled: bool = False  # stopped or failed: it will not come up by itself


def running_from(claim: Claim) -> Running:
    """What a claim says of its instance (every node reads the same)."""
    return Running(
        claim.digest,
        claim.state == "running",
        claim.ready,
        claim.halted,
        claim.state in ("stopped", "failed"),
    )


@dataclass(frozen=True, slots=True)
class Rollout:
    """Where moving a child's instances to its current spec stands.

    ``state``: "done" (every instance runs the spec), "in progress", or "halted"
    (an instance of the current spec failed before it was ready: ``reason``).
    ``next``: the one replica that may be restarted onto the spec now, if any.
    """

    state: str
    reason: str = ""
    next: int | None = None
    outdated: tuple[int, ...] = ()


def rollout(digest: str, instances: Mapping[int, Running | None]) -> Rollout:
    """One instance at a time, lowest replica first: an outdated instance is
    restarted only while every other placed instance runs and is ready (or is
    stopped or failed for good), so that at most one is down for the update; an
    outdated instance that is down already goes first. ``instances``: replica ->
    its state (None: not running anywhere). A child with one instance is simply
    restarted."""
    outdated = tuple(sorted(r for r, i in instances.items() if i and i.digest != digest))
    if not outdated:
        return Rollout("done")
    halted = next(
        (i.halted for i in instances.values() if i and i.digest == digest and i.halted), ""
    )
    if halted:
        return Rollout("halted", halted, None, outdated)
    # An outdated instance that is down anyway goes first: restarting it costs
    # nothing in availability, and waiting for it would wait for ever.
    down = [r for r in outdated if not instances[r].running]  # type: ignore[union-attr]
    if down:
        return Rollout("in progress", "", down[0], outdated)
    first = outdated[0]
    # Waited for: every other instance that may yet come up (one stopped or failed
    # for good would never let the rollout go on).
    others_ready = all(
        i is not None and (i.settled or (i.running and i.ready))
        for r, i in instances.items()
        if r != first
    )
    return Rollout("in progress", "", first if others_ready else None, outdated)
