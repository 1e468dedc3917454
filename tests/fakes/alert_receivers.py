"""Where alerts go, on loopback: an HTTP receiver (generic webhook and Slack both POST JSON) and a small SMTP
server that speaks what `smtplib` sends (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT). Both record what they got."""

from __future__ import annotations

import base64
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dagster_project.services.loopback import serve_in_thread


@dataclass
class Posted:
    path: str
    content_type: str
    body: Any


@dataclass
class HttpReceiver:
    base_url: str
    posts: list[Posted] = field(default_factory=list)
    status_by_path: dict[str, int] = field(default_factory=dict)  # answer these paths with this status

    def on(self, path: str) -> list[Any]:
        return [p.body for p in list(self.posts) if p.path == path]


@contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver(base_url="")

    async def receive(request: Request) -> JSONResponse:
        path = request.url.path
        receiver.posts.append(Posted(path, request.headers.get("content-type", ""), await request.json()))
        return JSONResponse({"ok": True}, status_code=receiver.status_by_path.get(path, 200))

    app = Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
    with serve_in_thread(app, name="alert-receiver") as base_url:
        receiver.base_url = base_url
        yield receiver


@dataclass
class SmtpServer:
    host: str
    port: int
    username: str
    password: str
    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # user names that authenticated


class _SmtpHandler(socketserver.StreamRequestHandler):
    server: _SmtpTcpServer

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        state = self.server.state
        sender, recipients = "", []
        self._reply("220 loopback ESMTP")
        while raw := self.rfile.readline():
            line = raw.decode().rstrip("\r\n")
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self._reply("250-loopback")
                self._reply("250-AUTH PLAIN")
                self._reply("250 8BITMIME")
            elif verb == "HELO":
                self._reply("250 loopback")
            elif verb == "AUTH":
                mechanism, _, initial = argument.partition(" ")
                if mechanism.upper() != "PLAIN":
                    self._reply("504 unsupported")
                    continue
                if not initial:
                    self._reply("334 ")
                    initial = self.rfile.readline().decode().strip()
                _, user, password = base64.b64decode(initial).split(b"\0")
                if (user.decode(), password.decode()) == (state.username, state.password):
                    state.logins.append(user.decode())
                    self._reply("235 authenticated")
                else:
                    self._reply("535 authentication failed")
            elif verb == "MAIL":
                sender, recipients = argument.split(":", 1)[1].strip().strip("<>"), []
                self._reply("250 ok")
            elif verb == "RCPT":
                recipients.append(argument.split(":", 1)[1].strip().strip("<>"))
                self._reply("250 ok")
            elif verb == "DATA":
                self._reply("354 end with .")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)  # undo dot-stuffing
                state.envelopes.append((sender, recipients))
                state.messages.append(message_from_bytes(b"".join(lines)))
                self._reply("250 queued")
            elif verb in ("RSET", "NOOP"):
                self._reply("250 ok")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")


class _SmtpTcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: SmtpServer


@contextmanager
def smtp_server(username: str, password: str) -> Iterator[SmtpServer]:
    server = _SmtpTcpServer(("127.0.0.1", 0), _SmtpHandler)
    server.state = SmtpServer("127.0.0.1", server.server_address[1], username, password)
    # Polled every 20 ms for the shutdown (the default 0.5 s is waited out by every test's teardown).
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="smtp-server", daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, poll: float = 0.2) -> Any:
    """Poll until `condition()` is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
