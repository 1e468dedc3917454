"""Reader for Airbyte streams: what the destination wrote into landing, as the records of one business date.

The destination writes every sync's records as JSON Lines under `landing/<destination_dir>/<stream>/` in
the lake (`intake/airbyte_destination.py` reads that format). A partition holds the records whose
`partition_column` is its date, and it is rebuilt from every record landed so far.

On an object store each file is one streamed GET read line by line: records are parsed in Python whatever
the store, so a local copy (as the partner files reader makes for DuckDB) would only add a disk write.

Airbyte delivers at least once, and a later delivery of a record carries its newer state (a status that
moved on). So records are first deduplicated on the key across all of landing, keeping the latest
`_airbyte_extracted_at` (then the highest generation, then the last delivered); the surviving record
decides the partition and is then checked against the source's contract (`contract.select_sql`, as for
partner files). A surviving record that breaks the contract is quarantined with every reason, and its
older deliveries count as duplicates: bronze never silently keeps a stale state of a record whose current
state is bad. A record with no usable business date (or no key) belongs to the UTC date it was extracted on.

Records stream from the files into DuckDB in batches (each file's sha256 taken on the way) and out of it in
batches; DuckDB holds the working set and spills to disk beyond its memory limit.

`_checksum_sha256` is that digest: of the very bytes the records were parsed from, every one of them, taken
before any record is handed over. The destination writes its files without a manifest, so there is no
digest recorded at landing to check them against (as partner files are checked); a file changed after an
earlier load shows as a new digest on the rows it gives, never as the old one.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from dagster_project.lib.bronze.contract import PARTITION_COLUMN, select_sql
from dagster_project.lib.bronze.engine import RAW_RECORD, REASONS, SOURCE_LINE, OriginLoad
from dagster_project.lib.intake.airbyte_destination import (
    EXTRACTED_AT,
    GENERATION_ID,
    META,
    RAW_ID,
    SOURCE_FILE,
    SOURCE_ROW,
    RecordFile,
    read_airbyte_records,
    record_files,
    record_schema,
)
from dagster_project.lib.intake.landing import LANDING
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.spec import SourceSpec

_EPOCH_MS_IN_NAME = re.compile(r"^\d{4}_\d{2}_\d{2}_(\d{13})_")
# JSON carries integers, booleans and strings; dates, timestamps and decimals stay strings until the
# contract parses them strictly.
_JSON_TYPES = {"int64": pa.int64(), "boolean": pa.bool_()}


def edge_schema(spec: SourceSpec) -> pa.Schema:
    """The stream's data columns as the destination may write them: JSON types, every column nullable so
    that a record without a value reaches the contract (and quarantine) instead of failing the read."""
    return pa.schema([pa.field(c.name, _JSON_TYPES.get(c.type, pa.string())) for c in spec.columns])


def landing_prefix(spec: SourceSpec) -> str:
    """Lake-relative folder where the destination writes the stream."""
    return f"{LANDING}/{spec.airbyte.destination_dir}/{spec.airbyte.stream}"


def stream_folder(spec: SourceSpec, lake: Lake) -> Lake:
    """The stream's folder in the lake, as a `Lake` rooted there (same store, same credentials)."""
    return Lake(lake.uri(landing_prefix(spec)), lake.storage_options)


def _landed_files(files: list[RecordFile], sha256: dict[str, str]) -> pa.Table:
    names, digests, received = [], [], []
    for file in files:
        match = _EPOCH_MS_IN_NAME.match(file.name.rsplit("/", 1)[-1])
        # The destination names a file after its sync's start; the object's write time stands in when it does not.
        names.append(file.name)
        digests.append(sha256[file.name])
        received.append(dt.datetime.fromtimestamp(int(match.group(1)) / 1000, dt.UTC) if match else file.last_modified)
    return pa.table(
        {
            "file": pa.array(names, pa.string()),
            "sha256": pa.array(digests, pa.string()),
            "received_at": pa.array(received, pa.timestamp("us", tz="UTC")),
        }
    )


class AirbyteRecordsReader:
    """Every record landed for the stream, deduplicated on the key, then the records of one date."""

    def __init__(self, spec: SourceSpec, lake: Lake, business_date: str):
        self.spec = spec
        self.business_date = dt.date.fromisoformat(business_date)
        self.folder = stream_folder(spec, lake)
        self.origin = OriginLoad(f"landing:{spec.airbyte.destination_dir}/{spec.airbyte.stream}")
        self.origins = [self.origin]
        self.files_read = 0

    def details(self) -> dict[str, Any]:
        return {"files_read": self.files_read}

    def read(self, batch_rows: int) -> Iterator[tuple[OriginLoad, pa.RecordBatch]]:
        business_date = self.business_date
        files = record_files(self.folder)
        self.files_read = len(files)
        if not files:
            return
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            digests: dict[str, str] = {}
            self._stage(con, files, digests, batch_rows)
            con.register("landed_files", _landed_files(files, digests))
            (self.origin.duplicates,) = con.sql(
                f"SELECT count(*) FROM checked WHERE {PARTITION_COLUMN} = ? AND _is_duplicate", params=[business_date]
            ).fetchall()[0]
            data = ", ".join(f'"{name}"' for name in self.spec.column_names)
            select = f"""
                SELECT {data},
                       checked.{SOURCE_FILE} AS _source_file,
                       checked.{SOURCE_ROW}::BIGINT AS _source_row,
                       checked.{SOURCE_ROW}::BIGINT AS {SOURCE_LINE},  -- JSON Lines: one record per line
                       f.sha256 AS _checksum_sha256,
                       f.received_at AS _received_at,
                       {RAW_ID}, {EXTRACTED_AT}::TIMESTAMPTZ AS {EXTRACTED_AT},
                       CASE WHEN len(_all_reasons) > 0 THEN _all_reasons END AS {REASONS},
                       CASE WHEN len(_all_reasons) > 0 THEN _raw_json END AS {RAW_RECORD}
                FROM checked JOIN landed_files AS f ON f.file = checked.{SOURCE_FILE}
                WHERE {PARTITION_COLUMN} = ? AND NOT _is_duplicate
            """
            # Quarantined records first, materialized: a second query on the connection would end a stream.
            bad = con.sql(
                f"{select} AND len(_all_reasons) > 0 ORDER BY _source_file, _source_row", params=[business_date]
            ).to_arrow_table()
            for batch in bad.to_batches():
                yield self.origin, batch
            key = ", ".join(f'"{name}"' for name in self.spec.key)
            # `execute(...).to_arrow_reader` streams (a relation's reader materializes the whole result).
            good = con.execute(f"{select} AND len(_all_reasons) = 0 ORDER BY {key}", [business_date])
            for batch in good.to_arrow_reader(batch_rows):
                yield self.origin, batch
        finally:
            con.close()

    def _stage(
        self, con: duckdb.DuckDBPyConnection, files: list[RecordFile], digests: dict[str, str], batch_rows: int
    ) -> None:
        """Create `checked`: every landed record with its typed columns, reasons, rank and partition."""
        edge = edge_schema(self.spec)
        reader = pa.RecordBatchReader.from_batches(
            record_schema(edge),
            read_airbyte_records(self.folder, edge, batch_size=batch_rows, files=files, digests=digests),
        )
        con.register("landed_reader", reader)
        con.execute("CREATE TABLE records AS SELECT * FROM landed_reader")
        con.unregister("landed_reader")
        data = edge.names
        as_text = ", ".join(f'CAST("{name}" AS VARCHAR) AS "{name}"' for name in data)
        raw_json = "to_json({" + ", ".join(f"'{name}': \"{name}\"" for name in [RAW_ID, *data]) + "})"
        con.execute(
            f"""
            CREATE VIEW staged AS
            SELECT {as_text},
                   {raw_json} AS _raw_json,
                   -- values Airbyte nulled or truncated on the way are not the source's data
                   list_transform(
                       coalesce({META}.changes, []),
                       lambda c: coalesce(c.field, '?') || ': ' || lower(coalesce(c.change, 'changed'))
                            || ' by Airbyte' || coalesce(' (' || c.reason || ')', '')
                   ) AS _airbyte_changes,
                   {RAW_ID}, {EXTRACTED_AT}, {GENERATION_ID}, {SOURCE_FILE}, {SOURCE_ROW}
            FROM records
            """
        )
        passthrough = ["_raw_json", "_airbyte_changes", RAW_ID, EXTRACTED_AT, GENERATION_ID, SOURCE_FILE, SOURCE_ROW]
        contract = select_sql(self.spec, data, source="staged", passthrough=passthrough)
        key = ", ".join(f'"{name}"' for name in self.spec.key)
        key_missing = " OR ".join(f'"{name}" IS NULL' for name in self.spec.key)
        day = f'"{self.spec.airbyte.partition_column}"'
        extracted_day = f"CAST(timezone('UTC', {EXTRACTED_AT}) AS DATE)"
        con.execute(
            f"""
            CREATE TABLE checked AS
            WITH typed AS ({contract}),
            ranked AS (
                SELECT *,
                       CASE WHEN {key_missing} THEN NULL ELSE row_number() OVER (
                           PARTITION BY {key}
                           ORDER BY {EXTRACTED_AT} DESC, {GENERATION_ID} DESC NULLS LAST,
                                    {SOURCE_FILE} DESC, {SOURCE_ROW} DESC
                       ) END AS _rank
                FROM typed
            ),
            winners AS (
                SELECT {key}, coalesce({day}, {extracted_day}) AS _partition FROM ranked WHERE _rank = 1
            )
            SELECT ranked.*,
                   coalesce(winners._partition, ranked.{day}, CAST(timezone('UTC', ranked.{EXTRACTED_AT}) AS DATE))
                       AS {PARTITION_COLUMN},
                   coalesce(ranked._rank, 1) > 1 AS _is_duplicate,
                   list_concat(coalesce(ranked._reasons, []), ranked._airbyte_changes) AS _all_reasons
            FROM ranked LEFT JOIN winners USING ({key})
            """
        )


def business_dates_in(spec: SourceSpec, lake: Lake, files: list[RecordFile]) -> list[str]:
    """The business dates the records of these landed files (of the stream's folder) belong to (their valid
    partition column, else the UTC date they were extracted on), sorted: the bronze partitions a delivery
    touches. Only these files are read."""
    column = spec.airbyte.partition_column
    dates: set[str] = set()
    for batch in read_airbyte_records(stream_folder(spec, lake), edge_schema(spec), files=files):
        for value, extracted in zip(
            batch.column(column).to_pylist(), batch.column(EXTRACTED_AT).to_pylist(), strict=True
        ):
            try:
                dates.add(dt.date.fromisoformat(value).isoformat() if value else extracted.date().isoformat())
            except ValueError:
                dates.add(extracted.date().isoformat())
    return sorted(dates)
