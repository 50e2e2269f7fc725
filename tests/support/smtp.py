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
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller

from aggregator.models import SmtpSettings
from tests.support.http import unused_port

__all__ = ["ReceivedMessage", "RecordingHandler", "SmtpFixture", "smtp_server"]


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the server accepted (answered 250 to its DATA)."""

    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    time: float
    peer: str  # client address and port: one value per SMTP connection

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
        self._rejected: set[str] = set()
        self._deferred: dict[str, int] = {}
        self._drop_at: int | None = None
        self.drops = 0
        self.refusals: list[tuple[str, int]] = []

    def reject(self, address: str) -> None:
        """Answer ``550`` to RCPT for this address, every time."""
        with self._lock:
            self._rejected.add(address.lower())

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
                self.refusals.append((key, 550))
                return "550 5.1.1 no such mailbox (test)"
            remaining = self._deferred.get(key, 0)
            if remaining > 0:
                self._deferred[key] = remaining - 1
                self.refusals.append((key, 451))
                return "451 4.3.0 try again later (test)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or envelope.content),
            time=time.monotonic(),
            peer=repr(session.peer),
        )
        with self._lock:
            self.messages.append(received)
        return "250 2.0.0 accepted"


class SmtpFixture:
    """The running server: its address, its handler and what it received."""

    def __init__(self) -> None:
        self.handler = RecordingHandler()
        self.host = "127.0.0.1"
        self.port = unused_port()
        self._controller = Controller(
            self.handler, hostname=self.host, port=self.port, enable_SMTPUTF8=True
        )

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


@pytest.fixture
def smtp_server() -> Iterator[SmtpFixture]:
    """A fresh recording SMTP server on 127.0.0.1, stopped after the test."""
    server = SmtpFixture()
    server.start()
    try:
        yield server
    finally:
        server.stop()
