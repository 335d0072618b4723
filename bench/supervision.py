"""Supervision benchmark: ringd next to the trio floors and supervisord, in one run.

    .venv/bin/python -m bench.supervision [--quick] [--no-write] [--keep] [--seed N]

Every system supervises the same child, a tiny C probe compiled here (``probe.c``;
static if gcc can, else dynamic, else ``probe.py``), which writes
``TAG PID CLOCK_MONOTONIC-ns`` into one FIFO as the first thing it does and then
sleeps. Restart latency is the replacement's stamp minus the time the bench sent
SIGKILL to its predecessor, so no supervisor's API or log is trusted for it.

Systems: ringd (a real ``ringd start`` in standalone mode: its own private etcd,
children started through the control socket), the trio floor (``open_process`` +
``await wait()`` in a loop, ``bench/floor.py trio``), the spawn floor
(``posix_spawn`` + pidfd like ringd, ``bench/floor.py spawn``) and supervisord
(PyPI ``supervisor``, generated config, ``autorestart=true``, ``startsecs=0``).

Phases: (1) restart latency, N=1 and N=10, the systems interleaved round by round
with a U(0, 1 s) pause before every kill (no phase-locking with a poll timer);
(2) fresh instances with 100 children: RSS; (3) fresh instances started with
1,000 children: time to start, RSS, then idle CPU of all of them over the same
30 s; (4) a restart storm per system (SIGKILL all 1,000 children at once).

If a daemon under test dies, the bench says so (with the exception from its log),
reruns that step on a fresh instance (at most twice) and reports the crash.

A full run writes the table into BENCHMARKS.md under "## Supervision".
Every process started here is stopped by pid in a ``finally`` (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ringd import procfs
from ringd.config import Config
from ringd.testing import etcd3_client, hard_stop, kill_pids

from .common import interrupt_on, log, percentile
from .supervision_report import report
from .supervision_systems import (
    PER_CALL,
    PREFIX,
    SYSTEMS,
    Crashed,
    Floor,
    Instance,
    Ringd,
    Stamps,
    Supervisord,
    build_probe,
    rss_mib,
    wait_alive,
)

ATTEMPTS = 3  # a step whose daemon crashed is rerun on a fresh instance, this many times in all


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
        self.stamps = Stamps(self.tmp / "stamps")
        self.wall_offset = time.time() - time.monotonic()
        self.instances: list[Instance] = []
        self.probe: list[str] = []
        self.probe_kind = ""
        self.results: dict[Any, Any] = {}
        self.crashes: list[str] = []
        self._generation = 0

    def load(self, phase: str) -> None:
        """Note the load average (1 min) as a phase starts: the machine is shared."""
        self.results.setdefault("load", {})[phase] = os.getloadavg()[0]

    def crashed(self, step: str, exc: Crashed) -> None:
        self.crashes.append(f"{step}: {exc}")
        log(f"CRASH during {step}: {exc}")

    # -- restart latency -------------------------------------------------------------

    def sample(self, inst: Instance) -> float | None:
        """Kill one random child after a U(0, 1 s) pause; ms until its replacement ran."""
        tag = self.rng.choice(inst.tags)
        old = self.stamps.pid(tag)
        time.sleep(self.rng.uniform(0.0, 1.0))
        inst.check()
        killed = time.monotonic_ns()
        os.kill(old, signal.SIGKILL)
        try:
            stamp = self.stamps.wait_all([tag], 10, {tag: old}, inst.check)[tag]
        except TimeoutError:
            log(f"{inst.system}: no replacement for {tag} within 10 s")
            return None
        return (stamp[1] - killed) / 1e6

    def fresh_ringd(self, n: int, prefix: str) -> Ringd:
        """A new ringd daemon running ``n`` children, settled."""
        self._generation += 1
        ringd = Ringd(self, f"{prefix}{self._generation}")
        ringd.start()
        ringd.add(n)
        self.stamps.wait_all(ringd.tags, 300, alive=ringd.check)
        ringd.settle(quiet=1.0)
        return ringd

    def phase_latency(self) -> None:
        many, few = (8, 3) if self.quick else (30, 8)
        log(f"restart latency: {many} samples per system and N ({few} for supervisord)")
        self.load("latency")
        ringd = self.fresh_ringd(1, "rl")
        self.results["ringd_startup"] = ringd.startup
        for n in (1, 10):
            if n > 1:
                ringd.add(n - 1)
                self.load("latency N=10")
            floors = [Floor(self, "trio", f"tl{n}", n), Floor(self, "spawn", f"sl{n}", n)]
            sup = Supervisord(self, f"vl{n}", n)
            for inst in [*floors, sup]:
                inst.start()
            for inst in [ringd, *floors, sup]:
                self.stamps.wait_all(inst.tags, 60, alive=inst.check)
            ringd.settle(quiet=1.0)
            plan = {ringd.system: many, "trio floor": many, "spawn floor": many, sup.system: few}
            live: dict[str, Instance] = {"ringd": ringd, "trio floor": floors[0]}
            live |= {"spawn floor": floors[1], "supervisord": sup}
            samples: dict[str, list[float]] = {system: [] for system in plan}
            lost = dict.fromkeys(plan, 0)
            # Round robin, random order per round: drift on a shared machine hits all alike.
            for r in range(max(plan.values())):
                todo = [system for system, count in plan.items() if r < count]
                self.rng.shuffle(todo)
                for system in todo:
                    try:
                        ms = self.sample(live[system])
                    except Crashed as exc:
                        if system != "ringd":
                            raise
                        self.crashed(f"restart latency N={n}", exc)
                        ringd.stop()
                        ringd = self.fresh_ringd(n, "rl")
                        live["ringd"] = ringd
                        ms = None
                    if ms is None:
                        lost[system] += 1
                    else:
                        samples[system].append(ms)
            for system, values in samples.items():
                self.results[("latency", n, system)] = values
                self.results[("latency_lost", n, system)] = lost[system]
                if values:
                    log(
                        f"  N={n:<2} {system:<12} median {statistics.median(values):8.3f} ms"
                        f"  p95 {percentile(values, 0.95):8.3f} ms  ({len(values)} samples)"
                    )
            for inst in [*floors, sup]:
                inst.stop()
        ringd.stop()

    # -- 100 and 1,000 children ------------------------------------------------------

    def start_instance(self, system: str, n: int, prefix: str) -> tuple[Instance, dict[str, float]]:
        """A fresh instance of ``system`` started with ``n`` children, settled.

        Returns it and its start timings (s from the first start request, or from
        launch): all exec'd (probe stamps), all reported running by the system.
        The RSS is measured before anything asks the system for a status list.
        """
        inst: Instance
        if system in ("ringd", PER_CALL):
            for attempt in range(ATTEMPTS):
                self._generation += 1
                ringd = Ringd(self, f"{prefix}{self._generation}")
                try:
                    ringd.start()
                    t0 = time.monotonic()
                    answered = ringd.add(n, per_call=system == PER_CALL)
                    stamps = self.stamps.wait_all(ringd.tags, 300, alive=ringd.check)
                    running = ringd.settle()
                    settled = time.monotonic() - 2.0  # minus the quiet period
                    rss = rss_mib(ringd.pid)
                    break
                except Crashed as exc:
                    self.crashed(f"start {n} (attempt {attempt + 1})", exc)
                    ringd.stop()
                    if attempt + 1 == ATTEMPTS:
                        raise
            executed = max(ns for _, ns in stamps.values()) / 1e9
            timings = {
                "answered": answered - t0,
                "exec": executed - t0,
                "running": running - t0,
                "settled": settled - t0,
                "startup": ringd.startup,
                "rss": rss,
            }
            return ringd, timings
        if system == "supervisord":
            inst = Supervisord(self, f"{prefix}", n)
        else:
            inst = Floor(self, system.split()[0], f"{prefix}", n)
        inst.start()
        t0 = inst.launched
        stamps = self.stamps.wait_all(inst.tags, 300, alive=inst.check)
        executed = max(ns for _, ns in stamps.values()) / 1e9
        time.sleep(1.0)
        timings = {"exec": executed - t0, "running": executed - t0, "rss": rss_mib(inst.pid)}
        if isinstance(inst, Supervisord):
            sup = inst
            t = time.monotonic()
            wait_alive(lambda: sup.running() == n, 60, "supervisord: all RUNNING", 0.2, sup.check)
            timings["rpc"] = time.monotonic() - t  # one getAllProcessInfo, usually
            at = sup.running_at()
            timings["running"] = (at if at is not None else math.nan) - t0
        return inst, timings

    def phase_rss100(self) -> None:
        """Fresh instances with 100 children, all at once (only their RSS is measured)."""
        log("100 children: fresh instances, RSS")
        self.load("RSS@100")
        others = [
            Floor(self, "trio", "th", 100),
            Floor(self, "spawn", "sh", 100),
            Supervisord(self, "vh", 100),
        ]
        for inst in others:
            inst.start()
        ringd, timings = self.start_instance("ringd", 100, "rh")
        self.results[("rss", 100, "ringd")] = timings["rss"]
        for name, pid in ringd.helpers().items():
            self.results[("rss", 100, f"ringd {name}")] = rss_mib(pid)
        for inst in others:
            self.stamps.wait_all(inst.tags, 120, alive=inst.check)
        time.sleep(1.0)
        for inst in others:
            self.results[("rss", 100, inst.system)] = rss_mib(inst.pid)
        for inst in [ringd, *others]:
            log(f"  {inst.system:<12} RSS@100 {self.results[('rss', 100, inst.system)]:6.1f} MiB")
            inst.stop()

    def thousand(self, system: str) -> Instance:
        inst, timings = self.start_instance(system, 1000, f"{PREFIX[system]}k")
        self.results[("start", 1000, system)] = timings
        self.results[("rss", 1000, system)] = timings["rss"]
        for name, pid in inst.helpers().items():
            self.results[("rss", 1000, f"ringd {name}")] = rss_mib(pid)
        log(
            f"  {system:<12} all exec'd {timings['exec']:6.2f} s, running"
            f" {timings['running']:6.2f} s, RSS@1000 {timings['rss']:6.1f} MiB"
        )
        return inst

    def phase_thousand(self) -> dict[str, Instance]:
        log("1,000 children: fresh instances, time to start, RSS")
        self.load("start 1,000")
        live = {system: self.thousand(system) for system in SYSTEMS}
        # The same 1,000 through one start_child call each: time only, then stopped.
        inst, timings = self.start_instance(PER_CALL, 1000, "rc")
        self.results[("start", 1000, PER_CALL)] = timings
        log(
            f"  {PER_CALL}: all exec'd {timings['exec']:6.2f} s, running {timings['running']:.2f} s"
        )
        assert inst.process is not None
        hard_stop(inst.process, inst.helpers().values())
        return live

    def resync_cost(self, ringd: Ringd) -> float:
        """CPU seconds of one full re-list of ringd's keys (what its periodic resync
        reads), through the same etcd client, in this process: the resync falls
        outside most idle windows, so it is added to ringd's figure amortized."""
        client = etcd3_client(ringd.call("status")["etcd"])
        prefix = Config().key_prefix
        try:
            client.get_prefix_response(prefix)  # warm up the channel
            costs = []
            for _ in range(3):
                c0 = time.process_time()
                resp = client.get_prefix_response(prefix)
                costs.append(time.process_time() - c0)
            self.results["resync_keys"] = len(resp.kvs)
            return statistics.median(costs)
        finally:
            client.close()

    def phase_idle(self, live: dict[str, Instance]) -> None:
        # One figures publication (every 60 s) per window; the re-list (every 300 s)
        # is measured separately and amortized.
        window = 10.0 if self.quick else 60.0
        log(f"idle CPU with 1,000 children each: {window:g} s, all systems at once")
        self.load("idle")
        pids = {inst.system: inst.pid for inst in live.values()}
        for name, pid in live["ringd"].helpers().items():
            pids[f"ringd {name}"] = pid
        before = {name: procfs.cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        for name, pid in pids.items():
            try:
                pct = 100 * (procfs.cpu_seconds(pid) - before[name]) / elapsed
            except OSError:
                self.crashed("idle CPU", Crashed(f"{name} died during the idle window"))
                continue
            self.results[("idle", name)] = pct
            log(f"  {name:<18} {pct:6.2f} % of one core")
        self.results["idle_window"] = window
        assert isinstance(live["ringd"], Ringd)
        cost = self.results["resync_cpu"] = self.resync_cost(live["ringd"])
        log(f"  ringd resync: {cost * 1000:.0f} ms of CPU per re-list, every 300 s")

    def storm(self, inst: Instance) -> dict[str, float]:
        old = {tag: self.stamps.pid(tag) for tag in inst.tags}
        inst.check()
        t0 = time.monotonic_ns()
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)
        sent = time.monotonic_ns()
        new = self.stamps.wait_all(inst.tags, 60, old, inst.check)
        delays = sorted((ns - t0) / 1e9 for _, ns in new.values())
        return {"all": delays[-1], "half": delays[len(delays) // 2 - 1], "kill": (sent - t0) / 1e9}

    def phase_storm(self, live: dict[str, Instance]) -> None:
        log("restart storm: SIGKILL all 1,000 children at once")
        self.load("storm")
        for system in ["trio floor", "spawn floor", "ringd", "supervisord"]:
            for attempt in range(ATTEMPTS):
                inst = live[system]
                try:
                    result = self.storm(inst)
                    break
                except TimeoutError as exc:
                    log(f"  {system}: {exc}")
                    result = {}
                    break
                except Crashed as exc:
                    self.crashed(f"storm (attempt {attempt + 1})", exc)
                    inst.stop()
                    if system != "ringd" or attempt + 1 == ATTEMPTS:
                        result = {}
                        break
                    live[system], _ = self.start_instance(system, 1000, "rs")
            self.results[("storm", system)] = result
            if result:
                log(f"  {system:<12} all replaced in {result['all']:6.2f} s")
            if isinstance(inst, Ringd) and result:
                try:
                    self.after_storm(inst)
                except Crashed as exc:
                    self.crashed("the claims updates after the storm", exc)
            else:
                time.sleep(1.0)

    def after_storm(self, ringd: Ringd) -> None:
        ringd.settle()
        self.results["rss_after_storm"] = rss_mib(ringd.pid)
        # One which-children --local: its cost, and the memory it leaves behind.
        t = time.monotonic()
        rows = ringd.call("which_children", local=True)
        self.results["which_children_s"] = time.monotonic() - t
        self.results["which_children_running"] = sum(1 for r in rows if r["state"] == "running")
        self.results["rss_after_which"] = rss_mib(ringd.pid)

    # -- run -------------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        self.results["load_start"] = os.getloadavg()[0]
        self.probe, self.probe_kind = build_probe(self.tmp, self.stamps)
        log(f"child: {self.probe_kind} ({' '.join(self.probe)})")
        self.phase_latency()
        self.phase_rss100()
        live = self.phase_thousand()
        self.phase_idle(live)
        self.phase_storm(live)
        for inst in live.values():
            # No graceful stop: ringd's takes ~7 s at 1,000 children, supervisord's ~10 s.
            if inst.process is not None and inst.process.poll() is None:
                hard_stop(inst.process, inst.helpers().values())
        self.results["wall"] = time.monotonic() - started
        self.results["load_end"] = os.getloadavg()[0]

    def cleanup(self) -> None:
        for inst in reversed(self.instances):
            try:
                inst.stop()
            except Exception as exc:  # keep cleaning up the rest
                log(f"stopping {inst.prefix}: {exc!r}")
        # Anything left that runs our probe (it has our FIFO's path in its argv).
        marker = self.stamps.path.encode()
        kill_pids(pid for pid in procfs.pids() if marker in procfs.cmdline(pid))
        self.stamps.close()
        r = self.results
        if self.args.keep:
            raw = {" ".join(map(str, k)) if isinstance(k, tuple) else k: v for k, v in r.items()}
            (self.tmp / "results.json").write_text(json.dumps(raw, indent=1))
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.supervision",
        description="ringd vs the trio floors vs supervisord: restart latency, start,"
        " memory, idle CPU, restart storm (see the module docstring).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples; does not write")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, raw results)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the random pauses")
    args = parser.parse_args(argv)
    command = ".venv/bin/python -m bench.supervision" + (" --quick" if args.quick else "")

    # supervisord keeps 3 fds per child and ringd 2: make sure 1,000 children fit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))

    interrupt_on(signal.SIGTERM)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.cleanup()
    write = not args.quick and not args.no_write
    report(bench.results, command, when, bench.probe_kind, bench.crashes, write=write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
