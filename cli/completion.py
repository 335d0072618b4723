"""Shell completion: ``ringctl completion SHELL`` prints click's script, and the
completers of child, group, node and signal names that the commands' arguments use."""

from __future__ import annotations

import signal
from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

from ringd.protocol import Client, RemoteError, Unreachable, default_socket_path

from .app import cli

# Shells whose completion script `ringctl completion SHELL` prints (click's own).
SHELLS = ("bash", "zsh", "fish")
# Completing names asks the daemon; a hung daemon must not hang the shell.
COMPLETE_TIMEOUT = 1.0


def _ask_daemon(ctx: click.Context, op: str, **args: Any) -> Any:
    socket_path = ctx.find_root().params.get("socket_path") or default_socket_path()
    try:
        return Client(socket_path, timeout=COMPLETE_TIMEOUT).call(op, **args)
    except (RemoteError, Unreachable, OSError, ValueError):
        return None  # no daemon, no names: completion offers nothing rather than fail


def _names(ctx: click.Context, op: str, key: str, incomplete: str) -> list[CompletionItem]:
    """The ``key`` of every row of the daemon's answer to ``op`` that starts with
    ``incomplete``, sorted."""
    rows = _ask_daemon(ctx, op) or []
    names = sorted({str(row.get(key)) for row in rows if isinstance(row, dict)})
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_child_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Child ids from the daemon, for the ID argument of commands on existing children."""
    return _names(ctx, "which_children", "id", incomplete)


def complete_group(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _names(ctx, "groups", "name", incomplete)


def complete_node(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _names(ctx, "nodes", "node", incomplete)


def complete_signal(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Signal names as signal-child takes them (HUP, USR1, ...); no daemon needed."""
    names = sorted(s.name.removeprefix("SIG") for s in signal.Signals if "_" not in s.name)
    return [CompletionItem(n) for n in names if n.startswith(incomplete.upper())]


@cli.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for bash, zsh or fish.

    Enable it in the shell's start-up file:

    \b
      eval "$(ringctl completion bash)"   # ~/.bashrc
      eval "$(ringctl completion zsh)"    # ~/.zshrc, after compinit
      ringctl completion fish | source    # ~/.config/fish/config.fish
    """
    root = ctx.find_root()
    prog = root.info_name or "ringctl"
    complete_var = "_{}_COMPLETE".format(prog.replace("-", "_").replace(".", "_").upper())
    shell_complete = get_completion_class(shell)
    assert shell_complete is not None  # SHELLS are click's own
    click.echo(shell_complete(root.command, {}, prog, complete_var).source())
