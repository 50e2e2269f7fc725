"""Choose the week's new items and group them into the digest's sections.

The period is decided by the store and the schedule, not by a scheduler's
memory. An issue ends at the latest scheduled slot (``digest.schedule``, e.g.
Monday 09:00 in the site's time zone) that is not in the future, and starts
where the last composed issue ended. The very first issue of an install is
the exception: it covers what has been stored until the moment it is composed
(at most ``digest.period``, a week by default), so ``digest compose`` right
after the first ``fetch`` gives an issue instead of waiting up to a week for
the next slot. ``digest preview``, ``digest send --now`` and the first issue
all use :func:`upcoming_period`, so they agree on which items an issue holds.
So:

- composing twice in the same week finds the same period and returns the issue
  already frozen for it;
- a digest missed during downtime covers the whole gap, once;
- an issue, once frozen, never changes: items that arrive later belong to the
  next period.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from .config import Config
from .errors import AggregatorError
from .models import Digest, DigestSection, DigestSettings, Site, StoredItem, utcnow
from .render import build_preheader, format_subject, render_digest
from .store import Store

__all__ = [
    "DEFAULT_PERIOD",
    "OTHER_SECTION",
    "Period",
    "build_digest",
    "compose",
    "compose_now",
    "first_issue_hint",
    "group_items",
    "latest_slot",
    "next_period",
    "next_slot",
    "render_parts",
    "upcoming_period",
    "view_url",
]

log = logging.getLogger(__name__)

OTHER_SECTION = "more"
"""Section id of the catch-all "More Korean film news" section."""

DEFAULT_PERIOD = timedelta(days=7)

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open interval ``[start, end)`` of first-seen times, both aware UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise AggregatorError("a digest period needs time-zone aware datetimes")
        if self.end <= self.start:
            raise AggregatorError(
                f"a digest period must end after it starts: {self.start.isoformat()} .. "
                f"{self.end.isoformat()}"
            )


def latest_slot(settings: DigestSettings, site: Site, now: datetime) -> datetime:
    """The latest scheduled digest time at or before ``now``, as aware UTC.

    ``settings.schedule_day``/``schedule_time`` are read in ``site.timezone``,
    so "mon 09:00" means Monday 09:00 in Seoul however the machine is set up.
    """
    zone = ZoneInfo(site.timezone)
    local_now = now.astimezone(zone)
    weekday = _WEEKDAYS.index(settings.schedule_day[:3].lower())
    hour, minute = (int(part) for part in settings.schedule_time.split(":"))
    days_back = (local_now.weekday() - weekday) % 7
    day = local_now.date() - timedelta(days=days_back)
    slot = datetime.combine(day, time(hour, minute), tzinfo=zone)
    if slot > local_now:
        slot -= timedelta(days=7)
    return slot.astimezone(now.tzinfo)


def next_slot(settings: DigestSettings, site: Site, now: datetime) -> datetime:
    """The first scheduled digest time after ``now``, as an aware datetime in ``site.timezone``."""
    zone = ZoneInfo(site.timezone)
    # The latest slot a week on is the first one after now (wall-clock
    # arithmetic in the zone, so a DST change keeps 09:00 at 09:00).
    later = (now.astimezone(zone).replace(tzinfo=None) + timedelta(days=7)).replace(tzinfo=zone)
    slot = latest_slot(settings, site, later).astimezone(zone)
    if slot <= now:
        slot = (slot.replace(tzinfo=None) + timedelta(days=7)).replace(tzinfo=zone)
    return slot


def upcoming_period(config: Config, store: Store, *, now: datetime | None = None) -> Period:
    """The next issue as it stands at ``now``: from the end of the last one until now.

    With no issue yet it starts ``digest.period`` (a week) before now, so the
    first issue of an install holds what has been stored, not a week of
    nothing before a slot that passed before the first fetch.
    """
    end = now or utcnow()
    last = store.last_digest()
    start = last.period_end if last is not None else end - config.digest.period
    if start >= end:
        start = end - timedelta(seconds=1)  # an issue just composed: nothing new yet
    return Period(start=start, end=end)


def next_period(config: Config, store: Store, *, now: datetime | None = None) -> Period:
    """The period of the issue due at ``now``.

    It ends at :func:`latest_slot` and starts at the end of the last composed
    issue. When the last issue already reaches that slot, its own period is
    returned: the due issue exists. With no issue yet, the first one is
    :func:`upcoming_period`: what was stored in the last ``digest.period``.
    """
    now = now or utcnow()
    end = latest_slot(config.digest, config.site, now)
    last = store.last_digest()
    if last is None:
        return upcoming_period(config, store, now=now)
    if last.period_end >= end:
        return Period(start=last.period_start, end=last.period_end)
    return Period(start=last.period_end, end=end)


def group_items(
    items: Sequence[StoredItem], config: Config, *, max_per_section: int | None = None
) -> tuple[DigestSection, ...]:
    """Sections in the configured order, then the "other" section; newest first, capped.

    A section's ``more`` counts the items the cap left out, so readers are told.

    An item goes to its own section when that section is one of
    ``digest.sections``, else to the "other" section (``digest.other_section_title``;
    when that is unset such items are left out). Duplicates of an earlier item
    are never included; neither is the same link twice.
    """
    cap = max_per_section or config.digest.max_items_per_section
    wanted = list(dict.fromkeys(config.digest.sections))
    buckets: dict[str, list[StoredItem]] = {sid: [] for sid in wanted}
    other: list[StoredItem] = []
    seen_links: set[str] = set()
    for item in sorted(items, key=lambda i: (i.published_at, i.id), reverse=True):
        if item.duplicate_of is not None or item.canonical_url in seen_links:
            continue
        seen_links.add(item.canonical_url)
        if item.section in buckets:
            buckets[item.section].append(item)
        else:
            other.append(item)
    sections = [
        DigestSection(
            sid,
            config.section_title(sid),
            tuple(buckets[sid][:cap]),
            more=max(0, len(buckets[sid]) - cap),
        )
        for sid in wanted
        if buckets[sid]
    ]
    if other and config.digest.other_section_title:
        sections.append(
            DigestSection(
                OTHER_SECTION,
                config.digest.other_section_title,
                tuple(other[:cap]),
                more=max(0, len(other) - cap),
            )
        )
    return tuple(sections)


def build_digest(
    config: Config, store: Store, period: Period, *, max_per_section: int | None = None
) -> Digest | None:
    """The digest for ``period``, not stored and not rendered.

    None when no new item was first seen in the period and ``digest.when_empty``
    is ``skip``; with ``note`` an issue without sections is returned (the email
    then says there was no news).
    """
    items = store.items_first_seen_between(period.start, period.end)
    sections = group_items(items, config, max_per_section=max_per_section)
    if not sections and config.digest.when_empty == "skip":
        return None
    digest = Digest(
        period_start=period.start,
        period_end=period.end,
        subject=format_subject(config.digest, config.site, period.start, period.end),
        sections=sections,
    )
    return replace(digest, preheader=build_preheader(digest))


def view_url(config: Config, digest_id: int | None) -> str:
    """Where the web archive shows an issue: the email's "View in browser" link.

    ``<site.url>/digests/<id>``; the archive index when the issue has no id yet
    (a preview).
    """
    base = config.site.url.rstrip("/") + "/digests/"
    return f"{base}{digest_id}" if digest_id is not None else base


def render_parts(config: Config, digest: Digest) -> tuple[str, str]:
    """Render a digest's HTML and text, keeping the unsubscribe placeholder for delivery."""
    rendered = render_digest(digest, config.site, view_url=view_url(config, digest.id))
    return rendered.html, rendered.text


def compose(
    config: Config,
    store: Store,
    *,
    now: datetime | None = None,
    period: Period | None = None,
) -> Digest | None:
    """Compose and freeze the issue due at ``now`` (or for ``period``).

    Returns the stored issue, with its id, HTML and text. If an issue for that
    period is already frozen it is returned unchanged, whatever arrived since.
    None when there is nothing new and ``digest.when_empty`` is ``skip``.
    """
    now = now or utcnow()
    period = period or next_period(config, store, now=now)
    existing = store.digest_for_period(period.start, period.end)
    if existing is not None:
        log.info("digest #%s already covers this period: %s", existing.id, existing.subject)
        return existing
    digest = build_digest(config, store, period)
    if digest is None:
        log.info(
            "no new items between %s and %s: no digest composed",
            period.start.isoformat(),
            period.end.isoformat(),
        )
        return None
    stored = store.save_digest(digest, lambda d: render_parts(config, d), now=now)
    log.info("composed digest #%s (%d items): %s", stored.id, stored.item_count, stored.subject)
    return stored


def compose_now(config: Config, store: Store, *, now: datetime | None = None) -> Digest | None:
    """Compose and freeze what is new until ``now`` without waiting for the slot.

    The issue holds exactly what ``digest preview`` shows (:func:`upcoming_period`);
    the next scheduled issue starts where this one ends, so nothing is sent twice.
    """
    now = now or utcnow()
    period = upcoming_period(config, store, now=now)
    if store.last_digest() is not None and not store.items_first_seen_between(
        period.start, period.end
    ):
        return None  # nothing since the last issue: not even a "no news" note on demand
    return compose(config, store, now=now, period=period)


def first_issue_hint(config: Config, *, now: datetime | None = None) -> str:
    """What is true before the first issue: when it goes out, and how to send it at once."""
    slot = next_slot(config.digest, config.site, now or utcnow())
    return (
        f"no issue yet; next scheduled {slot:%a %Y-%m-%d %H:%M %Z}; "
        "`aggregator digest send --now` sends the first one today"
    )
