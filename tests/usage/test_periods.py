"""Budget periods in UTC: when a day, a week (from Monday) and a month start and reset."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from bridge.usage import periods


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(("period", "first", "reset"), [
    ("day", date(2026, 12, 31), date(2027, 1, 1)),
    ("week", date(2026, 12, 28), date(2027, 1, 4)),  # Monday to Monday
    ("month", date(2026, 12, 1), date(2027, 1, 1)),
])
def test_a_period_starts_and_resets_at_midnight_utc(period: str, first: date,
                                                   reset: date) -> None:
    now = at("2026-12-31T23:00:00")  # a Thursday, an hour before the new year (UTC)
    assert periods.start(period, now) == first
    assert periods.end(period, now) == reset
    expected = at(reset.isoformat() + "T00:00:00") - now
    assert periods.seconds_left(period, now) == pytest.approx(expected)


def test_february_ends_on_the_first_of_march() -> None:
    assert periods.end("month", at("2028-02-29T12:00:00")) == date(2028, 3, 1)


def test_an_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown budget period"):
        periods.start("year", 0.0)
