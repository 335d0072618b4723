"""node_update: what changed about a node, for ``ringctl watch`` and for hooks.

Hooks are the executables in ``hooks_dir``. Each runs on every change of another
node's status row (not this node's own), in the order the changes happened, as
``HOOK NODE NEW_STATUS OLD_STATUS`` with the same facts in its environment. A hook
that fails, hangs past ``hook_timeout`` or cannot run is logged and forgotten:
it never disturbs the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from . import records
from .records import rfc3339

if TYPE_CHECKING:
    from .etcd import KV
    from .keys import Keys
    from .records import Claim, Drain, Status
    from .spec import GroupRecord
    from .view import Change, ClusterView

logger = logging.getLogger(__name__)


def _record(kv: KV | None, kind: str, name: str, sub: str = "") -> Any:
    """The record in ``kv``, or None if absent or not a record of its kind."""
    if kv is None or not kv.value:
        return None
    try:
        return records.decode(kind, sub, name, kv.value)
    except records.InvalidRecord:
        return None  # the view has logged it


def node_update(change: Change, keys: Keys) -> dict[str, Any] | None:
    """The node_update event for a change of a ``nodes/<n>/status`` row or of a
    drain (``drain``/``undrain``), else None."""
    parsed = keys.parse(change.kv.key)
    if parsed is None or parsed[0] != "nodes":
        return None
    if parsed[2] == "drain":
        return _drain_update(change, parsed[1])
    if parsed[2] != "status":
        return None
    node = parsed[1]
    new: Status | None = _record(change.kv, "nodes", node, "status")
    old: Status | None = None
    if change.previous is not None:
        old = _record(change.previous, "nodes", node, "status")
    if change.kind == "put" and new == old:
        return None
    new = new if change.kind == "put" else None
    return {
        "kind": "node",
        "node": node,
        "status": new.status if new else "forgotten",
        "old_status": old.status if old else "none",
        "reason": new.reason if new else "",
        "last_change": new.last_change if new else None,
    }


def _drain_update(change: Change, node: str) -> dict[str, Any] | None:
    """A drain as a node_update: ``draining`` from ``online``, and back."""
    if change.kind == "put":
        if change.previous is not None:
            return None  # drained again: no change
        drain: Drain | None = _record(change.kv, "nodes", node, "drain")
        by = f" by {drain.by}" if drain and drain.by else ""
        since = drain.since if drain and drain.since else time.time()
        return {
            "kind": "node",
            "node": node,
            "status": "draining",
            "old_status": "online",
            "reason": f"drained{by}",
            "last_change": rfc3339(since),
        }
    return {
        "kind": "node",
        "node": node,
        "status": "online",
        "old_status": "draining",
        "reason": "undrained",
        "last_change": rfc3339(time.time()),
    }


def child_update(change: Change, keys: Keys) -> dict[str, Any] | None:
    """A change of a child's spec, claim or group, as a watch event."""
    parsed = keys.parse(change.kv.key)
    if parsed is None:
        return None
    kind, name, _ = parsed
    deleted = change.kind == "delete"
    if kind == "children":
        event = "deleted" if deleted else ("changed" if change.previous else "created")
        return {"kind": "spec", "id": name, "event": event}
    if kind == "claims":
        claim: Claim | None = None if deleted else _record(change.kv, "claims", name)
        # A delete carries no value: the node is the one that held the claim.
        held: Claim | None = _record(change.previous, "claims", name) if deleted else claim
        return {
            "kind": "child",
            "id": name,
            "event": "released"
            if deleted
            else ("claimed" if change.previous is None else "updated"),
            "node": held.node if held else None,
            "pid": claim.pid if claim else None,
            "state": claim.state if claim else ("released" if deleted else None),
            "restarts": claim.restarts if claim else None,
        }
    if kind == "groups":
        group: GroupRecord | None = None if deleted else _record(change.kv, "groups", name)
        return {
            "kind": "group",
            "name": name,
            "event": "deleted" if deleted else "changed",
            "state": group.state if group else None,
            "reason": group.reason if group else "",
        }
    return None


async def _kill_group(process: trio.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class Hooks:
    """Runs the hook executables on node_update events of other nodes, in order."""

    def __init__(
        self,
        *,
        directory: str,
        timeout: float,
        node: str,
        cluster: str,
        view: ClusterView,
        keys: Keys,
        instance: str = "",
    ) -> None:
        self.directory = Path(directory)
        self.instance = instance  # the daemon's token: its guard kills hooks with it
        self.timeout = timeout
        self.node = node
        self.cluster = cluster
        self.view = view
        self.keys = keys

    def executables(self) -> list[Path]:
        try:
            entries = sorted(self.directory.iterdir())
        except OSError as exc:
            logger.warning("hooks_dir %s: %s", self.directory, exc.strerror or exc)
            return []
        return [
            p
            for p in entries
            if p.is_file() and os.access(p, os.X_OK) and not p.name.startswith(".")
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.view.subscribe() as changes:
            task_status.started()
            async for change in changes:
                event = node_update(change, self.keys)
                if event is not None and event["node"] != self.node:
                    for hook in self.executables():
                        await self._run(hook, event)

    async def _run(self, hook: Path, event: dict[str, Any]) -> None:
        env = dict(
            # Not the daemon's own RINGD_* (a ringd run by ringd has a child's).
            {k: v for k, v in os.environ.items() if not k.startswith("RINGD_")},
            RINGD_HOOK_NODE=event["node"],
            RINGD_HOOK_STATUS=event["status"],
            RINGD_HOOK_OLD_STATUS=event["old_status"],
            RINGD_HOOK_REASON=event["reason"],
            RINGD_HOOK_LAST_CHANGE=event["last_change"] or "",
            RINGD_HOOK_CLUSTER=self.cluster,
            RINGD_HOOK_SELF=self.node,
        )
        if self.instance:
            env["RINGD_INSTANCE"] = self.instance
        argv = [str(hook), event["node"], event["status"], event["old_status"]]
        done: list[subprocess.CompletedProcess[bytes]] = []

        async def run(task_status: Any) -> None:
            done.append(
                await trio.run_process(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    # Its own process group, killed whole at the timeout: what a
                    # hook script starts (curl, a pipeline) goes with it.
                    start_new_session=True,
                    deliver_cancel=_kill_group,
                    task_status=task_status,
                )
            )

        process: trio.Process | None = None
        failed: list[BaseException] = []
        try:
            with trio.move_on_after(self.timeout) as scope:
                async with trio.open_nursery() as nursery:
                    process = await nursery.start(run)
        except* OSError as group:
            # Raised from inside the nursery, so in a group: an except OSError
            # missed it, and a hook that could not be executed ended the daemon.
            failed = list(group.exceptions)
        if failed:
            exc = failed[0]
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            logger.warning("hook %s could not run: %s", hook.name, why)
            return
        if scope.cancelled_caught:
            # Also when the hook itself had exited but left a process holding its
            # output open (trio then waits for the pipes, not for the hook, and
            # kills nothing). That process keeps the group, so its number is not
            # anyone else's yet.
            if process is not None:
                await _kill_group(process)
            logger.warning(
                "hook %s (%s %s) killed after %g s",
                hook.name,
                event["node"],
                event["status"],
                self.timeout,
            )
            return
        (result,) = done
        for line in (result.stdout + result.stderr).decode(errors="replace").splitlines():
            logger.info("hook %s: %s", hook.name, line)
        if result.returncode != 0:
            logger.warning(
                "hook %s (%s %s) exited with status %d",
                hook.name,
                event["node"],
                event["status"],
                result.returncode,
            )
