"""The HTML home page: recent items, and the feeds announced for autodiscovery.

The page itself is rendered by :func:`aggregator.render.render_home` (Jinja2
with autoescaping, ``templates/home.html.j2``). If that cannot render (the
template is missing or broken), a plain built-in page is served instead and
the error is logged, so the feeds stay discoverable whatever the theme does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from html import escape

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .. import render
from ..errors import RenderError
from ..models import Site, StoredItem
from ..publish import feed_urls
from .context import WebContext

__all__ = ["HOME_ITEM_COUNT", "fallback_home", "routes"]

log = logging.getLogger(__name__)

HOME_ITEM_COUNT = 30


def _feed_links(site: Site) -> dict[str, str]:
    atom_url, json_url = feed_urls(site)
    return {"atom": atom_url, "json": json_url}


def fallback_home(items: Sequence[StoredItem], site: Site, links: dict[str, str]) -> str:
    """A minimal, fully escaped home page for when the template cannot render."""
    subscribe = site.url.rstrip("/") + "/" + render.SUBSCRIBE_PATH
    head_links = "".join(
        f'<link rel="alternate" type="{kind_type}" title="{escape(site.title)}" '
        f'href="{escape(links[kind])}">'
        for kind, kind_type in (("atom", "application/atom+xml"), ("json", "application/feed+json"))
    )
    rows = "".join(
        f'<li><a href="{escape(item.url)}">{escape(item.title or "(untitled)")}</a> '
        f"<small>{escape(item.source_title)} · {item.published_at:%Y-%m-%d}</small>"
        f"<p>{escape(item.excerpt)}</p></li>"
        for item in items
    )
    return (
        f'<!doctype html><html lang="{escape(site.language)}"><head><meta charset="utf-8">'
        f"<title>{escape(site.title)}</title>{head_links}</head><body>"
        f"<main><h1>{escape(site.title)}</h1><p>{escape(site.description)}</p>"
        f'<p><a href="{escape(links["atom"])}">Atom feed</a> · '
        f'<a href="{escape(links["json"])}">JSON Feed</a> · '
        f'<a href="{escape(subscribe)}">Subscribe</a></p>'
        f"<ul>{rows}</ul></main></body></html>"
    )


def routes(ctx: WebContext) -> list[BaseRoute]:
    """``/``: the home page."""

    async def home(request: Request) -> Response:
        site = ctx.config.site
        items = await run_in_threadpool(ctx.store.recent_items, HOME_ITEM_COUNT)
        links = _feed_links(site)
        try:
            # The archive and subscribe links are every page's defaults (render.site_links).
            page = render.render_home(items, site, feed_urls=links)
        except RenderError as error:
            log.error("home page template failed, serving the plain page: %s", error)
            page = fallback_home(items, site, links)
        return HTMLResponse(page, headers={"Cache-Control": "public, max-age=60"})

    return [Route("/", home, methods=["GET", "HEAD"], name="home")]
