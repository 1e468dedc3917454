"""Erasure of data subjects: a forget list of keyed hashes, and the rules that remove a subject's records.

A subject is named by a CRM customer id or an e-mail address. The request is kept durably in the lake's
forget list (`governance/forget_list`, a Delta table) as a keyed hash of the identifier only: HMAC-SHA256
under the PII key of `medallion/forget/<kind>:<normalised value>`. That message differs from the one silver
tokenises, so the list holds neither a raw identifier nor a token found anywhere else in the lake, and
without the key nobody can test a guessed address against it. Everything else works from the hashes: a
record names a forgotten subject when the hash of one of its identifying columns (`Column.identifies`) is in
the list, and a free-text column (a webhook body) names one when an e-mail address found in it does.

What erasure does to such a record is declared per source (`SourceSpec.on_erasure`): `delete` removes it
(the subject's own records: customers, consents), `redact` keeps it without what identifies the subject (an
order becomes a guest order, an event body loses the address). The same rules serve the erase job, which
rewrites what has landed (`lib/intake/landing.py`), the inbox and the lake's history, and the bronze engine,
which applies the list to every load: a replay, a backfill or a file delivered late never brings an erased
subject back into bronze.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import hmac
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.spec import OnErasure, PartnerFiles, SourceSpec, SubjectKind

FORGET_LIST = ("governance", "forget_list")
FORGET_LIST_SCHEMA = pa.schema(
    [
        pa.field("subject_hash", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("requested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
RAW_RECORD = "_raw_record"  # a quarantined record as received (the bronze contract's quarantine schema)
# What replaces an erased e-mail address inside free text.
REDACTED = "[erased]"
# An e-mail address inside free text (a JSON body): the registry's e-mail rule, unanchored.
EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
SUBJECT_KINDS: tuple[SubjectKind, ...] = ("customer_id", "email")


class ErasureError(ValueError):
    """An erasure request that cannot be carried out as given. The message never quotes the identifier."""


def normalise(kind: SubjectKind, value: object) -> str:
    """The form of an identifier that is hashed: a customer id as its decimal integer, an e-mail address
    trimmed and lower-cased (as silver tokenises it)."""
    if kind == "customer_id":
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ErasureError("a customer id must be a whole number") from None
        if number < 1:
            raise ErasureError("a customer id is a positive number")
        return str(number)
    if kind == "email":
        text = str(value).strip().lower()
        if not EMAIL_IN_TEXT.fullmatch(text):
            raise ErasureError("an e-mail address to erase must look like name@domain.tld")
        return text
    raise ErasureError(f"unknown subject kind {kind!r}: one of {', '.join(SUBJECT_KINDS)}")


def subject_hash(kind: SubjectKind, value: object, key: bytes) -> str:
    """The forget list's keyed hash of an identifier."""
    message = f"medallion/forget/{kind}:{normalise(kind, value)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Subject:
    kind: SubjectKind
    value: str = field(repr=False)  # kept out of repr: an identifier must not reach a log line

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", normalise(self.kind, self.value))


@dataclass(frozen=True)
class ForgetList:
    """The hashes of every subject erased so far, with the key that makes them."""

    key: bytes = field(repr=False)
    hashes: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def names(self, kind: SubjectKind, value: object) -> bool:
        """Whether `value`, an identifier of `kind`, is a forgotten subject's (an invalid one never is).

        Called for every record a load reads once the list names anyone: one C call (`hmac.digest`) per value,
        the digest of `subject_hash` compared as bytes."""
        if value is None or not self.hashes:
            return False
        if kind == "customer_id":
            if isinstance(value, bool):
                return False
            if isinstance(value, int):
                text = str(value)
            else:
                try:
                    text = str(int(str(value).strip()))
                except ValueError:
                    return False
        else:
            text = str(value).strip().lower()
        prefix, digests = self._matching(kind)
        return hmac.digest(self.key, prefix + text.encode(), "sha256") in digests

    def _matching(self, kind: SubjectKind) -> tuple[bytes, frozenset[bytes]]:
        cache = self.__dict__.setdefault("_matching_cache", {})  # frozen: derived values only
        if kind not in cache:
            cache[kind] = (f"medallion/forget/{kind}:".encode(), frozenset(bytes.fromhex(h) for h in self.hashes))
        return cache[kind]

    def redact_text(self, text: str) -> tuple[str, int]:
        """`text` with every forgotten subject's e-mail address replaced by REDACTED; and how many were."""
        count = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            if self.names("email", match.group(0)):
                count += 1
                return REDACTED
            return match.group(0)

        return (EMAIL_IN_TEXT.sub(replace, text), count) if self.hashes and "@" in text else (text, 0)

    def record_names_subject(self, spec: SourceSpec, values: Mapping[str, Any]) -> bool:
        """Whether a record (column name -> value as received) names a forgotten subject."""
        for column in spec.subject_columns:
            value = values.get(column.name)
            if column.free_text:
                if isinstance(value, str) and self.redact_text(value)[1]:
                    return True
            elif self.names(column.identifies, value):  # type: ignore[arg-type]
                return True
        return False

    def redacted_record(self, spec: SourceSpec, values: dict[str, Any]) -> dict[str, Any]:
        """A record of a `redact` source without what identifies a forgotten subject."""
        out = dict(values)
        for column in spec.subject_columns:
            value = out.get(column.name)
            if column.free_text and isinstance(value, str):
                out[column.name] = self.redact_text(value)[0]
            elif self.names(column.identifies, value):  # type: ignore[arg-type]
                out[column.name] = None
        return out

    # -- Arrow batches (the bronze engine) ----------------------------------------------------------------

    def apply(self, spec: SourceSpec, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int]:
        """The batch as erasure leaves it, and how many of its records named a forgotten subject: removed
        (`delete`) or stripped of the identifying values (`redact`). Columns the batch lacks are skipped. A
        `_raw_record` (a quarantined record as received) is read as the record it is (`raw_values`) and as
        free text: a record the contract refused still names its subject."""
        if not self.hashes or batch.num_rows == 0:
            return batch, 0
        named = self._named(spec, batch)
        count = sum(named)
        if not count:
            return batch, 0
        if spec.on_erasure == OnErasure.DELETE:
            return batch.filter(pa.array([not n for n in named])), count
        rows = self._subject_rows(spec, batch)
        replaced = {}
        for name in {c.name for c in spec.subject_columns} | {RAW_RECORD}:
            if name in batch.schema.names:
                values = [
                    self._redacted_value(spec, name, row) if n else row.get(name)
                    for row, n in zip(rows, named, strict=True)
                ]
                replaced[name] = pa.array(values, batch.schema.field(name).type)
        arrays = [replaced.get(name, batch.column(name)) for name in batch.schema.names]
        return pa.RecordBatch.from_arrays(arrays, schema=batch.schema), count

    def count_named(self, spec: SourceSpec, batch: pa.RecordBatch) -> int:
        """How many records of the batch name a forgotten subject (nothing changed)."""
        if not self.hashes or batch.num_rows == 0:
            return 0
        return sum(self._named(spec, batch))

    def _named(self, spec: SourceSpec, batch: pa.RecordBatch) -> list[bool]:
        """Per record, whether it names a forgotten subject. Identifier columns are normalised and prefixed
        column-wise in Arrow, so each value costs one C call of HMAC; free text and raw records (quarantined
        ones, few) are read record by record."""
        named = [False] * batch.num_rows
        names = batch.schema.names
        for column in spec.subject_columns:
            if column.name not in names:
                continue
            values = batch.column(column.name)
            if column.free_text:
                hits = [isinstance(v, str) and self.redact_text(v)[1] > 0 for v in values.to_pylist()]
            else:
                hits = self._column_hits(column.identifies, values)  # type: ignore[arg-type]
            named = [a or b for a, b in zip(named, hits, strict=True)]
        if RAW_RECORD in names:
            raw = batch.column(RAW_RECORD)
            if raw.null_count < len(raw):
                for i, text in enumerate(raw.to_pylist()):
                    if text is not None and not named[i]:
                        named[i] = self._names_subject(spec, {RAW_RECORD: text})
        return named

    def _column_hits(self, kind: SubjectKind, values: pa.Array) -> list[bool]:
        if kind == "customer_id" and not pa.types.is_integer(values.type):
            return [self.names(kind, v) for v in values.to_pylist()]  # text ids: normalised one by one
        text = pc.cast(values, pa.string())
        if kind == "email":
            text = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        prefix, digests = self._matching(kind)
        messages = pc.binary_join_element_wise(
            pa.scalar(prefix, pa.binary()), pc.cast(text, pa.binary()), pa.scalar(b"", pa.binary())
        )
        key, digest = self.key, hmac.digest
        return [m is not None and digest(key, m, "sha256") in digests for m in messages.to_pylist()]

    @staticmethod
    def _subject_rows(spec: SourceSpec, batch: pa.RecordBatch) -> list[dict[str, Any]]:
        wanted = {c.name for c in spec.subject_columns} | {RAW_RECORD}
        return batch.select([c for c in batch.schema.names if c in wanted]).to_pylist()

    def _names_subject(self, spec: SourceSpec, row: Mapping[str, Any]) -> bool:
        if self.record_names_subject(spec, row):
            return True
        raw = row.get(RAW_RECORD)
        if not isinstance(raw, str):
            return False
        return bool(self.redact_text(raw)[1]) or self.record_names_subject(spec, raw_values(spec, raw))

    def _redacted_value(self, spec: SourceSpec, name: str, row: Mapping[str, Any]) -> Any:
        if name != RAW_RECORD:
            return self.redacted_record(spec, dict(row))[name]
        raw = self.redact_text(row[RAW_RECORD])[0] if isinstance(row[RAW_RECORD], str) else row[RAW_RECORD]
        values = raw_values(spec, raw) if isinstance(raw, str) else {}
        if values and self.record_names_subject(spec, values):  # an identifier that is not an address
            return json.dumps(self.redacted_record(spec, values)) if raw.lstrip().startswith("{") else None
        return raw


def _record_data(record: dict[str, Any]) -> dict[str, Any] | None:
    """The data of an Airbyte record: its `_airbyte_data` object (or the JSON text of one) when it has that
    column, else the record itself; None when `_airbyte_data` holds anything else."""
    nested = record.get("_airbyte_data")
    if nested is None:
        return record
    if isinstance(nested, str):
        try:
            nested = json.loads(nested)
        except ValueError:
            return None
    return nested if isinstance(nested, dict) else None


def raw_values(spec: SourceSpec, raw: str) -> dict[str, Any]:
    """A raw record as received, as column name -> value: a JSON object (Airbyte records; its `_airbyte_data`
    if it has one), else a delimited line in the declared column order. Empty when it is neither."""
    text = raw.strip()
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            return {}
        if not isinstance(record, dict):
            return {}
        data = _record_data(record)
        return record if data is None else data
    if not isinstance(spec.reader, PartnerFiles):
        return {}
    try:
        [fields] = list(csv.reader([text], delimiter=spec.files.delimiter)) or [[]]
    except (csv.Error, ValueError):
        return {}
    return dict(zip(spec.column_names, fields, strict=False))


# -- the forget list in the lake ------------------------------------------------------------------------------


def _forget_list_column(lake: Lake, column: str) -> pa.ChunkedArray:
    """One column of the lake's forget list; empty when nobody was erased yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(lake.table(*FORGET_LIST), storage_options=lake.delta_options())
    except TableNotFoundError:
        return pa.chunked_array([], FORGET_LIST_SCHEMA.field(column).type)
    return table.to_pyarrow_table(columns=[column]).column(column)


def load_forget_list(lake: Lake, key: bytes | Callable[[], bytes]) -> ForgetList:
    """The lake's forget list (empty when nobody was erased yet). `key` may be a function giving it, called
    only when the list names someone: a lake nobody was erased from needs no key to load bronze."""
    hashes = _forget_list_column(lake, "subject_hash").to_pylist()
    if not hashes:
        return ForgetList(b"")
    return ForgetList(key() if callable(key) else key, frozenset(hashes))


def subjects_of_request(lake: Lake, request_id: str) -> int:
    """How many subjects the request `request_id` added to the forget list (whoever recorded them: `medallion
    erase` before it starts the job, or the job from its config)."""
    return pc.sum(pc.equal(_forget_list_column(lake, "request_id"), request_id)).as_py() or 0


def record_requests(
    lake: Lake, key: bytes, subjects: Iterable[Subject], *, request_id: str, requested_at: dt.datetime
) -> ForgetList:
    """Add the subjects to the lake's forget list (before anything is erased: a crash after this point leaves
    a request that the next erase run, or the next load, carries out); returns the whole list."""
    from deltalake import write_deltalake

    current = load_forget_list(lake, key)
    new = sorted({subject_hash(s.kind, s.value, key) for s in subjects} - current.hashes)
    if new:
        rows = pa.table(
            {
                "subject_hash": new,
                "request_id": [request_id] * len(new),
                "requested_at": pa.array([requested_at] * len(new), pa.timestamp("us", tz="UTC")),
            },
            schema=FORGET_LIST_SCHEMA,
        )
        write_deltalake(
            lake.table(*FORGET_LIST),
            rows,
            mode="append",
            storage_options=lake.delta_options(),
            description="Erased data subjects: keyed hashes of their identifiers, never the identifiers.",
        )
    return ForgetList(key, current.hashes | frozenset(new))


# -- rewriting what landed ----------------------------------------------------------------------------------------


def redact_delimited(spec: SourceSpec, src: IO[bytes], dst: IO[bytes], forget: ForgetList) -> int:
    """Copy a partner file (delimited text with a header) from `src` to `dst` without what names a forgotten
    subject; returns how many records named one. Untouched lines are copied byte for byte; a redacted
    record is written again with the file's delimiter. Bytes that are not UTF-8 pass through unchanged."""
    delimiter = spec.files.delimiter
    text_in = io.TextIOWrapper(src, encoding="utf-8", errors="surrogateescape", newline="")
    text_out = io.TextIOWrapper(dst, encoding="utf-8", errors="surrogateescape", newline="")
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        for line in text_in:
            consumed.append(line)
            yield line

    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    changed = 0
    for row in reader:
        raw = "".join(consumed)
        consumed.clear()
        if header is None:
            header = [name.strip().lstrip("\ufeff") for name in row]  # a byte order mark is not a name
            text_out.write(raw)
            continue
        values = dict(zip(header, row, strict=False))
        if not forget.record_names_subject(spec, values):
            text_out.write(raw)
            continue
        changed += 1
        if spec.on_erasure == OnErasure.DELETE:
            continue
        redacted = forget.redacted_record(spec, values)
        ending = "\r\n" if raw.endswith("\r\n") else "\n"
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=delimiter, lineterminator=ending).writerow(
            ["" if redacted.get(name) is None else redacted[name] for name in header]
        )
        text_out.write(buffer.getvalue())
    text_out.write("".join(consumed))  # an unterminated quote at the end: kept as it was
    text_out.flush()
    text_out.detach()
    text_in.detach()
    return changed


def redact_json_lines(spec: SourceSpec, src: IO[bytes], dst: IO[bytes], forget: ForgetList) -> int:
    """Copy a file of Airbyte records (JSON Lines, gzip or not) without what names a forgotten subject;
    returns how many records named one. A record's data is its `_airbyte_data` object when it has one,
    else the record itself. Untouched lines are copied byte for byte. A line that is no record (the reader
    refuses the file, naming the line) keeps its bytes but a forgotten subject's e-mail addresses."""
    head = src.read(2)
    src = io.BufferedReader(_Prefixed(head, src))  # type: ignore[arg-type]
    compressed = head == b"\x1f\x8b"
    reader: IO[bytes] = gzip.GzipFile(fileobj=src, mode="rb") if compressed else src
    writer: IO[bytes] = gzip.GzipFile(fileobj=dst, mode="wb") if compressed else dst
    changed = 0
    for line in reader:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        data = _record_data(record) if isinstance(record, dict) else None
        if data is None:
            text, count = forget.redact_text(line.decode("utf-8", errors="surrogateescape"))
            if count:
                changed += 1
                line = text.encode("utf-8", errors="surrogateescape")
            writer.write(line)
            continue
        if not forget.record_names_subject(spec, data):
            writer.write(line)
            continue
        nested = record.get("_airbyte_data")
        changed += 1
        if spec.on_erasure == OnErasure.DELETE:
            continue
        redacted = forget.redacted_record(spec, data)
        if isinstance(nested, str):
            record["_airbyte_data"] = json.dumps(redacted)
        elif isinstance(nested, dict):
            record["_airbyte_data"] = redacted
        else:
            record = redacted
        ending = b"\r\n" if line.endswith(b"\r\n") else b"\n"
        writer.write(json.dumps(record, separators=(",", ":")).encode() + ending)
    if compressed:
        writer.close()
    return changed


class _Prefixed(io.RawIOBase):
    """`head` followed by the rest of `inner`: a stream whose first bytes were read to sniff its format."""

    def __init__(self, head: bytes, inner: IO[bytes]):
        self._head, self._inner = head, inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
