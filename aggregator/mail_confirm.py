"""The double opt-in email as bytes for SMTP: headers a triggered message needs, MJML body.

It is sent because someone filled in the subscribe form: not a reply to a
message, so ``Auto-Submitted: auto-generated`` (RFC 3834), which tells
vacation responders and other robots not to answer it. Its ``To:`` carries
the name the visitor gave, encoded (RFC 2047) and stripped of control
characters, so a name can neither break the header block nor add a recipient.
The HTML part is quoted-printable like the digest's (MJML output has long lines).

``aggregator.web.subscribe`` calls :func:`confirmation_message` with the same
arguments its own builder took.
"""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid

from .deliver import message_id_domain
from .models import Site, Subscriber, utcnow
from .render import render_confirmation
from .subscribers import clean_name
from .tokens import CONFIRM_MAX_AGE

__all__ = ["CONFIRM_VALID_DAYS", "confirmation_message"]

CONFIRM_VALID_DAYS = CONFIRM_MAX_AGE.days
"""How long the link works, as the email says: the confirm token's own expiry."""


def confirmation_message(
    site: Site,
    subscriber: Subscriber,
    confirm_url: str,
    *,
    valid_days: int = CONFIRM_VALID_DAYS,
    preferences_url: str | None = None,
) -> bytes:
    """The confirmation email for ``subscriber``: text and HTML, UTF-8, a fresh Message-ID.

    ``preferences_url`` (the subscriber's signed preferences link) adds "choose
    the sections and the language"; it only names the subscriber's own row.
    """
    name = clean_name(subscriber.name)
    rendered = render_confirmation(
        site,
        name=name,
        email=subscriber.email,
        confirm_url=confirm_url,
        valid_days=valid_days,
        preferences_url=preferences_url,
        language=subscriber.language,
    )
    message = EmailMessage()
    message["From"] = formataddr((site.sender_name or site.title, site.sender_email))
    # An Address object, not a string: the header is built from its parts, so
    # quotes, commas or "<...>" in a name stay inside the quoted display name.
    message["To"] = Address(display_name=name or "", addr_spec=subscriber.email)
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid("confirm", domain=message_id_domain(site))
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text, cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return message.as_bytes(policy=SMTP)
