"""Reverse ETL into SQLite and into the real PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from dagster_project.lib.clients.reverse_etl import ROW_HASH, ReverseEtlError, SyncStats, row_hash, sync_rows

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@dataclass
class Target:
    engine: sa.Engine
    table: str  # as given to sync_rows
    qualified: str  # as written in SQL

    def rows(self) -> dict[Any, dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.text(f"select * from {self.qualified} order by customer_id"))
            return {r["customer_id"]: dict(r) for r in result.mappings()}

    def execute(self, sql: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql))


@pytest.fixture
def sqlite_target(tmp_path: Path) -> Iterator[Target]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'crm.sqlite'}")
    # The schema part is ignored on SQLite.
    yield Target(engine, "crm.customer_scores", "customer_scores")
    engine.dispose()


@pytest.fixture
def postgres_target() -> Iterator[Target]:
    # No skip: when PostgreSQL is down this errors, as CI must notice.
    engine = sa.create_engine(POSTGRES_URL)
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
    schema = f"crm_test_{uuid.uuid4().hex[:12]}"
    try:
        yield Target(engine, f"{schema}.customer_scores", f"{schema}.customer_scores")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'drop schema if exists "{schema}" cascade'))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest) -> Target:
    return request.getfixturevalue(f"{request.param}_target")


def scores(n: int, *, segment: str = "regular", start: int = 1) -> list[dict[str, Any]]:
    return [
        {"customer_id": i, "segment": segment if i % 3 else "vip", "score": i * 7 % 100, "email_token": f"t{i}"}
        for i in range(start, start + n)
    ]


def test_first_sync_creates_the_table_and_inserts_everything(target: Target) -> None:
    source = scores(25)
    stats = sync_rows(target.engine, target.table, source, "customer_id", batch_size=10)

    assert stats == SyncStats(inserted=25)
    stored = target.rows()
    assert sorted(stored) == list(range(1, 26))
    for row in source:
        got = stored[row["customer_id"]]
        assert {k: got[k] for k in row} == row
        assert got[ROW_HASH] == row_hash(row)


def test_resync_of_the_same_rows_changes_nothing(target: Target) -> None:
    sync_rows(target.engine, target.table, scores(25), "customer_id", batch_size=10)
    before = target.rows()

    stats = sync_rows(target.engine, target.table, scores(25), "customer_id", batch_size=10)

    assert stats == SyncStats(unchanged=25)
    assert stats.changed == 0
    assert target.rows() == before


def test_only_changed_rows_are_written(target: Target) -> None:
    source = scores(30)
    sync_rows(target.engine, target.table, source, "customer_id", batch_size=10)
    versions = _row_versions(target)
    changed = {4, 17, 29}
    for row in source:
        if row["customer_id"] in changed:
            row["score"] += 1

    stats = sync_rows(target.engine, target.table, source, "customer_id", batch_size=10)

    assert stats == SyncStats(updated=3, unchanged=27)
    stored = target.rows()
    assert all(stored[i]["score"] == source[i - 1]["score"] for i in range(1, 31))
    if versions is not None:  # PostgreSQL: untouched rows keep their row version
        after = _row_versions(target)
        assert {k for k in after if after[k] != versions[k]} == changed


def test_rows_gone_from_the_source_are_deleted(target: Target) -> None:
    sync_rows(target.engine, target.table, scores(30), "customer_id", batch_size=10)
    source = [r for r in scores(30) if r["customer_id"] not in {2, 3, 20}] + scores(2, start=31)
    source[0]["segment"] = "churned"

    stats = sync_rows(target.engine, target.table, source, "customer_id", batch_size=4)

    assert stats == SyncStats(inserted=2, updated=1, deleted=3, unchanged=26)
    stored = target.rows()
    assert sorted(stored) == sorted(r["customer_id"] for r in source)
    assert stored[1]["segment"] == "churned"


def test_failure_mid_sync_leaves_whole_batches_and_the_next_run_completes(target: Target) -> None:
    stale = scores(5, start=100)  # in the target, gone from the source: deleted only by a complete run
    sync_rows(target.engine, target.table, stale, "customer_id")
    source = scores(35)

    def breaks_after(n: int) -> Iterator[dict[str, Any]]:
        for i, row in enumerate(source):
            if i == n:
                raise ConnectionError("source went away")
            yield dict(row)

    with pytest.raises(ConnectionError, match="source went away"):
        sync_rows(target.engine, target.table, breaks_after(15), "customer_id", batch_size=10)

    stored = target.rows()
    assert sorted(stored) == list(range(1, 11)) + list(range(100, 105))  # batch 1 committed, no deletes
    assert all(stored[i][ROW_HASH] == row_hash(source[i - 1]) for i in range(1, 11))

    stats = sync_rows(target.engine, target.table, source, "customer_id", batch_size=10)
    assert stats == SyncStats(inserted=25, deleted=5, unchanged=10)
    assert sorted(target.rows()) == list(range(1, 36))
    assert sync_rows(target.engine, target.table, source, "customer_id", batch_size=10) == SyncStats(unchanged=35)


@pytest.mark.postgres
def test_a_batch_rejected_by_postgres_is_rolled_back_whole(postgres_target: Target) -> None:
    target = postgres_target
    source = scores(30)
    sync_rows(target.engine, target.table, source, "customer_id", batch_size=10)
    for row in source:
        row["score"] += 1
    bad = [dict(r) for r in source]
    bad[14]["score"] = "not a number"  # the fifth row of the second batch

    with pytest.raises(sa.exc.DataError):
        sync_rows(target.engine, target.table, bad, "customer_id", batch_size=10)

    stored = target.rows()
    assert [stored[i]["score"] for i in range(1, 11)] == [source[i]["score"] for i in range(10)]
    assert [stored[i]["score"] for i in range(11, 31)] == [source[i]["score"] - 1 for i in range(10, 30)]
    assert all(stored[i][ROW_HASH] == row_hash({k: stored[i][k] for k in source[0]}) for i in stored)

    stats = sync_rows(target.engine, target.table, source, "customer_id", batch_size=10)
    assert stats == SyncStats(updated=20, unchanged=10)


def test_arrow_tables_keep_their_types_and_hash_stably(target: Target) -> None:
    table = pa.table(
        {
            "customer_id": pa.array([1, 2, 3], pa.int64()),
            "segment": ["vip", "regular", None],
            "lifetime_value": pa.array([Decimal("10.50"), Decimal("0.00"), None], pa.decimal128(12, 2)),
            "first_order_date": pa.array([date(2025, 1, 2), None, date(2025, 3, 4)], pa.date32()),
            "scored_at": pa.array([datetime(2025, 11, 5, 3, tzinfo=UTC)] * 3, pa.timestamp("us", tz="UTC")),
            "is_active": [True, False, True],
            "propensity": [0.25, 0.5, 1.0],
        }
    )
    assert sync_rows(target.engine, target.table, table, "customer_id") == SyncStats(inserted=3)
    assert sync_rows(target.engine, target.table, table, "customer_id") == SyncStats(unchanged=3)

    stored = target.rows()
    assert stored[1]["lifetime_value"] == Decimal("10.50")
    assert stored[3]["first_order_date"] in (date(2025, 3, 4), "2025-03-04")
    assert stored[2]["segment"] == "regular" and stored[3]["segment"] is None
    assert bool(stored[1]["is_active"]) is True


def test_an_empty_source_does_not_wipe_the_target_unless_allowed(target: Target) -> None:
    sync_rows(target.engine, target.table, scores(5), "customer_id")

    with pytest.raises(ReverseEtlError, match="source is empty"):
        sync_rows(target.engine, target.table, [], "customer_id")
    assert len(target.rows()) == 5

    assert sync_rows(target.engine, target.table, [], "customer_id", allow_empty_source=True) == SyncStats(deleted=5)
    assert target.rows() == {}


def test_bad_sources_are_refused_before_writing(target: Target) -> None:
    with pytest.raises(ReverseEtlError, match="appears more than once"):
        sync_rows(target.engine, target.table, scores(3) + scores(1), "customer_id")
    with pytest.raises(ReverseEtlError, match="no value for key"):
        sync_rows(target.engine, target.table, [{"customer_id": None, "segment": "x"}], "customer_id")
    with pytest.raises(ReverseEtlError, match="not in the source columns"):
        sync_rows(target.engine, target.table, [{"id": 1}], "customer_id")
    sync_rows(target.engine, target.table, scores(2), "customer_id")
    with pytest.raises(ReverseEtlError, match="are str but the target's are int"):
        as_text = [{**r, "customer_id": str(r["customer_id"])} for r in scores(2)]
        sync_rows(target.engine, target.table, as_text, "customer_id")
    with pytest.raises(ReverseEtlError, match=r"lacks column\(s\) \['tier'\]"):
        sync_rows(target.engine, target.table, [{**r, "tier": 1} for r in scores(2)], "customer_id")
    assert sorted(target.rows()) == [1, 2]


def test_columns_owned_by_the_target_system_are_left_alone(target: Target) -> None:
    sync_rows(target.engine, target.table, scores(3), "customer_id")
    target.execute(f"alter table {target.qualified} add column owner_note text")
    target.execute(f"update {target.qualified} set owner_note = 'call back' where customer_id = 2")
    source = scores(3)
    source[1]["score"] = 99

    assert sync_rows(target.engine, target.table, source, "customer_id") == SyncStats(updated=1, unchanged=2)
    stored = target.rows()
    assert (stored[2]["score"], stored[2]["owner_note"]) == (99, "call back")


def test_an_existing_table_without_a_unique_key_is_refused(target: Target) -> None:
    schema = target.qualified.rsplit(".", 1)[0] if "." in target.qualified else None
    if schema:
        target.execute(f'create schema "{schema}"')
    columns = f"customer_id bigint, segment text, score bigint, email_token text, {ROW_HASH} text"
    target.execute(f"create table {target.qualified} ({columns})")
    with pytest.raises(ReverseEtlError, match="primary key or unique constraint"):
        sync_rows(target.engine, target.table, scores(1), "customer_id")


def test_url_targets_create_the_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'crm.sqlite'}"
    assert sync_rows(url, "customer_scores", scores(3), "customer_id") == SyncStats(inserted=3)
    assert sync_rows(url, "customer_scores", scores(3), "customer_id") == SyncStats(unchanged=3)


def test_row_hash_is_canonical() -> None:
    assert row_hash({"a": 1, "b": "x"}) == row_hash({"b": "x", "a": 1})
    assert row_hash({"a": Decimal("1.50")}) == row_hash({"a": Decimal("1.5")})
    assert row_hash({"a": 1}) != row_hash({"a": "1"})
    assert row_hash({"a": None}) != row_hash({"a": ""})
    assert len(row_hash({"a": datetime(2025, 1, 1, tzinfo=UTC)})) == 64


def _row_versions(target: Target) -> dict[int, str] | None:
    if target.engine.dialect.name != "postgresql":
        return None
    with target.engine.connect() as conn:
        result = conn.execute(sa.text(f"select customer_id, xmin::text from {target.qualified}"))
        return {customer_id: xmin for customer_id, xmin in result}
