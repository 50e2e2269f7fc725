"""A real SMTP server on 127.0.0.1 for tests: fixture ``smtp_server``.

An aiosmtpd ``Controller`` runs in a background thread on a free port with a
handler that records every message it accepts and can be told to misbehave::

    def test_something(smtp_server):
        smtp_server.handler.reject("bounce@example.org")          # 550 for this address
        smtp_server.handler.defer("later@example.org", times=1)   # 451 once, then accept
        smtp_server.handler.drop_after(3)     # close the connection at the 4th message
        smtp_server.handler.delay = 0.05      # wait before answering each DATA
        settings = smtp_server.settings(max_attempts=3)
        ...
        smtp_server.wait_for(2)
        assert smtp_server.messages[0].message["Subject"] == "..."

Messages are parsed with ``email.policy.default``, so encoded headers come back
decoded (a Korean subject reads as Korean).

``smtp_tls_server`` is the same server offering STARTTLS with a throw-away
self-signed certificate for 127.0.0.1 (made at fixture time) and requiring
AUTH (PLAIN or LOGIN) after it; ``smtp_tls_server.trust(monkeypatch)`` makes
the default TLS context of the process trust that certificate (``SSL_CERT_FILE``),
as an admin would for a relay with a private CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from aggregator.models import SmtpSettings
from tests.support.http import unused_port

__all__ = [
    "ReceivedMessage",
    "RecordingHandler",
    "SmtpFixture",
    "self_signed_certificate",
    "smtp_server",
    "smtp_tls_server",
]


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the server accepted (answered 250 to its DATA)."""

    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    time: float
    peer: str  # client address and port: one value per SMTP connection
    tls: bool = False  # the session had switched to TLS (STARTTLS) before DATA
    login: str | None = None  # the user the session authenticated as

    @property
    def message(self) -> EmailMessage:
        return cast(EmailMessage, email.message_from_bytes(self.data, policy=email.policy.default))

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


class RecordingHandler:
    """aiosmtpd handler: accept and record, or fail on request (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []
        self.delay = 0.0
        self._rejected: dict[str, str] = {}
        self._deferred: dict[str, int] = {}
        self._drop_at: int | None = None
        self.drops = 0
        self.refusals: list[tuple[str, int]] = []
        # Client connections the server still holds open (see _TrackingSMTP),
        # and how many of them ended with QUIT (a client that closes politely).
        self.open_sessions = 0
        self.quits = 0

    def reject(self, address: str, reply: str = "550 5.1.1 no such mailbox (test)") -> None:
        """Answer ``reply`` (a 5xx) to RCPT for this address, every time."""
        with self._lock:
            self._rejected[address.lower()] = reply

    def defer(self, address: str, *, times: int = 1) -> None:
        """Answer ``451`` to RCPT for this address the next ``times`` times."""
        with self._lock:
            self._deferred[address.lower()] = times

    def drop_after(self, count: int) -> None:
        """Close the connection (without a reply) at the MAIL command once
        ``count`` messages in total have been accepted; fires once."""
        with self._lock:
            self._drop_at = count

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        with self._lock:
            drop = self._drop_at is not None and len(self.messages) >= self._drop_at
            if drop:
                self._drop_at = None
                self.drops += 1
        if drop:
            server.transport.close()
            return "421 4.4.2 closing (test drop)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        key = address.lower()
        with self._lock:
            if key in self._rejected:
                reply = self._rejected[key]
                self.refusals.append((key, int(reply[:3])))
                return reply
            remaining = self._deferred.get(key, 0)
            if remaining > 0:
                self._deferred[key] = remaining - 1
                self.refusals.append((key, 451))
                return "451 4.3.0 try again later (test)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        # STARTTLS sets session.ssl; under implicit TLS only the transport knows.
        tls = session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or envelope.content),
            time=time.monotonic(),
            peer=repr(session.peer),
            tls=tls,
            login=_login_name(session.auth_data),
        )
        with self._lock:
            self.messages.append(received)
        return "250 2.0.0 accepted"


class _TrackingSMTP(SMTP):
    """aiosmtpd's server protocol, counting open connections in the handler.

    When the server sees a connection end it cancels that session's command
    in progress (a DATA it had not answered yet), so once the count is back
    to zero nothing more can be recorded from a client that died.
    """

    def connection_made(self, transport: Any) -> None:
        handler = cast(RecordingHandler, self.event_handler)
        with handler._lock:
            handler.open_sessions += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            handler = cast(RecordingHandler, self.event_handler)
            with handler._lock:
                handler.open_sessions -= 1


class _TrackingController(Controller):
    def factory(self) -> SMTP:
        return _TrackingSMTP(self.handler, **self.SMTP_kwargs)


def _login_name(login_data: Any) -> str | None:
    if isinstance(login_data, LoginPassword):
        return bytes(login_data.login).decode()
    if isinstance(login_data, bytes):
        return login_data.decode()
    return None if login_data is None else str(login_data)


class Credentials:
    """aiosmtpd authenticator: one user and password; records every attempt."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.attempts: list[tuple[str, str, bool]] = []  # mechanism, user, accepted

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = bytes(auth_data.login).decode(), bytes(auth_data.password).decode()
        ok = (user, password) == (self.user, self.password)
        self.attempts.append((mechanism, user, ok))
        # handled=False: aiosmtpd answers itself (235, or 535 on a wrong password).
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throw-away certificate and key for ``host`` (an IP SAN), valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class SmtpFixture:
    """The running server: its address, its handler and what it received.

    With ``certificate`` (cert and key files) it offers STARTTLS and refuses
    mail before it, or with ``implicit_tls`` speaks TLS from the first byte
    (``smtp.ssl``, port 465 on a real relay); with ``credentials`` it requires
    AUTH (after STARTTLS).
    """

    def __init__(
        self,
        *,
        certificate: tuple[Path, Path] | None = None,
        credentials: Credentials | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        implicit_tls: bool = False,
    ) -> None:
        self.handler = RecordingHandler()
        self.host = "127.0.0.1"
        self.port = unused_port()
        self.certificate = certificate
        self.credentials = credentials
        extra: dict[str, Any] = {}
        if certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*certificate)
            if implicit_tls:
                extra.update(ssl_context=context)
            else:
                extra.update(tls_context=context, require_starttls=True)
        if credentials is not None:
            excluded = [m for m in ("PLAIN", "LOGIN") if m not in mechanisms]
            extra.update(
                authenticator=credentials,
                auth_required=True,
                # aiosmtpd counts only STARTTLS as TLS here; an implicit-TLS
                # session is encrypted before its first command anyway.
                auth_require_tls=certificate is not None and not implicit_tls,
                auth_exclude_mechanism=excluded,
            )
        self._controller = _TrackingController(
            self.handler,
            hostname=self.host,
            port=self.port,
            enable_SMTPUTF8=True,
            server_hostname="smtp.test",
            **extra,
        )

    def trust(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make this process's default TLS context trust the server's certificate."""
        assert self.certificate is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(self.certificate[0]))

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self.handler._lock:
            return list(self.handler.messages)

    def settings(self, **overrides: Any) -> SmtpSettings:
        """:class:`SmtpSettings` pointing at this server (plain SMTP, no auth)."""
        values: dict[str, Any] = {"host": self.host, "port": self.port, "timeout": 10.0}
        values.update(overrides)
        return SmtpSettings(**values)

    def to(self, address: str) -> list[ReceivedMessage]:
        """Messages whose envelope recipients include ``address``."""
        return [m for m in self.messages if address in m.recipients]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages arrived; fail the test on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages
            if len(found) >= count:
                return found
            time.sleep(0.02)
        pytest.fail(f"expected {count} messages, the SMTP server got {len(self.messages)}")

    def wait_idle(self, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until the server holds no client connection; the messages then.

        A positive barrier for "nothing more arrives": after it, a client
        that is gone (closed, or killed mid-DATA) can add no message.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.handler._lock:
                if self.handler.open_sessions == 0:
                    return list(self.handler.messages)
            time.sleep(0.01)
        pytest.fail(f"the SMTP server still holds {self.handler.open_sessions} connection(s)")


@pytest.fixture
def smtp_server() -> Iterator[SmtpFixture]:
    """A fresh recording SMTP server on 127.0.0.1, stopped after the test."""
    server = SmtpFixture()
    server.start()
    try:
        yield server
    finally:
        server.stop()


SMTP_USER = "digest-sender"
SMTP_PASSWORD = "correct horse battery staple"


@pytest.fixture
def smtp_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpFixture]:
    """An SMTP server that offers STARTTLS (self-signed, for 127.0.0.1) and requires AUTH
    as ``SMTP_USER`` / ``SMTP_PASSWORD`` after it."""
    certificate = self_signed_certificate(tmp_path_factory.mktemp("smtp-tls"))
    server = SmtpFixture(certificate=certificate, credentials=Credentials(SMTP_USER, SMTP_PASSWORD))
    server.start()
    try:
        yield server
    finally:
        server.stop()
