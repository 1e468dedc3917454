"""uvicorn as the platform's HTTP services run it, with the limits a public endpoint needs before any app code runs.

uvicorn offers a bound on the request head's size only with its h11 parser (``h11_max_incomplete_event_size``;
its default httptools parser buffers a header of any size, which is how one 64 MB header doubled the
receiver's memory). It has no bound on the time a client may take to send a request head: its keep-alive
timeout only runs between requests. `GuardedH11Protocol` is uvicorn's h11 protocol with both:

* a request head larger than `ServerLimits.max_header_bytes` is answered ``431`` as soon as that many bytes
  arrived, and the connection closed, so the rest of it is never read or parsed;
* a request head not complete within `ServerLimits.header_timeout_seconds` of its first byte (or of the
  connection, for a client that sends nothing) is answered ``408`` and the connection closed.

The number of header fields and the time to send a body are limited in the receiver itself, where the
answer can name the reason like any other refusal.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dagster_project import settings


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024  # request line and header fields together
    header_timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls) -> ServerLimits:
        return cls(
            max_header_bytes=settings.webhook_max_header_bytes(),
            header_timeout_seconds=settings.webhook_header_timeout_seconds(),
        )


def _refusal(status: int, phrase: str, reason: str) -> bytes:
    """A complete response closing the connection, written directly: h11 cannot answer a request whose head it
    has not parsed."""
    body = json.dumps({"error": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a size limit answered 431 and a time limit on receiving a request head."""

    # set on a subclass (`protocol_with`) to fix the limits; otherwise each connection reads them from settings,
    # which is what a worker process started by uvicorn (`workers` > 1) can do
    limits: ClassVar[ServerLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = type(self).limits or ServerLimits.from_settings()
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # While a head is being read, the parser gets at most the bytes left under the limit, so the body bytes
        # that follow a head in the same read are never counted against it.
        while data and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._head_timer is None:
                self._arm_head_timer()
            room = self._limits.max_header_bytes - self._head_bytes
            if room <= 0:
                self._refuse(431, "Request Header Fields Too Large", "headers_too_large")
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.conn.their_state is not h11.IDLE:  # the head is complete
                self._cancel_head_timer()
                self._head_bytes = 0
        if data and not self.transport.is_closing():
            super().data_received(data)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._limits.header_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still being written; the keep-alive timer takes over after it
        if self._head_bytes:
            self._refuse(408, "Request Timeout", "header_timeout")
        else:
            self.transport.close()  # an idle connection: nothing to answer

    def _refuse(self, status: int, phrase: str, reason: str) -> None:
        self._cancel_head_timer()
        self.logger.warning("request head refused", extra={"fields": {"status": status, "reason": reason}})
        self.transport.write(_refusal(status, phrase, reason))
        self.transport.close()


def protocol_with(limits: ServerLimits) -> type[GuardedH11Protocol]:
    """`GuardedH11Protocol` with fixed limits (an embedded server, tests)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def uvicorn_options(limits: ServerLimits | None = None) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config`/`uvicorn.run` that every platform HTTP service uses."""
    head_limit = (limits or ServerLimits.from_settings()).max_header_bytes
    return {
        "http": protocol_with(limits) if limits is not None else GuardedH11Protocol,
        # h11's own bound: the backstop for bytes that arrive while a previous request is still being answered
        "h11_max_incomplete_event_size": head_limit,
        "ws": "none",  # no service speaks WebSocket; an upgrade request is a plain request
        "log_config": None,  # keep the JSON handler the service configured
        "access_log": False,  # every request a service cares about is logged by the service, with its outcome
        "proxy_headers": False,
        "server_header": False,
    }


def config(app: Any, *, host: str, port: int, limits: ServerLimits | None = None, **overrides: Any) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, **(uvicorn_options(limits) | overrides))
