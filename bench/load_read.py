"""The read-load phase of ``bench.load``: client threads in a closed loop on the
three sockets (a connection per request, as ringctl does, or one per thread),
a probe that pings each daemon meanwhile, and one client alone (service times)."""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringd.protocol import MAX_LINE, Client, RemoteError, Unreachable, encode

from .common import percentile
from .load_cluster import SEED, CpuMeter, Profiler

if TYPE_CHECKING:
    from .load_cluster import Cluster


class Connection:
    """One persistent connection for many requests (the server reads line by line)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.replies = self.sock.makefile("rb")
        self._next_id = 0

    def call(self, op: str, **args: Any) -> Any:
        self._next_id += 1
        self.sock.sendall(encode({"id": self._next_id, "op": op, "args": args}))
        line = self.replies.readline(MAX_LINE + 1)
        if not line:
            raise ConnectionError("the daemon closed the connection")
        reply = json.loads(line)
        if reply.get("id") != self._next_id:
            raise RuntimeError(f"reply to request {reply.get('id')}, expected {self._next_id}")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise RemoteError(err.get("code", "error"), err.get("message", "unknown error"))
        return reply.get("result")

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def check(op: str, args: dict[str, Any], result: Any, n: int) -> None:
    """A wrong answer counts as an error, not as a fast reply."""
    if op == "find" and (result.get("id") != args["id"] or result.get("state") != "running"):
        raise RuntimeError(f"find {args['id']}: got id {result.get('id')!r} {result.get('state')}")
    if op == "which_children" and len(result) != n:
        raise RuntimeError(f"which_children: {len(result)} rows, expected {n}")
    if op == "ping" and "node" not in result:
        raise RuntimeError(f"ping: {result!r}")


def read_load(
    cluster: Cluster,
    ids: list[str],
    *,
    mix: dict[str, float],
    clients: int,
    duration: float,
    persistent: bool,
    profile: Path | None = None,
) -> dict[str, Any]:
    """``clients`` threads in a closed loop for ``duration`` seconds."""
    sockets = cluster.sockets
    ops = list(mix)
    weights = [mix[o] for o in ops]
    latencies: dict[str, list[float]] = {op: [] for op in ops}
    errors: list[str] = []
    ends: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    window: dict[str, float] = {}

    def reader(k: int) -> None:
        rng = random.Random(SEED * 1000 + k)
        path = sockets[k % len(sockets)]
        own: dict[str, list[float]] = {op: [] for op in ops}
        own_errors = []
        client = Client(path, timeout=30)
        conn = None
        try:
            conn = Connection(path) if persistent else None
        except OSError as exc:
            own_errors.append(f"connect via {Path(path).name}: {exc!r}")
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            return
        deadline = window["deadline"]
        while time.perf_counter() < deadline:
            op = rng.choices(ops, weights)[0]
            args = {"id": rng.choice(ids)} if op == "find" else {}
            t = time.perf_counter()
            try:
                caller = conn if persistent else client
                if caller is None:
                    raise ConnectionError("not connected (the daemon refused a new connection)")
                result = caller.call(op, **args)
                check(op, args, result, len(ids))
            except Exception as exc:
                own_errors.append(f"{op} {args} via {Path(path).name}: {exc!r}")
                if isinstance(exc, (Unreachable, OSError)):
                    time.sleep(0.1)  # the daemon is gone or refusing: do not spin
                if persistent:
                    if conn is not None:
                        conn.close()
                    conn = None
                    with contextlib.suppress(OSError):
                        conn = Connection(path)
                continue
            own[op].append(time.perf_counter() - t)
        end = time.perf_counter()
        if conn is not None:
            conn.close()
        with lock:
            for op in ops:
                latencies[op].extend(own[op])
            errors.extend(own_errors)
            ends.append(end)

    probe_lat: list[float] = []

    def probe(path: str) -> None:
        """One ping every 100 ms per daemon, alone on its connection: how long a small
        task (such as the lease keepalive) waits for the daemon's event loop."""
        own = []
        try:
            conn = Connection(path)
        except OSError:
            return
        while time.perf_counter() < window["deadline"]:
            t = time.perf_counter()
            try:
                conn.call("ping")
            except Exception:
                break  # the readers report the daemon's failures
            own.append(time.perf_counter() - t)
            time.sleep(0.1)
        conn.close()
        with lock:
            probe_lat.extend(own)

    pool = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(clients)]
    probes = [threading.Thread(target=probe, args=(p,), daemon=True) for p in sockets]
    for th in pool:
        th.start()
    profiler = Profiler(cluster.daemons["n1"].pid, profile)
    try:
        with CpuMeter(cluster.pids()) as cpu:
            start = time.perf_counter()
            window["deadline"] = start + duration
            barrier.wait(60)
            for th in probes:
                th.start()
            for th in pool + probes:
                th.join()
    finally:
        barrier.abort()
        profile_text = profiler.stop()
    elapsed = max(ends) - start
    total = sum(len(v) for v in latencies.values())
    return {
        "ops": {
            op: {
                "count": len(v),
                "rate": len(v) / elapsed,
                "p50": percentile(v, 0.5),
                "p99": percentile(v, 0.99),
                "max": max(v, default=math.nan),
                "errors": sum(1 for e in errors if e.startswith(op + " ")),
            }
            for op, v in latencies.items()
        },
        "rate": total / elapsed,
        "elapsed": elapsed,
        "probe_p50": percentile(probe_lat, 0.5),
        "probe_p99": percentile(probe_lat, 0.99),
        "probe_max": max(probe_lat, default=math.nan),
        "errors": errors,
        "cpu": cpu,
        "profile": profile_text,
    }


def idle_latency(cluster: Cluster, ids: list[str]) -> dict[str, Any]:
    """One client, one request at a time: the service time without queueing."""
    sock = cluster.sockets[0]
    client = Client(sock, timeout=30)
    out: dict[str, Any] = {}
    rng = random.Random(SEED)
    for op, count in (("ping", 200), ("find", 200), ("which_children", 20)):
        lat = []
        for _ in range(count):
            args = {"id": rng.choice(ids)} if op == "find" else {}
            t = time.perf_counter()
            check(op, args, client.call(op, **args), len(ids))
            lat.append(time.perf_counter() - t)
        out[op] = percentile(lat, 0.5)
    # Size of the which_children reply line: ringd.protocol.Client reads at most MAX_LINE.
    conn = Connection(sock)
    try:
        conn.sock.sendall(encode({"id": 1, "op": "which_children", "args": {}}))
        out["wc_bytes"] = len(conn.replies.readline(8 * MAX_LINE))
    finally:
        conn.close()
    return out
