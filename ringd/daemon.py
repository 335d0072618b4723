"""Wires the parts in one trio nursery; handles signals and graceful shutdown."""

from __future__ import annotations

import logging
import math
import os
import resource
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from . import ops
from .control import ControlServer
from .errors import EtcdUnavailable, StartupFailed
from .etcd import TLS, Etcd
from .figures import Figures, Publisher
from .guard import Guard
from .handoff import Handoff
from .heap import fix_mmap_threshold
from .hooks import Hooks
from .keys import Keys
from .membership import Membership
from .metrics import MetricsServer
from .peers import PeerClient, PeerServer, credentials
from .reconciler import Reconciler
from .sdnotify import Notifier
from .standalone import PrivateEtcd
from .supervisor import Supervisor, SupervisorEvent
from .view import ClusterView
from .web import Web

if TYPE_CHECKING:
    from .config import Config
    from .listing import Listing

logger = logging.getLogger(__name__)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one: each child holds two
    descriptors here (output pipe, pidfd), and a soft limit of 1024 (systemd's
    default) would refuse children past ~500. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-files limit from %d: %s", soft, exc)
    return soft


@dataclass(eq=False)
class Parts:
    """The daemon's long-running parts, built (no I/O yet) before any starts."""

    etcd: Etcd
    guard: Guard
    view: ClusterView
    membership: Membership
    supervisor: Supervisor
    reconciler: Reconciler
    control: ControlServer
    publisher: Publisher
    metrics: MetricsServer | None
    hooks: Hooks | None
    listing: Listing  # the rows of find and which-children (cached)
    web: Web | None = None  # the status page (web_address)
    peer: PeerServer | None = None  # the peer listener (peer_address)


def build(config: Config, endpoints: list[str]) -> Parts:
    """Every part, wired. Raises ConfigError for what the configuration gets wrong
    (certificates that cannot be read, a bad endpoint) before anything starts."""
    etcd = Etcd(
        endpoints,
        timeout=config.etcd_timeout,
        tls=TLS(config.etcd_ca_cert, config.etcd_cert, config.etcd_key),
        user=config.etcd_user,
        password=config.etcd_password,
    )
    keys = Keys(config.key_prefix)
    state_dir = Path(config.state_dir)
    instance = secrets.token_hex(8)
    guard = Guard(instance)
    view = ClusterView(etcd, keys, resync_interval=config.resync_interval)
    events_in, events_out = trio.open_memory_channel[SupervisorEvent](math.inf)
    supervisor = Supervisor(
        node=config.name,
        log_dir=state_dir / "logs",
        instance=instance,
        guard=guard,
        log_max_bytes=config.child_log_max_bytes,
        log_backups=config.child_log_backups,
        mirror_output=config.child_output_to_stderr,
        # Resolved at call time: membership is built next (it kills the children).
        may_run=lambda: membership.may_run(),
        events=events_in,
    )
    membership = Membership(
        config=config,
        etcd=etcd,
        keys=keys,
        view=view,
        instance=instance,
        guard=guard,
        on_fence=lambda reason: supervisor.kill_all(),
    )
    reconciler = Reconciler(
        node=config.name,
        etcd=etcd,
        keys=keys,
        view=view,
        membership=membership,
        supervisor=supervisor,
        handoff=Handoff(etcd=etcd, keys=keys, directory=state_dir / "handoff"),
        events=events_out,
        resync_interval=config.resync_interval,
        rebalance_rate=config.rebalance_rate,
    )
    figures = Figures()
    creds = credentials(config)  # the files are read now: a bad one is a ConfigError
    context = ops.Context(
        config=config,
        etcd=etcd,
        keys=keys,
        view=view,
        membership=membership,
        supervisor=supervisor,
        reconciler=reconciler,
        figures=figures,
        peers=PeerClient(creds) if creds is not None else None,
    )
    control = ControlServer(
        config.socket,
        ops.handlers(context),
        ops.stream_handlers(context),
        mode=config.socket_mode,
        group=config.socket_group,
    )
    publisher = Publisher(
        figures,
        etcd=etcd,
        keys=keys,
        node=config.name,
        supervisor=supervisor,
        membership=membership,
        interval=config.figures_interval,
    )
    hooks = None
    if config.hooks_dir:
        hooks = Hooks(
            directory=config.hooks_dir,
            timeout=config.hook_timeout,
            node=config.name,
            cluster=config.cluster,
            view=view,
            keys=keys,
            instance=instance,
        )
    served = MetricsServer(config.metrics_address, supervisor) if config.metrics_address else None
    web = Web(config.web, context) if config.web else None
    peer = None
    if config.peer_address and creds is not None:
        peer = PeerServer(
            config.peer_address,
            creds,
            ops.handlers(context, peer=True),
            ops.stream_handlers(context, peer=True),
        )
    return Parts(
        etcd, guard, view, membership, supervisor, reconciler, control, publisher, served, hooks,
        listing=context.listing, web=web, peer=peer,
    )  # fmt: skip


async def run(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT, then leave the cluster cleanly.

    Raises:
        ConfigError: something local is wrong (the socket is served by another
            daemon, a certificate cannot be read): found before the node joins.
    """
    fix_mmap_threshold()
    limit = raise_fd_limit()
    if limit < 4096:
        logger.warning("open-files limit %d: at most ~%d children", limit, limit // 2 - 50)
    # First, before anything is spawned: it takes systemd's variables out of the
    # environment that the private etcd, the guard and the children inherit.
    notifier = Notifier.from_environ()
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private: PrivateEtcd | None = None
    endpoints = list(config.etcd)
    if config.standalone:
        private = PrivateEtcd(state_dir / "etcd", log_path=state_dir / "etcd.log")
        endpoints = [private.url]
    parts = build(config, endpoints)
    # Everything that can fail here fails before the node joins (and before the
    # private etcd starts): a daemon that then failed would have taken children
    # away from healthy nodes for a lease TTL.
    parts.control.bind()
    if parts.web is not None:
        try:
            parts.web.bind()
        except BaseException:
            parts.control.close()
            raise
    if parts.peer is not None:
        try:
            parts.membership.peer_address = parts.peer.bind()  # advertised in the alive record
        except BaseException:
            parts.control.close()
            if parts.web is not None:
                parts.web.close()
            raise
    try:
        if private is not None:
            logger.info("standalone mode: starting a private etcd in %s", private.data_dir)
            notifier.status("starting the private etcd")
            private.spawn(die_with_parent=True)  # on the main thread: see spawn()
            await trio.to_thread.run_sync(private.wait_ready)
        await _serve(config, parts, endpoints, notifier)
    finally:
        parts.control.close()
        if parts.web is not None:
            parts.web.close()
        if parts.peer is not None:
            parts.peer.close()
        if private is not None:
            logger.info("stopping the private etcd")
            await trio.to_thread.run_sync(private.stop)


async def _serve(config: Config, parts: Parts, endpoints: list[str], notifier: Notifier) -> None:
    serving = f"serving: node {config.name}, cluster {config.cluster}, socket {config.socket}"

    def status() -> str:
        if parts.membership.fenced:
            return "fenced: etcd unreachable, local children stopped; retrying"
        return serving

    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                # Start-up runs beside the signal receiver: with etcd unreachable it
                # may wait for ever, and SIGTERM must still end the daemon.
                starting = trio.CancelScope()

                async def start_up() -> None:
                    with starting:
                        await nursery.start(parts.guard.run)  # before any child exists
                        if parts.metrics is not None:
                            await nursery.start(parts.metrics.run)
                        notifier.status(f"registering with etcd at {', '.join(endpoints)}")
                        with trio.move_on_after(config.etcd_wait or math.inf) as waiting:
                            await nursery.start(parts.view.run)
                            await nursery.start(parts.supervisor.run)
                            await nursery.start(parts.membership.run)
                        if waiting.cancelled_caught:
                            raise StartupFailed(
                                f"etcd at {', '.join(endpoints)} not reached within "
                                f"{config.etcd_wait:g} s (etcd_wait)"
                            )
                        await nursery.start(parts.reconciler.run)
                        await nursery.start(parts.control.run)
                        nursery.start_soon(parts.listing.run)
                        if parts.peer is not None:
                            await nursery.start(parts.peer.run)
                        if parts.web is not None:
                            await nursery.start(parts.web.run)
                        await nursery.start(parts.publisher.run)
                        if parts.hooks is not None:
                            await nursery.start(parts.hooks.run)
                        logger.info(
                            "ringd %s ready: node %s, cluster %s, socket %s",
                            os.getpid(), config.name, config.cluster, config.socket,
                        )  # fmt: skip
                        notifier.ready(serving)  # registered in etcd and serving the socket
                        if notifier.enabled:  # systemd arms the watchdog at READY=1
                            nursery.start_soon(notifier.run, status)

                nursery.start_soon(start_up)
                async for signum in signals:
                    logger.info("%s: leaving the cluster", signal.Signals(signum).name)
                    break
                starting.cancel()  # if still starting: stop there and leave
                notifier.stopping("leaving the cluster: stopping children, releasing claims")
                await _leave(config, parts.reconciler, parts.membership)
                parts.guard.close()  # the children are stopped: the guard may go
                nursery.cancel_scope.cancel()
    finally:
        parts.etcd.close()


async def _leave(config: Config, reconciler: Reconciler, membership: Membership) -> None:
    """Leave the ring, stop children releasing each claim as it stops (so survivors
    take over child by child), then revoke the lease."""
    # No reconcile pass from here on: one would see the node leaving and stop its
    # children without releasing their claims, racing the releases below.
    reconciler.stopping = True
    with trio.move_on_after(config.shutdown_grace) as scope:
        try:
            await membership.announce_leave()
        except EtcdUnavailable as exc:
            logger.warning("could not announce the leave (survivors wait for the lease): %s", exc)
        await reconciler.release_all()
        try:
            await membership.leave()
        except EtcdUnavailable as exc:
            logger.warning("could not leave cleanly (the lease will expire): %s", exc)
    if scope.cancelled_caught:
        logger.warning(
            "shutdown took longer than %g s; killing what is left", config.shutdown_grace
        )
        reconciler.supervisor.kill_all()
