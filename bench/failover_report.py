"""The report of ``bench.failover``: its figures as the Markdown of BENCHMARKS.md's
"Membership" section (medians of the runs, ranges in brackets)."""

from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def spread(values: list[float], unit: float = 1.0, fmt: str = "{:.2f}") -> str:
    values = [v * unit for v in values if v == v]  # nan: not measured in that run
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    ttl = args.ttl
    fo, gr, floor = results["failover"], results["graceful"], results["floor"]
    n = statistics.median(s["children"] for s in fo)

    def col(
        samples: list[dict[str, float]], key: str, unit: float = 1.0, fmt: str = "{:.2f}"
    ) -> str:
        return spread([s[key] for s in samples], unit, fmt)

    ms = {"unit": 1000.0, "fmt": "{:.0f}"}
    ratio = statistics.median(s["total"] / ttl for s in fo)
    rows = [
        (
            "failover: SIGKILL -> all the victim's children running elsewhere",
            f"**{col(fo, 'total')} s** = **{ratio:.2f} x TTL** (TTL {ttl:g} s; "
            f"target TTL + 1 s = {(ttl + 1) / ttl:.2f} x TTL)",
        ),
        (
            "etcd floor, same run: last keepalive -> DELETE at a watcher (plain lease)",
            f"**{spread(floor)} s** = {statistics.median(floor) / ttl:.2f} x TTL",
        ),
        ("failover: SIGKILL -> the victim's children dead (its guard)",
         f"{col(fo, 'children_dead', **ms)} ms"),
        ("failover: SIGKILL -> the victim's alive key DELETE seen (lease expiry)",
         f"{col(fo, 'alive_deleted')} s"),
        ("failover: SIGKILL -> survivors' first / last claim created",
         f"{col(fo, 'first_claim')} / {col(fo, 'last_claim')} s"),
        (
            "graceful: SIGTERM -> all the victim's children published running elsewhere",
            f"**{col(gr, 'total', **ms)} ms** (target < 100 ms)",
        ),
        (
            "graceful: each child's handoff (victim's claim deleted -> a survivor's "
            "claim published running), median / p95 / max",
            f"**{col(gr, 'downtime_median', **ms)}** / {col(gr, 'downtime_p95', **ms)} / "
            f"{col(gr, 'downtime_max', **ms)} ms",
        ),
        (
            "graceful: the same move with nothing of ringd's, same run "
            "(`bench.handoff_floor`: SIGTERM and reap the children, then "
            f"{args.nodes - 1} processes `posix_spawn` as many)",
            f"{col(gr, 'floor', **ms)} ms; the handoff took "
            f"**{statistics.median(s['total'] / s['floor'] for s in gr):.2f} x** this floor",
        ),
        (
            "graceful: CPU used from SIGTERM to the last child published, ms: victim "
            "(and its guard) / survivors / etcd / the new children / this benchmark",
            " / ".join(
                col(gr, f"cpu_{k}", fmt="{:.0f}")
                for k in ("victim", "survivors", "etcd", "children", "benchmark")
            )
            + f"; all {os.cpu_count()} CPUs busy {col(gr, 'busy', unit=100, fmt='{:.0f}')} %",
        ),
        ("graceful: SIGTERM -> first / last claim released by the victim",
         f"{col(gr, 'first_release', **ms)} / {col(gr, 'last_release', **ms)} ms"),
        ("graceful: SIGTERM -> status row 'offline' written",
         f"{col(gr, 'status_offline', **ms)} ms"),
        ("graceful: SIGTERM -> out of the ring (alive key DELETE seen)",
         f"{col(gr, 'lease_revoked', **ms)} ms"),
        ("graceful: SIGTERM -> survivors' first / last claim created",
         f"{col(gr, 'first_claim', **ms)} / {col(gr, 'last_claim', **ms)} ms"),
        ("graceful: SIGTERM -> the victim daemon exited", f"{col(gr, 'daemon_exited', **ms)} ms"),
    ]  # fmt: skip
    lines = [
        f"Command: `python -m bench.failover --runs {args.runs} --nodes {args.nodes} "
        f"--children {args.children} --ttl {args.ttl:g}` ({results['when']}, "
        f"{results['machine']}; load average {results['load'][0]:.1f} before, "
        f"{results['load'][1]:.1f} after). Medians of {args.runs} runs, range in "
        f"brackets; the victim ran {n:.0f} children (`sleep`), {args.nodes - 1} survivors. "
        f"Self-fencing events (daemon logs): {results['fences']} in all, "
        f"{results['fenced_runs']} per run.",
        "",
        "| what | figure |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in rows),
    ]
    return "\n".join(lines)


def report_sizes(args: argparse.Namespace, results: dict[str, Any]) -> str:
    """Graceful handoff against the victim's number of children (and the floor)."""
    rows = []
    for size, samples in sorted([*results["sizes"].items(), (args.children, results["graceful"])]):
        n = statistics.median(s["children"] for s in samples)
        ratio = statistics.median(s["total"] / s["floor"] for s in samples)
        rows.append(
            f"| {n:.0f} (of {size}) | **{spread([s['total'] for s in samples], 1000, '{:.0f}')}**"
            f" | {spread([s['floor'] for s in samples], 1000, '{:.0f}')} | {ratio:.2f} x"
            f" | {spread([s['busy'] for s in samples], 100, '{:.0f}')} % |"
        )  # fmt: skip
    return "\n".join(
        [
            f"Graceful leave against the victim's number of children ({args.runs} runs each; "
            "the floor is `bench.handoff_floor` in the same run):",
            "",
            "| victim's children | SIGTERM -> all published running elsewhere, ms "
            "| floor, ms | handoff / floor | CPUs busy |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
