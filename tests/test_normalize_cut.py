"""Excerpts a listing page cut mid-word ("…traditio...") reach readers as whole words.

Generated English and Korean texts are cut at every kind of position, given
the site's "..." (or ". . .", "[...]"), and normalized; what comes out must end
at a word boundary of the original text, with one "…", and stay that way when
normalized again.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.digest import Period, build_digest
from aggregator.models import RawEntry, Source
from aggregator.normalize import normalize, trim_cut_html, trim_cut_text
from aggregator.publish import publish_from_store
from aggregator.store import Store
from tests.support.http import FixtureServer
from tests.test_ingest import kobiz_listing, make_config, run

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
SOURCE = Source(id="kobiz", url="https://www.koreanfilm.or.kr/eng/news/list.jsp", type="html")
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENGLISH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
KOREAN = st.text(alphabet=[chr(c) for c in range(0xAC00, 0xAC00 + 400)], min_size=1, max_size=6)
MARKS = st.sampled_from(["...", ". . .", "....", " [...]", "[…]", "……"])


def _words_of(text: str) -> list[str]:
    return text.split(" ")


def _is_whole_word_prefix(result: str, original: str) -> bool:
    """``result`` minus its "…" is ``original`` up to the end of some word."""
    head = result.removesuffix("…")
    if not original.startswith(head):
        return False
    rest = original[len(head) :]
    return rest == "" or not rest[0].isalnum()


@FAST
@given(
    words=st.one_of(
        st.lists(ENGLISH, min_size=4, max_size=40), st.lists(KOREAN, min_size=4, max_size=40)
    ),
    where=st.floats(min_value=0.3, max_value=0.999),
    mark=MARKS,
)
def test_property_a_cut_excerpt_ends_on_a_whole_word(
    words: list[str], where: float, mark: str
) -> None:
    original = " ".join(words)
    cut = max(1, int(len(original) * where))
    shown = original[:cut] + mark
    result = trim_cut_text(shown)
    assert result.endswith("…") and not result.endswith("……")
    assert "..." not in result and "[" not in result
    glued = not mark.startswith(" ")  # "word [...]": the site says the word is whole
    if glued and cut < len(original) and original[cut - 1].isalnum() and original[cut].isalnum():
        # The site cut inside a word: the fragment is gone, unless the text
        # is that one word.
        assert _is_whole_word_prefix(result, original) or " " not in original[:cut]
    assert trim_cut_text(result) == result  # a second pass changes nothing


@FAST
@given(
    words=st.one_of(
        st.lists(ENGLISH, min_size=6, max_size=30), st.lists(KOREAN, min_size=6, max_size=30)
    ),
    where=st.floats(min_value=0.5, max_value=0.99),
)
def test_property_normalize_never_shows_the_fragment(words: list[str], where: float) -> None:
    original = " ".join(words)
    cut = int(len(original) * where)
    while cut < len(original) and not (original[cut - 1].isalnum() and original[cut].isalnum()):
        cut += 1
    if cut >= len(original) - 1:
        return
    fragment_start = original.rfind(" ", 0, cut) + 1
    entry = RawEntry(
        guid="1",
        link="https://www.koreanfilm.or.kr/eng/news/1",
        title="Ko-pick",
        summary_html=f"<p>{original[:cut]}...</p>",
    )
    item = normalize(SOURCE, entry, sections=(), now=NOW, fallback_base=SOURCE.url)
    if fragment_start < 2:
        return  # the whole text is one cut word: nothing else to show
    for shown in (item.text, item.excerpt, item.summary_html or item.content_html):
        assert "..." not in shown
        assert original[:cut] + "…" not in shown  # the text up to the fragment, cut
    assert item.text.endswith("…")
    assert _is_whole_word_prefix(item.text, original)
    again = normalize(
        SOURCE,
        RawEntry(guid=item.guid, link=item.url, title=item.title, summary_html=item.summary_html),
        sections=(),
        now=NOW,
        fallback_base=SOURCE.url,
    )
    assert again.text == item.text and again.summary_html == item.summary_html


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        ("Ko-pick on the festival's long traditio...", "Ko-pick on the festival's long…"),
        ("The film is certainly il...", "The film is certainly…"),
        ("Shot on location in sma...", "Shot on location in…"),
        ("Bong returns with a new film, in sma. . .", "Bong returns with a new film, in…"),
        ("Bong returns with a new film, sma...", "Bong returns with a new film…"),
        ("봉준호 감독이 신작으로 돌아왔습니...", "봉준호 감독이 신작으로…"),
        ("Director Kim talks about the film [...]", "Director Kim talks about the film…"),
        ("A whole sentence with no cut.", "A whole sentence with no cut."),
        ("The ending stays as the writer left it…", "The ending stays as the writer left it…"),
    ],
)
def test_kobiz_style_cuts(shown: str, expected: str) -> None:
    assert trim_cut_text(shown) == expected


def test_cut_inside_markup_keeps_tags_and_entities() -> None:
    assert (
        trim_cut_html("<p>Tom &amp; Jerry star in a long traditio...</p>")
        == "<p>Tom &amp; Jerry star in a long…</p>"
    )
    assert trim_cut_html("<p>Read <b>this</b>...</p>") == "<p>Read <b>this</b>...</p>"


def test_a_kobiz_board_with_cut_excerpts_reaches_feed_and_digest_in_whole_words(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    """The real path: listing page over HTTP → ingest → Atom (feedparser) and the digest."""
    rows = [
        (101, "Ko-pick: A long tradition", "Busan keeps its long traditio..."),
        (102, "Ko-pick: Small budgets", "Shot in sma..."),
        (103, "Ko-pick: Critics", "The film is certainly il..."),
        (104, "부산의 전통", "부산국제영화제는 오랜 전통을 이어가고 있습니..."),
    ]
    http_server.add("/eng/news/ko_pick.jsp", kobiz_listing(rows), content_type="text/html")
    config = make_config(
        tmp_path,
        f"""  - id: kobiz-kopick
    type: html
    url: '{http_server.url("/eng/news/ko_pick.jsp")}?blbdComCd=601029'
    section: ko-pick
    identity_params: [blbdComCd, seq, mode]
    select: {{item: "ul.list > li", title: "p.tit a", summary: "p.txt", date: "span.date"}}
""",
    )
    run(config, store)
    out = tmp_path / "public"
    publish_from_store(store, replace(config.site, output_dir=str(out)), out)
    atom = feedparser.parse((out / "feed.atom").read_bytes())
    digest = build_digest(
        config,
        store,
        Period(start=datetime.now(UTC) - timedelta(days=1), end=datetime.now(UTC) + timedelta(1)),
    )
    assert digest is not None

    shown = {e.title: (e.summary, e.content[0].value) for e in atom.entries}
    in_digest = {i.title: i.excerpt for s in digest.sections for i in s.items}
    expected = {
        "Ko-pick: A long tradition": "Busan keeps its long…",
        "Ko-pick: Small budgets": "Shot in…",
        "Ko-pick: Critics": "The film is certainly…",
        "부산의 전통": "부산국제영화제는 오랜 전통을 이어가고…",
    }
    for title, text in expected.items():
        summary, content = shown[title]
        assert summary == text and in_digest[title] == text
        assert text in content and "..." not in content


@pytest.mark.parametrize("korean", [False, True])
def test_a_full_article_ending_in_dots_is_left_as_written(korean: bool) -> None:
    sentence = "봉준호 감독은 다음 작품을 준비 중이다. " if korean else "The director is at work. "
    ending = "그리고..." if korean else "And then..."
    body = sentence * (1200 // len(sentence) + 1) + ending
    entry = RawEntry(
        guid="1", link="https://outlet.example/1", title="Long read", content_html=f"<p>{body}</p>"
    )
    item = normalize(SOURCE, entry, sections=(), now=NOW, fallback_base=SOURCE.url)
    assert item.text.endswith(ending) and item.content_html.endswith(f"{ending}</p>")
