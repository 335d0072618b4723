"""Restart intensity, as in OTP: at most ``max_restarts`` restarts in ``max_seconds``.

A plain class that is given timestamps, so it is tested without a clock.
"""

from __future__ import annotations

import bisect


class Intensity:
    """Counts restarts in a sliding window.

    Args:
        max_restarts: restarts allowed within the window (0: never restart).
        max_seconds: the window's length.
    """

    __slots__ = ("_times", "max_restarts", "max_seconds")

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        # A list, not a deque: an empty deque costs 600 bytes, and there is one per
        # child (most of which never restart); the window is pruned in one slice.
        self._times: list[float] = []

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False if it exceeds the intensity.

        Like OTP's supervisor, the restart that would make the count in the last
        ``max_seconds`` exceed ``max_restarts`` is refused.
        """
        if self._times and now - self._times[0] > self.max_seconds:
            del self._times[: bisect.bisect_left(self._times, now - self.max_seconds)]
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    def reset(self) -> None:
        self._times.clear()

    def __len__(self) -> int:
        return len(self._times)
