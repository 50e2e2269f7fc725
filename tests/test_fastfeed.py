"""Differential test: the lxml fast path gives exactly feedparser's output, or declines.

Every document is parsed twice, with ``parse_feed(..., fast=False)`` (feedparser
as before) and with the fast path allowed; the two ``ParsedFeed`` values (all
``RawEntry`` fields, feed title, link, language, warning) or the two errors must
be equal. Corpora: the feed fixtures of this suite, a sample of the benchmark
corpus, and the well-formed and ill-formed files of feedparser's own test suite
(tests/fixtures/feedparser, a subset of feedparser 6.0.14's sdist, BSD licence
beside them). Each corpus also has a floor on the share that takes the fast
path, so a gate that silently closed would fail here too.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.errors import ParseError
from aggregator.models import FetchResult, Item, ParsedFeed, Source
from aggregator.normalize import normalize
from aggregator.sources import fastfeed
from aggregator.sources import feed as feed_module
from aggregator.sources.feed import parse_feed
from benchmarks.generate import generate

FIXTURES = Path(__file__).parent / "fixtures"
FEEDPARSER = FIXTURES / "feedparser"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CONTENT_TYPES = (
    "application/xml",
    "application/rss+xml; charset=utf-8",
    "application/atom+xml; charset=UTF-8",
    "text/xml",
    "text/html",
    None,
)
URLS = ("https://films.example.org/feeds/main.xml", "http://127.0.0.1:8080/a/../feed?x=1&y=2")


class Spy:
    """Counts how often the fast path accepted a document."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken = 0
        self.calls = 0
        real = fastfeed.parse_fast

        def counting(*args: Any, **kwargs: Any) -> Any:
            answer = real(*args, **kwargs)
            self.calls += 1
            self.taken += answer is not None
            return answer

        monkeypatch.setattr(feed_module, "parse_fast", counting)


def both(data: bytes, content_type: str | None, url: str) -> tuple[object, object]:
    source = Source(id="diff", url=url)
    result = FetchResult(
        source_id="diff",
        url=url,
        status=200,
        content=data,
        content_type=content_type,
        fetched_at=NOW,
    )
    answers: list[object] = []
    for fast in (False, True):
        try:
            answers.append(parse_feed(source, result, fast=fast))
        except ParseError as error:
            answers.append(("ParseError", str(error)))
    return answers[0], answers[1]


def assert_same(path: Path, content_type: str | None, url: str) -> None:
    slow, fast = both(path.read_bytes(), content_type, url)
    assert fast == slow, f"{path.name} ({content_type}, {url}): fast path differs"


def test_suite_fixtures_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    paths = sorted((FIXTURES / "sources").glob("*"))
    for path in paths:
        for content_type in CONTENT_TYPES:
            for url in URLS:
                assert_same(path, content_type, url)
    assert spy.calls > 0


def items(source: Source, parsed: ParsedFeed) -> list[Item]:
    return [
        normalize(source, e, sections=(), now=NOW, fallback_base=URLS[0]) for e in parsed.entries
    ]


def test_normalized_items_identical() -> None:
    """Equal RawEntry means equal Item; checked once end to end on a mixed feed."""
    paths = [FIXTURES / "sources" / "atom10.xml", FIXTURES / "sources" / "rss2.xml"]
    for path in paths:
        source = Source(id="diff", url=URLS[0])
        result = FetchResult(
            source_id="diff",
            url=URLS[0],
            status=200,
            content=path.read_bytes(),
            content_type="application/xml",
            fetched_at=NOW,
        )
        slow, fast = parse_feed(source, result, fast=False), parse_feed(source, result)

        assert items(source, fast) == items(source, slow)


def test_benchmark_corpus_identical_and_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = generate(tmp_path, 24)
    spy = Spy(monkeypatch)
    for name in names:
        assert_same(tmp_path / name, "application/xml", URLS[0])
    # The benchmark's server sends application/xml: every feed must take the fast path.
    assert spy.taken == len(names)


@pytest.mark.skipif(not FEEDPARSER.is_dir(), reason="feedparser's test files not present")
def test_feedparser_test_files_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    paths = sorted(FEEDPARSER.rglob("*.xml"))
    assert len(paths) > 500
    for path in paths:
        assert_same(path, "application/xml", "http://example.com/feeds/index.xml")
    # Most of these files test what the gate refuses (xml:base, xhtml, odd
    # encodings); the plain RSS and Atom ones must still go fast.
    assert spy.taken / spy.calls > 0.15  # 22% when written


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.replace(b"<feed ", b'<feed xml:base="http://other.example/" ', 1), "base"),
        (lambda d: b"<!DOCTYPE feed>" + d.split(b"?>", 1)[1], "doctype"),
        (lambda d: d.replace(b'type="html"', b'type="xhtml"', 1), "xhtml"),
        (lambda d: re.sub(rb'(<entry>.*?href=")[^"]*', rb"\1", d, count=1), "empty link"),
        (lambda d: d.replace(b"<entry>", b"<entry><foo>1</foo>", 1), "unknown element"),
        (lambda d: d.replace(b'encoding="utf-8"', b'encoding="euc-kr"', 1), "declared encoding"),
    ],
)
def test_gate_refuses_what_it_does_not_replicate(
    tmp_path: Path, change: Any, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(tmp_path, 2)
    original = (tmp_path / "feed-0001.xml").read_bytes()  # Atom
    changed = change(original)
    assert changed != original
    assert fastfeed.parse_fast(original, "application/xml", URLS[0]) is not None
    assert fastfeed.parse_fast(changed, "application/xml", URLS[0]) is None, why
    path = tmp_path / "changed.xml"
    path.write_bytes(changed)
    assert_same(path, "application/xml", URLS[0])


@pytest.mark.parametrize(
    "written",
    [
        "\u0085",  # raw, two bytes in UTF-8
        "&#x85;",
        "&#150;",
        "\u0080\u009f",
        "caf\u00e9",  # 0xC3: Latin-1 but no C1
        "\u00a0",  # 0xC2 without a C1 character
        "한국 &#x2019;",
    ],
)
@pytest.mark.parametrize("atom", [False, True])
def test_c1_characters_mapped_as_feedparser_maps_them(
    written: str, atom: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """feedparser reads C1 characters as windows-1252 in every value; the fast
    path skips its scan for them only in documents that cannot hold one."""
    text = f"a{written}b"
    if atom:
        document = (
            '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>{text}</title><entry><id>https://a.example/1</id><title>{text}</title>"
            '<link href="https://a.example/1"/><updated>2026-11-30T10:00:00Z</updated>'
            f'<content type="html">&lt;p&gt;{text}&lt;/p&gt;</content></entry></feed>'
        )
    else:
        document = (
            '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>{text}</title><link>https://a.example/</link><item><title>{text}</title>"
            f"<link>https://a.example/1</link><description>{text}</description></item>"
            "</channel></rss>"
        )
    spy = Spy(monkeypatch)
    slow, fast = both(document.encode(), "application/xml", URLS[0])
    assert spy.taken == 1
    assert fast == slow
    assert isinstance(fast, ParsedFeed)
    assert not any("\x80" <= ch <= "\x9f" for ch in str(fast.entries[0].title))
