"""Unit tests for ringctl against a fake daemon on a real Unix socket."""

from __future__ import annotations

import json
import os
import re
import shutil
import socketserver
import tempfile
import threading
import time
import types
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from ringctl import format as fmt
from ringctl import main as ctl
from ringctl import specs
from ringd import protocol

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# The canned results are relative to NOW, and ringctl's clock is frozen there.
NOW = time.time()

FIND = {
    "id": "web",
    "group": "front",
    "restart": "permanent",
    "node": "node2",
    "pid": 4242,
    "state": "running",
    "restarts": 1,
    "started": NOW - 75,
    "reason": "",
    "fence": 17,
    "owner": "node1",
    "argv": ["python", "-m", "http.server", "8080"],
}
ROWS = [
    {
        "id": "web",
        "group": "front",
        "restart": "permanent",
        "node": "node2",
        "pid": 4242,
        "state": "running",
        "restarts": 1,
        "started": NOW - 3700,
        "reason": "",
        "rss": int(12.3 * 1024 * 1024),
        "cpu": 1.5,
        "revision": 7,
        "ready": True,
        "health": "healthy",
        "rollout": "done",
    },
    {
        "id": "batch-7",
        "group": None,
        "restart": "transient",
        "node": None,
        "pid": None,
        "state": "pending",
        "restarts": 0,
        "started": None,
        "reason": "no node online",
        "rss": None,
        "cpu": None,
    },
]
NODES = [
    {
        "node": "node1",
        "status": "online",
        "last_change": "2024-05-01T12:00:00Z",
        "reason": "",
        "alive": True,
        "host": "alpha.example",
        "pid": 111,
        "draining": False,
        "children": 3,
    },
    {
        "node": "node2",
        "status": "offline",
        "last_change": None,
        "reason": "lease expired",
        "alive": False,
        "host": None,
        "pid": None,
        "draining": False,
        "children": 0,
    },
]
GROUP = {
    "name": "front",
    "strategy": "one_for_all",
    "max_restarts": 3,
    "max_seconds": 5.0,
    "restart_delay": 0.0,
    "restart_delay_max": 30.0,
    "retry_after": None,
    "state": "running",
    "reason": "",
    "failed_node": None,
    "since": NOW - 42,
    "children": 2,
}
FAILED_GROUP = {
    **GROUP,
    "name": "back",
    "strategy": "one_for_one",
    "max_restarts": 10,
    "max_seconds": 2.5,
    "state": "failed",
    "reason": "intensity reached",
    "failed_node": "node3",
    "since": NOW - 3700,
    "children": 0,
}
CHILD_INFO = {
    "id": "web",
    "group": "front",
    "state": "running",
    "pid": 4242,
    "restarts": 2,
    "started": NOW - 5,
    "reason": "",
    "last_exit": None,
    "fence": 17,
    "node": "node1",
}
STATUS = {
    "node": "node1",
    "cluster": "prod",
    "version": "0.1.0",
    "pid": 999,
    "uptime": 3725.5,
    "etcd": "http://127.0.0.1:2379",
    "standalone": False,
    "lease": "7a3f",
    "lease_ttl": 10,
    "fenced": False,
    "nodes_online": ["node1", "node3"],
    "children_total": 5,
    "children_local": {"running": 2, "backoff": 1},
    "revision": 1234,
}
CANNED: dict[str, Any] = {
    "find": FIND,
    "start_child": FIND,
    "which_children": ROWS,
    "nodes": NODES,
    "status": STATUS,
    "delete_child": {"id": "web", "deleted": True},
    "create_group": GROUP,
    "groups": [GROUP, FAILED_GROUP],
    "delete_group": {"name": "front", "deleted": True, "orphaned_children": []},
    "reset_group": GROUP,
    "terminate_child": {**CHILD_INFO, "state": "stopped", "pid": None},
    "restart_child": CHILD_INFO,
    "signal_child": {**CHILD_INFO, "signal": 1},
    # Markup-like and bracketed text must come out as written.
    "logs": {"id": "web", "node": "node1", "lines": ["[bold]not markup[/]", "", "x=1 [2]"]},
}


class FakeDaemon(socketserver.ThreadingUnixStreamServer):
    """Answers each NDJSON request from ``results`` / ``errors`` and records it;
    a streaming op in ``streams`` gets one ``event`` line per item, then the close."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.results: dict[str, Any] = dict(CANNED)
        self.errors: dict[str, tuple[str, str]] = {}
        # op -> how many of its requests succeed before ``errors`` applies to it
        self.errors_after: dict[str, int] = {}
        self.streams: dict[str, list[Any]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        super().__init__(path, Handler)


class Handler(socketserver.StreamRequestHandler):
    server: FakeDaemon

    def handle(self) -> None:
        for line in self.rfile:
            request = json.loads(line)
            op, args = request["op"], request.get("args", {})
            self.server.requests.append((op, args))
            done_before = sum(o == op for o, _ in self.server.requests) - 1
            if op in self.server.errors and done_before >= self.server.errors_after.get(op, 0):
                code, message = self.server.errors[op]
                reply = protocol.error(request["id"], code, message)
            elif op in self.server.streams:
                events = self.server.streams[op]
                reply = b"".join(
                    protocol.encode({"id": request["id"], "ok": True, "event": e}) for e in events
                )
            else:
                reply = protocol.ok(request["id"], self.server.results.get(op))
            self.wfile.write(reply)
            return


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    tmp = tempfile.mkdtemp(dir="/tmp", prefix="rctl")
    server = FakeDaemon(os.path.join(tmp, "s"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(autouse=True)
def plain_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """No colour and a wide page, whatever terminal pytest itself runs on."""
    monkeypatch.setattr(fmt, "console", Console(color_system=None, width=200))
    monkeypatch.setattr(fmt, "err_console", Console(stderr=True, color_system=None, width=200))
    monkeypatch.delenv("RINGD_SOCKET", raising=False)
    # Uptimes and "ago" are rendered against NOW, however long the tests have run.
    monkeypatch.setattr(
        fmt, "time", types.SimpleNamespace(time=lambda: NOW, strftime=time.strftime)
    )


def run(daemon: FakeDaemon | str, *args: str) -> Any:
    path = daemon if isinstance(daemon, str) else daemon.server_address
    return CliRunner().invoke(ctl.cli, ["--socket", str(path), *args])


# -- start-child ---------------------------------------------------------------------


def test_start_child_builds_spec_from_options(daemon: FakeDaemon) -> None:
    result = run(
        daemon,
        "start-child",
        "web",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--env",
        "EMPTY=",
        "--restart",
        "transient",
        "--max-restarts",
        "5",
        "--stop-signal",
        "INT",
        "--",
        "python",
        "-m",
        "http.server",
        "--bind",
        "::",
    )
    assert result.exit_code == 0, result.output
    assert daemon.requests == [
        (
            "start_child",
            {
                "spec": {
                    "id": "web",
                    "argv": ["python", "-m", "http.server", "--bind", "::"],
                    "env": {"A": "1", "B": "x=y", "EMPTY": ""},
                    "restart": "transient",
                    "max_restarts": 5,
                    "stop_signal": "INT",
                },
                "wait": False,
                "timeout": 30.0,
            },
        )
    ]
    assert result.stdout == "started web on node2 (pid 4242)\n"


def test_start_child_minimal_spec_and_pending(daemon: FakeDaemon) -> None:
    daemon.results["start_child"] = {**FIND, "node": None, "pid": None, "state": "pending"}
    result = run(
        daemon,
        "start-child",
        "web",
        "--wait",
        "--timeout",
        "2.5",
        "--cwd",
        "/srv",
        "--max-seconds",
        "9",
        "--",
        "sleep",
        "1",
    )
    assert result.exit_code == 0, result.output
    [(op, args)] = daemon.requests
    assert op == "start_child"
    assert args == {
        "spec": {"id": "web", "argv": ["sleep", "1"], "cwd": "/srv", "max_seconds": 9.0},
        "wait": True,
        "timeout": 2.5,
    }
    assert result.stdout == "web accepted (pending)\n"


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value"])
def test_start_child_bad_env_is_usage_error(daemon: FakeDaemon, bad: str) -> None:
    result = run(daemon, "start-child", "web", "--env", bad, "--", "true")
    assert result.exit_code == 2
    assert bad in result.stderr
    assert daemon.requests == []


def test_start_child_needs_a_command(daemon: FakeDaemon) -> None:
    result = run(daemon, "start-child", "web")
    assert result.exit_code == 2
    assert daemon.requests == []


# -- start-children ------------------------------------------------------------------

SPECS_TOML = """
[[child]]
id = "web"
argv = ["python3", "-m", "http.server"]
env = { PORT = "8080" }

[[child]]
id = "worker"
argv = ["sleep", "60"]
restart = "transient"
"""


def test_start_children_sends_the_file_specs(daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.results["start_children"] = {"stored": 2, "conflicts": []}
    path = tmp_path / "specs.toml"
    path.write_text(SPECS_TOML)
    result = run(daemon, "start-children", str(path), "--wait")
    assert result.exit_code == 0, result.output
    [(op, args)] = daemon.requests
    assert op == "start_children"
    assert args["wait"] is True
    assert args["specs"] == [
        {"id": "web", "argv": ["python3", "-m", "http.server"], "env": {"PORT": "8080"}},
        {"id": "worker", "argv": ["sleep", "60"], "restart": "transient"},
    ]
    assert result.stdout == "2 children stored, all running\n"


def test_start_children_splits_a_big_file_and_reports_conflicts(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.results["start_children"] = {"stored": 1, "conflicts": ["c7"]}
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([{"id": f"c{i}", "argv": ["true"]} for i in range(2500)]))
    result = run(daemon, "--json", "start-children", str(path))
    assert result.exit_code == 1
    assert [len(args["specs"]) for _, args in daemon.requests] == [1000, 1000, 500]
    assert json.loads(result.stdout) == {"stored": 3, "conflicts": ["c7", "c7", "c7"]}


def test_start_children_invalid_spec_is_named_by_its_place_in_the_file(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    """The daemon names a spec by its place in its request; the second request of a
    file starts at spec 1000, so its child 4 is the file's child 1004."""
    daemon.results["start_children"] = {"stored": 1000, "conflicts": []}
    daemon.errors["start_children"] = (
        "invalid",
        "2 problems in the specs, nothing changed:\n"
        "  child 4 (id c1003): argv: must be a list, not a string\n"
        "  child 14 (id c1013): argv: must be a list, not a string",
    )
    daemon.errors_after["start_children"] = 1  # the first batch is stored
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([{"id": f"c{i}", "argv": ["true"]} for i in range(2500)]))
    result = run(daemon, "start-children", str(path))
    assert result.exit_code == 2
    assert "child 1004 (id c1003): argv: must be a list" in result.stderr, result.stderr
    assert "child 1014 (id c1013): argv: must be a list" in result.stderr, result.stderr
    assert "child 4 " not in result.stderr
    # The second request was the invalid one; nothing is sent after it.
    assert [args["specs"][0]["id"] for _, args in daemon.requests] == ["c0", "c1000"]


@pytest.mark.parametrize(
    ("text", "words"),
    [("id = ", "not valid TOML"), ("[[other]]\nx = 1\n", "no child specs"), ("", "no child specs")],
)
def test_start_children_bad_file_is_usage_error(
    daemon: FakeDaemon, tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "specs.toml"
    path.write_text(text)
    result = run(daemon, "start-children", str(path))
    assert result.exit_code == 2
    assert words in result.stderr
    assert daemon.requests == []


# -- --json --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "op"),
    [
        (["--json", "find", "web"], "find"),
        (["find", "--json", "web"], "find"),
        (["--json", "which-children"], "which_children"),
        (["nodes", "--json"], "nodes"),
        (["--json", "status"], "status"),
        (["--json", "delete-child", "web"], "delete_child"),
        (["--json", "start-child", "web", "--", "true"], "start_child"),
        (["--json", "create-group", "front"], "create_group"),
        (["groups", "--json"], "groups"),
        (["--json", "delete-group", "front"], "delete_group"),
        (["--json", "reset-group", "front"], "reset_group"),
        (["--json", "terminate-child", "web"], "terminate_child"),
        (["--json", "restart-child", "web"], "restart_child"),
        (["--json", "signal-child", "web", "HUP"], "signal_child"),
        (["logs", "--json", "web"], "logs"),
    ],
)
def test_json_prints_raw_result(daemon: FakeDaemon, argv: list[str], op: str) -> None:
    result = run(daemon, *argv)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == CANNED[op]


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("not_found", 3),
        ("timeout", 5),
        ("invalid", 2),
        ("refused", 1),
        ("exists", 1),
        ("internal", 1),
        ("something_new", 1),
    ],
)
def test_remote_errors_map_to_exit_codes(daemon: FakeDaemon, code: str, exit_code: int) -> None:
    daemon.errors["find"] = (code, "no child named 'web'")
    result = run(daemon, "find", "web")
    assert result.exit_code == exit_code
    assert result.stderr == "ringctl: no child named 'web'\n"
    assert result.stdout == ""


def test_missing_socket_is_unreachable() -> None:
    path = os.path.join(tempfile.gettempdir(), "ringctl-test-no-such.sock")
    result = run(path, "status")
    assert result.exit_code == 4
    assert result.stderr.startswith("ringctl: ")
    assert path in result.stderr
    assert "is ringd running?" in result.stderr


def test_socket_from_environment(daemon: FakeDaemon) -> None:
    env = {"RINGD_SOCKET": str(daemon.server_address)}
    result = CliRunner().invoke(ctl.cli, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("status", {})]


# -- rendering -----------------------------------------------------------------------


def test_find_shows_owner_node_and_pid(daemon: FakeDaemon) -> None:
    result = run(daemon, "find", "web")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("find", {"id": "web"})]
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert lines["owner"] == ["node1"]
    assert lines["node"] == ["node2"]
    assert lines["pid"] == ["4242"]
    assert re.fullmatch(r"\d+m\d\ds", lines["uptime"][0]), lines[
        "uptime"
    ]  # started 75 s before import
    assert lines["argv"] == ["python", "-m", "http.server", "8080"]


def test_which_children_table(daemon: FakeDaemon) -> None:
    result = run(daemon, "which-children", "--local", "--group", "front")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("which_children", {"local": True, "group": "front"})]
    header, web, batch = result.stdout.splitlines()
    assert header.split() == [
        *("ID", "NODE", "PID", "STATE", "READY", "HEALTH", "REV", "RESTARTS", "RSS", "CPU"),
        *("UPTIME", "REASON"),
    ]
    assert web.split() == [
        *("web", "node2", "4242", "running", "yes", "healthy", "7", "1", "12.3M", "1.5%"),
        *("1h01m", "-"),
    ]
    assert batch.split()[:11] == [
        *("batch-7", "-", "-", "pending", "-", "-", "-", "0", "-", "-", "-")
    ]
    assert "no node online" in batch


def test_which_children_node_filter_and_empty(daemon: FakeDaemon) -> None:
    daemon.results["which_children"] = []
    result = run(daemon, "which-children", "--node", "node9")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("which_children", {"local": False, "node": "node9"})]
    assert "no children" in result.stdout


def test_nodes_table(daemon: FakeDaemon) -> None:
    result = run(daemon, "nodes")
    assert result.exit_code == 0, result.output
    header, node1, node2 = result.stdout.splitlines()
    assert "LAST CHANGE" in header
    assert header.split()[:2] == ["NODE", "STATUS"]
    assert node1.split()[:2] == ["node1", "online"]
    assert "2024-05-01T12:00:00Z (" in node1
    assert "ago)" in node1
    assert node1.split()[-3:] == ["alpha.example", "111", "3"]
    assert node2.split()[:2] == ["node2", "offline"]
    assert "lease expired" in node2


def test_status_lines(daemon: FakeDaemon) -> None:
    result = run(daemon, "status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in ("node1", "prod", "999", "1h02m", "node1, node3", "backoff=1, running=2"):
        assert expected in out
    assert "http://127.0.0.1:2379" in out


def test_delete_child(daemon: FakeDaemon) -> None:
    result = run(daemon, "delete-child", "web", "--wait", "--timeout", "3")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("delete_child", {"id": "web", "wait": True, "timeout": 3.0})]
    assert result.stdout == "deleted web (stopped)\n"


@pytest.mark.parametrize(
    ("size", "shown"),
    [(None, "-"), (0, "0B"), (1023, "1023B"), (1536, "1.5K"), (5 * 1024**3, "5.0G")],
)
def test_human_bytes(size: int | None, shown: str) -> None:
    assert fmt.human_bytes(size) == shown


# -- groups --------------------------------------------------------------------------


def test_create_group_sends_only_given_options(daemon: FakeDaemon) -> None:
    result = run(
        daemon,
        "create-group",
        "front",
        "--strategy",
        "one_for_all",
        "--max-seconds",
        "5",
        "--retry-after",
        "60",
    )
    assert result.exit_code == 0, result.output
    assert daemon.requests == [
        (
            "create_group",
            {
                "spec": {
                    "name": "front",
                    "strategy": "one_for_all",
                    "max_seconds": 5.0,
                    "retry_after": 60.0,
                }
            },
        )
    ]
    assert result.stdout == "created group front (one_for_all, 3 restarts in 5 s)\n"


def test_create_group_all_options_and_minimal(daemon: FakeDaemon) -> None:
    result = run(
        daemon,
        "create-group",
        "g",
        "--max-restarts",
        "7",
        "--restart-delay",
        "0.5",
        "--restart-delay-max",
        "20",
    )
    assert result.exit_code == 0, result.output
    result = run(daemon, "create-group", "h")
    assert result.exit_code == 0, result.output
    assert [args for _, args in daemon.requests] == [
        {"spec": {"name": "g", "max_restarts": 7, "restart_delay": 0.5, "restart_delay_max": 20.0}},
        {"spec": {"name": "h"}},
    ]


def test_create_group_bad_strategy_is_usage_error(daemon: FakeDaemon) -> None:
    result = run(daemon, "create-group", "g", "--strategy", "all_for_none")
    assert result.exit_code == 2
    assert daemon.requests == []


def test_groups_table(daemon: FakeDaemon) -> None:
    now = NOW
    daemon.results["groups"] = [{**GROUP, "since": now - 42}, {**FAILED_GROUP, "since": now - 3700}]
    result = run(daemon, "groups")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("groups", {})]
    header, front, back = result.stdout.splitlines()
    assert header.split() == [
        *("GROUP", "STRATEGY", "INTENSITY", "STATE", "SINCE", "CHILDREN", "REASON")
    ]
    assert front.split()[:6] == ["front", "one_for_all", "3", "in", "5s", "running"]
    assert front.split()[6:] in (["42s", "ago", "2", "-"], ["43s", "ago", "2", "-"])
    assert back.split()[:6] == ["back", "one_for_one", "10", "in", "2.5s", "failed"]
    assert back.split()[6:] == ["1h01m", "ago", "0", "node3:", "intensity", "reached"]


def test_groups_empty(daemon: FakeDaemon) -> None:
    daemon.results["groups"] = []
    result = run(daemon, "groups")
    assert result.exit_code == 0, result.output
    assert "no groups" in result.stdout


def test_delete_group(daemon: FakeDaemon) -> None:
    result = run(daemon, "delete-group", "front")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("delete_group", {"name": "front", "force": False})]
    assert result.stdout == "deleted group front\n"


def test_delete_group_force_names_orphans(daemon: FakeDaemon) -> None:
    daemon.results["delete_group"] = {
        "name": "front",
        "deleted": True,
        "orphaned_children": ["api", "web"],
    }
    result = run(daemon, "delete-group", "front", "--force")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("delete_group", {"name": "front", "force": True})]
    assert result.stdout == "deleted group front; 2 children wait for it to exist again: api, web\n"


def test_delete_group_in_use_is_refused(daemon: FakeDaemon) -> None:
    daemon.errors["delete_group"] = ("refused", "group front is used by 2 children; use --force")
    result = run(daemon, "delete-group", "front")
    assert result.exit_code == 1
    assert result.stderr == "ringctl: group front is used by 2 children; use --force\n"


def test_reset_group(daemon: FakeDaemon) -> None:
    result = run(daemon, "reset-group", "front")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("reset_group", {"name": "front"})]
    assert result.stdout == "group front reset: its children start again\n"


# -- local children ------------------------------------------------------------------


def test_terminate_child(daemon: FakeDaemon) -> None:
    result = run(daemon, "terminate-child", "web")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("terminate_child", {"id": "web"})]
    assert result.stdout == "terminated web on node1\n"


def test_restart_child(daemon: FakeDaemon) -> None:
    result = run(daemon, "restart-child", "web")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("restart_child", {"id": "web"})]
    assert result.stdout == "restarted web on node1 (pid 4242)\n"


@pytest.mark.parametrize(("given", "number"), [("HUP", 1), ("SIGUSR1", 10), ("15", 15)])
def test_signal_child_passes_the_signal_through(
    daemon: FakeDaemon, given: str, number: int
) -> None:
    daemon.results["signal_child"] = {**CHILD_INFO, "signal": number}
    result = run(daemon, "signal-child", "web", given)
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("signal_child", {"id": "web", "signal": given})]
    name = {1: "SIGHUP", 10: "SIGUSR1", 15: "SIGTERM"}[number]
    assert result.stdout == f"sent {name} to web (pid 4242)\n"


def test_signal_child_bad_signal_is_invalid(daemon: FakeDaemon) -> None:
    daemon.errors["signal_child"] = ("invalid", "signal: 'NOPE' is not a signal")
    result = run(daemon, "signal-child", "web", "NOPE")
    assert result.exit_code == 2
    assert result.stderr == "ringctl: signal: 'NOPE' is not a signal\n"


def test_child_on_another_node_is_refused(daemon: FakeDaemon) -> None:
    message = "child web runs on node node2, not node1: use that node's ringctl"
    daemon.errors["terminate_child"] = ("refused", message)
    result = run(daemon, "terminate-child", "web")
    assert result.exit_code == 1
    assert result.stderr == f"ringctl: {message}\n"
    assert result.stdout == ""


# -- logs ----------------------------------------------------------------------------


def test_logs_prints_lines_raw(daemon: FakeDaemon) -> None:
    result = run(daemon, "logs", "web", "-n", "3")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("logs", {"id": "web", "lines": 3})]
    assert result.stdout == "[bold]not markup[/]\n\nx=1 [2]\n"


def test_logs_default_lines(daemon: FakeDaemon) -> None:
    result = run(daemon, "logs", "--lines", "0", "web")
    assert result.exit_code == 0, result.output
    result = run(daemon, "logs", "web")
    assert result.exit_code == 0, result.output
    assert [args for _, args in daemon.requests] == [
        {"id": "web", "lines": 0},
        {"id": "web", "lines": 10},
    ]


def test_logs_negative_lines_is_usage_error(daemon: FakeDaemon) -> None:
    result = run(daemon, "logs", "web", "-n", "-1")
    assert result.exit_code == 2
    assert daemon.requests == []


def test_logs_follow_prints_streamed_lines(daemon: FakeDaemon) -> None:
    daemon.streams["logs_follow"] = ["one", "[red]two[/]", "", "three"]
    result = run(daemon, "logs", "web", "-f", "-n", "2")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("logs_follow", {"id": "web", "lines": 2})]
    assert result.stdout == "one\n[red]two[/]\n\nthree\n"


def test_logs_follow_json_prints_one_string_per_line(daemon: FakeDaemon) -> None:
    daemon.streams["logs_follow"] = ["one", 'say "hi"']
    result = run(daemon, "--json", "logs", "--follow", "web")
    assert result.exit_code == 0, result.output
    assert daemon.requests == [("logs_follow", {"id": "web", "lines": 10})]
    assert [json.loads(line) for line in result.stdout.splitlines()] == ["one", 'say "hi"']


def test_exec_streams_output_and_exits_with_the_commands_status(daemon: FakeDaemon) -> None:
    daemon.streams["exec"] = [
        {"stream": "stdout", "data": "n2 1234\n"},
        {"stream": "stderr", "data": "warn\n"},
        {"exit": 3, "timed_out": False},
    ]
    result = run(daemon, "exec", "web/1", "--", "sh", "-c", "echo $RINGD_NODE; exit 3")
    assert result.exit_code == 3
    assert (result.stdout, result.stderr) == ("n2 1234\n", "warn\n")
    assert daemon.requests == [
        ("exec", {"id": "web/1", "argv": ["sh", "-c", "echo $RINGD_NODE; exit 3"], "timeout": 60.0})
    ]


def test_exec_timed_out_exits_5(daemon: FakeDaemon) -> None:
    daemon.streams["exec"] = [{"exit": 137, "timed_out": True}]
    result = run(daemon, "exec", "web", "--timeout", "2", "--", "sleep", "9")
    assert result.exit_code == 5
    assert result.stderr == "ringctl: exec on web: sleep killed after 2 s\n"


def test_exec_refused_when_the_child_moved(daemon: FakeDaemon) -> None:
    message = "child web moved or was started again: it runs on node n3 now (fence 9, not 7)"
    daemon.errors["exec"] = ("refused", message)
    result = run(daemon, "exec", "web", "--", "true")
    assert result.exit_code == 1
    assert result.stderr == f"ringctl: {message}\n"


def test_logs_follow_errors_map_like_calls(daemon: FakeDaemon) -> None:
    daemon.errors["logs_follow"] = ("not_found", "no child named 'web'")
    result = run(daemon, "logs", "-f", "web")
    assert result.exit_code == 3
    assert result.stderr == "ringctl: no child named 'web'\n"


def test_logs_follow_unreachable() -> None:
    path = os.path.join(tempfile.gettempdir(), "ringctl-test-no-such.sock")
    result = run(path, "logs", "-f", "web")
    assert result.exit_code == 4
    assert "is ringd running?" in result.stderr


def test_logs_follow_ctrl_c_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts: list[float | None] = []

    def stream(self: protocol.Client, op: str, **args: Any) -> Iterator[dict[str, Any]]:
        timeouts.append(self.timeout)
        yield {"id": 1, "ok": True, "event": "before"}
        raise KeyboardInterrupt

    monkeypatch.setattr(protocol.Client, "stream", stream)
    result = run("/nonexistent.sock", "logs", "-f", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout == "before\n"
    assert result.stderr == ""
    assert timeouts == [None]


def test_help_documents_exit_codes() -> None:
    result = CliRunner().invoke(ctl.cli, ["--help"])
    assert result.exit_code == 0
    for line in ("3  not found", "4  ringd unreachable", "5  timed out"):
        assert line in result.stdout


def test_start_child_replicas_affinity_handoff(daemon: FakeDaemon) -> None:
    result = run(
        daemon,
        "start-child",
        "db",
        "--replicas",
        "3",
        "--on",
        "zone=a",
        "--on",
        "disk=ssd",
        "--handoff",
        "--",
        "pg",
    )
    assert result.exit_code == 0, result.output
    (op, args), *_ = daemon.requests
    assert op == "start_child"
    assert args["spec"] == {
        "id": "db",
        "argv": ["pg"],
        "replicas": 3,
        "on": {"zone": "a", "disk": "ssd"},
        "handoff": True,
    }
    bad = run(daemon, "start-child", "db", "--on", "zone", "--", "pg")
    assert bad.exit_code == 2 and "'zone' is not K=V" in bad.stderr and "--on" in bad.stderr


def test_spec_batches_split_by_count_and_by_size() -> None:
    small = [{"id": f"c{i}", "argv": ["true"]} for i in range(2500)]
    assert [(start, len(chunk)) for start, chunk in specs.spec_batches(small)] == [
        (0, 1000),
        (1000, 1000),
        (2000, 500),
    ]
    # 300 specs of ~10 KiB each: 3 MiB, more than one request line holds.
    big = [{"id": f"b{i}", "argv": ["true"], "env": {"X": "x" * 10_000}} for i in range(300)]
    batches = list(specs.spec_batches(big))
    assert len(batches) == 3
    assert [start for start, _ in batches] == [0, batches[1][0], batches[2][0]]
    assert sum(len(chunk) for _, chunk in batches) == 300
    for _, chunk in batches:
        request = protocol.encode({"id": 1, "op": "start_children", "args": {"specs": chunk}})
        assert len(request) < protocol.MAX_LINE


def test_shift_spec_index_names_the_place_in_the_file() -> None:
    assert specs.shift_spec_index("child 3 (id x): argv: bad", 2000) == (
        "child 2003 (id x): argv: bad"
    )
    two = "2 problems:\n  child 1 (id a): argv: bad\n  child 9 (id b): env.A: bad"
    assert specs.shift_spec_index(two, 1000) == (
        "2 problems:\n  child 1001 (id a): argv: bad\n  child 1009 (id b): env.A: bad"
    )
    assert specs.shift_spec_index("specs: must be a list", 1000) == "specs: must be a list"
