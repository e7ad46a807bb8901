"""Progress lines: silent for short transfers, paced for long ones (fake clock, no sleeping)."""

from __future__ import annotations

import logging

import pytest

from openaifs.progress import EVERY, FIRST_AFTER, MiB, Progress


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_short_transfers_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    p = Progress("uploading batch/a.jsonl", 10 * MiB, clock=clock)
    caplog.set_level(logging.INFO, "openaifs.progress")
    for i in range(10):
        clock.now += 0.4
        p(i * MiB)
    p.finish()
    assert caplog.records == []


def test_long_transfers_log_at_a_steady_pace_with_rate(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, "openaifs.progress")
    p = Progress("uploading vision/big.bin", 1000 * MiB, clock=clock)
    for second in range(1, 31):
        clock.now += 1
        p(second * 10 * MiB)
    p.finish()
    lines = [r.getMessage() for r in caplog.records]
    # first line after FIRST_AFTER s, then one every EVERY s, then "done"
    assert len(lines) == 1 + int((30 - FIRST_AFTER) // EVERY) + 1
    assert lines[0] == "uploading vision/big.bin: 50 MiB of 1000 MiB in 5 s (10.0 MiB/s)"
    assert lines[-1].startswith("uploading vision/big.bin: done, 300 MiB of 1000 MiB in 30 s")
