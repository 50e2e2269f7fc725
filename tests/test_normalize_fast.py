"""The shortcuts taken for normalize's and the fast parser's CPU answer as the slow ways did.

Each shortcut replaces a function by a cheaper one that is only claimed equal
on some inputs, or equal everywhere by an argument about a regex; each claim
is checked here against the previous implementation (kept below as the
reference) on generated inputs built to hit the edges of that argument:

* ``sanitized_text`` (tags deleted by regex) against ``html_text`` (lexbor)
  on ``sanitize_html`` output, which is the only input it is used on;
* ``_may_end_in_cut_mark`` never says no when ``_CUT_MARK`` would match;
* ``clean_text``, ``sanitize_html`` and ``excerpt`` against their previous code;
* ``join_url`` against ``urljoin``, and fastfeed's ``_join`` against
  feedparser's ``_urljoin``, including the ``ValueError`` cases;
* ``_xml_encoding`` against feedparser's ``RE_XML_PI_ENCODING``;
* the fingerprint's key text (one regex) against ``str.isalnum``, over every
  code point, and ``content_hash`` and ``listing_hash`` against the
  ``json.dumps`` they were made from;
* link resolution without ``urlsplit`` for plain absolute links, and
  ``canonical_url``'s own split, against ``urlsplit``; ``clean_text``'s
  answer for clean short ASCII; ``detect_language``'s byte count of ASCII
  letters against a per-character count; one UTF-8 check before the repairs.

The whole-corpus check (every ``RawEntry`` and ``Item`` of the benchmark
corpus unchanged) is ``python -m benchmarks.stages DIR --digest``, before
and after; see benchmarks/README.md.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser.encodings
import pytest
from feedparser.urls import _urljoin
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aggregator import dedupe
from aggregator import normalize as normalize_module
from aggregator.models import RawEntry, Source
from aggregator.normalize import (
    _CLOSERS,
    _CONTROL,
    _CUT_MARK,
    _INVISIBLE,
    _MIN_SENTENCE_EXCERPT,
    _SENTENCE_END,
    _TRIM_BEFORE_ELLIPSIS,
    EXCERPT_CHARS,
    _cleaner,
    _cluster_start,
    _is_word_char,
    _may_end_in_cut_mark,
    clean_text,
    excerpt,
    has_stray_characters,
    html_text,
    sanitize_html,
    sanitized_text,
    trim_cut_html,
)
from aggregator.sources import fastfeed, feed
from aggregator.sources.dates import parse_date
from aggregator.sources.decode import damaged_utf8_as_utf8, is_utf8, korean_as_utf8
from aggregator.sources.fastfeed import _join, _xml_encoding
from aggregator.sources.links import join_url
from aggregator.sources.markup import bound_markup

BASE = "https://news.example.kr/list/page.html"
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
CHECK = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------- html to text

TAGS = [
    "p", "div", "br", "hr", "li", "ul", "ol", "h2", "h3", "pre", "blockquote", "table", "tr",
    "td", "th", "tbody", "thead", "caption", "figure", "figcaption", "dl", "dt", "dd", "a",
    "img", "b", "i", "em", "span", "abbr", "q", "sub", "code", "font", "button", "form",
    "select", "option", "textarea", "title", "script", "style", "svg", "math", "object",
    "template", "noscript", "iframe", "body", "html", "head", "P", "BR", "Td",
]  # fmt: skip
ATTRIBUTE_VALUES = ["x", "a>b", "<p>", '"', "'", "&amp;", "a&b", "/rel", "#top", "", "</td>"]
ATTRIBUTE_NAMES = ["href", "src", "title", "alt", "colspan", "start", "scope", "class", "onclick"]
TEXTS = [
    "word", "한국어", " ", "  ", "\n", "\t", "\r\n", "\xa0", "&amp;", "&lt;", "&gt;", "&nbsp;",
    "&amp;lt;", "&#60;", "&#x3c;", "&", "&am", "<", ">", "...", "…", "[...]", ".", "e\u0301",
    "\u0301", "\u200b", "\x01", "\x85", "a", "\u1100\u1161", "&quot;", '"', "'", "x;",
]  # fmt: skip


@st.composite
def tag(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(TAGS))
    kind = draw(st.sampled_from(["start", "end", "self"]))
    if kind == "end":
        return f"</{name}>"
    attributes = draw(
        st.lists(
            st.tuples(st.sampled_from(ATTRIBUTE_NAMES), st.sampled_from(ATTRIBUTE_VALUES)),
            max_size=3,
        )
    )
    quote = draw(st.sampled_from(['"', "'"]))
    rendered = "".join(f" {n}={quote}{v.replace(quote, '')}{quote}" for n, v in attributes)
    return f"<{name}{rendered}{'/' if kind == 'self' else ''}>"


fragments = st.lists(
    st.one_of(tag(), st.sampled_from(TEXTS), st.sampled_from(["<!-- c -->", "<![CDATA[x]]>"])),
    max_size=40,
).map("".join)


@CHECK
@given(fragments)
def test_sanitized_text_is_html_text_on_sanitized_markup(raw: str) -> None:
    clean = sanitize_html(raw, BASE)
    assert sanitized_text(clean) == html_text(clean)
    trimmed = trim_cut_html(clean)  # what normalize takes the text of after a cut
    assert sanitized_text(trimmed) == html_text(trimmed)


@pytest.mark.parametrize(
    "markup",
    [
        # Well-formed but beyond the caps: html_text drops the deep tags first.
        "<blockquote>" * 300 + "a<p>b</p>c" + "</blockquote>" * 300,
        # ">" and "<" in attribute values, which nh3 now escapes but html5ever once did not.
        '<a title="x>y" href="https://a.kr/">link</a> after<p>block</p>',
        '<img alt="<p>" src="https://a.kr/i.png">text<td title="a>b">cell</td>',
    ],
)
def test_sanitized_text_leaves_what_it_cannot_read_to_the_parser(markup: str) -> None:
    assert sanitized_text(markup) == html_text(markup)


@pytest.mark.parametrize(
    "raw",
    [
        "<blockquote>" * 300 + "a<p>b</p>c" + "</blockquote>" * 300,  # beyond the depth cap
        '<a title="x>y" href="/a">link</a> after<p>block</p>',  # ">" in an attribute value
        '<img alt="<p>" src="/i.png">text',
        "<table><tr><td>a</td></tr>b</table>",  # text foster-parented by the sanitizer
        "<p>" + "<b>" * 400 + "deep" + "</b>" * 400 + "</p>",
        "<pre>\nfirst line</pre><textarea>gone</textarea>x&amp;lt;y",
    ],
)
def test_sanitized_text_on_edges(raw: str) -> None:
    clean = sanitize_html(raw, BASE)
    assert sanitized_text(clean) == html_text(clean)


# ------------------------------------------------------------------ cut marks

cut_texts = st.lists(
    st.sampled_from(
        [
            "word", " ", "\n", ".", ". ", "..", "...", "…", "……", "[", "]", "[...]", "[…]",
            "</p>", "</b >", "<p>", "< /p>", "</", ">", "x>", "</1>", "\u3000", "다", "!",
        ]
    ),
    max_size=20,
).map("".join)  # fmt: skip


@CHECK
@given(cut_texts)
def test_no_cut_mark_where_the_cheap_test_says_none(text: str) -> None:
    if not _may_end_in_cut_mark(text):
        assert _CUT_MARK.search(text) is None


def test_the_cheap_test_lets_every_mark_through() -> None:
    for mark in ["...", ". . .", "……", "[...]", "[ . . . ]", "[…]", "..."]:
        for tail in ["", " ", "</p>", " </b>\n</p> ", "</p  >"]:
            text = f"Some cut tex{mark}{tail}"
            assert _may_end_in_cut_mark(text), text
            assert _CUT_MARK.search(text) is not None


# ------------------------------------------------------------ previous code


def previous_clean_text(text: str | None) -> str:
    """``clean_text`` before the stray-character scan was merged (the reference)."""

    def once(value: str) -> str:
        value = html.unescape(value)
        value = unicodedata.normalize("NFC", value)
        value = _INVISIBLE.sub("", value)
        value = _CONTROL.sub(" ", value)
        return " ".join(value.split())

    if not text:
        return ""
    for _ in range(8):
        cleaned = once(text)
        if cleaned == text:
            break
        text = cleaned
        if "&" not in text and unicodedata.is_normalized("NFC", text):
            break
    return text


def previous_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``excerpt`` before it searched for the sentence ends (the reference)."""
    if len(text) <= limit:
        return text
    best = -1
    for index in range(min(limit, len(text)) - 1, _MIN_SENTENCE_EXCERPT - 2, -1):
        if text[index] not in _SENTENCE_END:
            continue
        end = index + 1
        while end < len(text) and end < limit and text[end] in _CLOSERS:
            end += 1
        if end == len(text) or text[end].isspace():
            best = end
            break
    if best > 0:
        return text[:best]
    cut = limit
    while cut > 0 and not (text[cut].isspace() or not _is_word_char(text[cut])):
        cut -= 1
    if cut == 0:
        end = cut = limit
        while end < len(text) and end < 2 * limit and _is_word_char(text[end]):
            end += 1
        if end == len(text):
            return text
        if not _is_word_char(text[end]):
            cut = end
    cut = _cluster_start(text, cut)
    head = text[:cut].rstrip(_TRIM_BEFORE_ELLIPSIS)
    return (head or text[:cut]) + "…"


odd_text = st.lists(
    st.one_of(
        st.sampled_from(list("&;#ax \n\t\xa0\u200b\u00ad\x00\x1f\x85\u0301\u1100\u1161가")),
        st.sampled_from(["&amp;", "&lt;", "&amp;amp;", "&#0;", "&#x200b;", "&nbsp;"]),
        st.characters(),
    ),
    max_size=60,
).map("".join)


@CHECK
@given(odd_text)
def test_clean_text_as_before(text: str) -> None:
    assert clean_text(text) == previous_clean_text(text)


@CHECK
@given(odd_text)
@example("\ud800")  # found by hypothesis
def test_sanitize_html_as_before(markup: str) -> None:
    try:
        previous = _cleaner(BASE).clean(bound_markup(_INVISIBLE.sub("", _CONTROL.sub(" ", markup))))
    except UnicodeEncodeError:
        # A lone surrogate (which decoding never produces: bytes are decoded
        # with replacement, JSON's "\ud800" becomes U+FFFD) fails as before.
        with pytest.raises(UnicodeEncodeError):
            sanitize_html(markup, BASE)
        return
    expected = previous.strip() if markup.strip() else ""
    assert sanitize_html(markup, BASE) == expected


sentences = st.lists(
    st.sampled_from(["word", " ", "다", ".", "!", "?", "。", "…", "”", ")", "'", "\n", "ab"]),
    min_size=0,
    max_size=400,
).map("".join)


@CHECK
@given(sentences, st.sampled_from([EXCERPT_CHARS, 120, 40]))
def test_excerpt_as_before(text: str, limit: int) -> None:
    assert excerpt(text, limit) == previous_excerpt(text, limit)


# ----------------------------------------------------------------------- urls

url_parts = st.lists(
    st.sampled_from(
        [
            "http://", "https://", "HTTP://", "ftp://", "//", "mailto:", "https:///", "http:",
            "a.kr", "b.example.kr:8080", "[::1]", "[bad", "u@h.kr", "", "/", "/x", "/../y",
            "/./z", ";p", ";", "?", "?q=1", "#", "#f", "%20", " ", "\t", "\n", "기사",
            "\uff0e", "index.html", "..", "?a=b;c", "urn:uuid:1", "tag:a.kr,2025:", "HTTP:",
            "x:", "1a:", ":", "\x00", "https:////", "?#", "#?", ":80", "%2F", "\x7f", "@",
        ]
    ),
    max_size=6,
).map("".join)  # fmt: skip
bases = st.sampled_from(
    [BASE, "http://news.example.kr/", "https://a.kr", "", "ftp://f.kr/x", "http://[::1]:80/a/b"]
)


def outcome(function: object, *args: str) -> object:
    try:
        return function(*args)  # type: ignore[operator]
    except ValueError as exc:
        return ("ValueError", type(exc))


@pytest.mark.parametrize(
    "url",
    [
        "https://a.kr/x;", "https://a.kr/x;p?q=1", "http://a.kr?", "http://a.kr#", "http://a.kr",
        "https://[bad/x", "http:///x", "HTTPS://A.kr/x", "https://a.kr/../x", "https://a.kr/x?#",
        "http://a.kr/\tx", " https://a.kr/x", "urn:uuid:0a-1", "tag:a.kr,2025:7", "HTTP:x",
        "mailto:a@b.kr", "//a.kr/x", "x", "", "ftp:////a", "https:////a.kr", " urn:x",
        "https://a.kr/x?#f", "https://a.kr/x#?", "https://a.kr?q#", "https://a.kr/x\x7f",
        "https://a.kr:99999/x", "http://a.kr/[x]", "https://u:p@a.kr/x?q=1&r=2#f",
        "tag:a.kr,2025://x", "Tag:a.kr,2025:1", "t+a.g-1:x", "a b:x", "t\tag:x", "9tag:x",
        "tag:[x", "tag://[bad/x", "urn:", "HTTP:", "http:x", "mailto:", "é:x", "tag:a\x7f",
    ],
)  # fmt: skip
@pytest.mark.parametrize("base", ["http://news.example.kr/", BASE, ""])
def test_join_url_on_edges(base: str, url: str) -> None:
    assert outcome(join_url, base, url) == outcome(urljoin, base, url)
    assert outcome(_join, base, url) == outcome(_urljoin, base, url)


@CHECK
@given(bases, url_parts)
def test_join_url_is_urljoin(base: str, url: str) -> None:
    assert outcome(join_url, base, url) == outcome(urljoin, base, url)


@CHECK
@given(bases, url_parts)
def test_fastfeed_join_is_feedparsers(base: str, url: str) -> None:
    assert outcome(_join, base, url) == outcome(_urljoin, base, url)


# ---------------------------------------------------------- xml declaration

declarations = st.lists(
    st.sampled_from(
        [
            b"<?", b"xml", b" ", b"version='1.0'", b"encoding=", b"encoding", b"'", b'"',
            b"utf-8", b"euc-kr", b"?>", b"?", b">", b"\n", b"x", b"<rss>", b"=",
        ]
    ),
    max_size=16,
).map(b"".join)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(declarations)
def test_xml_encoding_is_feedparsers_pattern(content: bytes) -> None:
    match = feedparser.encodings.RE_XML_PI_ENCODING.match(content)
    assert _xml_encoding(content) == (match.group(1) if match else None)


@pytest.mark.parametrize(
    "content",
    [
        b"<?xml version='1.0' encoding='utf-8'?><rss/>",
        b'<?xml version="1.0" encoding="euc-kr"?>\n<rss/>',
        b"<?xml version='1.0' encoding='utf-8'?><rss><![CDATA[<?xml encoding='x'?>]]></rss>",
        b"<?xml version='1.0' encoding='utf-8'?>\n<![CDATA[<?xml encoding='x'?>]]>",
        b"<?xml encoding='utf-8?> no close quote",
    ],
)
def test_xml_encoding_on_documents(content: bytes) -> None:
    match = feedparser.encodings.RE_XML_PI_ENCODING.match(content)
    assert _xml_encoding(content) == (match.group(1) if match else None)


# ---------------------------------------------------------------- fingerprint


def test_key_text_regex_deletes_exactly_what_isalnum_rejects() -> None:
    every = "".join(map(chr, range(0x110000)))
    assert dedupe._NOT_ALNUM.sub("", every) == "".join(filter(str.isalnum, every))
    assert re.fullmatch(dedupe._NOT_ALNUM, "_") is not None
    # _key_text splits at whitespace first: none of it may be alphanumeric.
    assert not any(ch.isspace() and ch.isalnum() for ch in every)
    assert dedupe._key_text(every) == "".join(filter(str.isalnum, previous_fold(every)))


def previous_fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def previous_content_hash(**fields: Any) -> str:
    """``content_hash`` as it was: json.dumps of the fields (the reference)."""
    payload = json.dumps(
        [
            fields["title"],
            fields["url"],
            fields["summary_html"],
            fields["content_html"],
            fields["image_url"],
            fields["author"],
            list(fields["categories"]),
            fields["published_at"].isoformat(),
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


json_text = st.text(
    st.one_of(st.sampled_from(list('"\\/\n\t\x00\x1f\x7f\u2028\ud800가<>&')), st.characters()),
    max_size=30,
)


@CHECK
@given(
    title=json_text,
    url=json_text,
    summary_html=json_text,
    content_html=st.one_of(json_text, st.just("<p>same</p>")),
    image_url=st.one_of(st.none(), json_text),
    author=st.one_of(st.none(), json_text),
    categories=st.lists(json_text, max_size=3).map(tuple),
    published_at=st.datetimes(timezones=st.just(UTC)),
    same=st.booleans(),
)
def test_content_hash_as_json_dumps_made_it(same: bool, **fields: Any) -> None:
    if same:
        fields["summary_html"] = fields["content_html"]

    def made(function: Callable[..., str]) -> object:
        try:
            return function(**fields)
        except UnicodeEncodeError:  # a lone surrogate: both refuse it alike
            return "UnicodeEncodeError"

    assert made(dedupe.content_hash) == made(previous_content_hash)


def previous_key_text(text: str) -> str:
    """The fingerprint's key text as it was (the reference)."""
    return "".join(filter(str.isalnum, unicodedata.normalize("NFKC", text).casefold()))


@CHECK
@given(st.text(st.one_of(st.characters(max_codepoint=127), st.characters()), max_size=40))
def test_key_text_as_before(text: str) -> None:
    assert dedupe._key_text(text) == previous_key_text(text)


def test_key_text_of_every_ascii_character() -> None:
    for code in range(128):
        assert dedupe._key_text(chr(code) * 2 + "Ab1") == previous_key_text(chr(code) * 2 + "Ab1")


@CHECK
@given(odd_text)
def test_stray_characters_found_as_the_regex_finds_them(text: str) -> None:
    expected = _INVISIBLE.search(text) is not None or _CONTROL.search(text) is not None
    assert has_stray_characters(text) == expected
    ascii_only = text.encode("ascii", "ignore").decode()
    expected = _CONTROL.search(ascii_only) is not None
    assert has_stray_characters(ascii_only) == expected


def test_stray_characters_over_every_ascii_character() -> None:
    for code in range(128):
        text = f"a{chr(code)}b"
        assert has_stray_characters(text) == (_CONTROL.search(text) is not None)


def test_long_values_are_resolved_alike_but_never_cached() -> None:
    """The per-worker caches hold short values only: a hostile feed's megabyte
    links and dates must not stay in memory after its entries are gone."""
    long_link = "https://a.kr/" + "x" * 100_000
    long_date = "Mon, 01 Dec 2025 10:00:00 +0900" + " " * 100_000
    caches = (fastfeed._join_cached, normalize_module._http_url_cached, feed._parse_date)
    for cache in caches:
        cache.cache_clear()  # earlier tests may have filled them
    before = [cache.cache_info().currsize for cache in caches]
    assert _join(BASE, long_link) == _urljoin(BASE, long_link)
    assert normalize_module._http_url(BASE, long_link) == long_link
    source = Source(id="s", url=BASE)
    expected = parse_date(long_date, tz=source.timezone, now=NOW)
    assert feed._date(long_date, source, NOW) == expected is not None
    assert [cache.cache_info().currsize for cache in caches] == before
    assert _join(BASE, "https://a.kr/short") == "https://a.kr/short"
    assert fastfeed._join_cached.cache_info().currsize == before[0] + 1


# ------------------------------------------------ links, clean text, language


def previous_resolve_http_url(base: str, value: str | None) -> str | None:
    """``_resolve_http_url`` before plain absolute links skipped ``urlsplit`` (the reference)."""
    if not value or not value.strip():
        return None
    url = join_url(base, value.strip()) if base else value.strip()
    return url if urlsplit(url).scheme.lower() in ("http", "https") else None


@CHECK
@given(bases, url_parts)
def test_resolve_http_url_as_before(base: str, url: str) -> None:
    resolve = normalize_module._resolve_http_url
    assert outcome(resolve, base, url) == outcome(previous_resolve_http_url, base, url)


@pytest.mark.parametrize("base", ["http://news.example.kr/", BASE, ""])
def test_resolve_http_url_on_edges(base: str) -> None:
    urls = [
        "https://a.kr/x", " http://a.kr/x?q=1 ", "https://a.kr?", "http://a.kr/x#", "https:a",
        "HTTPS://a.kr/x", "https://[::1]/x", "https://[bad/x", "http:///x", "/x", "x", "",
        "https://a.kr/기사", "https://a.kr/\tx", "mailto:a@b.kr", "https://a.kr/x;p",
    ]  # fmt: skip
    for url in urls:
        resolve = normalize_module._resolve_http_url
        assert outcome(resolve, base, url) == outcome(previous_resolve_http_url, base, url)


@CHECK
@given(url_parts)
def test_split_http_is_urlsplit(url: str) -> None:
    parts = dedupe._split_http(url)
    if parts is not None:
        split = urlsplit(url)
        assert tuple(parts) == (split.scheme, split.netloc, split.path, split.query)


# Plain http(s) links: the common case, which the shortcut must take (each
# part placed where a misplaced "find" would cut it differently).
PLAIN_HTTP = [
    "https://a.kr/x", "http://a.kr/x", "http://a.kr", "https://a.kr?q=1", "https://a.kr#f",
    "http://a.kr/x#a#b", "https://a.kr/x?q=1#f?g", "https://eXample.kr/X?X=1#X",
    "https://u:p@a.kr:8080/x;p?q=1&r=2#f", "http://a.kr/#", "http://a.kr?#",
]  # fmt: skip
# Left to urlsplit: what it removes (tabs, newlines, controls), refuses
# (unbalanced brackets in the host, a host that NFKC gives a "/") or checks
# (any bracket: only a host may hold one), an upper-case scheme, non-ASCII,
# and every other scheme.
LEFT_TO_URLSPLIT = [
    "http://a.kr/x\ty", "https://a.kr/\nx", "http://a.kr/x\x7f", "http://[a.kr/x",
    "http://a]b.kr/x", "https://[::1]/x", "https://a\uff0fb.kr/x", "https://a.kr/기사",
    "HTTPS://a.kr/x", "Http://a.kr/x", "ftp://a.kr/x", "//a.kr/x", "https:/a.kr", "",
    "http://a.kr/x[1]",
]  # fmt: skip


def test_split_http_takes_plain_links_and_leaves_the_rest_to_urlsplit() -> None:
    for url in PLAIN_HTTP:
        split = urlsplit(url)
        assert dedupe._split_http(url) == (split.scheme, split.netloc, split.path, split.query)
    for url in LEFT_TO_URLSPLIT:
        assert dedupe._split_http(url) is None, url
    # And canonical_url answers on both as it did with urlsplit alone.
    for url in PLAIN_HTTP + LEFT_TO_URLSPLIT:
        fast = outcome(dedupe.canonical_url, url)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dedupe, "_split_http", lambda _: None)
            assert outcome(dedupe.canonical_url, url) == fast, url


def test_listing_hash_of_no_entries_is_that_of_an_empty_json_array() -> None:
    assert dedupe.listing_hash([]) == hashlib.sha256(b"[]").hexdigest()[:32]
    assert dedupe.listing_hash([]) == previous_listing_hash([])


@CHECK
@given(
    url_parts,
    st.sampled_from([None, (), ("id",), ("q", "page")]),
    st.sampled_from([(), ("q",), ("sid",)]),
)
def test_canonical_url_as_before(
    url: str, keep: tuple[str, ...] | None, drop: tuple[str, ...]
) -> None:
    # url_parts rarely make a query worth canonicalizing: add one.
    for candidate in (url, f"http://a.kr/{url}?utm_source=x&q=1&id=%2f&page=&sid=2#f"):
        fast = outcome(lambda u: dedupe.canonical_url(u, keep=keep, drop=drop), candidate)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dedupe, "_split_http", lambda _: None)
            slow = outcome(lambda u: dedupe.canonical_url(u, keep=keep, drop=drop), candidate)
        assert fast == slow


short_text = st.lists(
    st.one_of(
        st.sampled_from(list("ab Z1;#&\t\n\x7f\x00\x1f\xa0가")),
        st.sampled_from(["&amp;", "&lt;", "  ", " x", "x "]),
        st.characters(max_codepoint=127),
    ),
    max_size=40,
).map("".join)


@CHECK
@given(short_text)
def test_clean_text_as_before_on_short_ascii(text: str) -> None:
    assert clean_text(text) == previous_clean_text(text)


def test_clean_text_over_every_ascii_character() -> None:
    for code in range(128):
        for text in (f"a{chr(code)}b", f"{chr(code)}ab", f"ab{chr(code)}", chr(code) * 2):
            assert clean_text(text) == previous_clean_text(text)


def previous_detect_language(text: str) -> str | None:
    """``detect_language`` as a per-character count (the reference)."""
    sample = text[: normalize_module._LANGUAGE_SAMPLE]
    letters = sum(1 for ch in sample if ch.isalpha())
    hangul = sum(1 for ch in sample if ch.isalpha() and normalize_module._is_hangul(ch))
    if letters and hangul / letters >= normalize_module._HANGUL_SHARE:
        return "ko"
    return None


language_text = st.lists(
    st.one_of(
        st.sampled_from(["한국", "영화", "CJ", "ENM", " ", ".", "ㄱ", "ᄀ", "é", "日本", "\ud800"]),
        # Either side of each range the byte count relies on.
        st.sampled_from(list("\u109f\u1100\u11ff\u1200\u312f\u3130\u318f\u3190\u9fff\ua000")),
        st.sampled_from(list("\ua960\uabff\uac00\ud7a3\ud7a4\ud7b0\ud7ff\udfff\ue000\U0001f3ac")),
        st.characters(),
    ),
    max_size=80,
).map("".join)


@CHECK
@given(language_text)
def test_detect_language_as_before(text: str) -> None:
    assert normalize_module.detect_language(text) == previous_detect_language(text)


def test_detect_language_beside_every_character_of_the_byte_ranges() -> None:
    """Each code point from U+A000 to U+DFFF (syllables, other Hangul letters,
    Yi, surrogates...) and the other Hangul blocks, amid Korean and Latin text."""
    blocks = [*range(0xA000, 0xE000), *range(0x1100, 0x1200), *range(0x3130, 0x3190)]
    for code in blocks:
        for text in (f"한국 {chr(code)} ab", f"{chr(code) * 3} abcd", f"{chr(code)}가 abc"):
            assert normalize_module.detect_language(text) == previous_detect_language(text)


@CHECK
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", "한".encode(), b"\xb1\xe8", b"\x80"]),
            st.binary(max_size=4),
        ),
        max_size=8,
    ).map(b"".join)
)
def test_is_utf8_spares_both_repairs(content: bytes) -> None:
    """Where ``is_utf8`` says yes, both repairs had nothing to do (and it says
    yes exactly for valid UTF-8)."""
    try:
        content.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert is_utf8(content) == valid
    if valid:
        assert korean_as_utf8(content) is None
        assert damaged_utf8_as_utf8(content, None) is None
        assert damaged_utf8_as_utf8(content, "utf-8") is None


def previous_listing_hash(entries: list[RawEntry]) -> str:
    """``listing_hash`` as it was: json.dumps of one list per entry (the reference)."""
    rows = [
        [
            e.guid,
            e.link,
            e.title,
            e.summary_html,
            e.content_html,
            e.date_text,
            e.published.isoformat() if e.published else None,
            e.updated.isoformat() if e.updated else None,
            e.image_url,
        ]
        for e in entries
    ]
    payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


optional_json_text = st.one_of(st.none(), json_text)
dates = st.one_of(
    st.none(),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=9))])),
    st.datetimes(),  # naive, as a parser may leave a date without a zone
)
raw_entries = st.builds(
    RawEntry,
    guid=optional_json_text,
    link=optional_json_text,
    title=optional_json_text,
    summary_html=optional_json_text,
    content_html=st.one_of(optional_json_text, st.just("<p>same</p>")),
    published=dates,
    updated=dates,
    date_text=optional_json_text,
    image_url=optional_json_text,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(raw_entries, st.booleans()), max_size=3))
def test_listing_hash_as_json_dumps_made_it(drawn: list[tuple[RawEntry, bool]]) -> None:
    # An Atom entry's summary is its content: the case encoded once.
    entries = [replace(e, summary_html=e.content_html) if same else e for e, same in drawn]

    def made(function: Callable[[list[RawEntry]], str]) -> object:
        try:
            return function(entries)
        except UnicodeEncodeError:  # a lone surrogate: both refuse it alike
            return "UnicodeEncodeError"

    assert made(dedupe.listing_hash) == made(previous_listing_hash)
