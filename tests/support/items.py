"""Building normalized items for tests that start at the store, not at a feed."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from aggregator.models import Item

DEFAULT_DATE = datetime(2026, 11, 2, tzinfo=UTC)


def make_item(
    source_id: str,
    n: int,
    *,
    title: str | None = None,
    text: str | None = None,
    section: str | None = None,
    published: datetime = DEFAULT_DATE,
    categories: tuple[str, ...] = (),
) -> Item:
    """Item ``n`` of ``source_id``: its own link, guid, fingerprint and content hash."""
    title = title or f"Item {n} from {source_id}"
    text = text or f"Body of {title}."
    url = f"https://{source_id}.example.org/article/{n}"
    return Item(
        source_id=source_id,
        guid=f"{source_id}-{n}",
        url=url,
        canonical_url=url,
        title=title,
        summary_html=f"<p>{text}</p>",
        content_html=f"<p>{text}</p>",
        text=text,
        excerpt=text,
        fingerprint=hashlib.sha1(title.encode()).hexdigest(),
        content_hash=hashlib.sha1((title + text).encode()).hexdigest(),
        published_at=published,
        updated_at=published,
        section=section,
        categories=categories,
    )
