"""The time of a frame the bridge writes in Ollama's shape (`created_at`): Go's
RFC3339Nano in UTC, its fraction trimmed, rounded as Python's `datetime` rounds it
(its second formatted once per second, the fraction per frame)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bridge.core.streaming import ollama_time


def _by_datetime(now: float) -> str:
    moment = datetime.fromtimestamp(now, timezone.utc)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


@pytest.mark.parametrize("now", [
    0.0, 1.0, 1796644990.0, 1796644990.5, 1796644990.123456, 1796644990.0000005,
    1796644990.9999995, 1796644990.99999949, 1796644999.9999999, 1700000000.000001,
    86399.9999996, 946684799.9999997,
])
def test_the_time_is_what_datetime_says(now):
    assert ollama_time(now) == _by_datetime(now)


def test_the_times_of_one_second_and_the_next_each_name_their_own_second():
    assert ollama_time(1796644990.25) == "2026-12-07T12:03:10.25Z"
    assert ollama_time(1796644991.0) == "2026-12-07T12:03:11Z"
    assert ollama_time(1796644990.75) == "2026-12-07T12:03:10.75Z"  # back: not the cached one
