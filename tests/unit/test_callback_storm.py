"""A callback storm is one log line per interval, not a line per break."""

from __future__ import annotations

import pytest

from afsfuse.fs.callback import StormWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def storm_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "callback storm" in r.getMessage()]


def test_a_callback_storm_is_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    watch = StormWatch(clock, threshold=200, window=1.0, interval=60.0)
    for _ in range(10):  # a steady 150 a second is no storm
        for _ in range(150):
            watch.count("10.0.0.1")
        clock.now += 1.0
    assert storm_lines(caplog) == []
    for _ in range(5):  # 1000 a second, for five seconds: told once
        for i in range(1000):
            watch.count("10.0.0.2" if i % 4 else "10.0.0.1")
        clock.now += 1.0
    lines = storm_lines(caplog)
    assert len(lines) == 1 and "10.0.0.2" in lines[0] and "more than 200" in lines[0], lines
    clock.now += 60.0
    for _ in range(201):
        watch.count("10.0.0.3")
    assert len(storm_lines(caplog)) == 2 and watch.storms == 2
