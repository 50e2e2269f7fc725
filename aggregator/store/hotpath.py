"""The statements every source's save runs, behind one interface per driver.

A cold ingest saves each source with the same handful of statements: the
known guids, the stored items sharing a link or fingerprint, the new rows'
ids, the source's fetch state, the items INSERT, and a savepoint or two.
Through SQLAlchemy Core each execution costs ~0.1–0.2 ms of Python
(parameter processing, expanding IN lists, result wrapping), more than
SQLite spends running these small statements.

:class:`CoreStatements` runs them through SQLAlchemy (PostgreSQL, and any
other dialect). :class:`SqliteStatements` runs the same SQL through the
``sqlite3`` connection underneath the SQLAlchemy connection: same
connection, same transaction, statements prepared once by ``sqlite3``'s own
cache, plain tuples in and out. Values are bound exactly as SQLAlchemy
binds them (:meth:`~aggregator.store.types.UTCDateTime.sqlite_text` for
timestamps), so what is stored does not depend on the path; driver errors
are raised as SQLAlchemy's exceptions, so the callers' handling (a refused
row, a database in trouble) is the same on both. Both paths run the whole
store test suite: SQLite this one, PostgreSQL the other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select, update
from sqlalchemy.exc import DBAPIError

from . import schema
from .copies import Copy, SourceRank, host_of, load_copies, load_source_ranks, take_over
from .types import UTCDateTime

_items = schema.items
_sources = schema.sources

# (id, guid_hash, content_hash) of a source's items with these guid keys.
_KNOWN_GUIDS = select(_items.c.id, _items.c.guid_hash, _items.c.content_hash).where(
    _items.c.source_id == bindparam("source"),
    _items.c.guid_hash.in_(bindparam("keys", expanding=True)),
)
# Every stored item sharing a canonical link (any source, originals and
# duplicates: the link match is also how a source's churning guids are
# recognised) or a fingerprint (originals only); oldest first.
_LINKED_COLUMNS = (
    _items.c.id,
    _items.c.source_id,
    _items.c.guid,
    _items.c.canonical_url_hash,
    _items.c.fingerprint,
    _items.c.content_hash,
    _items.c.duplicate_of,
)
_BY_LINK_OR_PRINT = (
    select(*_LINKED_COLUMNS)
    .where(
        or_(
            _items.c.canonical_url_hash.in_(bindparam("links", expanding=True)),
            _items.c.fingerprint.in_(bindparam("prints", expanding=True))
            & _items.c.duplicate_of.is_(None),
        )
    )
    .order_by(_items.c.id)
)
# (id, guid_hash, canonical_url, fingerprint, duplicate_of) of rows just inserted.
_STORED_NOW = select(
    _items.c.id,
    _items.c.guid_hash,
    _items.c.canonical_url,
    _items.c.fingerprint,
    _items.c.duplicate_of,
).where(
    _items.c.source_id == bindparam("source"),
    _items.c.guid_hash.in_(bindparam("keys", expanding=True)),
)
# SET columns come from the parameter names.
_UPDATE_SOURCE = update(_sources).where(_sources.c.id == bindparam("source"))

# The source state columns a save writes, in this order (``url`` only after a
# permanent redirect); the timestamps are bound as UTCDateTime does.
SOURCE_STATE = (
    "last_fetched_at",
    "last_success_at",
    "next_fetch_at",
    "error_count",
    "last_error",
    "broken_reason",
    "warning",
    "etag",
    "last_modified",
    "content_hash",
)
_SOURCE_TIMES = frozenset({"last_fetched_at", "last_success_at", "next_fetch_at"})


class CoreStatements:
    """The hot statements through SQLAlchemy Core: any dialect."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def known_guids(self, source_id: str, keys: Sequence[str]) -> Sequence[Sequence[Any]]:
        """(id, guid_hash, content_hash) of ``source_id``'s items with these guid keys."""
        return self.conn.execute(_KNOWN_GUIDS, {"source": source_id, "keys": keys}).all()

    def by_link_or_print(
        self, links: Sequence[str], prints: Sequence[str]
    ) -> Sequence[Sequence[Any]]:
        """(id, source_id, guid, canonical_url_hash, fingerprint, content_hash, duplicate_of)
        of every item with one of ``links`` or, for originals, one of ``prints``; by id."""
        return self.conn.execute(_BY_LINK_OR_PRINT, {"links": links, "prints": prints}).all()

    def stored_now(self, source_id: str, keys: Sequence[str]) -> Sequence[Sequence[Any]]:
        """(id, guid_hash, canonical_url, fingerprint, duplicate_of) of these guid keys."""
        return self.conn.execute(_STORED_NOW, {"source": source_id, "keys": keys}).all()

    def update_source(self, source_id: str, state: Mapping[str, Any]) -> None:
        """Write ``state`` (:data:`SOURCE_STATE` columns, maybe ``url``) to the source's row."""
        self.conn.execute(_UPDATE_SOURCE, {"source": source_id, **state})

    def insert_items(self, sql: str, params: Sequence[Any]) -> None:
        """Run the items INSERT (its compiled ``sql``) over driver-ready ``params``."""
        self.conn.exec_driver_sql(sql, list(params))

    def source_ranks(self, source_ids: Sequence[str]) -> dict[str, SourceRank]:
        """:func:`~aggregator.store.copies.load_source_ranks`."""
        return load_source_ranks(self.conn, source_ids)

    def copies(self, ids: Iterable[int]) -> dict[int, Copy]:
        """:func:`~aggregator.store.copies.load_copies`."""
        return load_copies(self.conn, ids)

    def take_over(self, old_id: int, new_id: int) -> None:
        """:func:`~aggregator.store.copies.take_over`."""
        take_over(self.conn, old_id, new_id)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Statements inside roll back together on an exception (which propagates)."""
        with self.conn.begin_nested():
            yield


def _stored_time(text: Any) -> datetime:
    """A NOT NULL timestamp column's value, read as SQLAlchemy would."""
    value = UTCDateTime.sqlite_value(text)
    if value is None:
        raise ValueError("NULL in a NOT NULL timestamp column")
    return value


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _column_names(columns: Sequence[Any]) -> str:
    return ", ".join(c.name for c in columns)


class SqliteStatements(CoreStatements):
    """The same statements through the ``sqlite3`` connection under ``conn``.

    The SQL is the same as the Core statements render (IN lists as ``?``
    marks, one per key); ``sqlite3`` keeps each text prepared in its
    statement cache. Savepoints are plain SAVEPOINT / RELEASE / ROLLBACK TO,
    nested inside SQLAlchemy's transaction and savepoints as the code nests
    them.
    """

    _SAVEPOINT = "aggregator_write"

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        self._raw = raw

    def _run(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._raw.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._wrapped(exc, sql, params, many=False) from exc

    def _wrapped(self, exc: sqlite3.Error, sql: str, params: Any, *, many: bool) -> BaseException:
        """The exception SQLAlchemy would raise for ``exc`` (type, disconnect flag, statement)."""
        dialect = self.conn.dialect
        return DBAPIError.instance(
            sql,
            params,
            exc,
            sqlite3.Error,
            connection_invalidated=dialect.is_disconnect(exc, self.conn.connection, None),  # type: ignore[arg-type]
            dialect=dialect,
            ismulti=many,
        )

    def known_guids(self, source_id: str, keys: Sequence[str]) -> Sequence[Sequence[Any]]:
        sql = (
            "SELECT id, guid_hash, content_hash FROM items "
            f"WHERE source_id = ? AND guid_hash IN ({_marks(len(keys))})"
        )
        return self._run(sql, [source_id, *keys])

    def by_link_or_print(
        self, links: Sequence[str], prints: Sequence[str]
    ) -> Sequence[Sequence[Any]]:
        sql = (
            f"SELECT {_column_names(_LINKED_COLUMNS)} FROM items "
            f"WHERE canonical_url_hash IN ({_marks(len(links))}) "
            f"OR (fingerprint IN ({_marks(len(prints))}) AND duplicate_of IS NULL) "
            "ORDER BY id"
        )
        return self._run(sql, [*links, *prints])

    def stored_now(self, source_id: str, keys: Sequence[str]) -> Sequence[Sequence[Any]]:
        sql = (
            "SELECT id, guid_hash, canonical_url, fingerprint, duplicate_of FROM items "
            f"WHERE source_id = ? AND guid_hash IN ({_marks(len(keys))})"
        )
        return self._run(sql, [source_id, *keys])

    def update_source(self, source_id: str, state: Mapping[str, Any]) -> None:
        names = [n for n in SOURCE_STATE if n in state]
        if "url" in state:
            names.append("url")
        values = [
            UTCDateTime.sqlite_text(state[n]) if n in _SOURCE_TIMES else state[n] for n in names
        ]
        sql = f"UPDATE sources SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?"
        self._run(sql, [*values, source_id])

    def source_ranks(self, source_ids: Sequence[str]) -> dict[str, SourceRank]:
        wanted = sorted(set(source_ids))
        if not wanted:
            return {}
        sql = f"SELECT id, url, priority FROM sources WHERE id IN ({_marks(len(wanted))})"
        return {
            source_id: SourceRank(host=host_of(url), priority=int(priority or 0))
            for source_id, url, priority in self._run(sql, wanted)
        }

    def copies(self, ids: Iterable[int]) -> dict[int, Copy]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        sql = (
            "SELECT id, source_id, guid, canonical_url, published_at, first_seen_at, "
            f"story_source_id, story_guid FROM items WHERE id IN ({_marks(len(wanted))})"
        )
        return {
            row[0]: Copy(
                id=row[0],
                source_id=row[1],
                guid=row[2],
                canonical_url=row[3],
                published_at=_stored_time(row[4]),
                first_seen_at=_stored_time(row[5]),
                story_source_id=row[6],
                story_guid=row[7],
            )
            for row in self._run(sql, wanted)
        }

    def take_over(self, old_id: int, new_id: int) -> None:
        self._run("UPDATE items SET duplicate_of = ? WHERE duplicate_of = ?", (new_id, old_id))
        self._run("UPDATE items SET duplicate_of = ? WHERE id = ?", (new_id, old_id))

    def insert_items(self, sql: str, params: Sequence[Any]) -> None:
        try:
            self._raw.executemany(sql, params)
        except sqlite3.Error as exc:
            raise self._wrapped(exc, sql, list(params), many=True) from exc

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._run(f"SAVEPOINT {self._SAVEPOINT}", ())
        try:
            yield
        except BaseException:
            # A failure that ended the whole transaction (disk full, I/O
            # error) left no savepoint to roll back to: the original error is
            # what the caller needs to see.
            # (A failing ROLLBACK TO raises, chained to it: the batch fails.)
            if self._raw.in_transaction:
                self._run(f"ROLLBACK TO {self._SAVEPOINT}", ())
                self._run(f"RELEASE {self._SAVEPOINT}", ())
            raise
        self._run(f"RELEASE {self._SAVEPOINT}", ())


def statements(conn: Connection) -> CoreStatements:
    """The statements for ``conn``'s driver: SQLite's own module when it is pysqlite."""
    if conn.dialect.name == "sqlite" and conn.dialect.driver == "pysqlite":
        return SqliteStatements(conn)
    return CoreStatements(conn)
