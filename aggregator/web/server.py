"""A uvicorn server that leaves signal handling to its owner.

uvicorn installs its own SIGINT/SIGTERM handlers while it serves and re-raises
the signal afterwards. Inside ``aggregator run`` and ``aggregator demo`` the
service owns shutdown (scheduler first, in-flight fetches, then the web app),
so the embedded server must not grab the signals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
