"""A cluster of K real ``ringd start`` daemons and S simulated nodes on one private
etcd, measured as issue 13 asks, one row per size:

* ``claimed``: from the first ``start_children`` call until every child has a claim
  (``Etcd.count`` over ``claims/``, polled every 0.1 s);
* each real daemon's RSS and idle CPU (the largest, the busiest), and etcd's idle
  CPU and bytes sent per watching process, over 5 s, 5 s after all were claimed;
* one membership change: one more simulated node joins (lease, alive, status); the
  real daemons' CPU per daemon, etcd's CPU, and etcd's bytes sent per watching
  process (idle bytes over the same time taken off), over ``max(3, C/10,000)`` s;
* a new real daemon: ``Daemon.start()`` from spawn until ready (it holds a lease,
  which it takes after its view has listed every key), then its RSS once every
  child has a claim again;
* a graceful leave (``ringd stop``, SIGTERM, of a second real daemon): from the
  signal until every child has a claim and none is under the leaver's lease any
  more. Its floor: one round of claim creates (``create_many``, 64 keys a
  transaction, up to 32 at once, as a daemon claims) of as many keys as the
  leaver held, on a scratch prefix no daemon watches;
* a failover (``kill -9`` of a third real daemon): from the kill until every child
  has a claim and the dead daemon's lease is gone, and when its lease was seen
  gone. Its floor: a lease granted at the kill with the daemons' TTL, never kept
  alive, until etcd deletes a key put under it (watched). The dead daemon kept
  its lease alive every TTL/4 until the kill, so its lease ends up to 2.5 s
  sooner than the floor's: failover minus "lease gone" is what ringd adds.

The real daemons' share lands on the remaining real daemons and on the simulated
nodes, as the ring places it.

    python -m bench.scale_cluster [--real 3] [--nodes 3,10,30,100,300]
        [--children 1000,10000,100000] [--per-daemon 100] [--profile PREFIX]

The simulated nodes live in one extra Python process (``--simulate``): each holds a
lease (TTL 60 s, kept alive every 10 s, the keepalives of all nodes spread over
those 10 s), its ``alive`` and ``status`` records as membership writes them, and
claims (state "running", under its lease, as a daemon publishes them once its
child runs) for exactly the children the ring gives it; it spawns nothing. It
follows the cluster as a daemon does, on a ``ClusterView`` (one list, then a
watch), places with ``DesiredState`` (only changed specs are placed again), and
holds its claims in memory: creates what is missing and free (create-if-absent;
a claim still held elsewhere waits for the view to show it released), deletes
what moved away, at most 5 passes a second. It also claims for any other node
named ``sim*`` (the joiner), under the lease that node's alive record names, and
keeps that lease alive. etcd's idle figures include those keepalives: 300
simulated nodes send 30 a second, where 300 daemons (TTL 10 s) would send 120.

Children the ring gives a real daemon really run (``sleep 3600``). ``--per-daemon``:
sizes where a node would run more than this many children (C / nodes) are
skipped, and so are sizes of fewer nodes than ``--real``. Each real daemon runs
about C / nodes ``sleep`` processes all along (the joiner and the new daemon
make up for the leave and the failover) and holds every spec (about 2 KiB of
RSS a child); storing the specs costs every watching process (each real daemon
and the simulator) about 0.35 ms of CPU a spec. Keep ``--real`` x C / nodes
within what the machine spawns quickly: on 2 CPUs ``--per-daemon 400`` (1,200
``sleep`` processes at most) is fine. The default 100 skips 3 nodes at 1,000,
3-30 nodes at 10,000, and every size at 100,000 up to 300 nodes (300 nodes at
100,000: ``--per-daemon 400``, about 2.5 minutes). ``--real`` 2 or more measures
both the leave and the failover (the new daemon is the third), 1 the leave only;
the first daemon is never stopped: specs are stored through it.

``--profile PREFIX``: py-spy (``pip install py-spy``) on the first daemon during
the join, as collapsed stacks in ``PREFIX-N-C.txt``.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ringd import procfs
from ringd.config import Config
from ringd.desired import DesiredState, Inputs, eligible_nodes
from ringd.errors import EtcdUnavailable
from ringd.etcd import Etcd
from ringd.keys import Keys
from ringd.placement import split_key
from ringd.records import Alive, Claim, Status, encode, rfc3339
from ringd.spec import spec_digest
from ringd.testing import Daemon, etcd3_client, kill_pids, private_etcd, wait_gone, wait_until
from ringd.view import ClusterView

if TYPE_CHECKING:
    from ringd.etcd import Event
    from ringd.placement import Instance
    from ringd.spec import ChildSpec

CLUSTER = "scalec"
KEYS = Keys(f"/ringd/{CLUSTER}/")
CLAIMS = KEYS.prefix + "claims/"
SCRATCH = f"/ringd-bench/{CLUSTER}-floors/"  # outside the prefix: no daemon watches it
TTL = Config().lease_ttl  # the daemons' lease TTL (they run with the default)
SIM_TTL = 60
PASS_INTERVAL = 0.2  # the simulator's passes: at most 5 a second
CLAIM_POLL = 0.1  # waiting for claims: one count over claims/ every 0.1 s
EVENT_POLL = 0.05  # timing a leave or a failover

logger = logging.getLogger("bench.scale_cluster")


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGKILL): the simulator must not outlive the benchmark.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


# -- the simulated nodes ---------------------------------------------------------------


async def register(etcd: Etcd, node: str, ttl: int = SIM_TTL, keys: Keys = KEYS) -> int:
    """A simulated node in the ring: its lease, and its alive and status records."""
    lease, _ = await etcd.grant(ttl)
    alive = Alive(node=node, host="simulated", lease=lease, started=rfc3339())
    await etcd.put(keys.alive(node), encode(alive), lease=lease)
    status = Status(node=node, status="online", last_change=rfc3339(), reason="simulated")
    await etcd.put(keys.status(node), encode(status))
    return lease


def running_claim(node: str, instance: Instance, spec_revision: int | None) -> bytes:
    """The claim of an instance running on ``node``, as a daemon writes it."""
    spec = instance.spec
    claim = Claim(
        node=node,
        state="running",
        id=spec.id,
        instance=instance.key,
        role=instance.role,
        group=spec.group,
        started=time.time(),
        revision=spec_revision,
        digest=spec_digest(spec),
        ready=True,
    )
    return encode(claim)


class Simulator:
    """The simulated nodes' reconciler: what ``ringd/reconciler.py`` does for its own
    node, for every node named ``sim*``, claiming without running anything.

    A pass looks at every instance of every simulated node when the nodes or the
    groups changed (or a write failed), else only at the instances of the specs
    changed since the last pass and at the claims waited for that changed (a
    burst of start-child calls costs a pass per call, not over every child)."""

    def __init__(self, etcd: Etcd, view: ClusterView) -> None:
        self.etcd = etcd
        self.view = view
        self.state = DesiredState()
        self.specs: dict[str, ChildSpec] = {}  # valid specs, start order
        self.spec_cursor: tuple[int, int] | None = None
        self.claim_cursor: tuple[int, int] | None = None
        self.leases: dict[str, int] = {}  # sim node -> the lease its claims go under
        self.held: dict[str, dict[str, int]] = {}  # sim node -> {instance key: create rev}
        self.holder: dict[str, str] = {}  # instance key -> the sim node holding it
        self.waiting: dict[str, str] = {}  # instance key -> the sim node waiting for it
        self.limiter = trio.CapacityLimiter(32)  # transactions in flight (as a daemon's)
        self.failed = False

    def _sync_specs(self) -> list[str] | None:
        """Bring ``specs`` up to date with the view; the ids changed (None: all)."""
        names, self.spec_cursor = self.view.changes("children", self.spec_cursor)
        if names is None:
            self.specs = {name: s.value for name, s in self.view.specs().items()}
            return None
        changed = list(dict.fromkeys(names))
        for name in changed:
            stored = self.view.spec(name)
            if stored is None:
                self.specs.pop(name, None)
            else:
                self.specs[name] = stored.value  # a new spec goes last
        return changed

    def _forget(self, node: str, key: str) -> None:
        self.held.get(node, {}).pop(key, None)
        if self.holder.get(key) == node:
            del self.holder[key]

    def _sync_claims(self) -> list[str] | None:
        """Forget claims of ours the view shows gone or of another incarnation (none
        in this benchmark; one forgotten by mistake is found again by
        create-if-absent, which reports the key as it is). Returns the instance keys
        to look at again: waited for and changed, or forgotten (None: all)."""
        names, self.claim_cursor = self.view.changes("claims", self.claim_cursor)
        keys = list(self.holder) if names is None else list(dict.fromkeys(names))
        again = []
        for key in keys:
            if key in self.waiting:
                again.append(key)
            if (node := self.holder.get(key)) is None:
                continue
            kv = self.view.get("claims", key)
            if kv is None or kv.create_revision != self.held[node].get(key):
                self._forget(node, key)
                again.append(key)
        return None if names is None else again

    def _value(self, node: str, instance: Instance) -> bytes:
        stored = self.view.spec(instance.spec.id)
        return running_claim(node, instance, stored.kv.mod_revision if stored else None)

    async def step(self) -> None:
        """One pass: place, then release and claim for the simulated nodes."""
        changed = self._sync_specs()
        alive = {name: stored.value for name, stored in self.view.alive_nodes().items()}
        drains = self.view.draining()
        inputs = Inputs(
            nodes=eligible_nodes(alive, drains),
            groups={name: stored.value for name, stored in self.view.groups().items()},
            draining=frozenset(n for n in self.view.in_ring() if n in drains),
        )
        token, placed = self.state.token, self.state.placed
        before = [] if changed is None else [placed.get(i) for i in changed]
        self.state.update(self.specs, changed, inputs)
        ours = {n: a.lease for n, a in alive.items() if n.startswith("sim") and a.lease}
        for node in [n for n in self.held if ours.get(n) != self.leases.get(n)]:
            for key in list(self.held[node]):  # gone, or a new lease: its claims went
                self._forget(node, key)
            del self.held[node]
        full = any(self.leases.get(n) != lease for n, lease in ours.items())
        self.leases = ours
        again = self._sync_claims()
        stale: dict[str, list[str]] = {}  # node -> keys to release
        missing: dict[str, list[tuple[str, bytes]]] = {}  # node -> claims to create
        # Compared by value: DesiredState may hand out a new, equal token each pass.
        full = full or changed is None or again is None or self.state.token != token
        if full or self.failed:  # every instance of every simulated node
            for node in ours:
                want = self.state.on_node(node)
                stale[node] = [key for key in self.held.get(node, {}) if key not in want]
                for key, instance in want.items():
                    self._want(node, key, instance, missing)
        else:  # the instances of the changed specs, and the claims waited for
            keys = dict.fromkeys(again or ())
            for found in (*before, *(self.state.placed.get(i) for i in changed or ())):
                keys.update((i.key, None) for i in found or ())
            for key in keys:
                child_id, replica = split_key(key)
                found = self.state.placed.get(child_id)
                placed_at = found[replica] if found and replica < len(found) else None
                owner = placed_at.node if placed_at is not None else None
                holder = self.holder.get(key)
                if holder is not None and holder != owner:
                    stale.setdefault(holder, []).append(key)
                if placed_at is not None and placed_at.node in ours:
                    self._want(placed_at.node, key, placed_at, missing)
        self.failed = False
        async with trio.open_nursery() as nursery:
            for node, keys_ in stale.items():
                for i in _steps(keys_):
                    nursery.start_soon(self._release, node, keys_[i : i + Etcd.txn_ops])
            for node, items in missing.items():
                for i in _steps(items):
                    batch = items[i : i + Etcd.txn_ops]
                    nursery.start_soon(self._claim, node, ours[node], batch)

    def _want(
        self, node: str, key: str, instance: Instance, missing: dict[str, list[tuple[str, bytes]]]
    ) -> None:
        """``node`` should hold ``key``: claim it if it is free (or ours already, by
        the view), else wait until the view shows it released."""
        if key in self.held.get(node, {}):
            return
        kv = self.view.get("claims", key)
        if kv is None or kv.lease == self.leases[node]:
            missing.setdefault(node, []).append((key, self._value(node, instance)))
            self.waiting.pop(key, None)
        else:
            self.waiting[key] = node

    async def _release(self, node: str, keys: list[str]) -> None:
        mine = self.held[node]
        async with self.limiter:
            try:
                await self.etcd.delete_many_if([(KEYS.claim(k), mine[k]) for k in keys])
            except EtcdUnavailable as exc:
                logger.warning("release: %s", exc)
                self.failed = True
                return
        for key in keys:
            self._forget(node, key)

    async def _claim(self, node: str, lease: int, items: list[tuple[str, bytes]]) -> None:
        async with self.limiter:
            try:
                kvs = await self.etcd.create_many(
                    [(KEYS.claim(k), v) for k, v in items], lease=lease
                )
            except EtcdUnavailable as exc:
                logger.warning("claim: %s", exc)
                self.failed = True
                return
        if self.leases.get(node) != lease:
            return  # the node went meanwhile
        mine = self.held.setdefault(node, {})
        for key, _ in items:
            kv = kvs.get(KEYS.claim(key))
            if kv is not None and kv.lease == lease:
                mine[key] = kv.create_revision
                self.holder[key] = node
            else:  # created meanwhile by another node: claimed once it is released
                self.waiting[key] = node

    async def run(self) -> None:
        """A pass on every change of the view, at most one per ``PASS_INTERVAL``
        (a failed write: again within a second, changed or not)."""
        seen = -1
        while True:
            with trio.move_on_after(1.0 if self.failed else math.inf):
                seen = await self.view.wait_changed(seen)
            began = trio.current_time()
            await self.step()
            await trio.sleep_until(began + PASS_INTERVAL)


def _steps(items: list[Any]) -> range:
    return range(0, len(items), Etcd.txn_ops)


async def simulate(url: str, names: list[str]) -> None:
    """Run the simulated nodes (and any other node named ``sim*``, under the lease
    its alive record names) until killed."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    etcd = Etcd([url])
    own = [await register(etcd, n) for n in names]
    view = ClusterView(etcd, KEYS)
    simulator = Simulator(etcd, view)

    async def keepalive() -> None:
        period = SIM_TTL / 6
        while True:
            leases = sorted({*own, *simulator.leases.values()})
            if not leases:
                await trio.sleep(period)
            for lease in leases:
                # Spread over the period, as independent daemons' are: a 5 s idle
                # window sees half of them, not all or none.
                await trio.sleep(period / len(leases))
                try:
                    await etcd.keepalive(lease)
                except EtcdUnavailable as exc:
                    logger.warning("keepalive: %s", exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        nursery.start_soon(keepalive)
        await simulator.run()


# -- measuring -------------------------------------------------------------------------


def _rss(pid: int) -> int:
    return procfs.rss(pid)


def _cpu(pids: list[int]) -> list[float]:
    return [procfs.cpu_seconds(p) for p in pids]


def _sent_bytes(url: str) -> float:
    """etcd's ``etcd_network_client_grpc_sent_bytes_total`` (its /metrics, on the
    client URL, loopback)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("etcd_network_client_grpc_sent_bytes_total")
    )


class Cluster:
    """One size's etcd, real daemons and simulator, and their measurements."""

    def __init__(self, url: str, etcd_pid: int, tmp: Path, verbose: bool) -> None:
        self.url = url
        self.etcd_pid = etcd_pid
        self.tmp = tmp
        self.verbose = verbose
        self.etcd = Etcd([url])
        self.client: Any = None  # etcd3's, for lease lookups (in threads)
        self.daemons: list[Daemon] = []
        self.sim: subprocess.Popen[bytes] | None = None
        self.helpers: list[int] = []
        self.began = time.perf_counter()

    def say(self, what: str) -> None:
        if self.verbose:
            print(f"  {time.perf_counter() - self.began:7.1f} s  {what}", file=sys.stderr)

    def check_sim(self) -> None:
        assert self.sim is not None
        if self.sim.poll() is not None:
            log = (self.tmp / "sim.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the simulator exited {self.sim.returncode}:\n{log}")

    async def start_daemon(self, name: str) -> tuple[Daemon, float]:
        """A new real daemon, started and ready; and the time from spawn to ready."""
        d = Daemon(
            name,
            self.tmp / name,
            etcd=self.url,
            cluster=CLUSTER,
            ttl=TTL,
            new_session=True,
            die_with_parent=True,
        )
        (self.tmp / name).mkdir()
        self.daemons.append(d)
        began = time.perf_counter()
        # Daemon.start(), spawned from this thread: die_with_parent kills a daemon when
        # the thread that spawned it exits (a worker thread would, when idle).
        d.start(wait=False)
        await trio.to_thread.run_sync(wait_until, d.ready, 180, f"{name} ready")
        took = time.perf_counter() - began
        self.helpers += d.helpers().values()
        return d, took

    async def claims(self) -> int:
        return await self.etcd.count(CLAIMS)

    async def wait_claimed(self, children: int, timeout: float) -> float:
        """Wait until every child has a claim; the seconds it took."""
        began = time.perf_counter()
        while await self.claims() < children:
            self.check_sim()
            assert time.perf_counter() - began < timeout, "children not all claimed"
            await trio.sleep(CLAIM_POLL)
        return time.perf_counter() - began

    async def lease_of(self, d: Daemon) -> int:
        kv = await self.etcd.get(KEYS.alive(d.name))
        assert kv is not None, f"{d.name} is not in the ring"
        assert kv.lease, f"{d.name}'s alive key has no lease"
        return kv.lease

    async def lease_claims(self, lease: int) -> int:
        """How many claims ``lease`` holds (0 once it is gone)."""
        if self.client is None:
            self.client = etcd3_client(self.url, timeout=5)
        info = await trio.to_thread.run_sync(self.client.get_lease_info, lease)
        if info.TTL < 0:
            return 0
        return sum(k.decode().startswith(CLAIMS) for k in info.keys)

    async def wait_taken_over(self, lease: int, children: int, timeout: float) -> None:
        """Wait until every child has a claim and ``lease`` holds none."""
        began = time.perf_counter()
        while await self.lease_claims(lease) or await self.claims() < children:
            self.check_sim()
            assert time.perf_counter() - began < timeout, "children not all claimed again"
            await trio.sleep(EVENT_POLL)

    async def claim_round(self, n: int) -> float:
        """The seconds one round of ``n`` claim creates takes, as a daemon claims
        (``create_many`` of 64 keys, up to 32 at once), on a scratch prefix."""
        value = encode(Claim(node="floor", state="starting"))
        keys = [f"{SCRATCH}claim-{i:06d}" for i in range(n)]
        made: list[tuple[str, int]] = []
        limiter = trio.CapacityLimiter(32)

        async def claim(batch: list[str]) -> None:
            async with limiter:
                kvs = await self.etcd.create_many([(k, value) for k in batch])
            made.extend((k, kv.create_revision) for k, kv in kvs.items())

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in _steps(keys):
                nursery.start_soon(claim, keys[i : i + Etcd.txn_ops])
        took = time.perf_counter() - began
        for i in _steps(made):
            await self.etcd.delete_many_if(made[i : i + Etcd.txn_ops])
        return took

    async def lease_expiry(self) -> float:
        """The seconds from a grant (TTL as the daemons') until etcd deletes a key
        put under it, never kept alive (watched: no polling)."""
        etcd = Etcd([self.url])  # its own client: the watch has the channel to itself
        key = f"{SCRATCH}expiry-{os.getpid()}-{time.monotonic_ns()}"
        began = time.perf_counter()
        try:
            lease, _ = await etcd.grant(TTL)
            await etcd.put(key, b"floor", lease=lease)
            put = await etcd.get(key)
            assert put is not None
            gone = trio.Event()

            async def on_events(events: list[Event], revision: int) -> None:
                if any(e.kind == "delete" and e.kv.key == key for e in events):
                    gone.set()

            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    await etcd.watch(key, put.mod_revision + 1, on_events)

                nursery.start_soon(watch)
                await gone.wait()
                took = time.perf_counter() - began
                nursery.cancel_scope.cancel()
            return took
        finally:
            etcd.close()

    def cleanup(self) -> None:
        if self.sim is not None and self.sim.poll() is None:
            self.sim.kill()
            self.sim.wait()
        for d in self.daemons:
            d.shutdown()
        kill_pids(wait_gone(self.helpers, 10))
        if self.client is not None:
            self.client.close()
        self.etcd.close()

    def spawn_simulator(self, names: list[str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / "sim.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bench.scale_cluster", "--simulate", self.url, *names],
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    async def measure(self, real: int, nodes: int, children: int, profile: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for i in range(real):
            await self.start_daemon(f"real{i}")
        self.say(f"{real} daemons ready")
        self.sim = self.spawn_simulator([f"sim{j:04d}" for j in range(nodes - real)])
        began = time.perf_counter()
        while await self.alive_nodes() < nodes:
            self.check_sim()
            assert time.perf_counter() - began < 120, "simulated nodes did not register"
            await trio.sleep(0.2)
        self.say(f"{nodes} nodes in the ring")

        # Every child claimed.
        began = time.perf_counter()
        first = self.daemons[0]
        for at in range(0, children, 1000):
            specs = [
                {"id": f"c{i:06d}", "argv": ["sleep", "3600"]}
                for i in range(at, min(children, at + 1000))
            ]
            await trio.to_thread.run_sync(partial(first.client.call, "start_children", specs=specs))
        self.say(f"{children} specs stored")
        await self.wait_claimed(children, 120 + children / 200)
        out["claimed"] = time.perf_counter() - began
        self.say(f"claimed in {out['claimed']:.1f} s")

        # Idle.
        await trio.sleep(5)  # let the starts settle
        watchers = real + 1  # the real daemons and the simulator
        pids = [d.pid for d in self.daemons] + [self.etcd_pid]
        cpu, sent = _cpu(pids), _sent_bytes(self.url)
        await trio.sleep(5)
        idle = [(a - b) / 5 for a, b in zip(_cpu(pids), cpu, strict=True)]
        idle_sent = (_sent_bytes(self.url) - sent) / 5
        out["idle_cpu"] = max(idle[:-1])
        out["etcd_idle_cpu"] = idle[-1]
        out["etcd_idle_bytes"] = idle_sent / watchers
        out["rss"] = max(_rss(p) for p in pids[:-1])

        # One membership change: a simulated node joins.
        window = max(3.0, children / 10_000)
        path = f"{profile}-{nodes}-{children}.txt"
        spy = _profile(first.pid, path, window) if profile else None
        cpu, sent = _cpu(pids), _sent_bytes(self.url)
        await register(self.etcd, "simjoiner", ttl=SIM_TTL)  # the simulator keeps it alive
        await trio.sleep(window)
        spent = [a - b for a, b in zip(_cpu(pids), cpu, strict=True)]
        joined = _sent_bytes(self.url) - sent - idle_sent * window
        if spy is not None:
            await trio.to_thread.run_sync(spy.wait)
        out["join_cpu"] = sum(spent[:-1]) / real
        out["etcd_join_cpu"] = spent[-1]
        out["etcd_join_bytes"] = joined / watchers
        out["etcd_rss"] = _rss(self.etcd_pid)
        await self.wait_claimed(children, 120)
        self.say(f"join measured ({window:.0f} s)")

        # A new real daemon: spawn to ready, then its RSS once all is claimed again.
        new, out["ready"] = await self.start_daemon(f"real{real}")
        await self.wait_claimed(children, 120)
        await trio.sleep(3)
        out["new_rss"] = _rss(new.pid)
        self.say(f"new daemon ready in {out['ready']:.1f} s")

        others = self.daemons[1:]  # the first stays: specs are stored through it
        if others:
            # Graceful leave.
            leaver = others[0]
            lease = await self.lease_of(leaver)
            held = await self.lease_claims(lease)
            began = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, lambda: leaver.stop(timeout=120))
                await self.wait_taken_over(lease, children, 120)
                out["leave"] = time.perf_counter() - began
            out["leave_floor"] = await self.claim_round(held)
            out["leave_moved"] = held
            self.say(f"graceful leave of {held} claims in {out['leave']:.2f} s")
        if len(others) > 1:
            # Failover: kill -9, and the floor's lease granted at the same moment.
            victim = others[1]
            lease = await self.lease_of(victim)
            out["failover_moved"] = await self.lease_claims(lease)
            floor: list[float] = []
            async with trio.open_nursery() as nursery:
                os.kill(victim.pid, signal.SIGKILL)
                began = time.perf_counter()

                async def expiry() -> None:
                    floor.append(await self.lease_expiry())

                nursery.start_soon(expiry)
                while True:  # its lease ends: etcd deletes its alive key and claims
                    if await self.etcd.get(KEYS.alive(victim.name)) is None:
                        break
                    await trio.sleep(EVENT_POLL)
                out["lease_gone"] = time.perf_counter() - began
                await self.wait_taken_over(lease, children, 120)
                out["failover"] = time.perf_counter() - began
            out["failover_floor"] = floor[0]
            await trio.to_thread.run_sync(victim.process.wait)  # type: ignore[union-attr]
            self.say(f"failover in {out['failover']:.2f} s")
        return out

    async def alive_nodes(self) -> int:
        _, kvs = await self.etcd.list(KEYS.prefix + "nodes/")
        return sum(kv.key.endswith("/alive") for kv in kvs)


async def run_one(
    real: int, nodes: int, children: int, profile: str = "", verbose: bool = False
) -> dict[str, float]:
    with private_etcd() as server, tempfile.TemporaryDirectory(prefix="ringd-sc-") as tmp:
        assert server.process is not None
        cluster = Cluster(server.url, server.process.pid, Path(tmp), verbose)
        try:
            return await cluster.measure(real, nodes, children, profile)
        except Exception:
            for d in cluster.daemons:  # what went wrong, before the logs are removed
                print(f"--- {d.name}.log\n{d.log_tail(2000)}", file=sys.stderr)
            sim = Path(tmp) / "sim.log"
            if sim.exists():
                print(f"--- sim.log\n{sim.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            raise
        finally:
            cluster.cleanup()


def _profile(pid: int, path: str, duration: float) -> subprocess.Popen[bytes]:
    """py-spy (not a dependency: ``pip install py-spy``) on one daemon during the join,
    as collapsed stacks (flamegraph.pl or speedscope read them)."""
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(math.ceil(duration)),
         "--rate", "200", "--format", "raw", "--output", path, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


COLUMNS = [
    # (heading, key, format): scaled as _row does
    ("nodes", "", ""),
    ("children", "", ""),
    ("claimed s", "claimed", ".1f"),
    ("RSS MiB", "rss", "mib"),
    ("idle %", "idle_cpu", "pct"),
    ("join CPU s", "join_cpu", ".3f"),
    ("etcd idle %", "etcd_idle_cpu", "pct"),
    ("etcd join s", "etcd_join_cpu", ".3f"),
    ("etcd MiB", "etcd_rss", "mib"),
    ("idle B/s/w", "etcd_idle_bytes", ".0f"),
    ("join KB/w", "etcd_join_bytes", "kb"),
    ("ready s", "ready", ".2f"),
    ("new MiB", "new_rss", "mib"),
    ("moved", "leave_moved", ".0f"),
    ("leave s", "leave", ".2f"),
    ("floor s", "leave_floor", ".3f"),
    ("failover s", "failover", ".2f"),
    ("lease gone s", "lease_gone", ".2f"),
    ("floor s", "failover_floor", ".2f"),
]


def _cell(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "mib":
        return f"{value / 2**20:.0f}"
    if fmt == "pct":
        return f"{100 * value:.1f}"
    if fmt == "kb":
        return f"{value / 1000:.0f}"
    return format(value, fmt)


def _row(cells: list[str]) -> str:
    return " ".join(c.rjust(max(len(h), 5)) for c, (h, _, _) in zip(cells, COLUMNS, strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_cluster")
    parser.add_argument("--simulate", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--real", type=int, default=3)
    parser.add_argument("--nodes", default="3,10,30,100,300")
    parser.add_argument("--children", default="1000,10000,100000")
    parser.add_argument(
        "--per-daemon", type=int, default=100, help="skip sizes of more children per node"
    )
    parser.add_argument(
        "--profile", default="", help="py-spy the first daemon's join into PREFIX-N-C.txt"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="each step, on stderr")
    args = parser.parse_args(argv)
    if args.simulate:
        trio.run(simulate, args.simulate[0], args.simulate[1:])
        return 0
    print(_row([h for h, _, _ in COLUMNS]), flush=True)
    for children in [int(c) for c in args.children.split(",")]:
        for nodes in [int(n) for n in args.nodes.split(",")]:
            if children / nodes > args.per_daemon:
                print(f"{nodes:>5} {children:>8}  skipped: {children // nodes} children per node")
                continue
            if nodes < args.real:
                print(f"{nodes:>5} {children:>8}  skipped: fewer nodes than --real {args.real}")
                continue
            began = time.perf_counter()
            r = trio.run(run_one, args.real, nodes, children, args.profile, args.verbose)
            cells = [str(nodes), str(children)]
            cells += [_cell(r.get(key), fmt) for _, key, fmt in COLUMNS[2:]]
            print(_row(cells) + f"   ({time.perf_counter() - began:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
