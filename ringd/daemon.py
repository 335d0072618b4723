"""Wires the parts in one trio nursery; handles signals and graceful shutdown."""

from __future__ import annotations

import functools
import logging
import os
import resource
import secrets
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from . import metrics
from .api import Api
from .control import ControlServer
from .errors import EtcdUnavailable
from .etcd import TLS, Etcd
from .figures import Figures
from .guard import Guard
from .handoff import Handoff
from .hooks import Hooks
from .keys import Keys
from .membership import Membership
from .reconciler import Reconciler
from .sdnotify import Notifier
from .standalone import PrivateEtcd
from .supervisor import Supervisor
from .view import ClusterView

if TYPE_CHECKING:
    from .config import Config

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


async def run(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT, then leave the cluster cleanly."""
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
        logger.info("standalone mode: starting a private etcd in %s", private.data_dir)
        notifier.status("starting the private etcd")
        private.spawn(die_with_parent=True)  # on the main thread: see spawn()
        await trio.to_thread.run_sync(private.wait_ready)
        endpoints = [private.url]
    try:
        await _serve(config, endpoints, notifier)
    finally:
        if private is not None:
            logger.info("stopping the private etcd")
            await trio.to_thread.run_sync(private.stop)


async def _serve(config: Config, endpoints: list[str], notifier: Notifier) -> None:
    etcd = Etcd(
        endpoints,
        timeout=config.etcd_timeout,
        tls=TLS(config.etcd_ca_cert, config.etcd_cert, config.etcd_key),
        user=config.etcd_user,
        password=config.etcd_password,
    )
    keys = Keys(config.key_prefix)
    instance = secrets.token_hex(8)
    guard = Guard(instance)
    guard.start()
    view = ClusterView(etcd, keys, resync_interval=config.resync_interval)
    membership = Membership(
        config=config, etcd=etcd, keys=keys, view=view, instance=instance, guard=guard
    )
    supervisor = Supervisor(
        node=config.name,
        log_dir=Path(config.state_dir) / "logs",
        instance=instance,
        guard=guard,
        log_max_bytes=config.child_log_max_bytes,
        log_backups=config.child_log_backups,
        mirror_output=config.child_output_to_stderr,
        may_run=membership.may_run,
    )
    reconciler = Reconciler(
        node=config.name,
        etcd=etcd,
        keys=keys,
        view=view,
        membership=membership,
        supervisor=supervisor,
        handoff=Handoff(etcd=etcd, keys=keys, directory=Path(config.state_dir) / "handoff"),
        resync_interval=config.resync_interval,
        rebalance_rate=config.rebalance_rate,
    )
    supervisor.on_change = reconciler.child_changed
    supervisor.on_group_failed = reconciler.on_group_failed
    membership.on_fence = reconciler.on_fence
    if config.metrics_address:
        metrics.serve(config.metrics_address, supervisor)
    figures = Figures()
    api = Api(
        config=config,
        etcd=etcd,
        keys=keys,
        view=view,
        membership=membership,
        supervisor=supervisor,
        reconciler=reconciler,
        figures=figures,
    )
    control = ControlServer(
        config.socket,
        api.handlers(),
        api.streams(),
        mode=config.socket_mode,
        group=config.socket_group,
    )
    serving = f"serving: node {config.name}, cluster {config.cluster}, socket {config.socket}"

    def status() -> str:
        if membership.fenced:
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
                        notifier.status(f"registering with etcd at {', '.join(endpoints)}")
                        await nursery.start(view.run)
                        await nursery.start(supervisor.run)
                        await nursery.start(membership.run)
                        await nursery.start(reconciler.run)
                        await nursery.start(control.run)
                        nursery.start_soon(
                            functools.partial(
                                figures.publish,
                                etcd=etcd,
                                keys=keys,
                                node=config.name,
                                supervisor=supervisor,
                                membership=membership,
                                interval=config.figures_interval,
                            )
                        )
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
                            await nursery.start(hooks.run)
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
                await _leave(config, reconciler, membership)
                nursery.cancel_scope.cancel()
        guard.close()
    finally:
        etcd.close()


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
