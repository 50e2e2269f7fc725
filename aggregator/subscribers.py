"""Subscriber addresses: validation, CSV import and export.

Addresses are checked with email-validator (syntax only: no DNS lookups, so
imports and tests never touch the network) and stored in the normalized form it
returns, so ``Someone@Example.ORG`` and ``Someone@example.org`` are one
subscriber. Internationalized domains are stored in their ASCII (IDNA) form;
non-ASCII local parts are refused because most relays cannot deliver them.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from email_validator import EmailNotValidError, validate_email

from .errors import SubscriberError
from .models import Subscriber, SubscriberStatus
from .store import Store

__all__ = [
    "EXPORT_COLUMNS",
    "ImportReport",
    "clean_name",
    "export_csv",
    "export_text",
    "import_csv",
    "normalize_email",
]

EXPORT_COLUMNS = ("email", "name", "status", "created_at", "confirmed_at", "unsubscribed_at")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def normalize_email(raw: str) -> str:
    """The normalized address, or :class:`SubscriberError` saying what is wrong with it."""
    candidate = raw.strip()
    if not candidate:
        raise SubscriberError("the email address is empty")
    try:
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise SubscriberError(f"{candidate!r} is not a valid email address: {error}") from None
    return str(result.ascii_email or result.normalized)


def clean_name(raw: str | None) -> str | None:
    """A display name fit for a ``To:`` header: no control characters (header injection), capped."""
    if raw is None:
        return None
    name = _CONTROL.sub(" ", raw).strip()[:200]
    return name or None


@dataclass
class ImportReport:
    """What an import did; ``errors`` holds ``(line number, message)`` for rows skipped."""

    added: int = 0
    already_known: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def import_csv(
    store: Store, source: TextIO, *, now: datetime, active: bool = False
) -> ImportReport:
    """Import addresses from CSV: a header row naming ``email`` (and optionally
    ``name``, ``status``), or headerless rows ``email[,name]``.

    Bad rows are reported with their line number and skipped; the rest are
    imported. Rows whose ``status`` is ``unsubscribed`` are imported as
    unsubscribed (and unsubscribe a known address), so a suppression list
    survives a move between installations. Nobody who unsubscribed is ever
    reactivated by an import.
    """
    report = ImportReport()
    reader = csv.reader(source)
    email_col, name_col, status_col = 0, 1, None
    wanted: dict[SubscriberStatus, dict[str, str | None]] = {
        SubscriberStatus.ACTIVE if active else SubscriberStatus.PENDING: {},
        SubscriberStatus.UNSUBSCRIBED: {},
    }
    default_group = next(iter(wanted))
    first = True
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if first:
            first = False
            header = [cell.strip().lower() for cell in row]
            if "email" in header:
                email_col = header.index("email")
                name_col = header.index("name") if "name" in header else -1
                status_col = header.index("status") if "status" in header else None
                continue
        if email_col >= len(row):
            report.errors.append((line, "no email column in this row"))
            continue
        try:
            email = normalize_email(row[email_col])
        except SubscriberError as error:
            report.errors.append((line, str(error)))
            continue
        name = clean_name(row[name_col]) if 0 <= name_col < len(row) else None
        group = default_group
        if status_col is not None and status_col < len(row):
            value = row[status_col].strip().lower()
            if value == SubscriberStatus.UNSUBSCRIBED.value:
                group = SubscriberStatus.UNSUBSCRIBED
            elif value and value not in {s.value for s in SubscriberStatus}:
                report.errors.append((line, f"unknown status {value!r}"))
                continue
        wanted[group][email] = name
    known = store.existing_emails([e for group in wanted.values() for e in group])
    report.already_known = len(known)
    for status, people in wanted.items():
        if people:
            report.added += store.add_subscribers(people.items(), now=now, status=status)
    return report


def export_csv(subscribers: Iterable[Subscriber], out: TextIO) -> int:
    """Write subscribers as CSV with a header (:data:`EXPORT_COLUMNS`); returns the row count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for s in subscribers:
        writer.writerow(
            [
                s.email,
                s.name or "",
                s.status.value,
                s.created_at.isoformat(),
                s.confirmed_at.isoformat() if s.confirmed_at else "",
                s.unsubscribed_at.isoformat() if s.unsubscribed_at else "",
            ]
        )
        count += 1
    return count


def export_text(subscribers: Iterable[Subscriber]) -> str:
    """:func:`export_csv` into a string."""
    buffer = io.StringIO()
    export_csv(subscribers, buffer)
    return buffer.getvalue()
