"""Identity keys: canonical links, story fingerprints, content and listing hashes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.dedupe import canonical_url, content_hash, dedupe_batch, fingerprint, listing_hash
from aggregator.models import Item, RawEntry

KOBIZ = "https://www.koreanfilm.or.kr/eng/news/ko_pick.jsp"
IDENTITY = ("blbdComCd", "seq", "mode")


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://Example.KR:443/a?b=2&a=1#frag", "https://example.kr/a?a=1&b=2"),
        ("http://example.kr:80", "http://example.kr/"),
        ("http://example.kr:8080/x", "http://example.kr:8080/x"),
        (
            "https://e.kr/p?utm_source=rss&utm_medium=feed&id=3&fbclid=x&gclid=y&UTM_Campaign=z",
            "https://e.kr/p?id=3",
        ),
        ("https://e.kr/p?returnUrl=&q=a+b", "https://e.kr/p?q=a%20b"),
        ("https://e.kr/p?q=a%2Bb", "https://e.kr/p?q=a%2Bb"),
        ("https://e.kr/영화/%ea%b0%80", "https://e.kr/%EC%98%81%ED%99%94/%EA%B0%80"),
        ("  https://e.kr/p?  ", "https://e.kr/p"),
        ("mailto:desk@e.kr", "mailto:desk@e.kr"),
    ],
)
def test_canonical_url(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical


def test_keep_list_ignores_paging_and_search() -> None:
    page1 = (
        f"{KOBIZ}?mode=VIEW&blbdComCd=601029&seq=98&pageIndex=1&pageRowSize=10"
        "&returnUrl=&searchKeyword="
    )
    page2 = (
        f"{KOBIZ}?pageIndex=2&pageRowSize=20&returnUrl=%2Feng%2Fnews&searchKeyword=bong"
        "&seq=98&blbdComCd=601029&mode=VIEW"
    )
    expected = f"{KOBIZ}?blbdComCd=601029&mode=VIEW&seq=98"
    assert canonical_url(page1, keep=IDENTITY) == expected
    assert canonical_url(page2, keep=IDENTITY) == expected
    assert canonical_url(
        page2, drop=("pageIndex", "pageRowSize", "returnUrl", "searchKeyword")
    ) == (expected)
    # Without a keep list the paging parameters make it another URL.
    assert canonical_url(page2) != expected


URL_PARTS = st.sampled_from(
    [
        "a",
        "B",
        "%41",
        "%zz",
        "+",
        " ",
        "&",
        "=",
        "?",
        "#",
        "/",
        "..",
        "영",
        "utm_x",
        "%2F",
        ":",
        ";",
    ]
)
URLS = st.builds(
    lambda scheme, host, port, path, query, frag: f"{scheme}://{host}{port}/{path}?{query}#{frag}",
    st.sampled_from(["http", "HTTPS", "https", "ftp"]),
    st.sampled_from(["Example.KR", "e.kr", "한국.kr", "[::1]", "user@h.kr"]),
    st.sampled_from(["", ":80", ":443", ":8080", ":"]),
    st.lists(URL_PARTS, max_size=6).map("".join),
    st.lists(URL_PARTS, max_size=10).map("".join),
    st.lists(URL_PARTS, max_size=3).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(URLS, st.text(max_size=60)),
    st.one_of(st.none(), st.lists(st.sampled_from(["a", "B", "seq", "%41"]), max_size=2)),
)
def test_property_canonical_url_is_idempotent(url: str, keep: list[str] | None) -> None:
    once = canonical_url(url, keep=keep)
    assert canonical_url(once, keep=keep) == once


def test_fingerprint_matches_the_same_story_dressed_differently() -> None:
    a = fingerprint("[단독] 봉준호 신작, 내년 개봉", "봉준호 감독의 신작이 내년 개봉한다.")
    b = fingerprint("봉준호 신작 내년 개봉", "  봉준호 감독의 신작이, 내년 개봉한다!")
    c = fingerprint("ＢＩＦＦ line-up announced", "The festival announced ten titles.")
    d = fingerprint("BIFF Line-up Announced", "the festival announced ten titles")
    assert a == b
    assert c == d
    assert a != c
    assert fingerprint("Other story", "The festival announced ten titles.") != c


def test_content_hash_changes_with_anything_a_reader_sees() -> None:
    base = {
        "title": "T",
        "url": "https://e.kr/1",
        "summary_html": "<p>s</p>",
        "content_html": "",
        "image_url": None,
        "author": None,
        "categories": ("a",),
        "published_at": datetime(2025, 11, 27, tzinfo=UTC),
    }
    reference = content_hash(**base)  # type: ignore[arg-type]
    assert content_hash(**base) == reference  # type: ignore[arg-type]
    for key, value in [
        ("title", "T2"),
        ("summary_html", "<p>t</p>"),
        ("image_url", "https://e.kr/i.jpg"),
        ("categories", ("b",)),
        ("published_at", datetime(2025, 11, 28, tzinfo=UTC)),
    ]:
        assert content_hash(**{**base, key: value}) != reference  # type: ignore[arg-type]


def test_listing_hash_ignores_nothing_extracted_but_order_matters() -> None:
    one = RawEntry(guid="1", link="https://e.kr/1", title="One", date_text="2025.11.27")
    two = RawEntry(guid="2", link="https://e.kr/2", title="Two")
    assert listing_hash([one, two]) == listing_hash([one, two])
    assert listing_hash([one, two]) != listing_hash([two, one])
    assert listing_hash([one]) != listing_hash([replace(one, title="One!")])


def test_dedupe_batch_keeps_the_last_copy_in_first_place() -> None:
    now = datetime(2025, 11, 27, tzinfo=UTC)
    item = Item(
        source_id="s",
        guid="g",
        url="https://e.kr/1",
        canonical_url="https://e.kr/1",
        title="Old",
        summary_html="",
        content_html="",
        text="",
        excerpt="",
        fingerprint="f",
        content_hash="h",
        published_at=now,
        updated_at=now,
    )
    other = replace(item, guid="h")
    newer = replace(item, title="New")
    assert dedupe_batch([item, other, newer]) == [newer, other]
