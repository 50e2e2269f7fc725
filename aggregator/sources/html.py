"""HTML listing pages → ``RawEntry`` objects, through the source's CSS selectors.

Some sources (the Korean Film Biz Zone boards) publish no feed, so we read
their listing pages. Scraping breaks silently when a site is redesigned, so
this module is loud instead: when the item selector matches nothing, when
titles or links are found in too few items, or when no date parses any more,
it raises ``ScrapeError`` with the selector, the counts and the URL, and the
source is marked broken rather than quietly producing nothing.

Selectors may end in ``@attr`` to read an attribute instead of the text
(``a.next@href``, ``img@src``). Pages are parsed with selectolax's lexbor
backend, which is HTML5-correct and an order of magnitude faster than lxml
for this job.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

from ..dedupe import canonical_url
from ..errors import ParseError, ScrapeError
from ..models import FetchResult, ParsedFeed, RawEntry, Selectors, Source
from .dates import parse_date
from .decode import decode_document
from .markup import bound_markup, neutralize_char_refs

log = logging.getLogger(__name__)

# "css@attr": the part after the last "@" must look like an attribute name
# and must not sit inside an attribute selector such as [href$="@x"].
_ATTR_SUFFIX = re.compile(r"^(?P<css>.*?)\s*@(?P<attr>[A-Za-z_:][-\w:.]*)\s*$", re.S)
# Lazy-loading pages keep the real image here and a placeholder in src.
_LAZY_SRC = ("data-src", "data-original", "data-lazy-src")
# Below this share of items with a title (or link) the page has changed shape;
# a few items without one (a notice row, an ad) are normal.
MIN_MATCH_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """One parsed selector: the CSS part and the attribute to read, if any."""

    spec: str
    css: str
    attr: str | None

    @classmethod
    def parse(cls, spec: str) -> FieldSelector:
        """Split ``"img.thumb@src"`` into CSS and attribute; ``"@href"`` means the item itself."""
        spec = spec.strip()
        match = _ATTR_SUFFIX.match(spec)
        if match and "]" not in match.group("attr"):
            return cls(spec, match.group("css").strip(), match.group("attr"))
        return cls(spec, spec, None)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _css(node: LexborNode | LexborHTMLParser, css: str, source: Source) -> list[LexborNode]:
    try:
        return list(node.css(css))
    except (SelectolaxError, ValueError, TypeError) as exc:
        raise ScrapeError(f'invalid CSS selector "{css}": {exc}', source_id=source.id) from exc


def _first(item: LexborNode, selector: FieldSelector, source: Source) -> LexborNode | None:
    if not selector.css:
        return item
    found = _css(item, selector.css, source)
    return found[0] if found else None


def _attr(node: LexborNode, name: str) -> str | None:
    value = node.attributes.get(name)
    if name == "src" and (not value or value.startswith("data:")):
        for lazy in _LAZY_SRC:
            if node.attributes.get(lazy):
                return node.attributes[lazy]
    return value.strip() if value and value.strip() else None


def _value(item: LexborNode, selector: FieldSelector, source: Source) -> str | None:
    """The attribute or the whitespace-collapsed text the selector points at."""
    node = _first(item, selector, source)
    if node is None:
        return None
    if selector.attr:
        return _attr(node, selector.attr)
    return _clean(node.text(deep=True)) or None


def _href(node: LexborNode | None) -> str | None:
    """The href of ``node``, of the link around it (a title may be ``a > span``),
    or of the first link inside it (a title may be ``p.tit`` holding the ``a``)."""
    title = node
    while node is not None and node.tag not in ("li", "tr", "article", "body"):
        if node.tag == "a" and node.attributes.get("href"):
            return _attr(node, "href")
        node = node.parent
    inner = title.css_first("a[href]") if title is not None else None
    return _attr(inner, "href") if inner is not None else None


def _absolute(base: str, value: str | None) -> str | None:
    """``value`` resolved against ``base`` if it is an http(s) URL (``javascript:`` is not)."""
    if not value:
        return None
    url = urljoin(base, value.strip())
    return url if urlsplit(url).scheme in ("http", "https") else None


def _scrape_error(source: Source, url: str, message: str) -> ScrapeError:
    error = ScrapeError(f"{message} on {url}", source_id=source.id)
    error.url = url
    return error


@dataclass(frozen=True, slots=True)
class _Row:
    title: str | None
    link: str | None
    date_text: str | None
    item: LexborNode


def _link_of(
    item: LexborNode, title_node: LexborNode | None, select: Selectors, source: Source
) -> str | None:
    """The configured link selector, else the title's href, else the item's first link."""
    if select.link:
        link_selector = FieldSelector.parse(select.link)
        node = _first(item, link_selector, source)
        if node is not None:
            value = _attr(node, link_selector.attr) if link_selector.attr else _href(node)
            if value:
                return value
    value = _href(title_node)
    if value:
        return value
    anchors = _css(item, "a[href]", source)
    return _attr(anchors[0], "href") if anchors else None


def parse_listing(source: Source, result: FetchResult) -> ParsedFeed:
    """Scrape one listing page of ``source`` into entries.

    Each entry's guid is its canonical link (with the source's
    ``identity_params``/``drop_params``), so one article reached from page 1
    and page 2, or with another search keyword, is one item. Raises
    ``ScrapeError`` when the page no longer fits the selectors.
    """
    select = source.select
    if select is None:
        raise ParseError('type "html" needs a "select" block', source_id=source.id, url=source.url)
    url = result.url
    decoded = decode_document(
        result.content or b"", http_charset=result.charset, override=source.encoding
    )
    # Depth beyond the cap makes the HTML5 tree builder quadratic (markup.py).
    tree = LexborHTMLParser(bound_markup(neutralize_char_refs(decoded.text)))
    base = url
    base_node = tree.css_first("base[href]")
    if base_node is not None and (base_href := _absolute(url, base_node.attributes.get("href"))):
        base = base_href

    items = _css(tree, select.item, source)
    if not items:
        raise _scrape_error(source, url, f'selector "{select.item}" matched nothing')

    title_selector = FieldSelector.parse(select.title)
    date_selector = FieldSelector.parse(select.date) if select.date else None
    rows: list[_Row] = []
    for item in items:
        title_node = _first(item, title_selector, source)
        title = None
        if title_node is not None:
            title = (
                _attr(title_node, title_selector.attr)
                if title_selector.attr
                else _clean(title_node.text(deep=True)) or None
            )
        link = _absolute(base, _link_of(item, title_node, select, source))
        date_text = _value(item, date_selector, source) if date_selector else None
        rows.append(_Row(title, link, date_text, item))

    total = len(rows)
    required = max(1, int(total * MIN_MATCH_SHARE + 0.5))
    with_title = sum(1 for r in rows if r.title)
    if with_title < required:
        raise _scrape_error(
            source, url, f'selector "{select.title}" matched {with_title} of {total} items'
        )
    with_link = sum(1 for r in rows if r.link)
    if with_link < required:
        link_spec = select.link or "a[href]"
        raise _scrape_error(
            source, url, f'link selector "{link_spec}" matched {with_link} of {total} items'
        )

    now = result.fetched_at
    dates = {
        id(r): parse_date(r.date_text, tz=source.timezone, fmt=source.date_format, now=now)
        for r in rows
    }
    dated = [r for r in rows if r.date_text]
    failed = [r for r in dated if dates[id(r)] is None]
    warnings: list[str] = [decoded.warning] if decoded.warning else []
    if dated and len(failed) == len(dated):
        raise _scrape_error(
            source,
            url,
            f'date "{failed[0].date_text}" in {len(failed)} of {len(dated)} items could not be '
            f'parsed (selector "{select.date}")',
        )
    if failed:
        warnings.append(
            f'date "{failed[0].date_text}" in {len(failed)} of {len(dated)} items could not be '
            f'parsed (selector "{select.date}")'
        )

    summary_selector = FieldSelector.parse(select.summary) if select.summary else None
    image_selector = FieldSelector.parse(select.image) if select.image else None
    author_selector = FieldSelector.parse(select.author) if select.author else None
    entries: list[RawEntry] = []
    seen: set[str] = set()
    for row in rows:
        if not row.title or not row.link:
            continue
        guid = canonical_url(row.link, keep=source.identity_params, drop=source.drop_params)
        if guid in seen:
            continue  # the same article linked twice on one page (e.g. a "featured" box)
        seen.add(guid)
        summary_html = None
        if summary_selector is not None:
            node = _first(row.item, summary_selector, source)
            if node is not None:
                if summary_selector.attr:
                    summary_html = _attr(node, summary_selector.attr)
                else:
                    summary_html = (node.inner_html or "").strip() or None
        image = None
        if image_selector is not None:
            image = _absolute(base, _value(row.item, image_selector, source))
        entries.append(
            RawEntry(
                guid=guid,
                link=row.link,
                title=row.title,
                summary_html=summary_html,
                published=dates[id(row)],
                date_text=row.date_text,
                author=_value(row.item, author_selector, source) if author_selector else None,
                image_url=image,
                base_url=base,
            )
        )
    skipped = total - with_title if with_title < total else 0
    if skipped:
        warnings.append(f"{skipped} of {total} items had no title and were skipped")

    next_page = None
    if select.next_page:
        next_selector = FieldSelector.parse(select.next_page)
        nodes = _css(tree, next_selector.css, source) if next_selector.css else []
        if nodes:
            raw = _attr(nodes[0], next_selector.attr) if next_selector.attr else _href(nodes[0])
            candidate = _absolute(base, raw)
            if candidate and candidate.split("#", 1)[0] != url.split("#", 1)[0]:
                next_page = candidate

    title_node = tree.css_first("title")
    html_node = tree.css_first("html")
    if warnings:
        log.info("%s: %s", source.id, "; ".join(warnings))
    return ParsedFeed(
        title=_clean(title_node.text()) or None if title_node is not None else None,
        link=url,
        entries=tuple(entries),
        language=(html_node.attributes.get("lang") or None) if html_node is not None else None,
        warning="; ".join(warnings) or None,
        next_page_url=next_page,
    )
