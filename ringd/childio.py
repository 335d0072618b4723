"""Every child's output and exit, watched by one task through one epoll set.

A trio task per child output pipe and another per child exit (pidfd) cost ~4 KiB
of the daemon's memory per child: more than everything else ringd keeps for it.
Here a child costs two registrations in a kernel epoll set and two dict entries,
and a thousand idle children cost nothing to watch.

The set is level-triggered: a pipe with more than one read's worth of output is
read again on the next round, after the other ready descriptors, so one chatty
child cannot starve the others (nor the event loop: each round yields).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

    from .logs import RotatingLog

logger = logging.getLogger(__name__)
_READ = 65536  # bytes per pipe per round
_EVENTS = 1024  # ready descriptors handled per round


class ChildIO:
    """Copies children's output into their logs and reports their exits."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._outputs: dict[int, RotatingLog] = {}  # pipe read end -> its log
        self._exits: dict[int, tuple[int, Callable[[int], None]]] = {}  # pidfd -> (pid, then)

    def watch(
        self, pid: int, output: int, log: RotatingLog, on_exit: Callable[[int], None]
    ) -> None:
        """Copy ``output`` (the read end of the child's pipe, owned from now on) into
        ``log`` until every writer has closed it, and call ``on_exit(status)`` once the
        child has exited and is reaped (status as ``os.waitstatus_to_exitcode``)."""
        pidfd = os.pidfd_open(pid)  # fine on a child that already exited: not reaped yet
        os.set_blocking(output, False)
        self._outputs[output] = log
        self._exits[pidfd] = (pid, on_exit)
        self._epoll.register(output, select.EPOLLIN)
        self._epoll.register(pidfd, select.EPOLLIN)

    def __len__(self) -> int:
        """Descriptors watched (two per running child, while output is open)."""
        return len(self._outputs) + len(self._exits)

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in self._epoll.poll(0, _EVENTS):
                    if fd in self._outputs:
                        self._read(fd)
                    elif fd in self._exits:
                        self._reap(fd)
        finally:
            for fd in [*self._outputs, *self._exits]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._outputs.clear()
            self._exits.clear()
            self._epoll.close()

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._outputs[fd].write(chunk)
            return
        del self._outputs[fd]  # every writer is gone (the child and what it forked)
        self._epoll.unregister(fd)
        os.close(fd)

    def _reap(self, pidfd: int) -> None:
        pid, on_exit = self._exits.pop(pidfd)
        self._epoll.unregister(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)  # a zombie by now: does not block
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else: the status is lost
            logger.warning("pid %d was reaped elsewhere; its exit status is unknown", pid)
            code = 255
        on_exit(code)
