"""The storage layer: the only code in the project that speaks SQL.

:class:`Store` wraps one SQLAlchemy engine (SQLite by default, PostgreSQL by
URL) and offers operations in the words of the pipeline: remember a source's
fetch state, save one source's items in one transaction, read recent items.
Digest, subscriber and delivery operations live in sibling modules and are
mixed in here so callers hold a single object.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from ..models import Source, SourceState, StoredItem, utcnow
from . import schema
from .base import StoreBase, chunks
from .bounces import BouncesMixin
from .deliveries import DeliveriesMixin
from .digests import DigestsMixin
from .installation import InstallationMixin
from .schema import link_key, text_key
from .subscribers import SubscribersMixin
from .types import UTCDateTime
from .writes import Failure, NotModified, SaveCounts, SaveItems, SourceWrite, WritesMixin

log = logging.getLogger(__name__)

__all__ = ["Failure", "NotModified", "SaveCounts", "SaveItems", "SourceWrite", "Store"]

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
    WritesMixin,
    DigestsMixin,
    SubscribersMixin,
    DeliveriesMixin,
    BouncesMixin,
    InstallationMixin,
    StoreBase,
):
    """The project's one storage object: items and sources here, the rest mixed in."""

    # ------------------------------------------------------------------ sources

    def sync_sources(self, sources: Sequence[Source], *, now: datetime | None = None) -> int:
        """Make the ``sources`` table know every configured source; returns the rows written.

        A source whose configured URL changed starts over from the new URL
        (validators dropped); one whose URL was moved by a permanent redirect
        keeps the redirected URL. Sources removed from the config keep their
        rows and items: nothing stored is deleted by a config edit. A return
        of 0 means the stored source states are as they were before the call.
        """
        now = now or utcnow()
        written = 0
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
                else:
                    continue
                written += 1
        return written

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

    # -------------------------------------------------------------------- items

    def known_guids(self, source_id: str, guids: Sequence[str]) -> set[str]:
        """Which of ``guids`` this source already has stored."""
        t = schema.items
        found: set[str] = set()
        guid_of = {text_key(g): g for g in guids}
        with self.engine.connect() as conn:
            for chunk in chunks(list(guid_of)):
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
            for chunk in chunks(list(ids)):
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
            conds.append(schema.items.c.canonical_url_hash == link_key(canonical_url))
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
