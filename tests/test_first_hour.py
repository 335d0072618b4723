"""A new operator's first hour on a real cluster, through ringctl: mistakes are
named at once (not after a timeout), and nothing is accepted in silence."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .helpers import wait_until

if TYPE_CHECKING:
    from .conftest import Cluster


def test_wait_ends_as_soon_as_the_child_cannot_run(cluster: Cluster) -> None:
    n1 = cluster.daemon("n1")
    cases = [
        (["nobin", "--", "/no/such/binary"], "cannot start '/no/such/binary'"),
        (["eu", "--on", "zone=eu", "--", "sleep", "60"], "no eligible node: needs zone=eu"),
        (["grouped", "--group", "nosuch", "--", "sleep", "60"], "group nosuch does not exist"),
    ]
    for args, why in cases:
        started = time.monotonic()
        done = n1.ctl("start-child", *args[:1], "--wait", "--timeout", "60", *args[1:])
        took = time.monotonic() - started
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert f"child {args[0]} cannot run: " in done.stderr and why in done.stderr, done.stderr
        print(f"\n{args[0]}: --wait ended after {took:.2f} s (timeout 60 s)")


def test_a_batch_wait_names_each_child_that_does_not_run(cluster: Cluster, tmp_path) -> None:
    n1 = cluster.daemon("n1")
    specs = tmp_path / "specs.toml"
    specs.write_text(
        '[[child]]\nid = "fine"\nargv = ["sleep", "60"]\n'
        '[[child]]\nid = "nobin"\nargv = ["/no/such/binary"]\n'
    )
    done = n1.ctl("start-children", str(specs), "--wait", "--timeout", "60")
    assert done.returncode == 1, done.stderr
    assert "child nobin cannot run: " in done.stderr
    assert "child fine" not in done.stderr, "it runs"


def test_draining_the_last_node_is_refused_unless_forced(cluster: Cluster) -> None:
    n1, n2 = cluster.daemon("n1"), cluster.daemon("n2")
    assert n1.ctl("start-child", "web", "--wait", "--", "sleep", "300").returncode == 0
    assert n1.ctl("drain", "n1", "--wait").returncode == 0
    refused = n1.ctl("drain", "n2", "--wait")
    assert refused.returncode == 1
    assert "n2 is the last node in the ring that is not draining" in refused.stderr
    assert n1.call("find", id="web")["node"] == "n2", "web still runs"
    assert n1.ctl("drain", "n2", "--force").returncode == 0
    wait_until(
        lambda: n2.call("find", id="web")["reason"] == "every node in the ring is draining",
        20,
        "web pending, saying why",
    )


def test_a_missing_group_is_a_warning_and_a_filter_on_nothing_exits_3(cluster: Cluster) -> None:
    n1 = cluster.daemon("n1")
    done = n1.ctl("start-child", "x", "--group", "nosuchgroup", "--", "sleep", "60")
    assert done.returncode == 0, done.stderr
    assert "ringctl: warning: group nosuchgroup does not exist" in done.stderr
    assert n1.ctl("which-children", "--group", "nosuch").returncode == 3
    assert n1.ctl("which-children", "--node", "nowhere").returncode == 3
    assert n1.ctl("which-children", "--group", "nosuchgroup").returncode == 0, "x names it"


def test_an_id_starting_with_a_dash_is_refused(cluster: Cluster) -> None:
    n1 = cluster.daemon("n1")
    done = n1.ctl("start-child", "--", "-leading", "--", "sleep", "1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert n1.call("which_children") == [], "nothing stored"


def test_a_missing_cwd_is_named(cluster: Cluster) -> None:
    n1 = cluster.daemon("n1")
    n1.ctl("start-child", "badcwd", "--cwd", "/no/such/dir", "--", "sleep", "100")
    wait_until(lambda: n1.call("find", id="badcwd")["state"] == "failed", 20, "failed")
    reason = n1.call("find", id="badcwd")["reason"]
    assert "cwd '/no/such/dir': No such file or directory" in reason, reason
