"""The digest's schedule slots against a brute-force oracle, in several zones.

``latest_slot`` and ``next_slot`` do weekday arithmetic; the oracle here does
none: it lists the scheduled wall-clock time of each of the days around
``now`` and picks the latest at or before (the first after) ``now``. Inputs are
generated per class: every weekday, times on and around the slot, zones east
and west of UTC and one with daylight saving, and a machine whose own zone is
neither UTC nor the site's.
"""

from __future__ import annotations

import os
import time as time_module
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from aggregator.config import parse_config
from aggregator.digest import first_issue_hint, latest_slot, next_slot
from aggregator.models import DigestSettings, Site

ZONES = ["Asia/Seoul", "America/Los_Angeles", "Europe/Berlin", "UTC"]
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SCHEDULES = [(d, t) for d in DAYS for t in ("09:00", "00:00", "23:59", "18:30")]


@pytest.fixture(autouse=True)
def machine_in_new_york() -> Iterator[None]:
    """The machine's own zone is another one again: the site's zone must be used."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time_module.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time_module.tzset()


def candidates(day: str, at: str, zone: ZoneInfo, around: date) -> list[datetime]:
    """The scheduled moment of each day from 9 days before to 9 days after ``around``."""
    hour, minute = (int(p) for p in at.split(":"))
    out = []
    for offset in range(-9, 10):
        d = around + timedelta(days=offset)
        if d.strftime("%a").lower() == day:
            out.append(datetime.combine(d, time(hour, minute), tzinfo=zone))
    return out


def nows(zone: ZoneInfo, day: str, at: str) -> list[datetime]:
    """Moments on a slot, a second either side, and elsewhere in the week, as UTC."""
    base = datetime(2026, 3, 2, tzinfo=UTC)  # spans the US and EU daylight-saving changes
    found = []
    for week in (0, 1, 3, 4):
        for slot in candidates(day, at, zone, (base + timedelta(weeks=week)).date()):
            for delta in (timedelta(0), timedelta(seconds=-1), timedelta(seconds=1)):
                found.append((slot + delta).astimezone(UTC))
        found.append(base + timedelta(weeks=week, hours=37, minutes=11))
    return found


@pytest.mark.parametrize("zone_name", ZONES)
def test_latest_and_next_slot_match_the_oracle(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    site = Site(title="T", url="https://x.example/", timezone=zone_name)
    for day, at in SCHEDULES:
        settings = DigestSettings(schedule_day=day, schedule_time=at)
        for now in nows(zone, day, at):
            options = candidates(day, at, zone, now.astimezone(zone).date())
            expected_latest = max(c for c in options if c <= now)
            expected_next = min(c for c in options if c > now)
            latest = latest_slot(settings, site, now)
            assert latest == expected_latest, (zone_name, day, at, now)
            assert latest.utcoffset() == timedelta(0)  # returned in now's zone (UTC)
            following = next_slot(settings, site, now)
            assert following == expected_next, (zone_name, day, at, now)
            assert following.tzinfo == zone  # in the site's zone, for display


def test_a_full_day_name_and_any_case_are_read_by_their_first_three_letters() -> None:
    site = Site(title="T", url="https://x.example/", timezone="Asia/Seoul")
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)  # Monday 21:00 in Seoul
    for spelled in ("Thursday", "THU", "thurs"):
        settings = DigestSettings(schedule_day=spelled, schedule_time="18:05")
        assert latest_slot(settings, site, now) == datetime(2026, 11, 26, 9, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone_name", "now", "expected"),
    [
        ("Asia/Seoul", datetime(2026, 11, 30, 12, tzinfo=UTC), "Mon 2026-12-07 09:00 KST"),
        ("Asia/Seoul", datetime(2026, 11, 29, 23, 59, tzinfo=UTC), "Mon 2026-11-30 09:00 KST"),
        ("Europe/Berlin", datetime(2026, 3, 23, 8, 30, tzinfo=UTC), "Mon 2026-03-30 09:00 CEST"),
    ],
)
def test_before_the_first_issue_the_hint_names_the_next_slot_in_the_site_zone(
    zone_name: str, now: datetime, expected: str
) -> None:
    config = parse_config(
        "site: {title: T, url: 'https://x.example/', timezone: " + zone_name + "}\n"
        "sources: [{id: a, url: 'https://a.example/feed'}]\n"
        "digest: {schedule: 'mon 09:00'}\n"
    )
    assert first_issue_hint(config, now=now) == (
        f"no issue yet; next scheduled {expected}; "
        "`aggregator digest send --now` sends the first one today"
    )
