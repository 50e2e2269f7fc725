"""A uvicorn server that leaves signal handling and client addresses to its owner.

uvicorn installs its own SIGINT/SIGTERM handlers while it serves and re-raises
the signal afterwards. Inside ``aggregator run`` and ``aggregator demo`` the
service owns shutdown (scheduler first, in-flight fetches, then the web app),
so the embedded server must not grab the signals.

uvicorn also believes ``X-Forwarded-For`` from 127.0.0.1 by default and then
overwrites the peer address with it, so a local client could name any address
it likes and the app could not tell. Proxy headers are turned off here; the
app reads them itself, and only from ``web.trusted_proxies``
(:func:`aggregator.web.security.client_address`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        config.proxy_headers = False
        super().__init__(config)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
