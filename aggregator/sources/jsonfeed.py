"""JSON Feed 1.0 / 1.1 bytes → ``RawEntry`` objects.

feedparser does not read JSON Feed, and the format is simple enough that a
small mapping is clearer than a dependency. Both versions are accepted: 1.1's
``authors`` list and 1.0's single ``author`` object. Fields of the wrong type
are ignored rather than fatal, as feedparser would do for XML.
"""

from __future__ import annotations

import html
import json
import logging
import re
from typing import Any

from ..errors import ParseError
from ..models import FetchResult, ParsedFeed, RawEntry, Source
from .dates import parse_date
from .decode import decode_document
from .feed import synthetic_guid

log = logging.getLogger(__name__)


def _str(value: Any) -> str | None:
    """A non-empty string, numbers turned into strings (ids may be numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def text_to_html(text: str) -> str:
    """Plain text as HTML paragraphs: escaped, blank lines become paragraph breaks."""
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    return "".join(
        "<p>" + html.escape(p, quote=False).replace("\n", "<br>") + "</p>" for p in paragraphs if p
    )


def _authors(item: dict[str, Any], feed: dict[str, Any]) -> str | None:
    people = item.get("authors")
    if not isinstance(people, list):
        single = item.get("author")
        people = [single] if isinstance(single, dict) else []
    names = [p["name"] for p in people if isinstance(p, dict) and _str(p.get("name"))]
    if not names:
        feed_people = feed.get("authors") or ([feed["author"]] if "author" in feed else [])
        if isinstance(feed_people, list):
            names = [p["name"] for p in feed_people if isinstance(p, dict) and _str(p.get("name"))]
    return ", ".join(names) or None


def _entry(item: dict[str, Any], feed: dict[str, Any], source: Source, base: str) -> RawEntry:
    link = _str(item.get("url")) or _str(item.get("external_url"))
    title = _str(item.get("title"))
    content_html = _str(item.get("content_html"))
    if content_html is None and (text := _str(item.get("content_text"))):
        content_html = text_to_html(text)
    summary = _str(item.get("summary"))
    published_text = _str(item.get("date_published"))
    modified_text = _str(item.get("date_modified"))
    tags = item.get("tags")
    categories = tuple(t for t in tags if _str(t)) if isinstance(tags, list) else ()
    guid = _str(item.get("id")) or link or synthetic_guid(title, published_text)
    return RawEntry(
        guid=guid,
        link=link,
        title=title,
        summary_html=html.escape(summary, quote=False) if summary else None,
        content_html=content_html,
        published=parse_date(published_text, tz=source.timezone),
        updated=parse_date(modified_text, tz=source.timezone),
        date_text=published_text or modified_text,
        author=_authors(item, feed),
        categories=categories,
        image_url=_str(item.get("image")) or _str(item.get("banner_image")),
        base_url=base,
        language=_str(item.get("language")) or _str(feed.get("language")),
    )


# "\ud800": JSON can escape a surrogate that pairs with nothing, which no
# UTF-8 encoder (the database, the published feed) accepts.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with every unpaired surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def parse_json_feed(source: Source, result: FetchResult) -> ParsedFeed:
    """Parse JSON Feed bytes; invalid JSON raises ``ParseError`` with its position.

    Relative URLs in items are resolved later (in normalize) against the URL
    the feed was fetched from, as for any other document.
    """
    decoded = decode_document(result.content or b"", http_charset=result.charset)
    try:
        document = json.loads(decoded.text)
        if _SURROGATE_ESCAPE.search(decoded.text):
            document = _without_lone_surrogates(document)
    except json.JSONDecodeError as exc:
        raise ParseError(
            f"invalid JSON Feed: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            source_id=source.id,
            url=result.url,
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("items", []), list):
        raise ParseError(
            'not a JSON Feed: expected an object with an "items" list',
            source_id=source.id,
            url=result.url,
        )
    version = _str(document.get("version")) or ""
    warnings = [decoded.warning] if decoded.warning else []
    if "jsonfeed.org/version/" not in version:
        warnings.append(f'missing or unknown JSON Feed version "{version}"')
    warning = "; ".join(warnings) or None
    home = _str(document.get("home_page_url"))
    base = result.url
    items = [i for i in document.get("items", []) if isinstance(i, dict)]
    return ParsedFeed(
        title=_str(document.get("title")),
        link=home,
        entries=tuple(_entry(i, document, source, base) for i in items),
        language=_str(document.get("language")),
        warning=warning,
    )
