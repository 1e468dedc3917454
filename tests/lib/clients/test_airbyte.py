"""The Airbyte sync client against a loopback server that speaks Airbyte's public API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dagster_project.lib.clients.airbyte import (
    AirbyteClient,
    AirbyteSyncError,
    parse_iso_duration,
    parse_retry_after,
)
from tests.fakes.airbyte_server import FakeAirbyteServer, JobScript

CONNECTION = "9f3c1b2e-5d4a-4c6b-8e7f-0a1b2c3d4e5f"


class FakeClock:
    """The client's clock and sleep: sleeping moves the clock on at once, so waits cost no real time and
    every duration the client measures is exact whatever the machine's speed."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def server() -> Iterator[FakeAirbyteServer]:
    with FakeAirbyteServer(client_id=f"client-{uuid.uuid4()}", client_secret=f"secret-{uuid.uuid4()}") as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(server: FakeAirbyteServer, clock: FakeClock, **overrides: float) -> AirbyteClient:
    # Waits are on the fake clock; only `timeout` (one HTTP request) is real time.
    options: dict = dict(timeout=5, poll_interval=5, max_poll_interval=20, max_wait=3600, retries=5, backoff=1)
    options.update(overrides)
    return AirbyteClient(server.url, server.client_id, server.client_secret, clock=clock, sleep=clock.sleep, **options)


def test_sync_triggers_one_job_and_waits_for_success(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.script_next_job(JobScript(steps=("running", "running", "succeeded"), rows_synced=42, bytes_synced=999))
    with client_for(server, clock) as client:
        result = client.sync(CONNECTION)

    [job] = server.jobs(CONNECTION)
    assert result.job_id == job["jobId"]
    assert result.status == "succeeded"
    assert (result.rows_synced, result.bytes_synced) == (42, 999)
    assert result.attached is False
    assert result.duration_seconds >= 0
    assert len(server.calls("create_job")) == 1
    assert server.calls("create_job")[0].body == {"connectionId": CONNECTION, "jobType": "sync"}
    assert len(server.calls("get_job")) == 3

    # Before triggering, the client looked for a running sync of this connection.
    first_api_call = next(r for r in server.requests if r.operation != "token")
    assert first_api_call.operation == "list_jobs"
    assert first_api_call.query["connectionId"] == [CONNECTION]
    assert first_api_call.query["jobType"] == ["sync"]
    assert first_api_call.query["orderBy"] == ["createdAt|DESC"]


def test_bearer_token_comes_from_client_credentials(server: FakeAirbyteServer, clock: FakeClock) -> None:
    with client_for(server, clock) as client:
        client.sync(CONNECTION)

    [token_call] = server.calls("token")
    assert token_call.path == "/applications/token"
    assert token_call.body["grant_type"] == "client_credentials"
    assert token_call.body["client_id"] == server.client_id
    assert token_call.body["client_secret"] == server.client_secret
    api_calls = [r for r in server.requests if r.operation != "token"]
    assert api_calls
    assert {r.headers["authorization"] for r in api_calls} == {f"Bearer {server.tokens_issued[0]}"}
    assert all(r.status == 200 for r in api_calls)


def test_expired_token_is_refreshed(server: FakeAirbyteServer, clock: FakeClock) -> None:
    # A token is renewed 60 s before it expires: 180 s of validity is good for 120 s on the client's clock.
    server.token_expires_in = 180
    with client_for(server, clock) as client:
        issued_at = clock.now
        client.sync(CONNECTION)
        assert clock.now - issued_at < 120  # the whole first sync ran on the first token
        clock.now = issued_at + 100
        client.sync(CONNECTION)
        assert clock.now - issued_at < 120
        assert len(server.tokens_issued) == 1
        clock.now = issued_at + 121
        client.sync(CONNECTION)

    assert len(server.tokens_issued) == 2
    assert all(r.status != 401 for r in server.requests)
    last = server.requests[-1]
    assert last.headers["authorization"] == f"Bearer {server.tokens_issued[1]}"


def test_revoked_token_is_replaced_after_a_401(server: FakeAirbyteServer, clock: FakeClock) -> None:
    with client_for(server, clock) as client:
        client.sync(CONNECTION)
        server.revoke_tokens()
        result = client.sync(CONNECTION)

    assert result.status == "succeeded"
    assert len(server.tokens_issued) == 2
    assert [r.status for r in server.requests if r.status == 401] == [401]
    assert len(server.jobs(CONNECTION)) == 2


def test_429_waits_for_retry_after(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.fail("create_job", 429, retry_after="1")
    with client_for(server, clock) as client:
        result = client.sync(CONNECTION)

    first, second = server.calls("create_job")
    assert first.status == 429 and second.status == 200
    assert clock.sleeps[0] == 1.0  # the only wait before the second create, taken from Retry-After
    assert [j["jobId"] for j in server.jobs(CONNECTION)] == [result.job_id]


def test_5xx_is_retried_with_backoff(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.fail("list_jobs", 500)
    server.fail("create_job", 502, times=2)
    server.fail("get_job", 503, times=3)
    with client_for(server, clock) as client:
        result = client.sync(CONNECTION)

    assert result.status == "succeeded"
    assert [r.status for r in server.calls("create_job")] == [502, 502, 200]
    # Backoff with jitter: the first retry of a call waits 0.5-1 x `backoff`, the second 1-2 x.
    list_wait, create_first, create_second = clock.sleeps[:3]
    assert 0.5 <= list_wait <= 1 and 0.5 <= create_first <= 1 and 1 <= create_second <= 2
    assert len(server.jobs(CONNECTION)) == 1
    statuses = [r.status for r in server.calls("get_job")]
    assert statuses[:3] == [503, 503, 503] and statuses[-1] == 200


def test_retries_are_bounded(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.fail("create_job", 503, times=10)
    with client_for(server, clock, retries=2) as client, pytest.raises(AirbyteSyncError) as raised:
        client.sync(CONNECTION)

    assert len(server.calls("create_job")) == 3
    message = str(raised.value)
    assert CONNECTION in message and "failed 3 times" in message and "HTTP 503" in message
    assert server.jobs() == []


def test_create_timeout_adopts_the_job_instead_of_creating_a_duplicate(
    server: FakeAirbyteServer, clock: FakeClock
) -> None:
    server.hold_create_answers = True  # the job is created at once; the answer never comes
    with client_for(server, clock, timeout=0.5) as client:
        result = client.sync(CONNECTION)

    [job] = server.jobs(CONNECTION)
    assert len(server.calls("create_job")) == 1
    assert result.job_id == job["jobId"]
    assert result.status == "succeeded"
    assert result.attached is True


def test_create_timeout_adopts_a_job_that_already_finished(server: FakeAirbyteServer, clock: FakeClock) -> None:
    # A very short sync can be over before the client looks again; it must still not start a second one.
    previous = server.add_job(CONNECTION, status="succeeded")
    server.script_next_job(JobScript(initial="succeeded", steps=()))
    server.hold_create_answers = True
    with client_for(server, clock, timeout=0.5) as client:
        result = client.sync(CONNECTION)

    jobs = server.jobs(CONNECTION)
    assert len(jobs) == 2
    assert len(server.calls("create_job")) == 1
    assert result.job_id == jobs[-1]["jobId"] != previous


def test_running_job_is_attached_instead_of_triggering(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.add_job("another-connection", status="running")
    running = server.add_job(CONNECTION, status="running", script=JobScript(steps=("running", "succeeded")))
    with client_for(server, clock) as client:
        result = client.sync(CONNECTION)

    assert server.calls("create_job") == []
    assert result.job_id == running
    assert result.attached is True
    assert result.status == "succeeded"


def test_sync_started_by_someone_else_meanwhile_is_attached(server: FakeAirbyteServer, clock: FakeClock) -> None:
    competing: list[int] = []
    server.before_create = lambda: competing.append(server.add_job(CONNECTION, status="running"))
    with client_for(server, clock) as client:
        result = client.sync(CONNECTION)

    assert [r.status for r in server.calls("create_job")] == [409]
    assert result.job_id == competing[0]
    assert len(server.jobs(CONNECTION)) == 1


@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_failed_or_cancelled_job_raises_a_clear_error(server: FakeAirbyteServer, clock: FakeClock, final: str) -> None:
    server.script_next_job(JobScript.ending(final, after=2))
    with client_for(server, clock) as client, pytest.raises(AirbyteSyncError) as raised:
        client.sync(CONNECTION)

    [job] = server.jobs(CONNECTION)
    error = raised.value
    assert (error.connection_id, error.job_id, error.status) == (CONNECTION, job["jobId"], final)
    assert str(error) == f"Airbyte sync job {job['jobId']} of connection {CONNECTION} ended with status '{final}'"


def test_never_ending_job_times_out_and_is_cancelled(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.script_next_job(JobScript.never_ends())
    started = clock.now
    with client_for(server, clock, max_wait=60) as client, pytest.raises(AirbyteSyncError) as raised:
        client.sync(CONNECTION)

    [job] = server.jobs(CONNECTION)
    error = raised.value
    # It polled until the budget was spent, never beyond it.
    assert clock.now - started == pytest.approx(60)
    assert len(server.calls("get_job")) == len(clock.sleeps) >= 3
    assert (error.job_id, error.status) == (job["jobId"], "running")
    assert "did not finish within 60 s" in str(error) and CONNECTION in str(error)
    assert "the job was cancelled" in str(error)
    assert job["status"] == "cancelled"
    assert len(server.calls("cancel_job")) == 1


def test_timeout_leaves_a_job_it_did_not_start_running(server: FakeAirbyteServer, clock: FakeClock) -> None:
    theirs = server.add_job(CONNECTION, status="running", script=JobScript.never_ends())
    with client_for(server, clock, max_wait=60) as client, pytest.raises(AirbyteSyncError, match="did not finish"):
        client.sync(CONNECTION)

    assert server.calls("cancel_job") == []
    assert server.job(theirs)["status"] == "running"


def test_refused_credentials_give_a_clear_error_without_the_secret(server: FakeAirbyteServer, clock: FakeClock) -> None:
    with AirbyteClient(server.url, server.client_id, "wrong-secret-value", timeout=5, sleep=clock.sleep) as client:
        with pytest.raises(AirbyteSyncError) as raised:
            client.sync(CONNECTION)

    message = str(raised.value)
    assert "refused the client credentials (HTTP 401)" in message
    assert "wrong-secret-value" not in message and server.client_secret not in message
    assert server.calls("create_job") == []


def test_token_endpoint_outage_is_retried(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.fail("token", 503, times=2)
    with client_for(server, clock) as client:
        result = client.sync(CONNECTION)

    assert result.status == "succeeded"
    assert [r.status for r in server.calls("token")] == [503, 503, 200]


def test_unknown_connection_is_not_retried(server: FakeAirbyteServer, clock: FakeClock) -> None:
    server.fail("create_job", 404)
    with client_for(server, clock) as client, pytest.raises(AirbyteSyncError) as raised:
        client.sync(CONNECTION)

    assert "refused to trigger a sync" in str(raised.value) and "HTTP 404" in str(raised.value)
    assert len(server.calls("create_job")) == 1


def test_parse_retry_after_and_duration() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_iso_duration("PT8H6M12S") == 8 * 3600 + 6 * 60 + 12
    assert parse_iso_duration("PT1.5S") == 1.5
    assert parse_iso_duration("P1DT1S") == 86401
    assert parse_iso_duration("PT") is None
    assert parse_iso_duration("8 minutes") is None
