"""Identity keys: canonical links, story fingerprints, content and listing hashes."""

from __future__ import annotations

import hashlib
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
        # An empty port is no port; a host is lowercased, so nothing else is stripped.
        ("http://Example.KR:/a", "http://example.kr/a"),
        # Empty pieces are skipped, not the end of the query.
        ("https://e.kr/p?&b=2&&a=1", "https://e.kr/p?a=1&b=2"),
        # Only the first "=" separates name from value.
        ("https://e.kr/p?q=a=b", "https://e.kr/p?q=a%3Db"),
        # Repeated names sort by value, a bare name first, and stay bare.
        ("https://e.kr/p?a=2&a&a=1", "https://e.kr/p?a&a=1&a=2"),
        ("https://e.kr/p?print&id=9", "https://e.kr/p?id=9&print"),
        # Characters safe in a query value stay as they are.
        ("https://e.kr/p?next=a:b@c/d;e", "https://e.kr/p?next=a:b@c/d;e"),
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


# Fingerprints and hashes are stored with every item: a change of formula would
# make every stored item look new or updated at the next fetch, so the exact
# values are pinned here (Korean text included, for the encoding).
STORY = ("[단독] 봉준호 신작, 내년 개봉", "봉준호 감독의 신작이 내년 개봉한다. " * 20)
CONTENT = {
    "title": "부산국제영화제 라인업 발표",
    "url": "https://e.kr/a/1",
    "summary_html": "<p>열 편의 영화</p>",
    "content_html": "<p>열 편의 영화가 초청됐다.</p>",
    "image_url": "https://e.kr/i.jpg",
    "author": "김지운",
    "categories": ["festival", "영화제"],
    "published_at": datetime(2025, 11, 27, 9, 30, tzinfo=UTC),
}


def test_fingerprint_content_and_listing_hashes_are_pinned() -> None:
    assert fingerprint(*STORY) == "1e6fcfcb660819115f69b647cbd5b617"
    assert content_hash(**CONTENT) == "fdf5299234a6c14a06130e23ee089268"  # type: ignore[arg-type]
    entries = [
        RawEntry(
            guid="g1",
            link="https://e.kr/a/1",
            title="코픽: 기대작",
            summary_html="<p>요약</p>",
            content_html="<p>본문</p>",
            date_text="2025.11.27",
            published=datetime(2025, 11, 27, tzinfo=UTC),
            updated=datetime(2025, 11, 28, 1, 2, tzinfo=UTC),
            image_url="https://e.kr/i.jpg",
        ),
        RawEntry(guid=None, link=None, title=None),
    ]
    assert listing_hash(entries) == "91a76080c0dbd9262490a09a6aed8df1"


def test_fingerprint_reads_the_text_not_only_the_title() -> None:
    title = "Ko-pick: new releases"
    texts = ["First paragraph about one film.", "Another story entirely.", "", "x" * 5000]
    assert len({fingerprint(title, text) for text in texts}) == len(texts)


@pytest.mark.parametrize("before", [0, 1, 7, 150, 199, 300])
def test_fingerprint_folds_a_hangul_syllable_split_at_the_folding_window(before: int) -> None:
    # "가" written as two conjoining jamo (U+1100 U+1161) folds to the same key as
    # the precomposed syllable, also when the jamo pair straddles the edge of the
    # first window the fingerprint folds (400 characters for a 200-letter key).
    filler = "a " * 199 + " " * (1 + before % 2)
    decomposed = filler + "\u1100\u1161" + " tail" * 50
    composed = filler + "가" + " tail" * 50
    assert fingerprint("t", decomposed) == fingerprint("t", composed)
    shifted = "a " * (199 - before // 2) + "\u1100\u1161" + " tail" * 50
    assert fingerprint("t", shifted) == fingerprint("t", shifted.replace("\u1100\u1161", "가"))


@pytest.mark.parametrize(
    ("image_url", "author", "written"),
    [
        (None, None, "null,null"),
        ("https://e.kr/i.jpg", None, '"https://e.kr/i.jpg",null'),
        (None, "김지운", 'null,"김지운"'),
    ],
)
def test_content_hash_writes_a_missing_image_or_author_as_json_null(
    image_url: str | None, author: str | None, written: str
) -> None:
    # The stored hashes were made by json.dumps, which writes None as null: the
    # hashed text is spelt out here, so any other spelling of "missing" breaks it.
    text = (
        '["부산국제영화제 라인업 발표","https://e.kr/a/1","<p>열 편의 영화</p>",'
        f'"<p>열 편의 영화가 초청됐다.</p>",{written},["festival","영화제"],'
        '"2025-11-27T09:30:00+00:00"]'
    )
    fields = {**CONTENT, "image_url": image_url, "author": author}
    expected = hashlib.sha256(text.encode()).hexdigest()[:32]
    assert content_hash(**fields) == expected  # type: ignore[arg-type]
