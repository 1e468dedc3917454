"""Payments end to end: signed POSTs -> receiver -> inbox -> sensor -> bronze -> dbt silver/gold -> reconciliation,
and PSP payout files through the SFTP intake, on a real receiver, SFTP server, Dagster instance and dbt."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from dagster_project import settings
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.inbox import Inbox
from dagster_project.lib.sources.registry import PSP_PAYOUTS
from dagster_project.samples.payments import PaymentsSample, build_payments_sample, post_deliveries
from dagster_project.services.sftp_server import EmbeddedSftpServer

from .conftest import STRIPE_SECRET, Platform

DAYS = [dt.date(2025, 11, 3), dt.date(2025, 11, 4), dt.date(2025, 11, 5)]
SILVER_MODELS = ("stg_psp__payment_events", "stg_psp__charges", "stg_psp__payouts")
GOLD_MODELS = ("fct_payments", "fct_daily_revenue", "payout_reconciliation")


@pytest.fixture
def platform(parsed_manifest: Path, sftp_env: EmbeddedSftpServer, inbox_url: str, platform_env: Path) -> Platform:
    return Platform(platform_env / "lake", sftp_env.root)


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _ingest_webhooks(platform: Platform, sample: PaymentsSample) -> list[dg.ExecuteInProcessResult]:
    requests = platform.tick("webhook_events_sensor")
    assert [r.partition_key for r in requests] == [d.isoformat() for d in DAYS]
    return [platform.run(r) for r in requests]


def _take_payout_files(platform: Platform, sample: PaymentsSample) -> list[dg.ExecuteInProcessResult]:
    for f in sample.payout_files:
        (platform.sftp_inbox / f.path.name).write_bytes(f.path.read_bytes())
    requests = platform.tick("sftp_inbox_sensor") + platform.tick("sftp_inbox_sensor")
    return [platform.run(r) for r in requests]


@pytest.mark.sftp
@pytest.mark.slow
def test_signed_webhooks_and_payout_files_reconcile_in_gold(platform: Platform, receiver: str, tmp_path: Path):
    sample = build_payments_sample(tmp_path / "samples", DAYS, secret=STRIPE_SECRET)
    truth = sample.truth

    # Receiver: every genuine delivery (resends included) is acknowledged, the tampered one refused.
    assert post_deliveries(receiver, sample.deliveries) == truth.status_codes
    with Inbox(settings.webhook_inbox_url()) as inbox:
        assert inbox.count("stripe") == truth.stored_events

    # Sensor -> one bronze run per event date, each behind a passing bronze gate.
    runs = _ingest_webhooks(platform, sample)
    assert all(r.success for r in runs)
    for run, day in zip(runs, DAYS, strict=True):
        metadata = run.asset_materializations_for_node("bronze_payment_events")[0].metadata
        assert metadata["received"].value == truth.events_by_date[day.isoformat()]
        assert metadata["quarantined"].value == truth.quarantined_by_date.get(day.isoformat(), 0)
        checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
        assert checks == {"gx_bronze_gate": True, "inbox_conflicts": True}
    bronze = {r["event_id"]: r for r in platform.table("bronze", "payment_events")}
    assert len(bronze) == sum(truth.loaded_by_date.values())
    assert truth.tampered_event_id not in bronze
    assert bronze[truth.unknown_type_event_id]["is_known_type"] is False
    quarantined = [json.loads(r["_raw_record"])["id"] for r in platform.table("quarantine", "payment_events")]
    assert quarantined == truth.quarantined_event_ids

    # Replays change nothing: resent deliveries are duplicates, and the sensor has nothing new to load.
    assert platform.tick("webhook_events_sensor") == []
    assert post_deliveries(receiver, sample.deliveries) == truth.status_codes
    assert platform.tick("webhook_events_sensor") == []

    # Payout files through the SFTP intake.
    payout_runs = _take_payout_files(platform, sample)
    assert len(payout_runs) == len(sample.payout_files) and all(r.success for r in payout_runs)

    # dbt silver and gold for the payments models, with their dbt tests and the gold GX gate.
    from dagster_project.defs.transform.assets import model_key

    keys = [model_key(m) for m in (*SILVER_MODELS, *GOLD_MODELS)]
    job = platform.defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=platform.instance, asset_selection=keys, partition_key=DAYS[-1].isoformat()
    )

    assert result.success
    assert {m.asset_key for m in result.get_asset_materialization_events()} == set(keys)
    checks = result.get_asset_check_evaluations()
    assert all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    assert ("payout_reconciliation", "gx_gold_gate") in {(c.asset_key.path[-1], c.check_name) for c in checks}

    with settings.lake().connect() as con:
        settings.lake().attach(con)
        charges = {r["charge_id"]: r for r in _rows(con, "select * from silver.stg_psp__charges")}
        events = {r["event_id"]: r for r in _rows(con, "select * from silver.stg_psp__payment_events")}
        payouts = {r["payout_id"]: r for r in _rows(con, "select * from gold.payout_reconciliation")}
        payments = _rows(con, "select charge_id, payout_id from gold.fct_payments")
        revenue = _rows(con, "select * from gold.fct_daily_revenue")

    # Every charge ends in the state its event history says, whatever order the events arrived in.
    assert {
        k: (c["charge_status"], c["currency"], c["captured_minor"], c["refunded_minor"]) for k, c in charges.items()
    } == {k: (t.status, t.currency, t.captured_minor, t.refunded_minor) for k, t in truth.charges.items()}
    assert charges[truth.out_of_order_charge_id]["charge_status"] == "partially_refunded"
    assert truth.tampered_event_id not in events
    assert events[truth.unknown_type_event_id]["is_known_type"] is False
    assert "body" not in next(iter(events.values()))  # the raw body stays in bronze

    # One mismatched payout, by exactly the refund its file ignored; the others match.
    assert {k: p["status"] for k, p in payouts.items()} == {k: t.status for k, t in truth.payouts.items()}
    assert payouts[truth.mismatched_payout_id]["status"] == "mismatched"
    assert payouts[truth.mismatched_payout_id]["difference_minor"] == truth.mismatch_minor
    for payout_id, t in truth.payouts.items():
        assert (payouts[payout_id]["expected_net_minor"], payouts[payout_id]["net_paid_minor"]) == (
            t.expected_net_minor,
            t.net_paid_minor,
        )
    assert sum(1 for p in payments if p["payout_id"]) == sum(f.good for f in sample.payout_files)
    captured = sum(t.captured_minor for t in truth.charges.values())
    assert sum(r["captured_minor"] for r in revenue) == captured


@pytest.mark.sftp
def test_payout_files_go_through_the_sftp_intake_as_a_declared_feed(platform: Platform, tmp_path: Path):
    sample = build_payments_sample(tmp_path / "samples", DAYS, secret=STRIPE_SECRET)
    broken_text = (
        b"payout_id,charge_id,gross,fee,net,currency,settled_at\n"
        b"po_X1,ch_X1,10.00,0.39,9.61,EUR,2025-11-05T06:00:00Z\n"
        b"po_X1,ch_X2,10.005,0.39,9.61,usd,2025-11-05T06:00:00Z\n"
    )
    broken = tmp_path / PSP_PAYOUTS.files.file_name("2025-11-05", 3, crc32_hex(broken_text))
    broken.write_bytes(broken_text)
    (platform.sftp_inbox / broken.name).write_bytes(broken_text)

    runs = _take_payout_files(platform, sample)

    assert len(runs) == 3 and all(r.success for r in runs)
    for run in runs:
        assert run.dagster_run.job_name == "psp_payouts_intake"
        gates = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
        assert gates == {"files_accepted": True, "sequence_gaps": True, "gx_bronze_gate": True}
    bronze = platform.table("bronze", "psp_payouts")
    assert len(bronze) == sum(f.good for f in sample.payout_files) + 1
    line = next(r for r in bronze if r["charge_id"] == "ch_X1")
    assert (str(line["gross"]), str(line["net"]), line["currency"]) == ("10.00", "9.61", "EUR")
    assert line["settled_at"] == dt.datetime(2025, 11, 5, 6, tzinfo=dt.UTC)
    assert line["_source_file"] == broken.name and line["_source"] == "sftp"
    [rejected] = platform.table("quarantine", "psp_payouts")
    assert sorted(rejected["_reasons"]) == [
        "currency: does not match the expected pattern",
        "gross: not a decimal number with at most 2 decimal places",
    ]
    landed = sorted(p.name for p in (platform.lake / "landing" / "psp_payouts").rglob("*.csv"))
    assert landed == sorted([*(f.path.name for f in sample.payout_files), broken.name])
