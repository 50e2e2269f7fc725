"""``aggregator subscribers ...`` and ``aggregator digest send``.

Wired into the main command by :mod:`aggregator.cli.main`::

    register(app)                    # adds the "subscribers" group
    register_digest_send(digest_app) # adds "send" to the "digest" group

Examples::

    aggregator subscribers add reader@example.org --name "Kim Ji-woon" --active
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
from rich.table import Table

from ..errors import SubscriberError
from ..models import DeliveryStatus, SubscriberStatus, utcnow
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


@subscribers_app.command("add")
def add(
    email: Annotated[str, typer.Argument(help="The address to add.")],
    name: Annotated[str | None, typer.Option("--name", help="Display name for To:.")] = None,
    active: Annotated[
        bool,
        typer.Option("--active", help="Skip double opt-in (you already have their consent)."),
    ] = False,
) -> None:
    """Add one subscriber: pending (a confirm link is needed) unless --active.

    An address that unsubscribed stays unsubscribed: only its owner can
    subscribe again, through the web form and the confirmation link.
    """
    from ..subscribers import clean_name

    address = _address(email, "EMAIL")
    with _opened() as (_, store):
        subscriber, created = store.add_subscriber(
            address, name=clean_name(name), active=active, now=utcnow()
        )
    if created:
        _print(f"[green]added[/green] {subscriber.email} ({subscriber.status.value})")
    elif subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        _warn(
            f"[yellow]kept[/yellow] {subscriber.email} unsubscribed: they must subscribe again "
            "through the web form to get mail"
        )
    else:
        _print(f"[dim]already known[/dim] {subscriber.email} ({subscriber.status.value})")


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
    """Show subscribers with status and dates."""
    with _opened() as (_, store):
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


@subscribers_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A CSV file.")],
    active: Annotated[
        bool, typer.Option("--active", help="Import as active (you already have their consent).")
    ] = False,
) -> None:
    """Import a CSV: rows ``email[,name]``, or a header row naming ``email``, ``name``, ``status``.

    Bad rows are reported with their line number and skipped. Rows with status
    ``unsubscribed`` are imported as unsubscribed; nobody who unsubscribed is
    reactivated.
    """
    from ..subscribers import import_csv

    with _opened() as (_, store), file.open(encoding="utf-8-sig", newline="") as handle:
        report = import_csv(store, handle, now=utcnow(), active=active)
    for line, message in report.errors:
        _warn(f"[red]{file}:{line}[/red] {message}")
    _print(
        f"[green]imported[/green] {report.added} new, {report.already_known} already known, "
        f"{len(report.errors)} rows skipped"
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
