"""The CPU-bound half of a source's ingest: decode, parse, normalize (runs in a worker).

Kept apart from :mod:`aggregator.ingest` so that the parse workers (and the
forkserver that forks them) import only what parsing needs: no HTTP client,
no SQL, no config loader. That keeps each worker about half the size it was
when the forkserver preloaded the whole pipeline.

What a worker sends back is :func:`pack`'s compact form rather than a pickle
of frozen ``Item`` dataclasses: one ``marshal`` blob of plain tuples, with the
source id sent once, a canonical URL equal to the URL sent as None, the
excerpt sent as the length of the text's prefix it repeats, and datetimes as
integer microseconds. :func:`unpack` rebuilds exactly the same ``Extracted``
(a round trip is tested to be the identity), at about a third of the bytes
and a fraction of the unpickling CPU in the main process.
"""

from __future__ import annotations

import logging
import marshal
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .decoding import decoded
from .errors import AggregatorError, EntryTooLarge, ScrapeError
from .models import FetchResult, Item, ParsedFeed, RawEntry, SectionRule, Source

if TYPE_CHECKING:  # the parsers are imported where they run (see ``extract``)
    from .normalize import ItemValues

_T = TypeVar("_T")

__all__ = [
    "Extracted",
    "extract",
    "extract_packed",
    "newest_entries",
    "normalize_entries",
    "normalize_entries_values",
    "pack",
    "pack_values",
    "unpack",
]

# The logger name from before the split: operators filter and alert on it.
log = logging.getLogger("aggregator.ingest")


@dataclass(frozen=True, slots=True)
class Extracted:
    """What the CPU-bound half of a source's ingest produced (picklable)."""

    items: tuple[Item, ...] = ()
    listing_hash: str | None = None
    warning: str | None = None
    next_page_url: str | None = None
    error: str | None = None
    broken: bool = False
    # Problems with some entries, stored as the source's warning (the rest is stored).
    notes: tuple[str, ...] = ()


def extract(
    source: Source, result: FetchResult, sections: Sequence[SectionRule], now: datetime
) -> Extracted:
    """Decode, parse one response and normalize its entries (runs in a worker process).

    A body the fetch left compressed (``decode=False``) is decoded here, under
    the fetch's own size cap and with its error messages. Errors come back as
    text rather than exceptions so nothing unpicklable crosses the process
    boundary.
    """
    return _extract(source, result, sections, now, as_values=False)[0]


def _extract(
    source: Source,
    result: FetchResult,
    sections: Sequence[SectionRule],
    now: datetime,
    *,
    as_values: bool,
) -> tuple[Extracted, list[ItemValues]]:
    """:func:`extract`; with ``as_values`` its items come as ``normalized_values``
    tuples beside an ``Extracted`` without items (for :func:`extract_packed`)."""
    try:
        result = decoded(result)
    except AggregatorError as exc:
        return Extracted(error=str(exc)), []
    # Imported here, not at the top: the main process needs this module for
    # ``unpack`` but parses nothing itself when a pool does it, and the
    # parsers and sanitizers are ~10 MB. The pool's forkserver preloads them.
    from .dedupe import listing_hash
    from .sources import parse

    try:
        parsed: ParsedFeed = parse(source, result)
    except ScrapeError as exc:
        return Extracted(error=str(exc), broken=True), []
    except AggregatorError as exc:
        return Extracted(error=str(exc)), []
    except (ValueError, LookupError, OverflowError, RecursionError, MemoryError) as exc:
        # A parser library crashing on hostile bytes is this source's problem: it
        # gets a message like any unreadable document, and the pass goes on.
        log.warning("%s: parser crashed on %s", source.id, result.url, exc_info=True)
        error = (
            f"{source.id}: could not parse the document "
            f"({type(exc).__name__}: {exc}) ({result.url})"
        )
        return Extracted(error=error), []
    notes: list[str] = []
    entries = newest_entries(parsed.entries, source.max_items)
    if len(entries) < len(parsed.entries):
        notes.append(
            f"kept {len(entries):,} of {len(parsed.entries):,} entries "
            f"(max_items: {source.max_items:,}, the newest by date)"
        )
        log.warning("%s: %s", source.id, notes[-1])
    refused: list[str] = []
    items: tuple[Item, ...] = ()
    values: list[ItemValues] = []
    if as_values:
        values = normalize_entries_values(
            source, entries, sections, now, result.url, refused=refused
        )
    else:
        items = tuple(
            normalize_entries(source, entries, sections, now, result.url, refused=refused)
        )
    if refused:
        notes.append(f"{len(refused)} entries refused: {refused[0]}")
    extracted = Extracted(
        items=items,
        listing_hash=listing_hash(parsed.entries),
        warning=parsed.warning,
        next_page_url=parsed.next_page_url,
        notes=tuple(notes),
    )
    return extracted, values


def newest_entries(entries: Sequence[RawEntry], limit: int) -> Sequence[RawEntry]:
    """At most ``limit`` entries: the newest by date, else the first in the document.

    Dated entries rank before undated ones, newer first; ties and undated
    entries keep document order (feeds list their newest first). The kept
    entries stay in document order. Bounds what one response can make us
    normalize and store (an outside test stored 20,000 items from one feed).
    """
    if len(entries) <= limit:
        return entries

    def rank(index: int) -> tuple[bool, float, int]:
        entry = entries[index]
        date = entry.published or entry.updated
        if date is None or date.tzinfo is None:
            return (False, 0.0, -index)
        return (True, date.timestamp(), -index)

    chosen = sorted(range(len(entries)), key=rank, reverse=True)[:limit]
    return [entries[i] for i in sorted(chosen)]


def normalize_entries(
    source: Source,
    entries: Sequence[RawEntry],
    sections: Sequence[SectionRule],
    now: datetime,
    base_url: str,
    *,
    refused: list[str] | None = None,
) -> list[Item]:
    """Normalize entries, dropping (and logging) any single entry that fails.

    Entries refused for their size are also appended to ``refused``: those are
    worth a warning on the source, unlike an entry without a link.
    """
    from .normalize import normalize  # see ``extract``

    return _each_entry(normalize, source, entries, sections, now, base_url, refused)


def normalize_entries_values(
    source: Source,
    entries: Sequence[RawEntry],
    sections: Sequence[SectionRule],
    now: datetime,
    base_url: str,
    *,
    refused: list[str] | None = None,
) -> list[ItemValues]:
    """:func:`normalize_entries`, each item as its ``normalized_values`` tuple."""
    from .normalize import normalized_values  # see ``extract``

    return _each_entry(normalized_values, source, entries, sections, now, base_url, refused)


def _each_entry(
    make: Callable[..., _T],
    source: Source,
    entries: Sequence[RawEntry],
    sections: Sequence[SectionRule],
    now: datetime,
    base_url: str,
    refused: list[str] | None,
) -> list[_T]:
    made = []
    for entry in entries:
        try:
            made.append(make(source, entry, sections=sections, now=now, fallback_base=base_url))
        except EntryTooLarge as exc:
            if refused is not None:
                refused.append(exc.reason)  # the warning is on the source already
            log.warning("%s", exc)
        except (ValueError, AggregatorError) as exc:
            where = (entry.link or entry.guid or "")[:200]
            log.warning("%s: skipped an entry (%s): %s", source.id, where, exc)
    return made


# ------------------------------------------------------------- compact transfer

# The first byte of a packed result: which form follows.
_MARSHAL = b"M"
_PICKLE = b"P"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Item's fields in order: what ``normalize.normalized_values`` returns.
_ITEM_FIELDS = tuple(field.name for field in fields(Item))
_MICROSECOND = timedelta(microseconds=1)


class _Unpackable(Exception):
    """An item the compact form cannot carry exactly (a non-UTC datetime, a subclass)."""


def _micros(moment: datetime) -> int:
    # Exact integer arithmetic; only plain UTC datetimes round-trip through it.
    if moment.tzinfo is not UTC or moment.fold or type(moment) is not datetime:
        raise _Unpackable
    return (moment - _EPOCH) // _MICROSECOND


def _excerpt_parts(text: str, excerpt: str) -> tuple[int, str]:
    """``excerpt`` as (length of the prefix of ``text`` it repeats, the rest)."""
    if text.startswith(excerpt):
        return len(excerpt), ""
    head = excerpt[:-1]
    if head and text.startswith(head):  # cut at a word: the text's start plus "…"
        return len(head), excerpt[-1]
    return 0, excerpt


def _row(item: Item, source_id: str) -> tuple[Any, ...]:
    values = tuple(getattr(item, name) for name in _ITEM_FIELDS)
    return _row_of_values(cast("ItemValues", values), source_id)


def _row_of_values(values: ItemValues, source_id: str) -> tuple[Any, ...]:
    """:func:`_row` of ``Item(*values)``, without building the ``Item``."""
    (
        item_source_id,
        guid,
        url,
        canonical_url,
        title,
        summary_html,
        content_html,
        text,
        excerpt,
        fingerprint,
        content_hash,
        published_at,
        updated_at,
        image_url,
        author,
        categories,
        section,
        language,
        date_missing,
    ) = values
    if item_source_id != source_id:
        raise _Unpackable
    shared, rest = _excerpt_parts(text, excerpt)
    return (
        guid,
        url,
        None if canonical_url == url else canonical_url,
        title,
        summary_html,
        content_html,
        text,
        shared,
        rest,
        fingerprint,
        content_hash,
        _micros(published_at),
        _micros(updated_at),
        image_url,
        author,
        categories,
        section,
        language,
        date_missing,
    )


def _item(source_id: str, row: tuple[Any, ...]) -> Item:
    (
        guid,
        url,
        canonical,
        title,
        summary_html,
        content_html,
        text,
        shared,
        rest,
        fingerprint,
        content_hash,
        published,
        updated,
        image_url,
        author,
        categories,
        section,
        language,
        date_missing,
    ) = row
    return Item(
        source_id=source_id,
        guid=guid,
        url=url,
        canonical_url=url if canonical is None else canonical,
        title=title,
        summary_html=summary_html,
        content_html=content_html,
        text=text,
        excerpt=text[:shared] + rest,
        fingerprint=fingerprint,
        content_hash=content_hash,
        published_at=_EPOCH + published * _MICROSECOND,
        updated_at=_EPOCH + updated * _MICROSECOND,
        image_url=image_url,
        author=author,
        categories=categories,
        section=section,
        language=language,
        date_missing=date_missing,
    )


def pack(extracted: Extracted) -> bytes:
    """``extracted`` as one bytes blob for the trip back from a worker (see the module doc).

    Falls back to a pickle for anything the compact form cannot carry
    exactly, so the result is always the same as sending the object itself.
    """
    source_id = extracted.items[0].source_id if extracted.items else ""
    try:
        rows = tuple(_row(item, source_id) for item in extracted.items)
    except _Unpackable:
        return _pickled(extracted)
    return _packed(extracted, source_id, rows)


def pack_values(extracted: Extracted, values: Sequence[ItemValues]) -> bytes:
    """:func:`pack` of ``extracted`` with ``Item(*v)`` for each of ``values`` as its items."""
    source_id = values[0][0] if values else ""
    try:
        rows = tuple(_row_of_values(v, source_id) for v in values)
    except _Unpackable:
        return _pickled(replace(extracted, items=tuple(Item(*v) for v in values)))
    return _packed(extracted, source_id, rows)


def _pickled(extracted: Extracted) -> bytes:
    return _PICKLE + pickle.dumps(extracted, protocol=pickle.HIGHEST_PROTOCOL)


def _packed(extracted: Extracted, source_id: str, rows: tuple[tuple[Any, ...], ...]) -> bytes:
    try:
        return _MARSHAL + marshal.dumps(
            (
                source_id,
                rows,
                extracted.listing_hash,
                extracted.warning,
                extracted.next_page_url,
                extracted.error,
                extracted.broken,
                extracted.notes,
            )
        )
    except ValueError:  # marshal refuses types it does not know
        items = extracted.items or tuple(_item(source_id, row) for row in rows)
        return _pickled(replace(extracted, items=items))


def unpack(blob: bytes) -> Extracted:
    """The ``Extracted`` that :func:`pack` was given."""
    kind, data = blob[:1], memoryview(blob)[1:]
    if kind == _PICKLE:
        extracted: Extracted = pickle.loads(data)
        return extracted
    if kind != _MARSHAL:
        raise ValueError(f"not a packed extract result (starts with {bytes(kind)!r})")
    (source_id, rows, listing, warning, next_page_url, error, broken, notes) = marshal.loads(data)
    return Extracted(
        items=tuple(_item(source_id, row) for row in rows),
        listing_hash=listing,
        warning=warning,
        next_page_url=next_page_url,
        error=error,
        broken=broken,
        notes=notes,
    )


def extract_packed(
    source: Source, result: FetchResult, sections: Sequence[SectionRule], now: datetime
) -> bytes:
    """:func:`extract`, packed for the trip back to the main process (what the pool runs)."""
    extracted, values = _extract(source, result, sections, now, as_values=True)
    return pack_values(extracted, values)
