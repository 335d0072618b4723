"""``ringctl summary`` and the status page of real daemons on a real etcd (the page
in a browser: test_web_page.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from .helpers import wait_until

if TYPE_CHECKING:
    from .conftest import Cluster


def fetch(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_summary_and_the_page_of_a_real_cluster(cluster: Cluster) -> None:
    a = cluster.daemon("a", start=False)
    a.extra_args = ["--web-address", "127.0.0.1:0"]
    a.start()
    cluster.daemon("b")  # no web_address and not standalone: no page
    env = f"TEST_CLUSTER={cluster.name}"
    for child in ("s1", "s2", "s3"):
        done = a.ctl("start-child", child, "--env", env, "--wait", "--", "sleep", "600")
        assert done.returncode == 0, done.stderr
    ok = wait_until(lambda: (r := a.ctl("summary")).returncode == 0 and r, 15, "summary ok").stdout
    assert "nodes online\t2 (a, b)" in ok, ok
    assert "by state\trunning=3" in ok, ok

    pending = a.ctl("start-child", "p", "--env", env, "--on", "zone=nowhere", "--", "sleep", "1")
    assert pending.returncode == 0, pending.stderr
    result = a.ctl("--json", "summary")
    assert result.returncode == 1, result
    summary = json.loads(result.stdout)
    assert summary["ok"] is False
    assert summary["states"] == {"pending": 1, "running": 3}
    assert summary["pending_reasons"] == [
        {"reason": "no eligible node: needs zone=nowhere", "count": 1}
    ]
    assert "pending because\t1 x no eligible node: needs zone=nowhere" in a.ctl("summary").stdout

    url = a.call("status")["web"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    assert cluster.daemons["b"].call("status")["web"] is None
    assert f"status page on {url}" in a.log.read_text()
    status, page = fetch(url)
    assert status == 200 and b"<title>ringd</title>" in page
    status, body = fetch(url + "state")
    state = json.loads(body)
    assert status == 200
    assert sorted(c["instance"] for c in state["children"]) == ["p", "s1", "s2", "s3"]
    assert [(n["node"], n["status"]) for n in state["nodes"]] == [("a", "online"), ("b", "online")]
    assert any(e["text"].startswith("child s1 claimed on") for e in state["events"]), state
    status, metrics = fetch(url + "metrics")
    assert status == 200 and b"ringd_claims " in metrics and b"ringd_lease_renewals" in metrics
    for method in ("POST", "PUT", "DELETE"):
        assert fetch(url + "state", method)[0] == 405
    assert fetch(url + "favicon.ico")[0] == 404
    assert a.ctl("delete-child", "p").returncode == 0


def test_a_web_address_in_use_stops_the_start_before_the_node_joins(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        d = cluster.daemon("busy", start=False)
        d.extra_args = ["--web-address", f"127.0.0.1:{port}"]
        process = d.spawn()
        try:
            assert process.wait(timeout=30) == 2
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("ringd kept running with its web_address in use")
    # One line, and nothing before it: no etcd was reached, the node never joined.
    assert d.log.read_text().splitlines() == [
        f"ringd: web_address: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:http", ":80", "a:99999"])
def test_a_bad_web_address_is_a_config_error(address: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ringd", "start", "--web-address", address],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"web_address: {address!r} is not HOST:PORT" in result.stderr
