"""``aggregator digest ...``: preview, compose and list the weekly digest.

Wired into the main command by :mod:`aggregator.cli.main` with :func:`register`;
other modules add commands to the same group through :data:`digest_app`
(``aggregator digest send`` lives in :mod:`aggregator.cli.mail`).

Examples::

    aggregator digest preview                          # the issue so far, into ./digest-preview/
    aggregator digest preview --since 2026-11-02 --out /tmp/issue
    aggregator digest preview --period 2026-11-02..2026-11-09
    aggregator digest compose                          # freeze the issue due now
    aggregator digest list

Dates are read in the site's time zone (``site.timezone``); a bare date means
its midnight there.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from ..config import Config, parse_duration
from ..models import Digest, utcnow
from ._common import console, err_console, load_config, open_store

__all__ = ["build_eml", "digest_app", "parse_moment", "parse_period", "register", "span"]

digest_app = typer.Typer(
    no_args_is_help=True,
    help="Preview, compose (freeze) and list the weekly email digest.",
)


def register(app: typer.Typer) -> None:
    """Add the ``digest`` command group to the main ``aggregator`` app."""
    app.add_typer(digest_app, name="digest")


# ------------------------------------------------------------------------ parsing


def parse_moment(value: str, zone: ZoneInfo) -> datetime:
    """A date (``2026-11-02``: midnight in ``zone``) or ISO datetime, as aware UTC-comparable.

    A datetime without an offset is read in ``zone`` too.
    """
    value = value.strip()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        return datetime.combine(day, time(0, 0), tzinfo=zone)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f'"{value}" is not a date (2026-11-02) or a date and time (2026-11-02T09:00)'
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def parse_period(value: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``START..END`` (dates or datetimes; END defaults to now when left empty)."""
    start_text, separator, end_text = value.partition("..")
    if not separator or not start_text.strip():
        raise typer.BadParameter(f'"{value}" is not a period: use START..END, e.g. 2026-11-02..')
    start = parse_moment(start_text, zone)
    end = parse_moment(end_text, zone) if end_text.strip() else utcnow()
    if end <= start:
        raise typer.BadParameter(f'"{value}": the period must end after it starts')
    return start, end


def _since(value: str, zone: ZoneInfo) -> datetime:
    try:
        return utcnow() - parse_duration(value)
    except ValueError:
        return parse_moment(value, zone)


def span(duration: timedelta) -> str:
    """``7 days``, ``12h``: a duration as the admin wrote it in feeds.yaml, near enough."""
    seconds = int(duration.total_seconds())
    if seconds % 86400 == 0:
        days = seconds // 86400
        return f"{days} day" + ("" if days == 1 else "s")
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return str(duration)


# -------------------------------------------------------------------------- email


def build_eml(digest: Digest, config: Config, html: str, text: str) -> EmailMessage:
    """A complete multipart/alternative message of one issue, as a subscriber would get it.

    Both parts are UTF-8 and quoted-printable (MJML output has very long lines);
    the subject is RFC 2047-encoded when it is not ASCII.
    """
    site = config.site
    message = EmailMessage()
    message["Subject"] = digest.subject
    message["From"] = formataddr((site.sender_name or site.title, site.sender_email))
    message["To"] = formataddr(("Preview", site.sender_email))
    message["Date"] = format_datetime(digest.created_at or utcnow())
    domain = site.sender_email.rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid("digest-preview", domain=domain)
    message.set_content(text, charset="utf-8", cte="quoted-printable")
    message.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message


# ----------------------------------------------------------------------- commands


@digest_app.command("preview")
def preview_command(
    period: Annotated[
        str | None,
        typer.Option("--period", help="START..END, dates or datetimes in the site's time zone."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Start at this date (2026-11-02) or this long ago (7d)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for digest.html, .txt and .eml.")
    ] = Path("digest-preview"),
) -> None:
    """Write the upcoming issue to files to look at; nothing is frozen or sent.

    By default the period runs from the end of the last composed issue until
    now; before the first issue, over the last `digest.period` (7 days). That
    is the issue `digest send --now` would send, and the first `digest compose`
    would freeze.
    """
    from ..digest import Period, build_digest, render_parts, upcoming_period

    if period and since:
        raise typer.BadParameter("use either --period or --since, not both")
    config = load_config()
    zone = ZoneInfo(config.site.timezone)
    store = open_store(config)
    try:
        if period:
            start, end = parse_period(period, zone)
        elif since:
            end = utcnow()
            start = _since(since, zone)
            if end <= start:
                start = end - timedelta(seconds=1)
        else:
            upcoming = upcoming_period(config, store)
            start, end = upcoming.start, upcoming.end
        digest = build_digest(config, store, Period(start, end))
    finally:
        store.close()
    if digest is None:
        err_console.print(
            f"nothing new between {start.astimezone(zone):%Y-%m-%d %H:%M} and "
            f"{end.astimezone(zone):%Y-%m-%d %H:%M} ({config.site.timezone}); "
            "try --since 30d",
            highlight=False,
        )
        raise typer.Exit(1)
    html, text = render_parts(config, digest)
    out.mkdir(parents=True, exist_ok=True)
    (out / "digest.html").write_text(html, encoding="utf-8")
    (out / "digest.txt").write_text(text, encoding="utf-8")
    (out / "digest.eml").write_bytes(bytes(build_eml(digest, config, html, text)))
    console.print(
        f"{digest.subject}: {digest.item_count} items, {len(html.encode()) // 1024} KB HTML",
        highlight=False,
    )
    for name in ("digest.html", "digest.txt", "digest.eml"):
        console.print(f"  wrote {out / name}", highlight=False)


@digest_app.command("compose")
def compose_command() -> None:
    """Freeze the issue due now (idempotent: the same week gives the same issue).

    The first issue of an install holds what has been stored in the last
    `digest.period` (7 days), the items `digest preview` shows.
    """
    from ..digest import compose

    config = load_config()
    zone = ZoneInfo(config.site.timezone)
    store = open_store(config)
    try:
        last = store.last_digest()
        digest = compose(config, store)
    finally:
        store.close()
    if digest is None:
        if last is None:
            reason = (
                f"nothing stored in the last {span(config.digest.period)}; "
                "run `aggregator fetch` first"
            )
        else:
            reason = (
                f"nothing new since issue #{last.id} "
                f"(it ends {last.period_end.astimezone(zone):%Y-%m-%d %H:%M %Z})"
            )
        err_console.print(f"no digest: {reason}", highlight=False)
        raise typer.Exit(1)
    console.print(
        f"digest #{digest.id}: {digest.subject} ({digest.item_count} items)", highlight=False
    )


@digest_app.command("list")
def list_command(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Most issues to show.")] = 20,
) -> None:
    """Frozen issues, newest first."""
    from rich.table import Table

    config = load_config()
    zone = ZoneInfo(config.site.timezone)
    store = open_store(config)
    try:
        digests = store.list_digests(limit)
    finally:
        store.close()
    if not digests:
        console.print("no digest composed yet: run `aggregator digest compose`")
        return
    table = Table("id", "period", "items", "subject", "composed")
    for digest in digests:
        local_end = digest.period_end.astimezone(zone)
        table.add_row(
            str(digest.id),
            f"{digest.period_start.astimezone(zone):%Y-%m-%d} .. {local_end:%Y-%m-%d}",
            str(digest.item_count),
            digest.subject,
            f"{digest.created_at.astimezone(zone):%Y-%m-%d %H:%M}" if digest.created_at else "",
        )
    console.print(table)
