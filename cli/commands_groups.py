"""Commands on groups, the children supervised together (like an OTP supervisor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.text import Text

from .app import call, cli, emit, json_option, pass_client
from .completion import complete_group
from .format import ago, dash, dim_line, listing, number, one_line, show, state_text
from .specs import group_options, group_spec

if TYPE_CHECKING:
    from ringd.protocol import Client

# -- formatters ----------------------------------------------------------------------


def show_created(row: dict[str, Any], name: str) -> None:
    group = escape(dash(row.get("name", name)))
    one_line(
        f"created group [bold]{group}[/] ({escape(dash(row.get('strategy')))}, "
        f"{dash(row.get('max_restarts'))} restarts in {number(row.get('max_seconds'))} s)"
    )


def show_groups(rows: list[dict[str, Any]]) -> None:
    if not rows:
        dim_line("no groups")
        return
    table = listing(
        "GROUP", "STRATEGY", "INTENSITY", "STATE", "SINCE", "CHILDREN", "REASON",
        right=("CHILDREN",),
    )  # fmt: skip
    for row in rows:
        reason = dash(row.get("reason"))
        if row.get("state") == "failed" and row.get("failed_node"):
            reason = f"{row['failed_node']}: {reason}"
        intensity = f"{dash(row.get('max_restarts'))} in {number(row.get('max_seconds'))}s"
        table.add_row(
            Text(dash(row.get("name"))),
            Text(dash(row.get("strategy"))),
            intensity,
            state_text(row.get("state")),
            ago(row.get("since")),
            dash(row.get("children")),
            Text(reason),
        )
    show(table)


def show_deleted(info: dict[str, Any], name: str) -> None:
    line = f"deleted group [bold]{escape(dash(info.get('name', name)))}[/]"
    orphans = info.get("orphaned_children") or []
    if orphans:
        line += f"; {len(orphans)} children wait for it to exist again: " + escape(
            ", ".join(map(str, orphans))
        )
    one_line(line)


def show_reset(row: dict[str, Any], name: str) -> None:
    group = escape(dash(row.get("name", name)))
    one_line(f"group [bold]{group}[/] reset: its children start again")


# -- commands ------------------------------------------------------------------------


@cli.command("create-group")
@click.argument("name", metavar="G")
@group_options
@json_option
@pass_client
def create_group(client: Client, /, name: str, **options: Any) -> None:
    """Create a group of children supervised together (like an OTP supervisor)."""
    result = call(client, "create_group", spec=group_spec(name, options))
    emit(result, lambda row: show_created(row, name))


@cli.command("groups")
@json_option
@pass_client
def groups(client: Client) -> None:
    """List the groups, their intensity and whether they failed."""
    emit(call(client, "groups"), show_groups)


@cli.command("delete-group")
@click.argument("name", metavar="G", shell_complete=complete_group)
@click.option("--force", is_flag=True, help="Delete it even if children use it (they wait for it).")
@json_option
@pass_client
def delete_group(client: Client, name: str, force: bool) -> None:
    """Delete a group; refused while children use it, unless --force."""
    result = call(client, "delete_group", name=name, force=force)
    emit(result, lambda info: show_deleted(info, name))


@cli.command("reset-group")
@click.argument("name", metavar="G", shell_complete=complete_group)
@json_option
@pass_client
def reset_group(client: Client, name: str) -> None:
    """Clear a group's failure: its children start again."""
    result = call(client, "reset_group", name=name)
    emit(result, lambda row: show_reset(row, name))
