"""Fixtures for the deployment files: the repository root, the Helm chart, a scratch PostgreSQL database."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The PostgreSQL the build machines run (trust auth); tests create their own database in it.
POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"
POSTGRES_ADMIN_DB = "test"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def postgres_database() -> Iterator[dict[str, str]]:
    """A fresh database `medallion_it_<random>`, dropped afterwards.

    Fails (never skips) when PostgreSQL is down: a deployment test that silently did not run
    would let a broken production instance config through.
    """
    import psycopg2
    from psycopg2 import sql

    try:
        admin = psycopg2.connect(
            host=POSTGRES_HOST,
            port=POSTGRES_PORT,
            user=POSTGRES_USER,
            dbname=POSTGRES_ADMIN_DB,
            connect_timeout=5,
        )
    except psycopg2.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required on {POSTGRES_HOST}:{POSTGRES_PORT} (user {POSTGRES_USER}); "
            f"start it with `pg_ctlcluster --skip-systemctl-redirect <version> main start`. ({exc})"
        )
    admin.autocommit = True
    name = f"medallion_it_{secrets.token_hex(6)}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield {
            "host": POSTGRES_HOST,
            "port": str(POSTGRES_PORT),
            "user": POSTGRES_USER,
            "db": name,
        }
    finally:
        with admin.cursor() as cur:
            # FORCE: the instance under test may still hold pooled connections.
            cur.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.close()
