"""Defences every route gets without asking: headers, body cap, client address, CSRF.

- :class:`SecurityHeadersMiddleware` puts ``Content-Security-Policy`` (with
  ``frame-ancestors 'none'``), ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options`` and ``Referrer-Policy`` on every response, so no route
  can forget them. HTML gets a policy that allows no script at all (no page
  needs one); anything else (feeds, JSON, text) gets ``default-src 'none';
  sandbox``, so a feed opened in a browser cannot run anything either.
- :class:`RequestBodyLimitMiddleware` refuses request bodies over
  :data:`MAX_REQUEST_BODY` with 413 before a route reads them, whether the size
  is declared (``Content-Length``) or only found while streaming (chunked).
- :func:`client_address` is the address the rate limits count: the TCP peer,
  or the ``X-Forwarded-For`` entry a trusted proxy (``web.trusted_proxies``)
  vouches for. Nothing else may choose it.
- :class:`FormTokens` and :func:`cross_site_reason` are the subscribe form's
  CSRF defence (see SECURITY.md for why both).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable, Sequence
from html import escape
from ipaddress import IPv4Network, IPv6Network
from urllib.parse import urlsplit

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "FEED_CSP",
    "MAX_REQUEST_BODY",
    "REFERRER_POLICY",
    "FormTokens",
    "RequestBodyLimitMiddleware",
    "SecurityHeadersMiddleware",
    "client_address",
    "cross_site_reason",
    "error_page",
    "html_csp",
]

MAX_REQUEST_BODY = 64 * 1024
"""Largest request body accepted (bytes). The biggest legitimate one, the
subscribe form, is under 1 KB; the RFC 8058 one-click body is 26 bytes."""

REFERRER_POLICY = "strict-origin-when-cross-origin"
"""Default for pages that do not set their own (token pages send ``no-referrer``):
sources see that a reader came from us, never which page."""

FEED_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
"""For everything that is not HTML: nothing loads, nothing runs, nothing frames it."""

_NONCE = re.compile(r"[A-Za-z0-9_-]{24}")  # what token_urlsafe(18) makes

# IPv6 clients usually hold a whole /64: counting single addresses would give
# one client 2**64 separate quotas.
_IPV6_CLIENT_PREFIX = 64


def html_csp(site_url: str) -> str:
    """The policy for HTML pages: no script anywhere, forms post only to this site.

    Styles are inline ``<style>`` blocks and attributes (the digest HTML is
    email HTML), so ``style-src 'unsafe-inline'``; images come from sources'
    servers, so any http(s) URL. ``base-uri`` and ``form-action`` stop an
    injected ``<base>`` or ``<form>`` from redirecting links or posts.
    """
    origin = _origin(site_url)
    form_targets = "'self'" + (f" {origin}" if origin else "")
    return (
        "default-src 'none'; script-src 'none'; object-src 'none'; "
        "img-src https: http: data:; style-src 'unsafe-inline'; "
        f"form-action {form_targets}; frame-ancestors 'none'; base-uri 'none'"
    )


def error_page(status: int, message: str) -> HTMLResponse:
    """A short, escaped HTML page for an error answer (4xx) with no template behind it."""
    text = escape(message)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="robots" content="noindex"><title>{status} · {text}</title></head>'
        f"<body><h1>{status}</h1><p>{text}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


class SecurityHeadersMiddleware:
    """Add the security headers to every HTTP response (see the module docstring).

    ``site_url`` is called per response, so a config reload that changes
    ``site.url`` changes ``form-action`` too. A route may set its own stricter
    ``Referrer-Policy``; the other headers are always this middleware's.
    """

    def __init__(self, app: ASGIApp, site_url: Callable[[], str]) -> None:
        self.app = app
        self.site_url = site_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                is_html = headers.get("content-type", "").startswith("text/html")
                headers["Content-Security-Policy"] = (
                    html_csp(self.site_url()) if is_html else FEED_CSP
                )
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                if "referrer-policy" not in headers:
                    headers["Referrer-Policy"] = REFERRER_POLICY
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the cap."""


class RequestBodyLimitMiddleware:
    """Answer 413 to any request whose body is over ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything
    reads the body. A chunked body is counted as the route reads it; the read
    that passes the limit raises, and the 413 is sent if the route has not
    started its answer (it never has: routes read their form first).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_REQUEST_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_page(400, "The Content-Length header is not a number.")(
                    scope, receive, send
                )
                return
            if int(declared) > self.limit:
                await self._too_large(scope, receive, send)
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_page(413, f"The request body is larger than {self.limit} bytes.")
        # Tell the client not to keep sending the rest on this connection.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


Network = IPv4Network | IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:5000"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, proxies: Sequence[Network]
) -> bool:
    return address is not None and any(address in network for network in proxies)


def _key(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{_IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)


def client_address(scope: Scope, trusted_proxies: Sequence[Network]) -> str:
    """The client the rate limits count: the peer, or whom trusted proxies name.

    ``X-Forwarded-For`` is read only when the TCP peer is a trusted proxy, and
    then from the right: each trusted proxy appends the address it saw, so the
    first entry from the right that is not a trusted proxy is the client.
    Entries to its left were written by the client and are ignored. IPv6
    clients count per /64.
    """
    peer_host = scope["client"][0] if scope.get("client") else ""
    peer = _parse_ip(peer_host)
    if not _trusted(peer, trusted_proxies):
        return _key(peer) if peer is not None else peer_host or "unknown"
    forwarded = Headers(scope=scope).getlist("x-forwarded-for")
    hops = [hop.strip() for value in forwarded for hop in value.split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            break  # a proxy would not write junk: what is left came from the client
        client = address
        if not _trusted(address, trusted_proxies):
            break
    assert client is not None  # peer is trusted, so it parsed
    return _key(client)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site_reason(headers: Headers, site_url: str) -> str | None:
    """Why this POST looks like it came from another site's page, or None.

    Browsers send ``Origin`` on every cross-origin POST (and ``Sec-Fetch-Site``
    in current ones), so a forged form on another site is caught here. The
    request's own host is accepted besides ``site.url`` (a form loaded through
    another name of this server); a cross-site page cannot choose ``Host``.
    Clients that send none of these headers are not browsers and are left to
    the form token.
    """
    if headers.get("sec-fetch-site", "") == "cross-site":
        return "the form was sent from another site"
    claimed = headers.get("origin")
    source = "Origin"
    if claimed is None:
        referer = headers.get("referer")
        if referer is None:
            return None
        claimed, source = _origin(referer), "Referer"
    claimed = claimed.strip().lower()
    own_host = headers.get("host", "").lower()
    if claimed and (claimed == _origin(site_url) or urlsplit(claimed).netloc == own_host):
        return None
    return f"the form was sent from another site ({source}: {claimed or 'none'})"


class FormTokens:
    """CSRF tokens for a form: a random nonce in a cookie, its signature in the form.

    A POST is accepted when the form's token is our signature (with the site
    secret) of the nonce in the request's cookie, and is at most ``max_age``
    seconds old. Another site can neither read the cookie nor make the browser
    send a matching pair; no server-side session is needed, so any web process
    sharing the secret accepts any other's token.
    """

    def __init__(self, secret: str, *, salt: str, max_age: int) -> None:
        self._signer = TimestampSigner(secret, salt=salt)
        self.max_age = max_age

    def issue(self, cookie_value: str | None = None) -> tuple[str, str]:
        """A ``(cookie value, form value)`` pair, keeping the browser's nonce if it has one.

        Keeping it lets two open tabs (or a form shown again after an error)
        share one cookie; a new nonce would make the other tab's form stale.
        Reusing a nonce the client sent gives an attacker nothing: it could
        as well ask for a fresh pair, and a form posted from another site is
        stopped by :func:`cross_site_reason`.
        """
        if cookie_value is None or not _NONCE.fullmatch(cookie_value):
            cookie_value = secrets.token_urlsafe(18)
        return cookie_value, self._signer.sign(cookie_value).decode("ascii")

    def check(self, form_value: str, cookie_value: str | None) -> str | None:
        """None if the pair is valid, else what is wrong, for the refusal page."""
        if not form_value:
            return "the form carries no security token"
        if not cookie_value:
            return "your browser did not send the form's cookie"
        try:
            nonce = self._signer.unsign(form_value, max_age=self.max_age)
        except SignatureExpired:
            return "the form is too old"
        except BadSignature:
            return "the form's security token is not valid"
        if not secrets.compare_digest(nonce, cookie_value.encode("utf-8", "replace")):
            return "the form's security token does not match your browser's cookie"
        return None
