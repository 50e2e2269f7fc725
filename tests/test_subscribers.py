"""Subscribers in the store, CSV import/export, tokens, the subscribers and digest send CLI."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregator.errors import SubscriberError, TokenError
from aggregator.models import DeliveryStatus, SubscriberStatus
from aggregator.store import Store
from aggregator.subscribers import export_text, import_csv, normalize_email
from aggregator.tokens import Tokens
from tests.support.cli import run_cli
from tests.test_deliver import make_digest

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture


NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------- validation


def test_addresses_are_validated_and_normalized_without_dns() -> None:
    assert normalize_email("  Reader@Example.ORG ") == "Reader@example.org"
    assert normalize_email("kim@한국.kr") == "kim@xn--3e0b707e.kr"
    for bad in ("", "no-at-sign", "a@b", "two@@example.org", "김@example.org"):
        with pytest.raises(SubscriberError):
            normalize_email(bad)


# ------------------------------------------------------------------------------ store


def test_unsubscribed_address_is_never_reactivated_by_add_or_import(store: Store) -> None:
    subscriber, created = store.add_subscriber("reader@example.org", now=NOW, active=True)
    assert created and subscriber.status is SubscriberStatus.ACTIVE
    store.unsubscribe_subscriber(subscriber.id, subscriber.email, now=NOW)

    again, created = store.add_subscriber("reader@example.org", now=NOW, active=True)
    assert not created and again.status is SubscriberStatus.UNSUBSCRIBED
    report = import_csv(store, io.StringIO("reader@example.org\n"), now=NOW, active=True)
    assert (report.added, report.already_known) == (0, 1)
    row = store.subscriber_by_email("reader@example.org")
    assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED

    # Only confirming (the signed link) brings them back.
    back = store.confirm_subscriber(subscriber.id, subscriber.email, now=NOW)
    assert back.status is SubscriberStatus.ACTIVE and back.unsubscribed_at is None


def test_active_flag_activates_pending_but_confirm_needs_matching_email(store: Store) -> None:
    pending, _ = store.add_subscriber("p@example.org", now=NOW)
    assert pending.status is SubscriberStatus.PENDING
    active, _ = store.add_subscriber("p@example.org", now=NOW, active=True)
    assert active.status is SubscriberStatus.ACTIVE
    other, _ = store.add_subscriber("other@example.org", now=NOW)
    with pytest.raises(SubscriberError):
        store.confirm_subscriber(other.id, "p@example.org", now=NOW)
    with pytest.raises(SubscriberError):
        store.unsubscribe_subscriber(other.id, "p@example.org", now=NOW)


def test_forget_removes_the_address_and_its_ledger(store: Store) -> None:
    subscriber, _ = store.add_subscriber("erase@example.org", now=NOW, active=True)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=NOW)
    assert store.forget_subscriber("erase@example.org")
    assert store.get_subscriber(subscriber.id) is None
    assert store.deliveries(digest.id) == []
    assert not store.forget_subscriber("erase@example.org")


# -------------------------------------------------------------------------------- CSV


def test_import_reports_bad_rows_by_line_and_keeps_going(store: Store) -> None:
    text = (
        "email,name,status\n"
        "kim@example.org,김지운,\n"
        "not-an-address,Nobody,\n"
        "\n"
        'LEE@example.org,"Lee, Chang-dong",active\n'
        "kim@example.org,duplicate in file,\n"
        "gone@example.org,,unsubscribed\n"
        "odd@example.org,,zombie\n"
    )
    report = import_csv(store, io.StringIO(text), now=NOW)
    assert [line for line, _ in report.errors] == [3, 8]
    assert "not-an-address" in report.errors[0][1]
    assert report.added == 3
    by_email = {s.email: s for s in store.list_subscribers()}
    assert by_email["kim@example.org"].status is SubscriberStatus.PENDING
    assert by_email["LEE@example.org"].name == "Lee, Chang-dong"
    assert by_email["gone@example.org"].status is SubscriberStatus.UNSUBSCRIBED


def test_headerless_import_and_export_round_trip_keeps_suppression(
    store: Store, tmp_path: Path
) -> None:
    import_csv(store, io.StringIO("a@example.org,A\nb@example.org\n"), now=NOW, active=True)
    b = store.subscriber_by_email("b@example.org")
    assert b is not None
    store.unsubscribe_subscriber(b.id, b.email, now=NOW)

    exported = export_text(store.list_subscribers())
    assert exported.splitlines()[0] == "email,name,status,created_at,confirmed_at,unsubscribed_at"
    fresh = Store.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        import_csv(fresh, io.StringIO(exported), now=NOW, active=True)
        statuses = {s.email: s.status for s in fresh.list_subscribers()}
    finally:
        fresh.close()
    assert statuses == {
        "a@example.org": SubscriberStatus.ACTIVE,
        "b@example.org": SubscriberStatus.UNSUBSCRIBED,
    }


# ----------------------------------------------------------------------------- tokens


def test_tokens_are_bound_to_purpose_subscriber_and_secret() -> None:
    tokens = Tokens("a-secret-that-is-long-enough")
    unsubscribe = tokens.unsubscribe_token(7, "a@example.org")
    confirm = tokens.confirm_token(7, "a@example.org")
    assert tokens.read_unsubscribe(unsubscribe).subscriber_id == 7
    assert tokens.read_confirm(confirm).email == "a@example.org"
    assert unsubscribe == tokens.unsubscribe_token(7, "a@example.org")  # stable across sends
    with pytest.raises(TokenError):
        tokens.read_confirm(unsubscribe)
    with pytest.raises(TokenError):
        tokens.read_unsubscribe(confirm)
    with pytest.raises(TokenError):
        Tokens("another-secret-entirely").read_unsubscribe(unsubscribe)
    signature = unsubscribe.split(".")[1]
    forged = Tokens("x" * 20).unsubscribe_token(8, "a@example.org").split(".")[0]
    with pytest.raises(TokenError):
        tokens.read_unsubscribe(f"{forged}.{signature}")


# -------------------------------------------------------------------------------- CLI


def _config_file(tmp_path: Path, url: str, smtp_port: int) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "site:\n"
        "  title: Korean Film Digest\n"
        "  url: https://digest.example.org/\n"
        "  sender_email: digest@example.org\n"
        f"storage:\n  url: {url}\n"
        f"smtp: {{host: 127.0.0.1, port: {smtp_port}, max_attempts: 2}}\n"
        "sources: []\n",
        encoding="utf-8",
    )
    return path


def test_newcomer_adds_two_subscribers_and_sends_once_each(
    sqlite_url: str, tmp_path: Path, smtp_server: SmtpFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGGREGATOR_SECRET", "cli-test-secret-0123456789")
    config = _config_file(tmp_path, sqlite_url, smtp_server.port)

    def run(*args: str) -> str:
        result = run_cli("--config", str(config), *args)
        assert result.exit_code == 0, result.output
        return result.output

    run("subscribers", "add", "kim@example.org", "--name", "김지운", "--active")
    run("subscribers", "add", "lee@example.org", "--active")
    run("subscribers", "add", "pending@example.org")
    # The pending one got the double opt-in link, nobody else.
    assert [m.recipients for m in smtp_server.messages] == [("pending@example.org",)]
    assert "lee@example.org" in run("subscribers", "list", "--status", "active")
    store = Store.open(sqlite_url)
    try:
        digest = make_digest(store)
    finally:
        store.close()

    run("digest", "send", "--test", "editor@example.org")
    assert [m.recipients for m in smtp_server.messages[1:]] == [("editor@example.org",)]
    out = run("digest", "send")
    assert f"digest #{digest.id}: sent 2" in out
    run("digest", "send")
    recipients = sorted(r for m in smtp_server.messages[2:] for r in m.recipients)
    assert recipients == ["kim@example.org", "lee@example.org"]

    run("subscribers", "remove", "kim@example.org")
    exported = run("subscribers", "export")
    assert "kim@example.org,김지운,unsubscribed" in exported


def test_cli_import_names_bad_lines(
    sqlite_url: str, tmp_path: Path, smtp_server: SmtpFixture
) -> None:
    config = _config_file(tmp_path, sqlite_url, smtp_server.port)
    people = tmp_path / "people.csv"
    people.write_text("good@example.org\nbad-address\nalso@example.org\n", encoding="utf-8")
    result = run_cli("--config", str(config), "subscribers", "import", str(people))
    assert result.exit_code == 1
    assert f"{people}:2" in result.output.replace("\n", "")
    assert "imported 2 new" in result.output
    store = Store.open(sqlite_url)
    try:
        assert {s.email for s in store.list_subscribers()} == {
            "good@example.org",
            "also@example.org",
        }
        assert store.delivery_counts(1) == dict.fromkeys(DeliveryStatus, 0)
    finally:
        store.close()
