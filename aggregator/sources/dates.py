"""Read the dates that feeds and Korean listing pages print.

Feeds mostly use RFC 822 or ISO 8601, which carry their zone. Listing pages
print bare local dates (``2025.11.27``, ``2025년 11월 27일``, ``11월 27일``);
those are read in the source's time zone. Every result is an aware UTC
datetime, or None when the text holds no date we can trust.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
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
# An optional clock time after the date: "14:30", "14:30:05", "오후 2:30", "2:30 PM",
# "오후 3시", "15시 30분"; then an optional zone: "KST", "+0900", "GMT+9", "(KST)".
_ZONE_TOKEN = (
    r"(?:\s*\(?(?P<zone>(?:UTC|GMT|UT)\s*[+-]\s*\d{1,2}(?::?\d{2})?|[+-]\d{2}:?\d{2}|[+-]\d{2}\b"
    r"|[A-Z]{1,5}\b)\)?)?"
)
_TIME = (
    r"(?:[\sT,]+(?P<ampm1>오전|오후|AM|PM|am|pm|a\.m\.|p\.m\.)?\s*"
    r"(?:(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.\d{1,9})?)?"
    r"|(?P<khour>\d{1,2})\s*시(?:\s*(?P<kminute>\d{1,2})\s*분)?(?:\s*(?P<ksecond>\d{1,2})\s*초)?"
    r"|(?P<ehour>\d{1,2})(?=\s*(?:AM|PM|am|pm|a\.m\.|p\.m\.)))"
    r"(?:\s*(?P<ampm2>AM|PM|am|pm|a\.m\.|p\.m\.))?" + _ZONE_TOKEN + r")?"
)
_PATTERNS = (
    # 2025년 11월 27일 (목) (오후 3시)
    re.compile(
        r"(?P<year>\d{4})\s*년\s*(?P<month>\d{1,2})\s*월\s*(?P<day>\d{1,2})\s*일"
        r"(?:\s*\([^)]{1,3}\))?" + _TIME
    ),
    # 2025.11.27 / 2025. 11. 27. / 2025-11-27 / 2025/11/27 (14:30)
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
# RFC 822 / 1123 / 2822 as feeds print it: "Thu, 27 Nov 2025 15:00:00 +0900", the
# weekday optional (and not checked: feeds get it wrong), two- or four-digit years.
_RFC822 = re.compile(
    r"^(?:[A-Za-z]{3,9}\.?,?\s+)?(?P<day>\d{1,2})\s+" + _MONTH + r"\s+(?P<year>\d{2}|\d{4})"
    r"\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
    r"(?:\s*(?P<zone>(?:UTC|GMT|UT)\s*[+-]\s*\d{1,2}(?::?\d{2})?|[+-]\d{2}:?\d{2}|[A-Za-z]{1,5}))?"
    r"(?:\s*\([^)]{0,40}\))?\s*$",
    re.I,
)
# asctime, as some feeds print it: "Thu Nov 27 15:00:00 2025" (zone optional).
_ASCTIME = re.compile(
    r"^(?:[A-Za-z]{3,9},?\s+)?" + _MONTH + r"\s+(?P<day>\d{1,2})"
    r"\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
    r"(?:\s+(?P<zone>[A-Za-z]{1,5}|[+-]\d{2}:?\d{2}))?\s+(?P<year>\d{4})\s*$",
    re.I,
)
# A clock time right after a date that none of the time forms above could read
# ("3h", "15.30", "3 p.m"): the date alone would be a silently wrong instant.
_UNREAD_TIME = re.compile(
    r"^\s*(?:오전|오후|AM|PM)?\s*\d{1,2}\s*(?:[:.h]\s*\d|h\b|시|[ap]\.?m\b)", re.I
)
# Zone abbreviations and their UTC offsets in hours. Only names with one
# meaning in practice: "IST" (India, Ireland, Israel) and "CST" outside
# RFC 822 are ambiguous, so they are left out (and such a date is not trusted);
# RFC 822's own US zones keep their RFC meanings.
ZONE_OFFSETS: dict[str, float] = {
    "UT": 0,
    "UTC": 0,
    "GMT": 0,
    "Z": 0,
    "WET": 0,
    "WEST": 1,
    "BST": 1,
    "CET": 1,
    "CEST": 2,
    "MET": 1,
    "MEST": 2,
    "EET": 2,
    "EEST": 3,
    "MSK": 3,
    "KST": 9,
    "JST": 9,
    "HKT": 8,
    "SGT": 8,
    "PHT": 8,
    "AWST": 8,
    "ACST": 9.5,
    "AEST": 10,
    "AEDT": 11,
    "NZST": 12,
    "NZDT": 13,
    "HST": -10,
    "AKST": -9,
    "AKDT": -8,
    "PST": -8,
    "PDT": -7,
    "MST": -7,
    "MDT": -6,
    "CST": -6,
    "CDT": -5,
    "EST": -5,
    "EDT": -4,
    "AST": -4,
    "ADT": -3,
    "NST": -3.5,
    "NDT": -2.5,
}
# How far ahead of "now" a date printed without a year may fall.
YEARLESS_LEEWAY = timedelta(days=2)
# Dates outside [EARLIEST, now + LATEST_AHEAD] are typos or placeholders
# ("1900-01-01", "2099-12-31"), not publication dates.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AHEAD = timedelta(days=366)
# A zone we could not read: the date is not trusted (None), never guessed.
_UNKNOWN_ZONE = object()
# Plausible offsets run from -12:00 to +14:00.
_MAX_OFFSET = timedelta(hours=14)
_NUMERIC_ZONE = re.compile(r"^(?:UTC|GMT|UT)?\s*([+-])\s*(\d{1,2}):?(\d{2})?$", re.I)
_ISO_LIKE = re.compile(r"^\d{4}-?\d{2}-?\d{2}[T ]\d{2}")
_ISO_ZONE_SUFFIX = re.compile(r"\s*\(?([A-Za-z]{1,5})\)?$")


def zone_of(token: str | None) -> tzinfo | object | None:
    """The tzinfo a zone token names; None when there is no token; ``_UNKNOWN_ZONE``
    when there is one we cannot read (an unknown or ambiguous name, a bad offset)."""
    if not token:
        return None
    token = token.strip()
    name = token.upper()
    if name in ZONE_OFFSETS:
        return timezone(timedelta(hours=ZONE_OFFSETS[name]))
    numeric = _NUMERIC_ZONE.match(token)
    if numeric is None:
        return _UNKNOWN_ZONE
    sign, hours, minutes = numeric.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
    if int(minutes or 0) >= 60 or offset > _MAX_OFFSET:
        return _UNKNOWN_ZONE
    return timezone(-offset if sign == "-" else offset)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _to_utc(value: datetime, tz: str, zone: tzinfo | None = None) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone or _zone(tz))
    return value.astimezone(UTC)


def _hour24(hour: int, ampm: str | None) -> int:
    if not ampm:
        return hour
    if hour > 12:
        raise ValueError(f"{hour} {ampm} is not a time")
    pm = ampm.lower().replace(".", "") in ("pm", "오후")
    if hour == 12:
        return 12 if pm else 0
    return hour + 12 if pm else hour


def _year(text: str) -> int:
    """A four-digit year, or a two-digit one read as RFC 2822 says (00-49: 20xx)."""
    year = int(text)
    if len(text) == 2:
        year += 2000 if year < 50 else 1900
    return year


def _clock(parts: dict[str, str | None]) -> tuple[int, int, int]:
    ampm = parts.get("ampm1") or parts.get("ampm2")
    for hour, minute, second in (
        ("hour", "minute", "second"),
        ("khour", "kminute", "ksecond"),
        ("ehour", "", ""),
    ):
        if parts.get(hour):
            return (
                _hour24(int(parts[hour] or 0), ampm),
                int(parts.get(minute) or 0),
                int(parts.get(second) or 0),
            )
    return 0, 0, 0


def _from_match(match: re.Match[str], tz: str, now: datetime) -> datetime | None:
    parts = match.groupdict()
    rest = match.string[match.end() :]
    has_time = any(parts.get(name) for name in ("hour", "khour", "ehour"))
    if not has_time and _UNREAD_TIME.match(rest):
        return None  # a time we cannot read: the date alone would be the wrong instant
    token = parts.get("zone")
    if token and token.isalpha() and not token.isupper():
        token = None  # a lowercase word after the time ("by"), not a zone
    zone = zone_of(token)
    if zone is _UNKNOWN_ZONE:
        return None  # "15:00 IST": which of three zones? Not guessed.
    explicit = zone if isinstance(zone, tzinfo) else None
    mon = parts.get("mon")
    try:
        month = _MONTHS[mon.lower().rstrip(".")] if mon else int(parts["month"] or 0)
        day = int(parts["day"] or 0)
        hour, minute, second = _clock(parts)
        if parts.get("year"):
            local = datetime(_year(parts["year"] or ""), month, day, hour, minute, second)
            return _to_utc(local, tz, explicit)
        # No year: the most recent such date at most two days ahead of now
        # (a listing in Seoul may be a day ahead of a server elsewhere).
        limit = now + YEARLESS_LEEWAY
        year = now.astimezone(explicit or _zone(tz)).year + 1
        for candidate_year in (year, year - 1, year - 2, year - 3, year - 4):
            try:
                local = datetime(candidate_year, month, day, hour, minute, second)
            except ValueError:  # 29 February in a common year
                continue
            result = _to_utc(local, tz, explicit)
            if result <= limit:
                return result
        return None
    except (ValueError, KeyError, OverflowError):
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


def _iso(text: str, tz: str) -> datetime | None:
    """ISO 8601 / RFC 3339, also with a zone name after it ("2025-11-27T15:00 KST")."""
    zone: tzinfo | None = None
    suffix = _ISO_ZONE_SUFFIX.search(text)
    if suffix and not text.endswith(("Z", "z")):
        found = zone_of(suffix.group(1).upper())
        if not isinstance(found, tzinfo):
            return None
        zone = found
        text = text[: suffix.start()]
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if zone is not None and value.tzinfo is not None:
        return None  # two zones: "+09:00 EST" contradicts itself
    return _to_utc(value, tz, zone)


def _parse(text: str, tz: str, fmt: str | None, now: datetime) -> datetime | None:
    if fmt:
        try:
            return _to_utc(datetime.strptime(text, fmt), tz)
        except ValueError:
            pass
    if _ISO_LIKE.match(text):
        return _iso(text, tz)
    for whole in (_RFC822, _ASCTIME):
        match = whole.match(text)
        if match:
            return _from_match(match, tz, now)
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            return _from_match(match, tz, now)
    return None
