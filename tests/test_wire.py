"""Digest bodies encoded once and spliced per subscriber send the same message as before.

The reference is the old path: substitute the unsubscribe URL into the whole
text, quoted-printable encode it, and let aiosmtplib normalize line endings and
dot-stuff it. The spliced body must decode to the same text, and the bytes
written by ``send_wire`` must be what aiosmtplib would have written for the
unstuffed message (so the server stores the same message).
"""

from __future__ import annotations

import asyncio
import binascii
import email
import email.policy
import random
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import cast

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from aggregator.deliver import MessageBuilder, SmtpConnection
from aggregator.mail.wire import SplicedBody, WireMessage, can_send_wire, dot_stuff, dot_unstuff
from aggregator.models import Digest, Site
from aggregator.render import UNSUBSCRIBE_PLACEHOLDER as HOLE
from tests.support.smtp import SmtpFixture

DATE = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
URLS = (
    "https://digest.example.org/unsubscribe/abc.def-ghi",
    "https://digest.example.org/u?token=" + "a=b." * 40,  # long: wraps, "=" and "." at breaks
    ".starts-with-a-dot",
)


def generated_texts(seed: int) -> list[str]:
    """Bodies with the placeholder at the start, the end, twice, beside line
    breaks, after trailing spaces, and lines starting with dots, Korean text."""
    rng = random.Random(seed)
    words = ["영화", "감독", ".", "..", "a", "=", " ", "\t", "\n", "\r\n", "부산", "x" * 90]
    texts = [
        f"{HOLE}",
        f"{HOLE}tail",
        f"head{HOLE}",
        f"a {HOLE} b {HOLE} c",
        f"line\n.{HOLE}\n.dot",
        f"trailing   {HOLE}   \n",
        f"{HOLE}{HOLE}",
        "no placeholder at all\n.dotted line\n",
    ]
    for _ in range(40):
        parts = [rng.choice(words) for _ in range(rng.randint(1, 200))]
        for _ in range(rng.randint(0, 3)):
            parts.insert(rng.randint(0, len(parts)), HOLE)
        texts.append("".join(parts))
    return texts


def decoded(qp: bytes) -> bytes:
    return binascii.a2b_qp(qp.replace(b"\r\n", b"\n"))


# Seeds 7 and 9 hold bodies where binascii's own output passes 76 columns
# (a line ending in encoded whitespace); the splice must still keep the limit.
@pytest.mark.parametrize("seed", [1, 2, 3, 7, 9])
def test_spliced_body_decodes_to_the_substituted_text(seed: int) -> None:
    for text in generated_texts(seed):
        body = SplicedBody(text, HOLE)
        for url in URLS:
            expected = binascii.b2a_qp(text.replace(HOLE, url).encode(), istext=True)
            plain = body.render(url, stuffed=False)
            assert decoded(plain) == decoded(expected), (text, url)
            assert b"\n" not in plain.replace(b"\r\n", b"")  # CRLF only
            assert max(len(line) for line in plain.split(b"\r\n")) <= 76
            assert body.render(url, stuffed=True) == dot_stuff(plain)


@pytest.mark.parametrize("seed", [6, 7, 9])
def test_spliced_body_fills_two_placeholders_each_with_its_own_value(seed: int) -> None:
    # The preferences link is spliced like the unsubscribe one (issue 18).
    from aggregator.render import PREFERENCES_PLACEHOLDER as PREFS

    rng = random.Random(seed)
    for text in generated_texts(seed):
        # Turn some of the unsubscribe holes into preferences holes.
        pieces = text.split(HOLE)
        mixed = (
            pieces[0]
            + "".join(rng.choice((HOLE, PREFS)) + piece for piece in pieces[1:])
            + rng.choice(("", PREFS))
        )
        body = SplicedBody(mixed, HOLE, PREFS)
        for url in URLS:
            prefs = url.replace("unsubscribe", "preferences") + "/p"
            wanted = mixed.replace(HOLE, url).replace(PREFS, prefs)
            expected = binascii.b2a_qp(wanted.encode(), istext=True)
            plain = body.render(url, prefs, stuffed=False)
            assert decoded(plain) == decoded(expected), (mixed, url)
            assert b"\n" not in plain.replace(b"\r\n", b"")  # CRLF only
            assert max(len(line) for line in plain.split(b"\r\n")) <= 76
            assert body.render(url, prefs, stuffed=True) == dot_stuff(plain)


@pytest.mark.parametrize("seed", [4, 5])
def test_stuffing_round_trips(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        lines = ["".join(rng.choice(".ab") for _ in range(rng.randint(0, 5))) for _ in range(9)]
        data = "\r\n".join(lines).encode()
        assert dot_unstuff(dot_stuff(data)) == data
        assert dot_stuff(data) == PERIOD_REGEX.sub(b"..", data)


def digest_with(text: str, html: str) -> Digest:
    return Digest(
        id=7,
        period_start=DATE - timedelta(days=7),
        period_end=DATE,
        subject="Korean Film Digest: 이번 주",
        sections=(),
        html=html,
        text=text,
    )


SITE = Site(url="https://digest.example.org/", sender_email="digest@example.org")


@pytest.mark.parametrize("seed", [6, 7])
def test_wire_bytes_are_what_aiosmtplib_would_write(seed: int) -> None:
    texts = generated_texts(seed)
    for text, html in zip(texts, reversed(texts), strict=True):
        builder = MessageBuilder(digest_with(text, html), SITE)
        for url in URLS:
            fields = {
                "email": "kim@example.org",
                "name": "김 독자",
                "message_id": "<1.2@digest.example.org>",
                "unsubscribe": url,
                "date": DATE,
            }
            plain = builder.build(**fields)  # type: ignore[arg-type]
            wire = builder.build_wire(**fields)  # type: ignore[arg-type]
            assert wire.stuffed == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(plain))
            assert wire.plain() == plain
            parsed = cast(
                EmailMessage, email.message_from_bytes(plain, policy=email.policy.default)
            )
            parts = [p.get_content() for p in parsed.iter_parts()]
            want = [text.replace(HOLE, url), html.replace(HOLE, url)]
            norm = [p.replace("\r\n", "\n").replace("\r", "\n") for p in want]
            assert [p.replace("\r\n", "\n") for p in parts] == norm


def test_server_receives_the_same_message_both_ways(smtp_server: SmtpFixture) -> None:
    text = f"first\n.second line\n{HOLE}\n.."
    html = f"<p>부산</p>\n.<a href='{HOLE}'>unsubscribe</a>"
    builder = MessageBuilder(digest_with(text, html), SITE)
    fields = {
        "email": "kim@example.org",
        "name": "김",
        "message_id": "<1@x>",
        "unsubscribe": URLS[1],
        "date": DATE,
    }

    async def send_both() -> None:
        connection = SmtpConnection(smtp_server.settings())
        await connection.connect()
        try:
            await connection.send("digest@example.org", "kim@example.org", builder.build(**fields))  # type: ignore[arg-type]
            wire = builder.build_wire(**fields)  # type: ignore[arg-type]
            assert isinstance(wire, WireMessage)
            client = connection._client
            assert client is not None
            assert can_send_wire(client, "digest@example.org", "kim@example.org")
            assert not can_send_wire(client, "digest@example.org", "kim@example.org>\r\nRSET")
            await connection.send("digest@example.org", "kim@example.org", wire)
        finally:
            await connection.close()

    asyncio.run(send_both())
    first, second = smtp_server.wait_for(2)
    assert first.data == second.data
    assert second.mail_from == "digest@example.org"
    assert second.recipients == ("kim@example.org",)


def test_refused_recipient_then_next_message_goes_through(smtp_server: SmtpFixture) -> None:
    from aggregator.errors import DeliveryError

    smtp_server.handler.reject("gone@example.org")
    builder = MessageBuilder(digest_with(f"t {HOLE}", f"h {HOLE}"), SITE)

    async def run() -> None:
        connection = SmtpConnection(smtp_server.settings())
        await connection.connect()
        try:
            for address, refused in (
                ("gone@example.org", True),
                ("gone@example.org", True),  # 550 again, not 503: the envelope was reset
                ("kim@example.org", False),
            ):
                wire = builder.build_wire(
                    email=address, name=None, message_id="<2@x>", unsubscribe=URLS[0]
                )
                if refused:
                    with pytest.raises(DeliveryError) as caught:
                        await connection.send("digest@example.org", address, wire)
                    assert caught.value.permanent
                    assert "550" in str(caught.value)
                else:
                    await connection.send("digest@example.org", address, wire)
        finally:
            await connection.close()

    asyncio.run(run())
    assert [m.recipients for m in smtp_server.wait_for(1)] == [("kim@example.org",)]
