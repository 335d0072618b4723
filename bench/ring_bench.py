"""Ring benchmark: ringd's placement side by side with uhashring, in one process.

Placement (``ringd/placement.py``) puts a child's instances on
``Ring(eligible nodes).owners(child_id, replicas)``: the plain consistent-hash
ring, one key at a time, no load cap. This measures that, with the same keys
(``child-0`` .. ``child-9999``) and nodes (``node-0`` ..) for every contender:

- lookups/s: one key at a time, 10 nodes (``Ring.owners(key)``);
- balance: max / mean keys per node at 3, 10 and 100 nodes;
- movement on join and leave, as a multiple of the ideal (1 / the larger node
  count), mean over several events and the worst event;
- time to build a 100-node ring, and to place all keys at 3, 10 and 100 nodes;
- ringd only: ``Placer.owners`` for 10,000 child specs (the eligible-node
  filter and the cached ring, as the daemon calls it), and how many instances
  of ``replicas = 3`` children move on a join or leave (an instance is
  ``id/<n>`` on the walk's n-th node, so a node that joins ahead of a child's
  master shifts every instance after it).

Contenders: ringd's ``Ring`` (1000 xxh3 points per node), and uhashring in its
default (md5, 160 vnodes) and ketama modes.

``--vnodes`` instead shows what the vnode count trades: build time against
balance (max / mean over 16 sets of node names), ringd at several counts and
uhashring, round-robin.

Run from the repository root::

    python -m bench.ring_bench [--events 8] [--repeat 9]
    python -m bench.ring_bench --vnodes [--repeat 15]
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

from ringd.placement import NodeInfo, Placer, instance_key
from ringd.ring import DEFAULT_VNODES, Ring
from ringd.spec import ChildSpec

try:
    from uhashring import HashRing  # type: ignore[import-untyped]
except ImportError:  # the peer is not a ringd dependency: ringd's figures alone
    HashRing = None

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

KEYS = [f"child-{i}" for i in range(10_000)]
SIZES = (3, 10, 100)
REPLICAS = 3


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(count)]


@dataclass(frozen=True)
class Contender:
    name: str
    build: Callable[[list[str]], Any]
    lookup: Callable[[Any], Callable[[str], Any]]
    place: Callable[[Any, Sequence[str]], dict[str, str]]


def _ringd_place(ring: Ring, keys: Sequence[str]) -> dict[str, str]:
    owners = ring.owners
    return {key: owners(key)[0] for key in keys}


def _uhashring_place(ring: Any, keys: Sequence[str]) -> dict[str, str]:
    get = ring.get_node
    return {key: get(key) for key in keys}


CONTENDERS = [
    # owners(key) with n = 1: what placement calls for a child without replicas.
    Contender("ringd", Ring, lambda r: r.owners, _ringd_place),
]
if HashRing is not None:
    CONTENDERS += [
        Contender("uhashring", HashRing, lambda r: r.get_node, _uhashring_place),
        Contender(
            "uhashring ketama",
            lambda nodes: HashRing(nodes, hash_fn="ketama"),
            lambda r: r.get_node,
            _uhashring_place,
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


def moved(a: dict[str, str], b: dict[str, str]) -> int:
    return sum(a[k] != b.get(k) for k in a)


def events(count: int, n: int) -> tuple[list[str], list[str]]:
    """Joining node names, and evenly spaced leaving ones."""
    nodes = node_names(count)
    leaves = min(n, count)
    return [f"new-{j}" for j in range(n)], [nodes[j * count // leaves] for j in range(leaves)]


def movement(c: Contender, count: int, n: int) -> tuple[list[float], list[float]]:
    """Moved keys over the ideal, per join and per leave."""
    nodes = node_names(count)
    base = c.place(c.build(nodes), KEYS)
    joins, leaves = events(count, n)
    return (
        [
            moved(base, c.place(c.build([*nodes, new]), KEYS)) / len(KEYS) * (count + 1)
            for new in joins
        ],
        [
            moved(base, c.place(c.build([x for x in nodes if x != gone]), KEYS)) / len(KEYS) * count
            for gone in leaves
        ],
    )


def instances(ring: Ring, replicas: int) -> dict[str, str]:
    """Instance key -> node for every key with ``replicas`` instances, as placement does."""
    return {
        instance_key(key, r): node
        for key in KEYS
        for r, node in enumerate(ring.owners(key, replicas))
    }


def replica_movement(count: int, n: int) -> tuple[list[float], list[float]]:
    """Moved instances of ``REPLICAS``-instance children over the ideal, per join / leave."""
    nodes = node_names(count)
    base = instances(Ring(nodes), REPLICAS)
    total = len(base)
    joins, leaves = events(count, n)
    return (
        [
            moved(base, instances(Ring([*nodes, new]), REPLICAS)) / total * (count + 1)
            for new in joins
        ],
        [
            moved(base, instances(Ring([x for x in nodes if x != gone]), REPLICAS)) / total * count
            for gone in leaves
        ],
    )


def placer_all(placer: Placer, specs: list[ChildSpec], nodes: dict[str, NodeInfo]) -> None:
    for spec in specs:
        placer.owners(spec, nodes, None)


VNODE_COUNTS = (320, 400, 500, 1000)


def vnode_sweep(repeat: int) -> None:
    """Build time of a 100-node ring and plain-ring balance, per vnode count."""
    nodes = node_names(100)
    fns: list[Callable[[], object]] = [partial(Ring, nodes, vnodes=v) for v in VNODE_COUNTS]
    if HashRing is not None:
        fns.append(partial(HashRing, nodes))
    times = fastest(repeat, fns)
    print(f"build a 100-node ring, round-robin x {repeat}, fastest; max/mean keys per node at")
    print("3 / 10 / 100 nodes, mean over 16 node-name sets (n0-0.., n1-0.., ..)\n")
    print("| ring | build ms | ÷ uhashring | max/mean 3 / 10 / 100 |")
    print("|---|---|---|---|")
    builders: list[tuple[str, Callable[[list[str]], Any]]] = [
        *((f"ringd vnodes={v}", partial(Ring, vnodes=v)) for v in VNODE_COUNTS),
    ]
    if HashRing is not None:
        builders.append(("uhashring (160 md5 points/node)", HashRing))
    for (name, build), took in zip(builders, times, strict=True):
        per_size = []
        for count in SIZES:
            vals = []
            for s in range(16):
                ring = build([f"n{s}-{i}" for i in range(count)])
                place = _ringd_place if isinstance(ring, Ring) else _uhashring_place
                vals.append(max_over_mean(place(ring, KEYS), count))
            per_size.append(statistics.mean(vals))
        versus = f"{took / times[-1]:.2f}" if HashRing is not None else "-"
        balance = " / ".join(f"{x:.3f}" for x in per_size)
        print(f"| {name} | {took * 1e3:.1f} | {versus} | {balance} |")


def fmt_move(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} (worst {max(values):.3f})"


def ratio(values: Sequence[float]) -> list[str]:
    """ringd's figure over uhashring's, as a table cell (none without uhashring)."""
    return [f"{values[0] / values[1]:.2f}"] if len(values) > 1 else []


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ring_bench", description=__doc__)
    parser.add_argument("--events", type=int, default=8, help="joins and leaves per size")
    parser.add_argument("--repeat", type=int, default=9, help="timing runs (fastest is kept)")
    parser.add_argument("--vnodes", action="store_true", help="the vnode-count trade-off instead")
    args = parser.parse_args(argv)
    if args.vnodes:
        vnode_sweep(args.repeat)
        return

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# ring benchmark, {now}")
    peer = (
        f"uhashring {version('uhashring')}"
        if HashRing is not None
        else "uhashring not installed (pip install uhashring): ringd alone"
    )
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"nproc {os.cpu_count()}, xxhash {version('xxhash')}, {peer}"
    )
    print(
        f"{len(KEYS)} keys; ringd: the plain ring placement uses, vnodes={DEFAULT_VNODES}, "
        "no load cap; uhashring defaults (160 points/node)\n"
    )

    names = [c.name for c in CONTENDERS]
    rows: list[list[str]] = []

    gets = [c.lookup(c.build(node_names(10))) for c in CONTENDERS]
    lookups = [len(KEYS) / t for t in fastest(args.repeat, [partial(lookup_all, g) for g in gets])]
    rows.append(
        [
            "lookups/s, one key, 10 nodes (higher is better)",
            *(f"{x / 1e6:.2f} M" for x in lookups),
            *ratio(lookups),
        ]
    )

    for count in SIZES:
        nodes = node_names(count)
        bal = [max_over_mean(c.place(c.build(nodes), KEYS), count) for c in CONTENDERS]
        rows.append(
            [
                f"max/mean keys per node, {count} nodes (lower is better)",
                *(f"{x:.3f}" for x in bal),
                *ratio(bal),
            ]
        )

    for count in SIZES:
        moves = [movement(c, count, args.events) for c in CONTENDERS]
        for kind, ideal in ((0, f"1/{count + 1}"), (1, f"1/{count}")):
            what = ("join", "leave")[kind]
            vals = [m[kind] for m in moves]
            rows.append(
                [
                    f"moved on {what}, {count} nodes, x ideal {ideal} (1.000 is best)",
                    *(fmt_move(v) for v in vals),
                    *ratio([statistics.mean(v) for v in vals]),
                ]
            )

    build = fastest(args.repeat, [partial(c.build, node_names(100)) for c in CONTENDERS])
    rows.append(
        [
            "build a 100-node ring, ms (lower is better)",
            *(f"{x * 1e3:.1f}" for x in build),
            *ratio(build),
        ]
    )
    for count in SIZES:
        rings = [c.build(node_names(count)) for c in CONTENDERS]
        times = fastest(
            args.repeat,
            [partial(c.place, r, KEYS) for c, r in zip(CONTENDERS, rings, strict=True)],
        )
        rows.append(
            [
                f"place {len(KEYS)} keys on {count} nodes, ms (lower is better)",
                *(f"{x * 1e3:.1f}" for x in times),
                *ratio(times),
            ]
        )

    header = ["figure", *names, *(["ringd ÷ uhashring"] if len(names) > 1 else [])]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")

    specs = [ChildSpec(id=key, argv=["true"]) for key in KEYS]
    print(
        f"\nringd Placer.owners for {len(specs)} child specs (eligible-node filter + cached ring), "
        "ms, fastest"
    )
    for count in SIZES:
        infos = {name: NodeInfo(name, {}) for name in node_names(count)}
        placer = Placer()
        placer_all(placer, specs[:1], infos)  # the ring is built once per node set, then cached
        (took,) = fastest(args.repeat, [partial(placer_all, placer, specs, infos)])
        print(f"  {count:3} nodes: {took * 1e3:.1f}")

    print(
        f"\nringd replicas = {REPLICAS}: instances moved on join / leave, x ideal "
        "(ideal: 1/(N+1) of the instances on a join, 1/N on a leave)"
    )
    for count in SIZES:
        joins, leaves = replica_movement(count, args.events)
        print(f"  {count:3} nodes: join {fmt_move(joins)}, leave {fmt_move(leaves)}")


if __name__ == "__main__":
    main()
