"""CPU per request of the fetch path over https, on one kept-alive TLS connection.

``python -m benchmarks.tls_fetch_bench [--n 300]`` serves a 304 and a 100 KB
200 from a scripted TLS server on 127.0.0.1 (``tests/support/wire.py``, a
self-signed certificate trusted through ``SSL_CERT_FILE``, as httpx's
context reads it) and prints the event loop thread's CPU per request
(``time.thread_time``: the server's threads live in the same process and are
not counted). The first request opens the connection and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import tempfile
import time
from pathlib import Path

from aggregator.fetch import Fetcher
from tests.support.smtp import self_signed_certificate
from tests.support.wire import Answer, WireServer, wire_server

BODY = b"<rss>" + b"k" * 100_000 + b"</rss>"
NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n'
FULL = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "v1"\r\n\r\n' % len(BODY) + BODY


async def _per_request(server: WireServer, n: int, etag: str | None) -> float:
    async with Fetcher(trust_env=True) as fetcher:
        await fetcher.fetch_url(server.url(), source_id="bench")
        started = time.thread_time()
        for _ in range(n):
            await fetcher.fetch_url(server.url(), source_id="bench", etag=etag, decode=False)
        return (time.thread_time() - started) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        cert, key = self_signed_certificate(Path(tmp))
        os.environ["SSL_CERT_FILE"] = str(cert)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        figures = {}
        for kind, answer, etag in (("304", NOT_MODIFIED, '"v1"'), ("full_100kb", FULL, None)):
            with wire_server([Answer(answer)], tls=context) as server:
                cpu_ms = asyncio.run(_per_request(server, args.n, etag))
                figures[kind] = {"cpu_ms": round(cpu_ms, 3), "connections": server.connections}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
