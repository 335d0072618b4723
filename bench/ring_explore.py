"""Issue 5 exploration: placement schemes measured with ring_bench's metrics.

Not part of ringd: a harness to reproduce the "what was tried" figures in
BENCHMARKS.md (Ring section). Same keys as ``bench.ring_bench``
(``child-0`` .. ``child-9999``), nodes ``<prefix>0`` .., and per scheme:

- max/mean keys per node at 3, 10 and 100 nodes;
- moved keys over the ideal at 100 nodes (``--nodes``) (1/(N+1) for a join to N+1, 1/N
  for a leave from N), mean and worst over ``--events`` joins
  (``new-0`` ..) and leaves (evenly spaced nodes), as ring_bench does;
- other keys moved when one key is added (whole-set schemes only move any).

``--build`` instead times building a 100-node ring (ringd at several vnode
counts, round-robin with uhashring) and shows what the vnode count does to
balance. Single process, no daemons; exact figures (all but ``--build``)
are the same on every run. Run from the repository root::

    python -m bench.ring_explore [--events 8] [--adds 4] [--prefix node-] [--nodes 100]
                                 [--schemes SUBSTR,...] [--small] [--list]
    python -m bench.ring_explore --build [--repeat 15]
"""

from __future__ import annotations

import argparse
import heapq
import math
import statistics
import time
from bisect import bisect_right
from collections import Counter
from fractions import Fraction
from typing import TYPE_CHECKING

import xxhash

from ringd.ring import Ring

if TYPE_CHECKING:
    from collections.abc import Callable

    Placer = Callable[[list[str], list[str]], dict[str, str]]
    CapFn = Callable[[int, int], int]

KEYS = [f"child-{i}" for i in range(10_000)]
digest = xxhash.xxh3_64_intdigest


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _tiebreak(key: str) -> tuple[int, str]:
    return digest(_raw(key), 7), key


# -- capacity schedules (K keys, N nodes) -------------------------------------------


def floor_cap(balance: float = 1.10) -> CapFn:
    """floor(balance * K / N), at least ceil(K / N): Ring.capacity's schedule."""

    def cap(k: int, n: int) -> int:
        return max(math.floor(Fraction(balance) * k / n), -(-k // n))

    return cap


def ceil_cap(balance: float = 1.10) -> CapFn:
    """ceil(balance * K / N): rounds up, so max/mean can exceed balance by < 1 key."""

    def cap(k: int, n: int) -> int:
        return math.ceil(Fraction(balance) * k / n)

    return cap


def centered_cap(balance: float = 1.10) -> CapFn:
    """floor(balance * K / N - 1/2): steps by 1 (not 2) around N = 100, K = 10,000."""

    def cap(k: int, n: int) -> int:
        return max(math.floor(Fraction(balance) * k / n - Fraction(1, 2)), -(-k // n))

    return cap


# -- schemes ------------------------------------------------------------------------


def plain(vnodes: int) -> Placer:
    """Ring.owner for every key: the plain ring."""

    def place(nodes: list[str], keys: list[str]) -> dict[str, str]:
        ring = Ring(nodes, vnodes=vnodes)
        return {k: ring.owner(k) or "" for k in keys}

    return place


def ring_assign(vnodes: int, cap_fn: CapFn | None = None) -> Placer:
    """Ring.assign (bounded loads, deferred acceptance along the ring walk)."""

    class CapRing(Ring):
        __slots__ = ()

        def capacity(self, count: int, *, balance: float = 1.10) -> int:
            if cap_fn is None:
                return super().capacity(count, balance=balance)
            return min(count, cap_fn(count, len(self._names))) if self._names and count else 0

    def place(nodes: list[str], keys: list[str]) -> dict[str, str]:
        return CapRing(nodes, vnodes=vnodes).assign(keys)

    return place


def _hrw_prefs(nodes: list[str], keys: list[str]) -> dict[str, list[tuple[int, str]]]:
    """Each key's rendezvous ranking of the nodes, best first, with the scores."""
    seeds = {n: digest(_raw(n)) for n in nodes}
    return {k: sorted(((digest(_raw(k), seeds[n]), n) for n in nodes), reverse=True) for k in keys}


def hrw_da(cap_fn: CapFn) -> Placer:
    """Rendezvous ranking per key; bounded loads by round-based deferred acceptance.

    Ring.assign's algorithm with the ring walk replaced by the key's HRW
    ranking: every spilled key's next candidate is an independent random node
    (Chen et al.'s "random jumps" in their purest form), and every node's
    share of first choices is exactly 1/N in expectation (no vnode noise).
    """

    def place(nodes: list[str], keys: list[str]) -> dict[str, str]:
        unique = sorted(set(keys))
        prefs = _hrw_prefs(nodes, unique)
        cap = cap_fn(len(unique), len(nodes))
        load: Counter[str] = Counter()
        out: dict[str, str] = {}
        walkers = [(k, 0) for k in unique]
        while walkers:
            rounds: dict[str, list[tuple[str, int]]] = {}
            for k, i in walkers:
                rounds.setdefault(prefs[k][i][1], []).append((k, i))
            walkers = []
            for n, asking in rounds.items():
                room = cap - load[n]
                if len(asking) > room:
                    asking.sort(key=lambda w: _tiebreak(w[0]))
                    walkers += [(k, i + 1) for k, i in asking[room:]]
                    del asking[room:]
                load[n] += len(asking)
                out.update(dict.fromkeys([k for k, _ in asking], n))
        return out

    return place


def hrw_symmetric(cap_fn: CapFn) -> Placer:
    """Rendezvous with bounded loads where nodes rank keys by the same score.

    A key prefers the nodes with its highest HRW scores, a node the keys with
    the highest score for it: the unique stable matching (greedy over all
    (score, node, key) pairs, best first), found by key-proposing
    Gale-Shapley. A full node spills the keys that rank it lowest, which are
    the ones a joining node is most likely to take.
    """

    def place(nodes: list[str], keys: list[str]) -> dict[str, str]:
        unique = sorted(set(keys))
        prefs = _hrw_prefs(nodes, unique)
        cap = cap_fn(len(unique), len(nodes))
        held: dict[str, list[tuple[int, str]]] = {n: [] for n in nodes}
        nxt = dict.fromkeys(unique, 0)
        free = list(unique)
        while free:
            k = free.pop()
            score, n = prefs[k][nxt[k]]
            nxt[k] += 1
            heap = held[n]
            if len(heap) < cap:
                heapq.heappush(heap, (score, k))
            elif heap[0] < (score, k):
                free.append(heapq.heapreplace(heap, (score, k))[1])
            else:
                free.append(k)
        return {k: n for n, heap in held.items() for _, k in heap}

    return place


def two_choice(vnodes: int, balance: float = 1.10) -> Placer:
    """Power of two choices made order-independent: keys in a fixed hash order.

    Each key goes to the less loaded of its two candidates (its ring owner and
    the owner of a second hash of it), the first on a tie; a candidate at
    capacity passes the key on down the first candidate's ring walk.
    """

    def place(nodes: list[str], keys: list[str]) -> dict[str, str]:
        ring = Ring(nodes, vnodes=vnodes)
        points, index, names = ring._points, ring._index, ring._names
        size = len(index)
        unique = set(keys)
        cap = ring.capacity(len(unique), balance=balance)
        load = [0] * len(names)
        out = {}
        for k in sorted(unique, key=_tiebreak):
            i = bisect_right(points, digest(_raw(k)))
            a = index[i - size]
            b = index[bisect_right(points, digest(_raw(k), 1)) - size]
            j = a if load[a] <= load[b] else b
            while load[j] >= cap:
                i += 1
                j = index[i - size]
            load[j] += 1
            out[k] = names[j]
        return out

    return place


def smoothed_positions(keys: list[str], bits: int) -> dict[str, int]:
    """Key -> ring position: its hash bucket (top ``bits`` bits), spread by rank.

    Within each of the 2**bits equal buckets of the hash space the keys sit
    at evenly spaced positions, in hash order: a monotone map that makes the
    key density uniform at the scale of one bucket (a key-set-dependent
    "quantile" transform; adding a key shifts only its bucket's keys).
    """
    shift = 64 - bits
    width = 1 << shift
    buckets: dict[int, list[tuple[int, str]]] = {}
    for k in set(keys):
        h = digest(_raw(k))
        buckets.setdefault(h >> shift, []).append((h, k))
    pos: dict[str, int] = {}
    for b, items in buckets.items():
        items.sort()
        base, count = b << shift, len(items)
        for r, (_, k) in enumerate(items):
            pos[k] = base + (2 * r + 1) * width // (2 * count)
    return pos


def smoothed(vnodes: int, bits: int, *, bounded: bool = False) -> Placer:
    """Plain ring (or, bounded, deferred acceptance) over smoothed key positions."""

    def place(nodes: list[str], keys: list[str]) -> dict[str, str]:
        ring = Ring(nodes, vnodes=vnodes)
        points, index, names = ring._points, ring._index, ring._names
        size = len(index)
        pos = smoothed_positions(keys, bits)
        if not bounded:
            return {k: names[index[bisect_right(points, p) - size]] for k, p in pos.items()}
        cap = ring.capacity(len(pos))
        load = [0] * len(names)
        out: dict[str, str] = {}
        walkers = [(k, bisect_right(points, p), set[int]()) for k, p in pos.items()]
        while walkers:
            rounds: dict[int, list[tuple[str, int, set[int]]]] = {}
            for k, i, seen in walkers:
                j = index[i - size]
                while j in seen:
                    i += 1
                    j = index[i - size]
                seen.add(j)
                rounds.setdefault(j, []).append((k, i, seen))
            walkers = []
            for j, asking in rounds.items():
                room = cap - load[j]
                if len(asking) > room:
                    asking.sort(key=lambda w: _tiebreak(w[0]))
                    walkers += asking[room:]
                    del asking[room:]
                load[j] += len(asking)
                out.update(dict.fromkeys([w[0] for w in asking], names[j]))
        return out

    return place


SCHEMES: dict[str, Placer] = {
    "plain ring v1000 (Ring.owner)": plain(1000),
    "assign v1000 (Ring.assign, current)": ring_assign(1000),
    "assign v4000": ring_assign(4000),
    "assign v1000, cap floor(1.1m - 1/2)": ring_assign(1000, centered_cap()),
    "assign v4000, cap floor(1.1m - 1/2)": ring_assign(4000, centered_cap()),
    "hrw DA (random jumps), cap floor(1.1m)": hrw_da(floor_cap()),
    "hrw DA (random jumps), cap ceil(1.1m)": hrw_da(ceil_cap()),
    "hrw DA (random jumps), cap floor(1.1m - 1/2)": hrw_da(centered_cap()),
    "hrw DA (random jumps), cap floor(1.09m)": hrw_da(floor_cap(1.09)),
    "hrw symmetric stable matching, cap floor(1.1m)": hrw_symmetric(floor_cap()),
    "two choices in hash order, capped": two_choice(1000),
    "smoothed keys, ring v1000, 2^10 buckets": smoothed(1000, 10),
    "smoothed keys, ring v1000, 2^13 buckets": smoothed(1000, 13),
    "smoothed keys, ring v1000, 2^13 buckets, bounded": smoothed(1000, 13, bounded=True),
    "smoothed keys, ring v250, 2^10 buckets": smoothed(250, 10),
    "smoothed keys, ring v250, 2^13 buckets": smoothed(250, 13),
    "plain ring v400": plain(400),
    "plain ring v500": plain(500),
    "assign v400": ring_assign(400),
    "assign v500": ring_assign(500),
}


# -- metrics ------------------------------------------------------------------------


def max_over_mean(placement: dict[str, str], nodes: int) -> float:
    return max(Counter(placement.values()).values()) / (len(placement) / nodes)


def movement(place: Placer, nodes: list[str], events: int) -> tuple[list[float], list[float]]:
    """Moved / ideal for joins of new-0.. and leaves of evenly spaced nodes (ring_bench's)."""
    count = len(nodes)
    base = place(nodes, KEYS)
    joins = []
    for j in range(events):
        after = place([*nodes, f"new-{j}"], KEYS)
        joins.append(sum(base[k] != after[k] for k in KEYS) / len(KEYS) * (count + 1))
    leaves = []
    for j in range(min(events, count)):
        gone = nodes[j * count // min(events, count)]
        after = place([x for x in nodes if x != gone], KEYS)
        leaves.append(sum(base[k] != after[k] for k in KEYS) / len(KEYS) * count)
    return joins, leaves


def key_adds(place: Placer, nodes: list[str], adds: int) -> list[int]:
    base = place(nodes, KEYS)
    return [
        sum(base[k] != after[k] for k in KEYS)
        for after in (place(nodes, [*KEYS, f"extra-{i}"]) for i in range(adds))
    ]


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ({max(values):.3f})"


def explore(args: argparse.Namespace) -> None:
    def names(count: int) -> list[str]:
        return [f"{args.prefix}{i}" for i in range(count)]

    wanted = [p for p in args.schemes.split(",") if p]
    chosen = [s for s in SCHEMES if not wanted or any(p in s for p in wanted)]
    print(
        f"nodes {args.prefix}0..; {args.events} joins / leaves at {args.nodes} nodes; "
        f"{args.adds} key adds"
    )
    small = " | join / leave x ideal at 3, 10" if args.small else ""
    print(
        f"| scheme | max/mean 3 / 10 / 100 | join x ideal, {args.nodes} (worst) "
        f"| leave x ideal, {args.nodes} (worst) "
        f"| other keys moved per key add, {args.nodes} (max){small} |"
    )
    print("|---|---|---|---|---|" + ("---|" if args.small else ""))
    for scheme in chosen:
        place = SCHEMES[scheme]
        bal = [max_over_mean(place(names(c), KEYS), c) for c in (3, 10, 100)]
        joins, leaves = movement(place, names(args.nodes), args.events)
        adds = key_adds(place, names(args.nodes), args.adds)
        row = [
            scheme,
            " / ".join(f"{b:.3f}" for b in bal),
            fmt(joins),
            fmt(leaves),
            f"{statistics.mean(adds):.1f} ({max(adds)})",
        ]
        if args.small:
            row.append(
                ", ".join(
                    " / ".join(f"{statistics.mean(v):.3f}" for v in movement(place, names(c), 8))
                    for c in (3, 10)
                )
            )
        print("| " + " | ".join(row) + " |", flush=True)


def build(args: argparse.Namespace) -> None:
    from uhashring import HashRing  # type: ignore[import-untyped]

    nodes = [f"node-{i}" for i in range(100)]
    vnode_counts = (320, 400, 500, 1000)
    fns: dict[str, Callable[[], object]] = {
        f"ringd vnodes={v}": (lambda v=v: Ring(nodes, vnodes=v)) for v in vnode_counts
    }
    fns["uhashring (160 md5 points/node)"] = lambda: HashRing(nodes)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    uh = min(times["uhashring (160 md5 points/node)"])
    print(f"build a 100-node ring, round-robin x {args.repeat}: fastest (median) ms, ratio")
    for name, t in times.items():
        print(
            f"  {name:32s} {min(t) * 1e3:6.1f} ({statistics.median(t) * 1e3:6.1f})"
            f"  {min(t) / uh:.2f} x uhashring"
        )
    print("plain-ring max/mean for child-0..9999 at 3 / 10 / 100 nodes:")
    hashes = [digest(_raw(k)) for k in KEYS]
    for v in vnode_counts:
        line = []
        for prefixes in (["node-"], [f"n{s}-" for s in range(16)]):
            per = []
            for c in (3, 10, 100):
                vals = []
                for prefix in prefixes:
                    ring = Ring([f"{prefix}{i}" for i in range(c)], vnodes=v)
                    pts, idx = ring._points, ring._index
                    load = Counter(idx[bisect_right(pts, h) - len(idx)] for h in hashes)
                    vals.append(max(load.values()) / (len(KEYS) / c))
                per.append(statistics.mean(vals))
            line.append(" / ".join(f"{x:.3f}" for x in per))
        print(f"  vnodes={v:4d}: node-* {line[0]}; mean over 16 name sets {line[1]}")
    vals = {3: [], 10: [], 100: []}
    for s in range(16):
        for c in vals:
            ring = HashRing([f"n{s}-{i}" for i in range(c)])
            vals[c].append(max_over_mean({k: ring.get_node(k) for k in KEYS}, c))
    print(
        "  uhashring: mean over 16 name sets "
        + " / ".join(f"{statistics.mean(v):.3f}" for v in vals.values())
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ring_explore", description=__doc__)
    parser.add_argument("--events", type=int, default=8, help="joins and leaves at 100 nodes")
    parser.add_argument("--adds", type=int, default=4, help="single-key adds at --nodes")
    parser.add_argument("--nodes", type=int, default=100, help="node count for movement, adds")
    parser.add_argument("--prefix", default="node-", help="node names: <prefix>0, <prefix>1, ..")
    parser.add_argument("--schemes", default="", help="comma-separated substrings of names")
    parser.add_argument("--small", action="store_true", help="also movement at 3 and 10 nodes")
    parser.add_argument("--list", action="store_true", help="list the schemes and exit")
    parser.add_argument("--build", action="store_true", help="time ring builds instead")
    parser.add_argument("--repeat", type=int, default=15, help="--build: timing rounds")
    args = parser.parse_args()
    if args.list:
        print("\n".join(SCHEMES))
    elif args.build:
        build(args)
    else:
        explore(args)


if __name__ == "__main__":
    main()
