"""Rolling-update benchmark: the time to roll 1,000 one-instance children and one
3-replica child onto a new spec, against the time to start them, in the same run.

    .venv/bin/python -m bench.rollout [--children N] [--no-write]

A private etcd and three real ``ringd start`` daemons on loopback (the cluster of
``bench.load``, lease TTL 3 s). Both phases send the same op, one ``apply`` of every
spec (``sleep 3600`` with a marker in the environment, the default ``min_ready``
of 1 s), through n1's socket:

1. **Start.** The specs are created: from the request until every instance runs
   and is ready.
2. **Rollout.** Every spec changes (one more variable in its environment): from
   the request until every instance runs the new spec (the spec revision in its
   claim is the new one) and is ready. A one-instance child is stopped and started
   again; the 3-replica child's instances move one at a time, each only once the
   other two run and are ready.

Progress is read with ``which_children`` every 0.25 s. With ``--no-write`` (or
another ``--children``) nothing is written; otherwise the table goes into
BENCHMARKS.md under "## Rolling updates". Every process is stopped by pid in a
``finally`` (``bench.load_cluster.Cluster.stop``).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringd.protocol import Client

from .common import cpu_model, interrupt_on, log, write_section
from .load_cluster import LEASE_TTL, MARKER_VAR, NODES, Cluster

if TYPE_CHECKING:
    from collections.abc import Iterable

CHILDREN = 1000
REPLICATED = "web"  # the 3-replica child
POLL = 0.25
TIMEOUT = 600.0


def specs(count: int, marker: str, version: str) -> list[dict[str, Any]]:
    env = {MARKER_VAR: marker, "ROLLOUT_VERSION": version}
    singles = [{"id": f"r-{i:05d}", "argv": ["sleep", "3600"], "env": env} for i in range(count)]
    return [*singles, {"id": REPLICATED, "argv": ["sleep", "3600"], "env": env, "replicas": 3}]


@dataclass
class Phase:
    """One apply, and when each part of it was done (seconds after the request)."""

    name: str
    answered: float = 0.0
    done: dict[str, float] = field(default_factory=dict)  # "singles", REPLICATED


def run_phase(client: Client, name: str, children: list[dict[str, Any]]) -> Phase:
    """Apply ``children`` and wait until every instance runs its new spec, ready."""
    since = client.call("status")["revision"]  # the new specs' revisions are above it
    phase = Phase(name)
    start = time.monotonic()
    result = client.call("apply", children=children)
    phase.answered = time.monotonic() - start
    actions = {entry["action"] for entry in result["plan"]}
    log(f"{name}: apply answered in {phase.answered:.2f} s ({', '.join(sorted(actions))})")
    singles = len(children) - 1
    deadline = start + TIMEOUT
    while len(phase.done) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: not done within {TIMEOUT:g} s: {phase.done}")
        rows = client.call("which_children")
        now = time.monotonic() - start
        rolled = [
            row
            for row in rows
            if row["state"] == "running"
            and row.get("ready") is True
            and (row.get("revision") or 0) > since
        ]
        replicas = sum(row["id"] == REPLICATED for row in rolled)
        if "singles" not in phase.done and len(rolled) - replicas == singles:
            phase.done["singles"] = now
            log(f"{name}: {singles} one-instance children done at {now:.2f} s")
        if REPLICATED not in phase.done and replicas == 3:
            phase.done[REPLICATED] = now
            log(f"{name}: the 3-replica child done at {now:.2f} s")
        time.sleep(POLL)
    return phase


def render(phases: list[Phase], children: int, argv: Iterable[str]) -> str:
    command = " ".join(["python -m bench.rollout", *argv])
    loads = os.getloadavg()
    load = " ".join(f"{x:.1f}" for x in loads)
    if loads[0] > (os.cpu_count() or 1):
        load += " (other work shared the CPUs: the figures are slower than on an idle machine)"
    lines = [
        "## Rolling updates",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on this machine:"
        f" {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()},"
        f" CPython {platform.python_version()}; load average at the end: {load}.",
        f"{len(NODES)} daemons and a private etcd on loopback (lease TTL {LEASE_TTL:g} s);"
        f" {children:,} one-instance children (`sleep 3600`) and one 3-replica child, every"
        " spec with the default `min_ready` (1 s); both phases are one `apply` of every"
        " spec through one socket, timed from the request until every instance runs the"
        " spec (its claim's spec revision is the new one) and is ready, read with"
        f" `which_children` every {POLL:g} s.",
        "",
        f"| phase | `apply` answered | {children:,} one-instance children running and ready"
        " | 3-replica child running and ready |",
        "|---|---|---|---|",
    ]
    for phase in phases:
        lines.append(
            f"| {phase.name} | {phase.answered:.2f} s | {phase.done['singles']:.2f} s"
            f" | {phase.done[REPLICATED]:.2f} s |"
        )
    start, roll = phases
    ratio = roll.done["singles"] / start.done["singles"]
    lines += [
        "",
        f"Rolling every child onto a new spec took {ratio:.1f}"
        " times as long as starting them: each one-instance child is stopped (SIGTERM, its"
        " claim released) before its new instance is claimed and started, one pass later."
        f" The 3-replica child's rollout ({roll.done[REPLICATED]:.1f} s) is three such steps"
        " in a row, each waiting for the instance before it to be ready (`min_ready`, 1 s);"
        " tests/test_rollout.py checks, sampling every 20 ms, that at most one of its"
        " instances is down at any time.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    parser.add_argument("--children", type=int, default=CHILDREN, help="one-instance children")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    write = not args.no_write and args.children == CHILDREN
    interrupt_on(signal.SIGTERM)
    marker_value = secrets.token_hex(8)
    tmp = Path(tempfile.mkdtemp(prefix="ringd-rollout-"))
    cluster = Cluster(tmp, f"{MARKER_VAR}={marker_value}".encode())
    try:
        cluster.start()
        client = Client(cluster.sockets[0], timeout=TIMEOUT)
        phases = [
            run_phase(client, "start", specs(args.children, marker_value, "1")),
            run_phase(client, "rollout", specs(args.children, marker_value, "2")),
        ]
    finally:
        problems = cluster.stop()
        for problem in problems:
            log(f"cleanup: {problem}")
        shutil.rmtree(tmp, ignore_errors=True)
    text = render(phases, args.children, argv)
    print(text)
    if write:
        log(f"wrote {write_section('Rolling updates', text)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
