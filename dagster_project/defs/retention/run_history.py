"""Dagster's own history: finished runs older than the retention are deleted with their event logs.

A run holding the latest materialization of an asset (or of one partition of it) is kept, however old: the
asset catalog knows a partition is materialized, and shows its last metadata and checks, only through that
run's events. Runs not finished (queued, starting, running, cancelling) are never touched."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from dagster_project.lib.retention import Removal

FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


class _LatestMaterializations:
    """The run of the latest materialization of each asset partition, looked up once per asset.

    Matched by run id: a run's own event records (read from its shard on SQLite) and the asset index number
    their events differently."""

    _CHUNK = 500

    def __init__(self, instance: dg.DagsterInstance):
        self._instance = instance
        self._runs: dict[dg.AssetKey, dict[str | None, str]] = {}

    def _latest_runs(self, key: dg.AssetKey) -> dict[str | None, str]:
        if key not in self._runs:
            fetch = self._instance.fetch_materializations
            latest: dict[str | None, str] = {}
            newest = fetch(key, limit=1).records
            if newest:
                latest[None] = newest[0].run_id  # the asset's latest, partitioned or not
            by_partition = self._instance.get_latest_storage_id_by_partition(
                key, dg.DagsterEventType.ASSET_MATERIALIZATION
            )
            ids = sorted(by_partition.values())
            for i in range(0, len(ids), self._CHUNK):
                chunk = ids[i : i + self._CHUNK]
                for record in fetch(dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)).records:
                    latest[record.partition_key] = record.run_id
            self._runs[key] = latest
        return self._runs[key]

    def held_by(self, run_id: str) -> bool:
        """Whether the run materialized the latest version of some asset partition."""
        records = self._instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        return any(
            r.asset_key is not None and self._latest_runs(r.asset_key).get(r.partition_key) == run_id
            for r in records.records
        )


def expire_run_history(
    instance: dg.DagsterInstance, days: int | None, *, now: dt.datetime | None = None, dry_run: bool = False
) -> Removal:
    """Delete the runs that finished more than `days` ago (None: keep them for ever), except those holding the
    latest materialization of an asset partition; counts by run status."""
    removal = Removal("run_history", "for ever" if days is None else f"{days} days", dry_run)
    if days is None:
        return removal
    cutoff = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC) - dt.timedelta(days=days)
    # Ids first, then one run at a time: deleting while paging would move the pages.
    run_ids = instance.get_run_ids(dg.RunsFilter(statuses=list(FINISHED), updated_before=cutoff))
    latest = _LatestMaterializations(instance)
    for run_id in run_ids:
        record = instance.get_run_record_by_id(run_id)
        if record is None or record.dagster_run.status not in FINISHED:
            continue  # gone meanwhile, or re-executed in place
        status = record.dagster_run.status.value
        if latest.held_by(run_id):
            removal.add(status, kept_latest_materialization=1)
            continue
        removal.add(status, runs=1)
        if not dry_run:
            instance.delete_run(run_id)
    return removal
