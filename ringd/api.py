"""The operations the control socket offers (``ringctl`` commands map one to one).

Reads come from the local cluster view; writes go to etcd and are in etcd before
the reply says they succeeded.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import trio

from . import __version__
from .errors import AlreadyExists, InvalidSpec, NotFound, TimedOut
from .membership import decode
from .spec import NAME_PATTERN, encode, parse_child

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import Config
    from .etcd import Etcd
    from .keys import Keys
    from .membership import Membership
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
    ) -> None:
        self.config = config
        self.etcd = etcd
        self.keys = keys
        self.view = view
        self.membership = membership
        self.supervisor = supervisor
        self.reconciler = reconciler
        self.started = time.time()

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "ping": self.ping,
            "status": self.status,
            "start_child": self.start_child,
            "delete_child": self.delete_child,
            "find": self.find,
            "which_children": self.which_children,
            "nodes": self.nodes,
        }

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
            "children_total": len(self.view.by_kind("children")),
            "children_local": states,
            "revision": self.view.revision,
        }

    async def start_child(self, args: dict[str, Any]) -> dict[str, Any]:
        raw = args.get("spec")
        if not isinstance(raw, dict):
            raise InvalidSpec("spec", "must be an object")
        spec = parse_child(raw)
        created, existing = await self.etcd.create(self.keys.child(spec.id), encode(spec))
        if not created and (existing is None or existing.value != encode(spec)):
            raise AlreadyExists("child", spec.id)
        if args.get("wait"):
            timeout = _timeout(args)
            await self._wait_for(
                lambda: self._running(spec.id), timeout, f"child {spec.id} running"
            )
        return await self.find({"id": spec.id})

    def _running(self, child_id: str) -> bool:
        claim = decode(self.view.by_kind("claims").get(child_id))
        return claim.get("state") == "running" and claim.get("pid") is not None

    async def delete_child(self, args: dict[str, Any]) -> dict[str, Any]:
        child_id = _name(args)
        if not await self.etcd.delete(self.keys.child(child_id)):
            raise NotFound("child", child_id)
        if args.get("wait"):
            timeout = _timeout(args)
            await self._wait_for(
                lambda: child_id not in self.view.by_kind("claims"),
                timeout,
                f"child {child_id} stopped",
            )
        return {"id": child_id, "deleted": True}

    def _row(self, child_id: str, spec_kv: Any, claim_kv: Any) -> dict[str, Any]:
        spec = decode(spec_kv)
        claim = decode(claim_kv)
        return {
            "id": child_id,
            "group": spec.get("group"),
            "restart": spec.get("restart", "permanent"),
            "node": claim.get("node"),
            "pid": claim.get("pid"),
            "state": claim.get("state", "pending") if claim_kv is not None else "pending",
            "restarts": claim.get("restarts", 0),
            "started": claim.get("started"),
            "reason": claim.get("reason", ""),
            "fence": claim_kv.create_revision if claim_kv is not None else None,
        }

    async def find(self, args: dict[str, Any]) -> dict[str, Any]:
        child_id = _name(args)
        spec_kv = self.view.by_kind("children").get(child_id)
        if spec_kv is None:
            # The view may lag a write made a moment ago: ask etcd before saying no.
            spec_kv = await self.etcd.get(self.keys.child(child_id))
            if spec_kv is None:
                raise NotFound("child", child_id)
        row = self._row(child_id, spec_kv, self.view.by_kind("claims").get(child_id))
        row["owner"] = self.reconciler.ring().owner(child_id)
        row["argv"] = decode(spec_kv).get("argv")
        return row

    async def which_children(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        node = args.get("node")
        group = args.get("group")
        if args.get("local"):
            node = self.config.name
        claims = self.view.by_kind("claims")
        rows = [
            self._row(i, kv, claims.get(i))
            for i, kv in sorted(self.view.by_kind("children").items())
        ]
        if args.get("local"):
            # This node's own figures are fresher than what it published.
            for row in rows:
                child = self.supervisor.children.get(row["id"])
                if child is not None:
                    row.update(child.info(), node=self.config.name)
        if node is not None:
            rows = [r for r in rows if r["node"] == node]
        if group is not None:
            rows = [r for r in rows if r["group"] == group]
        return rows

    async def nodes(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        alive = self.view.by_kind("nodes", "alive")
        statuses = self.view.by_kind("nodes", "status")
        claims = [decode(kv).get("node") for kv in self.view.by_kind("claims").values()]
        rows = []
        for node in sorted(alive.keys() | statuses.keys()):
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
                    "draining": bool(info.get("draining")),
                    "children": claims.count(node),
                }
            )
        return rows
