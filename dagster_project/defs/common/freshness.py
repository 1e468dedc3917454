"""Freshness policies: bronze per source as its declaration says (`SourceSpec.freshness`), gold as a layer.

Dagster's freshness daemon evaluates the policies (PASS, WARN, FAIL) against each asset's latest
materialization; the UI shows the state beside the asset, and the alert sensors report an overdue asset.
"""

import functools
from datetime import timedelta

import dagster as dg

from dagster_project.lib.sources.registry import SOURCES
from dagster_project.lib.sources.spec import DailyDeadline, Freshness

# Gold follows its upstreams unattended: on a business day it is due an hour after the last partner
# deadline (psp_payouts, 10:00 UTC), which leaves time for the intake runs, silver and the gates.
GOLD_FRESHNESS = DailyDeadline("11:00", days="mon-fri")

# Shown in the asset's metadata and in alerts, in words.
EXPECTATION_METADATA_KEY = "medallion/freshness"


@functools.cache  # one per declaration: Dagster walks up to a thousand ticks of a cron to validate it
def freshness_policy(freshness: Freshness) -> dg.FreshnessPolicy:
    """A declaration as Dagster's policy: a deadline is a cron policy over the 24 hours before it."""
    if isinstance(freshness, DailyDeadline):
        return dg.FreshnessPolicy.cron(
            deadline_cron=freshness.cron, lower_bound_delta=timedelta(hours=24), timezone=freshness.timezone
        )
    return dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=freshness.hours),
        warn_window=timedelta(hours=freshness.warn_hours) if freshness.warn_hours else None,
    )


def declared_freshness(key: dg.AssetKey) -> Freshness | None:
    """What the platform expects of an asset: its source's declaration for bronze, the layer's for gold."""
    layer, *rest = key.path
    if layer == "bronze" and len(rest) == 1 and rest[0] in SOURCES:
        return SOURCES[rest[0]].freshness
    if layer == "gold":
        return GOLD_FRESHNESS
    return None


def with_freshness(spec: dg.AssetSpec) -> dg.AssetSpec:
    """The spec with the freshness policy it is declared to keep, and that expectation in words."""
    freshness = declared_freshness(spec.key)
    if freshness is None:
        return spec
    return spec.replace_attributes(freshness_policy=freshness_policy(freshness)).merge_attributes(
        metadata={EXPECTATION_METADATA_KEY: freshness.describe()}
    )
