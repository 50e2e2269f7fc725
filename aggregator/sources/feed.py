"""RSS 0.9x/1.0/2.0 and Atom 0.3/1.0 bytes → ``RawEntry`` objects, via feedparser.

feedparser is asked not to sanitize and not to resolve relative URIs inside
embedded HTML: normalize does both with nh3, which is stricter and much faster,
and doing them twice would only cost time (about a third of feedparser's run
time on a typical feed). Element links (``<link>``, ``atom:link``) are still
resolved by feedparser against ``xml:base`` and the document URL, which is
what the specifications ask for.
"""

from __future__ import annotations

import functools
import hashlib
import html
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import feedparser
import feedparser.mixin
from selectolax.lexbor import LexborHTMLParser

from ..errors import ParseError
from ..models import FetchResult, ParsedFeed, RawEntry, Source
from .dates import parse_date
from .decode import damaged_utf8_as_utf8, is_utf8, korean_as_utf8
from .fastfeed import parse_fast
from .markup import bound_markup, neutralize_char_ref_bytes

log = logging.getLogger(__name__)

# Once it knows the document URL, feedparser re-resolves the base URI at every
# start tag (make_safe_absolute_uri(base, base): a regex and a urljoin each
# time), a third of its run time on a typical feed for an answer that is the
# same for every element. The function is pure (its inputs are two strings and
# a constant scheme list), so a small cache returns the same answers for less.
if not hasattr(feedparser.mixin.make_safe_absolute_uri, "cache_info"):
    feedparser.mixin.make_safe_absolute_uri = functools.lru_cache(maxsize=1024)(
        feedparser.mixin.make_safe_absolute_uri
    )

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif")


def html_to_text(markup: str) -> str:
    """The text of an HTML fragment (tags dropped, entities decoded)."""
    if "<" not in markup and "&" not in markup:
        return markup
    root = LexborHTMLParser(f"<body>{bound_markup(markup)}</body>").body
    return root.text(deep=True) if root is not None else markup


def _date(text: object, source: Source, now: datetime) -> datetime | None:
    """A feed's date string read by ``dates.parse_date``, or None.

    feedparser's own ``*_parsed`` values are not used: it reads an unknown
    zone name (``KST``) as UTC and ``2025.11.27`` as 2025-11-01, silently.
    Ours reads named zones, dotted and Korean dates, and returns None for what
    it cannot read unambiguously; normalize then flags the item ``date_missing``.
    """
    if not isinstance(text, str):
        return None
    if len(text) > _CACHED_DATE_CHARS:  # not kept in the cache below
        return parse_date(text, tz=source.timezone, fmt=source.date_format, now=now)
    return _parse_date(text, source.timezone, source.date_format, now)


# Real dates are short; a hostile long one is read without being kept.
_CACHED_DATE_CHARS = 200


@functools.lru_cache(maxsize=256)
def _parse_date(text: str, tz: str, fmt: str | None, now: datetime) -> datetime | None:
    # An entry's updated date is its published one when it has only that
    # (feedparser's fallback), so each such string would be read twice.
    return parse_date(text, tz=tz, fmt=fmt, now=now)


def _detail_html(value: str, detail: Mapping[str, Any] | None) -> str:
    """Feed text as HTML: plain-text constructs are escaped, HTML ones kept."""
    content_type = (detail or {}).get("type") or "text/html"
    if content_type in _HTML_TYPES:
        return value
    return html.escape(value, quote=False)


def _best_content(entry: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The richest ``content`` value (HTML preferred) and its xml:base."""
    contents = entry.get("content") or []
    if not contents:
        return None, None
    ranked = sorted(
        contents,
        key=lambda c: (c.get("type") not in _HTML_TYPES, -len(c.get("value") or "")),
    )
    best = ranked[0]
    value = best.get("value") or ""
    if not value.strip():
        return None, best.get("base")
    return _detail_html(value, best), best.get("base")


def _link(entry: Mapping[str, Any]) -> str | None:
    for link in entry.get("links") or []:
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return str(link["href"])
    value = entry.get("link")
    return str(value) if value else None


def _image(entry: Mapping[str, Any]) -> str | None:
    """media:content (images only), else media:thumbnail, else an image enclosure."""
    for media in entry.get("media_content") or []:
        url = media.get("url")
        medium = (media.get("medium") or "").lower()
        media_type = (media.get("type") or "").lower()
        if url and (
            medium == "image"
            or media_type.startswith("image/")
            or (not medium and not media_type and url.lower().endswith(_IMAGE_EXTENSIONS))
        ):
            return str(url)
    for thumb in entry.get("media_thumbnail") or []:
        if thumb.get("url"):
            return str(thumb["url"])
    for link in entry.get("links") or []:
        if (
            link.get("rel") == "enclosure"
            and (link.get("type") or "").lower().startswith("image/")
            and link.get("href")
        ):
            return str(link["href"])
    return None


def _categories(entry: Mapping[str, Any]) -> tuple[str, ...]:
    seen: list[str] = []
    for tag in entry.get("tags") or []:
        name = (tag.get("label") or tag.get("term") or "").strip()
        if name and name not in seen:
            seen.append(name)
    return tuple(seen)


def _author(entry: Mapping[str, Any]) -> str | None:
    detail = entry.get("author_detail") or {}
    name = detail.get("name") or entry.get("author")
    if not name:
        names = [a.get("name") for a in entry.get("authors") or [] if a.get("name")]
        name = ", ".join(names)
    return str(name) if name else None


def synthetic_guid(title: str | None, date_text: str | None) -> str:
    """An id for an entry that has neither id nor link: stable while title and date are."""
    digest = hashlib.sha256(f"{title or ''}\x1f{date_text or ''}".encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def _entry(
    entry: Mapping[str, Any],
    feed_link: str | None,
    feed_language: str | None,
    source: Source,
    now: datetime,
) -> RawEntry:
    title = entry.get("title")
    if title is not None:
        detail = entry.get("title_detail") or {}
        if detail.get("type") in _HTML_TYPES:
            title = html_to_text(title)
    content_html, content_base = _best_content(entry)
    summary = entry.get("summary")
    summary_html = _detail_html(summary, entry.get("summary_detail")) if summary else None
    summary_base = (entry.get("summary_detail") or {}).get("base")
    date_text = entry.get("published") or entry.get("updated") or entry.get("created")
    link = _link(entry)
    guid = entry.get("id") or link or synthetic_guid(title, date_text)
    language = (entry.get("title_detail") or {}).get("language") or feed_language
    return RawEntry(
        guid=str(guid),
        link=link,
        title=title,
        summary_html=summary_html,
        content_html=content_html,
        published=_date(entry.get("published"), source, now)
        or _date(entry.get("created"), source, now),
        updated=_date(entry.get("updated"), source, now),
        date_text=date_text,
        author=_author(entry),
        categories=_categories(entry),
        image_url=_image(entry),
        base_url=content_base or summary_base or feed_link,
        language=language,
    )


def parse_feed(source: Source, result: FetchResult, *, fast: bool = True) -> ParsedFeed:
    """Parse RSS or Atom bytes; a malformed but readable feed keeps its entries.

    The HTTP content type goes to feedparser so a charset given only in the
    header is honoured; the final URL becomes the document base. Raises
    ``ParseError`` when the bytes are not a feed at all. Plain well-formed
    RSS 2.0 and Atom 1.0 take ``fastfeed``'s lxml path, which builds the same
    structure as feedparser would (``fast=False`` forces feedparser: the
    differential test compares both).
    """
    content = result.content or b""
    headers = {"content-location": result.url}
    if result.content_type:
        headers["content-type"] = result.content_type
    warnings: list[str] = []
    if source.encoding:
        headers["content-type"] = f"application/xml; charset={source.encoding}"
    elif is_utf8(content):
        pass  # neither repair below applies: one check instead of one in each
    elif (recoded := korean_as_utf8(content)) is not None:
        # EUC-KR bytes under a UTF-8 (or no) label: feedparser would fall back to
        # windows-1252 and store mojibake.
        content = recoded
        headers["content-type"] = "application/xml; charset=utf-8"
    elif (damaged := damaged_utf8_as_utf8(content, result.charset)) is not None:
        # A few invalid bytes in UTF-8: feedparser would drop UTF-8 for the whole
        # document and garble every item. Replace just those bytes.
        content = damaged.text.encode("utf-8")
        headers["content-type"] = "application/xml; charset=utf-8"
        warnings.append(damaged.warning or "invalid UTF-8 replaced")
    content = neutralize_char_ref_bytes(content)
    if fast and (quick := parse_fast(content, headers.get("content-type"), result.url)):
        feed, entries = quick
        return _parsed_feed(feed, entries, source, result, warnings)
    try:
        parsed = feedparser.parse(
            content,
            response_headers=headers,
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except (ValueError, OverflowError, LookupError, RecursionError) as crash:
        # feedparser's loose parser has crashed on inputs nothing above defuses
        # (it raises instead of flagging): that is this source's error, not ours.
        raise ParseError(
            f"feedparser could not read this document ({type(crash).__name__}: {crash})",
            source_id=source.id,
            url=result.url,
        ) from crash
    feed = parsed.get("feed") or {}
    raw_entries = parsed.get("entries") or []
    warning = None
    if parsed.get("bozo"):
        exc = parsed.get("bozo_exception")
        warning = f"{type(exc).__name__}: {exc}" if exc is not None else "malformed feed"
    if not raw_entries and (not parsed.get("version") or (warning and not feed.get("title"))):
        reason = f" ({warning})" if warning else ""
        raise ParseError(
            f"not an RSS or Atom feed{reason}; got {result.content_type or 'unknown type'}",
            source_id=source.id,
            url=result.url,
        )
    if warning:
        log.info(
            "%s: malformed feed, %d entries recovered: %s", source.id, len(raw_entries), warning
        )
        warnings.append(f"malformed feed, {len(raw_entries)} entries recovered: {warning}")
    return _parsed_feed(feed, raw_entries, source, result, warnings)


def _parsed_feed(
    feed: Mapping[str, Any],
    raw_entries: list[Any],
    source: Source,
    result: FetchResult,
    warnings: list[str],
) -> ParsedFeed:
    """Entries as ``RawEntry`` objects, from feedparser's dicts or fastfeed's copies."""
    feed_link = feed.get("link") or None
    language = feed.get("language") or None
    return ParsedFeed(
        title=html_to_text(feed["title"]) if feed.get("title") else None,
        link=feed_link,
        entries=tuple(
            _entry(e, feed_link, language, source, result.fetched_at) for e in raw_entries
        ),
        language=language,
        warning="; ".join(warnings) or None,
    )
