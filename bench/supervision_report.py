"""The report of ``bench.supervision``: the table, the targets of issue 3 with their
verdicts, the other figures and the method, as BENCHMARKS.md's "## Supervision"."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
from typing import Any

from .common import cpu_model, percentile, write_section
from .supervision_systems import PER_CALL, START_CONCURRENCY, SYSTEMS

# Targets from issue 3.
LATENCY_RATIO = 2.0
START_RATIO = 0.5
PER_CHILD_KIB = 8.0
RSS_MIB = 60.0
STORM_S = 1.5


def machine() -> str:
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return (
        f"nproc {len(os.sched_getaffinity(0))} · {cpu_model()} · {mem:.0f} GiB"
        f" · Linux {platform.release()} · CPython {platform.python_version()}"
        f" · trio {importlib.metadata.version('trio')}"
        f" · supervisor {importlib.metadata.version('supervisor')}"
    )


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def table(r: dict[Any, Any]) -> str:
    rows: list[list[str]] = []
    for n in (1, 10):
        row = [f"restart latency N={n}: median (p95), ms"]
        for s in SYSTEMS:
            values = r.get(("latency", n, s))
            row.append(
                f"{statistics.median(values):.2f} ({percentile(values, 0.95):.2f})"
                if values
                else "-"
            )
        rows.append(row)
    row = ["latency samples, N=1 / N=10"]
    for s in SYSTEMS:
        counts = [len(r.get(("latency", n, s), [])) for n in (1, 10)]
        lost = sum(r.get(("latency_lost", n, s), 0) for n in (1, 10))
        row.append(f"{counts[0]} / {counts[1]}" + (f" ({lost} lost)" if lost else ""))
    rows.append(row)

    def cell(key: Any, fmt: str, field: str | None = None) -> str:
        value = r.get(key)
        if isinstance(value, dict):
            value = value.get(field) if field else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, fmt)

    rows.append(
        ["start 1,000: all exec'd (probe stamps), s"]
        + [cell(("start", 1000, s), ".2f", "exec") for s in SYSTEMS]
    )
    rows.append(
        ["start 1,000: all running (the system's own view), s"]
        + [cell(("start", 1000, s), ".2f", "running") for s in SYSTEMS]
    )
    rows.append(
        [f"start 1,000, ringd by {START_CONCURRENCY} clients' start_child calls: exec'd / running"]
        + [
            f"{cell(('start', 1000, PER_CALL), '.2f', 'exec')} /"
            f" {cell(('start', 1000, PER_CALL), '.2f', 'running')}"
        ]
        + ["-"] * (len(SYSTEMS) - 1)
    )
    rows.append(["daemon RSS @100 children, MiB", *(cell(("rss", 100, s), ".1f") for s in SYSTEMS)])
    rows.append(
        ["daemon RSS @1,000 children, MiB", *(cell(("rss", 1000, s), ".1f") for s in SYSTEMS)]
    )
    rows.append(
        ["memory per child = (RSS@1000 - RSS@100)/900, KiB"]
        + [cell(("per_child", s), ".1f") for s in SYSTEMS]
    )
    rows.append(
        [f"idle CPU @1,000 over {r.get('idle_window', 0):g} s, % of one core"]
        + [cell(("idle", s), ".2f") for s in SYSTEMS]
    )
    storm = []
    for s in SYSTEMS:
        value = r.get(("storm", s))
        if value is None:
            storm.append("-")
        elif not value:
            storm.append("failed")
        else:
            storm.append(f"{value['all']:.2f} (half: {value['half']:.2f})")
    rows.append(["restart storm, 1,000 killed: all replaced, s", *storm])
    header = ["", *SYSTEMS]
    return "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    )


def targets(r: dict[Any, Any]) -> list[str]:
    out = []
    for n in (1, 10):
        ringd, floor = (
            _median(r.get(("latency", n, "ringd"))),
            _median(r.get(("latency", n, "trio floor"))),
        )
        spawn = _median(r.get(("latency", n, "spawn floor")))
        if ringd is not None and floor is not None:
            ratio = ringd / floor
            extra = f"; {ringd / spawn:.2f}x the spawn floor" if spawn else ""
            out.append(
                f"{_verdict(ratio <= LATENCY_RATIO)} restart latency N={n}: ringd median"
                f" {ringd:.2f} ms = {ratio:.2f}x the trio floor's {floor:.2f} ms"
                f" (target ≤ {LATENCY_RATIO:g}x){extra}"
            )
    ringd_start, sup_start = r.get(("start", 1000, "ringd")), r.get(("start", 1000, "supervisord"))
    if ringd_start and sup_start:
        ratio = ringd_start["exec"] / sup_start["exec"]
        also = ringd_start["running"] / sup_start["running"]
        per_call = r.get(("start", 1000, PER_CALL))
        out.append(
            f"{_verdict(ratio < START_RATIO)} start 1,000 (ringd from a specs file, as"
            f" supervisord from its config): ringd {ringd_start['exec']:.2f} s ="
            f" {ratio:.2f}x supervisord's {sup_start['exec']:.2f} s, all exec'd (target"
            f' < {START_RATIO:g}x); by each system\'s own "running": {also:.2f}x'
            + (
                f"; by one start_child call per child, {per_call['exec']:.2f} s ="
                f" {per_call['exec'] / sup_start['exec']:.2f}x"
                if per_call
                else ""
            )
        )
    per_child = r.get(("per_child", "ringd"))
    if per_child is not None:
        floor, sup = r.get(("per_child", "trio floor"), 0), r.get(("per_child", "supervisord"), 0)
        out.append(
            f"{_verdict(per_child <= PER_CHILD_KIB)} memory per child: ringd {per_child:.1f} KiB"
            f" (target ≤ {PER_CHILD_KIB:g} KiB; trio floor {floor:.1f}, supervisord {sup:.1f})"
        )
    rss = r.get(("rss", 1000, "ringd"))
    if rss is not None:
        helpers = sum(r.get(("rss", 1000, f"ringd {h}"), 0) for h in ("guard", "etcd"))
        out.append(
            f"{_verdict(rss < RSS_MIB)} RSS at 1,000: ringd daemon {rss:.1f} MiB (target"
            f" < {RSS_MIB:g} MiB, the daemon process; with its guard and private etcd"
            f" {rss + helpers:.1f} MiB)"
        )
    idle, sup = r.get(("idle", "ringd")), r.get(("idle", "supervisord"))
    if idle is not None and sup is not None:
        etcd = r.get(("idle", "ringd etcd"))
        resync = 100 * r.get("resync_cpu", 0.0) / 300
        out.append(
            f"{_verdict(idle + resync <= sup)} idle CPU at 1,000: ringd daemon {idle:.2f} %"
            f" + {resync:.2f} % for its re-list every 300 s ({r.get('resync_keys', 0)} keys,"
            f" {1000 * r.get('resync_cpu', 0.0):.0f} ms each) vs supervisord {sup:.2f} % of"
            " one core (target ≤ supervisord's)"
            + (f"; ringd's private etcd adds {etcd:.2f} %" if etcd is not None else "")
        )
    storm = r.get(("storm", "ringd"))
    if storm is not None:
        out.append(
            f"{_verdict(bool(storm) and storm['all'] <= STORM_S)} restart storm: ringd "
            + (f"{storm['all']:.2f} s" if storm else "did not finish")
            + f" (target ≤ {STORM_S:g} s)"
        )
    return out


def details(r: dict[Any, Any], crashes: list[str]) -> list[str]:
    """Figures that are not in the table."""
    out = []
    for system, how in (
        ("ringd", "one start_children request, as `ringctl start-children FILE` sends"),
        (PER_CALL, f"{START_CONCURRENCY} start_child calls in flight"),
    ):
        start = r.get(("start", 1000, system))
        if start:
            out.append(
                f"ringd start 1,000 ({how}, daemon already up): answered"
                f" {start['answered']:.2f} s, all exec'd {start['exec']:.2f} s, all running"
                f" {start['running']:.2f} s, etcd quiet (claims published)"
                f" {start['settled']:.2f} s. Daemon start-up before that (private etcd,"
                f" lease): {start['startup']:.2f} s"
            )
    sup = r.get(("start", 1000, "supervisord"))
    if sup and "rpc" in sup:
        out.append(
            f'supervisord: "running" is the last `entered RUNNING state` in its log;'
            f" one `getAllProcessInfo` at 1,000 programs took {sup['rpc']:.2f} s"
        )
    helpers = []
    for name in ("guard", "etcd"):
        rss = [r.get(("rss", n, f"ringd {name}")) for n in (100, 1000)]
        idle = r.get(("idle", f"ringd {name}"))
        if None not in rss:
            helpers.append(
                f"{name} RSS {rss[0]:.1f} / {rss[1]:.1f} MiB at 100 / 1,000"
                + (f", idle CPU {idle:.2f} %" if idle is not None else "")
            )
    if helpers:
        out.append("ringd's other processes, not counted above: " + "; ".join(helpers))
    if "rss_after_storm" in r:
        out.append(
            f"ringd daemon RSS after the storm {r['rss_after_storm']:.1f} MiB; after one"
            f" `which_children --local` ({r['which_children_s'] * 1000:.0f} ms,"
            f" {r['which_children_running']} running) {r['rss_after_which']:.1f} MiB"
        )
    storms = [f"{s} {r[('storm', s)]['half']:.2f} s" for s in SYSTEMS if r.get(("storm", s))]
    if storms:
        out.append("storm, half replaced: " + ", ".join(storms))
    if "load" in r:
        loads = ", ".join(f"{phase} {value:.1f}" for phase, value in r["load"].items())
        out.append(f"load average (1 min) as each phase started: {loads}")
    for crash in crashes:
        out.append(f"**daemon crash** during {crash}; the step was rerun on a fresh daemon")
    return out


METHOD = """\
Method: every system supervises the same child ({probe}, `bench/probe.c`), which
writes CLOCK_MONOTONIC into a FIFO as the first thing `main` does and then sleeps.
Restart latency = the replacement's stamp - the moment the bench sent SIGKILL to
its predecessor, after a U(0, 1 s) pause (no phase-locking with a poll timer);
the systems take turns round by round, in random order per round. ringd is a
real `ringd start` in standalone mode (private etcd), children started through
the control socket with `max_restarts: 10000, max_seconds: 1`. trio floor =
`trio.lowlevel.open_process` + `await wait()` in a loop; spawn floor =
`os.posix_spawn` (own session) + pidfd on trio, i.e. ringd's way minus its pipe,
log and bookkeeping (`bench/floor.py`). supervisord = generated config,
`autorestart=true`, `startsecs=0`, everything else default (minfds 1024, AUTO
child logs: a log file per program and stream, as ringd keeps a log per child).
Start 1,000: ringd from its request with the daemon already up: the specs
of a file in one `start_children` request (`ringctl start-children FILE`, the
counterpart of supervisord's config file), and, on another fresh daemon, one
`start_child` call per child ({concurrency} in flight); the others from process
launch (supervisord's figure includes reading its config and its first ~1 s
poll). "Running" is ringd's `status` (polled every 50 ms) and supervisord's log.
RSS is the daemon process alone, on fresh instances, read before anything lists
the children (ringd's guard and private etcd are listed separately). Idle CPU is the daemon's
user+system time over the same window for all systems at once (60 s: one of
ringd's figures publications), plus, for ringd, its full re-list of the cluster
keys every 300 s, amortized (the CPU of one such list through the same client,
measured in the bench process). Storm: all 1,000 children
SIGKILLed in one loop; time from the first kill to the last replacement's stamp."""


def report(
    r: dict[Any, Any], command: str, when: str, probe_kind: str, crashes: list[str], *, write: bool
) -> None:
    """Print the report of a run (``r``: its results), and with ``write`` put it in
    BENCHMARKS.md."""
    for s in SYSTEMS:
        if ("rss", 100, s) in r and ("rss", 1000, s) in r:
            r[("per_child", s)] = (r[("rss", 1000, s)] - r[("rss", 100, s)]) * 1024 / 900
    head = (
        f"Command: `{command}` (from the repository root; the run took {r['wall']:.0f} s)  \n"
        f"Run: {when} · {machine()}  \n"
        f"Load average (1 min) at start / end: {r['load_start']:.2f} / {r['load_end']:.2f}"
        f" (a shared machine: compare ratios within the run)  \nChild: {probe_kind}"
    )
    body = table(r)
    goals, notes = targets(r), details(r, crashes)
    print(f"\n{head}\n\n{body}\n")
    for line in goals + notes:
        print(f"- {line}")
    if write:
        method = METHOD.format(probe=probe_kind, concurrency=START_CONCURRENCY)
        section = "\n\n".join(
            [
                "## Supervision",
                head,
                body,
                "Targets (issue 3):\n\n" + "\n".join(f"- {t}" for t in goals),
                "Details:\n\n" + "\n".join(f"- {n}" for n in notes),
                method,
            ]
        )
        print(f"\nwritten to {write_section('Supervision', section + chr(10))}")
