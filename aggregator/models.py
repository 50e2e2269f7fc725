"""Typed, frozen records handed from one pipeline stage to the next.

Stages never pass dicts or database rows to each other: a ``Source`` goes into
fetch, a ``FetchResult`` into a parser, ``RawEntry`` objects into normalize, an
``Item`` into the store, and ``StoredItem`` objects come back out for publish and
the digest. Freezing them means no stage can quietly change what another saw.
All datetimes here are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

SourceType = Literal["feed", "html"]
# Entries kept from one fetch of one source (feeds.yaml ``max_items``): the newest.
DEFAULT_MAX_ITEMS = 500


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (never naive)."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Selectors:
    """CSS selectors that turn an HTML listing page into entries.

    ``item`` selects one node per entry; the others are looked up inside it.
    A selector may end in ``@attr`` to read an attribute instead of the text
    (``a@href``); without one a link selector reads the ``href`` of the matched
    node, and an empty ``link`` means the title's link, else the item's first.
    """

    item: str
    title: str
    link: str
    summary: str | None = None
    date: str | None = None
    image: str | None = None
    author: str | None = None
    next_page: str | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """The public face of the aggregator: used by the feed, the email and the web pages."""

    title: str = "Korean Film Digest"
    url: str = "http://127.0.0.1:8080/"
    description: str = "Ko-pick columns, film previews and Korean film industry news."
    language: str = "en"
    timezone: str = "Asia/Seoul"
    postal_address: str = ""
    author_name: str = "Korean Film Digest"
    author_email: str | None = None
    sender_email: str = "digest@localhost"
    sender_name: str | None = None
    hub_url: str | None = None  # WebSub hub announced in the feed and pinged on change
    feed_size: int = 100
    output_dir: str = "public"
    # A directory whose templates replace the bundled ones of the same name
    # (absolute; feeds.yaml's relative path is resolved against its directory).
    templates: str | None = None


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """How and when the weekly digest is composed."""

    schedule_day: str = "mon"
    schedule_time: str = "09:00"
    subject: str = "{site_title}: week of {period_start:%b %d, %Y}"
    sections: tuple[str, ...] = ("ko-pick", "previews")
    other_section_title: str | None = "More Korean film news"
    max_items_per_section: int = 10
    when_empty: Literal["skip", "note"] = "skip"
    # The first issue of a new install covers at most this much of what was stored.
    period: timedelta = timedelta(days=7)
    # Per language (feeds.yaml ``subject: {en: ..., ko: ...}``); ``subject``
    # above is the site language's. A language not given gets its default.
    subjects: tuple[tuple[str, str], ...] = ()
    other_section_titles: tuple[tuple[str, str], ...] = ()

    def subject_for(self, language: str) -> str:
        """The subject format for an edition in ``language``, with a default per language."""
        given = dict(self.subjects)
        return given.get(language) or DEFAULT_SUBJECTS.get(language) or self.subject

    def other_title_for(self, language: str) -> str | None:
        """The "other news" section's title in ``language``."""
        given = dict(self.other_section_titles)
        if language in given:
            return given[language]
        if not self.other_section_titles and self.other_section_title == _OTHER_NEWS_EN:
            return DEFAULT_OTHER_TITLES.get(language, self.other_section_title)
        return self.other_section_title


_OTHER_NEWS_EN = "More Korean film news"
DEFAULT_SUBJECTS = {
    "en": "{site_title}: week of {period_start:%b %d, %Y}",
    "ko": (
        "{site_title}: {period_start.year}년 {period_start.month}월 {period_start.day}일 주간 소식"
    ),
}
"""The subject line per language when feeds.yaml gives none for it."""
DEFAULT_OTHER_TITLES = {"en": _OTHER_NEWS_EN, "ko": "한국 영화 소식 더 보기"}


@dataclass(frozen=True, slots=True)
class DkimSettings:
    """``smtp.dkim``: who signs (``d=`` domain, ``s=`` selector) and where the private key is.

    Exactly one of ``key_file`` (absolute, resolved against feeds.yaml) and
    ``key_env`` (an environment variable holding the PEM) is set: the key
    itself never sits in feeds.yaml.
    """

    domain: str
    selector: str
    key_file: str | None = None
    key_env: str | None = None


@dataclass(frozen=True, slots=True)
class ReturnPath:
    """The envelope sender (``MAIL FROM``, later the Return-Path) of digests.

    With ``verp_domain`` every delivery gets its own signed address
    ``bounces+TOKEN@verp_domain``, so a bounce names the delivery even when the
    remote server's report is unreadable; otherwise the fixed ``address`` is
    used and bounces are matched by the Message-ID they quote.
    """

    address: str | None = None
    verp_domain: str | None = None


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """SMTP relay; credentials come from the environment variables named here."""

    host: str = "localhost"
    port: int = 25
    starttls: bool = False
    ssl: bool = False
    username_env: str | None = None
    password_env: str | None = None
    timeout: float = 30.0
    rate_per_second: float = 0.0  # 0 means unlimited
    max_attempts: int = 3
    dkim: DkimSettings | None = None
    # From feeds.yaml's ``bounces:``: an SMTP-level setting (MAIL FROM), so it
    # travels with the relay settings to every sender.
    return_path: ReturnPath | None = None


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """The bounce mailbox (``bounces.imap``); credentials from the named environment variables."""

    host: str
    port: int
    username_env: str
    password_env: str
    tls: bool = True
    folder: str = "INBOX"
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class BounceSettings:
    """``bounces:`` in feeds.yaml: where bounces go and when an address counts as dead.

    ``soft_limit`` temporary failures (4.x.x, a full mailbox) within the last
    ``soft_window_issues`` digests mark the subscriber bounced, like one
    permanent failure (5.x.x) does at once.
    """

    address: str | None = None
    verp_domain: str | None = None
    imap: ImapSettings | None = None
    soft_limit: int = 3
    soft_window_issues: int = 5
    poll_interval: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The web app's own settings (``web:`` in feeds.yaml).

    ``trusted_proxies`` are the networks (``127.0.0.1``, ``10.0.0.0/8``) whose
    ``X-Forwarded-For`` is believed; from any other peer the header is ignored,
    so a client cannot pick its own address for the rate limits.
    """

    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(frozen=True, slots=True)
class SectionRule:
    """A digest/feed section and the rule that puts an item into it."""

    id: str
    title: str
    title_pattern: str | None = None
    text_pattern: str | None = None
    source_ids: tuple[str, ...] = ()
    category_pattern: str | None = None
    # The title per language (feeds.yaml ``title: {en: ..., ko: ...}``); ``title``
    # is the site language's and serves every language not listed.
    titles: tuple[tuple[str, str], ...] = ()

    def title_for(self, language: str) -> str:
        return dict(self.titles).get(language, self.title)


@dataclass(frozen=True, slots=True)
class Source:
    """One entry of ``sources:`` in feeds.yaml, validated."""

    id: str
    url: str
    type: SourceType = "feed"
    title: str | None = None
    interval: timedelta = timedelta(hours=1)
    timeout: float = 20.0
    select: Selectors | None = None
    # Query parameters that identify an item on this site; None keeps them all
    # (minus tracking parameters). ``drop_params`` removes more on top.
    identity_params: tuple[str, ...] | None = None
    drop_params: tuple[str, ...] = ()
    timezone: str = "Asia/Seoul"
    date_format: str | None = None
    max_pages: int = 1
    max_items: int = DEFAULT_MAX_ITEMS
    full_text: bool = False
    section: str | None = None
    enabled: bool = True
    encoding: str | None = None
    line: int | None = None  # line in feeds.yaml, for error messages
    # Which copy of a story is kept when several sources carry it (higher wins,
    # after the source that owns the story's link); see Store.save_items.
    priority: int = 0
    language: str | None = None  # its items' language, over what the feed declares

    @property
    def display_name(self) -> str:
        return self.title or self.id


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the store remembers about a source between fetches."""

    id: str
    url: str
    etag: str | None = None
    last_modified: str | None = None
    content_hash: str | None = None
    last_fetched_at: datetime | None = None
    last_success_at: datetime | None = None
    next_fetch_at: datetime | None = None
    error_count: int = 0
    last_error: str | None = None
    broken_reason: str | None = None
    disabled_at: datetime | None = None
    warning: str | None = None


# ---------------------------------------------------------------------------- fetch


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one HTTP fetch of a source.

    ``content`` is None when the server answered 304 Not Modified. ``url`` is the
    final URL after redirects; ``permanent_url`` is set when a 301/308 chain
    means the stored URL should change.
    """

    source_id: str
    url: str
    status: int
    content: bytes | None
    content_type: str | None = None
    charset: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None
    fetched_at: datetime = field(default_factory=utcnow)
    elapsed: float = 0.0
    # Set when ``content`` is still compressed as it came off the wire (the
    # ingest pass decodes in its parse workers): the Content-Encoding to undo,
    # and ``max_bytes``, the cap the decoded body must stay within.
    content_encoding: str | None = None
    max_bytes: int = 0

    @property
    def not_modified(self) -> bool:
        return self.content is None


# ---------------------------------------------------------------------------- parse


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One entry as a parser found it: unsanitized, possibly relative URLs.

    HTML fields are still third-party HTML; normalize sanitizes them. Dates are
    aware datetimes when the parser could read them, else None (``date_text``
    keeps the original string for error messages and per-source formats).
    """

    guid: str | None
    link: str | None
    title: str | None
    summary_html: str | None = None
    content_html: str | None = None
    published: datetime | None = None
    updated: datetime | None = None
    date_text: str | None = None
    author: str | None = None
    categories: tuple[str, ...] = ()
    image_url: str | None = None
    base_url: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A parsed feed or listing page: its metadata and entries."""

    title: str | None
    link: str | None
    entries: tuple[RawEntry, ...]
    language: str | None = None
    # Why the parser had to guess (feedparser's bozo exception, a selector that
    # matched nothing); the entries are still usable when this is set.
    warning: str | None = None
    next_page_url: str | None = None


# ------------------------------------------------------------------------ normalize


@dataclass(frozen=True, slots=True)
class Item:
    """A normalized entry ready to store: sanitized HTML, absolute URLs, UTC dates.

    ``guid`` is the identity within the source (the feed's id, else the
    canonical link). ``fingerprint`` identifies the same story across sources.
    ``content_hash`` changes whenever anything a reader sees changes.
    """

    source_id: str
    guid: str
    url: str
    canonical_url: str
    title: str
    summary_html: str  # "" when the same as content_html (not stored twice)
    content_html: str
    text: str
    excerpt: str
    fingerprint: str
    content_hash: str
    published_at: datetime
    updated_at: datetime
    image_url: str | None = None
    author: str | None = None
    categories: tuple[str, ...] = ()
    section: str | None = None
    language: str | None = None
    date_missing: bool = False


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item read back from the store, with its storage identity."""

    id: int
    source_id: str
    source_title: str
    source_url: str
    guid: str
    url: str
    canonical_url: str
    title: str
    summary_html: str
    content_html: str
    text: str
    excerpt: str
    published_at: datetime
    updated_at: datetime
    first_seen_at: datetime
    image_url: str | None = None
    author: str | None = None
    categories: tuple[str, ...] = ()
    section: str | None = None
    language: str | None = None
    duplicate_of: int | None = None
    # The source gave no usable date: ``published_at`` is when we first saw it.
    date_missing: bool = False
    # Set when this copy took over from an earlier, worse copy of the story:
    # the (source, guid) readers already know its feed entry by.
    story_source_id: str | None = None
    story_guid: str | None = None

    @property
    def feed_key(self) -> tuple[str, str]:
        """The (source, guid) the published feed id is made from: stable across takeovers."""
        if self.story_source_id is not None and self.story_guid is not None:
            return self.story_source_id, self.story_guid
        return self.source_id, self.guid


class IngestOutcome(StrEnum):
    """How one source's ingest pass ended."""

    OK = "ok"
    NOT_MODIFIED = "not_modified"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counts for one source's ingest pass, shown in ``aggregator fetch``."""

    source_id: str
    outcome: IngestOutcome
    new: int = 0
    updated: int = 0
    duplicates: int = 0
    unchanged: int = 0
    error: str | None = None
    elapsed: float = 0.0


# --------------------------------------------------------------------------- digest


@dataclass(frozen=True, slots=True)
class DigestSection:
    id: str
    title: str
    items: tuple[StoredItem, ...]
    # Items of the period left out by ``digest.max_items_per_section``: the
    # email says "and N more in this section" instead of dropping them silently.
    more: int = 0


@dataclass(frozen=True, slots=True)
class Digest:
    """One issue of the newsletter. Frozen once composed and stored."""

    period_start: datetime
    period_end: datetime
    subject: str
    sections: tuple[DigestSection, ...]
    preheader: str = ""
    id: int | None = None
    html: str = ""
    text: str = ""
    created_at: datetime | None = None

    @property
    def item_count(self) -> int:
        return sum(len(s.items) for s in self.sections)


class SubscriberStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    # Hard-bounced (or too many soft bounces): mailed no more; see aggregator.mail.bounces.
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: int
    email: str
    status: SubscriberStatus
    created_at: datetime
    name: str | None = None
    confirmed_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    # Preferences: section ids wanted (None = every section, also ones added
    # later) and the digest's language (None = the site's language).
    sections: tuple[str, ...] | None = None
    language: str | None = None


class BounceKind(StrEnum):
    """What a report from the bounce mailbox (or the SMTP session) says about an address."""

    HARD = "hard"  # 5.x.x: the mailbox does not exist; never mail it again
    SOFT = "soft"  # 4.x.x: full or unavailable for now; counted
    COMPLAINT = "complaint"  # an ARF feedback report: the reader pressed "spam"


@dataclass(frozen=True, slots=True)
class BounceEvent:
    """One bounce or complaint about one address, ready to be recorded.

    ``key`` identifies the report it came from (the report's Message-ID and
    the address, or ``smtp:`` and the delivery): recording the same key twice
    changes nothing, so a mailbox read twice counts each bounce once.
    """

    key: str
    email: str
    kind: BounceKind
    origin: Literal["imap", "smtp"]
    digest_id: int | None = None
    subscriber_id: int | None = None
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    """What recording a :class:`BounceEvent` did.

    ``action``: ``bounced`` (marked, suppressed), ``unsubscribed`` (a
    complaint), ``counted`` (a soft bounce under the limit), ``duplicate``
    (seen before), ``unknown`` (no subscriber we ever mailed: ignored).
    """

    action: Literal["bounced", "unsubscribed", "counted", "duplicate", "unknown"]
    subscriber_id: int | None = None
    email: str = ""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    # Nothing in this subscriber's sections this week (digest.when_empty: skip):
    # recorded, so the issue is never sent to them later.
    SKIPPED = "skipped"
