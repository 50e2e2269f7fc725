"""A new install's first week: fetch, then preview, compose and send the first issue.

Walks the admin's path through the ``aggregator`` entry point (``run_cli``),
against real feeds on 127.0.0.1, a real SQLite store and a real SMTP server.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aggregator.config import load_config
from aggregator.digest import next_slot
from aggregator.models import utcnow
from aggregator.store import Store
from tests.support.cli import run_cli
from tests.support.http import FixtureServer
from tests.support.items import make_item
from tests.support.smtp import SmtpFixture

LINK = re.compile(r"https?://[^\s\"'<>)\]]+/(?:story|article)/[^\s\"'<>)\]]+")


def rss(host: str, count: int) -> str:
    """``count`` stories with their own links, published over the last days."""
    now = utcnow()
    entries = "".join(
        f"<item><title>{host} story {n}</title><link>https://{host}/story/{n}</link>"
        f"<guid>{host}-{n}</guid><description>Text of story {n}.</description>"
        f"<pubDate>{format_datetime(now - timedelta(hours=7 * n + 1))}</pubDate></item>"
        for n in range(count)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{host}</title><link>https://{host}/</link>{entries}</channel></rss>"
    )


@dataclass
class Install:
    config: Path
    zone: ZoneInfo
    period: timedelta

    def cli(self, *args: str) -> tuple[int, str]:
        result = run_cli("--config", str(self.config), *args)
        assert "Traceback" not in result.output, result.output
        return result.exit_code, result.output


@pytest.fixture(
    params=[("Asia/Seoul", "7d"), ("America/Los_Angeles", "7d"), ("UTC", "3d")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def install(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    http_server: FixtureServer,
    smtp_server: SmtpFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Install]:
    """feeds.yaml + first fetch + one subscriber; an older story stored before it."""
    zone, period = request.param
    for host, count in (("one.example.org", 4), ("two.example.org", 3), ("three.example.org", 1)):
        http_server.add(f"/{host}.xml", rss(host, count))
    sources = "".join(
        f"  - {{id: {host.split('.')[0]}, url: '{http_server.url(f'/{host}.xml')}'}}\n"
        for host in ("one.example.org", "two.example.org", "three.example.org")
    )
    config = tmp_path / "feeds.yaml"
    config.write_text(
        f"site: {{title: First Week, url: 'https://digest.example.org/', timezone: {zone},"
        " sender_email: digest@example.org, postal_address: 'Busan'}\n"
        "storage: {url: 'sqlite:///first.db'}\n"
        f"digest: {{schedule: 'mon 09:00', period: {period}}}\n"
        f"smtp: {{host: {smtp_server.host}, port: {smtp_server.port}}}\n"
        "sources:\n" + sources,
        encoding="utf-8",
    )
    monkeypatch.setenv("AGGREGATOR_SECRET", "f" * 32)
    monkeypatch.chdir(tmp_path)
    setup = Install(config, ZoneInfo(zone), load_config(config).digest.period)
    fetched = setup.cli("fetch")
    assert fetched[0] == 0, fetched[1]
    # A story stored longer ago than digest.period: never in the first issue.
    store = Store.open(load_config(config).database_url)
    try:
        old = utcnow() - setup.period - timedelta(days=1)
        store.save_items(
            "one",
            [make_item("one", 99, title="Old news", published=old)],
            fetched_at=old,
            next_fetch_at=utcnow() + timedelta(hours=1),
        )
        store.add_subscriber("reader@example.org", active=True, now=utcnow())
    finally:
        store.close()
    yield setup


def preview_links(install: Install, out: Path) -> set[str]:
    code, output = install.cli("digest", "preview", "--out", str(out))
    assert code == 0, output
    links = set(LINK.findall((out / "digest.txt").read_text(encoding="utf-8")))
    assert f"{len(links)} items" in output
    return links


def issue_links(install: Install, number: int) -> set[str]:
    store = Store.open(load_config(install.config).database_url)
    try:
        digest = store.get_digest(number)
        assert digest is not None
        return {item.url for section in digest.sections for item in section.items}
    finally:
        store.close()


def mailed_links(smtp_server: SmtpFixture) -> set[str]:
    (received,) = smtp_server.wait_for(1)
    message = email.message_from_bytes(bytes(received.message), policy=email.policy.default)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return set(LINK.findall(body.get_content()))


def test_send_before_the_first_issue_says_when_it_goes_out(
    install: Install, smtp_server: SmtpFixture
) -> None:
    code, output = install.cli("digest", "send")

    assert code == 0, output
    slot = next_slot(load_config(install.config).digest, load_config(install.config).site, utcnow())
    expected = (
        f"no issue yet; next scheduled {slot:%a %Y-%m-%d %H:%M %Z}; "
        "`aggregator digest send --now` sends the first one today"
    )
    assert expected in " ".join(output.split())
    assert slot.utcoffset() == slot.astimezone(install.zone).utcoffset()
    assert smtp_server.messages == []
    assert "no digest composed yet" in install.cli("digest", "list")[1]


def test_first_compose_holds_what_preview_shows_and_send_mails_it(
    install: Install, smtp_server: SmtpFixture, tmp_path: Path
) -> None:
    previewed = preview_links(install, tmp_path / "preview")
    assert len(previewed) == 8  # every fetched story, not the old one
    assert not any("/article/99" in link for link in previewed)

    code, output = install.cli("digest", "compose")
    assert code == 0, output
    assert "digest #1:" in output and "(8 items)" in output
    assert issue_links(install, 1) == previewed

    code, output = install.cli("digest", "send")
    assert code == 0, output
    assert mailed_links(smtp_server) == previewed

    # Sent once: another send, with or without --now, mails nobody again.
    for args in (("digest", "send"), ("digest", "send", "--now")):
        code, output = install.cli(*args)
        assert code == 0, output
    assert len(smtp_server.messages) == 1


def test_send_now_composes_and_sends_the_first_issue_preview_showed(
    install: Install, smtp_server: SmtpFixture, tmp_path: Path
) -> None:
    previewed = preview_links(install, tmp_path / "preview")

    code, output = install.cli("digest", "send", "--now")

    assert code == 0, output
    assert "digest #1: sent 1 now" in output
    assert issue_links(install, 1) == previewed
    assert mailed_links(smtp_server) == previewed


def test_items_shows_dates_in_the_site_time_zone(install: Install) -> None:
    store = Store.open(load_config(install.config).database_url)
    try:
        newest = max(
            store.items_published_since(utcnow() - timedelta(days=30)),
            key=lambda item: item.published_at,
        )
    finally:
        store.close()
    local = newest.published_at.astimezone(install.zone)

    code, output = install.cli("items", "--since", "30d")

    assert code == 0, output
    assert f"{local:%Y-%m-%d %H:%M}" in output
    assert f"times in {install.zone.key}" in output
    if local.utcoffset():
        assert f"{newest.published_at:%Y-%m-%d %H:%M}" not in output
