"""The records of a delimited text file, found from its bytes without the CSV parser that types them.

Two uses:

- `scan` counts the records of a file in one streaming pass (numpy over 4 MiB chunks: memory stays flat
  whatever the size of the file or of a line) and says whether the file is *plain*: a header, every record
  with the header's number of fields, quotes only as RFC 4180 puts them (a quote opens a field, `""` inside
  it is a quote, a quote closes it right before a delimiter or a line end), `\\n` or `\\r\\n` line ends,
  valid UTF-8, no record longer than `PLAIN_RECORD_BYTES`. DuckDB's CSV reader reads a plain file exactly as
  this module splits it, so the count checks what DuckDB returned. Anything else DuckDB reads its own way,
  and some of it it loses (measured with DuckDB 1.5): a line longer than its buffer (about 32 MB) vanishes
  without a rejects entry, a line with extra empty trailing fields (`1,2,3,,`) loads as good, a lone `\\r`
  in a `\\n` file fails the whole file, and a rejected line keeps only its first 10,000 characters, with
  invalid bytes shown as `?`.
- `records` splits any file into records itself, for the files that are not plain: one record per line end
  outside a quoted field (`\\n`, `\\r\\n` or a lone `\\r`; blank lines are skipped but keep their line
  number); a quoted field whose quote never closes runs to the end of the file. A record longer than
  `max_bytes` is never held in memory: it comes back with its length, the SHA-256 of its bytes and its first
  `PREFIX_BYTES`. `split_fields` splits a record into fields, or says why it cannot.

Line numbers are as DuckDB counts them: the header is line 1, every line end outside quotes starts a new
line (blank lines included), a line break inside a quoted field does not.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

BOM = b"\xef\xbb\xbf"
QUOTE, CR, LF = ord('"'), ord("\r"), ord("\n")
QUOTE_BYTE, CR_BYTE = bytes([QUOTE]), bytes([CR])
CHUNK_BYTES = 4 * 1024 * 1024
# Longest record of a plain file: DuckDB's own limit (`max_line_size`) is 2 MB.
PLAIN_RECORD_BYTES = 1024 * 1024
# Longest record the reader holds in memory; a longer one is quarantined with its length, SHA-256 and
# first bytes, so that a single line cannot exhaust memory.
MAX_RECORD_BYTES = 16 * 1024 * 1024
PREFIX_BYTES = 64 * 1024
HEADER_LIMIT_BYTES = 1024 * 1024


class HeaderError(ValueError):
    """The file has no usable header line; the message says why (empty, not UTF-8, ...)."""


@dataclass(frozen=True)
class Scan:
    """What one pass over a file found."""

    size: int  # bytes, byte-order mark included
    empty: bool  # not a single line with text, not even a header
    records: int  # data records: non-blank lines after the header (a quoted line break does not count)
    plain: bool
    why_not_plain: str | None  # the first thing found that makes the file not plain, for logs


class _State:
    def __init__(self, delimiter: int):
        self.delimiter = delimiter
        self.offset = 0  # where the current chunk starts (in the file after its byte-order mark)
        self.in_quote = False  # at the start of the current chunk
        self.prev = -1  # the byte before the current chunk; -1 at the start of the file
        self.prev_closing = False  # that byte was a closing quote
        self.line_start = 0
        self.line_delimiters = 0  # outside quotes, in the line so far
        self.lines = 0  # line ends seen
        self.records = 0  # non-blank lines ended, the header included
        self.fields: int | None = None  # the header's
        self.line_ends: set[str] = set()
        self.why_not: str | None = None

    def not_plain(self, why: str) -> None:
        if self.why_not is None:
            self.why_not = why


def scan(stream: BinaryIO, delimiter: str, *, chunk_bytes: int = CHUNK_BYTES) -> Scan:
    """Read `stream` to its end once: its record count, its header, and whether it is plain."""
    state = _State(_delimiter_byte(delimiter))
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    chunk = _read_start(stream, chunk_bytes)
    size = len(chunk)
    if chunk.startswith(BOM):
        chunk = chunk[len(BOM) :]
    while chunk:
        a = np.frombuffer(chunk, dtype=np.uint8)
        # ASCII is UTF-8: a chunk of it needs no decoding unless a character began in the chunk before.
        if state.why_not is None and (decoder.getstate()[0] or int(a.max(initial=0)) >= 0x80):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = state.offset + exc.start
                state.not_plain(f"not valid UTF-8 (byte 0x{chunk[exc.start]:02X} at offset {at})")
        following = stream.read(chunk_bytes)
        size += len(following)
        _scan_chunk(state, a, following[0] if following else -1, QUOTE_BYTE in chunk, CR_BYTE in chunk)
        state.offset += len(chunk)
        chunk = following
    _finish(state)
    if state.why_not is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            state.not_plain("not valid UTF-8 (the file ends inside a character)")
    return Scan(
        size=size,
        empty=state.fields is None,
        records=max(state.records - 1, 0),
        plain=state.why_not is None,
        why_not_plain=state.why_not,
    )


def _read_start(stream: BinaryIO, chunk_bytes: int) -> bytes:
    """The first chunk, long enough to hold a byte-order mark."""
    chunk = stream.read(chunk_bytes)
    while 0 < len(chunk) < len(BOM) and (more := stream.read(chunk_bytes)):
        chunk += more
    return chunk


def _delimiter_byte(delimiter: str) -> int:
    encoded = delimiter.encode()
    if len(encoded) != 1 or encoded[0] in (QUOTE, CR, LF):
        raise ValueError(f"delimiter {delimiter!r}: one byte expected, not a quote or a line end")
    return encoded[0]


def _scan_chunk(state: _State, a: np.ndarray, next_byte: int, has_quote: bool = True, has_cr: bool = True) -> None:
    """Scan chunk `a`; `has_quote` and `has_cr` may be False only when the chunk holds no such byte (found
    by a bytes search, much faster than an array comparison): most chunks hold neither."""
    delim = state.delimiter
    quoted = state.in_quote or has_quote
    is_quote = a == QUOTE if quoted else None
    quoted = state.in_quote or (is_quote is not None and bool(is_quote.any()))
    outside: np.ndarray | None = None
    if quoted:
        assert is_quote is not None
        # The quote state after each byte: every quote flips it, which is how RFC 4180 quoting reads;
        # `_check_quotes` makes sure the chunk quotes no other way (a quote inside an unquoted field,
        # text after a closing quote), which DuckDB would read differently.
        after = np.cumsum(is_quote, dtype=np.uint8) & 1  # the count wraps at 256, its parity does not
        if state.in_quote:
            after ^= 1
        outside = after == 0
        _check_quotes(state, a, is_quote, after, next_byte)
        state.in_quote = bool(after[-1])
    else:
        state.prev_closing = False
    lf, dl = a == LF, a == delim
    cr = a == CR if has_cr else None
    if outside is not None:
        lf &= outside
        dl &= outside
        if cr is not None:
            cr &= outside
    if cr is not None and cr.any():
        lone = cr.copy()
        lone[:-1] &= ~lf[1:]
        lone[-1] &= next_byte != LF
        if lone.any():
            state.not_plain("a carriage return that does not end a line (old Mac or mixed line ends)")
    ends = np.flatnonzero(lf)
    if not len(ends):
        state.line_delimiters += int(np.count_nonzero(dl))
    else:
        # Delimiters per line: one sum per segment that a line end closes, and the rest of the chunk.
        bounds = np.empty(len(ends) + 1, dtype=np.intp)
        bounds[0] = 0
        bounds[1:] = ends + 1
        # (Summed as bytes into int32, which numpy does several times faster than booleans into int64.)
        if bounds[-1] < len(a):
            per_line = np.add.reduceat(dl.view(np.uint8), bounds, dtype=np.int32).astype(np.int64)
        else:
            per_line = np.append(np.add.reduceat(dl.view(np.uint8), bounds[:-1], dtype=np.int32), 0).astype(np.int64)
        per_line[0] += state.line_delimiters
        stops = ends.astype(np.int64) + state.offset
        starts = np.empty(len(ends), dtype=np.int64)
        starts[0] = state.line_start
        starts[1:] = stops[:-1] + 1
        before_end = np.where(ends > 0, a[np.maximum(ends - 1, 0)], state.prev)
        crlf = before_end == CR
        if crlf.any():
            state.line_ends.add("\r\n")
        if not crlf.all():
            state.line_ends.add("\n")
        if len(state.line_ends) > 1:
            state.not_plain("both \\n and \\r\\n line ends")
        lengths = stops - starts - crlf
        blank = lengths <= 0
        fields = per_line[:-1] + 1
        if state.fields is None:
            found = np.flatnonzero(~blank)
            if len(found):
                first = int(found[0])
                if first > 0 or state.lines > 0:
                    state.not_plain("blank lines before the header")
                state.fields = int(fields[first])
        if state.fields is not None:
            wrong = np.flatnonzero(~blank & (fields != state.fields))
            if len(wrong):
                k = int(wrong[0])
                state.not_plain(f"line {state.lines + k + 1} has {int(fields[k])} fields, the header {state.fields}")
        if (lengths > PLAIN_RECORD_BYTES).any():
            state.not_plain(f"a line longer than {PLAIN_RECORD_BYTES} bytes")
        state.records += int((~blank).sum())
        state.lines += len(ends)
        state.line_start = int(stops[-1]) + 1
        state.line_delimiters = int(per_line[-1])
    if state.offset + len(a) - state.line_start > PLAIN_RECORD_BYTES:
        state.not_plain(f"a line longer than {PLAIN_RECORD_BYTES} bytes")
    state.prev = int(a[-1])


def _check_quotes(state: _State, a: np.ndarray, is_quote: np.ndarray, after: np.ndarray, next_byte: int) -> None:
    """Mark the file not plain unless every quote of the chunk opens a field, closes one, or is half of `""`."""
    delim = state.delimiter
    carried_closing, state.prev_closing = state.prev_closing, False
    if carried_closing and a[0] not in (delim, LF, CR, QUOTE):
        state.not_plain("text after a closing quote")
    at = np.flatnonzero(is_quote)
    if not len(at):
        return
    opening = after[at] == 1
    before = np.where(at > 0, a[np.maximum(at - 1, 0)], state.prev)
    # A quote right after a closing quote is the second half of `""` inside a quoted field.
    after_closing = np.zeros(len(at), dtype=bool)
    adjacent = np.flatnonzero(at[1:] == at[:-1] + 1) + 1
    after_closing[adjacent] = ~opening[adjacent - 1]
    if at[0] == 0:
        after_closing[0] = carried_closing
    field_start = (before == delim) | (before == LF) | (before == CR) | (before == -1) | after_closing
    if (opening & ~field_start).any():
        state.not_plain("a quote inside an unquoted field")
    last = len(a) - 1
    following = np.where(at < last, a[np.minimum(at + 1, last)], next_byte)
    ends_field = (following == delim) | (following == LF) | (following == CR) | (following == QUOTE)
    ends_field |= following == -1
    if (~opening & ~ends_field).any():
        state.not_plain("text after a closing quote")
    state.prev_closing = bool(at[-1] == last and not opening[-1])


def _finish(state: _State) -> None:
    if state.in_quote:
        state.not_plain("a quoted field that never closes")
    if state.offset > state.line_start:  # a last line without a line end
        state.lines += 1
        state.records += 1
        fields = state.line_delimiters + 1
        if state.fields is None:
            if state.lines > 1:
                state.not_plain("blank lines before the header")
            state.fields = fields
        elif fields != state.fields:
            state.not_plain(f"line {state.lines} has {fields} fields, the header {state.fields}")
        if state.offset - state.line_start > PLAIN_RECORD_BYTES:
            state.not_plain(f"a line longer than {PLAIN_RECORD_BYTES} bytes")


# -- records, one at a time ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One record: its bytes (without the line end), or for one longer than the limit its length, SHA-256 and
    first bytes (`cut`)."""

    line: int
    data: bytes  # the whole record, or its first PREFIX_BYTES when cut
    size: int
    cut: bool = False
    sha256: str | None = None  # of the whole record, when cut


def _patterns(delimiter: int) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    d = re.escape(bytes([delimiter]))
    # A field: quoted (spaces before the quote are skipped, as DuckDB does; an unclosed quote runs to the
    # end; text after the closing quote is kept in the record, which `split_fields` then refuses), or not.
    field = rb' *"(?:[^"]|"")*(?:"[^' + d + rb"\r\n]*)?|[^" + d + rb"\r\n]*"
    record = re.compile(rb"(?:" + field + rb")(?:" + d + rb"(?:" + field + rb"))*")
    # Where a record too long to hold can end, or a quoted field in it start (see `_skip`).
    landmark = re.compile(rb"\r\n|\n|\r|" + d + rb' *"')
    return record, landmark


_OPENING = re.compile(rb' *"')


def records(
    stream: BinaryIO, delimiter: str, *, max_bytes: int = MAX_RECORD_BYTES, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[Record]:
    """Every non-blank record of `stream`, the header first, in file order."""
    delim = _delimiter_byte(delimiter)
    record_re, landmark_re = _patterns(delim)
    buf = _read_start(stream, chunk_bytes)
    eof = not buf
    if buf.startswith(BOM):
        buf = buf[len(BOM) :]
    pos, line = 0, 1
    while True:
        if pos >= len(buf):
            if eof:
                return
            buf, pos = stream.read(chunk_bytes), 0
            eof = not buf
            continue
        match = record_re.match(buf, pos)
        assert match is not None  # the pattern matches the empty string
        end = match.end()
        if end >= len(buf) - 1 and not eof:
            # The record may go on in the next chunk (or its `\r` be the first half of `\r\n`).
            if end - pos > max_bytes:
                record, buf, pos, eof = _skip(stream, buf, pos, line, bytes([delim]), landmark_re, chunk_bytes)
                yield record
                line += 1
                continue
            more = stream.read(chunk_bytes)
            eof = not more
            buf, pos = buf[pos:] + more, 0
            continue
        if end > pos:
            data = buf[pos:end]
            if len(data) > max_bytes:
                yield Record(line, data[:PREFIX_BYTES], len(data), True, hashlib.sha256(data).hexdigest())
            else:
                yield Record(line, data, len(data))
        line += 1
        pos = end + (2 if buf[end : end + 2] == b"\r\n" else 1)


def _skip(
    stream: BinaryIO,
    buf: bytes,
    pos: int,
    line: int,
    delim: bytes,
    landmark_re: re.Pattern[bytes],
    chunk_bytes: int,
) -> tuple[Record, bytes, int, bool]:
    """Read past a record longer than the limit without holding it (its SHA-256 and first bytes are kept);
    returns it, and the buffer and position after its line end."""
    digest = hashlib.sha256()
    eof = False
    while buf[pos:].strip(b" ") == b"" and not eof:  # spaces so far: a quote may follow and open the field
        more = stream.read(chunk_bytes)
        eof = not more
        buf, pos = buf[pos:] + more, 0
    prefix = bytes(buf[pos : pos + PREFIX_BYTES])
    size, start = 0, pos
    opening = _OPENING.match(buf, pos)
    in_quote, at = (True, opening.end()) if opening else (False, pos)
    while True:
        if in_quote:
            close = buf.find(b'"', at)
            if close < 0:
                at = len(buf)
            elif close == len(buf) - 1 and not eof:
                at = close  # the next chunk says whether it is half of `""`
            elif buf[close + 1 : close + 2] == b'"':
                at = close + 2
                continue
            else:
                in_quote, at = False, close + 1
                continue
        else:
            # Bytes that may begin a landmark going on in the next chunk wait for it.
            limit = len(buf) if eof else at + len(buf[at:].rstrip(delim + b" \r"))
            found = landmark_re.search(buf, at, limit)
            if found is not None and found.group().endswith(b'"'):
                in_quote, at = True, found.end()
                continue
            if found is not None:
                digest.update(buf[start : found.start()])
                size += found.start() - start
                return Record(line, prefix[:size], size, True, digest.hexdigest()), buf, found.end(), eof
            at = limit
        if eof:
            digest.update(buf[start:])
            size += len(buf) - start
            return Record(line, prefix[:size], size, True, digest.hexdigest()), b"", 0, True
        digest.update(buf[start:at])
        size += at - start
        more = stream.read(chunk_bytes)
        eof = not more
        buf, start, at = buf[at:] + more, 0, 0


def split_fields(data: bytes, delimiter: str) -> tuple[list[bytes | None], str | None]:
    """The fields of one record (None for an empty one, as DuckDB reads it), or why the record cannot be split."""
    delim = delimiter.encode()
    if b'"' not in data:
        return [part or None for part in data.split(delim)], None
    fields: list[bytes | None] = []
    pos = 0
    while True:
        quoted = _QUOTED.match(data, pos)
        if quoted is None:  # unquoted: to the next delimiter; a quote inside it is kept as it is
            stop = data.find(delim, pos)
            fields.append(data[pos : None if stop < 0 else stop] or None)
            if stop < 0:
                return fields, None
            pos = stop + 1
            continue
        if not quoted.group(2):
            return fields, "a quoted field that never closes"
        fields.append(quoted.group(1).replace(b'""', b'"') or None)
        pos = quoted.end()
        if pos == len(data):
            return fields, None
        if data[pos : pos + 1] != delim:
            return fields, "text after a closing quote"
        pos += 1
        if pos == len(data):
            fields.append(None)
            return fields, None


_QUOTED = re.compile(rb' *"((?:[^"]|"")*)(")?')


def read_header(stream: BinaryIO, delimiter: str) -> list[str]:
    """The column names on the first line of `stream` (only that line is read); `HeaderError` says why there
    are none: an empty file, a header that is not UTF-8, too long, or not splittable."""
    first = next(records(stream, delimiter, max_bytes=HEADER_LIMIT_BYTES), None)
    if first is None:
        raise HeaderError("empty file: no header line")
    if first.cut:
        raise HeaderError(f"the header line is longer than {HEADER_LIMIT_BYTES} bytes")
    try:
        first.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(
            f"the header line is not UTF-8 (byte 0x{first.data[exc.start]:02X} at byte {exc.start + 1} of line 1)"
        ) from None
    fields, error = split_fields(first.data, delimiter)
    if error is not None:
        raise HeaderError(f"the header line cannot be split into columns: {error}")
    return [(f or b"").decode().strip() for f in fields]


def shown(record: Record) -> str:
    """A record as text for the quarantine.

    A record that is valid UTF-8 and whole is its text, exactly. Otherwise the text shows what can be shown
    (bytes that are not UTF-8 as `\\xNN`, only the first bytes of a record cut short) and ends with a note
    giving the record's length in bytes and the SHA-256 of its bytes, which identify it in the landed file."""
    first_invalid = None
    try:
        text = record.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        first_invalid = exc.start
        text = record.data.decode("utf-8", errors="backslashreplace")
    if not record.cut and first_invalid is None:
        return text
    sha256 = record.sha256 or hashlib.sha256(record.data).hexdigest()
    notes = [f"the record is {record.size} bytes, SHA-256 {sha256}"]
    if record.cut:
        notes.append(f"only its first {len(record.data)} bytes are shown")
    if first_invalid is not None:
        notes.append(f"bytes that do not decode as UTF-8 are shown as \\xNN, the first at byte {first_invalid + 1}")
    return f"{text}\n[{'; '.join(notes)}]"
