"""Budget periods in UTC: a day, a week starting on Monday, a calendar month."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from bridge.core.settings import BUDGET_PERIODS as PERIODS

DAY_SECONDS = 86400  # Unix time has no leap seconds: a UTC day starts at a multiple of it


def today(now: float) -> date:
    return datetime.fromtimestamp(now, timezone.utc).date()


def start(period: str, now: float) -> date:
    """The first day of the period that `now` (Unix time) falls in."""
    day = today(now)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown budget period {period!r} (allowed: {', '.join(PERIODS)})")


def end(period: str, now: float) -> date:
    """The first day of the next period."""
    first = start(period, now)
    if period == "day":
        return first + timedelta(days=1)
    if period == "week":
        return first + timedelta(days=7)
    return (first + timedelta(days=32)).replace(day=1)


def seconds_left(period: str, now: float) -> float:
    """Seconds from `now` until the period resets (midnight UTC of its end)."""
    reset = datetime.combine(end(period, now), datetime.min.time(), timezone.utc)
    return max(0.0, reset.timestamp() - now)
