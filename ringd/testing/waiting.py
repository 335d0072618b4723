"""Waiting for a condition, always with a deadline: the one polling loop of the
tests and the benchmarks (a bare ``sleep`` guesses how long something takes;
this says what it waited for when it gives up)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import trio

from ..protocol import RemoteError, Unreachable

if TYPE_CHECKING:
    from collections.abc import Callable

# What a condition may raise while the thing it looks at is not there yet: a daemon
# not listening yet, or refusing, or a process gone between two reads of /proc.
RETRY: tuple[type[BaseException], ...] = (Unreachable, RemoteError, OSError)


class WaitTimeout(TimeoutError):
    """A condition did not hold within its timeout (the message says which, and
    what it last returned or raised)."""


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str = "the condition",
    interval: float = 0.05,
    *,
    retry: tuple[type[BaseException], ...] = RETRY,
) -> Any:
    """Call ``condition`` every ``interval`` seconds until it returns something
    truthy, and return that.

    Args:
        condition: what to wait for; an exception of ``retry`` counts as "not yet",
            any other one propagates (a check that the process under test is still
            alive can raise to end the wait early).
        timeout: seconds from now.
        what: the condition in words, for the error.
        interval: seconds between two calls.
        retry: the exceptions that mean "not yet".

    Raises:
        WaitTimeout: ``timeout`` passed first.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except retry as exc:
            last = exc
        else:
            if last:
                return last
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")
        time.sleep(min(interval, left))


async def wait_until_async(
    condition: Callable[[], Any],
    timeout: float,
    what: str = "the condition",
    interval: float = 0.01,
    *,
    retry: tuple[type[BaseException], ...] = RETRY,
) -> Any:
    """``wait_until`` for trio tests: the same, with ``trio.sleep`` between calls
    (and trio's clock: under ``autojump_clock`` the timeout is virtual time)."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            try:
                last = condition()
            except retry as exc:
                last = exc
            else:
                if last:
                    return last
            await trio.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")
