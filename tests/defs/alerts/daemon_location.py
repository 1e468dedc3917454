"""A small code location for the alert daemon test: the platform's alert sensors and resource (built from the
environment, as the real code location builds them) beside a feed whose check fails, a load that fails, and
an asset due every minute."""

from datetime import timedelta

import dagster as dg

from dagster_project import settings
from dagster_project.defs.alerts.resources import alerts_from_settings
from dagster_project.defs.alerts.sensors import build_alert_sensors
from dagster_project.defs.common.freshness import EXPECTATION_METADATA_KEY


@dg.asset(
    key=["bronze", "partner_feed"],
    owners=["team:crm-data"],
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=1)),
    metadata={EXPECTATION_METADATA_KEY: "new data at least every minute"},
)
def partner_feed() -> None:
    """A feed due every minute."""


@dg.asset_check(asset=partner_feed, name="row_count_matches_received")
def row_count_check() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="received 12 rows, loaded 10 and quarantined 1")


@dg.asset(key=["bronze", "broken_feed"], owners=["team:payments-data"])
def broken_feed() -> None:
    """A load that fails."""
    raise dg.Failure(description="inbox unavailable: could not reach postgresql://etl:hunter2@db.acme.test/inbox")


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[partner_feed, broken_feed],
        asset_checks=[row_count_check],
        jobs=[
            dg.define_asset_job("partner_feed_intake", selection=[partner_feed.key]),
            dg.define_asset_job("broken_feed_intake", selection=[broken_feed.key]),
        ],
        sensors=build_alert_sensors(settings.alert_channels(), minimum_interval_seconds=5),
        resources={"alerts": alerts_from_settings()},
    )
