"""A cluster of K real ``ringd start`` daemons and S simulated nodes on one private
etcd: time to claim every child, each daemon's RSS and idle CPU, the daemons' CPU
per membership change (one simulated node joins), and etcd's CPU and RSS.

    python -m bench.scale_cluster [--real 3] [--nodes 3,10,30,100] [--children 1000,10000]

The simulated nodes live in one extra Python process (``--simulate``): each holds a
lease (kept alive), its ``alive`` and ``status`` records as membership writes them,
and claims (state "running", under its lease) for exactly the children the ring
gives it; it spawns nothing. Children the ring gives a real daemon really run
(``sleep 3600``); sizes where a real daemon would run more than ``--per-daemon``
are skipped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from ringd import procfs
from ringd.desired import DesiredState, Inputs, eligible_nodes
from ringd.etcd import Etcd
from ringd.keys import Keys
from ringd.records import Alive, Claim, Status, decode, encode, rfc3339
from ringd.testing import Daemon, kill_pids, wait_gone
from ringd.testing.etcd import private_etcd

CLUSTER = "scalec"
KEYS = Keys(f"/ringd/{CLUSTER}/")


async def _register(etcd: Etcd, node: str, ttl: int = 60) -> int:
    lease, _ = await etcd.grant(ttl)
    alive = Alive(node=node, host="simulated", lease=lease, started=rfc3339())
    await etcd.put(KEYS.alive(node), encode(alive), lease=lease)
    status = Status(node=node, status="online", last_change=rfc3339(), reason="simulated")
    await etcd.put(KEYS.status(node), encode(status))
    return lease


async def simulate(url: str, names: list[str]) -> None:
    """Run the simulated nodes (and any other node named ``sim*``, under the lease
    its alive record names) until killed."""
    etcd = Etcd([url])
    leases = [await _register(etcd, n) for n in names]
    state = DesiredState()

    async def keepalive() -> None:
        while True:
            await trio.sleep(10)
            for lease in leases:
                await etcd.keepalive(lease)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keepalive)
        while True:
            _, kvs = await etcd.list(KEYS.prefix)
            alive: dict[str, Alive] = {}
            specs = {}
            claims: dict[str, tuple[str, int]] = {}
            for kv in kvs:
                parsed = KEYS.parse(kv.key)
                if parsed is None:
                    continue
                kind, name, sub = parsed
                if kind == "nodes" and sub == "alive":
                    alive[name] = decode(kind, sub, name, kv.value)
                elif kind == "children":
                    specs[name] = decode(kind, sub, name, kv.value)
                elif kind == "claims":
                    claims[name] = (decode(kind, sub, name, kv.value).node, kv.create_revision)
            state.update(specs, None, Inputs(nodes=eligible_nodes(alive, ()), groups={}))
            for node, record in alive.items():
                if not node.startswith("sim") or record.lease is None:
                    continue
                want = state.on_node(node)
                stale = [
                    (KEYS.claim(k), r)
                    for k, (n, r) in claims.items()
                    if n == node and k not in want
                ]
                for at in range(0, len(stale), etcd.txn_ops):
                    await etcd.delete_many_if(stale[at : at + etcd.txn_ops])
                missing = [
                    (
                        KEYS.claim(k),
                        encode(Claim(node=node, state="running", id=i.spec.id, instance=k)),
                    )
                    for k, i in want.items()
                    if k not in claims
                ]
                for at in range(0, len(missing), etcd.txn_ops):
                    await etcd.create_many(missing[at : at + etcd.txn_ops], lease=record.lease)
            await trio.sleep(1.0)


async def _claims() -> int:
    etcd = Etcd([URL[0]])
    try:
        _, kvs = await etcd.list(KEYS.prefix + "claims/")
        return len(kvs)
    finally:
        etcd.close()


URL: list[str] = []


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu(pids: list[int]) -> list[float]:
    return [procfs.cpu_seconds(p) for p in pids]


def run_one(real: int, nodes: int, children: int) -> dict[str, float]:
    with private_etcd() as server, tempfile.TemporaryDirectory(prefix="ringd-sc-") as tmp:
        URL[:] = [server.url]
        assert server.process is not None
        etcd_pid = server.process.pid
        daemons = [
            Daemon(
                f"real{i}",
                Path(tmp) / f"real{i}",
                etcd=server.url,
                cluster=CLUSTER,
                new_session=True,
                die_with_parent=True,
            )
            for i in range(real)
        ]
        sim: subprocess.Popen[bytes] | None = None
        helpers: list[int] = []
        try:
            for d in daemons:
                (Path(tmp) / d.name).mkdir()
                d.start(timeout=60)
                helpers += d.helpers().values()
            names = [f"sim{j:04d}" for j in range(nodes - real)]
            sim = subprocess.Popen(
                [sys.executable, "-m", "bench.scale_cluster", "--simulate", server.url, *names],
                start_new_session=True,
            )
            deadline = time.monotonic() + 60
            while trio.run(_count_alive) < nodes:
                assert time.monotonic() < deadline, "simulated nodes did not register"
                time.sleep(0.2)
            started = time.perf_counter()
            for at in range(0, children, 1000):
                specs = [
                    {"id": f"c{i:06d}", "argv": ["sleep", "3600"]}
                    for i in range(at, min(children, at + 1000))
                ]
                daemons[0].client.call("start_children", specs=specs)
            while trio.run(_claims) < children:
                assert time.perf_counter() - started < 180, "children not all claimed"
                time.sleep(0.2)
            out: dict[str, float] = {"claimed": time.perf_counter() - started}
            time.sleep(5)  # let the starts settle
            pids = [d.pid for d in daemons] + [etcd_pid]
            before = _cpu(pids)
            time.sleep(5)
            idle = [(a - b) / 5 for a, b in zip(_cpu(pids), before, strict=True)]
            out["idle_cpu"] = max(idle[:-1])
            out["etcd_idle_cpu"] = idle[-1]
            out["rss"] = max(_rss(p) for p in pids[:-1])
            before = _cpu(pids)
            trio.run(_join)
            time.sleep(3)
            spent = [a - b for a, b in zip(_cpu(pids), before, strict=True)]
            out["join_cpu"] = sum(spent[:-1]) / real
            out["etcd_join_cpu"] = spent[-1]
            out["etcd_rss"] = _rss(etcd_pid)
            return out
        finally:
            if sim is not None:
                sim.kill()
                sim.wait()
            for d in daemons:
                if d.running():
                    try:
                        d.stop(timeout=60)
                    except subprocess.TimeoutExpired:
                        d.kill()
            kill_pids(wait_gone(helpers, 10))


async def _count_alive() -> int:
    etcd = Etcd([URL[0]])
    try:
        _, kvs = await etcd.list(KEYS.prefix + "nodes/")
        return sum(kv.key.endswith("/alive") for kv in kvs)
    finally:
        etcd.close()


async def _join() -> None:
    etcd = Etcd([URL[0]])
    try:
        await _register(etcd, "simjoiner", ttl=120)
    finally:
        etcd.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_cluster")
    parser.add_argument("--simulate", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--real", type=int, default=3)
    parser.add_argument("--nodes", default="3,10,30,100")
    parser.add_argument("--children", default="1000,10000")
    parser.add_argument("--per-daemon", type=int, default=100)
    args = parser.parse_args(argv)
    if args.simulate:
        trio.run(simulate, args.simulate[0], args.simulate[1:])
        return 0
    print(
        f"{'nodes':>5} {'children':>8} {'claimed s':>9} {'RSS MiB':>7} {'idle %':>6}"
        f" {'join CPU s':>10} {'etcd idle %':>11} {'etcd join s':>11} {'etcd MiB':>8}"
    )
    for children in [int(c) for c in args.children.split(",")]:
        for nodes in [int(n) for n in args.nodes.split(",")]:
            if children / nodes > args.per_daemon:
                print(f"{nodes:>5} {children:>8}  skipped: {children // nodes} children per daemon")
                continue
            r = run_one(args.real, nodes, children)
            print(
                f"{nodes:>5} {children:>8} {r['claimed']:>9.1f} {r['rss'] / 2**20:>7.0f}"
                f" {100 * r['idle_cpu']:>6.1f} {r['join_cpu']:>10.3f}"
                f" {100 * r['etcd_idle_cpu']:>11.1f} {r['etcd_join_cpu']:>11.3f}"
                f" {r['etcd_rss'] / 2**20:>8.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
