"""ringctl's commands that change stored specs (update-child, update-group, apply,
export, rollout) and the new spec options, against the fake daemon of
test_cli_unit: the request each sends, and what it prints."""

# ruff: noqa: F811 - every test takes the fixture "daemon", imported from test_cli_unit
from __future__ import annotations

import json
import tomllib
from typing import TYPE_CHECKING, Any

import pytest

from ringctl.specs import read_specs_file, write_specs

from .test_cli_unit import FakeDaemon, daemon, run  # noqa: F401 - the fixture

if TYPE_CHECKING:
    from pathlib import Path

PLAN = {
    "dry_run": True,
    "plan": [
        {"kind": "group", "id": "g", "action": "create"},
        {"kind": "child", "id": "web", "action": "update"},
        {"kind": "child", "id": "db", "action": "unchanged"},
        {"kind": "child", "id": "old", "action": "delete"},
    ],
    "transactions": 0,
}
FILE = """
[[group]]
name = "g"
strategy = "one_for_all"

[[child]]
id = "web"
argv = ["python3", "-m", "http.server"]
group = "g"
check = ["curl", "-fs", "localhost:8000"]

[[child]]
id = "db"
argv = ["sleep", "60"]
"""


def test_update_child_sends_the_whole_spec_with_the_new_options(daemon: FakeDaemon) -> None:
    daemon.results["update_child"] = {"id": "web", "changed": True, "digest": "d", "rollout": ""}
    result = run(
        daemon,
        "update-child",
        "web",
        "--replicas",
        "3",
        "--min-ready",
        "2.5",
        "--check",
        "curl -fs 'http://localhost:8000/health check'",
        "--check-interval",
        "5",
        "--check-timeout",
        "1",
        "--check-failures",
        "2",
        "--wait",
        "--",
        "python3",
        "-m",
        "http.server",
    )
    assert result.exit_code == 0, result.output
    assert daemon.requests == [
        (
            "update_child",
            {
                "spec": {
                    "id": "web",
                    "argv": ["python3", "-m", "http.server"],
                    "replicas": 3,
                    "min_ready": 2.5,
                    "check": ["curl", "-fs", "http://localhost:8000/health check"],
                    "check_interval": 5.0,
                    "check_timeout": 1.0,
                    "check_failures": 2,
                },
                "wait": True,
                "timeout": 120.0,
            },
        )
    ]
    assert result.stdout == "updated web: every instance runs the new spec, ready\n"


def test_start_child_takes_the_check_options_too(daemon: FakeDaemon) -> None:
    result = run(daemon, "start-child", "web", "--check", "true", "--", "sleep", "1")
    assert result.exit_code == 0, result.output
    assert daemon.requests[0][1]["spec"]["check"] == ["true"]


@pytest.mark.parametrize("check", ["'unclosed", ""])
def test_a_check_that_does_not_split_is_a_usage_error(daemon: FakeDaemon, check: str) -> None:
    result = run(daemon, "update-child", "web", "--check", check, "--", "true")
    assert result.exit_code == 2
    assert "--check" in result.stderr
    assert daemon.requests == []


def test_update_child_unchanged_missing_and_halted(daemon: FakeDaemon) -> None:
    daemon.results["update_child"] = {"id": "web", "changed": False, "digest": "d", "rollout": ""}
    result = run(daemon, "update-child", "web", "--", "true")
    assert (result.exit_code, result.stdout) == (0, "web unchanged: nothing restarted\n")

    daemon.errors["update_child"] = ("not_found", "no child named 'web'")
    result = run(daemon, "update-child", "web", "--", "true")
    assert (result.exit_code, result.stderr) == (3, "ringctl: no child named 'web'\n")

    why = "child web: rollout halted: exit status 1 before it was ready"
    daemon.errors["update_child"] = ("halted", why)
    result = run(daemon, "update-child", "web", "--wait", "--", "false")
    assert (result.exit_code, result.stderr) == (1, f"ringctl: {why}\n")


def test_update_group_sends_the_whole_spec(daemon: FakeDaemon) -> None:
    daemon.results["update_group"] = {"name": "g", "state": "failed", "changed": True}
    result = run(daemon, "update-group", "g", "--strategy", "rest_for_one")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [
        ("update_group", {"spec": {"name": "g", "strategy": "rest_for_one"}})
    ]
    assert result.stdout == "updated group g (failed)\n"


def test_apply_sends_the_file_in_order_and_prints_the_plan(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.results["apply"] = PLAN
    path = tmp_path / "specs.toml"
    path.write_text(FILE)
    result = run(daemon, "apply", str(path), "--prune", "--dry-run")
    assert result.exit_code == 0, result.output
    [(op, args)] = daemon.requests
    assert op == "apply"
    assert args == {
        "children": tomllib.loads(FILE)["child"],
        "groups": [{"name": "g", "strategy": "one_for_all"}],
        "prune": True,
        "dry_run": True,
        "wait": False,
        "timeout": 120.0,
    }
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[:5] == [
        ["ACTION", "KIND", "ID"],
        ["create", "group", "g"],
        ["update", "child", "web"],
        ["unchanged", "child", "db"],
        ["delete", "child", "old"],
    ]
    assert result.stdout.splitlines()[-1] == (
        "1 to create, 1 to update, 1 to delete, 1 unchanged (dry run: nothing changed)"
    )
    result = run(daemon, "--json", "apply", str(path))
    assert json.loads(result.stdout) == PLAN


def test_apply_done_says_what_it_did(daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.results["apply"] = {**PLAN, "dry_run": False, "transactions": 1}
    path = tmp_path / "specs.json"
    path.write_text(json.dumps({"child": [{"id": "a", "argv": ["true"]}]}))
    result = run(daemon, "apply", str(path))
    assert result.exit_code == 0, result.output
    assert daemon.requests[0][1]["children"] == [{"id": "a", "argv": ["true"]}]
    assert result.stdout.splitlines()[-1] == (
        "created 1, updated 1, deleted 1, unchanged 1 (1 etcd transactions)"
    )


def test_apply_names_every_problem_the_daemon_found(daemon: FakeDaemon, tmp_path: Path) -> None:
    message = (
        "2 problems in the file, nothing changed:\n"
        "  child 1 (id web): argv: must not be empty\n"
        "  child 2: id: is required"
    )
    daemon.errors["apply"] = ("invalid", message)
    path = tmp_path / "specs.toml"
    path.write_text(FILE)
    result = run(daemon, "apply", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"ringctl: {message}\n"


@pytest.mark.parametrize(
    ("text", "words"),
    [("[[children]]\nid = 'x'\n", "unknown key 'children'"), ("child = 3\n", "must be a list")],
)
def test_apply_refuses_a_file_it_cannot_read_before_asking(
    daemon: FakeDaemon, tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "specs.toml"
    path.write_text(text)
    result = run(daemon, "apply", str(path), "--prune")
    assert result.exit_code == 2
    assert words in result.stderr
    assert daemon.requests == []


def test_apply_of_an_empty_file_is_sent(daemon: FakeDaemon, tmp_path: Path) -> None:
    """An empty file is a file without specs: with --prune, every spec goes."""
    daemon.results["apply"] = {"dry_run": True, "plan": [], "transactions": 0}
    path = tmp_path / "specs.toml"
    path.write_text("")
    result = run(daemon, "apply", str(path), "--prune", "--dry-run")
    assert result.exit_code == 0, result.output
    assert daemon.requests[0][1]["children"] == []


EXPORTED: dict[str, Any] = {
    "groups": [{"name": "g", "strategy": "rest_for_one"}],
    "children": [
        {"id": "web", "argv": ["python3", "-m", "http.server"], "env": {"A B": 'x"y'}},
        {"id": "db", "argv": ["sleep", "60"], "replicas": 3, "handoff": True, "min_ready": 0.5},
    ],
    "invalid": ["child broken"],
}


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_export_prints_a_specs_file_that_reads_back(daemon: FakeDaemon, fmt: str) -> None:
    daemon.results["export"] = EXPORTED
    result = run(daemon, "export", "web", "db", "g", "--format", fmt)
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("export", {"ids": ["web", "db", "g"]})]
    found = read_specs_file(result.stdout, fmt)
    assert (found.children, found.groups) == (EXPORTED["children"], EXPORTED["groups"])
    assert result.stderr == "ringctl: child broken: the stored spec is not valid, left out\n"
    if fmt == "toml":
        assert result.stdout.startswith('[[group]]\nname = "g"\nstrategy = "rest_for_one"\n')


def test_export_json_is_the_raw_answer(daemon: FakeDaemon) -> None:
    daemon.results["export"] = EXPORTED
    result = run(daemon, "--json", "export")
    assert json.loads(result.stdout) == EXPORTED


def test_written_specs_read_back_with_every_kind_of_value() -> None:
    children = [
        {
            "id": "a",
            "argv": ["x", 'q"uote\\', "tab\tdel\x7f", "ünï", "$HOME"],
            "env": {"A": "1", "with space": "", "X.Y": "z"},
            "max_seconds": 2.5,
            "stop_timeout": 1e-05,
            "handoff": False,
            "on": {},
        }
    ]
    for fmt in ("toml", "json"):
        assert read_specs_file(write_specs(children, [], fmt), fmt).children == children


def test_rollout_shows_each_instance_and_exits_1_when_halted(daemon: FakeDaemon) -> None:
    status: dict[str, Any] = {
        "id": "web",
        "state": "in progress",
        "reason": "",
        "revision": 42,
        "digest": "d",
        "instances": [
            {"instance": "web", "replica": 0, "node": "n1", "state": "running",
             "revision": 42, "current": True, "ready": True, "health": "healthy"},
            {"instance": "web/1", "replica": 1, "node": "n2", "state": "running",
             "revision": 17, "current": False, "ready": True, "health": ""},
            {"instance": "web/2", "replica": 2, "node": None, "state": "not running",
             "revision": None, "current": False, "ready": False, "health": ""},
        ],
    }  # fmt: skip
    daemon.results["rollout"] = status
    result = run(daemon, "rollout", "web")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert result.stdout.splitlines()[0] == "web: rollout in progress (spec revision 42)"
    assert lines[1] == ["INSTANCE", "NODE", "STATE", "REVISION", "SPEC", "READY", "HEALTH"]
    assert lines[2] == ["web", "n1", "running", "42", "current", "yes", "healthy"]
    assert lines[3] == ["web/1", "n2", "running", "17", "previous", "yes", "-"]
    assert lines[4] == ["web/2", "-", "not", "running", "-", "-", "-", "-"]

    daemon.results["rollout"] = {**status, "state": "halted", "reason": "exit status 1"}
    result = run(daemon, "rollout", "web")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "web: rollout halted: exit status 1"


def test_find_shows_revision_health_and_rollout(daemon: FakeDaemon) -> None:
    daemon.results["find"] = {
        **daemon.results["find"],
        "revision": 42,
        "ready": False,
        "health": "unhealthy",
        "rollout": "halted",
        "reason": "rollout halted: exit status 1 before it was ready",
    }
    result = run(daemon, "find", "web")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in result.stdout.splitlines()}
    assert (lines["revision"], lines["ready"], lines["health"]) == ("42", "no", "unhealthy")
    assert lines["rollout"] == "halted"
    assert lines["reason"] == "rollout halted: exit status 1 before it was ready"


def test_start_children_creates_the_groups_of_the_file_first(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.results["start_children"] = {"stored": 2, "conflicts": []}
    path = tmp_path / "specs.toml"
    path.write_text(FILE)
    result = run(daemon, "start-children", str(path))
    assert result.exit_code == 0, result.output
    assert [op for op, _ in daemon.requests] == ["create_group", "start_children"]
    assert daemon.requests[0][1] == {"spec": {"name": "g", "strategy": "one_for_all"}}

    daemon.requests.clear()
    daemon.errors["create_group"] = ("exists", "group 'g' already exists")
    result = run(daemon, "start-children", str(path))
    assert result.exit_code == 1
    assert "ringctl: group g already exists with another spec" in result.stderr
    assert [op for op, _ in daemon.requests] == ["create_group", "start_children"]

    daemon.requests.clear()
    daemon.errors["create_group"] = ("invalid", "strategy: 'x' is not one of the allowed values")
    result = run(daemon, "start-children", str(path))
    assert result.exit_code == 2
    assert "group 1: strategy: 'x'" in result.stderr
    assert [op for op, _ in daemon.requests] == ["create_group"]
