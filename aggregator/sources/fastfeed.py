"""A gated fast path for plain RSS 2.0 and Atom 1.0: lxml in C instead of feedparser.

feedparser spends most of a cold ingest's parsing CPU walking SAX events in
Python. Most real feeds are small, well-formed documents made of a handful of
elements, so this module reads those with lxml and builds the same
structure feedparser would (plain dicts: ``FeedParserDict``'s lookups cost more
than the parsing), for exactly the keys ``feed._entry`` reads; ``feed.parse_feed``
then turns it into ``RawEntry`` objects with the same code as feedparser's.

The gate is the point of the module: ``parse_fast`` returns None (and the
caller goes to feedparser exactly as before) for anything outside the subset
whose feedparser semantics are replicated here, namely:

* the document must be well-formed XML in strict UTF-8 (or ASCII), with an
  XML media type, no byte order mark, no DOCTYPE (so no entities beyond the
  five predefined ones), and a declared encoding that agrees;
* the root is ``<rss>`` with ``<channel>``/``<item>`` in no namespace, or an
  Atom 1.0 ``<feed>``; every element must be in the whitelist below, with only
  the attributes listed for it, and text elements must hold only text (no
  child elements, comments or inline XHTML);
* no ``xml:base`` or ``base``, ``xml:lang`` only on the root, no base64 or
  out-of-line content, no empty or missing link targets, no repeated singular
  elements in an entry, no e-mail address in an RSS author.

Where feedparser's behaviour is an accident (an Atom ``<id>`` becomes the
entry's link when no alternate link follows; RSS titles are reclassified as
HTML when they contain entities; text that round-trips through Latin-1 is
re-decoded as UTF-8) the accident is replicated, not fixed: the contract is
identical output, checked by ``tests/test_fastfeed.py`` on every feed fixture,
on the benchmark corpus and on feedparser's own test files.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any

import feedparser.encodings
import feedparser.mixin
from feedparser.html import _cp1252
from feedparser.urls import _urljoin
from lxml import etree

from .links import join_url

_ATOM = "{http://www.w3.org/2005/Atom}"
_CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

_HTML_TYPES = feedparser.mixin._FeedParserMixin.html_types
_map_type = feedparser.mixin._FeedParserMixin.map_content_type
_looks_like_html = feedparser.mixin._FeedParserMixin.looks_like_html

# feedparser maps C1 control characters to their windows-1252 meaning in every
# text value; a cheap search decides whether the (slower) translate is needed.
_C1 = re.compile("[\x80-\x9f]")
_BEYOND_LATIN1 = re.compile("[^\x00-\xff]")
_LINK_REF = re.compile("&([A-Za-z0-9_]+);")

_APP_XML = ("application/xml", "application/xml-dtd", "application/xml-external-parsed-entity")
_TEXT_XML = ("text/xml", "text/xml-external-parsed-entity")

# Element whitelists: element -> allowed attributes. Anything else refuses.
_RSS_ITEM: dict[str, frozenset[str]] = {
    "title": frozenset(),
    "link": frozenset(),
    "description": frozenset(),
    "guid": frozenset({"isPermaLink"}),
    "pubDate": frozenset(),
    "category": frozenset({"domain"}),
    "author": frozenset(),
    "comments": frozenset(),
    _CONTENT + "encoded": frozenset(),
    _DC + "creator": frozenset(),
    _DC + "date": frozenset(),
    "enclosure": frozenset({"url", "type", "length"}),
}
# Channel elements that never influence what parse_feed reads, kept only when
# they are plain text (feedparser stores them under their own keys).
_RSS_CHANNEL_INERT = frozenset(
    {"description", "lastBuildDate", "pubDate", "generator", "copyright", "ttl", "docs"}
)
_NO_ATTRIBUTES: frozenset[str] = frozenset()
_ATOM_TEXT_TYPES = frozenset({"text", "html"})
# Attribute whitelists of elements met in every entry, built once.
_TYPE_ONLY = frozenset({"type"})
_ATOM_LINK_ATTRIBUTES = frozenset({"rel", "href", "type", "title", "hreflang", "length"})
_ATOM_CATEGORY_ATTRIBUTES = frozenset({"term", "scheme", "label"})
_ATOM_FEED_INERT = frozenset({"subtitle", "generator", "icon", "logo", "rights"})
# Entry elements that may appear at most once (feedparser keeps first or last
# depending on the element; refusing repeats sidesteps both).
_SINGULAR = frozenset(
    {"title", "link", "description", "guid", "pubDate", "author", "comments", "id",
     "summary", "content", "published", "updated", _CONTENT + "encoded", _DC + "creator",
     _DC + "date"}
)  # fmt: skip


def _join(base: str, uri: str) -> str:
    # An RSS item's permalink guid is usually its link: joined once, when short
    # (a hostile megabyte link must not stay in memory with 255 others).
    return _join_cached(base, uri) if len(uri) <= _CACHED_URI_CHARS else _join_uri(base, uri)


_CACHED_URI_CHARS = 2048


@functools.lru_cache(maxsize=256)
def _join_cached(base: str, uri: str) -> str:
    return _join_uri(base, uri)


def _join_uri(base: str, uri: str) -> str:
    """feedparser's ``_urljoin``: extra slashes after "scheme://" go, a bad URL becomes ''.

    A URI without "://", or an http(s) URL whose host follows it, has no such
    slashes to remove and takes ``join_url``; everything else takes
    feedparser's own function.
    """
    if "://" in uri and (
        not uri.startswith(("https://", "http://")) or uri.startswith(("https:///", "http:///"))
    ):
        return str(_urljoin(base, uri))
    try:
        return join_url(base, uri)
    except ValueError:
        return ""


def _xml_encoding(content: bytes) -> bytes | None:
    r"""``group(1)`` of ``RE_XML_PI_ENCODING.match(content)``, without its backtracking.

    The pattern (``^<\?.*encoding=['"](.*?)['"].*\?>``, no DOTALL) matches
    within the first line; on a feed written as one line its greedy ``.*``
    backtracks over the whole document (a tenth of the fast path's CPU). Its
    answer: the last "encoding=" on that line, followed by a quote, whose
    next quote has a "?>" somewhere after it on the line. Checked against the
    pattern on generated declarations in tests/test_normalize_fast.py.
    """
    if not content.startswith(b"<?"):
        return None
    end = content.find(b"\n")
    if end < 0:
        end = len(content)
    at = content.rfind(b"encoding=", 2, end)
    while at >= 0:
        start = at + 10
        if start <= end and content[at + 9 : start] in (b"'", b'"'):
            quotes = (content.find(b"'", start, end), content.find(b'"', start, end))
            close = min((q for q in quotes if q >= 0), default=-1)
            if close >= 0 and content.find(b"?>", close + 1, end) >= 0:
                return content[start:close]
        at = content.rfind(b"encoding=", 2, at + 8)
    return None


def _with_updated_fallback(entry: dict[str, Any]) -> dict[str, Any]:
    """``FeedParserDict.get("updated")`` answers ``published`` when only that is set."""
    if "updated" not in entry and "published" in entry:
        entry["updated"] = entry["published"]
    return entry


class _Refused(Exception):
    """Raised inside the fast path: this input is feedparser's."""


def _encoding_ok(content: bytes, content_type: str | None) -> bool:
    """Would feedparser decode these bytes as UTF-8 with no complaint (RFC 3023 rules)?"""
    if not content_type or content.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return False
    mime, http_encoding = feedparser.encodings.parse_content_type(content_type)
    declared = _xml_encoding(content)
    xml_encoding = declared.decode("utf-8", "replace").lower() if declared is not None else ""
    if mime in _APP_XML or (mime.startswith("application/") and mime.endswith("+xml")):
        encoding = http_encoding or xml_encoding or "utf-8"
    elif mime in _TEXT_XML or (mime.startswith("text/") and mime.endswith("+xml")):
        encoding = http_encoding or "us-ascii"
    else:
        return False  # feedparser flags NonXMLContentType
    ascii_only = content.isascii()
    if encoding.lower() in ("us-ascii", "ascii"):
        if not ascii_only:
            return False  # feedparser falls back and flags the override
    elif encoding.lower() not in ("utf-8", "utf8"):
        return False
    # lxml reads the declaration itself: it must say the same thing.
    return xml_encoding in ("", "utf-8") or (ascii_only and xml_encoding == "us-ascii")


class _Reader:
    """One document's walk; mirrors feedparser's handlers for the whitelisted elements."""

    def __init__(self, base: str, lang: str | None, atom: bool, *, c1: bool = True) -> None:
        self.base = base
        self.lang = lang
        self.is_atom = atom
        # False when the document cannot hold a C1 character (see ``parse_fast``).
        self.c1 = c1

    def text(self, el: Any, *, uri: bool = False) -> str:
        """An element's text as feedparser's ``pop`` returns it."""
        if len(el):
            raise _Refused("child nodes inside a text element")
        value: str = (el.text or "").strip()
        if uri and value:
            value = _join(self.base, value)
        if not value.isascii():
            # feedparser's repair of UTF-8 read as Latin-1, applied to every value.
            # Beyond Latin-1 (all Korean text) the encode fails: a search says so
            # without raising.
            if _BEYOND_LATIN1.search(value) is None:
                with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
                    value = value.encode("iso-8859-1").decode("utf-8")
            if self.c1 and _C1.search(value):
                value = value.translate(_cp1252)
        return value

    def detail(self, content_type: str, value: str) -> dict[str, Any]:
        return {"type": content_type, "language": self.lang, "base": self.base, "value": value}

    @staticmethod
    def attrs(el: Any, allowed: frozenset[str]) -> dict[str, str]:
        items = el.items()
        if not items:
            return {}  # most elements
        found = dict(items)
        if not found.keys() <= allowed:
            raise _Refused(f"attribute on <{el.tag}>")
        return found

    @staticmethod
    def no_text(el: Any) -> None:
        """Containers: stray text is ignored by feedparser only when it is blank."""
        if (el.text or "").strip() or any((c.tail or "").strip() for c in el):
            raise _Refused(f"text inside <{el.tag}>")

    def atom_text_type(self, el: Any) -> str:
        found = self.attrs(el, _TYPE_ONLY)
        declared = found.get("type", "text")
        if declared not in _ATOM_TEXT_TYPES:
            raise _Refused("Atom text construct that is neither text nor html")
        return str(_map_type(declared))

    def title(self, ctx: dict[str, Any], el: Any) -> None:
        if self.is_atom:
            content_type = self.atom_text_type(el)
            value = self.text(el)
        else:
            self.attrs(el, _NO_ATTRIBUTES)
            value = self.text(el)
            # feedparser's guess for RSS titles, the same pure function; it
            # needs an end tag or a reference, so "<" or "&", to say yes.
            looks_like_html = ("<" in value or "&" in value) and _looks_like_html(value)
            content_type = "text/html" if looks_like_html else "text/plain"
        ctx["title"] = value
        ctx["title_detail"] = self.detail(content_type, value)

    def atom_link(self, ctx: dict[str, Any], el: Any) -> None:
        if len(el) or (el.text or "").strip():
            raise _Refused("content inside an Atom link")
        found = self.attrs(el, _ATOM_LINK_ATTRIBUTES)
        for key in ("rel", "type"):
            if key in found:
                found[key] = found[key].lower()
        if not found.get("href"):
            raise _Refused("Atom link without a target")
        found.setdefault("rel", "alternate")
        found.setdefault("type", "application/atom+xml" if found["rel"] == "self" else "text/html")
        found["href"] = _join(self.base, found["href"])
        ctx.setdefault("links", []).append(dict(found))
        if found["rel"] == "alternate" and _map_type(found["type"]) in _HTML_TYPES:
            ctx["link"] = found["href"]

    def guid(self, ctx: dict[str, Any], el: Any, permalink: bool) -> None:
        value = self.text(el, uri=permalink)
        ctx["id"] = value
        ctx.setdefault("guidislink", permalink and "link" not in ctx)
        if permalink:
            ctx.setdefault("link", value)

    def author_text(self, ctx: dict[str, Any], el: Any) -> None:
        self.attrs(el, _NO_ATTRIBUTES)
        value = self.text(el)
        if "@" in value:
            raise _Refused("e-mail address in an RSS author")
        detail: dict[str, Any] = {}
        ctx.setdefault("authors", []).append(detail)
        ctx["author"] = value
        if value:
            ctx.setdefault("author_detail", detail)
            detail["name"] = value

    def atom_author(self, ctx: dict[str, Any], el: Any) -> None:
        self.attrs(el, _NO_ATTRIBUTES)
        self.no_text(el)
        fields: dict[str, str] = {}
        for child in el:
            full = child.tag  # lxml builds this string on every access
            if not isinstance(full, str):
                continue
            name = full.removeprefix(_ATOM)
            if full == name or name not in ("name", "email", "uri") or name in fields:
                raise _Refused("unexpected element in an Atom author")
            self.attrs(child, _NO_ATTRIBUTES)
            fields[name] = self.text(child, uri=name == "uri")
        if not fields.get("name"):
            raise _Refused("Atom author without a name")
        detail = dict(name=fields["name"])
        if "email" in fields:
            detail["email"] = fields["email"]
        ctx.setdefault("authors", []).append(dict(detail))
        ctx["author_detail"] = detail
        email = fields.get("email")
        ctx["author"] = f"{fields['name']} ({email})" if email else fields["name"]

    def rss_item(self, el: Any) -> dict[str, Any]:
        self.attrs(el, _NO_ATTRIBUTES)
        if (el.text or "").strip():
            raise _Refused("text inside <item>")
        ctx: dict[str, Any] = {}
        seen: set[str] = set()
        for child in el:
            tail = child.tail  # no_text(el), in the one pass over the children
            if tail and tail.strip():
                raise _Refused("text between elements")
            tag = child.tag
            if not isinstance(tag, str):
                continue
            allowed = _RSS_ITEM.get(tag)
            if allowed is None:
                raise _Refused(f"<{tag}> in an RSS item")
            if tag in _SINGULAR:
                if tag in seen:
                    raise _Refused(f"repeated <{tag}>")
                seen.add(tag)
            if tag == "title":
                self.title(ctx, child)
            elif tag == "link":
                self.attrs(child, allowed)
                value = self.text(child, uri=True)
                if not value:
                    raise _Refused("empty link")
                value = _LINK_REF.sub(r"&\g<1>", value.replace("&amp;", "&"))
                ctx.setdefault("links", []).append(
                    dict(rel="alternate", type="text/html", href=value)
                )
                ctx["link"] = value
            elif tag == "description":
                self.attrs(child, allowed)
                value = self.text(child)
                ctx["summary"] = value
                ctx["summary_detail"] = self.detail("text/html", value)
            elif tag == "guid":
                flag = self.attrs(child, allowed).get("isPermaLink", "true")
                if flag not in ("true", "false"):
                    raise _Refused("isPermaLink neither true nor false")
                self.guid(ctx, child, flag == "true")
            elif tag == "pubDate":
                self.attrs(child, allowed)
                ctx["published"] = self.text(child)
            elif tag == _DC + "date":
                self.attrs(child, allowed)
                ctx["updated"] = self.text(child)
            elif tag == "category":
                domain = self.attrs(child, allowed).get("domain")
                value = self.text(child)
                self.tag(ctx, value or None, domain or None, None)
            elif tag in ("author", _DC + "creator"):
                if "author" in ctx:
                    raise _Refused("two authors")
                self.author_text(ctx, child)
            elif tag == _CONTENT + "encoded":
                self.attrs(child, allowed)
                value = self.text(child)
                ctx.setdefault("content", []).append(self.detail("text/html", value))
                ctx.setdefault("summary", value)
            elif tag == "enclosure":
                found = self.attrs(child, allowed)
                if len(child) or (child.text or "").strip() or not found.get("url"):
                    raise _Refused("enclosure without a url or with content")
                if "type" in found:
                    found["type"] = found["type"].lower()
                found["href"] = found.pop("url")
                found["rel"] = "enclosure"
                ctx.setdefault("links", []).append(dict(found))
            else:  # comments
                self.attrs(child, allowed)
                ctx["comments"] = self.text(child, uri=True)
        return _with_updated_fallback(ctx)

    @staticmethod
    def tag(ctx: dict[str, Any], term: str | None, scheme: str | None, label: str | None) -> None:
        tags = ctx.setdefault("tags", [])
        if term or scheme or label:
            value = dict(term=term, scheme=scheme, label=label)
            if value not in tags:
                tags.append(value)

    def atom_entry(self, el: Any) -> dict[str, Any]:
        self.attrs(el, _NO_ATTRIBUTES)
        if (el.text or "").strip():
            raise _Refused("text inside <entry>")
        ctx: dict[str, Any] = {}
        seen: set[str] = set()
        for child in el:
            tail = child.tail  # no_text(el), in the one pass over the children
            if tail and tail.strip():
                raise _Refused("text between elements")
            full = child.tag  # lxml builds this string on every access
            if not isinstance(full, str):
                continue
            tag = full.removeprefix(_ATOM)
            if tag == full:
                raise _Refused(f"<{tag}> in an Atom entry")
            if tag in _SINGULAR:
                if tag in seen:
                    raise _Refused(f"repeated <{tag}>")
                seen.add(tag)
            if tag == "title":
                self.title(ctx, child)
            elif tag == "link":
                self.atom_link(ctx, child)
            elif tag == "id":
                self.attrs(child, _NO_ATTRIBUTES)
                self.guid(ctx, child, True)
            elif tag in ("published", "updated"):
                self.attrs(child, _NO_ATTRIBUTES)
                ctx[tag] = self.text(child)
            elif tag == "summary":
                content_type = self.atom_text_type(child)
                value = self.text(child)
                ctx["summary"] = value
                ctx["summary_detail"] = self.detail(content_type, value)
            elif tag == "content":
                content_type = self.atom_text_type(child)
                value = self.text(child)
                ctx.setdefault("content", []).append(self.detail(content_type, value))
                ctx.setdefault("summary", value)
            elif tag == "author":
                if "author" in ctx:
                    raise _Refused("two authors")
                self.atom_author(ctx, child)
            elif tag == "category":
                if len(child) or (child.text or "").strip():
                    raise _Refused("Atom category with content")
                found = self.attrs(child, _ATOM_CATEGORY_ATTRIBUTES)
                if not found.get("term"):
                    raise _Refused("Atom category without a term")
                self.tag(ctx, found["term"], found.get("scheme"), found.get("label"))
            else:
                raise _Refused(f"<{tag}> in an Atom entry")
        return _with_updated_fallback(ctx)

    def rss(self, root: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.attrs(root, frozenset({"version"}))
        self.no_text(root)
        channels = [c for c in root if isinstance(c.tag, str)]
        if len(channels) != 1 or channels[0].tag != "channel":
            raise _Refused("RSS without exactly one channel")
        channel = channels[0]
        self.attrs(channel, _NO_ATTRIBUTES)
        self.no_text(channel)
        feed: dict[str, Any] = {}
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        for child in channel:
            tag = child.tag
            if not isinstance(tag, str):
                continue
            if tag == "item":
                entries.append(self.rss_item(child))
                continue
            if tag in seen and tag != "category":
                raise _Refused(f"repeated channel <{tag}>")
            seen.add(tag)
            if tag == "title":
                self.attrs(child, _NO_ATTRIBUTES)
                feed["title"] = self.text(child)
            elif tag == "link":
                self.attrs(child, _NO_ATTRIBUTES)
                value = self.text(child, uri=True)
                if not value:
                    raise _Refused("empty channel link")
                feed["link"] = _LINK_REF.sub(r"&\g<1>", value)
            elif tag == "language":
                self.attrs(child, _NO_ATTRIBUTES)
                feed["language"] = self.text(child)
            elif tag in _RSS_CHANNEL_INERT or tag == "category":
                self.attrs(child, frozenset({"domain"} if tag == "category" else ()))
                self.text(child)
            elif tag == _ATOM + "link":
                found = self.attrs(child, frozenset({"rel", "href", "type"}))
                if found.get("rel") != "self" or len(child) or (child.text or "").strip():
                    raise _Refused("atom:link in RSS other than rel=self")
            else:
                raise _Refused(f"<{tag}> in an RSS channel")
        return feed, entries

    def atom(self, root: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.attrs(root, frozenset({_XML_LANG}))
        self.no_text(root)
        feed: dict[str, Any] = {}
        if self.lang:
            feed["language"] = self.lang
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        for child in root:
            full = child.tag  # lxml builds this string on every access
            if not isinstance(full, str):
                continue
            tag = full.removeprefix(_ATOM)
            if tag == full:
                raise _Refused(f"<{tag}> in an Atom feed")
            if tag == "entry":
                entries.append(self.atom_entry(child))
                continue
            if tag in seen and tag not in ("link", "category", "author"):
                raise _Refused(f"repeated feed <{tag}>")
            seen.add(tag)
            if tag == "title":
                self.atom_text_type(child)
                feed["title"] = self.text(child)
            elif tag == "link":
                self.atom_link(feed, child)
            elif tag == "id":
                self.attrs(child, _NO_ATTRIBUTES)
                self.guid(feed, child, True)
            elif tag == "updated":
                self.attrs(child, _NO_ATTRIBUTES)
                self.text(child)
            elif tag in _ATOM_FEED_INERT:
                if tag in ("subtitle", "rights"):
                    self.atom_text_type(child)
                else:
                    self.attrs(child, frozenset({"uri", "version"} if tag == "generator" else ()))
                self.text(child)
            elif tag == "author":
                self.atom_author({}, child)
            elif tag == "category":
                self.attrs(child, frozenset({"term", "scheme", "label"}))
                if len(child) or (child.text or "").strip():
                    raise _Refused("Atom category with content")
            else:
                raise _Refused(f"<{tag}> in an Atom feed")
        return feed, entries


def _parser() -> etree.XMLParser:
    # A parser per document: lxml parsers must not be shared between threads.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, collect_ids=False
    )


def document_base(url: str) -> str | None:
    """The base URI feedparser settles on for a document fetched from ``url``, or None.

    feedparser re-resolves the base at every start tag; a URL that the first
    resolution changes again would make bases depend on depth: refused.
    """
    safe = feedparser.mixin.make_safe_absolute_uri
    base = str(safe("", url) or safe(url) or "")
    if not base:
        return None
    first = str(safe(base, base) or base)
    if str(safe(first, first) or first) != first:
        return None
    return first


def parse_fast(
    content: bytes, content_type: str | None, url: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The feed and entry dicts feedparser would build, or None: use feedparser.

    ``content`` and ``content_type`` are what feedparser would be given (after
    the Korean recode and character-reference repair in ``feed.parse_feed``).
    """
    # b"!" first: a one-byte search is a memchr, while b"<!" stops at every "<".
    if (
        b"!" in content
        and b"<!" in content
        and b"<!" in content.replace(b"<![CDATA[", b"").replace(b"<!--", b"")
    ):
        return None  # DOCTYPE, ENTITY or anything else DTD-like
    if not _encoding_ok(content, content_type):
        return None
    base = document_base(url)
    if base is None:
        return None
    try:
        root = etree.fromstring(content, _parser())
    except etree.XMLSyntaxError:
        return None
    if b"base=" in content:
        # Cheap pre-check; the exact test is per element below (xml:base or base).
        for el in root.iter():
            if isinstance(el.tag, str) and any(
                k.endswith("}base") or k == "base" for k in el.attrib
            ):
                return None
    # In UTF-8 a C1 character (U+0080-U+009F) is 0xC2 and a second byte, and
    # without a DTD the only other way to write one is a character reference:
    # a document with neither spares every non-ASCII value its scan for them.
    c1 = b"\xc2" in content or b"&#" in content
    try:
        if root.tag == "rss":
            if _XML_LANG in root.attrib or "lang" in root.attrib:
                return None
            return _Reader(base, None, atom=False, c1=c1).rss(root)
        if root.tag == _ATOM + "feed":
            lang = root.attrib.get(_XML_LANG) or None
            if lang is not None and "_" in lang:
                return None
            return _Reader(base, lang, atom=True, c1=c1).atom(root)
    except _Refused:
        return None
    return None
