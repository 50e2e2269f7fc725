"""Download sources over HTTP, politely and within hard limits.

One :class:`Fetcher` owns one httpx transport (our own HTTP/1.1
:class:`~aggregator.transport.LeanTransport`, whose keep-alive connections are
reused across sources), hands it each request directly (no
``AsyncClient.send`` machinery, no cookie jar), and enforces, per request:

* conditional GET: ``If-None-Match`` / ``If-Modified-Since`` from the stored
  state; a 304 comes back as a :class:`FetchResult` whose ``content`` is None;
* concurrency: at most ``max_per_host`` requests to one host and
  ``max_connections`` overall;
* redirects, followed by hand so every hop is seen: at most ``max_redirects``,
  loops detected, and ``permanent_url`` set when every hop was a 301/308; a
  source on a public address may not redirect to a loopback, private or
  link-local one (a hostile feed cannot point us at internal services);
* size: an honest ``Content-Length`` over ``max_bytes`` is refused before
  reading, the raw stream is stopped at ``max_bytes``, and the body is
  decompressed in bounded pieces (:mod:`aggregator.decoding`: here, or with
  ``decode=False`` in the parse worker, under the same cap), so a gzip or
  brotli bomb is stopped after about ``max_bytes`` of output, not after it has
  been inflated in memory;
* time: connect and read timeouts, plus a total deadline per request
  (``asyncio.timeout``) that also stops a server trickling a byte a second.

Failures raise :mod:`aggregator.errors` classes whose message names the source
id and URL: :class:`FetchTimeout`, :class:`ResponseTooLarge`, or
:class:`FetchError` with ``status`` and, for 429/503, ``retry_after`` seconds.
:func:`next_fetch_delay` turns an outcome into the wait before the next fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

from aggregator.decoding import ACCEPT_ENCODING, BoundedDecoder
from aggregator.errors import FetchError, FetchTimeout, ResponseTooLarge
from aggregator.lean import OPTIONAL_FOR_HTTPX, hidden_modules
from aggregator.models import FetchResult, Source, SourceState

# Without httpx's command-line client and trio: ~7 MB less at the peak of the ingest's
# main process (aggregator/lean.py says why that is safe).
with hidden_modules(*OPTIONAL_FOR_HTTPX):
    import httpx

from aggregator.transport import LeanTransport

__all__ = [
    "DEFAULT_USER_AGENT",
    "MAX_BACKOFF",
    "Fetcher",
    "next_fetch_delay",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = (
    "aggregator/0.1 (+https://github.com/korean-film-digest/aggregator; "
    "Korean film news aggregator)"
)
ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, text/html;q=0.8, */*;q=0.5"
)

MAX_BACKOFF = timedelta(hours=24)
# A Retry-After beyond this is treated as a typo or hostility, not an instruction.
MAX_RETRY_AFTER = timedelta(days=7)
JITTER = 0.10

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PERMANENT_REDIRECTS = frozenset({301, 308})
_RETRYABLE = frozenset({429, 503})

# -------------------------------------------------------------------- helpers


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date.

    Returns None when the header is missing or unreadable; a date in the past
    gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates come back naive; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("'\"").lower() or None
    return None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it, outermost first (anyio wraps the real OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class _HostSlot:
    """A host's semaphore and how many fetches hold or wait for it."""

    __slots__ = ("semaphore", "users")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        self.users = 0


def _host_key(url: httpx.URL) -> str:
    return url.host.lower()


def _is_global(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


async def host_is_public(host: str) -> bool | None:
    """Whether every address of ``host`` is a public one; None if it does not resolve."""
    try:
        return _is_global(host)
    except ValueError:
        pass  # a name, not an address literal
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return all(_is_global(str(info[4][0])) for info in infos)


async def redirect_allowed(source: httpx.URL | str, target: httpx.URL | str) -> bool:
    """False when a source on a public address leads to a non-public one.

    Checked for redirects and for "next page" links. An internal source (the
    operator's own choice) may lead anywhere; a public one may not lead us to
    loopback, private or link-local services such as a cloud metadata
    endpoint. A name that does not resolve is left to fail on connect.
    """
    try:
        source, target = httpx.URL(source), httpx.URL(target)
    except httpx.InvalidURL:
        return True  # refused later, as an invalid URL
    if target.host == source.host or await host_is_public(source.host) is not True:
        return True
    return await host_is_public(target.host) is not False


# -------------------------------------------------------------------- Fetcher


@contextlib.asynccontextmanager
async def _within(ends_at: float, deadline: float, source_id: str, url: str) -> AsyncIterator[None]:
    """The fetch's total deadline (loop time ``ends_at``) as a :class:`FetchTimeout`."""
    try:
        async with asyncio.timeout_at(ends_at):
            yield
    except TimeoutError as exc:
        raise _timed_out(deadline, source_id, url) from exc


def _timed_out(deadline: float, source_id: str, url: str) -> FetchTimeout:
    return FetchTimeout(
        f"no complete response within the {deadline:g} s deadline", source_id=source_id, url=url
    )


_DRAIN_LIMIT = 64 * 1024


async def _drain(response: httpx.Response) -> None:
    """Read a body we do not use (a 304, a redirect page) to its end.

    A streamed response closed before its end takes its connection down with
    it; read to the end, the connection goes back to the pool for the next
    request to the host. Most polls of a feed end in a 304, so that is most
    connections. A body over 64 KiB is not worth it: the connection is closed.
    """
    if getattr(response.stream, "complete", False):
        return  # nothing left to read (a 304 on our transport): the connection is back already
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > _DRAIN_LIMIT:
                return
    except httpx.HTTPError as exc:  # the answer itself is complete; only reuse is lost
        logger.debug("unread body of %s left behind: %s", response.url, exc)


class Fetcher:
    """Fetch sources over one shared transport; use as ``async with Fetcher() as f``.

    ``timeout`` is the default total deadline of one request (redirects and body
    included); :meth:`fetch` uses the source's own ``timeout`` instead.
    ``transport`` is for tests and special setups (e.g. ``httpx.MockTransport``).
    """

    def __init__(
        self,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        max_connections: int = 32,
        max_per_host: int = 4,
        max_bytes: int = 10 * 1024 * 1024,
        max_redirects: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        timeout: float = 60.0,
        trust_env: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_connections < 1 or max_per_host < 1:
            raise ValueError("max_connections and max_per_host must be at least 1")
        self.user_agent = user_agent
        self.max_connections = max_connections
        self.max_per_host = max_per_host
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.timeout = timeout
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        # Requests go straight to a transport (aggregator.transport, our own
        # HTTP/1.1 pool: httpcore's anyio machinery was most of a 304's CPU), not
        # through ``AsyncClient.send``: that machinery (cookie jar, auth flow,
        # redirect preparation, event hooks, elapsed-time stream wrapper) was
        # ~30% of the main process's CPU per conditional GET, and none
        # of it is used: redirects are followed and vetted here, there is no
        # auth, and a feed poller has no business carrying one site's cookies
        # from poll to poll. Proxies from the environment were never used
        # either (httpx ignores them when it is handed a transport).
        self._transport: httpx.AsyncBaseTransport = (
            transport
            if transport is not None
            else LeanTransport(limits=limits, trust_env=trust_env)
        )
        # The headers every request carries, as httpx's client would send them;
        # built (names and values checked and encoded) once, copied per request.
        self._headers = httpx.Headers(
            {
                "User-Agent": user_agent,
                "Accept": ACCEPT,
                "Accept-Encoding": ACCEPT_ENCODING,
                "Connection": "keep-alive",
            }
        )
        # Per-phase timeouts by total deadline: the request extension httpx reads.
        # Waiting for a free slot happens on our semaphores, outside the deadline.
        self._timeouts: dict[float, dict[str, Any]] = {}
        self._total_slots = asyncio.Semaphore(max_connections)
        # Only hosts being fetched (or waited for) have an entry: one kept per
        # host ever fetched grew with the hosts of feeds.yaml (~1.8 MB at
        # 10,000 hosts) for the life of a long-running scheduler.
        self._host_slots: dict[str, _HostSlot] = {}

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._transport.aclose()

    def _timeout_for(self, deadline: float) -> dict[str, Any]:
        """The ``timeout`` request extension for a total ``deadline`` (built once per value)."""
        timeouts = self._timeouts.get(deadline)
        if timeouts is None:
            connect = min(self.connect_timeout, deadline)
            timeouts = httpx.Timeout(
                connect, read=min(self.read_timeout, deadline), pool=None
            ).as_dict()
            if len(self._timeouts) < 64:  # a handful of distinct source timeouts in practice
                self._timeouts[deadline] = timeouts
        return timeouts

    @contextlib.asynccontextmanager
    async def _slot_for(self, url: httpx.URL) -> AsyncIterator[None]:
        """Hold one of the host's ``max_per_host`` slots; the last user frees the entry."""
        key = _host_key(url)
        slot = self._host_slots.get(key)
        if slot is None:
            slot = self._host_slots[key] = _HostSlot(asyncio.Semaphore(self.max_per_host))
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._host_slots[key]

    async def fetch(
        self, source: Source, state: SourceState | None, *, decode: bool = True
    ) -> FetchResult:
        """Fetch a source's main URL, conditionally when ``state`` holds validators.

        The URL is ``state.url`` when the store knows one (it follows permanent
        redirects), else ``source.url``; the deadline is ``source.timeout``.
        ``decode`` as for :meth:`fetch_url`.
        """
        url = state.url if state is not None and state.url else source.url
        return await self.fetch_url(
            url,
            source_id=source.id,
            etag=state.etag if state is not None else None,
            last_modified=state.last_modified if state is not None else None,
            timeout=source.timeout,
            decode=decode,
        )

    async def fetch_url(
        self,
        url: str,
        *,
        source_id: str,
        etag: str | None = None,
        last_modified: str | None = None,
        timeout: float | None = None,
        decode: bool = True,
    ) -> FetchResult:
        """GET ``url`` for ``source_id`` (paging, full-text articles, a source's feed).

        ``timeout`` is the total deadline in seconds (default: the Fetcher's).
        With ``decode`` false a compressed body is returned as sent, with
        ``content_encoding`` and ``max_bytes`` set so that whoever parses it
        decodes it under the same cap (``decoding.decoded``; the ingest pass does
        it in its parse workers). Raises :class:`FetchError` (and its
        subclasses) on any failure.
        """
        deadline = self.timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            return await self._fetch(url, source_id, etag, last_modified, deadline, started, decode)
        except FetchError as exc:
            logger.debug("fetch failed: %s", exc)
            raise

    async def _fetch(
        self,
        url: str,
        source_id: str,
        etag: str | None,
        last_modified: str | None,
        deadline: float,
        started: float,
        decode: bool = True,
    ) -> FetchResult:
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise FetchError(
                f"invalid URL: {_describe(exc)}", source_id=source_id, url=url
            ) from exc
        if current.scheme not in ("http", "https"):
            raise FetchError(
                f"unsupported URL scheme {current.scheme!r}", source_id=source_id, url=url
            )
        headers = self._headers
        if etag or last_modified:
            headers = headers.copy()
            if etag:
                headers["If-None-Match"] = etag
            if last_modified:
                headers["If-Modified-Since"] = last_modified
        extensions = {"timeout": self._timeout_for(deadline)}

        where = str(current)
        chain: list[str] = [where]
        all_permanent = True
        loop = asyncio.get_running_loop()
        ends_at: float | None = None
        while True:
            # Host slot first: queueing for a busy host must not hold an overall slot.
            async with self._slot_for(current), self._total_slots:
                if ends_at is None:  # the deadline starts once we hold a slot
                    ends_at = loop.time() + deadline
                try:
                    async with asyncio.timeout_at(ends_at):
                        outcome = await self._one_hop(
                            current, where, headers, extensions, source_id, decode
                        )
                except TimeoutError as exc:
                    raise _timed_out(deadline, source_id, where) from exc
            if isinstance(outcome, _Hop):
                target = outcome.location
                if outcome.status not in _PERMANENT_REDIRECTS:
                    all_permanent = False
                if str(target) in chain:
                    raise FetchError(
                        "redirect loop: " + " -> ".join([*chain, str(target)]),
                        source_id=source_id,
                        url=url,
                        status=outcome.status,
                    )
                if len(chain) > self.max_redirects:
                    raise FetchError(
                        f"too many redirects (more than {self.max_redirects}): "
                        + " -> ".join(chain),
                        source_id=source_id,
                        url=url,
                        status=outcome.status,
                    )
                async with _within(ends_at, deadline, source_id, str(target)):
                    allowed = await redirect_allowed(url, target)
                if not allowed:
                    raise FetchError(
                        f"redirect from a public address to a private one refused: {target}",
                        source_id=source_id,
                        url=url,
                        status=outcome.status,
                    )
                logger.debug("%s: %s redirects to %s", source_id, current, target)
                current = target
                where = str(target)
                chain.append(where)
                continue

            permanent_url = None
            if len(chain) > 1 and all_permanent:
                permanent_url = str(current)
                logger.info("%s: %s moved permanently to %s", source_id, url, permanent_url)
            elapsed = time.monotonic() - started
            result = FetchResult(
                source_id=source_id,
                url=str(current),
                status=outcome.status,
                content=outcome.content,
                content_type=outcome.content_type,
                charset=_charset(outcome.content_type),
                # A 304 may omit the validators: keep the ones that still hold.
                etag=outcome.etag or (etag if outcome.content is None else None),
                last_modified=outcome.last_modified
                or (last_modified if outcome.content is None else None),
                permanent_url=permanent_url,
                elapsed=elapsed,
                content_encoding=outcome.encoding,
                max_bytes=self.max_bytes,
            )
            logger.debug(
                "%s: %s %s, %s bytes in %.2f s",
                source_id,
                result.url,
                result.status,
                "no new" if result.content is None else len(result.content),
                elapsed,
            )
            return result

    async def _one_hop(
        self,
        url: httpx.URL,
        where: str,
        headers: httpx.Headers,
        extensions: dict[str, Any],
        source_id: str,
        decode: bool = True,
    ) -> _Hop | _Body:
        """One request: a redirect to follow, or a final body (None for 304)."""
        request = httpx.Request("GET", url, headers=headers, extensions=extensions)
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _translate(exc, source_id, where) from exc
        response.request = request  # what the client would set: ``response.url`` reads it
        try:
            status = response.status_code
            if status in _REDIRECTS:
                hop = _Hop(status, self._location(response, source_id))
                await _drain(response)
                return hop
            if status == 304:
                await _drain(response)
                return _Body(
                    status,
                    None,
                    response.headers.get("Content-Type"),
                    response.headers.get("ETag"),
                    response.headers.get("Last-Modified"),
                )
            if not 200 <= status < 300:
                raise _status_error(response, source_id)
            content, encoding = await self._read_body(response, source_id, decode)
            return _Body(
                status,
                content,
                response.headers.get("Content-Type"),
                response.headers.get("ETag"),
                response.headers.get("Last-Modified"),
                encoding,
            )
        except httpx.HTTPError as exc:
            raise _translate(exc, source_id, where) from exc
        finally:
            await response.aclose()

    def _location(self, response: httpx.Response, source_id: str) -> httpx.URL:
        try:
            return _redirect_target(response)
        except _UnusableRedirect as exc:
            raise exc.as_fetch_error(source_id) from None

    async def _read_body(
        self, response: httpx.Response, source_id: str, decode: bool
    ) -> tuple[bytes, str | None]:
        """The body and the Content-Encoding still applied to it (None once decoded).

        Reading stops as soon as the raw stream exceeds ``max_bytes``; a decoded
        body is also stopped there (``BoundedDecoder``). With ``decode`` false an
        encoded body comes back as it came off the wire, for a parse worker to
        decode under the same cap (``decoding.decoded``).
        """
        url = str(response.url)
        cap = self.max_bytes
        status = response.status_code
        encoding = response.headers.get("Content-Encoding", "")
        declared = response.headers.get("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > cap:
            # Compressed bodies expand, so a compressed length over the cap is over it too.
            raise ResponseTooLarge(
                f"response too large: Content-Length {int(declared)} bytes exceeds "
                f"the {cap}-byte limit",
                source_id=source_id,
                url=url,
                status=status,
            )
        # Built first in both modes: an unknown coding is refused before reading.
        decoder = BoundedDecoder(encoding, cap, source_id=source_id, url=url, status=status)
        keep_encoded = not decode and encoding.strip().lower() not in ("", "identity")
        raw: list[bytes] = []
        raw_size = 0
        async for chunk in response.aiter_raw():
            raw_size += len(chunk)
            if raw_size > cap:
                raise ResponseTooLarge(
                    f"response too large: more than {cap} bytes on the wire; stopped reading",
                    source_id=source_id,
                    url=url,
                    status=status,
                )
            if keep_encoded:
                raw.append(chunk)
            else:
                decoder.feed(chunk)
        if keep_encoded:
            return b"".join(raw), encoding
        return decoder.finish(), None


class _UnusableRedirect(Exception):
    """A redirect whose Location is missing, malformed or not http(s)."""

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status

    def as_fetch_error(self, source_id: str) -> FetchError:
        return FetchError(self.message, source_id=source_id, url=self.url, status=self.status)


def _redirect_target(response: httpx.Response) -> httpx.URL:
    """The absolute http(s) URL a redirect points to, without its fragment.

    Raises ``_UnusableRedirect`` for a missing, malformed or non-http(s)
    ``Location`` (``javascript:``, ``data:``, ``file:``): a feed server that
    sends one is broken or hostile, and the source's error should say which.
    """
    location = response.headers.get("Location")
    status = response.status_code
    url = str(response.url)
    if not location or not location.strip():
        raise _UnusableRedirect(
            f"HTTP {status} redirect without a Location header", url=url, status=status
        )
    try:
        target = response.url.join(location.strip())
    except httpx.InvalidURL:
        raise _UnusableRedirect(
            f"HTTP {status} redirect to an invalid URL {location[:200]!r}", url=url, status=status
        ) from None
    if target.scheme not in ("http", "https"):
        raise _UnusableRedirect(
            f"HTTP {status} redirect to a non-http(s) URL {location[:200]!r} refused",
            url=url,
            status=status,
        )
    return target.copy_with(fragment=None)


class _Hop:
    __slots__ = ("location", "status")

    def __init__(self, status: int, location: httpx.URL) -> None:
        self.status = status
        self.location = location


class _Body:
    __slots__ = ("content", "content_type", "encoding", "etag", "last_modified", "status")

    def __init__(
        self,
        status: int,
        content: bytes | None,
        content_type: str | None,
        etag: str | None,
        last_modified: str | None,
        encoding: str | None = None,
    ) -> None:
        self.status = status
        self.encoding = encoding
        self.content = content
        self.content_type = content_type
        self.etag = etag
        self.last_modified = last_modified


def _status_error(response: httpx.Response, source_id: str) -> FetchError:
    status = response.status_code
    reason = response.reason_phrase or ""
    message = f"HTTP {status} {reason}".rstrip()
    retry_after = None
    if status in _RETRYABLE:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
    return FetchError(
        message,
        source_id=source_id,
        url=str(response.url),
        status=status,
        retry_after=retry_after,
    )


def _translate(exc: httpx.HTTPError, source_id: str, url: str) -> FetchError:
    """An httpx exception as a FetchError a person can act on."""
    detail = _describe(exc)
    parsed = httpx.URL(url)
    parsed_host = parsed.host
    host = f"{parsed_host}:{parsed.port}" if parsed.port else parsed_host
    if isinstance(exc, httpx.ConnectTimeout):
        return FetchTimeout(f"connect timed out ({host})", source_id=source_id, url=url)
    if isinstance(exc, httpx.TimeoutException):
        return FetchTimeout(f"timed out: {detail}", source_id=source_id, url=url)
    if isinstance(exc, httpx.ConnectError):
        causes = list(_causes(exc))
        if any(isinstance(c, ConnectionRefusedError) for c in causes) or "refused" in detail:
            message = f"connection refused by {host}"
        elif resolve_error := next((c for c in causes if isinstance(c, socket.gaierror)), None):
            message = f"could not resolve host {parsed_host}: {_describe(resolve_error)}"
        else:
            message = f"could not connect to {host}: {detail}"
    elif isinstance(exc, httpx.RemoteProtocolError):
        message = f"the server broke the HTTP protocol: {detail}"
    elif isinstance(exc, httpx.ReadError | httpx.WriteError):
        message = f"connection lost: {detail}"
    elif isinstance(exc, httpx.UnsupportedProtocol):
        message = f"unsupported URL: {detail}"
    elif isinstance(exc, httpx.DecodingError):
        message = f"could not decode the body: {detail}"
    else:
        message = f"HTTP request failed: {detail}"
    return FetchError(message, source_id=source_id, url=url)


# --------------------------------------------------------------------- timing


_rng = random.Random()


def next_fetch_delay(
    interval: timedelta,
    error_count: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """How long to wait before fetching a source again.

    After a success (``error_count == 0``) the source's ``interval`` with ±10%
    jitter, so sources with the same interval drift apart. After ``n``
    consecutive failures, ``interval * 2**(n-1)`` (also jittered), capped at 24
    hours (or at ``interval`` when that is longer): the cap is never exceeded.
    A server's ``retry_after`` (seconds) wins when it is longer, up to 7 days.
    """
    random_source = rng if rng is not None else _rng
    if interval <= timedelta(0):
        raise ValueError(f"interval must be positive, not {interval}")
    if error_count <= 0:
        delay = interval * random_source.uniform(1 - JITTER, 1 + JITTER)
    else:
        cap = max(MAX_BACKOFF, interval)
        # Compare exponents instead of multiplying, so a huge error_count cannot overflow.
        doublings = error_count - 1
        limit = cap / interval
        base = cap if doublings >= 64 or 2**doublings >= limit else interval * 2**doublings
        low = base * (1 - JITTER)
        high = min(base * (1 + JITTER), cap)
        delay = low + (high - low) * random_source.random()
    if retry_after is not None and retry_after > 0:
        wait = min(timedelta(seconds=retry_after), MAX_RETRY_AFTER)
        delay = max(delay, wait)
    return delay
