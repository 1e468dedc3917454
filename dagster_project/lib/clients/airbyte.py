"""Trigger an Airbyte connection sync and wait for it, safely under retries.

Contract: the Airbyte public API v1 (OpenAPI document 1.0.0) through the official `airbyte-api` Python SDK
(1.0.x). The SDK prefixes every path with the server URL, which ends in `/v1` (Airbyte Cloud:
`https://api.airbyte.com/v1`; self-managed: `http://<host>:8000/api/public/v1`). Calls made:

- `POST {server}/applications/token`  client-credentials grant, answers `{access_token, token_type, expires_in}`.
  The client keeps the bearer token itself (the SDK only sends it): a new one is fetched 60 s before
  `expires_in` runs out, measured on the client's own clock, and the token is dropped on a 401. The SDK's own
  token cache is not used: it is shared by the whole process and reads the wall clock, so neither a test nor
  a second client could control when a token is renewed.
- `GET  {server}/jobs?connectionId=&jobType=sync&orderBy=createdAt|DESC&limit=`  jobs of the connection.
- `POST {server}/jobs` with `{"connectionId": ..., "jobType": "sync"}`  trigger a sync.
- `GET  {server}/jobs/{jobId}`  status, `rowsSynced`, `bytesSynced`, `duration` (ISO 8601).
- `DELETE {server}/jobs/{jobId}`  cancel.

Job statuses: `pending`, `running`, `incomplete` (an attempt failed, Airbyte retries it) are still going;
`succeeded`, `failed`, `cancelled` are final.

Retries are ours, not the SDK's, because triggering a job is not idempotent: after a create call whose
outcome is unknown (timeout, connection drop, 5xx) the jobs are listed again and a job that did not exist
before the trigger is adopted instead of creating a second one. A 409 (a sync already running) is answered
the same way.

Every wait (retry backoff, status polls, the `max_wait` budget, token lifetime) goes through the injected
`clock` and `sleep`, so tests drive time instead of waiting for it.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import httpx
from airbyte_api import AirbyteAPI, api, errors, models

ACTIVE_STATUSES = frozenset({"pending", "queued", "running", "incomplete"})
SUCCEEDED = "succeeded"
TERMINAL_STATUSES = frozenset({SUCCEEDED, "failed", "cancelled"})

# Enough recent jobs to see a job triggered moments ago even if other syncs ran meanwhile.
_RECENT_JOBS_LIMIT = 20
_MAX_BACKOFF_SECONDS = 60.0
# Renew a token this long before it expires, so it never runs out between fetching it and using it.
_TOKEN_REFRESH_MARGIN_SECONDS = 60.0

T = TypeVar("T")


class AirbyteSyncError(Exception):
    """A sync could not be started, failed, was cancelled or did not finish in time."""

    def __init__(
        self, message: str, *, connection_id: str, job_id: int | None = None, status: str | None = None
    ) -> None:
        super().__init__(message)
        self.connection_id = connection_id
        self.job_id = job_id
        self.status = status


@dataclass(frozen=True)
class SyncResult:
    connection_id: str
    job_id: int
    status: str
    rows_synced: int | None
    bytes_synced: int | None
    # Airbyte's reported duration of the job when it gives one, else how long this call waited.
    duration_seconds: float
    start_time: str | None
    # True when the call waited for a sync that was already running (or that an earlier, timed-out
    # trigger had started) instead of starting one.
    attached: bool


class _Rejected(Exception):
    """A failed call that repeating will not fix (4xx, refused credentials)."""

    def __init__(self, reason: str, *, status_code: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class _Transient(Exception):
    """A failed call that may succeed if repeated after `delay` seconds."""

    def __init__(self, reason: str, *, delay: float | None, outcome_unknown: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay  # from Retry-After; None means: use exponential backoff
        self.outcome_unknown = outcome_unknown  # the server may have acted on the request


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_iso_duration(value: str | None) -> float | None:
    """Seconds in an ISO 8601 duration such as `PT8M42S` (days at most), None if absent or not parseable."""
    if not value:
        return None
    match = _ISO_DURATION.match(value.strip())
    if match is None or value.strip() in ("P", "PT"):
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return (
        parts.get("days", 0.0) * 86400
        + parts.get("hours", 0.0) * 3600
        + parts.get("minutes", 0.0) * 60
        + parts.get("seconds", 0.0)
    )


def _status(job: models.JobResponse) -> str:
    return job.status.value if hasattr(job.status, "value") else str(job.status)


class AirbyteClient:
    """Runs Airbyte connection syncs through the public API with client-credentials auth.

    `timeout` bounds each HTTP request, `max_wait` the whole `sync()` call (trigger plus waiting),
    `retries` the consecutive failed attempts of one call, `poll_interval` the first wait between status
    polls (it grows by half each poll up to `max_poll_interval`), `backoff` the first retry delay (doubling,
    with jitter) when the server gives no Retry-After. `clock` (seconds, monotonic) and `sleep` measure and
    spend every wait; tests pass a controlled pair.
    """

    def __init__(
        self,
        server_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 30,
        poll_interval: float = 5,
        max_wait: float = 3600,
        retries: int = 5,
        backoff: float = 1.0,
        max_poll_interval: float = 60,
        cancel_on_timeout: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not server_url:
            raise ValueError("server_url is required (e.g. https://api.airbyte.com/v1)")
        self.server_url = server_url.rstrip("/")
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self.retries = retries
        self.backoff = backoff
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.cancel_on_timeout = cancel_on_timeout
        self._clock = clock
        self._sleep = sleep
        self._client_id = client_id
        self._client_secret = client_secret
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._http = httpx.Client(follow_redirects=True, timeout=timeout)
        self._sdk = AirbyteAPI(
            server_url=self.server_url,
            client=self._http,
            timeout_ms=int(timeout * 1000),
            # Called for every request: always the token `_ensure_token` holds at that moment.
            security=lambda: models.Security(bearer_auth=self._token or ""),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirbyteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public operations ---------------------------------------------------------------------------

    def sync(self, connection_id: str) -> SyncResult:
        """Start a sync of the connection (or join the one already running) and wait until it ends.

        Raises AirbyteSyncError when the job fails, is cancelled, or is not finished after `max_wait`.
        """
        if not connection_id:
            raise ValueError("connection_id is required")
        started = self._clock()
        deadline = started + self.max_wait

        recent = self.list_sync_jobs(connection_id, deadline=deadline)
        running = next((j for j in recent if _status(j) in ACTIVE_STATUSES), None)
        if running is not None:
            job, attached, owned = running, True, False
        else:
            job, attached, owned = self._trigger(connection_id, {j.job_id for j in recent}, deadline)

        job = self._wait(connection_id, job, deadline, cancel=owned and self.cancel_on_timeout)
        status = _status(job)
        if status != SUCCEEDED:
            raise AirbyteSyncError(
                f"Airbyte sync job {job.job_id} of connection {connection_id} ended with status '{status}'",
                connection_id=connection_id,
                job_id=job.job_id,
                status=status,
            )
        reported = parse_iso_duration(job.duration)
        return SyncResult(
            connection_id=connection_id,
            job_id=job.job_id,
            status=status,
            rows_synced=job.rows_synced,
            bytes_synced=job.bytes_synced,
            duration_seconds=reported if reported is not None else self._clock() - started,
            start_time=job.start_time,
            attached=attached,
        )

    def list_sync_jobs(self, connection_id: str, *, deadline: float | None = None) -> list[models.JobResponse]:
        """The connection's most recent sync jobs, newest first."""
        request = api.ListJobsRequest(
            connection_id=connection_id,
            job_type=models.JobTypeEnum.SYNC,
            order_by="createdAt|DESC",
            limit=_RECENT_JOBS_LIMIT,
        )
        response = self._retrying(
            lambda: self._sdk.jobs.list_jobs(request=request),
            what="list jobs",
            connection_id=connection_id,
            deadline=deadline,
        )
        jobs = list(response.jobs_response.data) if response.jobs_response else []
        return sorted(jobs, key=lambda j: j.job_id, reverse=True)

    def get_job(self, job_id: int, *, connection_id: str = "", deadline: float | None = None) -> models.JobResponse:
        response = self._retrying(
            lambda: self._sdk.jobs.get_job(request=api.GetJobRequest(job_id=job_id)),
            what=f"get job {job_id}",
            connection_id=connection_id,
            job_id=job_id,
            deadline=deadline,
        )
        if response.job_response is None:
            raise AirbyteSyncError(
                f"Airbyte returned no job for job id {job_id}", connection_id=connection_id, job_id=job_id
            )
        return response.job_response

    def cancel_job(self, job_id: int, *, connection_id: str = "") -> models.JobResponse | None:
        response = self._retrying(
            lambda: self._sdk.jobs.cancel_job(request=api.CancelJobRequest(job_id=job_id)),
            what=f"cancel job {job_id}",
            connection_id=connection_id,
            job_id=job_id,
            deadline=self._clock() + max(self.timeout * 2, 10.0),
        )
        return response.job_response

    # -- internals -----------------------------------------------------------------------------------

    def _trigger(self, connection_id: str, known: set[int], deadline: float) -> tuple[models.JobResponse, bool, bool]:
        """Create one sync job. Returns it, whether it was adopted (found by listing rather than returned
        by the create call), and whether this call started it (and so may cancel it)."""
        request = models.JobCreateRequest(connection_id=connection_id, job_type=models.JobTypeEnum.SYNC)
        failures = 0
        while True:
            try:
                response = self._call(lambda: self._sdk.jobs.create_job(request=request))
            except _Transient as exc:
                failures += 1
                delay = self._delay(exc, failures)
                self._check_budget(failures, delay, deadline, exc.reason, "trigger a sync", connection_id)
                self._sleep(delay)
                if exc.outcome_unknown:
                    # The create may have reached Airbyte: adopt the job it started rather than start another.
                    adopted = self._new_job(connection_id, known, deadline)
                    if adopted is not None:
                        return adopted, True, True
                continue
            except _Rejected as exc:
                if exc.status_code == 409:
                    # A sync is already running (another trigger won the race): wait for that job.
                    adopted = self._new_job(connection_id, known, deadline, active_only=True)
                    if adopted is not None:
                        return adopted, True, False
                raise AirbyteSyncError(
                    f"Airbyte refused to trigger a sync of connection {connection_id}: {exc.reason}",
                    connection_id=connection_id,
                ) from exc
            if response.job_response is None:
                raise AirbyteSyncError(
                    f"Airbyte returned no job when triggering connection {connection_id}",
                    connection_id=connection_id,
                )
            return response.job_response, False, True

    def _new_job(
        self, connection_id: str, known: set[int], deadline: float, *, active_only: bool = False
    ) -> models.JobResponse | None:
        for job in self.list_sync_jobs(connection_id, deadline=deadline):
            if active_only and _status(job) in ACTIVE_STATUSES:
                return job
            if not active_only and job.job_id not in known:
                return job
        return None

    def _wait(
        self, connection_id: str, job: models.JobResponse, deadline: float, *, cancel: bool
    ) -> models.JobResponse:
        interval = self.poll_interval
        while _status(job) not in TERMINAL_STATUSES:
            remaining = deadline - self._clock()
            if remaining <= 0:
                self._give_up(connection_id, job, cancel)
            self._sleep(min(interval, remaining))
            interval = min(interval * 1.5, self.max_poll_interval)
            try:
                job = self.get_job(job.job_id, connection_id=connection_id, deadline=deadline)
            except AirbyteSyncError:
                if self._clock() >= deadline:
                    self._give_up(connection_id, job, cancel)
                raise
        return job

    def _give_up(self, connection_id: str, job: models.JobResponse, cancel: bool) -> None:
        note = ""
        if cancel:
            try:
                self.cancel_job(job.job_id, connection_id=connection_id)
                note = "; the job was cancelled"
            except AirbyteSyncError as exc:
                note = f"; cancelling it failed: {exc}"
        raise AirbyteSyncError(
            f"Airbyte sync job {job.job_id} of connection {connection_id} did not finish within "
            f"{self.max_wait:g} s (last status '{_status(job)}'){note}",
            connection_id=connection_id,
            job_id=job.job_id,
            status=_status(job),
        )

    def _retrying(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        connection_id: str,
        job_id: int | None = None,
        deadline: float | None = None,
    ) -> T:
        """Run a call that is safe to repeat, retrying transient failures."""
        failures = 0
        while True:
            try:
                return self._call(fn)
            except _Transient as exc:
                failures += 1
                delay = self._delay(exc, failures)
                self._check_budget(failures, delay, deadline, exc.reason, what, connection_id, job_id)
                self._sleep(delay)
            except _Rejected as exc:
                raise AirbyteSyncError(
                    f"Airbyte API call '{what}' failed for connection {connection_id}: {exc.reason}",
                    connection_id=connection_id,
                    job_id=job_id,
                ) from exc

    def _ensure_token(self) -> None:
        """Fetch a bearer token with the client credentials unless the one held is still fresh."""
        if self._token is not None and self._clock() < self._token_renew_at:
            return
        self._token = None
        asked_at = self._clock()
        response = self._http.post(
            f"{self.server_url}/applications/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
        )
        code = response.status_code
        if code == 429 or code >= 500:
            raise _Transient(f"token endpoint HTTP {code}", delay=None, outcome_unknown=False)
        if not 200 <= code < 300:
            raise _Rejected(f"the token endpoint refused the client credentials (HTTP {code})", status_code=code)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if (
            not isinstance(answer, dict)
            or str(answer.get("token_type", "")).lower() != "bearer"
            or not answer.get("access_token")
        ):
            raise _Rejected("the token endpoint did not answer with a bearer token", status_code=code)
        expires_in = answer.get("expires_in")
        # Without `expires_in` the token is kept until the server answers 401.
        lifetime = float(expires_in) if expires_in is not None else float("inf")
        self._token = str(answer["access_token"])
        self._token_renew_at = asked_at + lifetime - _TOKEN_REFRESH_MARGIN_SECONDS

    def _call(self, fn: Callable[[], T]) -> T:
        """One attempt; failures become _Transient (worth repeating) or _Rejected."""
        try:
            self._ensure_token()
            return fn()
        except (_Transient, _Rejected):
            raise
        except httpx.TimeoutException as exc:
            raise _Transient(f"timed out after {self.timeout:g} s", delay=None, outcome_unknown=True) from exc
        except httpx.ConnectError as exc:
            # Nothing was sent.
            raise _Transient(f"connection failed: {exc}", delay=None, outcome_unknown=False) from exc
        except (httpx.TransportError, errors.NoResponseError) as exc:
            raise _Transient(f"transport error: {exc}", delay=None, outcome_unknown=True) from exc
        except errors.SDKError as exc:
            code = exc.status_code
            if code == 429:
                raise _Transient(
                    "HTTP 429 Too Many Requests",
                    delay=parse_retry_after(exc.headers.get("retry-after")),
                    outcome_unknown=False,
                ) from exc
            if code == 401:
                # The token was revoked or expired early: the next attempt fetches a fresh one.
                self._token = None
                raise _Transient("HTTP 401, token refreshed", delay=0.0, outcome_unknown=False) from exc
            if code >= 500:
                raise _Transient(
                    f"HTTP {code}",
                    delay=parse_retry_after(exc.headers.get("retry-after")),
                    outcome_unknown=True,
                ) from exc
            raise _Rejected(f"HTTP {code} {_short(exc.body)}", status_code=code) from exc
        except errors.AirbyteAPIError as exc:
            raise _Rejected(f"HTTP {exc.status_code} {_short(exc.body)}", status_code=exc.status_code) from exc

    def _delay(self, exc: _Transient, failures: int) -> float:
        if exc.delay is not None:
            return exc.delay
        base = min(self.backoff * 2 ** (failures - 1), _MAX_BACKOFF_SECONDS)
        return base * (0.5 + random.random() / 2)

    def _check_budget(
        self,
        failures: int,
        delay: float,
        deadline: float | None,
        reason: str,
        what: str,
        connection_id: str,
        job_id: int | None = None,
    ) -> None:
        if failures > self.retries:
            raise AirbyteSyncError(
                f"Airbyte API call '{what}' for connection {connection_id} failed {failures} times; last: {reason}",
                connection_id=connection_id,
                job_id=job_id,
            )
        if deadline is not None and self._clock() + delay > deadline:
            raise AirbyteSyncError(
                f"Airbyte API call '{what}' for connection {connection_id} still failing when the "
                f"{self.max_wait:g} s budget ran out; last: {reason}",
                connection_id=connection_id,
                job_id=job_id,
            )


def _short(text: str | None, limit: int = 300) -> str:
    text = (text or "").strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
