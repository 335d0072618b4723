"""Who ran what, when: the children's journals plus a process sampler, checked for
overlap (DESIGN invariant 1, at most once, measured rather than assumed).

A test child (``child.py``) writes ``start``/``stop`` records with
``time.monotonic()`` stamps to its journal. A child that is SIGKILLed (fencing,
the guard) writes no stop record, so a ``Timeline`` thread also samples the live
child processes every ~10 ms and keeps, for each pid, when it was last seen alive
and when it was first seen gone. An instance's life is then
``[journal start, journal stop]``, or ``[journal start, first seen gone]`` if it
was killed: a conservative end, at most one sample late. Two lives of one child id
must never overlap; the sampler also flags any instant where one id has two live
processes.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringd import procfs
from ringd.procfs import descendants as descendants  # tests import it from here
from ringd.testing.processes import check_kept_up, start_sampler, stop_sampler

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterable


@dataclass
class Seen:
    """One child process as the sampler saw it."""

    child_id: str
    node: str
    first: float  # time.monotonic() of the scan that first saw it
    last: float
    last_index: int  # index of that scan


@dataclass(frozen=True)
class Life:
    """One instance of a child: where, which pid, from when until when."""

    child_id: str
    node: str
    pid: int
    start: float
    end: float  # math.inf: still running when the timeline ended
    killed: bool  # no stop record: the end comes from the sampler


def scan(cluster_name: str, root: int, also: Iterable[int] = ()) -> dict[int, tuple[str, str]]:
    """Live child processes of one test cluster, not grandchildren: pid -> (id, node).

    Looks at the processes below ``root`` (the test process: daemons are its
    children, their children its grandchildren) plus ``also`` (pids seen before, in
    case their daemon died and they were re-parented), not at all of /proc: this
    machine may run thousands of other processes, and a full scan then takes
    100 ms instead of 1.
    """
    marker = f"TEST_CLUSTER={cluster_name}".encode()
    found: dict[int, tuple[str, str]] = {}
    for pid, raw in procfs.environ_scan(marker, descendants(root) | set(also)):
        # Three entries, found by bytes.find: splitting every entry of every
        # environment took half of a scan of 300 children.
        raw = b"\0" + raw
        child_id = _entry(raw, b"\0RINGD_CHILD_ID=")
        if child_id is None or _entry(raw, b"\0TEST_ROLE=") == b"grandchild":
            continue
        if procfs.alive(pid):
            found[pid] = (child_id.decode(), (_entry(raw, b"\0RINGD_NODE=") or b"?").decode())
    return found


def _entry(raw: bytes, prefix: bytes) -> bytes | None:
    """The value of the entry that ``prefix`` (``\\0NAME=``) starts in ``raw``, if any."""
    at = raw.find(prefix)
    if at < 0:
        return None
    at += len(prefix)
    end = raw.find(b"\0", at)
    return raw[at:] if end < 0 else raw[at:end]


def read_claims(client: Any, prefix: str) -> dict[str, tuple[str, int]] | None:
    """Every claim of the cluster: child id -> (node, create revision); None when
    etcd does not answer (it is being restarted, or partitioned)."""
    try:
        found = {}
        for value, meta in client.get_prefix(prefix, serializable=True):
            key = meta.key.decode().removeprefix(prefix)
            if "/" not in key:  # masters only: processes carry the child id
                found[key] = (json.loads(value).get("node", "?"), meta.create_revision)
        return found
    except Exception:  # any etcd or decoding failure: no claims this time
        return None


def claim_violations(
    when: float,
    before: dict[str, tuple[str, int]],
    after: dict[str, tuple[str, int]],
    live: dict[int, tuple[str, str]],
) -> list[tuple[float, str, list[tuple[int, str]]]]:
    """Children seen running (``live``: pid -> (id, node)) while another node held
    the same incarnation of their claim in the reads ``before`` and ``after`` it."""
    found = []
    for pid, (child_id, node) in live.items():
        held = before.get(child_id)
        if held is not None and held[0] != node and after.get(child_id) == held:
            found.append((when, child_id, [(pid, node), (0, f"claim of {held[0]}")]))
    return found


def sample(
    cluster_name: str,
    root: int,
    interval: float,
    stop: threading.Event,
    etcd_url: str | None = None,
) -> dict[str, Any]:
    """Scan every ``interval`` until ``stop``; returns what was seen (JSON-able).

    With ``etcd_url``, the cluster's claims are read before each scan too: a child
    seen running on node X while the same incarnation of its claim (same create
    revision) was held by another node Y in the reads before and after that scan
    ran without its claim, which the at-most-once rule forbids.
    """
    seen: dict[int, list[Any]] = {}  # pid -> [id, node, first, last, last_index]
    scans: list[tuple[float, float]] = []
    violations: list[tuple[float, str, list[tuple[int, str]]]] = []
    client = None
    if etcd_url:
        from ringd.testing import etcd3_client

        client = etcd3_client(etcd_url, timeout=1)
    prefix = f"/ringd/{cluster_name}/claims/"
    claims_checked = 0
    pending: tuple[float, dict[str, tuple[str, int]] | None, dict[int, tuple[str, str]]] | None
    pending = None  # the previous scan, waiting for the claims read after it
    while not stop.is_set() and os.getppid() == root:  # ends with the test process too
        claims = read_claims(client, prefix) if client is not None else None
        if pending is not None and pending[1] is not None and claims is not None:
            claims_checked += 1
            violations += claim_violations(pending[0], pending[1], claims, pending[2])
        begin = time.monotonic()
        live = scan(cluster_name, root, seen)
        end = time.monotonic()
        pending = (begin, claims, live)
        index = len(scans)
        scans.append((begin, end))
        by_id: dict[str, list[tuple[int, str]]] = {}
        for pid, (child_id, node) in live.items():
            by_id.setdefault(child_id, []).append((pid, node))
            s = seen.get(pid)
            if s is None or s[0] != child_id:
                seen[pid] = [child_id, node, begin, end, index]
            else:
                s[3], s[4] = end, index
        for child_id, instances in by_id.items():
            if len(instances) > 1:
                violations.append((begin, child_id, instances))
        stop.wait(interval)
    if client is not None:
        client.close()
    return {
        "seen": seen,
        "scans": scans,
        "violations": violations,
        "claims_checked": claims_checked,
    }


class Timeline:
    """Samples the live child processes of one test cluster (env ``TEST_CLUSTER``)
    every ``interval`` seconds, in a process of its own: in a thread of the test
    process it would queue for the GIL behind the test's own polling and sample
    three times less often.
    """

    def __init__(
        self, cluster_name: str, *, interval: float = 0.01, etcd_url: str | None = None
    ) -> None:
        self.cluster_name = cluster_name
        self.interval = interval
        self.etcd_url = etcd_url  # also check each scan against the claims (see sample)
        self.claims_checked = 0
        self.seen: dict[int, Seen] = {}
        self.scans: list[tuple[float, float]] = []
        self.violations: list[tuple[float, str, list[tuple[int, str]]]] = []
        self.startup_timeout = 10.0  # seconds for the sampler's first scan
        self.began = self.ended = math.nan  # time.monotonic() of start() and stop()
        self._process: subprocess.Popen[bytes] | None = None
        self._out = Path(tempfile.mkstemp(prefix="timeline-", suffix=".json")[1])

    def live(self) -> dict[int, dict[str, str]]:
        """Live child processes now (a scan in this process): pid -> {id, node}."""
        return {
            pid: {"RINGD_CHILD_ID": child_id, "RINGD_NODE": node}
            for pid, (child_id, node) in scan(self.cluster_name, os.getpid()).items()
        }

    @property
    def samples(self) -> int:
        return len(self.scans)

    @property
    def duration(self) -> float:
        """Seconds from ``start()`` to ``stop()``."""
        return self.ended - self.began

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.timeline", self.cluster_name, str(os.getpid()),
                str(self.interval), str(self._out), self.etcd_url or ""]  # fmt: skip

    def start(self) -> Timeline:
        """Start the sampler and return once its first scan is done.

        Raises:
            AssertionError: the sampler exited, or did not start within
                ``startup_timeout`` seconds (it is killed): a test must never go on
                believing it is watched when it is not.
        """
        self._process = start_sampler(
            self.command(),
            self._out,
            self.startup_timeout,
            "timeline sampler",
            Path(__file__).parent.parent,
        )
        self.began = time.monotonic()
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self.ended = time.monotonic()
        data = stop_sampler(process, self._out, "timeline sampler")
        self.scans = [tuple(s) for s in data["scans"]]
        self.seen = {int(pid): Seen(*s) for pid, s in data["seen"].items()}
        self.violations = [(t, i, [tuple(x) for x in inst]) for t, i, inst in data["violations"]]
        self.claims_checked = data.get("claims_checked", 0)

    def __enter__(self) -> Timeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def gone_after(self, pid: int, since: float) -> float:
        """When ``pid`` was first seen gone: the end of the first scan after the last
        one that saw it (or, never seen, the first scan that began after ``since``);
        ``math.inf`` if no such scan."""
        s = self.seen.get(pid)
        if s is not None:
            index = s.last_index + 1
        else:
            index = bisect.bisect_right([b for b, _ in self.scans], since)
        return self.scans[index][1] if index < len(self.scans) else math.inf


def read_journal(journal: Path) -> dict[str, list[tuple[str, str, str, int, float]]]:
    """child id -> [(what, id, node, pid, stamp)] in file order."""
    out: dict[str, list[tuple[str, str, str, int, float]]] = {}
    for path in sorted(journal.glob("*.log")):
        for line in path.read_text().splitlines():
            what, child_id, node, pid, stamp = line.split()
            out.setdefault(child_id, []).append((what, child_id, node, int(pid), float(stamp)))
    return out


def lives(journal: Path, timeline: Timeline) -> dict[str, list[Life]]:
    """child id -> its instances, in start order."""
    out: dict[str, list[Life]] = {}
    for child_id, records in read_journal(journal).items():
        stops = {pid: stamp for what, _, _, pid, stamp in records if what == "stop"}
        for what, _, node, pid, stamp in records:
            if what != "start":
                continue
            if pid in stops:
                life = Life(child_id, node, pid, stamp, stops[pid], killed=False)
            else:
                life = Life(child_id, node, pid, stamp, timeline.gone_after(pid, stamp), True)
            out.setdefault(child_id, []).append(life)
    for instances in out.values():
        instances.sort(key=lambda life: life.start)
    return out


def overlaps(all_lives: dict[str, list[Life]]) -> list[tuple[Life, Life]]:
    """Pairs of instances of one child id whose lives overlap."""
    bad = []
    for instances in all_lives.values():
        for a, b in itertools.pairwise(instances):
            if b.start <= a.end:
                bad.append((a, b))
    return bad


def journaled(journal: Path, timeline: Timeline) -> bool:
    """True once every live child has written its start record (a child stopped
    before that, during Python's start-up, leaves no trace in its journal)."""
    for pid, env in timeline.live().items():
        path = journal / f"{env['RINGD_CHILD_ID']}.log"
        if not path.exists() or f" {pid} " not in path.read_text():
            return False
    return True


def check_at_most_once(
    journal: Path, timeline: Timeline, ids: Iterable[str], *, min_hz: float = 5.0
) -> dict[str, list[Life]]:
    """Assert DESIGN invariant 1 over the whole stopped ``timeline``: the sampler ran
    all along (at least ``min_hz`` scans a second on average, and read the claims at
    most scans if it was given etcd), never saw one child id alive twice nor alive
    under another node's claim, and no two journaled lives of any child overlap.
    Every id of ``ids`` must have journaled a start. Returns the lives.

    ``min_hz`` (see ``check_kept_up``, which also bounds the longest gap) is a floor
    that catches a sampler that stalled or never ran, not its rate: it scans ~70 times a second on an idle machine, ~20 while 30 children
    start on 2 CPUs, and the journals are exact for every child stopped by SIGTERM.
    """
    assert timeline.duration > 0, "the timeline was started and stopped"
    check_kept_up(
        [b for b, _ in timeline.scans], timeline.began, timeline.ended, "the sampler",
        min_hz=min_hz,
    )  # fmt: skip
    if timeline.etcd_url:
        assert timeline.claims_checked >= timeline.samples / 2, (
            f"the claims were read at {timeline.claims_checked} of {timeline.samples} scans"
        )
    assert timeline.violations == [], timeline.violations[:5]
    all_lives = lives(journal, timeline)
    assert sorted(all_lives) == sorted(ids), "every child journaled its start"
    bad = overlaps(all_lives)
    assert bad == [], f"{len(bad)} overlapping lives: {bad[:5]}"
    return all_lives


def handovers(all_lives: dict[str, list[Life]], *, killed_only: bool = False) -> list[float]:
    """Gaps (seconds) between one instance's end and the next one's start, when they
    ran on different nodes: the safety margin of each move."""
    gaps = []
    for instances in all_lives.values():
        for a, b in itertools.pairwise(instances):
            if a.node != b.node and (a.killed or not killed_only):
                gaps.append(b.start - a.end)
    return gaps


def main(argv: list[str]) -> int:
    """``python -m tests.timeline CLUSTER ROOT_PID INTERVAL OUT [ETCD_URL]``: sample
    until SIGTERM."""
    cluster_name, root, interval, out = argv[1], int(argv[2]), float(argv[3]), Path(argv[4])
    etcd_url = argv[5] if len(argv) > 5 and argv[5] else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scan(cluster_name, root)
    out.write_text("{}")  # started
    data = sample(cluster_name, root, interval, stop, etcd_url)
    out.write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
