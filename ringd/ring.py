"""Consistent-hash ring mapping keys to owning nodes.

Pure and deterministic: the same node set and vnode count give the same
owners in every process, on every host, regardless of ``PYTHONHASHSEED``.

Karger et al. consistent hashing with virtual nodes: a key is owned by the
nodes met walking clockwise from its hash. A key's owners depend only on the
key and the node set, never on the other keys, so starting or deleting one
child never moves another; a join or leave moves only the keys the changed
node gains or loses. The price is that per-node counts carry Poisson noise:
at 100 keys per node the busiest node has ~1.3 x the mean (BENCHMARKS.md,
Ring). :mod:`ringd.placement` builds one ring per set of eligible nodes and
uses :meth:`Ring.owners` for every child; there is no load cap.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from functools import lru_cache
from itertools import repeat
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# 1000 points per node keep every node's share of the hash space within a few
# percent of 1/N (std ~1/sqrt(vnodes): 3% at 1000, 8% at 160), which adds to the
# Poisson noise of key counts. Building costs ~0.5-1 ms per node (the placer
# caches the ring per node set and makes a join's or leave's ring from the last
# one: Ring.changed). Changing the count moves every child once when
# a cluster upgrades, so it stays 1000 (BENCHMARKS.md, Ring: vnode counts).
DEFAULT_VNODES = 1000


def hash64(data: str | bytes) -> int:
    """Hash data to an unsigned 64-bit integer, stable across processes.

    Args:
        data: Text (encoded as UTF-8) or bytes to hash.

    Returns:
        The xxh3-64 digest as an int in ``[0, 2**64)``.
    """
    if isinstance(data, str):
        # surrogatepass: every str is hashable, even lone surrogates.
        data = data.encode("utf-8", "surrogatepass")
    return xxhash.xxh3_64_intdigest(data)


@lru_cache(maxsize=64)
def node_points(name: str, vnodes: int) -> Sequence[int]:
    """A node's points on the ring, sorted (stable: equal points keep seed order),
    8 bytes a point (an ``array``).

    Cached for the few nodes a join or leave touches (``Ring.changed``, ``arcs``),
    not for every node: at 1,000 nodes that was 8 MiB in every daemon to save
    0.17 s of hashing when a ring is built from scratch (0.58 s -> 0.77 s), which
    happens at start and when many nodes change at once.
    """
    raw = name.encode("utf-8", "surrogatepass")
    digest = xxhash.xxh3_64_intdigest
    # A seed per point instead of hashing f"{name}#{i}": no string to build
    # (~4 x faster), and xxh3 mixes the seed into every output bit.
    return array("Q", sorted([digest(raw, seed) for seed in range(vnodes)]))


# Owner names by number: a ring's owners are an array of these numbers (4 bytes a
# point instead of an 8-byte reference). Numbers are never reused, so a ring made
# from another (Ring.changed) keeps every other node's number.
_NAMES: list[str] = []
_NUMBERS: dict[str, int] = {}


def _number(name: str) -> int:
    number = _NUMBERS.get(name)
    if number is None:
        number = _NUMBERS[name] = len(_NAMES)
        _NAMES.append(name)
    return number


def _position(points: array[int], owners: array[int], point: int, number: int, lo: int) -> int:
    """Where node ``number``'s ``point`` is in a ring (at ``lo`` or after)."""
    pos = bisect_left(points, point, lo)
    while owners[pos] != number:  # an equal point of another node comes first
        pos += 1
    return pos


def _remove(
    points: array[int], owners: array[int], name: str, own: Sequence[int]
) -> tuple[array[int], array[int]]:
    """``points``/``owners`` without ``name``'s points ``own`` (sorted)."""
    number = _NUMBERS[name]
    keep = [0]  # alternating: start of a kept run, end of it (= a removed position)
    lo = 0
    for point in own:
        pos = _position(points, owners, point, number, lo)
        keep += (pos, pos + 1)
        lo = pos + 1
    keep.append(len(points))
    out_points, out_owners = array("Q"), array("I")
    for start, end in zip(keep[::2], keep[1::2], strict=True):
        out_points += points[start:end]
        out_owners += owners[start:end]
    return out_points, out_owners


def _insert(
    points: array[int], owners: array[int], name: str, own: Sequence[int]
) -> tuple[array[int], array[int]]:
    """``points``/``owners`` with ``name``'s points ``own`` (sorted) merged in, equal
    points ordered by node name as ``Ring()`` orders them."""
    number = _number(name)
    out_points, out_owners = array("Q"), array("I")
    size = len(points)
    lo = 0
    for point in own:
        pos = bisect_left(points, point, lo)
        while pos < size and points[pos] == point and _NAMES[owners[pos]] < name:
            pos += 1
        out_points += points[lo:pos]
        out_owners += owners[lo:pos]
        out_points.append(point)
        out_owners.append(number)
        lo = pos
    out_points += points[lo:]
    out_owners += owners[lo:]
    return out_points, out_owners


class Ring:
    """Immutable consistent-hash ring with virtual nodes.

    Node ``name`` is placed at the ``vnodes`` points
    ``xxh3_64(name, seed=i)`` for ``i`` in ``range(vnodes)``. A key is owned
    by the nodes met walking clockwise from ``hash64(key)``.

    Args:
        nodes: Node names; duplicates are ignored and order does not matter.
        vnodes: Virtual points per node; more points give better balance and
            cost ~1 us each to build.

    Raises:
        ValueError: If ``vnodes`` is less than 1.
    """

    __slots__ = ("_names", "_nodes", "_owners", "_points", "_vnodes")

    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self._nodes = frozenset(nodes)
        self._vnodes = vnodes
        self._names = tuple(sorted(self._nodes))
        points: array[int] = array("Q")
        owners: array[int] = array("I")
        for name in self._names:
            points.extend(node_points(name, vnodes))
            owners.extend(repeat(_number(name), vnodes))
        # sorted() is stable: equal points (vanishingly rare) keep the order of
        # sorted names, then of seeds, so ties break the same way everywhere (and
        # as Ring.changed breaks them). Sorting indices by point beats sorting
        # (point, node) tuples by ~3 x; each node's points are one sorted run.
        order = sorted(range(len(points)), key=points.__getitem__)
        # Parallel arrays (12 bytes a point: 12 MiB at 1,000 nodes, where lists of
        # ints and names took 56); bisect runs on them directly.
        self._points = array("Q", [points[j] for j in order])
        self._owners = array("I", [owners[j] for j in order])

    @classmethod
    def changed(cls, previous: Ring, nodes: Iterable[str]) -> Ring:
        """The ring over ``nodes`` (with ``previous``'s vnodes), made from
        ``previous`` by removing the points of the nodes that left and merging in
        those of the nodes that joined: ~25-50 ms a node at 1,000 nodes, where
        building from scratch costs 0.5-0.8 s. Identical to ``Ring(nodes)``: same
        points, same owners, same order of equal points (tests/test_ring.py).

        Args:
            previous: The ring to start from.
            nodes: The new node set.

        Returns:
            The new ring (``previous`` itself if the node set is the same).
        """
        new = frozenset(nodes)
        if new == previous._nodes:
            return previous
        vnodes = previous._vnodes
        ring = cls.__new__(cls)
        ring._nodes = new
        ring._vnodes = vnodes
        ring._names = tuple(sorted(new))
        points, owners = previous._points, previous._owners
        for name in sorted(previous._nodes - new):
            points, owners = _remove(points, owners, name, node_points(name, vnodes))
        for name in sorted(new - previous._nodes):
            points, owners = _insert(points, owners, name, node_points(name, vnodes))
        ring._points, ring._owners = points, owners
        return ring

    @property
    def nodes(self) -> frozenset[str]:
        """The set of nodes on the ring."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Virtual points per node."""
        return self._vnodes

    @property
    def points(self) -> int:
        """How many points the ring holds (12 bytes each)."""
        return len(self._points)

    def owners(self, key: str, n: int = 1) -> list[str]:
        """Return up to ``n`` distinct nodes for a key, master first.

        The key's ring walk: the first ``n`` distinct nodes met clockwise from
        ``hash64(key)``. Placement runs a child's ``replicas`` instances on
        ``owners(child_id, replicas)``; the first is the master.

        Args:
            key: The key to place.
            n: How many distinct owners to return.

        Returns:
            ``min(n, len(self))`` distinct nodes; ``[]`` if the ring is empty.

        Raises:
            ValueError: If ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        # Capping at the node count guarantees the walk below terminates.
        want = min(n, len(self._nodes))
        if want == 0:
            return []
        index = self._owners
        size = len(index)
        i = bisect_right(self._points, hash64(key))
        if want == 1:
            return [_NAMES[index[i - size]]]
        found: list[int] = []
        # A list beats a set here: ``want`` is small (replication factor).
        while len(found) < want:
            # One lap at most (want <= N), so i < 2 * size and i - size is a
            # valid index (negative before the wrap): no modulo needed.
            j = index[i - size]
            if j not in found:
                found.append(j)
            i += 1
        return [_NAMES[j] for j in found]

    def owner(self, key: str) -> str | None:
        """Return the key's first owner (``owners(key)[0]``), or None if the ring is empty."""
        index = self._owners
        if not index:
            return None
        # bisect_right returns 0..size; index[size - size] wraps to the first point.
        return _NAMES[index[bisect_right(self._points, hash64(key)) - len(index)]]

    def arcs(self, node: str) -> list[tuple[int, int]]:
        """The hash ranges ``node`` owns as first owner: ``lo <= hash64(key) < hi``
        for each ``(lo, hi)`` (the arc wrapping past 2**64 is split in two). A key
        whose hash is in none of them has another first owner. A bisect per point
        of ``node``: ~2 ms at 1,000 nodes."""
        if node not in self._nodes:
            return []
        number = _NUMBERS[node]
        points, owners = self._points, self._owners
        out = []
        i = -1
        for point in node_points(node, self._vnodes):  # sorted: each after the last
            i = _position(points, owners, point, number, i + 1)
            if i and points[i - 1] == point:
                continue  # equal points: the first one owns the arc, the rest nothing
            if i:
                out.append((points[i - 1], point))
            else:  # owns the keys past the last point and before the first
                out += [(points[-1], 2**64), (0, point)]
        return out

    def layout(self) -> tuple[list[int], list[str]]:
        """Every point and its owner, in ring order (for tests and tools)."""
        return list(self._points), [_NAMES[j] for j in self._owners]

    def shares(self) -> dict[str, float]:
        """Return the fraction of the hash space each node owns as primary.

        Exact (no sampling), so it measures vnode balance directly.

        Returns:
            Node name to share in ``[0, 1]``; shares sum to 1. Empty if no nodes.
        """
        arcs = dict.fromkeys(self._names, 0)
        points = self._points
        # A point owns the arc back to its predecessor; the first wraps around.
        for i, number in enumerate(self._owners):
            prev = points[i - 1] if i else points[-1] - 2**64
            arcs[_NAMES[number]] += points[i] - prev
        return {name: arc / 2**64 for name, arc in arcs.items()}

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._vnodes == other._vnodes and self._nodes == other._nodes

    def __hash__(self) -> int:
        return hash((self._nodes, self._vnodes))

    def __repr__(self) -> str:
        return f"Ring({sorted(self._nodes)!r}, vnodes={self._vnodes})"
