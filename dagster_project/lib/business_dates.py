"""The business calendar every daily layer shares: bronze, silver and gold partitions start at the same date."""

from __future__ import annotations

import datetime as dt

# Without a configured first business date, the partitions reach this many whole months back: a new
# installation shows its data among a few weeks of days, not hundreds of empty ones.
DEFAULT_MONTHS_BACK = 3


def default_first_business_date(today: dt.date, months_back: int = DEFAULT_MONTHS_BACK) -> dt.date:
    """The first day of the month `months_back` months before `today`'s.

    Rounded to a month so that every process started the same month (webserver, daemon, run workers, the
    webhook receiver) agrees on the partitions; the start moves on only on the first of a month, dropping
    days at least `months_back` months old from the partitions (nothing is deleted: setting the first
    business date earlier brings them back)."""
    months = today.year * 12 + (today.month - 1) - months_back
    return dt.date(months // 12, months % 12 + 1, 1)


def parse_first_business_date(value: str) -> dt.date:
    """A configured first business date: an ISO date (YYYY-MM-DD)."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a date: give the first business date to keep as YYYY-MM-DD, e.g. 2025-01-01"
        ) from None
