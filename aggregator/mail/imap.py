"""The bounce mailbox over IMAP (the standard library's imaplib).

Messages are found and marked by UID, so a pass that dies half way leaves the
read ones marked and the rest for the next pass. "Processed" is the IMAP
keyword :data:`PROCESSED_KEYWORD` plus ``\\Seen``: a keyword survives a client
marking the message unread, and the mailbox stays browsable by a human (who
sees which messages the service has read). The database's unique report key is
the second guard: a message marked by nobody (a server without keywords) is
still counted once.
"""

from __future__ import annotations

import imaplib
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from types import TracebackType

from ..errors import BounceError
from ..models import ImapSettings

__all__ = ["PROCESSED_KEYWORD", "BounceMailbox"]

PROCESSED_KEYWORD = "AggregatorProcessed"
_SIZE = re.compile(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)")


class BounceMailbox:
    """One IMAP session on the bounce folder; use as a context manager."""

    def __init__(self, settings: ImapSettings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        env = os.environ if environ is None else environ
        self._username = env.get(settings.username_env, "")
        self._password = env.get(settings.password_env, "")
        for name, value in (
            (settings.username_env, self._username),
            (settings.password_env, self._password),
        ):
            if not value:
                raise BounceError(
                    f"bounces.imap names the environment variable {name}, which is not set"
                )
        self._imap: imaplib.IMAP4 | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def __enter__(self) -> BounceMailbox:
        s = self.settings
        try:
            if s.tls:
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    s.host, s.port, ssl_context=ssl.create_default_context(), timeout=s.timeout
                )
            else:
                imap = imaplib.IMAP4(s.host, s.port, timeout=s.timeout)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise BounceError(f"cannot connect to the bounce mailbox {self.where}: {exc}") from None
        try:
            imap.login(self._username, self._password)
        except imaplib.IMAP4.error as exc:
            imap.shutdown()
            raise BounceError(
                f"the bounce mailbox {self.where} refused the login of {self._username!r}: "
                f"{_decode(exc)}"
            ) from None
        try:
            status, data = imap.select(_quote(s.folder))
        except (imaplib.IMAP4.error, OSError) as exc:
            status, data = "NO", [str(exc).encode()]
        if status != "OK":
            imap.logout()
            raise BounceError(
                f"the bounce mailbox {self.where} has no folder {s.folder!r}: "
                f"{_decode(data[0] if data else b'')}"
            )
        self._imap = imap
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        imap, self._imap = self._imap, None
        if imap is None:
            return
        try:
            imap.close()
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            imap.shutdown()

    def _session(self) -> imaplib.IMAP4:
        if self._imap is None:
            raise BounceError("the bounce mailbox is not open")
        return self._imap

    def _call(self, what: str, *args: str) -> list[object]:
        """One UID command; a protocol or network failure is a :class:`BounceError`."""
        try:
            status, data = self._session().uid(what, *args)
        except (TimeoutError, imaplib.IMAP4.error, OSError) as exc:
            raise BounceError(f"bounce mailbox {self.where}: {what} failed: {exc}") from None
        if status != "OK":
            raise BounceError(f"bounce mailbox {self.where}: {what} refused: {data!r}")
        return list(data)

    def unprocessed(self) -> Iterator[tuple[int, int]]:
        """(UID, size) of every message not yet marked processed, oldest first."""
        data = self._call("SEARCH", "UNKEYWORD", PROCESSED_KEYWORD)
        uids = [int(u) for u in b" ".join(d for d in data if isinstance(d, bytes)).split()]
        for start in range(0, len(uids), 200):
            chunk = uids[start : start + 200]
            sizes: dict[int, int] = {}
            for item in self._call("FETCH", ",".join(map(str, chunk)), "(UID RFC822.SIZE)"):
                line = item[0] if isinstance(item, tuple) else item
                if not isinstance(line, bytes):
                    continue
                match = _SIZE.search(line)
                if match:
                    uid = match.group(1) or match.group(4)
                    size = match.group(2) or match.group(3)
                    sizes[int(uid)] = int(size)
            for uid in chunk:
                yield uid, sizes.get(uid, 0)

    def fetch(self, uid: int) -> bytes:
        """The raw message; ``BODY.PEEK`` so fetching does not set ``\\Seen`` by itself."""
        for item in self._call("FETCH", str(uid), "(BODY.PEEK[])"):
            if isinstance(item, tuple) and len(item) >= 2 and isinstance(item[1], bytes):
                return item[1]
        return b""

    def mark_processed(self, uid: int) -> None:
        """Flag the message ``\\Seen`` and with :data:`PROCESSED_KEYWORD`."""
        self._call("STORE", str(uid), "+FLAGS.SILENT", f"(\\Seen {PROCESSED_KEYWORD})")


def _quote(folder: str) -> str:
    """A folder name as an IMAP quoted string (names may contain spaces)."""
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _decode(value: object) -> str:
    if isinstance(value, imaplib.IMAP4.error):
        value = value.args[0] if value.args else ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
