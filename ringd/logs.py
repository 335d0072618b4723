"""Children's output: a pipe per child, read by the daemon (``ChildIO``) into a
log file with size-based rotation (bounded disk use), optionally mirrored to the
daemon's stderr (the journal, under systemd) with the child's id as a prefix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)
_WARN_EVERY = 60.0  # seconds between warnings about one log that cannot be written


class RotatingLog:
    """Appends to ``path``; before a write would pass ``max_bytes`` the file becomes
    ``path.1`` (``.1`` becomes ``.2``, and so on up to ``backups``).

    Disk use is bounded by ``max_bytes * (backups + 1)``; no file exceeds ``max_bytes``.
    The file is opened per write so that 1,000 idle children hold no descriptors.
    """

    def __init__(
        self, path: Path, *, max_bytes: int, backups: int, mirror_prefix: str | None = None
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.mirror_prefix = mirror_prefix.encode() if mirror_prefix is not None else None
        self._size: int | None = None
        self._partial = b""  # mirror: the unfinished last line
        self._dropped = 0  # bytes lost to failed writes since the last warning
        self._warned = -_WARN_EVERY

    def _current_size(self) -> int:
        if self._size is None:
            try:
                self._size = self.path.stat().st_size
            except FileNotFoundError:
                self._size = 0
        return self._size

    def rotate(self) -> None:
        for n in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``. A failed write (disk full, directory removed) loses that
        data and never raises: the child and the daemon go on (a warning at most
        once a minute per log says how much was lost)."""
        try:
            self._write(data)
        except OSError as exc:
            self._size = None  # unknown now: read it again on the next write
            self._dropped += len(data)
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:
                logger.warning(
                    "cannot write %s (%s): %d bytes of output lost", self.path, exc, self._dropped
                )
                self._warned, self._dropped = now, 0
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)  # removed: back next time
        if self.mirror_prefix is not None:
            self._mirror(data)

    def _write(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            data = data[-self.max_bytes :]  # keep the newest output
        if self._current_size() + len(data) > self.max_bytes:
            self.rotate()
        with open(self.path, "ab") as f:
            f.write(data)
        self._size = self._current_size() + len(data)

    def _mirror(self, data: bytes) -> None:
        prefix = self.mirror_prefix
        assert prefix is not None
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-4096:]
        if lines:
            out = b"".join(prefix + line + b"\n" for line in lines)
            with contextlib.suppress(OSError):
                sys.stderr.buffer.write(out)
                sys.stderr.buffer.flush()


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log (reaching into ``path.1`` when needed)."""
    out: deque[str] = deque(maxlen=lines)
    for candidate in (path.with_name(path.name + ".1"), path):
        with contextlib.suppress(FileNotFoundError), open(candidate, "rb") as f:
            for line in f:
                out.append(line.decode(errors="replace").rstrip("\n"))
    return list(out)
