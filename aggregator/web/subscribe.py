"""Double opt-in: ``/subscribe``, ``/confirm/<token>``, ``/unsubscribe/<token>``.

Safe methods never change anything. Every path has a GET handler (Starlette
answers HEAD with it) that only reads, and a separate POST handler; mail link
scanners, which follow links with HEAD and GET, cannot subscribe, confirm or
unsubscribe anyone.

- ``GET /subscribe`` shows the form with a CSRF token (its nonce in a
  cookie). ``POST /subscribe`` is refused with 403 when the token is missing,
  forged or stale, or when ``Origin``/``Referer``/``Sec-Fetch-Site`` say the
  form came from another site. Otherwise it answers with the same page
  whatever the address's state (new, pending, active, unsubscribed), so the
  form cannot be used to find out who subscribes. A confirmation email goes
  out after the response (a background task), so timing does not tell either;
  an address that is already active gets no mail.
- Limits: each client address (see :func:`~aggregator.web.security.client_address`;
  ``X-Forwarded-For`` counts only from ``web.trusted_proxies``) may post
  :data:`SUBSCRIBE_LIMIT` times per :data:`SUBSCRIBE_WINDOW` seconds, then
  gets 429 with ``Retry-After``; each mailbox gets at most
  :data:`CONFIRM_MAILS_PER_ADDRESS` confirmation mails per
  :data:`CONFIRM_MAIL_WINDOW`, whatever the number of clients asking (past
  that the answer is unchanged and no mail is sent).
- The name field may not hold a web or email address and is never put into
  the confirmation mail: that mail goes to an address nobody has vouched for
  yet, so nothing a stranger typed may appear in it.
- ``GET /confirm/<token>`` checks the token and shows a page with a button;
  its ``POST`` activates the subscriber (see :mod:`aggregator.tokens`).
- ``GET /unsubscribe/<token>`` shows a page with a button (or says the
  address is already unsubscribed); ``POST`` with the button's field, or RFC
  8058's ``List-Unsubscribe=One-Click`` body from a mail client, unsubscribes.
- No dead ends: an invalid or expired link shows a form to unsubscribe by
  address (``POST /unsubscribe``, CSRF-protected and rate-limited like the
  subscribe form). It answers the same whether or not the address is
  subscribed and mails an active subscriber a fresh unsubscribe link, after
  the response. Pages after an unsubscribe or a failed confirmation link to
  the subscribe form.

Pages are ``templates/mail/page.html.j2`` in the site's layout, rendered by
:func:`aggregator.render.render_page` with autoescaping. Token
pages are sent with ``Referrer-Policy: no-referrer`` and ``Cache-Control:
no-store`` so the token does not leak to other sites or shared caches.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any
from urllib.parse import urlsplit

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from ..deliver import message_id_domain, send_message
from ..errors import AggregatorError, SubscriberError, TokenError
from ..mail_confirm import CONFIRM_VALID_DAYS, confirmation_message
from ..models import Site, SmtpSettings, Subscriber, SubscriberStatus, utcnow
from ..render import render_page
from ..subscribers import clean_name, normalize_email
from ..tokens import Tokens
from .context import WebContext
from .ratelimit import RateLimiter
from .security import FormTokens, client_address, cross_site_reason

__all__ = [
    "CONFIRM_MAILS_PER_ADDRESS",
    "CONFIRM_MAIL_WINDOW",
    "CSRF_COOKIE",
    "FORM_MAX_AGE",
    "FORM_SALT",
    "MAX_NAME_LENGTH",
    "SUBSCRIBE_LIMIT",
    "SUBSCRIBE_WINDOW",
    "UNSUBSCRIBE_CSRF_COOKIE",
    "RateLimiter",
    "confirmation_message",
    "mailbox_key",
    "name_problem",
    "routes",
    "unsubscribe_link_message",
]

log = logging.getLogger(__name__)

SUBSCRIBE_LIMIT = 5
SUBSCRIBE_WINDOW = 3600.0

CONFIRM_MAILS_PER_ADDRESS = 3
CONFIRM_MAIL_WINDOW = 86400
"""At most :data:`CONFIRM_MAILS_PER_ADDRESS` confirmation mails per mailbox in this many seconds."""

MAX_NAME_LENGTH = 100

FORM_MAX_AGE = 86400
"""Seconds a subscribe form's CSRF token stays valid (a tab left open overnight works)."""
CSRF_COOKIE = "subscribe_csrf"
UNSUBSCRIBE_CSRF_COOKIE = "unsubscribe_csrf"
FORM_SALT = "aggregator.subscribe.form.v1"
UNSUBSCRIBE_FORM_SALT = "aggregator.unsubscribe.form.v1"

# The buttons' fields: a POST must carry one of these to change anything, so a
# stray POST with an empty body (a prefetcher, a crawler) does nothing.
CONFIRM_FIELD = ("confirm", "yes")
UNSUBSCRIBE_FIELD = ("unsubscribe", "yes")
ONE_CLICK = ("List-Unsubscribe", "One-Click")

# What mail clients turn into links: a scheme, "www.", an address, or a dotted
# host name (full-width and ideographic dots too, which IDNA reads as dots).
_URL_LIKE = re.compile(
    r"://|\b(?:mailto|javascript|data|vbscript|file|tel|sms):|www[.。．｡]|@"
    r"|[\w-][.。．｡]\w{2,}",
    re.IGNORECASE,
)

_PRIVATE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}


PAGE_TEMPLATE = "mail/page.html.j2"


def unsubscribe_link_message(site: Site, email: str, unsubscribe_url: str) -> bytes:
    """The mail that answers "unsubscribe me" typed on the site: the address's own link.

    Plain text, nothing a visitor typed in it but the address it goes to: like
    the confirmation, it reaches a mailbox whose owner may not have asked.
    """
    message = EmailMessage()
    message["From"] = formataddr((site.sender_name or site.title, site.sender_email))
    message["To"] = email
    message["Subject"] = f"Your link to unsubscribe from {site.title}"
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid("unsubscribe", domain=message_id_domain(site))
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"Someone (hopefully you) asked on {site.url} to stop sending {site.title} to {email}.\n"
        f"\nTo unsubscribe, open this page and press its Unsubscribe button:\n\n"
        f"{unsubscribe_url}\n\nIf it was not you, ignore this message: nothing changes.\n",
        cte="quoted-printable",
    )
    return message.as_bytes(policy=SMTP)


async def _send_mail(smtp: SmtpSettings, sender: str, recipient: str, data: bytes) -> None:
    try:
        await send_message(smtp, sender, recipient, data)
    except AggregatorError as error:
        # The visitor already has their answer; the operator needs to know.
        log.error("mail to %s not sent: %s", recipient, error)


def mailbox_key(email: str) -> str:
    """One key per inbox: case folded and ``+tag`` dropped, so variants share a quota."""
    local, _, domain = email.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}".lower()


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be stored (it would carry a link into our mail), or None."""
    if len(name) > MAX_NAME_LENGTH:
        return f"A name can have at most {MAX_NAME_LENGTH} characters."
    if _URL_LIKE.search(name):
        return "A name cannot contain a web or email address."
    return None


def routes(ctx: WebContext) -> list[BaseRoute]:
    """The subscribe, confirm and unsubscribe routes, sharing their rate limiters.

    Each path has one handler for GET (and so HEAD), which only reads, and a
    separate one for POST, which may write (:func:`_read_or_write`): a safe
    method cannot reach code that changes anything.
    """
    per_client = RateLimiter(SUBSCRIBE_LIMIT, SUBSCRIBE_WINDOW)
    per_mailbox = RateLimiter(CONFIRM_MAILS_PER_ADDRESS, CONFIRM_MAIL_WINDOW)
    ctx.rate_limiters["subscribe.client"] = per_client
    ctx.rate_limiters["subscribe.mailbox"] = per_mailbox
    # Asking for an unsubscribe link by address has the same limits, counted apart.
    unsubscribe_client = RateLimiter(SUBSCRIBE_LIMIT, SUBSCRIBE_WINDOW)
    unsubscribe_mailbox = RateLimiter(CONFIRM_MAILS_PER_ADDRESS, CONFIRM_MAIL_WINDOW)
    ctx.rate_limiters["unsubscribe.client"] = unsubscribe_client
    ctx.rate_limiters["unsubscribe.mailbox"] = unsubscribe_mailbox
    form_tokens = FormTokens(ctx.secret, salt=FORM_SALT, max_age=FORM_MAX_AGE)
    unsubscribe_form_tokens = FormTokens(
        ctx.secret, salt=UNSUBSCRIBE_FORM_SALT, max_age=FORM_MAX_AGE
    )

    def tokens() -> Tokens:
        return Tokens(ctx.secret)

    def page(status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Response:
        values = {
            "error": "",
            "error_field": "",
            # The page's own heading is its one <h1>; the site title is a plain line.
            "masthead_heading": False,
            "kicker": "",
            "subscribe_again": False,
            "message": "",
            "form": "",
            "action": "",
            "email": "",
            "name": "",
            "csrf": "",
            "button": "",
            "button_field": ("", ""),
            **context,
        }
        return HTMLResponse(
            render_page(PAGE_TEMPLATE, ctx.config.site, values),
            status_code=status,
            headers={**_PRIVATE_HEADERS, **(headers or {})},
        )

    def base_url() -> str:
        url = ctx.config.site.url
        return url if url.endswith("/") else url + "/"

    def with_form_token(
        request: Request,
        cookie_name: str,
        path: str,
        issuer: FormTokens,
        make: Callable[[str], Response],
    ) -> Response:
        """``make(csrf_token)``, plus the cookie holding the token's nonce (scoped to ``path``)."""
        cookie, token = issuer.issue(request.cookies.get(cookie_name))
        response = make(token)
        response.set_cookie(
            cookie_name,
            cookie,
            max_age=FORM_MAX_AGE,
            path=urlsplit(base_url()).path + path,
            secure=base_url().startswith("https:"),
            httponly=True,
            samesite="strict",
        )
        return response

    def form_page(request: Request, status: int = 200, **context: Any) -> Response:
        """The subscribe form, with a CSRF token and its cookie."""
        return with_form_token(
            request,
            CSRF_COOKIE,
            "subscribe",
            form_tokens,
            lambda token: page(
                status,
                heading="Subscribe",
                form="subscribe",
                action=f"{base_url()}subscribe",
                csrf=token,
                current="subscribe",
                **context,
            ),
        )

    def unsubscribe_form_page(request: Request, status: int = 200, **context: Any) -> Response:
        """The unsubscribe-by-address form: the way forward from a link that does not work."""
        values: dict[str, Any] = {
            "heading": "Unsubscribe",
            "message": "Enter your address and we will email it a link to unsubscribe.",
            **context,
        }
        # Path "unsubscribe" covers /unsubscribe and every /unsubscribe/<token> page.
        return with_form_token(
            request,
            UNSUBSCRIBE_CSRF_COOKIE,
            "unsubscribe",
            unsubscribe_form_tokens,
            lambda token: page(
                status, form="unsubscribe", action=f"{base_url()}unsubscribe", csrf=token, **values
            ),
        )

    def invalid_link(error: Exception, **context: Any) -> Response:
        return page(400, heading="Link not valid", error=f"{str(error).capitalize()}.", **context)

    def invalid_unsubscribe_link(request: Request, error: Exception) -> Response:
        return unsubscribe_form_page(
            request,
            400,
            heading="Link not valid",
            error=f"{str(error).capitalize()}.",
            message="You can still unsubscribe: enter your address and we will email it "
            "a new link.",
        )

    async def accepted_form(
        request: Request,
        tokens: FormTokens,
        cookie: str,
        limiter: RateLimiter,
        refuse: Callable[..., Response],
    ) -> FormData | Response:
        """The posted form, or the answer when it fails a check every form post must pass.

        In order: the cross-site check (Origin/Referer/Sec-Fetch-Site), the
        signed CSRF token against its cookie (403 with the form again), then
        the per-client limit (429 with Retry-After). Only a form that passed
        all three reaches the code that may write or mail.
        """
        reason = cross_site_reason(request.headers, ctx.config.site.url)
        if reason is None:
            form = await request.form()
            reason = tokens.check(_field(form, "csrf"), request.cookies.get(cookie))
        if reason is not None:
            log.warning("%s refused (403): %s", request.url.path, reason)
            return refuse(
                request,
                403,
                error=f"This form could not be accepted: {reason}. "
                "Please submit it again from this page.",
            )
        wait = limiter.hit(client_address(request.scope, ctx.config.web.trusted_proxies))
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            return page(
                429,
                {"Retry-After": str(seconds)},
                heading="Too many requests",
                error=f"Please try again in {math.ceil(seconds / 60)} minutes.",
            )
        return form

    async def show_form(request: Request) -> Response:
        return form_page(request)

    async def subscribe(request: Request) -> Response:
        form = await accepted_form(request, form_tokens, CSRF_COOKIE, per_client, form_page)
        if isinstance(form, Response):
            return form
        raw_email = _field(form, "email")
        raw_name = _field(form, "name")
        name = clean_name(raw_name) or ""
        problem = name_problem(name)
        try:
            email = normalize_email(raw_email)
        except SubscriberError:
            problem = "That does not look like an email address."
            field = "email"
        else:
            field = "name"
        if problem is not None:
            return form_page(
                request,
                400,
                error=problem,
                error_field=field,
                email=raw_email[:320],
                name=raw_name[: MAX_NAME_LENGTH * 2],
            )
        subscriber, _ = await run_in_threadpool(
            ctx.store.add_subscriber, email, name=name or None, now=utcnow()
        )
        task = None
        suppressed = await run_in_threadpool(ctx.store.is_suppressed, subscriber.email)
        if suppressed:
            # Hard-bounced or complained: never mailed again, not even a
            # confirmation (same answer as always: the page tells nothing).
            log.warning("no confirmation mail to %s: the address is suppressed", subscriber.email)
        elif subscriber.status is not SubscriberStatus.ACTIVE:
            if per_mailbox.hit(mailbox_key(subscriber.email)) is not None:
                # Same answer as always (the page must not tell what happened), no mail.
                log.warning(
                    "no confirmation mail to %s: %d already sent in the last %d hours",
                    subscriber.email,
                    CONFIRM_MAILS_PER_ADDRESS,
                    CONFIRM_MAIL_WINDOW // 3600,
                )
            else:
                token = tokens().confirm_token(subscriber.id, subscriber.email)
                data = confirmation_message(
                    ctx.config.site, subscriber, f"{base_url()}confirm/{token}"
                )
                task = BackgroundTask(
                    _send_mail,
                    ctx.config.smtp,
                    ctx.config.site.sender_email,
                    subscriber.email,
                    data,
                )
        response = page(
            heading="Check your inbox",
            message=(
                f"If {email} is not subscribed yet, we have sent it a link to confirm. "
                f"The link is valid for {CONFIRM_VALID_DAYS} days."
            ),
        )
        response.background = task
        return response

    async def read_confirm(token: str) -> Subscriber:
        """The subscriber a valid confirm token names; reads only."""
        claims = tokens().read_confirm(token)
        subscriber = await run_in_threadpool(ctx.store.get_subscriber, claims.subscriber_id)
        if subscriber is None or subscriber.email != claims.email:
            raise TokenError("this confirmation link is not valid")
        left = subscriber.unsubscribed_at
        if (
            left is not None
            and claims.issued_at is not None
            and claims.issued_at < left.replace(microsecond=0)
        ):
            raise TokenError("this confirmation link is older than your unsubscribe")
        return subscriber

    async def confirm_page(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            subscriber = await read_confirm(token)
        except (TokenError, SubscriberError) as error:
            return invalid_link(error, subscribe_again=True)
        if subscriber.status is SubscriberStatus.ACTIVE:
            return page(
                heading="You are subscribed",
                message=f"{subscriber.email} gets {ctx.config.site.title} every week.",
            )
        return page(
            heading="Confirm your subscription",
            message=f"Send {ctx.config.site.title} to {subscriber.email} every week?",
            form="button",
            action=f"{base_url()}confirm/{token}",
            button="Confirm my subscription",
            button_field=CONFIRM_FIELD,
        )

    async def confirm(request: Request) -> Response:
        token = request.path_params["token"]
        form = await request.form()
        if _field(form, CONFIRM_FIELD[0]) != CONFIRM_FIELD[1]:
            return page(
                400,
                heading="Not confirmed",
                error="This request did not come from the confirmation button.",
            )
        try:
            subscriber = await read_confirm(token)
            await run_in_threadpool(
                ctx.store.confirm_subscriber, subscriber.id, subscriber.email, now=utcnow()
            )
        except (TokenError, SubscriberError) as error:
            return invalid_link(error, subscribe_again=True)
        return page(
            heading="You are subscribed",
            message=f"{subscriber.email} will get {ctx.config.site.title} every week.",
        )

    async def unsubscribe_page(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            claims = tokens().read_unsubscribe(token)
            subscriber = await run_in_threadpool(ctx.store.get_subscriber, claims.subscriber_id)
            if subscriber is None or subscriber.email != claims.email:
                raise TokenError("this unsubscribe link is not valid")
        except (TokenError, SubscriberError) as error:
            return invalid_unsubscribe_link(request, error)
        if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
            # A mail client's one-click unsubscribe got here first: say so, do not offer a button.
            return page(
                heading="You are already unsubscribed",
                message=f"{subscriber.email} gets no more email from {ctx.config.site.title}.",
                subscribe_again=True,
            )
        return page(
            heading="Unsubscribe",
            message=f"Stop sending {ctx.config.site.title} to {subscriber.email}?",
            form="button",
            action=f"{base_url()}unsubscribe/{token}",
            button="Unsubscribe",
            button_field=UNSUBSCRIBE_FIELD,
        )

    async def unsubscribe(request: Request) -> Response:
        form = await request.form()
        # RFC 8058's one-click body, or the button on our own page: nothing else.
        if not any(_field(form, key) == value for key, value in (ONE_CLICK, UNSUBSCRIBE_FIELD)):
            return page(
                400,
                heading="Not unsubscribed",
                error="This request did not come from the unsubscribe button.",
            )
        try:
            claims = tokens().read_unsubscribe(request.path_params["token"])
            await run_in_threadpool(
                ctx.store.unsubscribe_subscriber,
                claims.subscriber_id,
                claims.email,
                now=utcnow(),
            )
        except (TokenError, SubscriberError) as error:
            return invalid_unsubscribe_link(request, error)
        return page(
            heading="You are unsubscribed",
            message=f"{claims.email} will get no more email from {ctx.config.site.title}.",
            subscribe_again=True,
        )

    async def show_unsubscribe_form(request: Request) -> Response:
        return unsubscribe_form_page(request)

    async def request_unsubscribe(request: Request) -> Response:
        """Mail an active subscriber their unsubscribe link; answer alike for every address."""
        form = await accepted_form(
            request,
            unsubscribe_form_tokens,
            UNSUBSCRIBE_CSRF_COOKIE,
            unsubscribe_client,
            unsubscribe_form_page,
        )
        if isinstance(form, Response):
            return form
        raw_email = _field(form, "email")
        try:
            email = normalize_email(raw_email)
        except SubscriberError:
            return unsubscribe_form_page(
                request,
                400,
                error="That does not look like an email address.",
                error_field="email",
                email=raw_email[:320],
            )
        subscriber = await run_in_threadpool(ctx.store.subscriber_by_email, email)
        if subscriber is None and email != email.lower():
            # Stored as typed at sign-up; most people type it in lower case later (or earlier).
            subscriber = await run_in_threadpool(ctx.store.subscriber_by_email, email.lower())
        task = None
        if subscriber is not None and await run_in_threadpool(
            ctx.store.is_suppressed, subscriber.email
        ):
            # Hard-bounced or complained: never mailed again (the answer stays the same).
            log.warning("no unsubscribe-link mail to %s: the address is suppressed", email)
        elif subscriber is not None and subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
            if unsubscribe_mailbox.hit(mailbox_key(subscriber.email)) is not None:
                log.warning(
                    "no unsubscribe-link mail to %s: %d already sent in the last %d hours",
                    subscriber.email,
                    CONFIRM_MAILS_PER_ADDRESS,
                    CONFIRM_MAIL_WINDOW // 3600,
                )
            else:
                token = tokens().unsubscribe_token(subscriber.id, subscriber.email)
                data = unsubscribe_link_message(
                    ctx.config.site, subscriber.email, f"{base_url()}unsubscribe/{token}"
                )
                task = BackgroundTask(
                    _send_mail,
                    ctx.config.smtp,
                    ctx.config.site.sender_email,
                    subscriber.email,
                    data,
                )
        # The same page for every address, and the mail goes out after it, so
        # neither the answer nor its timing tells who subscribes.
        response = page(
            heading="Check your inbox",
            message=f"If {email} gets {ctx.config.site.title}, we have sent it a link to "
            "unsubscribe.",
        )
        response.background = task
        return response

    return [
        _read_or_write("/subscribe", show_form, subscribe),
        _read_or_write("/confirm/{token}", confirm_page, confirm),
        _read_or_write("/unsubscribe", show_unsubscribe_form, request_unsubscribe),
        _read_or_write("/unsubscribe/{token}", unsubscribe_page, unsubscribe),
    ]


Endpoint = Callable[[Request], Awaitable[Response]]


def _read_or_write(path: str, read: Endpoint, write: Endpoint) -> Route:
    """One route: POST goes to ``write``; GET and HEAD, and nothing else, to ``read``.

    ``read`` must only read. Keeping the choice here, in one line, is what
    makes "a link scanner cannot change anything" hold for every path, while
    a 405 still lists every method the path allows.
    """

    async def endpoint(request: Request) -> Response:
        return await (write if request.method == "POST" else read)(request)

    return Route(path, endpoint, methods=["GET", "POST"])


def _field(form: FormData, key: str) -> str:
    """A text field of the form, "" when absent or a file (a junk multipart body)."""
    value = form.get(key)
    return value if isinstance(value, str) else ""
