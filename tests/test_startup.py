"""A daemon that cannot serve fails before it joins: one line, exit 2, and the
cluster never sees the node (no status row, no alive key, no child moved)."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from ringd.testing import Daemon, etcd3_client

from .helpers import wait_until

if TYPE_CHECKING:
    from .conftest import Cluster


def test_a_daemon_on_a_served_socket_exits_2_without_joining(cluster: Cluster) -> None:
    n1 = cluster.daemon("n1")
    n1.call("start_child", spec={"id": "web", "argv": ["sleep", "300"]})
    wait_until(lambda: n1.call("find", id="web")["state"] == "running", 20, "web running")
    before = n1.call("find", id="web")
    intruder = Daemon(
        "n9", cluster.base, etcd=cluster.etcd_url, cluster=cluster.name, ttl=2.0, socket=n1.socket
    )
    done = subprocess.run(intruder.command(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"ringd: socket: another daemon is listening on {n1.socket}"], lines
    client = etcd3_client(cluster.etcd_url)
    try:
        prefix = f"/ringd/{cluster.name}/nodes/n9/"
        assert list(client.get_prefix(prefix)) == [], "the cluster saw n9"
    finally:
        client.close()
    after = n1.call("find", id="web")
    assert (after["node"], after["pid"], after["fence"]) == (
        before["node"],
        before["pid"],
        before["fence"],
    ), "web was disturbed"
    assert n1.call("ping")["node"] == "n1", "n1 still serves its socket"
