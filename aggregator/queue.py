"""Distributed mode: the same pipeline as jobs of a procrastinate queue on PostgreSQL.

Turned on by ``storage.queue: procrastinate`` with a PostgreSQL database. Any
number of ``aggregator worker`` processes on any number of machines then share
the work; the single-machine mode (SQLite, APScheduler, no queue) is untouched.

Guarantees and how they are kept:

* **Each due source is fetched once.** The ``dispatch`` task runs every
  minute (procrastinate's periodic tasks are deferred once per tick across the
  cluster). In ONE database transaction it locks the due rows of ``sources``
  (``FOR UPDATE SKIP LOCKED``: a concurrent dispatcher skips them), moves their
  ``next_fetch_at`` forward and inserts one ``fetch_source`` job per source
  through procrastinate's own SQL function, with queueing lock and lock
  ``fetch:<id>`` (never two waiting jobs for a source, never two running).
  Moving the due time and queueing the job commit together or not at all; a
  source whose previous job is still waiting is skipped, keeping its due time.
* **Fetch jobs run the very same ingest code** (:meth:`Ingestor.ingest_source`),
  which records backoff and errors on the source as in single-machine mode.
* **Publish is deduplicated**: a fetch that stored something defers
  ``publish`` with the queueing lock ``publish``; while one is waiting, further
  requests are dropped (that waiting job will see their items).
* **The weekly digest is composed once per period**: a periodic task on the
  configured slot (converted from ``site.timezone`` to procrastinate's UTC
  cron) plus a ten-minute catch-up tick, both one job per tick cluster-wide
  and sharing the queueing lock ``digest``; ``compose`` is idempotent per
  period (the store's unique constraint settles races). The task writes one
  ledger row per (digest, subscriber) and queues one ``send_digest`` job per
  500 rows waiting. Send jobs share the delivery ledger: rows move
  pending → sending (with a lease) → sent with a fixed Message-ID per
  (digest, subscriber), so parallel senders never mail one subscriber twice,
  and after a worker dies only the message in flight can repeat, with the same
  Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from procrastinate import App, PsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.exceptions import UniqueViolation as ProcrastinateUniqueViolation
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from .config import Config
from .errors import ConfigError, StoreError
from .fetch import Fetcher
from .ingest import Ingestor
from .models import IngestOutcome, utcnow
from .store import Store

log = logging.getLogger(__name__)

QUEUE = "aggregator"
FETCH_TASK = "aggregator.fetch_source"
SEND_BATCH = 500  # ledger rows per send job
SCHEMA_LOCK_KEY = 0x61677271  # advisory lock key serialising apply_schema across nodes
ANALYZE_AFTER = 500  # jobs queued by one dispatch that make the queue statistics stale
DISPATCH_CHUNK = 1000  # due sources queued per dispatch transaction
KEEP_SUCCEEDED_HOURS = 24  # the hourly cleanup deletes succeeded jobs this old
KEEP_FAILED_HOURS = 7 * 24  # ...and failed ones this old
HEARTBEAT = 2.0  # seconds between a worker's heartbeats
STALLED_AFTER = 10.0  # a worker silent this long is dead: its running jobs are retried
# How long a sender's claim on ledger rows lasts if it dies; rows it held are
# sent by another worker after this. AGGREGATOR_SEND_LEASE_SECONDS overrides.
SEND_LEASE = timedelta(minutes=5)


POLL_INTERVAL = 5.0  # seconds between polls for jobs when no notification came


def listen_notify() -> bool:
    """Whether workers wait on LISTEN/NOTIFY (default) or only poll.

    ``AGGREGATOR_QUEUE_NOTIFY=off`` for workers behind a PgBouncer in
    transaction pooling, where LISTEN does not work: they then find new jobs
    by polling every :data:`POLL_INTERVAL` seconds.
    """
    value = os.environ.get("AGGREGATOR_QUEUE_NOTIFY", "on").strip().lower()
    return value not in ("off", "0", "false", "no")


def send_lease() -> timedelta:
    override = os.environ.get("AGGREGATOR_SEND_LEASE_SECONDS", "")
    return timedelta(seconds=float(override)) if override else SEND_LEASE


@dataclass
class Runtime:
    """What tasks need: set by :func:`start_runtime` in each worker process."""

    config: Config
    store: Store
    fetcher: Fetcher
    ingestor: Ingestor
    secret: str
    tasks: App  # the app bound to the database, for deferring from tasks
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)  # one send job at a time


_runtime: Runtime | None = None


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://`` (SQLAlchemy) → ``postgresql://`` (libpq, procrastinate)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


_CRON_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def digest_cron(config: Config, *, now: datetime | None = None) -> str:
    """The digest slot ("mon 09:00" in ``site.timezone``) as a UTC cron line.

    procrastinate evaluates cron lines in UTC, so the slot is converted with the
    zone's offset at the next slot after ``now``; day names, never numbers
    (see :func:`aggregator.config.parse_schedule`). A daylight-saving change
    after the worker started can make this tick an hour off; the ten-minute
    ``digest-catch-up`` tick, which composes whatever :func:`latest_slot` says
    is due, covers that and any tick missed while no worker was up.
    """
    from .digest import latest_slot

    zone = ZoneInfo(config.site.timezone)
    last = latest_slot(config.digest, config.site, now or utcnow()).astimezone(zone)
    # Step a week in wall time, so the offset is the one of the next slot itself.
    upcoming = (last.replace(tzinfo=None) + timedelta(days=7)).replace(tzinfo=zone)
    utc = upcoming.astimezone(UTC)
    return f"{utc.minute} {utc.hour} * * {_CRON_DAYS[utc.weekday()]}"


def require_distributed(config: Config, what: str) -> None:
    """``what`` ("workers", "these commands") needs ``queue: procrastinate`` on PostgreSQL."""
    if config.queue != "procrastinate":
        where = f"{config.path}: " if config.path else ""
        raise ConfigError(
            f"{where}storage.queue is {config.queue!r}: {what} need queue: procrastinate "
            "(and PostgreSQL); for one machine use `aggregator run`"
        )
    require_postgres(config)


def require_postgres(config: Config) -> None:
    if not config.database_url.startswith(("postgresql", "postgres:")):
        where = f"{config.path}: " if config.path else ""
        raise ConfigError(
            f"{where}storage.queue: procrastinate needs PostgreSQL, but the database is "
            f"{config.database_url.split('://', 1)[0]} (set DATABASE_URL to a postgresql:// URL "
            "or use queue: none)"
        )


def bound_app(config: Config) -> App:
    """A procrastinate app on the configured database, with the aggregator's tasks.

    Built per process rather than at import time, because the database URL
    comes from feeds.yaml / DATABASE_URL.
    """
    require_postgres(config)
    app = App(connector=PsycopgConnector(conninfo=libpq_url(config.database_url)))
    register: Any = app.task  # procrastinate's decorator factories are loosely typed
    periodic: Any = app.periodic
    periodic(cron="* * * * *", periodic_id="dispatch")(
        register(name="aggregator.dispatch", queue=QUEUE, queueing_lock="dispatch")(dispatch)
    )
    register(name=FETCH_TASK, queue=QUEUE)(fetch_source)
    register(name="aggregator.publish", queue=QUEUE, lock="publish")(publish)
    digest_task = register(name="aggregator.digest", queue=QUEUE, queueing_lock="digest")(
        weekly_digest
    )
    periodic(cron=digest_cron(config), periodic_id="digest")(digest_task)
    periodic(cron="*/10 * * * *", periodic_id="digest-catch-up")(digest_task)
    register(name="aggregator.send_digest", queue=QUEUE)(send_digest)
    periodic(cron="37 * * * *", periodic_id="cleanup")(
        register(name="aggregator.cleanup", queue=QUEUE, queueing_lock="cleanup")(cleanup)
    )
    return app


async def start_runtime(
    config: Config, *, secret: str, store: Store | None = None, tasks: App | None = None
) -> Runtime:
    global _runtime
    if store is None:
        store = await asyncio.to_thread(Store.open, config.database_url)
    await asyncio.to_thread(store.sync_sources, config.sources)
    fetcher = Fetcher()
    ingestor = Ingestor(config, store, fetcher=fetcher)
    _runtime = Runtime(config, store, fetcher, ingestor, secret, tasks or bound_app(config))
    return _runtime


async def stop_runtime() -> None:
    global _runtime
    if _runtime is not None:
        await _runtime.fetcher.aclose()
        _runtime = None


def _rt() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the aggregator task runtime is not started in this process")
    return _runtime


# ---------------------------------------------------------------------------- schema


_MIGRATIONS_TABLE = "aggregator_queue_migrations"


def shipped_migrations(directory: Path | None = None) -> list[Path]:
    """procrastinate's migration files of the installed version, oldest first.

    Their names start with a zero-padded version (``03.04.00_01_pre_…``), so
    name order is application order.
    """
    from procrastinate.schema import SchemaManager

    folder = directory or Path(SchemaManager.get_migrations_path())
    return sorted(folder.glob("*.sql"))


def apply_schema(store: Store, *, migrations: Path | None = None) -> list[str]:
    """Create procrastinate's schema, or bring it up to the installed version.

    Returns what was applied: ``["schema"]`` on a fresh database, the names of
    the migration files run on an upgrade, ``[]`` when current.

    procrastinate ships a full ``schema.sql`` plus one SQL file per change but
    keeps no record of what a database has had, so the record is ours: the
    table ``aggregator_queue_migrations`` names every file applied (or
    contained in the schema when it was created). Each file runs in its own
    transaction together with its record, so a failed file leaves neither and
    ``aggregator migrate`` can be run again after the cause is fixed. A
    session advisory lock lets several nodes migrate at once: the first does
    the work, the others wait and then find nothing left to do.
    """
    from procrastinate.schema import SchemaManager

    shipped = shipped_migrations(migrations)
    with store.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        conn.commit()
        try:
            with conn.begin():
                conn.execute(
                    text(
                        f"CREATE TABLE IF NOT EXISTS {_MIGRATIONS_TABLE} (name text PRIMARY KEY, "
                        "applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                )
                done = set(conn.execute(text(f"SELECT name FROM {_MIGRATIONS_TABLE}")).scalars())
                exists = conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar()
                if exists is None or not done:
                    if exists is None:
                        _run_sql(conn, SchemaManager.get_schema())
                        log.info("procrastinate schema applied")
                    else:
                        # Tables from before this record: taken to match the
                        # installed procrastinate, as `migrate` always applied
                        # the schema of the version it ran with.
                        log.warning("procrastinate schema without a record: recorded as current")
                    _record(conn, [path.name for path in shipped])
                    return ["schema"] if exists is None else []
            applied = []
            for path in shipped:
                if path.name in done:
                    continue
                try:
                    with conn.begin():
                        _run_sql(conn, path.read_text(encoding="utf-8"))
                        _record(conn, [path.name])
                except (DBAPIError, psycopg.Error) as exc:
                    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                    raise StoreError(
                        f"procrastinate migration {path.name} failed: {first} (nothing of it "
                        f"was kept; the files from {path.parent} that ran before it were)"
                    ) from exc
                applied.append(path.name)
                log.info("procrastinate migration %s applied", path.name)
            return applied
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
            conn.commit()


def _run_sql(conn: Connection, sql: str) -> None:
    # Straight to the driver without parameters: procrastinate's SQL holds
    # literal "%" signs that a parameterized execute would try to format.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(sql)


def _record(conn: Connection, names: list[str]) -> None:
    conn.execute(
        text(f"INSERT INTO {_MIGRATIONS_TABLE} (name) SELECT unnest(CAST(:names AS text[]))"),
        {"names": names},
    )


# ---------------------------------------------------------------------------- dispatch


_DUE = text(
    "SELECT s.id FROM sources s WHERE s.id = ANY(:ids) "
    "AND (s.next_fetch_at IS NULL OR s.next_fetch_at <= :now) "
    # A source whose previous job still waits is left alone (and keeps its due time).
    "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j "
    "WHERE j.queueing_lock = 'fetch:' || s.id AND j.status = 'todo') "
    "ORDER BY s.next_fetch_at NULLS FIRST LIMIT :limit FOR UPDATE OF s SKIP LOCKED"
)
_MOVE = text(
    "UPDATE sources SET next_fetch_at = due.next "
    "FROM unnest(CAST(:ids AS text[]), CAST(:nexts AS timestamptz[])) AS due(id, next) "
    "WHERE sources.id = due.id"
)
_DEFER = text(
    "SELECT procrastinate_defer_jobs_v1(ARRAY(SELECT ROW(:queue, :task, 0, "
    "'fetch:' || id, 'fetch:' || id, jsonb_build_object('source_id', id), NULL)"
    "::procrastinate_job_to_defer_v1 FROM unnest(CAST(:ids AS text[])) AS id))"
)


def _is_queueing_lock_conflict(exc: IntegrityError) -> bool:
    return "procrastinate_jobs_queueing_lock_idx" in str(exc.orig or exc)


def dispatch_due(
    store: Store, config: Config, *, limit: int = DISPATCH_CHUNK, analyze: bool = True
) -> list[str]:
    """Queue one fetch job per due source (at most ``limit``); returns the ids queued.

    One transaction on the store's own connection does all of it: lock the due
    rows (``FOR UPDATE SKIP LOCKED``), move their ``next_fetch_at`` forward and
    insert the jobs with procrastinate's SQL function
    ``procrastinate_defer_jobs_v1`` (what its connector calls too), each with
    queueing lock and lock ``fetch:<id>``. Either both the due time moves and
    the job exists, or neither. A concurrent dispatcher skips the locked rows,
    and once this commits the rows are no longer due. Should a job for one of
    them still wait anyway (its queueing lock), the batch is retried one source
    at a time under savepoints and that source is skipped, keeping its due time.
    """
    intervals = {s.id: s.interval for s in config.sources if s.enabled}
    if not intervals:
        return []
    now = utcnow()
    with store.transaction() as conn:
        due = list(
            conn.execute(_DUE, {"ids": list(intervals), "now": now, "limit": limit}).scalars()
        )
        if not due:
            return []
        queued = _defer_fetches(conn, due, intervals, now)
    if queued:
        log.info("dispatched %d due sources", len(queued))
    if analyze and len(queued) >= ANALYZE_AFTER:
        refresh_job_statistics(store)
    return queued


def refresh_job_statistics(store: Store) -> None:
    """``ANALYZE procrastinate_jobs`` after a large batch of jobs was queued.

    Every worker claims jobs through procrastinate's PL/pgSQL function, whose
    plan PostgreSQL caches per connection. Planned on the statistics of a
    near-empty table (a fresh database, or before autovacuum noticed a burst
    of thousands of jobs), the lock check turns into a scan of the whole
    queue: each claim took 37 ms instead of 0.2 ms at 2,000 jobs, so claiming
    cost grew with the square of the queue. Fresh statistics invalidate those
    cached plans. A user that does not own the table gets a warning from
    PostgreSQL, not an error, and autovacuum catches up later.
    """
    with store.engine.connect() as conn:
        conn.execute(text("ANALYZE procrastinate_jobs"))
        conn.commit()


def _defer_fetches(
    conn: Connection, due: list[str], intervals: dict[str, timedelta], now: datetime
) -> list[str]:
    def defer(ids: list[str]) -> None:
        nexts = [now + intervals[source_id] for source_id in ids]
        conn.execute(_MOVE, {"ids": ids, "nexts": nexts})
        conn.execute(_DEFER, {"queue": QUEUE, "task": FETCH_TASK, "ids": ids})

    savepoint = conn.begin_nested()
    try:
        defer(due)
        savepoint.commit()
        return due
    except IntegrityError as exc:
        savepoint.rollback()
        if not _is_queueing_lock_conflict(exc):
            raise
    queued: list[str] = []
    for source_id in due:
        savepoint = conn.begin_nested()
        try:
            defer([source_id])
            savepoint.commit()
            queued.append(source_id)
        except IntegrityError as exc:
            savepoint.rollback()
            if not _is_queueing_lock_conflict(exc):
                raise
    return queued


def dispatch_all_due(store: Store, config: Config, *, chunk: int = DISPATCH_CHUNK) -> int:
    """Dispatch in chunks (one transaction each) until nothing is due; returns jobs queued."""
    total = analyzed_at = 0
    while True:
        queued = dispatch_due(store, config, limit=chunk, analyze=False)
        total += len(queued)
        # Statistics refreshed each time the queue doubled: a few times per burst.
        if total >= ANALYZE_AFTER and total >= 2 * analyzed_at:
            refresh_job_statistics(store)
            analyzed_at = total
        if len(queued) < chunk:
            return total


async def dispatch(timestamp: int) -> int:
    rt = _rt()
    await recover_stalled(rt.tasks)
    return await asyncio.to_thread(dispatch_all_due, rt.store, rt.config)


async def recover_stalled(tasks_app: App, *, silent_for: float = STALLED_AFTER) -> int:
    """Put back the jobs of workers that stopped heart-beating (killed, machine lost).

    A fetch redone is harmless (ingest is idempotent); a send job redone
    claims only ledger rows whose lease expired.
    """
    manager: Any = tasks_app.job_manager
    stalled = list(await manager.get_stalled_jobs(seconds_since_heartbeat=silent_for))
    retried = 0
    for job in stalled:
        try:
            await manager.retry_job_by_id_async(job.id, retry_at=utcnow())
            retried += 1
        except ProcrastinateUniqueViolation:
            # A job with the same queueing lock is already waiting (e.g. the
            # digest catch-up queued fresh send jobs): it does this one's work.
            log.info("stalled job %s already replaced by a queued one", job.id)
    if retried:
        log.warning("retried %d jobs of workers that stopped responding", retried)
    return retried


# ---------------------------------------------------------------------------- fetch, publish


async def fetch_source(source_id: str) -> str:
    rt = _rt()
    try:
        source = rt.config.source(source_id)
    except (KeyError, ConfigError):
        return "gone"
    state = await asyncio.to_thread(rt.store.source_state, source_id)
    stats = await rt.ingestor.ingest_source(source, state, rt.fetcher, None)
    if stats.outcome is IngestOutcome.OK and (stats.new or stats.updated):
        # While a publish is waiting, it will include these items too.
        with contextlib.suppress(AlreadyEnqueued):
            await rt.tasks.configure_task(
                "aggregator.publish", queueing_lock="publish"
            ).defer_async()
    return stats.outcome.value


async def publish() -> bool:
    from .publish import ping_pending, publish_from_store

    rt = _rt()
    config = rt.config
    sections = {s.id: s.title for s in config.sections}
    result = await asyncio.to_thread(
        publish_from_store, rt.store, config.site, config.output_dir, sections=sections
    )
    if result.ping_pending:
        await ping_pending(config.site, config.output_dir)
    return bool(result.changed)


# ---------------------------------------------------------------------------- digest


async def digest_due() -> int:
    """Compose the current issue if due and queue send jobs; returns jobs queued."""
    from .deliver import open_ledger
    from .digest import compose, latest_slot
    from .models import DeliveryStatus

    rt = _rt()
    digest = await asyncio.to_thread(compose, rt.config, rt.store)
    if digest is None or digest.id is None:
        return 0
    if digest.period_end < latest_slot(rt.config.digest, rt.config.site, utcnow()):
        return 0  # an older issue: it was handled when it was current
    counts = await asyncio.to_thread(
        open_ledger, rt.store, digest.id, secret=rt.secret, site=rt.config.site
    )
    waiting = counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.SENDING]
    jobs = 0
    for n in range(math.ceil(waiting / SEND_BATCH)):
        with contextlib.suppress(AlreadyEnqueued):
            await rt.tasks.configure_task(
                "aggregator.send_digest", queueing_lock=f"send:{digest.id}:{n}"
            ).defer_async(digest_id=digest.id)
            jobs += 1
    return jobs


async def weekly_digest(timestamp: int) -> int:
    """On the digest slot, and every ten minutes to catch up (a no-op when nothing is due).

    The catch-up tick also re-queues send jobs while ledger rows are left
    pending or sending, e.g. rows whose sender died after the other send jobs
    had finished: they go out once their lease expires.
    """
    return await digest_due()


async def cleanup(timestamp: int) -> None:
    """Hourly: delete finished jobs, so the queue table does not grow forever,
    and pending subscribers who never confirmed.

    Every due source is one job: 100,000 sources fetched hourly leave 2.4
    million finished jobs a day. Succeeded jobs go after a day (``aggregator
    queue status`` still shows the recent ones), failed jobs after a week, so
    there is time to look at them (their errors are in the workers' logs too).
    """
    rt = _rt()
    manager: Any = rt.tasks.job_manager
    await manager.delete_old_jobs(nb_hours=KEEP_SUCCEEDED_HOURS)
    await manager.delete_old_jobs(nb_hours=KEEP_FAILED_HOURS, include_failed=True)
    # Pending subscribers past subscribers.expire_pending_after, as `run` does hourly.
    cutoff = utcnow() - rt.config.pending_expiry
    await asyncio.to_thread(rt.store.expire_pending, added_before=cutoff)


async def send_digest(digest_id: int) -> dict[str, Any]:
    from .deliver import deliver_digest

    rt = _rt()
    digest = await asyncio.to_thread(rt.store.get_digest, digest_id)
    if digest is None:
        return {"error": f"digest {digest_id} not found"}
    # One sender per worker process: two send jobs in one process would only
    # share its SMTP pace, and would put two messages in flight, so a killed
    # worker could repeat two of them instead of one. Others go to other workers.
    async with rt.sending:
        report = await deliver_digest(
            rt.store,
            digest,
            site=rt.config.site,
            smtp=rt.config.smtp,
            secret=rt.secret,
            batch_size=50,
            lease=send_lease(),
        )
    return {"sent": report.sent, "failed": report.failed, "pending": report.pending}


# ---------------------------------------------------------------------------- processes


async def run_distributed(
    config: Config,
    *,
    role: str = "all",
    host: str = "127.0.0.1",
    port: int = 8080,
    concurrency: int = 4,
) -> bool:
    """``aggregator run`` / ``aggregator worker`` in distributed mode; True if Ctrl-C stopped it.

    This function owns SIGINT and SIGTERM (neither uvicorn nor procrastinate
    installs handlers): either one stops the web server and lets the worker
    finish its running jobs, instead of asyncio cancelling everything mid-await
    or the web server outliving a stopped worker.
    """
    import signal

    import uvicorn

    from .web.app import WebContext, create_app, load_secret
    from .web.server import EmbeddedServer

    require_postgres(config)
    secret = load_secret(required=False)
    tasks_app = bound_app(config)
    rt = await start_runtime(config, secret=secret, tasks=tasks_app)
    await asyncio.to_thread(apply_schema, rt.store)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_received: list[int] = []

    def on_signal(number: int) -> None:
        signals_received.append(number)
        stop.set()

    installed: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread (tests run it in threads)
        installed.append(sig)
    server: EmbeddedServer | None = None
    try:
        async with tasks_app.open_async():
            jobs: list[asyncio.Task[Any]] = []
            worker: asyncio.Task[Any] | None = None
            if role in ("all", "web"):
                web = create_app(WebContext(config=config, store=rt.store, secret=secret))
                server = EmbeddedServer(uvicorn.Config(web, host=host, port=port, log_config=None))
                jobs.append(asyncio.create_task(server.serve(), name="web"))
            if role in ("all", "worker"):
                worker = asyncio.create_task(
                    tasks_app.run_worker_async(
                        queues=[QUEUE],
                        concurrency=concurrency,
                        install_signal_handlers=False,
                        update_heartbeat_interval=HEARTBEAT,
                        listen_notify=listen_notify(),
                        fetch_job_polling_interval=POLL_INTERVAL,
                        stalled_worker_timeout=STALLED_AFTER,
                    ),
                    name="worker",
                )
                jobs.append(worker)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({*jobs, stopped}, return_when=asyncio.FIRST_COMPLETED)
            # A signal, or one part ended on its own: stop the others too.
            stopped.cancel()
            if server is not None:
                server.should_exit = True
            if worker is not None:
                worker.cancel()  # procrastinate waits for the running jobs, then stops
            for outcome in await asyncio.gather(*jobs, return_exceptions=True):
                if isinstance(outcome, Exception):
                    raise outcome
    finally:
        for number in installed:
            loop.remove_signal_handler(number)
        if server is not None:
            server.should_exit = True
        await stop_runtime()
        rt.store.close()
    return signal.SIGINT in signals_received
