"""The storage layer on real SQLite and a real PostgreSQL (the `store` fixture runs both)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError

from aggregator.errors import StoreError
from aggregator.models import Item, Source
from aggregator.store import Store
from tests.support.items import make_item as build_item

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def make_source(source_id: str, url: str | None = None) -> Source:
    return Source(id=source_id, url=url or f"https://{source_id}.example.org/feed", type="feed")


def make_item(source_id: str, n: int, *, title: str | None = None, body: str = "") -> Item:
    return build_item(
        source_id,
        n,
        title=title,
        text=body or None,
        section="ko-pick",
        categories=("Ko-pick",),
        published=T0 + timedelta(hours=n),
    )


def save(store: Store, source_id: str, items: list[Item], at: datetime = T0):
    return store.save_items(
        source_id, items, fetched_at=at, next_fetch_at=at + timedelta(hours=1), etag='"v1"'
    )


def test_first_save_stores_everything_and_second_is_a_no_op(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    items = [make_item("kobiz", n) for n in range(5)]

    first = save(store, "kobiz", items)
    second = save(store, "kobiz", items)

    assert (first.new, first.updated, first.duplicates, first.unchanged) == (5, 0, 0, 0)
    assert (second.new, second.updated, second.duplicates, second.unchanged) == (0, 0, 0, 5)
    assert store.count_items() == 5
    state = store.source_state("kobiz")
    assert state is not None and state.etag == '"v1"' and state.error_count == 0


def test_changed_entry_is_updated_in_place_not_duplicated(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    original = make_item("kobiz", 1)
    save(store, "kobiz", [original])
    edited = replace(original, title="Item 1, corrected", content_hash="new-hash")

    counts = save(store, "kobiz", [edited], at=T0 + timedelta(hours=2))

    assert (counts.new, counts.updated) == (0, 1)
    [stored] = store.recent_items(10)
    assert stored.title == "Item 1, corrected"
    assert stored.first_seen_at == T0  # first seen never moves on update
    assert store.count_items() == 1


def test_same_story_in_two_sources_is_stored_once_plus_a_marked_duplicate(store: Store) -> None:
    store.sync_sources([make_source("kobiz"), make_source("yonhap")])
    save(store, "kobiz", [make_item("kobiz", 1, title="Exhuma sweeps awards")])
    echo = replace(
        make_item("yonhap", 7, title="Exhuma sweeps awards"),
        canonical_url="https://yonhap.example.org/other-path",
    )

    counts = save(store, "yonhap", [echo])

    assert (counts.new, counts.duplicates) == (0, 1)
    visible = store.recent_items(10)
    assert [i.source_id for i in visible] == ["kobiz"]
    everything = store.recent_items(10, include_duplicates=True)
    dup = next(i for i in everything if i.source_id == "yonhap")
    assert dup.duplicate_of == visible[0].id


def test_duplicate_within_one_batch_is_detected(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    a = make_item("kobiz", 1)
    b = replace(make_item("kobiz", 2), canonical_url=a.canonical_url)

    counts = save(store, "kobiz", [a, b])

    assert (counts.new, counts.duplicates) == (1, 1)
    assert store.count_items(include_duplicates=False) == 1


def test_failures_count_up_and_success_resets(store: Store) -> None:
    store.sync_sources([make_source("dead")])
    for n in range(3):
        count = store.record_failure(
            "dead",
            "HTTP 503 from https://dead.example.org/feed",
            fetched_at=T0,
            next_fetch_at=T0 + timedelta(minutes=2**n),
        )
    assert count == 3
    store.record_failure(
        "dead",
        'selector "p.tit a" matched 0 of 10 items',
        fetched_at=T0,
        next_fetch_at=T0,
        broken=True,
    )
    state = store.source_state("dead")
    assert state is not None and state.error_count == 4
    assert state.broken_reason == 'selector "p.tit a" matched 0 of 10 items'

    store.record_not_modified("dead", fetched_at=T0, next_fetch_at=T0 + timedelta(hours=1))

    state = store.source_state("dead")
    assert state is not None
    assert (state.error_count, state.last_error, state.broken_reason) == (0, None, None)


def test_failed_scrape_never_deletes_stored_items(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    save(store, "kobiz", [make_item("kobiz", n) for n in range(3)])

    store.record_failure("kobiz", "matched nothing", fetched_at=T0, next_fetch_at=T0, broken=True)

    assert store.count_items() == 3


def test_config_url_change_drops_validators_but_keeps_items(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    save(store, "kobiz", [make_item("kobiz", 1)])

    store.sync_sources([make_source("kobiz", "https://kobiz.example.org/new-feed")])

    state = store.source_state("kobiz")
    assert state is not None and state.url == "https://kobiz.example.org/new-feed"
    assert state.etag is None
    assert store.count_items() == 1


def test_permanent_redirect_updates_stored_url(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    store.save_items(
        "kobiz", [], fetched_at=T0, next_fetch_at=T0, new_url="https://moved.example.org/feed"
    )
    state = store.source_state("kobiz")
    assert state is not None and state.url == "https://moved.example.org/feed"

    store.sync_sources([make_source("kobiz")])  # same configured URL: keep the moved one
    state = store.source_state("kobiz")
    assert state is not None and state.url == "https://moved.example.org/feed"


def test_known_guids_and_period_queries(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    save(store, "kobiz", [make_item("kobiz", n) for n in range(3)], at=T0)
    save(store, "kobiz", [make_item("kobiz", n) for n in range(3, 5)], at=T0 + timedelta(days=8))

    assert store.known_guids("kobiz", ["kobiz-0", "kobiz-4", "kobiz-99"]) == {
        "kobiz-0",
        "kobiz-4",
    }
    week = store.items_first_seen_between(T0 + timedelta(days=7), T0 + timedelta(days=14))
    assert sorted(i.guid for i in week) == ["kobiz-3", "kobiz-4"]
    newest = store.recent_items(2)
    assert [i.guid for i in newest] == ["kobiz-4", "kobiz-3"]


def test_korean_text_round_trips(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    item = make_item("kobiz", 1, title="2026년 가장 기대되는 한국 영화", body="봉준호 감독의 신작.")
    save(store, "kobiz", [item])

    [stored] = store.recent_items(1)
    assert stored.title == "2026년 가장 기대되는 한국 영화"
    assert stored.text == "봉준호 감독의 신작."
    assert stored.published_at.tzinfo is not None


def test_naive_datetimes_are_refused(store: Store) -> None:
    store.sync_sources([make_source("kobiz")])
    naive = replace(make_item("kobiz", 1), published_at=datetime(2026, 11, 2, 9, 0))
    with pytest.raises(StatementError, match="naive"):
        save(store, "kobiz", [naive])
    assert store.count_items() == 0  # the transaction rolled back


# The newest migration file's revision: what every database is brought to.
HEAD = max(
    p.name.split("_", 1)[0]
    for p in (Path(__file__).parent.parent / "aggregator/store/migrations/versions").glob("0*.py")
)


def _revisions(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]


def test_migration_is_idempotent(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    first = Store.open(db_url)
    assert _revisions(first) == [HEAD]
    first.sync_sources([make_source("kobiz")])
    save(first, "kobiz", [make_item("kobiz", 1)])
    first.close()

    with caplog.at_level(logging.INFO, logger="aggregator"):
        again = Store.open(db_url)
    try:
        assert "migrating database" not in caplog.text  # nothing left to apply
        assert _revisions(again) == [HEAD]
        assert again.count_items() == 1
        assert [s.id for s in again.source_states()] == ["kobiz"]
    finally:
        again.close()


def test_an_older_schema_is_upgraded_in_place_keeping_its_rows(db_url: str) -> None:
    from alembic import command

    from aggregator.store.engine import _alembic_config, make_engine

    engine = make_engine(db_url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        # Only 0001's columns: the insert names no others.
        conn.execute(
            text(
                "INSERT INTO sources (id, config_url, url, error_count, created_at)"
                " VALUES ('old', 'https://o.kr/', 'https://o.kr/', 0, :at)"
            ),
            {"at": T0.replace(tzinfo=None) if engine.dialect.name == "sqlite" else T0},
        )
    engine.dispose()

    store = Store.open(db_url)
    try:
        assert _revisions(store) == [HEAD]
        [state] = store.source_states()
        assert (state.id, state.url) == ("old", "https://o.kr/")
        old = store.source_state("old")
        assert old is not None and old.warning is None  # a later column, on the old row
    finally:
        store.close()


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match=r"cannot connect to database .*127\.0\.0\.1:1"):
        Store.open("postgresql://user:secret@127.0.0.1:1/nothing")


def test_password_never_appears_in_errors() -> None:
    with pytest.raises(StoreError) as info:
        Store.open("postgresql://user:hunter2@127.0.0.1:1/nothing")
    assert "hunter2" not in str(info.value)


def test_feed_that_changes_every_guid_does_not_flood_the_store(store: Store) -> None:
    store.sync_sources([make_source("churn")])
    first = [make_item("churn", n) for n in range(4)]
    save(store, "churn", first)

    for fetch in range(1, 4):
        renamed = [replace(i, guid=f"{i.guid}-fetch{fetch}") for i in first]
        counts = save(store, "churn", renamed, at=T0 + timedelta(hours=fetch))
        assert (counts.new, counts.churned) == (0, 4)

    assert store.count_items() == 4
    assert sorted(i.guid for i in store.recent_items(10)) == [i.guid for i in first]
    state = store.source_state("churn")
    assert state is not None and state.warning
    assert "changes its guids on every fetch" in state.warning
