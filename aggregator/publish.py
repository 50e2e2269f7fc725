"""Publish stored items as one Atom feed and one JSON Feed; announce changes to a WebSub hub.

The output depends on the input only: the feed's ``updated`` is the newest
item's, never the build time, so the same items always give the same bytes and
:func:`write_if_changed` leaves an unchanged feed (and its mtime, and so every
reader's conditional GET) alone. Entry ids are derived from ``(source_id,
guid)``, the store's identity of an item, so an entry keeps its id when its
title, text or date changes and when the site moves to another address; when
a better copy of a story took over from the one readers saw first, the id is
that first copy's (``StoredItem.feed_key``), so readers see one entry, updated.
Entries with an image carry it as Media RSS and, when its type is known, as
an ``enclosure`` link.

HTML handed in here was sanitized by normalize before it was stored. It is
cleaned once more on the way out (:func:`defend_html`, nh3 with a narrow allow
list), because a feed reader renders whatever we publish and a gap in one
stage must not let ``<script>`` or ``<iframe>`` through; then it is escaped
(Atom ``type="html"``, JSON strings), never unescaped.

A changed feed is announced to the WebSub hub. :func:`publish` only marks the
announcement as due in a small state file next to the feeds
(:data:`PING_STATE_FILENAME`); :func:`ping_pending` sends it and clears the
mark on success, so a hub that is down, or a process that dies in between, is
pinged again on the next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import nh3
from feedgen.feed import FeedGenerator

from aggregator.errors import PublishError
from aggregator.feedgen_ext import entry_extension, register
from aggregator.models import Site, StoredItem, utcnow

if TYPE_CHECKING:
    from aggregator.store import Store

log = logging.getLogger(__name__)

__all__ = [
    "ATOM_FILENAME",
    "EMPTY_FEED_UPDATED",
    "JSON_FEED_VERSION",
    "JSON_FILENAME",
    "PING_STATE_FILENAME",
    "HubPing",
    "PublishResult",
    "build_atom",
    "build_json_feed",
    "clean_text",
    "defend_html",
    "entry_id",
    "feed_urls",
    "ping_hub",
    "ping_pending",
    "publish",
    "publish_from_store",
    "select_items",
    "source_id_uri",
    "write_if_changed",
]

ATOM_FILENAME = "feed.atom"
JSON_FILENAME = "feed.json"
# Hidden (a static file server does not list it) and next to the feeds it is about.
PING_STATE_FILENAME = ".hub-ping.json"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
# An empty feed still needs an ``updated``; a constant keeps its bytes stable.
EMPTY_FEED_UPDATED = datetime(1970, 1, 1, tzinfo=UTC)
UNTITLED = "(untitled)"

# Fixed namespaces for the name-based (v5) UUIDs below. Changing them would
# change every published id and make every reader show every entry again.
_ITEM_ID_NAMESPACE = uuid.UUID("6f1c1f2e-5b0a-4d59-9a43-4f4a3c2b7e10")
_SOURCE_ID_NAMESPACE = uuid.UUID("0d4b5c7a-8e2f-4a61-b3d9-2c7e1f6a9b54")

# Characters XML 1.0 forbids (lxml refuses them, so feedgen raises): C0 controls
# other than tab, newline and carriage return, lone surrogates, U+FFFE, U+FFFF.
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_GENERATOR_NAME = "aggregator"

# What may reach a reader: nh3's default tags and attributes (no script, style,
# iframe, object, embed, form or event handler), plus a few harmless attributes.
# The content of these tags is dropped too, not shown as text.
_DROPPED_WITH_CONTENT = frozenset(
    {"script", "style", "iframe", "object", "embed", "noscript", "template", "svg", "math"}
)
_GENERIC_ATTRIBUTES = frozenset({"lang", "dir", "title"})


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What :func:`publish` did: ``changed`` is True when either file was rewritten."""

    changed: bool
    atom_path: Path
    json_path: Path
    item_count: int
    # A hub ping is due (this publish changed the feed, or an earlier ping failed).
    ping_pending: bool = False


@dataclass(frozen=True, slots=True)
class HubPing:
    """The outcome of one attempt to announce the feeds to the WebSub hub."""

    hub_url: str
    topics: tuple[str, ...]
    ok: bool
    attempts: int
    error: str | None = None


# --------------------------------------------------------------------- identities


def entry_id(source_id: str, guid: str) -> str:
    """The permanent Atom/JSON Feed id of an item: a ``urn:uuid`` of ``(source_id, guid)``.

    It never changes when the item is updated, and does not depend on the
    site's URL, so moving the site does not make readers show old entries again.
    """
    return f"urn:uuid:{uuid.uuid5(_ITEM_ID_NAMESPACE, source_id + chr(10) + guid)}"


def source_id_uri(source_id: str) -> str:
    """The id written into ``atom:source`` for a source: stable even if its URL changes."""
    return f"urn:uuid:{uuid.uuid5(_SOURCE_ID_NAMESPACE, source_id)}"


def feed_urls(site: Site) -> tuple[str, str]:
    """The public URLs of the Atom feed and the JSON Feed: ``site.url`` + file name."""
    base = site.url if site.url.endswith("/") else site.url + "/"
    return base + ATOM_FILENAME, base + JSON_FILENAME


# ------------------------------------------------------------------------ helpers


def clean_text(value: str) -> str:
    """``value`` without the characters XML 1.0 cannot carry (feedgen raises on them)."""
    return _XML_ILLEGAL.sub("", value)


def _utc(moment: datetime) -> datetime:
    # The store hands out aware UTC; a naive value (SQLite drops offsets) is UTC too.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _rfc3339(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")


def _item_updated(item: StoredItem) -> datetime:
    # An entry is never updated before it was published.
    return max(_utc(item.updated_at), _utc(item.published_at))


def _feed_updated(items: Sequence[StoredItem]) -> datetime:
    return max((_item_updated(item) for item in items), default=EMPTY_FEED_UPDATED)


def _unique(items: Iterable[StoredItem]) -> list[StoredItem]:
    """``items`` in order, without a second item for a feed id already seen."""
    seen: set[tuple[str, str]] = set()
    unique: list[StoredItem] = []
    for item in items:
        key = item.feed_key
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def select_items(items: Iterable[StoredItem], limit: int) -> list[StoredItem]:
    """The items to publish: no duplicates of other items, one per id, at most ``limit``."""
    originals = (item for item in items if item.duplicate_of is None)
    return _unique(originals)[: max(limit, 0)]


def _title(item: StoredItem) -> str:
    return clean_text(item.title).strip() or UNTITLED


def _author_name(item: StoredItem) -> str:
    # Every entry names an author, so readers never fall back to the site's name
    # for someone else's article: the writer if known, else the outlet.
    return clean_text(item.author or "").strip() or _source_title(item)


def _source_title(item: StoredItem) -> str:
    return clean_text(item.source_title).strip() or clean_text(item.source_id)


def defend_html(html: str) -> str:
    """``html`` with nothing that could run or embed: no script, iframe, style, handlers.

    Idempotent and deterministic, so republishing the same items gives the same bytes.
    """
    if not html:
        return ""
    cleaned: str = _cleaner().clean(clean_text(html))
    return cleaned


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    # Built once: configuring nh3 costs several times more than cleaning a page.
    return nh3.Cleaner(
        clean_content_tags=set(_DROPPED_WITH_CONTENT),
        generic_attribute_prefixes=None,
        attributes={
            **{tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()},
            "*": set(_GENERIC_ATTRIBUTES),
        },
        url_schemes={"http", "https", "mailto"},
    )


def _body_html(item: StoredItem) -> str:
    return defend_html(item.content_html or item.summary_html)


def _tags(item: StoredItem) -> list[str]:
    tags: list[str] = []
    for raw in (item.section, *item.categories):
        tag = clean_text(raw or "").strip()
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def _source_updated(
    items: Sequence[StoredItem], known: Mapping[str, datetime] | None
) -> dict[str, datetime]:
    """When each source last changed: from the caller if known, else its newest item here."""
    updated: dict[str, datetime] = {}
    for item in items:
        moment = _item_updated(item)
        if item.source_id not in updated or moment > updated[item.source_id]:
            updated[item.source_id] = moment
    for source_id, moment in (known or {}).items():
        if source_id in updated:
            updated[source_id] = max(_utc(moment), updated[source_id])
    return updated


def _generator_version() -> str | None:
    try:
        return metadata.version(_GENERATOR_NAME)
    except metadata.PackageNotFoundError:
        return None


_IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
}


def _image_url(item: StoredItem) -> str | None:
    """The item's image if it is an http(s) URL (normalize only stores those; check anyway)."""
    url = clean_text(item.image_url or "").strip()
    return url if url.lower().startswith(("https://", "http://")) and " " not in url else None


def _image_type(url: str) -> str | None:
    """The MIME type an image URL's file name suggests, or None (many CDNs use none)."""
    path = urlsplit(url).path.lower()
    dot = path.rfind(".")
    return _IMAGE_TYPES.get(path[dot:]) if dot >= 0 else None


# --------------------------------------------------------------------------- Atom


def build_atom(
    items: Sequence[StoredItem],
    site: Site,
    *,
    self_url: str,
    sections: Mapping[str, str] | None = None,
    source_updated: Mapping[str, datetime] | None = None,
) -> bytes:
    """An Atom 1.0 (RFC 4287) document of ``items``, in the order given (newest first).

    ``sections`` maps a section id to its title (the category label);
    ``source_updated`` maps a source id to when that source last changed, for
    ``atom:source/updated`` (default: the newest of its items in this feed).
    The same arguments always give the same bytes.
    """
    entries = _unique(items)
    section_titles = sections or {}
    sources_updated = _source_updated(entries, source_updated)
    section_scheme = feed_urls(site)[0].rsplit("/", 1)[0] + "/sections"

    fg = FeedGenerator()
    register(fg)
    fg.id(clean_text(site.url))
    fg.title(clean_text(site.title).strip() or UNTITLED)
    if site.description.strip():
        fg.subtitle(clean_text(site.description))
    fg.updated(_feed_updated(entries))
    fg.link(href=clean_text(self_url), rel="self", type="application/atom+xml")
    fg.link(href=clean_text(site.url), rel="alternate", type="text/html")
    if site.hub_url:
        fg.link(href=clean_text(site.hub_url), rel="hub")
    author: dict[str, str] = {"name": clean_text(site.author_name).strip() or UNTITLED}
    if site.author_email:
        author["email"] = clean_text(site.author_email)
    fg.author(author)
    fg.generator(_GENERATOR_NAME, version=_generator_version())
    fg.language(clean_text(site.language))

    for item in entries:
        fe = fg.add_entry(order="append")  # feedgen would reverse the list otherwise
        fe.id(entry_id(*item.feed_key))
        fe.title(_title(item))
        fe.updated(_item_updated(item))
        if not item.date_missing:  # never claim a publication date the source did not give
            fe.published(_utc(item.published_at))
        fe.link(href=clean_text(item.url), rel="alternate", type="text/html")
        fe.author(name=_author_name(item))
        body = _body_html(item)
        if body:
            fe.content(body, type="html")
        excerpt = clean_text(item.excerpt).strip()
        if excerpt:
            fe.summary(excerpt)
        if item.section:
            section: dict[str, str] = {"term": clean_text(item.section), "scheme": section_scheme}
            label = section_titles.get(item.section)
            if label:
                section["label"] = clean_text(label)
            fe.category(section)
        for term in _tags(item):
            if term != item.section:
                fe.category(term=term)

        image = _image_url(item)
        if image:
            media_type = _image_type(image)
            if media_type:
                # An enclosure too: the form newsboat and podcast-style readers list.
                fe.link(href=image, rel="enclosure", type=media_type)
        ext = entry_extension(fe)
        ext.image(image, _image_type(image) if image else None)
        if item.language and item.language != site.language:
            ext.language(clean_text(item.language))
        ext.source(
            id=source_id_uri(item.source_id),
            title=_source_title(item),
            link=clean_text(item.source_url) or None,
            updated=sources_updated[item.source_id],
        )

    data: bytes = fg.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True)
    return data


# ---------------------------------------------------------------------- JSON Feed


def build_json_feed(
    items: Sequence[StoredItem],
    site: Site,
    *,
    feed_url: str,
    sections: Mapping[str, str] | None = None,
) -> bytes:
    """A JSON Feed 1.1 document of ``items`` in the order given, as UTF-8 bytes.

    Each item carries a ``_source`` extension object (the original source's
    title and URL); ``sections`` is accepted for symmetry with :func:`build_atom`
    (section ids are written as tags). The same arguments give the same bytes.
    """
    del sections  # tags carry the section id; JSON Feed has no label for a tag
    feed: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": clean_text(site.title).strip() or UNTITLED,
        "home_page_url": clean_text(site.url),
        "feed_url": clean_text(feed_url),
    }
    if site.description.strip():
        feed["description"] = clean_text(site.description)
    feed["language"] = clean_text(site.language)
    feed["authors"] = [{"name": clean_text(site.author_name), "url": clean_text(site.url)}]
    if site.hub_url:
        feed["hubs"] = [{"type": "WebSub", "url": clean_text(site.hub_url)}]
    feed["items"] = [_json_item(item) for item in _unique(items)]
    # Compact: the C encoder (indent=None) is several times faster, and gzip
    # makes the whitespace pointless on the wire anyway.
    text = json.dumps(feed, ensure_ascii=False, separators=(",", ":")) + "\n"
    # ``<``, ``>`` and ``&`` only ever occur inside JSON strings; as \u escapes they
    # read the same to any JSON parser, and the file stays inert if something
    # ever serves or embeds it as HTML.
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return text.encode("utf-8")


def _json_item(item: StoredItem) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id(*item.feed_key),
        "url": clean_text(item.url),
        "title": _title(item),
    }
    body = _body_html(item)
    if body:
        entry["content_html"] = body
    else:
        # JSON Feed requires content_html or content_text.
        entry["content_text"] = clean_text(item.text or item.excerpt).strip() or _title(item)
    excerpt = clean_text(item.excerpt).strip()
    if excerpt:
        entry["summary"] = excerpt
    if item.image_url:
        entry["image"] = clean_text(item.image_url)
    if not item.date_missing:
        entry["date_published"] = _rfc3339(item.published_at)
    entry["date_modified"] = _rfc3339(_item_updated(item))
    entry["authors"] = [{"name": _author_name(item)}]
    tags = _tags(item)
    if tags:
        entry["tags"] = tags
    if item.language:
        entry["language"] = clean_text(item.language)
    source: dict[str, str] = {"title": _source_title(item)}
    if item.source_url:
        source["url"] = clean_text(item.source_url)
    entry["_source"] = source
    return entry


# ------------------------------------------------------------------------ writing


def write_if_changed(path: Path, data: bytes) -> bool:
    """Atomically replace ``path`` with ``data``; do nothing if it already holds them.

    Returns True when the file was written. The bytes go to a temporary file in
    the same directory, are fsynced, and renamed over ``path``, so a reader sees
    the old file or the new one, never a part. On failure (disk full, no
    permission) the old file stays as it was, the temporary file is removed, and
    :class:`PublishError` names the path.

    The new file's mtime is at least one whole second after the old one's:
    ``Last-Modified`` has one-second precision, and a client that sends only
    ``If-Modified-Since`` (or libcurl, which drops a 200 whose Last-Modified is
    not newer than its condition) would miss a second publish within a second.
    """
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    except OSError:
        pass  # unreadable: try to replace it; a real problem shows up below

    try:
        old = path.stat()
        mode = old.st_mode & 0o7777
        previous_second: int | None = int(old.st_mtime)
    except OSError:
        mode = 0o644  # mkstemp's 0600 would hide the feed from the web server
        previous_second = None

    try:
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _write_error(path, error) from error

    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            # The file's own mtime, not time.time(): the file system stamps
            # with a coarse clock that can lag the wall clock by a few ms, and
            # the write may have happened just before a second boundary the
            # wall clock has already crossed.
            if previous_second is not None and int(os.fstat(fd).st_mtime) <= previous_second:
                later = previous_second + 1
                os.utime(fd, (later, later))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_name, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise _write_error(path, error) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise

    _fsync_directory(path.parent)
    return True


def _write_error(path: Path, error: OSError) -> PublishError:
    reason = error.strerror or str(error) or type(error).__name__
    return PublishError(
        f"could not write the feed ({reason}); the old file is kept", path=str(path)
    )


def _fsync_directory(directory: Path) -> None:
    # Make the rename itself durable. Best effort: the new file is in place
    # already, and some file systems refuse to fsync a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(
    items: Sequence[StoredItem],
    site: Site,
    out_dir: Path,
    *,
    sections: Mapping[str, str] | None = None,
    source_updated: Mapping[str, datetime] | None = None,
) -> PublishResult:
    """Write ``feed.atom`` (Atom) and ``feed.json`` (JSON Feed) into ``out_dir``.

    ``items`` come newest first; duplicates of other items are left out and at
    most ``site.feed_size`` are published. Unchanged files are not touched.
    When a file changed and ``site.hub_url`` is set, a hub ping is marked as
    due (see :func:`ping_pending`); ``ping_pending`` in the result says whether
    one is due now (also when an earlier ping failed).
    """
    selected = select_items(items, site.feed_size)
    atom_url, json_url = feed_urls(site)
    atom = build_atom(
        selected, site, self_url=atom_url, sections=sections, source_updated=source_updated
    )
    json_feed = build_json_feed(selected, site, feed_url=json_url, sections=sections)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(out_dir, error) from error
    atom_path = out_dir / ATOM_FILENAME
    json_path = out_dir / JSON_FILENAME
    json_changed = write_if_changed(json_path, json_feed)
    atom_changed = write_if_changed(atom_path, atom)
    changed = atom_changed or json_changed
    pending = False
    if site.hub_url:
        if changed:
            _save_ping_state(out_dir, {"hub_url": site.hub_url, "attempts": 0, "since": None})
        pending = _load_ping_state(out_dir) is not None
    return PublishResult(
        changed=changed,
        atom_path=atom_path,
        json_path=json_path,
        item_count=len(selected),
        ping_pending=pending,
    )


def publish_from_store(
    store: Store,
    site: Site,
    out_dir: Path,
    *,
    sections: Mapping[str, str] | None = None,
) -> PublishResult:
    """:func:`publish` the newest ``site.feed_size`` originals of ``store``.

    Reads only those rows (an index on ``published_at``), never the whole table.
    """
    items = store.recent_items(max(site.feed_size, 0), include_duplicates=False)
    return publish(items, site, out_dir, sections=sections)


# ------------------------------------------------------------------------- WebSub


async def ping_hub(hub_url: str, topic_urls: Sequence[str], client: httpx.AsyncClient) -> None:
    """Tell a WebSub hub that the feeds at ``topic_urls`` changed.

    Sends one form-encoded POST: ``hub.mode=publish`` and one ``hub.url`` per
    topic. A network error or a non-2xx answer raises :class:`PublishError`
    naming the hub; the caller logs it and pings again later (never fatal).
    """
    if not topic_urls:
        raise ValueError("ping_hub needs at least one topic URL")
    form = {"hub.mode": "publish", "hub.url": list(topic_urls)}
    try:
        response = await client.post(hub_url, data=form)
    except httpx.HTTPError as error:
        reason = str(error) or type(error).__name__
        raise PublishError(f"hub ping failed: {reason}", url=hub_url) from error
    if not response.is_success:
        raise PublishError(
            f"hub answered HTTP {response.status_code} to the ping",
            url=hub_url,
            status=response.status_code,
        )


async def ping_pending(
    site: Site,
    out_dir: Path,
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
) -> HubPing | None:
    """Send the hub ping :func:`publish` marked as due; None when none is due.

    On success the mark is removed. On failure it stays (with the attempt
    count and the error) so the next call, typically the scheduler's next
    publish run, tries again; the failure is logged and returned, never
    raised. With no hub configured any stale mark is dropped.
    """
    state = _load_ping_state(out_dir)
    if state is None:
        return None
    if not site.hub_url:
        _clear_ping_state(out_dir)
        return None
    hub_url = site.hub_url
    topics = feed_urls(site)
    attempts = int(state.get("attempts") or 0) + 1
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as own:
                await ping_hub(hub_url, topics, own)
        else:
            await ping_hub(hub_url, topics, client)
    except PublishError as error:
        log.warning(
            "WebSub ping failed (attempt %d); will retry on the next publish: %s",
            attempts,
            error,
            extra={"hub_url": hub_url, "attempts": attempts},
        )
        state.update(
            hub_url=hub_url,
            attempts=attempts,
            since=state.get("since") or _rfc3339(utcnow()),
            last_error=str(error),
        )
        try:
            _save_ping_state(out_dir, state)
        except PublishError as save_error:
            log.warning("could not remember the pending hub ping: %s", save_error)
        return HubPing(hub_url, topics, ok=False, attempts=attempts, error=str(error))
    _clear_ping_state(out_dir)
    log.info("WebSub hub %s pinged for %s", hub_url, ", ".join(topics))
    return HubPing(hub_url, topics, ok=True, attempts=attempts)


def _load_ping_state(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / PING_STATE_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # Unreadable or garbled: a ping too many is harmless, one too few is not.
        return {"attempts": 0}
    return data if isinstance(data, dict) else {"attempts": 0}


def _save_ping_state(out_dir: Path, state: Mapping[str, Any]) -> None:
    data = json.dumps(dict(state), sort_keys=True).encode("utf-8") + b"\n"
    write_if_changed(out_dir / PING_STATE_FILENAME, data)


def _clear_ping_state(out_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (out_dir / PING_STATE_FILENAME).unlink()
