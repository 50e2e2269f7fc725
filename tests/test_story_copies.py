"""The same story from two sources: readers get the original, whichever fetch finished first.

KoBiz publishes a Ko-pick column on its own site (with its picture); an
outlet republishes it a little later, linking to its own copy, without the
picture. Both feeds are served over real HTTP and ingested in both orders;
the published Atom feed (read with feedparser), the JSON Feed and the
composed digest must show the same copy, KoBiz's, and a feed reader that saw
the republished copy first keeps seeing one entry (same id), now the original.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

import feedparser
import pytest

from aggregator.config import Config, parse_config
from aggregator.digest import Period, build_digest
from aggregator.ingest import Ingestor
from aggregator.publish import publish_from_store
from aggregator.store import Store
from tests.support.http import FixtureServer

NOW = datetime.now(UTC).replace(microsecond=0)
TITLE = "Ko-pick: Busan keeps a long tradition of opening with Korean films"
BODY = (
    "The Busan International Film Festival has opened with a Korean film for most of its "
    "history, and this year it keeps that tradition with a debut feature. Programmers say "
    "the choice reflects the strength of new Korean directors, and the industry agrees. "
)


def rss(items: list[dict[str, str]]) -> str:
    body = "".join(
        f"<item><guid isPermaLink='false'>{escape(i['guid'])}</guid>"
        f"<title>{escape(TITLE)}</title><link>{escape(i['link'])}</link>"
        f"<pubDate>{i['date']}</pubDate><description>{escape(i['text'])}</description>"
        + (f"<media:thumbnail url='{escape(i['image'])}'/>" if i.get("image") else "")
        + "</item>"
        for i in items
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel>'
        f"<title>feed</title><link>https://example.org/</link><description>d</description>"
        f"{body}</channel></rss>"
    )


def serve(http_server: FixtureServer, *, republished_earlier: bool = True) -> None:
    """KoBiz's own feed, and an outlet's copy of the same column."""
    original_link = http_server.url("/eng/news/ko_pick.jsp?seq=512")
    # Published dates: the copy claims an *earlier* date, so the host rule, not
    # the date, must be what keeps the original.
    copy_date = NOW - timedelta(hours=5 if republished_earlier else 1)
    http_server.add(
        "/kobiz.xml",
        rss(
            [
                {
                    "guid": "kobiz-512",
                    "link": original_link,
                    "date": format_datetime(NOW - timedelta(hours=3)),
                    "text": BODY,
                    "image": http_server.url("/upload/512.jpg"),
                }
            ]
        ),
    )
    http_server.add(
        "/outlet.xml",
        rss(
            [
                {
                    "guid": "outlet-9001",
                    "link": "https://outlet.example/culture/9001",
                    "date": format_datetime(copy_date),
                    "text": BODY + "Republished from KoBiz.",
                }
            ]
        ),
    )


def config_for(http_server: FixtureServer, tmp_path: Path, extra: str = "") -> Config:
    text = (
        f"site: {{title: Test Digest, url: 'https://digest.example.org/', output_dir: "
        f"'{tmp_path / 'public'}'}}\n"
        "sections:\n"
        "  - {id: ko-pick, title: Ko-pick columns, match: {title: '^Ko-?pick'}}\n"
        "digest: {sections: [ko-pick]}\n"
        "sources:\n"
        f"  - {{id: kobiz, url: '{http_server.url('/kobiz.xml')}'}}\n"
        f"  - {{id: outlet, url: '{http_server.url('/outlet.xml')}'{extra}}}\n"
    )
    path = tmp_path / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_config(text, path=path)


def fetch(config: Config, store: Store, source_id: str) -> None:
    asyncio.run(Ingestor(config, store).run([source_id]))


def outcome(config: Config, store: Store, out: Path) -> dict[str, object]:
    """What readers see: the feed entries (feedparser), the JSON Feed and the digest."""
    publish_from_store(store, config.site, out)
    atom = feedparser.parse((out / "feed.atom").read_bytes())
    json_feed = json.loads((out / "feed.json").read_text(encoding="utf-8"))
    digest = build_digest(
        config, store, Period(start=NOW - timedelta(days=7), end=NOW + timedelta(days=1))
    )
    assert digest is not None
    return {
        "atom": [(e.link, e.get("media_thumbnail", [{}])[0].get("url")) for e in atom.entries],
        "atom_ids": [e.id for e in atom.entries],
        "json": [(i["url"], i["id"]) for i in json_feed["items"]],
        "digest": [i.url for s in digest.sections for i in s.items],
    }


@pytest.mark.parametrize("republished_earlier", [True, False])
def test_both_fetch_orders_keep_the_original(
    http_server: FixtureServer, tmp_path: Path, republished_earlier: bool
) -> None:
    serve(http_server, republished_earlier=republished_earlier)
    config = config_for(http_server, tmp_path)
    original = http_server.url("/eng/news/ko_pick.jsp?seq=512")
    seen = {}
    for order in (("kobiz", "outlet"), ("outlet", "kobiz")):
        store = Store.open(f"sqlite:///{tmp_path / ('-'.join(order) + '.db')}")
        try:
            for source_id in order:
                fetch(config, store, source_id)
            seen[order] = outcome(config, store, tmp_path / "-".join(order))
        finally:
            store.close()

    first, second = seen.values()
    for result in (first, second):
        assert result["atom"] == [(original, http_server.url("/upload/512.jpg"))]
        assert [url for url, _ in result["json"]] == [original]  # type: ignore[attr-defined]
        assert result["digest"] == [original]


def test_a_better_copy_takes_over_and_keeps_the_readers_entry_id(
    http_server: FixtureServer, store: Store, tmp_path: Path
) -> None:
    serve(http_server)
    config = config_for(http_server, tmp_path)
    out = tmp_path / "public"

    fetch(config, store, "outlet")
    before = outcome(config, store, out)
    assert before["atom"] == [("https://outlet.example/culture/9001", None)]
    fetch(config, store, "kobiz")
    after = outcome(config, store, out)

    original = http_server.url("/eng/news/ko_pick.jsp?seq=512")
    assert after["atom"] == [(original, http_server.url("/upload/512.jpg"))]
    # The reader saw the copy first: the same entry id now carries the original.
    assert after["atom_ids"] == before["atom_ids"]
    assert [i for _, i in after["json"]] == [i for _, i in before["json"]]  # type: ignore[attr-defined]
    assert after["digest"] == [original]
    [kept] = store.recent_items(10)
    [copy] = [i for i in store.find_items(title=TITLE) if i.duplicate_of is not None]
    assert copy.duplicate_of == kept.id and copy.source_id == "outlet"
    # The story is not new again: it keeps the time it was first seen.
    assert kept.first_seen_at == copy.first_seen_at


@pytest.mark.parametrize("order", [("kobiz", "outlet"), ("outlet", "kobiz")])
def test_priority_decides_between_two_copies_of_someone_elses_story(
    http_server: FixtureServer, tmp_path: Path, order: tuple[str, str]
) -> None:
    # Both copies link away from their own feed's host: neither owns the story.
    # The outlet has the higher priority, so its copy wins though published later.
    serve(http_server, republished_earlier=False)
    http_server.add(
        "/kobiz.xml",
        rss(
            [
                {
                    "guid": "kobiz-512",
                    "link": "https://mirror.example/512",
                    "date": format_datetime(NOW - timedelta(hours=3)),
                    "text": BODY,
                }
            ]
        ),
    )
    config = config_for(http_server, tmp_path, ", priority: 5")
    store = Store.open(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        for source_id in order:
            fetch(config, store, source_id)
        result = outcome(config, store, tmp_path / "out")
    finally:
        store.close()
    assert result["atom"] == [("https://outlet.example/culture/9001", None)]
    assert result["digest"] == ["https://outlet.example/culture/9001"]


def test_priority_must_be_a_number(tmp_path: Path) -> None:
    from aggregator.errors import ConfigError

    text = "sources:\n  - {id: a, url: 'https://a.example/feed', priority: high}\n"
    with pytest.raises(ConfigError, match=r"feeds\.yaml:2.*priority"):
        parse_config(text, path=tmp_path / "feeds.yaml")


@pytest.mark.parametrize("order", [("kobiz", "outlet"), ("outlet", "kobiz")])
@pytest.mark.parametrize("outlet_first", [True, False])
def test_without_owner_or_priority_the_earliest_published_copy_is_kept(
    http_server: FixtureServer, tmp_path: Path, order: tuple[str, str], outlet_first: bool
) -> None:
    serve(http_server, republished_earlier=outlet_first)  # outlet: 5 h or 1 h ago
    http_server.add(
        "/kobiz.xml",
        rss(
            [
                {
                    "guid": "kobiz-512",
                    "link": "https://mirror.example/512",  # not KoBiz's own host either
                    "date": format_datetime(NOW - timedelta(hours=3)),
                    "text": BODY,
                }
            ]
        ),
    )
    config = config_for(http_server, tmp_path)
    store = Store.open(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        for source_id in order:
            fetch(config, store, source_id)
        result = outcome(config, store, tmp_path / "out")
    finally:
        store.close()
    earliest = (
        "https://outlet.example/culture/9001" if outlet_first else "https://mirror.example/512"
    )
    assert [link for link, _ in result["atom"]] == [earliest]  # type: ignore[attr-defined]
    assert result["digest"] == [earliest]
