"""What a daemon's own work costs as the cluster grows, without spawning anything:
placement CPU per membership change, the memory the view holds per spec it does
not run, and a paged read of the cluster state from a real etcd.

    python -m bench.scale [--specs 1000,10000,100000] [--nodes 10,100,1000] [--rows 100000]

``--rows N``: ``ringctl which-children --json`` at N rows from one standalone daemon
(its own private etcd), with the daemon's RSS (0: skip).

``--join N``: a daemon joining a cluster whose private etcd holds N specs (none
runnable): seconds from spawn to ready (its socket answers ``status`` with a
lease, after its view has listed every key), and its RSS then (0: skip).

Each figure is measured in this process (CPU time, tracemalloc), against a
baseline from the same run: the ring lookups alone (the floor of any placement),
and the raw bytes of the specs as etcd holds them. It is a model of one daemon's
share, not a cluster: real daemons and etcd at these sizes need more than this
machine (see BENCHMARKS.md, "Scale").
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio

from bench.scale_cluster import register, running_claim
from ringd.desired import DesiredState, Inputs
from ringd.etcd import KV, Etcd
from ringd.keys import Keys
from ringd.listing import Listing
from ringd.placement import Instance, NodeInfo
from ringd.protocol import Client
from ringd.ring import Ring
from ringd.spec import ChildSpec, encode
from ringd.testing import Daemon
from ringd.testing.etcd import private_etcd
from ringd.view import ClusterView

KEYS = Keys("/ringd/scale/")


def specs_of(count: int) -> dict[str, ChildSpec]:
    return {
        f"c{i:06d}": ChildSpec(id=f"c{i:06d}", argv=["/usr/bin/sleep", "3600"], env={"N": str(i)})
        for i in range(count)
    }


def placement(specs: dict[str, ChildSpec], nodes: int) -> dict[str, float]:
    """CPU seconds: the first placement; a join (it also sorts the children by hash,
    once); a second join; a leave (the second joiner again); and the baseline, what
    deciding every child again costs (the joined ring made from the previous one, as
    the placer makes it, and one lookup per child, nothing else)."""
    names = [f"n{j:04d}" for j in range(nodes)]
    state = DesiredState()

    def place(members: list[str], changed: tuple[str, ...] | None = ()) -> float:
        inputs = Inputs(nodes={n: NodeInfo(n, {}) for n in members}, groups={})
        started = time.process_time()
        state.update(specs, changed, inputs)  # () as a daemon calls it: no spec changed
        state.on_node(members[0])
        return time.process_time() - started

    first = place(names, None)
    join = place([*names, "joiner"])
    again = place([*names, "joiner", "joiner2"])
    leave = place([*names, "joiner"])
    previous = Ring(names)  # not counted: the ring a daemon has already
    started = time.process_time()
    ring = Ring.changed(previous, [*names, "joiner"])
    for child_id, spec in specs.items():
        ring.owners(child_id, spec.replicas)
    floor = time.process_time() - started
    return {"first": first, "join": join, "again": again, "leave": leave, "floor": floor}


def placement_memory(specs: dict[str, ChildSpec], nodes: int) -> float:
    """Bytes the placement holds (rings, instances, indexes) after a join and a leave."""
    names = [f"n{j:04d}" for j in range(nodes)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state = DesiredState()
    for members, changed in ((names, None), ([*names, "joiner"], ()), (names, ())):
        state.update(specs, changed, Inputs({n: NodeInfo(n, {}) for n in members}, {}))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return float(held)


def view_memory(specs: dict[str, ChildSpec]) -> tuple[float, float, float]:
    """Bytes per spec the view holds (its mirror and decoded records) for specs this
    node does not run, the spec's own stored size, and bytes per claim held (each
    child running on one of 300 nodes, under that node's lease)."""
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
    revision = len(specs)
    for number, (child_id, spec) in enumerate(specs.items()):
        node = f"n{number % 300:04d}"
        instance = Instance(spec, 0, node)
        value = running_claim(node, instance, number + 1)
        revision += 1
        lease = int(f"75878900000{number % 300:08d}")  # an int object per claim, as decoded
        view._put(KV(KEYS.claim(child_id), value, revision, revision, lease))
    view.claims()
    claims = tracemalloc.get_traced_memory()[0] - before - held
    tracemalloc.stop()
    return held / len(specs), stored / len(specs), claims / len(specs)


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


def _rss(pid: int) -> int:
    """Resident bytes of one process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def which_children(rows: int, groups: int = 10) -> dict[str, float]:
    """``ringctl which-children --json`` at ``rows`` rows, through the real CLI, from
    one standalone daemon (loopback) holding ``rows`` specs that can never run (no
    node has their label): the seconds of a whole listing (first, then again), of one
    filtered by ``--group`` (``rows / groups`` rows), the reply's bytes, the daemon's
    RSS with the specs stored and after listing; and the seconds of one protocol call
    without ringctl (``call``, before the others)."""
    with tempfile.TemporaryDirectory(prefix="ringd-scale-") as tmp:
        daemon = Daemon("scale", Path(tmp), new_session=True, die_with_parent=True)
        helpers: dict[str, int] = {}
        try:
            daemon.start(timeout=60)
            helpers = daemon.helpers()
            started = time.perf_counter()
            for start in range(0, rows, 1000):
                specs = [
                    {
                        "id": f"w{i:06d}",
                        "argv": ["/usr/bin/sleep", "3600"],
                        "group": f"g{i % groups}",
                        "on": {"zone": "nowhere"},
                    }
                    for i in range(start, min(rows, start + 1000))
                ]
                daemon.client.call("start_children", specs=specs)
            stored = time.perf_counter() - started
            out: dict[str, float] = {"store": stored, "rss_stored": _rss(daemon.pid)}
            # The daemon and the protocol alone (no ringctl process, no printing).
            started = time.perf_counter()
            listed = Client(daemon.socket, timeout=600).call("which_children")
            out["call"] = time.perf_counter() - started
            assert len(listed) == rows, len(listed)
            out["wire"] = len(json.dumps(listed, separators=(",", ":")))  # about the reply line
            for name, args, expect in (
                ("all", [], rows),
                ("again", [], rows),
                ("group", ["--group", "g0"], len(range(0, rows, groups))),
            ):
                started = time.perf_counter()
                done = daemon.ctl("which-children", "--json", *args, timeout=600)
                out[name] = time.perf_counter() - started
                assert done.returncode == 0, done.stderr[-2000:]
                listed = json.loads(done.stdout)
                assert len(listed) == expect, (name, len(listed), expect)
                if name == "all":
                    out["bytes"] = len(done.stdout.encode())
            out["rss"] = _rss(daemon.pid)
            return out
        finally:
            daemon.shutdown(helpers.values())  # its guard (and etcd), if left


async def _store_unrunnable(url: str, keys: Keys, count: int) -> None:
    """``count`` specs no node may run (``on = {zone = "nowhere"}``), straight into
    etcd, ``txn_ops`` keys per transaction, a few transactions at a time."""
    etcd = Etcd([url])
    try:
        items = [
            (
                keys.child(f"j{i:06d}"),
                encode(
                    ChildSpec(
                        id=f"j{i:06d}", argv=["/usr/bin/sleep", "3600"], on={"zone": "nowhere"}
                    )
                ),
            )
            for i in range(count)
        ]
        batches = [items[s : s + etcd.txn_ops] for s in range(0, count, etcd.txn_ops)]
        for at in range(0, len(batches), 16):
            async with trio.open_nursery() as nursery:
                for batch in batches[at : at + 16]:
                    nursery.start_soon(etcd.create_many, batch)
        _, kvs = await etcd.list(keys.prefix)
        assert len(kvs) >= count, len(kvs)
    finally:
        etcd.close()


async def _store_claimed(url: str, keys: Keys, count: int, nodes: int) -> None:
    """A cluster of ``nodes`` simulated nodes running ``count`` children: the nodes
    registered (a lease each, long enough for the run: nothing keeps them alive),
    the specs stored, and each child claimed, running, on the node the ring gives
    it, as a daemon claims it (``bench.scale_cluster``)."""
    etcd = Etcd([url])
    try:
        names = [f"sim{j:04d}" for j in range(nodes)]
        leases = {name: await register(etcd, name, ttl=3600, keys=keys) for name in names}
        specs = specs_of(count)
        revisions: dict[str, int] = {}
        items = [(keys.child(i), encode(s)) for i, s in specs.items()]
        for at in range(0, count, etcd.txn_ops):
            created = await etcd.create_many(items[at : at + etcd.txn_ops])
            revisions.update((kv.key, kv.mod_revision) for kv in created.values())
        state = DesiredState()
        placed = state.update(specs, None, Inputs({n: NodeInfo(n, {}) for n in names}, {}))
        by_node: dict[str, list[tuple[str, bytes]]] = {}
        for child_id, instances in placed.items():
            for instance in instances:
                value = running_claim(instance.node, instance, revisions[keys.child(child_id)])
                by_node.setdefault(instance.node, []).append((keys.claim(instance.key), value))
        for node, claims in by_node.items():
            for at in range(0, len(claims), etcd.txn_ops):
                await etcd.create_many(claims[at : at + etcd.txn_ops], lease=leases[node])
        assert await etcd.count(keys.prefix + "claims/") == count
    finally:
        etcd.close()


def join(count: int, nodes: int = 0, cluster: str = "scale") -> dict[str, float]:
    """A daemon joining a cluster of ``count`` specs (a private etcd, loopback):
    seconds to store them, seconds from spawn to ready, and its RSS then. With
    ``nodes``, the cluster has that many simulated nodes, each running its share of
    the children (claims, no processes); without, no node may run any child."""
    keys = Keys(f"/ringd/{cluster}/")
    with private_etcd() as server, tempfile.TemporaryDirectory(prefix="ringd-join-") as tmp:
        started = time.perf_counter()
        if nodes:
            trio.run(_store_claimed, server.url, keys, count, nodes)
        else:
            trio.run(_store_unrunnable, server.url, keys, count)
        stored = time.perf_counter() - started
        daemon = Daemon(
            "joiner",
            Path(tmp),
            etcd=server.url,
            cluster=cluster,
            new_session=True,
            die_with_parent=True,
        )
        helpers: dict[str, int] = {}
        try:
            started = time.perf_counter()
            daemon.start(timeout=300)  # ready: ``status`` answers with a lease
            ready = time.perf_counter() - started
            out = {"store": stored, "ready": ready, "rss": _rss(daemon.pid)}
            helpers = daemon.helpers()
            time.sleep(5)  # a settled figure: its first passes are done
            out["settled"] = _rss(daemon.pid)
            listed = Client(daemon.socket, timeout=600).call("which_children")
            assert len(listed) == count, len(listed)
            out["listed"] = _rss(daemon.pid)
            time.sleep(Listing.IDLE_AFTER + 5)  # the rows are dropped when nobody lists
            out["idle"] = _rss(daemon.pid)
            return out
        finally:
            daemon.shutdown(helpers.values())  # its guard (and etcd), if left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--specs", default="1000,10000,100000")
    parser.add_argument("--nodes", default="10,100,1000")
    parser.add_argument("--etcd-specs", type=int, default=30_000, help="0: skip the etcd read")
    parser.add_argument(
        "--rows", type=int, default=100_000, help="which-children --json at N rows; 0: skip"
    )
    parser.add_argument(
        "--join",
        type=int,
        default=100_000,
        help="a daemon joining N specs: start -> ready; 0: skip",
    )
    parser.add_argument(
        "--join-nodes",
        type=int,
        default=0,
        help="the cluster it joins has M simulated nodes running the N children (claims)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.specs.split(",")]
    node_counts = [int(n) for n in args.nodes.split(",")]
    print("placement CPU per membership change, in one daemon (s); every: deciding every child")
    print(
        f"{'specs':>8} {'nodes':>6} {'first':>7} {'join':>7} {'join 2':>7} {'leave':>7}"
        f" {'every':>7} {'x':>5}"
    )
    for size in sizes:
        specs = specs_of(size)
        for nodes in node_counts:
            f = placement(specs, nodes)
            print(
                f"{size:>8} {nodes:>6} {f['first']:>7.3f} {f['join']:>7.3f} {f['again']:>7.3f}"
                f" {f['leave']:>7.3f} {f['floor']:>7.3f} {f['floor'] / max(f['again'], 1e-6):>5.0f}"
            )
            sys.stdout.flush()
    held = placement_memory(specs_of(sizes[-1]), node_counts[-1])
    print(
        f"\nplacement memory, {sizes[-1]} specs x {node_counts[-1]} nodes: {held / 2**20:.1f} MiB"
    )
    print("\nview memory per spec not run here, and per claim (bytes)")
    for size in sizes:
        held, stored, claim = view_memory(specs_of(size))
        print(
            f"{size:>8} specs: {held:>6.0f} held, {stored:>4.0f} as stored in etcd;"
            f" a claim of each: {claim:>4.0f} held"
        )
    if args.etcd_specs:
        with private_etcd() as server:
            took, pages = trio.run(paged_read, server.url, args.etcd_specs)
        print(f"\npaged list of {args.etcd_specs} specs: {took:.2f} s in {pages} pages")
    if args.rows:
        w = which_children(args.rows)
        print(
            f"\nwhich-children --json at {args.rows} rows (standalone daemon, ringctl):"
            f" stored in {w['store']:.1f} s; {w['all']:.2f} s, again {w['again']:.2f} s,"
            f" --group (1 in 10) {w['group']:.2f} s; the protocol call alone {w['call']:.2f} s;"
            f" reply {w['wire'] / 2**20:.1f} MiB ({w['bytes'] / 2**20:.1f} MiB printed);"
            f" daemon RSS {w['rss_stored'] / 2**20:.0f} MiB"
            f" stored, {w['rss'] / 2**20:.0f} MiB after listing"
        )
    if args.join:
        j = join(args.join, args.join_nodes)
        where = (
            f"{args.join_nodes} simulated nodes running them (claims)"
            if args.join_nodes
            else "no node may run them"
        )
        print(
            f"\njoin at {args.join} specs (one daemon, its private etcd, loopback; {where}):"
            f" stored in {j['store']:.1f} s; start -> ready {j['ready']:.2f} s;"
            f" daemon RSS {j['rss'] / 2**20:.0f} MiB when ready,"
            f" {j['settled'] / 2**20:.0f} MiB 5 s later, {j['listed'] / 2**20:.0f} MiB after"
            f" listing every child, {j['idle'] / 2**20:.0f} MiB {Listing.IDLE_AFTER + 5:.0f} s"
            " later (nobody listing)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
