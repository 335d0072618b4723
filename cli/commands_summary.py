"""``ringctl summary``: the cluster at a glance, exit 1 unless every child runs where
it should (like ``systemctl is-system-running``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .app import EXIT_ERROR, call, cli, emit, json_option, pass_client
from .format import key_values

if TYPE_CHECKING:
    from ringd.protocol import Client


def _names(names: list[str]) -> str:
    return f"{len(names)} ({', '.join(names)})" if names else "0"


def _reasons(rows: list[dict[str, Any]]) -> str | None:
    return "; ".join(f"{r['count']} x {r['reason']}" for r in rows) or None


def _misplaced(row: dict[str, Any]) -> str:
    return f"{row['instance']} on {row['node']} (owner {row['owner'] or 'none'})"


def _rollout(row: dict[str, Any]) -> str:
    return f"{row['id']} {row['state']}" + (f": {row['reason']}" if row["reason"] else "")


def show_summary(info: dict[str, Any]) -> None:
    states = info.get("states") or {}
    misplaced = info.get("misplaced") or []
    rollouts = info.get("rollouts") or []
    failed = info.get("groups_failed") or {}
    key_values(
        [
            ("cluster", "ok" if info.get("ok") else "NOT OK: not every child runs where it should"),
            ("nodes online", _names(info.get("nodes_online") or [])),
            ("nodes draining", _names(info.get("nodes_draining") or [])),
            ("nodes offline", _names(info.get("nodes_offline") or [])),
            ("children", f"{info.get('children')} ({info.get('instances')} instances)"),
            ("by state", ", ".join(f"{k}={v}" for k, v in states.items()) or "none"),
            ("pending because", _reasons(info.get("pending_reasons") or [])),
            ("failing because", _reasons(info.get("failure_reasons") or [])),
            ("groups failed", "; ".join(f"{g} ({why})" for g, why in failed.items()) or None),
            ("moves pending", info.get("moves_pending")),
            ("misplaced", "; ".join(_misplaced(m) for m in misplaced) or None),
            ("rollouts", "; ".join(_rollout(r) for r in rollouts) or None),
        ]
    )


@cli.command("summary")
@json_option
@pass_client
def summary(client: Client) -> None:
    """The cluster at a glance: nodes, children by state and why, failed groups,
    moves and rollouts.

    Exits 0 when every child runs where it should, 1 otherwise.
    """
    result = call(client, "summary")
    emit(result, show_summary)
    if not result.get("ok"):
        click.get_current_context().exit(EXIT_ERROR)
