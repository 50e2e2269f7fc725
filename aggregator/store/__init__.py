"""The storage layer: the only code in the project that speaks SQL.

:class:`Store` wraps one SQLAlchemy engine (SQLite by default, PostgreSQL by
URL) and offers operations in the words of the pipeline: remember a source's
fetch state, save one source's items in one transaction, read recent items.
Digest, subscriber and delivery operations live in sibling modules and are
mixed in here so callers hold a single object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.exc import DBAPIError

from ..models import Item, Source, SourceState, StoredItem, utcnow
from . import schema
from .base import StoreBase
from .bounces import BouncesMixin
from .copies import better_copies, inherited_values, load_copies, load_source_ranks, take_over
from .deliveries import DeliveriesMixin
from .digests import DigestsMixin
from .installation import InstallationMixin
from .schema import text_key
from .subscribers import SubscribersMixin
from .types import UTCDateTime

log = logging.getLogger(__name__)

__all__ = ["SaveCounts", "Store"]

# Parameters per IN (...) list; SQLite's default limit is 32766, PostgreSQL's 65535.
_CHUNK = 500


def _first_ids(
    conn: Connection, column: Any, values: Sequence[str], *, hashed: bool = False
) -> dict[str, int]:
    """For each value, the id of the earliest non-duplicate item having it in ``column``.

    With ``hashed``, ``column`` holds :func:`text_key` of the values (the
    indexed form of an unbounded text); the result is still keyed by value.
    """
    t = schema.items
    by_key = {text_key(v): v for v in values} if hashed else {v: v for v in values}
    found: dict[str, int] = {}
    for chunk in _chunks(list(by_key)):
        for row in conn.execute(
            select(t.c.id, column.label("key"))
            .where(column.in_(chunk), t.c.duplicate_of.is_(None))
            .order_by(t.c.id)
        ):
            found.setdefault(by_key[row.key], row.id)
    return found


def _first_line(exc: DBAPIError) -> str:
    return (str(exc.orig or exc).splitlines() or [type(exc).__name__])[0][:300]


# How many refused entries a source's warning names (the rest are counted).
_REFUSALS_NAMED = 3


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


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


_ITEM_COLUMNS = (
    schema.items.c.id,
    schema.items.c.source_id,
    schema.sources.c.title.label("source_title"),
    schema.sources.c.url.label("source_url"),
    schema.items.c.guid,
    schema.items.c.url,
    schema.items.c.canonical_url,
    schema.items.c.title,
    schema.items.c.summary_html,
    schema.items.c.content_html,
    schema.items.c.text,
    schema.items.c.excerpt,
    schema.items.c.published_at,
    schema.items.c.date_missing,
    schema.items.c.updated_at,
    schema.items.c.first_seen_at,
    schema.items.c.image_url,
    schema.items.c.author,
    schema.items.c.categories,
    schema.items.c.section,
    schema.items.c.language,
    schema.items.c.duplicate_of,
    schema.items.c.story_source_id,
    schema.items.c.story_guid,
)


def _stored_item(row: Any) -> StoredItem:
    m = row._mapping
    return StoredItem(
        id=m["id"],
        source_id=m["source_id"],
        source_title=m["source_title"] or m["source_id"],
        source_url=m["source_url"],
        guid=m["guid"],
        url=m["url"],
        canonical_url=m["canonical_url"],
        title=m["title"],
        summary_html=m["summary_html"],
        content_html=m["content_html"],
        text=m["text"],
        excerpt=m["excerpt"],
        published_at=m["published_at"],
        date_missing=bool(m["date_missing"]),
        updated_at=m["updated_at"],
        first_seen_at=m["first_seen_at"],
        image_url=m["image_url"],
        author=m["author"],
        categories=tuple(m["categories"] or ()),
        section=m["section"],
        language=m["language"],
        duplicate_of=m["duplicate_of"],
        story_source_id=m["story_source_id"],
        story_guid=m["story_guid"],
    )


def _item_values(item: Item) -> dict[str, Any]:
    """Columns that follow the upstream content (everything but identity and first-seen)."""
    return {
        "url": item.url,
        "canonical_url": item.canonical_url,
        "canonical_url_hash": text_key(item.canonical_url),
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


def _state(row: Any) -> SourceState:
    m = row._mapping
    return SourceState(
        id=m["id"],
        url=m["url"],
        etag=m["etag"],
        last_modified=m["last_modified"],
        content_hash=m["content_hash"],
        last_fetched_at=m["last_fetched_at"],
        last_success_at=m["last_success_at"],
        next_fetch_at=m["next_fetch_at"],
        error_count=m["error_count"],
        last_error=m["last_error"],
        broken_reason=m["broken_reason"],
        disabled_at=m["disabled_at"],
        warning=m["warning"],
    )


class Store(
    DigestsMixin, SubscribersMixin, DeliveriesMixin, BouncesMixin, InstallationMixin, StoreBase
):
    """The project's one storage object: items and sources here, the rest mixed in."""

    # ------------------------------------------------------------------ sources

    def sync_sources(self, sources: Sequence[Source], *, now: datetime | None = None) -> None:
        """Make the ``sources`` table know every configured source.

        A source whose configured URL changed starts over from the new URL
        (validators dropped); one whose URL was moved by a permanent redirect
        keeps the redirected URL. Sources removed from the config keep their
        rows and items: nothing stored is deleted by a config edit.
        """
        now = now or utcnow()
        with self.transaction() as conn:
            known = {
                row.id: row
                for row in conn.execute(
                    select(
                        schema.sources.c.id,
                        schema.sources.c.config_url,
                        schema.sources.c.title,
                        schema.sources.c.priority,
                    )
                )
            }
            for source in sources:
                row = known.get(source.id)
                if row is None:
                    conn.execute(
                        self._insert(schema.sources)
                        .values(
                            id=source.id,
                            config_url=source.url,
                            url=source.url,
                            title=source.title or source.id,
                            error_count=0,
                            created_at=now,
                            priority=source.priority,
                        )
                        .on_conflict_do_nothing(index_elements=["id"])
                    )
                elif row.config_url != source.url:
                    conn.execute(
                        update(schema.sources)
                        .where(schema.sources.c.id == source.id)
                        .values(
                            config_url=source.url,
                            url=source.url,
                            title=source.title or source.id,
                            etag=None,
                            last_modified=None,
                            content_hash=None,
                            next_fetch_at=None,
                            error_count=0,
                            broken_reason=None,
                            priority=source.priority,
                        )
                    )
                elif row.title != (source.title or source.id) or row.priority != source.priority:
                    conn.execute(
                        update(schema.sources)
                        .where(schema.sources.c.id == source.id)
                        .values(title=source.title or source.id, priority=source.priority)
                    )

    def source_state(self, source_id: str) -> SourceState | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.sources).where(schema.sources.c.id == source_id)
            ).first()
        return _state(row) if row else None

    def source_states(self) -> list[SourceState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.sources).order_by(schema.sources.c.id)).all()
        return [_state(r) for r in rows]

    def item_counts(self) -> dict[str, int]:
        """Stored items per source id."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(schema.items.c.source_id, func.count()).group_by(schema.items.c.source_id)
            ).all()
        return {r[0]: r[1] for r in rows}

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
        values: dict[str, Any] = {
            "last_fetched_at": fetched_at,
            "last_success_at": fetched_at,
            "next_fetch_at": next_fetch_at,
            "error_count": 0,
            "last_error": None,
            "broken_reason": None,
        }
        if etag is not None:
            values["etag"] = etag
        if last_modified is not None:
            values["last_modified"] = last_modified
        with self.transaction() as conn:
            conn.execute(
                update(schema.sources).where(schema.sources.c.id == source_id).values(**values)
            )

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
        with self.transaction() as conn:
            values: dict[str, Any] = {
                "last_fetched_at": fetched_at,
                "next_fetch_at": next_fetch_at,
                "error_count": schema.sources.c.error_count + 1,
                "last_error": error[:2000],
            }
            if broken:
                values["broken_reason"] = error[:2000]
            conn.execute(
                update(schema.sources).where(schema.sources.c.id == source_id).values(**values)
            )
            count = conn.execute(
                select(schema.sources.c.error_count).where(schema.sources.c.id == source_id)
            ).scalar_one_or_none()
        return int(count or 0)

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

        ``warning`` is the parser's (a malformed feed, replaced bytes): stored
        on the source for ``status`` together with any warning found here.

        An item already stored for this source (same guid) is updated in place
        when its content hash changed, else left alone. A new item whose
        canonical link or fingerprint matches an item already stored (from any
        source) is stored marked ``duplicate_of`` that first item. Known ids
        are loaded with one query per 500 guids: no per-entry round trips.

        An entry the database refuses is that entry's problem: it is retried
        alone in a savepoint, skipped if it fails again, and named in the
        source's warning together with ``warnings`` (problems found before the
        store, e.g. entries refused for size); the other entries are stored.
        """
        batch: dict[str, Item] = {}
        for item in items:
            batch[item.guid] = item  # the last occurrence in a feed wins
        t = schema.items
        with self.transaction() as conn:
            # Write first: it takes SQLite's write lock now (a busy database
            # fails here, as the database's problem, not an entry's), and
            # pysqlite only opens the real transaction at the first write,
            # without which the per-entry savepoints below would commit.
            conn.execute(
                update(schema.sources)
                .where(schema.sources.c.id == source_id)
                .values(last_fetched_at=fetched_at)
            )
            guid_of = {text_key(g): g for g in batch}
            existing: dict[str, tuple[int, str]] = {}
            for chunk in _chunks(list(guid_of)):
                for row in conn.execute(
                    select(t.c.id, t.c.guid_hash, t.c.content_hash).where(
                        t.c.source_id == source_id, t.c.guid_hash.in_(chunk)
                    )
                ):
                    existing[guid_of[row.guid_hash]] = (row.id, row.content_hash)

            # A feed that invents a new guid for the same article on every
            # fetch would flood the store: match such entries by their link.
            churned = 0
            unknown = {g: i for g, i in batch.items() if g not in existing}
            if unknown:
                by_link: dict[str, tuple[int, str, str]] = {}
                link_of = {text_key(i.canonical_url): i.canonical_url for i in unknown.values()}
                for chunk in _chunks(sorted(link_of)):
                    for hit in conn.execute(
                        select(t.c.id, t.c.guid, t.c.canonical_url_hash, t.c.content_hash).where(
                            t.c.source_id == source_id, t.c.canonical_url_hash.in_(chunk)
                        )
                    ):
                        by_link.setdefault(
                            link_of[hit.canonical_url_hash], (hit.id, hit.guid, hit.content_hash)
                        )
                for guid, item in unknown.items():
                    match = by_link.get(item.canonical_url)
                    if match is not None and match[1] not in batch:
                        churned += 1
                        existing[guid] = (match[0], match[2])
            new_items = [i for g, i in batch.items() if g not in existing]
            changed = [
                i for g, i in batch.items() if g in existing and existing[g][1] != i.content_hash
            ]
            unchanged = len(batch) - len(new_items) - len(changed)
            notes = list(warnings)
            if churned and churned * 2 >= len(batch):
                notes.append(
                    f"{churned} of {len(batch)} entries came with a new guid for a link "
                    "already stored: this feed changes its guids on every fetch; "
                    "entries are matched by link instead"
                )

            inserted = duplicates = takeovers = 0
            refused: list[str] = []
            if new_items:
                inserted, duplicates, takeovers = self._insert_new(
                    conn, source_id, new_items, fetched_at, refused
                )
            updated = 0
            for item in changed:
                values = _item_values(item)
                try:
                    with conn.begin_nested():
                        conn.execute(
                            update(t).where(t.c.id == existing[item.guid][0]).values(**values)
                        )
                    updated += 1
                except DBAPIError as exc:
                    if exc.connection_invalidated:
                        raise
                    refused.append(f"{item.guid[:80]}: {_first_line(exc)}")
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
                "last_fetched_at": fetched_at,
                "last_success_at": fetched_at,
                "next_fetch_at": next_fetch_at,
                "error_count": 0,
                "last_error": None,
                "broken_reason": None,
                "warning": " | ".join(notes)[:2000] or None,
                "etag": etag,
                "last_modified": last_modified,
                "content_hash": content_hash,
            }
            if new_url:
                state["url"] = new_url
            conn.execute(
                update(schema.sources).where(schema.sources.c.id == source_id).values(**state)
            )
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

    def _insert_new(
        self,
        conn: Connection,
        source_id: str,
        new_items: Sequence[Item],
        now: datetime,
        refused: list[str] | None = None,
    ) -> tuple[int, int, int]:
        """Insert new items, marking copies of known stories; (inserted, duplicates, takeovers).

        A new copy that is better than the stored original (see
        :mod:`aggregator.store.copies`) takes its place instead of becoming
        its duplicate. Entries the database refuses are appended to
        ``refused`` and not counted.
        """
        refused = [] if refused is None else refused
        t = schema.items
        canon = sorted({i.canonical_url for i in new_items})
        prints = sorted({i.fingerprint for i in new_items})
        by_canon = _first_ids(conn, t.c.canonical_url_hash, canon, hashed=True)
        by_print = _first_ids(conn, t.c.fingerprint, prints)
        winners = self._better_copies(conn, source_id, new_items, by_canon, by_print)
        replaced = load_copies(conn, winners.values())

        # Items of this batch that repeat an earlier item of the same batch are
        # inserted in a second round, once the first one has an id.
        first_round: list[dict[str, Any]] = []
        later: list[Item] = []
        seen_canon: set[str] = set()
        seen_print: set[str] = set()
        for item in new_items:
            original = by_canon.get(item.canonical_url) or by_print.get(item.fingerprint)
            if original is None and (
                item.canonical_url in seen_canon or item.fingerprint in seen_print
            ):
                later.append(item)
                continue
            seen_canon.add(item.canonical_url)
            seen_print.add(item.fingerprint)
            old_id = winners.get(item.guid)
            if old_id is not None and old_id in replaced:
                row = self._row(source_id, item, now, None)
                row.update(inherited_values(replaced[old_id], now))
                first_round.append(row)
                continue
            first_round.append(self._row(source_id, item, now, original))
        stored = self._insert_rows(conn, first_round, refused)
        inserted = len(stored)
        duplicates = sum(1 for r in stored if r["duplicate_of"] is not None)
        takeovers = 0
        for guid, old_id in winners.items():
            new_id = conn.execute(
                select(t.c.id).where(t.c.source_id == source_id, t.c.guid_hash == text_key(guid))
            ).scalar_one_or_none()
            if new_id is None or old_id not in replaced:
                continue
            take_over(conn, old_id, new_id)
            takeovers += 1
            for mapping in (by_canon, by_print):
                for key, value in mapping.items():
                    if value == old_id:
                        mapping[key] = new_id
        if later:
            for again in conn.execute(
                select(t.c.id, t.c.canonical_url, t.c.fingerprint).where(
                    t.c.source_id == source_id,
                    t.c.guid_hash.in_([r["guid_hash"] for r in stored]),
                    t.c.duplicate_of.is_(None),
                )
            ):
                by_canon.setdefault(again.canonical_url, again.id)
                by_print.setdefault(again.fingerprint, again.id)
            rows = []
            for item in later:
                original = by_canon.get(item.canonical_url) or by_print.get(item.fingerprint)
                rows.append(self._row(source_id, item, now, original))
            stored = self._insert_rows(conn, rows, refused)
            inserted += len(stored)
            duplicates += sum(1 for r in stored if r["duplicate_of"] is not None)
        return inserted, duplicates, takeovers

    @staticmethod
    def _better_copies(
        conn: Connection,
        source_id: str,
        new_items: Sequence[Item],
        by_canon: dict[str, int],
        by_print: dict[str, int],
    ) -> dict[str, int]:
        """``{guid: id of the original it should replace}`` for new items better than it."""
        candidates: dict[int, list[Item]] = {}
        for item in new_items:
            original = by_canon.get(item.canonical_url) or by_print.get(item.fingerprint)
            if original is not None:
                candidates.setdefault(original, []).append(item)
        if not candidates:
            return {}
        return better_copies(conn, candidates, load_source_ranks(conn, [source_id]))

    @staticmethod
    def _row(source_id: str, item: Item, now: datetime, duplicate_of: int | None) -> dict[str, Any]:
        return {
            "source_id": source_id,
            "guid": item.guid,
            "guid_hash": text_key(item.guid),
            "first_seen_at": now,
            "duplicate_of": duplicate_of,
            **_item_values(item),
        }

    def _insert_rows(
        self, conn: Connection, rows: list[dict[str, Any]], refused: list[str]
    ) -> list[dict[str, Any]]:
        """Insert ``rows``; returns those stored, appending the refused ones to ``refused``.

        One multi-row INSERT in a savepoint; if the database refuses it, each
        row is retried alone in its own savepoint so one bad entry (a value
        over a column's limit, a character the database rejects) costs only
        itself. A lost connection is not an entry's fault and is raised.
        """
        if not rows:
            return []
        # ON CONFLICT DO NOTHING: a second writer (another worker) that stored
        # the same guid first wins; ours is then simply not new.
        stmt = self._insert(schema.items).on_conflict_do_nothing(
            index_elements=["source_id", "guid_hash"]
        )
        try:
            with conn.begin_nested():
                conn.execute(stmt, rows)
            return rows
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
        stored = []
        for row in rows:
            try:
                with conn.begin_nested():
                    conn.execute(stmt, [row])
                stored.append(row)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                refused.append(f"{row['guid'][:80]}: {_first_line(exc)}")
        return stored

    # -------------------------------------------------------------------- items

    def known_guids(self, source_id: str, guids: Sequence[str]) -> set[str]:
        """Which of ``guids`` this source already has stored."""
        t = schema.items
        found: set[str] = set()
        guid_of = {text_key(g): g for g in guids}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(guid_of)):
                found.update(
                    guid_of[h]
                    for h in conn.execute(
                        select(t.c.guid_hash).where(
                            t.c.source_id == source_id, t.c.guid_hash.in_(chunk)
                        )
                    ).scalars()
                )
        return found

    def _item_query(self) -> Any:
        return select(*_ITEM_COLUMNS).join_from(
            schema.items, schema.sources, schema.items.c.source_id == schema.sources.c.id
        )

    def recent_items(self, limit: int, *, include_duplicates: bool = False) -> list[StoredItem]:
        """The newest ``limit`` items by publication date (index-backed, no full scan)."""
        query = self._item_query()
        if not include_duplicates:
            query = query.where(schema.items.c.duplicate_of.is_(None))
        query = query.order_by(schema.items.c.published_at.desc(), schema.items.c.id.desc()).limit(
            limit
        )
        with self.engine.connect() as conn:
            return [_stored_item(r) for r in conn.execute(query)]

    def items_published_since(
        self, since: datetime, *, include_duplicates: bool = True, limit: int = 1000
    ) -> list[StoredItem]:
        query = self._item_query().where(schema.items.c.published_at >= since)
        if not include_duplicates:
            query = query.where(schema.items.c.duplicate_of.is_(None))
        query = query.order_by(schema.items.c.published_at.desc(), schema.items.c.id.desc())
        with self.engine.connect() as conn:
            return [_stored_item(r) for r in conn.execute(query.limit(limit))]

    def items_first_seen_between(
        self, start: datetime, end: datetime, *, include_duplicates: bool = False
    ) -> list[StoredItem]:
        """Items first stored in ``[start, end)``: the candidates for one digest."""
        cond = and_(schema.items.c.first_seen_at >= start, schema.items.c.first_seen_at < end)
        if not include_duplicates:
            cond = and_(cond, schema.items.c.duplicate_of.is_(None))
        query = self._item_query().where(cond).order_by(schema.items.c.published_at.desc())
        with self.engine.connect() as conn:
            return [_stored_item(r) for r in conn.execute(query)]

    def get_items(self, ids: Sequence[int]) -> list[StoredItem]:
        """Items by id, in the order given."""
        found: dict[int, StoredItem] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                for row in conn.execute(self._item_query().where(schema.items.c.id.in_(chunk))):
                    item = _stored_item(row)
                    found[item.id] = item
        return [found[i] for i in ids if i in found]

    def find_items(
        self, *, canonical_url: str | None = None, title: str | None = None
    ) -> list[StoredItem]:
        """Items matching a canonical link or an exact title (for admins and tests)."""
        conds = []
        if canonical_url is not None:
            conds.append(schema.items.c.canonical_url_hash == text_key(canonical_url))
        if title is not None:
            conds.append(schema.items.c.title == title)
        if not conds:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(self._item_query().where(or_(*conds)).order_by(schema.items.c.id))
            return [_stored_item(r) for r in rows]

    def count_items(self, *, include_duplicates: bool = True) -> int:
        query = select(func.count()).select_from(schema.items)
        if not include_duplicates:
            query = query.where(schema.items.c.duplicate_of.is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def latest_success(self) -> datetime | None:
        """When any source was last fetched successfully (for /healthz)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(schema.sources.c.last_success_at))).scalar()
        if value is None:
            return None
        # func.max bypasses the column type on SQLite; normalize to aware UTC.
        return UTCDateTime().process_result_value(value, self.engine.dialect)
