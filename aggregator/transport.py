"""A lean HTTP/1.1 transport for httpx, on asyncio protocols.

Why not httpx's own transport: httpcore runs every request through anyio
(locks, cancel scopes, checkpoints, a readiness ``poll`` of each idle
connection) and h11's general state machine; for a conditional GET that
ends in a 304 that was about half a millisecond of the main process's CPU,
most of a warm pass. A feed poller needs much less: GET, one request at a
time per connection, keep-alive, TLS. Here each connection is an
``asyncio.Protocol``: bytes arrive through ``data_received`` with no task
switch, an idle connection knows it was closed (``eof_received``) without
asking the kernel, and a whole response head is parsed in one go.

What is kept from httpcore/h11, on purpose:

* TLS through ``loop.create_connection(ssl=...)`` with httpx's own
  ``create_ssl_context`` (same certificate store, ``SSL_CERT_FILE`` with
  ``trust_env``), so https is verified exactly as before;
* the same limits: a response head over :data:`MAX_HEAD_BYTES` (h11's
  100 KiB under httpcore) is refused, and so is a chunk-size line or a
  trailer section that does not end;
* strict framing: ``Content-Length`` (digits only; repeated values must
  agree), ``Transfer-Encoding: chunked`` (nothing else), or "until the
  connection closes"; a body cut short is an error, not a short feed;
* malformed answers raise ``httpx.RemoteProtocolError`` saying what was
  wrong (the fetcher turns it into a ``FetchError`` naming source and URL);
* connect and read timeouts from the request's ``timeout`` extension raise
  ``httpx.ConnectTimeout`` / ``httpx.ReadTimeout``;
* a reading side that stops when :data:`HIGH_WATER` bytes are buffered, so
  a fast server cannot fill memory while its body waits to be read.

A connection goes back to the pool only when its response was read to the
end, was framed by length or chunks, came from an HTTP/1.1 server that did
not say ``Connection: close``, and left nothing unread behind it (bytes
after the end of a response are garbage, or a pipelining server we did not
ask for: either way the connection is closed). A GET on a pooled connection
that the server closed before answering (it timed out its side while we
were idle) is sent once more on a new connection, as browsers do.

The pool never waits for a free connection: its callers bound concurrency
(``Fetcher`` holds per-host and overall semaphores). Above
``max_connections`` open ones, the idle connection used least recently is
closed to make room.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = ["HIGH_WATER", "MAX_CHUNK_LINE", "MAX_HEAD_BYTES", "LeanTransport", "default_tls_context"]

# As h11 under httpcore: a response head (status line and headers) larger than this is refused.
MAX_HEAD_BYTES = 100 * 1024
# A chunk-size line (with its extensions) longer than this is refused.
MAX_CHUNK_LINE = 4 * 1024
# Reading from a connection pauses while this much is buffered and not yet taken.
HIGH_WATER = 256 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NO_BODY_STATUS = frozenset({204, 304})
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# Greedy value, stripped afterwards: a lazy group before trailing blanks backtracks
# quadratically on a long run of spaces inside a hostile value.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([\t\x20-\x7e\x80-\xff]*)")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_UNSAFE_IN_REQUEST = re.compile(rb"[\x00\r\n]")


# Default TLS contexts by (trust_env, SSL_CERT_FILE, SSL_CERT_DIR): loading the CA
# bundle is ~20 ms of CPU, once per process instead of once per Fetcher (per pass).
_tls_contexts: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}


def default_tls_context(trust_env: bool) -> ssl.SSLContext:
    """httpx's verifying TLS context (the same CA store and env settings), for HTTP/1.1.

    Built on first use and shared: an ``SSLContext`` may serve many
    connections, loops and threads at once, and its settings never change here.
    """
    env = os.environ
    key = (
        (True, env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR"))
        if trust_env
        else (False, None, None)
    )
    context = _tls_contexts.get(key)
    if context is None:
        context = httpx.create_ssl_context(trust_env=trust_env)
        context.set_alpn_protocols(["http/1.1"])
        _tls_contexts[key] = context
    return context


def _protocol_error(message: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(message)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to one origin, carrying one request at a time."""

    def __init__(self, origin: tuple[str, str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False  # the peer will send nothing more
        self.lost: BaseException | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the pool and the response

    def usable(self) -> bool:
        """Whether an idle connection may carry a request: open, silent since its last answer."""
        transport = self.transport
        return not (self.eof or self.buffer or transport is None or transport.is_closing())

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abort(self) -> None:
        """Drop the connection at once (mid-response: nothing on it can be trusted)."""
        if self.transport is not None:
            self.transport.abort()
        self.eof = True

    async def more(self, read_timeout: float | None) -> bool:
        """Wait until bytes arrive; False once the peer has closed (with the buffer empty)."""
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self.eof:
            return False
        waiter = self._waiter = self.loop.create_future()
        timer = (
            self.loop.call_later(read_timeout, _expire, waiter, read_timeout)
            if read_timeout is not None
            else None
        )
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return bool(self.buffer) or not self.eof

    def take(self, size: int | None = None) -> bytes:
        """Up to ``size`` buffered bytes (all of them when None), removed from the buffer."""
        buffer = self.buffer
        if size is None or size >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:size])
            del buffer[:size]
        return data


def _expire(waiter: asyncio.Future[None], read_timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout(f"no data for {read_timeout:g} s"))


class _Head:
    """A parsed response head and how its body is framed."""

    __slots__ = ("chunked", "headers", "keep_alive", "length", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length  # None: chunked, or until the connection closes
        self.chunked = chunked
        self.keep_alive = keep_alive


def _head_end(buffer: bytearray, start: int) -> tuple[int, int]:
    """Where the head's lines end and where the body begins, or (-1, -1) if not yet complete.

    Lines end in CRLF; a bare LF is accepted too, as h11 does.
    """
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if crlf < 0 and lf < 0:
        return -1, -1
    if lf < 0 or 0 <= crlf < lf:
        return crlf, crlf + 3
    return lf, lf + 2


def _parse_head(raw: bytes, method: bytes) -> _Head:
    lines = raw.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise _protocol_error(f"malformed status line {bytes(status_line[:100])!r}")
    minor, code, reason = match.groups()
    status = int(code)
    if status < 100:
        raise _protocol_error(f"impossible status code {status}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: part of the previous value
            if not headers:
                raise _protocol_error("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, (value + b" " + line.strip(b" \t")).strip(b" "))
            continue
        field = _HEADER_LINE.fullmatch(line)
        if field is None:
            raise _protocol_error(f"malformed header line {bytes(line[:100])!r}")
        headers.append((field[1], field[2].strip(b" \t")))

    lengths: set[bytes] = set()
    codings: list[bytes] = []
    close = minor == b"0"  # an HTTP/1.0 server's connection is not reused (as with h11)
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths.update(v.strip(b" \t") for v in value.split(b","))
        elif lower == b"transfer-encoding":
            codings.extend(v.strip(b" \t").lower() for v in value.split(b","))
        elif lower == b"connection" and b"close" in {
            v.strip(b" \t").lower() for v in value.split(b",")
        }:
            close = True

    if status in _NO_BODY_STATUS or method == b"HEAD" or status < 200:
        return _Head(status, reason or b"", headers, 0, False, not close)
    if codings:
        if codings != [b"chunked"]:
            raise _protocol_error(
                "unsupported Transfer-Encoding " + repr(b", ".join(codings).decode("latin-1"))
            )
        # With a Content-Length as well the message is suspect (smuggling): read it
        # by its chunks, as the standard says, but do not reuse the connection.
        return _Head(status, reason or b"", headers, None, True, not close and not lengths)
    if lengths:
        if len(lengths) > 1:
            raise _protocol_error(
                "conflicting Content-Length values "
                + ", ".join(sorted(v.decode("latin-1") for v in lengths))
            )
        value = next(iter(lengths))
        if not value.isdigit() or len(value) > 18:
            raise _protocol_error(f"invalid Content-Length {value.decode('latin-1')[:40]!r}")
        return _Head(status, reason or b"", headers, int(value), False, not close)
    return _Head(status, reason or b"", headers, None, False, False)  # until the connection closes


class _Body(httpx.AsyncByteStream):
    """A response body read off its connection; the connection goes back to the pool at its end."""

    def __init__(
        self, pool: _Pool, conn: _Connection, head: _Head, read_timeout: float | None
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._head = head
        self._read_timeout = read_timeout
        self.complete = head.length == 0
        if self.complete:
            self._finish()

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn, reusable=self._head.keep_alive)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.complete:
            return
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        try:
            if self._head.chunked:
                async for piece in self._chunks(conn):
                    yield piece
            elif self._head.length is not None:
                async for piece in self._sized(conn, self._head.length):
                    yield piece
            else:
                async for piece in self._until_close(conn):
                    yield piece
        except BaseException:  # an error, or the reader stopped early (GeneratorExit)
            self._drop()
            raise
        self.complete = True
        self._finish()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.forget(conn)

    async def _sized(self, conn: _Connection, length: int) -> AsyncIterator[bytes]:
        left = length
        while left:
            if not conn.buffer and not await conn.more(self._read_timeout):
                raise _protocol_error(
                    f"the server closed the connection after {length - left} of {length} body bytes"
                )
            piece = conn.take(left)
            left -= len(piece)
            yield piece

    async def _until_close(self, conn: _Connection) -> AsyncIterator[bytes]:
        while True:
            if not conn.buffer and not await conn.more(self._read_timeout):
                return
            yield conn.take()

    async def _line(self, conn: _Connection, limit: int, what: str) -> bytes:
        """One line (without its CRLF or LF) of a chunked body."""
        start = 0
        while True:
            end = conn.buffer.find(b"\n", start)
            if end >= 0:
                if end > limit:
                    break
                line = conn.take(end + 1)
                return line[:-2] if line.endswith(b"\r\n") else line[:-1]
            if len(conn.buffer) > limit:
                break
            start = len(conn.buffer)
            if not await conn.more(self._read_timeout):
                raise _protocol_error(f"the server closed the connection inside a {what}")
        raise _protocol_error(f"{what} longer than {limit} bytes")

    async def _chunk_end(self, conn: _Connection) -> None:
        """The CRLF (or LF) that must follow a chunk's data."""
        buffer = conn.buffer
        while len(buffer) < 2 and buffer[:1] != b"\n":
            if not await conn.more(self._read_timeout):
                raise _protocol_error("the server closed the connection inside a chunk")
        if buffer.startswith(b"\r\n"):
            del buffer[:2]
        elif buffer.startswith(b"\n"):
            del buffer[:1]
        else:
            raise _protocol_error("a chunk is longer than its size line says")

    async def _chunks(self, conn: _Connection) -> AsyncIterator[bytes]:
        while True:
            line = await self._line(conn, MAX_CHUNK_LINE, "chunk-size line")
            # Chunk extensions (";name=value") carry nothing a feed reader needs.
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise _protocol_error(f"malformed chunk-size line {line[:60]!r}")
            size = int(size_text, 16)
            if size == 0:
                break
            left = size
            while left:
                if not conn.buffer and not await conn.more(self._read_timeout):
                    raise _protocol_error("the server closed the connection inside a chunk")
                piece = conn.take(left)
                left -= len(piece)
                yield piece
            await self._chunk_end(conn)
        trailer = 0
        while True:  # the trailer section: header lines up to an empty one, ignored
            line = await self._line(conn, MAX_HEAD_BYTES, "trailer section")
            if not line:
                return
            trailer += len(line)
            if trailer > MAX_HEAD_BYTES:
                raise _protocol_error(f"trailer section larger than {MAX_HEAD_BYTES} bytes")

    async def aclose(self) -> None:
        """Closed before its end, the connection cannot carry another request: it is dropped."""
        self._drop()


class _Pool:
    """Keep-alive connections by origin (scheme, host, port)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        trust_env: bool,
        max_connections: int,
        max_keepalive: int,
        keepalive_expiry: float,
    ) -> None:
        self.ssl_context = ssl_context  # None: the default one, made at the first https request
        self.trust_env = trust_env
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.idle_count = 0
        self.open_count = 0
        self.closed = False

    def take_idle(self, origin: tuple[str, str, int], now: float) -> _Connection | None:
        """The most recently used idle connection to ``origin`` that is still good."""
        stack = self.idle.get(origin)
        while stack:
            conn = stack.pop()
            self.idle_count -= 1
            if conn.usable() and now - conn.idle_since < self.keepalive_expiry:
                return conn
            self._discard(conn)
        return None

    async def connect(self, origin: tuple[str, str, int], timeout: float | None) -> _Connection:
        if self.open_count >= self.max_connections:
            self._evict_oldest_idle()
        loop = asyncio.get_running_loop()
        scheme, host, port = origin
        conn = _Connection(origin, loop)
        tls = None
        if scheme == "https":
            tls = self.ssl_context or default_tls_context(self.trust_env)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                    ssl_handshake_timeout=timeout if tls is not None else None,
                )
        except TimeoutError as exc:
            conn.abort()
            raise httpx.ConnectTimeout(f"no connection within {timeout:g} s") from exc
        except OSError as exc:  # refused, unreachable, unresolvable, certificate refused
            conn.abort()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        self.open_count += 1
        return conn

    def release(self, conn: _Connection, *, reusable: bool) -> None:
        if not reusable or self.closed or not conn.usable():
            self._discard(conn)
            return
        if self.idle_count >= self.max_keepalive:
            self._evict_oldest_idle()
        conn.idle_since = conn.loop.time()
        self.idle.setdefault(conn.origin, []).append(conn)
        self.idle_count += 1

    def forget(self, conn: _Connection) -> None:
        """A connection that failed mid-request: counted out, already aborted."""
        conn.abort()
        self.open_count -= 1

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self.open_count -= 1

    def _evict_oldest_idle(self) -> None:
        oldest: list[_Connection] | None = None
        for stack in self.idle.values():
            if stack and (oldest is None or stack[0].idle_since < oldest[0].idle_since):
                oldest = stack
        if oldest:
            self.idle_count -= 1
            self._discard(oldest.pop(0))

    def close_idle(self) -> None:
        self.closed = True
        for stack in self.idle.values():
            for conn in stack:
                self._discard(conn)
        self.idle.clear()
        self.idle_count = 0


class LeanTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over :class:`_Pool`: HTTP/1.1 only, bodies as raw bytes.

    Content-Encoding is left alone (httpx's ``Response`` decodes on
    ``aiter_bytes``; the fetcher reads ``aiter_raw`` and decodes under its cap).
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        trust_env: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        limits = limits or httpx.Limits()
        max_connections = limits.max_connections or 100
        self._pool = _Pool(
            ssl_context,
            trust_env,
            max_connections,
            limits.max_keepalive_connections or max_connections,
            limits.keepalive_expiry if limits.keepalive_expiry is not None else 5.0,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        port = url.port or _DEFAULT_PORTS.get(scheme)
        if port is None:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        if not url.host:
            raise httpx.UnsupportedProtocol(f"no host in URL {url}")
        origin = (scheme, url.host, port)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        method = request.method.encode("ascii")
        head = self._request_head(method, url.raw_path, request.headers.raw)
        body = await self._request_body(request)

        pool = self._pool
        loop = asyncio.get_running_loop()
        conn = pool.take_idle(origin, loop.time())
        reused = conn is not None
        while True:
            if conn is None:
                conn = await pool.connect(origin, timeouts.get("connect"))
            try:
                parsed = await self._exchange(conn, head, body, method, timeouts.get("read"))
            except _StaleConnection:
                pool.forget(conn)
                if not reused:
                    raise _protocol_error(
                        "the server closed the connection without answering"
                    ) from None
                conn, reused = None, False  # once more, on a new connection
                continue
            except BaseException:
                pool.forget(conn)
                raise
            break
        return httpx.Response(
            parsed.status,
            headers=parsed.headers,
            stream=_Body(pool, conn, parsed, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": parsed.reason},
        )

    @staticmethod
    def _request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        fields = [method, target]
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            fields += (name, value)
            parts += (name, b": ", value, b"\r\n")
        # A stored validator (a server's ETag) or a configured header must not split the request.
        if _UNSAFE_IN_REQUEST.search(b" ".join(fields)):
            raise httpx.LocalProtocolError("a request line or header holds CR, LF or NUL")
        parts.append(b"\r\n")
        return b"".join(parts)

    @staticmethod
    async def _request_body(request: httpx.Request) -> bytes:
        if isinstance(request.stream, httpx.ByteStream):
            content = request.content  # already in memory
        else:
            stream = request.stream
            if not isinstance(stream, httpx.AsyncByteStream):
                raise TypeError("LeanTransport needs an async request body")
            content = b"".join([part async for part in stream])
        if not content:
            return b""
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"%x\r\n%s\r\n0\r\n\r\n" % (len(content), content)
        return content

    async def _exchange(
        self, conn: _Connection, head: bytes, body: bytes, method: bytes, read_timeout: float | None
    ) -> _Head:
        """Send the request and read the response head (informational answers skipped)."""
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise _StaleConnection()
        transport.write(head + body if body else head)
        received_any = False
        searched = 0
        while True:
            buffer = conn.buffer
            end, body_start = _head_end(buffer, searched)
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise _protocol_error(f"response head larger than {MAX_HEAD_BYTES} bytes")
                searched = max(0, len(buffer) - 2)
                if not await conn.more(read_timeout):
                    if not received_any and not buffer:
                        raise _StaleConnection()
                    raise _protocol_error("the server closed the connection inside the head")
                received_any = True
                continue
            if end > MAX_HEAD_BYTES:
                raise _protocol_error(f"response head larger than {MAX_HEAD_BYTES} bytes")
            raw = bytes(buffer[:end])
            del buffer[:body_start]
            parsed = _parse_head(raw, method)
            if parsed.status == 101:
                raise _protocol_error("the server switched protocols unasked (101)")
            if parsed.status < 200:  # 100 Continue, 103 Early Hints: the answer follows
                searched = 0
                continue
            return parsed

    async def aclose(self) -> None:
        self._pool.close_idle()


class _StaleConnection(Exception):
    """The server closed the connection before any byte of the answer."""
