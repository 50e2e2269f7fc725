"""``aggregator subscribers ...`` and ``aggregator digest send``.

Wired into the main command by :mod:`aggregator.cli.main`::

    register(app)                    # adds the "subscribers" group
    register_digest_send(digest_app) # adds "send" to the "digest" group

Examples::

    aggregator subscribers add reader@example.org --name "Kim Ji-woon" --active
    AGGREGATOR_SECRET=... aggregator subscribers add reader@example.org  # mails the confirm link
    AGGREGATOR_SECRET=... aggregator subscribers confirm-mail --all-pending
    aggregator subscribers expire                     # drop pending ones past the confirm window
    aggregator subscribers import people.csv          # email[,name] rows, or a header row
    aggregator subscribers list --status active
    aggregator subscribers export > subscribers.csv
    aggregator subscribers remove reader@example.org  # unsubscribes (kept as suppressed)
    AGGREGATOR_SECRET=... aggregator digest send --test me@example.org
    AGGREGATOR_SECRET=... aggregator digest send
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AggregatorError, ConfigError, SubscriberError
from ..models import DeliveryStatus, Subscriber, SubscriberStatus, utcnow
from ._common import console, err_console, load_config, open_store

if TYPE_CHECKING:
    from ..config import Config
    from ..deliver import DeliveryReport
    from ..models import Digest
    from ..store import Store

__all__ = ["register", "register_digest_send", "subscribers_app"]

subscribers_app = typer.Typer(
    no_args_is_help=True,
    help="Manage newsletter subscribers (kept in the database, never in feeds.yaml).",
)


def register(app: typer.Typer) -> None:
    """Add the ``subscribers`` command group to the main app."""
    app.add_typer(subscribers_app, name="subscribers")


@contextlib.contextmanager
def _opened() -> Iterator[tuple[Config, Store]]:
    """feeds.yaml and the store it names, closed again when the command is done."""

    config = load_config()
    store = open_store(config)
    try:
        yield config, store
    finally:
        store.close()


def _print(text: str) -> None:

    console.print(text, highlight=False)


def _warn(text: str) -> None:

    err_console.print(text, highlight=False)


# --------------------------------------------------------------------- subscribers


def _address(raw: str, param_hint: str) -> str:
    """An address typed on the command line; a malformed one is a usage error (exit 2)."""
    from ..subscribers import normalize_email

    try:
        return normalize_email(raw)
    except SubscriberError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


def _link_secret(hint: str) -> str:
    """The secret the web app signs confirm links with; the links the CLI mails must match."""
    from ..web.app import load_secret

    try:
        return load_secret()
    except ConfigError as exc:
        raise ConfigError(f"{exc.reason}; {hint}") from None


def _send_confirmations(
    config: Config, secret: str, store: Store, subscribers: list[Subscriber]
) -> list[tuple[str, str]]:
    """Mail each one the double opt-in link, as the web form does; ``(email, error)`` failures.

    Whoever got a fresh link gets the full confirmation window again
    (``subscribers.expire_pending_after``) before they expire.
    """
    from ..deliver import send_message
    from ..mail_confirm import confirmation_message
    from ..tokens import Tokens

    tokens = Tokens(secret)

    async def send_all() -> list[tuple[str, str]]:
        failures = []
        for subscriber in subscribers:
            if store.is_suppressed(subscriber.email):
                # Hard-bounced or complained: no mail at all (aggregator.store.bounces).
                failures.append(
                    (
                        subscriber.email,
                        "suppressed after a bounce or complaint, not mailed "
                        "(lift it with: aggregator subscribers unsuppress EMAIL)",
                    )
                )
                continue
            link = (
                f"{config.site.url}confirm/{tokens.confirm_token(subscriber.id, subscriber.email)}"
            )
            data = confirmation_message(config.site, subscriber, link)
            try:
                await send_message(config.smtp, config.site.sender_email, subscriber.email, data)
            except AggregatorError as exc:
                failures.append((subscriber.email, str(exc)))
        return failures

    failures = asyncio.run(send_all())
    failed = {email for email, _ in failures}
    store.restart_confirm_window([s.id for s in subscribers if s.email not in failed], now=utcnow())
    return failures


def _report_confirmations(sent: list[Subscriber], failures: list[tuple[str, str]]) -> None:
    failed = {email for email, _ in failures}
    for subscriber in sent:
        if subscriber.email not in failed:
            _print(f"[green]sent[/green] the confirmation link to {subscriber.email}")
    for email, error in failures:
        _warn(
            f"[red]not sent[/red] to {email}: {escape(error)} (they stay pending; "
            f"resend with: aggregator subscribers confirm-mail {email})"
        )
    if failures:
        raise typer.Exit(1)


@subscribers_app.command("add")
def add(
    email: Annotated[str, typer.Argument(help="The address to add.")],
    name: Annotated[str | None, typer.Option("--name", help="Display name for To:.")] = None,
    active: Annotated[
        bool,
        typer.Option("--active", help="Skip double opt-in (you already have their consent)."),
    ] = False,
    no_mail: Annotated[
        bool,
        typer.Option(
            "--no-mail", help="Add them pending without mailing the confirmation link yet."
        ),
    ] = False,
) -> None:
    """Add one subscriber: pending, mailed a confirmation link like the web form does, or --active.

    The link (valid 7 days) is signed with AGGREGATOR_SECRET, which must be the
    one the web app runs with. An address that unsubscribed stays
    unsubscribed: only its owner can subscribe again, through the web form.
    """
    from ..subscribers import clean_name

    address = _address(email, "EMAIL")
    secret = None
    if not active and not no_mail:
        secret = _link_secret("it signs the confirmation link (or use --active or --no-mail)")
    with _opened() as (config, store):
        subscriber, created = store.add_subscriber(
            address, name=clean_name(name), active=active, now=utcnow()
        )
        if created:
            _print(f"[green]added[/green] {subscriber.email} ({subscriber.status.value})")
        elif subscriber.status is SubscriberStatus.UNSUBSCRIBED:
            _warn(
                f"[yellow]kept[/yellow] {subscriber.email} unsubscribed: they must subscribe "
                "again through the web form to get mail"
            )
        else:
            _print(f"[dim]already known[/dim] {subscriber.email} ({subscriber.status.value})")
        if secret is not None and subscriber.status is SubscriberStatus.PENDING:
            failures = _send_confirmations(config, secret, store, [subscriber])
            _report_confirmations([subscriber], failures)


@subscribers_app.command("confirm-mail")
def confirm_mail(
    emails: Annotated[
        list[str] | None, typer.Argument(help="Pending addresses to mail the link to again.")
    ] = None,
    all_pending: Annotated[
        bool, typer.Option("--all-pending", help="Every pending subscriber.")
    ] = False,
) -> None:
    """(Re)send the double opt-in link to pending subscribers, e.g. after an import.

    Active subscribers need no link; nobody who unsubscribed is mailed.
    """
    if not emails and not all_pending:
        _warn("[red]error[/red] name one or more addresses, or pass --all-pending")
        raise typer.Exit(2)
    secret = _link_secret("it signs the confirmation link")
    with _opened() as (config, store):
        todo: list[Subscriber] = []
        if all_pending:
            todo = store.list_subscribers(SubscriberStatus.PENDING)
        for raw in emails or []:
            address = _address(raw, "EMAILS")
            found = store.subscriber_by_email(address)
            if found is None:
                raise SubscriberError(
                    f"{address} is not a subscriber (add it with: aggregator subscribers add)"
                )
            if found.status is SubscriberStatus.ACTIVE:
                _print(f"[dim]already active[/dim] {found.email}: no link needed")
            elif found.status is SubscriberStatus.UNSUBSCRIBED:
                _warn(
                    f"[yellow]not mailed[/yellow] {found.email}: they unsubscribed; only they "
                    "can subscribe again, through the web form"
                )
            elif all(s.id != found.id for s in todo):
                todo.append(found)
        if not todo:
            _print("no pending subscribers to mail")
            return
        failures = _send_confirmations(config, secret, store, todo)
    _report_confirmations(todo, failures)


@subscribers_app.command("remove")
def remove(
    email: Annotated[str, typer.Argument(help="The address to remove.")],
    forget: Annotated[
        bool,
        typer.Option(
            "--forget",
            help="Delete the address and its delivery history instead of unsubscribing it "
            "(a later import could then add it again).",
        ),
    ] = False,
) -> None:
    """Unsubscribe an address now (it is kept as suppressed), or erase it with --forget."""
    address = _address(email, "EMAIL")
    with _opened() as (_, store):
        if forget:
            found = store.forget_subscriber(address)
        else:
            found = store.unsubscribe_email(address, now=utcnow()) is not None
    if not found:
        raise SubscriberError(f"{address} is not a subscriber (see: aggregator subscribers list)")
    _print(f"[green]{'forgotten' if forget else 'unsubscribed'}[/green] {address}")


@subscribers_app.command("list")
def list_(
    status: Annotated[
        SubscriberStatus | None, typer.Option("--status", help="Only this status.")
    ] = None,
) -> None:
    """Show subscribers with status and dates (pending ones past their confirm window are
    removed first, see ``subscribers expire``)."""
    with _opened() as (config, store):
        _expire(config, store)
        rows = store.list_subscribers(status)
    table = Table(title=f"{len(rows)} subscribers" + (f" ({status.value})" if status else ""))
    for column in ("email", "name", "status", "since", "confirmed", "unsubscribed"):
        table.add_column(column, overflow="fold")
    for s in rows:
        table.add_row(
            s.email,
            s.name or "",
            s.status.value,
            f"{s.created_at:%Y-%m-%d}",
            f"{s.confirmed_at:%Y-%m-%d}" if s.confirmed_at else "",
            f"{s.unsubscribed_at:%Y-%m-%d}" if s.unsubscribed_at else "",
        )

    console.print(table)


def _expire(config: Config, store: Store) -> list[str]:
    gone = store.expire_pending(added_before=utcnow() - config.pending_expiry)
    if gone:
        days = config.pending_expiry.total_seconds() / 86400
        _warn(
            f"[yellow]removed {len(gone)} pending subscribers[/yellow] who did not confirm "
            f"within {days:g} days (subscribers.expire_pending_after): " + ", ".join(gone)
        )
    return gone


@subscribers_app.command("expire")
def expire() -> None:
    """Remove pending subscribers who did not confirm in time (``run`` does this hourly).

    The window is ``subscribers.expire_pending_after`` in feeds.yaml (default
    7d, the life of a confirmation link), counted from when they were added or
    last mailed a link.
    """
    with _opened() as (config, store):
        gone = _expire(config, store)
    if not gone:
        _print("no pending subscribers past their confirmation window")


@subscribers_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A CSV file.")],
    active: Annotated[
        bool,
        typer.Option(
            "--active", help="Import every row as active (you already have their consent)."
        ),
    ] = False,
    confirmed: Annotated[
        bool,
        typer.Option(
            "--confirmed",
            help="Rows whose status column says active confirmed elsewhere: import them "
            "active (without this they are imported pending).",
        ),
    ] = False,
) -> None:
    """Import a CSV: rows ``email[,name]``, or a header row naming ``email``, ``name``, ``status``.

    Reads UTF-8 (with or without BOM), UTF-16 and CP949/EUC-KR files, separated
    by commas, semicolons or tabs, as Excel and Korean mail services export
    them. Bad rows are reported with their line number and skipped; a file that
    cannot be read imports nothing. Rows with status ``unsubscribed`` are
    imported as unsubscribed; nobody who unsubscribed is reactivated.
    """
    from ..subscribers import decode_csv, import_csv

    try:
        text = decode_csv(file.read_bytes(), name=str(file))
        with _opened() as (_, store):
            report = import_csv(
                store, text, now=utcnow(), active=active, confirmed=confirmed, name=str(file)
            )
    except SubscriberError as exc:
        _warn(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for line, message in report.errors:
        _warn(f"[red]{file}:{line}[/red] {escape(message)}")
    by_status = ", ".join(
        f"{count} {status.value}" for status, count in report.added_by_status.items() if count
    )
    _print(
        f"[green]imported[/green] {report.added} new"
        + (f" ({by_status})" if by_status else "")
        + f", {report.already_known} already known, {len(report.errors)} rows skipped"
    )
    if report.held_pending:
        _warn(
            f"[yellow]{report.held_pending} rows marked active were imported as pending[/yellow]: "
            "they get mail once they confirm (aggregator subscribers confirm-mail EMAIL sends "
            "the link); if they confirmed elsewhere, import again with --confirmed"
        )
    if report.errors:
        raise typer.Exit(1)


@subscribers_app.command("export")
def export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
    status: Annotated[
        SubscriberStatus | None, typer.Option("--status", help="Only this status.")
    ] = None,
) -> None:
    """Write all subscribers (or one status) as CSV, unsubscribed ones included."""
    from ..subscribers import export_csv

    with _opened() as (_, store):
        rows = store.list_subscribers(status)
    if out is None:
        export_csv(rows, sys.stdout)
    else:
        with out.open("w", encoding="utf-8", newline="") as handle:
            export_csv(rows, handle)
        _warn(f"[green]wrote[/green] {len(rows)} subscribers to {out}")


# ---------------------------------------------------------------------- digest send


def _unfinished(store: Store, digest: Digest) -> bool:
    """Never sent, or sending was interrupted (rows pending or held by a dead sender)."""
    assert digest.id is not None
    counts = store.delivery_counts(digest.id)
    return not any(counts.values()) or (
        counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.SENDING] > 0
    )


def _summary(report: DeliveryReport) -> str:
    c = report.counts
    return (
        f"digest #{report.digest_id}: sent {report.sent} now "
        f"({c[DeliveryStatus.SENT]} in total), failed {c[DeliveryStatus.FAILED]}, "
        f"pending {report.pending} ({report.rate:.1f} msg/s)"
    )


def register_digest_send(digest_app: typer.Typer) -> None:
    """Add ``send`` to the ``digest`` command group."""

    @digest_app.command("send")
    def send(
        test: Annotated[
            str | None,
            typer.Option(
                "--test",
                metavar="EMAIL",
                help="Send one copy of the latest digest to this address; the ledger is "
                "not touched.",
            ),
        ] = None,
        lease: Annotated[
            float | None,
            typer.Option(
                help="Seconds a claimed batch stays reserved if this sender dies "
                "(default: at least 60).",
                hidden=True,
            ),
        ] = None,
        retry_delay: Annotated[
            float, typer.Option(help="Seconds before retrying temporary failures.")
        ] = 30.0,
        send_now: Annotated[
            bool,
            typer.Option(
                "--now",
                help="Compose an issue of what is new until now and send it, without "
                "waiting for the scheduled slot (the first issue of an install, too).",
            ),
        ] = False,
    ) -> None:
        """Mail the digest to every active subscriber exactly once (resumes an interrupted run).

        Finishes the latest issue if a run was interrupted, else composes the
        issue that is due and sends it. Safe to run twice at once or again
        after a crash: nobody gets an issue twice. Before the first issue it
        says when the first one is scheduled; `--now` sends it at once.
        """
        from datetime import timedelta

        from ..deliver import deliver_digest, send_test_copy
        from ..digest import compose, compose_now, first_issue_hint
        from ..web.app import load_secret

        secret = load_secret()
        with _opened() as (config, store):
            if test is not None:
                address = _address(test, "'--test'")
                digest = store.last_digest() or compose(config, store)
                if digest is None:
                    _warn("no digest to send: nothing new since the last issue")
                    raise typer.Exit(1)
                message_id = asyncio.run(
                    send_test_copy(
                        digest, address, site=config.site, smtp=config.smtp, secret=secret
                    )
                )
                _print(
                    f"[green]sent[/green] test copy of digest #{digest.id} to {address} "
                    f"({message_id})"
                )
                return
            todo: list[Digest] = []
            last = store.last_digest()
            if last is not None and _unfinished(store, last):
                todo.append(last)
            if last is None and not send_now:
                _print(first_issue_hint(config))
                return
            composed = compose_now(config, store) if send_now else compose(config, store)
            if composed is not None and all(d.id != composed.id for d in todo):
                todo.append(composed)
            if not todo:
                _print("nothing to send: no new items since the last issue")
                return
            pending = 0
            for digest in todo:
                report = asyncio.run(
                    deliver_digest(
                        store,
                        digest,
                        site=config.site,
                        smtp=config.smtp,
                        secret=secret,
                        lease=timedelta(seconds=lease) if lease else None,
                        retry_delay=retry_delay,
                    )
                )
                _print(_summary(report))
                pending += report.pending
        if pending:
            _warn(
                f"[yellow]{pending} deliveries are still pending[/yellow] (temporary failures): "
                "run `aggregator digest send` again later"
            )
            raise typer.Exit(1)
