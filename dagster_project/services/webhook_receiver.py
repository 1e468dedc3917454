"""Webhook receiver: verifies each delivery on its raw bytes and commits it to the inbox before answering 2xx.

Routes: ``POST /webhooks/{provider}``, ``GET /healthz`` (process alive), ``GET /readyz`` (inbox reachable),
``GET /metrics`` (Prometheus text). A sender sees:

* 200 once the event is committed (``stored``), or was already (``duplicate``), or reused a stored id with
  a different body (``conflict``: the first body stays, the new one is recorded for review). Answering 2xx to
  a conflict stops the sender retrying a delivery that can never be stored differently.
* 401 with the signature failure reason, 400 for a body that is not UTF-8 JSON with a usable event id, type and
  creation time, 413 for an oversized body, 404 for an unknown provider, 422 for a signed event the inbox
  refuses to hold (its values can never be stored), 408 for a body not sent within the body timeout, 431 for
  too many header fields (a head too large is refused by the server before any of this, see `http_server`).
* 503 when the inbox cannot be written, so the sender retries later; only for failures that a retry can
  outlive, never for an event that can never be stored. No other 5xx is ever answered.

Logs are JSON lines with provider, event id, outcome and latency; never the body, a header value or a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dagster_project import settings
from dagster_project.lib.intake import signatures
from dagster_project.lib.intake.inbox import (
    MAX_ID_LENGTH,
    InboundEvent,
    Inbox,
    InboxUnavailable,
    StoreOutcome,
    UnstorableEvent,
)
from dagster_project.lib.sources.registry import webhook_sources
from dagster_project.services import http_server

logger = logging.getLogger("medallion.webhooks")


def provider_schemes() -> dict[str, signatures.Scheme]:
    """Provider (the URL segment) -> signature scheme, for every webhook source in the registry: a provider
    the receiver accepts is always one whose events reach bronze."""
    return {spec.webhook.provider: spec.webhook.scheme for spec in webhook_sources()}


# headers worth keeping next to the body (signature headers included, to re-verify later if needed);
# everything else (cookies, authorization, forwarding addresses) is dropped
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    signatures.STRIPE_SIGNATURE_HEADER,
    signatures.STANDARD_ID_HEADER,
    signatures.STANDARD_TIMESTAMP_HEADER,
    signatures.STANDARD_SIGNATURE_HEADER,
)

RETRY_AFTER_SECONDS = "5"
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_JSON_TYPE = JSONResponse.media_type
READINESS_TIMEOUT_SECONDS = 2.0


class HeaderLimits:
    """Refuses a request with more header fields, or more header bytes, than allowed (431, reason named).

    The server already bounds the head's size before parsing it (`http_server`); this bounds the count, and the
    size again when the app runs behind another server.
    """

    def __init__(self, app: ASGIApp, *, max_count: int, max_bytes: int) -> None:
        self.app, self.max_count, self.max_bytes = app, max_count, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            reason = None
            if len(headers) > self.max_count:
                reason = "too_many_headers"
            elif sum(len(name) + len(value) + 4 for name, value in headers) > self.max_bytes:
                reason = "headers_too_large"
            if reason is not None:
                logger.warning("request refused", extra={"fields": {"status": 431, "reason": reason}})
                response = JSONResponse({"error": reason}, status_code=431, headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields` extra."""

    _encoder = json.JSONEncoder(default=str)  # `json.dumps(..., default=str)` would build one per line

    def __init__(self) -> None:
        super().__init__()
        self._second, self._stamp = -1, ""

    def _time(self, created: float) -> str:
        """`datetime.isoformat(timespec="milliseconds")` in UTC, the part up to the second rendered once a second."""
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # the class only: exception messages may quote values
            entry["exc_type"] = record.exc_info[0].__name__
        return self._encoder.encode(entry)


class LoopTurnHandler(logging.StreamHandler):
    """Writes the info lines logged in one turn of the running event loop with one write, at the turn's end.

    A commit batch answers its deliveries in one turn: one write instead of one per delivery, each of which
    would let the committing thread take the interpreter lock and the loop wait to get it back (about a tenth
    of a delivery's CPU time under load). Warnings and errors, and lines logged outside the loop, are written
    at once, with whatever is waiting before them. What a SIGKILL can lose is the info lines of one turn.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if record.levelno < logging.WARNING:
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self._scheduled = True
                loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        with self.lock:
            self._scheduled = False
            lines, self._lines = self._lines, []
            try:
                if lines:
                    self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": f"{len(lines)} log lines lost"}))


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the receiver and uvicorn's own loggers."""
    handler = LoopTurnHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    # what a record would otherwise look up for every delivery logged; the JSON lines carry none of it
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class Metrics:
    """Counters rendered in the Prometheus text exposition format."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.rejections: Counter[tuple[str, str]] = Counter()
        self.latency_sum: Counter[str] = Counter()
        self.latency_count: Counter[str] = Counter()

    def observe(self, provider: str, outcome: str, reason: str | None, seconds: float) -> None:
        if reason is None:
            self.outcomes[(provider, outcome)] += 1
        else:
            self.rejections[(provider, reason)] += 1
        self.latency_sum[provider] += seconds
        self.latency_count[provider] += 1

    def render(self) -> str:
        lines = [
            "# HELP medallion_webhook_events_total Deliveries acknowledged, by outcome (stored, duplicate, conflict).",
            "# TYPE medallion_webhook_events_total counter",
        ]
        for (provider, outcome), n in sorted(self.outcomes.items()):
            lines.append(f'medallion_webhook_events_total{{provider="{provider}",outcome="{outcome}"}} {n}')
        lines += [
            "# HELP medallion_webhook_rejected_total Deliveries refused, by reason.",
            "# TYPE medallion_webhook_rejected_total counter",
        ]
        for (provider, reason), n in sorted(self.rejections.items()):
            lines.append(f'medallion_webhook_rejected_total{{provider="{provider}",reason="{reason}"}} {n}')
        lines += [
            "# HELP medallion_webhook_request_duration_seconds Time to answer a delivery.",
            "# TYPE medallion_webhook_request_duration_seconds summary",
        ]
        for provider in sorted(self.latency_count):
            lines.append(
                f'medallion_webhook_request_duration_seconds_sum{{provider="{provider}"}} '
                f"{self.latency_sum[provider]:.6f}"
            )
            lines.append(
                f'medallion_webhook_request_duration_seconds_count{{provider="{provider}"}} '
                f"{self.latency_count[provider]}"
            )
        return "\n".join(lines) + "\n"


class Rejected(Exception):
    """A delivery refused with an HTTP status and a short reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Provider:
    name: str
    scheme: signatures.Scheme
    secrets: tuple[str, ...]


class GroupCommitter:
    """Commits concurrent deliveries together: one transaction, one fsync, for whatever is waiting.

    With a durable inbox the commit's fsync dominates a delivery's cost; batching what arrived during the
    previous commit keeps every 2xx behind its commit while throughput grows with concurrency. An event the
    inbox cannot hold gets its own error and the rest of its batch is committed (`Inbox.store_many`); when the
    inbox itself fails, the whole batch fails at once, without hammering it again event by event.
    """

    def __init__(self, inbox: Inbox, *, max_batch: int = 256, writers: int = 1) -> None:
        self._inbox = inbox
        self._max_batch = max_batch
        # commits in flight at once. One, on PostgreSQL too: a second batch in flight shares the WAL flush, but
        # its thread contends with the event loop for the interpreter; at concurrency 32 on 2 cores one writer
        # gave 7% more deliveries per second and a lower p99 (`make bench`)
        self._writers = writers
        self._pending: list[tuple[InboundEvent, asyncio.Future[StoreOutcome]]] = []
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # a thread per writer, kept for the committer's life: handing a batch to it costs less than to
        # Starlette's shared thread pool, and each keeps its own database connection (`Inbox.store_many`)
        self._threads: ThreadPoolExecutor | None = None

    async def store(self, event: InboundEvent) -> StoreOutcome:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or any(task.done() for task in self._tasks):
            await self.close()
            self._loop, self._wakeup = loop, asyncio.Event()
            self._threads = ThreadPoolExecutor(self._writers, thread_name_prefix="inbox-commit")
            self._tasks = [loop.create_task(self._run(self._wakeup)) for _ in range(self._writers)]
        assert self._wakeup is not None
        future: asyncio.Future[StoreOutcome] = loop.create_future()
        self._pending.append((event, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        same_loop = self._loop is asyncio.get_running_loop()
        self._tasks, self._loop = [], None
        if self._threads is not None:
            threads, self._threads = self._threads, None
            if same_loop:
                # a commit still running finishes before anything (the inbox's disposal) can close its connection
                await asyncio.to_thread(threads.shutdown)
            else:
                threads.shutdown(wait=False)

    async def _run(self, wakeup: asyncio.Event) -> None:
        while True:
            await wakeup.wait()
            wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    await self._commit(batch)
                except Exception as error:
                    for _, future in batch:
                        _settle(future, error=error)

    async def _commit(self, batch: list[tuple[InboundEvent, asyncio.Future[StoreOutcome]]]) -> None:
        assert self._loop is not None
        events = [event for event, _ in batch]
        prepare = getattr(self._inbox, "prepare", None)
        try:
            # converting values here, on the loop, leaves the commit thread little to hold the interpreter lock for
            work = prepare(events) if prepare is not None else events
            outcomes = await self._loop.run_in_executor(self._threads, self._inbox.store_many, work)
        except InboxUnavailable as error:
            # the inbox itself failed (down, locked, read-only, full): every sender retries later
            for _, future in batch:
                _settle(future, error=error)
            return
        except Exception:
            if len(batch) == 1:
                raise
            # not an inbox failure anyone expected: find out which delivery it belongs to, one at a time
            for item in batch:
                try:
                    await self._commit([item])
                except Exception as single_error:
                    _settle(item[1], error=single_error)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, UnstorableEvent):
                _settle(future, error=outcome)  # this event alone: the others of the batch are committed
            else:
                _settle(future, result=outcome)


def _settle(
    future: asyncio.Future[StoreOutcome], *, result: StoreOutcome | None = None, error: Exception | None = None
) -> None:
    if future.done():  # the request was cancelled (client gone); a resend will find the event stored
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def _headers(scope: Scope) -> dict[str, str]:
    """The request's header fields by lowercase name, the first of a repeated name winning (as Starlette's
    `Headers.get`): one pass, where each `Headers` lookup scans every field again."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


async def _read_body(receive: Receive, declared: str | None, max_body_bytes: int, timeout_seconds: float) -> bytes:
    """The raw body, refusing (and no longer reading) anything past `max_body_bytes` or `timeout_seconds`;
    `declared` is the Content-Length header, if any."""
    if declared is not None:
        declared = declared.strip()
        if not declared.isascii() or not declared.isdigit():
            raise Rejected(400, "malformed_content_length")
        if int(declared) > max_body_bytes:
            raise Rejected(413, "body_too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                if not body and not message.get("more_body", False):
                    if len(chunk) > max_body_bytes:
                        raise Rejected(413, "body_too_large")
                    return bytes(chunk)  # the usual case, the whole body in one message: no copy
                body += chunk
                if len(body) > max_body_bytes:
                    raise Rejected(413, "body_too_large")
                if not message.get("more_body", False):
                    return bytes(body)
    except ClientDisconnect:
        raise Rejected(400, "client_disconnected") from None
    except TimeoutError:
        # a sender that never finishes its body would otherwise hold a connection and a task forever
        raise Rejected(408, "body_timeout") from None


def _storable_text(value: str) -> bool:
    """Whether a database text column can hold `value`: no NUL (PostgreSQL refuses it) and valid UTF-8 (a
    JSON escape can make a lone surrogate, which no encoder accepts)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_event(provider: _Provider, body: bytes, verified: signatures.Verified) -> tuple[str, str, datetime]:
    """Event id, type and creation time from a verified body; `Rejected` (400) when they are missing."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "non_utf8") from None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
        raise Rejected(400, "invalid_json") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "invalid_event")

    if provider.scheme == "stripe":
        event_id = payload.get("id")
        created = payload.get("created")
        if isinstance(created, bool) or not isinstance(created, int):
            raise Rejected(400, "invalid_event_created")
        try:
            created_at = datetime.fromtimestamp(created, UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejected(400, "invalid_event_created") from None
    else:
        # Standard Webhooks: the message id is the idempotency key; the body's `timestamp` is when the
        # event happened, the header's is when this attempt was signed (first stored attempt wins)
        event_id = verified.message_id
        created_at = datetime.fromtimestamp(verified.timestamp, UTC)
        stamp = payload.get("timestamp")
        if stamp is not None:
            try:
                parsed = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
            except ValueError:
                parsed = None
            if parsed is None:
                raise Rejected(400, "invalid_event_created")
            try:
                created_at = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
            except OverflowError:  # year 1 east of UTC, or year 9999 west of it, has no UTC time
                raise Rejected(400, "invalid_event_created") from None

    if not isinstance(event_id, str) or not event_id:
        raise Rejected(400, "missing_event_id")
    if len(event_id) > MAX_ID_LENGTH or not _storable_text(event_id):
        raise Rejected(400, "invalid_event_id")
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise Rejected(400, "missing_event_type")
    if len(event_type) > MAX_ID_LENGTH or not _storable_text(event_type):
        raise Rejected(400, "invalid_event_type")
    return event_id, event_type, created_at


def create_app(
    *,
    inbox_url: str,
    secrets: Mapping[str, Sequence[str]],
    schemes: Mapping[str, str],
    max_body_bytes: int,
    tolerance_seconds: int,
    auto_migrate: bool = False,
    body_timeout_seconds: float = 15.0,
    max_header_count: int = 100,
    max_header_bytes: int = 16 * 1024,
    readiness_timeout_seconds: float = READINESS_TIMEOUT_SECONDS,
    first_business_date: date | None = None,
) -> Starlette:
    """The receiver app for the providers in `schemes` (provider -> "stripe" | "standard").

    Every provider needs at least one secret; Standard Webhooks secrets must be `whsec_<base64>`.
    `auto_migrate` creates the inbox schema at start-up (embedded SQLite); in production the schema is
    created by ``medallion webhooks migrate`` so the receiver's database role needs no DDL rights.
    `first_business_date` is the partitions' first day (default: the configured one): an event created
    earlier is filed under the day it was received.
    """
    providers: dict[str, _Provider] = {}
    for name, scheme in schemes.items():
        if scheme not in signatures.SCHEMES:
            raise ValueError(f"provider {name!r}: unknown signature scheme {scheme!r}")
        provider_secrets = tuple(secrets.get(name, ()))
        if not provider_secrets:
            raise ValueError(f"provider {name!r} has no signing secret configured")
        if scheme == "standard":
            for secret in provider_secrets:
                signatures.standard_secret_key(secret)  # fail at start-up, not on every request
        providers[name] = _Provider(name=name, scheme=cast(signatures.Scheme, scheme), secrets=provider_secrets)

    if first_business_date is None:
        first_business_date = settings.first_business_date()
    inbox = Inbox(inbox_url, first_business_date=first_business_date)
    committer = GroupCommitter(inbox)
    metrics = Metrics()

    def finish(
        provider: str,
        status: int,
        started: float,
        *,
        outcome: str,
        reason: str | None = None,
        event_id: str | None = None,
        content: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> Response:
        latency = time.perf_counter() - started
        metrics.observe(provider, outcome, reason, latency)
        extra = {
            "fields": {
                "provider": provider,
                "event_id": event_id,
                "outcome": outcome,
                "reason": reason,
                "status": status,
                "latency_ms": round(latency * 1000, 3),
            }
        }
        if status >= 500:
            level = logging.ERROR
        elif status >= 400 or outcome == "conflict":  # a conflict is acknowledged but needs a human
            level = logging.WARNING
        else:
            level = logging.INFO
        if logger.isEnabledFor(level):
            # `logger.log` would also walk the stack to find the caller, which every delivery is logged from
            logger.handle(logger.makeRecord(logger.name, level, __file__, 0, "webhook delivery", (), None, extra=extra))
        # the bytes JSONResponse renders, with an encoder made once instead of once per response
        return Response(_JSON.encode(content).encode(), status_code=status, headers=headers, media_type=_JSON_TYPE)

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["provider"]
        provider = providers.get(name)
        if provider is None:
            # the label is fixed: a URL segment chosen by the caller must not create metric series
            return finish(
                "unknown",
                404,
                started,
                outcome="rejected",
                reason="unknown_provider",
                content={"error": "unknown_provider"},
            )
        event_id: str | None = None
        headers = _headers(request.scope)
        try:
            body = await _read_body(
                request.receive, headers.get("content-length"), max_body_bytes, body_timeout_seconds
            )
            try:
                verified = signatures.verify(
                    provider.scheme, body, headers, provider.secrets, tolerance_seconds=tolerance_seconds
                )
            except signatures.SignatureError as error:
                raise Rejected(401, error.reason) from None
            event_id, event_type, created_at = _parse_event(provider, body, verified)
            kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
            event = InboundEvent(
                provider=provider.name,
                event_id=event_id,
                event_type=event_type,
                event_created_at=created_at,
                body=body,
                headers=kept,
            )
            outcome = await committer.store(event)
        except Rejected as rejected:
            return finish(
                provider.name,
                rejected.status,
                started,
                outcome="rejected",
                reason=rejected.reason,
                event_id=event_id,
                content={"error": rejected.reason},
                # the rest of a body that timed out may still arrive: the connection cannot carry another request
                headers={"Connection": "close"} if rejected.status == 408 else None,
            )
        except UnstorableEvent:
            # a retry would fail the same way: tell the sender, do not ask it to retry for days
            return finish(
                provider.name,
                422,
                started,
                outcome="rejected",
                reason="unstorable_event",
                event_id=event_id,
                content={"error": "unstorable_event"},
            )
        except InboxUnavailable as error:
            logger.error("inbox unavailable", extra={"fields": {"provider": provider.name, "detail": str(error)}})
            return finish(
                provider.name,
                503,
                started,
                outcome="rejected",
                reason="inbox_unavailable",
                event_id=event_id,
                content={"error": "inbox_unavailable"},
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        except Exception:
            # nothing was acknowledged: a 503 makes the sender retry instead of losing the event
            logger.exception("unexpected error", extra={"fields": {"provider": provider.name, "event_id": event_id}})
            return finish(
                provider.name,
                503,
                started,
                outcome="rejected",
                reason="internal_error",
                event_id=event_id,
                content={"error": "internal_error"},
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        return finish(
            provider.name,
            200,
            started,
            outcome=outcome,
            event_id=event_id,
            content={"status": outcome, "event_id": event_id, "duplicate": outcome == "duplicate"},
        )

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        # ready means a write to the inbox just committed, within a short time: a database that answers reads
        # but refuses writes, or a lock held elsewhere, takes the receiver out of the load balancer
        try:
            async with asyncio.timeout(readiness_timeout_seconds + 1):
                await run_in_threadpool(inbox.check_writable, readiness_timeout_seconds)
        except (InboxUnavailable, TimeoutError) as error:
            detail = str(error) if isinstance(error, InboxUnavailable) else "inbox unavailable (timeout)"
            logger.warning("not ready", extra={"fields": {"detail": detail}})
            return JSONResponse({"status": "unavailable", "inbox": "not writable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(_request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if auto_migrate:
            await run_in_threadpool(inbox.migrate)
        logger.info("webhook receiver started", extra={"fields": {"providers": sorted(providers)}})
        try:
            yield
        finally:
            await committer.close()
            inbox.dispose()

    app = Starlette(
        routes=[
            Route("/webhooks/{provider}", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(HeaderLimits, max_count=max_header_count, max_bytes=max_header_bytes)],
    )
    app.state.inbox = inbox
    app.state.committer = committer
    app.state.metrics = metrics
    return app


def create_app_from_settings() -> Starlette:
    """The receiver as configured by the environment; providers without a secret are left out (404)."""
    inbox_url = settings.webhook_inbox_url()
    secrets: dict[str, list[str]] = {}
    schemes: dict[str, str] = {}
    declared = provider_schemes()
    for name, scheme in declared.items():
        provider_secrets = settings.webhook_secrets(name)
        if provider_secrets:
            secrets[name] = provider_secrets
            schemes[name] = scheme
        else:
            logger.warning(
                "provider disabled: no signing secret",
                extra={"fields": {"provider": name, "variable": f"MEDALLION_WEBHOOK_SECRETS_{name.upper()}"}},
            )
    if not schemes:
        raise RuntimeError(
            "no webhook signing secret is configured: set "
            + " or ".join(f"MEDALLION_WEBHOOK_SECRETS_{name.upper()}" for name in declared)
        )
    return create_app(
        inbox_url=inbox_url,
        secrets=secrets,
        schemes=schemes,
        max_body_bytes=settings.webhook_max_body_bytes(),
        tolerance_seconds=settings.webhook_tolerance_seconds(),
        auto_migrate=inbox_url.startswith("sqlite"),
        body_timeout_seconds=settings.webhook_body_timeout_seconds(),
        max_header_count=settings.webhook_max_header_count(),
        max_header_bytes=settings.webhook_max_header_bytes(),
        first_business_date=settings.first_business_date(),
    )


def _tune_thread_switching() -> None:
    # Commits run in a worker thread beside the event loop. With CPython's default 5 ms switch interval, a
    # thread that has waited for fsync can wait up to 5 ms more for the interpreter while the loop parses
    # requests, and every delivery of the batch waits with it; 1 ms keeps that handoff short.
    sys.setswitchinterval(0.001)


def _tune_garbage_collection() -> None:
    # What is loaded by now (modules, the app) lives as long as the process: frozen, no collection walks it
    # again. A request's objects die with it, and a young generation ten times the default lets them go before
    # a collection examines them: the collector's share of a delivery's instructions fell from 2.5% to nil.
    gc.freeze()
    gc.set_threshold(7000, 10, 10)


def worker_app() -> Starlette:
    """The app as one of several worker processes builds it (they log like the single-process receiver)."""
    configure_logging()
    _tune_thread_switching()
    app = create_app_from_settings()
    _tune_garbage_collection()
    return app


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the receiver with uvicorn until interrupted (``medallion webhooks serve``).

    With ``MEDALLION_WEBHOOK_WORKERS`` above 1, uvicorn starts that many worker processes on the one port, each
    with its own event loop, inbox connections and group commits: on a PostgreSQL inbox their writes run side
    by side. Each worker builds the app from the settings (so a worker that cannot start fails on its own).
    """
    import uvicorn

    configure_logging()
    _tune_thread_switching()
    workers = settings.webhook_workers()
    options = http_server.uvicorn_options() | {"timeout_graceful_shutdown": 10}
    if workers > 1:
        app = "dagster_project.services.webhook_receiver:worker_app"
        uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **options)
    else:
        app = create_app_from_settings()
        _tune_garbage_collection()
        uvicorn.run(app, host=host, port=port, **options)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the webhook receiver.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
