"""Billing periods: calendar months in UTC, written `YYYY-MM`, and the hours inside them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from kiln.db import utcnow
from kiln.errors import ValidationFailed

HOUR = timedelta(hours=1)
PERIOD_PATTERN = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_period(period: str, *, allow_future: bool = False, now: datetime | None = None) -> str:
    """`period` if it is a `YYYY-MM` month that has started; ValidationFailed('period', …) otherwise."""
    if not isinstance(period, str) or not PERIOD_PATTERN.match(period):
        raise ValidationFailed("period", f"{period!r} is not a billing period like 2026-10 (YYYY-MM)")
    start, _ = period_bounds(period)
    if not allow_future and start > (now or utcnow()):
        raise ValidationFailed("period", f"{period} is in the future: nothing can be billed for it yet")
    return period


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of a `YYYY-MM` period, in UTC."""
    year, month = int(period[:4]), int(period[5:7])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_of(at: datetime) -> str:
    """The `YYYY-MM` period containing `at`."""
    at = at.astimezone(UTC)
    return f"{at.year:04d}-{at.month:02d}"


def next_period(period: str) -> str:
    """The period after `period`."""
    return period_of(period_bounds(period)[1])


def has_ended(period: str, now: datetime | None = None) -> bool:
    """True once the whole period lies in the past."""
    return period_bounds(period)[1] <= (now or utcnow())


def floor_hour(at: datetime) -> datetime:
    """The start of the hour containing `at` (UTC)."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hours_between(start: datetime, end: datetime) -> Iterator[datetime]:
    """Starts of every hour overlapping [start, end)."""
    hour = floor_hour(start)
    while hour < end:
        yield hour
        hour += HOUR


def split_by_hour(start: datetime, end: datetime) -> Iterator[tuple[datetime, int]]:
    """(hour, microseconds of [start, end) inside that hour) for each hour the interval touches."""
    for hour in hours_between(start, end):
        piece = min(end, hour + HOUR) - max(start, hour)
        micros = piece // timedelta(microseconds=1)
        if micros > 0:
            yield hour, micros
