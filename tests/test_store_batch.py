"""Several sources' writes in one transaction: the same stored content, one source's failure alone.

``Store.save_batch`` is what an ingest pass uses when writes wait on each
other (a warm pass: every source answers 304 within milliseconds). Runs on
real SQLite and a real PostgreSQL (``db_url``); the reference it is compared
with is the same writes made one source at a time on SQLite.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from aggregator.config import parse_config
from aggregator.errors import StoreError
from aggregator.ingest import Ingestor
from aggregator.models import Item, Source
from aggregator.store import (
    Failure,
    NotModified,
    SaveCounts,
    SaveItems,
    SourceWrite,
    Store,
    schema,
)
from tests.support.http import FixtureServer
from tests.support.items import make_item

T0 = datetime(2026, 11, 2, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)


def _sources(count: int) -> list[Source]:
    # Source "s0" is the site that publishes the shared stories (the better copy).
    return [
        Source(id=f"s{n}", url=f"https://s{n}.example.org/feed", priority=n % 3)
        for n in range(count)
    ]


def _items(source_id: str, count: int, *, shared: int = 0, edition: int = 0) -> list[Item]:
    """``count`` items of their own plus ``shared`` stories that several sources carry."""
    own = [
        make_item(source_id, n, published=T0 - timedelta(hours=n), text=f"v{edition} {n}")
        for n in range(count)
    ]
    stories = []
    for n in range(shared):
        base = make_item("s0", 1000 + n, title=f"Shared story {n}")
        stories.append(
            replace(
                base,
                source_id=source_id,
                guid=f"{source_id}-story-{n}",
                published_at=T0 - timedelta(minutes=n + len(source_id)),
            )
        )
    return own + stories


def _rounds(sources: list[Source]) -> list[list[SourceWrite]]:
    """Three passes' writes: cold (sizes 1 to 40, shared stories), changes and 304s, errors."""
    sizes = [1, 5, 40, 12, 3, 0, 25]
    cold: list[SourceWrite] = [
        SaveItems(s.id, _items(s.id, sizes[n % len(sizes)], shared=n % 4), T0, LATER, etag='"a"')
        for n, s in enumerate(reversed(sources))  # the publisher's copy comes last
    ]
    second: list[SourceWrite] = []
    for n, s in enumerate(sources):
        if n % 3 == 0:
            second.append(NotModified(s.id, LATER, LATER + timedelta(hours=1), etag=f'"b{n}"'))
        elif n % 3 == 1:
            items = _items(s.id, sizes[n % len(sizes)] + 2, shared=n % 4, edition=1)
            moved = f"https://moved.example.org/{s.id}" if n == 1 else None
            second.append(SaveItems(s.id, items, LATER, LATER, content_hash="h", new_url=moved))
        else:
            second.append(Failure(s.id, f"{s.id}: HTTP 500", LATER, LATER, broken=n % 2 == 0))
    third: list[SourceWrite] = [NotModified(s.id, LATER, LATER) for s in sources]
    return [cold, second, third]


def _one_by_one(store: Store, write: SourceWrite) -> Any:
    if isinstance(write, SaveItems):
        return store.save_items(
            write.source_id,
            write.items,
            fetched_at=write.fetched_at,
            next_fetch_at=write.next_fetch_at,
            etag=write.etag,
            last_modified=write.last_modified,
            content_hash=write.content_hash,
            new_url=write.new_url,
            warnings=write.warnings,
        )
    if isinstance(write, NotModified):
        return store.record_not_modified(
            write.source_id,
            fetched_at=write.fetched_at,
            next_fetch_at=write.next_fetch_at,
            etag=write.etag,
            last_modified=write.last_modified,
        )
    return store.record_failure(
        write.source_id,
        write.error,
        fetched_at=write.fetched_at,
        next_fetch_at=write.next_fetch_at,
        broken=write.broken,
    )


def _snapshot(store: Store) -> dict[str, Any]:
    """Every stored column but row ids; ``duplicate_of`` as the (source, guid) it points at."""
    with store.engine.connect() as conn:
        items = [dict(r._mapping) for r in conn.execute(sa.select(schema.items))]
        sources = [dict(r._mapping) for r in conn.execute(sa.select(schema.sources))]
    key_of = {r["id"]: (r["source_id"], r["guid"]) for r in items}
    out: dict[str, Any] = {"sources": {r.pop("id"): r for r in sources}, "items": {}}
    for row in items:
        row["duplicate_of"] = key_of.get(row["duplicate_of"])
        out["items"][(row["source_id"], row["guid"])] = {
            k: v for k, v in row.items() if k not in {"id", "created_at"}
        }
    for row in out["sources"].values():
        row.pop("created_at")
    return out


@pytest.mark.parametrize("count", [2, 7, 23])
def test_a_batch_stores_exactly_what_the_writes_store_one_at_a_time(
    db_url: str, tmp_path: Path, count: int
) -> None:
    sources = _sources(count)
    reference = Store.open(f"sqlite:///{tmp_path / 'reference.db'}")
    batched = Store.open(db_url)
    try:
        for store in (reference, batched):
            store.sync_sources(sources, now=T0)
        for writes in _rounds(sources):
            expected = [_one_by_one(reference, w) for w in writes]
            assert batched.save_batch(writes) == expected
        want, got = _snapshot(reference), _snapshot(batched)
        assert got == want
        # The shared stories were really deduplicated and taken over.
        dupes = [k for k, v in got["items"].items() if v["duplicate_of"] is not None]
        assert (count < 3) or dupes
    finally:
        reference.close()
        batched.close()


def _refuse_source(store: Store, source_id: str) -> None:
    """A trigger that makes the database refuse any change to one source's row."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_source BEFORE UPDATE ON sources "
                f"WHEN NEW.id = '{source_id}' BEGIN SELECT RAISE(ABORT, 'source refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_source() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.id = '{source_id}' THEN RAISE EXCEPTION 'source refused' "
                "USING ERRCODE = '22023'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_source BEFORE UPDATE ON sources "
                "FOR EACH ROW EXECUTE FUNCTION refuse_source()"
            )


@pytest.mark.parametrize("position", [0, 2, 4])
def test_a_source_the_database_refuses_is_rolled_back_alone(store: Store, position: int) -> None:
    sources = _sources(5)
    store.sync_sources(sources, now=T0)
    bad = sources[position].id
    _refuse_source(store, bad)
    writes: list[SourceWrite] = []
    for n, s in enumerate(sources):
        if n % 2:
            writes.append(NotModified(s.id, LATER, LATER, etag='"new"'))
        else:
            writes.append(SaveItems(s.id, _items(s.id, 4), LATER, LATER, etag='"new"'))

    results = store.save_batch(writes)

    assert isinstance(results[position], DBAPIError)
    assert "source refused" in str(results[position])
    counts = store.item_counts()
    assert bad not in counts  # its items rolled back with its state
    for n, s in enumerate(sources):
        if s.id == bad:
            continue
        state = store.source_state(s.id)
        assert state is not None and state.etag == '"new"' and state.last_success_at == LATER
        if n % 2 == 0:
            assert results[n] == SaveCounts(new=4) and counts[s.id] == 4
        else:
            assert results[n] is None
    state = store.source_state(bad)
    assert state is not None and state.etag is None and state.last_success_at is None


def test_a_lone_write_the_database_refuses_raises_as_before(store: Store) -> None:
    store.sync_sources(_sources(1), now=T0)
    _refuse_source(store, "s0")
    with pytest.raises(DBAPIError, match="source refused"):
        store.save_items("s0", _items("s0", 3), fetched_at=LATER, next_fetch_at=LATER)
    assert store.count_items() == 0


def test_a_locked_database_fails_the_whole_batch_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    store = Store.open(f"sqlite:///{db}?timeout=0.2")
    try:
        store.sync_sources(_sources(3), now=T0)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError, match="database is locked"):
                store.save_batch(
                    [
                        SaveItems("s0", _items("s0", 2), LATER, LATER),
                        NotModified("s1", LATER, LATER),
                    ]
                )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert store.count_items() == 0
        state = store.source_state("s1")
        assert state is not None and state.last_fetched_at is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("record", "method"),
    [
        (SaveItems, Store.save_items),
        (NotModified, Store.record_not_modified),
        (Failure, Store.record_failure),
    ],
)
def test_each_record_takes_exactly_its_methods_arguments(record: type, method: Any) -> None:
    """The ingest pass turns a call into its record by passing the same arguments."""
    params = list(inspect.signature(method).parameters.values())[1:]
    assert [f.name for f in fields(record)] == [p.name for p in params]
    assert [f.default for f in fields(record)] == [
        p.default if p.default is not inspect.Parameter.empty else fields(record)[0].default
        for p in params
    ]


def _count_commits(store: Store) -> list[int]:
    commits = [0]

    def on_commit(conn: Any) -> None:
        commits[0] += 1

    sa.event.listen(store.engine, "commit", on_commit)
    return commits


@pytest.mark.parametrize("count", [3, 20, 150])
def test_writes_that_wait_together_share_one_transaction(store: Store, count: int) -> None:
    sources = _sources(count)
    store.sync_sources(sources, now=T0)
    config = parse_config(
        "sources:\n" + "".join(f"  - {{id: {s.id}, url: '{s.url}'}}\n" for s in sources),
        path=Path("feeds.yaml"),
    )
    ingestor = Ingestor(config, store)
    commits = _count_commits(store)

    async def pass_() -> list[Any]:
        return await asyncio.gather(
            *(
                ingestor._write(
                    store.record_not_modified, s.id, fetched_at=LATER, next_fetch_at=LATER
                )
                for s in sources
            )
        )

    assert asyncio.run(pass_()) == [None] * count
    # The first runs at once, alone; the rest waited for it and go together,
    # 64 sources at most per transaction.
    assert commits[0] == 1 + -(-(count - 1) // 64)
    assert all(s.last_success_at == LATER for s in store.source_states())


def rss(source_id: str, count: int) -> str:
    entries = "".join(
        f"<item><guid>{source_id}-{n}</guid><title>{escape(source_id)} story {n}</title>"
        f"<link>https://{source_id}.example.kr/{n}</link>"
        f"<pubDate>{format_datetime(T0 - timedelta(hours=n))}</pubDate>"
        f"<description>Story {n} of {source_id}.</description></item>"
        for n in range(count)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>t</title>'
        f"<link>https://{source_id}.example.kr/</link><description>d</description>"
        f"{entries}</channel></rss>"
    )


def test_an_ingest_pass_batches_its_writes_and_stores_every_source(
    http_server: FixtureServer, db_url: str
) -> None:
    """Cold then warm (every source 304) over real HTTP: all stored, fewer commits than sources."""
    count = 40
    for n in range(count):
        http_server.add(f"/f{n}.xml", rss(f"f{n}", 1 + n % 6), etag=f'"e{n}"')
    config = parse_config(
        f"storage: {{url: '{db_url}'}}\nsources:\n"
        + "".join(
            f"  - {{id: f{n}, url: '{http_server.url(f'/f{n}.xml')}'}}\n" for n in range(count)
        ),
        path=Path("feeds.yaml"),
    )
    store = Store.open(db_url)
    try:
        cold = asyncio.run(Ingestor(config, store).run())
        assert sum(s.new for s in cold) == sum(1 + n % 6 for n in range(count))
        assert store.item_counts() == {f"f{n}": 1 + n % 6 for n in range(count)}
        commits = _count_commits(store)
        warm = asyncio.run(Ingestor(config, store).run())
        assert {s.outcome.value for s in warm} == {"not_modified"}
        assert commits[0] < count
        assert all(s.last_success_at is not None for s in store.source_states())
    finally:
        store.close()


@pytest.mark.parametrize(("position", "size"), [(0, 1), (1, 3), (4, 6), (39, 40)])
def test_a_better_copy_keeps_the_story_identity_wherever_it_sits_in_its_feed(
    store: Store, position: int, size: int
) -> None:
    """The copy that takes a story over carries the feed id readers already know.

    Main stored it only when the better copy was the first new row of its
    source's insert: an executemany takes its columns from the first row, so
    the inherited ``story_source_id``/``story_guid`` of any later row were
    dropped and feed readers saw the story as a second entry.
    """
    outlet, publisher = (
        Source(id="outlet", url="https://outlet.example.org/feed"),
        Source(id="s0", url="https://s0.example.org/feed"),
    )
    store.sync_sources([outlet, publisher], now=T0)
    story = make_item("s0", 1000, title="Shared story")
    copy = replace(story, source_id="outlet", guid="outlet-copy", published_at=T0)
    store.save_items("outlet", [copy], fetched_at=T0, next_fetch_at=LATER)

    own = [make_item("s0", n, published=T0 - timedelta(hours=n)) for n in range(size - 1)]
    items = [*own[:position], story, *own[position:]]
    counts = store.save_items("s0", items, fetched_at=LATER, next_fetch_at=LATER)

    assert (counts.new, counts.updated) == (size - 1, 1)  # the takeover is an update
    with store.engine.connect() as conn:
        rows = {
            (r.source_id, r.guid): r
            for r in conn.execute(
                sa.select(schema.items).where(schema.items.c.guid.in_([story.guid, copy.guid]))
            )
        }
    winner, loser = rows[("s0", story.guid)], rows[("outlet", copy.guid)]
    assert winner.duplicate_of is None and loser.duplicate_of == winner.id
    assert (winner.story_source_id, winner.story_guid) == ("outlet", "outlet-copy")
    assert winner.first_seen_at == T0  # inherited: not a new story for the digest
