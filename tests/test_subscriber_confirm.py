"""``subscribers add`` and ``subscribers confirm-mail`` mail the web form's double opt-in link."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregator.models import SubscriberStatus
from aggregator.store import Store
from tests.support.cli import CliResult, run_cli
from tests.test_subscribe_web import SECRET, Web, confirm, web  # noqa: F401  (the web fixture)

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture


def feeds_yaml(tmp_path: Path, site_url: str, db_url: str, smtp_port: int) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(
        f"site: {{title: Korean Film Digest, url: '{site_url}', sender_email: d@example.org}}\n"
        f"storage: {{url: '{db_url}'}}\n"
        f"smtp: {{host: 127.0.0.1, port: {smtp_port}, max_attempts: 1}}\n"
        "sources: []\n",
        encoding="utf-8",
    )
    return path


def cli(config: Path, *args: str) -> CliResult:
    result = run_cli("-c", str(config), *args)
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def config(
    web: Web,  # noqa: F811
    store: Store,
    smtp_server: SmtpFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """feeds.yaml for the same database, SMTP server and site URL as the running web app."""
    monkeypatch.setenv("AGGREGATOR_SECRET", SECRET)
    db_url = store.engine.url.render_as_string(hide_password=False)
    return feeds_yaml(tmp_path, web.url, db_url, smtp_server.port)


def test_add_without_active_mails_a_link_the_web_app_accepts(
    config: Path,
    web: Web,  # noqa: F811
    store: Store,
    smtp_server: SmtpFixture,
) -> None:
    result = cli(config, "subscribers", "add", "Pending.Reader@example.org", "--name", "박찬욱")
    assert result.exit_code == 0, result.output
    assert "sent the confirmation link to Pending.Reader@example.org" in result.output
    mail = smtp_server.to("Pending.Reader@example.org")[0].message
    assert mail["Subject"] == "Confirm your subscription to Korean Film Digest"
    assert "박찬욱" in mail["To"] or "Pending.Reader@example.org" in mail["To"]

    url = web.confirm_url(smtp_server, "Pending.Reader@example.org")
    assert confirm(web.client, url).status_code == 200
    subscriber = store.subscriber_by_email("pending.reader@example.org")
    assert subscriber is not None and subscriber.status is SubscriberStatus.ACTIVE


def test_active_and_no_mail_send_nothing(config: Path, smtp_server: SmtpFixture) -> None:
    assert cli(config, "subscribers", "add", "a@example.org", "--active").exit_code == 0
    assert cli(config, "subscribers", "add", "b@example.org", "--no-mail").exit_code == 0
    assert smtp_server.messages == []


def test_confirm_mail_resends_to_pending_only(
    config: Path,
    web: Web,  # noqa: F811
    store: Store,
    smtp_server: SmtpFixture,
) -> None:
    for email in ("p1@example.org", "p2@example.org", "gone@example.org"):
        assert cli(config, "subscribers", "add", email, "--no-mail").exit_code == 0
    assert cli(config, "subscribers", "add", "on@example.org", "--active").exit_code == 0
    assert cli(config, "subscribers", "remove", "gone@example.org").exit_code == 0

    one = cli(config, "subscribers", "confirm-mail", "P1@example.org", "on@example.org")
    assert one.exit_code == 0, one.output
    assert [m.recipients for m in smtp_server.messages] == [("p1@example.org",)]
    assert "already active" in one.output

    refused = cli(config, "subscribers", "confirm-mail", "gone@example.org")
    assert "they unsubscribed" in " ".join(refused.output.split())
    assert len(smtp_server.messages) == 1

    every = cli(config, "subscribers", "confirm-mail", "--all-pending")
    assert every.exit_code == 0, every.output
    assert sorted(r for m in smtp_server.messages[1:] for r in m.recipients) == [
        "p1@example.org",
        "p2@example.org",
    ]
    confirm(web.client, web.confirm_url(smtp_server, "p2@example.org"))
    confirmed = store.subscriber_by_email("p2@example.org")
    assert confirmed is not None and confirmed.status is SubscriberStatus.ACTIVE

    unknown = cli(config, "subscribers", "confirm-mail", "nobody@example.org")
    assert unknown.exit_code != 0 and "not a subscriber" in unknown.output
    assert cli(config, "subscribers", "confirm-mail").exit_code == 2


def test_a_dead_smtp_server_keeps_the_subscriber_and_says_how_to_resend(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.http import unused_port

    monkeypatch.setenv("AGGREGATOR_SECRET", SECRET)
    config = feeds_yaml(tmp_path, "https://t.example/", sqlite_url, unused_port())
    result = cli(config, "subscribers", "add", "later@example.org")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "not sent to later@example.org" in text
    assert "aggregator subscribers confirm-mail later@example.org" in text
    store = Store.open(sqlite_url)
    try:
        kept = store.subscriber_by_email("later@example.org")
    finally:
        store.close()
    assert kept is not None and kept.status is SubscriberStatus.PENDING


def test_without_the_secret_add_refuses_before_adding(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGGREGATOR_SECRET", raising=False)
    config = feeds_yaml(tmp_path, "https://t.example/", sqlite_url, 25)
    result = cli(config, "subscribers", "add", "x@example.org")
    assert result.exit_code == 2
    assert "--no-mail" in " ".join(result.output.split())
    store = Store.open(sqlite_url)
    try:
        assert store.list_subscribers() == []
    finally:
        store.close()
