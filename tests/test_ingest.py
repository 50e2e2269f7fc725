"""Ingest end to end: a real HTTP server on 127.0.0.1, real parsing, a real store.

Every test writes a small feeds.yaml pointing at the fixture server, runs one
or more ingest passes and looks at what the store holds afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import pytest

from aggregator.config import Config, load_config, parse_config
from aggregator.ingest import Ingestor
from aggregator.models import IngestOutcome, IngestStats
from aggregator.store import Store
from tests.support.http import FixtureServer

NOW = datetime.now(UTC).replace(microsecond=0)


def rss(items: list[tuple[str, str, str]], *, title: str = "Korean Cinema Today") -> str:
    """An RSS 2.0 document; items are (guid, title, description)."""
    body = []
    for n, (guid, item_title, text) in enumerate(items):
        date = format_datetime(NOW - timedelta(hours=n + 1))
        body.append(
            f"<item><guid isPermaLink='false'>{escape(guid)}</guid>"
            f"<title>{escape(item_title)}</title>"
            f"<link>https://news.example.kr/{escape(guid)}</link>"
            f"<pubDate>{date}</pubDate><description>{escape(text)}</description></item>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        f"<title>{escape(title)}</title><link>https://news.example.kr/</link>"
        f"<description>x</description>{''.join(body)}</channel></rss>"
    )


def kobiz_listing(rows: list[tuple[int, str, str]], *, page: int = 1, next_page: str = "") -> str:
    """A listing page shaped like the Korean Film Biz Zone Ko-pick board."""
    lis = []
    for seq, title, excerpt in rows:
        href = (
            f"/eng/news/ko_pick.jsp?blbdComCd=601029&amp;mode=VIEW&amp;pageIndex={page}"
            f"&amp;pageRowSize=10&amp;seq={seq}&amp;returnUrl=&amp;searchKeyword="
        )
        day = (NOW - timedelta(days=seq % 20)).astimezone(UTC)
        lis.append(
            f'<li><a class="thumb" href="{href}"><img src="/upload/{seq}.jpg" alt=""></a>'
            f'<p class="tit"><a href="{href}">{title}</a></p>'
            f'<p class="txt">{excerpt}</p><span class="date">{day:%Y.%m.%d}</span></li>'
        )
    nav = f'<a class="next" href="{next_page}">Next</a>' if next_page else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Ko-pick</title>'
        '</head><body><div class="board"><ul class="list">'
        + "".join(lis)
        + f'</ul><div class="paging">{nav}</div></div></body></html>'
    )


def make_config(tmp_path: Path, sources_yaml: str) -> Config:
    text = (
        "site: {title: Test Digest, url: 'http://127.0.0.1:9/', timezone: Asia/Seoul}\n"
        "defaults: {interval: 1h, timeout: 5s}\n"
        "sections:\n"
        "  - {id: ko-pick, title: Ko-pick columns, match: {title: '^Ko-?pick'}}\n"
        "sources:\n" + sources_yaml
    )
    path = tmp_path / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_config(text, path=path)


def run(config: Config, store: Store, **kwargs: object) -> dict[str, IngestStats]:
    store.sync_sources(config.sources)
    stats = asyncio.run(Ingestor(config, store).run(**kwargs))  # type: ignore[arg-type]
    return {s.source_id: s for s in stats}


def test_second_fetch_sends_validators_and_stores_nothing_new(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    feed = rss([("a1", "Exhuma tops box office", "Text one."), ("a2", "Second", "Text two.")])
    http_server.add("/feed.xml", feed, etag='"v1"', last_modified="Mon, 23 Nov 2026 00:00:00 GMT")
    config = make_config(tmp_path, f"  - {{id: news, url: '{http_server.url('/feed.xml')}'}}\n")

    first = run(config, store)
    second = run(config, store)

    assert (first["news"].outcome, first["news"].new) == (IngestOutcome.OK, 2)
    assert second["news"].outcome == IngestOutcome.NOT_MODIFIED
    again = http_server.requests_for("/feed.xml")[-1]
    assert again.headers.get("If-None-Match") == '"v1"'
    assert again.headers.get("If-Modified-Since") == "Mon, 23 Nov 2026 00:00:00 GMT"
    assert store.count_items() == 2


def test_changed_entry_is_updated_not_duplicated(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    http_server.add("/feed.xml", rss([("a1", "Exhuma tops box office", "First text.")]))
    config = make_config(tmp_path, f"  - {{id: news, url: '{http_server.url('/feed.xml')}'}}\n")
    run(config, store)

    http_server.add("/feed.xml", rss([("a1", "Exhuma tops box office again", "New text.")]))
    stats = run(config, store)

    assert (stats["news"].new, stats["news"].updated) == (0, 1)
    [item] = store.recent_items(10)
    assert item.title == "Exhuma tops box office again"
    assert item.text == "New text."


def test_same_story_in_two_feeds_is_one_item(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    story = "Park Chan-wook's No Other Choice opens in Seoul"
    http_server.add("/a.xml", rss([("x1", story, "The film opened on Wednesday.")], title="A"))
    http_server.add("/b.xml", rss([("y9", story, "The film opened on Wednesday.")], title="B"))
    config = make_config(
        tmp_path,
        f"  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n"
        f"  - {{id: b, url: '{http_server.url('/b.xml')}'}}\n",
    )

    run(config, store, source_ids=["a"])
    stats = run(config, store, source_ids=["b"])

    assert stats["b"].duplicates == 1
    assert [i.source_id for i in store.recent_items(10)] == ["a"]


def test_dead_and_malformed_sources_do_not_stop_the_others(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    http_server.add("/good.xml", rss([("g1", "Good story", "Fine.")]))
    http_server.add(
        "/broken.xml", "<html><body>Maintenance</body></html>", content_type="text/html"
    )
    http_server.add("/gone.xml", "gone", status=500)
    sloppy = rss([("s1", "Sloppy but readable", "Text & more.")]).replace(
        "Text &amp; more.", "Text & more."
    )
    http_server.add("/sloppy.xml", sloppy)
    config = make_config(
        tmp_path,
        f"  - {{id: good, url: '{http_server.url('/good.xml')}'}}\n"
        f"  - {{id: broken, url: '{http_server.url('/broken.xml')}'}}\n"
        f"  - {{id: gone, url: '{http_server.url('/gone.xml')}'}}\n"
        f"  - {{id: sloppy, url: '{http_server.url('/sloppy.xml')}'}}\n"
        "  - {id: nowhere, url: 'http://127.0.0.1:1/feed.xml'}\n",
    )

    stats = run(config, store)

    assert stats["good"].outcome == IngestOutcome.OK and stats["good"].new == 1
    assert stats["sloppy"].outcome == IngestOutcome.OK and stats["sloppy"].new == 1
    for dead in ("broken", "gone", "nowhere"):
        assert stats[dead].outcome == IngestOutcome.ERROR
        state = store.source_state(dead)
        assert state is not None and state.error_count == 1 and state.last_error
        assert state.next_fetch_at is not None and state.next_fetch_at > NOW
    assert "500" in (stats["gone"].error or "")
    assert "/gone.xml" in (stats["gone"].error or "")


def test_kobiz_listing_is_scraped_with_stable_identity(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    rows = [
        (98, "Ko-pick: Most Anticipated Korean Films of 2026", "Ten titles to watch. More."),
        (
            97,
            "2026년 가장 기대되는 한국 영화",
            "봉준호 감독의 신작이 내년 개봉한다. 배급사는 밝혔다.",
        ),
    ]
    http_server.add("/eng/news/ko_pick.jsp", kobiz_listing(rows), content_type="text/html")
    config = make_config(
        tmp_path,
        f"""  - id: kobiz-kopick
    type: html
    url: '{http_server.url("/eng/news/ko_pick.jsp")}?blbdComCd=601029'
    section: ko-pick
    identity_params: [blbdComCd, seq, mode]
    select: {{item: "ul.list > li", title: "p.tit a", summary: "p.txt", date: "span.date",
              image: "img@src", next_page: "a.next@href"}}
""",
    )

    stats = run(config, store)

    assert stats["kobiz-kopick"].new == 2
    items = {i.title: i for i in store.recent_items(10)}
    english = items["Ko-pick: Most Anticipated Korean Films of 2026"]
    assert english.canonical_url.endswith("ko_pick.jsp?blbdComCd=601029&mode=VIEW&seq=98")
    assert "pageIndex" not in english.canonical_url
    assert english.image_url == http_server.url("/upload/98.jpg")
    assert english.section == "ko-pick"
    korean = items["2026년 가장 기대되는 한국 영화"]
    assert korean.text.startswith("봉준호 감독의 신작이")

    # The same article found on page 2 with different paging parameters is one item.
    http_server.add(
        "/eng/news/ko_pick.jsp", kobiz_listing(rows[:1], page=2), content_type="text/html"
    )
    again = run(config, store)
    assert again["kobiz-kopick"].new == 0
    assert store.count_items() == 2


def test_unchanged_listing_without_validators_counts_as_not_modified(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    page = kobiz_listing([(5, "Ko-pick: A quiet week", "Nothing moved.")])
    http_server.add("/list", page, content_type="text/html")
    config = make_config(
        tmp_path,
        f"  - {{id: k, type: html, url: '{http_server.url('/list')}',"
        ' select: {item: "ul.list > li", title: "p.tit a"}}\n',
    )

    run(config, store)
    second = run(config, store)

    assert second["k"].outcome == IngestOutcome.NOT_MODIFIED


def test_paging_follows_next_until_known_items(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    http_server.add(
        "/list/1",
        kobiz_listing(
            [(30, "Ko-pick: Thirty", "x."), (29, "Ko-pick: Twenty-nine", "x.")], next_page="/list/2"
        ),
        content_type="text/html",
    )
    http_server.add(
        "/list/2",
        kobiz_listing([(28, "Ko-pick: Twenty-eight", "x.")], page=2, next_page="/list/3"),
        content_type="text/html",
    )
    http_server.add(
        "/list/3",
        kobiz_listing([(27, "Ko-pick: Twenty-seven", "x.")], page=3, next_page="/list/4"),
        content_type="text/html",
    )
    config = make_config(
        tmp_path,
        f"  - {{id: k, type: html, url: '{http_server.url('/list/1')}', max_pages: 3,"
        " identity_params: [seq],"
        ' select: {item: "ul.list > li", title: "p.tit a", next_page: "a.next@href"}}\n',
    )

    stats = run(config, store)

    assert stats["k"].new == 4  # page 1, 2 and 3; page 4 is beyond max_pages
    assert http_server.count("/list/4") == 0


def test_selector_that_stops_matching_marks_source_broken_and_keeps_items(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    http_server.add(
        "/list",
        kobiz_listing([(1, "Ko-pick: One", "x."), (2, "Ko-pick: Two", "y.")]),
        content_type="text/html",
    )
    config = make_config(
        tmp_path,
        f"  - {{id: kobiz-columns, type: html, url: '{http_server.url('/list')}',"
        ' select: {item: "ul.list > li", title: "p.tit a"}}\n',
    )
    run(config, store)

    redesigned = kobiz_listing([(1, "One", "x."), (2, "Two", "y.")]).replace(
        'class="tit"', 'class="title"'
    )
    http_server.add("/list", redesigned, content_type="text/html")
    stats = run(config, store)

    assert stats["kobiz-columns"].outcome == IngestOutcome.ERROR
    state = store.source_state("kobiz-columns")
    assert state is not None and state.broken_reason
    assert 'kobiz-columns: selector "p.tit a" matched 0 of 2 items' in state.broken_reason
    assert store.count_items() == 2


def test_permanent_redirect_updates_the_stored_url(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    http_server.add("/new.xml", rss([("r1", "Moved feed", "Text.")]))
    http_server.redirect("/old.xml", "/new.xml", status=301)
    config = make_config(tmp_path, f"  - {{id: moved, url: '{http_server.url('/old.xml')}'}}\n")

    run(config, store)
    run(config, store)

    state = store.source_state("moved")
    assert state is not None and state.url == http_server.url("/new.xml")
    assert http_server.count("/old.xml") == 1  # the second pass went straight to the new URL


@pytest.mark.slow
def test_many_sources_through_the_process_pool(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    lines = []
    for n in range(12):
        http_server.add(
            f"/f{n}.xml", rss([(f"f{n}-{k}", f"Story {n}-{k}", "x.") for k in range(5)])
        )
        lines.append(f"  - {{id: f{n}, url: '{http_server.url(f'/f{n}.xml')}'}}\n")
    config = make_config(tmp_path, "".join(lines))

    stats = run(config, store)

    assert all(s.outcome == IngestOutcome.OK for s in stats.values())
    assert store.count_items() == 60


def test_week_later_shift_to_page_two_is_one_new_item_and_no_duplicate(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    week1 = [
        (98, "Ko-pick: Ninety-eight", "a."),
        (97, "Ko-pick: Ninety-seven", "b."),
        (96, "Ko-pick: Ninety-six", "c."),
    ]
    http_server.add("/board", kobiz_listing(week1), content_type="text/html")
    config = make_config(
        tmp_path,
        f"  - {{id: kobiz-columns, type: html, url: '{http_server.url('/board')}', max_pages: 3,"
        " identity_params: [blbdComCd, seq, mode],"
        ' select: {item: "ul.list > li", title: "p.tit a", next_page: "a.next@href"}}\n',
    )
    assert run(config, store)["kobiz-columns"].new == 3

    # A week later a new column pushed the oldest one to page 2 (pageIndex=2 in its link).
    week2 = [(99, "Ko-pick: Ninety-nine", "d."), *week1[:2]]
    http_server.add("/board", kobiz_listing(week2, next_page="/board2"), content_type="text/html")
    http_server.add("/board2", kobiz_listing(week1[2:], page=2), content_type="text/html")
    stats = run(config, store)["kobiz-columns"]

    assert (stats.new, stats.duplicates) == (1, 0)
    assert store.count_items() == 4
    assert http_server.count("/board2") == 0  # page 1 already held known items: no paging


def test_shipped_kobiz_sources_work_against_a_local_copy(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "sources"
    http_server.add(
        "/eng/news/ko_pick.jsp",
        (fixtures / "kobiz_kopick.html").read_bytes(),
        content_type="text/html; charset=utf-8",
    )
    shipped = load_config(Path(__file__).parent.parent / "feeds.yaml")
    kopick = replace(
        shipped.source("kobiz-kopick"),
        url=http_server.url("/eng/news/ko_pick.jsp?blbdComCd=601029"),
    )
    config = replace(shipped, sources=(kopick,), database_url=store.engine.url.render_as_string())

    stats = run(config, store)["kobiz-kopick"]

    assert stats.outcome == IngestOutcome.OK and stats.new == 4
    items = {i.title: i for i in store.recent_items(10)}
    column = items["Ko-pick: Most Anticipated Korean Films of 2026"]
    assert column.canonical_url == http_server.url(
        "/eng/news/ko_pick.jsp?blbdComCd=601029&mode=VIEW&seq=98"
    )
    assert column.section == "ko-pick"
    assert column.published_at.astimezone(ZoneInfo("Asia/Seoul")).date().isoformat() == (
        "2025-11-27"
    )
    assert "2026년 가장 기대되는 한국 영화" in items


def test_try_source_prints_what_a_selector_extracts_and_writes_nothing(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    page = kobiz_listing([(7, "Ko-pick: Seven", "Text seven."), (6, "여섯 번째 칼럼", "본문.")])
    http_server.add("/list", page, content_type="text/html")
    env = {**os.environ, "COLUMNS": "200"}
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregator",
            "try-source",
            http_server.url("/list"),
            "--select",
            "item=ul.list > li",
            "--select",
            "title=p.tit a",
            "--select",
            "date=span.date",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        "2 items" in ok.stdout and "Ko-pick: Seven" in ok.stdout and "여섯 번째 칼럼" in ok.stdout
    )

    broken = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregator",
            "try-source",
            http_server.url("/list"),
            "--select",
            "item=ul.list > li",
            "--select",
            "title=h2.nothing",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert broken.returncode == 1
    assert 'selector "h2.nothing" matched 0 of 2 items' in broken.stderr
    assert not list(tmp_path.glob("**/*.db"))
