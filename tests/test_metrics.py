"""The Prometheus endpoint of a real daemon."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from typing import TYPE_CHECKING

from ringd.standalone import free_port

from .helpers import wait_until

if TYPE_CHECKING:
    from .conftest import Cluster


def test_metrics_endpoint(cluster: Cluster) -> None:
    port = free_port()
    config = cluster.base / "m.toml"
    config.write_text(f'metrics_address = "127.0.0.1:{port}"\n')
    node = cluster.daemon("m", start=False)
    node.extra_args = ["--config", str(config)]
    node.start()
    node.call(
        "start_child",
        spec={
            "id": "x",
            "argv": ["sleep", "600"],
            "env": {"TEST_CLUSTER": cluster.name},
            "max_restarts": 5,
        },
    )
    pid = wait_until(lambda: node.call("find", id="x")["pid"], 10, "x running")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: node.call("find", id="x")["restarts"] == 1, 10, "x restarted")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def renewed(text: str) -> bool:
        match = re.search(r"^ringd_lease_renewals_total (\S+)$", text, re.M)
        return bool(match) and float(match.group(1)) > 0

    text = wait_until(lambda: (t := scrape()) and renewed(t) and t, 10, "lease renewals counted")
    assert 'ringd_children{state="running"} 1.0' in text
    assert "ringd_claims 1.0" in text
    assert 'ringd_child_restarts_total{group=""} 1.0' in text
    assert "ringd_lease_renewal_seconds_bucket" in text


def test_which_children_shows_figures_of_other_nodes(cluster: Cluster) -> None:
    config = cluster.base / "f.toml"
    config.write_text("figures_interval = 0.3\n")
    for name in ("a", "b"):
        d = cluster.daemon(name, start=False)
        d.extra_args = ["--config", str(config)]
        d.start()
    a = cluster.daemons["a"]
    for i in range(6):
        a.call(
            "start_child",
            spec={"id": f"f{i}", "argv": ["sleep", "600"], "env": {"TEST_CLUSTER": cluster.name}},
        )

    def all_measured():
        rows = a.call("which_children")
        ok = len(rows) == 6 and all(r["state"] == "running" and r["rss"] for r in rows)
        return rows if ok else None

    rows = wait_until(all_measured, 15, "RSS for every child, local and remote")
    assert {r["node"] for r in rows} == {"a", "b"}
    assert all(r["rss"] > 100_000 and r["cpu"] is not None for r in rows)
