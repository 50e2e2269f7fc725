"""What each reader's copy of the digest carries, as the real SMTP server receives it.

The links are the reader's own (signed for their id and address), however
the site's URL is written; headers stay within the line length mail
servers accept, whatever the subject and site title; a test copy links to
nobody's unsubscribe page; dot lines survive both ways of sending; each
reader's edition (sections, language, ``digest.when_empty``) is the one
their ledger row asks for. These pin what ``aggregator/deliver.py`` promises
in its docstrings, so a small mistake in it (the mutation run of
``scripts/mutation deliver``) turns a test red.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from aggregator import deliver
from aggregator.config import parse_config
from aggregator.deliver import (
    DeliveryReport,
    MessageBuilder,
    SmtpConnection,
    deliver_digest,
    lease_margin,
    list_id,
    message_id_domain,
    open_ledger,
    send_test_copy,
)
from aggregator.errors import DeliveryError
from aggregator.mail.wire import dot_stuff
from aggregator.models import DeliveryStatus, Digest, ReturnPath, Site, SmtpSettings
from aggregator.render import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from aggregator.tokens import Tokens
from tests.support.http import unused_port
from tests.test_editions import MARKERS, _config, _issue, _sections_seen, _subscribe
from tests.test_mail_readers import config_yaml

if TYPE_CHECKING:
    from tests.support.smtp import ReceivedMessage, SmtpFixture

SECRET = "test-secret-0123456789abcdef"
END = datetime(2026, 11, 23, tzinfo=UTC)
# Lines that SMTP's transparency rule touches: one dot, a dot and text, two dots.
DOT_LINES = ".\n. a line starting with a dot\n..two dots\n"


def _site(url: str, title: str = "Korean Film Digest") -> Site:
    return Site(
        title=title,
        url=url,
        sender_email="digest@example.org",
        sender_name="한국 영화 다이제스트",
    )


def _render(digest: Digest) -> tuple[str, str]:
    html = (
        f"<html><body><h1>{digest.subject}</h1>"
        f'<p><a href="{UNSUBSCRIBE_PLACEHOLDER}">Unsubscribe</a>'
        f' <a href="{PREFERENCES_PLACEHOLDER}">Preferences</a></p></body></html>'
    )
    text = (
        f"{digest.subject}\n\n{DOT_LINES}\n"
        f"Unsubscribe: {UNSUBSCRIBE_PLACEHOLDER}\nPreferences: {PREFERENCES_PLACEHOLDER}\n"
    )
    return html, text


def _digest(
    store: Store, subject: str = "Korean Film Digest: week of Nov 16", *, end: datetime = END
) -> Digest:
    digest = Digest(
        period_start=end - timedelta(days=7), period_end=end, subject=subject, sections=()
    )
    return store.save_digest(digest, _render, now=end)


def _deliver(
    store: Store, digest: Digest, site: Site, smtp: SmtpSettings, **kwargs: object
) -> DeliveryReport:
    kwargs.setdefault("retry_delay", 0.05)
    return asyncio.run(
        deliver_digest(store, digest, site=site, smtp=smtp, secret=SECRET, **kwargs)  # type: ignore[arg-type]
    )


def _parts(received: ReceivedMessage) -> tuple[str, str]:
    text = received.message.get_body(("plain",))
    html = received.message.get_body(("html",))
    assert text is not None and html is not None
    # The parts keep the CRLF line ends of the wire; compare with plain newlines.
    return text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


# ------------------------------------------------------------------ the links


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://digest.example.org/", "https://digest.example.org/"),
        ("https://digest.example.org", "https://digest.example.org/"),
        ("https://example.org/kfd/", "https://example.org/kfd/"),
        ("http://127.0.0.1:8080/k/digest", "http://127.0.0.1:8080/k/digest/"),
    ],
)
def test_each_reader_gets_their_own_signed_links_however_the_site_url_ends(
    store: Store, smtp_server: SmtpFixture, url: str, base: str
) -> None:
    now = datetime.now(UTC)
    named, _ = store.add_subscriber("kim@example.org", name="김지운", now=now, active=True)
    bare, _ = store.add_subscriber("lee@example.org", now=now, active=True)
    digest = _digest(store)

    report = _deliver(store, digest, _site(url), smtp_server.settings())

    assert report.sent == 2
    tokens = Tokens(SECRET)
    for subscriber in (named, bare):
        (received,) = smtp_server.to(subscriber.email)
        unsubscribe = (
            f"{base}unsubscribe/{tokens.unsubscribe_token(subscriber.id, subscriber.email)}"
        )
        preferences = (
            f"{base}preferences/{tokens.preferences_token(subscriber.id, subscriber.email)}"
        )
        text, html = _parts(received)
        assert f"Unsubscribe: {unsubscribe}\n" in text
        assert f"Preferences: {preferences}\n" in text
        assert f'href="{unsubscribe}"' in html and f'href="{preferences}"' in html
        assert str(received.message["List-Unsubscribe"]) == f"<{unsubscribe}>"
        # The two placeholders are gone from every part.
        raw = received.data.decode("ascii")
        assert "%%" not in raw
        # The boundary starts with "=", which quoted-printable never writes unescaped.
        boundary = received.message.get_boundary()
        assert boundary is not None and boundary.startswith("=_")
        # SMTP's dot lines come out as they went in.
        assert DOT_LINES in text
    (to_bare,) = smtp_server.to("lee@example.org")
    assert str(to_bare.message["To"]) == "lee@example.org"  # no name: the bare address
    (to_named,) = smtp_server.to("kim@example.org")
    assert to_named.message["To"].addresses[0].display_name == "김지운"


@pytest.mark.parametrize("url", ["https://digest.example.org/", "https://digest.example.org"])
def test_a_test_copy_unsubscribes_nobody_and_offers_the_subscribe_page(
    store: Store, smtp_server: SmtpFixture, url: str
) -> None:
    digest = _digest(store)
    site = _site(url)

    message_id = asyncio.run(
        send_test_copy(
            digest, "editor@example.org", site=site, smtp=smtp_server.settings(), secret=SECRET
        )
    )

    (received,) = smtp_server.messages
    assert received.recipients == ("editor@example.org",)
    assert received.message["Message-ID"] == message_id
    # make_msgid's form with our tag and the sender's domain: <time.pid.random.test@domain>
    assert re.fullmatch(r"<[0-9.]+\.test@example\.org>", message_id), message_id
    token = Tokens(SECRET).unsubscribe_token(0, "editor@example.org")
    unsubscribe = f"https://digest.example.org/unsubscribe/{token}"
    assert str(received.message["List-Unsubscribe"]) == f"<{unsubscribe}>"
    assert Tokens(SECRET).read_unsubscribe(token).subscriber_id == 0  # nobody's id
    text, html = _parts(received)
    assert f"Unsubscribe: {unsubscribe}\n" in text
    assert "Preferences: https://digest.example.org/subscribe\n" in text
    assert 'href="https://digest.example.org/subscribe"' in html
    assert str(received.message["To"]) == "editor@example.org"
    assert DOT_LINES in text
    assert store.deliveries(digest.id or 0) == []  # the ledger is not touched


@pytest.mark.parametrize("name", ["홍길동", "Lee, Chang-dong", None])
def test_the_wire_form_is_the_built_message_dot_stuffed(store: Store, name: str | None) -> None:
    digest = _digest(store)
    builder = MessageBuilder(digest, _site("https://digest.example.org/"))
    date = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    fields = {
        "email": "reader@example.org",
        "name": name,
        "message_id": "<kfd.1.2@example.org>",
        "unsubscribe": "https://digest.example.org/unsubscribe/u",
        "preferences": "https://digest.example.org/preferences/p",
        "date": date,
    }
    built = builder.build(**fields)  # type: ignore[arg-type]
    wire = builder.build_wire(**fields)  # type: ignore[arg-type]

    assert wire.plain() == built
    assert wire.stuffed == dot_stuff(built)
    assert b"\r\n...two dots\r\n" in wire.stuffed and b"\r\n..two dots\r\n" in built
    import email
    import email.policy

    message = email.message_from_bytes(built, policy=email.policy.default)
    assert message["Date"].datetime == date
    assert message["Message-ID"] == "<kfd.1.2@example.org>"
    display = message["To"].addresses[0].display_name
    assert display == (name or "")
    # Without a preferences link (a test copy) the subscribe page stands in.
    fields.pop("preferences")
    fields.pop("date")
    plain = builder.build(**fields)  # type: ignore[arg-type]
    without = email.message_from_bytes(plain, policy=email.policy.default)
    body = without.get_body(("plain",))
    assert body is not None
    assert "Preferences: https://digest.example.org/subscribe\r\n" in body.get_content()
    assert (
        builder.build_wire(**fields).plain().split(b"Date: ")[1].split(b"\r\n", 1)[1]
        == (  # type: ignore[arg-type]
            plain.split(b"Date: ")[1].split(b"\r\n", 1)[1]
        )
    )


# ------------------------------------------------------------------ headers


@pytest.mark.parametrize(
    ("subject", "title", "phrase"),
    [
        ("Korean Film Digest: week of Nov 16", "Korean Film Digest", "Korean Film Digest"),
        (
            "이번 주 한국 영화 소식 " * 6,
            '"한국 영화"   다이제스트 ' * 4,
            " ".join(["한국 영화 다이제스트"] * 4),
        ),
        ("봉준호 — " + "x" * 120, 'The "Weekly"\tDigest', "The Weekly Digest"),
    ],
    ids=["ascii", "hangul-long", "quotes-and-tabs"],
)
def test_headers_fold_within_78_characters_and_decode_to_what_was_given(
    store: Store, smtp_server: SmtpFixture, subject: str, title: str, phrase: str
) -> None:
    store.add_subscriber("reader@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store, subject)

    _deliver(store, digest, _site("https://digest.example.org/", title), smtp_server.settings())

    (received,) = smtp_server.messages
    # The encoded headers count their own name in the first line's length
    # (RFC 5322's 78 characters). Each physical line of those two headers:
    head = received.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    current, checked = "", 0
    for line in head.split("\r\n"):
        if not line[:1].isspace():
            current = line.split(":", 1)[0]
        if current in ("Subject", "List-Id"):
            assert len(line) <= 78, line
            checked += 1
    assert checked >= 2
    assert str(received.message["Subject"]) == " ".join(subject.split())
    # Quotes dropped and white space collapsed: the phrase needs no quoting.
    assert str(received.message["List-Id"]) == f"{phrase} <weekly.example.org>"


@pytest.mark.parametrize("title", ["", '""', "  "])
def test_a_site_without_a_title_sends_a_bare_list_id(
    store: Store, smtp_server: SmtpFixture, title: str
) -> None:
    store.add_subscriber("reader@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    _deliver(store, digest, _site("https://digest.example.org/", title), smtp_server.settings())
    (received,) = smtp_server.messages
    assert str(received.message["List-Id"]) == "<weekly.example.org>"
    assert b"\r\nList-Id: <weekly.example.org>\r\n" in received.data  # no empty phrase


@pytest.mark.parametrize(
    ("return_path", "expected"),
    [
        (ReturnPath(address="bounces@example.org"), "bounces@example.org"),
        (ReturnPath(verp_domain="bounces.example.org"), "verp"),
        (None, "digest@example.org"),
    ],
)
def test_mail_from_is_the_configured_bounce_address_else_the_sender(
    store: Store, smtp_server: SmtpFixture, return_path: ReturnPath | None, expected: str
) -> None:
    store.add_subscriber("reader@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    settings = smtp_server.settings(return_path=return_path)
    _deliver(store, digest, _site("https://digest.example.org/"), settings)
    (received,) = smtp_server.messages
    if expected == "verp":  # signed for this delivery: digest and subscriber
        from aggregator.mail.verp import verp_address

        (row,) = store.deliveries(digest.id or 0)
        expected = verp_address(SECRET, "bounces.example.org", row.digest_id, row.subscriber_id)
    assert received.mail_from == expected
    assert str(received.message["From"].addresses[0].addr_spec) == "digest@example.org"


# ------------------------------------------------------------------ failures


def test_a_refusal_given_up_on_is_recorded_with_the_servers_reply(
    store: Store, smtp_server: SmtpFixture
) -> None:
    store.add_subscriber("gone@example.org", now=datetime.now(UTC), active=True)
    store.add_subscriber("kim@example.org", now=datetime.now(UTC), active=True)
    smtp_server.handler.reject("gone@example.org")
    digest = _digest(store)

    report = _deliver(
        store, digest, _site("https://digest.example.org/"), smtp_server.settings(max_attempts=2)
    )

    assert (report.sent, report.failed) == (1, 1)
    assert store.is_suppressed("gone@example.org")
    (suppression,) = store.suppressions()
    assert "550 5.1.1 no such mailbox (test)" in suppression.reason, suppression


@pytest.fixture
def closing_listener() -> Iterator[tuple[int, list[float]]]:
    """A TCP port whose server accepts each connection and closes it at once
    (a mail server going away); yields the port and the accept times."""
    port = unused_port()
    accepted: list[float] = []
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_reconnecting_tries_three_times_with_growing_pauses_then_names_the_server(
    closing_listener: tuple[int, list[float]],
) -> None:
    port, accepted = closing_listener
    connection = SmtpConnection(SmtpSettings(host="127.0.0.1", port=port, timeout=5.0))

    with pytest.raises(DeliveryError, match=rf"cannot connect to SMTP server 127\.0\.0\.1:{port}"):
        asyncio.run(connection.reconnect())

    assert len(accepted) == 3
    first_pause, second_pause = accepted[1] - accepted[0], accepted[2] - accepted[1]
    # 0.2 s, then four times that: a blip is ridden out fast, an outage not hammered.
    assert 0.2 <= first_pause < 0.7, first_pause
    assert 0.8 <= second_pause < 2.0, second_pause


def test_the_reconnect_pauses_are_the_documented_ones() -> None:
    """README, "Retries and leases": 0.2 s, then 0.8 s. The timing test above
    allows a loaded machine its slack; the numbers themselves are pinned here."""
    assert deliver.RECONNECT_PAUSES == (0.2, 0.8)


# ------------------------------------------------------------------ pacing


@pytest.mark.parametrize(("rate", "count"), [(4.0, 5), (0.8, 2)])
def test_rate_limit_spaces_messages_by_exactly_its_interval(
    store: Store, smtp_server: SmtpFixture, rate: float, count: int
) -> None:
    for i in range(count):
        store.add_subscriber(f"r{i}@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)

    _deliver(
        store,
        digest,
        _site("https://digest.example.org/"),
        smtp_server.settings(rate_per_second=rate),
    )

    times = [m.time for m in smtp_server.messages]
    assert len(times) == count
    interval = 1.0 / rate
    span = times[-1] - times[0]
    assert span >= (count - 1) * interval * 0.95, span
    assert span < (count - 1) * interval + 0.8, span


def test_no_rate_limit_sends_without_pauses(store: Store, smtp_server: SmtpFixture) -> None:
    for i in range(6):
        store.add_subscriber(f"r{i}@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    _deliver(store, digest, _site("https://digest.example.org/"), smtp_server.settings())
    times = [m.time for m in smtp_server.messages]
    assert len(times) == 6
    assert times[-1] - times[0] < 2.0  # a pause of a second each would take five


# ------------------------------------------------------------------ editions


def test_editions_without_a_config_skip_empty_views_and_render_each_view_once(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = _config()
    digest = _issue(store, config, {"ko-pick": 2, "previews": 1})
    _subscribe(store, "kopick@example.org", ("ko-pick",))
    _subscribe(store, "kopick2@example.org", ("ko-pick",))
    _subscribe(store, "empty@example.org", ("more",))
    _subscribe(store, "all@example.org", None)
    # The caller's Digest may come without its sections (a listing): the
    # views are made from the issue as stored.
    listed = replace(digest, sections=())

    report = _deliver(store, listed, config.site, smtp_server.settings())

    assert (report.sent, report.skipped, report.renders) == (3, 1, 1)
    assert smtp_server.to("empty@example.org") == []
    for email in ("kopick@example.org", "kopick2@example.org"):
        (received,) = smtp_server.to(email)
        assert _sections_seen(received) == {"ko-pick"}
    (everything,) = smtp_server.to("all@example.org")
    assert _sections_seen(everything) == {"ko-pick", "previews"}
    statuses = {d.status for d in store.deliveries(digest.id or 0)}
    assert statuses == {DeliveryStatus.SENT, DeliveryStatus.SKIPPED}


def test_when_empty_note_from_the_config_sends_the_empty_view(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = parse_config(config_yaml(cap=10) + "  when_empty: note\n")
    digest = _issue(store, config, {"ko-pick": 2})
    _subscribe(store, "previews@example.org", ("previews",))
    report = _deliver(store, digest, config.site, smtp_server.settings(), config=config)
    assert (report.sent, report.skipped, report.renders) == (1, 0, 1)
    (received,) = smtp_server.to("previews@example.org")
    assert _sections_seen(received) == set()


def test_a_reader_of_another_language_gets_the_whole_issue_in_it(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = _config()
    digest = _issue(store, config, {"ko-pick": 2, "previews": 1, None: 1})
    found, _ = store.add_subscriber("ko@example.org", now=datetime.now(UTC), active=True)
    store.set_preferences(found.id, found.email, sections=None, language="ko")
    _subscribe(store, "en@example.org", None)

    report = _deliver(store, digest, config.site, smtp_server.settings(), config=config)

    assert (report.sent, report.renders) == (2, 1)
    (korean,) = smtp_server.to("ko@example.org")
    (english,) = smtp_server.to("en@example.org")
    assert _sections_seen(korean) == _sections_seen(english) == set(MARKERS)
    assert str(english.message["Subject"]) == digest.subject
    korean_subject = str(korean.message["Subject"])
    assert korean_subject != digest.subject and "년" in korean_subject, korean_subject


# ------------------------------------------------------------------ the session and the ledger


def test_a_run_opens_the_ledger_names_itself_and_says_goodbye(
    store: Store, smtp_server: SmtpFixture, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        store.add_subscriber(f"r{i}@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    site = _site("https://digest.example.org/")
    assert digest.id is not None

    counts = open_ledger(store, digest.id, secret=SECRET, site=site)
    assert counts[DeliveryStatus.PENDING] == 3 and sum(counts.values()) == 3
    # Opening again adds nothing, and tells the same.
    assert open_ledger(store, digest.id, secret=SECRET, site=site) == counts

    started = time.monotonic()
    with caplog.at_level("INFO", logger="aggregator.deliver"):
        report = _deliver(store, digest, site, smtp_server.settings())
    took = time.monotonic() - started
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("digest #")]
    assert len(summary) == 1 and re.fullmatch(
        rf"digest #{digest.id}: sent 3, failed 0, skipped 0 \(empty sections\), "
        r"still pending 0 \([0-9.]+ msg/s\)",
        summary[0],
    ), summary

    assert report.sent == 3
    # The report tells what the ledger holds afterwards, for this digest.
    assert report.digest_id == digest.id
    assert report.counts == store.delivery_counts(digest.id)
    assert (report.counts[DeliveryStatus.SENT], report.pending) == (3, 0)
    assert 0 < report.elapsed <= took
    # Without an owner given, the lease owner is this process: host, pid, 8 hex digits.
    owners = {d.lease_owner for d in store.deliveries(digest.id)}
    assert owners == {report.owner}
    host, pid, tag = report.owner.rsplit(":", 2)
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert re.fullmatch(r"[0-9a-f]{8}", tag), report.owner
    # One session for the run, closed with QUIT (not left for the server to time out).
    assert len({m.peer for m in smtp_server.messages}) == 1
    smtp_server.wait_idle()
    assert smtp_server.handler.quits == 1


@pytest.mark.parametrize(
    ("timeout", "rate", "batch", "lease"),
    [
        (10.0, 0.0, 50, 60.0),  # the one-minute floor
        (30.0, 0.0, 50, 90.0),  # three server timeouts
        (10.0, 2.0, 50, 80.0),  # three timeouts and two batches at the rate
        (5.0, 0.5, 10, 60.0),  # 15 + 2 * 20 s = 55 s: still the floor
        (8.0, 0.8, 20, 74.0),  # a rate below one message a second: 24 + 2 * 25 s
    ],
)
def test_the_default_lease_covers_three_timeouts_and_two_batches(
    store: Store, smtp_server: SmtpFixture, timeout: float, rate: float, batch: int, lease: float
) -> None:
    """Read from the ledger while the batch is being sent: each claimed row's
    lease ends ``lease`` seconds after the claim."""
    store.add_subscriber("a@example.org", now=datetime.now(UTC), active=True)
    store.add_subscriber("b@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    assert digest.id is not None
    seen: list[datetime] = []

    def on_sent(_delivery: object) -> None:
        seen.extend(
            d.lease_until
            for d in store.deliveries(digest.id or 0)
            if d.status is DeliveryStatus.SENDING and d.lease_until is not None
        )

    # A server slower than MARK_WINDOW: each sent mark is its own commit, so
    # on_sent runs after each message, while the rest of the batch is held.
    smtp_server.handler.delay = 0.05
    before = datetime.now(UTC)
    report = asyncio.run(
        deliver_digest(
            store,
            digest,
            site=_site("https://digest.example.org/"),
            smtp=smtp_server.settings(timeout=timeout, rate_per_second=rate),
            secret=SECRET,
            batch_size=batch,
            on_sent=on_sent,  # type: ignore[arg-type]
        )
    )
    after = datetime.now(UTC)
    assert report.sent == 2
    assert len(seen) == 1  # the second row, still held while the first was reported
    (lease_until,) = seen
    # The batch was claimed once, between these two instants.
    low, high = before + timedelta(seconds=lease), after + timedelta(seconds=lease)
    assert low <= lease_until <= high, (lease_until - before).total_seconds()


@pytest.mark.parametrize(
    ("timeout", "lease", "margin"),
    [
        (10.0, 60.0, 15.0),  # one timeout and 5 s
        (30.0, 90.0, 35.0),  # the default lease for a 30 s timeout
        (5.0, 300.0, 10.0),  # the queue's five-minute send lease
        (30.0, 60.0, 30.0),  # at most half the lease
        (10.0, 20.0, 10.0),
        (0.5, 1.0, 0.5),
    ],
)
def test_a_lease_is_extended_with_a_timeout_and_5_s_left_at_most_half_of_it(
    timeout: float, lease: float, margin: float
) -> None:
    """README, "Retries and leases": the documented numbers, as literals."""
    assert lease_margin(timeout, timedelta(seconds=lease)) == timedelta(seconds=margin)


@pytest.mark.parametrize("lease", [timedelta(minutes=2), timedelta(minutes=10), timedelta(hours=1)])
def test_a_batch_is_claimed_until_a_lease_from_the_claim(
    store: Store, smtp_server: SmtpFixture, monkeypatch: pytest.MonkeyPatch, lease: timedelta
) -> None:
    """The rows a claim takes are reserved for ``lease`` from that moment on,
    read from the ledger right after the claim statement (before the sender
    could extend anything): a claim that wrote an expired lease would leave
    them to any other sender."""
    for i in range(3):
        store.add_subscriber(f"r{i}@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    assert digest.id is not None
    claim = store.claim_deliveries
    claims: list[tuple[datetime, list[datetime | None]]] = []

    def claim_and_read(*args: Any, **kwargs: Any) -> Any:
        batch = claim(*args, **kwargs)
        if batch:
            rows = store.deliveries(digest.id or 0)
            leases = [d.lease_until for d in rows if d.status is DeliveryStatus.SENDING]
            claims.append((datetime.now(UTC), leases))
        return batch

    monkeypatch.setattr(store, "claim_deliveries", claim_and_read)
    before = datetime.now(UTC)
    report = _deliver(
        store, digest, _site("https://digest.example.org/"), smtp_server.settings(), lease=lease
    )

    assert report.sent == 3
    [(after, leases)] = claims  # one batch of three, claimed between these two instants
    assert len(leases) == 3
    assert all(u is not None and before + lease <= u <= after + lease for u in leases), leases


def test_a_deferred_address_is_retried_30_s_later_by_default(
    store: Store, smtp_server: SmtpFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """README, "Retries and leases": without ``retry_delay`` (the scheduler and
    the queue's send job pass none) the next pass starts 30 s later. The run is
    cancelled once it says so, instead of waiting those 30 s; the deferred row
    is left pending for the next run."""
    store.add_subscriber("later@example.org", now=datetime.now(UTC), active=True)
    store.add_subscriber("now@example.org", now=datetime.now(UTC), active=True)
    smtp_server.handler.defer("later@example.org", times=1)
    digest = _digest(store)
    assert digest.id is not None
    caplog.set_level("INFO", logger="aggregator.deliver")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]

    async def scenario() -> None:
        run = asyncio.create_task(
            deliver_digest(
                store,
                digest,
                site=_site("https://digest.example.org/"),
                smtp=smtp_server.settings(max_attempts=2),
                secret=SECRET,
            )
        )
        deadline = time.monotonic() + 10
        while not said() and not run.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not run.done()  # waiting for its second pass
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(scenario())

    assert said() == ["retrying 1 deliveries in 30.0s"]
    assert [m.recipients for m in smtp_server.messages] == [("now@example.org",)]
    emails = {
        s.id: s.email
        for s in map(store.subscriber_by_email, ["later@example.org", "now@example.org"])
        if s
    }
    rows = {emails[d.subscriber_id]: (d.status, d.attempts) for d in store.deliveries(digest.id)}
    assert rows == {
        "later@example.org": (DeliveryStatus.PENDING, 1),
        "now@example.org": (DeliveryStatus.SENT, 0),
    }


def test_a_dropped_connection_is_recorded_with_the_clients_reason(
    store: Store, smtp_server: SmtpFixture
) -> None:
    for i in range(3):
        store.add_subscriber(f"r{i}@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    assert digest.id is not None
    smtp_server.handler.drop_after(1)

    report = _deliver(
        store, digest, _site("https://digest.example.org/"), smtp_server.settings(max_attempts=1)
    )

    # One pass only: the row on the wire at the drop is left pending, with why.
    assert (report.sent, report.retried) == (2, 1)
    (dropped,) = [d for d in store.deliveries(digest.id) if d.status is DeliveryStatus.PENDING]
    assert dropped.last_error is not None
    reason = dropped.last_error.removeprefix("connection lost: ")
    assert reason != dropped.last_error and reason not in ("", "None"), dropped.last_error


@pytest.mark.parametrize(
    "reply",
    ["500 5.5.2 syntax error (test)", "501 5.1.3 bad address (test)", "553 5.1.8 refused (test)"],
)
def test_every_5xx_at_rcpt_is_permanent_from_500_up(
    store: Store, smtp_server: SmtpFixture, reply: str, caplog: pytest.LogCaptureFixture
) -> None:
    gone = ["gone@example.org", "left@example.org"]
    for email in gone:
        store.add_subscriber(email, now=datetime.now(UTC), active=True)
        smtp_server.handler.reject(email, reply)
    digest = _digest(store)
    assert digest.id is not None
    caplog.set_level("INFO", logger="aggregator.deliver")

    report = _deliver(
        store, digest, _site("https://digest.example.org/"), smtp_server.settings(max_attempts=1)
    )

    assert report.failed == 2
    rows = store.deliveries(digest.id)
    assert [row.status for row in rows] == [DeliveryStatus.FAILED] * 2
    # The ledger keeps the address and the server's whole reply, and so does the log.
    assert [row.last_error for row in rows] == [f"{e}: {reply}" for e in gone]
    given_up = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert given_up == [f"giving up on {e}: {reply}" for e in gone]
    assert store.is_suppressed("gone@example.org")


def test_sending_before_connecting_is_a_lost_connection_not_a_crash() -> None:
    from aggregator.deliver import _ConnectionLost

    connection = SmtpConnection(SmtpSettings(host="127.0.0.1", port=unused_port()))
    with pytest.raises(_ConnectionLost, match="not connected"):
        asyncio.run(connection.send("a@example.org", "b@example.org", b"Subject: x\r\n\r\nx\r\n"))


# ------------------------------------------------------------------ passes and batches


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_deferred_addresses_are_tried_once_per_pass_with_the_delay_between(
    store: Store, smtp_server: SmtpFixture, max_attempts: int, caplog: pytest.LogCaptureFixture
) -> None:
    later = ["later1@example.org", "later2@example.org"]
    for email in [*later, "now@example.org"]:
        store.add_subscriber(email, now=datetime.now(UTC), active=True)
    for email in later:
        smtp_server.handler.defer(email, times=100)
    digest = _digest(store)
    assert digest.id is not None
    caplog.set_level("INFO", logger="aggregator.deliver")

    started = time.monotonic()
    report = _deliver(
        store,
        digest,
        _site("https://digest.example.org/"),
        smtp_server.settings(max_attempts=max_attempts),
        retry_delay=0.3,
    )
    took = time.monotonic() - started

    # max_attempts passes, one try each; the pause only between passes.
    assert smtp_server.handler.refusals == [(e, 451) for e in later] * max_attempts
    assert took >= 0.3 * (max_attempts - 1)
    assert (report.sent, report.retried, report.failed) == (1, 2 * max_attempts, 0)
    rows = [d for d in store.deliveries(digest.id) if d.attempts]
    assert [(d.status, d.attempts) for d in rows] == [(DeliveryStatus.PENDING, max_attempts)] * 2
    lines = [r.getMessage() for r in caplog.records]
    assert [m for m in lines if m.startswith("retrying")] == ["retrying 2 deliveries in 0.3s"] * (
        max_attempts - 1
    )
    reply = "451 4.3.0 try again later (test)"
    assert [m for m in lines if m.startswith("will retry")] == [
        f"will retry: {e}: {reply}" for e in later
    ] * max_attempts


def test_the_retry_pause_comes_after_the_first_pass_and_only_when_needed(
    store: Store, smtp_server: SmtpFixture
) -> None:
    store.add_subscriber("later@example.org", now=datetime.now(UTC), active=True)
    store.add_subscriber("now@example.org", now=datetime.now(UTC), active=True)
    smtp_server.handler.defer("later@example.org", times=1)
    digest = _digest(store)
    site = _site("https://digest.example.org/")

    _deliver(store, digest, site, smtp_server.settings(max_attempts=3), retry_delay=1.0)

    (first,) = smtp_server.to("now@example.org")
    (retried,) = smtp_server.to("later@example.org")
    assert retried.time - first.time >= 1.0  # the deferred address waited for the pause

    # A run with nothing to retry never pauses, however long the pause would be.
    store.add_subscriber("next@example.org", now=datetime.now(UTC), active=True)
    again = _digest(store, "Korean Film Digest: week of Nov 23", end=END + timedelta(days=7))
    started = time.monotonic()
    report = _deliver(store, again, site, smtp_server.settings(max_attempts=3), retry_delay=30.0)
    assert report.sent == 3
    assert time.monotonic() - started < 15.0


@pytest.mark.parametrize(("readers", "batch"), [(5, 2), (4, 1), (3, 3)])
def test_a_sender_holds_at_most_one_batch_at_a_time(
    store: Store, smtp_server: SmtpFixture, readers: int, batch: int
) -> None:
    for i in range(readers):
        store.add_subscriber(f"r{i}@example.org", now=datetime.now(UTC), active=True)
    digest = _digest(store)
    assert digest.id is not None
    held: list[int] = []
    smtp_server.handler.delay = 0.05  # one sent mark per commit (see the lease test)

    def on_sent(_delivery: object) -> None:
        rows = store.deliveries(digest.id or 0)
        held.append(sum(d.status is DeliveryStatus.SENDING for d in rows))

    report = asyncio.run(
        deliver_digest(
            store,
            digest,
            site=_site("https://digest.example.org/"),
            smtp=smtp_server.settings(),
            secret=SECRET,
            batch_size=batch,
            on_sent=on_sent,  # type: ignore[arg-type]
        )
    )

    assert report.sent == readers
    # After each message: what is left of its batch is still held, nothing more.
    expected = [
        min(batch, readers - start) - 1 - k
        for start in range(0, readers, batch)
        for k in range(min(batch, readers - start))
    ]
    assert held == expected


def test_a_deferral_and_a_drop_in_one_pass_are_both_retried_in_the_next(
    store: Store, smtp_server: SmtpFixture, caplog: pytest.LogCaptureFixture
) -> None:
    emails = [f"r{i}@example.org" for i in range(3)]
    for email in emails:
        store.add_subscriber(email, now=datetime.now(UTC), active=True)
    smtp_server.handler.defer(emails[0], times=1)  # 451 for the first address, once
    smtp_server.handler.drop_after(1)  # the connection goes at the third address's MAIL
    digest = _digest(store)
    caplog.set_level("INFO", logger="aggregator.deliver")

    report = _deliver(
        store,
        digest,
        _site("https://digest.example.org/"),
        smtp_server.settings(max_attempts=2),
        retry_delay=0.1,
    )

    assert sorted(r for m in smtp_server.messages for r in m.recipients) == emails
    assert (report.sent, report.retried, report.failed) == (3, 2, 0)
    assert smtp_server.handler.drops == 1
    lines = [r.getMessage() for r in caplog.records]
    assert [m for m in lines if m.startswith("retrying")] == ["retrying 2 deliveries in 0.1s"]
    (dropped,) = [m for m in lines if "dropped the connection" in m]
    assert re.fullmatch(
        rf"SMTP server 127\.0\.0\.1:{smtp_server.port} dropped the connection \(.+\); reconnecting",
        dropped,
    ), dropped
    assert "(None)" not in dropped


@pytest.mark.parametrize(
    ("sender", "url", "domain"),
    [
        ("digest@mail.example.net", "https://digest.example.org/", "mail.example.net"),
        ('"news@desk"@example.org', "https://digest.example.org/", "example.org"),
        ("digest", "https://news.example.org:8443/k/", "news.example.org"),
        ("", "file:///srv/site", "localhost"),
    ],
)
def test_message_ids_and_the_list_id_are_under_the_senders_domain(
    sender: str, url: str, domain: str
) -> None:
    """The right-hand side after the address's last "@", else the site's host."""
    site = replace(_site(url), sender_email=sender)
    assert message_id_domain(site) == domain
    assert list_id(site) == f"Korean Film Digest <weekly.{domain}>"
