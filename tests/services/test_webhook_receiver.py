import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from dagster_project.lib.intake.inbox import InboundEvent, InboxUnavailable, UnstorableEvent, migrate, sha256_hex
from dagster_project.lib.intake.signatures import sign_standard, sign_stripe
from dagster_project.services.loopback import serve_in_thread
from dagster_project.services.webhook_receiver import (
    GroupCommitter,
    JsonLogFormatter,
    LoopTurnHandler,
    create_app,
    create_app_from_settings,
    provider_schemes,
)
from tests.postgres import postgres_schema

pytestmark = pytest.mark.anyio

STRIPE_SECRET = "whsec_stripe_current_secret"
STRIPE_OLD_SECRET = "whsec_stripe_previous_secret"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-receiver-key-32").decode()
MAX_BODY = 4096
TOLERANCE = 300
SCHEMES = {"stripe": "stripe", "shop": "standard"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty inbox per test: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'inbox.sqlite'}"
        migrate(url)
        yield url
        return
    with postgres_schema("test_receiver") as url:
        migrate(url)
        yield url


def _app(inbox_url: str, **overrides) -> Starlette:
    options = {
        "inbox_url": inbox_url,
        "secrets": {"stripe": [STRIPE_SECRET, STRIPE_OLD_SECRET], "shop": [STANDARD_SECRET]},
        "schemes": SCHEMES,
        "max_body_bytes": MAX_BODY,
        "tolerance_seconds": TOLERANCE,
    } | overrides
    return create_app(**options)


@pytest.fixture
async def app(inbox_url: str) -> AsyncIterator[Starlette]:
    app = _app(inbox_url)
    yield app
    app.state.inbox.dispose()


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as client:
        yield client


def stripe_body(event_id: str = "evt_1", **fields) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": "charge.succeeded",
        "created": 1_762_300_800,  # 2025-11-05T00:00:00Z
        "data": {"object": {"id": "ch_1", "amount": 2500, "currency": "eur", "customer": "cus_1"}},
    } | fields
    return json.dumps(event).encode()


def stripe_headers(body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"Stripe-Signature": sign_stripe(body, secret, stamp), "Content-Type": "application/json"}


async def post_stripe(client: httpx.AsyncClient, body: bytes, **kwargs) -> httpx.Response:
    return await client.post("/webhooks/stripe", content=body, headers=stripe_headers(body, **kwargs))


# --- accepted deliveries ----------------------------------------------------------------------------------


async def test_signed_stripe_event_is_stored_byte_for_byte(client: httpx.AsyncClient, app: Starlette):
    body = stripe_body() + b"\n"  # trailing bytes are part of what was signed and stored
    response = await client.post(
        "/webhooks/stripe",
        content=body,
        headers={**stripe_headers(body), "Authorization": "Bearer nope", "Cookie": "session=x"},
    )
    assert response.status_code == 200
    assert response.json() == {"status": "stored", "event_id": "evt_1", "duplicate": False}
    [stored] = app.state.inbox.read_since(0)
    assert (stored.provider, stored.event_id, stored.event_type) == ("stripe", "evt_1", "charge.succeeded")
    assert stored.body == body and stored.body_sha256 == sha256_hex(body)
    assert str(stored.event_date) == "2025-11-05"
    assert set(stored.headers) == {"content-type", "stripe-signature", "user-agent"}


async def test_signed_standard_webhook_is_stored_under_its_message_id(client: httpx.AsyncClient, app: Starlette):
    body = b'{"type":"invoice.paid","timestamp":"2025-11-04T23:30:00+00:00","data":{"id":"in_1"}}'
    headers = sign_standard(body, STANDARD_SECRET, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", int(time.time()))
    response = await client.post("/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 200, response.text
    [stored] = app.state.inbox.read_since(0)
    assert (stored.provider, stored.event_id, stored.event_type) == (
        "shop",
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "invoice.paid",
    )
    assert str(stored.event_date) == "2025-11-04"
    assert stored.body == body


async def test_rotated_secrets_accept_old_and_new(client: httpx.AsyncClient):
    new = await post_stripe(client, stripe_body("evt_new"), secret=STRIPE_SECRET)
    old = await post_stripe(client, stripe_body("evt_old"), secret=STRIPE_OLD_SECRET)
    assert (new.status_code, old.status_code) == (200, 200)


async def test_replayed_event_is_acknowledged_and_stored_once(client: httpx.AsyncClient, app: Starlette):
    body = stripe_body()
    first = await post_stripe(client, body)
    # a sender's retry re-signs the same bytes with a new timestamp
    second = await post_stripe(client, body, timestamp=int(time.time()) + 1)
    assert first.json()["status"] == "stored"
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "event_id": "evt_1", "duplicate": True}
    assert app.state.inbox.count() == 1


async def test_same_id_with_a_different_body_is_stored_once_and_recorded(client: httpx.AsyncClient, app: Starlette):
    original, altered = stripe_body(), stripe_body(type="charge.refunded")
    assert (await post_stripe(client, original)).status_code == 200
    response = await post_stripe(client, altered)
    assert response.status_code == 200
    assert response.json()["status"] == "conflict"
    [stored] = app.state.inbox.read_since(0)
    assert stored.body == original
    [conflict] = app.state.inbox.conflicts()
    assert (conflict.stored_sha256, conflict.received_sha256) == (sha256_hex(original), sha256_hex(altered))


# --- refused deliveries -----------------------------------------------------------------------------------


async def _assert_refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": reason}


async def test_wrong_secret_is_401(client: httpx.AsyncClient, app: Starlette):
    await _assert_refused(await post_stripe(client, stripe_body(), secret="whsec_other"), 401, "no_matching_signature")
    assert app.state.inbox.count() == 0


async def test_tampered_body_is_401(client: httpx.AsyncClient, app: Starlette):
    body = stripe_body()
    response = await client.post(
        "/webhooks/stripe", content=body.replace(b"2500", b"9999"), headers=stripe_headers(body)
    )
    await _assert_refused(response, 401, "no_matching_signature")
    assert app.state.inbox.count() == 0


async def test_reserialised_json_is_401(client: httpx.AsyncClient):
    body = stripe_body()
    reserialised = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert reserialised != body and json.loads(reserialised) == json.loads(body)
    response = await client.post("/webhooks/stripe", content=reserialised, headers=stripe_headers(body))
    await _assert_refused(response, 401, "no_matching_signature")


@pytest.mark.parametrize("skew", [-(TOLERANCE + 60), TOLERANCE + 60])
async def test_old_and_future_timestamps_are_401(client: httpx.AsyncClient, skew: int):
    response = await post_stripe(client, stripe_body(), timestamp=int(time.time()) + skew)
    await _assert_refused(response, 401, "timestamp_out_of_tolerance")


async def test_standard_old_timestamp_is_401(client: httpx.AsyncClient):
    body = b'{"type":"invoice.paid"}'
    headers = sign_standard(body, STANDARD_SECRET, "msg_1", int(time.time()) - 3600)
    await _assert_refused(
        await client.post("/webhooks/shop", content=body, headers=headers), 401, "timestamp_out_of_tolerance"
    )


async def test_missing_and_malformed_signature_headers_are_401(client: httpx.AsyncClient):
    body = stripe_body()
    await _assert_refused(await client.post("/webhooks/stripe", content=body), 401, "missing_header")
    response = await client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": "v1=abc"})
    await _assert_refused(response, 401, "malformed_header")
    response = await client.post("/webhooks/shop", content=body, headers={"webhook-id": "msg_1"})
    await _assert_refused(response, 401, "missing_header")


async def test_non_utf8_body_is_400_after_verification(client: httpx.AsyncClient):
    body = b'{"id":"evt_1","type":"charge.succeeded","created":1,"name":"Zo\xeb"}'
    await _assert_refused(await post_stripe(client, body), 400, "non_utf8")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"id": "evt_1", "type": ', "invalid_json"),
        (b"[" * 50_000 + b"]" * 50_000, "invalid_json"),  # nesting deep enough to exhaust recursion
        (b'["evt_1"]', "invalid_event"),
        (b'{"type":"charge.succeeded","created":1}', "missing_event_id"),
        (b'{"id":"","type":"charge.succeeded","created":1}', "missing_event_id"),
        (b'{"id":"evt_1","created":1}', "missing_event_type"),
        (b'{"id":"evt_1","type":"charge.succeeded"}', "invalid_event_created"),
        (b'{"id":"evt_1","type":"charge.succeeded","created":"yesterday"}', "invalid_event_created"),
        (b'{"id":"evt_1","type":"charge.succeeded","created":1e400}', "invalid_event_created"),
        (b'{"id":"evt_1","type":"charge.succeeded","created":99999999999999999999}', "invalid_event_created"),
        (('{"id":"' + "e" * 300 + '","type":"charge.succeeded","created":1}').encode(), "invalid_event_id"),
    ],
)
async def test_signed_but_unusable_bodies_are_400(client: httpx.AsyncClient, body: bytes, reason: str):
    response = await client.post("/webhooks/stripe", content=body, headers=stripe_headers(body))
    assert response.status_code in (400, 413), response.text
    if len(body) <= MAX_BODY:
        await _assert_refused(response, 400, reason)


async def test_deeply_nested_json_within_the_size_limit_is_400(inbox_url: str):
    body = b"[" * 100_000 + b"]" * 100_000
    app = _app(inbox_url, max_body_bytes=len(body))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        await _assert_refused(await post_stripe(client, body), 400, "invalid_json")
    app.state.inbox.dispose()


async def test_standard_body_without_type_is_400(client: httpx.AsyncClient):
    body = b'{"data":{}}'
    headers = sign_standard(body, STANDARD_SECRET, "msg_1", int(time.time()))
    await _assert_refused(await client.post("/webhooks/shop", content=body, headers=headers), 400, "missing_event_type")


async def test_unknown_provider_is_404(client: httpx.AsyncClient):
    await _assert_refused(await client.post("/webhooks/paypal", content=b"{}"), 404, "unknown_provider")


async def test_too_large_by_content_length_is_413(client: httpx.AsyncClient):
    body = stripe_body(padding="x" * MAX_BODY)
    await _assert_refused(await post_stripe(client, body), 413, "body_too_large")


async def test_too_large_streamed_body_is_413_and_reading_stops(client: httpx.AsyncClient):
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):  # 1 MB announced by no Content-Length (chunked)
            pulled += 1
            yield b"x" * 1024

    response = await client.post("/webhooks/stripe", content=chunks(), headers={"Stripe-Signature": "t=1,v1=ab"})
    await _assert_refused(response, 413, "body_too_large")
    assert pulled <= MAX_BODY // 1024 + 2


async def test_malformed_content_length_is_400(app: Starlette):
    # httpx always writes a correct Content-Length, so drive the ASGI app directly
    messages: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/stripe",
        "raw_path": b"/webhooks/stripe",
        "query_string": b"",
        "headers": [(b"content-length", b"12abc")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    assert messages[0]["status"] == 400
    assert json.loads(messages[1]["body"]) == {"error": "malformed_content_length"}


async def test_the_service_keeps_serving_after_bad_input(client: httpx.AsyncClient, app: Starlette):
    bad = [
        client.post("/webhooks/stripe", content=b"\xff\xfe garbage"),
        client.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "\x00\x01"}),
        post_stripe(client, b"\xff\xfe"),
        post_stripe(client, b"not json"),
        post_stripe(client, stripe_body(padding="x" * MAX_BODY)),
        client.post("/webhooks/../../etc/passwd", content=b"{}"),
        client.get("/webhooks/stripe"),
    ]
    for request in bad:
        assert (await request).status_code in (400, 401, 404, 405, 413)
    assert (await post_stripe(client, stripe_body("evt_after"))).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    assert [e.event_id for e in app.state.inbox.read_since(0)] == ["evt_after"]


# --- storage failures -------------------------------------------------------------------------------------


async def test_unwritable_inbox_is_503_and_not_ready(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    app = _app(f"sqlite:///{blocker / 'inbox.sqlite'}")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        response = await post_stripe(client, stripe_body())
        await _assert_refused(response, 503, "inbox_unavailable")
        assert response.headers["retry-after"]
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
    app.state.inbox.dispose()


async def test_dropped_table_is_503_then_recovers(client: httpx.AsyncClient, app: Starlette, inbox_url: str):
    assert (await client.get("/readyz")).status_code == 200
    with app.state.inbox.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE webhook_events")
    await _assert_refused(await post_stripe(client, stripe_body()), 503, "inbox_unavailable")
    assert (await client.get("/readyz")).status_code == 503
    migrate(inbox_url)  # the operator restores the schema; the sender's retry now succeeds
    assert (await post_stripe(client, stripe_body())).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_unreachable_postgres_is_503():
    app = _app("postgresql+psycopg2://postgres@127.0.0.1:1/test?connect_timeout=2")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        await _assert_refused(await post_stripe(client, stripe_body()), 503, "inbox_unavailable")
    app.state.inbox.dispose()


# --- group commit -----------------------------------------------------------------------------------------


async def test_concurrent_deliveries_share_commits_and_are_all_stored(app: Starlette, client: httpx.AsyncClient):
    batch_sizes: list[int] = []
    inbox = app.state.inbox
    store_many = inbox.store_many

    def recording_store_many(events):
        batch_sizes.append(len(events))
        return store_many(events)

    inbox.store_many = recording_store_many
    bodies = [stripe_body(f"evt_{i}") for i in range(60)] + [stripe_body("evt_0")] * 5
    responses = await asyncio.gather(*(post_stripe(client, body) for body in bodies))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["status"] for r in responses).count("duplicate") == 5
    assert inbox.count() == 60
    assert sum(batch_sizes) == len(bodies)
    assert max(batch_sizes) > 1


def _unstorable_id(inbox_url: str) -> str:
    # PostgreSQL text cannot hold NUL; no backend can encode a lone surrogate
    return "evt_\x00nul" if inbox_url.startswith("postgresql") else "evt_\ud800"


async def test_an_unstorable_event_does_not_fail_its_batch(app: Starlette, inbox_url: str):
    # straight to the committer, past the receiver's own checks: the inbox's isolation is what is tested
    committer = GroupCommitter(app.state.inbox)
    created = datetime(2025, 11, 5, tzinfo=UTC)
    good = [InboundEvent("stripe", f"evt_{i}", "charge.succeeded", created, b"{}") for i in range(200)]
    bad = [
        InboundEvent("stripe", _unstorable_id(inbox_url) + str(i), "charge.succeeded", created, b"{}") for i in (1, 2)
    ]
    events = [*good[:100], bad[0], *good[100:], bad[1]]
    results = await asyncio.gather(*(committer.store(e) for e in events), return_exceptions=True)
    await committer.close()
    outcomes = dict(zip((e.event_id for e in events), results, strict=True))
    assert all(outcomes[e.event_id] == "stored" for e in good)
    assert all(isinstance(outcomes[e.event_id], UnstorableEvent) for e in bad)
    assert app.state.inbox.count() == 200


async def test_an_unexpected_error_is_traced_to_its_own_delivery():
    class BrokenForOne:
        def __init__(self) -> None:
            self.stored: list[str] = []

        def store_many(self, events):
            if any(e.event_id == "evt_bad" for e in events):
                raise RuntimeError("a bug that only this event triggers")
            self.stored += [e.event_id for e in events]
            return ["stored"] * len(events)

    inbox = BrokenForOne()
    committer = GroupCommitter(inbox)  # type: ignore[arg-type]
    events = [
        InboundEvent("stripe", event_id, "t", datetime(2025, 11, 5, tzinfo=UTC), b"{}")
        for event_id in ["evt_1", "evt_bad", "evt_2", "evt_3"]
    ]
    results = await asyncio.gather(*(committer.store(e) for e in events), return_exceptions=True)
    await committer.close()
    assert results[0] == results[2] == results[3] == "stored"
    assert isinstance(results[1], RuntimeError)
    assert sorted(inbox.stored) == ["evt_1", "evt_2", "evt_3"]


async def test_an_inbox_failure_fails_the_whole_batch_at_once_without_retrying_each_event():
    class Down:
        calls = 0

        def store_many(self, events):
            Down.calls += 1
            raise InboxUnavailable("inbox unavailable (OperationalError)")

    committer = GroupCommitter(Down())  # type: ignore[arg-type]
    events = [InboundEvent("stripe", f"evt_{i}", "t", datetime(2025, 11, 5, tzinfo=UTC), b"{}") for i in range(20)]
    results = await asyncio.gather(*(committer.store(e) for e in events), return_exceptions=True)
    await committer.close()
    assert all(isinstance(r, InboxUnavailable) for r in results)
    assert Down.calls <= 2  # the first event alone, then everything that queued behind it


# --- observability ----------------------------------------------------------------------------------------


async def test_metrics_count_outcomes_and_rejections(client: httpx.AsyncClient):
    await post_stripe(client, stripe_body("evt_a"))
    await post_stripe(client, stripe_body("evt_a"))
    await post_stripe(client, stripe_body("evt_a", type="charge.refunded"))
    await post_stripe(client, stripe_body("evt_b"), secret="wrong")
    await client.post("/webhooks/nope", content=b"{}")
    await client.post("/webhooks/nope-again", content=b"{}")
    text = (await client.get("/metrics")).text
    assert 'medallion_webhook_events_total{provider="stripe",outcome="stored"} 1' in text
    assert 'medallion_webhook_events_total{provider="stripe",outcome="duplicate"} 1' in text
    assert 'medallion_webhook_events_total{provider="stripe",outcome="conflict"} 1' in text
    assert 'medallion_webhook_rejected_total{provider="stripe",reason="no_matching_signature"} 1' in text
    assert 'medallion_webhook_rejected_total{provider="unknown",reason="unknown_provider"} 2' in text
    assert 'medallion_webhook_request_duration_seconds_count{provider="stripe"} 4' in text
    assert "nope" not in text


async def test_logs_are_json_with_outcome_and_never_carry_payload_or_secrets(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
):
    marker = "4242424242424242"
    body = stripe_body("evt_logged", card=marker)
    caplog.set_level(logging.DEBUG)
    await post_stripe(client, body)
    await post_stripe(client, body, secret="whsec_wrong")
    await post_stripe(client, b'{"card":"' + marker.encode() + b'"')
    formatter = JsonLogFormatter()
    lines = [json.loads(formatter.format(record)) for record in caplog.records if record.name.startswith("medallion")]
    deliveries = [line for line in lines if line["msg"] == "webhook delivery"]
    assert [(d["event_id"], d["outcome"], d["status"]) for d in deliveries] == [
        ("evt_logged", "stored", 200),
        (None, "rejected", 401),
        (None, "rejected", 400),
    ]
    assert all(d["provider"] == "stripe" and d["latency_ms"] >= 0 for d in deliveries)
    everything = caplog.text + json.dumps(lines)
    for secret in (marker, STRIPE_SECRET, STRIPE_OLD_SECRET, STANDARD_SECRET, "v1="):
        assert secret not in everything


class _Writes:
    """A stream that records each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


async def test_info_lines_of_one_loop_turn_are_written_together_and_warnings_at_once():
    stream = _Writes()
    handler = LoopTurnHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("medallion.test_loop_turn")
    log.propagate, log.handlers[:] = False, [handler]
    log.setLevel(logging.INFO)

    for i in range(3):
        log.info("delivery %d", i)
    assert stream.writes == [], "info lines wait for the end of the loop's turn"
    await asyncio.sleep(0)
    assert stream.writes == ["delivery 0\ndelivery 1\ndelivery 2\n"]

    log.info("delivery 3")
    log.warning("inbox unavailable")
    assert stream.writes[1:] == ["delivery 3\ninbox unavailable\n"], "a warning is written at once, in order"

    await asyncio.to_thread(log.info, "from a thread")
    assert stream.writes[2:] == ["from a thread\n"], "outside the loop, at once"
    log.info("at shutdown")
    handler.flush()  # what logging.shutdown() does at exit
    assert stream.writes[3:] == ["at shutdown\n"]
    await asyncio.sleep(0)
    assert len(stream.writes) == 4, "nothing is written twice"


async def test_storage_errors_are_logged_without_values(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    app = _app(f"sqlite:///{tmp_path}/missing/dir/inbox.sqlite")
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        assert (await post_stripe(client, stripe_body(card="4242424242424242"))).status_code == 503
    app.state.inbox.dispose()
    rendered = "\n".join(JsonLogFormatter().format(record) for record in caplog.records)
    assert "4242" not in rendered
    assert "inbox unavailable (OperationalError)" in rendered


# --- configuration ----------------------------------------------------------------------------------------


def test_the_receiver_accepts_exactly_the_webhook_sources_of_the_registry():
    assert provider_schemes() == {"stripe": "stripe", "shop": "standard"}


def test_a_provider_without_a_secret_is_refused_at_start_up(tmp_path: Path):
    with pytest.raises(ValueError, match="no signing secret"):
        _app(f"sqlite:///{tmp_path}/i.sqlite", secrets={"stripe": [STRIPE_SECRET]})
    with pytest.raises(ValueError, match="base64"):
        _app(f"sqlite:///{tmp_path}/i.sqlite", secrets={"stripe": [STRIPE_SECRET], "shop": ["whsec_%%%"]})
    with pytest.raises(ValueError, match="scheme"):
        _app(f"sqlite:///{tmp_path}/i.sqlite", schemes={"stripe": "github"})


async def test_app_from_settings_serves_configured_providers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDALLION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDALLION_WEBHOOK_SECRETS_STANDARD", STANDARD_SECRET)
    monkeypatch.delenv("MEDALLION_WEBHOOK_INBOX_URL", raising=False)
    monkeypatch.delenv("MEDALLION_WEBHOOK_SECRETS_SHOP", raising=False)
    monkeypatch.setenv("MEDALLION_WEBHOOK_SECRETS_STRIPE", f"{STRIPE_SECRET}, {STRIPE_OLD_SECRET}")
    app = create_app_from_settings()
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):  # the embedded SQLite inbox is created at start-up
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            assert (await post_stripe(client, stripe_body(), secret=STRIPE_OLD_SECRET)).status_code == 200
            assert (await client.post("/webhooks/shop", content=b"{}")).status_code == 404
            # a provider that is not a declared source is never accepted, secret or not
            assert (await client.post("/webhooks/standard", content=b"{}")).status_code == 404
    assert (tmp_path / "webhooks" / "inbox.sqlite").exists()

    monkeypatch.delenv("MEDALLION_WEBHOOK_SECRETS_STRIPE")
    with pytest.raises(RuntimeError, match="MEDALLION_WEBHOOK_SECRETS_STRIPE"):
        create_app_from_settings()


# --- a real server ----------------------------------------------------------------------------------------


@pytest.fixture
def live_server(inbox_url: str) -> Iterator[tuple[str, Starlette]]:
    """The receiver under uvicorn on a loopback port chosen by the kernel."""
    app = _app(inbox_url)
    with serve_in_thread(app, name="webhook-receiver") as base_url:
        yield base_url, app


def test_real_server_round_trip(live_server: tuple[str, Starlette]):
    base_url, app = live_server
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        body = stripe_body("evt_live")
        first = client.post("/webhooks/stripe", content=body, headers=stripe_headers(body))
        again = client.post("/webhooks/stripe", content=body, headers=stripe_headers(body))
        assert (first.json()["status"], again.json()["status"]) == ("stored", "duplicate")

        def oversized() -> Iterator[bytes]:
            for _ in range(64):
                yield b"x" * 1024

        too_big = client.post("/webhooks/stripe", content=oversized(), headers={"Stripe-Signature": "t=1,v1=a"})
        assert too_big.status_code == 413
        bad = client.post("/webhooks/stripe", content=b"\xff", headers={"Stripe-Signature": "nonsense"})
        assert bad.status_code == 401
        body = stripe_body("evt_live_2")
        assert client.post("/webhooks/stripe", content=body, headers=stripe_headers(body)).status_code == 200
    assert [e.event_id for e in app.state.inbox.read_since(0)] == ["evt_live", "evt_live_2"]
