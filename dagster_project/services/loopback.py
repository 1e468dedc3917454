"""Serve an ASGI app with uvicorn on a free loopback port in a background thread (demo, tests), with the limits the
platform's services run with (`http_server`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from dagster_project.services import http_server


@contextmanager
def serve_in_thread(
    app: Any, *, name: str, startup_timeout: float = 30, limits: http_server.ServerLimits | None = None
) -> Iterator[str]:
    """Run `app` until the block ends; yields its base URL (``http://127.0.0.1:<port>``). `limits` default to
    the settings'."""
    config = http_server.config(app, host="127.0.0.1", port=0, limits=limits, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
