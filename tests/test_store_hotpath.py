"""The save path's statements through ``sqlite3`` itself store what SQLAlchemy Core stores.

On SQLite, :mod:`aggregator.store.hotpath` runs a source's save through the
driver underneath the SQLAlchemy connection, binding timestamps with
``UTCDateTime.sqlite_text`` instead of SQLAlchemy's two stacked processors.
Checked here: the text bound (and the value read back) equals SQLAlchemy's
on generated timestamps of every zone and edge, and three passes of writes
(new, changed, duplicate and taken-over stories, 304s, errors, a refused
entry) leave the same bytes in every column of both databases.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from aggregator.store import SaveCounts, SaveItems, Store, hotpath
from aggregator.store.types import UTCDateTime
from tests.support.items import make_item
from tests.test_store_batch import T0, _rounds, _sources

_DIALECT = sqlite.dialect()
_ZONES = [
    UTC,
    ZoneInfo("UTC"),
    ZoneInfo("Asia/Seoul"),
    ZoneInfo("America/St_Johns"),
    timezone(timedelta(hours=-5, minutes=-30)),
    timezone(timedelta(hours=14)),
    timezone(timedelta(seconds=-1)),
]


def _moments() -> list[datetime]:
    out = []
    for year in (1, 9, 999, 1970, 2026, 9999):
        for month, day, hour in ((1, 1, 0), (2, 28, 23), (12, 31, 12)):
            for micro in (0, 1, 500_000, 999_999):
                for zone in _ZONES:
                    out.append(datetime(year, month, day, hour, 59, 7, micro, tzinfo=zone))
    return out


def _outcome(fn: Any, value: Any) -> Any:
    try:
        return fn(value)
    except Exception as exc:  # the same refusal on both sides counts as the same
        return type(exc)


def test_timestamps_bind_to_the_text_sqlalchemy_binds() -> None:
    sqlalchemy_bind = UTCDateTime().dialect_impl(_DIALECT).bind_processor(_DIALECT)
    assert sqlalchemy_bind is not None
    values: list[Any] = [*_moments(), None, datetime(2026, 1, 2, 3, 4, 5), "2026-01-02", 7]
    for value in values:
        assert _outcome(UTCDateTime.sqlite_text, value) == _outcome(sqlalchemy_bind, value), value
    # A naive timestamp is a bug upstream: refused by both, with the same error.
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime.sqlite_text(datetime(2026, 1, 2))


def test_stored_timestamps_read_back_as_sqlalchemy_reads_them() -> None:
    sqlalchemy_read = UTCDateTime().dialect_impl(_DIALECT).result_processor(_DIALECT, None)
    assert sqlalchemy_read is not None
    for moment in _moments():
        text = UTCDateTime.sqlite_text(moment) if moment.year > 1 else None
        if text is None:
            continue
        ours, theirs = UTCDateTime.sqlite_value(text), sqlalchemy_read(text)
        assert ours == theirs and ours is not None and ours.tzinfo is UTC, text
    assert UTCDateTime.sqlite_value(None) is None


def _raw_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of items and sources as SQLite holds it (the text, not a parsed value)."""
    conn = sqlite3.connect(path)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            for table in ("items", "sources")
        }
    finally:
        conn.close()


def _refuse_marked_titles(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_marked BEFORE INSERT ON items WHEN NEW.title LIKE 'refuse%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
        )


@pytest.mark.parametrize("count", [2, 7, 23])
def test_the_sqlite_driver_path_stores_the_bytes_the_core_path_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    sources = _sources(count)
    paths = {name: tmp_path / f"{name}.db" for name in ("core", "driver")}
    stores = {name: Store.open(f"sqlite:///{path}") for name, path in paths.items()}
    try:
        used: dict[str, set[type]] = {"core": set(), "driver": set()}
        for store in stores.values():
            store.sync_sources(sources, now=T0)
            _refuse_marked_titles(store)
        # A refused entry amid accepted ones, in the first source's cold write.
        refused = make_item(sources[0].id, 900, title="refuse me")
        rounds = _rounds(sources)
        first = rounds[0][-1]
        assert isinstance(first, SaveItems)
        rounds[0][-1] = SaveItems(first.source_id, [*first.items, refused], T0, T0)
        for writes in rounds:
            results = {}
            for name, store in stores.items():
                with monkeypatch.context() as patch:

                    def spy(conn: sa.Connection, name: str = name) -> hotpath.CoreStatements:
                        chosen = (
                            hotpath.CoreStatements(conn)
                            if name == "core"
                            else hotpath.statements(conn)
                        )
                        used[name].add(type(chosen))
                        return chosen

                    patch.setattr("aggregator.store.writes.statements", spy)
                    results[name] = [repr(r) for r in store.save_batch(writes)]
                    results[name + " alone"] = [repr(store.save_batch([w])) for w in writes[:2]]
            assert results["driver"] == results["core"]
            assert results["driver alone"] == results["core alone"]
        assert used == {"core": {hotpath.CoreStatements}, "driver": {hotpath.SqliteStatements}}
        for store in stores.values():
            store.close()
        core, driver = _raw_rows(paths["core"]), _raw_rows(paths["driver"])
        assert driver == core
        # What the rounds exercised: duplicates, takeovers, the refused entry.
        conn = sqlite3.connect(paths["driver"])
        try:
            assert conn.execute(
                "SELECT count(*) FROM items WHERE title = 'refuse me'"
            ).fetchone() == (0,)
            warned = conn.execute(
                "SELECT count(*) FROM sources WHERE warning LIKE '%refused by trigger%'"
            )
            assert warned.fetchone() == (1,)
            if count > 2:
                dupes = conn.execute("SELECT count(*) FROM items WHERE duplicate_of IS NOT NULL")
                stories = conn.execute("SELECT count(*) FROM items WHERE story_guid IS NOT NULL")
                assert dupes.fetchone()[0] > 0 and stories.fetchone()[0] > 0
        finally:
            conn.close()
    finally:
        for store in stores.values():
            store.close()


@pytest.mark.parametrize("alone", [True, False])
def test_a_refusal_on_the_driver_path_raises_what_the_core_path_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone: bool
) -> None:
    sources = _sources(3)
    raised = {}
    for name in ("core", "driver"):
        store = Store.open(f"sqlite:///{tmp_path / name}.db")
        try:
            store.sync_sources(sources, now=T0)
            with store.engine.begin() as conn:
                conn.exec_driver_sql(
                    "CREATE TRIGGER refuse_source BEFORE UPDATE ON sources WHEN NEW.id = 's1' "
                    "BEGIN SELECT RAISE(ABORT, 'source refused'); END"
                )
            if name == "core":
                monkeypatch.setattr("aggregator.store.writes.statements", hotpath.CoreStatements)
            writes = [SaveItems(s.id, [make_item(s.id, 1)], T0, T0) for s in sources]
            if alone:
                with pytest.raises(sa.exc.DBAPIError) as caught:
                    store.save_batch(writes[1:2])
                error: BaseException = caught.value
            else:
                results = store.save_batch(writes)
                assert isinstance(results[0], SaveCounts) and isinstance(results[2], SaveCounts)
                assert isinstance(results[1], Exception)
                error = results[1]
            raised[name] = (type(error), str(getattr(error, "orig", error)), store.count_items())
        finally:
            monkeypatch.undo()
            store.close()
    assert raised["driver"] == raised["core"]
    assert raised["driver"][0] is sa.exc.IntegrityError and "source refused" in raised["driver"][1]


@pytest.mark.parametrize(
    "categories",
    [(), ("Film",), ("영화", 'Festival "Busan"'), tuple(f"c{n}" for n in range(30)), ("",)],
)
def test_categories_are_stored_as_sqlalchemy_dumps_the_list(
    tmp_path: Path, categories: tuple[str, ...]
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        store.sync_sources(_sources(1), now=T0)
        # Several rows share the value (the insert converts each distinct one once).
        items = [replace(make_item("s0", n), categories=categories) for n in range(3)]
        store.save_batch([SaveItems("s0", items, T0, T0)])
    finally:
        store.close()
    processor = sa.JSON().dialect_impl(_DIALECT).bind_processor(_DIALECT)
    assert processor is not None
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        stored = [r[0] for r in conn.execute("SELECT categories FROM items")]
    finally:
        conn.close()
    assert stored == [processor(list(categories))] * 3
