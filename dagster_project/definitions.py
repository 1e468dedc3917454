"""The code location: everything under defs/, plus the policies that cut across it."""

import functools
import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from dagster_project.defs.common.freshness import with_freshness

# Every blocking check of every dep has passed, or the dep will be materialized this tick in the same run as
# the asset (will_be_requested is true only then): its checks ride along in that run, and one that fails stops
# the asset there. Dagster's `all_deps_blocking_checks_passed()` asks the checks themselves to be requested,
# which checks that ride along never are: the first day of a dbt model with tests then held its children
# back a whole tick (a separate run for `dim_customers` after `customers_history`).
DEPS_BLOCKING_CHECKS_PASSED = dg.AutomationCondition.all_deps_match(
    dg.AutomationCondition.all_checks_match(dg.AutomationCondition.check_passed(), blocking_only=True)
    | dg.AutomationCondition.will_be_requested()
).with_label("all deps' blocking checks passed")

# Silver, gold and reverse ETL follow their upstreams unattended, for any partition (not only the latest, so a
# backfilled bronze day flows on too), and never while an upstream blocking check has failed.
# An unpartitioned asset (a full-table model) sees every partition of a daily upstream: for it, a dep counts
# as present once any day of it exists (days without deliveries stay missing forever), and a failed gate on
# any day holds it back. For a daily asset both read as `~any_deps_missing()` and
# DEPS_BLOCKING_CHECKS_PASSED do, on its own day.
FOLLOW_UPSTREAM = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & dg.AutomationCondition.all_deps_match(
        ~dg.AutomationCondition.missing() | dg.AutomationCondition.will_be_requested()
    ).with_label("no dep missing")
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & DEPS_BLOCKING_CHECKS_PASSED
    & ~dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.any_checks_match(dg.AutomationCondition.check_failed(), blocking_only=True)
        & ~dg.AutomationCondition.will_be_requested()
    ).with_label("a dep that stays as it is failed a blocking check")
).with_label("follow upstream past passing gates")


def _with_automation(spec: dg.AssetSpec) -> dg.AssetSpec:
    return spec.replace_attributes(automation_condition=FOLLOW_UPSTREAM)


# Who gets which policy: the groups that follow upstream, and the layers whose keys carry a freshness policy.
FOLLOWING_GROUPS = frozenset({"silver", "gold", "reverse_etl"})
FRESHNESS_KEY_PREFIXES = ("bronze/", "gold/")


def with_policies(spec: dg.AssetSpec) -> dg.AssetSpec:
    """The spec with the policies that cut across the domains: automation for the groups that follow upstream,
    the declared freshness for bronze and gold.

    The same assets as the selections `group:"silver" or group:"gold" or group:"reverse_etl"` and
    `key:"bronze/*" or key:"gold/*"` (which `map_resolved_asset_specs` resolves with external assets
    included), told from the spec itself: a selection would have Dagster build the whole asset graph once
    per policy, and a selection string would load Dagster's ANTLR parser, while the definitions load."""
    if spec.group_name in FOLLOWING_GROUPS:
        spec = _with_automation(spec)
    if spec.key.to_user_string().startswith(FRESHNESS_KEY_PREFIXES):
        spec = with_freshness(spec)
    return spec


# Declared in code so that it starts RUNNING: Dagster's implicit default sensor starts stopped, and then
# nothing follows the intake until someone finds the toggle.
AUTOMATION_SENSOR = dg.AutomationConditionSensorDefinition(
    "follow_upstream_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    # A drop waits for a tick before it moves on from bronze: Dagster's default of 30 s was a large part of
    # the time from a partner's file to gold (benchmarks/drop_to_gold.py).
    minimum_interval_seconds=10,
    # Runs, not backfills: a tick asking for several days of one asset (a PSP batch spans three) would
    # otherwise become a backfill, which Dagster's backfill daemon starts only on its next pass, every 30 s,
    # and then one asset at a time: up to a minute more from a webhook to gold. Each day's run writes only
    # its own partition; a commit that loses to another's is retried (defs/transform/assets.py).
    emit_backfills=False,
    description="Evaluates every automation condition: silver, gold and reverse ETL follow what landed in bronze.",
)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while the definitions load; after the first load of the process,
    what exists then is frozen (`gc.freeze`): the collector no longer scans it.

    The load creates a few hundred thousand objects that live as long as the process (the modules, classes and
    functions of Dagster, dagster-dbt, dbt and ours, the definitions). Left to the collector, they are scanned
    over and over as they pile up and again after the load, in every process that loads the code location
    (each run's among them). The price is the cyclic garbage the first load leaves, which stays: some 6,000
    objects, about 1 MB, measured. A later load in the same process (tests) freezes nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        _freeze_once()
    finally:
        if enabled:
            gc.enable()


@functools.cache
def _freeze_once() -> None:
    gc.freeze()


@dg.definitions
def defs() -> dg.Definitions:
    with collector_paused():
        loaded = dg.Definitions.merge(
            dg.load_from_defs_folder(path_within_project=Path(__file__).parent / "defs"),
            # Every run's steps in the run's own process: the multiprocess executor starts a process per step,
            # and each loads the code location again (seconds of imports for a step of milliseconds), a run of
            # the intake paying it four times. A run still runs apart from the others, one process per run.
            dg.Definitions(sensors=[AUTOMATION_SENSOR], executor=dg.in_process_executor),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)  # mapping specs is marked preview in 1.13
            warnings.simplefilter("ignore", dg.BetaWarning)
            return loaded.map_asset_specs(func=with_policies)
