"""Shared fixtures: a real etcd for the session, and real ringd daemons per test.

Set RINGD_TEST_ETCD to use an existing etcd instead of a private one. Without
etcd the tests fail: they never skip silently.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# etcd3's messages on the installed protobuf runtime, before any test module
# imports etcd3 (see ringd.etcdpb).
from ringd import etcdpb  # noqa: F401
from ringd.testing import Daemon, descendants, etcd_for_tests, kill_pids, processes_with_env

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="session")
def etcd_url() -> Iterator[str]:
    with etcd_for_tests() as url:
        yield url


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield path
    if not os.environ.get("RINGD_TEST_KEEP"):  # keep daemon logs for a post-mortem
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def journal(short_tmp: Path) -> Path:
    path = short_tmp / "journal"
    path.mkdir()
    return path


class Cluster:
    """Daemons of one test, in a cluster of their own (a fresh key prefix)."""

    def __init__(self, etcd_url: str, base: Path) -> None:
        self.etcd_url = etcd_url
        self.base = base
        self.name = "t" + uuid.uuid4().hex[:10]
        self.daemons: dict[str, Daemon] = {}

    def daemon(
        self,
        name: str,
        *,
        ttl: float = 2.0,
        start: bool = True,
        etcd: str | None = None,
        config: Path | None = None,
    ) -> Daemon:
        """The daemon ``name`` (created on first use), started unless ``start=False``.

        ``etcd`` overrides the cluster's endpoint (e.g. a fault proxy in front of
        it); with ``config``, a TOML file, and ``etcd=""``, the file names it.
        """
        url = self.etcd_url if etcd is None else (etcd or None)
        d = self.daemons.get(name) or Daemon(
            name, self.base, etcd=url, cluster=self.name, ttl=ttl, config=config
        )
        self.daemons[name] = d
        if start:
            d.start()
        return d

    def children(self, *, below_us: bool = False) -> dict[int, dict[str, str]]:
        """Live child processes of this cluster's daemons, pid -> environment.

        ``below_us`` looks only below this test process (fast, for samplers): it
        misses children whose daemon has died, which the full scan finds.
        """
        among = descendants(os.getpid()) if below_us else None
        return {
            pid: env
            for pid, env in processes_with_env("RINGD_CHILD_ID=", among).items()
            if env.get("TEST_CLUSTER") == self.name
        }

    def print_logs(self, lines: int = 80) -> None:
        """Print the end of every daemon's log (their directory goes with short_tmp)."""
        for d in self.daemons.values():
            if d.log.exists():
                tail = d.log.read_text().splitlines()[-lines:]
                print(f"--- {d.name} log (last {len(tail)} lines) ---", *tail, sep="\n")

    def cleanup(self) -> None:
        for d in self.daemons.values():
            d.cleanup()
        # Anything that outlived its daemon is a test failure elsewhere; never leak it.
        kill_pids(self.children())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_failed] = report.failed
    return report


_failed = pytest.StashKey[bool]()


@pytest.fixture
def cluster(etcd_url: str, short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(etcd_url, short_tmp)
    yield c
    c.cleanup()
    if request.node.stash.get(_failed, False):
        c.print_logs()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-duration",
        type=float,
        default=600.0,
        help="seconds of faults in the slow chaos test",
    )
