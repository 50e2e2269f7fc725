"""Stored sizes and per-entry isolation, on SQLite and PostgreSQL.

An outside test found that on PostgreSQL one entry with an ~8 KB incompressible
link stopped all ingest (the btree refuses index rows over ~2.7 KB), that an
entry's store failure failed its whole source and the pass, that undefined
entity references reached the feed and the digest, and that one response could
store 20,000 items. Each test here generates its hostile inputs (sizes from
8 KB to 1 MB, ASCII and non-ASCII) and checks what a reader or an admin sees.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from typer.testing import CliRunner

from aggregator.cli import app
from aggregator.config import Config, parse_config
from aggregator.digest import Period, compose
from aggregator.errors import ConfigError, EntryTooLarge
from aggregator.ingest import Ingestor, newest_entries
from aggregator.models import IngestOutcome, IngestStats, RawEntry, Source, utcnow
from aggregator.normalize import (
    MAX_LINK_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_TITLE_CHARS,
    bounded_html,
    drop_undefined_entities,
    normalize,
)
from aggregator.publish import publish_from_store
from aggregator.store import Store
from aggregator.store.engine import _alembic_config
from aggregator.store.schema import HOST_KEY_CHARS, link_key, metadata, text_key
from tests.support.db import _pg_admin_url
from tests.support.http import FixtureServer
from tests.support.items import make_item

KB = 1024
MB = 1024 * KB
NOW = utcnow()
# Incompressible: random picks from ASCII, Hangul, Greek, CJK and accented
# letters, so neither PostgreSQL's TOAST compression nor a sloppy byte/char
# confusion hides a size problem.
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "가나다라마바사아자차카타파하한국영화감독배우극장"
    "αβγδεζηθικλμ日本語中文映画éüñøç"
)


def noise(rng: random.Random, nbytes: int) -> str:
    """Random text of ``nbytes`` UTF-8 bytes (give or take one character)."""
    text = "".join(rng.choices(ALPHABET, k=nbytes))
    return text.encode("utf-8")[:nbytes].decode("utf-8", "ignore")


def rss(items: list[str]) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        "<title>Hostile</title><link>https://evil.example/</link><description>x</description>"
        + "".join(items)
        + "</channel></rss>"
    )


def item(guid: str, title: str, link: str, *, body: str = "Body.", hours: float = 1) -> str:
    date = format_datetime(NOW - timedelta(hours=hours))
    return (
        f"<item><guid isPermaLink='false'>{guid}</guid><title>{title}</title>"
        f"<link>{link}</link><pubDate>{date}</pubDate>"
        f"<description>{body}</description></item>"
    )


def make_config(tmp_path: Path, db_url: str, sources: str, defaults: str = "") -> Config:
    text = (
        f"site: {{title: T, url: 'http://127.0.0.1:9/', output_dir: '{tmp_path}/pub'}}\n"
        f"storage: {{url: '{db_url}'}}\n"
        f"defaults: {{interval: 1h, timeout: 10s{defaults}}}\nsources:\n{sources}"
    )
    path = tmp_path / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_config(text, path=path)


def one_source(source_id: str, url: str) -> str:
    return f"  - {{id: {source_id}, url: '{url}'}}\n"


def run_ingest(config: Config, store: Store) -> dict[str, IngestStats]:
    return {s.source_id: s for s in asyncio.run(Ingestor(config, store).run())}


def visible_text(config: Config, store: Store) -> str:
    """Everything a subscriber can see: stored rows, both feeds, the digest."""
    parts: list[str] = []
    for stored in store.recent_items(1000, include_duplicates=True):
        parts += [stored.title, stored.summary_html, stored.content_html, stored.text]
        parts += [stored.excerpt, stored.author or "", *stored.categories]
    result = publish_from_store(store, config.site, config.output_dir)
    parts.append(result.atom_path.read_text(encoding="utf-8"))
    parts.append(result.json_path.read_text(encoding="utf-8"))
    period = Period(start=NOW - timedelta(days=7), end=utcnow() + timedelta(seconds=1))
    digest = compose(config, store, period=period)
    if digest is not None:
        parts += [digest.html, digest.text, digest.subject]
    return "\n".join(parts)


# ------------------------------------------------------------ long links, guids, titles

SIZES = {"8k": 8 * KB, "64k": 64 * KB, "1m": 1 * MB}


def hostile_feed(rng: random.Random) -> tuple[str, dict[str, str]]:
    """Three good entries and, per size, one entry with a long link, guid and title."""
    entries = [
        item(f"good-{n}", f"Good story {n}", f"https://evil.example/good/{n}") for n in range(3)
    ]
    long_links: dict[str, str] = {}
    for label, size in SIZES.items():
        link = "https://evil.example/" + noise(rng, size)
        long_links[label] = link
        entries.append(item(f"link-{label}", f"Long link {label}", link))
        entries.append(
            item(noise(rng, size), f"Long guid {label}", f"https://evil.example/guid/{label}")
        )
        entries.append(
            item(
                f"title-{label}",
                "Long title " + noise(rng, size),
                f"https://evil.example/t/{label}",
            )
        )
    return rss(entries), long_links


def test_long_links_guids_and_titles_cost_only_their_entries(
    http_server: FixtureServer, tmp_path: Path, db_url: str
) -> None:
    rng = random.Random(14)
    body, long_links = hostile_feed(rng)
    http_server.add("/hostile.xml", body)
    http_server.add("/calm.xml", rss([item("calm-1", "Calm story", "https://calm.example/1")]))
    config = make_config(
        tmp_path,
        db_url,
        f"  - {{id: hostile, url: '{http_server.url('/hostile.xml')}'}}\n"
        f"  - {{id: calm, url: '{http_server.url('/calm.xml')}'}}\n",
    )
    store = Store.open(db_url)
    try:
        started = time.perf_counter()
        stats = run_ingest(config, store)
        elapsed = time.perf_counter() - started

        assert stats["hostile"].outcome is IngestOutcome.OK, stats["hostile"].error
        assert stats["calm"].outcome is IngestOutcome.OK
        # 3 good + the 8 KB link and guid + the three long titles (cut); the
        # 64 KB and 1 MB links and guids are refused.
        assert stats["hostile"].new == 8
        titles = {i.title for i in store.recent_items(100)}
        assert {"Good story 0", "Good story 1", "Good story 2", "Calm story"} <= titles
        assert {"Long link 8k", "Long guid 8k"} <= titles
        assert not {"Long link 64k", "Long link 1m", "Long guid 64k", "Long guid 1m"} & titles
        assert all(len(t) <= MAX_TITLE_CHARS for t in titles)
        assert sum(t.startswith("Long title ") for t in titles) == 3
        [eight_k] = [i for i in store.recent_items(100) if i.title == "Long link 8k"]
        assert eight_k.url == long_links["8k"]
        assert store.find_items(canonical_url=eight_k.canonical_url)[0].id == eight_k.id

        state = store.source_state("hostile")
        assert state is not None and state.error_count == 0 and state.last_error is None
        assert state.warning is not None and "4 entries refused" in state.warning
        assert f"the cap is {MAX_LINK_CHARS:,}" in state.warning
        assert elapsed < 30, f"ingest took {elapsed:.1f} s"

        # A second pass finds every stored entry by its hashed keys: nothing new.
        again = run_ingest(config, store)
        assert again["hostile"].new == 0 and again["hostile"].updated == 0
        assert store.count_items() == 9
    finally:
        store.close()


def test_fetch_command_exits_zero_and_status_names_the_problem(
    http_server: FixtureServer, tmp_path: Path, db_url: str
) -> None:
    rng = random.Random(1)
    entries = [item(f"ok-{n}", f"Fine {n}", f"https://evil.example/ok/{n}") for n in range(2)]
    entries.append(item("huge", "Huge link", "https://evil.example/" + noise(rng, MB)))
    http_server.add("/one.xml", rss(entries))
    config = make_config(
        tmp_path, db_url, f"  - {{id: hostile, url: '{http_server.url('/one.xml')}'}}\n"
    )
    assert config.path is not None
    runner = CliRunner()

    fetched = runner.invoke(app, ["--config", str(config.path), "fetch"])
    status = runner.invoke(app, ["--config", str(config.path), "status"])

    assert fetched.exit_code == 0, fetched.output
    assert status.exit_code == 0, status.output
    squashed = re.sub(r"[\s│|]+", "", status.output)
    assert "1entriesrefused" in squashed and "'Hugelink'" in squashed
    store = Store.open(db_url)
    try:
        assert store.count_items() == 2
    finally:
        store.close()


# ------------------------------------------------------------ a row the database refuses


def _refuse_titles_starting_with_refuse(store: Store) -> None:
    """A real database-side refusal for chosen rows, the same on both dialects."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_marked BEFORE INSERT ON items "
                "WHEN NEW.title LIKE 'refuse%' BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF left(NEW.title, 6) = 'refuse' THEN RAISE EXCEPTION 'refused by trigger' "
                "USING ERRCODE = '22023'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_marked BEFORE INSERT OR UPDATE ON items "
                "FOR EACH ROW EXECUTE FUNCTION refuse_marked()"
            )


@pytest.mark.parametrize("refused_count", [1, 2, 5])
def test_an_entry_the_database_refuses_costs_only_itself(store: Store, refused_count: int) -> None:
    store.sync_sources([Source(id="s", url="https://s.example/feed")])
    _refuse_titles_starting_with_refuse(store)
    items = [make_item("s", n, title=f"Good {n}") for n in range(5)]
    items += [
        replace(make_item("s", 100 + n, title=f"refuse {n}"), guid=f"bad-{n}")
        for n in range(refused_count)
    ]

    counts = store.save_items("s", items, fetched_at=NOW, next_fetch_at=NOW + timedelta(hours=1))

    assert counts.new == 5
    assert len(counts.refused) == refused_count
    assert store.count_items() == 5
    state = store.source_state("s")
    assert state is not None and state.last_success_at is not None and state.error_count == 0
    assert state.warning is not None
    assert f"{refused_count} entries not stored" in state.warning
    assert "refused by trigger" in state.warning and "bad-0" in state.warning


# ------------------------------------------------------------ migration 0003


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, to migrate step by step."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = f"mig_{time.monotonic_ns()}"
    admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield _pg_admin_url(name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def test_migration_0003_hashes_the_keys_of_rows_stored_at_0002(empty_db_url: str) -> None:
    rng = random.Random(3)
    store = Store.open(empty_db_url, migrate_schema=False)
    cfg = _alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    guids = ["plain-guid", noise(rng, 2 * KB), "한국영화-guid"]
    links = [
        "https://a.example/1",
        "https://a.example/" + noise(rng, 2 * KB),
        "https://a.example/3",
    ]
    meta = sa.MetaData()
    items = sa.Table("items", meta, autoload_with=store.engine)
    sources = sa.Table("sources", meta, autoload_with=store.engine)
    digests = sa.Table("digests", meta, autoload_with=store.engine)
    digest_items = sa.Table("digest_items", meta, autoload_with=store.engine)
    with store.engine.begin() as conn:
        conn.execute(
            sources.insert().values(
                id="old", config_url="https://a.example/f", url="https://a.example/f",
                error_count=0, created_at=NOW,
            )
        )  # fmt: skip
        for n, (guid, link) in enumerate(zip(guids, links, strict=True)):
            conn.execute(
                items.insert().values(
                    id=n + 1, source_id="old", guid=guid, url=link, canonical_url=link,
                    fingerprint=f"{n:064d}", content_hash=f"{n:064x}", title=f"Old {n}",
                    summary_html="", content_html="<p>x</p>", text="x", excerpt="x",
                    categories=[], published_at=NOW, updated_at=NOW, first_seen_at=NOW,
                    date_missing=False, duplicate_of=1 if n == 2 else None,
                )
            )  # fmt: skip
        conn.execute(
            digests.insert().values(
                id=1, period_start=NOW, period_end=NOW + timedelta(days=7), subject="s",
                preheader="", html="h", text="t", item_count=1, created_at=NOW,
            )
        )  # fmt: skip
        conn.execute(
            digest_items.insert().values(
                digest_id=1, item_id=2, section="s", section_title="S", position=0
            )
        )
    store.close()

    store = Store.open(empty_db_url)  # migrates 0002 → head
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, guid_hash, canonical_url_hash, duplicate_of FROM items ORDER BY id"
                )
            ).all()
            linked = conn.execute(sa.text("SELECT item_id FROM digest_items")).scalars().all()
        assert [r.guid_hash for r in rows] == [text_key(g) for g in guids]
        # 0003 wrote text_key(link); 0012 then put the host's digest first.
        assert [r.canonical_url_hash for r in rows] == [link_key(u) for u in links]
        assert [r.duplicate_of for r in rows] == [None, None, 1]
        assert linked == [2]
        inspector = sa.inspect(store.engine)
        indexes = {i["name"] for i in inspector.get_indexes("items")}
        assert "ix_items_canonical_url_hash" in indexes and "ix_items_canonical_url" not in indexes
        uniques = {u["name"]: u["column_names"] for u in inspector.get_unique_constraints("items")}
        assert uniques.get("uq_items_source_id_guid_hash") == ["source_id", "guid_hash"]
        assert "uq_items_source_id_guid" not in uniques
        with store.engine.connect() as conn:  # the migrations and schema.py agree
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        if store.dialect == "sqlite":
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []

        # The store finds the old rows by their new keys: nothing stored twice.
        store.sync_sources([Source(id="old", url="https://a.example/f")])
        assert store.known_guids("old", guids) == set(guids)
        again = [replace(make_item("old", 1), guid=guids[1], url=links[1], canonical_url=links[1])]
        counts = store.save_items("old", again, fetched_at=NOW, next_fetch_at=NOW)
        assert counts.new == 0 and store.count_items() == 3
    finally:
        store.close()


# ------------------------------------------------------------ migration 0012


def test_link_key_is_the_link_digest_behind_its_host_digest() -> None:
    rng = random.Random(12)
    links = [
        "https://kofic.example.kr/news/1",
        "https://kofic.example.kr/news/2?page=3#top",
        "https://kofic.example.kr:8443/news/1",
        "https://other.example/news/1",
        "https://kofic.example.kr/" + noise(rng, 8 * KB),
        "urn:uuid:5f2b",
        "",
    ]
    keys = [link_key(u) for u in links]
    assert all(len(k) == 64 and re.fullmatch("[0-9a-f]+", k) for k in keys)
    assert len(set(keys)) == len(links)
    for link, key in zip(links, keys, strict=True):
        assert key[HOST_KEY_CHARS:] == text_key(link)[HOST_KEY_CHARS:]
    host = {k[:HOST_KEY_CHARS] for k in keys}
    # One site's links share the prefix; another port or host is another site.
    assert keys[0][:HOST_KEY_CHARS] == keys[1][:HOST_KEY_CHARS] == keys[4][:HOST_KEY_CHARS]
    assert len(host) == 4  # kofic, kofic:8443, other, and the one for "no host"
    assert keys[5][:HOST_KEY_CHARS] == keys[6][:HOST_KEY_CHARS] == text_key("")[:HOST_KEY_CHARS]


def test_migration_0012_rewrites_stored_link_keys_both_ways(empty_db_url: str) -> None:
    rng = random.Random(13)
    store = Store.open(empty_db_url)
    cfg = _alembic_config()
    try:
        store.sync_sources(
            [Source(id="a", url="https://a.example/f"), Source(id="b", url="https://b.example/f")]
        )
        links = [
            "https://kofic.example.kr/news/1",
            "https://kofic.example.kr/" + noise(rng, 8 * KB),
            "https://other.example/column/한국영화",
        ]
        items = [
            replace(make_item("a", n), url=link, canonical_url=link) for n, link in enumerate(links)
        ]
        assert store.save_items("a", items, fetched_at=NOW, next_fetch_at=NOW).new == 3

        def stored() -> list[tuple[str, str]]:
            with store.engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT canonical_url, canonical_url_hash FROM items ORDER BY id")
                ).all()
            return [(r[0], r[1]) for r in rows]

        assert [key for _, key in stored()] == [link_key(u) for u in links]
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0011")
        assert [key for _, key in stored()] == [text_key(u) for u in links]
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        assert [key for _, key in stored()] == [link_key(u) for u in links]
        with store.engine.connect() as conn:  # index rebuilt, schema.py agrees
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("items")}
        assert "ix_items_canonical_url_hash" in indexes

        # The same story from another source is found by its rewritten key.
        copy = replace(make_item("b", 0), url=links[1], canonical_url=links[1])
        counts = store.save_items("b", [copy], fetched_at=NOW, next_fetch_at=NOW)
        assert (counts.new, counts.duplicates) == (0, 1)
        assert [i.source_id for i in store.find_items(canonical_url=links[1])] == ["a", "b"]
    finally:
        store.close()


# ------------------------------------------------------------ undefined entities


def undefined_names(rng: random.Random) -> list[str]:
    names = ["lol9", "xxe", "a", "ent", "zz9top"]
    names += ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=k)) + "q9" for k in (1, 5, 30)]
    return names


def test_undefined_entity_references_never_reach_any_output(
    http_server: FixtureServer, tmp_path: Path, db_url: str
) -> None:
    rng = random.Random(10)
    names = undefined_names(rng)
    doctype = "<!DOCTYPE rss [" + "".join(f'<!ENTITY {n} "x">' for n in names[:2]) + "]>"
    entries = [
        item(f"e-{n}", f"Title {n} &amp;{n}; with &{n}; end", f"https://evil.example/e/{n}",
             body=f"Before &{n}; after &{n};&{n}; done.")
        for n in names
    ]  # fmt: skip
    flood = "&a;" * (350_000 // 3)
    entries.append(item("flood", "Flood", "https://evil.example/flood", body=flood))
    entries.append(item("kept", "AT&amp;T &amp; Friends &lt;3", "https://evil.example/kept"))
    body = rss(entries).replace("?>", "?>" + doctype, 1)
    http_server.add("/ent.xml", body)
    config = make_config(
        tmp_path, db_url, f"  - {{id: ent, url: '{http_server.url('/ent.xml')}'}}\n"
    )
    store = Store.open(db_url)
    try:
        stats = run_ingest(config, store)
        assert stats["ent"].outcome is IngestOutcome.OK, stats["ent"].error
        assert store.count_items() == len(names) + 2
        seen = visible_text(config, store)
        for name in names:
            assert f"&{name};" not in seen
            assert f"&amp;{name};" not in seen
        # (A body that escapes the ampersand, "&amp;amp;xxe;", says "&xxe;" as
        # text, like any other; only references are dropped.)
        assert "&a;" not in seen
        assert max(len(i.summary_html) for i in store.recent_items(100)) <= MAX_SUMMARY_CHARS
        # Defined references are still decoded, not dropped.
        assert "AT&T & Friends <3" in {i.title for i in store.recent_items(100)}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("&lol9;", ""),
        ("a &xxe; b", "a  b"),
        ("&&a;b;", ""),  # removing one joins another: dropped too
        ("&amp; &lt; &eacute; &hellip;", "&amp; &lt; &eacute; &hellip;"),
        ("&#169; &#xAC00;", "&#169; &#xAC00;"),  # character references are not named ones
        ("fish & chips; no ref", "fish & chips; no ref"),
    ],
)
def test_drop_undefined_entities(text: str, expected: str) -> None:
    assert drop_undefined_entities(text) == expected


@pytest.mark.parametrize("limit", [100, 1000, 16 * KB])
@pytest.mark.parametrize("kind", ["text", "lt", "nested", "attrs"])
def test_bounded_html_holds_its_limit_and_is_idempotent(kind: str, limit: int) -> None:
    rng = random.Random(limit)
    size = 5 * limit
    markup = {
        "text": noise(rng, size),
        "lt": "<" * size,  # each becomes "&lt;": sanitizing quadruples it
        "nested": "<p><b><i>" * (size // 9) + noise(rng, 100),
        "attrs": '<a href="https://e.x/?q=' + noise(rng, size) + '">x</a>' * 3,
    }[kind]
    once = bounded_html(markup, "https://e.x/", limit)
    assert len(once) <= limit
    assert bounded_html(once, "https://e.x/", limit) == once


# ------------------------------------------------------------ max_items


def big_feed(prefix: str, count: int, *, dated: bool = True) -> str:
    rows = []
    for n in range(count):
        # Shuffled dates: the newest entries are not simply the first ones.
        hours = (n * 7919) % count + 1
        date = (
            f"<pubDate>{format_datetime(NOW - timedelta(hours=hours))}</pubDate>" if dated else ""
        )
        rows.append(
            f"<item><guid>g{n}</guid><title>{prefix} {n} at {hours}</title>"
            f"<link>https://{prefix}.example/{n}</link>{date}"
            f"<description>{prefix} {n}.</description></item>"
        )
    return rss(rows)


@pytest.mark.slow
def test_twenty_thousand_items_keep_the_newest_five_hundred(
    http_server: FixtureServer, tmp_path: Path, db_url: str
) -> None:
    http_server.add("/big.xml", big_feed("big", 20_000))
    http_server.add("/small.xml", big_feed("small", 300))
    config = make_config(
        tmp_path,
        db_url,
        f"  - {{id: big, url: '{http_server.url('/big.xml')}'}}\n"
        f"  - {{id: small, url: '{http_server.url('/small.xml')}', max_items: 50}}\n",
    )
    store = Store.open(db_url)
    try:
        stats = run_ingest(config, store)
        assert stats["big"].new == 500 and stats["small"].new == 50
        counts = store.item_counts()
        assert counts == {"big": 500, "small": 50}
        ages: dict[str, list[int]] = {"big": [], "small": []}
        for stored in store.recent_items(1000):
            ages[stored.source_id].append(int(stored.title.rsplit(" ", 1)[1]))
        assert sorted(ages["big"]) == list(range(1, 501))  # the newest 500 of 20,000
        assert sorted(ages["small"]) == list(range(1, 51))
        state = store.source_state("big")
        assert state is not None and state.warning is not None
        assert "kept 500 of 20,000 entries" in state.warning
        assert "kept 50 of 300 entries" in (store.source_state("small").warning or "")  # type: ignore[union-attr]
    finally:
        store.close()


def test_newest_entries_by_date_else_document_order() -> None:
    def entry(n: int, hours: float | None) -> RawEntry:
        published = None if hours is None else NOW - timedelta(hours=hours)
        return RawEntry(guid=str(n), link=f"https://e.x/{n}", title=str(n), published=published)

    dated = [entry(n, hours) for n, hours in enumerate([5, 1, 9, 2, 7, 3])]
    assert [e.guid for e in newest_entries(dated, 3)] == ["1", "3", "5"]  # document order kept
    undated = [entry(n, None) for n in range(6)]
    assert [e.guid for e in newest_entries(undated, 4)] == ["0", "1", "2", "3"]
    mixed = [entry(0, None), entry(1, 4), entry(2, None), entry(3, 1)]
    assert [e.guid for e in newest_entries(mixed, 3)] == ["0", "1", "3"]
    assert newest_entries(dated, 6) is dated


@pytest.mark.parametrize("where", ["defaults", "source"])
@pytest.mark.parametrize("value", ["0", "-5", "many", "10001", "2.5"])
def test_invalid_max_items_names_file_line_and_key(tmp_path: Path, where: str, value: str) -> None:
    defaults = f", max_items: {value}" if where == "defaults" else ""
    extra = f", max_items: {value}" if where == "source" else ""
    with pytest.raises(ConfigError) as caught:
        make_config(
            tmp_path, "sqlite://", f"  - {{id: a, url: 'https://e.x/a'{extra}}}\n", defaults
        )
    message = str(caught.value)
    assert "feeds.yaml:" in message
    assert ("defaults.max_items" if where == "defaults" else "sources[0].max_items") in message


def test_max_items_defaults_and_override(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        "sqlite://",
        "  - {id: a, url: 'https://e.x/a'}\n  - {id: b, url: 'https://e.x/b', max_items: 20}\n",
    )
    assert [s.max_items for s in config.sources] == [500, 20]
    config = make_config(
        tmp_path, "sqlite://", "  - {id: a, url: 'https://e.x/a'}\n", ", max_items: 1000"
    )
    assert config.sources[0].max_items == 1000


@pytest.mark.parametrize("size", [MAX_LINK_CHARS + 1, 64 * KB, MB])
@pytest.mark.parametrize("field", ["link", "guid"])
def test_normalize_refuses_an_entry_over_the_link_cap(field: str, size: int) -> None:
    rng = random.Random(size)
    value = "https://e.x/" + "".join(rng.choices("abcdefghij", k=size))
    entry = RawEntry(
        guid=value if field == "guid" else "g",
        link=value if field == "link" else "https://e.x/1",
        title="T",
    )
    started = time.perf_counter()
    with pytest.raises(EntryTooLarge, match="refused"):
        normalize(
            Source(id="s", url="https://e.x/"),
            entry,
            sections=(),
            now=NOW,
            fallback_base="https://e.x/",
        )
    assert time.perf_counter() - started < 1.0


def test_a_refused_update_keeps_the_stored_row(store: Store) -> None:
    store.sync_sources([Source(id="s", url="https://s.example/feed")])
    first = [make_item("s", n, title=f"Story {n}") for n in range(3)]
    store.save_items("s", first, fetched_at=NOW, next_fetch_at=NOW)
    _refuse_titles_starting_with_refuse(store)
    if store.dialect == "sqlite":  # the helper's SQLite trigger covers inserts only
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_marked_update BEFORE UPDATE ON items WHEN NEW.title "
                "LIKE 'refuse%' BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
            )
    changed = [replace(first[0], title="refuse me", content_hash="x" * 40)]
    changed += [replace(first[1], title="Story 1, corrected", content_hash="y" * 40)]

    counts = store.save_items("s", changed, fetched_at=NOW, next_fetch_at=NOW)

    assert counts.updated == 1 and len(counts.refused) == 1
    titles = sorted(i.title for i in store.recent_items(10))
    assert titles == ["Story 0", "Story 1, corrected", "Story 2"]
    state = store.source_state("s")
    assert state is not None and state.warning and "1 entries not stored" in state.warning


def test_a_nul_in_a_link_costs_only_its_entry(
    http_server: FixtureServer, tmp_path: Path, db_url: str
) -> None:
    """PostgreSQL refuses NUL in text (SQLite stores it): a real per-row refusal."""
    date = NOW.isoformat()
    items = [
        {"id": f"ok-{n}", "url": f"https://j.example/{n}", "title": f"Fine {n}",
         "content_html": "<p>x</p>", "date_published": date}
        for n in range(4)
    ]  # fmt: skip
    items.insert(2, {"id": "nul", "url": "https://j.example/a\u0000b", "title": "Nul link",
                     "content_html": "<p>y</p>", "date_published": date})  # fmt: skip
    feed = {"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": items}
    http_server.add("/j.json", json.dumps(feed), content_type="application/feed+json")
    config = make_config(tmp_path, db_url, one_source("json", http_server.url("/j.json")))
    store = Store.open(db_url)
    try:
        stats = run_ingest(config, store)["json"]
        assert stats.outcome is IngestOutcome.OK, stats.error
        titles = {i.title for i in store.recent_items(10)}
        assert {"Fine 0", "Fine 1", "Fine 2", "Fine 3"} <= titles
        state = store.source_state("json")
        assert state is not None and state.error_count == 0
        if store.dialect == "postgresql":
            assert "Nul link" not in titles
            assert state.warning and "1 entries not stored" in state.warning
            assert "nul:" in state.warning
    finally:
        store.close()
