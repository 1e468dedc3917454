"""Reverse ETL: gold customer segments pushed into the CRM's operational table."""

from typing import TYPE_CHECKING

import dagster as dg

from dagster_project import settings
from dagster_project.defs.common import catalog
from dagster_project.defs.common.dbt_keys import gold_model_columns, gold_model_key
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.reverse_etl.resources import ReverseEtlTarget

if TYPE_CHECKING:
    import pyarrow as pa

    from dagster_project.lib.lake import Lake

SEGMENTS_MODEL = "customer_segments"
KEY = "customer_id"
CRM_SCORES_KEY = dg.AssetKey(["reverse_etl", "crm_customer_scores"])


def read_segments(lake: "Lake") -> "pa.Table":
    """The gold segments table, read in place from the lake, in key order."""
    with lake.connect() as con:
        scan = lake.duckdb_scan(lake.table("gold", SEGMENTS_MODEL))
        return con.sql(f"select * from {scan} order by {KEY}").to_arrow_table()


def build_crm_scores_asset() -> dg.AssetsDefinition:
    @dg.asset(
        key=CRM_SCORES_KEY,
        deps=[gold_model_key(SEGMENTS_MODEL)],
        group_name="reverse_etl",
        description="Customer RFM scores and segments upserted into the CRM table (hash-diff, deletes vanished).",
        kinds={"sqlite", "postgres"},
        owners=["team:crm-data"],
        # The table by name only: the database URL may carry a password.
        metadata={
            catalog.TABLE_NAME: settings.reverse_etl_table(),
            # The rows pushed are the gold segments as they are.
            **({catalog.COLUMN_SCHEMA: columns} if (columns := gold_model_columns(SEGMENTS_MODEL)) else {}),
        },
    )
    def crm_customer_scores(
        context: dg.AssetExecutionContext, crm: ReverseEtlTarget, lake: LakeResource
    ) -> dg.MaterializeResult:
        rows = read_segments(lake.lake)
        stats = crm.sync(rows, key=KEY)
        context.log.info(
            f"{rows.num_rows} customers: {stats.inserted} inserted, {stats.updated} updated, "
            f"{stats.deleted} deleted, {stats.unchanged} unchanged"
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": rows.num_rows,
                "inserted": stats.inserted,
                "updated": stats.updated,
                "deleted": stats.deleted,
                "unchanged": stats.unchanged,
                "target_table": crm.table,
            }
        )

    return catalog.with_code_references(crm_customer_scores)


crm_scores_job = dg.define_asset_job(
    "crm_customer_scores_sync",
    selection=dg.AssetSelection.assets(CRM_SCORES_KEY),
    description="Push gold customer segments into the CRM table.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[build_crm_scores_asset()],
        jobs=[crm_scores_job],
    )
