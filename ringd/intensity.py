"""Restart intensity, as in OTP: at most ``max_restarts`` restarts in ``max_seconds``.

A plain class that is given timestamps, so it is tested without a clock.
"""

from __future__ import annotations

from collections import deque


class Intensity:
    """Counts restarts in a sliding window.

    Args:
        max_restarts: restarts allowed within the window (0: never restart).
        max_seconds: the window's length.
    """

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False if it exceeds the intensity.

        Like OTP's supervisor, the restart that would make the count in the last
        ``max_seconds`` exceed ``max_restarts`` is refused.
        """
        while self._times and now - self._times[0] > self.max_seconds:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    def reset(self) -> None:
        self._times.clear()

    def __len__(self) -> int:
        return len(self._times)
