"""A lake table's facts come from its Delta log: columns with their Arrow types, rows in all and per partition."""

import datetime as dt
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from dagster_project.lib.lake import Lake
from dagster_project.lib.lake_tables import table_facts


def test_facts_of_a_partitioned_table_after_two_commits(tmp_path: Path) -> None:
    lake = Lake.parse(str(tmp_path / "lake"))
    for d in (1, 3):  # d rows on day d
        dates = pa.array([dt.date(2025, 1, d)] * d, pa.date32())
        rows = pa.table({"id": pa.array(range(d), pa.int64()), "business_date": dates})
        write_deltalake(lake.table("silver", "t"), rows, partition_by=["business_date"], mode="append")

    facts = table_facts(lake, "silver", "t", "business_date")

    assert facts is not None and facts.version == 1
    assert facts.columns == (("id", "int64", True), ("business_date", "date32[day]", True))
    assert facts.row_count == 4
    assert facts.rows_by_partition == {"2025-01-01": 1, "2025-01-03": 3}
    assert table_facts(lake, "silver", "t").rows_by_partition is None  # no partition column asked for


def test_a_table_never_written_has_no_facts(tmp_path: Path) -> None:
    assert table_facts(Lake.parse(str(tmp_path / "lake")), "gold", "missing") is None
