"""Records counted and split from a file's bytes: the count agrees with DuckDB on every plain file, and the
splitter gives the same records whatever the chunk size, whole or cut short."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import duckdb
import pytest

from dagster_project.lib.bronze.readers import csv_records
from dagster_project.lib.bronze.readers.csv_records import HeaderError, Record, read_header, records, scan, split_fields


def _duckdb(con: duckdb.DuckDBPyConnection, path: Path, index: int) -> tuple[list[tuple], int]:
    source = (
        "read_csv(?, header=true, auto_detect=false, columns={'a': 'VARCHAR', 'b': 'VARCHAR', 'c': 'VARCHAR'}, "
        "delim=',', quote='\"', escape='\"', strict_mode=true, buffer_size=4194304, ignore_errors=true, "
        f"store_rejects=true, rejects_table='rejects_{index}', rejects_scan='rejects_scan_{index}')"
    )
    rows = con.execute(f"SELECT * FROM {source}", [str(path)]).fetchall()
    return rows, con.execute(f"SELECT count(DISTINCT line) FROM rejects_{index}").fetchone()[0]


def _random_file(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # mostly well-formed records, quoted or not
        lines = []
        for _ in range(rng.randint(0, 6)):
            fields = []
            for _ in range(3):
                value = "".join(rng.choice(["x", "y", ",", "\n", '"', " ", "é"]) for _ in range(rng.randint(0, 3)))
                if rng.random() < 0.5 or any(c in value for c in ',\n"'):
                    value = '"' + value.replace('"', '""') + '"'
                fields.append(value)
            lines.append(",".join(fields))
        body = ("\n".join(lines) + ("\n" if rng.random() < 0.7 else "")).encode()
    else:  # anything made of the bytes that matter
        pieces = [b"a", b"b", b",", b'"', b"\n", b"\r\n", b"\r", b" ", "é".encode(), b"\xff", b",,"]
        weights = [20, 10, 8, 3, 5, 2, 0.3, 1, 1, 0.2, 1]
        body = b"".join(rng.choices(pieces, weights, k=rng.randint(0, 60)))
    return b"a,b,c\n" + body


def test_a_plain_file_holds_exactly_what_duckdb_reads_from_it(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    con = duckdb.connect()
    plain = 0
    for index in range(1500):
        data = _random_file(rng)
        path = tmp_path / "f.csv"
        path.write_bytes(data)
        scanned = scan(io.BytesIO(data), ",", chunk_bytes=rng.choice([1, 2, 3, 7, 64, 4096]))
        if not scanned.plain:
            continue
        plain += 1
        rows, rejected = _duckdb(con, path, index)
        assert (len(rows), rejected) == (scanned.records, 0), data
        split = [split_fields(r.data, ",") for r in list(records(io.BytesIO(data), ","))[1:]]
        assert [(tuple(None if v is None else v.decode() for v in f), e) for f, e in split] == [
            (row, None) for row in rows
        ], data
    assert plain > 500  # the random files exercise both kinds


def test_records_are_the_same_whatever_the_chunk_size_and_a_record_cut_short_keeps_its_length_and_sha256() -> None:
    rng = random.Random(7)
    pieces = [b"a", b"b", b",", b'"', b"\n", b"\r\n", b"\r", b" ", b', "', b'""']
    for _ in range(2000):
        data = (b"\xef\xbb\xbf" if rng.random() < 0.3 else b"") + b"".join(rng.choices(pieces, k=rng.randint(0, 80)))
        whole = list(records(io.BytesIO(data), ",", chunk_bytes=1 << 20))
        chunk = rng.choice([1, 2, 3, 5, 8])
        assert list(records(io.BytesIO(data), ",", chunk_bytes=chunk)) == whole, (chunk, data)
        limit = rng.choice([1, 2, 4, 8])
        cut = list(records(io.BytesIO(data), ",", chunk_bytes=chunk, max_bytes=limit))
        assert [r.line for r in cut] == [r.line for r in whole], (chunk, limit, data)
        for original, short in zip(whole, cut, strict=True):
            if short.cut:
                assert short.size == original.size > limit
                assert short.sha256 == hashlib.sha256(original.data).hexdigest()
                assert original.data.startswith(short.data)
            else:
                assert short == original


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"a,b,c\n1,2,3,,\n", "line 2 has 5 fields, the header 3"),
        (b'a,b,c\n1,x"y,3\n', "a quote inside an unquoted field"),
        (b'a,b,c\n1,"x"y,3\n', "text after a closing quote"),
        (b'a,b,c\n1,"x,3\n', "a quoted field that never closes"),
        (b"a,b,c\n1,2\r3\n", "a carriage return that does not end a line"),
        (b"a,b,c\n1,2,3\r\n4,5,6\n", "both \\n and \\r\\n line ends"),
        (b"a,b,c\n1,\xff,3\n", "not valid UTF-8 (byte 0xFF at offset 8)"),
        (b"\na,b,c\n1,2,3\n", "blank lines before the header"),
    ],
)
def test_what_makes_a_file_not_plain_is_named(data: bytes, why: str) -> None:
    scanned = scan(io.BytesIO(data), ",")
    assert not scanned.plain and scanned.why_not_plain is not None and scanned.why_not_plain.startswith(why)


def test_a_line_of_any_length_is_counted_without_holding_it() -> None:
    line = b"1," + b"x" * (3 * csv_records.CHUNK_BYTES) + b",3\n"
    data = b"a,b,c\n" + line + b"4,5,6\n"
    scanned = scan(io.BytesIO(data), ",")
    assert (scanned.records, scanned.plain) == (2, False)
    assert scanned.why_not_plain == f"a line longer than {csv_records.PLAIN_RECORD_BYTES} bytes"
    [header, long, last] = records(io.BytesIO(data), ",", max_bytes=1024)
    assert (header.data, last.data, last.line) == (b"a,b,c", b"4,5,6", 3)
    assert (long.line, long.cut, long.size, len(long.data)) == (2, True, len(line) - 1, csv_records.PREFIX_BYTES)
    assert long.sha256 == hashlib.sha256(line[:-1]).hexdigest()


def test_blank_lines_are_skipped_but_keep_their_line_numbers_and_quoted_line_breaks_count_once() -> None:
    data = b'a,b,c\n1,"x\ny",3\n\n\r\n4,5,6\n'
    assert [(r.line, r.data) for r in records(io.BytesIO(data), ",")] == [
        (1, b"a,b,c"),
        (2, b'1,"x\ny",3'),
        (5, b"4,5,6"),
    ]


def test_fields_are_split_as_duckdb_reads_them_or_the_reason_is_given() -> None:
    assert split_fields(b'1,"a,""b""",,x"y', ",") == ([b"1", b'a,"b"', None, b'x"y'], None)
    assert split_fields(b'1, "x,y",3', ",") == ([b"1", b"x,y", b"3"], None)  # spaces before a quote: skipped
    assert split_fields(b'1,"x"y,3', ",")[1] == "text after a closing quote"
    assert split_fields(b'1,"x', ",")[1] == "a quoted field that never closes"


def test_the_header_is_read_from_its_own_line_only() -> None:
    assert read_header(io.BytesIO(b'\xef\xbb\xbfid, "name"\n1,\xff\n'), ",") == ["id", "name"]
    with pytest.raises(HeaderError, match="empty file: no header line"):
        read_header(io.BytesIO(b""), ",")
    with pytest.raises(HeaderError, match=r"the header line is not UTF-8 \(byte 0xFF at byte 4 of line 1\)"):
        read_header(io.BytesIO(b"id,\xffname\n1,2\n"), ",")


def test_a_record_that_is_not_utf8_or_cut_short_is_shown_with_its_length_and_sha256() -> None:
    assert csv_records.shown(Record(3, "é,1".encode(), 4)) == "é,1"
    raw = b"1,caf\xe9,3"
    text = csv_records.shown(Record(3, raw, len(raw)))
    assert text == (
        "1,caf\\xe9,3\n[the record is 8 bytes, SHA-256 "
        f"{hashlib.sha256(raw).hexdigest()}; bytes that do not decode as UTF-8 are shown as \\xNN, the first at byte 6]"
    )
    text = csv_records.shown(Record(4, b"1,xx", 40_000_000, cut=True, sha256="ab" * 32))
    assert text == f"1,xx\n[the record is 40000000 bytes, SHA-256 {'ab' * 32}; only its first 4 bytes are shown]"
