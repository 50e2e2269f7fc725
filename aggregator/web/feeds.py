"""Serve the published feeds: ``/feed.atom`` and ``/feed.json`` with conditional GET.

The files in the output directory are what ``aggregator publish`` (or the
scheduler) wrote; this module only reads them, so every process serving the
directory answers with the same bytes and validators. A file that does not
exist yet (a fresh install) is built from the store on the first request.

Validators: the ``ETag`` is a hash of the file's bytes (strong for the
identity encoding; the gzip middleware in :mod:`aggregator.web.app` weakens it
when it compresses), ``Last-Modified`` is the file's mtime, which
:func:`aggregator.publish.write_if_changed` leaves alone while the content is
unchanged. ``If-None-Match`` wins over ``If-Modified-Since`` (RFC 9110 13.2.2).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import AggregatorError
from ..publish import ATOM_FILENAME, JSON_FILENAME, publish_from_store
from .context import WebContext

__all__ = ["ATOM_MEDIA_TYPE", "CACHE_CONTROL", "JSON_MEDIA_TYPE", "FeedFiles", "routes"]

log = logging.getLogger(__name__)

ATOM_MEDIA_TYPE = "application/atom+xml; charset=utf-8"
JSON_MEDIA_TYPE = "application/feed+json"
# Readers poll; five minutes of caching costs a subscriber little and spares us most polls.
CACHE_CONTROL = "public, max-age=300"


@dataclass(frozen=True, slots=True)
class FeedFile:
    """One published file as served: its bytes and their validators."""

    body: bytes
    etag: str  # strong, quoted
    mtime: int  # whole seconds, as Last-Modified carries them
    signature: tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino): changes on rewrite

    @property
    def last_modified(self) -> str:
        return formatdate(self.mtime, usegmt=True)


class FeedFiles:
    """Reads published files, caching each until its stat signature changes.

    A rewrite is a rename of a new file (a new inode and mtime), so a stat per
    request is enough to notice it; the bytes are read and hashed only then.
    """

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx
        self._cache: dict[Path, FeedFile] = {}
        self._build_lock = asyncio.Lock()

    def path(self, filename: str) -> Path:
        return self._ctx.config.output_dir / filename

    def read(self, filename: str) -> FeedFile | None:
        """The current contents of ``filename``, or None if it was never published."""
        path = self.path(filename)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._cache.get(path)
        if cached is not None and cached.signature == signature:
            return cached
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        current = FeedFile(
            body=body, etag=f'"{digest}"', mtime=int(stat.st_mtime), signature=signature
        )
        self._cache[path] = current
        return current

    async def get(self, filename: str) -> FeedFile | None:
        """``filename`` as published; built from the store first if it does not exist."""
        found = self.read(filename)
        if found is not None:
            return found
        async with self._build_lock:  # one build for a burst of first requests
            found = self.read(filename)
            if found is not None:
                return found
            config = self._ctx.config
            sections = {section.id: section.title for section in config.sections}
            result = await run_in_threadpool(
                publish_from_store,
                self._ctx.store,
                config.site,
                config.output_dir,
                sections=sections,
            )
            log.info("published %d items on first request to %s", result.item_count, filename)
            return self.read(filename)


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value matches ``etag`` (weak comparison, RFC 9110 8.8.3.2)."""
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


def is_not_modified(request: Request, feed: FeedFile) -> bool:
    """Whether the request's validators show the client already has ``feed``."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        return etag_matches(if_none_match, feed.etag)
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False  # an unreadable date is ignored, as RFC 9110 asks
        if since.tzinfo is None:
            return False
        return feed.mtime <= since.timestamp()
    return False


def _feed_response(request: Request, feed: FeedFile, media_type: str) -> Response:
    headers = {
        "ETag": feed.etag,
        "Last-Modified": feed.last_modified,
        "Cache-Control": CACHE_CONTROL,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if is_not_modified(request, feed):
        return Response(status_code=304, headers=headers)
    return Response(feed.body, media_type=media_type, headers=headers)


def routes(ctx: WebContext) -> list[BaseRoute]:
    """``/feed.atom``, ``/feed.json`` (GET and HEAD) and ``/feed.xml`` redirecting to Atom."""
    files = FeedFiles(ctx)

    def serve(filename: str, media_type: str) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                feed = await files.get(filename)
            except AggregatorError as error:
                log.error("cannot serve %s: %s", filename, error)
                return PlainTextResponse(
                    "The feed is not available right now.\n",
                    status_code=503,
                    headers={"Retry-After": "60"},
                )
            if feed is None:
                return PlainTextResponse("The feed has not been published yet.\n", 503)
            return _feed_response(request, feed, media_type)

        name = filename.replace(".", "_")
        return Route(f"/{filename}", endpoint, methods=["GET", "HEAD"], name=name)

    async def legacy(request: Request) -> Response:
        # Readers that guess a feed's address try /feed.xml first.
        return RedirectResponse("/feed.atom", status_code=301)

    return [
        serve(ATOM_FILENAME, ATOM_MEDIA_TYPE),
        serve(JSON_FILENAME, JSON_MEDIA_TYPE),
        Route("/feed.xml", legacy, methods=["GET", "HEAD"], name="feed_xml"),
    ]
