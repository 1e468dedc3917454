"""Freshness declarations as Dagster policies: what a deadline and a maximum age mean."""

from datetime import timedelta

import dagster as dg
import pytest

from dagster_project.defs.common.freshness import declared_freshness, freshness_policy, with_freshness
from dagster_project.lib.sources.registry import SOURCES
from dagster_project.lib.sources.spec import DailyDeadline, MaxAge


def test_a_daily_deadline_is_a_cron_policy_over_the_day_before_it():
    policy = freshness_policy(DailyDeadline("07:30", days="tue-sat", timezone="Europe/Berlin"))
    assert policy == dg.FreshnessPolicy.cron(
        deadline_cron="30 7 * * tue-sat", lower_bound_delta=timedelta(hours=24), timezone="Europe/Berlin"
    )


def test_a_maximum_age_is_a_time_window_policy_with_its_warning():
    assert freshness_policy(MaxAge(hours=24, warn_hours=6)) == dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=24), warn_window=timedelta(hours=6)
    )
    assert freshness_policy(MaxAge(hours=2)) == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2))


@pytest.mark.parametrize("time", ["8:00", "24:00", "08:60", "0800", "08:00 "])
def test_a_deadline_that_is_not_a_time_of_day_is_refused(time: str):
    with pytest.raises(ValueError, match="expected HH:MM"):
        DailyDeadline(time)


def test_a_warning_after_the_failure_is_refused():
    with pytest.raises(ValueError, match="warn_hours"):
        MaxAge(hours=6, warn_hours=12)


def test_only_bronze_and_gold_are_held_to_a_deadline_and_the_ui_says_which():
    assert declared_freshness(dg.AssetKey(["bronze", "customers"])) == SOURCES["customers"].freshness
    for key in (["quarantine", "customers"], ["silver", "stg_acme__customers"], ["landing", "customers"]):
        assert declared_freshness(dg.AssetKey(key)) is None, key
    spec = with_freshness(dg.AssetSpec(["bronze", "psp_payouts"], metadata={"owner_note": "kept"}))
    assert spec.metadata == {"owner_note": "kept", "medallion/freshness": "new data by 10:00 UTC every mon-fri"}
    assert spec.freshness_policy == freshness_policy(SOURCES["psp_payouts"].freshness)
