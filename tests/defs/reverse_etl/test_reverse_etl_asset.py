"""The reverse ETL asset: gold customer segments from the lake (local and S3) into SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa
from deltalake import write_deltalake

from dagster_project import settings
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.reverse_etl.assets import CRM_SCORES_KEY, build_crm_scores_asset
from dagster_project.defs.reverse_etl.resources import ReverseEtlTarget

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _write_segments(rows: list[tuple]) -> None:
    """The gold segments Delta table as dbt leaves it, in the lake the settings name."""
    with duckdb.connect() as con:
        con.execute(
            "create table segments (customer_id bigint, as_of_date date, "
            "recency_days bigint, frequency bigint, recency_score integer, frequency_score integer, "
            "monetary_score integer, segment varchar, is_churn_risk boolean)"
        )
        con.executemany("insert into segments values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        table = con.execute("select * from segments").to_arrow_table()
    lake = settings.lake()
    write_deltalake(
        lake.table("gold", "customer_segments"), table, mode="overwrite", storage_options=lake.delta_options()
    )


ROWS = [
    (1, "2025-01-31", 30, 1, 1, 1, 5, "hibernating", True),
    (2, "2025-01-31", 6, 4, 4, 4, 3, "champions", False),
    (3, "2025-01-31", 0, 5, 5, 5, 4, "champions", False),
]


@pytest.fixture
def sqlite_target(platform_env: Path) -> Iterator[tuple[ReverseEtlTarget, sa.Engine, str]]:
    url = f"sqlite:///{platform_env / 'crm.sqlite'}"
    engine = sa.create_engine(url)
    yield ReverseEtlTarget(url=url, table="crm.customer_scores"), engine, "customer_scores"
    engine.dispose()


@pytest.fixture
def postgres_target(platform_env: Path) -> Iterator[tuple[ReverseEtlTarget, sa.Engine, str]]:
    # No skip: when PostgreSQL is down this errors, as CI must notice.
    engine = sa.create_engine(POSTGRES_URL)
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
    schema = f"crm_asset_{uuid.uuid4().hex[:12]}"
    try:
        yield ReverseEtlTarget(url=POSTGRES_URL, table=f"{schema}.customer_scores"), engine, f"{schema}.customer_scores"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'drop schema if exists "{schema}" cascade'))
        engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("sqlite-s3-lake", marks=pytest.mark.s3),
    ]
)
def target(request: pytest.FixtureRequest) -> tuple[ReverseEtlTarget, sa.Engine, str]:
    if request.param.endswith("-s3-lake"):
        request.getfixturevalue("platform_env")
        request.getfixturevalue("s3_lake")
    return request.getfixturevalue(f"{request.param.removesuffix('-s3-lake')}_target")


def _run(crm: ReverseEtlTarget) -> dict:
    lake = LakeResource(root=settings.lake_root())
    result = dg.materialize([build_crm_scores_asset()], resources={"crm": crm, "lake": lake})
    assert result.success
    [event] = result.get_asset_materialization_events()
    assert event.asset_key == CRM_SCORES_KEY
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _target_rows(engine: sa.Engine, table: str) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.text(f"select customer_id, segment, is_churn_risk from {table} order by 1"))
        ]


def test_segments_are_synced_and_a_resync_is_a_no_op(target: tuple[ReverseEtlTarget, sa.Engine, str]) -> None:
    crm, engine, table = target
    _write_segments(ROWS)

    first = _run(crm)
    assert (first["inserted"], first["updated"], first["deleted"], first["unchanged"]) == (3, 0, 0, 0)
    assert [(c, s, bool(r)) for c, s, r in _target_rows(engine, table)] == [
        (1, "hibernating", True),
        (2, "champions", False),
        (3, "champions", False),
    ]

    again = _run(crm)
    assert (again["inserted"], again["updated"], again["deleted"], again["unchanged"]) == (0, 0, 0, 3)

    # Customer 2 changes segment, customer 3 leaves the table, customer 4 arrives.
    _write_segments([ROWS[0], (2, "2025-02-28", 40, 4, 1, 4, 3, "at_risk", True), (4, *ROWS[2][1:])])
    changed = _run(crm)
    assert (changed["inserted"], changed["updated"], changed["deleted"], changed["unchanged"]) == (1, 1, 1, 1)
    assert [c for c, _, _ in _target_rows(engine, table)] == [1, 2, 4]


def test_asset_depends_on_gold_segments() -> None:
    asset = build_crm_scores_asset()
    assert dg.AssetKey(["gold", "customer_segments"]) in {d.asset_key for d in asset.specs_by_key[CRM_SCORES_KEY].deps}
