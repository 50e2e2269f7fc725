"""Read the dates that feeds and Korean listing pages print.

Feeds mostly use RFC 822 or ISO 8601, which carry their zone. Listing pages
print bare local dates (``2025.11.27``, ``2025년 11월 27일``, ``11월 27일``);
those are read in the source's time zone. Every result is an aware UTC
datetime, or None when the text holds no date we can trust.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = (
    r"(?P<mon>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
# An optional clock time after the date: "14:30", "14:30:05", "오후 2:30", "2:30 PM".
_TIME = (
    r"(?:[\sT,]+(?P<ampm1>오전|오후|AM|PM|am|pm)?\s*"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
    r"(?:\s*(?P<ampm2>AM|PM|am|pm))?)?"
)
_PATTERNS = (
    # 2025년 11월 27일 (14:30)
    re.compile(
        r"(?P<year>\d{4})\s*년\s*(?P<month>\d{1,2})\s*월\s*(?P<day>\d{1,2})\s*일"
        r"(?:\s*\([^)]{1,3}\))?" + _TIME
    ),
    # 2025.11.27 / 2025-11-27 / 2025/11/27 (14:30)
    re.compile(
        r"(?<!\d)(?P<year>\d{4})\s*(?P<sep>[./-])\s*(?P<month>\d{1,2})\s*(?P=sep)\s*"
        r"(?P<day>\d{1,2})(?!\d)\.?(?:\s*\([^)]{1,3}\))?" + _TIME
    ),
    # 27 Nov 2025
    re.compile(
        r"(?<!\d)(?P<day>\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH + r",?\s+(?P<year>\d{4})" + _TIME,
        re.I,
    ),
    # Nov 27, 2025
    re.compile(
        r"\b" + _MONTH + r"\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<year>\d{4})" + _TIME, re.I
    ),
    # 11월 27일 (year inferred)
    re.compile(r"(?<!\d)(?P<month>\d{1,2})\s*월\s*(?P<day>\d{1,2})\s*일" + _TIME),
)
# How far ahead of "now" a date printed without a year may fall.
YEARLESS_LEEWAY = timedelta(days=2)
# Dates outside [EARLIEST, now + LATEST_AHEAD] are typos or placeholders
# ("1900-01-01", "2099-12-31"), not publication dates.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AHEAD = timedelta(days=366)
_ISO_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_HAS_ZONE = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$", re.I)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _to_utc(value: datetime, tz: str) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_zone(tz))
    return value.astimezone(UTC)


def _hour24(hour: int, ampm: str | None) -> int:
    if not ampm:
        return hour
    pm = ampm.lower() in ("pm", "오후")
    if hour == 12:
        return 12 if pm else 0
    return hour + 12 if pm else hour


def _from_match(match: re.Match[str], tz: str, now: datetime) -> datetime | None:
    parts = match.groupdict()
    mon = parts.get("mon")
    month = _MONTHS[mon.lower().rstrip(".")] if mon else int(parts["month"])
    day = int(parts["day"])
    hour = minute = second = 0
    if parts.get("hour"):
        hour = _hour24(int(parts["hour"]), parts.get("ampm1") or parts.get("ampm2"))
        minute = int(parts["minute"])
        second = int(parts["second"] or 0)
    try:
        if parts.get("year"):
            local = datetime(int(parts["year"]), month, day, hour, minute, second)
            return _to_utc(local, tz)
        # No year: the most recent such date at most two days ahead of now
        # (a listing in Seoul may be a day ahead of a server elsewhere).
        limit = now + YEARLESS_LEEWAY
        year = now.astimezone(_zone(tz)).year + 1
        for candidate_year in (year, year - 1, year - 2, year - 3, year - 4):
            try:
                local = datetime(candidate_year, month, day, hour, minute, second)
            except ValueError:  # 29 February in a common year
                continue
            result = _to_utc(local, tz)
            if result <= limit:
                return result
        return None
    except ValueError:
        return None


def is_plausible(value: datetime, now: datetime) -> bool:
    """True for dates from 1970 up to a year after ``now``; others are placeholders or typos."""
    return EARLIEST <= value <= now + LATEST_AHEAD


def parse_date(
    text: str | None,
    *,
    tz: str = "Asia/Seoul",
    fmt: str | None = None,
    now: datetime | None = None,
) -> datetime | None:
    """Read a date from ``text`` as an aware UTC datetime, or None.

    Understands RFC 822 and ISO 8601 (as feeds print them), ``2025.11.27``,
    ``2025-11-27``, ``2025/11/27``, ``2025년 11월 27일``, ``27 Nov 2025``,
    ``Nov 27, 2025`` and ``11월 27일``, each with an optional time (``14:30``,
    ``오후 2:30``, ``2:30 PM``). ``fmt`` (a ``strptime`` format) is tried first
    when given. Dates without a zone are taken to be in ``tz``. A month and day
    without a year get the most recent year that puts them at most two days
    after ``now``.

    Implausible results (before 1970, or more than a year after ``now``) are
    returned as None rather than clamped: a clamped date would look real in
    the digest, while None lets the caller fall back to another date field or
    to the time the entry was first seen, and flag it.
    """
    if not text:
        return None
    text = " ".join(text.split())
    if not text:
        return None
    if now is None:
        now = datetime.now(UTC)
    value = _parse(text, tz, fmt, now)
    if value is None or not is_plausible(value, now):
        return None
    return value


def _parse(text: str, tz: str, fmt: str | None, now: datetime) -> datetime | None:
    if fmt:
        try:
            return _to_utc(datetime.strptime(text, fmt), tz)
        except ValueError:
            pass
    if _ISO_LIKE.match(text):
        try:
            return _to_utc(datetime.fromisoformat(text.replace("z", "Z")), tz)
        except ValueError:
            pass
    if "," in text[:5] or _HAS_ZONE.search(text) or text[-3:].isalpha():
        try:
            value = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            value = None
        if value is not None:
            return _to_utc(value, tz)
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            result = _from_match(match, tz, now)
            if result is not None:
                return result
    return None
