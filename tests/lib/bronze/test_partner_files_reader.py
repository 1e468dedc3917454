"""The partner-file reader returns one row, loaded or quarantined, for every record the file holds by a count
of its bytes, whatever the line length, the line ends or the bytes; and its reasons say what is wrong."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from deltalake import DeltaTable

from dagster_project.lib.bronze.engine import LoadResult, load_partition
from dagster_project.lib.bronze.readers import csv_records, partner_files
from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader, RecordCountMismatch
from dagster_project.lib.intake.landing import LandResult, landed_files
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import CUSTOMERS
from tests.lib.customer_files import customer, customers_csv

Land = Callable[..., LandResult]
DAY = "2025-11-05"


def _load(lake: Lake, **kwargs: Any) -> LoadResult:
    reader = PartnerFilesReader(CUSTOMERS, landed_files(lake, "customers", DAY), DAY, lake=lake)
    return load_partition(CUSTOMERS, reader, lake=lake, run_id="run-1", **kwargs)


def _rows(lake: Lake, layer: str) -> list[dict[str, Any]]:
    table = DeltaTable(lake.table(layer, "customers")).to_pyarrow_table()
    order = [("_source_row", "ascending")] + ([("_source_line", "ascending")] if layer == "quarantine" else [])
    return table.sort_by(order).to_pylist()


def _lines(*records: dict[str, str | None]) -> bytes:
    return customers_csv(list(records)).encode()


def _file_figures(result: LoadResult) -> dict[str, Any]:
    [figures] = result.details["files"]
    return figures


def test_a_line_longer_than_duckdbs_buffer_is_quarantined_not_lost(land: Land, landing_lake: Lake) -> None:
    # DuckDB drops a line longer than its buffer (about 32 MB) without a rejects entry.
    long = customers_csv([customer(2, first_name="x" * 40_000_000)]).split("\n", 1)[1].rstrip("\n").encode()
    land(_lines(customer(1)) + long + b"\n" + _lines(customer(3)).split(b"\n", 1)[1])

    result = _load(landing_lake)

    assert (result.received, result.loaded, result.quarantined) == (3, 2, 1)
    assert _file_figures(result)["records"] == 3
    [row] = _rows(landing_lake, "quarantine")
    assert row["_source_line"] == 3
    assert row["_reasons"] == [f"malformed CSV line: longer than {csv_records.MAX_RECORD_BYTES} bytes"]
    shown, note = row["_raw_record"].rsplit("\n", 1)
    assert long.startswith(shown.encode()) and len(shown) == csv_records.PREFIX_BYTES
    assert note == (
        f"[the record is {len(long)} bytes, SHA-256 {hashlib.sha256(long).hexdigest()}; "
        f"only its first {csv_records.PREFIX_BYTES} bytes are shown]"
    )
    assert [r["customer_id"] for r in _rows(landing_lake, "bronze")] == [1, 3]


def test_a_line_with_extra_empty_trailing_columns_is_quarantined(land: Land, landing_lake: Lake) -> None:
    text = _lines(customer(1), customer(2), customer(3)).replace(b"\n3,", b",,\n3,")  # line 3 ends with ",,"
    land(text)

    result = _load(landing_lake)

    assert (result.loaded, result.quarantined) == (2, 1)
    [row] = _rows(landing_lake, "quarantine")
    assert (row["_source_line"], row["_reasons"]) == (3, ["malformed CSV line: too many columns"])
    assert row["_raw_record"] == text.split(b"\n")[2].decode()


def test_an_invalid_utf8_byte_after_the_header_quarantines_its_record_only(land: Land, landing_lake: Lake) -> None:
    bad = "2,ada@example.com,Caf\xe9".encode("latin-1")  # within the first 8 KB of the file
    text = _lines(customer(1), customer(2, first_name="PLACEHOLDER"), customer(3))
    raw = text.split(b"\n")[2].replace(b"2,ada.lovelace2@example.com,PLACEHOLDER", bad)
    land(text.replace(text.split(b"\n")[2], raw))

    result = _load(landing_lake)

    assert (result.loaded, result.quarantined) == (2, 1)
    [row] = _rows(landing_lake, "quarantine")
    assert (row["_source_line"], row["_reasons"]) == (3, ["malformed CSV line: not valid UTF-8"])
    shown, note = row["_raw_record"].rsplit("\n", 1)
    assert shown == raw.decode("utf-8", errors="backslashreplace") and "Caf\\xe9" in shown
    first_invalid = raw.index(b"\xe9") + 1
    assert note == (
        f"[the record is {len(raw)} bytes, SHA-256 {hashlib.sha256(raw).hexdigest()}; "
        f"bytes that do not decode as UTF-8 are shown as \\xNN, the first at byte {first_invalid}]"
    )


def test_a_rejected_line_is_kept_whole_not_cut_at_ten_thousand_characters(land: Land, landing_lake: Lake) -> None:
    bad = "9," + ",".join(["y" * 5_000] * 12)  # 60 kB, too many columns
    land(_lines(customer(1)) + bad.encode() + b"\n")

    _load(landing_lake)

    [row] = _rows(landing_lake, "quarantine")
    assert row["_raw_record"] == bad
    assert row["_reasons"] == ["malformed CSV line: too many columns"]


def test_a_lone_carriage_return_does_not_fail_the_file(land: Land, landing_lake: Lake) -> None:
    # DuckDB's parser gives up on the whole file ("reached an invalid state"), ignore_errors or not.
    text = _lines(customer(1), customer(2), customer(3))
    land(text.replace(b"\n2,", b"\r2,"))

    result = _load(landing_lake)

    assert (result.received, result.loaded, result.quarantined) == (3, 3, 0)
    assert "record by record" in _file_figures(result)["read_by"]


def test_a_plain_file_is_read_by_duckdb_and_counted_from_its_bytes(land: Land, landing_lake: Lake) -> None:
    land(_lines(customer(1), customer(2, status="gone"), customer(3)))
    result = _load(landing_lake)
    assert _file_figures(result) | {"file": None} == {
        "file": None,
        "records": 3,
        "received": 3,
        "loaded": 2,
        "quarantined": 1,
        "read_by": "DuckDB (a plain file)",
    }


def test_a_parser_that_returns_fewer_records_than_counted_fails_the_load_and_commits_nothing(
    land: Land, landing_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    land(_lines(customer(1), customer(2)))
    _load(landing_lake)
    before = DeltaTable(landing_lake.table("bronze", "customers")).version()
    scan = csv_records.scan

    def one_more(*args: Any, **kwargs: Any) -> csv_records.Scan:
        scanned = scan(*args, **kwargs)
        return csv_records.Scan(scanned.size, scanned.empty, scanned.records + 1, scanned.plain, None)

    monkeypatch.setattr(partner_files.csv_records, "scan", one_more)
    with pytest.raises(
        RecordCountMismatch, match=r"holds 3 records \(counted from its bytes\), but the parser returned 2"
    ):
        _load(landing_lake)
    assert DeltaTable(landing_lake.table("bronze", "customers")).version() == before


def test_records_of_a_file_read_record_by_record_type_as_duckdb_types_them(land: Land, landing_lake: Lake) -> None:
    rows = [customer(1, last_name='Smith, "Jr."'), customer(2, lifetime_value="1.234"), customer(3)]
    plain = _lines(*rows)
    land(plain, sequence=1)
    _load(landing_lake)
    by_duckdb = _rows(landing_lake, "bronze"), _rows(landing_lake, "quarantine")

    land(plain + b"9,a,b\n", sequence=2)  # the same records, then a short line: not plain
    dirty = PartnerFilesReader(CUSTOMERS, landed_files(landing_lake, "customers", DAY)[1:], DAY, lake=landing_lake)
    other = Lake.parse(landing_lake.root + "-other")
    result = load_partition(CUSTOMERS, dirty, lake=other, run_id="run-1")

    assert "record by record" in _file_figures(result)["read_by"]
    volatile = {"_source_file", "_checksum_sha256", "_ingested_at", "_received_at", "_run_id", "_source_line"}

    def same(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in volatile} for r in rows]

    assert same(_rows(other, "bronze")) == same(by_duckdb[0])
    assert same(_rows(other, "quarantine")[:1]) == same(by_duckdb[1])
    assert _rows(other, "quarantine")[1]["_reasons"] == ["malformed CSV line: missing columns"]


def test_an_empty_landed_file_gives_no_record(land: Land, landing_lake: Lake) -> None:
    land(b"")
    result = _load(landing_lake)
    assert (result.received, _file_figures(result)["records"], _file_figures(result)["read_by"]) == (0, 0, "empty file")


def test_received_at_is_the_manifests(land: Land, landing_lake: Lake) -> None:
    land(_lines(customer(1)))
    _load(landing_lake)
    assert _rows(landing_lake, "bronze")[0]["_received_at"] == dt.datetime(2025, 11, 5, 7, 30, tzinfo=dt.UTC)
