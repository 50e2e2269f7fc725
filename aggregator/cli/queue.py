"""The ``queue`` commands for distributed mode, added to the main app by :func:`register`.

Workers themselves are started by ``aggregator worker`` (or ``aggregator run
--role worker``); these commands look at and nudge the shared queue from any
machine that can reach the database::

    aggregator queue status     # jobs per task and state, due sources, ledger rows waiting
    aggregator queue dispatch   # queue the due sources now instead of at the next minute
    aggregator queue recover    # put back the jobs of workers that stopped heart-beating
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from sqlalchemy import text

from ..config import Config
from ._common import console, load_config, open_store

__all__ = ["queue_app", "register"]

queue_app = typer.Typer(
    help="Inspect and nudge the distributed queue (storage.queue: procrastinate).",
    no_args_is_help=True,
)


def _distributed_config() -> Config:
    from ..queue import require_distributed

    config = load_config()
    require_distributed(config, "these commands")
    return config


@queue_app.command("status")
def status_command() -> None:
    """Jobs per task and state, sources due now, and digest ledger rows not yet sent."""
    from rich.table import Table

    from ..models import DeliveryStatus, utcnow

    config = _distributed_config()
    store = open_store(config)
    try:
        with store.engine.connect() as conn:
            jobs = conn.execute(
                text(
                    "SELECT task_name, status::text, count(*) FROM procrastinate_jobs "
                    "GROUP BY 1, 2 ORDER BY 1, 2"
                )
            ).all()
            due = conn.execute(
                text(
                    "SELECT count(*) FROM sources WHERE id = ANY(:ids) "
                    "AND (next_fetch_at IS NULL OR next_fetch_at <= :now)"
                ),
                {"ids": [s.id for s in config.sources if s.enabled], "now": utcnow()},
            ).scalar_one()
            workers = conn.execute(text("SELECT count(*) FROM procrastinate_workers")).scalar_one()
        waiting = 0
        for digest in store.list_digests(limit=1):
            counts = store.delivery_counts(digest.id or 0)
            waiting = counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.SENDING]
    finally:
        store.close()
    table = Table("task", "status", "jobs")
    for task, state, count in jobs:
        table.add_row(task, state, str(count))
    console.print(table)
    console.print(
        f"{due} sources due, {workers} workers heart-beating, "
        f"{waiting} deliveries of the newest digest waiting",
        highlight=False,
    )


@queue_app.command("dispatch")
def dispatch_command() -> None:
    """Queue a fetch job for every source due now (what the minute tick does)."""
    from ..queue import dispatch_all_due

    config = _distributed_config()
    store = open_store(config)
    try:
        store.sync_sources(config.sources)
        queued = dispatch_all_due(store, config)
    finally:
        store.close()
    console.print(f"[green]ok[/green] queued {queued} fetch jobs", highlight=False)


@queue_app.command("recover")
def recover_command(
    silent_for: Annotated[
        float, typer.Option(help="Seconds without a heartbeat after which a worker is dead.")
    ] = 10.0,
) -> None:
    """Retry the running jobs of workers that stopped heart-beating (killed, machine lost)."""
    from ..queue import bound_app, recover_stalled

    config = _distributed_config()

    async def recover() -> int:
        tasks_app = bound_app(config)
        async with tasks_app.open_async():
            return await recover_stalled(tasks_app, silent_for=silent_for)

    retried = asyncio.run(recover())
    console.print(f"[green]ok[/green] retried {retried} stalled jobs", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
