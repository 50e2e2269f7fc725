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
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest

from aggregator.deliver import deliver_digest, message_id_tag, send_test_copy
from aggregator.errors import DeliveryError
from aggregator.models import (
    DeliveryStatus,
    Digest,
    Site,
    SmtpSettings,
    SubscriberStatus,
    utcnow,
)
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from aggregator.store.deliveries import parse_variant, variant_key
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


@pytest.mark.parametrize("how", ["unsubscribed", "bounced"])
def test_a_reader_who_leaves_while_a_dead_sender_holds_their_row_is_not_mailed(
    store: Store, smtp_server: SmtpFixture, how: str
) -> None:
    """Leaving cancels only ``pending`` rows: a row claimed by a sender that
    then died stays ``sending`` and becomes claimable when its lease expires.
    The claim's active-subscriber filter is what keeps it from being mailed."""
    emails = add_active(store, 4)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    # A sender took every row an hour ago and died (its lease ran out long since).
    held = store.claim_deliveries(
        digest.id,
        owner="dead",
        limit=10,
        lease_until=T0 + timedelta(minutes=1),
        now=T0,
        pass_started=T0,
    )
    assert len(held) == 4
    leaving = store.subscriber_by_email(emails[2])
    assert leaving is not None
    if how == "unsubscribed":
        store.unsubscribe_subscriber(leaving.id, leaving.email, now=T0)
    else:
        # A hard bounce of an earlier issue, heard while the row was held.
        from aggregator.mail.bounces import record_smtp_refusal

        (row,) = [d for d in held if d.subscriber_id == leaving.id]
        record_smtp_refusal(store, row, "550 5.1.1 no such mailbox", now=T0)
        assert store.subscriber_by_email(leaving.email).status is SubscriberStatus.BOUNCED  # type: ignore[union-attr]

    report = deliver(store, digest, smtp_server.settings())

    assert sorted(r for m in smtp_server.messages for r in m.recipients) == [
        e for e in emails if e != emails[2]
    ]
    assert report.sent == 3  # type: ignore[attr-defined]
    left = [d for d in store.deliveries(digest.id) if d.subscriber_id == leaving.id]
    assert [(d.status, d.lease_owner) for d in left] == [(DeliveryStatus.SENDING, "dead")]


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


def _wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.02)


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
    # Once the server has dropped the dead sender's connection, a DATA that was
    # in flight at the kill is either recorded or cancelled: nothing more comes.
    killed_at = len(smtp_server.wait_idle())
    assert 12 <= killed_at < 40, "the sender finished before it could be killed"
    assert len(smtp_server.messages) == killed_at
    # Each 250 is followed by its own commit: only the message on the wire at
    # the kill can be at the server without being marked sent.
    assert digest.id is not None
    assert store.delivery_counts(digest.id)[DeliveryStatus.SENT] in (killed_at - 1, killed_at)

    # The second sender starts once every lease the dead one held has expired
    # (read from the ledger: a sender never takes rows under a live lease).
    leases = [d.lease_until for d in store.deliveries(digest.id) if d.lease_until is not None]
    assert leases, "the dead sender held no claimed rows"
    _wait_until(lambda: utcnow() > max(leases), timeout=10, what="the dead sender's leases expire")
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


# ------------------------------------------------------------- the ledger itself

T0 = datetime(2026, 11, 23, 9, tzinfo=UTC)


def test_ledger_rows_are_made_once_per_active_unsuppressed_subscriber(store: Store) -> None:
    emails = add_active(store, 4)
    store.add_subscribers([("waiting@example.org", None)], now=T0, status=SubscriberStatus.PENDING)
    store.suppress(emails[3].upper(), "hard bounce", now=T0)
    chooser = store.subscriber_by_email(emails[1])
    assert chooser is not None
    store.set_preferences(chooser.id, chooser.email, sections=["ko-pick", "reviews"], language="ko")
    digest = make_digest(store)
    assert digest.id is not None

    added = store.create_deliveries(
        digest.id, message_id_tag="kfd", message_id_domain="mail.example.org", now=T0
    )

    # Row order within one INSERT ... SELECT is the database's: sort by subscriber.
    rows = sorted(store.deliveries(digest.id), key=lambda r: r.subscriber_id)
    assert len(rows) == 3
    assert added == 3
    ids = {s.email: s.id for s in store.list_subscribers()}
    assert [r.subscriber_id for r in rows] == [ids[e] for e in emails[:3]]
    for row, email in zip(rows, emails[:3], strict=True):
        assert row.message_id == f"<kfd.{digest.id}.{ids[email]}@mail.example.org>"
        assert (row.status, row.attempts, row.digest_id) == (DeliveryStatus.PENDING, 0, digest.id)
        assert (row.lease_owner, row.lease_until, row.sent_at, row.last_error) == (
            None,
            None,
            None,
            None,
        )
    assert [r.variant for r in rows] == ["*|", '["ko-pick", "reviews"]|ko', "*|"]
    assert parse_variant(rows[0].variant) == (None, None)
    assert parse_variant(rows[1].variant) == (("ko-pick", "reviews"), "ko")
    assert variant_key('["reviews"]', "en") == '["reviews"]|en'
    assert parse_variant('["reviews"]|') == (("reviews",), None)
    assert variant_key(None, None) == "*|"
    assert parse_variant(None) == (None, None)
    assert parse_variant("") == (None, None)
    assert parse_variant("*|en") == (None, "en")

    # Again (another sender, a rerun): nothing added, nothing changed.
    assert (
        store.create_deliveries(
            digest.id, message_id_tag="other", message_id_domain="elsewhere.example", now=T0
        )
        == 0
    )
    assert sorted(store.deliveries(digest.id), key=lambda r: r.subscriber_id) == rows


@pytest.mark.parametrize(("first", "joined"), [(1, 1), (3, 2), (40, 25)])
def test_create_deliveries_counts_exactly_the_rows_it_adds(
    store: Store, first: int, joined: int
) -> None:
    """The count is the rows added by this call, on both dialects (it was 0 on PostgreSQL)."""
    add_active(store, first)
    digest = make_digest(store)
    assert digest.id is not None

    def create() -> int:
        assert digest.id is not None
        return store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)

    assert create() == first
    # Readers who join after the first call get their rows from the next one;
    # the rows already there are not counted again.
    add_active(store, joined, start=first)
    assert create() == joined
    assert create() == 0
    assert len(store.deliveries(digest.id)) == first + joined


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_claims_take_pending_rows_in_id_order_up_to_the_limit(store: Store, limit: int) -> None:
    emails = add_active(store, 4)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)

    claimed = store.claim_deliveries(
        digest.id, owner="a", limit=limit, lease_until=lease, now=T0, pass_started=T0
    )

    taken = min(limit, 4)
    address = {s.id: s.email for s in store.list_subscribers()}
    assert [c.email for c in claimed] == [
        address[r.subscriber_id] for r in store.deliveries(digest.id)[:taken]
    ]
    assert [c.attempts for c in claimed] == [0] * taken
    assert [c.variant for c in claimed] == ["*|"] * taken
    assert all(c.digest_id == digest.id for c in claimed)
    rows = store.deliveries(digest.id)
    assert [c.id for c in claimed] == [r.id for r in rows[:taken]]
    assert [c.message_id for c in claimed] == [r.message_id for r in rows[:taken]]
    assert [c.subscriber_id for c in claimed] == [r.subscriber_id for r in rows[:taken]]
    for row in rows[:taken]:
        assert (row.status, row.lease_owner, row.lease_until) == (
            DeliveryStatus.SENDING,
            "a",
            lease,
        )
    for row in rows[taken:]:
        assert (row.status, row.lease_owner) == (DeliveryStatus.PENDING, None)
    # A second sender during the lease gets only what is left.
    rest = store.claim_deliveries(
        digest.id, owner="b", limit=10, lease_until=lease, now=T0, pass_started=T0
    )
    assert sorted(c.email for c in claimed + rest) == emails
    assert [c.id for c in rest] == [r.id for r in rows[taken:]]
    assert (
        store.claim_deliveries(
            digest.id, owner="c", limit=10, lease_until=lease, now=T0, pass_started=T0
        )
        == []
    )


def test_a_lease_is_taken_over_only_after_it_expires(store: Store) -> None:
    add_active(store, 2)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)
    first = store.claim_deliveries(
        digest.id, owner="a", limit=10, lease_until=lease, now=T0, pass_started=T0
    )
    assert len(first) == 2

    for at in (T0 + timedelta(minutes=1), lease):  # up to and at its end: still held
        assert (
            store.claim_deliveries(
                digest.id,
                owner="b",
                limit=10,
                lease_until=at + timedelta(minutes=5),
                now=at,
                pass_started=at,
            )
            == []
        )
    after = lease + timedelta(seconds=1)
    taken = store.claim_deliveries(
        digest.id,
        owner="b",
        limit=10,
        lease_until=after + timedelta(minutes=5),
        now=after,
        pass_started=after,
    )
    assert [c.id for c in taken] == [c.id for c in first]

    # The old owner can neither extend, mark nor release the rows any more.
    ids = [c.id for c in first]
    assert store.extend_lease("a", ids, lease_until=after + timedelta(hours=1), now=after) == set()
    assert store.mark_sent(ids[0], owner="a", now=after) is False
    assert store.mark_skipped(ids[0], owner="a", reason="x", now=after) is False
    assert store.release_claims("a", ids) == 0
    assert {r.lease_owner for r in store.deliveries(digest.id)} == {"b"}
    assert store.extend_lease("b", [], lease_until=after, now=after) == set()
    assert store.release_claims("b", []) == 0


def test_a_row_released_during_a_pass_waits_for_the_next_pass(store: Store) -> None:
    add_active(store, 1)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)
    later = T0 + timedelta(seconds=30)
    (claim,) = store.claim_deliveries(
        digest.id, owner="a", limit=1, lease_until=lease, now=later, pass_started=T0
    )
    status = store.record_delivery_failure(
        claim, owner="a", error="451 try later", permanent=False, max_attempts=3, now=later
    )
    assert status is DeliveryStatus.PENDING

    # Same pass (began before the failure): not taken again.
    assert (
        store.claim_deliveries(
            digest.id, owner="a", limit=1, lease_until=lease, now=later, pass_started=T0
        )
        == []
    )
    # A pass that began at the failure's moment or later takes it.
    (again,) = store.claim_deliveries(
        digest.id, owner="a", limit=1, lease_until=lease, now=later, pass_started=later
    )
    assert (again.id, again.attempts) == (claim.id, 1)


def test_extend_lease_moves_only_the_owners_rows(store: Store) -> None:
    add_active(store, 3)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)
    mine = store.claim_deliveries(
        digest.id, owner="a", limit=2, lease_until=lease, now=T0, pass_started=T0
    )
    theirs = store.claim_deliveries(
        digest.id, owner="b", limit=2, lease_until=lease, now=T0, pass_started=T0
    )
    assert store.mark_sent(mine[1].id, owner="a", now=T0) is True
    longer = T0 + timedelta(minutes=20)

    held = store.extend_lease(
        "a", [c.id for c in mine + theirs], lease_until=longer, now=T0 + timedelta(minutes=4)
    )

    assert held == {mine[0].id}
    rows = {r.id: r for r in store.deliveries(digest.id)}
    assert rows[mine[0].id].lease_until == longer
    assert rows[theirs[0].id].lease_until == lease
    assert rows[mine[1].id].lease_until is None


def test_sent_skipped_failed_and_released_rows_are_recorded(store: Store) -> None:
    add_active(store, 5)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)
    c = store.claim_deliveries(
        digest.id, owner="a", limit=5, lease_until=lease, now=T0, pass_started=T0
    )
    at = T0 + timedelta(minutes=1)
    long_reason = "한" * 1500

    assert store.mark_sent(c[0].id, owner="a", now=at) is True
    assert store.mark_sent(c[0].id, owner="a", now=at) is False  # once only
    assert store.mark_skipped(c[1].id, owner="a", reason=long_reason, now=at) is True
    assert store.mark_skipped(c[1].id, owner="a", reason="again", now=at) is False
    failed = store.record_delivery_failure(
        c[2], owner="a", error="550 no such user " * 100, permanent=True, max_attempts=1, now=at
    )
    retry = store.record_delivery_failure(
        c[3], owner="a", error="550 no such user", permanent=True, max_attempts=2, now=at
    )
    assert (failed, retry) == (DeliveryStatus.FAILED, DeliveryStatus.PENDING)
    assert store.release_claims("a", [c[4].id, c[0].id]) == 1

    rows = {r.id: r for r in store.deliveries(digest.id)}
    sent = rows[c[0].id]
    assert (sent.status, sent.sent_at, sent.lease_until, sent.last_error, sent.attempts) == (
        DeliveryStatus.SENT,
        at,
        None,
        None,
        0,
    )
    skipped = rows[c[1].id]
    assert (skipped.status, skipped.lease_until, skipped.sent_at) == (
        DeliveryStatus.SKIPPED,
        None,
        None,
    )
    assert skipped.last_error == "한" * 1000
    gone = rows[c[2].id]
    assert (gone.status, gone.attempts, gone.lease_until) == (DeliveryStatus.FAILED, 1, None)
    assert gone.last_error == ("550 no such user " * 100)[:1000]
    again = rows[c[3].id]
    assert (again.status, again.attempts, again.last_error) == (
        DeliveryStatus.PENDING,
        1,
        "550 no such user",
    )
    released = rows[c[4].id]
    assert (released.status, released.lease_owner, released.lease_until, released.attempts) == (
        DeliveryStatus.PENDING,
        None,
        None,
        0,
    )
    assert store.delivery_counts(digest.id) == {
        DeliveryStatus.PENDING: 2,
        DeliveryStatus.SENDING: 0,
        DeliveryStatus.SENT: 1,
        DeliveryStatus.FAILED: 1,
        DeliveryStatus.SKIPPED: 1,
    }
    other = make_digest(store, end=datetime(2026, 11, 30, tzinfo=UTC))
    assert other.id is not None
    assert store.deliveries(other.id) == []
    assert set(store.delivery_counts(other.id).values()) == {0}


@pytest.mark.parametrize(("attempts_before", "max_attempts"), [(0, 3), (1, 3), (2, 3), (4, 5)])
def test_permanent_refusals_fail_a_row_at_max_attempts(
    store: Store, attempts_before: int, max_attempts: int
) -> None:
    add_active(store, 1)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    (claim,) = store.claim_deliveries(
        digest.id, owner="a", limit=1, lease_until=T0, now=T0, pass_started=T0
    )
    claim = replace(claim, attempts=attempts_before)

    status = store.record_delivery_failure(
        claim, owner="a", error="550", permanent=True, max_attempts=max_attempts, now=T0
    )
    temporary = store.record_delivery_failure(
        claim, owner="a", error="451", permanent=False, max_attempts=1, now=T0
    )

    expected = (
        DeliveryStatus.FAILED if attempts_before + 1 >= max_attempts else DeliveryStatus.PENDING
    )
    assert status is expected
    assert temporary is DeliveryStatus.PENDING
    (row,) = store.deliveries(digest.id)
    assert (row.status, row.attempts) == (expected, attempts_before + 1)


def test_a_claim_takes_only_its_digests_claimable_rows_of_active_subscribers(
    store: Store,
) -> None:
    emails = add_active(store, 4)
    digest = make_digest(store)
    other = make_digest(store, end=datetime(2026, 11, 30, tzinfo=UTC))
    assert digest.id is not None and other.id is not None
    for d in (other, digest):
        store.create_deliveries(d.id or 0, message_id_tag="t", message_id_domain="x", now=T0)
    leaving = store.subscriber_by_email(emails[1])
    assert leaving is not None
    store.unsubscribe_subscriber(leaving.id, leaving.email, now=T0)
    lease = T0 + timedelta(minutes=5)
    (first,) = store.claim_deliveries(
        digest.id, owner="a", limit=1, lease_until=lease, now=T0, pass_started=T0
    )
    assert first.email in emails and first.email != emails[1]
    assert store.mark_sent(first.id, owner="a", now=T0) is True

    # One at a time: the sent row and the unsubscribed reader's are passed over.
    taken = []
    while claim := store.claim_deliveries(
        digest.id, owner="a", limit=1, lease_until=lease, now=T0, pass_started=T0
    ):
        assert len(claim) == 1 and claim[0].digest_id == digest.id
        taken.append(claim[0].email)
        assert len(taken) < 10
    assert sorted([first.email, *taken]) == sorted(e for e in emails if e != emails[1])
    untouched = store.delivery_counts(other.id)
    assert (untouched[DeliveryStatus.SENDING], untouched[DeliveryStatus.SENT]) == (0, 0)
    assert {r.lease_owner for r in store.deliveries(other.id)} == {None}


def test_writes_by_the_owner_change_only_rows_it_is_still_sending(store: Store) -> None:
    add_active(store, 2)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)
    mine, theirs = store.claim_deliveries(
        digest.id, owner="a", limit=2, lease_until=lease, now=T0, pass_started=T0
    )
    store.release_claims("a", [theirs.id])
    (theirs,) = store.claim_deliveries(
        digest.id, owner="b", limit=1, lease_until=lease, now=T0, pass_started=T0
    )
    assert store.mark_sent(mine.id, owner="a", now=T0) is True

    # A late failure report, for a row sent already or held by another sender.
    for claim in (mine, theirs):
        store.record_delivery_failure(
            claim, owner="a", error="451", permanent=False, max_attempts=3, now=T0
        )

    rows = {r.id: r for r in store.deliveries(digest.id)}
    assert (rows[mine.id].status, rows[mine.id].attempts) == (DeliveryStatus.SENT, 0)
    assert (rows[theirs.id].status, rows[theirs.id].lease_owner) == (
        DeliveryStatus.SENDING,
        "b",
    )
    assert rows[theirs.id].attempts == 0


def test_claims_and_failures_stamp_the_time_a_pass_compares_with(store: Store) -> None:
    add_active(store, 1)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)

    def claim(now: timedelta, pass_started: timedelta) -> list[int]:
        return [
            c.id
            for c in store.claim_deliveries(
                digest.id or 0,
                owner="a",
                limit=1,
                lease_until=lease,
                now=T0 + now,
                pass_started=T0 + pass_started,
            )
        ]

    (row,) = claim(timedelta(seconds=10), timedelta(0))
    assert store.release_claims("a", [row]) == 1  # released: the claim's time stays
    assert claim(timedelta(seconds=11), timedelta(seconds=5)) == []
    assert claim(timedelta(seconds=20), timedelta(seconds=10)) == [row]
    assert (
        store.claim_deliveries(
            digest.id, owner="b", limit=1, lease_until=lease, now=T0, pass_started=T0
        )
        == []
    )  # still leased to "a"
    # Its lease runs out; "a" takes the row over again, then reports a failure.
    (claimed,) = store.claim_deliveries(
        digest.id,
        owner="a",
        limit=1,
        lease_until=lease + timedelta(minutes=5),
        now=lease + timedelta(seconds=1),
        pass_started=T0,
    )
    at = lease + timedelta(seconds=40)
    store.record_delivery_failure(
        claimed, owner="a", error="451", permanent=False, max_attempts=3, now=at
    )
    # The failure's time counts, not the claim's: a pass begun before it waits.
    assert claim(timedelta(minutes=6), timedelta(minutes=5, seconds=30)) == []
    assert claim(timedelta(minutes=6), timedelta(minutes=5, seconds=40)) == [row]


def test_a_variant_splits_at_its_last_separator() -> None:
    assert parse_variant('["a|b"]|en') == (("a|b",), "en")
    assert parse_variant('["reviews", "ko-pick"]|') == (("reviews", "ko-pick"), None)
    assert parse_variant("|ko") == (None, "ko")


def test_rows_made_at_a_time_in_another_zone_are_claimable_at_that_instant(store: Store) -> None:
    # The ledger compares instants, whatever zone the caller's clock is in.
    add_active(store, 1)
    digest = make_digest(store)
    assert digest.id is not None
    seoul = T0.astimezone(ZoneInfo("Asia/Seoul"))
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=seoul)
    lease = T0 + timedelta(minutes=5)
    before = T0 - timedelta(seconds=1)

    assert (
        store.claim_deliveries(
            digest.id, owner="a", limit=1, lease_until=lease, now=before, pass_started=before
        )
        == []
    )
    assert (
        len(
            store.claim_deliveries(
                digest.id, owner="a", limit=1, lease_until=lease, now=T0, pass_started=T0
            )
        )
        == 1
    )


def test_extending_a_lease_touches_only_the_named_rows_and_stamps_them(store: Store) -> None:
    add_active(store, 2)
    digest = make_digest(store)
    assert digest.id is not None
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=T0)
    lease = T0 + timedelta(minutes=5)
    one, two = store.claim_deliveries(
        digest.id, owner="a", limit=2, lease_until=lease, now=T0, pass_started=T0
    )
    extended = T0 + timedelta(minutes=9)

    assert store.extend_lease(
        "a", [one.id], lease_until=extended, now=T0 + timedelta(seconds=30)
    ) == {one.id}

    rows = {r.id: r for r in store.deliveries(digest.id)}
    assert (rows[one.id].lease_until, rows[two.id].lease_until) == (extended, lease)
    # Released unsent, a row keeps the time of its last extension: a pass
    # begun before that waits for the next one.
    assert store.release_claims("a", [one.id, two.id]) == 2
    started = T0 + timedelta(seconds=20)
    again = store.claim_deliveries(
        digest.id, owner="b", limit=2, lease_until=lease, now=started, pass_started=started
    )
    assert [c.id for c in again] == [two.id]
