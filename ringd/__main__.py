"""``ringd``: the daemon's command line (argparse only; no CLI libraries in the core)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import trio

from . import __version__
from .config import Config, load
from .errors import ConfigError, RingdError, StartupFailed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringd", description="distributed process supervisor")
    parser.add_argument("--version", action="version", version=f"ringd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="run the daemon in the foreground")
    start.add_argument("--config", metavar="FILE", help="TOML configuration file")
    start.add_argument("--name", metavar="NODE", help="node name (default: host name)")
    start.add_argument("--etcd", metavar="URL", action="append", default=[],
                       help="etcd client URL (repeatable); none: standalone mode")  # fmt: skip
    start.add_argument("--socket", metavar="PATH", help="control socket path")
    start.add_argument("--state-dir", metavar="DIR", help="state directory (logs, private etcd)")
    start.add_argument("--lease-ttl", metavar="SECONDS", type=float, help="lease TTL")
    start.add_argument("--cluster", metavar="NAME", help="cluster name (etcd key prefix)")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    start.add_argument("--etcd-wait", metavar="SECONDS", type=float,
                       help="exit 1 if etcd is not reached in time (default: wait)")  # fmt: skip
    start.add_argument("--web-address", metavar="HOST:PORT",
                       help="serve the status page (and /metrics) there; '' for none")  # fmt: skip
    start.add_argument("--peer-address", metavar="HOST:PORT",
                       help="serve other daemons there (forwarded ops); '' for none")  # fmt: skip
    start.add_argument("--peer-token-file", metavar="FILE",
                       help="the shared secret peers present (its first line)")  # fmt: skip
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "etcd": args.etcd,
        "socket": args.socket,
        "state_dir": args.state_dir,
        "lease_ttl": args.lease_ttl,
        "cluster": args.cluster,
        "log_level": args.log_level,
        "etcd_wait": args.etcd_wait,
        "web_address": args.web_address,
        "peer_address": args.peer_address,
        "peer_token_file": args.peer_token_file,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            load(args.file, {})
            print(f"{args.file}: ok")
            return 0
        config: Config = load(args.config, _overrides(args))
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"ringd: {line}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from . import daemon  # imports etcd3/grpc: only when actually starting

    problems: list[str] = []
    code = 0
    try:
        trio.run(daemon.run, config)
    except* ConfigError as group:
        # Raised inside the daemon's nursery, it arrives in an exception group:
        # one line per problem, no traceback.
        problems, code = [str(leaf) for leaf in _leaves(group)], 2
    except* StartupFailed as group:
        problems, code = [str(leaf) for leaf in _leaves(group)], 1
    for line in "\n".join(problems).splitlines():
        print(f"ringd: {line}", file=sys.stderr)
    return code


def _leaves(group: BaseExceptionGroup[RingdError]) -> list[BaseException]:
    out: list[BaseException] = []
    for leaf in group.exceptions:
        out.extend(_leaves(leaf) if isinstance(leaf, BaseExceptionGroup) else [leaf])
    return out


if __name__ == "__main__":
    sys.exit(main())
