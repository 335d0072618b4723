"""The op table: each op's name, the struct its arguments decode into, and its
handler (``handler(context, args)``). Like circus's ``circus/commands/``, one
module per family of ops; this one only binds them to a daemon's ``Context`` for
the control server."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..protocol import (
    ApplyArgs,
    Args,
    CreateGroupArgs,
    DeleteChildArgs,
    DeleteGroupArgs,
    DrainArgs,
    ExecArgs,
    ExportArgs,
    FindArgs,
    InstanceArgs,
    LogsArgs,
    NodeArgs,
    ResetGroupArgs,
    RolloutArgs,
    SignalChildArgs,
    StartChildArgs,
    StartChildrenArgs,
    UpdateChildArgs,
    UpdateGroupArgs,
    WatchArgs,
    WhichChildrenArgs,
    decode_args,
)
from . import children, forward, groups, local, nodes, streams, summary, updates

if TYPE_CHECKING:
    from .context import Context

A = TypeVar("A", bound=Args)
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], AsyncGenerator[Any, None]]


@dataclass(frozen=True, slots=True)
class Op(Generic[A]):
    """An op answered with one result."""

    args: type[A]
    run: Callable[[Context, A], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class StreamOp(Generic[A]):
    """An op answered with events until the client goes away."""

    args: type[A]
    run: Callable[[Context, A], AsyncGenerator[Any, None]]


OPS: dict[str, Op[Any]] = {
    "ping": Op(Args, nodes.ping),
    "status": Op(Args, nodes.status),
    "start_child": Op(StartChildArgs, children.start_child),
    "start_children": Op(StartChildrenArgs, children.start_children),
    "delete_child": Op(DeleteChildArgs, children.delete_child),
    "find": Op(FindArgs, children.find),
    "which_children": Op(WhichChildrenArgs, children.which_children),
    "nodes": Op(Args, nodes.nodes),
    "create_group": Op(CreateGroupArgs, groups.create_group),
    "groups": Op(Args, groups.groups),
    "delete_group": Op(DeleteGroupArgs, groups.delete_group),
    "reset_group": Op(ResetGroupArgs, groups.reset_group),
    # Where the instance runs: here, or forwarded to its node's peer listener.
    "terminate_child": Op(InstanceArgs, forward.terminate_child),
    "restart_child": Op(InstanceArgs, forward.restart_child),
    "signal_child": Op(SignalChildArgs, forward.signal_child),
    "logs": Op(LogsArgs, forward.logs),
    "drain": Op(DrainArgs, nodes.drain),
    "undrain": Op(NodeArgs, nodes.undrain),
    "forget_node": Op(NodeArgs, nodes.forget_node),
    "update_child": Op(UpdateChildArgs, updates.update_child),
    "update_group": Op(UpdateGroupArgs, updates.update_group),
    "apply": Op(ApplyArgs, updates.apply),
    "export": Op(ExportArgs, updates.export),
    "rollout": Op(RolloutArgs, updates.rollout),
    "summary": Op(Args, summary.summary),
}
STREAMS: dict[str, StreamOp[Any]] = {
    "logs_follow": StreamOp(LogsArgs, forward.logs_follow),
    "watch": StreamOp(WatchArgs, streams.watch),
    "exec": StreamOp(ExecArgs, forward.exec_),
}
# What the peer listener serves other daemons: only the ops on an instance running
# here, never forwarded again.
PEER_OPS: dict[str, Op[Any]] = {
    "ping": Op(Args, nodes.ping),
    "terminate_child": Op(InstanceArgs, local.terminate_child),
    "restart_child": Op(InstanceArgs, local.restart_child),
    "signal_child": Op(SignalChildArgs, local.signal_child),
    "logs": Op(LogsArgs, streams.logs),
}
PEER_STREAMS: dict[str, StreamOp[Any]] = {
    "logs_follow": StreamOp(LogsArgs, streams.logs_follow),
    "exec": StreamOp(ExecArgs, streams.exec_),
}


def handlers(ctx: Context, *, peer: bool = False) -> dict[str, Handler]:
    """Every op bound to ``ctx`` (``peer``: those the peer listener serves):
    ``handler(args)`` decodes ``args`` (InvalidSpec naming the bad one) and runs it."""
    return {name: _bind(op, ctx) for name, op in (PEER_OPS if peer else OPS).items()}


def stream_handlers(ctx: Context, *, peer: bool = False) -> dict[str, StreamHandler]:
    """Every streaming op bound to ``ctx`` (arguments decoded when it is called)."""
    table = PEER_STREAMS if peer else STREAMS
    return {name: _bind_stream(op, ctx) for name, op in table.items()}


def _bind(op: Op[A], ctx: Context) -> Handler:
    async def handle(args: dict[str, Any]) -> Any:
        return await op.run(ctx, decode_args(op.args, args))

    return handle


def _bind_stream(op: StreamOp[A], ctx: Context) -> StreamHandler:
    def handle(args: dict[str, Any]) -> AsyncGenerator[Any, None]:
        return op.run(ctx, decode_args(op.args, args))

    return handle
