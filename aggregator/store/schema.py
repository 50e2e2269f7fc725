"""The tables, as SQLAlchemy Core metadata.

Constraint names are explicit (naming convention) so Alembic's batch mode can
alter them on SQLite. The migrations in ``migrations/versions`` are the source
of truth for existing databases; this module must describe the same schema.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from .types import UTCDateTime

# Hex digits of a text key (sha256): what the indexes hold instead of the text.
KEY_HASH_CHARS = 64


def text_key(value: str) -> str:
    """The fixed-size index key of an unbounded text (a guid, a canonical link).

    PostgreSQL refuses an index row over ~2.7 KB (``index row size exceeds
    btree maximum``), and a feed controls how long its links and guids are:
    indexing the text itself lets one entry stop a source's whole write. A
    sha256 digest is 64 characters whatever the input; lookups compare the
    digest (collisions are not a practical concern at 256 bits).
    """
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


# Hex digits of a link key taken from its host (see link_key).
HOST_KEY_CHARS = 8

# The authority of an absolute URL: what follows "scheme://" up to the path.
_AUTHORITY = re.compile(r"[^:/?#]*://([^/?#]*)")


def link_key(canonical_url: str) -> str:
    """The index key of a canonical link: its host's digest, then the link's own.

    Same length as a ``text_key`` and as unique for a given link (the last 56
    hex digits are the link's sha256), but the first 8 come from the link's
    host (its authority, as written), so an index on these keys keeps each
    site's links side by side. A source's items nearly always share a host,
    so a transaction's new entries land on a few leaf pages of
    ``ix_items_canonical_url_hash`` instead of one random page each: at
    10,000 feeds (400,000 items) that random page per item was read back,
    written to the WAL and copied by the checkpoint (``benchmarks/
    store_replay``: 36.8 → 28.6 KB written per item at source 4,000).
    Links that are not absolute URLs share one empty-host prefix.
    """
    found = _AUTHORITY.match(canonical_url)
    host = text_key(found.group(1) if found else "")
    # No cache of host digests: at 10,000 sources one held 0.5 MB for a saving
    # of well under a microsecond per item.
    return host[:HOST_KEY_CHARS] + text_key(canonical_url)[HOST_KEY_CHARS:]


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

sources = Table(
    "sources",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("config_url", Text, nullable=False),
    Column("url", Text, nullable=False),  # may differ after a permanent redirect
    Column("title", Text),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("content_hash", String(64)),
    Column("last_fetched_at", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("next_fetch_at", UTCDateTime),
    Column("error_count", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("broken_reason", Text),
    Column("disabled_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("warning", Text),  # non-fatal, e.g. guids that change on every fetch
    # feeds.yaml's priority: which copy of a story is kept (higher wins).
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
)

items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source_id", String(64), ForeignKey("sources.id"), nullable=False),
    Column("guid", Text, nullable=False),
    Column("guid_hash", String(KEY_HASH_CHARS), nullable=False),  # text_key(guid)
    Column("url", Text, nullable=False),
    Column("canonical_url", Text, nullable=False),
    Column("canonical_url_hash", String(KEY_HASH_CHARS), nullable=False),  # link_key(canonical_url)
    Column("fingerprint", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("title", Text, nullable=False),
    Column("summary_html", Text, nullable=False, default=""),
    Column("content_html", Text, nullable=False, default=""),
    Column("text", Text, nullable=False, default=""),
    Column("excerpt", Text, nullable=False, default=""),
    Column("image_url", Text),
    Column("author", Text),
    Column("categories", JSON, nullable=False, default=list),
    Column("section", String(64)),
    Column("language", String(16)),
    Column("published_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("date_missing", Boolean, nullable=False, default=False),
    Column("duplicate_of", Integer, ForeignKey("items.id")),
    # The (source, guid) whose feed id readers already know for this story,
    # when a better copy took over from it; NULL: the item's own.
    Column("story_source_id", String(64)),
    Column("story_guid", Text),
    # Only fixed-size keys are indexed: never the feed's unbounded text.
    UniqueConstraint("source_id", "guid_hash"),
    Index("ix_items_canonical_url_hash", "canonical_url_hash"),
    Index("ix_items_fingerprint", "fingerprint"),
    Index("ix_items_published_at", "published_at"),
    Index("ix_items_first_seen_at", "first_seen_at"),
    # A better copy taking over a story repoints the story's duplicates
    # (``take_over``): without this index each takeover scanned the table.
    # Partial: most items are originals (NULL) and cost the index nothing.
    # On PostgreSQL too (migration 0011 makes the index on both); it is not
    # repeated here as ``postgresql_where``, since naming a PostgreSQL option
    # makes SQLAlchemy import its whole PostgreSQL dialect (a module per
    # driver, ~2 MB of PSS) into every SQLite process, the ingest's among them.
    Index("ix_items_duplicate_of", "duplicate_of", sqlite_where=text("duplicate_of IS NOT NULL")),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),  # as the person typed it
    Column("name", Text),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime),
    Column("unsubscribed_at", UTCDateTime),
    # The address lower-cased: Dup.Reader@ and dup.reader@ are one subscriber.
    Column("email_key", String(320), nullable=False),
    # Preferences (migration 0010): a JSON list of section ids, NULL = all
    # sections; a language code, NULL = the site's language.
    Column("sections", Text),
    Column("language", String(16)),
    Index("uq_subscribers_email_key", "email_key", unique=True),
)

digests = Table(
    "digests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("period_start", UTCDateTime, nullable=False),
    Column("period_end", UTCDateTime, nullable=False),
    Column("subject", Text, nullable=False),
    Column("preheader", Text, nullable=False, default=""),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("item_count", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("period_start", "period_end"),
)

digest_items = Table(
    "digest_items",
    metadata,
    Column("digest_id", Integer, ForeignKey("digests.id"), primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("section", String(64), nullable=False),
    Column("section_title", Text, nullable=False),
    Column("position", Integer, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("digest_id", Integer, ForeignKey("digests.id"), nullable=False),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("message_id", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("lease_owner", Text),
    Column("lease_until", UTCDateTime),
    Column("sent_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    # The subscriber's preferences when the row was written (migration 0010,
    # see store.deliveries.variant_key): a resend sends the same edition even
    # if they changed them since. NULL: the whole issue in the site's language.
    Column("variant", Text),
    UniqueConstraint("digest_id", "subscriber_id"),
    Index("ix_deliveries_digest_id_status", "digest_id", "status"),
)

# One row (id 1): a random id minted when the database was created, part of
# every Message-ID so two installations (or one after a reset) never repeat one.
installation = Table(
    "installation",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("install_id", String(32), nullable=False),
)

# Every bounce and complaint recorded, once per report (``key`` is unique), so
# reading the mailbox again counts nothing twice.
bounce_events = Table(
    "bounce_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(KEY_HASH_CHARS), nullable=False, unique=True),  # text_key(report key)
    Column("subscriber_id", Integer, ForeignKey("subscribers.id")),
    Column("email", String(320), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("origin", String(8), nullable=False),
    Column("digest_id", Integer, ForeignKey("digests.id")),
    Column("diagnostic", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_bounce_events_subscriber_id", "subscriber_id"),
)

# Addresses never mailed again (hard bounce, complaint), whatever the
# subscriber rows say, until an admin lifts it: kept by address (lower case)
# so forgetting and re-importing a subscriber does not undo it.
suppressions = Table(
    "suppressions",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
