"""Choose the week's new items and group them into the digest's sections.

The period is decided by the store, not by a scheduler's memory: it starts
where the last composed issue ended (or a week before its end for the very
first issue) and ends now. So a digest missed during downtime covers the whole
gap once, and two composes for the same period return the same frozen issue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from .config import Config
from .models import Digest, DigestSection, StoredItem, utcnow
from .store import Store

log = logging.getLogger(__name__)

OTHER_SECTION = "more"
DEFAULT_PERIOD = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime


def next_period(store: Store, *, now: datetime | None = None) -> Period:
    """From the end of the last composed issue (or one week back) to ``now``."""
    end = now or utcnow()
    last = store.last_digest()
    start = last.period_end if last else end - DEFAULT_PERIOD
    return Period(start=min(start, end), end=end)


def group_items(
    items: Sequence[StoredItem], config: Config, *, max_per_section: int | None = None
) -> tuple[DigestSection, ...]:
    """Sections in the configured order, then "More Korean film news", newest first, capped."""
    cap = max_per_section or config.digest.max_items_per_section
    wanted = list(config.digest.sections)
    buckets: dict[str, list[StoredItem]] = {sid: [] for sid in wanted}
    other: list[StoredItem] = []
    for item in sorted(items, key=lambda i: (i.published_at, i.id), reverse=True):
        if item.duplicate_of is not None:
            continue
        if item.section in buckets:
            buckets[item.section].append(item)
        else:
            other.append(item)
    sections = [
        DigestSection(sid, config.section_title(sid), tuple(buckets[sid][:cap]))
        for sid in wanted
        if buckets[sid]
    ]
    if other and config.digest.other_section_title:
        sections.append(
            DigestSection(OTHER_SECTION, config.digest.other_section_title, tuple(other[:cap]))
        )
    return tuple(sections)


def preheader(sections: Sequence[DigestSection]) -> str:
    """One line for the inbox preview: what this issue holds."""
    parts = []
    for section in sections:
        n = len(section.items)
        parts.append(f"{n} {section.title.lower() if n != 1 else _singular(section.title.lower())}")
    if not parts:
        return "No new stories this week."
    if len(parts) == 1:
        return f"This week: {parts[0]}."
    return "This week: " + ", ".join(parts[:-1]) + f" and {parts[-1]}."


def _singular(title: str) -> str:
    words = title.split(" ")
    if words and words[-1].endswith("s") and not words[-1].endswith("ss"):
        words[-1] = words[-1][:-1]
    elif words and words[0].endswith("s"):
        words[0] = words[0][:-1]
    return " ".join(words)


def build_digest(
    config: Config, store: Store, period: Period, *, max_per_section: int | None = None
) -> Digest | None:
    """The digest for a period, not yet stored; None when there is nothing new and
    ``when_empty`` is ``skip``."""
    from .render import format_subject

    items = store.items_first_seen_between(period.start, period.end)
    sections = group_items(items, config, max_per_section=max_per_section)
    if not sections and config.digest.when_empty == "skip":
        return None
    subject = format_subject(config.digest, config.site, period.start, period.end)
    return Digest(
        period_start=period.start,
        period_end=period.end,
        subject=subject,
        sections=sections,
        preheader=preheader(sections),
    )


def view_url(config: Config, digest_id: int | None) -> str:
    """Where the web archive shows an issue (the email's "view in browser" link)."""
    return f"{config.site.url}digests/{digest_id}" if digest_id else f"{config.site.url}digests/"


def render_parts(config: Config, digest: Digest) -> tuple[str, str]:
    """Render a digest's HTML and text, keeping the unsubscribe placeholder."""
    from .render import render_digest

    rendered = render_digest(digest, config.site, view_url=view_url(config, digest.id))
    return rendered.html, rendered.text


def compose(config: Config, store: Store, *, now: datetime | None = None) -> Digest | None:
    """Compose and freeze the next issue (idempotent for one period)."""
    period = next_period(store, now=now)
    digest = build_digest(config, store, period)
    if digest is None:
        log.info(
            "no new items between %s and %s: no digest composed",
            period.start.isoformat(),
            period.end.isoformat(),
        )
        return None
    stored = store.save_digest(digest, lambda d: render_parts(config, d), now=now or utcnow())
    log.info("composed digest #%s (%d items): %s", stored.id, stored.item_count, stored.subject)
    return stored


def local_date(config: Config, when: datetime) -> str:
    """A date as readers in the site's time zone see it."""
    return when.astimezone(ZoneInfo(config.site.timezone)).strftime("%Y-%m-%d")
