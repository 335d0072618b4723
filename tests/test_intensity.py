"""Restart intensity arithmetic, driven by trio's MockClock (no real waiting)."""

from __future__ import annotations

import trio

from ringd.intensity import Intensity


def test_window_counts_like_otp() -> None:
    window = Intensity(3, 5.0)
    assert [window.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert window.allow(3.0) is False  # a 4th restart within 5 s
    assert window.allow(5.5) is True  # the one at 0.0 has left the window
    assert len(window) == 3


def test_zero_restarts_never_allows() -> None:
    assert Intensity(0, 5.0).allow(0.0) is False


async def test_intensity_over_mock_time(autojump_clock: trio.testing.MockClock) -> None:
    window = Intensity(2, 10.0)
    allowed = []
    for _ in range(6):
        await trio.sleep(4)  # restarts 4 s apart: 2 fit in any 10 s window
        allowed.append(window.allow(trio.current_time()))
    assert trio.current_time() == 24.0
    assert allowed == [True, True, False, True, True, False]
    window.reset()
    assert window.allow(trio.current_time())
