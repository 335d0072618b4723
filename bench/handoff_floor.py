"""The handoff floor: the least a machine can do to move N children between processes.

``python -m bench.handoff_floor --children N --spawners K [--runs R]`` starts N
children (``sleep 3600``, each in its own session, as ringd starts them), then,
timed: SIGTERM to each one's process group and wait for all to exit (the leaving
node), then K processes forked beforehand each ``posix_spawn`` N/K new ones
(the survivors). No etcd, no claims, no Python bookkeeping: what is left of a
graceful handoff when everything ringd adds is taken away. Prints one JSON
object per run: ``{"stop": s, "total": s}``.

The benchmark of a graceful leave (``bench.failover``) runs this in the same run,
on the same CPUs, so that its figure can be read as a multiple of this one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

SLEEP = shutil.which("sleep") or "/usr/bin/sleep"


def _spawner(go: int, done: int, count: int) -> None:
    """A survivor: wait for the word, spawn ``count`` children, report, clean up."""
    env = dict(os.environ)
    os.read(go, 1)
    pids = [os.posix_spawn(SLEEP, [SLEEP, "3600"], env, setsid=True) for _ in range(count)]
    os.write(done, b"x")
    os.read(go, 1)  # cleared to stop them (after the timing)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os._exit(0)


def one_run(children: int, spawners: int) -> dict[str, float]:
    env = dict(os.environ)
    workers = []
    for k in range(spawners):
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        count = children // spawners + (1 if k < children % spawners else 0)
        pid = os.fork()  # before anything else runs here: no threads to fork
        if pid == 0:
            _spawner(go_r, done_w, count)
        workers.append((pid, go_w, done_r))
    old = [os.posix_spawn(SLEEP, [SLEEP, "3600"], env, setsid=True) for _ in range(children)]
    try:
        time.sleep(0.3)  # let them all reach their sleep
        t0 = time.perf_counter()
        for pid in old:
            os.killpg(pid, signal.SIGTERM)
        for pid in old:
            os.waitpid(pid, 0)
        stopped = time.perf_counter()
        old = []
        for _, go_w, _ in workers:
            os.write(go_w, b"g")
        for _, _, done_r in workers:
            os.read(done_r, 1)
        total = time.perf_counter()
    finally:
        for pid in old:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for pid, go_w, _ in workers:
            os.write(go_w, b"s")
            os.waitpid(pid, 0)
    return {"stop": stopped - t0, "total": total - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff_floor", description=__doc__)
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--spawners", type=int, default=2, help="survivors")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    for _ in range(args.runs):
        print(json.dumps(one_run(args.children, args.spawners)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
