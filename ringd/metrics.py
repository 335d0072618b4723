"""Prometheus metrics: counted always, served only when ``metrics_address`` is set.

Counting is a dict update here; ``prometheus_client`` (and the HTTP server it
brings) is imported only when the endpoint is started, and reads these counts at
scrape time through a collector. Importing it always cost the daemon ~4 MiB of
its ~60 MiB, for an endpoint that is off by default.

Children by state and claims held are read from the daemon at scrape time, so
nothing is counted twice and idle daemons do no work for them.
"""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING, Any

import trio

from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .supervisor import Supervisor

logger = logging.getLogger(__name__)


class Counter:
    """A monotonic count per label values (none, for an unlabelled counter)."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.doc, self.labelnames = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def labels(self, *values: str) -> _Labelled:
        assert len(values) == len(self.labelnames), self.labelnames
        return _Labelled(self, values)

    def inc(self, amount: float = 1.0) -> None:
        self._add((), amount)

    def _add(self, key: tuple[str, ...], amount: float) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount


class _Labelled:
    __slots__ = ("counter", "key")

    def __init__(self, counter: Counter, key: tuple[str, ...]) -> None:
        self.counter, self.key = counter, key

    def inc(self, amount: float = 1.0) -> None:
        self.counter._add(self.key, amount)


class Histogram:
    """Observations counted per bucket (upper bounds), with their sum."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.buckets = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


RESTARTS = Counter("ringd_child_restarts", "Child restarts by this node's supervisor", ("group",))
ESCALATIONS = Counter(
    "ringd_escalations", "Escalations past a group's intensity", ("group", "level")
)  # level: node (restarted here) or cluster (failed everywhere)
LEASE_RENEWALS = Counter("ringd_lease_renewals", "Lease keepalives answered by etcd")
LEASE_LATENCY = Histogram(
    "ringd_lease_renewal_seconds",
    "Round trip of a lease keepalive",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ETCD_ERRORS = Counter("ringd_etcd_errors", "etcd calls that failed or timed out", ("op",))
FENCES = Counter("ringd_fences", "Times this node fenced itself")
COUNTERS = (RESTARTS, ESCALATIONS, LEASE_RENEWALS, ETCD_ERRORS, FENCES)


class _Collector:
    """What a scrape reads: the counters above, and children by state and claims
    held, from the supervisor."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for counter in COUNTERS:
            family = CounterMetricFamily(counter.name, counter.doc, labels=counter.labelnames)
            if not counter.labelnames and not counter.values:
                family.add_metric([], 0.0)
            for key, value in sorted(dict(counter.values).items()):  # scraped from a thread
                family.add_metric(list(key), value)
            yield family
        h = LEASE_LATENCY
        cumulative, buckets = 0, []
        for bound, count in zip([*h.buckets, float("inf")], list(h.counts), strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        yield HistogramMetricFamily(h.name, h.doc, buckets=buckets, sum_value=h.sum)

        states = GaugeMetricFamily(
            "ringd_children", "Children supervised here, by state", labels=["state"]
        )
        counts: dict[str, int] = {}
        for child in list(self.supervisor.children.values()):
            counts[str(child.state)] = counts.get(str(child.state), 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        claims = GaugeMetricFamily(
            "ringd_claims", "Claims this node holds (one per child instance here)"
        )
        claims.add_metric([], len(self.supervisor.children))
        yield claims


class MetricsServer:
    """The Prometheus endpoint at ``host:port`` (prometheus_client's HTTP server,
    in a thread of its own), for as long as ``run`` runs."""

    def __init__(self, address: str, supervisor: Supervisor) -> None:
        self.address = address
        self.supervisor = supervisor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from prometheus_client import REGISTRY, start_http_server

        host, _, port = self.address.rpartition(":")
        collector = _Collector(self.supervisor)
        REGISTRY.register(collector)
        try:
            server, _ = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
        except OSError as exc:
            REGISTRY.unregister(collector)
            raise ConfigError(f"metrics_address: cannot listen on {self.address}: {exc}") from exc
        logger.info("metrics on http://%s/metrics", self.address)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            server.shutdown()
            server.server_close()
            REGISTRY.unregister(collector)
