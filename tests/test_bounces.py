"""Bounces and complaints through a real dovecot mailbox, real DSN samples, real SMTP.

The samples in tests/fixtures/bounces are bounce messages from Postfix, Exim,
qmail, Google Mail, Exchange/Outlook, Yahoo and AOL (flufl.bounce's own test
data) and ARF feedback reports; they are APPENDed to the mailbox over IMAP as
a mail server would deliver them, then read by ``process_mailbox``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.config import parse_config
from aggregator.deliver import deliver_digest
from aggregator.errors import BounceError, SubscriberError
from aggregator.mail.bounces import (
    MAX_REPORT_BYTES,
    MalformedReport,
    process_mailbox,
    read_report,
)
from aggregator.mail.imap import PROCESSED_KEYWORD
from aggregator.mail.verp import read_verp_address, verp_address
from aggregator.models import (
    BounceKind,
    BounceSettings,
    DeliveryStatus,
    ReturnPath,
    SmtpSettings,
    SubscriberStatus,
)
from aggregator.store import Store
from tests.support.cli import run_cli
from tests.test_deliver import SECRET, SITE, make_digest

if TYPE_CHECKING:
    from tests.support.imap import ImapFixture
    from tests.support.smtp import SmtpFixture

SAMPLES = Path(__file__).parent / "fixtures" / "bounces"
# The failed recipients each real sample reports, and whether permanently.
HARD = {
    "postfix_01.eml": ["xxxxx@local.ie"],
    "exim_01.eml": ["userx@its.example.nl"],
    "qmail_03.eml": ["userx@example.jp"],
    "simple_17.eml": ["userx@example.com"],  # Google Mail
    "microsoft_02.eml": ["userx@example.com"],  # Exchange: the same address again
    "yahoo_04.eml": ["userx@example.es", "usery@example.uk"],
    "aol_01.eml": ["screenname@aol.com"],
}
SOFT = {"dsn_17.eml": ["userx@example.fi"], "dsn_07.eml": ["userx@example.nz"]}
COMPLAINTS = {
    "arf_01.eml": ["complainer@example.net"],
    "arf_02.eml": ["second.complainer@example.net"],
}
CONTROL = "reader@example.org"  # gets every issue and never bounces


def _everyone() -> list[str]:
    named = [a for group in (HARD, SOFT, COMPLAINTS) for addrs in group.values() for a in addrs]
    return [*sorted(set(named)), CONTROL]


def bounce_settings(imap_server: ImapFixture, **changes: object) -> BounceSettings:
    values: dict[str, object] = {"address": "bounces@example.org", "imap": imap_server.settings()}
    values.update(changes)
    return BounceSettings(**values)  # type: ignore[arg-type]


def send_issue(store: Store, smtp: SmtpSettings, *, week: int = 0) -> tuple[int, list[str]]:
    """Compose and send one issue; returns its id and who received it."""
    digest = make_digest(
        store,
        subject=f"Issue {week}",
        end=datetime(2026, 11, 23, tzinfo=UTC) + timedelta(days=7 * week),
    )
    asyncio.run(deliver_digest(store, digest, site=SITE, smtp=smtp, secret=SECRET))
    assert digest.id is not None
    sent = [
        _email(store, d.subscriber_id)
        for d in store.deliveries(digest.id)
        if d.status is DeliveryStatus.SENT
    ]
    return digest.id, sorted(sent)


def _url(store: Store) -> str:
    """The test database's URL, for a feeds.yaml the CLI reads."""
    return store.engine.url.render_as_string(hide_password=False)


def _email(store: Store, subscriber_id: int) -> str:
    found = store.get_subscriber(subscriber_id)
    assert found is not None
    return found.email


def subscribe_all(store: Store, emails: list[str]) -> None:
    store.add_subscribers(
        [(e, None) for e in emails], now=datetime.now(UTC), status=SubscriberStatus.ACTIVE
    )


def status_of(store: Store, email: str) -> SubscriberStatus:
    found = store.subscriber_by_email(email)
    assert found is not None, email
    return found.status


def test_sample_mailbox_marks_subscribers_and_second_pass_changes_nothing(
    store: Store, smtp_server: SmtpFixture, imap_server: ImapFixture
) -> None:
    subscribe_all(store, _everyone())
    send_issue(store, smtp_server.settings())
    names = sorted(p.name for p in SAMPLES.glob("*.eml"))
    imap_server.append(*(SAMPLES.joinpath(n).read_bytes() for n in names))
    settings = bounce_settings(imap_server)

    summary = process_mailbox(store, settings, secret=SECRET, environ=imap_server.environ)

    assert summary.messages == len(names) == 11
    assert summary.hard == 8 and summary.soft == 2 and summary.complaints == 2
    assert summary.skipped == 0
    assert summary.bounced == 7  # Google and Exchange bounced the same address
    for addrs in HARD.values():
        for a in addrs:
            assert status_of(store, a) is SubscriberStatus.BOUNCED, a
            assert store.is_suppressed(a)
    for addrs in SOFT.values():
        for a in addrs:
            assert status_of(store, a) is SubscriberStatus.ACTIVE, a  # one soft bounce: counted
            assert not store.is_suppressed(a)
    for addrs in COMPLAINTS.values():
        for a in addrs:
            assert status_of(store, a) is SubscriberStatus.UNSUBSCRIBED, a
            assert store.is_suppressed(a)
    assert status_of(store, CONTROL) is SubscriberStatus.ACTIVE
    counts = store.bounce_counts()
    assert counts == {BounceKind.HARD: 8, BounceKind.SOFT: 2, BounceKind.COMPLAINT: 2}
    flags = imap_server.flags()
    assert len(flags) == 11
    assert all({"\\Seen", PROCESSED_KEYWORD} <= f for f in flags.values())

    # Processed again: nothing is unread, nothing is counted.
    again = process_mailbox(store, settings, secret=SECRET, environ=imap_server.environ)
    assert again.messages == 0
    # The same reports delivered twice (new UIDs, same reports): recorded once.
    imap_server.append(*(SAMPLES.joinpath(n).read_bytes() for n in names))
    third = process_mailbox(store, settings, secret=SECRET, environ=imap_server.environ)
    assert third.messages == 11 and third.duplicates == 12
    assert store.bounce_counts() == counts

    # The next issue goes to the soft-bounced and the control address only.
    _, received = send_issue(store, smtp_server.settings(), week=1)
    assert received == sorted([*SOFT["dsn_17.eml"], *SOFT["dsn_07.eml"], CONTROL])


def test_hostile_messages_are_skipped_with_a_log_line(
    store: Store,
    smtp_server: SmtpFixture,
    imap_server: ImapFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    subscribe_all(store, ["kim@example.org", "never.mailed@example.org"])
    send_issue(store, smtp_server.settings())
    store.add_subscriber("late@example.org", now=datetime.now(UTC), active=True)
    forged = _dsn("late@example.org", "5.1.1", original=b"Subject: hi\r\n\r\nbody\r\n")
    unknown = _dsn("stranger@example.net", "5.1.1", original=b"Subject: hi\r\n\r\nbody\r\n")
    huge = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + b"x" * (MAX_REPORT_BYTES + 10)
    bad_mime = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="\r\n'
        b"Subject: \xff\xfe broken\r\n\r\n--\r\n\x00\x01 garbage"
    )
    bad_verp = _dsn(
        "kim@example.org",
        "5.1.1",
        original=b"Subject: x\r\n\r\nb\r\n",
        to="bounces+1.1.aaaaaaaaaaaaaaaa@example.org",
    )
    auto_reply = b"From: kim@example.org\r\nSubject: Out of office\r\n\r\nBack on Monday.\r\n"
    imap_server.append(forged, unknown, huge, bad_mime, bad_verp, auto_reply)

    with caplog.at_level(logging.INFO, logger="aggregator.mail.bounces"):
        summary = process_mailbox(
            store, bounce_settings(imap_server), secret=SECRET, environ=imap_server.environ
        )

    assert summary.messages == 6
    assert summary.hard == 0 and summary.complaints == 0
    assert summary.skipped == 6
    for email in ("kim@example.org", "late@example.org", "never.mailed@example.org"):
        assert status_of(store, email) is SubscriberStatus.ACTIVE
    text = caplog.text
    assert "late@example.org, whom no digest was sent to" in text
    assert "stranger@example.net" in text
    assert "over the" in text and "cap" in text
    assert "bad signature" in text
    assert "not a bounce report" in text
    assert all(PROCESSED_KEYWORD in f for f in imap_server.flags().values())


def _dsn(
    recipient: str,
    status: str,
    *,
    original: bytes,
    to: str = "bounces@example.org",
    report_id: str = "<dsn-1@mx.example.net>",
) -> bytes:
    """An RFC 3464 report as Postfix writes it, quoting ``original`` whole."""
    action = "failed" if status.startswith("5") else "delayed"
    raw_status = (
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox problem\r\n"
    )
    boundary = "=_dsn_boundary_="
    head = (
        f"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\nTo: {to}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: {report_id}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;"
        f' boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"Your message could not be delivered to {recipient}.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n{raw_status}\r\n"
        f"--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
    ).encode()
    return head + original + f"\r\n--{boundary}--\r\n".encode()


def test_verp_return_path_names_the_delivery(
    store: Store, smtp_server: SmtpFixture, imap_server: ImapFixture
) -> None:
    """The bounce says a forwarded address failed; the VERP address still finds the subscriber."""
    subscribe_all(store, ["kim@example.org", "lee@example.org"])
    smtp = smtp_server.settings(return_path=ReturnPath(verp_domain="bounces.example.org"))
    digest_id, _ = send_issue(store, smtp)
    by_rcpt = {m.recipients[0]: m for m in smtp_server.messages}
    kim = store.subscriber_by_email("kim@example.org")
    assert kim is not None
    envelope = by_rcpt["kim@example.org"].mail_from
    assert envelope == verp_address(SECRET, "bounces.example.org", digest_id, kim.id)
    assert read_verp_address(SECRET, envelope) == (digest_id, kim.id)
    assert len(envelope.split("@")[0]) <= 64
    # The remote side forwarded kim's mail to another mailbox, which failed.
    imap_server.append(
        _dsn(
            "kim.forward@elsewhere.example",
            "5.1.1",
            original=b"Subject: x\r\n\r\nb\r\n",
            to=envelope,
        )
    )
    summary = process_mailbox(
        store,
        bounce_settings(imap_server, address=None, verp_domain="bounces.example.org"),
        secret=SECRET,
        environ=imap_server.environ,
    )
    assert summary.hard == 1
    assert status_of(store, "kim@example.org") is SubscriberStatus.BOUNCED
    assert status_of(store, "lee@example.org") is SubscriberStatus.ACTIVE


def test_fixed_address_matches_by_quoted_message_id(
    store: Store, smtp_server: SmtpFixture, imap_server: ImapFixture
) -> None:
    subscribe_all(store, ["kim@example.org", "lee@example.org"])
    smtp = smtp_server.settings(return_path=ReturnPath(address="bounces@example.org"))
    send_issue(store, smtp)
    received = {m.recipients[0]: m for m in smtp_server.messages}
    assert received["lee@example.org"].mail_from == "bounces@example.org"
    original = received["lee@example.org"].data
    imap_server.append(_dsn("lee.old-alias@example.org", "5.2.1", original=original))
    summary = process_mailbox(
        store, bounce_settings(imap_server), secret=SECRET, environ=imap_server.environ
    )
    assert summary.hard == 1
    assert status_of(store, "lee@example.org") is SubscriberStatus.BOUNCED
    assert status_of(store, "kim@example.org") is SubscriberStatus.ACTIVE


@pytest.mark.parametrize(
    ("soft_issues", "expected"), [(2, SubscriberStatus.ACTIVE), (3, SubscriberStatus.BOUNCED)]
)
def test_soft_bounces_in_enough_issues_count_as_bounced(
    store: Store,
    smtp_server: SmtpFixture,
    imap_server: ImapFixture,
    soft_issues: int,
    expected: SubscriberStatus,
) -> None:
    subscribe_all(store, ["full@example.org"])
    settings = bounce_settings(imap_server, soft_limit=3, soft_window_issues=5)
    for week in range(soft_issues):
        send_issue(store, smtp_server.settings(), week=week)
        original = smtp_server.messages[-1].data
        imap_server.append(
            _dsn("full@example.org", "4.2.2", original=original, report_id=f"<soft-{week}@mx>")
        )
        process_mailbox(store, settings, secret=SECRET, environ=imap_server.environ)
    assert status_of(store, "full@example.org") is expected
    assert store.bounce_counts()[BounceKind.SOFT] == soft_issues


def test_smtp_refusal_at_rcpt_counts_as_hard_bounce(store: Store, smtp_server: SmtpFixture) -> None:
    subscribe_all(store, ["gone@example.org", "kim@example.org"])
    smtp_server.handler.reject("gone@example.org")
    send_issue(store, smtp_server.settings(max_attempts=2))
    assert status_of(store, "gone@example.org") is SubscriberStatus.BOUNCED
    assert store.is_suppressed("gone@example.org")
    refusals = len(smtp_server.handler.refusals)
    _, received = send_issue(store, smtp_server.settings(max_attempts=2), week=1)
    assert received == ["kim@example.org"]
    assert len(smtp_server.handler.refusals) == refusals  # not even tried again
    assert store.bounce_counts()[BounceKind.HARD] == 1


def test_suppressed_address_stays_suppressed_until_lifted(
    store: Store, smtp_server: SmtpFixture, imap_server: ImapFixture, tmp_path: Path
) -> None:
    subscribe_all(store, ["complainer@example.net", "kim@example.org"])
    send_issue(store, smtp_server.settings())
    imap_server.append(SAMPLES.joinpath("arf_01.eml").read_bytes())
    process_mailbox(store, bounce_settings(imap_server), secret=SECRET, environ=imap_server.environ)
    person = store.subscriber_by_email("complainer@example.net")
    assert person is not None and person.status is SubscriberStatus.UNSUBSCRIBED
    # Re-subscribing through the form's confirm link is refused ...
    with pytest.raises(SubscriberError, match="unsuppress"):
        store.confirm_subscriber(person.id, person.email, now=datetime.now(UTC))
    # ... and so is a re-import after the row was forgotten.
    store.forget_subscriber(person.email)
    subscribe_all(store, ["complainer@example.net"])
    _, received = send_issue(store, smtp_server.settings(), week=1)
    assert received == ["kim@example.org"]

    config = tmp_path / "feeds.yaml"
    config.write_text(
        f"site:\n  title: T\n  url: https://digest.example.org/\nstorage:\n  url: {_url(store)}\n",
        encoding="utf-8",
    )
    result = run_cli("-c", str(config), "subscribers", "unsuppress", "complainer@example.net")
    assert result.exit_code == 0, result.output
    assert not store.is_suppressed("complainer@example.net")
    again = run_cli("-c", str(config), "subscribers", "unsuppress", "complainer@example.net")
    assert again.exit_code != 0 and "is not suppressed" in again.output
    _, received = send_issue(store, smtp_server.settings(), week=2)
    assert received == ["complainer@example.net", "kim@example.org"]


def test_end_to_end_send_bounce_cli_next_issue_skips(
    store: Store,
    smtp_server: SmtpFixture,
    imap_server: ImapFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subscribe_all(store, ["kim@example.org", "dead@example.org"])
    smtp = smtp_server.settings(return_path=ReturnPath(verp_domain="example.org"))
    send_issue(store, smtp)
    dead = next(m for m in smtp_server.messages if m.recipients == ("dead@example.org",))
    # The remote server accepted it, then bounced it to the Return-Path.
    imap_server.append(_dsn("dead@example.org", "5.1.1", original=dead.data, to=dead.mail_from))
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "site:\n  title: T\n  url: https://digest.example.org/\n"
        f"storage:\n  url: {_url(store)}\n"
        "bounces:\n  verp_domain: example.org\n  imap:\n"
        f"    host: 127.0.0.1\n    port: {imap_server.port}\n    tls: false\n"
        "    username_env: TEST_IMAP_USER\n    password_env: TEST_IMAP_PASSWORD\n",
        encoding="utf-8",
    )
    for name, value in imap_server.environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AGGREGATOR_SECRET", SECRET)
    result = run_cli("-c", str(config), "bounces", "process")
    assert result.exit_code == 0, result.output
    assert "1 hard" in result.stdout
    _, received = send_issue(store, smtp, week=1)
    assert received == ["kim@example.org"]
    status = run_cli("-c", str(config), "bounces", "status", "--suppressed")
    assert status.exit_code == 0, status.output
    assert "dead@example.org" in status.stdout and "1 hard" in status.stdout
    overview = run_cli("-c", str(config), "status")
    assert overview.exit_code == 0, overview.output
    assert "1 hard, 0 soft, 0 complaints; 1 addresses suppressed" in " ".join(
        overview.stdout.split()
    )


def test_unreachable_or_refusing_mailbox_is_one_clear_error(
    store: Store, imap_server: ImapFixture
) -> None:
    settings = bounce_settings(imap_server)
    with pytest.raises(BounceError, match="refused the login"):
        process_mailbox(
            store,
            settings,
            secret=SECRET,
            environ={"TEST_IMAP_USER": "bounces", "TEST_IMAP_PASSWORD": "wrong"},
        )
    with pytest.raises(BounceError, match="no folder 'Bounces'"):
        process_mailbox(
            store,
            bounce_settings(imap_server, imap=imap_server.settings(folder="Bounces")),
            secret=SECRET,
            environ=imap_server.environ,
        )
    with pytest.raises(BounceError, match="TEST_IMAP_PASSWORD, which is not set"):
        process_mailbox(store, settings, secret=SECRET, environ={"TEST_IMAP_USER": "x"})


# -------------------------------------------------------------------------- config

HEAD = "site:\n  title: Digest\n  url: https://digest.example.org/\n"


@pytest.mark.parametrize(
    ("block", "line", "message"),
    [
        ("bounces:\n  soft_limit: 3\n", 4, "say where bounces go"),
        ("bounces:\n  address: not-an-address\n", 5, "not an email address"),
        ("bounces:\n  verp_domain: 'bad domain'\n", 5, "not a domain"),
        ("bounces:\n  address: b@example.org\n  soft_limit: 6\n", 4, "can never happen"),
        (
            "bounces:\n  address: b@example.org\n  imap:\n    host: h\n    username_env: U\n",
            6,
            "password_env",
        ),
        ("bounces:\n  address: b@example.org\n  imap_server: x\n", 6, "unknown key"),
    ],
)
def test_bad_bounce_settings_name_file_and_line(
    tmp_path: Path, block: str, line: int, message: str
) -> None:
    path = tmp_path / "feeds.yaml"
    path.write_text(HEAD + block, encoding="utf-8")
    result = run_cli("-c", str(path), "check")
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert f"{path}:{line}:" in out
    assert message in out


def test_bounce_settings_reach_the_sender() -> None:
    config = parse_config(
        HEAD + "bounces:\n  verp_domain: Bounces.Example.org\n  imap:\n    host: imap.example.org\n"
        "    username_env: U\n    password_env: P\n"
    )
    assert config.smtp.return_path == ReturnPath(address=None, verp_domain="bounces.example.org")
    assert config.bounces is not None and config.bounces.imap is not None
    assert config.bounces.imap.port == 993 and config.bounces.imap.tls


def test_service_polls_the_mailbox_and_shows_counts_on_metrics(
    tmp_path: Path,
    smtp_server: SmtpFixture,
    imap_server: ImapFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import httpx

    from aggregator.config import load_config
    from aggregator.scheduler import Service
    from tests.test_service import eventually, free_port, running

    for name, value in imap_server.environ.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "site: {title: T, url: 'http://127.0.0.1:9/', sender_email: digest@example.org,"
        f" output_dir: '{tmp_path / 'public'}'}}\n"
        f"storage: {{url: 'sqlite:///{tmp_path / 'service.db'}'}}\n"
        f"smtp: {{host: 127.0.0.1, port: {smtp_server.port}}}\n"
        "bounces:\n  address: bounces@example.org\n  poll: 1s\n  imap:\n"
        f"    host: 127.0.0.1\n    port: {imap_server.port}\n    tls: false\n"
        "    username_env: TEST_IMAP_USER\n    password_env: TEST_IMAP_PASSWORD\n",
        encoding="utf-8",
    )
    config = load_config(path)
    store = Store.open(config.database_url)
    try:
        subscribe_all(store, ["kim@example.org", "gone@example.org"])
        send_issue(store, config.smtp)
    finally:
        store.close()
    gone = next(m for m in smtp_server.messages if m.recipients == ("gone@example.org",))
    imap_server.append(_dsn("gone@example.org", "5.1.1", original=gone.data))

    async def scenario() -> str:
        service = Service(config, port=free_port(), secret=SECRET, watch=False)
        task = await running(service)
        try:
            await eventually(
                lambda: status_of(service.store, "gone@example.org") is SubscriberStatus.BOUNCED,
                timeout=30,
                what="the scheduled poll to mark the address bounced",
            )
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
                return (await client.get("/metrics")).text
        finally:
            service.stop()
            await task

    metrics = asyncio.run(scenario())
    assert "aggregator_bounces_hard 1" in metrics
    assert "aggregator_suppressed_addresses 1" in metrics
    assert "aggregator_complaints 0" in metrics
    assert all(PROCESSED_KEYWORD in f for f in imap_server.flags().values())


# ------------------------------------------------------------- hostile input, generated

_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n",
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="\r\n',
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/rfc822-headers\r\n",
        b"Content-Type: message/delivery-status\r\n",
        b"Content-Type: message/feedback-report\r\n",
        b"--x\r\n",
        b"--x--\r\n",
        b"\r\n",
        b"Status: 5.1.1\r\n",
        b"Action: failed\r\n",
        b"Final-Recipient: rfc822; \xff\xfe@\x00\r\n",
        b"Original-Rcpt-To: <>\r\n",
        b"Message-ID: <a@b>\r\n",
        b"To: bounces+1.2.abcdefghijklmnop@example.org\r\n",
        b"From: \r\n",
        b"Subject: =?utf-8?b?7ZWc6rWt?=\r\n",
        "Subject: 한국 영화\r\n".encode("euc-kr"),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_PIECES, st.binary(max_size=40)), max_size=30))
def test_read_report_never_raises_anything_but_malformed(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    try:
        report = read_report(raw)
    except MalformedReport:
        return
    assert report.report_id
    assert all(isinstance(a, str) for a in report.permanent | report.temporary)


@pytest.mark.parametrize("size", [MAX_REPORT_BYTES + 1, MAX_REPORT_BYTES * 3])
def test_oversized_report_is_refused_before_parsing(size: int) -> None:
    with pytest.raises(MalformedReport, match="cap"):
        read_report(b"Subject: x\r\n\r\n" + b"a" * size)


def _before_bounces(cfg: Any) -> str:
    """The revision before the bounce migration (numbers change when branches merge)."""
    from alembic.script import ScriptDirectory

    for script in ScriptDirectory.from_config(cfg).walk_revisions():
        if str(script.path).endswith("_bounces.py"):
            return str(script.down_revision)
    raise AssertionError("no *_bounces.py migration")


def test_bounce_migration_downgrades_and_upgrades_again(db_url: str) -> None:
    """The bounce tables come and go with their revision; rows survive an upgrade after it."""
    from alembic import command
    from sqlalchemy import inspect

    from aggregator.store.engine import _alembic_config

    store = Store.open(db_url)
    try:
        subscribe_all(store, ["kim@example.org"])
        store.suppress("kim@example.org", "test", now=datetime.now(UTC))
        cfg = _alembic_config()
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, _before_bounces(cfg))
        tables = set(inspect(store.engine).get_table_names())
        assert not {"bounce_events", "suppressions"} & tables
        assert store.subscriber_by_email("kim@example.org") is not None
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        assert not store.is_suppressed("kim@example.org")
        store.suppress("kim@example.org", "again", now=datetime.now(UTC))
        assert store.is_suppressed("kim@example.org")
    finally:
        store.close()


def test_confirm_mail_command_never_mails_a_suppressed_address(
    store: Store, smtp_server: SmtpFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    store.add_subscriber("dead@example.org", now=now)
    store.add_subscriber("fresh@example.org", now=now)
    store.suppress("dead@example.org", "hard bounce: 550 5.1.1", now=now)
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "site:\n  title: T\n  url: https://digest.example.org/\n"
        f"storage:\n  url: {_url(store)}\n"
        f"smtp:\n  host: 127.0.0.1\n  port: {smtp_server.port}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("AGGREGATOR_SECRET", SECRET)
    result = run_cli("-c", str(config), "subscribers", "confirm-mail", "--all-pending")
    assert result.exit_code == 1, result.output
    assert "dead@example.org" in result.stderr and "suppressed" in result.stderr
    assert [r for m in smtp_server.messages for r in m.recipients] == ["fresh@example.org"]
