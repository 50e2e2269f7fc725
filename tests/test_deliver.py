"""Delivery against a real aiosmtpd server: headers, parts, ledger, failures, crash, concurrency."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregator.deliver import deliver_digest, message_id_tag, send_test_copy
from aggregator.errors import DeliveryError
from aggregator.models import DeliveryStatus, Digest, Site, SmtpSettings, SubscriberStatus
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from aggregator.tokens import Tokens
from tests.support.http import unused_port

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture


SECRET = "test-secret-0123456789abcdef"
SITE = Site(
    title="Korean Film Digest",
    url="https://digest.example.org/",
    sender_email="digest@example.org",
    sender_name="한국 영화 다이제스트",
)
SUBJECT = "Korean Film Digest: 이번 주 한국 영화 소식 — week of Nov 23"
ROOT = Path(__file__).resolve().parent.parent


def _render(digest: Digest) -> tuple[str, str]:
    long_line = "<td>" + "봉준호 감독의 신작 " * 60 + "</td>"  # far over 76 characters
    html = (
        f"<html><body><h1>{digest.subject}</h1><table><tr>{long_line}</tr></table>"
        f'<p><a href="{UNSUBSCRIBE_PLACEHOLDER}">Unsubscribe</a></p></body></html>'
    )
    text = (
        f"{digest.subject}\n\n. a line starting with a dot\n\n"
        f"Unsubscribe: {UNSUBSCRIBE_PLACEHOLDER}\n"
    )
    return html, text


def make_digest(
    store: Store, subject: str = SUBJECT, *, end: datetime = datetime(2026, 11, 23, tzinfo=UTC)
) -> Digest:
    """A frozen digest made directly in the store (no dependency on the renderer)."""
    digest = Digest(
        period_start=end - timedelta(days=7), period_end=end, subject=subject, sections=()
    )
    return store.save_digest(digest, _render, now=end)


def add_active(store: Store, count: int, *, start: int = 0) -> list[str]:
    emails = [f"reader{i:04d}@example.org" for i in range(start, start + count)]
    store.add_subscribers(
        [(e, None) for e in emails], now=datetime.now(UTC), status=SubscriberStatus.ACTIVE
    )
    return emails


def deliver(store: Store, digest: Digest, smtp: SmtpSettings, **kwargs: object) -> object:
    kwargs.setdefault("retry_delay", 0.05)
    return asyncio.run(
        deliver_digest(store, digest, site=SITE, smtp=smtp, secret=SECRET, **kwargs)  # type: ignore[arg-type]
    )


def test_each_active_subscriber_gets_one_complete_message(
    store: Store, smtp_server: SmtpFixture
) -> None:
    now = datetime.now(UTC)
    store.add_subscriber("kim@example.org", name="김지운", now=now, active=True)
    store.add_subscriber("lee@example.org", name="Lee, Chang-dong", now=now, active=True)
    store.add_subscriber("pending@example.org", now=now)
    gone, _ = store.add_subscriber("gone@example.org", now=now, active=True)
    store.unsubscribe_subscriber(gone.id, gone.email, now=now)
    digest = make_digest(store)

    report = deliver(store, digest, smtp_server.settings())

    received = smtp_server.messages
    assert sorted(r for m in received for r in m.recipients) == [
        "kim@example.org",
        "lee@example.org",
    ]
    assert len({m.peer for m in received}) == 1  # one connection for all messages
    ledger = {d.subscriber_id: d for d in store.deliveries(digest.id)}
    kim = store.subscriber_by_email("kim@example.org")
    assert kim is not None
    (message,) = [m.message for m in smtp_server.to("kim@example.org")]
    assert message["Subject"] == SUBJECT
    assert message["From"].addresses[0].display_name == "한국 영화 다이제스트"
    assert message["From"].addresses[0].addr_spec == "digest@example.org"
    assert message["To"].addresses[0].display_name == "김지운"
    assert message["Date"].datetime.tzinfo is not None
    assert message["Message-ID"] == ledger[kim.id].message_id
    install = store.install_id()
    assert message["Message-ID"] == f"<{install}.{digest.id}.{kim.id}@example.org>"
    assert message_id_tag(SECRET, install) == install
    token = Tokens(SECRET).unsubscribe_token(kim.id, kim.email)
    url = f"https://digest.example.org/unsubscribe/{token}"
    assert str(message["List-Unsubscribe"]) == f"<{url}>"  # no mailto nothing would read
    assert str(message["List-Id"]) == "Korean Film Digest <weekly.example.org>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert f"Unsubscribe: {url}" in text.get_content()
    assert "\n. a line starting with a dot\r\n" in text.get_content()
    assert f'href="{url}"' in html.get_content()
    assert "봉준호 감독의 신작 " * 60 in html.get_content()
    assert UNSUBSCRIBE_PLACEHOLDER not in str(message)
    assert all(len(line) <= 998 for line in received[0].data.split(b"\r\n"))
    lee = smtp_server.to("lee@example.org")[0].message
    assert lee["To"].addresses[0].display_name == "Lee, Chang-dong"

    assert report.sent == 2  # type: ignore[attr-defined]
    assert {d.status for d in ledger.values()} == {DeliveryStatus.SENT}
    # A second run finds nothing to send.
    again = deliver(store, digest, smtp_server.settings())
    assert again.sent == 0  # type: ignore[attr-defined]
    assert len(smtp_server.messages) == 2


def test_temporary_451_is_retried_and_delivered_once(
    store: Store, smtp_server: SmtpFixture
) -> None:
    emails = add_active(store, 4)
    smtp_server.handler.defer(emails[1], times=1)
    digest = make_digest(store)

    deliver(store, digest, smtp_server.settings())

    assert Counter(r for m in smtp_server.messages for r in m.recipients) == Counter(emails)
    row = next(d for d in store.deliveries(digest.id) if d.attempts)
    assert (row.status, row.attempts) == (DeliveryStatus.SENT, 1)
    assert smtp_server.handler.refusals == [(emails[1], 451)]


def test_permanent_550_fails_after_max_attempts(store: Store, smtp_server: SmtpFixture) -> None:
    emails = add_active(store, 3)
    smtp_server.handler.reject(emails[0])
    digest = make_digest(store)

    report = deliver(store, digest, smtp_server.settings(max_attempts=3))

    assert sorted(r for m in smtp_server.messages for r in m.recipients) == emails[1:]
    bounced = store.deliveries(digest.id)[0]
    assert (bounced.status, bounced.attempts) == (DeliveryStatus.FAILED, 3)
    assert "550" in (bounced.last_error or "")
    assert smtp_server.handler.refusals == [(emails[0], 550)] * 3
    assert report.failed == 1  # type: ignore[attr-defined]
    deliver(store, digest, smtp_server.settings(max_attempts=3))  # failed rows stay failed
    assert len(smtp_server.handler.refusals) == 3


def test_dropped_connection_reconnects_and_sends_the_rest_once(
    store: Store, smtp_server: SmtpFixture
) -> None:
    emails = add_active(store, 6)
    smtp_server.handler.drop_after(2)
    digest = make_digest(store)

    deliver(store, digest, smtp_server.settings())

    assert smtp_server.handler.drops == 1
    assert Counter(r for m in smtp_server.messages for r in m.recipients) == Counter(emails)
    assert len({m.peer for m in smtp_server.messages}) == 2  # reconnected once
    assert store.delivery_counts(digest.id)[DeliveryStatus.SENT] == 6


def test_unreachable_server_names_host_and_port_and_leaves_rows_pending(
    store: Store,
) -> None:
    add_active(store, 2)
    digest = make_digest(store)
    port = unused_port()

    with pytest.raises(DeliveryError, match=f"127.0.0.1:{port}"):
        deliver(store, digest, SmtpSettings(host="127.0.0.1", port=port, timeout=2))

    assert store.delivery_counts(digest.id)[DeliveryStatus.PENDING] == 2


def test_rate_limit_spaces_messages(store: Store, smtp_server: SmtpFixture) -> None:
    add_active(store, 6)
    digest = make_digest(store)

    started = time.monotonic()
    deliver(store, digest, smtp_server.settings(rate_per_second=20))

    assert len(smtp_server.messages) == 6
    assert time.monotonic() - started >= 5 / 20


def test_unsubscribed_before_sending_is_not_mailed(store: Store, smtp_server: SmtpFixture) -> None:
    emails = add_active(store, 3)
    digest = make_digest(store)
    store.create_deliveries(
        digest.id, message_id_tag="t", message_id_domain="x", now=datetime.now(UTC)
    )
    leaving = store.subscriber_by_email(emails[2])
    assert leaving is not None
    store.unsubscribe_subscriber(leaving.id, leaving.email, now=datetime.now(UTC))

    deliver(store, digest, smtp_server.settings())

    assert sorted(r for m in smtp_server.messages for r in m.recipients) == emails[:2]


def test_an_issue_goes_to_the_subscribers_of_its_first_send(
    store: Store, smtp_server: SmtpFixture
) -> None:
    """Sending an issue again finishes its list; who joined since waits for the next one."""
    first = add_active(store, 2)
    digest = make_digest(store)
    deliver(store, digest, smtp_server.settings())
    late = add_active(store, 1, start=2)

    deliver(store, digest, smtp_server.settings())  # e.g. `digest send` run again

    assert sorted(r for m in smtp_server.messages for r in m.recipients) == first
    assert sum(store.delivery_counts(digest.id).values()) == 2
    following = make_digest(store, end=datetime(2026, 11, 30, tzinfo=UTC))
    deliver(store, following, smtp_server.settings())
    assert sorted(r for m in smtp_server.to(late[0]) for r in m.recipients) == late


def test_test_copy_does_not_touch_the_ledger(store: Store, smtp_server: SmtpFixture) -> None:
    add_active(store, 2)
    digest = make_digest(store)

    asyncio.run(
        send_test_copy(
            digest, "editor@example.org", site=SITE, smtp=smtp_server.settings(), secret=SECRET
        )
    )

    (received,) = smtp_server.messages
    assert received.recipients == ("editor@example.org",)
    assert received.message["Subject"] == SUBJECT
    assert store.deliveries(digest.id) == []


# ------------------------------------------------------------ crash and concurrency

_SENDER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta
    from aggregator.deliver import deliver_digest
    from aggregator.models import Site, SmtpSettings
    from aggregator.store import Store

    url, digest_id, port, owner, lease = sys.argv[1:6]
    store = Store.open(url)
    digest = store.get_digest(int(digest_id))
    site = Site(url="https://digest.example.org/", sender_email="digest@example.org")
    report = asyncio.run(
        deliver_digest(
            store, digest, site=site, secret={secret!r}, owner=owner, batch_size=10,
            smtp=SmtpSettings(host="127.0.0.1", port=int(port), timeout=10),
            lease=timedelta(seconds=float(lease)),
        )
    )
    print(report.sent, flush=True)
    """
).format(secret=SECRET)


def _sender(
    tmp_path: Path, url: str, digest: Digest, smtp: SmtpFixture, owner: str, lease: float
) -> subprocess.Popen[str]:
    script = tmp_path / "sender.py"
    script.write_text(_SENDER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), url, str(digest.id), str(smtp.port), owner, str(lease)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_exactly_once(smtp: SmtpFixture, emails: list[str], *, allowed_repeats: int) -> None:
    per_address = Counter(r for m in smtp.messages for r in m.recipients)
    assert set(per_address) == set(emails), "somebody got nothing"
    repeated = [e for e, n in per_address.items() if n > 1]
    assert len(repeated) <= allowed_repeats, f"sent twice: {repeated}"
    for email in repeated:
        assert per_address[email] == 2
        ids = {m.message_id for m in smtp.to(email)}
        assert len(ids) == 1, "a repeat must carry the same Message-ID"


def test_killed_sender_resumes_and_repeats_at_most_the_message_in_flight(
    store: Store, db_url: str, smtp_server: SmtpFixture, tmp_path: Path
) -> None:
    emails = add_active(store, 40)
    digest = make_digest(store)
    smtp_server.handler.delay = 0.04

    first = _sender(tmp_path, db_url, digest, smtp_server, "first", lease=1.0)
    smtp_server.wait_for(12, timeout=20)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = len(smtp_server.messages)
    assert killed_at < 40, "the sender finished before it could be killed"
    time.sleep(0.3)  # let the server finish a DATA that was in flight at the kill

    time.sleep(1.0)  # the dead sender's lease expires
    second = _sender(tmp_path, db_url, digest, smtp_server, "second", lease=5.0)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 0, err

    _assert_exactly_once(smtp_server, emails, allowed_repeats=1)
    counts = store.delivery_counts(digest.id)
    assert counts[DeliveryStatus.SENT] == 40


def test_two_senders_at_once_never_mail_one_subscriber_twice(
    store: Store, db_url: str, smtp_server: SmtpFixture, tmp_path: Path
) -> None:
    emails = add_active(store, 80)
    digest = make_digest(store)
    smtp_server.handler.delay = 0.005

    senders = [_sender(tmp_path, db_url, digest, smtp_server, f"s{i}", lease=30) for i in range(2)]
    results = [p.communicate(timeout=40) for p in senders]

    for process, (_, err) in zip(senders, results, strict=True):
        assert process.returncode == 0, err
    _assert_exactly_once(smtp_server, emails, allowed_repeats=0)
    assert sum(int(out) for out, _ in results) == 80
    # The ledger names, for every row, the sender that reported sending it.
    owners = Counter(d.lease_owner for d in store.deliveries(digest.id))
    assert owners == {f"s{i}": int(out) for i, (out, _) in enumerate(results) if int(out)}
