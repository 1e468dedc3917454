"""Realistic partner files for the demo and the tests, with the dirt real partners send.

Deterministic for a seed. Each generated file comes with the truth about it (how many records are good
and how many break the contract, and why), so tests can check that nothing is lost or invented.
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.sources.registry import CONSENTS, CUSTOMERS
from dagster_project.lib.sources.spec import SourceSpec

FIRST_NAMES = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Linus",
    "José",
    "Zoë",
    "Anaïs",
    "Søren",
    "Björk",
    "Renée",
]
LAST_NAMES = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Torvalds",
    "O'Brien",
    "García",
    "Müller",
    "Okafor",
    "Nakamura",
]
DOMAINS = ["example.com", "mail.example.org", "acme.test", "post.example.net"]
COUNTRIES = ["DE", "FR", "NL", "GB", "US", "ES", "IT", "SE"]
STATUSES = ["active", "active", "active", "inactive", "closed"]


@dataclass
class GeneratedFile:
    path: Path
    business_date: str
    good: int
    bad: int
    reasons: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return self.good + self.bad


def _customer(rng: random.Random, customer_id: int, when: dt.datetime) -> dict[str, str]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore").decode().lower()
    local = local.replace("'", "").replace(" ", "")
    return {
        "customer_id": str(customer_id),
        "email": f"{local}{customer_id}@{rng.choice(DOMAINS)}",
        "first_name": first,
        "last_name": last,
        "country_code": rng.choice(COUNTRIES),
        "signup_date": (dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(600))).isoformat(),
        "lifetime_value": f"{rng.randrange(0, 500_000) / 100:.2f}",
        "status": rng.choice(STATUSES),
        "updated_at": when.isoformat().replace("+00:00", "Z"),
    }


def csv_line(values: list[str]) -> str:
    out = []
    for v in values:
        if any(ch in v for ch in ',"\r\n'):
            v = '"' + v.replace('"', '""') + '"'
        out.append(v)
    return ",".join(out)


# Each defect: (mutation, the reason the contract gives for it)
DEFECTS = [
    (lambda r: r.update(email="not-an-email"), "email: does not match the expected pattern"),
    (lambda r: r.update(email="n/a"), "email: does not match the expected pattern"),
    (lambda r: r.update(signup_date="2025-02-30"), "signup_date: not a calendar date (YYYY-MM-DD)"),
    (lambda r: r.update(lifetime_value="-12.50"), "lifetime_value: below the minimum 0"),
    (lambda r: r.update(status="deleted"), "status: not one of active, inactive, closed"),
    (lambda r: r.update(customer_id=""), "customer_id: required value missing"),
    (lambda r: r.update(updated_at="yesterday"), "updated_at: not an ISO 8601 timestamp"),
]


def write_customer_files(
    out_dir: Path,
    days: list[dt.date],
    *,
    customers: int = 500,
    changes_per_day: int = 80,
    seed: int = 7,
    spec: SourceSpec = CUSTOMERS,
    first_sequence: int = 1,
) -> list[GeneratedFile]:
    """One file per day: the full population on day one, then updates and new customers each day. The files
    are numbered from `first_sequence` on, one a day."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[GeneratedFile] = []
    next_id = 1
    for day_index, day in enumerate(days):
        base = dt.datetime.combine(day, dt.time(6, 0), tzinfo=dt.UTC)
        if day_index == 0:
            ids = list(range(1, customers + 1))
            next_id = customers + 1
        else:
            ids = rng.sample(range(1, next_id), min(changes_per_day, next_id - 1))
            new = max(1, changes_per_day // 4)
            ids += list(range(next_id, next_id + new))
            next_id += new
        rows = [_customer(rng, cid, base + dt.timedelta(seconds=i * 7)) for i, cid in enumerate(ids)]
        # A customer changed twice within the same export: both records land, silver keeps the later one.
        twice = dict(rows[0])
        twice["status"] = "inactive"
        twice["updated_at"] = (base + dt.timedelta(hours=3)).isoformat().replace("+00:00", "Z")
        rows.append(twice)
        # A quoted field with an embedded newline and a comma: one record, valid.
        rows[1]["last_name"] = "Smith,\nJr."
        reasons: list[str] = []
        for k, (mutate, reason) in enumerate(DEFECTS[day_index % 3 :][:4]):
            victim = rows[2 + k * max(1, (len(rows) - 3) // 4)]  # never the first two rows or the last
            mutate(victim)
            reasons.append(reason)
        header = list(spec.column_names)
        lines = [csv_line(header)] + [csv_line([r[c] for c in header]) for r in rows]
        bad = len(reasons)
        if day_index == 1:
            lines.append("999999,too,many,columns,in,this,line,for,the,feed,contract")
            reasons.append("malformed CSV line: too many columns")
            bad += 1
        newline = "\r\n" if day_index % 2 else "\n"
        text = newline.join(lines) + newline
        data = ("\ufeff" + text if day_index == 0 else text).encode("utf-8")
        name = spec.files.file_name(day.isoformat(), first_sequence + day_index, crc32_hex(data))
        path = out_dir / name
        path.write_bytes(data)
        good = len(rows) - len(DEFECTS[day_index % 3 :][:4])
        files.append(GeneratedFile(path, day.isoformat(), good=good, bad=bad, reasons=reasons))
    return files


def write_consent_files(
    out_dir: Path,
    days: list[dt.date],
    *,
    customers: int = 500,
    changes_per_day: int = 40,
    seed: int = 7,
    first_sequence: int = 1,
) -> list[GeneratedFile]:
    """One consent export per day (the `consents` feed): customers granting or withdrawing a channel, plus one
    record per file that breaks the contract (an unknown channel)."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[GeneratedFile] = []
    header = list(CONSENTS.column_names)
    channels = CONSENTS.column("channel").allowed or ()
    for day_index, day in enumerate(days):
        base = dt.datetime.combine(day, dt.time(5, 0), tzinfo=dt.UTC)
        rows = [
            {
                "customer_id": str(rng.randint(1, customers)),
                "channel": rng.choice(channels),
                "consent_status": rng.choice(("granted", "granted", "withdrawn")),
                "changed_at": (base + dt.timedelta(seconds=i * 11)).isoformat().replace("+00:00", "Z"),
            }
            for i in range(changes_per_day)
        ]
        rows[-1]["channel"] = "fax"
        lines = [csv_line(header)] + [csv_line([r[c] for c in header]) for r in rows]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        path = out_dir / CONSENTS.files.file_name(day.isoformat(), first_sequence + day_index, crc32_hex(data))
        path.write_bytes(data)
        files.append(
            GeneratedFile(
                path,
                day.isoformat(),
                good=len(rows) - 1,
                bad=1,
                reasons=["channel: not one of email, sms, phone, post"],
            )
        )
    return files
