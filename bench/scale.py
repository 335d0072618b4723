"""What a daemon's own work costs as the cluster grows, without spawning anything:
placement CPU per membership change, the memory the view holds per spec it does
not run, and a paged read of the cluster state from a real etcd.

    python -m bench.scale [--specs 1000,10000,100000] [--nodes 10,100,1000]

Each figure is measured in this process (CPU time, tracemalloc), against a
baseline from the same run: the ring lookups alone (the floor of any placement),
and the raw bytes of the specs as etcd holds them. It is a model of one daemon's
share, not a cluster: real daemons and etcd at these sizes need more than this
machine (see BENCHMARKS.md, "Scale").
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc

import trio

from ringd.desired import DesiredState, Inputs
from ringd.etcd import KV, Etcd
from ringd.keys import Keys
from ringd.placement import NodeInfo
from ringd.ring import Ring
from ringd.spec import ChildSpec, encode
from ringd.testing.etcd import private_etcd
from ringd.view import ClusterView

KEYS = Keys("/ringd/scale/")


def specs_of(count: int) -> dict[str, ChildSpec]:
    return {
        f"c{i:06d}": ChildSpec(id=f"c{i:06d}", argv=["/usr/bin/sleep", "3600"], env={"N": str(i)})
        for i in range(count)
    }


def placement(specs: dict[str, ChildSpec], nodes: int) -> dict[str, float]:
    """CPU seconds: the first placement, a join, a leave; and the floor (a ring built
    and one lookup per child, nothing else)."""
    names = [f"n{j:04d}" for j in range(nodes)]
    state = DesiredState()

    def place(members: list[str]) -> float:
        inputs = Inputs(nodes={n: NodeInfo(n, {}) for n in members}, groups={})
        started = time.process_time()
        state.update(specs, None, inputs)
        state.on_node(members[0])
        return time.process_time() - started

    first = place(names)
    join = place([*names, "joiner"])
    leave = place(names)
    started = time.process_time()
    ring = Ring([*names, "joiner"])
    for child_id, spec in specs.items():
        ring.owners(child_id, spec.replicas)
    floor = time.process_time() - started
    return {"first": first, "join": join, "leave": leave, "floor": floor}


def view_memory(specs: dict[str, ChildSpec]) -> tuple[float, float]:
    """Bytes per spec the view holds (its mirror and decoded records), and the
    spec's own stored size, for specs this node does not run."""
    view = ClusterView(None, KEYS)  # type: ignore[arg-type]  # filled by hand: no etcd
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    stored = 0
    for revision, (child_id, spec) in enumerate(specs.items(), start=1):
        value = encode(spec)
        stored += len(value)
        view._put(KV(KEYS.child(child_id), value, revision, revision, 0))
    view.specs()  # decoded, as the reconciler and listing read them
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / len(specs), stored / len(specs)


async def paged_read(url: str, count: int) -> tuple[float, int]:
    """Seconds to list ``count`` specs from a real etcd, in pages; and the pages."""
    etcd = Etcd([url])
    try:
        items = [(KEYS.child(i), encode(s)) for i, s in specs_of(count).items()]
        async with trio.open_nursery() as nursery:
            for start in range(0, len(items), etcd.txn_ops):
                nursery.start_soon(etcd.create_many, items[start : start + etcd.txn_ops])
        started = time.perf_counter()
        _, kvs = await etcd.list(KEYS.prefix)
        took = time.perf_counter() - started
        assert len(kvs) == count, len(kvs)
        return took, -(-count // 1000)
    finally:
        etcd.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--specs", default="1000,10000,100000")
    parser.add_argument("--nodes", default="10,100,1000")
    parser.add_argument("--etcd-specs", type=int, default=30_000, help="0: skip the etcd read")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.specs.split(",")]
    node_counts = [int(n) for n in args.nodes.split(",")]
    print("placement CPU per membership change, in one daemon (s)")
    print(f"{'specs':>8} {'nodes':>6} {'first':>7} {'join':>7} {'leave':>7} {'floor':>7} {'x':>5}")
    for size in sizes:
        specs = specs_of(size)
        for nodes in node_counts:
            f = placement(specs, nodes)
            print(
                f"{size:>8} {nodes:>6} {f['first']:>7.2f} {f['join']:>7.2f} "
                f"{f['leave']:>7.2f} {f['floor']:>7.2f} {f['join'] / f['floor']:>5.1f}"
            )
            sys.stdout.flush()
    print("\nview memory per spec not run here (bytes)")
    for size in sizes:
        held, stored = view_memory(specs_of(size))
        print(f"{size:>8} specs: {held:>6.0f} held, {stored:>4.0f} as stored in etcd")
    if args.etcd_specs:
        with private_etcd() as server:
            took, pages = trio.run(paged_read, server.url, args.etcd_specs)
        print(f"\npaged list of {args.etcd_specs} specs: {took:.2f} s in {pages} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
