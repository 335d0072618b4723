"""No orphans: when a daemon dies, however it dies, its children and theirs die too."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from .helpers import wait_until

if TYPE_CHECKING:
    from .conftest import Cluster

# The child starts a grandchild in a new session (so not even its process group
# holds it) and both sleep.
FORKER = """
import os, subprocess, sys, time
env = dict(os.environ, TEST_ROLE="grandchild")
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_daemon_death_leaves_no_process_of_the_tree(cluster: Cluster, how: str) -> None:
    node = cluster.daemon("n1")
    node.call(
        "start_child",
        spec={
            "id": "forker",
            "argv": [sys.executable, "-c", FORKER],
            "env": {"TEST_CLUSTER": cluster.name},
        },
    )
    tree = wait_until(
        lambda: len(cluster.children()) == 2 and cluster.children(), 10, "child and grandchild"
    )
    assert {env.get("TEST_ROLE") for env in tree.values()} == {None, "grandchild"}
    if how == "sigkill":
        node.kill()
    else:
        assert node.stop() == 0
    wait_until(lambda: not cluster.children(), 3, "the whole tree gone")


def test_stopping_a_child_also_stops_what_escaped_its_group(cluster: Cluster) -> None:
    node = cluster.daemon("n1")
    env = {"TEST_CLUSTER": cluster.name}
    node.call(
        "start_child", spec={"id": "forker", "argv": [sys.executable, "-c", FORKER], "env": env}
    )
    node.call("start_child", spec={"id": "bystander", "argv": ["sleep", "600"], "env": env})
    wait_until(lambda: len(cluster.children()) == 3, 10, "forker, its grandchild and the bystander")
    node.call("delete_child", id="forker", wait=True, timeout=10)
    left = wait_until(
        lambda: (c := cluster.children()) and len(c) == 1 and c, 5, "only the bystander left"
    )
    assert [env["RINGD_CHILD_ID"] for env in left.values()] == ["bystander"]
