"""Prometheus metrics (prometheus_client): counted always, served only when
``metrics_address`` is set (loopback by default).

Children by state and claims held are read from the daemon at scrape time, so
nothing is counted twice and idle daemons do no work for them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .supervisor import Supervisor

logger = logging.getLogger(__name__)

RESTARTS = Counter("ringd_child_restarts", "Child restarts by this node's supervisor", ["group"])
ESCALATIONS = Counter(
    "ringd_escalations", "Escalations past a group's intensity", ["group", "level"]
)  # level: node (restarted here) or cluster (failed everywhere)
LEASE_RENEWALS = Counter("ringd_lease_renewals", "Lease keepalives answered by etcd")
LEASE_LATENCY = Histogram(
    "ringd_lease_renewal_seconds",
    "Round trip of a lease keepalive",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ETCD_ERRORS = Counter("ringd_etcd_errors", "etcd calls that failed or timed out", ["op"])
FENCES = Counter("ringd_fences", "Times this node fenced itself")


class _DaemonCollector:
    """Children by state and claims held, read at scrape time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily(
            "ringd_children", "Children supervised here, by state", labels=["state"]
        )
        counts: dict[str, int] = {}
        for child in list(self.supervisor.children.values()):  # scraped from another thread
            counts[str(child.state)] = counts.get(str(child.state), 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        claims = GaugeMetricFamily(
            "ringd_claims", "Claims this node holds (one per child instance here)"
        )
        claims.add_metric([], len(self.supervisor.children))
        yield claims


def serve(address: str, supervisor: Supervisor) -> None:
    """Start the HTTP endpoint (a daemon thread) at ``host:port``."""
    host, _, port = address.rpartition(":")
    REGISTRY.register(_DaemonCollector(supervisor))
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    logger.info("metrics on http://%s/metrics", address)
