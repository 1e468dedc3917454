"""A stand-in for Airbyte's public API (v1) on loopback, for tests of the sync client.

It answers what the `airbyte-api` SDK calls, shaped as Airbyte documents it:

- `POST {base}/applications/token`  JSON or form body `client_id`, `client_secret`, `grant_type`
  (`grant-type` accepted too) -> `{"access_token", "token_type": "Bearer", "expires_in"}`
- `GET  {base}/jobs`  filters `connectionId`, `jobType`, `status`; `orderBy` (`createdAt|DESC`, ...),
  `limit` (1..100, default 20), `offset` -> `{"data": [job...], "next"?, "previous"?}`
- `POST {base}/jobs`  `{"connectionId", "jobType"}` -> job; 409 while a sync of the connection is running
- `GET  {base}/jobs/{jobId}` -> job;  `DELETE {base}/jobs/{jobId}` -> the cancelled job
- a job: `{"jobId", "status", "jobType", "startTime", "connectionId", "lastUpdatedAt", "duration"?,
  "rowsSynced"?, "bytesSynced"?}`

Every API call needs `Authorization: Bearer <token>` from the token endpoint (401 otherwise).
Behaviour is scripted per test: injected failures per operation (429 with Retry-After, 5xx), a create
that creates the job and holds its answer back until the test releases it (or the server stops), and
per-job status scripts that advance one step on every `GET /jobs/{id}` (a failed job, a cancelled job, a
job that never ends). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dagster_project.services.loopback import serve_in_thread

ACTIVE = {"pending", "running", "incomplete"}
TERMINAL = {"succeeded", "failed", "cancelled"}
JOB_TYPES = {"sync", "reset", "refresh", "clear"}
STATUSES = ACTIVE | TERMINAL

OPERATIONS = ("token", "list_jobs", "create_job", "get_job", "cancel_job")


@dataclass
class JobScript:
    """How a job evolves: `initial` at creation, then one entry of `steps` per GET; the last one sticks."""

    steps: tuple[str, ...] = ("running", "succeeded")
    initial: str = "pending"
    rows_synced: int | None = 1200
    bytes_synced: int | None = 345_678

    @classmethod
    def never_ends(cls) -> JobScript:
        return cls(steps=("running",))

    @classmethod
    def ending(cls, status: str, after: int = 1) -> JobScript:
        return cls(steps=("running",) * after + (status,))


@dataclass
class Fault:
    status: int
    retry_after: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    operation: str
    method: str
    path: str  # relative to the API base, e.g. "/jobs/3"
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    status: int = 0  # status answered


@dataclass
class _Job:
    job_id: int
    connection_id: str
    job_type: str
    status: str
    script: JobScript
    created_at: float
    updated_at: float
    step: int = 0
    polls: int = 0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobId": self.job_id,
            "status": self.status,
            "jobType": self.job_type,
            "startTime": _iso(self.created_at),
            "connectionId": self.connection_id,
            "lastUpdatedAt": _iso(self.updated_at),
        }
        if self.status in TERMINAL:
            out["duration"] = f"PT{max(self.updated_at - self.created_at, 0):.3f}S"
        if self.status == "succeeded":
            if self.script.rows_synced is not None:
                out["rowsSynced"] = self.script.rows_synced
            if self.script.bytes_synced is not None:
                out["bytesSynced"] = self.script.bytes_synced
        return out


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class FakeAirbyteServer:
    """Run with `with FakeAirbyteServer(...) as server:`; `server.url` is the SDK's server_url."""

    def __init__(
        self,
        *,
        client_id: str = "test-client",
        client_secret: str = "test-secret",
        base_path: str = "/api/public/v1",
        token_expires_in: int = 180,
        conflict_when_running: bool = True,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.base_path = base_path.rstrip("/")
        self.token_expires_in = token_expires_in
        self.conflict_when_running = conflict_when_running
        # While set, POST /jobs creates the job and then holds its answer until `release_create_answers()`:
        # the client's request times out whatever the machine's speed, after the job exists.
        self.hold_create_answers = False
        self._create_released = threading.Event()
        # Runs when a POST /jobs arrives, before it is handled: lets a test start a competing job.
        self.before_create: Callable[[], None] | None = None
        self.default_script = JobScript()
        self.requests: list[RecordedRequest] = []
        self.tokens_issued: list[str] = []
        self._lock = threading.Lock()
        self._faults: dict[str, deque[Fault]] = {op: deque() for op in OPERATIONS}
        self._scripts: deque[JobScript] = deque()
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(101)
        self._tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self._serving = contextlib.ExitStack()
        self._origin = ""

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self._origin}{self.base_path}"

    def start(self) -> FakeAirbyteServer:
        b = self.base_path
        app = Starlette(
            routes=[
                Route(f"{b}/applications/token", self._token, methods=["POST"]),
                Route(f"{b}/jobs", self._list_jobs, methods=["GET"]),
                Route(f"{b}/jobs", self._create_job, methods=["POST"]),
                Route(f"{b}/jobs/{{job_id:int}}", self._get_job, methods=["GET"]),
                Route(f"{b}/jobs/{{job_id:int}}", self._cancel_job, methods=["DELETE"]),
            ]
        )
        self._origin = self._serving.enter_context(serve_in_thread(app, name="fake Airbyte server"))
        return self

    def stop(self) -> None:
        self.release_create_answers()
        self._serving.close()

    def __enter__(self) -> FakeAirbyteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------------------------------

    def fail(self, operation: str, status: int, *, times: int = 1, retry_after: str | None = None) -> None:
        """Answer the next `times` calls of `operation` with `status` (and a Retry-After header if given)."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {OPERATIONS}")
        with self._lock:
            for _ in range(times):
                self._faults[operation].append(Fault(status, retry_after, {"message": f"injected {status}"}))

    def script_next_job(self, script: JobScript) -> None:
        """The next job created through POST /jobs follows `script` (queued; then `default_script`)."""
        with self._lock:
            self._scripts.append(script)

    def add_job(self, connection_id: str, *, status: str = "running", script: JobScript | None = None) -> int:
        """Seed a job as if someone else had triggered it (e.g. Airbyte's own schedule)."""
        with self._lock:
            job = self._new_job(connection_id, "sync", script or JobScript())
            job.status = status
            return job.job_id

    def release_create_answers(self) -> None:
        self._create_released.set()

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- inspection ----------------------------------------------------------------------------------

    def calls(self, operation: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.operation == operation]

    def jobs(self, connection_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                j.as_json()
                for j in sorted(self._jobs.values(), key=lambda j: j.job_id)
                if connection_id is None or j.connection_id == connection_id
            ]

    def job(self, job_id: int) -> dict[str, Any]:
        with self._lock:
            return self._jobs[job_id].as_json()

    # -- handlers ------------------------------------------------------------------------------------

    async def _record(self, request: Request, operation: str) -> RecordedRequest:
        raw = await request.body()
        body: Any = None
        if raw:
            ctype = request.headers.get("content-type", "")
            if "application/x-www-form-urlencoded" in ctype:
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            else:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        rec = RecordedRequest(
            operation=operation,
            method=request.method,
            path=request.url.path[len(self.base_path) :],
            query=parse_qs(request.url.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(rec)
        return rec

    def _respond(self, rec: RecordedRequest, status: int, payload: Any, headers: dict[str, str] | None = None):
        rec.status = status
        return JSONResponse(payload, status_code=status, headers=headers)

    def _fault(self, rec: RecordedRequest) -> Response | None:
        with self._lock:
            queue = self._faults[rec.operation]
            fault = queue.popleft() if queue else None
        if fault is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return self._respond(rec, fault.status, fault.body, headers)

    def _authorized(self, rec: RecordedRequest) -> bool:
        auth = rec.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self._tokens.get(auth[len("Bearer ") :])
        return expiry is not None and expiry > time.time()

    async def _guarded(self, request: Request, operation: str) -> tuple[RecordedRequest, Response | None]:
        rec = await self._record(request, operation)
        if not self._authorized(rec):
            return rec, self._respond(rec, 401, {"message": "Unauthorized"})
        return rec, self._fault(rec)

    async def _token(self, request: Request) -> Response:
        rec = await self._record(request, "token")
        fault = self._fault(rec)
        if fault is not None:
            return fault
        body = rec.body if isinstance(rec.body, dict) else {}
        grant = body.get("grant_type", body.get("grant-type"))
        if grant != "client_credentials":
            return self._respond(rec, 400, {"message": "grant_type must be client_credentials"})
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return self._respond(rec, 401, {"message": "Invalid client credentials"})
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.time() + self.token_expires_in
            self.tokens_issued.append(token)
        return self._respond(
            rec, 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_expires_in}
        )

    async def _list_jobs(self, request: Request) -> Response:
        rec, early = await self._guarded(request, "list_jobs")
        if early is not None:
            return early
        q = request.query_params
        try:
            limit = int(q.get("limit", "20"))
            offset = int(q.get("offset", "0"))
        except ValueError:
            return self._respond(rec, 400, {"message": "limit and offset must be integers"})
        if not 1 <= limit <= 100 or offset < 0:
            return self._respond(rec, 400, {"message": "limit must be 1..100 and offset >= 0"})
        if q.get("jobType") is not None and q["jobType"] not in JOB_TYPES:
            return self._respond(rec, 400, {"message": f"unknown jobType {q['jobType']}"})
        if q.get("status") is not None and q["status"] not in STATUSES:
            return self._respond(rec, 400, {"message": f"unknown status {q['status']}"})
        order_field, order_dir = "createdAt", "ASC"
        if q.get("orderBy"):
            parts = q["orderBy"].split("|")
            if len(parts) != 2 or parts[0] not in ("createdAt", "updatedAt") or parts[1] not in ("ASC", "DESC"):
                return self._respond(rec, 400, {"message": f"invalid orderBy {q['orderBy']}"})
            order_field, order_dir = parts
        with self._lock:
            jobs = [
                j
                for j in self._jobs.values()
                if (q.get("connectionId") is None or j.connection_id == q["connectionId"])
                and (q.get("jobType") is None or j.job_type == q["jobType"])
                and (q.get("status") is None or j.status == q["status"])
            ]
            attr = "created_at" if order_field == "createdAt" else "updated_at"
            jobs.sort(key=lambda j: (getattr(j, attr), j.job_id), reverse=order_dir == "DESC")
            page = [j.as_json() for j in jobs[offset : offset + limit]]
            total = len(jobs)
        payload: dict[str, Any] = {"data": page}
        base = str(request.url).split("?")[0]
        params = {k: v for k, v in q.items() if k not in ("limit", "offset")}
        if offset + limit < total:
            payload["next"] = f"{base}?{urlencode({**params, 'limit': limit, 'offset': offset + limit})}"
        if offset > 0:
            prev = max(offset - limit, 0)
            payload["previous"] = f"{base}?{urlencode({**params, 'limit': limit, 'offset': prev})}"
        return self._respond(rec, 200, payload)

    async def _create_job(self, request: Request) -> Response:
        rec, early = await self._guarded(request, "create_job")
        if early is not None:
            return early
        if self.before_create is not None:
            self.before_create()
        body = rec.body if isinstance(rec.body, dict) else {}
        connection_id, job_type = body.get("connectionId"), body.get("jobType")
        if not connection_id or job_type not in JOB_TYPES:
            return self._respond(rec, 400, {"message": "connectionId and a valid jobType are required"})
        with self._lock:
            busy = any(j.connection_id == connection_id and j.status in ACTIVE for j in self._jobs.values())
            if busy and self.conflict_when_running:
                return self._respond(rec, 409, {"message": f"A sync is already running for: {connection_id}"})
            script = self._scripts.popleft() if self._scripts else self.default_script
            job = self._new_job(connection_id, job_type, script)
            payload = job.as_json()
        if self.hold_create_answers:
            await asyncio.to_thread(self._create_released.wait)
        return self._respond(rec, 200, payload)

    async def _get_job(self, request: Request) -> Response:
        rec, early = await self._guarded(request, "get_job")
        if early is not None:
            return early
        job_id = request.path_params["job_id"]
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return self._respond(rec, 404, {"message": f"Job {job_id} not found"})
            job.polls += 1
            if job.status not in TERMINAL and job.script.steps:
                job.status = job.script.steps[min(job.step, len(job.script.steps) - 1)]
                job.step += 1
                job.updated_at = time.time()
            payload = job.as_json()
        return self._respond(rec, 200, payload)

    async def _cancel_job(self, request: Request) -> Response:
        rec, early = await self._guarded(request, "cancel_job")
        if early is not None:
            return early
        job_id = request.path_params["job_id"]
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return self._respond(rec, 404, {"message": f"Job {job_id} not found"})
            if job.status in TERMINAL:
                return self._respond(rec, 409, {"message": f"Job {job_id} is already {job.status}"})
            job.status = "cancelled"
            job.updated_at = time.time()
            payload = job.as_json()
        return self._respond(rec, 200, payload)

    def _new_job(self, connection_id: str, job_type: str, script: JobScript) -> _Job:
        now = time.time()
        job = _Job(
            job_id=next(self._ids),
            connection_id=connection_id,
            job_type=job_type,
            status=script.initial,
            script=script,
            created_at=now,
            updated_at=now,
        )
        self._jobs[job.job_id] = job
        return job
