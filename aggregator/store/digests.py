"""Digest issues: stored frozen with their exact item list, subject, HTML and text."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..models import Digest, DigestSection, StoredItem
from . import schema
from .base import StoreBase

RenderFn = Callable[[Digest], tuple[str, str]]


def _digest(row: Any, sections: tuple[DigestSection, ...] = ()) -> Digest:
    m = row._mapping
    return Digest(
        id=m["id"],
        period_start=m["period_start"],
        period_end=m["period_end"],
        subject=m["subject"],
        preheader=m["preheader"],
        sections=sections,
        html=m["html"],
        text=m["text"],
        created_at=m["created_at"],
    )


class DigestsMixin(StoreBase):
    """Digest operations of :class:`aggregator.store.Store`."""

    def get_items(self, ids: Sequence[int]) -> list[StoredItem]:
        """Provided by :class:`~aggregator.store.Store` (items live there)."""
        raise NotImplementedError

    def save_digest(self, digest: Digest, render: RenderFn, *, now: datetime) -> Digest:
        """Freeze a composed digest: row, item list and rendered parts in one transaction.

        ``render`` receives the digest with its new id (the web view URL needs
        it) and returns ``(html, text)``. If another process already froze the
        same period, that issue is returned instead: a period is composed once.
        """
        try:
            with self.transaction() as conn:
                digest_id = conn.execute(
                    schema.digests.insert()
                    .values(
                        period_start=digest.period_start,
                        period_end=digest.period_end,
                        subject=digest.subject,
                        preheader=digest.preheader,
                        html="",
                        text="",
                        item_count=digest.item_count,
                        created_at=now,
                    )
                    .returning(schema.digests.c.id)
                ).scalar_one()
                rows = []
                position = 0
                for section in digest.sections:
                    for item in section.items:
                        rows.append(
                            {
                                "digest_id": digest_id,
                                "item_id": item.id,
                                "section": section.id,
                                "section_title": section.title,
                                "position": position,
                            }
                        )
                        position += 1
                if rows:
                    conn.execute(schema.digest_items.insert(), rows)
                with_id = Digest(
                    id=digest_id,
                    period_start=digest.period_start,
                    period_end=digest.period_end,
                    subject=digest.subject,
                    preheader=digest.preheader,
                    sections=digest.sections,
                    created_at=now,
                )
                html, text = render(with_id)
                conn.execute(
                    update(schema.digests)
                    .where(schema.digests.c.id == digest_id)
                    .values(html=html, text=text)
                )
        except IntegrityError:
            existing = self.digest_for_period(digest.period_start, digest.period_end)
            if existing is None:
                raise
            return existing
        stored = self.get_digest(digest_id)
        assert stored is not None
        return stored

    def digest_for_period(self, start: datetime, end: datetime) -> Digest | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.digests.c.id).where(
                    schema.digests.c.period_start == start, schema.digests.c.period_end == end
                )
            ).first()
        return self.get_digest(row.id) if row else None

    def get_digest(self, digest_id: int) -> Digest | None:
        """A stored issue with its sections and items exactly as frozen."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.digests).where(schema.digests.c.id == digest_id)
            ).first()
            if row is None:
                return None
            links = conn.execute(
                select(schema.digest_items)
                .where(schema.digest_items.c.digest_id == digest_id)
                .order_by(schema.digest_items.c.position)
            ).all()
        return _digest(row, self._sections(links))

    def _sections(self, links: Sequence[Any]) -> tuple[DigestSection, ...]:
        items = {i.id: i for i in self.get_items([link.item_id for link in links])}
        order: list[tuple[str, str]] = []
        grouped: dict[str, list[StoredItem]] = {}
        for link in links:
            if link.section not in grouped:
                order.append((link.section, link.section_title))
                grouped[link.section] = []
            if link.item_id in items:
                grouped[link.section].append(items[link.item_id])
        return tuple(DigestSection(sid, title, tuple(grouped[sid])) for sid, title in order)

    def list_digests(self, limit: int = 100) -> list[Digest]:
        """Issues newest first, without their item lists (for the archive index)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(schema.digests).order_by(schema.digests.c.period_end.desc()).limit(limit)
            ).all()
        return [_digest(r) for r in rows]

    def last_digest(self) -> Digest | None:
        """The issue with the latest period end: where the next period starts."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.digests.c.id).order_by(schema.digests.c.period_end.desc()).limit(1)
            ).first()
        return self.get_digest(row.id) if row else None
