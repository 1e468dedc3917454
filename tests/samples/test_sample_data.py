"""The sample-data generator is deterministic and tells the truth about the files it writes."""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest

from dagster_project.lib.checksums import digest_file
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.samples.partner_files import GeneratedFile, write_customer_files

DAYS = [dt.date(2025, 11, 5) + dt.timedelta(days=i) for i in range(4)]
COLUMNS = 9


def _generate(out: Path, seed: int = 7) -> list[GeneratedFile]:
    return write_customer_files(out, DAYS, customers=80, changes_per_day=40, seed=seed)


def _broken_columns(record: list[str]) -> list[str]:
    """The columns of one customers record that break the contract, judged without the contract code."""
    (customer_id, email, _first, _last, country, signup, value, status, updated) = record
    broken = []
    if not re.fullmatch(r"[0-9]+", customer_id, re.ASCII) or int(customer_id) < 1:
        broken.append("customer_id")
    if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[A-Za-z]{2,}", email):
        broken.append("email")
    if country and not re.fullmatch(r"[A-Z]{2}", country):
        broken.append("country_code")
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", signup, re.ASCII):
            raise ValueError(signup)
        dt.date.fromisoformat(signup)
    except ValueError:
        broken.append("signup_date")
    try:
        if value and (Decimal(value) < 0 or Decimal(value).as_tuple().exponent < -2):
            broken.append("lifetime_value")
    except InvalidOperation:
        broken.append("lifetime_value")
    if status not in ("active", "inactive", "closed"):
        broken.append("status")
    try:
        dt.datetime.fromisoformat(updated.replace("Z", "+00:00"))
    except ValueError:
        broken.append("updated_at")
    return broken


def _independent_count(path: Path) -> tuple[int, int, Counter[str]]:
    """(good, bad, broken columns) of a generated file, read with the csv module."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        header, *records = list(csv.reader(fh))
    assert len(header) == COLUMNS
    good, bad, broken = 0, 0, Counter[str]()
    for record in records:
        if len(record) != COLUMNS:
            bad += 1
            broken["malformed CSV line"] += 1
            continue
        columns = _broken_columns(record)
        if columns:
            bad += 1
            broken.update(columns)
        else:
            good += 1
    return good, bad, broken


def test_same_seed_writes_the_same_files(tmp_path: Path) -> None:
    first, second = _generate(tmp_path / "a"), _generate(tmp_path / "b")
    assert [f.path.name for f in first] == [f.path.name for f in second]
    assert [f.path.read_bytes() for f in first] == [f.path.read_bytes() for f in second]
    assert [(f.good, f.bad, f.reasons) for f in first] == [(f.good, f.bad, f.reasons) for f in second]


def test_another_seed_writes_other_content(tmp_path: Path) -> None:
    first, other = _generate(tmp_path / "a", seed=7), _generate(tmp_path / "b", seed=8)
    assert [f.path.read_bytes() for f in first] != [f.path.read_bytes() for f in other]


def test_reported_truth_matches_an_independent_count(tmp_path: Path) -> None:
    for generated in _generate(tmp_path):
        good, bad, broken = _independent_count(generated.path)
        assert (generated.good, generated.bad) == (good, bad), generated.path.name
        assert generated.records == good + bad
        assert Counter(r.split(":")[0] for r in generated.reasons) == broken, generated.path.name


def test_every_file_has_defects_and_the_second_a_malformed_line(tmp_path: Path) -> None:
    files = _generate(tmp_path)
    assert [f.bad for f in files] == [4, 5, 4, 4]
    assert [f.reasons.count("malformed CSV line: too many columns") for f in files] == [0, 1, 0, 0]


def test_file_names_follow_the_contract_and_declare_the_content_crc(tmp_path: Path) -> None:
    for seq, generated in enumerate(_generate(tmp_path), start=1):
        parsed = parse_file_name(generated.path.name)
        assert (parsed.business_date, parsed.sequence) == (generated.business_date, seq)
        assert parsed.crc32 == digest_file(generated.path).crc32


def test_first_file_has_a_bom_and_odd_days_use_crlf(tmp_path: Path) -> None:
    files = _generate(tmp_path)
    data = [f.path.read_bytes() for f in files]
    assert [d.startswith(b"\xef\xbb\xbf") for d in data] == [True, False, False, False]
    assert [d.endswith(b"\r\n") for d in data] == [False, True, False, True]


def test_first_day_holds_the_whole_population_plus_a_second_change(tmp_path: Path) -> None:
    first = _generate(tmp_path)[0]
    with first.path.open(newline="", encoding="utf-8-sig") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 81
    assert Counter(r["customer_id"] for r in records)["1"] == 2


def test_the_embedded_newline_record_is_one_record(tmp_path: Path) -> None:
    for generated in _generate(tmp_path):
        with generated.path.open(newline="", encoding="utf-8-sig") as fh:
            records = list(csv.DictReader(fh))
        assert records[1]["last_name"] == "Smith,\nJr."


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_truth_holds_for_other_seeds(tmp_path: Path, seed: int) -> None:
    for generated in _generate(tmp_path, seed=seed):
        good, bad, _ = _independent_count(generated.path)
        assert (generated.good, generated.bad) == (good, bad)


def test_consent_files_load_as_their_truth_through_the_bronze_engine(tmp_path: Path) -> None:
    """A feed added by declaration only: its files go through the same engine as every other feed."""
    from deltalake import DeltaTable

    from dagster_project.lib.bronze.engine import load_partition
    from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
    from dagster_project.lib.intake.landing import land_file, landed_files
    from dagster_project.lib.lake import Lake
    from dagster_project.lib.sources.registry import CONSENTS
    from dagster_project.samples.partner_files import write_consent_files

    [generated] = write_consent_files(tmp_path / "out", DAYS[:1], changes_per_day=25)
    landing = Lake.parse(str(tmp_path / "lake"))
    parsed = parse_file_name(generated.path.name)
    land_file(
        landing, parsed, generated.path, source="sftp", source_uri="sftp://x", received_at=dt.datetime.now(dt.UTC)
    )
    manifests = landed_files(landing, "consents", generated.business_date)
    reader = PartnerFilesReader(CONSENTS, manifests, generated.business_date, lake=landing)

    load = load_partition(CONSENTS, reader, lake=landing, run_id="r")

    assert (load.received, load.loaded, load.quarantined) == (generated.records, generated.good, generated.bad)
    assert list(load.reasons) == generated.reasons
    assert DeltaTable(landing.table("bronze", "consents")).to_pyarrow_table().num_rows == generated.good
