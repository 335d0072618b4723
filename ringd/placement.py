"""Placement: which nodes run which child instances (pure: no I/O, no clock).

The ring for a child is built over the nodes it may run on: online, not
draining, whose labels include the child's affinity (``on``), and, for a
restricted group, that declare the group. ``replicas: n`` places n instances on
the ring's first n distinct nodes; the first is the master. Every daemon computes
this from the same etcd view, so all agree (docs/design.md, "Invariants").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ring import Ring

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from .spec import ChildSpec, GroupRecord


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What placement needs to know about an online node."""

    name: str
    labels: Mapping[str, str]
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a child, placed on a node."""

    spec: ChildSpec
    replica: int
    node: str

    @property
    def key(self) -> str:
        return instance_key(self.spec.id, self.replica)

    @property
    def role(self) -> str:
        return "master" if self.replica == 0 else "replica"


def instance_key(child_id: str, replica: int) -> str:
    """``id`` for the master, ``id/<n>`` for the n-th replica (its claim is ``claims/<key>``)."""
    return child_id if replica == 0 else f"{child_id}/{replica}"


def split_key(key: str) -> tuple[str, int]:
    child_id, _, replica = key.partition("/")
    return child_id, int(replica or 0)


# Up to this many nodes joined or left since a cached ring: the new ring is made
# from it (Ring.changed, ~25-50 ms a node at 1,000 nodes) rather than built anew
# (~0.5-0.8 s at 1,000 nodes).
MAX_CHANGED = 8


# The rings the placer keeps, in points (12 bytes each): the current ring of each
# need and the previous ones, which a later join or leave is made from. At 1,000
# nodes a ring is 1,000,000 points: two of them and a few smaller ones.
MAX_POINTS = 2_500_000


class Placer:
    """Computes placements, caching rings per set of eligible nodes (the most
    recently used, up to ``max_rings`` and ``max_points`` points in all). A new
    node set's ring is made from the cached ring closest to it when few nodes
    differ (a join, a leave), and built from scratch otherwise: both give the
    same ring."""

    def __init__(self, *, max_rings: int = 64, max_points: int = MAX_POINTS) -> None:
        self._rings: dict[frozenset[str], Ring] = {}
        self._max_rings = max(1, max_rings)
        self._max_points = max_points
        self._points = 0

    def ring(self, nodes: frozenset[str]) -> Ring:
        ring = self._rings.pop(nodes, None)
        if ring is not None:
            self._rings[nodes] = ring  # the most recently used goes last
            return ring
        base, differ = None, MAX_CHANGED + 1
        # Most recently used first: on a tie the latest ring is the base.
        for cached in reversed(self._rings.values()):
            # The sizes alone may rule it out before the sets are compared.
            if abs(len(cached.nodes) - len(nodes)) >= differ:
                continue
            count = len(cached.nodes ^ nodes)
            if count < differ:
                base, differ = cached, count
        ring = Ring(nodes) if base is None else Ring.changed(base, nodes)
        self._rings[nodes] = ring
        self._points += ring.points
        while len(self._rings) > 1 and (
            len(self._rings) > self._max_rings or self._points > self._max_points
        ):
            oldest = next(iter(self._rings))  # least recently used
            self._points -= self._rings.pop(oldest).points
        return ring

    def retain(self, current: Collection[frozenset[str]]) -> None:
        """Drop every cached ring but those of ``current`` node sets: a caller that
        knows which rings are current (one per need) frees the ones a join or leave
        replaced. A later change is made from the current ring, one node away; the
        replaced ones were ~30 MiB at 300 nodes after the cluster grew."""
        for nodes in [n for n in self._rings if n not in current]:
            self._points -= self._rings.pop(nodes).points

    @staticmethod
    def eligible(
        spec: ChildSpec, nodes: Mapping[str, NodeInfo], group: GroupRecord | None
    ) -> frozenset[str]:
        restricted = group is not None and group.spec.restricted
        return frozenset(
            name
            for name, info in nodes.items()
            if all(info.labels.get(k) == v for k, v in spec.on.items())
            and (not restricted or spec.group in info.groups)
        )

    def owners(
        self,
        spec: ChildSpec,
        nodes: Mapping[str, NodeInfo],
        group: GroupRecord | None,
        eligible: frozenset[str] | None = None,
    ) -> list[str]:
        """The nodes of the child's instances, master first (fewer than ``replicas``
        when fewer nodes are eligible: the child is degraded). ``eligible``: the
        nodes ``eligible`` gives, when the caller already knows them."""
        if eligible is None:
            eligible = self.eligible(spec, nodes, group)
        return self.ring(eligible).owners(spec.id, spec.replicas)

    @staticmethod
    def needs(spec: ChildSpec, group: GroupRecord | None) -> tuple[object, ...]:
        """What ``eligible`` depends on besides the nodes: equal needs, equal sets
        (most children need nothing: one set for all of them)."""
        restricted = group is not None and group.spec.restricted
        return (tuple(sorted(spec.on.items())), spec.group if restricted else None)

    @staticmethod
    def why_unplaced(
        spec: ChildSpec, nodes: Mapping[str, NodeInfo], group: GroupRecord | None
    ) -> str:
        """Why a child has no eligible node ("" if it has one)."""
        if not nodes:
            return "no node is online"
        if Placer.eligible(spec, nodes, group):
            return ""
        needs = [f"{k}={v}" for k, v in sorted(spec.on.items())]
        if group is not None and group.spec.restricted:
            needs.append(f"a node declaring group {spec.group}")
        return "no eligible node: needs " + ", ".join(needs)
