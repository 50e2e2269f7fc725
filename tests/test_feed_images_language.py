"""Pictures and languages in the published feeds, as feed readers parse them.

An entry with an image carries it in Atom (Media RSS ``media:thumbnail`` and
``media:content``, plus an ``enclosure`` link when the type is known), as
feedparser and Debian's newsboat read them; an entry whose text is Korean is
marked ``xml:lang="ko"`` in Atom and ``language: ko`` in JSON Feed, while
English entries inherit the feed's ``en``. Languages come from normalize:
detected from the text when the source does not say.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest

from aggregator.models import Item, RawEntry, Source
from aggregator.normalize import normalize
from aggregator.store import Store
from aggregator.web.app import WebContext
from tests.test_publish import make_item, run_publish, save, site_for
from tests.test_reader_newsboat import Newsboat, RequestLog, app_and_log
from tests.test_web_feeds import LiveServer, publish_now

__all__ = ["app_and_log"]  # the newsboat fixture, used below

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
KOBIZ = Source(id="kobiz", url="https://www.koreanfilm.or.kr/eng/news/list.jsp", type="html")


def korean_item(n: int, *, image: str | None = None) -> Item:
    """An item normalized from a Korean listing entry that declares no language."""
    item = normalize(
        KOBIZ,
        RawEntry(
            guid=f"ko-{n}",
            link=f"https://www.koreanfilm.or.kr/kor/news/{n}",
            title=f"부산국제영화제 개막작 {n}편 발표",
            summary_html="<p>올해 부산국제영화제는 한국 감독의 데뷔작으로 막을 연다. CJ ENM.</p>",
            image_url=image,
        ),
        sections=(),
        now=NOW,
        fallback_base=KOBIZ.url,
    )
    return replace(item, source_id="kobiz")


@pytest.mark.parametrize(
    ("image", "media_type"),
    [
        ("https://img.example.org/still/42.jpg", "image/jpeg"),
        ("https://img.example.org/poster.PNG?w=600", "image/png"),
        ("https://cdn.example.org/resize/abc123", None),  # no type known: no enclosure
    ],
)
def test_atom_entries_carry_their_image(
    store: Store, tmp_path: Path, image: str, media_type: str | None
) -> None:
    site = site_for(tmp_path / "out")
    save(store, "kofic", [replace(make_item("kofic", 1), image_url=image), make_item("kofic", 2)])
    run_publish(store, site)

    parsed = feedparser.parse((tmp_path / "out" / "feed.atom").read_bytes())
    assert not parsed.bozo
    by_link = {e.link: e for e in parsed.entries}
    with_image = by_link["https://kofic.example/articles/1"]
    assert with_image.media_thumbnail == [{"url": image}]
    assert with_image.media_content[0]["url"] == image
    assert with_image.media_content[0]["medium"] == "image"
    if media_type:
        assert [(e.href, e.type) for e in with_image.enclosures] == [(image, media_type)]
    else:
        assert with_image.enclosures == []
    without = by_link["https://kofic.example/articles/2"]
    assert "media_thumbnail" not in without and without.enclosures == []
    json_items = json.loads((tmp_path / "out" / "feed.json").read_text(encoding="utf-8"))["items"]
    assert [i.get("image") for i in json_items] == [None, image]


@pytest.mark.parametrize("count", [1, 3])
def test_korean_entries_are_marked_korean_in_both_feeds(
    store: Store, tmp_path: Path, count: int
) -> None:
    site = site_for(tmp_path / "out")
    save(store, "kobiz", [korean_item(n) for n in range(count)])
    save(store, "kofic", [make_item("kofic", 1)])
    run_publish(store, site)

    parsed = feedparser.parse((tmp_path / "out" / "feed.atom").read_bytes())
    languages = {e.link: e.title_detail.language for e in parsed.entries}
    assert languages.pop("https://kofic.example/articles/1") == "en"  # inherited from the feed
    assert set(languages.values()) == {"ko"} and len(languages) == count
    json_items = json.loads((tmp_path / "out" / "feed.json").read_text(encoding="utf-8"))["items"]
    assert {i["url"]: i.get("language") for i in json_items} == {
        **{link: "ko" for link in languages},
        "https://kofic.example/articles/1": None,
    }


def test_newsboat_reads_entries_with_media_elements(
    app_and_log: tuple[WebContext, RequestLog], tmp_path: Path
) -> None:
    # newsboat 2.21 stores only podcast (audio/video) enclosures, so the image
    # itself is not in its cache; what must hold is that the Media RSS
    # namespace and the enclosure link leave the entry whole for it.
    ctx, log = app_and_log
    image = "https://img.example.org/still/77.jpg"
    save(ctx.store, "kobiz", [replace(make_item("kobiz", 300), image_url=image)])
    publish_now(ctx)
    home = tmp_path / "newsboat"
    home.mkdir()
    with LiveServer(log) as server:
        reader = Newsboat(home, server.url("/feed.atom"))
        reader.run("reload")
    rows = {row["url"]: row for row in reader.items()}
    assert len(rows) == 9
    entry = rows["https://kobiz.example/articles/300"]
    assert entry["title"] == "kobiz story 300: 부산국제영화제 line-up"
    assert "Story <b>300</b>" in entry["content"]


@pytest.mark.parametrize(
    ("configured", "declared", "title", "text", "expected"),
    [
        (
            None,
            "en",
            "봉준호 신작 개봉",
            "CJ ENM은 내년 개봉한다고 밝혔다.",
            "ko",
        ),  # mislabelled feed
        (None, None, "부산국제영화제 개막", "올해 개막작이 발표됐다.", "ko"),  # a page with no lang
        (None, "en-US", "Exhuma tops box office", "The occult thriller led again.", "en-US"),
        ("en-GB", "en-US", "Exhuma tops box office", "The occult thriller led.", "en-GB"),
        (None, "ko", "Exhuma tops box office", "The occult thriller led again.", None),
        (None, None, "Exhuma tops box office", "The occult thriller led again.", None),
    ],
)
def test_item_language_from_text_source_or_feed(
    configured: str | None, declared: str | None, title: str, text: str, expected: str | None
) -> None:
    source = replace(KOBIZ, language=configured)
    entry = RawEntry(
        guid="1",
        link="https://www.koreanfilm.or.kr/eng/news/1",
        title=title,
        summary_html=f"<p>{text}</p>",
        language=declared,
    )
    item = normalize(source, entry, sections=(), now=NOW, fallback_base=KOBIZ.url)
    assert item.language == expected


def test_a_source_language_must_be_a_language_tag(tmp_path: Path) -> None:
    from aggregator.config import parse_config
    from aggregator.errors import ConfigError

    text = "sources:\n  - {id: a, url: 'https://a.example/feed', language: 'Korean!'}\n"
    with pytest.raises(ConfigError, match=r"feeds\.yaml:2.*language"):
        parse_config(text, path=tmp_path / "feeds.yaml")


def test_items_stored_before_detection_are_marked_korean_by_the_migration(
    tmp_path: Path,
) -> None:
    from alembic import command

    from aggregator.store.engine import _alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
    store = Store(engine)
    korean = replace(
        make_item("kobiz", 1, title="부산국제영화제 개막작 발표"), text="올해 개막작이다."
    )
    english = make_item("kofic", 2)
    save(store, "kobiz", [replace(korean, language=None)])
    save(store, "kofic", [english])
    store.close()

    migrated = Store.open(url)  # applies the rest
    try:
        languages = {i.source_id: i.language for i in migrated.recent_items(10)}
    finally:
        migrated.close()
    assert languages == {"kobiz": "ko", "kofic": None}
