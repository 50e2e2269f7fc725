"""App assembly and the shared context handed to every route module.

Route modules (``feeds``, ``pages``, and ``archive``, ``subscribe``, ``health``
once they exist) each expose ``routes(ctx) -> list[BaseRoute]``;
:func:`create_app` joins them behind the middleware every response passes
through: security headers, the request body cap, gzip (see
:mod:`aggregator.web.security`). Error answers (404, 405, 413...) are short
HTML pages, never a traceback.

Numeric path parameters use the ``rowid`` convertor: only 0 to
:data:`ROW_ID_MAX` match, so every value that reaches the database fits its
id column on every backend; anything larger (or negative, or not ASCII
digits) does not match the route and is a 404, instead of overflowing in the
database (a 500).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from ..config import Config
from ..errors import ConfigError
from ..store import Store
from .ratelimit import RateLimiter
from .security import RequestBodyLimitMiddleware, SecurityHeadersMiddleware, error_page

SECRET_ENV = "AGGREGATOR_SECRET"
# Bodies smaller than this are sent as they are: gzip would save next to nothing.
GZIP_MINIMUM_SIZE = 500


def load_secret(*, required: bool = True) -> str:
    """The HMAC secret for confirm/unsubscribe tokens, from the environment.

    Never from feeds.yaml or the repo. ``required=False`` (tests, the demo)
    makes a random per-process secret instead, which invalidates links at
    restart: acceptable there, never in production.
    """
    value = os.environ.get(SECRET_ENV, "")
    if value:
        if len(value) < 16:
            raise ConfigError(f"{SECRET_ENV} must be at least 16 characters long")
        return value
    if required:
        raise ConfigError(
            f"{SECRET_ENV} is not set: export a long random value "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return secrets.token_urlsafe(32)


@dataclass
class WebContext:
    """What route handlers need; mutable so a config reload can swap ``config``."""

    config: Config
    store: Store
    secret: str
    # Filled by the running service: extra health facts (scheduler running...).
    health_checks: dict[str, Callable[[], Any]] = field(default_factory=dict)
    metrics_text: Callable[[], str] | None = None
    # Every limiter the routes keep, by name, so tests and diagnostics can read them.
    rate_limiters: dict[str, RateLimiter] = field(default_factory=dict)


ROW_ID_MAX = 2**31 - 1
"""The largest id every backend stores: ids are ``INTEGER``, 32-bit on PostgreSQL."""


def digits_up_to(limit: int) -> str:
    """A regex matching exactly the decimal numbers 0..``limit`` (no sign, ASCII digits).

    Built digit by digit from ``limit``: shorter numbers, then for each
    position a smaller digit followed by anything, then ``limit`` itself.
    """
    text = str(limit)
    options = [f"[0-9]{{1,{len(text) - 1}}}"] if len(text) > 1 else []
    for i, digit in enumerate(text):
        if digit != "0":
            low = "1" if i == 0 and len(text) > 1 else "0"
            if int(digit) - 1 >= int(low):
                rest = len(text) - i - 1
                tail = f"[0-9]{{{rest}}}" if rest else ""
                options.append(f"{text[:i]}[{low}-{int(digit) - 1}]{tail}")
    options.append(text)
    return "(?:" + "|".join(options) + ")"


class RowIdConvertor(Convertor[int]):
    """``{name:rowid}``: a database id; only values up to :data:`ROW_ID_MAX` match.

    The bound is in the pattern, not in ``convert`` (an exception there would
    be a 500): a number that cannot be an id does not match the route at all.
    """

    regex = digits_up_to(ROW_ID_MAX)

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        if not 0 <= value <= ROW_ID_MAX:
            raise ValueError(f"{value} is out of range for a row id")
        return str(value)


register_url_convertor("rowid", RowIdConvertor())


class ValidatorGZipMiddleware(GZipMiddleware):
    """Starlette's gzip, keeping ``ETag`` honest about the bytes it changed.

    A strong ETag promises byte-identical bodies, which a compressed body is
    not; like nginx, this turns it into a weak one (``W/"..."``) whenever the
    body is gzipped, and on a 304 to a client that accepts gzip (it would
    have been sent the compressed body). Weak comparison, which
    ``If-None-Match`` uses, still matches the two forms, so a reader's
    conditional GET gets its 304 either way. ``Vary`` is kept free of repeats.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        accepts_gzip = "gzip" in Headers(scope=scope).get("accept-encoding", "")

        async def send_with_validators(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                etag = headers.get("etag")
                compressed = headers.get("content-encoding") == "gzip"
                if (
                    etag
                    and not etag.startswith("W/")
                    and (compressed or (message["status"] == 304 and accepts_gzip))
                ):
                    headers["etag"] = "W/" + etag
                vary = headers.get("vary")
                if vary:
                    names = list(dict.fromkeys(v.strip() for v in vary.split(",") if v.strip()))
                    headers["vary"] = ", ".join(names)
            await send(message)

        await super().__call__(scope, receive, send_with_validators)


def create_app(ctx: WebContext) -> Starlette:
    """Build the ASGI app from every route module (optional ones when present)."""
    from . import feeds, pages

    routes: list[BaseRoute] = []
    routes += feeds.routes(ctx)
    routes += pages.routes(ctx)
    for name in ("archive", "subscribe", "health"):
        module = _optional(name)
        if module is not None:
            routes += module.routes(ctx)
    app = Starlette(
        routes=routes,
        middleware=[
            # Outermost, so even the body cap's 413 and gzip'd answers carry the headers.
            Middleware(SecurityHeadersMiddleware, site_url=lambda: ctx.config.site.url),
            Middleware(RequestBodyLimitMiddleware),
            Middleware(ValidatorGZipMiddleware, minimum_size=GZIP_MINIMUM_SIZE),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.ctx = ctx
    return app


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors (404, 405, a malformed form's 400...) as a short HTML page."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    response = error_page(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


def _optional(name: str) -> Any:
    """The route module ``name`` if it exists yet, else None (its own import errors raise)."""
    import importlib

    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.{name}":
            return None
        raise
