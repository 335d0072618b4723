"""A child on this node: terminate, restart or signal it where it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ..errors import InvalidSpec, NotFound, Refused
from ..placement import split_key
from ..protocol import LocalChild
from ..spec import signal_number

if TYPE_CHECKING:
    from ..protocol import InstanceArgs, SignalChildArgs
    from ..supervisor import Child
    from .context import Context


def local_child(ctx: Context, instance: str) -> Child:
    """The child instance this node supervises.

    Raises:
        NotFound: no such child (or replica).
        Refused: it runs elsewhere (the message names the node), or nowhere.
    """
    child = ctx.supervisor.children.get(instance)
    if child is not None:
        return child
    base, replica = split_key(instance)
    spec = ctx.view.spec(base)
    if spec is None or replica >= spec.value.replicas:
        raise NotFound("child", instance)
    claim = ctx.view.claim(instance)
    if claim is not None and claim.value.node:
        raise Refused(
            f"child {instance} runs on node {claim.value.node}, not {ctx.node}: "
            "use that node's ringctl"
        )
    raise Refused(f"child {instance} is not running on any node")


def info(ctx: Context, child: Child) -> LocalChild:
    return msgspec.convert({**child.info(), "node": ctx.node}, LocalChild)


async def terminate_child(ctx: Context, args: InstanceArgs) -> LocalChild:
    """Stop a child here; it stays stopped until ``restart_child``."""
    child = local_child(ctx, args.id)
    try:
        await ctx.supervisor.terminate(child.id)
    except KeyError:  # stopped here (moved, deleted) while this waited
        raise NotFound("child", child.id) from None
    return info(ctx, child)


async def restart_child(ctx: Context, args: InstanceArgs) -> LocalChild:
    """Restart a child here (also a terminated or failed one)."""
    child = local_child(ctx, args.id)
    try:
        await ctx.supervisor.restart(child.id)
    except KeyError:  # stopped here (moved, deleted) while this waited
        raise NotFound("child", child.id) from None
    return info(ctx, child)


async def signal_child(ctx: Context, args: SignalChildArgs) -> LocalChild:
    """Send a signal (``HUP``, ``SIGUSR1``, ``15``) to a child here."""
    child = local_child(ctx, args.id)
    try:
        signum = signal_number(str(args.signal))
    except ValueError as exc:
        raise InvalidSpec("signal", str(exc)) from None
    try:
        ctx.supervisor.signal(child.id, signum)
    except ProcessLookupError as exc:
        raise Refused(str(exc)) from None
    return msgspec.structs.replace(info(ctx, child), signal=signum)
