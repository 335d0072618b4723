"""Commands that change stored specs in place and show how the change rolls out:
update-child, update-group, apply, export and rollout.

The daemon decides: it compares each spec with the stored one (an unchanged spec
restarts nothing), computes apply's plan and names every problem of a file;
ringctl reads the file, sends it whole and shows the answer.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import IO, TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.text import Text

from .app import EXIT_ERROR, allow_wait, as_json, call, cli, emit, json_option, pass_client
from .commands_children import health_text, yes_no
from .completion import complete_child_id, complete_group
from .format import dash, error_line, listing, one_line, show, state_text
from .specs import (
    child_options,
    child_spec,
    file_format,
    group_options,
    group_spec,
    read_specs_file,
    write_specs,
)

if TYPE_CHECKING:
    from ringd.protocol import Client

FORMATS = click.Choice(["toml", "json"])
ACTION_STYLES = {"create": "green", "update": "yellow", "delete": "red", "unchanged": "dim"}
# "created 2, updated 1, ..." after an apply; "2 to create, ..." before one.
DONE = {"create": "created", "update": "updated", "delete": "deleted", "unchanged": "unchanged"}

# -- formatters ------------------------------------------------------------------------


def show_updated(result: dict[str, Any], wait: bool) -> None:
    name = escape(dash(result.get("id")))
    if not result.get("changed"):
        one_line(f"[bold]{name}[/] unchanged: nothing restarted")
    elif wait:
        one_line(f"updated [bold]{name}[/]: every instance runs the new spec, ready")
    else:
        one_line(
            f"updated [bold]{name}[/]: its instances move onto the new spec one at a time "
            f"(see ringctl rollout {name})"
        )


def show_group_updated(row: dict[str, Any]) -> None:
    name = escape(dash(row.get("name")))
    if row.get("changed"):
        one_line(f"updated group [bold]{name}[/] ({escape(dash(row.get('state')))})")
    else:
        one_line(f"group [bold]{name}[/] unchanged")


def show_plan(result: dict[str, Any]) -> None:
    plan = result.get("plan") or []
    table = listing("ACTION", "KIND", "ID")
    for entry in plan:
        action = str(entry.get("action"))
        table.add_row(
            Text(action, style=ACTION_STYLES.get(action, "")),
            dash(entry.get("kind")),
            Text(dash(entry.get("id"))),
        )
    if plan:
        show(table)
    counts = Counter(str(entry.get("action")) for entry in plan)
    if result.get("dry_run"):
        parts = [f"{counts[a]} to {a}" for a in ("create", "update", "delete")]
        one_line(", ".join(parts) + f", {counts['unchanged']} unchanged (dry run: nothing changed)")
    else:
        parts = [f"{DONE[a]} {counts[a]}" for a in ("create", "update", "delete", "unchanged")]
        one_line(", ".join(parts) + f" ({result.get('transactions', 0)} etcd transactions)")


def show_rollout(status: dict[str, Any]) -> None:
    name = escape(dash(status.get("id")))
    state = str(status.get("state"))
    line = f"[bold]{name}[/]: rollout {escape(state)}"
    if state == "halted":
        line += f": {escape(dash(status.get('reason')))}"
    elif status.get("revision") is not None:
        line += f" (spec revision {status['revision']})"
    one_line(line)
    instances = status.get("instances") or []
    if not instances:
        return
    table = listing(
        "INSTANCE", "NODE", "STATE", "REVISION", "SPEC", "READY", "HEALTH", right=("REVISION",)
    )
    for inst in instances:
        node = inst.get("node")
        table.add_row(
            Text(dash(inst.get("instance"))),
            Text(dash(node)),
            state_text(inst.get("state")),
            dash(inst.get("revision")),
            ("current" if inst.get("current") else "previous") if node else "-",
            yes_no(inst.get("ready")) if node else "-",
            health_text(inst.get("health")),
        )
    show(table)


# -- commands --------------------------------------------------------------------------


@cli.command("update-child")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@click.argument("argv", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
@child_options
@click.option(
    "--wait",
    is_flag=True,
    help="Return only once every instance runs the new spec, running and ready; "
    "exit 1 at once if the rollout halts.",
)
@click.option("--timeout", type=float, default=120.0, show_default=True, metavar="S",
              help="How long --wait waits.")  # fmt: skip
@json_option
@pass_client
def update_child(
    client: Client,
    /,
    child_id: str,
    argv: tuple[str, ...],
    wait: bool,
    timeout: float,
    **options: Any,
) -> None:
    """Replace a child's spec with this one (the whole spec, as start-child builds it).

    Its instances move onto the new spec one at a time, lowest replica first, each
    only while every other instance runs and is ready; the rollout halts if an
    instance of the new spec fails before it is ready (update again, e.g. back to
    the previous spec, to go on). The same spec again changes and restarts nothing.
    """
    spec = child_spec(child_id, argv, options)
    allow_wait(client, wait, timeout)
    result = call(client, "update_child", spec=spec, wait=wait, timeout=timeout)
    emit(result, lambda r: show_updated(r, wait))


@cli.command("update-group")
@click.argument("name", metavar="G", shell_complete=complete_group)
@group_options
@json_option
@pass_client
def update_group(client: Client, /, name: str, **options: Any) -> None:
    """Replace a group's spec with this one (the whole spec, as create-group builds it);
    its state (running, or failed) is kept and its children are not restarted."""
    result = call(client, "update_group", spec=group_spec(name, options))
    emit(result, show_group_updated)


@cli.command("export")
@click.argument("ids", nargs=-1, metavar="[ID]...", shell_complete=complete_child_id)
@click.option("--format", "fmt", type=FORMATS, default="toml", show_default=True,
              help="The specs file's format.")  # fmt: skip
@json_option
@pass_client
def export(client: Client, ids: tuple[str, ...], fmt: str) -> None:
    """Print the stored specs (all, or the children and groups named) as a specs file
    that start-children and apply read: only the fields that differ from their
    defaults. `ringctl apply` of its output changes nothing."""
    result = call(client, "export", ids=list(ids))
    for name in result.get("invalid") or []:
        error_line(f"ringctl: {escape(name)}: the stored spec is not valid, left out")
    if as_json():
        emit(result, lambda r: None)
        return
    sys.stdout.write(write_specs(result["children"], result["groups"], fmt))


@cli.command("apply")
@click.argument("file", type=click.File("r"), metavar="FILE")
@click.option("--format", "fmt", type=FORMATS,
              help="FILE's format (default: json for *.json, else toml).")  # fmt: skip
@click.option("--prune", is_flag=True, help="Also delete the children and groups FILE leaves out.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="Return only once every created or updated child runs its spec, ready; "
    "exit 1 at once if a rollout halts.",
)
@click.option("--timeout", type=float, default=120.0, show_default=True, metavar="S",
              help="How long --wait waits.")  # fmt: skip
@json_option
@pass_client
def apply(
    client: Client,
    file: IO[str],
    fmt: str | None,
    prune: bool,
    dry_run: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Make the stored specs equal to a specs file (FILE, or - for stdin; the format
    of start-children, [[group]] and [[child]] tables): create what is missing,
    update what differs (its instances roll onto it), leave the same untouched.

    The daemon computes the plan (create, update, delete, unchanged per id). A file
    with errors changes nothing, and every wrong field is named with its place in
    the file ("child 3 (id web): argv: must not be empty"). The whole file goes in
    one request (1 MiB).
    """
    found = read_specs_file(file.read(), file_format(file.name, fmt), strict=True)
    allow_wait(client, wait, timeout)
    result = call(
        client,
        "apply",
        children=found.children,
        groups=found.groups,
        prune=prune,
        dry_run=dry_run,
        wait=wait,
        timeout=timeout,
    )
    emit(result, show_plan)


@cli.command("rollout")
@click.argument("child_id", metavar="ID", shell_complete=complete_child_id)
@json_option
@pass_client
def rollout(client: Client, child_id: str) -> None:
    """Show which instance runs which spec revision, and whether the move to the
    current spec is in progress, done or halted (and why)."""
    result = call(client, "rollout", id=child_id)
    emit(result, show_rollout)
    if result.get("state") == "halted":
        raise SystemExit(EXIT_ERROR)
