"""Which copy of a story readers get when several sources carry it.

The same story often arrives twice: from its own site (KoBiz's board) and
from an outlet that republishes it ("Republished from…", often without the
image). Which one was stored first depended on which fetch finished first;
here the choice depends only on the copies themselves, in this order:

1. the copy from the source whose host is the host of the story's link (the
   site that published it, not one that copied it);
2. the higher ``priority`` of its source in feeds.yaml;
3. the earlier publication date;
4. the source id and guid, so that even full ties have one answer.

When a better copy arrives after a worse one was kept, it takes over: it
becomes the original, the old one (and every copy marked a duplicate of it)
points at it, and it inherits the story's first-seen time (so the story is
not "new" again for the next digest) and the feed identity readers already
know (``story_source_id``/``story_guid``), so feed readers see the same
entry, updated, instead of a second one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, bindparam, select, update

from ..models import Item
from . import schema

__all__ = [
    "UNKNOWN_SOURCE",
    "Copy",
    "SourceRank",
    "better_copies",
    "copy_rank",
    "load_copies",
    "load_source_ranks",
    "take_over",
]


@dataclass(frozen=True, slots=True)
class SourceRank:
    """What the choice needs to know of a source: its host and its configured priority."""

    host: str
    priority: int


# A source without a row (items saved before their source was synced): owns
# nothing, default priority.
UNKNOWN_SOURCE = SourceRank(host="", priority=0)


@dataclass(frozen=True, slots=True)
class Copy:
    """A stored original, as far as choosing between copies is concerned."""

    id: int
    source_id: str
    guid: str
    canonical_url: str
    published_at: datetime
    first_seen_at: datetime
    story_source_id: str | None
    story_guid: str | None

    @property
    def story_key(self) -> tuple[str, str]:
        """The (source, guid) readers know this story's feed entry by."""
        if self.story_source_id is not None and self.story_guid is not None:
            return self.story_source_id, self.story_guid
        return self.source_id, self.guid


def host_of(url: str) -> str:
    """The host of ``url`` without a leading ``www.``: the same site either way."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
    return host.removeprefix("www.")


def copy_rank(
    *, canonical_url: str, source_id: str, guid: str, published_at: datetime, source: SourceRank
) -> tuple[int, int, datetime, str, str]:
    """A sort key: the smaller, the better the copy (see the module docstring)."""
    own = bool(source.host) and host_of(canonical_url) == source.host
    return (0 if own else 1, -source.priority, published_at, source_id, guid)


def item_rank(item: Item, source: SourceRank) -> tuple[int, int, datetime, str, str]:
    """:func:`copy_rank` of an item about to be stored."""
    return copy_rank(
        canonical_url=item.canonical_url,
        source_id=item.source_id,
        guid=item.guid,
        published_at=item.published_at,
        source=source,
    )


def stored_rank(copy: Copy, source: SourceRank) -> tuple[int, int, datetime, str, str]:
    """:func:`copy_rank` of a stored original."""
    return copy_rank(
        canonical_url=copy.canonical_url,
        source_id=copy.source_id,
        guid=copy.guid,
        published_at=copy.published_at,
        source=source,
    )


# Built once with expanding IN lists (see store.writes): a per-call select()
# cost more CPU than the query.
_SOURCE_RANKS = select(schema.sources.c.id, schema.sources.c.url, schema.sources.c.priority).where(
    schema.sources.c.id.in_(bindparam("ids", expanding=True))
)
_COPIES = select(
    schema.items.c.id,
    schema.items.c.source_id,
    schema.items.c.guid,
    schema.items.c.canonical_url,
    schema.items.c.published_at,
    schema.items.c.first_seen_at,
    schema.items.c.story_source_id,
    schema.items.c.story_guid,
).where(schema.items.c.id.in_(bindparam("ids", expanding=True)))


def load_source_ranks(conn: Connection, source_ids: Iterable[str]) -> dict[str, SourceRank]:
    """Host and priority of each source (the fetched URL's host: a redirect moves it)."""
    wanted = sorted(set(source_ids))
    if not wanted:
        return {}
    rows = conn.execute(_SOURCE_RANKS, {"ids": wanted})
    return {r.id: SourceRank(host=host_of(r.url), priority=int(r.priority or 0)) for r in rows}


def load_copies(conn: Connection, ids: Iterable[int]) -> dict[int, Copy]:
    """The stored originals with these ids."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    return {r.id: Copy(**r._mapping) for r in conn.execute(_COPIES, {"ids": wanted})}


def inherited_values(old: Copy, now: datetime) -> dict[str, Any]:
    """Columns a copy that takes over from ``old`` inherits: first-seen and feed identity."""
    story_source_id, story_guid = old.story_key
    return {
        "first_seen_at": min(now, old.first_seen_at),
        "story_source_id": story_source_id,
        "story_guid": story_guid,
    }


# Built once (see store.writes): repoint a story's copies, then its old original.
_REPOINT_COPIES = (
    update(schema.items)
    .where(schema.items.c.duplicate_of == bindparam("old_id"))
    .values(duplicate_of=bindparam("new_id"))
)
_REPOINT_ORIGINAL = (
    update(schema.items)
    .where(schema.items.c.id == bindparam("old_id"))
    .values(duplicate_of=bindparam("new_id"))
)


def take_over(conn: Connection, old_id: int, new_id: int) -> None:
    """Make ``new_id`` the original of ``old_id``'s story: every copy points at it."""
    ids = {"old_id": old_id, "new_id": new_id}
    conn.execute(_REPOINT_COPIES, ids)
    conn.execute(_REPOINT_ORIGINAL, ids)


def better_copies(
    copies: Mapping[int, Copy],
    candidates: Mapping[int, list[Item]],
    sources: Mapping[str, SourceRank],
    stored_sources: Mapping[str, SourceRank],
) -> dict[str, int]:
    """Which new items should replace the stored original they duplicate.

    ``candidates`` maps an original's id to the new items that duplicate it,
    ``copies`` those originals as stored (:func:`load_copies`); ``sources``
    ranks the new items' sources, ``stored_sources`` the originals' sources.
    Returns ``{guid of the winning new item: id of the original it replaces}``
    (at most one winner per original: the best of the new copies).
    """
    winners: dict[str, int] = {}
    for original_id, items in candidates.items():
        copy = copies.get(original_id)
        if copy is None:
            continue
        current = stored_rank(copy, stored_sources.get(copy.source_id, UNKNOWN_SOURCE))
        best = min(items, key=lambda i: item_rank(i, sources.get(i.source_id, UNKNOWN_SOURCE)))
        if item_rank(best, sources.get(best.source_id, UNKNOWN_SOURCE)) < current:
            winners[best.guid] = original_id
    return winners
