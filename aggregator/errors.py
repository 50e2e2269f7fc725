"""One exception tree for the whole project.

Every error a user can cause or meet derives from :class:`AggregatorError` and
carries a message meant for people: it names the file and line, the feed id and
URL, or the address involved. The CLI prints ``str(error)`` on one line and
exits non-zero; a traceback reaching the user is a bug.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class: something the user can read and act on."""


class ConfigError(AggregatorError):
    """``feeds.yaml`` is missing, unreadable or invalid.

    ``path`` and ``line`` locate the problem; ``key`` is the dotted path of the
    offending setting (``sources[2].interval``).
    """

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, key: str = ""
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = message
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        label = f"{key}: " if key else ""
        super().__init__(f"{where}{label}{message}")


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))
        # The combined message already carries each location.
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class SourceError(AggregatorError):
    """A problem with one source; names the source id and URL."""

    def __init__(self, message: str, *, source_id: str = "", url: str = "") -> None:
        self.source_id = source_id
        self.url = url
        self.reason = message
        prefix = f"{source_id}: " if source_id else ""
        suffix = f" ({url})" if url else ""
        super().__init__(f"{prefix}{message}{suffix}")


class FetchError(SourceError):
    """The source could not be downloaded (network, HTTP status, size cap)."""

    def __init__(
        self,
        message: str,
        *,
        source_id: str = "",
        url: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message, source_id=source_id, url=url)


class FetchTimeout(FetchError):
    """Connecting or reading exceeded its timeout or the total deadline."""


class ResponseTooLarge(FetchError):
    """The body (after decompression) exceeded the configured size cap."""


class ParseError(SourceError):
    """The downloaded bytes are not a feed or page we can read."""


class EntryTooLarge(ParseError):
    """One entry's link or guid is over its stored-size cap: that entry is refused."""


class ScrapeError(ParseError):
    """An HTML listing no longer matches its selectors (the site changed)."""


class StoreError(AggregatorError):
    """The database is unreachable, locked or inconsistent."""


class RenderError(AggregatorError):
    """A digest template or its MJML could not be rendered."""


class DeliveryError(AggregatorError):
    """Mail could not be handed to the SMTP server."""

    def __init__(self, message: str, *, email: str = "", permanent: bool = False) -> None:
        self.email = email
        self.permanent = permanent
        super().__init__(f"{email}: {message}" if email else message)


class RecipientRefused(DeliveryError):
    """The server refused the recipient at ``RCPT TO``: a 5xx is a hard bounce heard live."""


class SubscriberError(AggregatorError):
    """An address is invalid or a subscriber operation is not allowed."""


class TokenError(AggregatorError):
    """A confirm or unsubscribe token is forged, expired or for another purpose."""


class PublishError(AggregatorError):
    """The published feed could not be written, or the WebSub hub could not be pinged.

    ``path`` names the feed file, ``url`` the hub. A failed write always leaves
    the previously published file intact; a failed ping is never fatal (the
    caller logs it and pings again after the next change).
    """

    def __init__(
        self, message: str, *, path: str = "", url: str = "", status: int | None = None
    ) -> None:
        self.path = path
        self.url = url
        self.status = status
        self.reason = message
        where = path or url
        super().__init__(f"{where}: {message}" if where else message)


class ServiceError(AggregatorError):
    """``aggregator run`` cannot start: its port is taken or another run holds the database."""


class BounceError(AggregatorError):
    """The bounce mailbox could not be reached or read (IMAP login, folder, connection).

    One bad message in the mailbox is never this error: it is skipped and logged.
    """
