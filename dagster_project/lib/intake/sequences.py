"""The sequence numbers of a partner feed: each names one delivery, for ever.

A partner numbers its files (`..._seq-00023_...`); a number is used once. A file that comes with a number
already delivered with other content is not a new delivery but a conflict (a re-export, a mix-up on the
partner's side): landing it beside the first would double the day, so intake quarantines it. The claim is
an object per number in the lake, written put-if-absent before the file lands:
`landing/<feed>/_sequence/<NNNNN>.json` holding the file name, its SHA-256 and its business date. The same
content again under its number (a re-send) is no conflict.

Feeds landed before the claims existed get them from their manifests on the first claim (`_ensure_claims`;
a marker object then says the claims are complete). Gaps (numbers skipped below the highest claimed) are
reported, not refused: a missing file may still come.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError

from dagster_project.lib.intake.landing import LANDING, MANIFEST_SUFFIX, Manifest
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import ParsedName

_SEQUENCE = "_sequence"
_COMPLETE = "_complete"  # the claims cover every file landed before they existed


@dataclass(frozen=True)
class Claim:
    sequence: int
    file_name: str
    sha256: str
    business_date: str


def _key(feed: str, sequence: int) -> str:
    return f"{LANDING}/{feed}/{_SEQUENCE}/{sequence:05d}.json"


def claim(lake: Lake, parsed: ParsedName, sha256: str) -> tuple[Claim, bool]:
    """Claim the file's sequence number for its content: the claim that holds the number, and whether this
    call wrote it. A claim with another SHA-256 means the number was delivered before with other content."""
    feed = parsed.source.name
    _ensure_claims(lake, feed)
    ours = Claim(parsed.sequence, parsed.file_name, sha256, parsed.business_date)
    if _put_if_absent(lake, _key(feed, parsed.sequence), json.dumps(ours.__dict__).encode()):
        return ours, True
    held = _read(lake, _key(feed, parsed.sequence))
    if held is None:  # a claim cannot vanish once written; a store that loses it is not usable
        raise RuntimeError(f"{_key(feed, parsed.sequence)}: written and then not found in the lake {lake.root}")
    return held, False


def release(lake: Lake, parsed: ParsedName) -> None:
    """Withdraw a claim this intake wrote for a file that then did not land."""
    obstore.delete(lake.store, _key(parsed.source.name, parsed.sequence))


def claimed(lake: Lake, feed: str) -> list[int]:
    """Every sequence number claimed in the feed, in order."""
    _ensure_claims(lake, feed)
    prefix = f"{LANDING}/{feed}/{_SEQUENCE}/"
    numbers = []
    for batch in obstore.list(lake.store, prefix):
        for meta in batch:
            stem = meta["path"][len(prefix) :].removesuffix(".json")
            if stem.isdigit():
                numbers.append(int(stem))
    return sorted(numbers)


def gaps(numbers: list[int]) -> list[int]:
    """Numbers missing between the lowest and the highest (a feed may start at any number)."""
    present = set(numbers)
    return [n for n in range(min(numbers), max(numbers)) if n not in present] if numbers else []


_complete: set[tuple[str, str]] = set()  # (lake root, feed) whose claims are known complete in this process


def _ensure_claims(lake: Lake, feed: str) -> None:
    if (lake.root, feed) in _complete:
        return
    marker = f"{LANDING}/{feed}/{_SEQUENCE}/{_COMPLETE}"
    try:
        obstore.head(lake.store, marker)
    except (FileNotFoundError, NotFoundError):
        for batch in obstore.list(lake.store, f"{LANDING}/{feed}/"):
            for meta in batch:
                if meta["path"].endswith(MANIFEST_SUFFIX) and "/business_date=" in meta["path"]:
                    m = Manifest.from_json(bytes(obstore.get(lake.store, meta["path"]).bytes()))
                    held = Claim(m.sequence, m.file_name, m.sha256, m.business_date)
                    _put_if_absent(lake, _key(feed, m.sequence), json.dumps(held.__dict__).encode())
        _put_if_absent(lake, marker, b"")
    _complete.add((lake.root, feed))


def _put_if_absent(lake: Lake, key: str, data: bytes) -> bool:
    try:
        obstore.put(lake.store, key, data, mode="create")
    except AlreadyExistsError:
        return False
    return True


def _read(lake: Lake, key: str) -> Claim | None:
    try:
        return Claim(**json.loads(bytes(obstore.get(lake.store, key).bytes())))
    except (FileNotFoundError, NotFoundError):
        return None
