"""App assembly: the route modules joined behind the middleware every response passes through.

Route modules (``feeds``, ``pages``, ``archive``, ``subscribe``, ``health``)
each expose ``routes(ctx) -> list[BaseRoute]``, taking the shared
:class:`~aggregator.web.context.WebContext`; :func:`create_app` joins them
behind security headers, the request body cap and gzip (see
:mod:`aggregator.web.security`). Error answers (404, 405, 413...) are short
HTML pages, never a traceback. The context, the secret and the ``rowid``
path convertor live in :mod:`aggregator.web.context` (re-exported here).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from . import archive, feeds, health, pages, subscribe
from .context import (
    ROW_ID_MAX,
    SECRET_ENV,
    RowIdConvertor,
    WebContext,
    digits_up_to,
    load_secret,
)
from .security import RequestBodyLimitMiddleware, SecurityHeadersMiddleware, error_page

__all__ = [
    "GZIP_MINIMUM_SIZE",
    "ROW_ID_MAX",
    "SECRET_ENV",
    "RowIdConvertor",
    "ValidatorGZipMiddleware",
    "WebContext",
    "create_app",
    "digits_up_to",
    "load_secret",
]

# Bodies smaller than this are sent as they are: gzip would save next to nothing.
GZIP_MINIMUM_SIZE = 500


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
    """Build the ASGI app from every route module."""
    routes: list[BaseRoute] = []
    for module in (feeds, pages, archive, subscribe, health):
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
