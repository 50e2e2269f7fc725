"""Mail a frozen digest to every active subscriber exactly once (aiosmtplib).

How "exactly once" holds up:

1. :meth:`Store.create_deliveries` writes one ``pending`` ledger row per
   (digest, active subscriber) with a Message-ID fixed for that pair, on the
   first send of the digest only: that fixes who gets the issue.
2. The sender claims a small batch (``sending``, its owner id, a lease) in one
   atomic statement, sends each message over one reused SMTP connection and
   marks the rows ``sent`` after the server's 250: right away when the server
   took :data:`MARK_WINDOW` or longer to accept the message, else in one commit
   for the messages accepted within the last :data:`MARK_WINDOW` (at most
   :data:`MARK_BATCH`). A commit per message cost a fast server a third of the
   sender's CPU.
3. A sender killed at any point leaves ``sent`` rows (never resent), ``pending``
   rows (sent by the next run) and its claimed ``sending`` rows, which become
   claimable again when the lease expires. Of those, only the message that was
   on the wire at the kill can have reached the server, and, against a server
   that answers within :data:`MARK_WINDOW`, the messages accepted in the
   :data:`MARK_WINDOW` before (at most :data:`MARK_BATCH`); they go out again
   with the same Message-ID, so mail clients show each once.
4. Two senders never share a row: claims are atomic (``FOR UPDATE SKIP LOCKED``
   on PostgreSQL, the write lock on SQLite) and every later write checks the
   owner; a sender that is slower than its lease extends it, and drops any row
   it no longer holds before sending it.

Failures: a 4xx reply or a dropped connection puts the row back to ``pending``
(attempt counted) and the sender reconnects; such rows are retried in a later
pass of the same run after ``retry_delay`` (at most ``max_attempts`` passes),
otherwise by the next run. A 5xx reply counts an attempt too, and after
``smtp.max_attempts`` of them the row is ``failed`` for good. A server that
cannot be reached raises :class:`DeliveryError` naming ``host:port`` and leaves
the rows pending.

Messages are assembled by hand from parts prepared once per digest (the
``email`` package would cost more than SMTP itself per message): encoded
headers, a fixed MIME boundary, and the two bodies as quoted-printable (never
8bit: MJML output has very long lines) with the subscriber's unsubscribe URL
filled in.

Preferences: each ledger row carries the subscriber's choice of sections and
language as it was at the issue's first send (``deliveries.variant``). The
issue stays frozen once; :class:`Editions` renders one view of it per
distinct (sections, language) the rows ask for, once per run, and the whole
issue in the site's language is the frozen HTML itself. A subscriber whose
sections hold nothing this week gets nothing when ``digest.when_empty`` is
``skip``: the row is marked ``skipped`` and never sent later. A resend after a
kill reads the same ``variant`` from the row, so it sends the same edition.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.header import Header
from email.utils import format_datetime, formataddr, make_msgid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiosmtplib

from .errors import DeliveryError, RecipientRefused
from .mail.dkim import BodyHash, DkimSigner
from .mail.wire import SplicedBody, WireMessage, can_send_wire, dot_stuff, send_wire
from .models import DeliveryStatus, Digest, DigestSection, Site, SmtpSettings, utcnow
from .render import (
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    build_preheader,
    format_subject,
    render_digest,
)
from .store import Store
from .store.deliveries import ClaimedDelivery, parse_variant
from .subscribers import clean_name
from .tokens import Tokens

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "DeliveryReport",
    "Editions",
    "MessageBuilder",
    "SmtpConnection",
    "deliver_digest",
    "dkim_signer",
    "envelope_sender",
    "lease_margin",
    "list_id",
    "message_id_domain",
    "message_id_tag",
    "preferences_url",
    "send_message",
    "send_test_copy",
    "unsubscribe_url",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50
# Between a spliced value and the encoded text around it (see mail/wire.py).
_SOFT_BREAK = b"=\r\n"
# The pauses between the three tries of a reconnect (README, "Retries and
# leases"). A value rather than a computed backoff: a test pins the documented
# numbers, where measuring the sleeps on a loaded machine could not tell 0.8 s
# from 1.0 s.
RECONNECT_PAUSES = (0.2, 0.8)
# Accepted messages whose ``sent`` marks share one commit: at most this many,
# accepted within this many seconds (see the module docstring, point 2).
MARK_BATCH = 20
MARK_WINDOW = 0.02


# ------------------------------------------------------------------------ identity


def unsubscribe_url(site: Site, tokens: Tokens, subscriber_id: int, email: str) -> str:
    """The subscriber's one-click unsubscribe URL (``site.url`` + ``unsubscribe/<token>``)."""
    base = site.url if site.url.endswith("/") else site.url + "/"
    return f"{base}unsubscribe/{tokens.unsubscribe_token(subscriber_id, email)}"


def preferences_url(site: Site, tokens: Tokens, subscriber_id: int, email: str) -> str:
    """The subscriber's signed link to choose sections and language (``preferences/<token>``)."""
    base = site.url if site.url.endswith("/") else site.url + "/"
    return f"{base}preferences/{tokens.preferences_token(subscriber_id, email)}"


def message_id_tag(secret: str, install_id: str | None = None) -> str:
    """The per-installation part of every digest Message-ID.

    The database's random installation id (:meth:`Store.install_id`) when
    given: two installations that share ``AGGREGATOR_SECRET``, or one whose
    database was reset (digest and subscriber numbers start again), then
    never mint the same Message-ID. Without it, a tag derived from the
    secret, which such installations would share.
    """
    if install_id:
        return install_id
    return hmac.new(secret.encode(), b"message-id", hashlib.sha256).hexdigest()[:12]


def list_id(site: Site) -> str:
    """The RFC 2919 ``List-Id`` of the newsletter: ``Site title <weekly.domain>``.

    The label is under the sender's domain (the domain we speak for), so it
    is globally unique; mail clients use it to filter and to offer unsubscribing.
    """
    label = f"weekly.{message_id_domain(site)}"
    phrase = " ".join(site.title.replace('"', "").split())
    return f"{_encode_header(phrase, 'List-Id')} <{label}>" if phrase else f"<{label}>"


def message_id_domain(site: Site) -> str:
    """The right-hand side of our Message-IDs: the sender's domain, else the site's host."""
    if "@" in site.sender_email:
        return site.sender_email.rsplit("@", 1)[1]
    return urlsplit(site.url).hostname or "localhost"


def open_ledger(
    store: Store, digest_id: int, *, secret: str, site: Site
) -> dict[DeliveryStatus, int]:
    """The digest's ledger rows by status, written on its first send.

    The audience of an issue is fixed by its first send: sending it again
    finishes that list, and someone who subscribed since waits for the next
    issue instead of getting an old one. (Two first sends at once both insert;
    the ledger's key keeps one row per subscriber.)
    """
    counts = store.delivery_counts(digest_id)
    if sum(counts.values()) == 0:
        store.create_deliveries(
            digest_id,
            message_id_tag=message_id_tag(secret, store.install_id()),
            message_id_domain=message_id_domain(site),
            now=utcnow(),
        )
        counts = store.delivery_counts(digest_id)
    return counts


# ------------------------------------------------------------------------- message


def _encode_header(value: str, name: str) -> str:
    """A header value as RFC 2047 encoded words when it is not plain ASCII."""
    value = " ".join(value.split())  # no CR/LF can ever reach the header block
    if value.isascii():
        return value
    return str(Header(value, "utf-8", header_name=name).encode(linesep="\r\n"))


def _address(name: str | None, email: str) -> str:
    return formataddr((clean_name(name) or "", email), charset="utf-8")


class MessageBuilder:
    """Builds the per-subscriber message bytes of one digest cheaply.

    Everything that is the same for every recipient (From, Subject, boundary,
    the split bodies) is prepared in ``__init__``; :meth:`build` only fills in
    the recipient, the date, the Message-ID and the unsubscribe URL.
    """

    def __init__(self, digest: Digest, site: Site) -> None:
        self.digest = digest
        self.sender = site.sender_email
        from_header = _address(site.sender_name or site.title, site.sender_email)
        subject = _encode_header(digest.subject, "Subject")
        self._boundary = (
            "=_kfd_" + hashlib.sha256(f"{digest.id}:{digest.subject}".encode()).hexdigest()[:24]
        )
        # "=" cannot occur in quoted-printable output unescaped, so the boundary
        # can never collide with a body line.
        self._head = (
            f"From: {from_header}\r\nSubject: {subject}\r\nList-Id: {list_id(site)}\r\n"
            "MIME-Version: 1.0\r\n"
        )
        self._text = digest.text
        self._html = digest.html
        base = site.url if site.url.endswith("/") else site.url + "/"
        self._subscribe_url = f"{base}subscribe"
        # Encoded (and dot-stuffed) once per issue; see mail/wire.py. The
        # preferences link is spliced like the unsubscribe one.
        self._text_body = SplicedBody(digest.text, UNSUBSCRIBE_PLACEHOLDER, PREFERENCES_PLACEHOLDER)
        self._html_body = SplicedBody(digest.html, UNSUBSCRIBE_PLACEHOLDER, PREFERENCES_PLACEHOLDER)

        b = self._boundary
        # The MIME skeleton around the two parts: the same in every message.
        self._preamble = (
            f"--{b}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        self._middle = (
            f"\r\n--{b}\r\n"
            'Content-Type: text/html; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        self._tail = f"\r\n--{b}--\r\n".encode("ascii")
        self._content_type = f'Content-Type: multipart/alternative; boundary="{b}"\r\n'
        self._body_hash: BodyHash | None = None

    def build(
        self,
        *,
        email: str,
        name: str | None,
        message_id: str,
        unsubscribe: str,
        preferences: str = "",
        date: datetime | None = None,
    ) -> bytes:
        """The complete message for one recipient, ready for ``sendmail``.

        ``preferences`` is the recipient's preferences link; without one (a
        test copy) the link points at the site's subscribe page instead.
        """
        head, body = self._assemble(email, name, message_id, unsubscribe, preferences, date)
        return head + self._join(body, stuffed=False)

    def build_wire(
        self,
        *,
        email: str,
        name: str | None,
        message_id: str,
        unsubscribe: str,
        preferences: str = "",
        date: datetime | None = None,
        body_hash: bool = False,
    ) -> WireMessage:
        """The same message, dot-stuffed for ``SmtpConnection.send`` to write as it is.

        With ``body_hash`` the message carries its DKIM body hash, computed
        from the issue's shared parts, so a DKIM signer signs only its header block.
        """
        head, body = self._assemble(email, name, message_id, unsubscribe, preferences, date)
        return WireMessage(
            dot_stuff(head) + self._join(body, stuffed=True),
            head=head,
            body_hash=self._hash_body(body[0]) if body_hash else None,
        )

    def _assemble(
        self,
        email: str,
        name: str | None,
        message_id: str,
        unsubscribe: str,
        preferences: str,
        date: datetime | None,
    ) -> tuple[bytes, tuple[list[bytes], list[bytes]]]:
        """The header block, and the encoded values (plain, dot-stuffed) for the bodies."""
        values = [
            SplicedBody.encode(unsubscribe),
            SplicedBody.encode(preferences or self._subscribe_url),
        ]
        head = (
            f"{self._head}"
            f"To: {_address(name, email)}\r\n"
            f"Date: {format_datetime(date or utcnow())}\r\n"
            f"Message-ID: {message_id}\r\n"
            # Only the one-click URL: a mailto: to the sender address would go
            # to a mailbox nothing reads (no bounce/unsubscribe mailbox yet).
            f"List-Unsubscribe: <{unsubscribe}>\r\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            f"{self._content_type}"
            "\r\n"
        ).encode("ascii")
        return head, (values, [dot_stuff(v) for v in values])

    def _join(self, body: tuple[list[bytes], list[bytes]], *, stuffed: bool) -> bytes:
        plain, dotted = body
        values = dotted if stuffed else None
        return b"".join(
            (
                self._preamble,
                self._text_body.render_encoded(plain, values),
                self._middle,
                self._html_body.render_encoded(plain, values),
                self._tail,
            )
        )

    def _hash_body(self, values: list[bytes]) -> bytes:
        """The DKIM body hash of this message: the fixed parts are canonicalized once."""
        if self._body_hash is None:
            plan = BodyHash()
            fixed = self._preamble
            for spliced, after in ((self._text_body, self._middle), (self._html_body, self._tail)):
                fixed += spliced.pieces[0]
                for slot, piece in zip(spliced.slots, spliced.pieces[1:], strict=True):
                    plan.add_fixed(fixed + _SOFT_BREAK)
                    plan.add_slot(slot)
                    fixed = piece
                fixed += after
            plan.add_fixed(fixed)
            self._body_hash = plan
        return self._body_hash.digest([v + _SOFT_BREAK for v in values])


class Editions:
    """The message builders of one issue, one per distinct view a subscriber asked for.

    A view is the issue's frozen sections, kept to the subscriber's choice,
    in their language. Views are keyed by what they show, not by what was
    asked (two choices that keep the same sections this week share one
    render), rendered on first need and kept for the run: a send costs one
    render per distinct view, not one per subscriber. The full issue in the
    site's language is never re-rendered: it is the frozen HTML.
    """

    def __init__(
        self, store: Store, digest: Digest, site: Site, *, config: Config | None = None
    ) -> None:
        self._store = store
        self._digest = digest
        self._site = site
        self._config = config
        self._when_empty = config.digest.when_empty if config is not None else "skip"
        self._full = MessageBuilder(digest, site)
        self._frozen: Digest | None = None
        self._views: dict[tuple[tuple[str, ...], str], MessageBuilder | None] = {}
        self.renders = 0

    @property
    def site_language(self) -> str:
        return (self._site.language or "en").split("-")[0].lower()

    def _frozen_digest(self) -> Digest:
        # The caller's Digest may come without its item list (list_digests):
        # views are made from the sections as stored with the issue.
        if self._frozen is None:
            assert self._digest.id is not None
            self._frozen = self._store.get_digest(self._digest.id) or self._digest
        return self._frozen

    def builder(self, variant: str | None) -> MessageBuilder | None:
        """The builder for a ledger row's ``variant``; None when that view is empty and
        ``digest.when_empty`` is ``skip`` (nothing is sent to that subscriber)."""
        sections, language = parse_variant(variant)
        language = language or self.site_language
        if sections is None and language == self.site_language:
            return self._full
        frozen = self._frozen_digest()
        kept = tuple(s for s in frozen.sections if sections is None or s.id in sections)
        if len(kept) == len(frozen.sections) and language == self.site_language:
            return self._full
        key = (tuple(s.id for s in kept), language)
        if key not in self._views:
            self._views[key] = self._render(frozen, kept, language)
        return self._views[key]

    def _render(
        self, frozen: Digest, kept: tuple[DigestSection, ...], language: str
    ) -> MessageBuilder | None:
        if not any(s.items for s in kept) and self._when_empty == "skip":
            return None
        titles: dict[str, str] = {}
        subject = None
        if self._config is not None:
            titles = self._config.section_titles(language)
            if language != self.site_language:
                subject = format_subject(
                    replace(self._config.digest, subject=self._config.digest.subject_for(language)),
                    self._site,
                    frozen.period_start,
                    frozen.period_end,
                )
        view = replace(
            frozen,
            sections=tuple(replace(s, title=titles.get(s.id, s.title)) for s in kept),
        )
        view = replace(view, preheader=build_preheader(view, language))
        rendered = render_digest(
            view,
            self._site,
            view_url=self._site.url.rstrip("/") + f"/digests/{frozen.id}",
            language=language,
            subject=subject,
        )
        self.renders += 1
        return MessageBuilder(
            replace(view, html=rendered.html, text=rendered.text, subject=rendered.subject),
            self._site,
        )


# ---------------------------------------------------------------------------- SMTP


def dkim_signer(
    settings: SmtpSettings, environ: Mapping[str, str] | None = None
) -> DkimSigner | None:
    """The signer for ``smtp.dkim``, or None when signing is not configured.

    Built once per connection: reading and parsing the key per message
    would cost more than the signature itself.
    """
    if settings.dkim is None:
        return None
    return DkimSigner(settings.dkim, environ=environ)


def envelope_sender(
    settings: SmtpSettings, site: Site, secret: str, delivery: ClaimedDelivery
) -> str:
    """``MAIL FROM`` (the Return-Path) of one digest delivery.

    A per-delivery VERP address when ``bounces.verp_domain`` is set, the fixed
    ``bounces.address`` when only that is, else the sender address.
    """
    from .mail.verp import verp_address

    return_path = settings.return_path
    if return_path is not None and return_path.verp_domain:
        return verp_address(
            secret, return_path.verp_domain, delivery.digest_id, delivery.subscriber_id
        )
    if return_path is not None and return_path.address:
        return return_path.address
    return site.sender_email


class _ConnectionLost(Exception):
    """The server went away mid-conversation; reconnect and carry on."""


class SmtpConnection:
    """One SMTP session reused for many messages, with TLS and login from settings."""

    def __init__(self, settings: SmtpSettings, *, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        env = os.environ if environ is None else environ
        self._username = env.get(settings.username_env, "") if settings.username_env else ""
        self._password = env.get(settings.password_env, "") if settings.password_env else ""
        if settings.username_env and not self._username:
            raise DeliveryError(
                f"smtp.username_env names {settings.username_env}, which is not set"
            )
        self._signer = dkim_signer(settings, env)
        self._client: aiosmtplib.SMTP | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def connect(self) -> None:
        """Open the session; :class:`DeliveryError` naming host:port when that fails."""
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.ssl,
            start_tls=s.starttls,
        )
        try:
            await client.connect()
            if self._username:
                await client.login(self._username, self._password)
        except aiosmtplib.SMTPAuthenticationError as error:
            raise DeliveryError(
                f"SMTP server {self.where} refused the login of {self._username!r}: "
                f"{error.code} {error.message}"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryError(f"cannot connect to SMTP server {self.where}: {error}") from None
        self._client = client

    async def reconnect(self) -> None:
        """Drop the session and open a new one, a few times with a short backoff."""
        await self.close()
        for pause in RECONNECT_PAUSES:
            try:
                await self.connect()
                return
            except DeliveryError:
                await asyncio.sleep(pause)
        await self.connect()  # the last try: its error names the server

    async def send(self, sender: str, recipient: str, message: bytes | WireMessage) -> None:
        """Hand one message over; :class:`DeliveryError` (``permanent`` for 5xx) on a refusal.

        A lost connection raises ``_ConnectionLost``; the caller reconnects. A
        ``WireMessage`` is written as it is when nothing has to rewrite it
        (no DKIM signature, ASCII addresses), else it goes the ``sendmail`` way.
        """
        if self._client is None or not self._client.is_connected:
            raise _ConnectionLost("not connected")
        wire: WireMessage | None = None
        plain = b""
        if not isinstance(message, WireMessage):
            plain = message
        elif not can_send_wire(self._client, sender, recipient):
            plain = message.plain()
        elif self._signer is None:
            wire = message
        elif message.body_hash is not None:
            # The body's hash came with the message (from the shared
            # parts): only the header block is signed here, ~1 ms in OpenSSL.
            wire = message.signed(self._signer.signature_for(message.head, message.body_hash))
        else:
            plain = message.plain()
        if wire is None and self._signer is not None:
            # ~10 ms of CPU for a 100 KB digest (dkimpy canonicalizes in Python):
            # in a thread, so the web pages served by the same loop stay responsive.
            plain = await asyncio.to_thread(self._signer.sign, plain)
        try:
            if wire is not None:
                await send_wire(self._client, sender, recipient, wire)
            else:
                await self._client.sendmail(sender, [recipient], plain)
        except aiosmtplib.SMTPRecipientsRefused as error:
            refusal = error.recipients[0] if error.recipients else None
            code = refusal.code if refusal else 450
            text = refusal.message if refusal else str(error)
            raise RecipientRefused(
                f"{code} {text}", email=recipient, permanent=code >= 500
            ) from None
        except aiosmtplib.SMTPServerDisconnected as error:
            raise _ConnectionLost(str(error)) from None
        except aiosmtplib.SMTPResponseException as error:
            if error.code == 421:  # "service closing": the connection is gone
                raise _ConnectionLost(f"{error.code} {error.message}") from None
            raise DeliveryError(
                f"{error.code} {error.message}", email=recipient, permanent=error.code >= 500
            ) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            raise _ConnectionLost(str(error) or error.__class__.__name__) from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected:
                await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


async def send_message(settings: SmtpSettings, sender: str, recipient: str, message: bytes) -> None:
    """Send one message over its own connection (confirmation mails, test copies)."""
    connection = SmtpConnection(settings)
    await connection.connect()
    try:
        try:
            await connection.send(sender, recipient, message)
        except _ConnectionLost as error:
            raise DeliveryError(
                f"SMTP server {connection.where} dropped the connection: {error}", email=recipient
            ) from None
    finally:
        await connection.close()


class _Pacer:
    """At most ``rate`` messages per second (0: no limit), evenly spaced."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self.interval


# -------------------------------------------------------------------------- ledger


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one run did, and what the ledger holds for the digest afterwards."""

    digest_id: int
    owner: str
    sent: int
    failed: int
    retried: int
    elapsed: float
    counts: dict[DeliveryStatus, int]
    # Subscribers whose sections were empty this week, and views rendered.
    skipped: int = 0
    renders: int = 0

    @property
    def pending(self) -> int:
        """Rows still to send (temporary failures, or held by a sender that died)."""
        return self.counts[DeliveryStatus.PENDING] + self.counts[DeliveryStatus.SENDING]

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


class _SentMarks:
    """``sent`` marks of accepted messages, committed a few at a time (module docstring, 2).

    A row waiting for its mark stays in ``held`` (the sender's rows under
    lease), so its lease is extended like the others' until the mark is
    committed. ``on_sent`` is called for each row once its mark is committed.
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        held: set[int],
        on_sent: Callable[[ClaimedDelivery], None] | None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._held = held
        self._on_sent = on_sent
        self._waiting: list[ClaimedDelivery] = []
        self._oldest = 0.0

    def add(self, delivery: ClaimedDelivery, *, send_started: float) -> None:
        """Note one accepted message; commit now when the server was slow, the group
        is full or its first message was accepted ``MARK_WINDOW`` ago."""
        accepted = time.monotonic()
        if not self._waiting:
            self._oldest = accepted
        self._waiting.append(delivery)
        if (
            accepted - send_started >= MARK_WINDOW
            or len(self._waiting) >= MARK_BATCH
            or accepted - self._oldest >= MARK_WINDOW
        ):
            self.flush()

    def flush(self) -> None:
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        ids = [d.id for d in waiting]
        self._store.mark_sent_many(ids, owner=self._owner, now=utcnow())
        self._held.difference_update(ids)
        if self._on_sent is not None:
            for delivery in waiting:
                self._on_sent(delivery)


def lease_margin(timeout: float, lease: timedelta) -> timedelta:
    """How much of its lease a sender must have left to send the next message.

    With less left, it extends the lease first. One SMTP timeout plus 5 s
    covers the longest a send and its mark can take, so a live sender never
    loses a row in the middle of sending it; at most half the lease, so a
    lease shorter than that is extended every half lease rather than before
    every message. A function of its own so a test pins these documented
    numbers (README, "Retries and leases"): the moment of an extension,
    measured against a clock on a loaded machine, could not tell them apart.
    """
    return timedelta(seconds=min(timeout + 5, lease.total_seconds() / 2))


def default_owner() -> str:
    """A lease owner id unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def deliver_digest(
    store: Store,
    digest: Digest,
    *,
    site: Site,
    smtp: SmtpSettings,
    secret: str,
    owner: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lease: timedelta | None = None,
    retry_delay: float = 30.0,
    on_sent: Callable[[ClaimedDelivery], None] | None = None,
    config: Config | None = None,
) -> DeliveryReport:
    """Send ``digest`` to every active subscriber who has not had it yet.

    Safe to run again at any time and in several processes at once; see the
    module docstring for the guarantees. ``lease`` is how long a claimed batch
    stays reserved for this sender if it dies (default: long enough for a
    batch at the configured rate, at least a minute). ``config`` gives the
    editions their section titles and subject per language and
    ``digest.when_empty``, applied per subscriber (see :class:`Editions`).
    """
    if digest.id is None:
        raise DeliveryError("the digest is not stored yet: compose it before sending")
    started = time.monotonic()
    owner = owner or default_owner()
    tokens = Tokens(secret)
    if lease is None:
        per_batch = batch_size / smtp.rate_per_second if smtp.rate_per_second > 0 else 0.0
        lease = timedelta(seconds=max(60.0, 3 * smtp.timeout + 2 * per_batch))
    margin = lease_margin(smtp.timeout, lease)

    open_ledger(store, digest.id, secret=secret, site=site)
    connection = SmtpConnection(smtp)
    await connection.connect()  # nothing is claimed yet: a dead server leaves all rows pending
    editions = Editions(store, digest, site, config=config)
    pacer = _Pacer(smtp.rate_per_second)
    sent = failed = retried = skipped = 0
    held: set[int] = set()
    marks = _SentMarks(store, owner, held, on_sent)
    retried_in_pass = 0
    try:
        for pass_number in range(1, smtp.max_attempts + 1):
            if pass_number > 1:
                log.info("retrying %d deliveries in %.1fs", retried_in_pass, retry_delay)
                await asyncio.sleep(retry_delay)
            retried_in_pass = 0
            pass_started = utcnow()
            while True:
                now = utcnow()
                lease_end = now + lease
                batch = store.claim_deliveries(
                    digest.id,
                    owner=owner,
                    limit=batch_size,
                    lease_until=lease_end,
                    now=now,
                    pass_started=pass_started,
                )
                if not batch:
                    break
                held.clear()  # in place: `marks` keeps a reference
                held.update(d.id for d in batch)
                for delivery in batch:
                    if lease_end - utcnow() < margin:
                        now = utcnow()
                        lease_end = now + lease
                        held &= store.extend_lease(owner, held, lease_until=lease_end, now=now)
                    if delivery.id not in held:
                        log.warning("lost the lease of delivery %d; not sending it", delivery.id)
                        continue
                    builder = editions.builder(delivery.variant)
                    if builder is None:
                        store.mark_skipped(
                            delivery.id,
                            owner=owner,
                            reason="nothing new in the subscriber's sections",
                            now=utcnow(),
                        )
                        held.discard(delivery.id)
                        skipped += 1
                        continue
                    if pacer.interval:
                        marks.flush()  # a mark never waits out a pause
                    await pacer.wait()
                    message = builder.build_wire(
                        email=delivery.email,
                        name=delivery.name,
                        message_id=delivery.message_id,
                        unsubscribe=unsubscribe_url(
                            site, tokens, delivery.subscriber_id, delivery.email
                        ),
                        preferences=preferences_url(
                            site, tokens, delivery.subscriber_id, delivery.email
                        ),
                        body_hash=smtp.dkim is not None,
                    )
                    send_started = time.monotonic()
                    try:
                        await connection.send(
                            envelope_sender(smtp, site, secret, delivery), delivery.email, message
                        )
                    except DeliveryError as error:
                        marks.flush()  # before anything slow: a retry pass, a reconnect
                        status = store.record_delivery_failure(
                            delivery,
                            owner=owner,
                            error=str(error),
                            permanent=error.permanent,
                            max_attempts=smtp.max_attempts,
                            now=utcnow(),
                        )
                        held.discard(delivery.id)
                        if status is DeliveryStatus.FAILED and isinstance(error, RecipientRefused):
                            _record_refusal(store, delivery, error)
                        if status is DeliveryStatus.FAILED:
                            failed += 1
                            log.warning("giving up on %s", error)
                        else:
                            retried += 1
                            retried_in_pass += 1
                            log.info("will retry: %s", error)
                        continue
                    except _ConnectionLost as error:
                        marks.flush()
                        store.record_delivery_failure(
                            delivery,
                            owner=owner,
                            error=f"connection lost: {error}",
                            permanent=False,
                            max_attempts=smtp.max_attempts,
                            now=utcnow(),
                        )
                        held.discard(delivery.id)
                        retried += 1
                        retried_in_pass += 1
                        log.warning(
                            "SMTP server %s dropped the connection (%s); reconnecting",
                            connection.where,
                            error,
                        )
                        await connection.reconnect()
                        continue
                    marks.add(delivery, send_started=send_started)  # leaves `held` once marked
                    sent += 1
                marks.flush()
            if not retried_in_pass:
                break
    finally:
        try:
            marks.flush()
        finally:
            if held:
                store.release_claims(owner, held)
            await connection.close()
    counts = store.delivery_counts(digest.id)
    report = DeliveryReport(
        digest_id=digest.id,
        owner=owner,
        sent=sent,
        failed=failed,
        retried=retried,
        elapsed=time.monotonic() - started,
        counts=counts,
        skipped=skipped,
        renders=editions.renders,
    )
    log.info(
        "digest #%d: sent %d, failed %d, skipped %d (empty sections), still pending %d "
        "(%.1f msg/s)",
        digest.id,
        sent,
        failed,
        skipped,
        report.pending,
        report.rate,
    )
    return report


def _record_refusal(store: Store, delivery: ClaimedDelivery, error: DeliveryError) -> None:
    """A 5xx at RCPT, given up on after ``smtp.max_attempts``: a hard bounce heard first-hand."""
    from .mail.bounces import record_smtp_refusal

    record_smtp_refusal(store, delivery, str(error))


async def send_test_copy(
    digest: Digest, recipient: str, *, site: Site, smtp: SmtpSettings, secret: str
) -> str:
    """Send one copy of ``digest`` to ``recipient`` without touching the ledger.

    The unsubscribe link points at a subscriber id that does not exist, so
    clicking it in the test copy unsubscribes nobody. Returns the Message-ID.
    """
    message_id = make_msgid("test", domain=message_id_domain(site))
    message = MessageBuilder(digest, site).build(
        email=recipient,
        name=None,
        message_id=message_id,
        unsubscribe=unsubscribe_url(site, Tokens(secret), 0, recipient),
    )
    await send_message(smtp, site.sender_email, recipient, message)
    return message_id
