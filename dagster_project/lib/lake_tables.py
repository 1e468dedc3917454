"""What a Delta table of the lake holds, read from its log alone (no data file is opened): its columns with
their Arrow types and nullability, its row count, and the rows of one partition.

For the catalog: a materialization reports the schema the table really has and how many rows it holds, at
the cost of reading the log. deltalake is imported where a table is read, not with the code location.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster_project.lib.lake import Lake


@dataclass(frozen=True)
class TableFacts:
    version: int
    columns: tuple[tuple[str, str, bool], ...]  # (name, Arrow type as `str(pyarrow type)` prints it, nullable)
    row_count: int | None  # None when a data file of the table records no row count
    rows_by_partition: dict[str, int] | None  # per value of `partition_column`, when the table is partitioned by it


def table_facts(lake: Lake, layer: str, table: str, partition_column: str | None = None) -> TableFacts | None:
    """The facts of `<layer>.<table>`, or None when the lake holds no such table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    uri = lake.table(layer, table)
    if not DeltaTable.is_deltatable(uri, storage_options=lake.delta_options()):
        return None
    delta = DeltaTable(uri, storage_options=lake.delta_options())
    schema = pa.schema(delta.schema().to_arrow())
    files = pa.table(delta.get_add_actions(flatten=True))
    counts = files.column("num_records") if "num_records" in files.column_names else None
    complete = counts is not None and counts.null_count == 0
    row_count = int(pc.sum(counts).as_py() or 0) if complete else None
    by_partition = None
    if complete and partition_column and f"partition.{partition_column}" in files.column_names:
        by_partition = {}
        for value, n in zip(files.column(f"partition.{partition_column}").to_pylist(), counts.to_pylist(), strict=True):
            by_partition[str(value)] = by_partition.get(str(value), 0) + n
    return TableFacts(
        version=delta.version(),
        columns=tuple((f.name, str(f.type), f.nullable) for f in schema),
        row_count=row_count,
        rows_by_partition=by_partition,
    )
