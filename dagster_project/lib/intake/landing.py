"""The landing zone: every received file kept byte for byte, with a manifest, never rewritten.

Layout, relative to the lake root (a local folder or an object store; every write goes through `lake.store`):
`landing/<feed>/business_date=<YYYY-MM-DD>/<file name>` and `<file name>.manifest.json` beside it. A bronze
partition is rebuilt from exactly the files landed for its date, so landing is the source of truth, and a
manifest records where its file is relative to the lake root: a copy of the lake restored elsewhere rebuilds
bronze from itself.

Landing a file takes three writes, each put-if-absent, so that no write ever replaces landed bytes and a
retry after a crash at any point finishes the landing instead of repeating it:

1. The claim, `landing/<feed>/_sha256/<sha256>.json`: the manifest the content's first landing means to
   write. It is the content index (a duplicate is found with one read, not by listing the feed), and it
   fixes the file name, date and receipt time of that content: a retry, or the same bytes delivered again
   under another name, finishes the claimed landing instead of starting another. Files landed before the
   index existed are indexed by the first landing of their feed (`index_feed`; a marker object then says
   the feed's index is complete).
2. The raw file: streamed to `landing/_uploads/<random>` (a multipart upload holding a few chunks in
   memory) and copied to its place only if nothing is there (a hard link on a local lake, a multipart copy
   completed with If-None-Match on S3, a generation or ETag precondition on GCS and Azure). Measured against
   the loopback S3 server: landing a 106 MB and a 322 MB file took +53 MB of memory both times, where
   `put(mode="create")` (one request with the whole body in memory) took +160 MB and +555 MB. The same
   bytes already there are an earlier attempt's; different bytes are refused (`LandingConflict`).
3. The manifest, last: a file without a manifest is not landed, and readers only follow manifests.

An interrupted upload can leave an object under `landing/_uploads/`, which no reader looks at; a lifecycle
rule on that prefix (a day is plenty) clears them, with the incomplete multipart uploads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError

from dagster_project.lib.checksums import CHUNK, FileDigest, digest_file
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import ParsedName

LANDING = "landing"
MANIFEST_SUFFIX = ".manifest.json"
UPLOADS = f"{LANDING}/_uploads"
_INDEX = "_sha256"
_INDEXED_MARKER = "_indexed"
# Left in a landing partition whose files retention removed (`lib/retention.py`): bronze is not rebuilt from it.
EXPIRED_MARKER = "_expired.json"  # the feed's index covers every manifest written before it existed
# Parts of a streamed upload: object stores want at least 5 MiB; four in flight bound the memory it takes.
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 4

_NOT_FOUND = (FileNotFoundError, NotFoundError)


class ChecksumMismatch(ValueError):
    """The content's CRC32 differs from the one the file name declares (a corrupt or partial transfer)."""


class LandingExpired(RuntimeError):
    """The partition's landed files were removed by retention: bronze cannot be rebuilt from landing."""


class LandingConflict(FileExistsError):
    """Other bytes are already landed (or being landed) under this name: landing is immutable."""


@dataclass(frozen=True)
class Manifest:
    feed: str
    file_name: str
    business_date: str
    sequence: int
    size: int
    crc32: str
    sha256: str
    schema_version: int
    source: str  # the intake that delivered it, e.g. "sftp"
    source_uri: str  # where it was taken from (no credentials)
    received_at: str  # ISO 8601 UTC
    landed_path: str  # relative to the lake root (manifests written before URIs: an absolute local path)
    # Erasures that rewrote the file, oldest first: each names the erasure request and the checksum of the
    # bytes it replaced (`lib/erase.py`). Landing is immutable except for this.
    redactions: list[dict[str, object]] = field(default_factory=list)

    @property
    def sha256s(self) -> set[str]:
        """Every content this landing has held: its bytes now, and those an erasure rewrote."""
        return {self.sha256, *(str(r["sha256_before"]) for r in self.redactions)}

    def to_json(self) -> bytes:
        fields = asdict(self)
        if not self.redactions:  # a file no erasure touched has the manifest it always had
            del fields["redactions"]
        return json.dumps(fields, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class LandResult:
    manifest: Manifest
    status: str  # "landed" | "already_landed" | "duplicate_content"
    duplicate_of: str | None = None


def partition_prefix(feed: str, business_date: str) -> str:
    """Lake-relative folder of one feed's files for one business date."""
    return f"{LANDING}/{feed}/business_date={business_date}"


def landed_key(lake: Lake, manifest: Manifest) -> str:
    """Lake-relative key of a manifest's file. An absolute path (older manifests) is accepted when it is
    inside this lake; one outside it is refused rather than read from wherever the lake used to be."""
    path = manifest.landed_path
    if "://" not in path and not os.path.isabs(path):
        lake.uri(path)  # refuses `..` and other non-relative forms
        return path
    candidates = [(lake.root, path)]
    if lake.is_local and "://" not in path:  # the old settings resolved symbolic links, Lake.parse does not
        candidates.append((os.path.realpath(lake.root), os.path.realpath(path)))
    for root, candidate in candidates:
        if candidate.startswith(root + "/"):
            return candidate[len(root) + 1 :]
    expected = f"{partition_prefix(manifest.feed, manifest.business_date)}/{manifest.file_name}"
    raise ValueError(
        f"{manifest.file_name}: its manifest records landed_path {path!r}, outside the lake {lake.root!r} "
        f"(a lake moved or restored from a copy): the file belongs at {expected!r} in this lake; rewrite "
        "landed_path to that lake-relative path"
    )


def verify_crc32(parsed: ParsedName, staged: Path) -> FileDigest:
    """Digest of the staged file, after checking it against the CRC32 the file name declares."""
    digest = digest_file(staged)
    if digest.crc32 != parsed.crc32:
        raise ChecksumMismatch(
            f"{parsed.file_name}: CRC32 of the content is {digest.crc32}, the file name declares {parsed.crc32}"
        )
    return digest


def find_by_sha256(lake: Lake, feed: str, sha256: str) -> Manifest | None:
    """The landed file of `feed` with this content, if one has landed (one read of the content index)."""
    claimed = _read_manifest(lake, _index_key(feed, sha256))
    if claimed is None:
        return None
    landed = _read_manifest(lake, landed_key(lake, claimed) + MANIFEST_SUFFIX)
    return landed if landed is not None and sha256 in landed.sha256s else None


def land_file(
    lake: Lake,
    parsed: ParsedName,
    staged: Path,
    *,
    source: str,
    source_uri: str,
    received_at: dt.datetime,
) -> LandResult:
    """Land a downloaded file after checking its CRC32, then delete the staged copy; idempotent on content.

    Raises ChecksumMismatch (nothing written, the staged file kept for quarantine) or LandingConflict."""
    digest = verify_crc32(parsed, staged)
    feed = parsed.source.name
    _ensure_index(lake, feed)
    ours = Manifest(
        feed=feed,
        file_name=parsed.file_name,
        business_date=parsed.business_date,
        sequence=parsed.sequence,
        size=digest.size,
        crc32=digest.crc32,
        sha256=digest.sha256,
        schema_version=parsed.source.schema_version,
        source=source,
        source_uri=source_uri,
        received_at=received_at.astimezone(dt.UTC).isoformat(),
        landed_path=f"{partition_prefix(feed, parsed.business_date)}/{parsed.file_name}",
    )
    index_key = _index_key(feed, digest.sha256)
    claimed_now = _put_if_absent(lake, index_key, ours.to_json())
    claimed = ours if claimed_now else _read_manifest(lake, index_key)
    if claimed is None:  # the claim cannot vanish once written; a store that loses it is not usable
        raise RuntimeError(f"{index_key}: written and then not found in the lake {lake.root}")
    key = landed_key(lake, claimed)
    manifest_key = key + MANIFEST_SUFFIX
    try:
        landed = _read_manifest(lake, manifest_key)
        # Landed by this call: not landed when it looked, landed when it returns (a concurrent delivery of
        # the same file may have written the manifest meanwhile; for each of them the file landed now).
        landed_now = landed is None
        if landed is None:
            _put_file(lake, key, staged, digest)
            landed = claimed if _write_manifest(lake, manifest_key, claimed) else _read_manifest(lake, manifest_key)
        if landed is None or digest.sha256 not in landed.sha256s:  # an erased file delivered again: landed
            raise _conflict(key)
    except LandingConflict:
        if claimed_now:  # this content did not land: leave no claim pointing at another file's place
            obstore.delete(lake.store, index_key)
        raise
    staged.unlink(missing_ok=True)
    if landed.file_name != parsed.file_name:
        return LandResult(landed, "duplicate_content", duplicate_of=landed.file_name)
    if landed_now:
        return LandResult(landed, "landed")
    return LandResult(landed, "already_landed", duplicate_of=landed.file_name)


def landed_files(lake: Lake, feed: str, business_date: str) -> list[Manifest]:
    """Every file landed for one partition (those with a manifest), in sequence order. Raises LandingExpired
    when retention removed them: a rebuild from what is left would empty the bronze partition."""
    paths = [
        meta["path"]
        for batch in obstore.list(lake.store, partition_prefix(feed, business_date) + "/")
        for meta in batch
    ]
    if any(path.endswith("/" + EXPIRED_MARKER) for path in paths):
        raise LandingExpired(
            f"{feed} {business_date}: retention removed this partition's landed files "
            f"({partition_prefix(feed, business_date)}/{EXPIRED_MARKER}); its bronze partition is kept as it is "
            "and cannot be rebuilt from landing"
        )
    manifests = [_read_manifest(lake, path) for path in paths if path.endswith(MANIFEST_SUFFIX)]
    return sorted((m for m in manifests if m is not None), key=lambda m: (m.sequence, m.file_name))


def all_landed_files(lake: Lake, feed: str) -> Iterator[Manifest]:
    """Every file landed for `feed`, whatever its date (one listing of the feed's folder)."""
    for batch in obstore.list(lake.store, f"{LANDING}/{feed}/"):
        for meta in batch:
            if meta["path"].endswith(MANIFEST_SUFFIX) and "/business_date=" in meta["path"]:
                manifest = _read_manifest(lake, meta["path"])
                if manifest is not None:
                    yield manifest


def rewrite_landed(lake: Lake, manifest: Manifest, redacted: Path, *, request_id: str, records: int) -> Manifest:
    """Replace a landed file's bytes with `redacted` (the file less an erased subject's records), and its
    manifest with one that records the redaction: the request, how many records, the checksum before. The
    only write that replaces landed bytes; the content index then finds the file by both checksums."""
    digest = digest_file(redacted)
    key = landed_key(lake, manifest)
    upload = f"{UPLOADS}/{uuid.uuid4().hex}"
    with redacted.open("rb") as fh:
        obstore.put(lake.store, upload, fh, chunk_size=UPLOAD_CHUNK_BYTES, max_concurrency=UPLOAD_CONCURRENCY)
    try:
        obstore.copy(lake.store, upload, key, overwrite=True)
    finally:
        obstore.delete(lake.store, upload)
    redaction = {
        "request_id": request_id,
        "records": records,
        "sha256_before": manifest.sha256,
        "size_before": manifest.size,
    }
    rewritten = replace(
        manifest,
        size=digest.size,
        crc32=digest.crc32,
        sha256=digest.sha256,
        landed_path=key,
        redactions=[*manifest.redactions, redaction],
    )
    obstore.put(lake.store, key + MANIFEST_SUFFIX, rewritten.to_json())
    _put_if_absent(lake, _index_key(manifest.feed, digest.sha256), rewritten.to_json())
    return rewritten


def index_feed(lake: Lake, feed: str) -> int:
    """Add every landed file of `feed` to the content index (for landings older than the index); returns
    how many entries were added. Idempotent, and safe beside landings in progress."""
    added = 0
    for manifest in all_landed_files(lake, feed):
        added += _put_if_absent(lake, _index_key(feed, manifest.sha256), manifest.to_json())
    _put_if_absent(lake, f"{LANDING}/{feed}/{_INDEX}/{_INDEXED_MARKER}", b"")
    return added


# -- reading landed bytes -----------------------------------------------------------------------------------


@contextmanager
def local_copy(lake: Lake, key: str, *, sha256: str | None = None, scratch: Path | None = None) -> Iterator[Path]:
    """A local file holding the object `key`: the file itself on a local lake; on an object store, a
    temporary copy streamed in chunks (deleted on exit).

    With `sha256`, the bytes are checked against it before the path is given (ValueError naming the key and
    both digests otherwise): on an object store while the copy is written, on a local lake by one read of
    the file first. A caller that reads every byte anyway can check them there instead and pass no digest."""

    def check(actual: str) -> None:
        if sha256 is not None and actual != sha256:
            raise ValueError(
                f"{key}: the landed bytes changed since the file landed: they hash to sha256 {actual}, its "
                f"manifest records {sha256}"
            )

    if lake.is_local:
        path = Path(lake.uri(key))
        if sha256 is not None:
            check(digest_file(path).sha256)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="medallion-landed-", dir=scratch) as tmp:
        path = Path(tmp) / key.rsplit("/", 1)[-1]
        digest = hashlib.sha256() if sha256 is not None else None
        with path.open("wb") as out:
            for chunk in obstore.get(lake.store, key).stream(min_chunk_size=CHUNK):
                if digest is not None:
                    digest.update(chunk)
                out.write(chunk)
        if digest is not None:
            check(digest.hexdigest())
        yield path


def open_object(lake: Lake, key: str) -> BinaryIO:
    """The object `key` as a binary file read sequentially: a local file, or one streamed GET."""
    if lake.is_local:
        return open(lake.uri(key), "rb")  # noqa: SIM115 - the caller closes it
    chunks = iter(obstore.get(lake.store, key).stream(min_chunk_size=CHUNK))
    return io.BufferedReader(_ChunkReader(chunks), buffer_size=CHUNK)


class _ChunkReader(io.RawIOBase):
    """A raw binary stream over an iterator of byte chunks (an object store's streamed response)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk).cast("B")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


# -- internals ----------------------------------------------------------------------------------------------


_indexed: set[tuple[str, str]] = set()  # (lake root, feed) whose index is known complete in this process


def _index_key(feed: str, sha256: str) -> str:
    return f"{LANDING}/{feed}/{_INDEX}/{sha256}.json"


def _ensure_index(lake: Lake, feed: str) -> None:
    """Before the first landing of a feed in a lake (or in a lake landed before the index existed), index
    what is there; afterwards one marker object says so."""
    if (lake.root, feed) in _indexed:
        return
    try:
        obstore.head(lake.store, f"{LANDING}/{feed}/{_INDEX}/{_INDEXED_MARKER}")
    except _NOT_FOUND:
        index_feed(lake, feed)
    _indexed.add((lake.root, feed))


def _put_if_absent(lake: Lake, key: str, data: bytes) -> bool:
    """Write a small object unless one exists; True when this call wrote it."""
    try:
        obstore.put(lake.store, key, data, mode="create")
    except AlreadyExistsError:
        return False
    return True


def _write_manifest(lake: Lake, key: str, manifest: Manifest) -> bool:
    return _put_if_absent(lake, key, manifest.to_json())


def _read_manifest(lake: Lake, key: str) -> Manifest | None:
    try:
        return Manifest.from_json(bytes(obstore.get(lake.store, key).bytes()))
    except _NOT_FOUND:
        return None


def _put_file(lake: Lake, key: str, staged: Path, digest: FileDigest) -> None:
    """Put the staged file at `key` unless an object is there; an object already there must hold these bytes."""
    if not _exists(lake, key):
        upload = f"{UPLOADS}/{uuid.uuid4().hex}"
        with staged.open("rb") as fh:
            obstore.put(lake.store, upload, fh, chunk_size=UPLOAD_CHUNK_BYTES, max_concurrency=UPLOAD_CONCURRENCY)
        try:
            obstore.copy(lake.store, upload, key, overwrite=False)
            return
        except AlreadyExistsError:
            pass  # another attempt put it there first: compare below
        finally:
            obstore.delete(lake.store, upload)
    if not _holds(lake, key, digest):
        raise _conflict(key)


def _conflict(key: str) -> LandingConflict:
    return LandingConflict(f"{key.rsplit('/', 1)[-1]}: already landed with different content; landing is immutable")


def _exists(lake: Lake, key: str) -> bool:
    try:
        obstore.head(lake.store, key)
    except _NOT_FOUND:
        return False
    return True


def _holds(lake: Lake, key: str, digest: FileDigest) -> bool:
    """Whether the object at `key` has exactly these bytes (size first, then a streamed sha256)."""
    if obstore.head(lake.store, key)["size"] != digest.size:
        return False
    sha = hashlib.sha256()
    for chunk in obstore.get(lake.store, key).stream(min_chunk_size=CHUNK):
        sha.update(chunk)
    return sha.hexdigest() == digest.sha256
