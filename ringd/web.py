"""The read-only status page: the nodes, the children, the groups and the recent
events, updated live by a small inline script that fetches ``/state`` every second;
and ``/metrics`` for Prometheus on the same listener.

Served by hypercorn (an ASGI server that runs on trio) from a plain ASGI app: GET
only (405 for any other method), 404 for any other path, no external assets. The
socket is bound in ``bind`` before the node joins (a busy port is a ConfigError),
and handed to hypercorn as a file descriptor.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import trio

from . import hooks
from .control import listen_tcp
from .ops import groups as group_ops
from .ops import nodes as node_ops
from .ops import summary as summary_ops
from .protocol import Args, dump_result

if TYPE_CHECKING:
    import socket

    from .ops import Context
    from .view import Change

logger = logging.getLogger(__name__)

# Events kept for the page (the newest last).
MAX_EVENTS = 200
_NO_ARGS = Args()
_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# Nothing but the page itself: its inline script and style, and fetches of /state.
_CSP = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

Scope = dict[str, Any]


def describe(event: dict[str, Any]) -> str:
    """One line for an event of ``hooks.node_update`` or ``hooks.child_update``."""
    kind = event.get("kind")
    if kind == "node":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"node {event['node']}: {event['old_status']} -> {event['status']}{reason}"
    if kind == "spec":
        return f"child {event['id']}: spec {event['event']}"
    if kind == "child":
        where = f" on {event['node']}" if event.get("node") else ""
        facts = [str(event["state"])] if event.get("state") else []
        if event.get("pid"):
            facts.append(f"pid {event['pid']}")
        if event.get("restarts"):
            facts.append(f"restarts {event['restarts']}")
        return f"child {event['id']} {event['event']}{where}: {', '.join(facts)}"
    if kind == "group":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"group {event['name']} {event['event']}: {event.get('state') or '-'}{reason}"
    return str(event)


class Web:
    """The status page and /metrics at ``address`` (HOST:PORT; port 0: a free one).

    ``bind`` before anything starts, then ``run`` serves until cancelled.
    """

    def __init__(self, address: str, ctx: Context) -> None:
        self.address = address
        self.ctx = ctx
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self.sock: socket.socket | None = None
        self.url = ""
        self._registry: Any = None
        # Listening on loopback only: requests must name it as their Host, so that
        # a web site whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing.
        self.hosts: frozenset[str] | None = None

    # -- the listener -----------------------------------------------------------------

    def bind(self) -> str:
        """Listen at ``address``; returns the page's URL.

        Raises:
            ConfigError: the address cannot be listened on (in use, not local).
        """
        sock = self.sock = listen_tcp(self.address, "web_address")
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}/"
        if ipaddress.ip_address(bound_host.split("%")[0]).is_loopback:
            names = {shown, "localhost", "127.0.0.1", "[::1]"}
            self.hosts = frozenset(n + suffix for n in names for suffix in ("", f":{bound_port}"))
        return self.url

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config as ServerConfig
        from hypercorn.trio import serve
        from prometheus_client import CollectorRegistry

        from .metrics import _Collector

        if self.sock is None:
            self.bind()
        assert self.sock is not None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self.ctx.supervisor))
        config = ServerConfig()
        # hypercorn takes over (and closes) a duplicate; ours is closed by close().
        config.bind = [f"fd://{os.dup(self.sock.fileno())}"]
        config.accesslog = None
        server_log = logging.getLogger("ringd.web.server")
        server_log.setLevel(logging.WARNING)  # not its "Running on ..." (we say where)
        config.errorlog = server_log
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            await nursery.start(self._collect)
            await nursery.start(serve, self.app, config)
            self.ctx.web = self.url
            logger.info("status page on %s (metrics at %smetrics)", self.url, self.url)
            task_status.started()

    async def _collect(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep the last events of the view's changes."""
        keys = self.ctx.keys
        with self.ctx.view.subscribe() as changes:
            task_status.started()
            async for change in changes:
                self.record(change, keys)

    def record(self, change: Change, keys: Any) -> None:
        event = hooks.node_update(change, keys) or hooks.child_update(change, keys)
        if event is not None:
            self.events.append({"time": time.time(), "text": describe(event), **event})

    # -- the app ----------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Any, send: Any) -> None:
        """The ASGI application."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websockets: not served (hypercorn closes the connection)
        path, method = scope["path"], scope["method"]
        if self.hosts is not None:
            host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
            if host.lower() not in self.hosts:
                await _respond(send, 421, b"text/plain; charset=utf-8", b"unknown host\n")
                return
        routes = {"/": self._page, "/state": self._state, "/metrics": self._metrics}
        route = routes.get(path)
        if route is None:
            await _respond(send, 404, b"text/plain; charset=utf-8", b"not found\n")
            return
        if method != "GET":
            await _respond(
                send, 405, b"text/plain; charset=utf-8", b"read only: GET\n", [(b"allow", b"GET")]
            )
            return
        kind, body = await route()
        await _respond(send, 200, kind, body)

    async def _page(self) -> tuple[bytes, bytes]:
        return b"text/html; charset=utf-8", PAGE.encode()

    async def _state(self) -> tuple[bytes, bytes]:
        return b"application/json", dump_result(await self.state())

    async def _metrics(self) -> tuple[bytes, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return CONTENT_TYPE_LATEST.encode(), generate_latest(self._registry)

    async def state(self) -> dict[str, Any]:
        """What the page shows, as one JSON object."""
        ctx = self.ctx
        return {
            "node": ctx.node,
            "cluster": ctx.config.cluster,
            "now": time.time(),
            "summary": await summary_ops.summary(ctx, _NO_ARGS),
            "nodes": await node_ops.nodes(ctx, _NO_ARGS),
            "children": await ctx.listing.everything(),
            "groups": await group_ops.groups(ctx, _NO_ARGS),
            "events": list(self.events)[::-1],  # the newest first
        }


async def _respond(
    send: Any,
    status: int,
    kind: bytes,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    headers += _HEADERS + [(b"content-security-policy", _CSP)] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ringd</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 2px 10px 2px 0; border-bottom: 1px solid #eee; }
.ok { color: #080; } .bad { color: #b00; } .dim { color: #888; }
#conn { float: right; }
</style>
</head>
<body>
<h1>ringd <span id="cluster"></span> <span id="conn" class="dim">loading</span></h1>
<p id="summary"></p>
<h2>Nodes</h2>
<table><thead><tr><th>node</th><th>status</th><th>last change</th><th>reason</th>
<th>host</th><th>pid</th><th>children</th></tr></thead><tbody id="nodes"></tbody></table>
<h2>Children</h2>
<table><thead><tr><th>instance</th><th>state</th><th>node</th><th>owner</th><th>pid</th>
<th>uptime</th><th>restarts</th><th>health</th><th>reason</th></tr></thead>
<tbody id="children"></tbody></table>
<h2>Groups</h2>
<table><thead><tr><th>group</th><th>strategy</th><th>state</th><th>reason</th>
<th>children</th></tr></thead><tbody id="groups"></tbody></table>
<h2>Recent events</h2>
<table><thead><tr><th>time</th><th>event</th></tr></thead><tbody id="events"></tbody></table>
<script>
"use strict";
function dur(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  const two = (n) => String(Math.floor(n)).padStart(2, "0");
  if (s < 86400) return Math.floor(s / 3600) + "h" + two(s % 3600 / 60) + "m";
  return Math.floor(s / 86400) + "d" + two(s % 86400 / 3600) + "h";
}
function show(v) { return v === null || v === undefined || v === "" ? "-" : String(v); }
function fill(id, rows, cells, attrs) {
  const body = document.getElementById(id);
  const out = [];
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [k, v] of Object.entries(attrs(row))) tr.setAttribute(k, v);
    for (const [cls, value, style] of cells(row)) {
      const td = document.createElement("td");
      td.className = cls + (style ? " " + style : "");
      td.textContent = show(value);
      tr.appendChild(td);
    }
    out.push(tr);
  }
  body.replaceChildren(...out);
}
function render(s) {
  document.getElementById("cluster").textContent = s.cluster + " (seen from " + s.node + ")";
  const m = s.summary;
  const states = Object.entries(m.states).map(([k, v]) => v + " " + k).join(", ") || "none";
  const summary = document.getElementById("summary");
  summary.textContent = (m.ok ? "OK: every child runs where it should. " : "NOT OK. ") +
    "Nodes: " + m.nodes_online.length + " online, " + m.nodes_draining.length + " draining, " +
    m.nodes_offline.length + " offline. Instances: " + states + ". Moves pending: " +
    m.moves_pending + ", misplaced: " + m.misplaced.length +
    ", rollouts: " + m.rollouts.length + ".";
  summary.className = m.ok ? "ok" : "bad";
  fill("nodes", s.nodes, (n) => {
    const status = n.status + (n.draining ? " (draining)" : "");
    return [["node", n.node], ["status", status, n.alive && n.status === "online" ? "ok" : "bad"],
            ["last-change", n.last_change], ["reason", n.reason], ["host", n.host],
            ["pid", n.pid], ["children", n.children]];
  }, (n) => ({"data-node": n.node}));
  fill("children", s.children, (c) => [
    ["instance", c.instance], ["state", c.state, c.state === "running" ? "ok" : "bad"],
    ["node", c.node], ["owner", c.owner], ["pid", c.pid],
    ["uptime", c.state === "running" && c.started ? dur(s.now - c.started) : null],
    ["restarts", c.restarts], ["health", c.health], ["reason", c.reason]],
    (c) => ({"data-instance": c.instance}));
  fill("groups", s.groups, (g) => [["group", g.name], ["strategy", g.strategy],
    ["state", g.state, g.state === "running" ? "ok" : "bad"], ["reason", g.reason],
    ["children", g.children]], (g) => ({"data-group": g.name}));
  fill("events", s.events, (e) => [["time", new Date(e.time * 1000).toLocaleTimeString()],
    ["event", e.text]], (e) => ({}));
}
async function refresh() {
  const conn = document.getElementById("conn");
  try {
    const reply = await fetch("state", {cache: "no-store"});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    render(await reply.json());
    conn.textContent = "updated " + new Date().toLocaleTimeString();
    conn.className = "dim";
  } catch (err) {
    conn.textContent = "cannot reach the daemon (" + err.message + "); retrying";
    conn.className = "bad";
  }
  setTimeout(refresh, 1000);
}
refresh();
</script>
</body>
</html>
"""
