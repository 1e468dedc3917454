"""The `medallion` command: run the platform locally, make sample data, serve the embedded services."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from dagster_project import settings


def _cmd_demo(args: argparse.Namespace) -> int:
    from dagster_project.demo import run_demo

    summary = run_demo(days=args.days)
    print(summary.render())
    return 1 if summary.failed_runs else 0


def _cmd_sample_data(args: argparse.Namespace) -> int:
    import json

    from dagster_project.defs.sftp.resources import SftpResource
    from dagster_project.demo import PSP, SHOP, demo_days, signing_secret, upload, write_sample_files
    from dagster_project.lib.sources.registry import CUSTOMERS, PSP_PAYOUTS
    from dagster_project.samples.payments import WEBHOOK_PATH as PSP_WEBHOOK_PATH
    from dagster_project.samples.payments import Delivery, build_payments_sample, post_deliveries
    from dagster_project.samples.shop_events import WEBHOOK_PATH as SHOP_WEBHOOK_PATH
    from dagster_project.samples.shop_events import build_shop_deliveries

    if args.days < 3:
        raise SystemExit("medallion sample-data: --days must be at least 3 (the payments sample spans three days)")
    end = dt.date.fromisoformat(args.end_date) if args.end_date else dt.date.today()
    out = Path(args.out) if args.out else settings.data_dir() / "samples"
    # The days `make demo` fills when run the same day: another batch for them is new data in known partitions.
    days = demo_days(args.days, today=end)
    sftp = SftpResource.from_settings(settings.sftp()) if args.upload else None
    waiting: list[str] = []
    if sftp is not None:
        with sftp.client() as client:
            waiting = [entry.name for entry in client.list_dir(sftp.layout().inbox)]
    first = next_sequences(waiting)
    batch = first[CUSTOMERS.name]
    tag = "" if batch == 1 else f"b{batch}_"  # the first batch is the demo's, ids and all
    print(f"sample batch {batch}: partner files numbered from {', '.join(f'{k} {v}' for k, v in first.items())}")
    good, bad = write_sample_files(out / "customers", days, seed=7 + batch - 1, first_sequences=first)
    for f in good:
        print(f"{f.path}  ({f.good} good, {f.bad} breaking the contract)")
    for path in bad:
        print(f"{path}  (the inbox must refuse it)")
    # The same signing secret as the receiver of `medallion dev`.
    payments = build_payments_sample(
        out / "payments",
        days[-3:],
        secret=signing_secret(PSP),
        batch=tag.rstrip("_"),
        first_sequence=first[PSP_PAYOUTS.name],
    )
    for f in payments.payout_files:
        print(f"{f.path}  (PSP payouts)")
    shop = build_shop_deliveries(days[-3:], secret=signing_secret(SHOP), seed=7 + batch - 1, batch=tag)

    def save(deliveries: list[Delivery], path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fh:
            for d in deliveries:
                record = {"event_id": d.event_id, "kind": d.kind, "headers": d.headers, "body": d.body.decode()}
                fh.write(json.dumps(record) + "\n")
        return path

    saved = save(payments.deliveries, out / "payments" / "webhook_deliveries.jsonl")
    print(f"{saved}  ({len(payments.deliveries)} signed PSP webhook deliveries, resends and one tampered included)")
    saved = save(shop, out / "shop" / "webhook_deliveries.jsonl")
    print(f"{saved}  ({len(shop)} signed shop webhook deliveries (Standard Webhooks), redeliveries included)")
    if sftp is not None:
        files = [f.path for f in good] + bad + [f.path for f in payments.payout_files]
        with sftp.client() as client:
            upload(client, files, sftp.layout().inbox)
        print(f"uploaded {len(files)} files to {sftp.uri(sftp.layout().inbox)}")
    if args.post:
        for deliveries, path in ((payments.deliveries, PSP_WEBHOOK_PATH), (shop, SHOP_WEBHOOK_PATH)):
            answers = post_deliveries(args.post, deliveries, path=path)
            print(
                f"posted {len(deliveries)} deliveries to {args.post.rstrip('/')}{path}: "
                + ", ".join(f"{n} x HTTP {code}" for code, n in answers.items())
            )
    return 0


def next_sequences(waiting: Sequence[str] = ()) -> dict[str, int]:
    """The first free sequence number of each partner feed: after every number claimed in the lake and every
    file of the feed `waiting` in the inbox. Files numbered from there are new deliveries: the same numbers
    again would be a resend of what landed (archived without landing) or, with other content, a conflict."""
    from dagster_project.lib.intake import sequences
    from dagster_project.lib.sources.naming import NamingError, parse_file_name
    from dagster_project.lib.sources.registry import partner_file_sources

    lake = settings.lake()
    used = {spec.name: list(sequences.claimed(lake, spec.name)) for spec in partner_file_sources()}
    for name in waiting:
        try:
            parsed = parse_file_name(name)
        except NamingError:
            continue
        used.setdefault(parsed.source.name, []).append(parsed.sequence)
    return {feed: max(numbers, default=0) + 1 for feed, numbers in used.items()}


def _cmd_catalog(args: argparse.Namespace) -> int:
    """A DuckDB file of views over the lake's Delta tables, for analysts and BI tools.

    No run ever opens it: runs compute in memory and read the lake itself, so a session holding this file
    (even read-write) cannot block or break one. The views resolve through DuckDB's delta extension, which
    a session must load first; the lines to do so are printed."""
    import duckdb

    from dagster_project.lib.lake import duckdb_extension_path

    lake = settings.lake()
    out = Path(args.out) if args.out else settings.data_dir() / "catalog.duckdb"
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.tmp")
    scratch.unlink(missing_ok=True)
    with duckdb.connect(str(scratch)) as con:
        views = lake.attach(con)
    scratch.replace(out)  # swapped in whole: a session opening it meanwhile sees the old catalog or the new
    print(f"{out}: {len(views)} views over {lake.root} ({', '.join(views)})")
    print("in a DuckDB session, first run:")
    for name in lake.duckdb_extensions:
        print(f"  LOAD '{duckdb_extension_path(name)}';")
    if not lake.is_local:
        print("  and create an S3/GCS/Azure secret (the views name the lake's URIs, not its credentials)")
    return 0


def _cmd_sftp_server(args: argparse.Namespace) -> int:
    from dagster_project.services.sftp_server import serve_forever

    s = settings.sftp()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(
        root=Path(args.root) if args.root else settings.sftp_root(),
        keys_dir=Path(args.keys_dir) if args.keys_dir else settings.sftp_keys_dir(),
        host=args.host or s.host,
        port=args.port if args.port is not None else s.port,
        username=s.username,
    )
    return 0


def _cmd_webhooks(args: argparse.Namespace) -> int:
    from dagster_project.services import webhook_receiver

    if args.action == "serve":
        webhook_receiver.serve(host=args.host, port=args.port)
    else:
        from dagster_project.lib.intake.inbox import migrate

        migrate(settings.webhook_inbox_url())
        print("webhook inbox schema is up to date")
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    """The Dagster UI with the daemon (sensors, automation), beside the embedded SFTP server and the
    webhook receiver.

    The children get the embedded platform's environment (DAGSTER_HOME, local secrets, the port the SFTP
    server bound) through `env=`; this process's own environment is left as it is.
    """
    from dagster_project.demo import embedded_environment
    from dagster_project.services.sftp_server import EmbeddedSftpServer
    from dagster_project.services.webhook_receiver import provider_schemes

    s = settings.sftp()
    port = s.port if args.sftp_port is None else args.sftp_port
    server = EmbeddedSftpServer(
        root=settings.sftp_root(), keys_dir=settings.sftp_keys_dir(), host=s.host, port=port, username=s.username
    ).start()
    print(f"embedded SFTP server on {server.host}:{server.port} (inbox: {settings.sftp_root() / s.inbox_dir})")
    env = settings.child_environment({**embedded_environment(), "MEDALLION_SFTP_PORT": str(server.port)})
    bin_dir = Path(sys.executable).parent
    # A parent started in the background may ignore SIGINT/SIGTERM; the children must not inherit that.
    receiver = subprocess.Popen(
        [str(bin_dir / "medallion"), "webhooks", "serve", "--host", args.host, "--port", str(args.webhooks_port)],
        preexec_fn=_default_signals,
        env=env,
    )
    providers = ", ".join(provider_schemes())
    print(f"webhook receiver on http://{args.host}:{args.webhooks_port}/webhooks/<provider> ({providers})")
    dagster = [str(bin_dir / "dagster"), "dev", "-h", args.host, "-p", str(args.port)]
    dagster += ["-w", str(settings.project_root() / "workspace.yaml")]
    process = subprocess.Popen(dagster, cwd=settings.project_root(), preexec_fn=_default_signals, env=env)

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)
        receiver.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        return process.wait()
    finally:
        receiver.terminate()
        receiver.wait(timeout=15)
        server.stop()


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _cmd_erase(args: argparse.Namespace) -> int:
    import json

    from dagster_project.defs.erasure.jobs import new_request_id, run_erase_job
    from dagster_project.demo import embedded_environment
    from dagster_project.lib.erasure import ErasureError, Subject, record_requests
    from dagster_project.lib.masking import validate_key

    try:
        subjects = [Subject("customer_id", c) for c in args.customer_id] + [Subject("email", e) for e in args.email]
    except ErasureError as exc:
        raise SystemExit(f"medallion erase: {exc}") from None
    if not subjects:
        raise SystemExit("medallion erase: name at least one subject with --customer-id or --email")
    # A deployment has its instance (DAGSTER_HOME) and key; the embedded platform makes its own, as `make demo`.
    embedded = {} if settings.is_configured("DAGSTER_HOME") else embedded_environment()
    try:
        key = validate_key((embedded.get(settings.PII_HMAC_KEY) or settings.pii_hmac_key()).encode())
    except ValueError as exc:
        raise SystemExit(f"medallion erase: {settings.PII_HMAC_KEY}: {exc}") from None
    request_id = args.request_id or new_request_id()
    forget = record_requests(
        settings.lake(), key, subjects, request_id=request_id, requested_at=dt.datetime.now(dt.UTC)
    )
    print(f"{request_id}: {len(subjects)} subject(s) in the forget list ({len(forget.hashes)} in all); erasing")
    if embedded:
        entry = "from dagster_project.defs.erasure.jobs import main; main()"
        done = subprocess.run(
            [sys.executable, "-c", entry, request_id],
            env=settings.child_environment(embedded),
            capture_output=True,
            text=True,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        receipt = json.loads(lines[-1]) if done.returncode == 0 and lines else None
        if receipt is None:
            sys.stderr.write(done.stderr[-4000:])
    else:
        receipt = run_erase_job(request_id)
    if receipt is None:
        print(f"{request_id}: the erase run failed; run `medallion erase` again to finish it (see the run in the UI)")
        return 1
    print(json.dumps(receipt, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medallion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole platform end to end on embedded defaults and print a summary")
    demo.add_argument("--days", type=int, default=5, help="days of partner files to generate (default 5)")
    demo.set_defaults(func=_cmd_demo)

    dev = sub.add_parser(
        "dev", help="start the Dagster UI and daemon, the embedded SFTP server and the webhook receiver"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    dev.add_argument("--webhooks-port", type=int, default=8000, help="webhook receiver port (default 8000)")
    dev.add_argument(
        "--sftp-port",
        type=int,
        help="embedded SFTP server port (default MEDALLION_SFTP_PORT, else 2222; 0 for any free port)",
    )
    dev.set_defaults(func=_cmd_dev)

    sample = sub.add_parser(
        "sample-data", help="write partner files, PSP payout files and signed webhooks (optionally deliver them)"
    )
    sample.add_argument("--days", type=int, default=5, help="days of partner files (default 5, at least 3)")
    sample.add_argument("--end-date", help="the day after the last business date (default today)")
    sample.add_argument("--out", help="output folder (default .data/samples)")
    sample.add_argument("--upload", action="store_true", help="upload the files to the configured SFTP inbox")
    sample.add_argument(
        "--post", metavar="URL", help="post the signed webhooks to a running receiver, e.g. http://127.0.0.1:8000"
    )
    sample.set_defaults(func=_cmd_sample_data)

    catalog = sub.add_parser("catalog", help="write a DuckDB file of views over the lake, for analysts and BI tools")
    catalog.add_argument("--out", help="the file to write (default .data/catalog.duckdb)")
    catalog.set_defaults(func=_cmd_catalog)

    erase = sub.add_parser(
        "erase", help="forget data subjects everywhere the platform writes (right to erasure), print a receipt"
    )
    erase.add_argument("--customer-id", action="append", default=[], help="a CRM customer id (repeatable)")
    erase.add_argument("--email", action="append", default=[], help="an e-mail address (repeatable)")
    erase.add_argument("--request-id", help="your reference for the request, e.g. a ticket id")
    erase.set_defaults(func=_cmd_erase)

    sftp = sub.add_parser("sftp-server", help="run the embedded SFTP server in the foreground")
    sftp.add_argument("--host")
    sftp.add_argument("--port", type=int)
    sftp.add_argument("--root", help="folder served (default .data/sftp/root)")
    sftp.add_argument("--keys-dir", help="host and client keys (default .data/sftp/keys)")
    sftp.set_defaults(func=_cmd_sftp_server)

    webhooks = sub.add_parser("webhooks", help="the webhook receiver")
    webhooks_sub = webhooks.add_subparsers(dest="action", required=True)
    serve = webhooks_sub.add_parser("serve", help="serve POST /webhooks/<provider>, /healthz, /readyz")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    webhooks_sub.add_parser("migrate", help="create or update the inbox schema")
    webhooks.set_defaults(func=_cmd_webhooks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
