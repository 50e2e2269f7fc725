"""Subscriber addresses: validation, CSV import and export.

Addresses are checked with email-validator (syntax only: no DNS lookups, so
imports and tests never touch the network) and stored in the normalized form it
returns, so ``Someone@Example.ORG`` and ``Someone@example.org`` are one
subscriber. Internationalized domains are stored in their ASCII (IDNA) form;
non-ASCII local parts are refused because most relays cannot deliver them.
"""

from __future__ import annotations

import codecs
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
    "decode_csv",
    "export_csv",
    "export_text",
    "import_csv",
    "normalize_email",
    "read_csv_rows",
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
    """What an import did; ``errors`` holds ``(line number, message)`` for rows skipped.

    ``held_pending`` counts rows marked active in the file that were imported
    as pending because the import was not told they confirmed (``confirmed``).
    """

    added: int = 0
    already_known: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    added_by_status: dict[SubscriberStatus, int] = field(default_factory=dict)
    held_pending: int = 0


# Column titles as spreadsheets and Korean mail services name them, best first.
_HEADER_NAMES = {
    "email": (
        "email",
        "e-mail",
        "email address",
        "e-mail address",
        "이메일",
        "이메일 주소",
        "전자우편",
        "mail",
        "메일",
        "메일 주소",
    ),
    "name": ("name", "full name", "display name", "이름", "성명", "닉네임"),
    "status": ("status", "state", "상태"),
}
_DELIMITERS = ",;\t"


def _header_key(cell: str) -> str:
    return re.sub(r"[\s_]+", " ", cell.replace("\ufeff", "").strip().lower())


def _line_of(data: bytes, offset: int, newline: bytes = b"\n") -> int:
    return data[:offset].count(newline) + 1


def decode_csv(data: bytes, *, name: str) -> str:
    """The text of a CSV file as Korean users export it.

    UTF-8 with or without a byte-order mark, UTF-16 (Excel's "Unicode text",
    with a BOM or recognisable by its zero bytes), else CP949, the Windows
    superset of EUC-KR that Korean Excel and mail services write. Raises
    :class:`SubscriberError` naming the file and line when none fits.
    """
    utf16 = None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        utf16 = "utf-16"
    elif len(data) >= 2 and data[0] != 0 and data[1] == 0:
        utf16 = "utf-16-le"
    elif len(data) >= 2 and data[0] == 0 and data[1] != 0:
        utf16 = "utf-16-be"
    if utf16 is not None:
        try:
            return data.decode(utf16)
        except UnicodeDecodeError as exc:
            line = data[: exc.start].decode(utf16, errors="ignore").count("\n") + 1
            raise SubscriberError(
                f"{name}:{line}: not valid UTF-16 ({exc.reason}); save the file again as CSV"
            ) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SubscriberError(
                f"{name}:{_line_of(data, exc.start)}: marked as UTF-8 but byte "
                f"0x{data[exc.start]:02X} is not UTF-8; save the file again as CSV UTF-8"
            ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp949")
    except UnicodeDecodeError as exc:
        raise SubscriberError(
            f"{name}:{_line_of(data, exc.start)}: cannot read byte 0x{data[exc.start]:02X}: "
            "the file is neither UTF-8, UTF-16 nor CP949/EUC-KR; save it as CSV UTF-8"
        ) from None


def _delimiter(text: str) -> str:
    """Comma, semicolon or tab: sniffed from the first lines, else the most frequent."""
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        counts = {d: first.count(d) for d in _DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def read_csv_rows(text: str, *, name: str) -> list[tuple[int, list[str]]]:
    """``(line, cells)`` for every non-empty record; a malformed file raises, naming the line.

    Parsed in full before anything is stored, so a file broken half-way
    imports nothing.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            hint = " (a quote that is never closed?)" if "end of data" in str(exc) else ""
            raise SubscriberError(
                f"{name}:{start}: malformed CSV: {exc}{hint}; nothing was imported"
            ) from None
        if row and any(cell.strip() for cell in row):
            rows.append((start, row))
        start = reader.line_num + 1


def import_csv(
    store: Store,
    source: TextIO | str,
    *,
    now: datetime,
    active: bool = False,
    confirmed: bool = False,
    name: str = "CSV",
) -> ImportReport:
    """Import addresses from CSV: a header row naming an ``email`` column (and
    optionally ``name``, ``status``; Korean titles too), or headerless rows
    ``email[,name]``; comma, semicolon or tab separated.

    Bad rows are reported with their line number and skipped; the rest are
    imported. A file that is not CSV at all raises :class:`SubscriberError`
    and imports nothing. Statuses in the file:

    * ``unsubscribed`` rows are imported unsubscribed (and unsubscribe a known
      address), so a suppression list survives a move between installations;
      nobody who unsubscribed is ever reactivated by an import;
    * ``active`` rows are imported active only with ``confirmed`` (you know
      they confirmed elsewhere), otherwise pending, counted in ``held_pending``;
    * ``active=True`` makes every row that is not unsubscribed active.
    """
    text = source if isinstance(source, str) else source.read()
    rows = read_csv_rows(text, name=name)
    report = ImportReport()
    email_col, name_col, status_col = 0, 1, None
    wanted: dict[SubscriberStatus, dict[str, str | None]] = {
        SubscriberStatus.ACTIVE: {},
        SubscriberStatus.PENDING: {},
        SubscriberStatus.UNSUBSCRIBED: {},
    }
    default = SubscriberStatus.ACTIVE if active else SubscriberStatus.PENDING
    seen: set[str] = set()
    if rows:
        line, first = rows[0]
        header = [_header_key(cell) for cell in first]
        columns = {
            key: next((header.index(n) for n in names if n in header), None)
            for key, names in _HEADER_NAMES.items()
        }
        if columns["email"] is not None:
            email_col = columns["email"]
            name_col = columns["name"] if columns["name"] is not None else -1
            status_col = columns["status"]
            rows = rows[1:]
        elif not any("@" in cell for cell in first):
            raise SubscriberError(
                f"{name}:{line}: no email column: the first row is "
                f"{', '.join(repr(c) for c in first)}; name a column email (or 이메일)"
            )
    for line, row in rows:
        if email_col >= len(row):
            report.errors.append((line, "no email column in this row"))
            continue
        try:
            email = normalize_email(row[email_col])
        except SubscriberError as error:
            report.errors.append((line, str(error)))
            continue
        display = clean_name(row[name_col]) if 0 <= name_col < len(row) else None
        group = default
        if status_col is not None and status_col < len(row):
            value = row[status_col].strip().lower()
            if value and value not in {s.value for s in SubscriberStatus}:
                report.errors.append((line, f"unknown status {value!r}"))
                continue
            if value == SubscriberStatus.UNSUBSCRIBED.value:
                group = SubscriberStatus.UNSUBSCRIBED
            elif value == SubscriberStatus.ACTIVE.value and not active:
                if confirmed:
                    group = SubscriberStatus.ACTIVE
                else:
                    report.held_pending += 1
        key = email.lower()
        if key in seen:  # the first row for an address wins, in any letter case
            continue
        seen.add(key)
        wanted[group][email] = display
    known = store.existing_emails([e for group in wanted.values() for e in group])
    report.already_known = len(known)
    for status, people in wanted.items():
        if people:
            added = store.add_subscribers(people.items(), now=now, status=status)
            report.added_by_status[status] = added
            report.added += added
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
