"""``aggregator bounces``: read the bounce mailbox now; list bounces and the suppression list.

Example::

    IMAP_USER=... IMAP_PASSWORD=... AGGREGATOR_SECRET=... aggregator bounces process
    aggregator bounces status
    aggregator subscribers unsuppress reader@example.org
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..errors import ConfigError, SubscriberError
from ..models import BounceKind
from ..store import Store
from ._common import console, load_config, open_store

__all__ = ["bounces_app", "print_bounce_summary", "register"]

bounces_app = typer.Typer(no_args_is_help=True, help="Bounces, complaints, suppression list.")


@bounces_app.command("process")
def process() -> None:
    """Read new messages in the bounce mailbox once, record bounces and complaints, flag them."""
    from ..mail.bounces import process_mailbox
    from ..web.app import load_secret

    config = load_config()
    if config.bounces is None or config.bounces.imap is None:
        raise ConfigError(
            "no bounce mailbox: add bounces.imap (host, username_env, password_env) to feeds.yaml",
            path=str(config.path),
        )
    secret = load_secret()
    store = open_store(config)
    try:
        summary = process_mailbox(store, config.bounces, secret=secret)
    finally:
        store.close()
    console.print(
        f"[green]processed[/green] {summary.messages} messages: {summary.hard} hard, "
        f"{summary.soft} soft, {summary.complaints} complaints "
        f"({summary.bounced} addresses now bounced), {summary.duplicates} already counted, "
        f"{summary.skipped} skipped",
        highlight=False,
    )


def print_bounce_summary(store: Store) -> None:
    """Bounce and complaint totals and the last issues' rates (``status``, ``bounces status``)."""
    totals = store.bounce_counts()
    suppressed = len(store.suppressions())
    console.print(
        f"bounces: {totals[BounceKind.HARD]} hard, {totals[BounceKind.SOFT]} soft, "
        f"{totals[BounceKind.COMPLAINT]} complaints; {suppressed} addresses suppressed",
        highlight=False,
    )
    issues = store.issue_bounces(limit=5)
    if not any(i.sent for i in issues):
        return
    table = Table(title="Last issues")
    for name in ("digest", "sent", "hard", "soft", "complaints", "bounce rate", "complaint rate"):
        table.add_column(name, justify="right")
    for issue in issues:
        sent = issue.sent or 1
        table.add_row(
            f"#{issue.digest_id}",
            str(issue.sent),
            str(issue.hard),
            str(issue.soft),
            str(issue.complaints),
            f"{100 * issue.hard / sent:.2f}%",
            f"{100 * issue.complaints / sent:.3f}%",
        )
    console.print(table)


@bounces_app.command("status")
def status(
    suppressed: Annotated[
        bool, typer.Option("--suppressed", help="Also list every suppressed address.")
    ] = False,
) -> None:
    """Bounce and complaint counts per issue, and the suppression list."""
    config = load_config()
    store = open_store(config)
    try:
        print_bounce_summary(store)
        rows = store.suppressions() if suppressed else []
    finally:
        store.close()
    if rows:
        table = Table(title=f"{len(rows)} suppressed addresses")
        for name in ("email", "since", "reason"):
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(row.email, f"{row.created_at:%Y-%m-%d}", row.reason)
        console.print(table)


def unsuppress(
    email: Annotated[str, typer.Argument(help="The address to mail again.")],
) -> None:
    """Lift a suppression (after a hard bounce or a complaint): the address may be mailed again.

    A subscriber marked ``bounced`` becomes active again; one who complained
    stays unsubscribed until they subscribe again.
    """
    from ..subscribers import normalize_email

    try:
        address = normalize_email(email)
    except SubscriberError as exc:
        raise typer.BadParameter(str(exc), param_hint="EMAIL") from None
    config = load_config()
    store = open_store(config)
    try:
        lifted = store.unsuppress(address)
    finally:
        store.close()
    if not lifted:
        raise SubscriberError(
            f"{email} is not suppressed (see: aggregator bounces status --suppressed)"
        )
    console.print(f"[green]unsuppressed[/green] {email}", highlight=False)


def register(app: typer.Typer, *, subscribers_app: typer.Typer) -> None:
    """Add ``aggregator bounces`` and ``aggregator subscribers unsuppress``."""
    app.add_typer(bounces_app, name="bounces")
    subscribers_app.command("unsuppress")(unsuppress)
