"""What a hostile or broken sender can do to the real receiver (uvicorn on loopback, raw sockets and real HTTP
clients): huge or countless headers, heads and bodies that never finish, signed events the inbox cannot hold,
an inbox that reads but cannot write. Each test waits for the receiver's own answer, never for a clock; socket
timeouts only stop a regression from hanging the suite."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from dagster_project.lib.intake.inbox import migrate
from dagster_project.lib.intake.signatures import sign_standard, sign_stripe
from dagster_project.services.http_server import ServerLimits
from dagster_project.services.loopback import serve_in_thread
from dagster_project.services.webhook_receiver import create_app
from tests.postgres import POSTGRES_URL, postgres_schema

STRIPE_SECRET = "whsec_limits_test"
SHOP_SECRET = "whsec_" + base64.b64encode(b"limits-test-standard-webhooks-k").decode()  # 31 bytes: one `=`
HEAD_LIMIT = 8 * 1024
SAFETY = 60.0  # only ever reached by a regression: every wait below ends on the receiver's answer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'inbox.sqlite'}"
        migrate(url)
        yield url
        return
    with postgres_schema("test_limits") as url:
        migrate(url)
        yield url


def _app(inbox_url: str, **overrides) -> Starlette:
    options = {
        "inbox_url": inbox_url,
        "secrets": {"stripe": [STRIPE_SECRET], "shop": [SHOP_SECRET.rstrip("=")]},  # unpadded, as stores keep it
        "schemes": {"stripe": "stripe", "shop": "standard"},
        "max_body_bytes": 64 * 1024,
        "tolerance_seconds": 300,
        "max_header_count": 50,
    } | overrides
    return create_app(**options)


@pytest.fixture
def server(inbox_url: str) -> Iterator[tuple[str, Starlette]]:
    app = _app(inbox_url)
    with serve_in_thread(app, name="webhook-receiver", limits=ServerLimits(max_header_bytes=HEAD_LIMIT)) as base_url:
        yield base_url, app
    app.state.inbox.dispose()


@pytest.fixture
def impatient_server(tmp_path: Path) -> Iterator[tuple[str, Starlette]]:
    """A receiver that gives heads and bodies half a second: what a slow sender meets, without waiting long."""
    url = f"sqlite:///{tmp_path / 'impatient.sqlite'}"
    migrate(url)
    app = _app(url, body_timeout_seconds=0.5)
    limits = ServerLimits(max_header_bytes=HEAD_LIMIT, header_timeout_seconds=0.5)
    with serve_in_thread(app, name="webhook-receiver", limits=limits) as base_url:
        yield base_url, app
    app.state.inbox.dispose()


def _address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(base_url: str) -> socket.socket:
    sock = socket.create_connection(_address(base_url), timeout=SAFETY)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response the server sends before it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def _stripe_event(event_id: str, **fields) -> bytes:
    event = {"id": event_id, "type": "charge.succeeded", "created": 1_762_300_800, "data": {"object": {}}} | fields
    return json.dumps(event).encode()


def _stripe_headers(body: bytes) -> dict[str, str]:
    return {"Stripe-Signature": sign_stripe(body, STRIPE_SECRET, int(time.time())), "Content-Type": "application/json"}


# --- request heads ----------------------------------------------------------------------------------------


def test_a_huge_header_is_refused_431_before_it_is_read_and_health_stays_answered(server: tuple[str, Starlette]):
    base_url, app = server
    refused: list[tuple[int, dict, int]] = []

    def attack() -> None:
        sock = _connect(base_url)
        sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        sent = 0
        try:
            while sent < 32 * 1024 * 1024:  # the 32 MB header of the report, never finished
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # the receiver closed the connection: it stopped reading long before the end
            pass
        status, body = _read_response(sock)
        refused.append((status, body, sent))
        sock.close()

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for thread in attackers:
        thread.start()
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        health = [client.get("/healthz").status_code for _ in range(20)]
    for thread in attackers:
        thread.join(SAFETY)
    assert health == [200] * 20
    assert [(status, body) for status, body, _ in refused] == [(431, {"error": "headers_too_large"})] * 4
    assert all(sent < 32 * 1024 * 1024 for _, _, sent in refused)
    body = _stripe_event("evt_after")
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        assert client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body)).status_code == 200


def test_too_many_header_fields_are_refused_431(server: tuple[str, Starlette]):
    base_url, app = server
    body = _stripe_event("evt_1")
    headers = _stripe_headers(body) | {f"X-Field-{i}": "1" for i in range(80)}  # 80 small fields: under the size
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        response = client.post("/webhooks/stripe", content=body, headers=headers)
        assert (response.status_code, response.json()) == (431, {"error": "too_many_headers"})
        assert client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body)).status_code == 200
    assert app.state.inbox.count() == 1


def test_a_head_that_never_finishes_is_answered_408_and_disconnected(impatient_server: tuple[str, Starlette]):
    base_url, _ = impatient_server
    sock = _connect(base_url)
    sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # and then nothing, ever
    assert _read_response(sock) == (408, {"error": "header_timeout"})
    sock.close()
    silent = _connect(base_url)  # connects and never sends a byte
    assert silent.recv(1) == b""  # closed by the receiver
    silent.close()


def test_a_body_that_never_finishes_is_answered_408_and_disconnected(impatient_server: tuple[str, Starlette]):
    base_url, app = impatient_server
    body = _stripe_event("evt_slow")
    head = "".join(f"{k}: {v}\r\n" for k, v in _stripe_headers(body).items())
    sock = _connect(base_url)
    sock.sendall(
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:10]
    )
    assert _read_response(sock) == (408, {"error": "body_timeout"})
    sock.close()
    assert app.state.inbox.count() == 0


# --- signed events the inbox cannot hold: refused with a reason, never 503, never failing others -----------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": "evt_\u0000nul"}, "invalid_event_id"),
        ({"type": "charge.\u0000succeeded"}, "invalid_event_type"),
    ],
)
def test_ids_and_types_no_database_can_hold_are_400(server: tuple[str, Starlette], fields: dict, reason: str):
    base_url, app = server
    body = _stripe_event("evt_1", **fields)
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        response = client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body))
    assert (response.status_code, response.json()) == (400, {"error": reason})
    lone_surrogate = body.replace(b"\\u0000", b"\\ud800")
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        response = client.post("/webhooks/stripe", content=lone_surrogate, headers=_stripe_headers(lone_surrogate))
    assert (response.status_code, response.json()) == (400, {"error": reason})
    assert app.state.inbox.count() == 0


def _post_shop(client: httpx.Client, message_id: str, timestamp: str) -> httpx.Response:
    body = json.dumps({"type": "order.created", "timestamp": timestamp, "data": {"id": "ord_1"}}).encode()
    headers = sign_standard(body, SHOP_SECRET, message_id, int(time.time()))
    return client.post("/webhooks/shop", content=body, headers=headers)


def test_standard_webhooks_timestamps_at_the_ends_of_the_calendar_are_stored_or_refused_never_503(
    server: tuple[str, Starlette],
):
    base_url, app = server
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        # no UTC time exists for these: a 400 naming the field, which a retry cannot change
        for message_id, stamp in [("msg_y1", "0001-01-01T00:00:00+01:00"), ("msg_y9999", "9999-12-31T23:59:59-01:00")]:
            response = _post_shop(client, message_id, stamp)
            assert (response.status_code, response.json()) == (400, {"error": "invalid_event_created"})
        # these exist: stored, and filed under the day they were received (no partition has their date)
        for message_id, stamp in [("msg_first", "0001-01-01T00:00:00+00:00"), ("msg_last", "9999-12-31T23:59:59Z")]:
            assert _post_shop(client, message_id, stamp).status_code == 200
    stored = {e.event_id: e for e in app.state.inbox.read_since(0)}
    assert set(stored) == {"msg_first", "msg_last"}
    assert stored["msg_first"].event_created_at == datetime(1, 1, 1, tzinfo=UTC)
    assert stored["msg_last"].event_created_at == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert all(e.redated and e.event_date == e.received_at.date() for e in stored.values())


def test_unusable_events_in_the_same_commit_batch_do_not_fail_the_valid_ones(server: tuple[str, Starlette]):
    base_url, app = server

    async def send_all() -> list[tuple[str, int]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=SAFETY) as client:

            async def post(event_id: str, body: bytes) -> tuple[str, int]:
                response = await client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body))
                return event_id, response.status_code

            bodies = [(f"evt_{i}", _stripe_event(f"evt_{i}")) for i in range(200)]
            bodies.insert(50, ("nul", _stripe_event("evt_\u0000a")))
            bodies.insert(150, ("surrogate", _stripe_event("x", type="\ud800")))
            return await asyncio.gather(*(post(event_id, body) for event_id, body in bodies))

    statuses = dict(asyncio.run(send_all()))
    assert (statuses.pop("nul"), statuses.pop("surrogate")) == (400, 400)
    assert set(statuses.values()) == {200}
    assert app.state.inbox.count() == 200


# --- readiness proves the inbox takes writes --------------------------------------------------------------


def test_readiness_fails_while_the_inbox_reads_but_refuses_writes(server: tuple[str, Starlette], inbox_url: str):
    base_url, app = server
    engine = app.state.inbox.engine

    @sa.event.listens_for(engine, "connect")
    def _read_only(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        if inbox_url.startswith("sqlite"):
            cursor.execute("PRAGMA query_only = ON")  # what a read-only file or mount gives a connection
        else:
            cursor.execute("SET default_transaction_read_only = on")  # a standby, or a read-only role
            dbapi_connection.commit()
        cursor.close()

    engine.dispose()
    body = _stripe_event("evt_1")
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body))
        assert (response.status_code, response.json()) == (503, {"error": "inbox_unavailable"})
        sa.event.remove(engine, "connect", _read_only)
        engine.dispose()
        assert client.get("/readyz").status_code == 200
        assert client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body)).status_code == 200


@pytest.mark.postgres
def test_a_postgres_lock_held_elsewhere_gives_quick_503s_not_hanging_requests(tmp_path: Path):
    schema = f"test_limits_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    migrate(url)
    app = _app(url)
    try:
        with serve_in_thread(app, name="webhook-receiver") as base_url:
            with admin.connect() as holder:
                holding = holder.begin()
                holder.exec_driver_sql(f'LOCK TABLE "{schema}".webhook_events IN ACCESS EXCLUSIVE MODE')
                body = _stripe_event("evt_locked")
                with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
                    response = client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body))
                    assert (response.status_code, response.json()) == (503, {"error": "inbox_unavailable"})
                    assert response.headers["retry-after"]
                    assert client.get("/readyz").status_code == 503
                    assert holding.is_active  # both answers came while the lock was still held
                    holding.rollback()
                    assert (
                        client.post("/webhooks/stripe", content=body, headers=_stripe_headers(body)).status_code == 200
                    )
                    assert client.get("/readyz").status_code == 200
    finally:
        app.state.inbox.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def test_an_unpadded_standard_webhooks_secret_is_accepted_at_start_up(server: tuple[str, Starlette]):
    base_url, app = server  # the fixture's shop secret has its `=` stripped
    with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
        assert _post_shop(client, "msg_1", "2025-11-05T10:00:00Z").status_code == 200
    assert [e.event_id for e in app.state.inbox.read_since(0)] == ["msg_1"]


# --- the receiver as `medallion webhooks serve` runs it -----------------------------------------------------


def _workers(pid: int) -> list[int]:
    """The worker processes uvicorn spawned under `pid` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [c for c in pids if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_serve_runs_worker_processes_on_one_port_with_the_limits_from_settings(tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'inbox.sqlite'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDALLION_WEBHOOK_")} | {
        "MEDALLION_DATA_DIR": str(tmp_path),
        "MEDALLION_WEBHOOK_INBOX_URL": url,
        "MEDALLION_WEBHOOK_SECRETS_STRIPE": STRIPE_SECRET,
        "MEDALLION_WEBHOOK_WORKERS": "2",
        "MEDALLION_WEBHOOK_MAX_HEADER_BYTES": "4096",
    }
    log = (tmp_path / "receiver.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_project.services.webhook_receiver", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
            while True:  # until both workers serve (each creates the SQLite inbox, one at a time)
                assert process.poll() is None, (tmp_path / "receiver.log").read_text()
                try:
                    if client.get("/readyz").status_code == 200 and len(_workers(process.pid)) >= 2:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            bodies = [_stripe_event(f"evt_{i}") for i in range(40)]
            statuses = {
                client.post("/webhooks/stripe", content=b, headers=_stripe_headers(b)).status_code for b in bodies
            }
            assert statuses == {200}
            big = client.post("/webhooks/stripe", content=b"{}", headers={"X-Padding": "a" * 5000})
            assert (big.status_code, big.json()) == (431, {"error": "headers_too_large"})
        assert len(_workers(process.pid)) == 2
        with httpx.Client(base_url=base_url, timeout=SAFETY) as client:
            assert client.get("/healthz").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(SAFETY)
        log.close()
    from dagster_project.lib.intake.inbox import Inbox

    with Inbox(url) as inbox:
        assert inbox.count() == 40
    lines = [json.loads(line) for line in (tmp_path / "receiver.log").read_text().splitlines() if line.startswith("{")]
    assert sum(1 for line in lines if line.get("msg") == "webhook delivery") == 40  # JSON lines from both workers
