"""aggregator.publish: the Atom feed and JSON Feed written from a real store, and the hub ping."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import feedparser
import lxml.etree
import pytest

from aggregator.models import Item, SectionRule, Site, Source
from aggregator.publish import (
    ATOM_FILENAME,
    JSON_FEED_VERSION,
    JSON_FILENAME,
    PING_STATE_FILENAME,
    PublishResult,
    entry_id,
    feed_urls,
    ping_pending,
    publish_from_store,
)
from aggregator.store import Store
from tests.support.http import FixtureServer, unused_port

ATOM_NS = "http://www.w3.org/2005/Atom"
A = "{" + ATOM_NS + "}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

SOURCES = (
    Source(id="kofic", url="https://kofic.example/news/rss.xml", title="KOFIC News"),
    Source(id="kobiz", url="https://kobiz.example/kopick", title="KoBiz Ko-pick", type="html"),
)
SECTIONS = (SectionRule(id="ko-pick", title="Ko-pick columns"),)
BASE_TIME = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def make_item(
    source_id: str,
    n: int,
    *,
    title: str | None = None,
    content_html: str | None = None,
    published_at: datetime | None = None,
    updated_at: datetime | None = None,
    section: str | None = None,
    canonical_url: str | None = None,
) -> Item:
    """A normalized item; ``n`` orders publication (higher is newer)."""
    title = title or f"{source_id} story {n}: 부산국제영화제 line-up"
    content_html = content_html or f"<p>Story <b>{n}</b> from {source_id}.</p>"
    published_at = published_at or BASE_TIME + timedelta(hours=n)
    updated_at = updated_at or published_at
    url = f"https://{source_id}.example/articles/{n}"
    digest = hashlib.sha256(f"{title}|{content_html}|{updated_at}".encode()).hexdigest()
    return Item(
        source_id=source_id,
        guid=f"{url}#guid",
        url=url,
        canonical_url=canonical_url or url,
        title=title,
        summary_html=f"<p>Summary {n}</p>",
        content_html=content_html,
        text=f"Story {n} from {source_id}.",
        excerpt=f"Story {n} from {source_id}.",
        fingerprint=f"fp-{source_id}-{n}",
        content_hash=digest,
        published_at=published_at,
        updated_at=updated_at,
        author="Kim Ji-seok" if n % 2 else None,
        categories=("Festivals",),
        section=section,
    )


def save(store: Store, source_id: str, items: Sequence[Item]) -> None:
    store.sync_sources(SOURCES)
    store.save_items(
        source_id, items, fetched_at=BASE_TIME, next_fetch_at=BASE_TIME + timedelta(hours=1)
    )


def fill(store: Store, count: int = 4) -> None:
    """``count`` items per source; every third one of KOFIC's is a Ko-pick column."""
    save(
        store,
        "kofic",
        [make_item("kofic", n, section="ko-pick" if n % 3 == 0 else None) for n in range(count)],
    )
    save(store, "kobiz", [make_item("kobiz", n + 100) for n in range(count)])


def site_for(out_dir: Path, **changes: object) -> Site:
    return Site(
        title="Korean Film Digest",
        url="https://digest.example.org/",
        language="en",
        output_dir=str(out_dir),
        **changes,  # type: ignore[arg-type]
    )


def run_publish(store: Store, site: Site) -> PublishResult:
    sections = {s.id: s.title for s in SECTIONS}
    return publish_from_store(store, site, Path(site.output_dir), sections=sections)


def atom_root(path: Path) -> lxml.etree._Element:
    # Strict: no recover=True, so any well-formedness error raises.
    parser = lxml.etree.XMLParser(recover=False, resolve_entities=False, no_network=True)
    return lxml.etree.fromstring(path.read_bytes(), parser)


def entries_by_id(path: Path) -> dict[str, lxml.etree._Element]:
    return {e.findtext(A + "id"): e for e in atom_root(path).iter(A + "entry")}


# ------------------------------------------------------------------ validity


def test_atom_has_every_element_rfc4287_requires(store: Store, tmp_path: Path) -> None:
    fill(store)
    site = site_for(tmp_path, hub_url="https://hub.example/")
    result = run_publish(store, site)
    assert result.changed and result.item_count == 8
    assert result.atom_path == tmp_path / "feed.atom"
    root = atom_root(result.atom_path)
    ElementTree.fromstring(result.atom_path.read_bytes())  # the stdlib parser agrees

    assert root.tag == A + "feed"
    assert root.get(XML_LANG) == "en"
    assert root.findtext(A + "id")
    assert root.findtext(A + "title") == "Korean Film Digest"
    assert RFC3339.match(root.findtext(A + "updated") or "")
    assert root.find(A + "author/" + A + "name") is not None
    links = {link.get("rel"): link for link in root.findall(A + "link")}
    assert links["self"].get("href") == "https://digest.example.org/feed.atom"
    assert links["self"].get("type") == "application/atom+xml"
    assert links["alternate"].get("href") == "https://digest.example.org/"
    assert links["hub"].get("href") == "https://hub.example/"

    entries = root.findall(A + "entry")
    assert len(entries) == 8
    for entry in entries:
        assert (entry.findtext(A + "id") or "").startswith("urn:uuid:")
        assert entry.findtext(A + "title")
        assert RFC3339.match(entry.findtext(A + "updated") or "")
        assert RFC3339.match(entry.findtext(A + "published") or "")
        assert entry.find(A + "author/" + A + "name") is not None
        alternate = entry.find(A + "link")
        assert alternate is not None and alternate.get("rel") == "alternate"
        assert (alternate.get("href") or "").startswith("https://")
        content = entry.find(A + "content")
        assert content is not None and content.get("type") == "html"
        assert entry.findtext(A + "summary")
        terms = [c.get("term") for c in entry.findall(A + "category")]
        assert "Festivals" in terms
        source = entry.find(A + "source")
        assert source is not None
        assert source.findtext(A + "id")
        assert source.findtext(A + "title") in {"KOFIC News", "KoBiz Ko-pick"}
        assert RFC3339.match(source.findtext(A + "updated") or "")
        source_link = source.find(A + "link")
        assert source_link is not None and source_link.get("href", "").startswith("https://")

    # Newest first, and the feed is as new as its newest entry.
    published = [e.findtext(A + "published") or "" for e in entries]
    stamps = [datetime.fromisoformat(p) for p in published]
    assert stamps == sorted(stamps, reverse=True)
    assert datetime.fromisoformat(root.findtext(A + "updated") or "") == max(stamps)


def test_sections_are_categories_with_their_title(store: Store, tmp_path: Path) -> None:
    fill(store)
    result = run_publish(store, site_for(tmp_path))
    sections = [
        c
        for entry in atom_root(result.atom_path).iter(A + "entry")
        for c in entry.findall(A + "category")
        if c.get("term") == "ko-pick"
    ]
    assert len(sections) == 2  # kofic 0 and 3
    assert all(c.get("label") == "Ko-pick columns" for c in sections)


def test_feedparser_reads_entries_with_their_sources(store: Store, tmp_path: Path) -> None:
    fill(store)
    result = run_publish(store, site_for(tmp_path))
    parsed = feedparser.parse(result.atom_path.read_bytes())
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.title == "Korean Film Digest"
    assert len(parsed.entries) == 8
    newest = parsed.entries[0]
    assert newest.title == "kobiz story 103: 부산국제영화제 line-up"
    assert newest.link == "https://kobiz.example/articles/103"
    assert newest.source.title == "KoBiz Ko-pick"
    assert newest.source.link == "https://kobiz.example/kopick"
    assert newest.source.id.startswith("urn:uuid:")
    assert newest.source.updated_parsed is not None
    assert newest.author == "Kim Ji-seok"
    assert newest.content[0].type == "text/html"
    assert "<b>103</b>" in newest.content[0].value


def test_json_feed_matches_atom(store: Store, tmp_path: Path) -> None:
    fill(store)
    result = run_publish(store, site_for(tmp_path, hub_url="https://hub.example/"))
    assert result.json_path == tmp_path / "feed.json"
    feed = json.loads(result.json_path.read_bytes())
    assert feed["version"] == JSON_FEED_VERSION
    assert feed["feed_url"] == "https://digest.example.org/feed.json"
    assert feed["hubs"] == [{"type": "WebSub", "url": "https://hub.example/"}]
    atom_ids = list(entries_by_id(result.atom_path))
    assert [item["id"] for item in feed["items"]] == atom_ids
    first = feed["items"][0]
    assert first["content_html"] == "<p>Story <b>103</b> from kobiz.</p>"
    assert first["_source"] == {"title": "KoBiz Ko-pick", "url": "https://kobiz.example/kopick"}
    assert first["date_published"].endswith("Z")


def test_an_item_without_a_source_date_claims_no_publication_date(
    store: Store, tmp_path: Path
) -> None:
    """Dated by when we first saw it: ``updated`` says so, ``published`` is left out."""
    undated = dataclasses.replace(make_item("kofic", 1), date_missing=True)
    save(store, "kofic", [make_item("kofic", 0), undated])
    result = run_publish(store, site_for(tmp_path))
    entries = list(entries_by_id(result.atom_path).values())
    published = [e.findtext(A + "published") for e in entries]
    assert [p is None for p in published] == [True, False]  # newest (the undated) first
    assert all(e.findtext(A + "updated") for e in entries)
    items = json.loads(result.json_path.read_bytes())["items"]
    assert ["date_published" in item for item in items] == [False, True]
    assert all(item["date_modified"] for item in items)


def test_duplicates_are_left_out_and_feed_size_is_respected(store: Store, tmp_path: Path) -> None:
    fill(store, count=3)
    copy = make_item(
        "kobiz", 999, title="Same story elsewhere", canonical_url="https://kofic.example/articles/2"
    )
    save(store, "kobiz", [copy])
    full = run_publish(store, site_for(tmp_path / "all"))
    titles = [e.findtext(A + "title") for e in atom_root(full.atom_path).iter(A + "entry")]
    assert "Same story elsewhere" not in titles
    assert full.item_count == 6

    small = run_publish(store, site_for(tmp_path / "small", feed_size=2))
    assert small.item_count == 2
    assert len(entries_by_id(small.atom_path)) == 2


# ------------------------------------------------------------------ stability


def test_republishing_the_same_items_leaves_the_files_alone(store: Store, tmp_path: Path) -> None:
    fill(store)
    site = site_for(tmp_path / "public")
    first = run_publish(store, site)
    before = [
        (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
        for p in (
            first.atom_path,
            first.json_path,
        )
    ]
    second = run_publish(store, site)
    after = [
        (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
        for p in (
            second.atom_path,
            second.json_path,
        )
    ]
    assert second.changed is False
    assert after == before
    assert sorted(p.name for p in first.atom_path.parent.iterdir()) == [
        ATOM_FILENAME,
        JSON_FILENAME,
    ]


def test_entry_keeps_its_id_when_updated_upstream(store: Store, tmp_path: Path) -> None:
    fill(store)
    site = site_for(tmp_path)
    before = entries_by_id(run_publish(store, site).atom_path)
    original = make_item("kofic", 1)
    key = entry_id("kofic", original.guid)
    assert key in before

    later = original.updated_at + timedelta(days=2)
    revised = make_item("kofic", 1, title="Revised: the line-up grows", updated_at=later)
    save(store, "kofic", [revised])
    result = run_publish(store, site)
    after = entries_by_id(result.atom_path)

    assert result.changed
    assert set(after) == set(before)  # no entry got a new id
    entry = after[key]
    assert entry.findtext(A + "title") == "Revised: the line-up grows"
    assert datetime.fromisoformat(entry.findtext(A + "updated") or "") == later
    assert entry.findtext(A + "published") == before[key].findtext(A + "published")
    # Every other entry is what it was (only its source's ``updated`` may move on).
    for other, element in before.items():
        if other != key:
            for entry_before in (element, after[other]):
                source = entry_before.find(A + "source")
                assert source is not None
                entry_before.remove(source)
            assert lxml.etree.tostring(after[other]) == lxml.etree.tostring(element)


def test_ids_do_not_depend_on_the_site_address(store: Store, tmp_path: Path) -> None:
    fill(store)
    first = entries_by_id(run_publish(store, site_for(tmp_path / "a")).atom_path)
    moved = Site(url="https://moved.example/", output_dir=str(tmp_path / "b"))
    second = entries_by_id(run_publish(store, moved).atom_path)
    assert set(first) == set(second)


# ------------------------------------------------------------------ safety


HOSTILE = (
    "<p>Before<script>alert(1)</script>"
    '<iframe src="https://evil.example/"></iframe>'
    '<img src="https://img.example/a.jpg" onerror="alert(2)">'
    '<a href="javascript:alert(3)">click</a>'
    "<style>body{display:none}</style><object data='x.swf'></object>After</p>"
)


def test_script_and_iframe_in_stored_content_never_reach_the_feeds(
    store: Store, tmp_path: Path
) -> None:
    # normalize sanitizes before storing; the store is written here directly, as
    # a bug or an old row would, to prove publish defends on its own.
    save(store, "kofic", [make_item("kofic", 1, content_html=HOSTILE, title="<script>x</script>")])
    result = run_publish(store, site_for(tmp_path))
    for path in (result.atom_path, result.json_path):
        raw = path.read_text(encoding="utf-8").lower()
        for needle in ("<script", "<iframe", "onerror", "javascript:", "<style", "<object"):
            assert needle not in raw, (path.name, needle)
    # The HTML a reader would render (Atom content unescaped, JSON content_html).
    atom_html = next(atom_root(result.atom_path).iter(A + "content")).text or ""
    json_html = json.loads(result.json_path.read_bytes())["items"][0]["content_html"]
    for html in (atom_html, json_html):
        lowered = html.lower()
        for needle in ("<script", "<iframe", "onerror", "javascript:", "<style", "<object"):
            assert needle not in lowered, needle
        assert "Before" in html and "After" in html
        assert "alert" not in html and "display:none" not in html
        assert 'src="https://img.example/a.jpg"' in html
    # A title is a text construct: escaped in the XML, shown as the characters.
    entry = next(atom_root(result.atom_path).iter(A + "entry"))
    assert entry.find(A + "title").get("type") in (None, "text")  # type: ignore[union-attr]
    assert entry.findtext(A + "title") == "<script>x</script>"


def test_control_characters_do_not_break_the_xml(store: Store, tmp_path: Path) -> None:
    save(store, "kofic", [make_item("kofic", 1, title="Bell\x07 and \x0bvertical tab")])
    result = run_publish(store, site_for(tmp_path))
    assert entries_by_id(result.atom_path)
    assert not feedparser.parse(result.atom_path.read_bytes()).bozo


def test_empty_store_gives_a_valid_stable_feed(store: Store, tmp_path: Path) -> None:
    site = site_for(tmp_path)
    first = run_publish(store, site)
    root = atom_root(first.atom_path)
    assert root.findtext(A + "updated") and root.find(A + "entry") is None
    assert run_publish(store, site).changed is False


# ------------------------------------------------------------------ WebSub


def hub_form(server: FixtureServer) -> dict[str, list[str]]:
    request = server.requests_for("/hub")[-1]
    assert request.method == "POST"
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    return parse_qs(request.body.decode())


def test_changed_feed_pings_the_hub_once(
    store: Store, tmp_path: Path, http_server: FixtureServer
) -> None:
    http_server.add("/hub", "", status=204, content_type=None)
    site = site_for(tmp_path, hub_url=http_server.url("/hub"))
    fill(store)
    result = run_publish(store, site)
    assert result.ping_pending

    ping = asyncio.run(ping_pending(site, tmp_path))
    assert ping is not None and ping.ok
    form = hub_form(http_server)
    assert form["hub.mode"] == ["publish"]
    assert form["hub.url"] == list(feed_urls(site))
    assert not (tmp_path / PING_STATE_FILENAME).exists()

    # Nothing changed: nothing to announce.
    assert run_publish(store, site).ping_pending is False
    assert asyncio.run(ping_pending(site, tmp_path)) is None
    assert http_server.count("/hub") == 1


def test_failed_ping_is_remembered_and_retried(
    store: Store, tmp_path: Path, http_server: FixtureServer
) -> None:
    hub = http_server.url("/hub")
    http_server.add("/hub", "hub down", status=503, content_type="text/plain")
    site = site_for(tmp_path, hub_url=hub)
    fill(store)
    assert run_publish(store, site).ping_pending

    failed = asyncio.run(ping_pending(site, tmp_path))
    assert failed is not None and not failed.ok
    assert failed.error is not None and hub in failed.error and "503" in failed.error
    assert (tmp_path / PING_STATE_FILENAME).exists()

    # The feed did not change again, but the announcement is still owed.
    again = run_publish(store, site)
    assert again.changed is False and again.ping_pending is True

    http_server.add("/hub", "", status=204, content_type=None)
    retried = asyncio.run(ping_pending(site, tmp_path))
    assert retried is not None and retried.ok and retried.attempts == 2
    assert not (tmp_path / PING_STATE_FILENAME).exists()
    assert http_server.count("/hub") == 2


def test_unreachable_hub_is_reported_by_url_and_not_raised(store: Store, tmp_path: Path) -> None:
    hub = f"http://127.0.0.1:{unused_port()}/hub"
    site = site_for(tmp_path, hub_url=hub)
    fill(store, count=1)
    run_publish(store, site)
    ping = asyncio.run(ping_pending(site, tmp_path, timeout=2.0))
    assert ping is not None and not ping.ok
    assert ping.error is not None and ping.error.startswith(hub)


def test_no_hub_means_no_ping(store: Store, tmp_path: Path) -> None:
    fill(store, count=1)
    site = site_for(tmp_path)
    assert run_publish(store, site).ping_pending is False
    assert asyncio.run(ping_pending(site, tmp_path)) is None
    assert not (tmp_path / PING_STATE_FILENAME).exists()


@pytest.mark.parametrize("count", [0, 1])
def test_item_count_is_reported(store: Store, tmp_path: Path, count: int) -> None:
    if count:
        fill(store, count=count)
    assert run_publish(store, site_for(tmp_path)).item_count == 2 * count


def test_a_rewrite_within_the_same_second_still_moves_last_modified(
    store: Store, tmp_path: Path
) -> None:
    fill(store, count=1)
    site = site_for(tmp_path / "public")
    first = run_publish(store, site)
    second_before = int(first.atom_path.stat().st_mtime)
    save(store, "kofic", [make_item("kofic", 9)])
    assert run_publish(store, site).changed
    assert int(first.atom_path.stat().st_mtime) > second_before


def test_last_modified_moves_even_when_the_wall_clock_reads_ahead_of_the_file_system(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file system stamps files with a coarse clock a few ms behind
    ``time.time()``: a rewrite just after a second boundary could be stamped in
    the previous second. The new file's own mtime decides the bump (a reader
    sending If-Modified-Since, like newsboat, missed such a publish)."""
    fill(store, count=1)
    site = site_for(tmp_path / "public")
    first = run_publish(store, site)
    ahead = int(time.time()) + 60
    os.utime(first.atom_path, (ahead - 1, ahead - 1))  # the old file: one second behind "now"
    monkeypatch.setattr(time, "time", lambda: float(ahead))
    save(store, "kofic", [make_item("kofic", 9)])
    assert run_publish(store, site).changed
    assert int(first.atom_path.stat().st_mtime) == ahead
