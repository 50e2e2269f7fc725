"""Parsers: every feed format, the KoBiz-style listing, encodings, breakage alarms, dates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.config import parse_config
from aggregator.errors import ParseError, ScrapeError
from aggregator.models import FetchResult, ParsedFeed, Selectors, Source
from aggregator.sources import is_json_feed, parse
from aggregator.sources.dates import parse_date
from aggregator.sources.decode import decode_html
from aggregator.sources.html import FieldSelector

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
NOW = datetime(2025, 11, 28, 3, 0, tzinfo=UTC)  # 12:00 in Seoul
LISTING_URL = "https://www.koreanfilm.or.kr/eng/news/ko_pick.jsp?blbdComCd=601029"
KOPICK_SELECT = Selectors(
    item="ul.list > li",
    title="p.tit a",
    link="p.tit a@href",
    summary="p.txt",
    date="span.date",
    image="img@src",
    next_page="a.next@href",
)
KOPICK = Source(
    id="kobiz-kopick",
    url=LISTING_URL,
    type="html",
    identity_params=("blbdComCd", "seq", "mode"),
    select=KOPICK_SELECT,
)


def fetched(
    name: str | bytes,
    *,
    url: str = "https://feeds.example.org/feed",
    content_type: str | None = None,
    source_id: str = "test",
) -> FetchResult:
    content = name if isinstance(name, bytes) else (FIXTURES / name).read_bytes()
    charset = None
    if content_type and "charset=" in content_type:
        charset = content_type.split("charset=", 1)[1]
    return FetchResult(
        source_id=source_id,
        url=url,
        status=200,
        content=content,
        content_type=content_type,
        charset=charset,
        fetched_at=NOW,
    )


def parse_fixture(name: str, content_type: str | None = None) -> ParsedFeed:
    source = Source(id="test", url="https://feeds.example.org/feed")
    return parse(source, fetched(name, content_type=content_type))


def scrape(
    name: str | bytes, source: Source = KOPICK, content_type: str | None = "text/html"
) -> ParsedFeed:
    return parse(source, fetched(name, url=source.url, content_type=content_type))


# ------------------------------------------------------------------ feed formats


def test_rss2_maps_every_field() -> None:
    feed = parse_fixture("rss2.xml", "application/rss+xml; charset=utf-8")

    assert feed.title == "Korean Cinema Today"
    assert feed.language == "en"
    assert feed.warning is None
    first, second = feed.entries
    assert first.guid == "cinema-1201"
    assert first.title == 'Busan festival unveils its "Korean Cinema Today" line-up'
    assert first.link == "https://cinema.example.kr/news/1201?utm_source=rss&utm_medium=feed"
    assert first.published == datetime(2025, 11, 27, 5, 30, tzinfo=UTC)
    assert first.date_text == "Thu, 27 Nov 2025 14:30:00 +0900"
    assert first.author == "Kim Ji-won"
    assert first.categories == ("Festivals", "Busan")
    assert first.image_url == "https://cinema.example.kr/img/thumb-1201.jpg"
    # Not sanitized or resolved here: normalize does that once.
    assert first.content_html is not None and "<script>" in first.content_html
    assert 'src="/img/biff.jpg"' in first.content_html
    assert first.summary_html == "<p>The festival announced <b>ten</b> titles.</p>"
    assert second.guid == "https://cinema.example.kr/news/1202"  # no guid: the link
    assert second.image_url == "https://cinema.example.kr/img/1202.jpg"  # image enclosure
    assert second.title == "2026년 가장 기대되는 한국 영화"


def test_rss091_in_latin1() -> None:
    feed = parse_fixture("rss091.xml", "text/xml")

    assert feed.title == "Classic Cinema Wire"
    assert [e.title for e in feed.entries] == [
        "Café screening of a Korean classic",
        "Second classic",
    ]
    assert feed.entries[1].summary_html == "Café society."
    assert feed.entries[0].published is None and feed.entries[0].date_text is None


def test_rss1_rdf() -> None:
    feed = parse_fixture("rss1.rdf")

    (entry,) = feed.entries
    assert feed.language == "ja"
    assert entry.guid == "https://rdf.example.jp/a/1"
    assert entry.author == "Sato"
    assert entry.categories == ("Box office",)
    assert entry.updated == datetime(2025, 11, 25, 3, 0, tzinfo=UTC)
    assert entry.date_text == "2025-11-25T12:00:00+09:00"


def test_atom10_prefers_alternate_link_html_content_and_xml_base() -> None:
    feed = parse_fixture("atom10.xml", "application/atom+xml")

    first, second = feed.entries
    assert first.link == "https://films.example.org/blog/posts/no-other-choice"
    assert first.title == "Park Chan-wook’s No Other Choice heads to Oscars"
    assert first.content_html is not None and first.content_html.startswith("<p>See <a")
    assert first.base_url == "https://films.example.org/blog/posts/"
    assert first.published == datetime(2025, 11, 26, 9, 0, tzinfo=UTC)
    assert first.updated == datetime(2025, 11, 27, 1, 15, tzinfo=UTC)
    assert first.categories == ("Awards",)
    assert first.summary_html == "Korea picks its Oscar entry &amp; more."  # text → escaped
    assert first.language == "en"
    assert second.published is None
    assert second.updated == datetime(2025, 11, 20, tzinfo=UTC)
    assert second.content_html == "<p>XHTML <strong>content</strong>.</p>"


def test_atom03_issued_and_modified() -> None:
    (entry,) = parse_fixture("atom03.xml").entries

    assert entry.guid == "tag:old.example.net,2025:1"
    assert entry.published == datetime(2025, 11, 24, 0, 0, tzinfo=UTC)
    assert entry.updated == datetime(2025, 11, 24, 10, 0, tzinfo=UTC)


def test_json_feed_11() -> None:
    feed = parse_fixture("jsonfeed11.json", "application/feed+json")

    first, second = feed.entries
    assert feed.title == "K-Film JSON"
    assert feed.language == "ko"
    assert first.guid == "https://json.example.kr/p/7"
    assert first.published == datetime(2025, 11, 27, 0, 0, tzinfo=UTC)
    assert first.updated == datetime(2025, 11, 27, 12, 0, tzinfo=UTC)
    assert first.author == "Choi Eun-ji"
    assert first.categories == ("Ko-pick", "preview")
    assert first.image_url == "https://json.example.kr/img/7-cover.jpg"
    assert first.summary_html == "Ten films to watch in 2026 &amp; beyond."
    assert second.guid == "8"
    assert second.link == "https://elsewhere.example.com/story"
    assert second.title == "Plain text <entry>"
    assert second.content_html == "<p>Line one &amp; two.</p><p>Second paragraph.</p>"
    assert second.author == "Old Style Author"


def test_json_feed_detected_by_body_when_mislabelled() -> None:
    assert is_json_feed(b'  {"version": "x"}', "text/plain")
    assert is_json_feed(b"<rss/>", "application/json")
    assert not is_json_feed(b"<?xml version='1.0'?><rss/>", "text/xml")
    feed = parse_fixture("jsonfeed11.json", "application/octet-stream")
    assert len(feed.entries) == 2


def test_invalid_json_feed_names_the_position() -> None:
    source = Source(id="jf", url="https://json.example.kr/feed.json")
    result = fetched(b'{"items": [}', url=source.url, content_type="application/feed+json")

    with pytest.raises(ParseError) as caught:
        parse(source, result)

    message = str(caught.value)
    assert message.startswith("jf: invalid JSON Feed")
    assert "line 1, column 12" in message
    assert "https://json.example.kr/feed.json" in message


def test_malformed_rss_keeps_entries_with_a_warning() -> None:
    feed = parse_fixture("malformed.rss")

    assert feed.warning is not None and "not well-formed" in feed.warning
    assert [e.title for e in feed.entries] == ["Kim & Lee sign for a new thriller", "Second story"]


def test_html_page_is_not_a_feed() -> None:
    source = Source(id="site", url="https://www.example.org/")
    result = fetched("not_a_feed.html", url=source.url, content_type="text/html")

    with pytest.raises(ParseError) as caught:
        parse(source, result)

    assert str(caught.value).startswith("site: not an RSS or Atom feed")
    assert "https://www.example.org/" in str(caught.value)


def test_not_modified_result_is_a_parse_error_not_a_crash() -> None:
    source = Source(id="s", url="https://x.example/")
    result = FetchResult(source_id="s", url=source.url, status=304, content=None)
    with pytest.raises(ParseError, match="304"):
        parse(source, result)


def test_entry_without_id_or_link_gets_a_stable_guid() -> None:
    body = (
        b"<rss version='2.0'><channel><title>t</title><link>https://a.example/</link>"
        b"<item><title>No link</title><pubDate>Thu, 27 Nov 2025 00:00:00 GMT</pubDate></item>"
        b"</channel></rss>"
    )
    first = parse(Source(id="s", url="https://a.example/"), fetched(body)).entries[0]
    again = parse(Source(id="s", url="https://a.example/"), fetched(body)).entries[0]
    assert first.guid is not None and first.guid.startswith("sha256:")
    assert first.guid == again.guid


# -------------------------------------------------------------------- listings


def test_kopick_listing_english_and_korean() -> None:
    feed = scrape("kobiz_kopick.html")

    assert feed.title == "Ko-pick | KoBiz"
    assert feed.warning is None
    assert len(feed.entries) == 4
    first, second, third, _ = feed.entries
    assert first.title == "Ko-pick: Most Anticipated Korean Films of 2026"
    assert first.guid == (
        "https://www.koreanfilm.or.kr/eng/news/ko_pick.jsp?blbdComCd=601029&mode=VIEW&seq=98"
    )
    assert first.link is not None and "pageIndex=1" in first.link
    assert first.summary_html == (
        "Ten titles to watch next year. Directors return with <b>bold</b> projects."
    )
    assert first.image_url == "https://www.koreanfilm.or.kr/upload/kopick/98.jpg"
    assert first.date_text == "2025.11.27"
    assert first.published == datetime(2025, 11, 26, 15, 0, tzinfo=UTC)  # midnight in Seoul
    assert second.title == "2026년 가장 기대되는 한국 영화"
    assert second.summary_html == "봉준호 감독의 신작이 내년 개봉한다. 배급사는 일정을 확정했다."
    assert third.image_url is None
    assert feed.next_page_url == (
        "https://www.koreanfilm.or.kr/eng/news/ko_pick.jsp?blbdComCd=601029&pageIndex=2&pageRowSize=10"
    )


@pytest.mark.parametrize("name", ["kobiz_kopick_euckr_meta.html", "kobiz_kopick_euckr_bare.html"])
@pytest.mark.parametrize("content_type", ["text/html", None, "text/html; charset=iso-8859-1"])
def test_euc_kr_listing_decodes_without_mojibake(name: str, content_type: str | None) -> None:
    feed = scrape(name, content_type=content_type)

    titles = [e.title for e in feed.entries]
    assert "2026년 가장 기대되는 한국 영화" in titles
    assert "한국 영화 제작 현장의 변화" in titles
    assert feed.entries[1].summary_html == (
        "봉준호 감독의 신작이 내년 개봉한다. 배급사는 일정을 확정했다."
    )


def test_same_article_on_page_two_has_the_same_guid() -> None:
    page1 = {e.title: e for e in scrape("kobiz_kopick.html").entries}
    page2 = {e.title: e for e in scrape("kobiz_kopick_page2.html").entries}

    title = "Ko-pick: Most Anticipated Korean Films of 2026"
    assert page1[title].link != page2[title].link
    assert "searchKeyword=bong" in (page2[title].link or "")
    assert page1[title].guid == page2[title].guid
    assert {e.guid for e in page1.values()} == {e.guid for e in page2.values()}


def test_drop_params_instead_of_identity_params() -> None:
    source = replace(
        KOPICK,
        identity_params=None,
        drop_params=("pageIndex", "pageRowSize", "returnUrl", "searchKeyword"),
    )
    one = scrape("kobiz_kopick.html", source).entries[0]
    two = scrape("kobiz_kopick_page2.html", source).entries[0]
    assert one.guid == two.guid
    assert one.guid is not None and one.guid.endswith("blbdComCd=601029&mode=VIEW&seq=98")


def test_link_defaults_to_title_href_then_first_link() -> None:
    from_title = replace(KOPICK, select=replace(KOPICK_SELECT, link=""))
    entries = scrape("kobiz_kopick.html", from_title).entries
    assert entries[0].guid is not None and entries[0].guid.endswith("seq=98")

    no_title_link = replace(KOPICK, select=replace(KOPICK_SELECT, title="p.tit", link=""))
    entries = scrape("kobiz_kopick.html", no_title_link).entries
    assert [e.guid.rsplit("=", 1)[1] for e in entries if e.guid] == ["98", "97", "96", "95"]


def test_without_a_link_selector_the_title_link_wins_over_a_thumbnail(tmp_path: Path) -> None:
    """A listing whose first link is the thumbnail's (to an image page) and whose
    feeds.yaml names no ``link``: the article is the title's link."""
    config = parse_config(
        "sources:\n  - id: board\n    type: html\n    url: https://www.example.kr/board\n"
        "    select: {item: li, title: p.tit}\n",
        path=tmp_path / "feeds.yaml",
    )
    (source,) = config.sources
    page = (
        '<ul><li><a href="/photo/1.jpg"><img src="/thumb/1.jpg"></a>'
        '<p class="tit"><a href="/view?seq=1">One</a></p></li>'
        '<li><a href="/photo/2.jpg"><img src="/thumb/2.jpg"></a>'
        '<p class="tit"><a href="/view?seq=2">Two</a></p></li></ul>'
    )
    entries = scrape(page.encode(), source).entries
    assert [e.link for e in entries] == [
        "https://www.example.kr/view?seq=1",
        "https://www.example.kr/view?seq=2",
    ]


def test_field_selector_syntax() -> None:
    assert FieldSelector.parse("a.next@href") == FieldSelector("a.next@href", "a.next", "href")
    assert FieldSelector.parse("img @data-src").attr == "data-src"
    assert FieldSelector.parse("@href").css == ""
    assert FieldSelector.parse('a[href$="@x"]').attr is None


def test_base_href_and_lazy_images() -> None:
    page = (
        '<html><head><base href="https://cdn.example.kr/board/"></head><body><ul class="list">'
        '<li><p class="tit"><a href="view?seq=1">One</a></p>'
        '<img src="data:image/gif;base64,R0lGOD" data-src="img/1.jpg"></li></ul></body></html>'
    )
    (entry,) = scrape(page.encode()).entries
    assert entry.link == "https://cdn.example.kr/board/view?seq=1"
    assert entry.image_url == "https://cdn.example.kr/board/img/1.jpg"


def test_javascript_links_are_not_links() -> None:
    page = (
        '<ul class="list"><li><p class="tit"><a href="javascript:fnView(1)">One</a></p></li>'
        '<li><p class="tit"><a href="/v?seq=2">Two</a></p></li></ul>'
    )
    (entry,) = scrape(page.encode()).entries
    assert entry.title == "Two"


# -------------------------------------------------------------- breakage alarms


def test_alarm_item_selector_matched_nothing() -> None:
    page = (FIXTURES / "kobiz_kopick.html").read_bytes().replace(b'class="list"', b'class="grid"')

    with pytest.raises(ScrapeError) as caught:
        scrape(page)

    assert str(caught.value) == (
        f'kobiz-kopick: selector "ul.list > li" matched nothing on {LISTING_URL}'
    )
    assert caught.value.url == LISTING_URL
    assert caught.value.source_id == "kobiz-kopick"


def test_alarm_title_selector_matches_too_few_items() -> None:
    page = (FIXTURES / "kobiz_kopick.html").read_bytes().replace(b'class="tit"', b'class="title"')

    with pytest.raises(ScrapeError) as caught:
        scrape(page)

    assert str(caught.value) == (
        f'kobiz-kopick: selector "p.tit a" matched 0 of 4 items on {LISTING_URL}'
    )


def test_one_item_without_title_is_skipped_with_a_warning() -> None:
    page = (FIXTURES / "kobiz_kopick.html").read_bytes().replace(b'class="tit"', b'class="x"', 1)

    feed = scrape(page)

    assert len(feed.entries) == 3
    assert feed.warning == "1 of 4 items had no title and were skipped"


def test_alarm_links_missing() -> None:
    page = b"".join(
        b'<ul class="list">' + b"<li><p class='tit'><span>T%d</span></p></li>" % n + b"</ul>"
        for n in range(3)
    )
    source = replace(KOPICK, select=Selectors(item="ul.list > li", title="p.tit", link=""))

    with pytest.raises(ScrapeError, match=r'link selector "a\[href\]" matched 0 of 3 items'):
        scrape(page, source)


def test_alarm_dates_stop_parsing() -> None:
    page = (FIXTURES / "kobiz_kopick.html").read_bytes()
    for day in (b"2025.11.27", b"2025.11.20", b"2025.11.13", b"2025.11.06"):
        page = page.replace(day, b"27/11/2025")

    with pytest.raises(ScrapeError) as caught:
        scrape(page)

    assert str(caught.value) == (
        'kobiz-kopick: date "27/11/2025" in 4 of 4 items could not be parsed '
        f'(selector "span.date") on {LISTING_URL}'
    )


def test_some_dates_unparsable_is_only_a_warning() -> None:
    page = (FIXTURES / "kobiz_kopick.html").read_bytes().replace(b"2025.11.27", b"yesterday")

    feed = scrape(page)

    assert feed.entries[0].published is None
    assert feed.entries[0].date_text == "yesterday"
    assert feed.warning is not None and 'date "yesterday" in 1 of 4 items' in feed.warning


def test_source_date_format_rescues_odd_dates() -> None:
    page = (FIXTURES / "kobiz_kopick.html").read_bytes().replace(b"2025.11.27", b"27/11/2025")
    source = replace(KOPICK, date_format="%d/%m/%Y")

    feed = scrape(page, source)

    assert feed.entries[0].published == datetime(2025, 11, 26, 15, 0, tzinfo=UTC)


def test_invalid_css_selector_is_a_scrape_error() -> None:
    source = replace(KOPICK, select=replace(KOPICK_SELECT, item="ul[[["))
    with pytest.raises(ScrapeError, match="invalid CSS selector"):
        scrape("kobiz_kopick.html", source)


# ------------------------------------------------------------------------ dates

SEOUL_MIDNIGHT_27 = datetime(2025, 11, 26, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025.11.27", SEOUL_MIDNIGHT_27),
        ("2025-11-27", SEOUL_MIDNIGHT_27),
        ("2025/11/27", SEOUL_MIDNIGHT_27),
        ("2025. 11. 27.", SEOUL_MIDNIGHT_27),
        ("2025년 11월 27일", SEOUL_MIDNIGHT_27),
        ("2025년 11월 27일 (목)", SEOUL_MIDNIGHT_27),
        ("27 Nov 2025", SEOUL_MIDNIGHT_27),
        ("Nov 27, 2025", SEOUL_MIDNIGHT_27),
        ("November 27th, 2025", SEOUL_MIDNIGHT_27),
        ("11월 27일", SEOUL_MIDNIGHT_27),
        ("2025.11.27 14:30", datetime(2025, 11, 27, 5, 30, tzinfo=UTC)),
        ("2025년 11월 27일 오후 2:30", datetime(2025, 11, 27, 5, 30, tzinfo=UTC)),
        ("Nov 27, 2025 2:30 PM", datetime(2025, 11, 27, 5, 30, tzinfo=UTC)),
        ("2025-11-27 00:10:05", datetime(2025, 11, 26, 15, 10, 5, tzinfo=UTC)),
        ("Thu, 27 Nov 2025 14:30:00 +0900", datetime(2025, 11, 27, 5, 30, tzinfo=UTC)),
        ("2025-11-27T09:00:00Z", datetime(2025, 11, 27, 9, 0, tzinfo=UTC)),
        ("  posted\n 2025.11.27  ", SEOUL_MIDNIGHT_27),
    ],
)
def test_date_formats(text: str, expected: datetime) -> None:
    assert parse_date(text, now=NOW) == expected


def test_dates_use_the_source_timezone() -> None:
    assert parse_date("2025.11.27", tz="UTC", now=NOW) == datetime(2025, 11, 27, tzinfo=UTC)
    assert parse_date("2025.11.27 09:00", tz="America/New_York", now=NOW) == datetime(
        2025, 11, 27, 14, 0, tzinfo=UTC
    )


def test_yearless_dates_take_the_most_recent_year() -> None:
    # Late November: December is last year's, but "the day after tomorrow" is this year's.
    assert parse_date("12월 25일", now=NOW) == datetime(2024, 12, 24, 15, 0, tzinfo=UTC)
    assert parse_date("11월 30일", now=NOW) == datetime(2025, 11, 29, 15, 0, tzinfo=UTC)
    assert parse_date("12월 1일", now=NOW) == datetime(2024, 11, 30, 15, 0, tzinfo=UTC)
    # In January, a December date is from the year before.
    january = datetime(2026, 1, 3, tzinfo=UTC)
    assert parse_date("12월 31일", now=january) == datetime(2025, 12, 30, 15, 0, tzinfo=UTC)
    # 29 February goes back to the last leap year.
    assert parse_date("2월 29일", now=NOW) == datetime(2024, 2, 28, 15, 0, tzinfo=UTC)


def test_explicit_format_wins() -> None:
    assert parse_date("27/11/2025", fmt="%d/%m/%Y", now=NOW) == SEOUL_MIDNIGHT_27
    assert parse_date("11/27/2025", fmt="%m/%d/%Y", now=NOW) == SEOUL_MIDNIGHT_27
    # A format that does not match falls back to the built-in forms.
    assert parse_date("2025.11.27", fmt="%d/%m/%Y", now=NOW) == SEOUL_MIDNIGHT_27


@pytest.mark.parametrize(
    "text", ["", "   ", "yesterday", "1899.12.31", "1969.12.31", "2099.01.01", "2025.13.45", None]
)
def test_unreadable_or_implausible_dates_are_none(text: str | None) -> None:
    assert parse_date(text, now=NOW) is None


# ---------------------------------------------------------------------- decoding


def test_decode_prefers_strictly_valid_encodings() -> None:
    korean = "<p>한국 영화</p>"
    assert decode_html(korean.encode("utf-8"), http_charset="euc-kr") == korean
    assert decode_html(korean.encode("cp949"), http_charset="iso-8859-1") == korean
    assert decode_html(korean.encode("cp949")) == korean
    assert decode_html("<p>café</p>".encode("cp1252"), http_charset="windows-1252") == "<p>café</p>"
    assert decode_html(b"\xef\xbb\xbf<p>x</p>") == "<p>x</p>"
    assert decode_html("똠방각하".encode("cp949"), override="euc-kr") == "똠방각하"
