"""The ingest write path: sources' items and fetch state, several sources per transaction.

An ingest pass ends every source with one write: its items and fetch state
(:class:`SaveItems`), a 304 (:class:`NotModified`) or an error
(:class:`Failure`). :meth:`WritesMixin.save_batch` writes any number of them
in ONE transaction, each source in its own savepoint: a source the database
refuses is rolled back alone and the others are kept, while a database in
trouble (locked, disk full, connection lost) fails the whole batch with a
:class:`~aggregator.errors.StoreError`, as it would have failed each source.
One commit per batch instead of one per source is most of what a warm pass
(every source answers 304) costs, and a tenth of a cold one.

The rest is fewer, cheaper statements per source: every lookup is one query
per source (IN lists of at most :data:`~aggregator.store.base.CHUNK` keys);
new rows go in one executemany; a batch's 304s are one executemany UPDATE.
The statements of a source's save are :mod:`~aggregator.store.hotpath`'s:
on SQLite they run through ``sqlite3`` under the SQLAlchemy connection,
without SQLAlchemy's per-execution setup.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Connection, bindparam, func, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError

from ..errors import StoreError
from ..models import Item
from . import schema
from .base import CHUNK, StoreBase, chunks, insert_for
from .copies import (
    UNKNOWN_SOURCE,
    Copy,
    SourceRank,
    better_copies,
    inherited_values,
)
from .hotpath import CoreStatements, statements
from .schema import link_key, text_key
from .types import UTCDateTime

log = logging.getLogger(__name__)

__all__ = ["Failure", "NotModified", "SaveCounts", "SaveItems", "SourceWrite", "WritesMixin"]

# How many refused entries a source's warning names (the rest are counted).
_REFUSALS_NAMED = 3


@dataclass(frozen=True, slots=True)
class SaveCounts:
    """What one save of a source's items did."""

    new: int = 0
    updated: int = 0
    duplicates: int = 0
    unchanged: int = 0
    # Entries whose guid was new but whose link was already stored for the
    # source: matched by link instead of being stored again.
    churned: int = 0
    # Entries the database refused (each in its own savepoint): "guid: reason".
    refused: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SaveItems:
    """A source's fetched items and fetch state: the arguments of :meth:`WritesMixin.save_items`."""

    source_id: str
    items: Sequence[Item]
    fetched_at: datetime
    next_fetch_at: datetime
    etag: str | None = None
    last_modified: str | None = None
    content_hash: str | None = None
    new_url: str | None = None
    warnings: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class NotModified:
    """A 304 or an unchanged listing: :meth:`WritesMixin.record_not_modified`'s arguments."""

    source_id: str
    fetched_at: datetime
    next_fetch_at: datetime
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed fetch or parse: :meth:`WritesMixin.record_failure`'s arguments."""

    source_id: str
    error: str
    fetched_at: datetime
    next_fetch_at: datetime
    broken: bool = False


SourceWrite = SaveItems | NotModified | Failure
# What each write gives back: SaveItems → SaveCounts, NotModified → None,
# Failure → the source's new consecutive error count.
WriteResult = SaveCounts | int | None


def _first_line(exc: DBAPIError) -> str:
    return (str(exc.orig or exc).splitlines() or [type(exc).__name__])[0][:300]


def _fails_the_batch(exc: BaseException) -> bool:
    """A database in trouble (locked, full, gone), not one source's data: stop the batch."""
    if isinstance(exc, StoreError | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


_items = schema.items
_sources = schema.sources

# Statements built once: executing a prebuilt statement skips building the
# expression and most of computing its cache key, which per call cost more
# than SQLite's own work for these small queries. Those every source's save
# runs are in :mod:`.hotpath`, with a path for SQLite's own driver.
# SET columns come from the parameter names (see _item_values).
_UPDATE_ITEM = update(_items).where(_items.c.id == bindparam("item_id"))
# A 304 keeps the stored validators unless the response sent new ones.
_NOT_MODIFIED = (
    update(_sources)
    .where(_sources.c.id == bindparam("source"))
    .values(
        last_fetched_at=bindparam("fetched", type_=UTCDateTime()),
        last_success_at=bindparam("fetched", type_=UTCDateTime()),
        next_fetch_at=bindparam("next_at", type_=UTCDateTime()),
        error_count=0,
        last_error=None,
        broken_reason=None,
        etag=func.coalesce(bindparam("new_etag", type_=_sources.c.etag.type), _sources.c.etag),
        last_modified=func.coalesce(
            bindparam("new_last_modified", type_=_sources.c.last_modified.type),
            _sources.c.last_modified,
        ),
    )
)
_ERROR_COUNT = select(_sources.c.error_count).where(_sources.c.id == bindparam("source"))


def _item_values(item: Item, link_hash: str) -> dict[str, Any]:
    """Columns that follow the upstream content (everything but identity and first-seen)."""
    return {
        "url": item.url,
        "canonical_url": item.canonical_url,
        "canonical_url_hash": link_hash,
        "fingerprint": item.fingerprint,
        "content_hash": item.content_hash,
        "title": item.title,
        "summary_html": item.summary_html,
        "content_html": item.content_html,
        "text": item.text,
        "excerpt": item.excerpt,
        "image_url": item.image_url,
        "author": item.author,
        "categories": list(item.categories),
        "section": item.section,
        "language": item.language,
        "published_at": item.published_at,
        "updated_at": item.updated_at,
        "date_missing": item.date_missing,
    }


@dataclass(slots=True)
class _Entry:
    """An item of the batch with its index keys, computed once."""

    item: Item
    guid_hash: str
    link_hash: str


class _Ranks:
    """Sources' ranks (host, priority) for choosing between copies, loaded once per batch."""

    def __init__(self) -> None:
        self._known: dict[str, SourceRank] = {}

    def get(self, sql: CoreStatements, source_ids: Sequence[str]) -> dict[str, SourceRank]:
        missing = [s for s in source_ids if s not in self._known]
        if missing:
            self._known.update(sql.source_ranks(missing))
        return {s: self._known.get(s, UNKNOWN_SOURCE) for s in source_ids}

    def forget(self, source_id: str) -> None:
        """The source's URL changed (a permanent redirect): its host may have too."""
        self._known.pop(source_id, None)


class WritesMixin(StoreBase):
    """Saving fetched items and recording fetches, alone or many sources per transaction."""

    # ------------------------------------------------------------ one source

    def save_items(
        self,
        source_id: str,
        items: Sequence[Item],
        *,
        fetched_at: datetime,
        next_fetch_at: datetime,
        etag: str | None = None,
        last_modified: str | None = None,
        content_hash: str | None = None,
        new_url: str | None = None,
        warnings: Sequence[str] = (),
    ) -> SaveCounts:
        """Save one source's fetched items and its fetch state in ONE transaction.

        ``warnings`` are problems found before the store (a malformed feed,
        entries refused for size): stored on the source for ``status``
        together with any found here.

        An item already stored for this source (same guid) is updated in place
        when its content hash changed, else left alone. A new item whose
        canonical link or fingerprint matches an item already stored (from any
        source) is stored marked ``duplicate_of`` that first item, unless it
        is the better copy of the story (:mod:`~aggregator.store.copies`),
        which then takes over. Known ids are loaded with one query per 500
        keys: no per-entry round trips.

        An entry the database refuses is that entry's problem: it is retried
        alone in a savepoint, skipped if it fails again, and named in the
        source's warning; the other entries are stored.
        """
        write = SaveItems(
            source_id,
            items,
            fetched_at=fetched_at,
            next_fetch_at=next_fetch_at,
            etag=etag,
            last_modified=last_modified,
            content_hash=content_hash,
            new_url=new_url,
            warnings=warnings,
        )
        result = self._one(write)
        assert isinstance(result, SaveCounts)
        return result

    def record_not_modified(
        self,
        source_id: str,
        *,
        fetched_at: datetime,
        next_fetch_at: datetime,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> None:
        """A 304 or an unchanged page: the source is healthy, nothing to write."""
        self._one(NotModified(source_id, fetched_at, next_fetch_at, etag, last_modified))

    def record_failure(
        self,
        source_id: str,
        error: str,
        *,
        fetched_at: datetime,
        next_fetch_at: datetime,
        broken: bool = False,
    ) -> int:
        """Store the error and the backoff; returns the new consecutive error count."""
        result = self._one(Failure(source_id, error, fetched_at, next_fetch_at, broken))
        assert isinstance(result, int)
        return result

    def _one(self, write: SourceWrite) -> WriteResult:
        [result] = self.save_batch([write])
        if isinstance(result, Exception):
            raise result
        return result

    # ------------------------------------------------------------ many sources

    def save_batch(self, writes: Sequence[SourceWrite]) -> list[WriteResult | Exception]:
        """Write several sources' results in ONE transaction, each in its own savepoint.

        Returns one result per write, in order: what the single-source method
        returns, or the exception that write raised (its savepoint rolled
        back, the other writes kept). A database in trouble (locked beyond
        the busy timeout, disk full, connection lost) is not one source's
        problem: the whole batch rolls back and :class:`StoreError` is raised.
        """
        if not writes:
            return []
        results: list[WriteResult | Exception] = []
        ranks = _Ranks()
        # One write needs no savepoint: its failure rolls the transaction back.
        alone = len(writes) == 1
        with self.transaction() as conn:
            self._lock_for_writing(conn)
            sql = statements(conn)
            index = 0
            while index < len(writes):
                write = writes[index]
                if isinstance(write, NotModified):
                    # A run of 304s: one executemany (each alone only if refused).
                    end = index
                    while end < len(writes) and isinstance(writes[end], NotModified):
                        end += 1
                    run = [w for w in writes[index:end] if isinstance(w, NotModified)]
                    results.extend(self._not_modified(conn, run, alone=alone))
                    index = end
                    continue
                index += 1
                try:
                    with nullcontext() if alone else sql.savepoint():
                        result = self._write_one(sql, write, ranks)
                except Exception as exc:
                    if alone or _fails_the_batch(exc):
                        raise
                    results.append(exc)
                    continue
                results.append(result)
        return results

    def _lock_for_writing(self, conn: Connection) -> None:
        """Start the real transaction now, holding SQLite's write lock.

        pysqlite begins a transaction only at the first INSERT/UPDATE, so the
        savepoints taken before it would each commit on release; and a busy
        database must fail here, as the database's problem, not inside a
        source's savepoint as if that source were at fault.
        """
        if self.dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _write_one(
        self, sql: CoreStatements, write: SaveItems | Failure, ranks: _Ranks
    ) -> WriteResult:
        if isinstance(write, SaveItems):
            counts = self._save_items(sql, write, ranks)
            if write.new_url:
                ranks.forget(write.source_id)
            return counts
        return self._record_failure(sql.conn, write)

    def _not_modified(
        self, conn: Connection, writes: Sequence[NotModified], *, alone: bool
    ) -> list[WriteResult | Exception]:
        params = [
            {
                "source": w.source_id,
                "fetched": w.fetched_at,
                "next_at": w.next_fetch_at,
                "new_etag": w.etag,
                "new_last_modified": w.last_modified,
            }
            for w in writes
        ]
        if alone:
            conn.execute(_NOT_MODIFIED, params)
            return [None] * len(writes)
        try:
            with conn.begin_nested():
                conn.execute(_NOT_MODIFIED, params)
            return [None] * len(writes)
        except Exception as exc:
            if _fails_the_batch(exc):
                raise
        results: list[WriteResult | Exception] = []
        for one in params:
            try:
                with conn.begin_nested():
                    conn.execute(_NOT_MODIFIED, one)
                results.append(None)
            except Exception as exc:
                if _fails_the_batch(exc):
                    raise
                results.append(exc)
        return results

    @staticmethod
    def _record_failure(conn: Connection, write: Failure) -> int:
        values: dict[str, Any] = {
            "last_fetched_at": write.fetched_at,
            "next_fetch_at": write.next_fetch_at,
            "error_count": _sources.c.error_count + 1,
            "last_error": write.error[:2000],
        }
        if write.broken:
            values["broken_reason"] = write.error[:2000]
        conn.execute(update(_sources).where(_sources.c.id == write.source_id).values(**values))
        count = conn.execute(_ERROR_COUNT, {"source": write.source_id}).scalar_one_or_none()
        return int(count or 0)

    # ------------------------------------------------------------ items

    def _save_items(self, sql: CoreStatements, write: SaveItems, ranks: _Ranks) -> SaveCounts:
        source_id = write.source_id
        batch: dict[str, _Entry] = {}
        for item in write.items:
            # The last occurrence in a feed wins.
            batch[item.guid] = _Entry(item, text_key(item.guid), link_key(item.canonical_url))

        existing: dict[str, tuple[int, str]] = {}
        guid_of = {e.guid_hash: g for g, e in batch.items()}
        for chunk in chunks(list(guid_of)):
            for item_id, guid_hash, item_hash in sql.known_guids(source_id, chunk):
                existing[guid_of[guid_hash]] = (item_id, item_hash)

        churned = 0
        by_canon: dict[str, int] = {}
        by_print: dict[str, int] = {}
        unknown = [e for g, e in batch.items() if g not in existing]
        if unknown:
            by_link = self._lookup_keys(sql, source_id, unknown, by_canon, by_print)
            # A feed that invents a new guid for the same article on every
            # fetch would flood the store: match such entries by their link.
            for entry in unknown:
                match = by_link.get(entry.link_hash)
                if match is not None and match[1] not in batch:
                    churned += 1
                    existing[entry.item.guid] = (match[0], match[2])
        new_entries = [e for g, e in batch.items() if g not in existing]
        changed = [
            e for g, e in batch.items() if g in existing and existing[g][1] != e.item.content_hash
        ]
        unchanged = len(batch) - len(new_entries) - len(changed)
        notes = list(write.warnings)
        if churned and churned * 2 >= len(batch):
            notes.append(
                f"{churned} of {len(batch)} entries came with a new guid for a link "
                "already stored: this feed changes its guids on every fetch; "
                "entries are matched by link instead"
            )

        inserted = duplicates = takeovers = 0
        refused: list[str] = []
        if new_entries:
            inserted, duplicates, takeovers = self._insert_new(
                sql, source_id, new_entries, write.fetched_at, by_canon, by_print, ranks, refused
            )
        updated = self._update_changed(sql.conn, changed, existing, refused)
        if refused:
            for problem in refused:
                log.warning("%s: entry not stored: %s", source_id, problem)
            named = "; ".join(refused[:_REFUSALS_NAMED])
            more = len(refused) - _REFUSALS_NAMED
            notes.append(
                f"{len(refused)} entries not stored (database refused them): {named}"
                + (f"; and {more} more" if more > 0 else "")
            )

        state: dict[str, Any] = {
            "last_fetched_at": write.fetched_at,
            "last_success_at": write.fetched_at,
            "next_fetch_at": write.next_fetch_at,
            "error_count": 0,
            "last_error": None,
            "broken_reason": None,
            "warning": " | ".join(notes)[:2000] or None,
            "etag": write.etag,
            "last_modified": write.last_modified,
            "content_hash": write.content_hash,
        }
        if write.new_url:
            state["url"] = write.new_url
        sql.update_source(source_id, state)
        return SaveCounts(
            # A better copy of a known story is not a new story: the story's
            # shown copy changed, which is an update to readers.
            new=inserted - duplicates - takeovers,
            updated=updated + takeovers,
            duplicates=duplicates,
            unchanged=unchanged,
            churned=churned,
            refused=tuple(refused),
        )

    @staticmethod
    def _lookup_keys(
        sql: CoreStatements,
        source_id: str,
        unknown: Sequence[_Entry],
        by_canon: dict[str, int],
        by_print: dict[str, int],
    ) -> dict[str, tuple[int, str, str]]:
        """One query for the entries not known by guid: what their links and fingerprints match.

        Fills ``by_canon`` (link hash → earliest original having it) and
        ``by_print`` (fingerprint → earliest original having it), and returns
        this source's own items by link hash (id, guid, content hash), the
        earliest of each, for guids that churn.
        """
        links = sorted({e.link_hash for e in unknown})
        prints = sorted({e.item.fingerprint for e in unknown})
        rows: dict[int, Sequence[Any]] = {}
        for start in range(0, max(len(links), len(prints)), CHUNK):
            part = sql.by_link_or_print(links[start : start + CHUNK], prints[start : start + CHUNK])
            for row in part:
                rows[row[0]] = row
        wanted_links = set(links)
        wanted_prints = set(prints)
        by_link: dict[str, tuple[int, str, str]] = {}
        for item_id in sorted(rows):
            _, owner, guid, link_hash, fingerprint, item_hash, duplicate_of = rows[item_id]
            if link_hash in wanted_links:
                if owner == source_id:
                    by_link.setdefault(link_hash, (item_id, guid, item_hash))
                if duplicate_of is None:
                    by_canon.setdefault(link_hash, item_id)
            if duplicate_of is None and fingerprint in wanted_prints:
                by_print.setdefault(fingerprint, item_id)
        return by_link

    def _insert_new(
        self,
        sql: CoreStatements,
        source_id: str,
        new_entries: Sequence[_Entry],
        now: datetime,
        by_canon: dict[str, int],
        by_print: dict[str, int],
        ranks: _Ranks,
        refused: list[str],
    ) -> tuple[int, int, int]:
        """Insert new items, marking copies of known stories; (inserted, duplicates, takeovers).

        ``by_canon``/``by_print`` map link hashes and fingerprints to the
        stored original having them. A new copy that is better than the stored
        original (see :mod:`aggregator.store.copies`) takes its place instead
        of becoming its duplicate. Entries the database refuses are appended
        to ``refused`` and not counted.
        """

        def original_of(entry: _Entry) -> int | None:
            return by_canon.get(entry.link_hash) or by_print.get(entry.item.fingerprint)

        candidates: dict[int, list[Item]] = {}
        for entry in new_entries:
            original = original_of(entry)
            if original is not None:
                candidates.setdefault(original, []).append(entry.item)
        winners: dict[str, int] = {}
        replaced: dict[int, Copy] = {}
        if candidates:
            copies = sql.copies(candidates)
            owners = sorted({c.source_id for c in copies.values()} | {source_id})
            known = ranks.get(sql, owners)
            winners = better_copies(copies, candidates, {source_id: known[source_id]}, known)
            replaced = {old: copies[old] for old in winners.values()}

        # Items of this batch that repeat an earlier item of the same batch are
        # inserted in a second round, once the first one has an id.
        first_round: list[dict[str, Any]] = []
        later: list[_Entry] = []
        seen_canon: set[str] = set()
        seen_print: set[str] = set()
        for entry in new_entries:
            item = entry.item
            original = original_of(entry)
            if original is None and (
                entry.link_hash in seen_canon or item.fingerprint in seen_print
            ):
                later.append(entry)
                continue
            seen_canon.add(entry.link_hash)
            seen_print.add(item.fingerprint)
            old_id = winners.get(item.guid)
            if old_id is not None:
                row = _row(source_id, entry, now, None)
                row.update(inherited_values(replaced[old_id], now))
                first_round.append(row)
                continue
            first_round.append(_row(source_id, entry, now, original))
        stored = self._insert_rows(sql, first_round, refused)
        inserted = len(stored)
        duplicates = sum(1 for r in stored if r["duplicate_of"] is not None)
        takeovers = 0
        if not winners and not later:
            return inserted, duplicates, takeovers

        # The ids the database gave this round's rows.
        fresh: dict[str, Any] = {}
        for chunk in chunks([r["guid_hash"] for r in stored]):
            for got in sql.stored_now(source_id, chunk):
                fresh[got[1]] = got
        for guid, old_id in winners.items():
            new_row = fresh.get(text_key(guid))
            if new_row is None:
                continue  # refused
            sql.take_over(old_id, new_row[0])
            takeovers += 1
            for mapping in (by_canon, by_print):
                for key, value in mapping.items():
                    if value == old_id:
                        mapping[key] = new_row[0]
        if later:
            for item_id, _, canonical_url, fingerprint, duplicate_of in fresh.values():
                if duplicate_of is None:
                    by_canon.setdefault(link_key(canonical_url), item_id)
                    by_print.setdefault(fingerprint, item_id)
            rows = [_row(source_id, e, now, original_of(e)) for e in later]
            stored = self._insert_rows(sql, rows, refused)
            inserted += len(stored)
            duplicates += sum(1 for r in stored if r["duplicate_of"] is not None)
        return inserted, duplicates, takeovers

    def _insert_rows(
        self, sql: CoreStatements, rows: list[dict[str, Any]], refused: list[str]
    ) -> list[dict[str, Any]]:
        """Insert ``rows``; returns those stored, appending the refused ones to ``refused``.

        One executemany in a savepoint; if the database refuses it, each row
        is retried alone in its own savepoint so one bad entry (a value over a
        column's limit, a character the database rejects) costs only itself.
        A lost connection is not an entry's fault and is raised.
        """
        if not rows:
            return []
        insert = _item_insert(sql.conn.dialect)
        params = insert.parameters(rows)
        try:
            with sql.savepoint():
                sql.insert_items(insert.sql, params)
            return rows
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
        stored = []
        for row, one in zip(rows, params, strict=True):
            try:
                with sql.savepoint():
                    sql.insert_items(insert.sql, [one])
                stored.append(row)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                refused.append(f"{row['guid'][:80]}: {_first_line(exc)}")
        return stored

    @staticmethod
    def _update_changed(
        conn: Connection,
        changed: Sequence[_Entry],
        existing: dict[str, tuple[int, str]],
        refused: list[str],
    ) -> int:
        """Rewrite the stored rows of changed entries; how many were updated.

        One executemany in a savepoint; if refused, each row alone, as for inserts.
        """
        if not changed:
            return 0
        params = [
            {"item_id": existing[e.item.guid][0], **_item_values(e.item, e.link_hash)}
            for e in changed
        ]
        try:
            with conn.begin_nested():
                conn.execute(_UPDATE_ITEM, params)
            return len(params)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
        updated = 0
        for entry, one in zip(changed, params, strict=True):
            try:
                with conn.begin_nested():
                    conn.execute(_UPDATE_ITEM, one)
                updated += 1
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                refused.append(f"{entry.item.guid[:80]}: {_first_line(exc)}")
        return updated


class _ItemInsert:
    """The items INSERT compiled once per dialect, and its rows turned into driver parameters.

    SQLAlchemy's executemany builds and type-processes a parameter dict per
    row through its generic machinery; for the 40-odd rows of a source that
    was more CPU than SQLite's own insert. This does the same conversion
    with the columns' own bind processors (the ones SQLAlchemy would apply:
    UTC datetimes, JSON, booleans), once per value and nothing else, so
    what is stored is the same to the byte.
    """

    def __init__(self, dialect: Dialect) -> None:
        # ON CONFLICT DO NOTHING: a second writer (another worker) that stored
        # the same guid first wins; ours is then simply not new.
        stmt = insert_for(dialect.name)(_items).on_conflict_do_nothing(
            index_elements=["source_id", "guid_hash"]
        )
        columns = [c for c in _items.columns if c.key != "id"]
        compiled = stmt.compile(dialect=dialect, column_keys=[c.key for c in columns])
        self.sql = str(compiled)
        # qmark/format dialects take tuples in this order; named ones dicts.
        self._order: Sequence[str] | None = compiled.positiontup
        by_key = {c.key: c for c in columns}
        self._names = list(self._order or by_key)
        self._values = itemgetter(*self._names)
        # (position, processor, the memo of repeated values it shares, if any):
        # the timestamps (first_seen_at is the same on every row, updated_at
        # mostly published_at) and the categories (a few lists per feed).
        self._processors = [
            (index, process, _repeating(by_key[name].type))
            for index, name in enumerate(self._names)
            if (process := _bind_processor(by_key[name].type, dialect))
        ]

    def parameters(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """``rows`` (every column key → value) as the driver's executemany parameters."""
        out: list[Any] = []
        # Equal values bind to equal parameters (a timestamp is the same
        # instant in UTC whatever its zone; a tuple of categories dumps as
        # the list would): each is converted once per call.
        memos: dict[str, dict[Any, Any]] = {"time": {}, "json": {}}
        for row in rows:
            values = list(self._values(row))
            try:
                for index, process, repeats in self._processors:
                    value = values[index]
                    if repeats is None or (repeats == "json" and type(value) is not tuple):
                        values[index] = process(value)
                    elif (known := memos[repeats].get(value)) is not None:
                        values[index] = known
                    else:
                        values[index] = memos[repeats][value] = process(value)
            except (ValueError, TypeError) as exc:
                # What SQLAlchemy raises for a value its type refuses (a naive datetime).
                raise StatementError(str(exc), self.sql, None, exc) from exc
            if self._order is not None:
                out.append(tuple(values))
            else:
                out.append(dict(zip(self._names, values, strict=True)))
        return out


def _repeating(column_type: Any) -> str | None:
    """Which memo of :meth:`_ItemInsert.parameters` a column's values share, if any."""
    if isinstance(column_type, UTCDateTime):
        return "time"
    if isinstance(column_type, JSON):
        return "json"
    return None


def _bind_processor(column_type: Any, dialect: Dialect) -> Any:
    """The column's bind processor; for a timestamp on SQLite, the same text in one call."""
    if isinstance(column_type, UTCDateTime) and dialect.name == "sqlite":
        return UTCDateTime.sqlite_text
    return column_type.dialect_impl(dialect).bind_processor(dialect)


_ITEM_INSERTS: dict[str, _ItemInsert] = {}


def _item_insert(dialect: Dialect) -> _ItemInsert:
    key = f"{dialect.name}+{dialect.driver}"
    insert = _ITEM_INSERTS.get(key)
    if insert is None:
        insert = _ITEM_INSERTS[key] = _ItemInsert(dialect)
    return insert


def _row(source_id: str, entry: _Entry, now: datetime, duplicate_of: int | None) -> dict[str, Any]:
    return {
        "source_id": source_id,
        "guid": entry.item.guid,
        "guid_hash": entry.guid_hash,
        "first_seen_at": now,
        "duplicate_of": duplicate_of,
        # Set only when a better copy takes a story over (inherited_values).
        "story_source_id": None,
        "story_guid": None,
        **_item_values(entry.item, entry.link_hash),
        # The tuple itself: it dumps to the same JSON as the list, and can
        # key the insert's memo of repeated values.
        "categories": tuple(entry.item.categories),
    }
