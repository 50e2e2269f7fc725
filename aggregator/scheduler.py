"""The running service: one asyncio process with the scheduler and the web app.

``aggregator run`` builds a :class:`Service`. Its APScheduler 3
``AsyncIOScheduler`` holds

* one ingest job per source, at the source's interval with jitter (memory job
  store: rebuilt from feeds.yaml at every start, and the store's
  ``next_fetch_at`` keeps the backoff of failing sources across restarts);
* a debounced publish job, scheduled a few seconds after any ingest that
  stored something, so a burst of sources produces one publish;
* the weekly digest on a cron trigger in the site's time zone, in a
  *persistent* job store (a table in the same database), with a misfire grace
  of days and ``coalesce=True``: after downtime the missed issue is composed
  and sent once. Which period an issue covers and who still needs it are
  decided by the store (frozen digests, the delivery ledger), never by the
  scheduler's memory, so a duplicate firing sends nobody anything twice.

Only one service runs on a database: :func:`~aggregator.store.service.acquire_service_lock`
is taken before anything starts, and the web port is bound before the pid
file is written, so a second ``run`` or a busy port ends at once with one
line and touches nothing of the first service.

feeds.yaml is watched (watchfiles, the file alone) and re-read on SIGHUP: a valid edit is
applied in place, an invalid one is logged with file:line and ignored.
SIGTERM/SIGINT stop accepting work, give running fetches a grace period to
finish, then cancel them; every store write is one transaction, so a cancel
leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .config import Config, load_config
from .errors import AggregatorError, ConfigError, ConfigErrors, ServiceError, StoreError
from .fetch import Fetcher
from .ingest import Ingestor, make_pool
from .metrics import Metrics
from .models import BounceKind, IngestOutcome, IngestStats, Source, utcnow
from .store import Store
from .store.service import ServiceLock, acquire_service_lock, cap_next_fetch

log = logging.getLogger(__name__)

DIGEST_JOB = "weekly-digest"
PUBLISH_JOB = "publish"
EXPIRE_JOB = "expire-pending"
EXPIRE_EVERY = timedelta(hours=1)
BOUNCE_JOB = "bounce-mailbox"
PERSISTENT = "persistent"
# A weekly issue missed by less than this is still sent after a restart.
DIGEST_MISFIRE_GRACE = timedelta(days=6)
PUBLISH_DEBOUNCE = timedelta(seconds=3)
SHUTDOWN_GRACE = 10.0
JITTER_FRACTION = 0.1
MAX_JITTER = 600
PID_FILE_ENV = "AGGREGATOR_PID_FILE"

_current: Service | None = None


async def weekly_digest_job() -> None:
    """Entry point of the persistent digest job (referenced by name, so it pickles)."""
    if _current is None:
        log.warning("weekly digest fired with no running service; ignored")
        return
    service = _current
    await service._run_job(service.digest_now())


def pid_file(config: Config) -> Path:
    """Where ``aggregator run`` writes its pid, for ``aggregator reload``."""
    override = os.environ.get(PID_FILE_ENV)
    if override:
        return Path(override)
    base = config.path.parent if config.path else Path.cwd()
    return base / "data" / "aggregator.pid"


def digest_trigger(config: Config) -> CronTrigger:
    """Cron trigger for the digest, with explicit day names and the site's zone.

    Day names, never numbers (APScheduler 3 counts Monday as 0), and an
    explicit ``timezone`` (a trigger without one uses the machine's zone).
    """
    hour, minute = (int(part) for part in config.digest.schedule_time.split(":"))
    return CronTrigger(
        day_of_week=config.digest.schedule_day[:3].lower(),
        hour=hour,
        minute=minute,
        timezone=ZoneInfo(config.site.timezone),
    )


def bind_web_socket(host: str, port: int) -> socket.socket:
    """Bind the web app's listening socket now, so a busy port fails the start at once.

    uvicorn binds late, inside its own task, and on failure only logs and
    exits that task: the service around it would keep running without a web
    app. Binding here turns the failure into one :class:`ServiceError`.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServiceError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServiceError(
                f"port {port} on {host} is in use; stop what listens there or choose "
                "another with --port"
            ) from None
        raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Listening now, not when uvicorn starts: a fetch of the demo's own
    # sample sources, fired by the scheduler a moment earlier, waits in the
    # backlog instead of being refused.
    sock.listen(128)
    return sock


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a started service tells its admin: where it listens and what it scheduled."""

    role: str
    home_url: str | None
    feed_url: str | None
    public_url: str
    sources: int
    next_digest: datetime | None
    pid_file: Path | None


def source_trigger(source: Source) -> IntervalTrigger:
    seconds = max(1, int(source.interval.total_seconds()))
    jitter = min(MAX_JITTER, int(seconds * JITTER_FRACTION)) or None
    return IntervalTrigger(seconds=seconds, jitter=jitter)


class Service:
    """Scheduler + web app over one config and one store.

    ``role`` is ``all`` (default), ``web`` (no scheduler) or ``worker``
    (scheduler only); the distributed mode replaces the scheduler with
    procrastinate workers (see :mod:`aggregator.queue`).
    """

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        role: str = "all",
        host: str = "127.0.0.1",
        port: int = 8080,
        secret: str | None = None,
        fetcher_factory: Callable[[], Fetcher] = Fetcher,
        watch: bool = True,
        on_ready: Callable[[ServiceInfo], None] | None = None,
    ) -> None:
        if role not in ("all", "web", "worker"):
            raise ConfigError(f'unknown role "{role}" (use all, web or worker)')
        self.config = config
        self.store = store or Store.open(config.database_url, isolated_migration=True)
        self._own_store = store is None
        self.role = role
        self.host = host
        self.port = port
        self.secret = secret
        self.watch = watch
        self.metrics = Metrics()
        self.scheduler = AsyncIOScheduler(
            jobstores={
                "default": MemoryJobStore(),
                PERSISTENT: SQLAlchemyJobStore(
                    engine=self.store.engine, tablename="apscheduler_jobs"
                ),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
            timezone=ZoneInfo(config.site.timezone),
        )
        self._fetcher_factory = fetcher_factory
        self._fetcher: Fetcher | None = None
        self._pool: Any = None
        self._ingestor: Ingestor | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        # Set when Ctrl-C (SIGINT) stopped the service, so the command can exit 130;
        # SIGTERM (systemd's stop) is a normal end.
        self.interrupted = False
        self._reload_requested = asyncio.Event()
        self._digest_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._server: Any = None
        self._socket: socket.socket | None = None
        self._lock: ServiceLock | None = None
        self._on_ready = on_ready
        self._demo: Any = None
        self.web_ctx: Any = None
        self.ready = asyncio.Event()
        self.reloads = 0
        self.publish_delay = PUBLISH_DEBOUNCE

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT); returns after a clean shutdown."""
        global _current
        try:
            if self.role in ("all", "worker"):
                # One scheduler per database; web-only processes may be many.
                self._lock = await asyncio.to_thread(
                    acquire_service_lock, self.store, holder=f"pid {os.getpid()}"
                )
            if self.role in ("all", "web"):
                self._socket = bind_web_socket(self.host, self.port)
                self.port = int(self._socket.getsockname()[1])
        except BaseException:
            # Nothing started: leave the other service's pid file alone.
            self._release_start()
            if self._own_store:
                self.store.close()
            raise
        _current = self
        loop = asyncio.get_running_loop()
        handlers = self._install_signals(loop)
        pidfile = self._write_pid()
        tasks: list[asyncio.Task[Any]] = []
        try:
            if self.config.demo:
                await self._start_demo()
            if self.role in ("all", "worker"):
                await self._start_scheduler()
            if self.role in ("all", "web"):
                tasks.append(asyncio.create_task(self._serve_web(), name="web"))
            if self.watch:
                tasks.append(asyncio.create_task(self._watch_config(), name="watch"))
            tasks.append(asyncio.create_task(self._reload_loop(), name="reload"))
            if self.role in ("all", "web"):
                await self._wait_web_started()
            info = self.info(pidfile)
            self.ready.set()
            log.info(
                "aggregator running (role %s, %d sources, web %s)",
                self.role,
                info.sources,
                info.home_url or "off",
            )
            if self._on_ready is not None:
                self._on_ready(info)
            await self._stopping.wait()
        finally:
            await self._shutdown(tasks)
            for sig in handlers:
                loop.remove_signal_handler(sig)
            if pidfile is not None:
                with contextlib.suppress(OSError):
                    pidfile.unlink()
            self._release_start()
            if _current is self:
                _current = None

    async def _start_demo(self) -> None:
        """``demo: true``: serve the sample sources and the mail sink the file points at."""
        from .demo import DemoRuntime

        self._demo = DemoRuntime(self.config, utcnow())
        await asyncio.to_thread(self._demo.start)
        site_port = urlsplit(self.config.site.url).port
        if self.role != "worker" and site_port != self.port:
            log.warning(
                "demo config: site.url %s names port %s but the web app listens on %d; "
                "the sample sources and links will not answer",
                self.config.site.url,
                site_port,
                self.port,
            )

    def _release_start(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def info(self, pidfile: Path | None = None) -> ServiceInfo:
        """Where this service listens and what it scheduled (for the start-up lines)."""
        web = self.role in ("all", "web")
        host = f"[{self.host}]" if ":" in self.host else self.host
        home = f"http://{host}:{self.port}/" if web else None
        return ServiceInfo(
            role=self.role,
            home_url=home,
            feed_url=f"{home}feed.atom" if home else None,
            public_url=self.config.site.url,
            sources=sum(1 for s in self.config.sources if s.enabled),
            next_digest=self.next_run(DIGEST_JOB) if self.scheduler.running else None,
            pid_file=pidfile,
        )

    def stop(self) -> None:
        self._stopping.set()

    def _interrupt(self) -> None:
        self.interrupted = True
        self.stop()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for sig, callback in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self._interrupt),
            (signal.SIGHUP, self.request_reload),
        ):
            try:
                loop.add_signal_handler(sig, callback)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests run services in threads)
        return installed

    def _write_pid(self) -> Path | None:
        path = pid_file(self.config)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{os.getpid()}\n", encoding="ascii")
        except OSError as exc:
            log.warning("cannot write pid file %s (aggregator reload will not work): %s", path, exc)
            return None
        return path

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        log.info("shutting down")
        # Stop firing new jobs, but let running ones finish within the grace
        # period: the scheduler's own shutdown would cancel them at once.
        if self.scheduler.running:
            self.scheduler.pause()
        if self._server is not None:
            self._server.should_exit = True
        if self._in_flight:
            running = len(self._in_flight)
            log.info("waiting up to %.0fs for %d running jobs", SHUTDOWN_GRACE, running)
            _, pending = await asyncio.wait(self._in_flight, timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for task in tasks:
            if task.get_name() == "web":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), timeout=5)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._demo is not None:
            self._demo.stop()
        if self._own_store:
            self.store.close()
        log.info("stopped")

    # ------------------------------------------------------------------ scheduler

    async def _start_scheduler(self) -> None:
        await asyncio.to_thread(self.store.sync_sources, self.config.sources)
        self._fetcher = self._fetcher_factory()
        if sum(1 for s in self.config.sources if s.enabled) >= 8:
            self._pool = make_pool()
        self._ingestor = Ingestor(self.config, self.store, fetcher=self._fetcher, pool=self._pool)
        self.metrics.gauge(
            "aggregator_scheduler_running",
            "1 while the scheduler runs.",
            lambda: 1.0 if self.scheduler.running else 0.0,
        )
        self.metrics.gauge(
            "aggregator_last_ingest_age_seconds",
            "Seconds since any source was last fetched successfully.",
            self._last_ingest_age,
        )
        # Paused start: the persistent job store is readable, nothing fires yet.
        self.scheduler.start(paused=True)
        await self._sync_source_jobs()
        self._sync_digest_job()
        self.scheduler.add_job(
            self._expire_job,
            IntervalTrigger(seconds=int(EXPIRE_EVERY.total_seconds())),
            id=EXPIRE_JOB,
            name="expire unconfirmed subscribers",
            jobstore="default",
            next_run_time=utcnow(),
            replace_existing=True,
        )
        self._sync_bounce_job()
        self._bounce_gauges()
        self.scheduler.resume()
        # The feed files follow the config as it is now (site.url, title...),
        # not as it was at the last new item: rebuilt at once, written only
        # when their bytes change.
        self._track(self.publish_now())

    def _last_ingest_age(self) -> float | None:
        last = self.store.latest_success()
        return None if last is None else (utcnow() - last).total_seconds()

    async def _sync_source_jobs(self) -> None:
        states = {s.id: s for s in await asyncio.to_thread(self.store.source_states)}
        wanted = {f"ingest:{s.id}": s for s in self.config.sources if s.enabled}
        for job in self.scheduler.get_jobs(jobstore="default"):
            if job.id.startswith("ingest:") and job.id not in wanted:
                job.remove()
                log.info("source %s removed from the schedule", job.id.removeprefix("ingest:"))
        now = utcnow()
        for job_id, source in wanted.items():
            trigger = source_trigger(source)
            job = self.scheduler.get_job(job_id, jobstore="default")
            if job is None:
                state = states.get(source.id)
                first = now
                if state is not None and state.next_fetch_at is not None:
                    first = max(now, state.next_fetch_at)
                self.scheduler.add_job(
                    self._ingest_job,
                    trigger,
                    args=[source.id],
                    id=job_id,
                    name=f"ingest {source.id}",
                    jobstore="default",
                    next_run_time=first,
                )
            elif str(job.trigger) != str(trigger):
                old_seconds = job.trigger.interval.total_seconds()
                job.reschedule(trigger)
                log.info("source %s rescheduled every %s", source.id, source.interval)
                if source.interval.total_seconds() < old_seconds:
                    await self._pull_next_fetch(source, now)

    async def _pull_next_fetch(self, source: Source, now: datetime) -> None:
        """A shorter interval applies now: the stored next fetch moves back to it.

        Otherwise the store's ``next_fetch_at``, set from the old interval at
        the last fetch, would make every run of the new job skip the source
        until the old time.
        """
        due = now + source.interval
        moved = await asyncio.to_thread(cap_next_fetch, self.store, source.id, due)
        if moved:
            log.info("source %s: next fetch moved to %s", source.id, due.isoformat())

    def _sync_digest_job(self) -> None:
        trigger = digest_trigger(self.config)
        job = self.scheduler.get_job(DIGEST_JOB, jobstore=PERSISTENT)
        if job is None:
            self.scheduler.add_job(
                weekly_digest_job,
                trigger,
                id=DIGEST_JOB,
                name="weekly digest",
                jobstore=PERSISTENT,
                misfire_grace_time=int(DIGEST_MISFIRE_GRACE.total_seconds()),
                coalesce=True,
                replace_existing=True,
            )
            log.info("weekly digest scheduled: %s", trigger)
        elif str(job.trigger) != str(trigger):
            # A new schedule starts from now; an unchanged one keeps its stored
            # next run time, so a digest missed during downtime still fires.
            job.reschedule(trigger)
            log.info("weekly digest rescheduled: %s", trigger)

    def _sync_bounce_job(self) -> None:
        """Read the bounce mailbox every ``bounces.poll`` while one is configured.

        An in-memory job: a missed poll costs nothing (the next one reads
        what arrived meanwhile), so there is nothing to persist.
        """
        bounces = self.config.bounces
        job = self.scheduler.get_job(BOUNCE_JOB, jobstore="default")
        if bounces is None or bounces.imap is None:
            if job is not None:
                job.remove()
            return
        seconds = bounces.poll_interval.total_seconds()
        if job is not None and job.trigger.interval.total_seconds() == seconds:
            return
        self.scheduler.add_job(
            self._bounce_job,
            "interval",
            seconds=seconds,
            id=BOUNCE_JOB,
            name="bounce mailbox",
            jobstore="default",
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            next_run_time=utcnow() + timedelta(seconds=min(60.0, seconds)),
        )
        log.info("bounce mailbox polled every %s", bounces.poll_interval)

    async def _bounce_job(self) -> None:
        if self._stopping.is_set():
            return
        await self._run_job(self.process_bounces())

    async def process_bounces(self) -> None:
        """One pass over the bounce mailbox; a mailbox that cannot be read is logged, not fatal."""
        from .mail.bounces import process_mailbox
        from .web.app import load_secret

        bounces = self.config.bounces
        if bounces is None or bounces.imap is None:
            return
        if self.secret is None:
            self.secret = load_secret(required=False)
        try:
            await asyncio.to_thread(process_mailbox, self.store, bounces, secret=self.secret)
        except AggregatorError as exc:
            log.error("bounce mailbox not read: %s; trying again at the next poll", exc)

    def _bounce_count_reader(self, kind: BounceKind) -> Callable[[], float | None]:
        return lambda: float(self.store.bounce_counts()[kind])

    def _bounce_gauges(self) -> None:
        """Bounce, complaint and suppression totals on /metrics (read from the store per scrape)."""
        for kind, name, text in (
            (BounceKind.HARD, "aggregator_bounces_hard", "Hard bounces recorded (5.x.x)."),
            (BounceKind.SOFT, "aggregator_bounces_soft", "Soft bounces recorded (4.x.x)."),
            (BounceKind.COMPLAINT, "aggregator_complaints", "Spam complaints (ARF) recorded."),
        ):
            self.metrics.gauge(name, text, self._bounce_count_reader(kind))
        self.metrics.gauge(
            "aggregator_suppressed_addresses",
            "Addresses on the suppression list (never mailed).",
            lambda: float(len(self.store.suppressions())),
        )

    # ------------------------------------------------------------------ jobs

    async def _expire_job(self) -> None:
        if self._stopping.is_set():
            return
        await self._run_job(self.expire_pending_now())

    async def expire_pending_now(self) -> list[str]:
        """Remove pending subscribers past ``subscribers.expire_pending_after`` (no consent)."""
        cutoff = utcnow() - self.config.pending_expiry
        try:
            gone = await asyncio.to_thread(self.store.expire_pending, added_before=cutoff)
        except StoreError as exc:
            log.error("expiring unconfirmed subscribers failed: %s", exc)
            return []
        if gone:
            log.info("removed %d pending subscribers who never confirmed", len(gone))
        return gone

    def _track(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def _run_job(self, work: Awaitable[Any], *, what: str | None = None) -> Any:
        """Run a scheduled job's work as a tracked task; what every job entry point calls.

        Tracked, so shutdown gives it the grace period instead of leaving it
        running: work in a thread (a store call) would otherwise go on after
        the store is closed. Only shutdown cancels the work (after the grace
        period; logged as ``what`` when given), and the scheduler's own
        shutdown then cancels the job's task, even one whose work has just
        ended; APScheduler logs that as a job that "raised an exception",
        with a traceback. While stopping, either cancellation ends the job
        quietly instead.
        """
        job = self._track(work)
        try:
            return await job
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise
            if what is not None and job.cancelled():
                log.warning("%s cancelled by shutdown; it runs again after restart", what)
            return None

    async def _ingest_job(self, source_id: str) -> None:
        if self._stopping.is_set() or self._ingestor is None or self._fetcher is None:
            return
        try:
            await self._run_job(self.ingest_source(source_id), what=f"{source_id}: fetch")
        except StoreError as exc:
            # Not this source's fault and not fatal: the next interval retries.
            log.error("%s: not ingested, %s; retrying at the next interval", source_id, exc)

    async def ingest_source(self, source_id: str) -> IngestStats | None:
        """One ingest of one source, honouring its backoff; publishes when it stored something."""
        ingestor = self._ingestor
        if ingestor is None or self._fetcher is None:
            return None
        try:
            source = self.config.source(source_id)
        except (KeyError, AggregatorError):
            return None  # removed from feeds.yaml while the job was queued
        state = await asyncio.to_thread(self.store.source_state, source_id)
        if state is not None and state.next_fetch_at and state.next_fetch_at > utcnow():
            return None  # backing off after failures
        stats = await ingestor.ingest_source(source, state, self._fetcher, self._pool)
        self.metrics.record_ingest(stats)
        if stats.outcome is IngestOutcome.OK and (stats.new or stats.updated):
            self.schedule_publish()
        return stats

    def schedule_publish(self) -> None:
        if not self.scheduler.running:
            return
        self.scheduler.add_job(
            self._publish_job,
            "date",
            run_date=utcnow() + self.publish_delay,
            id=PUBLISH_JOB,
            jobstore="default",
            replace_existing=True,
        )

    async def _publish_job(self) -> None:
        await self._run_job(self.publish_now())

    async def publish_now(self) -> bool:
        """Write the feeds if they changed, then ping the hub; never raises."""
        from .publish import ping_pending, publish_from_store

        async with self._publish_lock:
            config = self.config
            sections = {s.id: s.title for s in config.sections}
            try:
                result = await asyncio.to_thread(
                    publish_from_store,
                    self.store,
                    config.site,
                    config.output_dir,
                    sections=sections,
                )
            except AggregatorError as exc:
                log.error("publish failed: %s", exc)
                self.metrics.record_publish("error")
                return False
            self.metrics.record_publish("changed" if result.changed else "unchanged")
            if result.ping_pending:
                ping = await ping_pending(config.site, config.output_dir)
                if ping is not None and not ping.ok:
                    log.warning("%s (will retry after the next publish)", ping.error)
            return bool(result.changed)

    async def digest_now(self) -> Any:
        """Compose the due issue (or find it frozen) and deliver it to whoever still needs it."""
        from .digest import compose

        async with self._digest_lock:
            digest = await asyncio.to_thread(compose, self.config, self.store)
            if digest is None:
                log.info("weekly digest: nothing new, nothing sent")
                return None
            return await self._deliver(digest)

    async def _deliver(self, digest: Any) -> Any:
        from .deliver import deliver_digest
        from .web.app import load_secret

        if self.secret is None:
            self.secret = load_secret(required=False)
        report = await deliver_digest(
            self.store,
            digest,
            site=self.config.site,
            smtp=self.config.smtp,
            secret=self.secret,
            config=self.config,
        )
        for result, amount in (("sent", report.sent), ("failed", report.failed)):
            if amount:
                self.metrics.record_send(result, amount)
        if report.pending:
            log.warning(
                "digest #%s: %d deliveries still pending (will retry)", digest.id, report.pending
            )
            self.schedule_digest_retry()
        return report

    def schedule_digest_retry(self, delay: timedelta = timedelta(minutes=10)) -> None:
        """Temporary failures are retried soon, not next week: the ledger knows who is left."""
        if self.scheduler.running:
            self.scheduler.add_job(
                self._digest_retry_job,
                "date",
                run_date=utcnow() + delay,
                id="digest-retry",
                jobstore="default",
                replace_existing=True,
            )

    async def _digest_retry_job(self) -> None:
        await self._run_job(self.digest_now())

    # ------------------------------------------------------------------ web

    async def _serve_web(self) -> None:
        import uvicorn

        from .web.app import WebContext, create_app, load_secret
        from .web.server import EmbeddedServer

        secret = self.secret or load_secret(required=False)
        self.web_ctx = WebContext(
            config=self.config,
            store=self.store,
            secret=secret,
            health_checks={"scheduler": self._scheduler_health} if self.role != "web" else {},
            metrics_text=self.metrics.render,
        )
        app = create_app(self.web_ctx)
        if self._demo is not None:
            self._demo.mount(app)
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_config=None,
            lifespan="off",
            proxy_headers=False,  # the app reads them, from web.trusted_proxies only
        )
        self._server = EmbeddedServer(config)
        sockets = [self._socket] if self._socket is not None else None
        await self._server.serve(sockets=sockets)
        if not self._stopping.is_set():
            log.error("web server stopped unexpectedly (port %d in use?)", self.port)
            self.stop()

    async def _wait_web_started(self) -> None:
        for _ in range(200):
            if self._server is not None and self._server.started:
                return
            if self._stopping.is_set():
                return
            await asyncio.sleep(0.05)

    def _scheduler_health(self) -> str:
        return "running" if self.scheduler.running else "stopped"

    # ------------------------------------------------------------------ reload

    async def _watch_config(self) -> None:
        from watchfiles import awatch

        if self.config.path is None:
            return
        path = self.config.path.resolve()

        def is_config(_change: Any, changed: str) -> bool:
            return Path(changed).resolve() == path

        # The directory, not the file: editors save by writing a new file and
        # renaming it over the old one, which a watch on the file's inode
        # misses. Not recursive, and filtered to the one file, so the database,
        # the pid file or a log next to feeds.yaml never wake the watcher.
        async for _changes in awatch(
            path.parent,
            watch_filter=is_config,
            recursive=False,
            stop_event=self._stopping,
            debounce=300,
        ):
            self.request_reload()

    async def _reload_loop(self) -> None:
        while not self._stopping.is_set():
            waiter = asyncio.create_task(self._reload_requested.wait())
            stopper = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if self._reload_requested.is_set() and not self._stopping.is_set():
                self._reload_requested.clear()
                # Tracked like a job: its store calls run in threads, and
                # shutdown must not close the store under them.
                await self._track(self.reload())

    async def reload(self) -> bool:
        """Re-read feeds.yaml; apply it if valid, else log the errors and keep running."""
        if self.config.path is None:
            log.error("this service was not started from a file: nothing to reload")
            return False
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except (ConfigError, ConfigErrors) as exc:
            log.error("feeds.yaml not reloaded, keeping the running config: %s", exc)
            return False
        except OSError as exc:
            log.error("feeds.yaml not reloaded (%s), keeping the running config", exc)
            return False
        if new.database_url != self.config.database_url:
            log.warning("storage.url changed: that needs a restart; other changes applied")
            new = replace(new, database_url=self.config.database_url)
        site_changed = new.site != self.config.site or new.sections != self.config.sections
        self.config = new
        if self.web_ctx is not None:
            self.web_ctx.config = new
        if self.scheduler.running and self._ingestor is not None:
            self._ingestor.config = new
            await asyncio.to_thread(self.store.sync_sources, new.sources)
            await self._sync_source_jobs()
            self._sync_digest_job()
            self._sync_bounce_job()
        if site_changed:
            # Links in the published feeds are built from site.url: rebuild
            # them now, not at the next new item.
            await self._track(self.publish_now())
        self.reloads += 1
        log.info("feeds.yaml reloaded: %d sources", len(new.sources))
        return True

    # ------------------------------------------------------------------ introspection

    def next_run(self, job_id: str) -> datetime | None:
        try:
            job = self.scheduler.get_job(job_id)
        except JobLookupError:
            return None
        return None if job is None else job.next_run_time
