"""Double opt-in: ``/subscribe``, ``/confirm/<token>``, ``/unsubscribe/<token>``.

- ``GET /subscribe`` shows the form; ``POST /subscribe`` answers with the same
  page whatever the address's state (new, pending, active, unsubscribed), so
  the form cannot be used to find out who subscribes. A confirmation email goes
  out after the response (a background task), so timing does not tell either;
  an address that is already active gets no mail. Each client IP may post
  :data:`SUBSCRIBE_LIMIT` times per :data:`SUBSCRIBE_WINDOW` seconds, then gets
  429 with ``Retry-After``. Behind a reverse proxy run uvicorn with
  ``--proxy-headers --forwarded-allow-ips`` so the client IP is the real one.
- ``GET /confirm/<token>`` activates the subscriber named in a valid,
  unexpired confirm token (see :mod:`aggregator.tokens`).
- ``GET /unsubscribe/<token>`` shows a confirmation page with a POST form;
  ``POST /unsubscribe/<token>`` unsubscribes at once. The POST also serves
  RFC 8058 one-click requests (body ``List-Unsubscribe=One-Click``) from mail
  clients, which need no page, only a 2xx.

Pages are Jinja2 templates under ``templates/mail/`` with autoescaping. Token
pages are sent with ``Referrer-Policy: no-referrer`` and ``Cache-Control:
no-store`` so the token does not leak to other sites or shared caches.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from functools import lru_cache
from typing import Any

import jinja2
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from ..deliver import message_id_domain, send_message
from ..errors import AggregatorError, SubscriberError, TokenError
from ..models import Site, SmtpSettings, Subscriber, SubscriberStatus, utcnow
from ..render import template_dirs
from ..subscribers import clean_name, normalize_email
from ..tokens import Tokens
from .app import WebContext

__all__ = ["SUBSCRIBE_LIMIT", "SUBSCRIBE_WINDOW", "RateLimiter", "routes"]

log = logging.getLogger(__name__)

SUBSCRIBE_LIMIT = 5
SUBSCRIBE_WINDOW = 3600.0

_PRIVATE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}


class RateLimiter:
    """A sliding-window counter per key (client IP), in memory, for one process."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Count one request; None if allowed, else seconds until the next one is."""
        now = time.monotonic() if now is None else now
        if len(self._hits) > 10_000:  # keep memory bounded under a flood of addresses
            self._forget_idle(now)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return None

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]


@lru_cache(maxsize=4)
def _environment(directories: tuple[str, ...]) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(directories)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _template(site: Site, template: str, context: dict[str, Any]) -> str:
    """``mail/<template>`` from the first template directory that has it (render.template_dirs)."""
    directories = tuple(str(d / "mail") for d in template_dirs(site))
    return _environment(directories).get_template(template).render(context)


def _site_context(site: Site) -> dict[str, Any]:
    return {
        "site_title": site.title,
        "site_url": site.url,
        "language": site.language,
        "postal_address": site.postal_address,
    }


def confirmation_message(site: Site, subscriber: Subscriber, confirm_url: str) -> bytes:
    """The double opt-in email: text and HTML, UTF-8, with a fresh Message-ID."""
    context = {
        **_site_context(site),
        "name": subscriber.name,
        "email": subscriber.email,
        "confirm_url": confirm_url,
        "valid_days": 7,
    }
    message = EmailMessage()
    message["From"] = formataddr((site.sender_name or site.title, site.sender_email))
    message["To"] = subscriber.email
    message["Subject"] = f"Confirm your subscription to {site.title}"
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid("confirm", domain=message_id_domain(site))
    message["Auto-Submitted"] = "auto-replied"
    message.set_content(_template(site, "confirm.txt.j2", context), cte="quoted-printable")
    message.add_alternative(_template(site, "confirm.html.j2", context), subtype="html")
    return message.as_bytes(policy=SMTP)


async def _send_confirmation(smtp: SmtpSettings, sender: str, recipient: str, data: bytes) -> None:
    try:
        await send_message(smtp, sender, recipient, data)
    except AggregatorError as error:
        # The visitor already has their answer; the operator needs to know.
        log.error("confirmation mail to %s not sent: %s", recipient, error)


def routes(ctx: WebContext) -> list[BaseRoute]:
    """The subscribe, confirm and unsubscribe routes, sharing one rate limiter."""
    limiter = RateLimiter(SUBSCRIBE_LIMIT, SUBSCRIBE_WINDOW)

    def tokens() -> Tokens:
        return Tokens(ctx.secret)

    def page(status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Response:
        values = {
            **_site_context(ctx.config.site),
            "error": "",
            "message": "",
            "form": "",
            "action": "",
            "email": "",
            "name": "",
            **context,
        }
        return HTMLResponse(
            _template(ctx.config.site, "page.html.j2", values),
            status_code=status,
            headers={**_PRIVATE_HEADERS, **(headers or {})},
        )

    def base_url() -> str:
        url = ctx.config.site.url
        return url if url.endswith("/") else url + "/"

    async def subscribe(request: Request) -> Response:
        if request.method == "GET":
            return page(heading="Subscribe", form="subscribe", action=f"{base_url()}subscribe")
        client = request.client.host if request.client else "unknown"
        wait = limiter.hit(client)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            return page(
                429,
                {"Retry-After": str(seconds)},
                heading="Too many requests",
                error=f"Please try again in {math.ceil(seconds / 60)} minutes.",
            )
        form = await request.form()
        raw_email = str(form.get("email", ""))
        raw_name = str(form.get("name", ""))
        try:
            email = normalize_email(raw_email)
        except SubscriberError:
            return page(
                400,
                heading="Subscribe",
                form="subscribe",
                action=f"{base_url()}subscribe",
                error="That does not look like an email address.",
                email=raw_email[:320],
                name=raw_name[:200],
            )
        subscriber, _ = await run_in_threadpool(
            ctx.store.add_subscriber, email, name=clean_name(raw_name), now=utcnow()
        )
        task = None
        if subscriber.status is not SubscriberStatus.ACTIVE:
            token = tokens().confirm_token(subscriber.id, subscriber.email)
            data = confirmation_message(ctx.config.site, subscriber, f"{base_url()}confirm/{token}")
            task = BackgroundTask(
                _send_confirmation,
                ctx.config.smtp,
                ctx.config.site.sender_email,
                subscriber.email,
                data,
            )
        response = page(
            heading="Check your inbox",
            message=(
                f"If {email} is not subscribed yet, we have sent it a link to confirm. "
                "The link is valid for 7 days."
            ),
        )
        response.background = task
        return response

    async def confirm(request: Request) -> Response:
        try:
            claims = tokens().read_confirm(request.path_params["token"])
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
            await run_in_threadpool(
                ctx.store.confirm_subscriber, subscriber.id, subscriber.email, now=utcnow()
            )
        except (TokenError, SubscriberError) as error:
            return page(
                400,
                heading="Link not valid",
                error=f"{str(error).capitalize()}.",
                message="You can subscribe again at any time.",
            )
        return page(
            heading="You are subscribed",
            message=f"{subscriber.email} will get {ctx.config.site.title} every week.",
        )

    async def unsubscribe(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            claims = tokens().read_unsubscribe(token)
            if request.method == "GET":
                subscriber = await run_in_threadpool(ctx.store.get_subscriber, claims.subscriber_id)
                if subscriber is None or subscriber.email != claims.email:
                    raise TokenError("this unsubscribe link is not valid")
                return page(
                    heading="Unsubscribe",
                    message=f"Stop sending {ctx.config.site.title} to {subscriber.email}?",
                    form="unsubscribe",
                    action=f"{base_url()}unsubscribe/{token}",
                )
            await run_in_threadpool(
                ctx.store.unsubscribe_subscriber,
                claims.subscriber_id,
                claims.email,
                now=utcnow(),
            )
        except (TokenError, SubscriberError) as error:
            return page(400, heading="Link not valid", error=f"{str(error).capitalize()}.")
        return page(
            heading="You are unsubscribed",
            message=f"{claims.email} will get no more email from {ctx.config.site.title}.",
        )

    return [
        Route("/subscribe", subscribe, methods=["GET", "POST"]),
        Route("/confirm/{token}", confirm, methods=["GET"]),
        Route("/unsubscribe/{token}", unsubscribe, methods=["GET", "POST"]),
    ]
