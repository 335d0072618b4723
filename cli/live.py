"""What ``ringctl watch`` shows on a terminal: a table of every node and child,
updated in place by each change, the most recent changes first.

Pure: it is fed the daemon's ``nodes`` and ``which_children`` answers (the state
when the watch starts) and then the watch's events; rendering is rich's, in the
states' colours of every other command (``format.STATE_STYLES``).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .format import state_text


class LiveTable:
    """The current state of what ``watch`` follows (``nodes``, ``children`` or ``all``)."""

    def __init__(self, what: str, *, rows: int = 40) -> None:
        self.what = what
        self.rows = rows  # children shown (the most recently changed); nodes: all
        self.nodes: dict[str, dict[str, Any]] = {}
        self.children: dict[str, dict[str, Any]] = {}  # by instance key
        self.changes = 0

    def seed(self, nodes: list[dict[str, Any]], children: list[dict[str, Any]]) -> None:
        for row in nodes:
            self.nodes[row["node"]] = {
                "status": row.get("status"),
                "reason": row.get("reason", ""),
                "changed": _unix(row.get("last_change")),
            }
        for row in children:
            self.children[row["instance"]] = {
                "state": row.get("state"),
                "node": row.get("node"),
                "pid": row.get("pid"),
                "restarts": row.get("restarts"),
                "changed": None,  # not known: these sort after every change seen here
            }

    def apply(self, event: dict[str, Any], now: float | None = None) -> None:
        """One watch event (see ``ringd.hooks.node_update`` / ``child_update``)."""
        now = time.time() if now is None else now
        kind = event.get("kind")
        self.changes += 1
        if kind == "node":
            if event.get("status") == "forgotten":
                self.nodes.pop(event["node"], None)
                return
            self.nodes[event["node"]] = {
                "status": event.get("status"),
                "reason": event.get("reason", ""),
                "changed": now,
            }
        elif kind == "child":
            if event.get("event") == "released":
                row = self.children.setdefault(event["id"], {})
                row.update(state="released", pid=None, changed=now)
                return
            self.children[event["id"]] = {
                "state": event.get("state"),
                "node": event.get("node"),
                "pid": event.get("pid"),
                "restarts": event.get("restarts"),
                "changed": now,
            }
        elif kind == "spec" and event.get("event") == "deleted":
            for key in [k for k in self.children if k.partition("/")[0] == event["id"]]:
                del self.children[key]
        elif kind == "spec" and event.get("event") == "created":
            self.children.setdefault(event["id"], {"state": "pending", "changed": now})

    def render(self, now: float | None = None) -> Group:
        now = time.time() if now is None else now
        title = f"ringctl watch {self.what}: {self.changes} changes (Ctrl-C ends)"
        parts: list[Any] = [Text(title)]
        if self.what in ("nodes", "all"):
            nodes = Table("node", "status", "since", "reason", title="nodes", title_justify="left")
            for name, row in sorted(self.nodes.items()):
                nodes.add_row(
                    name, state_text(row["status"]), _ago(row["changed"], now), row["reason"]
                )
            parts.append(nodes)
        if self.what in ("children", "all"):
            recent = sorted(
                self.children.items(), key=lambda item: (-(item[1].get("changed") or 0), item[0])
            )
            shown = recent[: self.rows]
            caption = f"children ({len(shown)} of {len(recent)}, most recent changes first)"
            children = Table(
                "child", "state", "node", "pid", "restarts", "changed",
                title=caption, title_justify="left",
            )  # fmt: skip
            for key, row in shown:
                children.add_row(
                    key,
                    state_text(row.get("state")),
                    row.get("node") or "-",
                    str(row["pid"]) if row.get("pid") else "-",
                    str(row["restarts"]) if row.get("restarts") is not None else "-",
                    _ago(row.get("changed"), now),
                )
            parts.append(children)
        return Group(*parts)


def _unix(rfc3339: Any) -> float | None:
    try:
        return datetime.fromisoformat(rfc3339).timestamp()
    except (TypeError, ValueError):
        return None


def _ago(when: float | None, now: float) -> str:
    if not isinstance(when, int | float):
        return "-"
    seconds = max(now - when, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"
