"""Read bounce reports and spam complaints, and record what they say about subscribers.

A message in the bounce mailbox is one of:

- a delivery status notification (RFC 3464 ``multipart/report;
  report-type=delivery-status``) or one of the many home-made bounce formats
  (qmail, Exim, old Yahoo): flufl.bounce, Mailman's detectors, finds the failed
  recipients and whether the failure is permanent (5.x.x) or temporary (4.x.x);
- an ARF feedback report (RFC 5965 ``multipart/report;
  report-type=feedback-report``): a reader pressed "this is spam";
- anything else (an auto-reply, spam): skipped.

Which subscriber and which issue a report is about comes, in order of trust,
from our signed VERP address (:mod:`aggregator.mail.verp`), the Message-ID of
the original message quoted in the report (every delivery has its own), or the
failed address itself, accepted only if we ever sent a digest to it. A report
naming nobody we mailed is ignored with a log line: a forged bounce must not be
able to unsubscribe an arbitrary address. Every message is parsed under a size
cap and inside a ``try``: one hostile message is skipped, the job goes on.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message

import flufl.bounce

from ..models import BounceEvent, BounceKind, BounceOutcome, BounceSettings, utcnow
from ..store import Store
from ..store.bounces import DeliveryRef
from ..store.deliveries import ClaimedDelivery
from .verp import read_verp_address

__all__ = [
    "MAX_REPORT_BYTES",
    "BounceReport",
    "MailboxSummary",
    "MalformedReport",
    "process_mailbox",
    "process_message",
    "read_report",
    "record_smtp_refusal",
]

log = logging.getLogger(__name__)

# Real DSNs are a few KB, with the original message at most a few hundred;
# anything larger is not a bounce worth parsing (and could be a memory bomb).
MAX_REPORT_BYTES = 2_000_000

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^<>\s]{1,250}>)", re.IGNORECASE | re.MULTILINE)
_VERP_IN_TEXT = re.compile(rb"bounces\+[A-Za-z0-9.]{1,60}@[A-Za-z0-9.-]{1,253}", re.IGNORECASE)
_ACTION_FAILED = re.compile(r"^action:\s*failed", re.IGNORECASE | re.MULTILINE)
_STATUS = re.compile(r"^status:\s*([245])\.\d{1,3}\.\d{1,3}", re.IGNORECASE | re.MULTILINE)


class MalformedReport(ValueError):
    """The message cannot be read as mail at all (or is over the size cap)."""


@dataclass(frozen=True, slots=True)
class BounceReport:
    """What one message from the bounce mailbox says, before it is matched to anyone."""

    report_id: str
    complaint: bool = False
    permanent: frozenset[str] = frozenset()
    temporary: frozenset[str] = frozenset()
    complained: frozenset[str] = frozenset()
    original_message_ids: tuple[str, ...] = ()
    verp_addresses: tuple[str, ...] = ()
    # A standard DSN that says "failed" / 5.x.x even where no detector found the address.
    dsn_permanent: bool = False
    dsn_temporary: bool = False


def _text(value: object) -> str:
    return str(value or "")


def _is_report(message: Message, report_type: str) -> bool:
    return (
        message.get_content_type() == "multipart/report"
        and _text(message.get_param("report-type")).lower() == report_type
    )


def _feedback_fields(message: Message) -> tuple[set[str], list[str]]:
    """Recipients and sender addresses named in an ARF report's machine-readable part."""
    rcpts: set[str] = set()
    senders: list[str] = []
    for part in message.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        # The stdlib parses the part's body as a list of header blocks, or leaves text.
        blocks = payload if isinstance(payload, list) else [payload]
        for block in blocks:
            if isinstance(block, Message):
                rcpts.update(
                    _text(v).strip().strip("<>") for v in block.get_all("Original-Rcpt-To", [])
                )
                senders.extend(_text(v) for v in block.get_all("Original-Mail-From", []))
            else:
                for line in _text(block).splitlines():
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "original-rcpt-to":
                        rcpts.add(value.strip().strip("<>"))
                    elif name.strip().lower() == "original-mail-from":
                        senders.append(value.strip())
    return {r for r in rcpts if "@" in r}, senders


def _original_recipients(message: Message) -> set[str]:
    """``To`` of the original message an ARF report quotes (when Original-Rcpt-To is absent)."""
    found: set[str] = set()
    for part in message.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            first = part.get_payload(0) if part.is_multipart() else None
            inner = (
                first
                if isinstance(first, Message)
                else email.message_from_string(_text(part.get_payload(decode=False)))
            )
            for value in inner.get_all("To", []):
                for _, address in email.utils.getaddresses([_text(value)]):
                    if "@" in address:
                        found.add(address)
    return found


def read_report(raw: bytes) -> BounceReport:
    """Parse one message from the bounce mailbox; :class:`MalformedReport` when unreadable."""
    if len(raw) > MAX_REPORT_BYTES:
        raise MalformedReport(f"{len(raw)} bytes, over the {MAX_REPORT_BYTES}-byte cap")
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as exc:  # the parser is lenient, but a hostile message may still trip it
        raise MalformedReport(f"cannot parse: {exc}") from None
    if not message.keys():
        raise MalformedReport("no header block")
    own_id = _text(message.get("Message-ID")).strip()
    report_id = own_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    blank = re.search(rb"\r?\n\r?\n", raw)
    head_end = blank.start() if blank else len(raw)
    body = raw[head_end:]
    quoted_ids = tuple(
        dict.fromkeys(m.decode("ascii", "replace") for m in _MESSAGE_ID.findall(body))
    )
    verp = [
        _text(message.get(name))
        for name in ("Delivered-To", "X-Original-To", "Envelope-To", "To")
        if message.get(name)
    ]
    verp.extend(m.decode("ascii", "replace") for m in _VERP_IN_TEXT.findall(raw[:head_end]))
    if _is_report(message, "feedback-report"):
        rcpts, senders = _feedback_fields(message)
        if not rcpts:
            rcpts = _original_recipients(message)
        verp.extend(m.decode("ascii", "replace") for m in _VERP_IN_TEXT.findall(body))
        verp.extend(senders)
        return BounceReport(
            report_id=report_id,
            complaint=True,
            complained=frozenset(rcpts),
            original_message_ids=quoted_ids,
            verp_addresses=tuple(v for v in verp if "bounces+" in v.lower()),
        )
    try:
        temporary, permanent = flufl.bounce.all_failures(message)
    except Exception as exc:  # a detector tripping over bad MIME must not stop the job
        log.info("bounce detectors failed on %s: %s", report_id, exc)
        temporary, permanent = frozenset(), frozenset()
    dsn_permanent = dsn_temporary = False
    if _is_report(message, "delivery-status"):
        for part in message.walk():
            if part.get_content_type() == "message/delivery-status":
                text = part.as_string()
                codes = set(_STATUS.findall(text))
                dsn_permanent = "5" in codes or bool(_ACTION_FAILED.search(text))
                dsn_temporary = "4" in codes and not dsn_permanent
    return BounceReport(
        report_id=report_id,
        permanent=frozenset(a.decode("utf-8", "replace") for a in permanent),
        temporary=frozenset(a.decode("utf-8", "replace") for a in temporary),
        original_message_ids=quoted_ids,
        verp_addresses=tuple(v for v in verp if "bounces+" in v.lower()),
        dsn_permanent=dsn_permanent,
        dsn_temporary=dsn_temporary,
    )


# ----------------------------------------------------------------------- matching


@dataclass
class MailboxSummary:
    """What one pass over the bounce mailbox did (printed by ``aggregator bounces process``)."""

    messages: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    duplicates: int = 0
    unknown: int = 0
    skipped: int = 0
    outcomes: list[BounceOutcome] = field(default_factory=list)

    @property
    def bounced(self) -> int:
        """Distinct subscribers this pass marked bounced (two reports about one count once)."""
        return len({o.subscriber_id for o in self.outcomes if o.action == "bounced"})

    def add(self, kind: BounceKind, outcome: BounceOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.action == "duplicate":
            self.duplicates += 1
            return
        if outcome.action == "unknown":
            self.unknown += 1
            return
        if kind is BounceKind.HARD:
            self.hard += 1
        elif kind is BounceKind.SOFT:
            self.soft += 1
        else:
            self.complaints += 1


def _kind(report: BounceReport, email_address: str | None) -> BounceKind | None:
    """Hard or soft for this address (or for the report as a whole when None)."""
    if report.complaint:
        return BounceKind.COMPLAINT
    lowered = email_address.lower() if email_address else None
    if lowered is not None:
        if lowered in {a.lower() for a in report.permanent}:
            return BounceKind.HARD
        if lowered in {a.lower() for a in report.temporary}:
            return BounceKind.SOFT
    if report.permanent or report.dsn_permanent:
        return BounceKind.HARD
    if report.temporary or report.dsn_temporary:
        return BounceKind.SOFT
    return None


def _matched_deliveries(
    store: Store, report: BounceReport, secret: str
) -> tuple[list[DeliveryRef], str]:
    """The deliveries a report is about, and how they were found (for the log)."""
    for address in report.verp_addresses:
        token = read_verp_address(secret, address)
        if token is None:
            # Made by someone without the secret: the addresses it names are
            # not believed either, or the token would protect nothing.
            log.warning("bounce %s: VERP address %s has a bad signature", report.report_id, address)
            return [], "forged VERP"
        ref = store.delivery_ref(token.digest_id, token.subscriber_id)
        if ref is not None:
            return [ref], "VERP"
    for message_id in report.original_message_ids:
        ref = store.delivery_by_message_id(message_id)
        if ref is not None:
            return [ref], "Message-ID"
    named = report.complained | report.permanent | report.temporary
    refs = [ref for a in sorted(named) if (ref := store.last_delivery_to(a)) is not None]
    return refs, "address"


def process_message(
    store: Store,
    raw: bytes,
    *,
    secret: str,
    settings: BounceSettings,
    summary: MailboxSummary,
    now: datetime | None = None,
    where: str = "",
) -> None:
    """Read one message and record what it says; problems are logged, never raised."""
    now = now or utcnow()
    summary.messages += 1
    label = where or "message"
    try:
        report = read_report(raw)
    except MalformedReport as exc:
        summary.skipped += 1
        log.warning("bounce mailbox: skipped %s: %s", label, exc)
        return
    except Exception as exc:  # hostile MIME can trip the stdlib parser in odd places
        summary.skipped += 1
        log.warning(
            "bounce mailbox: skipped %s: unreadable (%s: %s)", label, type(exc).__name__, exc
        )
        return
    refs, how = _matched_deliveries(store, report, secret)
    if not refs and how == "forged VERP":
        summary.skipped += 1
        return
    if not refs:
        summary.skipped += 1
        named = sorted(report.complained | report.permanent | report.temporary)
        if named:
            log.warning(
                "bounce mailbox: skipped %s (%s): names %s, whom no digest was sent to",
                label,
                report.report_id,
                ", ".join(named[:5]),
            )
        else:
            log.info(
                "bounce mailbox: skipped %s (%s): not a bounce report", label, report.report_id
            )
        return
    for ref in refs:
        kind = _kind(report, ref.email)
        if kind is None:
            summary.skipped += 1
            log.info(
                "bounce mailbox: skipped %s (%s): quotes a digest but reports no failure",
                label,
                report.report_id,
            )
            continue
        outcome = store.record_bounce(
            BounceEvent(
                key=f"imap:{report.report_id}:{ref.subscriber_id}:{kind.value}",
                email=ref.email,
                kind=kind,
                origin="imap",
                digest_id=ref.digest_id,
                subscriber_id=ref.subscriber_id,
                diagnostic=f"report {report.report_id} (matched by {how})",
            ),
            now=now,
            soft_limit=settings.soft_limit,
            soft_window=settings.soft_window_issues,
        )
        summary.add(kind, outcome)
        log.info("bounce mailbox: %s %s: %s (%s)", kind.value, ref.email, outcome.action, how)


def record_smtp_refusal(
    store: Store,
    delivery: ClaimedDelivery,
    reply: str,
    *,
    now: datetime | None = None,
) -> BounceOutcome:
    """A 5xx at ``RCPT TO`` while sending: the same consequence as a hard bounce report.

    Keyed by the delivery, so the retries of one refused delivery count once.
    """
    return store.record_bounce(
        BounceEvent(
            key=f"smtp:{delivery.digest_id}:{delivery.subscriber_id}",
            email=delivery.email,
            kind=BounceKind.HARD,
            origin="smtp",
            digest_id=delivery.digest_id,
            subscriber_id=delivery.subscriber_id,
            diagnostic=f"refused while sending: {reply}",
        ),
        now=now or utcnow(),
    )


def process_mailbox(
    store: Store,
    settings: BounceSettings,
    *,
    secret: str,
    environ: Mapping[str, str] | None = None,
) -> MailboxSummary:
    """One pass over the bounce mailbox: read, record and flag every new message.

    Raises :class:`~aggregator.errors.BounceError` when the mailbox itself
    cannot be reached; a message that cannot be read is skipped and flagged
    like the others, so it is not read again on every pass.
    """
    from .imap import BounceMailbox

    summary = MailboxSummary()
    if settings.imap is None:
        return summary
    with BounceMailbox(settings.imap, environ=environ) as mailbox:
        for uid, size in mailbox.unprocessed():
            where = f"{settings.imap.folder} UID {uid}"
            if size > MAX_REPORT_BYTES:
                summary.messages += 1
                summary.skipped += 1
                log.warning(
                    "bounce mailbox: skipped %s: %d bytes, over the %d-byte cap",
                    where,
                    size,
                    MAX_REPORT_BYTES,
                )
            else:
                process_message(
                    store,
                    mailbox.fetch(uid),
                    secret=secret,
                    settings=settings,
                    summary=summary,
                    where=where,
                )
            mailbox.mark_processed(uid)
    log.info(
        "bounce mailbox: %d messages, %d hard, %d soft, %d complaints, %d skipped",
        summary.messages,
        summary.hard,
        summary.soft,
        summary.complaints,
        summary.skipped,
    )
    return summary
