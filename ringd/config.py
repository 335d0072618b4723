"""Daemon configuration: a TOML file, overridden by command-line flags.

Decoded with msgspec so that unknown keys and wrong types are rejected with the
key's path (``Expected `float`, got `str` - at `$.lease_ttl```).
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .errors import ConfigError
from .protocol import default_socket_path
from .spec import NAME_PATTERN, Label
from .validation import problems

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the daemon reads from outside, with production defaults."""

    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)] = msgspec.field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "node"
    )
    cluster: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)] = "default"
    # Node labels for affinity (``start-child --on zone=a``).
    labels: dict[Label, Label] = msgspec.field(default_factory=dict)
    # Restricted groups this node runs (a group with ``restricted`` runs only on nodes naming it).
    groups: list[Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]] = msgspec.field(
        default_factory=list
    )
    # Children moving away from this node (a join, a drain) leave at most this many
    # per second, so a join does not stop everything at once; 0: no limit.
    rebalance_rate: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    # Client URLs (http:// or https://). Empty: run a private etcd (standalone mode).
    etcd: list[str] = msgspec.field(default_factory=list)
    etcd_prefix: str = "/ringd"
    etcd_timeout: Seconds = 5.0
    # Give up (exit 1) if etcd is not reachable within this many seconds of start;
    # unset: wait for ever, as a service should (etcd may come up after it).
    etcd_wait: Seconds | None = None
    etcd_ca_cert: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_user: str | None = None
    etcd_password: str | None = None
    socket: str = msgspec.field(default_factory=default_socket_path)
    socket_mode: int = 0o660
    socket_group: str | None = None
    state_dir: str = msgspec.field(default_factory=lambda: default_state_dir())
    # etcd grants at least 2 s whatever is asked for.
    lease_ttl: Annotated[float, msgspec.Meta(ge=2, le=3600)] = 10.0
    # Children are killed this long before the lease could expire when etcd is unreachable.
    fence_margin: Seconds = 1.0
    # A quiet watch is opened again from its revision after this long (no re-list).
    resync_interval: Seconds = 300.0
    shutdown_grace: Seconds = 30.0
    # Seconds between publications of this node's per-child RSS/CPU figures.
    figures_interval: Seconds = 60.0
    # host:port of a Prometheus /metrics endpoint; unset: no endpoint.
    metrics_address: str | None = None
    # host:port of the read-only status page (and /metrics); unset: 127.0.0.1 on a free
    # port in standalone mode, no page otherwise; "": no page.
    web_address: str | None = None
    # host:port where other daemons reach this one (logs, restart, signal, exec of a
    # child running here, asked on another node); unset or "": no peer listener.
    peer_address: str | None = None
    # A file whose first line is the cluster's shared peer secret.
    peer_token_file: str | None = None
    # TLS for the peer listener and this daemon's peer connections: the CA that
    # signs every daemon's certificate, and this daemon's certificate and key.
    peer_ca_cert: str | None = None
    peer_cert: str | None = None
    peer_key: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Executables run on every status change of another node (see ringd.toml(5)).
    hooks_dir: str | None = None
    hook_timeout: Seconds = 10.0
    # Each child's output: <state_dir>/logs/<id>.log, rotated at this size.
    child_log_max_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 10 << 20
    child_log_backups: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    # Also copy children's output to the daemon's stderr (the journal), "<id>| " first.
    child_output_to_stderr: bool = False

    @property
    def standalone(self) -> bool:
        return not self.etcd

    @property
    def web(self) -> str | None:
        """Where the status page listens (port 0: a free one), or None for no page."""
        if self.web_address is None:
            return "127.0.0.1:0" if self.standalone else None
        return self.web_address or None

    @property
    def key_prefix(self) -> str:
        return f"{self.etcd_prefix.rstrip('/')}/{self.cluster}/"


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/ringd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "ringd")


def _check(config: Config) -> list[str]:
    """What the types alone do not catch, every one of it."""
    found = []
    if config.fence_margin >= config.lease_ttl:
        found.append("fence_margin: must be smaller than lease_ttl")
    if len(os.fsencode(config.socket)) >= 104:
        found.append(f"socket: path {config.socket!r} is too long for a Unix socket")
    for url in config.etcd:
        if not url.startswith(("http://", "https://")):
            found.append(f"etcd: {url!r} is not an http:// or https:// URL")
    if bool(config.etcd_cert) != bool(config.etcd_key):
        found.append("etcd_cert/etcd_key: give both or neither")
    if config.web_address:
        host, colon, port = config.web_address.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            found.append(f"web_address: {config.web_address!r} is not HOST:PORT")
    if config.peer_address:
        host, colon, port = config.peer_address.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            found.append(f"peer_address: {config.peer_address!r} is not HOST:PORT")
        if not config.peer_token_file and not config.peer_ca_cert:
            found.append("peer_address: needs peer_token_file or peer_ca_cert (peers authenticate)")
    if bool(config.peer_ca_cert) != bool(config.peer_cert) or bool(config.peer_cert) != bool(
        config.peer_key
    ):
        found.append("peer_ca_cert/peer_cert/peer_key: give all three or none")
    if bool(config.etcd_user) != bool(config.etcd_password):
        found.append("etcd_user/etcd_password: give both or neither")
    return found


def load(path: str | os.PathLike[str] | None, overrides: dict[str, Any]) -> Config:
    """Read the TOML file (if any) and apply ``overrides`` (flags; None means unset).

    Raises:
        ConfigError: naming every key that is wrong, one per line.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    data.update({k: v for k, v in overrides.items() if v is not None and v != []})
    if isinstance(data.get("etcd"), str):
        data["etcd"] = [data["etcd"]]  # one endpoint may be written as a string
    where = path or "flags"
    if found := problems(data, Config):
        raise ConfigError("\n".join(f"{where}: {key}: {problem}" for key, problem in found))
    config = msgspec.convert(data, Config)
    if found_too := _check(config):
        raise ConfigError("\n".join(f"{where}: {problem}" for problem in found_too))
    return config
