"""Consistent-hash ring mapping keys to owning nodes.

Pure and deterministic: the same node set and vnode count give the same
owners in every process, on every host, regardless of ``PYTHONHASHSEED``.

Two ways to place keys:

- :meth:`Ring.owner` / :meth:`Ring.owners` place one key from the ring alone
  (Karger et al. consistent hashing with virtual nodes). A join or leave moves
  only the keys the changed node gains or loses, but per-node counts carry
  Poisson noise: at 100 keys per node the busiest node has ~1.3 x the mean.
- :meth:`Ring.assign` places a whole key set with *bounded loads* (Mirrokni,
  Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018):
  no node takes more than ``balance`` x the mean, and a key a full node
  cannot take goes on down its ring walk. Which keys a full node keeps is
  settled by deferred acceptance (Gale-Shapley), so it does not depend on
  the order keys are given in. The price is that the answer for one key
  depends on every other key: see :meth:`Ring.assign` for what that moves
  and why it is still the same on every daemon.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from fractions import Fraction
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    from collections.abc import Iterable

# 1000 points per node keep every node's share of the hash space within a few
# percent of 1/N (std ~1/sqrt(vnodes): 3% at 1000, 8% at 160). Share noise adds
# to the Poisson noise of key counts, and under bounded loads every node pushed
# to its capacity costs extra moves on a join or leave, so it is worth paying
# ~1 ms of build time per node (the reconciler caches the ring per node set).
DEFAULT_VNODES = 1000
# Max keys per node over the mean for Ring.assign (the bound).
DEFAULT_BALANCE = 1.10

_MASK64 = (1 << 64) - 1


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


def _priority(key: str) -> tuple[int, str]:
    """Rank of a key among those asking one node in the same round; lower wins.

    The key hash rotated by 32 bits: its low half decides, which is
    independent of the high half that decides the key's ring position, so
    the keys a node spills are not the ones on one side of its arcs.
    The key itself breaks (vanishingly rare) hash ties.
    """
    h = hash64(key)
    return ((h << 32) | (h >> 32)) & _MASK64, key


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

    __slots__ = ("_index", "_names", "_nodes", "_points", "_vnodes")

    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self._nodes = frozenset(nodes)
        self._vnodes = vnodes
        # Sorted names give every node the same index in every process; the
        # ring stores indices so Ring.assign can count loads in a list.
        self._names = tuple(sorted(self._nodes))
        digest = xxhash.xxh3_64_intdigest
        points: list[int] = []
        index: list[int] = []
        for i, name in enumerate(self._names):
            raw = name.encode("utf-8", "surrogatepass")
            # A seed per point instead of hashing f"{name}#{i}": no string to
            # build (~4 x faster), and xxh3 mixes the seed into every output bit.
            points += [digest(raw, seed) for seed in range(vnodes)]
            index += [i] * vnodes
        # sorted() is stable: equal points (vanishingly rare) keep name order,
        # so ties break the same way everywhere. Sorting indices by point beats
        # sorting (point, node) tuples by ~3 x.
        order = sorted(range(len(points)), key=points.__getitem__)
        # Parallel lists: bisect runs on plain ints, which is fastest.
        self._points = [points[j] for j in order]
        self._index = [index[j] for j in order]

    @property
    def nodes(self) -> frozenset[str]:
        """The set of nodes on the ring."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Virtual points per node."""
        return self._vnodes

    def owners(self, key: str, n: int = 1, *, master: str | None = None) -> list[str]:
        """Return up to ``n`` distinct nodes for a key, master first.

        This is the key's ring walk, the same for every key set: use it for
        replicas. Under :meth:`assign` the master is whatever node the
        assignment chose (a node at capacity passes keys on down their walk);
        pass it as ``master`` to get the replicas around it.

        Args:
            key: The key to place.
            n: How many distinct owners to return.
            master: Put this node first and fill the rest from the walk,
                skipping it. ``None``: the walk's first node is the master.

        Returns:
            ``min(n, len(self))`` distinct nodes; ``[]`` if the ring is empty.

        Raises:
            ValueError: If ``n`` is negative or ``master`` is not on the ring.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        names = self._names
        skip = -1
        if master is not None:
            if master not in self._nodes:
                raise ValueError(f"master {master!r} is not on the ring")
            skip = names.index(master)
        # Capping at the node count guarantees the walk below terminates.
        want = min(n, len(names))
        if want == 0:
            return []
        index = self._index
        size = len(index)
        i = bisect_right(self._points, hash64(key))
        if want == 1 and skip < 0:
            return [names[index[i - size]]]
        found: list[int] = [] if skip < 0 else [skip]
        # A list beats a set here: ``want`` is small (replication factor).
        while len(found) < want:
            # One lap at most (want <= N), so i < 2 * size and i - size is a
            # valid index (negative before the wrap): no modulo needed.
            j = index[i - size]
            if j not in found:
                found.append(j)
            i += 1
        return [names[j] for j in found]

    def owner(self, key: str) -> str | None:
        """Return the primary owner of a key from the ring alone, or None if empty.

        Independent of every other key; see :meth:`assign` for the balanced
        placement of a whole key set.
        """
        if not self._index:
            return None
        index = self._index
        # bisect_right returns 0..size; index[size - size] wraps to the first point.
        return self._names[index[bisect_right(self._points, hash64(key)) - len(index)]]

    def capacity(self, count: int, *, balance: float = DEFAULT_BALANCE) -> int:
        """Return the most keys :meth:`assign` puts on one node, for ``count`` keys.

        ``floor(balance * count / N)``, raised to ``ceil(count / N)`` when that
        is smaller (every key must fit), so ``max / mean <= balance`` whenever
        ``balance * count / N >= ceil(count / N)``, e.g. always from 10 keys
        per node at the default balance.

        Args:
            count: Number of distinct keys to place.
            balance: Allowed max / mean keys per node; ``math.inf`` disables
                the bound.

        Returns:
            The per-node capacity; 0 if the ring is empty or ``count`` is 0.

        Raises:
            ValueError: If ``count`` is negative or ``balance`` is not >= 1.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if not balance >= 1.0:  # also rejects NaN
            raise ValueError(f"balance must be >= 1, got {balance}")
        nodes = len(self._names)
        if nodes == 0 or count == 0:
            return 0
        if math.isinf(balance):
            return count
        # Exact rational arithmetic on the decimal the caller wrote (repr is the
        # shortest one that round-trips: 1.15, not 1.149999...): the floor then
        # never passes the bound, and every host gives the same answer.
        bound = math.floor(Fraction(repr(float(balance))) * count / nodes)
        return min(count, max(bound, -(-count // nodes)))

    def assign(self, keys: Iterable[str], *, balance: float = DEFAULT_BALANCE) -> dict[str, str]:
        """Place a whole key set with bounded loads: at most :meth:`capacity` keys per node.

        Every key asks the nodes of its ring walk (:meth:`owners` order) in
        turn, starting with its :meth:`owner`, until one takes it. A node
        takes every key that asks it while it has room; when more ask than
        fit, it prefers keys for which it comes earlier in their walk, then a
        fixed pseudo-random order (a hash of the key, then the key). That is
        Gale-Shapley deferred acceptance, so the result is the unique
        key-optimal stable assignment. A node's own keys are never pushed
        out by keys spilled from other nodes: only nodes whose own keys
        exceed capacity spill, and they spill as few keys as possible.

        The result is a pure function of ``(self.nodes, self.vnodes,
        set(keys), balance)``: iteration order and duplicates do not matter,
        so every daemon that sees the same nodes and the same child ids
        computes the same assignment. The price is that adding or removing
        one key can move other keys. Bound (property-tested): at most
        ``N - 1`` of them while the capacity stays the same. Why: round by
        round, the runs with and without the key differ by one unit, one
        extra key asking or one node with a slot less. A node that must turn
        away a key it used to keep is full from then on in both runs, so it
        never turns away another, and the node that finally absorbs the unit
        turns away none. When the capacity steps (once every ~``N /
        balance`` keys), add at most the keys that had spilled: a higher
        capacity only lets keys move up their walk (deferred acceptance is
        monotone in capacities). Measured at 10,000 keys on
        100 nodes: under one other key per change on average, at most 25
        (0.25%) at a capacity step; none at 3 or 10 nodes.

        A node join or leave moves the keys the node gains or loses, plus
        spilled keys that nodes at capacity take back or give up (the
        capacity moves with N too): ideal while no node reaches capacity
        (3 or 10 nodes at 10,000 keys), +15-35% at 100 keys per node, where
        Poisson noise alone puts ~15% of the nodes over 1.1 x the mean.

        Args:
            keys: The keys to place.
            balance: Allowed max / mean; ``math.inf`` gives :meth:`owner`
                for every key.

        Returns:
            Key to node for every distinct key; empty if the ring is empty.

        Raises:
            ValueError: If ``balance`` is not >= 1.
        """
        unique = set(keys)
        cap = self.capacity(len(unique), balance=balance)
        if cap == 0:
            return {}
        points, index, names = self._points, self._index, self._names
        size = len(index)
        digest = xxhash.xxh3_64_intdigest
        # Round 0: every key asks its owner. hash64 inlined: this loop is
        # most of the time assign takes.
        asked: list[list[str]] = [[] for _ in names]
        for key in unique:
            h = digest(key.encode("utf-8", "surrogatepass"))
            asked[index[bisect_right(points, h) - size]].append(key)
        load = [0] * len(names)
        out: dict[str, str] = {}
        spilled: list[str] = []
        for j, mine in enumerate(asked):
            if len(mine) > cap:
                mine.sort(key=_priority)
                spilled += mine[cap:]
                del mine[cap:]
            load[j] = len(mine)
            out.update(dict.fromkeys(mine, names[j]))
        # Round r: each key still out asks the next node of its walk it has
        # not asked yet. Everything a node took in an earlier round ranks
        # above every key asking now, so nothing is ever taken back and a
        # node only compares the keys of one round.
        walkers = []
        for key in spilled:
            i = bisect_right(points, hash64(key))
            walkers.append((key, i, {index[i - size]}))
        while walkers:
            rounds: dict[int, list[tuple[str, int, set[int]]]] = {}
            for key, i, seen in walkers:
                j = index[i - size]
                # At most N asks in all (total capacity >= number of keys),
                # so one lap: i < 2 * size and i - size stays a valid index.
                while j in seen:
                    i += 1
                    j = index[i - size]
                seen.add(j)
                rounds.setdefault(j, []).append((key, i, seen))
            walkers = []
            for j, asking in rounds.items():
                room = cap - load[j]
                if len(asking) > room:
                    asking.sort(key=lambda walker: _priority(walker[0]))
                    walkers += asking[room:]
                    del asking[room:]
                load[j] += len(asking)
                out.update(dict.fromkeys([walker[0] for walker in asking], names[j]))
        return out

    def shares(self) -> dict[str, float]:
        """Return the fraction of the hash space each node owns as primary.

        Exact (no sampling), so it measures vnode balance directly.

        Returns:
            Node name to share in ``[0, 1]``; shares sum to 1. Empty if no nodes.
        """
        arcs = [0] * len(self._names)
        points = self._points
        # A point owns the arc back to its predecessor; the first wraps around.
        for i, j in enumerate(self._index):
            prev = points[i - 1] if i else points[-1] - 2**64
            arcs[j] += points[i] - prev
        return {name: arc / 2**64 for name, arc in zip(self._names, arcs, strict=True)}

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
