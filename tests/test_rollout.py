"""Rolling updates and health checks on real daemons, real etcd and real children,
driven through ringctl as an operator would: update-child (one instance at a
time, halted by a spec that fails, resumed by another update), apply (create,
update, prune, dry run, an unchanged file restarting nothing), export, and a
health check that restarts its child. A sampler (``tests.instances``) reads the
children's processes every 20 ms, by replica and spec version."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .helpers import wait_until
from .instances import Sampler, Scan, scan

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Cluster
    from .helpers import Daemon

SLEEP = ["sleep", "3600"]


def ok(daemon: Daemon, *args: str, timeout: float = 120) -> str:
    """ringctl ARGS on ``daemon``, which must succeed: its standard output."""
    result = daemon.ctl(*args, timeout=timeout)
    assert result.returncode == 0, f"ringctl {' '.join(args)}: {result.stderr}{result.stdout}"
    return result.stdout


def as_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(ok(daemon, "--json", *args))


def versions(cluster: Cluster, child_id: str) -> list[tuple[int, str]]:
    """(replica, version) of every instance of the child running now, by replica."""
    running = scan(cluster.name, os.getpid())
    return sorted((s.replica, s.version) for s in running if s.child_id == child_id)


def versions_in(scan: Scan, child_id: str) -> set[tuple[int, str]]:
    return {(s.replica, s.version) for s in scan.of(child_id)}


def all_running(daemon: Daemon, child_id: str, count: int) -> bool:
    found = as_json(daemon, "find", child_id)
    return (
        sum(i["state"] == "running" and i.get("ready") is True for i in found["instances"]) == count
    )


def test_a_rolling_update_keeps_two_of_three_running_halts_and_resumes(
    cluster: Cluster, short_tmp: Path
) -> None:
    """v1 -> v2 one replica at a time (never fewer than 2 running, never two of one
    replica); v3 exits at once: halted with 2 on v2, --wait says so at once; back to
    v2 resumes. A one-instance child updated meanwhile never runs twice."""
    n1, _, _ = (cluster.daemon(n) for n in ("n1", "n2", "n3"))
    env = ["--env", f"TEST_CLUSTER={cluster.name}"]

    def spec(version: str, argv: list[str] = SLEEP) -> list[str]:
        return [*env, "--env", f"TEST_VERSION={version}", "--min-ready", "0.5", "--", *argv]

    ok(n1, "start-child", "web", "--replicas", "3", "--wait", *spec("v1"))
    ok(n1, "start-child", "solo", "--wait", *spec("v1"))
    wait_until(lambda: all_running(n1, "web", 3), 30, "3 instances of web running, ready")
    wait_until(lambda: all_running(n1, "solo", 1), 30, "solo running, ready")
    with Sampler(cluster.name, interval=0.02) as sampler:
        wait_until(lambda: len(versions(cluster, "web")) == 3, 10, "3 processes of web")
        out = ok(n1, "update-child", "web", "--replicas", "3", "--wait", *spec("v2"))
        assert "every instance runs the new spec" in out
        assert versions(cluster, "web") == [(0, "v2"), (1, "v2"), (2, "v2")]
        ok(n1, "update-child", "solo", "--wait", *spec("v2"))
        assert versions(cluster, "solo") == [(0, "v2")]
        rollout = as_json(n1, "rollout", "web")
        assert rollout["state"] == "done"
        assert all(i["current"] and i["ready"] for i in rollout["instances"])

        # v3 exits at once: its first instance halts the rollout, --wait says so.
        halted = n1.ctl("update-child", "web", "--replicas", "3", "--wait", *spec("v3", ["false"]))
        assert halted.returncode == 1, halted.stdout + halted.stderr
        assert "child web: rollout halted:" in halted.stderr
        assert "before it was ready" in halted.stderr
        # The first instance restarts under its intensity, then fails; the others stay.
        wait_until(
            lambda: as_json(n1, "find", "web")["instances"][0]["state"] == "failed",
            30,
            "web's v3 instance failed",
        )
        assert versions(cluster, "web") == [(1, "v2"), (2, "v2")]
        found = as_json(n1, "find", "web")
        assert found["rollout"] == "halted" and found["reason"].startswith("rollout halted: ")
        table = ok(n1, "which-children")
        assert "rollout halted: " in table
        status = n1.ctl("rollout", "web")
        assert status.returncode == 1 and "web: rollout halted: " in status.stdout
        assert [line.split()[4] for line in status.stdout.splitlines()[2:4]] == [
            "current",
            "previous",
        ]

        # Back to v2: the failed instance moves onto it; the others never stopped.
        ok(n1, "update-child", "web", "--replicas", "3", "--wait", *spec("v2"))
        assert versions(cluster, "web") == [(0, "v2"), (1, "v2"), (2, "v2")]
        assert as_json(n1, "rollout", "web")["state"] == "done"
    sampler.check_rate()
    fewest, scan = sampler.fewest("web")
    assert fewest >= 2, f"only {scan.of('web')} of web running at {scan.begin}"
    assert sampler.doubles("web") == []
    assert sampler.doubles("solo") == []
    # Lowest replica first: each moved onto v2 after the one before it.
    first_v2 = [
        next(i for i, scan in enumerate(sampler.scans) if (r, "v2") in versions_in(scan, "web"))
        for r in range(3)
    ]
    assert first_v2 == sorted(first_v2), first_v2
    assert {s.version for scan in sampler.scans for s in scan.of("solo")} == {"v1", "v2"}
    # v2 never stopped on replicas 1 and 2 once they ran it.
    seen_v2 = {(s.replica, s.pid) for scan in sampler.scans for s in scan.of("web")
               if s.version == "v2" and s.replica > 0}  # fmt: skip
    assert len(seen_v2) == 2, seen_v2


def test_apply_creates_updates_prunes_and_restarts_nothing_unchanged(
    cluster: Cluster, short_tmp: Path
) -> None:
    a = cluster.daemon("a")
    cluster.daemon("b")
    marker = f'env = {{ TEST_CLUSTER = "{cluster.name}", TEST_VERSION = "v1" }}'

    def child(child_id: str, extra: str = "") -> str:
        return f'[[child]]\nid = "{child_id}"\nargv = ["sleep", "3600"]\nmin_ready = 0.2\n{marker}\n{extra}\n'

    first = short_tmp / "v1.toml"
    first.write_text(
        '[[group]]\nname = "g"\nstrategy = "one_for_all"\n\n'
        + child("keep")
        + child("grouped", 'group = "g"')
        + child("gone")
    )
    out = ok(a, "apply", str(first), "--wait")
    assert out.splitlines()[-1].startswith("created 4, updated 0, deleted 0, unchanged 0")

    def pids() -> dict[str, int]:
        return {row["id"]: row["pid"] for row in as_json(a, "which-children")}

    def revisions() -> dict[str, int]:
        return {c: as_json(a, "rollout", c)["revision"] for c in ("keep", "grouped", "gone")}

    before, spec_revisions = pids(), revisions()
    assert all(before.values()), before

    # The same file again, and what export prints: unchanged, nothing written.
    again = as_json(a, "apply", str(first))
    assert {e["action"] for e in again["plan"]} == {"unchanged"}
    exported = short_tmp / "exported.toml"
    exported.write_text(ok(a, "export"))
    assert "min_ready = 0.2" in exported.read_text() and "max_restarts" not in exported.read_text()
    back = as_json(a, "apply", str(exported))
    assert {e["action"] for e in back["plan"]} == {"unchanged"} and back["transactions"] == 0
    assert revisions() == spec_revisions and pids() == before

    second = short_tmp / "v2.toml"
    second.write_text(
        '[[group]]\nname = "g"\nstrategy = "one_for_all"\n\n'
        + child("keep")
        + child("grouped", 'group = "g"').replace("v1", "v2")
        + child("new")
    )
    dry = ok(a, "apply", str(second), "--prune", "--dry-run")
    plan = [line.split() for line in dry.splitlines()[1:-1]]
    assert plan == [
        ["unchanged", "group", "g"],
        ["unchanged", "child", "keep"],
        ["update", "child", "grouped"],
        ["create", "child", "new"],
        ["delete", "child", "gone"],
    ]
    assert dry.splitlines()[-1] == (
        "1 to create, 1 to update, 1 to delete, 2 unchanged (dry run: nothing changed)"
    )
    assert pids() == before and revisions() == spec_revisions  # nothing changed

    with Sampler(cluster.name, interval=0.02) as sampler:
        ok(a, "apply", str(second), "--prune", "--wait")
        wait_until(lambda: "gone" not in pids(), 30, "gone stopped")
    after = pids()
    assert sorted(after) == ["grouped", "keep", "new"]
    assert after["keep"] == before["keep"], "an unchanged child is not restarted"
    assert after["grouped"] != before["grouped"]
    assert sampler.doubles("grouped") == []
    assert {s.version for s in sampler.scans[-1].of("grouped")} == {"v2"}


def test_bad_input_changes_nothing_and_names_every_problem(
    cluster: Cluster, short_tmp: Path
) -> None:
    a = cluster.daemon("a")
    missing = a.ctl("update-child", "ghost", "--", "sleep", "1")
    assert missing.returncode == 3 and "no child named 'ghost'" in missing.stderr
    ok(a, "start-child", "web", "--env", f"TEST_CLUSTER={cluster.name}", "--", *SLEEP)
    before = ok(a, "export")
    bad = short_tmp / "bad.toml"
    bad.write_text(
        '[[group]]\nname = "g"\nmax_seconds = 0\n\n'
        '[[child]]\nid = "ok"\nargv = ["true"]\n\n'
        '[[child]]\nid = "web"\nargv = []\n\n'
        '[[child]]\nargv = ["x"]\nreplicas = 99\ncolour = "blue"\n'
    )
    result = a.ctl("apply", str(bad), "--prune")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "ringctl: 5 problems in the file, nothing changed:",
        "  group 1 (name g): max_seconds: it must be > 0",
        "  child 2 (id web): argv: must not be empty",
        "  child 3: replicas: it must be <= 32",
        "  child 3: colour: unknown key",
        "  child 3: id: is required",
    ]
    assert ok(a, "export") == before


def test_a_failing_health_check_restarts_the_child_and_find_shows_it(
    cluster: Cluster, short_tmp: Path
) -> None:
    a = cluster.daemon("a")
    flag = short_tmp / "healthy"
    flag.touch()
    ok(a, "start-child", "hc", "--env", f"TEST_CLUSTER={cluster.name}",
       "--check", f"test -e '{flag}'", "--check-interval", "0.2", "--check-failures", "2",
       "--min-ready", "0.2", "--max-restarts", "20", "--max-seconds", "60",
       "--wait", "--", *SLEEP)  # fmt: skip
    healthy = wait_until(
        lambda: (row := as_json(a, "find", "hc"))["health"] == "healthy" and row,
        30,
        "hc healthy",
    )
    assert healthy["ready"] is True and healthy["restarts"] == 0
    header, row = ok(a, "which-children").splitlines()[:2]
    assert header.split()[3:6] == ["STATE", "READY", "HEALTH"]
    assert row.split()[3:6] == ["running", "yes", "healthy"]

    flag.unlink()  # the check fails from now on: restarted after 2 in a row
    restarted = wait_until(
        lambda: (row := as_json(a, "find", "hc"))["restarts"] >= 1 and row,
        30,
        "hc restarted by its health check",
    )
    assert restarted["pid"] != healthy["pid"] or restarted["state"] != "running"
    assert restarted["health"] in ("starting", "unhealthy")
    local = as_json(a, "which-children", "--local")[0]
    assert local["last_exit"].startswith("health check failed: ")

    flag.touch()  # healthy again: the instance it restarted last stays
    wait_until(lambda: as_json(a, "find", "hc")["health"] == "healthy", 30, "hc healthy again")
    assert "healthy" in ok(a, "find", "hc")
