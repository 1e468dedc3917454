"""The demo path end to end: SFTP -> landing -> bronze -> silver -> gold on a real Dagster instance, with the lake
on local disk and on S3 (a real S3 API on loopback)."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.definitions import defs as load_defs
from dagster_project.demo import DemoSummary, run_demo
from dagster_project.lib.sources.registry import SOURCES

pytestmark = [pytest.mark.slow, pytest.mark.sftp]

# One demo run per lake, each with its tests on one worker, the two on different workers: they are the
# longest fixtures of the suite.
DEMO_LAKES = [
    pytest.param("local", marks=pytest.mark.xdist_group("demo-local")),
    pytest.param("s3", marks=[pytest.mark.s3, pytest.mark.xdist_group("demo-s3")]),
]

VOLATILE = {"_ingested_at", "_run_id"}


@pytest.fixture(scope="module", params=DEMO_LAKES)
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    # Module-scoped per lake: one demo run serves the tests below; they restore what they change.
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("demo") / "data"
    lake = str(data / "lake")
    if request.param == "s3":
        import boto3

        endpoint = request.getfixturevalue("s3_endpoint")
        credentials = {"AWS_ACCESS_KEY_ID": "medallion-test", "AWS_SECRET_ACCESS_KEY": "medallion-test-secret"}
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", **{k.lower(): v for k, v in credentials.items()}
        ).create_bucket(Bucket="demo-lake")
        for name, value in {**credentials, "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        lake = "s3://demo-lake/lake"
    for name, value in {
        "MEDALLION_DATA_DIR": str(data),
        "MEDALLION_LAKE_ROOT": lake,
        "DAGSTER_HOME": str(data / "dagster"),
        "MEDALLION_SFTP_PORT": "0",
    }.items():
        mp.setenv(name, value)
    mp.delenv("MEDALLION_PII_HMAC_KEY", raising=False)
    try:
        summary = run_demo(days=3)
        # The tests below start dbt from this process: it needs the PII key the demo made for itself.
        mp.setenv("MEDALLION_PII_HMAC_KEY", (data / "secrets" / "pii_hmac_key").read_text().strip())
        yield summary
    finally:
        mp.undo()


def _query(sql: str) -> list[tuple]:
    """A query over every layer of the lake, read in place as the platform reads it."""
    lake = settings.lake()
    with lake.connect() as con:
        lake.attach(con)
        return con.execute(sql).fetchall()


def _lake_rows(layer: str, table: str) -> list[dict]:
    lake = settings.lake()
    with lake.connect() as con:
        lake.attach(con)
        cursor = con.execute(f"select * from {layer}.{table}")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _snapshot(rows: list[dict] | list[tuple]) -> list:
    if rows and isinstance(rows[0], dict):
        return sorted(tuple((k, v) for k, v in sorted(r.items()) if k not in VOLATILE) for r in rows)
    return sorted(rows)


def _state() -> dict[str, list]:
    return {
        "bronze": _snapshot(_lake_rows("bronze", "customers")),
        "quarantine": _snapshot(_lake_rows("quarantine", "customers")),
        "silver": _snapshot(_query("select * from silver.stg_acme__customers")),
        "gold": _snapshot(
            _query(
                "select customer_sk, customer_id, email_token, status, valid_from, valid_to, is_current "
                "from gold.dim_customers"
            )
        ),
        "metrics": _snapshot(_query("select * from gold.fct_customer_daily_metrics")),
    }


def _expected(demo: DemoSummary, source: str) -> list:
    prefix = SOURCES[source].files.file_prefix
    return [f for f in demo.expected if f.path.name.startswith(prefix)]


def test_demo_lands_every_row_once_and_refines_it(demo: DemoSummary, monkeypatch: pytest.MonkeyPatch):
    assert demo.failed_runs == []
    for source in ("customers", "consents"):
        expected = _expected(demo, source)
        assert len(expected) == 3, source
        assert demo.bronze_rows[source] == sum(f.good for f in expected), source
        assert demo.quarantined_rows[source] == sum(f.bad for f in expected), source
    assert sum(demo.quarantine_reasons.values()) >= sum(f.bad for f in demo.expected)
    # The shop's Standard Webhooks events: every delivery acknowledged, each message once in bronze.
    assert demo.shop_webhook_answers == {200: 3 * 13}
    assert demo.bronze_rows["shop_events"] == 3 * 12
    # The two files the inbox must refuse never reached landing.
    assert len(demo.remote_quarantine) == 2
    # Every gate of every layer passed; the one failed check is the wrong-CRC file's intake check.
    gates = {(asset, check): passed for asset, check, passed in demo.gates if check.startswith("gx_")}
    assert gates[("bronze/customers", "gx_bronze_gate")]
    assert gates[("silver/stg_acme__customers", "gx_silver_gate")]
    assert gates[("gold/dim_customers", "gx_gold_gate")]

    bronze = _lake_rows("bronze", "customers")
    customers = {r["customer_id"] for r in bronze}
    assert demo.lake_rows["silver.stg_acme__customers"] == len(customers)
    [(current,)] = _query("select count(*) from gold.dim_customers where is_current")
    assert current == len(customers)
    # Compute is in memory: no DuckDB database file exists anywhere the platform writes.
    assert [p for p in settings.data_dir().rglob("*") if p.suffix in (".duckdb", ".wal")] == []
    # Raw PII stays in bronze: no email address appears anywhere in silver or gold.
    emails = {r["email"] for r in bronze}
    for schema, table in _query(
        "select table_schema, table_name from information_schema.tables where table_schema in ('silver', 'gold')"
    ):
        for row in _query(f'select * from "{schema}"."{table}"'):
            assert not emails & {v for v in row if isinstance(v, str)}, f"{schema}.{table}"


def test_backfilling_a_partition_the_demo_built_changes_nothing(demo: DemoSummary):
    defs = load_defs()
    before = _state()
    day = _expected(demo, "customers")[1].business_date
    with dg.DagsterInstance.get() as instance:
        job = defs.resolve_implicit_global_asset_job_def()
        # A backfill rebuilds bronze from landing, then everything downstream of it: the second time this
        # partition is built (the demo built it first), and it must give exactly what the first gave.
        selection = (
            dg.AssetSelection.assets(dg.AssetKey(["bronze", "customers"]), dg.AssetKey(["quarantine", "customers"]))
            .downstream()
            .resolve(defs.resolve_asset_graph())
        )
        result = job.execute_in_process(
            instance=instance, partition_key=day, asset_selection=list(selection), raise_on_error=False
        )
        assert result.success
    assert _state() == before


def test_a_failed_bronze_gate_stops_silver_and_gold_in_the_run_and_in_automation(
    demo: DemoSummary, monkeypatch: pytest.MonkeyPatch
):
    defs = load_defs()
    graph = defs.resolve_asset_graph()
    bronze_key = dg.AssetKey(["bronze", "customers"])
    silver_key = dg.AssetKey(["silver", "stg_acme__customer_versions"])  # bronze's direct child
    day = _expected(demo, "customers")[-1].business_date
    refined_before = {k: v for k, v in _state().items() if k not in ("bronze", "quarantine")}

    import dagster_project.lib.bronze.engine as bronze_engine  # the one bronze engine every source runs

    real_load = bronze_engine.load_partition

    def losing_a_row(*args, **kwargs):
        # A writer bug: the partition is committed one row short of what the contract let through.
        result = real_load(*args, **kwargs)
        lake = settings.lake()
        DeltaTable(lake.table("bronze", "customers"), storage_options=lake.delta_options()).delete(
            f"business_date = '{day}' AND _source_row = 1"
        )
        return result

    job = defs.resolve_implicit_global_asset_job_def()
    downstream = dg.AssetSelection.assets(bronze_key).required_multi_asset_neighbors().downstream().resolve(graph)
    with dg.DagsterInstance.get() as instance:
        baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        monkeypatch.setattr(bronze_engine, "load_partition", losing_a_row)
        broken = job.execute_in_process(
            instance=instance, partition_key=day, asset_selection=list(downstream), raise_on_error=False
        )
        gate = next(e for e in broken.get_asset_check_evaluations() if e.check_name == "gx_bronze_gate")
        assert not gate.passed
        assert "expect_table_row_count_to_equal: observed" in gate.description
        assert "dbt_silver_daily" not in {e.step_key for e in broken.get_step_success_events()}
        assert {k: v for k, v in _state().items() if k not in ("bronze", "quarantine")} == refined_before

        # Automation holds silver back while the gate is failed...
        held = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
        assert day not in held.get_requested_partitions(silver_key)

        # ...and lets it go once the partition is rebuilt correctly and the gate passes.
        monkeypatch.setattr(bronze_engine, "load_partition", real_load)
        bronze_only = dg.AssetSelection.assets(bronze_key, dg.AssetKey(["quarantine", "customers"])).resolve(graph)
        healed = job.execute_in_process(instance=instance, partition_key=day, asset_selection=list(bronze_only))
        assert all(e.passed for e in healed.get_asset_check_evaluations())
        released = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=held.cursor)
        assert day in released.get_requested_partitions(silver_key)


def _stored_objects() -> dict[str, bytes]:
    """Every file the platform wrote under the data folder, and every object of the lake when it is on S3; the
    SFTP server's folder and the demo's generated samples are the partner's side, not the platform's."""
    import obstore

    data = settings.data_dir()
    partner = (settings.sftp_root().parent, data / "samples")
    found = {
        str(p): p.read_bytes()
        for p in data.rglob("*")
        if p.is_file() and not any(p.is_relative_to(side) for side in partner)
    }
    lake = settings.lake()
    if not lake.is_local:
        for batch in obstore.list(lake.store):
            for meta in batch:
                found[lake.uri(meta["path"])] = bytes(obstore.get(lake.store, meta["path"]).bytes())
    return found


def _mentions(name: str, data: bytes, needles: list[bytes], customer_ids: set[int]) -> list[str]:
    """Where an identifier occurs in a stored file: its bytes (gzip opened), and every value of a Parquet
    file decoded (compressed pages hide raw bytes), a customer_id column compared as a number."""
    import gzip
    import io
    import json

    import pyarrow.parquet as pq

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    hits = [f"{name}: {n.decode()}" for n in needles if n in data.lower()]
    if data[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(data))
        for column in table.column_names:
            values = table.column(column).to_pylist()
            text = json.dumps(values, default=str).lower().encode()
            hits += [f"{name} column {column}: {n.decode()}" for n in needles if n in text]
            if column.endswith("customer_id"):
                hits += [f"{name} column {column}: customer {c}" for c in customer_ids & set(values)]
    return hits


def test_erased_customers_leave_no_byte_behind_and_everyone_else_stays(demo: DemoSummary, capsys):
    """Runs last in the module: it erases two customers of the demo's lake with `medallion erase`."""
    from dagster_project.cli import main as cli
    from dagster_project.lib.masking import pii_token

    key = settings.pii_hmac_key().encode()
    bronze = _lake_rows("bronze", "customers")
    by_id: dict[int, set[str]] = {}
    for row in bronze:
        by_id.setdefault(row["customer_id"], set()).add(row["email"].strip().lower())
    with_orders = {c for (c,) in _query("select distinct customer_id from bronze.orders where customer_id is not null")}
    # One with orders erased by id; one whose records all carry one address, erased by that address.
    by_id_only = min(set(by_id) & with_orders)
    by_email = min(c for c in set(by_id) & with_orders if len(by_id[c]) == 1 and c != by_id_only)
    erased = [by_id_only, by_email]
    emails = by_id[by_id_only] | by_id[by_email]
    needles = [e.encode() for e in emails] + [pii_token(e, key).encode() for e in emails]
    before = {r["customer_id"] for r in _lake_rows("silver", "stg_acme__customers")}
    assert [h for n, d in _stored_objects().items() for h in _mentions(n, d, needles, set(erased))], "nothing to find"

    assert cli(["erase", "--customer-id", str(by_id_only), "--email", next(iter(by_id[by_email]))]) == 0
    receipt = capsys.readouterr().out
    assert "forget list" in receipt and not any(e in receipt for e in emails)
    assert json.loads(receipt[receipt.index("\n{") :])["subjects"] == 2  # the two this request added

    # The id is searched as a number only for the customer erased by id: an address names no order.
    hits = [h for n, d in _stored_objects().items() for h in _mentions(n, d, needles, {by_id_only})]
    assert hits == []
    others = before - set(erased)
    assert {r["customer_id"] for r in _lake_rows("bronze", "customers")} == others
    assert {r["customer_id"] for r in _lake_rows("silver", "stg_acme__customers")} == others
    [(current,)] = _query("select count(*) from gold.dim_customers where is_current")
    assert current == len(others)
