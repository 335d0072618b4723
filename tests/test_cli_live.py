"""`ringctl watch` on a terminal: the live table (cli/live.py) fed with the state
at the start and then the watch's events."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich.console import Console

from ringctl import format as fmt
from ringctl.live import LiveTable

from .test_cli_unit import FakeDaemon, daemon, run  # noqa: F401 - the fixture

if TYPE_CHECKING:
    import pytest

NOW = 1_700_000_000.0


def text(table: LiveTable) -> str:
    console = Console(record=True, width=160, color_system=None, file=io.StringIO())
    console.print(table.render(now=NOW))
    return console.export_text()


def rows(out: str) -> dict[str, list[str]]:
    """Every table row of the rendered text, by its first cell."""
    found = {}
    for line in out.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            found[cells[0]] = cells[1:]
    return found


def order(out: str) -> list[str]:
    return [
        line.strip("│").split("│")[0].strip() for line in out.splitlines() if line.startswith("│")
    ]


def test_the_table_follows_nodes_and_children() -> None:
    table = LiveTable("all", rows=3)
    table.seed(
        [{"node": "n1", "status": "online", "reason": "", "last_change": "2023-11-14T22:13:00Z"}],
        [{"instance": "web", "state": "running", "node": "n1", "pid": 10, "restarts": 0}],
    )
    table.apply({"kind": "node", "node": "n2", "status": "online", "reason": ""}, now=NOW - 5)
    table.apply(
        {"kind": "child", "id": "db", "event": "claimed", "node": "n2", "state": "starting"},
        now=NOW - 4,
    )
    table.apply(
        {"kind": "child", "id": "db", "event": "updated", "node": "n2", "pid": 42,
         "state": "running", "restarts": 1},
        now=NOW - 3,
    )  # fmt: skip
    table.apply({"kind": "spec", "id": "new", "event": "created"}, now=NOW - 2)
    table.apply({"kind": "node", "node": "n1", "status": "offline", "reason": "lease expired"})
    out = text(table)
    shown = rows(out)
    assert shown["n1"][0] == "offline" and shown["n1"][2] == "lease expired"
    assert shown["n2"][:2] == ["online", "5s ago"]
    assert shown["db"] == ["running", "n2", "42", "1", "3s ago"]
    assert shown["new"][0] == "pending"
    # Children: the most recent change first; "web" (no change seen yet) last.
    children = [name for name in order(out) if name in ("new", "db", "web")]
    assert children == ["new", "db", "web"]
    assert "5 changes" in out

    table.apply({"kind": "child", "id": "db", "event": "released", "node": "n2"}, now=NOW)
    table.apply({"kind": "spec", "id": "web", "event": "deleted"}, now=NOW)
    table.apply({"kind": "node", "node": "n2", "status": "forgotten"}, now=NOW)
    shown = rows(text(table))
    assert shown["db"][:3] == ["released", "n2", "-"]
    assert "web" not in shown and "n2" not in shown


def test_only_what_is_watched_is_shown() -> None:
    table = LiveTable("nodes")
    table.apply({"kind": "node", "node": "n1", "status": "online", "reason": ""}, now=NOW)
    out = text(table)
    assert "n1" in rows(out) and "children" not in out


def test_watch_on_a_terminal_draws_the_table(
    daemon: FakeDaemon,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(
        fmt, "console", Console(file=screen, force_terminal=True, color_system=None, width=160)
    )
    daemon.results["nodes"] = [{"node": "n1", "status": "online", "reason": ""}]
    daemon.results["which_children"] = [
        {"instance": "web", "state": "running", "node": "n1", "pid": 7, "restarts": 0}
    ]
    daemon.streams["watch"] = [
        {"kind": "child", "id": "web", "event": "updated", "node": "n1", "pid": 8,
         "state": "restarting", "restarts": 1},
    ]  # fmt: skip
    result = run(daemon, "watch")
    assert result.exit_code == 0, result.output
    drawn = screen.getvalue()
    assert "restarting" in drawn and "1 changes" in drawn
    assert [op for op, _ in daemon.requests] == ["nodes", "which_children", "watch"]
