"""DKIM: messages as the SMTP server received them verify with dkimpy; changed ones fail.

The public key reaches dkimpy's verifier through its ``dnsfunc`` hook, as a
TXT record would from DNS; there is no network here.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import formataddr
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.config import parse_config
from aggregator.deliver import deliver_digest, send_message
from aggregator.errors import ConfigError
from aggregator.mail.dkim import DkimSigner, generate_key_pair, public_key_b64
from aggregator.mail_confirm import confirmation_message
from aggregator.models import DkimSettings, SmtpSettings, Subscriber, SubscriberStatus
from aggregator.store import Store
from tests.support.cli import run_cli
from tests.test_deliver import SECRET, SITE, make_digest

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture

DOMAIN = "example.org"
SELECTOR = "kfd2026"
REQUIRED = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
}


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    return generate_key_pair().private_pem


@pytest.fixture
def key_file(tmp_path: Path, key_pem: bytes) -> Path:
    path = tmp_path / f"{SELECTOR}.private"
    path.write_bytes(key_pem)
    return path


def dns_for(pem: bytes, selector: str = SELECTOR, domain: str = DOMAIN):  # type: ignore[no-untyped-def]
    """A dnsfunc answering the one TXT record a receiver would look up."""
    record = f"v=DKIM1; k=rsa; p={public_key_b64(pem)}".encode()
    wanted = f"{selector}._domainkey.{domain}.".encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == wanted else None

    return lookup


def verifies(data: bytes, pem: bytes) -> bool:
    return bool(dkim.verify(data, dnsfunc=dns_for(pem)))


def signature_tags(data: bytes) -> dict[str, str]:
    header = re.search(rb"^DKIM-Signature:(.*?)\r\n(?! |\t)", data, re.S | re.M)
    assert header, data[:400]
    flat = re.sub(rb"\s+", b"", header.group(1)).decode()
    return dict(tag.split("=", 1) for tag in flat.split(";") if tag)


def signed_settings(smtp_server: SmtpFixture, key_file: Path) -> SmtpSettings:
    return smtp_server.settings(
        dkim=DkimSettings(domain=DOMAIN, selector=SELECTOR, key_file=str(key_file))
    )


def test_every_digest_message_verifies_as_received(
    store: Store, smtp_server: SmtpFixture, key_file: Path, key_pem: bytes
) -> None:
    now = datetime.now(UTC)
    names = ["김지운", "Lee, Chang-dong", None, 'Park "Chan-wook"', "ÉMILE Zola"]
    for i, name in enumerate(names):
        store.add_subscriber(f"reader{i}@example.org", name=name, now=now, active=True)
    digest = make_digest(store)

    asyncio.run(
        deliver_digest(
            store, digest, site=SITE, smtp=signed_settings(smtp_server, key_file), secret=SECRET
        )
    )

    received = smtp_server.messages
    assert len(received) == len(names)
    for message in received:
        assert verifies(message.data, key_pem), message.recipients
        tags = signature_tags(message.data)
        assert tags["c"] == "relaxed/relaxed"
        assert tags["d"] == DOMAIN and tags["s"] == SELECTOR
        assert {h.lower() for h in tags["h"].split(":")} >= REQUIRED


def test_confirmation_message_is_signed(
    smtp_server: SmtpFixture, key_file: Path, key_pem: bytes
) -> None:
    subscriber = Subscriber(
        id=7,
        email="new@example.org",
        status=SubscriberStatus.PENDING,
        created_at=datetime.now(UTC),
        name="새 독자",
    )
    data = confirmation_message(SITE, subscriber, "https://digest.example.org/confirm/abc")

    asyncio.run(
        send_message(
            signed_settings(smtp_server, key_file), SITE.sender_email, subscriber.email, data
        )
    )

    (received,) = smtp_server.messages
    assert verifies(received.data, key_pem)
    assert {"from", "to", "subject", "date", "message-id"} <= {
        h.lower() for h in signature_tags(received.data)["h"].split(":")
    }


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Unsubscribe", b"Unsubscrib3"),  # body text
        (b"Subject: ", b"Subject: Re: "),
        (b"List-Unsubscribe: <https://", b"List-Unsubscribe: <http://"),
        (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x"),
        (b"To: ", b"To: attacker@example.net, "),
    ],
)
def test_a_message_changed_in_transit_fails(
    store: Store,
    smtp_server: SmtpFixture,
    key_file: Path,
    key_pem: bytes,
    old: bytes,
    new: bytes,
) -> None:
    store.add_subscriber("kim@example.org", now=datetime.now(UTC), active=True)
    digest = make_digest(store)
    asyncio.run(
        deliver_digest(
            store, digest, site=SITE, smtp=signed_settings(smtp_server, key_file), secret=SECRET
        )
    )
    (received,) = smtp_server.messages
    assert verifies(received.data, key_pem)
    assert old in received.data
    assert not verifies(received.data.replace(old, new, 1), key_pem)


def test_relaxed_canonicalization_survives_refolding_and_trailing_space(
    key_file: Path, key_pem: bytes
) -> None:
    signer = DkimSigner(DkimSettings(domain=DOMAIN, selector=SELECTOR, key_file=str(key_file)))
    message = (
        b"From: Digest <digest@example.org>\r\nTo: kim@example.org\r\n"
        b"Subject: a fairly long subject line for the week\r\n"
        b"Date: Mon, 23 Nov 2026 09:00:00 +0900\r\n"
        b"Message-ID: <a.1.2@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n\r\nhello\r\nworld\r\n'
    )
    signed = signer.sign(message)
    # What relays are allowed to do: re-fold a header, add trailing blanks.
    changed = signed.replace(
        b"Subject: a fairly long subject line", b"Subject: a fairly long\r\n  subject line"
    ).replace(b"hello\r\n", b"hello   \r\n")
    assert verifies(changed, key_pem)
    # A key for another selector does not verify it.
    other = generate_key_pair(1024).private_pem
    assert not bool(dkim.verify(signed, dnsfunc=dns_for(other)))


def test_key_from_environment_variable(key_pem: bytes) -> None:
    settings = DkimSettings(domain=DOMAIN, selector=SELECTOR, key_env="DKIM_TEST_KEY")
    signer = DkimSigner(settings, environ={"DKIM_TEST_KEY": key_pem.decode()})
    message = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    assert verifies(signer.sign(message), key_pem)
    with pytest.raises(ConfigError, match="DKIM_TEST_KEY, which is not set"):
        DkimSigner(settings, environ={})


def test_unsigned_when_not_configured(store: Store, smtp_server: SmtpFixture) -> None:
    store.add_subscriber("kim@example.org", now=datetime.now(UTC), active=True)
    digest = make_digest(store)
    asyncio.run(
        deliver_digest(store, digest, site=SITE, smtp=smtp_server.settings(), secret=SECRET)
    )
    assert b"DKIM-Signature" not in smtp_server.messages[0].data


# -------------------------------------------------------------------------- config

HEAD = "site:\n  title: Digest\n  url: https://digest.example.org/\n  sender_email: d@example.org\n"


def _write(tmp_path: Path, smtp_block: str) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(HEAD + smtp_block, encoding="utf-8")
    return path


def test_key_file_is_relative_to_feeds_yaml(tmp_path: Path, key_pem: bytes) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.private").write_bytes(key_pem)
    path = _write(
        tmp_path,
        "smtp:\n  dkim:\n    domain: example.org\n    selector: k\n    key_file: keys/k.private\n",
    )
    config = parse_config(path.read_text(), path=path)
    assert config.smtp.dkim is not None
    assert config.smtp.dkim.key_file == str(tmp_path / "keys" / "k.private")


@pytest.mark.parametrize(
    ("dkim_block", "line", "message"),
    [
        ("    domain: example.org\n    selector: k\n    key_file: missing.pem\n", 9, "cannot read"),
        (
            "    domain: example.org\n    selector: k\n    key_file: junk.pem\n",
            9,
            "PEM private key",
        ),
        ("    domain: example.org\n    selector: k\n    key_file: ec.pem\n", 9, "not an RSA key"),
        ("    domain: example.org\n    selector: k\n", 6, "key_file (a path) or key_env"),
        (
            "    domain: example.org\n    selector: k\n    key_file: a\n    key_env: B\n",
            6,
            "exactly one",
        ),
        ("    domain: not a domain\n    selector: k\n    key_env: K\n", 7, "not a domain"),
        ("    domain: example.org\n    selector: 'a b'\n    key_env: K\n", 8, "selector"),
        ("    domain: example.org\n    selector: k\n    key_env: 'A-B'\n", 9, "environment"),
    ],
)
def test_bad_dkim_settings_name_file_and_line(
    tmp_path: Path, dkim_block: str, line: int, message: str
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    (tmp_path / "junk.pem").write_text("-----BEGIN NOTHING-----\nxx\n", encoding="utf-8")
    small = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(
        small.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path = _write(tmp_path, "smtp:\n  dkim:\n" + dkim_block)
    result = run_cli("-c", str(path), "check")
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert f"{path}:{line}:" in out
    assert message in out


# ----------------------------------------------------------------------------- CLI


def test_keygen_writes_a_private_key_and_prints_the_record(tmp_path: Path) -> None:
    out_dir = tmp_path / "keys"
    result = run_cli(
        "dkim", "keygen", "--selector", "s1", "--domain", "Example.ORG", "--out", str(out_dir)
    )
    assert result.exit_code == 0, result.output
    key_path = out_dir / "s1.private"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    pem = key_path.read_bytes()
    text = " ".join(result.stdout.split())
    assert "s1._domainkey.example.org. IN TXT" in text
    # The record's p= (split into 255-byte strings) is the key's public half.
    record = (out_dir / "s1.txt").read_text()
    joined = "".join(re.findall(r'"([^"]*)"', record))
    assert joined == f"v=DKIM1; k=rsa; p={public_key_b64(pem)}"
    assert all(len(part) <= 255 for part in re.findall(r'"([^"]*)"', record))
    from cryptography.hazmat.primitives import serialization

    assert serialization.load_pem_private_key(pem, None).key_size == 2048  # type: ignore[union-attr]
    # A signature made with the new key verifies against the printed record.
    signer = DkimSigner(DkimSettings(domain="example.org", selector="s1", key_file=str(key_path)))
    signed = signer.sign(b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n")
    assert dkim.verify(signed, dnsfunc=dns_for(pem, "s1"))

    again = run_cli(
        "dkim", "keygen", "--selector", "s1", "--domain", "example.org", "--out", str(out_dir)
    )
    assert again.exit_code == 2
    assert "exists already" in again.output
    assert key_path.read_bytes() == pem


def test_check_prints_the_dns_records(tmp_path: Path, key_pem: bytes) -> None:
    (tmp_path / "k.pem").write_bytes(key_pem)
    path = _write(
        tmp_path,
        "smtp:\n  host: relay.example.net\n  dkim:\n    domain: example.org\n"
        "    selector: k\n    key_file: k.pem\n",
    )
    result = run_cli("-c", str(path), "check")
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert 'example.org. IN TXT "v=spf1 a:relay.example.net ~all"' in out
    assert "k._domainkey.example.org. IN TXT" in out
    assert public_key_b64(key_pem)[:40] in out.replace('" "', "")
    assert '_dmarc.example.org. IN TXT "v=DMARC1; p=none;' in out


def test_check_says_when_mail_is_not_signed(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    result = run_cli("-c", str(path), "check")
    assert result.exit_code == 0, result.output
    assert "not signing" in result.stdout


def test_settings_are_frozen() -> None:
    settings = DkimSettings(domain=DOMAIN, selector=SELECTOR, key_env="X")
    assert replace(settings, selector="y").selector == "y"


@settings(max_examples=25, deadline=None)
@given(
    subject=st.text(min_size=0, max_size=300),
    body=st.text(min_size=0, max_size=3000),
    name=st.text(max_size=80),
)
def test_generated_messages_verify(key_pem: bytes, subject: str, body: str, name: str) -> None:
    """Any subject, display name and body (Korean, long, blank lines, trailing spaces)."""
    from email.message import EmailMessage
    from email.policy import SMTP

    message = EmailMessage()
    message["From"] = "Digest <digest@example.org>"
    message["To"] = formataddr((" ".join(name.split()), "kim@example.org"), charset="utf-8")
    message["Subject"] = " ".join(subject.split())
    message["Message-ID"] = "<x.1.2@example.org>"
    message["List-Unsubscribe"] = "<https://digest.example.org/unsubscribe/" + "a" * 120 + ">"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(body, cte="quoted-printable")
    raw = message.as_bytes(policy=SMTP)
    signer = DkimSigner(
        DkimSettings(domain=DOMAIN, selector=SELECTOR, key_env="K"), environ={"K": key_pem.decode()}
    )
    assert verifies(signer.sign(raw), key_pem)
