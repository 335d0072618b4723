"""Handoff: state a child leaves for its next instance when it moves.

A child started with ``handoff`` finds ``$RINGD_HANDOFF_FILE``. When it moves,
the old owner stops it gracefully (it may write the file on SIGTERM), stores the
file in etcd under ``handoff/<key>`` (bounded size), and only then releases the
claim; the new owner claims, writes the stored state into the new instance's
file and starts it. If the old owner crashes, what the child never wrote (or
what was written after the last store) is lost: the next instance sees the last
stored state. Restarts on the same node keep the local file as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from pathlib import Path

    from .etcd import Etcd
    from .keys import Keys

logger = logging.getLogger(__name__)

# etcd's default request limit is 1.5 MiB; state is meant to be small.
MAX_HANDOFF_BYTES = 512 * 1024


class Handoff:
    """Moves handoff files between a node's disk and etcd."""

    def __init__(
        self, *, etcd: Etcd, keys: Keys, directory: Path, max_bytes: int = MAX_HANDOFF_BYTES
    ) -> None:
        self.etcd = etcd
        self.keys = keys
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, key: str) -> Path:
        return self.directory / (key.replace("/", "@") + ".state")

    async def restore(self, key: str) -> Path:
        """Write the stored state (if any) where the new instance will find it."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)  # the child writes here
        kv = await self.etcd.get(self.keys.handoff(key))
        if kv is not None:
            await trio.to_thread.run_sync(_write_atomically, path, kv.value)
        return path

    async def store(self, key: str) -> None:
        """Put the stopped instance's file in etcd (too big or unreadable: logged, not
        stored; the move goes on, as a graceful leave must)."""
        path = self.path(key)
        try:
            data = await trio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            return
        except OSError as exc:  # made a directory, unreadable, ...: the child's doing
            logger.error("handoff state of %s cannot be read (%s): not handed off", key, exc)
            return
        if len(data) > self.max_bytes:
            logger.error(
                "handoff state of %s is %d bytes, over the %d-byte limit: not handed off",
                key, len(data), self.max_bytes,
            )  # fmt: skip
            return
        await self.etcd.put(self.keys.handoff(key), data)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    async def forget(self, key: str) -> None:
        """The child is gone for good: drop its state everywhere."""
        await self.etcd.delete(self.keys.handoff(key))
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
