"""A real HTTP server on 127.0.0.1 for tests: fixtures ``http_server`` and ``http_server_factory``.

The server runs ``http.server.ThreadingHTTPServer`` in a background thread on a
free port and speaks HTTP/1.1 with keep-alive, so clients exercise real
sockets, real headers and real timing. Tests register canned responses::

    def test_something(http_server):
        http_server.add("/feed.xml", RSS, etag='"v1"')
        url = http_server.url("/feed.xml")
        ...
        assert http_server.count("/feed.xml") == 1

Unknown paths answer 404. A path registered with a query string
(``/list?page=2``) wins over the bare path. Client disconnects (timeouts,
aborted downloads) are expected in these tests and are silently ignored.
"""

from __future__ import annotations

import gzip as gzip_module
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import pytest

__all__ = [
    "FixtureServer",
    "Headers",
    "RecordedRequest",
    "http_server",
    "http_server_factory",
    "unused_port",
]

# Errors a client causes by going away mid-response; not worth a traceback.
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class Headers(dict[str, str]):
    """A plain dict of request headers whose lookups ignore case.

    Keys are stored lower-case; ``headers["User-Agent"]``, ``"etag" in headers``
    and ``headers.get("If-None-Match")`` all work. Repeated headers are joined
    with ``", "``.
    """

    def __init__(self, items: Iterator[tuple[str, str]] | list[tuple[str, str]] = ()) -> None:
        super().__init__()
        for key, value in items:
            lower = key.lower()
            self[lower] = f"{dict.__getitem__(self, lower)}, {value}" if lower in self else value

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


class RecordedRequest(NamedTuple):
    """One request as the server received it; ``time`` is ``time.monotonic()`` at arrival."""

    method: str
    path: str  # with the query string, as sent
    headers: Headers
    body: bytes
    time: float


@dataclass(frozen=True)
class _Response:
    """A canned response; the fields mirror the keyword arguments of ``FixtureServer.add``."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "application/rss+xml; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    gzip: bool = False
    delay: float = 0.0
    trickle: float | None = None
    chunked: bool = False
    raw: bool = False  # send body and headers exactly as given (add_raw)


def _make_response(body: bytes | str = b"", **kwargs: Any) -> _Response:
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    return _Response(body=data, **kwargs)


class _Route:
    """Successive requests get successive responses; the last one repeats."""

    def __init__(self, responses: list[_Response]) -> None:
        if not responses:
            raise ValueError("a route needs at least one response")
        self._responses = responses
        self._next = 0

    def take(self) -> _Response:
        response = self._responses[min(self._next, len(self._responses) - 1)]
        self._next += 1
        return response


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison as RFC 9110 asks for If-None-Match."""
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def _not_modified_since(if_modified_since: str, last_modified: str) -> bool:
    if if_modified_since.strip() == last_modified.strip():
        return True
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real feed servers
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fixture._connection_opened()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on ``FixtureServer.requests`` instead."""

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _serve(self) -> None:
        fixture = self.server.fixture
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=Headers(list(self.headers.items())),
            body=body,
            time=time.monotonic(),
        )
        response = fixture._record_and_route(request)
        try:
            if response is None:
                self._send(_make_response(b"not found\n", status=404, content_type="text/plain"))
            else:
                self._send(response)
        finally:
            fixture._finish(request.path)

    def _send(self, response: _Response) -> None:
        stop = self.server.fixture._stopping
        if response.delay and stop.wait(response.delay):
            self.close_connection = True
            return
        status = response.status
        body = response.body
        headers: list[tuple[str, str]] = []
        if response.raw:
            headers.extend(response.headers.items())
        else:
            if response.content_type is not None:
                headers.append(("Content-Type", response.content_type))
            if response.etag is not None:
                headers.append(("ETag", response.etag))
            if response.last_modified is not None:
                headers.append(("Last-Modified", response.last_modified))
            headers.extend(response.headers.items())
            if self._is_not_modified(response):
                status, body = 304, b""
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            elif response.gzip:
                headers.append(("Vary", "Accept-Encoding"))
                accepted = self.headers.get("Accept-Encoding", "")
                if "gzip" in accepted.lower():
                    body = gzip_module.compress(body, mtime=0)
                    headers.append(("Content-Encoding", "gzip"))
        names = {k.lower() for k, _ in headers}
        chunked = response.chunked or "chunked" in {
            v.lower() for k, v in headers if k.lower() == "transfer-encoding"
        }
        bodiless = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        if response.chunked and "transfer-encoding" not in names:
            headers.append(("Transfer-Encoding", "chunked"))
        elif not chunked and "content-length" not in names and status not in (204, 304):
            headers.append(("Content-Length", str(len(body))))

        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if bodiless:
            return
        if chunked:
            self._write_chunked(body, response.trickle)
        else:
            self._write(body, response.trickle)

    def _is_not_modified(self, response: _Response) -> bool:
        if response.status != 200 or self.command not in ("GET", "HEAD"):
            return False
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None and response.etag is not None:
            # If-None-Match decides alone when both validators are sent (RFC 9110 13.2.2).
            return _etag_matches(if_none_match, response.etag)
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since is not None and response.last_modified is not None:
            return _not_modified_since(if_modified_since, response.last_modified)
        return False

    def _write(self, data: bytes, trickle: float | None) -> None:
        if not trickle:
            self.wfile.write(data)
            return
        stop = self.server.fixture._stopping
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            if stop.wait(trickle):
                self.close_connection = True
                return

    def _write_chunked(self, data: bytes, trickle: float | None) -> None:
        size = 1 if trickle else 64 * 1024
        stop = self.server.fixture._stopping
        for i in range(0, len(data), size):
            piece = data[i : i + size]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if trickle:
                self.wfile.flush()
                if stop.wait(trickle):
                    self.close_connection = True
                    return
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    fixture: FixtureServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up (the point of many tests); report anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECTS) or self.fixture._stopping.is_set():
            return
        super().handle_error(request, client_address)


class FixtureServer:
    """Canned HTTP responses on a real socket. See the module docstring for an example."""

    base_url: str
    requests: list[RecordedRequest]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        self._stopping = threading.Event()
        self._in_flight: dict[str, int] = {}
        self._in_flight_total = 0
        self._max_in_flight: dict[str, int] = {}
        self._max_in_flight_total = 0
        self._connections = 0
        self.requests = []
        self._server = _Server((host, port), _Handler)
        self._server.fixture = self
        bound_host, bound_port = self._server.server_address[:2]
        self.host = str(bound_host)
        self.port = int(bound_port)
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"http-fixture-{self.port}",
            daemon=True,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FixtureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; slow (delayed, trickling) responses are cut short."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FixtureServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------- routes

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url + path

    def add(
        self,
        path: str,
        body: bytes | str,
        *,
        status: int = 200,
        content_type: str | None = "application/rss+xml; charset=utf-8",
        headers: dict[str, str] | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        gzip: bool = False,
        delay: float = 0.0,
        trickle: float | None = None,
        chunked: bool = False,
    ) -> None:
        """Serve ``body`` at ``path``; re-adding a path replaces it (a changed feed).

        ``etag``/``last_modified`` are sent and produce a 304 when the request's
        If-None-Match / If-Modified-Since match. ``gzip`` compresses the body when
        the client accepts gzip. ``delay`` waits before the status line;
        ``trickle`` sends the body one byte at a time, that many seconds apart.
        ``chunked`` uses Transfer-Encoding: chunked (no Content-Length).
        """
        self._set_route(
            path,
            [
                _make_response(
                    body,
                    status=status,
                    content_type=content_type,
                    headers=dict(headers or {}),
                    etag=etag,
                    last_modified=last_modified,
                    gzip=gzip,
                    delay=delay,
                    trickle=trickle,
                    chunked=chunked,
                )
            ],
        )

    def add_raw(
        self,
        path: str,
        raw_body: bytes,
        *,
        headers: dict[str, str],
        status: int = 200,
        delay: float = 0.0,
        trickle: float | None = None,
    ) -> None:
        """Serve ``raw_body`` with exactly ``headers`` (plus Content-Length unless
        given or chunked): for pre-compressed bodies, gzip bombs, odd encodings."""
        self._set_route(
            path,
            [
                _Response(
                    body=bytes(raw_body),
                    status=status,
                    headers=dict(headers),
                    raw=True,
                    delay=delay,
                    trickle=trickle,
                )
            ],
        )

    def redirect(self, path: str, to: str, status: int = 301) -> None:
        """Answer ``path`` with a redirect to ``to`` (a path or an absolute URL, sent as is)."""
        self._set_route(
            path,
            [_Response(status=status, content_type=None, headers={"Location": to})],
        )

    def sequence(self, path: str, responses: list[dict[str, Any]]) -> None:
        """Successive requests to ``path`` get successive responses; the last repeats.

        Each dict holds keyword arguments of :meth:`add` (``body`` defaults to empty),
        e.g. ``[{"status": 429, "headers": {"Retry-After": "1"}}, {"body": RSS}]``.
        """
        self._set_route(path, [_make_response(**spec) for spec in responses])

    def remove(self, path: str) -> None:
        """Forget ``path``: it answers 404 from now on."""
        with self._lock:
            self._routes.pop(path, None)

    def _set_route(self, path: str, responses: list[_Response]) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        with self._lock:
            self._routes[path] = _Route(responses)

    # ------------------------------------------------------------ what happened

    def count(self, path: str) -> int:
        """How many requests arrived for ``path`` (with its query string if one is given)."""
        with self._lock:
            return sum(1 for r in self.requests if _path_matches(r.path, path))

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """The recorded requests for ``path``, in order."""
        with self._lock:
            return [r for r in self.requests if _path_matches(r.path, path)]

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def answered(self, path: str) -> int:
        """How many requests for ``path`` (without its query string) were answered in full."""
        bare = path.split("?", 1)[0]
        with self._lock:
            arrived = sum(1 for r in self.requests if _path_matches(r.path, bare))
            return arrived - self._in_flight.get(bare, 0)

    def max_concurrency(self, path: str | None = None) -> int:
        """The most requests (for ``path``, or for any path) that were in flight at once."""
        with self._lock:
            if path is None:
                return self._max_in_flight_total
            return self._max_in_flight.get(path.split("?", 1)[0], 0)

    def connection_count(self) -> int:
        """How many TCP connections clients opened (keep-alive reuses one for many requests)."""
        with self._lock:
            return self._connections

    def reset(self) -> None:
        """Forget recorded requests and concurrency peaks (routes stay)."""
        with self._lock:
            self.requests.clear()
            self._connections = 0
            self._max_in_flight.clear()
            self._max_in_flight_total = self._in_flight_total

    # ----------------------------------------------------- called by the handler

    def _record_and_route(self, request: RecordedRequest) -> _Response | None:
        bare = request.path.split("?", 1)[0]
        with self._lock:
            self.requests.append(request)
            self._in_flight[bare] = self._in_flight.get(bare, 0) + 1
            self._in_flight_total += 1
            self._max_in_flight[bare] = max(self._max_in_flight.get(bare, 0), self._in_flight[bare])
            self._max_in_flight_total = max(self._max_in_flight_total, self._in_flight_total)
            route = self._routes.get(request.path) or self._routes.get(bare)
            return route.take() if route is not None else None

    def _connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    def _finish(self, path: str) -> None:
        bare = path.split("?", 1)[0]
        with self._lock:
            self._in_flight[bare] -= 1
            self._in_flight_total -= 1


def _path_matches(recorded: str, wanted: str) -> bool:
    if "?" in wanted:
        return recorded == wanted
    return recorded.split("?", 1)[0] == wanted


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for connection-refused tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[FixtureServer]:
    """A fresh :class:`FixtureServer` on a free port, stopped after the test."""
    with FixtureServer() as server:
        yield server


@pytest.fixture
def http_server_factory() -> Iterator[Callable[[], FixtureServer]]:
    """Start as many servers as a test needs (``make()`` each); all stop after the test."""
    servers: list[FixtureServer] = []

    def make() -> FixtureServer:
        server = FixtureServer().start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
