"""ringctl's output for programs: tables into a pipe are one tab-separated line per
row (nothing padded, wrapped or cut), errors are one line (``ringctl: ...``, or
JSON with --json), usage errors included, and ``watch --json`` events carry a time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from ringctl import format as fmt
from ringctl import main as ctl

from .test_cli_unit import NOW, ROWS, STATUS, FakeDaemon, daemon, run  # noqa: F401 - fixture

if TYPE_CHECKING:
    from click.testing import Result

# A reason longer than the 80 columns a pipe gets, with markup-like text kept as written.
LONG = (
    "cannot start '/no/such/binary': [Errno 2] No such file or directory: "
    "'/no/such/binary' [bold](exec failed)[/]"
)


@pytest.fixture(autouse=True)
def piped_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consoles as rich makes them for a pipe: not a terminal, 80 columns."""
    monkeypatch.setattr(fmt, "console", Console(color_system=None, width=80))
    monkeypatch.setattr(fmt, "err_console", Console(stderr=True, color_system=None, width=80))
    monkeypatch.delenv("RINGD_SOCKET", raising=False)
    # Uptimes are rendered against the rows' NOW, however long the tests have run.
    monkeypatch.setattr(
        fmt, "time", types.SimpleNamespace(time=lambda: NOW, strftime=time.strftime)
    )


def plain_lines(text: str) -> list[str]:
    lines = text.splitlines()
    assert text.endswith("\n") and all(line == line.rstrip() for line in lines), repr(text)
    return lines


def table_rows(text: str) -> list[dict[str, str]]:
    """A piped table's rows by its header's column names (each row as many fields)."""
    header, *rows = (line.split("\t") for line in plain_lines(text))
    assert all(len(row) == len(header) for row in rows), (header, rows)
    return [dict(zip(header, row, strict=True)) for row in rows]


# -- tables into a pipe --------------------------------------------------------------


def test_a_piped_table_is_one_tab_separated_line_per_row(daemon: FakeDaemon) -> None:  # noqa: F811
    daemon.results["which_children"] = [
        ROWS[0],
        {**ROWS[1], "id": "nobin", "state": "failed", "reason": LONG},
        {**ROWS[1], "id": "odd", "reason": "line one\nline\ttwo"},
    ]
    result = run(daemon, "which-children")
    assert result.exit_code == 0, result.output
    header, *lines = plain_lines(result.stdout)
    assert header.startswith("ID\tNODE\tPID\tSTATE\t") and header.endswith("\tREASON")
    rows = table_rows(result.stdout)
    assert [(row["ID"], row["NODE"], row["PID"], row["STATE"]) for row in rows] == [
        ("web", "node2", "4242", "running"),
        ("nobin", "-", "-", "failed"),
        ("odd", "-", "-", "pending"),
    ]
    assert (rows[0]["RSS"], rows[0]["CPU"], rows[0]["UPTIME"]) == ("12.3M", "1.5%", "1h01m")
    assert [row["REASON"] for row in rows] == ["-", LONG, "line one line two"]
    # `ringctl which-children | grep nobin` shows the row and why.
    assert [line for line in result.stdout.splitlines() if "nobin" in line] == [lines[1]]


def test_piped_nodes_keep_each_field_whole(daemon: FakeDaemon) -> None:  # noqa: F811
    result = run(daemon, "nodes")
    assert result.exit_code == 0, result.output
    node1, node2 = table_rows(result.stdout)
    assert re.fullmatch(r"2024-05-01T12:00:00Z \(.+ ago\)", node1.pop("LAST CHANGE")), node1
    assert node1 == {"NODE": "node1", "STATUS": "online", "REASON": "-",
                     "HOST": "alpha.example", "PID": "111", "CHILDREN": "3"}  # fmt: skip
    assert node2 == {"NODE": "node2", "STATUS": "offline", "LAST CHANGE": "-",
                     "REASON": "lease expired", "HOST": "-", "PID": "-", "CHILDREN": "0"}  # fmt: skip


def test_piped_key_values_are_key_tab_value(daemon: FakeDaemon) -> None:  # noqa: F811
    daemon.results["status"] = {
        **STATUS,
        "etcd": ",".join(f"https://etcd{i}:2379" for i in range(9)),
    }
    result = run(daemon, "status")
    assert result.exit_code == 0, result.output
    lines = dict(line.split("\t") for line in plain_lines(result.stdout))
    assert lines["node"] == "node1"
    assert lines["lease ttl"] == "10s"
    assert lines["etcd"] == daemon.results["status"]["etcd"]
    assert lines["children here"] == "backoff=1, running=2"


def test_a_long_message_into_a_pipe_is_one_line(daemon: FakeDaemon) -> None:  # noqa: F811
    orphans = [f"child-with-a-long-name-{i}" for i in range(8)]
    daemon.results["delete_group"] = {"name": "front", "orphaned_children": orphans}
    result = run(daemon, "delete-group", "front", "--force")
    assert result.exit_code == 0, result.output
    assert plain_lines(result.stdout) == [
        f"deleted group front; 8 children wait for it to exist again: {', '.join(orphans)}"
    ]


def test_a_real_pipe(daemon: FakeDaemon) -> None:  # noqa: F811
    """ringctl run as a program, its stdout a pipe of a default 80 columns."""
    daemon.results["which_children"] = [{**ROWS[1], "id": "nobin", "reason": LONG}]
    env = {k: v for k, v in os.environ.items() if k not in ("RINGD_SOCKET", "FORCE_COLOR")}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ringctl"), "--socket", str(daemon.server_address),
         "which-children"],
        capture_output=True, text=True, env={**env, "COLUMNS": "80"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [row] = table_rows(done.stdout)
    assert (row["ID"], row["STATE"], row["REASON"]) == ("nobin", "pending", LONG)


# -- errors --------------------------------------------------------------------------


def json_error(result: Result) -> dict[str, Any]:
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    error: dict[str, Any] = json.loads(result.stderr)
    assert list(error) == ["error"] and sorted(error["error"]) == ["code", "message"]
    return error["error"]


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [("not_found", 3), ("timeout", 5), ("invalid", 2), ("refused", 1), ("something_new", 1)],
)
@pytest.mark.parametrize("where", ["before", "after"])
def test_json_errors_are_one_json_line_on_stderr(
    daemon: FakeDaemon,  # noqa: F811
    code: str,
    exit_code: int,
    where: str,
) -> None:
    daemon.errors["find"] = (code, "no child named 'web'")
    argv = ["--json", "find", "web"] if where == "before" else ["find", "web", "--json"]
    result = run(daemon, *argv)
    assert result.exit_code == exit_code
    assert json_error(result) == {"code": code, "message": "no child named 'web'"}


def test_json_unreachable_is_json(tmp_path: Path) -> None:
    result = run(str(tmp_path / "none.sock"), "--json", "status")
    assert result.exit_code == 4
    error = json_error(result)
    assert error["code"] == "unreachable" and "is ringd running?" in error["message"]


def test_json_streams_fail_as_json(daemon: FakeDaemon) -> None:  # noqa: F811
    daemon.errors["watch"] = ("invalid", "what: bad")
    result = run(daemon, "watch", "--json")
    assert result.exit_code == 2
    assert json_error(result) == {"code": "invalid", "message": "what: bad"}


def test_json_usage_errors_are_json(daemon: FakeDaemon) -> None:  # noqa: F811
    for argv in (["--json", "find"], ["find", "--json", "--bogus", "web"], ["--json", "nosuch"]):
        result = run(daemon, *argv)
        assert result.exit_code == 2, argv
        assert json_error(result)["code"] == "usage"
    assert daemon.requests == []


def test_a_childs_own_json_option_is_not_ringctls(daemon: FakeDaemon) -> None:  # noqa: F811
    daemon.errors["start_child"] = ("invalid", "argv: bad")
    result = run(daemon, "start-child", "web", "--", "prog", "--json")
    assert result.exit_code == 2
    assert result.stderr == "ringctl: argv: bad\n"


def test_ringctls_own_error_codes_with_json(daemon: FakeDaemon, tmp_path: Path) -> None:  # noqa: F811
    bad = tmp_path / "specs.toml"
    bad.write_text("id = ")
    result = run(daemon, "--json", "start-children", str(bad))
    assert result.exit_code == 2
    assert "not valid TOML" in json_error(result)["message"]


@pytest.mark.parametrize(
    ("argv", "command", "words"),
    [
        (["find"], "ringctl find", "missing argument 'ID'"),
        (["nosuch"], "ringctl", "no such command 'nosuch'"),
        (["stauts"], "ringctl", "Did you mean 'status'?"),
        (["--bogus", "status"], "ringctl", "no such option '--bogus'"),
        (["status", "--jsn"], "ringctl status", "no such option '--jsn'"),
        (["--socket"], "ringctl", "option '--socket' requires an argument"),
        (["start-child", "web"], "ringctl start-child", "missing argument '-- CMD [ARGS]...'"),
        (["start-child", "w", "--restart", "x", "--", "true"], "ringctl start-child", "'x' is not"),
        (["start-child", "w", "--env", "X", "--", "true"], "ringctl start-child", "'X' is not K=V"),
        (["logs", "web", "-n", "-1"], "ringctl logs", "-1 is not in the range"),
        (["create-group", "g", "--strategy", "none"], "ringctl create-group", "'none' is not"),
        (["completion", "tcsh"], "ringctl completion", "'tcsh' is not one of"),
    ],
)
def test_usage_errors_are_one_ringctl_line(
    daemon: FakeDaemon,  # noqa: F811
    argv: list[str],
    command: str,
    words: str,
) -> None:
    result = run(daemon, *argv)
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("ringctl: ") and line.endswith(f" (see {command} --help)"), line
    assert words in line
    assert "Usage:" not in result.stderr and "Error:" not in result.stderr
    assert daemon.requests == []


def test_ringctl_alone_still_prints_its_help() -> None:
    result = CliRunner().invoke(ctl.cli, [])
    assert result.exit_code == 2
    assert "Usage: ringctl" in result.output and "Commands:" in result.output


# -- watch --json --------------------------------------------------------------------


def test_watch_json_events_carry_a_time(daemon: FakeDaemon) -> None:  # noqa: F811
    daemon.streams["watch"] = [
        {"kind": "node", "node": "n1", "status": "offline", "old_status": "online",
         "reason": "lease expired", "last_change": "2024-05-01T12:00:00.000Z", "revision": 7},
        {"kind": "spec", "id": "web", "event": "created", "time": "2024-05-01T12:00:01.500Z"},
    ]  # fmt: skip
    before = time.time()
    result = run(daemon, "--json", "watch")
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"]), first
    seen = datetime.fromisoformat(first["time"]).timestamp()
    assert before - 1 <= seen <= time.time() + 1
    assert {k: v for k, v in first.items() if k != "time"} == daemon.streams["watch"][0]
    assert second == daemon.streams["watch"][1], "the daemon's own time is kept"
