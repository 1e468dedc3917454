"""Bronze hop throughput and memory against DuckDB's own CSV -> Parquet COPY of the same file.

Each measurement runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import duckdb

from benchmarks.process import run_measured
from dagster_project.lib.sources.registry import CUSTOMERS

# About 100 bytes a row, with 0.1% of rows breaking one rule each, like a real export.
GENERATE_SQL = """
COPY (
  SELECT
    i AS customer_id,
    CASE WHEN i % 1000 = 1 THEN 'not-an-email' ELSE 'customer' || i || '@mail.example.com' END AS email,
    'First' || (i % 977) AS first_name,
    'Last' || (i % 1013) AS last_name,
    ['DE', 'FR', 'NL', 'GB', 'US'][1 + i % 5] AS country_code,
    CASE WHEN i % 1000 = 2 THEN '2025-02-30'
         ELSE strftime(DATE '2024-01-01' + INTERVAL (i % 600) DAY, '%Y-%m-%d') END AS signup_date,
    CASE WHEN i % 1000 = 3 THEN '-1.00' ELSE printf('%.2f', (i % 500000) / 100.0) END AS lifetime_value,
    ['active', 'active', 'inactive', 'closed'][1 + i % 4] AS status,
    strftime(TIMESTAMP '2025-11-05 00:00:00' + INTERVAL (i % 86400) SECOND, '%Y-%m-%dT%H:%M:%SZ') AS updated_at
  FROM range(1, ? + 1) AS t(i)
) TO '{path}' (HEADER, DELIMITER ',')
"""


def generate(path: Path, rows: int) -> Path:
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    con = duckdb.connect()
    # COPY's target cannot be a parameter; the path is ours, not user input.
    con.execute(GENERATE_SQL.format(path=str(tmp).replace("'", "''")), [rows])
    tmp.rename(path)
    return path


def _cpu_seconds() -> float:
    """CPU time of this process, every thread (user + system): steadier than wall time on a shared machine."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_child(kind: str, csv_path: Path, work: Path) -> dict:
    """One measurement in a fresh process; its peak RSS is that process's own (`benchmarks.process`)."""
    log = work / f"{kind}.out"
    with log.open("w") as out:
        usage = run_measured(
            [sys.executable, "-m", "benchmarks.bronze", "--child", kind, str(csv_path), str(work)], stdout=out
        )
    output = log.read_text()
    if usage.returncode != 0:
        raise RuntimeError(f"the {kind} measurement failed ({usage.returncode}):\n{output[-3000:]}")
    [figures] = [line for line in output.splitlines() if line.startswith("{")][-1:]
    return {**json.loads(figures), "peak_rss_mb": usage.peak_rss_mib}


def _child(kind: str, csv_path: Path, work: Path) -> None:
    import datetime as dt
    import shutil

    from dagster_project.lib.bronze.engine import load_partition
    from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
    from dagster_project.lib.checksums import digest_file
    from dagster_project.lib.intake.landing import Manifest
    from dagster_project.lib.lake import Lake

    extra: dict[str, float] = {}
    start = time.perf_counter()
    cpu = _cpu_seconds()
    if kind == "duckdb_copy":
        con = duckdb.connect()
        target = work / "copy.parquet"
        con.execute(
            f"COPY (SELECT * FROM read_csv(?)) TO '{str(target).replace(chr(39), chr(39) * 2)}' (FORMAT parquet)",
            [str(csv_path)],
        )
        rows = con.execute("SELECT count(*) FROM read_parquet(?)", [str(target)]).fetchone()[0]
    else:
        shutil.rmtree(work / "lake", ignore_errors=True)
        digest = digest_file(csv_path)  # landing's work, not the bronze hop's
        # What the hop imports on first use (pandera brings pandas) is paid once per process whatever the
        # size, like the COPY's `import duckdb`: measured and reported on its own, not in the throughput.
        start = time.perf_counter()
        import deltalake  # noqa: F401
        import polars  # noqa: F401

        from dagster_project.lib.bronze.contract import pandera_schema

        pandera_schema(CUSTOMERS)
        extra["import_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        cpu = _cpu_seconds()
        manifest = Manifest(
            feed="customers",
            file_name=csv_path.name,
            business_date="2025-11-05",
            sequence=1,
            size=digest.size,
            crc32=digest.crc32,
            sha256=digest.sha256,
            schema_version=CUSTOMERS.schema_version,
            source="bench",
            source_uri=str(csv_path),
            received_at=dt.datetime.now(dt.UTC).isoformat(),
            landed_path=csv_path.name,  # relative to the "lake" that is the file's folder
        )
        result = load_partition(
            CUSTOMERS,
            PartnerFilesReader(CUSTOMERS, [manifest], "2025-11-05", lake=Lake.parse(str(csv_path.parent))),
            lake=Lake.parse(str(work / "lake")),
            run_id="bench",
        )
        rows = result.received
        extra.update(loaded=result.loaded, quarantined=result.quarantined)
    seconds = time.perf_counter() - start
    extra["cpu_seconds"] = _cpu_seconds() - cpu
    print(json.dumps({"kind": kind, "rows": rows, "seconds": seconds, **extra}))


def run(sizes: list[int], work: Path) -> list[dict]:
    results = []
    for rows in sizes:
        csv_path = generate(work / f"customers_{rows}.csv", rows)
        copy = _run_child("duckdb_copy", csv_path, work)
        hop = _run_child("bronze_hop", csv_path, work)
        results.append(
            {
                "rows": rows,
                "file_mb": csv_path.stat().st_size / 1e6,
                "copy_rows_per_s": copy["rows"] / copy["seconds"],
                "copy_peak_rss_mb": copy["peak_rss_mb"],
                "hop_rows_per_s": hop["rows"] / hop["seconds"],
                "hop_peak_rss_mb": hop["peak_rss_mb"],
                "hop_vs_copy": (hop["rows"] / hop["seconds"]) / (copy["rows"] / copy["seconds"]),
                "copy_cpu_s": copy["cpu_seconds"],
                "hop_cpu_s": hop["cpu_seconds"],
                "hop_import_s": hop["import_seconds"],
                "loaded": hop["loaded"],
                "quarantined": hop["quarantined"],
            }
        )
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sizes = [int(s) for s in sys.argv[1:]] or [1_000_000]
        for row in run(sizes, Path(".bench")):
            print(row)
