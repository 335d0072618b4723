"""Consistent-hash ring mapping keys to owning nodes.

Pure and deterministic: the same node set and vnode count give the same
owners in every process, on every host, regardless of ``PYTHONHASHSEED``.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    from collections.abc import Iterable

DEFAULT_VNODES = 160


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


class Ring:
    """Immutable consistent-hash ring with virtual nodes.

    Each node is placed at ``vnodes`` points ``hash64(f"{node}#{i}")``. A key
    is owned by the nodes met walking clockwise from ``hash64(key)``.

    Args:
        nodes: Node names; duplicates are ignored and order does not matter.
        vnodes: Virtual points per node; more points give better balance.

    Raises:
        ValueError: If ``vnodes`` is less than 1.
    """

    __slots__ = ("_nodes", "_owners", "_points", "_vnodes")

    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self._nodes = frozenset(nodes)
        self._vnodes = vnodes
        # Sorting by (point, node) breaks equal-point ties the same way
        # everywhere, independent of the input order.
        ring = sorted((hash64(f"{node}#{i}"), node) for node in self._nodes for i in range(vnodes))
        # Parallel lists: bisect runs on plain ints, which is fastest.
        self._points = [point for point, _ in ring]
        self._owners = [node for _, node in ring]

    @property
    def nodes(self) -> frozenset[str]:
        """The set of nodes on the ring."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Virtual points per node."""
        return self._vnodes

    def owners(self, key: str, n: int = 1) -> list[str]:
        """Return up to ``n`` distinct nodes for a key, primary first.

        Args:
            key: The key to place.
            n: How many distinct owners to return.

        Returns:
            ``min(n, len(self))`` distinct nodes in ring order; ``[]`` if the
            ring is empty.

        Raises:
            ValueError: If ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        owners = self._owners
        # Capping at the node count guarantees the walk below terminates.
        want = min(n, len(self._nodes))
        if want == 0:
            return []
        size = len(owners)
        i = bisect_right(self._points, hash64(key))
        if want == 1:
            return [owners[i % size]]
        found: list[str] = []
        # A list beats a set here: ``want`` is small (replication factor).
        while len(found) < want:
            node = owners[i % size]
            if node not in found:
                found.append(node)
            i += 1
        return found

    def owner(self, key: str) -> str | None:
        """Return the primary owner of a key, or None if the ring is empty."""
        if not self._owners:
            return None
        return self._owners[bisect_right(self._points, hash64(key)) % len(self._owners)]

    def shares(self) -> dict[str, float]:
        """Return the fraction of the hash space each node owns as primary.

        Exact (no sampling), so it measures vnode balance directly.

        Returns:
            Node name to share in ``[0, 1]``; shares sum to 1. Empty if no nodes.
        """
        shares = dict.fromkeys(self._nodes, 0)
        points = self._points
        # A point owns the arc back to its predecessor; the first wraps around.
        for i, node in enumerate(self._owners):
            prev = points[i - 1] if i else points[-1] - 2**64
            shares[node] += points[i] - prev
        return {node: arc / 2**64 for node, arc in shares.items()}

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
