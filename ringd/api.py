"""The operations the control socket offers (``ringctl`` commands map one to one).

Reads come from the local cluster view; writes go to etcd and are in etcd before
the reply says they succeeded.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from . import __version__
from .errors import AlreadyExists, InvalidSpec, NotFound, Refused, TimedOut
from .hooks import child_update, node_update
from .listing import Listing
from .logs import tail
from .membership import decode
from .placement import split_key
from .protocol import MAX_BATCH
from .spec import NAME_PATTERN, GroupRecord, encode, parse_child, parse_group, signal_number

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable
    from pathlib import Path

    from .config import Config
    from .etcd import Etcd
    from .figures import Figures
    from .keys import Keys
    from .membership import Membership
    from .protocol import Encoded
    from .reconciler import Reconciler
    from .supervisor import Supervisor
    from .view import ClusterView

import re

_NAME = re.compile(NAME_PATTERN)


def _name(args: dict[str, Any], field: str = "id") -> str:
    value = args.get(field)
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidSpec(field, "must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return value


_INSTANCE = re.compile(NAME_PATTERN.removesuffix("$") + r"(/[1-9][0-9]{0,2})?$")


def _instance(args: dict[str, Any]) -> str:
    """A child instance: ``id`` (the master) or ``id/<n>`` (its n-th replica)."""
    value = args.get("id")
    if not isinstance(value, str) or not _INSTANCE.match(value):
        raise InvalidSpec("id", "must be a child id, or id/<n> for its n-th replica")
    return value


def _timeout(args: dict[str, Any]) -> float:
    value = args.get("timeout", 30.0)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 3600:
        raise InvalidSpec("timeout", "must be a number of seconds in (0, 3600]")
    return float(value)


class Api:
    """The handlers behind the control socket."""

    def __init__(
        self,
        *,
        config: Config,
        etcd: Etcd,
        keys: Keys,
        view: ClusterView,
        membership: Membership,
        supervisor: Supervisor,
        reconciler: Reconciler,
        figures: Figures,
    ) -> None:
        self.config = config
        self.etcd = etcd
        self.keys = keys
        self.view = view
        self.membership = membership
        self.supervisor = supervisor
        self.reconciler = reconciler
        self.started = time.time()
        self.figures = figures
        self.listing = Listing(
            node=config.name, view=view, reconciler=reconciler, figures=figures, fresh=figures.fresh
        )

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "ping": self.ping,
            "status": self.status,
            "start_child": self.start_child,
            "start_children": self.start_children,
            "delete_child": self.delete_child,
            "find": self.find,
            "which_children": self.which_children,
            "nodes": self.nodes,
            "create_group": self.create_group,
            "groups": self.groups,
            "delete_group": self.delete_group,
            "reset_group": self.reset_group,
            "terminate_child": self.terminate_child,
            "restart_child": self.restart_child,
            "signal_child": self.signal_child,
            "logs": self.logs,
            "drain": self.drain,
            "undrain": self.undrain,
            "forget_node": self.forget_node,
        }

    def streams(self) -> dict[str, Callable[[dict[str, Any]], AsyncGenerator[Any, None]]]:
        return {"logs_follow": self.logs_follow, "watch": self.watch}

    async def _wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        seen = -1
        with trio.move_on_after(timeout):
            while True:
                result = condition()
                if result:
                    return result
                seen = await self.view.wait_changed(seen)
        raise TimedOut(f"{what} did not happen within {timeout:g} s")

    # -- ops --------------------------------------------------------------------------

    async def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"node": self.config.name, "version": __version__}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        states: dict[str, int] = {}
        for child in self.supervisor.children.values():
            states[str(child.state)] = states.get(str(child.state), 0) + 1
        alive = self.view.by_kind("nodes", "alive")
        return {
            "node": self.config.name,
            "cluster": self.config.cluster,
            "version": __version__,
            "pid": os.getpid(),
            "uptime": time.time() - self.started,
            "etcd": self.etcd.endpoint,
            "standalone": self.config.standalone,
            "lease": f"{self.membership.lease_id:x}" if self.membership.lease_id else None,
            "lease_ttl": self.membership.ttl,
            "fenced": self.membership.fenced,
            "nodes_online": sorted(alive),
            "children_total": self.view.count("children"),
            "children_local": states,
            "revision": self.view.revision,
            "moves_pending": self.reconciler.moves_pending,
            "labels": self.config.labels,
            "groups_failed": {
                name: f"{stored.value.node}: {stored.value.reason}"
                for name, stored in self.reconciler.groups().items()
                if stored.value.state == "failed"
            },
        }

    async def start_child(self, args: dict[str, Any]) -> dict[str, Any]:
        raw = args.get("spec")
        if not isinstance(raw, dict):
            raise InvalidSpec("spec", "must be an object")
        spec = parse_child(raw)
        timeout = _timeout(args)  # checked before anything is stored
        value = encode(spec)
        existing = await self.etcd.create_coalesced(self.keys.child(spec.id), value)
        if existing.value != value:  # the same spec again is fine: start-child is idempotent
            raise AlreadyExists("child", spec.id)
        if args.get("wait"):
            await self._wait_for(
                lambda: self._running(spec.id), timeout, f"child {spec.id} running"
            )
        # The view may not hold the new spec yet; etcd just answered with it.
        return await self._found(spec.id, self.view.get("children", spec.id) or existing)

    async def start_children(self, args: dict[str, Any]) -> dict[str, Any]:
        """Store many child specs at once (a specs file): all are validated before
        any is written, then created a transaction of ``etcd.txn_ops`` at a time.
        A spec already stored unchanged is fine; one stored differently is a
        conflict, named in the reply, and the others are still stored."""
        raw = args.get("specs")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BATCH:
            raise InvalidSpec("specs", f"must be a list of 1 to {MAX_BATCH} specs")
        specs: dict[str, bytes] = {}
        for index, item in enumerate(raw):
            try:
                if not isinstance(item, dict):
                    raise InvalidSpec("spec", "must be an object")
                spec = parse_child(item)
            except InvalidSpec as exc:
                raise InvalidSpec(f"specs[{index}].{exc.field}", exc.problem) from None
            if spec.id in specs:
                raise InvalidSpec(f"specs[{index}].id", f"{spec.id!r} appears twice")
            specs[spec.id] = encode(spec)
        timeout = _timeout(args)
        ids = list(specs)
        conflicts: list[str] = []
        for start in range(0, len(ids), self.etcd.txn_ops):
            batch = ids[start : start + self.etcd.txn_ops]
            now = await self.etcd.create_many([(self.keys.child(i), specs[i]) for i in batch])
            conflicts += [i for i in batch if now[self.keys.child(i)].value != specs[i]]
        if args.get("wait"):
            conflicting = set(conflicts)
            waiting = [i for i in ids if i not in conflicting]
            await self._wait_for(
                lambda: all(self._running(i) for i in waiting),
                timeout,
                f"{len(waiting)} children running",
            )
        return {"stored": len(ids) - len(conflicts), "conflicts": conflicts}

    def _running(self, child_id: str) -> bool:
        claim = decode(self.view.get("claims", child_id))
        return claim.get("state") == "running" and claim.get("pid") is not None

    async def delete_child(self, args: dict[str, Any]) -> dict[str, Any]:
        child_id = _name(args)
        timeout = _timeout(args) if args.get("wait") else None  # checked before acting
        if not await self.etcd.delete(self.keys.child(child_id)):
            raise NotFound("child", child_id)
        if timeout is not None:
            await self._wait_for(
                lambda: self.view.get("claims", child_id) is None,
                timeout,
                f"child {child_id} stopped",
            )
        return {"id": child_id, "deleted": True}

    def _local(self, child_id: str) -> Any:
        """The local child, or an error naming the node where it runs."""
        child = self.supervisor.children.get(child_id)
        if child is not None:
            return child
        base, replica = split_key(child_id)
        spec_kv = self.view.get("children", base)
        replicas = decode(spec_kv).get("replicas", 1)
        if spec_kv is None or replica >= (replicas if isinstance(replicas, int) else 1):
            raise NotFound("child", child_id)
        node = decode(self.view.get("claims", child_id)).get("node")
        if node:
            raise Refused(
                f"child {child_id} runs on node {node}, not {self.config.name}: "
                "use that node's ringctl"
            )
        raise Refused(f"child {child_id} is not running on any node")

    async def find(self, args: dict[str, Any]) -> dict[str, Any]:
        """The master's row, plus every instance with its node, pid and role."""
        child_id = _name(args)
        spec_kv = self.view.get("children", child_id)
        if spec_kv is None:
            # The view may lag a write made a moment ago: ask etcd before saying no.
            spec_kv = await self.etcd.get(self.keys.child(child_id))
            if spec_kv is None:
                raise NotFound("child", child_id)
        return await self._found(child_id, spec_kv)

    async def _found(self, child_id: str, spec_kv: Any) -> dict[str, Any]:
        entry = self.listing.child(child_id, spec_kv)
        rows = await self.listing.with_figures(entry.rows)
        return {
            **rows[0],
            "argv": entry.argv,
            "replicas": len(rows),
            "degraded": any(r["state"] == "degraded" for r in rows),
            "instances": rows,
        }

    async def which_children(self, args: dict[str, Any]) -> list[dict[str, Any]] | Encoded:
        node = args.get("node")
        group = args.get("group")
        local = bool(args.get("local"))
        if local:
            node = self.config.name

        async def rows() -> list[dict[str, Any]]:
            rows = await self.listing.everything()
            if local:
                # This node's own view of its children is fresher than what it published.
                rows = [
                    {**row, **child.info(), "node": self.config.name}
                    if (child := self.supervisor.children.get(row["instance"])) is not None
                    else row
                    for row in rows
                ]
            if node is not None:
                rows = [r for r in rows if r["node"] == node]
            if group is not None:
                rows = [r for r in rows if r["group"] == group]
            return await self.listing.with_figures(rows)

        if local:
            return await rows()  # the supervisor's state is not in the view's version
        # Unhashable filters (a list from a script) are compared, not cached.
        key = ("which_children", node, group)
        try:
            hash(key)
        except TypeError:
            return await rows()
        return await self.listing.reply(key, rows)

    async def nodes(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        alive = self.view.by_kind("nodes", "alive")
        statuses = self.view.by_kind("nodes", "status")
        claims = [decode(kv).get("node") for kv in self.view.by_kind("claims").values()]
        drains = self.view.by_kind("nodes", "drain")
        rows = []
        for node in sorted(alive.keys() | statuses.keys() | drains.keys()):
            info = decode(alive.get(node))
            row = decode(statuses.get(node))
            rows.append(
                {
                    "node": node,
                    "status": row.get("status", "online" if node in alive else "unknown"),
                    "last_change": row.get("last_change"),
                    "reason": row.get("reason", ""),
                    "alive": node in alive,
                    "host": info.get("host"),
                    "pid": info.get("pid"),
                    "draining": node in drains,
                    "children": claims.count(node),
                }
            )
        return rows

    # -- groups -----------------------------------------------------------------------

    async def create_group(self, args: dict[str, Any]) -> dict[str, Any]:
        raw = args.get("spec")
        if not isinstance(raw, dict):
            raise InvalidSpec("spec", "must be an object")
        spec = parse_group(raw)
        record = GroupRecord(spec=spec, since=time.time())
        created, existing = await self.etcd.create(self.keys.group(spec.name), encode(record))
        if not created and (existing is None or self._group_record(existing).spec != spec):
            raise AlreadyExists("group", spec.name)
        return self._group_row(spec.name, record)

    @staticmethod
    def _group_record(kv: Any) -> GroupRecord:
        from .spec import parse_group_record

        return parse_group_record(kv.value)

    def _group_row(self, name: str, record: GroupRecord) -> dict[str, Any]:
        members = [s for s in self.reconciler.specs().values() if s.group == name]
        return {
            **msgspec.structs.asdict(record.spec),
            "state": record.state,
            "reason": record.reason,
            "failed_node": record.node,
            "since": record.since,
            "children": len(members),
        }

    async def groups(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            self._group_row(name, stored.value)
            for name, stored in sorted(self.reconciler.groups().items())
        ]

    async def delete_group(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _name(args, "name")
        users = sorted(i for i, s in self.reconciler.specs().items() if s.group == name)
        if users and not args.get("force"):
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise Refused(f"group {name} is used by {len(users)} children ({shown}); use --force")
        if not await self.etcd.delete(self.keys.group(name)):
            raise NotFound("group", name)
        return {"name": name, "deleted": True, "orphaned_children": users}

    async def reset_group(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _name(args, "name")
        kv = await self.etcd.get(self.keys.group(name))
        if kv is None:
            raise NotFound("group", name)
        record = self._group_record(kv)
        fresh = msgspec.structs.replace(
            record, state="running", reason="reset by operator", node=None, since=time.time()
        )
        if not await self.etcd.put_if(kv.key, encode(fresh), mod_revision=kv.mod_revision):
            raise Refused(f"group {name} changed while resetting it; try again")
        return self._group_row(name, fresh)

    # -- local children ---------------------------------------------------------------

    async def terminate_child(self, args: dict[str, Any]) -> dict[str, Any]:
        child = self._local(_instance(args))
        try:
            await self.supervisor.terminate(child.id)
        except KeyError:  # stopped here (moved, deleted) while this waited
            raise NotFound("child", child.id) from None
        return {**child.info(), "node": self.config.name}

    async def restart_child(self, args: dict[str, Any]) -> dict[str, Any]:
        child = self._local(_instance(args))
        try:
            await self.supervisor.restart(child.id)
        except KeyError:  # stopped here (moved, deleted) while this waited
            raise NotFound("child", child.id) from None
        return {**child.info(), "node": self.config.name}

    async def signal_child(self, args: dict[str, Any]) -> dict[str, Any]:
        child = self._local(_instance(args))
        raw = args.get("signal")
        try:
            signum = signal_number(str(raw))
        except ValueError as exc:
            raise InvalidSpec("signal", str(exc)) from None
        try:
            self.supervisor.signal(child.id, signum)
        except ProcessLookupError as exc:
            raise Refused(str(exc)) from None
        return {**child.info(), "node": self.config.name, "signal": signum}

    def _log_path(self, child_id: str) -> Path:
        return self.supervisor.log_path(child_id)

    def _lines(self, args: dict[str, Any]) -> int:
        lines = args.get("lines", 10)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 0 <= lines <= 100_000:
            raise InvalidSpec("lines", "must be an integer in [0, 100000]")
        return lines

    async def logs(self, args: dict[str, Any]) -> dict[str, Any]:
        child = self._local(_instance(args))
        lines = await trio.to_thread.run_sync(tail, self._log_path(child.id), self._lines(args))
        return {"id": child.id, "node": self.config.name, "lines": lines}

    async def logs_follow(self, args: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """The last lines, then every new line as it is written (across rotations)."""
        child = self._local(_instance(args))
        path = self._log_path(child.id)
        for last in await trio.to_thread.run_sync(tail, path, self._lines(args)):
            yield last
        position = path.stat().st_size if path.exists() else 0
        inode = path.stat().st_ino if path.exists() else None
        partial = b""
        while True:
            await trio.sleep(0.2)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_ino != inode or st.st_size < position:
                inode, position = st.st_ino, 0  # rotated
            if st.st_size == position:
                continue
            data = await trio.to_thread.run_sync(_read_from, path, position)
            position += len(data)
            *complete, partial = (partial + data).split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")

    # -- membership -------------------------------------------------------------------

    def _known_node(self, args: dict[str, Any]) -> str:
        node = _name(args, "node")
        if node not in self.view.by_kind("nodes", "alive") and node not in self.view.by_kind(
            "nodes", "status"
        ):
            raise NotFound("node", node)
        return node

    async def drain(self, args: dict[str, Any]) -> dict[str, Any]:
        """Take a node out of the ring while it stays online: its children move away."""
        node = self._known_node(args)
        timeout = _timeout(args) if args.get("wait") else None  # checked before acting
        value = json.dumps({"since": time.time(), "by": self.config.name}).encode()
        await self.etcd.put(self.keys.drain(node), value)
        if timeout is not None:
            await self._wait_for(
                lambda: (
                    not any(
                        decode(kv).get("node") == node
                        for kv in self.view.by_kind("claims").values()
                    )
                ),
                timeout,
                f"node {node} drained",
            )
        return {"node": node, "draining": True}

    async def undrain(self, args: dict[str, Any]) -> dict[str, Any]:
        node = self._known_node(args)
        await self.etcd.delete(self.keys.drain(node))
        return {"node": node, "draining": False}

    async def forget_node(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove an offline node's tracker row (it stays listed until then)."""
        node = self._known_node(args)
        if node in self.view.by_kind("nodes", "alive"):
            raise Refused(f"node {node} is online: only an offline node can be forgotten")
        await self.etcd.delete(self.keys.status(node))
        await self.etcd.delete(self.keys.drain(node))
        return {"node": node, "forgotten": True}

    async def watch(self, args: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """Stream node_update and child events as they happen (``what``: nodes, children, all)."""
        what = args.get("what", "all")
        if what not in ("nodes", "children", "all"):
            raise InvalidSpec("what", "must be nodes, children or all")
        with self.view.subscribe() as changes:
            async for change in changes:
                event = None
                if what in ("nodes", "all"):
                    event = node_update(change, self.keys)
                if event is None and what in ("children", "all"):
                    event = child_update(change, self.keys)
                if event is not None:
                    event["revision"] = change.kv.mod_revision
                    yield event


def _read_from(path: Path, position: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(position)
        return f.read()
