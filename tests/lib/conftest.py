"""Fixtures for the pure-library tests: partner files landed the way intake lands them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.landing import LandResult, land_file
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from tests.lib.customer_files import RECEIVED_AT


@pytest.fixture
def landing_lake(tmp_path: Path) -> Lake:
    """The lake files are landed in: a local folder here; tests/lib/intake/test_landing.py adds an S3 bucket."""
    return Lake.parse(str(tmp_path / "lake"))


@pytest.fixture
def land(tmp_path: Path, landing_lake: Lake) -> Callable[..., LandResult]:
    """Write bytes (or text) under their contract name in a staging dir and land them."""
    staging = tmp_path / "staging"
    staging.mkdir()

    def _land(content: str | bytes, *, business_date: str = "2025-11-05", sequence: int = 1) -> LandResult:
        data = content.encode("utf-8") if isinstance(content, str) else content
        name = CUSTOMERS.files.file_name(business_date, sequence, crc32_hex(data))
        staged = staging / name
        staged.write_bytes(data)
        return land_file(
            landing_lake,
            parse_file_name(name),
            staged,
            source="sftp",
            source_uri=f"sftp://partner.example/inbox/{name}",
            received_at=RECEIVED_AT,
        )

    return _land
