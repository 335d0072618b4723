"""Ring benchmark: ringd's ring side by side with uhashring, in one process.

Same keys (``child-0`` .. ``child-9999``), same nodes (``node-0`` ..), same run:

- lookups/s: one key at a time, 10 nodes;
- balance: max / mean keys per node at 3, 10 and 100 nodes;
- movement on join and leave, as a multiple of the ideal (1 / the larger node
  count), mean over several events and the worst event;
- ringd's whole-set assignment only: how many *other* keys move when one key
  is added or removed;
- time to build a 100-node ring, and to place all keys at 3, 10 and 100 nodes.

Contenders: ``Ring.assign`` (bounded loads, what the reconciler uses),
``Ring.owner`` (the plain ring, one key at a time), and uhashring in its
default (md5, 160 vnodes) and ketama modes.

Run from the repository root::

    python -m bench.ring_bench [--events 8] [--key-changes 100] [--repeat 9]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from uhashring import HashRing  # type: ignore[import-untyped]

from ringd.ring import DEFAULT_BALANCE, DEFAULT_VNODES, Ring

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

KEYS = [f"child-{i}" for i in range(10_000)]
SIZES = (3, 10, 100)


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(count)]


@dataclass(frozen=True)
class Contender:
    name: str
    build: Callable[[list[str]], Any]
    lookup: Callable[[Any], Callable[[str], Any]]
    place: Callable[[Any, list[str]], dict[str, str]]


def _per_key(
    lookup: Callable[[Any], Callable[[str], Any]],
) -> Callable[[Any, list[str]], dict[str, str]]:
    def place(ring: Any, keys: list[str]) -> dict[str, str]:
        get = lookup(ring)
        return {key: get(key) for key in keys}

    return place


CONTENDERS = [
    # assign places the whole key set at once (see the "place" row); a lookup
    # is then a dict get, so its per-key lookup figure is owner()'s.
    Contender("ringd assign", Ring, lambda r: r.owner, lambda r, keys: r.assign(keys)),
    Contender("ringd owner", Ring, lambda r: r.owner, _per_key(lambda r: r.owner)),
    Contender("uhashring", HashRing, lambda r: r.get_node, _per_key(lambda r: r.get_node)),
    Contender(
        "uhashring ketama",
        lambda nodes: HashRing(nodes, hash_fn="ketama"),
        lambda r: r.get_node,
        _per_key(lambda r: r.get_node),
    ),
]


def fastest(repeat: int, fns: Sequence[Callable[[], object]]) -> list[float]:
    """Fastest run of each function, in seconds.

    Round-robin (one run of each per round) so that a noisy neighbour slows
    every contender alike, and the minimum, the run least disturbed by it.
    """
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [min(t) for t in times]


def lookup_all(get: Callable[[str], object]) -> None:
    for key in KEYS:
        get(key)


def max_over_mean(placement: dict[str, str], nodes: int) -> float:
    return max(Counter(placement.values()).values()) / (len(placement) / nodes)


def moved(a: dict[str, str], b: dict[str, str], keys: Sequence[str]) -> int:
    return sum(a[k] != b[k] for k in keys)


@dataclass
class Movement:
    join: list[float]
    leave: list[float]
    # ringd assign only: moved keys that neither went to a joiner nor left a leaver.
    excess: list[float]


def movement(c: Contender, count: int, events: int) -> Movement:
    nodes = node_names(count)
    base = c.place(c.build(nodes), KEYS)
    out = Movement([], [], [])
    for j in range(events):
        new = f"new-{j}"
        after = c.place(c.build([*nodes, new]), KEYS)
        n = moved(base, after, KEYS)
        out.join.append(n / len(KEYS) * (count + 1))
        out.excess.append((n - sum(after[k] == new for k in KEYS)) / len(KEYS) * (count + 1))
    for j in range(min(events, count)):
        gone = nodes[j * count // min(events, count)]
        after = c.place(c.build([x for x in nodes if x != gone]), KEYS)
        n = moved(base, after, KEYS)
        out.leave.append(n / len(KEYS) * count)
        out.excess.append((n - sum(base[k] == gone for k in KEYS)) / len(KEYS) * count)
    return out


def key_changes(count: int, changes: int) -> tuple[list[int], list[int], int]:
    """Other keys moved by adding, then by removing, one key at a time (ringd assign).

    Returns:
        Moved counts per added key, per removed key, and the most keys that
        were spilled (not on their owner() node) in any assignment seen.
    """
    ring = Ring(node_names(count))
    extra = [f"extra-{i}" for i in range(changes)]
    spilled = 0
    added: list[int] = []
    removed: list[int] = []
    for grow, out in ((True, added), (False, removed)):
        keys = list(KEYS)
        prev = ring.assign(keys)
        for i in range(changes):
            if grow:
                keys.append(extra[i])
            else:
                keys.pop()
            cur = ring.assign(keys)
            common = keys[:-1] if grow else keys
            out.append(moved(prev, cur, common))
            spilled = max(spilled, sum(cur[k] != ring.owner(k) for k in keys))
            prev = cur
    return added, removed, spilled


def fmt_move(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} (worst {max(values):.3f})"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ring_bench", description=__doc__)
    parser.add_argument("--events", type=int, default=8, help="joins and leaves per size")
    parser.add_argument("--key-changes", type=int, default=100, help="single-key adds/removes")
    parser.add_argument("--repeat", type=int, default=9, help="timing runs (fastest is kept)")
    args = parser.parse_args(argv)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# ring benchmark, {now}")
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"nproc {os.cpu_count()}, xxhash {version('xxhash')}, uhashring {version('uhashring')}"
    )
    print(
        f"{len(KEYS)} keys; ringd vnodes={DEFAULT_VNODES}, balance={DEFAULT_BALANCE}; "
        "uhashring defaults (160 points/node)\n"
    )

    names = [c.name for c in CONTENDERS]
    rows: list[list[str]] = []

    gets = [c.lookup(c.build(node_names(10))) for c in CONTENDERS]
    lookups = [len(KEYS) / t for t in fastest(args.repeat, [partial(lookup_all, g) for g in gets])]
    rows.append(
        [
            "lookups/s, one key, 10 nodes (higher is better)",
            "(= owner)",
            *(f"{x / 1e6:.2f} M" for x in lookups[1:]),
            ratio(lookups[1], lookups[2]),
        ]
    )

    for count in SIZES:
        nodes = node_names(count)
        bal = [max_over_mean(c.place(c.build(nodes), KEYS), count) for c in CONTENDERS]
        rows.append(
            [
                f"max/mean keys per node, {count} nodes (lower is better)",
                *(f"{x:.3f}" for x in bal),
                f"{ratio(bal[0], bal[2])} / {ratio(bal[1], bal[2])}",
            ]
        )

    excess_rows = []
    for count in SIZES:
        moves = [movement(c, count, args.events) for c in CONTENDERS]
        for kind in ("join", "leave"):
            vals = [getattr(m, kind) for m in moves]
            ideal = f"1/{count + 1}" if kind == "join" else f"1/{count}"
            rows.append(
                [
                    f"moved on {kind}, {count} nodes, x ideal {ideal} (1.000 is best)",
                    *(fmt_move(v) for v in vals),
                    f"{ratio(statistics.mean(vals[0]), statistics.mean(vals[2]))} / "
                    f"{ratio(statistics.mean(vals[1]), statistics.mean(vals[2]))}",
                ]
            )
        excess_rows.append((count, moves[0].excess))

    build = fastest(args.repeat, [partial(c.build, node_names(100)) for c in CONTENDERS])
    rows.append(
        [
            "build a 100-node ring, ms (lower is better)",
            "(= owner)",
            *(f"{x * 1e3:.1f}" for x in build[1:]),
            ratio(build[1], build[2]),
        ]
    )
    for count in SIZES:
        rings = [c.build(node_names(count)) for c in CONTENDERS]
        place = fastest(
            args.repeat,
            [partial(c.place, r, KEYS) for c, r in zip(CONTENDERS, rings, strict=True)],
        )
        rows.append(
            [
                f"place {len(KEYS)} keys on {count} nodes, ms (lower is better)",
                *(f"{x * 1e3:.1f}" for x in place),
                f"{ratio(place[0], place[2])} / {ratio(place[1], place[2])}",
            ]
        )

    header = ["figure", *names, "ringd ÷ uhashring (assign / owner)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")

    print("\nringd assign: moved keys that did not go to the joiner / leave the leaver, x ideal")
    for count, excess in excess_rows:
        print(f"  {count:3} nodes: mean {statistics.mean(excess):.3f}, worst {max(excess):.3f}")

    print(f"\nringd assign: other keys moved by one key added / removed ({args.key_changes} each)")
    for count in SIZES:
        added, removed, spilled = key_changes(count, args.key_changes)
        print(
            f"  {count:3} nodes: add mean {statistics.mean(added):.2f} max {max(added)}, "
            f"remove mean {statistics.mean(removed):.2f} max {max(removed)} "
            f"(bound: N-1 = {count - 1}, + spilled keys <= {spilled} when the capacity steps)"
        )


if __name__ == "__main__":
    main()
