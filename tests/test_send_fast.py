"""The sender's fast paths give the bytes and the ledger the slow paths give.

Fast paths under test: DKIM signing of a message whose body hash was computed
from the issue's shared parts (``BodyHash``, ``DkimSigner.signature_for``),
MAIL/RCPT/DATA pipelined when the server offers PIPELINING, and ``sent``
marks committed a few at a time (``MARK_BATCH``, ``MARK_WINDOW``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from dkim.canonicalization import CanonicalizationPolicy

from aggregator.deliver import MARK_BATCH, MessageBuilder, deliver_digest
from aggregator.mail.dkim import BodyHash, DkimSigner, generate_key_pair
from aggregator.models import DeliveryStatus, Digest, DkimSettings, Site
from aggregator.render import PREFERENCES_PLACEHOLDER as PREFS
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER as UNSUB
from aggregator.store import Store
from tests.support.smtp import SmtpFixture
from tests.test_deliver import SECRET, _sender, add_active, make_digest
from tests.test_dkim import dns_for

DATE = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
NOW = DATE.timestamp()
SITE = Site(
    title="Korean Film Digest",
    url="https://digest.example.org/",
    sender_email="digest@example.org",
    sender_name="한국 영화 다이제스트",
)
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
# Recipients of every shape the header and the splices meet: Korean and
# Latin-1 names, quotes and commas, no name, a 64-character local part.
RECIPIENTS = [
    ("김지운", "kim@example.org"),
    ("독자 " * 15, "a" * 64 + "@" + "b" * 50 + ".example.org"),
    (None, "x@example.org"),
    ('Park "Chan-wook", 박찬욱', "park.chan-wook+digest@example.org"),
    ("ÉMILE Zola", "emile@example.fr"),
]


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    return generate_key_pair().private_pem


def signer_for(tmp_path: Path, pem: bytes) -> DkimSigner:
    key = tmp_path / "dkim.pem"
    key.write_bytes(pem)
    return DkimSigner(DkimSettings(domain="example.org", selector="kfd", key_file=str(key)))


def generated_parts(seed: int) -> tuple[str, str]:
    """A text and an HTML body with what canonicalization and stuffing react to:
    runs of spaces and tabs, trailing whitespace, empty lines, leading dots,
    long Korean lines, and the two placeholders anywhere (first, last, adjacent)."""
    rng = random.Random(seed)
    words = ["봉준호", "film", " ", "  ", "\t", " \t ", "\n", "\n\n", "\n.", ".", "=", "x" * 90]
    words += ["é", "\r\n", "-- ", "\n \n"]

    def chunk(n: int) -> str:
        return "".join(rng.choice(words) for _ in range(n))

    holes = [UNSUB, PREFS]
    pieces = [rng.choice(holes) if rng.random() < 0.3 else ""]
    for _ in range(rng.randint(1, 5)):
        pieces += [chunk(rng.randint(0, 120)), rng.choice(holes)]
        if rng.random() < 0.3:
            pieces.append(rng.choice(holes))  # two placeholders side by side
    pieces.append(chunk(rng.randint(0, 40)) if rng.random() < 0.7 else "")
    text = "".join(pieces)
    html = f"<p>{chunk(80)}</p>\n<a href='{UNSUB}'>x</a>{chunk(30)}<a href=\"{PREFS}\">y</a>"
    return text, html


def digest_with(text: str, html: str, digest_id: int) -> Digest:
    return Digest(
        period_start=DATE - timedelta(days=7),
        period_end=DATE,
        subject="Korean Film Digest: 이번 주 한국 영화 소식",
        sections=(),
        html=html,
        text=text,
        id=digest_id,
    )


def fields(index: int, name: str | None, email: str) -> dict[str, Any]:
    return {
        "email": email,
        "name": name,
        "message_id": f"<tag.7.{index}@example.org>",
        "unsubscribe": f"https://digest.example.org/unsubscribe/{'Wz' * (index * 17 + 1)}.sig",
        "preferences": "" if index == 2 else f"https://digest.example.org/preferences/p{index}",
        "date": DATE,
    }


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "dkim"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_path_bytes_equal_the_sendmail_path(
    seed: int, signed: bool, tmp_path: Path, key_pem: bytes
) -> None:
    signer = signer_for(tmp_path, key_pem) if signed else None
    text, html = generated_parts(seed)
    builder = MessageBuilder(digest_with(text, html, seed), SITE)
    for index, (name, email) in enumerate(RECIPIENTS):
        plain = builder.build(**fields(index, name, email))
        wire = builder.build_wire(**fields(index, name, email), body_hash=signed)
        if signer is not None:
            # The slow path: dkimpy parses and canonicalizes the whole message.
            plain = signer.sign(plain, now=NOW)
            assert wire.body_hash is not None
            wire = wire.signed(signer.signature_for(wire.head, wire.body_hash, now=NOW))
            assert dkim.verify(wire.plain(), dnsfunc=dns_for(key_pem, "kfd", "example.org"))
        # What aiosmtplib's sendmail would put on the wire for the slow path.
        assert wire.stuffed == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(plain))


@pytest.mark.parametrize("seed", range(8))
def test_body_hash_from_shared_parts_equals_dkimpys_hash_of_the_whole_body(seed: int) -> None:
    text, html = generated_parts(seed + 100)
    builder = MessageBuilder(digest_with(text, html, seed), SITE)
    for index, (name, email) in enumerate(RECIPIENTS):
        message = builder.build(**fields(index, name, email))
        wire = builder.build_wire(**fields(index, name, email), body_hash=True)
        _, body = dkim.rfc822_parse(message)
        expected = hashlib.sha256(RELAXED.canonicalize_body(body)).digest()
        assert wire.body_hash == expected


def test_a_body_hash_refuses_chunks_it_could_not_hash_in_parts() -> None:
    plan = BodyHash()
    with pytest.raises(ValueError, match="CRLF"):
        plan.add_fixed(b"no line end")
    plan.add_fixed(b"line\r\n")
    plan.add_slot(0)
    with pytest.raises(ValueError, match="non-empty line"):
        plan.digest([b"value\r\n"])  # the body would end with a slot


def _offer_pipelining(smtp_server: SmtpFixture) -> None:
    """Make the test server announce PIPELINING (aiosmtpd reads pipelined commands
    line by line anyway, so only the announcement was missing)."""

    async def handle_ehlo(
        server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    smtp_server.handler.handle_EHLO = handle_ehlo  # type: ignore[attr-defined]


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "dkim"])
def test_pipelined_sessions_deliver_each_message_once_and_survive_refusals(
    store: Store, smtp_server: SmtpFixture, signed: bool, tmp_path: Path, key_pem: bytes
) -> None:
    _offer_pipelining(smtp_server)
    emails = add_active(store, 12)
    refused, deferred = emails[3], emails[7]
    smtp_server.handler.reject(refused)
    smtp_server.handler.defer(deferred, times=1)
    digest = make_digest(store)
    key = tmp_path / "dkim.pem"
    key.write_bytes(key_pem)
    dkim_settings = DkimSettings(domain="example.org", selector="kfd", key_file=str(key))
    settings = smtp_server.settings(max_attempts=2, dkim=dkim_settings if signed else None)

    report = asyncio.run(
        deliver_digest(store, digest, site=SITE, smtp=settings, secret=SECRET, retry_delay=0.05)
    )

    received = Counter(r for m in smtp_server.messages for r in m.recipients)
    assert received == Counter(e for e in emails if e != refused)
    assert (report.sent, report.failed) == (11, 1)
    assert [key for key, _ in smtp_server.handler.refusals].count(refused) == 2
    counts = store.delivery_counts(report.digest_id)
    assert (counts[DeliveryStatus.SENT], counts[DeliveryStatus.FAILED]) == (11, 1)
    if signed:
        dns = dns_for(key_pem, "kfd", "example.org")
        assert all(dkim.verify(m.data, dnsfunc=dns) for m in smtp_server.messages)


def test_marks_of_a_group_are_committed_only_for_rows_the_owner_still_sends(
    store: Store,
) -> None:
    add_active(store, 6)
    digest = make_digest(store)
    assert digest.id is not None
    at = datetime(2026, 11, 24, tzinfo=UTC)
    store.create_deliveries(digest.id, message_id_tag="t", message_id_domain="x", now=at)
    rows = store.claim_deliveries(
        digest.id,
        owner="a",
        limit=4,
        lease_until=at + timedelta(minutes=5),
        now=at,
        pass_started=at,
    )
    others = store.claim_deliveries(
        digest.id,
        owner="b",
        limit=2,
        lease_until=at + timedelta(minutes=5),
        now=at,
        pass_started=at,
    )
    store.mark_skipped(rows[0].id, owner="a", reason="empty", now=at)
    ids = [r.id for r in rows] + [o.id for o in others]

    assert store.mark_sent_many(ids, owner="a", now=at) == 3
    assert store.mark_sent_many(ids, owner="a", now=at) == 0  # once only
    assert store.mark_sent_many([], owner="a", now=at) == 0
    status = {r.id: (r.status, r.sent_at) for r in store.deliveries(digest.id)}
    assert status[rows[0].id] == (DeliveryStatus.SKIPPED, None)
    assert [status[r.id] for r in rows[1:]] == [(DeliveryStatus.SENT, at)] * 3
    assert [status[o.id][0] for o in others] == [DeliveryStatus.SENDING] * 2


def test_a_sender_killed_against_a_fast_server_repeats_at_most_one_group_of_marks(
    store: Store, db_url: str, smtp_server: SmtpFixture, tmp_path: Path
) -> None:
    emails = add_active(store, 400)
    digest = make_digest(store)
    assert digest.id is not None

    first = _sender(tmp_path, db_url, digest, smtp_server, "first", lease=1.0)
    smtp_server.wait_for(60, timeout=30)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = len(smtp_server.messages)
    assert killed_at < 400, "the sender finished before it could be killed"
    time.sleep(1.5)  # in-flight DATA finishes, the dead sender's lease expires

    second = _sender(tmp_path, db_url, digest, smtp_server, "second", lease=30.0)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err

    per_address = Counter(r for m in smtp_server.messages for r in m.recipients)
    assert set(per_address) == set(emails), "somebody got nothing"
    repeated = [e for e, n in per_address.items() if n > 1]
    assert len(repeated) <= MARK_BATCH + 1, repeated
    for email in repeated:
        assert per_address[email] == 2
        assert len({m.message_id for m in smtp_server.to(email)}) == 1
    assert store.delivery_counts(digest.id)[DeliveryStatus.SENT] == 400
