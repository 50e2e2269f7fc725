"""When the sender commits its ``sent`` marks, and what a wire message carries for DKIM.

``sent`` marks (``aggregator/deliver.py`` docstring, point 2): a server that
took ``MARK_WINDOW`` or longer to accept a message has it marked right away;
against a fast one the marks wait, at most ``MARK_BATCH`` of them and at most
``MARK_WINDOW`` after the first. The moment of each commit is seen through
``on_sent`` (called once the mark is committed) against the number of
messages the real SMTP server had received then. The window is far from
every delay used here (0 s against a window of 60 s, 100 ms against the real
20 ms), so no result depends on the machine's speed.

These pin the fast paths' edges that the mutation run of
``scripts/mutation deliver`` found unchecked.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dkim
import pytest
import sqlalchemy
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from dkim.canonicalization import CanonicalizationPolicy

import aggregator.deliver
from aggregator.config import Config, parse_config
from aggregator.deliver import (
    MARK_BATCH,
    MARK_WINDOW,
    MessageBuilder,
    SmtpConnection,
    _ConnectionLost,
    deliver_digest,
)
from aggregator.errors import DeliveryError
from aggregator.mail.dkim import generate_key_pair
from aggregator.models import DeliveryStatus, Digest, DkimSettings, SmtpSettings
from aggregator.render import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER
from aggregator.store import Store
from aggregator.store.deliveries import ClaimedDelivery
from tests.support.http import unused_port
from tests.test_deliver import SECRET, SITE, add_active, make_digest
from tests.test_dkim import dns_for
from tests.test_editions import _issue, _subscribe
from tests.test_mail_readers import config_yaml

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def _send_recording_marks(
    store: Store, smtp_server: SmtpFixture, readers: int
) -> list[tuple[str, int]]:
    """Deliver to ``readers`` readers; for each committed mark, in order: the
    row's address and how many messages the server had received by then."""
    emails = add_active(store, readers)
    digest = make_digest(store)
    marks: list[tuple[str, int]] = []

    def on_sent(delivery: ClaimedDelivery) -> None:
        marks.append((delivery.email, len(smtp_server.messages)))

    report = asyncio.run(
        deliver_digest(
            store,
            digest,
            site=SITE,
            smtp=smtp_server.settings(),
            secret=SECRET,
            batch_size=100,  # one claimed batch: only the marks' own rules group them
            retry_delay=0.05,
            on_sent=on_sent,
        )
    )
    assert report.sent == readers
    assert sorted(e for e, _ in marks) == sorted(emails)
    assert store.delivery_counts(report.digest_id)[DeliveryStatus.SENT] == readers
    return marks


@pytest.mark.parametrize("readers", [1, MARK_BATCH - 1, MARK_BATCH, 2 * MARK_BATCH + 5])
def test_marks_against_a_fast_server_are_committed_in_groups_of_mark_batch(
    store: Store, smtp_server: SmtpFixture, monkeypatch: pytest.MonkeyPatch, readers: int
) -> None:
    # A window no run of this size reaches: only the group size and the end of
    # the batch decide when marks are committed.
    monkeypatch.setattr(aggregator.deliver, "MARK_WINDOW", 60.0)
    assert MARK_BATCH == 20  # README: at most 20 messages resent after a kill

    marks = _send_recording_marks(store, smtp_server, readers)

    # Each group is committed once its last message is accepted: after the
    # 20th, the 40th, ... and the rest at the end of the batch.
    expected = [min(readers, (i // MARK_BATCH + 1) * MARK_BATCH) for i in range(readers)]
    assert [seen for _, seen in marks] == expected


def test_marks_against_a_slow_server_are_committed_one_by_one(
    store: Store, smtp_server: SmtpFixture
) -> None:
    assert MARK_WINDOW == 0.02  # README: 20 ms
    smtp_server.handler.delay = 0.1  # five times the window: each message is "slow"

    marks = _send_recording_marks(store, smtp_server, 4)

    assert [seen for _, seen in marks] == [1, 2, 3, 4]


def _digest(text: str, html: str) -> Digest:
    end = datetime(2026, 11, 23, tzinfo=UTC)
    return Digest(
        period_start=end - timedelta(days=7),
        period_end=end,
        subject="Korean Film Digest: 이번 주",
        sections=(),
        html=html,
        text=text,
        id=7,
    )


@pytest.mark.parametrize(
    "unsubscribe",
    [
        "https://digest.example.org/unsubscribe/abc.sig",
        # A value that starts a line with a dot: its dot-stuffed form differs,
        # and the hash must be of the message as read, not as stuffed.
        ".hidden/unsubscribe",
        "." * 90,
    ],
)
def test_a_wire_message_carries_the_dkim_body_hash_only_when_asked(unsubscribe: str) -> None:
    text = f"봉준호\n{UNSUBSCRIBE_PLACEHOLDER}\n\n.dot line\n{PREFERENCES_PLACEHOLDER}\n"
    html = f"<p><a href='{UNSUBSCRIBE_PLACEHOLDER}'>x</a>\n{UNSUBSCRIBE_PLACEHOLDER}</p>"
    builder = MessageBuilder(_digest(text, html), SITE)
    fields = {
        "email": "kim@example.org",
        "name": "김지운",
        "message_id": "<t.7.1@example.org>",
        "unsubscribe": unsubscribe,
        "preferences": "https://digest.example.org/preferences/p1",
        "date": datetime(2026, 11, 23, 9, 30, tzinfo=UTC),
    }
    plain = builder.build(**fields)  # type: ignore[arg-type]
    _, body = dkim.rfc822_parse(plain)
    expected = hashlib.sha256(RELAXED.canonicalize_body(body)).digest()

    # Both bodies dot-stuffed on the wire, as aiosmtplib would stuff the message.
    wire = builder.build_wire(**fields)  # type: ignore[arg-type]
    assert wire.stuffed == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(plain))
    assert wire.body_hash is None
    assert builder.build_wire(**fields, body_hash=False).body_hash is None  # type: ignore[arg-type]
    for _ in range(2):  # the shared parts are hashed once, then reused
        assert builder.build_wire(**fields, body_hash=True).body_hash == expected  # type: ignore[arg-type]


# ------------------------------------------------------------------ editions


def _config_with_korean_titles(site_url: str) -> Config:
    text = config_yaml(cap=10).replace("url: https://digest.example.org/\n", f"url: {site_url}\n")
    text = text.replace("title: Ko-pick columns", "title: {en: Ko-pick columns, ko: 코픽 칼럼}")
    return parse_config(
        text.replace("title: Film previews", "title: {en: Film previews, ko: 영화 프리뷰}")
    )


# The site's URL with and without its final slash; the second ends in a
# letter that a sloppy strip of the slash would take too.
@pytest.mark.parametrize("site_url", ["https://digest.example.org/", "https://example.org/KFDX"])
def test_each_rendered_view_has_its_readers_titles_summary_language_and_archive_link(
    store: Store, smtp_server: SmtpFixture, site_url: str
) -> None:
    config = _config_with_korean_titles(site_url)
    digest = _issue(store, config, {"ko-pick": 2, "previews": 1})
    found, _ = store.add_subscriber("ko@example.org", now=datetime.now(UTC), active=True)
    store.set_preferences(found.id, found.email, sections=("ko-pick",), language="ko")
    _subscribe(store, "previews@example.org", ("previews",))
    _subscribe(store, "all@example.org", None)

    report = asyncio.run(
        deliver_digest(
            store,
            digest,
            site=config.site,
            smtp=smtp_server.settings(),
            secret=SECRET,
            retry_delay=0.05,
            config=config,
        )
    )

    # Two views rendered (the whole issue is the frozen one, never re-rendered).
    assert (report.sent, report.renders) == (3, 2)
    archive = f"{site_url.rstrip('/')}/digests/{digest.id}"
    assert archive.endswith(("org/digests/1", "KFDX/digests/1"))
    korean, previews, everything = (
        _parts_of(smtp_server, email)
        for email in ("ko@example.org", "previews@example.org", "all@example.org")
    )
    # The Korean reader's view: the Korean section title, the summary line
    # in Korean counting only their section, the Korean chrome.
    assert "이번 주: 코픽 칼럼 2건\n" in korean[0]
    assert "\n코픽 칼럼\n" in korean[0] and "Ko-pick columns" not in korean[0]
    assert '<html lang="ko"' in korean[1] and ">코픽 칼럼<" in korean[1]
    assert f"브라우저에서 보기: {archive}\n" in korean[0]
    # The English reader of one section: a summary of that section alone.
    assert "This week: 1 film preview.\n" in previews[0]
    assert "Ko-pick" not in previews[0]
    assert '<html lang="en"' in previews[1]
    # The whole issue as frozen.
    assert "This week: 2 Ko-pick columns and 1 film preview.\n" in everything[0]
    for text, html in (korean, previews, everything):
        assert f"{archive}\n" in text and "//digests" not in text
        assert f'href="{archive}"' in html and "//digests" not in html


def _parts_of(smtp_server: SmtpFixture, email: str) -> tuple[str, str]:
    (received,) = smtp_server.to(email)
    text = received.message.get_body(("plain",))
    html = received.message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content().replace("\r\n", "\n"), html.get_content()


# ------------------------------------------------------------------ the default lease


@pytest.mark.parametrize(
    ("timeout", "rate", "batch", "lease"),
    [
        (10.0, 0.0, 50, 60.0),  # README: at least one minute
        (5.0, 4.0, 10, 60.0),  # 15 + 2 * 2.5 s = 20 s: still the minute
        (30.0, 0.0, 50, 90.0),  # three server timeouts
        (10.0, 2.0, 50, 80.0),  # three timeouts and two batches at the rate
        (8.0, 0.8, 20, 74.0),  # 24 + 2 * 25 s
    ],
)
def test_a_claimed_rows_lease_ends_exactly_the_default_lease_after_the_claim(
    store: Store, smtp_server: SmtpFixture, timeout: float, rate: float, batch: int, lease: float
) -> None:
    """The claim writes the lease's end and its own time from one clock reading:
    their difference is the lease to the microsecond, however long the run takes
    on a loaded machine (bounds around the whole run could not tell 60 s from 61)."""
    add_active(store, 2)
    digest = make_digest(store)
    claims: list[timedelta] = []

    def on_sent(_delivery: ClaimedDelivery) -> None:
        # The second row is still held (claimed, not yet sent) when the first
        # one's mark is committed: a server slower than MARK_WINDOW below.
        with store.engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT lease_until, updated_at FROM deliveries"
                    " WHERE digest_id = :d AND status = 'sending'"
                ),
                {"d": digest.id},
            ).all()
        claims.extend(_aware(until) - _aware(at) for until, at in rows)

    smtp_server.handler.delay = 0.05
    report = asyncio.run(
        deliver_digest(
            store,
            digest,
            site=SITE,
            smtp=smtp_server.settings(timeout=timeout, rate_per_second=rate),
            secret=SECRET,
            batch_size=batch,
            on_sent=on_sent,
        )
    )

    assert report.sent == 2
    assert claims == [timedelta(seconds=lease)]


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite's text form
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_readers_whose_sections_are_empty_are_skipped_with_the_reason_in_the_ledger(
    store: Store, smtp_server: SmtpFixture
) -> None:
    config = _config_with_korean_titles("https://digest.example.org/")
    digest = _issue(store, config, {"ko-pick": 2})
    _subscribe(store, "previews@example.org", ("previews",))
    _subscribe(store, "previews2@example.org", ("previews",))
    _subscribe(store, "all@example.org", None)

    report = asyncio.run(
        deliver_digest(store, digest, site=config.site, smtp=smtp_server.settings(), secret=SECRET)
    )

    assert (report.sent, report.skipped) == (1, 2)
    assert smtp_server.to("previews@example.org") == smtp_server.to("previews2@example.org") == []
    rows = store.deliveries(digest.id or 0)
    skipped = [r for r in rows if r.status is DeliveryStatus.SKIPPED]
    (sent,) = [r for r in rows if r.status is DeliveryStatus.SENT]
    # The ledger says why nothing was sent to those readers.
    assert [r.last_error for r in skipped] == ["nothing new in the subscriber's sections"] * 2
    assert [r.sent_at for r in skipped] == [None, None] and sent.last_error is None


def test_a_send_on_a_closed_connection_says_exactly_not_connected() -> None:
    """The reason is what the ledger records for the row ("connection lost: not
    connected") and the log line names: nothing more around it."""
    connection = SmtpConnection(SmtpSettings(host="127.0.0.1", port=unused_port()))
    with pytest.raises(_ConnectionLost) as raised:
        asyncio.run(connection.send("a@example.org", "b@example.org", b"Subject: x\r\n\r\nx\r\n"))
    assert str(raised.value) == "not connected"


def test_a_server_that_never_greets_fails_after_the_configured_timeout() -> None:
    """``smtp.timeout`` bounds the wait for the greeting: 0.3 s here, against
    aiosmtplib's own default of 60 s (a listener that accepts and says nothing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        connection = SmtpConnection(SmtpSettings(host="127.0.0.1", port=port, timeout=0.3))
        started = time.monotonic()
        with pytest.raises(
            DeliveryError, match=rf"cannot connect to SMTP server 127\.0\.0\.1:{port}"
        ):
            asyncio.run(asyncio.wait_for(connection.connect(), timeout=20))
        assert time.monotonic() - started < 10
    finally:
        listener.close()


def test_a_connection_reads_the_dkim_key_from_the_environment_it_is_given(
    smtp_server: SmtpFixture,
) -> None:
    """``key_env`` is looked up in the ``environ`` handed to the connection (the
    CLI's and the scheduler's), not only in the process environment."""
    key = generate_key_pair().private_pem
    settings = smtp_server.settings(
        dkim=DkimSettings(domain="example.org", selector="kfd", key_env="KFD_TEST_ONLY_KEY")
    )
    assert "KFD_TEST_ONLY_KEY" not in os.environ

    async def send() -> None:
        connection = SmtpConnection(settings, environ={"KFD_TEST_ONLY_KEY": key.decode()})
        await connection.connect()
        try:
            await connection.send(
                "digest@example.org", "kim@example.org", b"Subject: x\r\n\r\nx\r\n"
            )
        finally:
            await connection.close()

    asyncio.run(send())
    (received,) = smtp_server.messages
    assert dkim.verify(received.data, dnsfunc=dns_for(key, "kfd", "example.org"))
