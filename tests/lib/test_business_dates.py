import datetime as dt

import pytest

from dagster_project import settings
from dagster_project.lib.business_dates import default_first_business_date, parse_first_business_date


@pytest.mark.parametrize(
    ("today", "first"),
    [
        (dt.date(2026, 11, 30), dt.date(2026, 8, 1)),
        (dt.date(2026, 11, 1), dt.date(2026, 8, 1)),  # the same all month long
        (dt.date(2026, 12, 1), dt.date(2026, 9, 1)),  # and a month later from the first of the next
        (dt.date(2026, 2, 28), dt.date(2025, 11, 1)),  # across a year
        (dt.date(2026, 1, 15), dt.date(2025, 10, 1)),
        (dt.date(2026, 3, 31), dt.date(2025, 12, 1)),
    ],
)
def test_without_a_configured_date_the_partitions_start_three_whole_months_back(today: dt.date, first: dt.date):
    assert default_first_business_date(today) == first
    assert (today - first).days < 4 * 31  # never hundreds of empty days


def test_a_configured_first_business_date_wins_and_a_wrong_one_says_how_to_write_it(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv(settings.FIRST_BUSINESS_DATE, " 2024-06-01 ")
    assert settings.first_business_date() == dt.date(2024, 6, 1)
    monkeypatch.setenv(settings.FIRST_BUSINESS_DATE, "01/06/2024")
    with pytest.raises(ValueError, match=r"MEDALLION_FIRST_BUSINESS_DATE: '01/06/2024' is not a date: .*YYYY-MM-DD"):
        settings.first_business_date()
    monkeypatch.delenv(settings.FIRST_BUSINESS_DATE)
    assert settings.first_business_date() == default_first_business_date(dt.datetime.now(dt.UTC).date())
    assert parse_first_business_date("2025-01-01") == dt.date(2025, 1, 1)
