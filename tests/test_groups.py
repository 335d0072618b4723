"""Groups across a real 2-node cluster: escalation to a cluster-wide failure,
reset-group, retry_after, and delete-group's guard."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from ringd.protocol import RemoteError

from .helpers import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Cluster


def crash_while(flag: Path) -> list[str]:
    """Crashes at once while ``flag`` exists, else runs."""
    return ["sh", "-c", f"if [ -e {flag} ]; then exit 1; fi; exec sleep 600"]


def group_children(cluster: Cluster, group: str) -> dict[int, dict[str, str]]:
    return {pid: env for pid, env in cluster.children().items() if env.get("TEST_GROUP") == group}


def start_group(cluster: Cluster, node, flag: Path, **group_fields) -> list[dict]:
    node.call(
        "create_group", spec={"name": "g", "max_restarts": 1, "max_seconds": 30, **group_fields}
    )
    env = {"TEST_CLUSTER": cluster.name, "TEST_GROUP": "g"}
    for i in range(8):
        node.call(
            "start_child",
            spec={"id": f"good{i}", "argv": ["sleep", "600"], "group": "g", "env": env},
        )
    node.call(
        "start_child", spec={"id": "bad", "argv": crash_while(flag), "group": "g", "env": env}
    )
    return node.call("which_children", group="g")


def test_group_fails_cluster_wide_and_reset_brings_it_back(
    cluster: Cluster, short_tmp: Path
) -> None:
    a, b = cluster.daemon("a"), cluster.daemon("b")
    flag = short_tmp / "crash"
    flag.touch()
    start_group(cluster, a, flag)

    def failed():
        groups = a.call("groups")
        return groups[0] if groups and groups[0]["state"] == "failed" else None

    group = wait_until(failed, 15, "group g failed")
    rows = {r["id"]: r for r in a.call("which_children", group="g")}
    bad_node = group["failed_node"]
    assert bad_node in ("a", "b")
    assert "node-level intensity" in group["reason"] and "bad: exit status 1" in group["reason"]
    # Every node stops the group's children; they show failed, with the reason.
    wait_until(lambda: not group_children(cluster, "g"), 10, "g stopped on both nodes")
    rows = wait_until(
        lambda: (r := b.call("which_children", group="g")) and all(x["state"] == "failed" for x in r) and r,
        10, "failed rows",
    )  # fmt: skip
    assert len(rows) == 9 and all("group g failed" in r["reason"] for r in rows)
    assert b.call("status")["groups_failed"]["g"].startswith(f"{bad_node}: ")

    flag.unlink()
    assert a.call("reset_group", name="g")["state"] == "running"
    wait_until(lambda: len(group_children(cluster, "g")) == 9, 15, "all 9 running again")
    # The ring spreads g over both nodes (the same placement as before the failure),
    # so "stopped on every node" above covered a node where nothing crashed.
    placed = {r["node"] for r in a.call("which_children", group="g")}
    assert placed == {"a", "b"}
    assert a.call("status")["groups_failed"] == {}


def test_failed_group_retries_after_its_delay(cluster: Cluster, short_tmp: Path) -> None:
    """retry_after = 3 s: the group stays failed for 3 s (measured on the daemon's
    clock by the rows' ``since``, and from here by when each state was seen), then
    runs again."""
    delay = 3.0
    a = cluster.daemon("a")
    flag = short_tmp / "crash"
    flag.touch()
    start_group(cluster, a, flag, retry_after=delay)
    failed = wait_until(lambda: (g := a.call("groups")[0])["state"] == "failed" and g, 15, "failed")
    flag.unlink()
    seen_failed = []  # when this test saw it failed, by the wall clock

    def retried() -> dict | None:
        group = a.call("groups")[0]
        if group["state"] == "failed":
            seen_failed.append(time.time())
            return None
        return group

    group = wait_until(retried, delay + 10, "retried", interval=0.1)
    assert group["reason"] == "retried after 3 s"
    waited = group["since"] - failed["since"]
    assert delay <= waited < delay + 2, f"retried {waited:.2f} s after it failed"
    # Still failed shortly before the delay was up (seen from here too).
    assert max(seen_failed) >= failed["since"] + delay - 1, (seen_failed, failed["since"])
    wait_until(lambda: len(group_children(cluster, "g")) == 9, 15, "running again")


def test_group_errors(cluster: Cluster) -> None:
    a = cluster.daemon("a")
    env = {"TEST_CLUSTER": cluster.name}
    with pytest.raises(RemoteError) as info:
        a.call("create_group", spec={"name": "g", "strategy": "all_at_once"})
    assert info.value.code == "invalid" and "strategy" in info.value.message
    a.call("create_group", spec={"name": "g"})
    with pytest.raises(RemoteError) as info:
        a.call("create_group", spec={"name": "g", "max_restarts": 9})
    assert info.value.code == "exists"
    a.call("start_child", spec={"id": "x", "argv": ["sleep", "600"], "group": "g", "env": env})
    wait_until(lambda: a.call("find", id="x")["state"] == "running", 10, "x running")
    with pytest.raises(RemoteError) as info:
        a.call("delete_group", name="g")
    assert info.value.code == "refused" and "x" in info.value.message
    assert a.call("delete_group", name="g", force=True)["orphaned_children"] == ["x"]
    # A child whose group is gone is stopped and waits, with the reason shown.
    row = wait_until(
        lambda: (r := a.call("find", id="x"))["state"] == "pending" and r, 10, "x pending"
    )
    assert row["reason"] == "group g does not exist"
    # A child may not name a group that is not there... it waits for it, visibly.
    with pytest.raises(RemoteError) as info:
        a.call("reset_group", name="nope")
    assert info.value.code == "not_found"


def test_local_commands_name_the_node_where_a_child_runs(cluster: Cluster) -> None:
    a, _ = cluster.daemon("a"), cluster.daemon("b")
    env = {"TEST_CLUSTER": cluster.name}
    for i in range(6):
        a.call("start_child", spec={"id": f"c{i}", "argv": ["sleep", "600"], "env": env})
    rows = wait_until(
        lambda: (r := a.call("which_children")) and all(x["state"] == "running" for x in r) and r,
        10,
        "running",
    )
    remote = next(r for r in rows if r["node"] == "b")
    local = next(r for r in rows if r["node"] == "a")
    for op, extra in (("logs", {}), ("terminate_child", {}), ("signal_child", {"signal": "HUP"})):
        with pytest.raises(RemoteError) as info:
            a.call(op, id=remote["id"], **extra)
        assert info.value.code == "refused" and "runs on node b" in info.value.message
    # terminate-child stops it here and it stays stopped; restart-child brings it back.
    assert a.call("terminate_child", id=local["id"])["state"] == "stopped"
    assert wait_until(lambda: a.call("find", id=local["id"])["state"] == "stopped", 5, "stopped")
    restarted = a.call("restart_child", id=local["id"])
    assert restarted["state"] == "running" and restarted["pid"] != local["pid"]
    with pytest.raises(RemoteError) as info:
        a.call("signal_child", id=local["id"], signal="SIGNOPE")
    assert info.value.code == "invalid"
