"""The digest archive: ``/digests/`` lists frozen issues, ``/digests/{id}`` shows one.

An issue page is the HTML exactly as frozen at compose time, minus the
per-subscriber unsubscribe placeholder: the web copy is public, so its
unsubscribe link becomes a link to the subscribe page and no token-shaped
hole is left for anything to fill. These URLs are the ones
:func:`aggregator.digest.view_url` puts in every email.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from ..digest import group_items, view_url
from ..models import Digest, StoredItem
from ..render import public_issue_html, render_archive_index, render_more_items
from .context import WebContext  # importing it also registers the ``rowid`` convertor

__all__ = ["ARCHIVE_LIMIT", "SUBSCRIBE_PATH", "routes"]

SUBSCRIBE_PATH = "subscribe"
"""Where the subscribe form lives, relative to ``site.url``."""

ARCHIVE_LIMIT = 200
"""Most issues listed on ``/digests/`` (about four years of weekly issues)."""

# Frozen issues never change; let browsers and proxies keep them for a while.
_ISSUE_CACHE = "public, max-age=3600"
_INDEX_CACHE = "public, max-age=300"


def _subscribe_url(ctx: WebContext) -> str:
    return ctx.config.site.url.rstrip("/") + "/" + SUBSCRIBE_PATH


# Far above any section's real size: the archive lists what the email's cap left out.
_NO_CAP = 100_000


def _left_out(ctx: WebContext, digest: Digest) -> list[tuple[str, list[StoredItem]]]:
    """Per section, the items of the issue's period that its cap kept out of the email.

    The email's "and N more in this section" links here. The issue froze the
    items it shows, not the ones it left out; those are read again with the
    same rules (first seen in the issue's period, grouped as the digest
    groups), so the page lists what the email counted.
    """
    shown = {item.id for section in digest.sections for item in section.items}
    candidates = ctx.store.items_first_seen_between(digest.period_start, digest.period_end)
    full = group_items(candidates, ctx.config, max_per_section=_NO_CAP)
    return [
        (section.title, [item for item in section.items if item.id not in shown])
        for section in full
    ]


def routes(ctx: WebContext) -> list[BaseRoute]:
    """The archive routes, bound to ``ctx`` (its config may be swapped on reload)."""

    async def index(request: Request) -> Response:
        digests = await asyncio.to_thread(ctx.store.list_digests, ARCHIVE_LIMIT)
        html = render_archive_index(
            digests,
            ctx.config.site,
            issue_url=lambda d: view_url(ctx.config, d.id),
            subscribe_url=_subscribe_url(ctx),
        )
        return HTMLResponse(html, headers={"Cache-Control": _INDEX_CACHE})

    async def issue(request: Request) -> Response:
        digest_id: int = request.path_params["digest_id"]
        digest = await asyncio.to_thread(ctx.store.get_digest, digest_id)
        if digest is None or not digest.html:
            raise HTTPException(404, f"No issue number {digest_id}.")
        left_out = await asyncio.to_thread(_left_out, ctx, digest)
        html = public_issue_html(
            digest.html,
            subscribe_url=_subscribe_url(ctx),
            site=ctx.config.site,
            more_html=render_more_items(left_out, ctx.config.site),
        )
        # The email HTML carries no script of its own; the app's CSP forbids any.
        return HTMLResponse(html, headers={"Cache-Control": _ISSUE_CACHE})

    return [
        Route("/digests/", index, methods=["GET", "HEAD"], name="digest_index"),
        Route("/digests/{digest_id:rowid}", issue, methods=["GET", "HEAD"], name="digest_issue"),
    ]
