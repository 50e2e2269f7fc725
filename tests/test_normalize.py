"""normalize: sanitizing, URLs, clean text, excerpts, dates, sections, idempotence."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from aggregator.errors import ParseError
from aggregator.models import FetchResult, Item, RawEntry, SectionRule, Source
from aggregator.normalize import (
    clean_text,
    cut_title,
    excerpt,
    html_text,
    match_section,
    normalize,
    sanitize_html,
)
from aggregator.sources import parse

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
NOW = datetime(2025, 11, 28, 3, 0, tzinfo=UTC)
BASE = "https://news.example.kr/section/list.html"
SOURCE = Source(id="news", url=BASE, section="general")
SECTIONS = (
    SectionRule(id="ko-pick", title="Ko-pick", title_pattern=r"^\s*Ko-?pick\b"),
    SectionRule(id="previews", title="Previews", title_pattern=r"(?i)anticipated|preview|기대작"),
    SectionRule(id="festivals", title="Festivals", category_pattern=r"(?i)festival"),
    SectionRule(
        id="busan-only",
        title="Busan",
        source_ids=("busan",),
        text_pattern="부산",
    ),
)
EXECUTABLE_TAGS = {
    "script", "style", "iframe", "frame", "object", "embed", "svg", "math", "link", "meta",
    "base", "form", "input", "button", "textarea", "template", "noscript", "applet",
}  # fmt: skip


def entry(**overrides: object) -> RawEntry:
    values: dict[str, object] = {
        "guid": "g-1",
        "link": "/news/1",
        "title": "A title",
        "summary_html": "<p>Summary.</p>",
        "published": datetime(2025, 11, 27, tzinfo=UTC),
    }
    values.update(overrides)
    return RawEntry(**values)  # type: ignore[arg-type]


def norm(raw: RawEntry, source: Source = SOURCE) -> Item:
    return normalize(source, raw, sections=SECTIONS, now=NOW, fallback_base=BASE)


def assert_not_executable(markup: str) -> None:
    """Nothing in ``markup`` can run script or load active content in a browser."""
    tree = LexborHTMLParser(f"<body>{markup}</body>")
    for node in tree.body.traverse() if tree.body else []:
        if not node.tag or node.tag.startswith("-"):
            continue
        assert node.tag not in EXECUTABLE_TAGS, markup
        for name, value in node.attributes.items():
            assert not name.lower().startswith("on"), markup
            assert name.lower() not in ("style", "srcdoc", "formaction", "action"), markup
            if name in ("href", "src"):
                scheme = urlsplit(value or "").scheme.lower()
                assert scheme in ("", "http", "https", "mailto"), markup
    assert "javascript:" not in markup.lower().replace(" ", "")


# -------------------------------------------------------------------- sanitizer

ATTACKS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<iframe src='https://evil.example/'></iframe>",
    "<img src=x onerror=alert(1)>",
    "<img src='x' ONERROR='alert(1)'>",
    "<a href='javascript:alert(1)'>x</a>",
    "<a href='  JaVaScRiPt:alert(1)'>x</a>",
    "<a href='java&#x09;script:alert(1)'>x</a>",
    "<a href='&#106;avascript:alert(1)'>x</a>",
    "<img src='data:image/svg+xml;base64,PHN2Zz48L3N2Zz4='>",
    "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    "<p style='width: expression(alert(1))'>css</p>",
    "<div style=\"background:url('javascript:alert(1)')\">x</div>",
    "<style>body{background:url(javascript:alert(1))}</style>",
    "<svg><script>alert(1)</script></svg>",
    "<svg onload=alert(1)><circle r=1 /></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<object data='x.swf'></object><embed src='x.swf'>",
    "<meta http-equiv='refresh' content='0;url=javascript:alert(1)'>",
    "<base href='javascript:alert(1)//'>",
    "<form action='javascript:alert(1)'><button>go</button></form>",
    "<a href='vbscript:msgbox(1)'>x</a>",
    "<noscript><p title='</noscript><img src=x onerror=alert(1)>'></noscript>",
    "<!--<img src=x onerror=alert(1)>-->",
    "<details open ontoggle=alert(1)>",
    '<a href="https://ok.example/" onclick="alert(1)">ok</a>',
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_never_survive(attack: str) -> None:
    cleaned = sanitize_html(f"<p>before</p>{attack}<p>after</p>", BASE)
    assert_not_executable(cleaned)
    assert "<p>before</p>" in cleaned


def test_sanitizer_keeps_formatting_and_resolves_urls() -> None:
    markup = (
        "<h2>Head</h2><p>See <a href='../gallery/?id=3#top' class='x'>the gallery</a>"
        "<img src='img/1.jpg' alt='Still' width='640' height='360' style='border:0'></p>"
        "<figure><img src='//cdn.example.kr/a.png'><figcaption>Cap</figcaption></figure>"
        "<ul><li><em>one</em></li></ul><blockquote>q</blockquote><pre><code>x</code></pre>"
        "<table><tr><td colspan='2'>cell</td></tr></table><a href='mailto:desk@example.kr'>m</a>"
    )
    cleaned = sanitize_html(markup, BASE)
    assert (
        '<a href="https://news.example.kr/gallery/?id=3#top" rel="noopener noreferrer nofollow">'
        in cleaned
    )
    assert '<img src="https://news.example.kr/section/img/1.jpg" alt="Still" width="640"' in cleaned
    assert 'src="https://cdn.example.kr/a.png"' in cleaned
    assert "<figcaption>Cap</figcaption>" in cleaned
    assert '<td colspan="2">cell</td>' in cleaned
    assert 'href="mailto:desk@example.kr"' in cleaned
    for kept in ("<h2>", "<ul>", "<li>", "<em>", "<blockquote>", "<pre><code>"):
        assert kept in cleaned
    assert "class=" not in cleaned and "style=" not in cleaned
    assert sanitize_html(cleaned, BASE) == cleaned


def test_sanitizer_drops_chrome_with_its_content() -> None:
    cleaned = sanitize_html("<p>a</p><form><button>Subscribe</button></form><p>b</p>", BASE)
    assert cleaned == "<p>a</p><p>b</p>"


FRAGMENTS = [*ATTACKS, "<p>", "</p>", "<a href='rel/x'>", "</a>", "<b>", "&amp;", "&lt;", "\x00"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)), max_size=12))
def test_property_sanitized_output_never_executable(parts: list[str]) -> None:
    cleaned = sanitize_html("".join(parts), BASE)
    assert_not_executable(cleaned)
    assert sanitize_html(cleaned, BASE) == cleaned


# ------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "Busan festival unveils its &amp;quot;line-up&amp;quot;",
            'Busan festival unveils its "line-up"',
        ),
        ("  Kim\n\t&amp;  Lee  ", "Kim & Lee"),
        ("zero\u200bwidth\ufeff and soft\u00adhyphen", "zerowidth and softhyphen"),
        ("ctrl\x00\x07chars\x85", "ctrl chars"),
        ("\u1112\u1161\u11ab\u1100\u1173\u11af", "한글"),  # conjoining jamo → NFC syllables
        ("&#54620;&#44397; 영화", "한국 영화"),
        ("", ""),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_html_text_separates_blocks_but_not_inline() -> None:
    assert html_text("<p>One.</p><p>Two <b>bold</b>er.</p><ul><li>a</li><li>b</li></ul>") == (
        "One. Two bolder. a b"
    )
    assert html_text("line<br>break") == "line break"


def test_excerpt_ends_at_a_sentence() -> None:
    korean = "봉준호 감독의 신작이 내년 개봉한다. " * 20 + "마지막 문장"
    cut = excerpt(korean)
    assert len(cut) <= 300 and cut.endswith("개봉한다.")
    english = ("The festival announced ten titles! " * 10) + "tail"
    assert excerpt(english).endswith("titles!")
    quoted = "x" * 150 + ' he said "it ends here." ' + "y " * 200
    assert excerpt(quoted).endswith('here."')


def test_excerpt_falls_back_to_a_word_boundary_with_ellipsis() -> None:
    text = "word " * 100
    cut = excerpt(text)
    assert cut.endswith("word…") and len(cut) <= 301
    hangul = "한국영화 " * 100
    cut = excerpt(hangul)
    assert cut.endswith("한국영화…")
    assert excerpt("short text.") == "short text."  # no cut, no ellipsis


def test_excerpt_of_one_long_word() -> None:
    url = "https://example.org/" + "a" * 400
    cut = excerpt(url)
    assert cut.endswith("…") and len(cut) <= 301
    assert excerpt("x" * 350) == "x" * 350  # kept whole up to twice the limit


def test_title_cut_at_a_word_boundary() -> None:
    title = "Korean cinema " * 100
    cut = cut_title(clean_text(title))
    assert len(cut) <= 1000 and cut.endswith("cinema…")
    assert cut_title(cut) == cut


WORDS = st.text(
    alphabet=st.sampled_from([*"abcdeé가나다한국영화", ".", "!", "?", ",", "다"]),
    min_size=1,
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, min_size=1, max_size=80), st.integers(min_value=20, max_value=300))
def test_property_excerpt_never_cuts_inside_a_word(words: list[str], limit: int) -> None:
    text = " ".join(words)
    cut = excerpt(text, limit)
    if len(text) <= limit:
        assert cut == text
        return
    body = cut.removesuffix("…")
    assert text.startswith(body)
    assert len(body) <= 2 * limit
    if body and len(body) < len(text):
        inside_word = body[-1].isalnum() and text[len(body)].isalnum()
        assert not inside_word, (text, cut)


# ------------------------------------------------------------------------ items


def test_rss_item_end_to_end() -> None:
    source = Source(id="cinema", url="https://cinema.example.kr/rss.xml")
    result = FetchResult(
        source_id="cinema",
        url=source.url,
        status=200,
        content=(FIXTURES / "rss2.xml").read_bytes(),
        content_type="application/rss+xml",
    )
    first = normalize(
        source,
        parse(source, result).entries[0],
        sections=SECTIONS,
        now=NOW,
        fallback_base=result.url,
    )

    assert first.guid == "cinema-1201"
    assert first.url == "https://cinema.example.kr/news/1201?utm_source=rss&utm_medium=feed"
    assert first.canonical_url == "https://cinema.example.kr/news/1201"
    assert first.title == 'Busan festival unveils its "Korean Cinema Today" line-up'
    assert "<script>" not in first.content_html
    assert 'src="https://cinema.example.kr/img/biff.jpg"' in first.content_html
    assert 'href="https://cinema.example.kr/news/1200"' in first.content_html
    assert first.text == "The festival announced ten titles. Earlier story"
    assert first.excerpt == first.text
    assert first.published_at == datetime(2025, 11, 27, 5, 30, tzinfo=UTC)
    assert first.section == "festivals"  # by category
    assert first.categories == ("Festivals", "Busan")


def test_sections_rules_in_order_then_source_default() -> None:
    assert norm(entry(title="Ko-pick: Preview of 2026")).section == "ko-pick"
    assert norm(entry(title="Most anticipated films")).section == "previews"
    assert norm(entry(title="2026 기대작")).section == "previews"
    assert norm(entry(title="News", categories=("Film Festivals",))).section == "festivals"
    assert norm(entry(title="News")).section == "general"
    busan = replace(SOURCE, id="busan", section=None)
    assert norm(entry(title="News", summary_html="<p>부산 소식</p>"), busan).section == "busan-only"
    # source_ids and text_pattern must both match.
    assert norm(entry(title="News", summary_html="<p>부산 소식</p>")).section == "general"
    assert norm(entry(title="News"), busan).section is None
    assert match_section((SectionRule(id="empty", title="E"),), source_id="s", title="t",
                         text="", categories=()) is None  # fmt: skip


def test_dates_fall_back_and_clamp() -> None:
    updated_only = norm(entry(published=None, updated=datetime(2025, 11, 20, tzinfo=UTC)))
    assert updated_only.published_at == datetime(2025, 11, 20, tzinfo=UTC)

    from_text = norm(entry(published=None, date_text="2025년 11월 27일"))
    assert from_text.published_at == datetime(2025, 11, 26, 15, 0, tzinfo=UTC)
    assert not from_text.date_missing

    missing = norm(entry(published=None, date_text="someday"))
    assert missing.published_at == NOW and missing.date_missing

    future = norm(entry(published=NOW + timedelta(hours=5)))
    assert future.published_at == NOW and not future.date_missing

    absurd = norm(entry(published=datetime(1901, 1, 1, tzinfo=UTC), date_text="2025.11.01"))
    assert absurd.published_at == datetime(2025, 10, 31, 15, 0, tzinfo=UTC)

    both = norm(entry(updated=datetime(2025, 11, 1, tzinfo=UTC)))
    assert both.updated_at == both.published_at  # never updated before published


def test_urls_are_absolute_and_canonical() -> None:
    source = replace(SOURCE, identity_params=("seq",))
    item = norm(entry(link="view.jsp?seq=7&pageIndex=3#top", image_url="/img/a.jpg"), source)
    assert item.url == "https://news.example.kr/section/view.jsp?seq=7&pageIndex=3#top"
    assert item.canonical_url == "https://news.example.kr/section/view.jsp?seq=7"
    assert item.image_url == "https://news.example.kr/img/a.jpg"
    assert norm(entry(guid=None)).guid == "https://news.example.kr/news/1"


def test_entry_without_http_link_is_rejected() -> None:
    with pytest.raises(ParseError, match="has no http\\(s\\) link"):
        norm(entry(guid="tag:x,2025:1", link="javascript:void(0)"))
    assert norm(entry(guid="https://x.example/p/1", link=None)).url == "https://x.example/p/1"


def test_missing_title_uses_the_text() -> None:
    item = norm(entry(title=None, summary_html="<p>Only a body here.</p>"))
    assert item.title == "Only a body here."


def test_a_summary_equal_to_the_content_is_not_kept_twice() -> None:
    """An Atom entry without <summary> (feedparser copies the content into it)."""
    body = '<p>Director <a href="/p/9">Park</a> returns.</p>'
    same = norm(entry(summary_html=body, content_html=body))
    assert same.summary_html == ""
    assert 'href="https://news.example.kr/p/9"' in same.content_html  # sanitized all the same
    own = norm(entry(summary_html="<p>In short.</p>", content_html=body))
    assert own.summary_html == "<p>In short.</p>"
    # Same hash as if the summary had been kept: stored items do not all turn "updated".
    assert same.content_hash == norm(entry(summary_html="", content_html=body)).content_hash


# ------------------------------------------------------------------ idempotence


def back_to_raw(item: Item) -> RawEntry:
    return RawEntry(
        guid=item.guid,
        link=item.url,
        title=item.title,
        summary_html=item.summary_html,
        content_html=item.content_html,
        published=item.published_at,
        updated=item.updated_at,
        author=item.author,
        categories=item.categories,
        image_url=item.image_url,
        base_url=item.url,
        language=item.language,
    )


TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["&amp;amp;", "&quot;", "\u200b", "\x00", "&#54620;", " \n ", "Ko-pick:"]),
)
HTML = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=15)), max_size=8).map(
    "".join
)
DATES = st.datetimes(
    min_value=datetime(1960, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=st.lists(TEXTS, max_size=4).map("".join),
    summary=HTML,
    content=st.one_of(st.none(), HTML),
    link=st.sampled_from(["/a/1", "b?x=1&utm_source=y", "https://o.example/p#f", "../c"]),
    published=st.one_of(st.none(), DATES),
    updated=st.one_of(st.none(), DATES),
    author=st.one_of(st.none(), TEXTS),
    categories=st.lists(TEXTS, max_size=3).map(tuple),
)
def test_property_normalize_is_idempotent(
    title: str,
    summary: str,
    content: str | None,
    link: str,
    published: datetime | None,
    updated: datetime | None,
    author: str | None,
    categories: tuple[str, ...],
) -> None:
    raw = RawEntry(
        guid=None,
        link=link,
        title=title,
        summary_html=summary,
        content_html=content,
        published=published,
        updated=updated,
        author=author,
        categories=categories,
    )
    once = norm(raw)
    twice = norm(back_to_raw(once))
    for field in fields(Item):
        if field.name == "date_missing":
            continue  # the second pass sees the stand-in date as a real one
        assert getattr(twice, field.name) == getattr(once, field.name), field.name
    assert_not_executable(once.summary_html)
    assert_not_executable(once.content_html)
