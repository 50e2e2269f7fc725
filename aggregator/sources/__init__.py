"""Parsers: the bytes of one fetch → a ``ParsedFeed`` of ``RawEntry`` objects.

``parse`` is the only entry point the pipeline uses. It picks the parser from
the source's type and, for feeds, from what the bytes are: JSON Feed when the
server says JSON or the body is a JSON object, feedparser (RSS 0.9x/1.0/2.0,
Atom 0.3/1.0) otherwise. Parsers do no sanitizing and no URL resolution in
embedded HTML; normalize does both, once.
"""

from __future__ import annotations

from ..errors import ParseError
from ..models import FetchResult, ParsedFeed, Source
from .feed import parse_feed
from .html import parse_listing
from .jsonfeed import parse_json_feed

__all__ = ["is_json_feed", "parse", "parse_feed", "parse_json_feed", "parse_listing"]

_JSON_TYPES = ("application/feed+json", "application/json")


def is_json_feed(content: bytes, content_type: str | None) -> bool:
    """True when the response is (meant to be) a JSON Feed rather than XML.

    The declared type is believed first; servers that label JSON Feeds
    ``text/plain`` or ``application/octet-stream`` are caught by the body
    starting with ``{`` (after a BOM and whitespace), which no XML can.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in _JSON_TYPES:
        return True
    head = content[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"{")


def parse(source: Source, result: FetchResult) -> ParsedFeed:
    """Parse one fetched response of ``source`` into entries.

    Raises ``ParseError`` (naming the source id and URL) when the bytes are
    not a feed or page we can read, and ``ScrapeError`` when an HTML listing
    no longer matches its selectors. A 304 response has nothing to parse and
    is a caller bug, reported as ``ParseError`` rather than a crash.
    """
    if result.content is None:
        raise ParseError(
            "nothing to parse: the server answered 304 Not Modified",
            source_id=source.id,
            url=result.url,
        )
    if source.type == "html":
        return parse_listing(source, result)
    if is_json_feed(result.content, result.content_type):
        return parse_json_feed(source, result)
    return parse_feed(source, result)
