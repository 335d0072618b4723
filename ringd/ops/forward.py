"""The ops on a running instance from any node: here, or forwarded to the node
where it runs (its claim's node, at its alive record's ``peer_address``).

``locate`` decides; the ops of ``local.py`` and ``streams.py`` act where the
instance runs (the peer listener serves only those, so a forwarded op is never
forwarded again). ``logs_follow`` keeps following an instance across its moves,
with one marker line at each (``-- web: now on n3 (fence 1234) --``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ..errors import NotFound, Refused, RingdError
from ..placement import split_key
from ..protocol import LocalChild, LogLines
from . import local, streams

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from ..protocol import ExecArgs, InstanceArgs, LogsArgs, SignalChildArgs
    from .context import Context

# How long logs -f waits before asking the same node again after its stream broke.
_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Here:
    """The instance runs on this node (its supervisor has it)."""

    fence: int


@dataclass(frozen=True, slots=True)
class There:
    """The instance runs on ``node``, reached at ``address``."""

    node: str
    address: str
    fence: int


def locate(ctx: Context, instance: str) -> Here | There:
    """Where ``instance`` runs, and how to reach it.

    Raises:
        NotFound: no such child (or replica).
        Refused: it runs nowhere; or elsewhere, and that node takes no peer
            connections or this one has no peer credentials (the message names
            the node).
    """
    child = ctx.supervisor.children.get(instance)
    if child is not None:
        return Here(child.fence)
    base, replica = split_key(instance)
    spec = ctx.view.spec(base)
    if spec is None or replica >= spec.value.replicas:
        raise NotFound("child", instance)
    claim = ctx.view.claim(instance)
    node = claim.value.node if claim is not None else ""
    if claim is None or not node:
        raise Refused(f"child {instance} is not running on any node")
    if node == ctx.node:
        raise Refused(f"child {instance} is starting or stopping on this node: try again")
    alive = ctx.view.alive(node)
    address = alive.value.peer_address if alive is not None else ""
    if not address:
        raise Refused(
            f"child {instance} runs on node {node}, not {ctx.node}, and peer access is off "
            f"({node} has no peer_address): use that node's ringctl"
        )
    if ctx.peers is None:
        raise Refused(
            f"child {instance} runs on node {node}, not {ctx.node}, and peer access is off "
            f"(no peer credentials here): use that node's ringctl"
        )
    return There(node, address, claim.kv.create_revision)


def _args(args: msgspec.Struct) -> dict[str, Any]:
    """The arguments as sent on: unset options left out (what an older peer knows)."""
    sent: dict[str, Any] = msgspec.to_builtins(args)
    return {key: value for key, value in sent.items() if value is not None}


async def _forward(ctx: Context, there: There, op: str, args: msgspec.Struct) -> Any:
    assert ctx.peers is not None
    return await ctx.peers.call(there.node, there.address, op, _args(args))


async def _on_its_node(
    ctx: Context,
    op: str,
    args: InstanceArgs | SignalChildArgs,
    here: Callable[[Context, Any], Awaitable[LocalChild]],
) -> LocalChild:
    """``here(ctx, args)`` where the instance runs: this node, or its peer's ``op``."""
    where = locate(ctx, args.id)
    if isinstance(where, Here):
        return await here(ctx, args)
    return msgspec.convert(await _forward(ctx, where, op, args), LocalChild)


async def terminate_child(ctx: Context, args: InstanceArgs) -> LocalChild:
    """``local.terminate_child`` where the instance runs."""
    return await _on_its_node(ctx, "terminate_child", args, local.terminate_child)


async def restart_child(ctx: Context, args: InstanceArgs) -> LocalChild:
    """``local.restart_child`` where the instance runs."""
    return await _on_its_node(ctx, "restart_child", args, local.restart_child)


async def signal_child(ctx: Context, args: SignalChildArgs) -> LocalChild:
    """``local.signal_child`` where the instance runs."""
    return await _on_its_node(ctx, "signal_child", args, local.signal_child)


async def logs(ctx: Context, args: LogsArgs) -> LogLines:
    """``streams.logs`` where the instance runs now (the previous node's log stays
    on that node: ``logs`` shows the current instance's)."""
    if args.node is not None:  # the log kept on that node, running there or not
        if args.node == ctx.node:
            return await streams.logs(ctx, args)
        return msgspec.convert(await _forward(ctx, _node(ctx, args.node), "logs", args), LogLines)
    where = locate(ctx, args.id)
    if isinstance(where, Here):
        return await streams.logs(ctx, args)
    return msgspec.convert(await _forward(ctx, where, "logs", args), LogLines)


def _node(ctx: Context, node: str) -> There:
    """How to reach ``node`` itself (``logs --node``).

    Raises:
        NotFound: it is not in the ring.
        Refused: peer access is off there or here.
    """
    alive = ctx.view.alive(node)
    if alive is None:
        raise NotFound("node in the ring", node)
    if not alive.value.peer_address or ctx.peers is None:
        raise Refused(f"peer access to node {node} is off: use that node's ringctl")
    return There(node, alive.value.peer_address, 0)


async def exec_(ctx: Context, args: ExecArgs) -> AsyncGenerator[Any, None]:
    """``streams.exec_`` where the instance runs, checked against the fence the
    caller saw (or, without one, the one this node's view names)."""
    where = locate(ctx, args.id)
    if args.fence is None:
        args = msgspec.structs.replace(args, fence=where.fence)
    if isinstance(where, Here):
        events = streams.exec_(ctx, args)
    else:
        assert ctx.peers is not None
        events = ctx.peers.stream(where.node, where.address, "exec", _args(args))
    async with contextlib.aclosing(events):
        async for event in events:
            yield event


def _placed(ctx: Context, instance: str) -> tuple[bool, str, int] | None:
    """Whether the child still exists, and where the instance runs now (node,
    fence), from the view; None for the node while it runs nowhere."""
    base, replica = split_key(instance)
    spec = ctx.view.spec(base)
    if spec is None or replica >= spec.value.replicas:
        return None
    claim = ctx.view.claim(instance)
    if claim is None or not claim.value.node:
        return (True, "", 0)
    return (True, claim.value.node, claim.kv.create_revision)


async def logs_follow(ctx: Context, args: LogsArgs) -> AsyncGenerator[str, None]:
    """The last lines, then every new line, following the instance wherever it
    runs: when it moves (or is started again under a new claim), one marker line,
    then the new instance's last ``lines`` lines and its new ones. Ends when the
    child is deleted."""
    where: Here | There | None = locate(ctx, args.id)  # errors at once: nothing to follow
    lines = args.lines
    current: tuple[str, int] | None = None
    first = True
    while True:
        if where is not None:
            node = ctx.node if isinstance(where, Here) else where.node
            key = (node, where.fence)
            if current is not None and key != current:
                yield f"-- {args.id}: now on {node} (fence {where.fence}) --"
                lines = args.lines
            elif current is not None:
                lines = 0  # the same instance again (its node's stream broke): no repeats
            current = key
            if isinstance(where, Here):
                follow = streams.logs_follow(ctx, msgspec.structs.replace(args, lines=lines))
            else:
                assert ctx.peers is not None
                asked = _args(msgspec.structs.replace(args, lines=lines))
                follow = ctx.peers.stream(where.node, where.address, "logs_follow", asked)
            try:
                async with contextlib.aclosing(follow):
                    async for line in follow:
                        yield str(line)
            except RingdError:
                if first:
                    raise  # the node refused from the start: say why
                # else that node stopped it or went away: find it again below
            first = False
        # Until the view says where it runs now (or, the same place, a while later).
        seen = -1
        with trio.move_on_after(_RETRY):
            while (placed := _placed(ctx, args.id)) is not None and (
                not placed[1] or (placed[1], placed[2]) == current
            ):
                seen = await ctx.view.wait_changed(seen)
        placed = _placed(ctx, args.id)
        if placed is None:
            yield f"-- {args.id}: deleted --"
            return
        try:
            where = locate(ctx, args.id)
        except RingdError:
            where = None  # running nowhere yet, or unreachable: look again
