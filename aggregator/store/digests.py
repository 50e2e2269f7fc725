"""Digest issues: stored frozen with their exact item list, subject, HTML and text."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
        html=m.get("html", ""),
        text=m.get("text", ""),
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
        """The issue frozen for exactly ``[start, end)``, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.digests.c.id).where(
                    schema.digests.c.period_start == start, schema.digests.c.period_end == end
                )
            ).first()
        return self.get_digest(row.id) if row else None

    def get_digest(self, digest_id: int) -> Digest | None:
        """A stored issue with its frozen HTML, text and item list (None if unknown).

        The sections hold the items as they are stored now; the HTML and text
        are exactly what was composed.
        """
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
        items = {i.id: i for i in self.get_items([link.item_id for link in links])}
        return _digest(row, _sections(links, items))

    def list_digests(self, limit: int = 100) -> list[Digest]:
        """Issues newest first with their item lists but without HTML and text.

        For the archive index and ``aggregator digest list``: ``html`` and
        ``text`` are left empty (use :meth:`get_digest` for one issue's content).
        """
        d = schema.digests
        summary_columns = [c for c in d.c if c.name not in ("html", "text")]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*summary_columns).order_by(d.c.period_end.desc(), d.c.id.desc()).limit(limit)
            ).all()
            links: dict[int, list[Any]] = {r.id: [] for r in rows}
            if links:
                for link in conn.execute(
                    select(schema.digest_items)
                    .where(schema.digest_items.c.digest_id.in_(list(links)))
                    .order_by(schema.digest_items.c.digest_id, schema.digest_items.c.position)
                ):
                    links[link.digest_id].append(link)
        item_ids = sorted({link.item_id for group in links.values() for link in group})
        items = {i.id: i for i in self.get_items(item_ids)}
        return [_digest(r, _sections(links[r.id], items)) for r in rows]

    def last_digest(self) -> Digest | None:
        """The issue with the latest period end: where the next period starts."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.digests.c.id)
                .order_by(schema.digests.c.period_end.desc(), schema.digests.c.id.desc())
                .limit(1)
            ).first()
        return self.get_digest(row.id) if row else None


def _sections(links: Sequence[Any], items: Mapping[int, StoredItem]) -> tuple[DigestSection, ...]:
    """Rebuild an issue's sections from its ``digest_items`` rows, in frozen order."""
    order: list[tuple[str, str]] = []
    grouped: dict[str, list[StoredItem]] = {}
    for link in links:
        if link.section not in grouped:
            order.append((link.section, link.section_title))
            grouped[link.section] = []
        if link.item_id in items:
            grouped[link.section].append(items[link.item_id])
    return tuple(DigestSection(sid, title, tuple(grouped[sid])) for sid, title in order)
