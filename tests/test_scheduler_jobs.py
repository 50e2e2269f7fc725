"""The scheduler's real digest job: compose, deliver to the SMTP server, retry, count.

Nothing is injected: each test runs a real :class:`Service` whose persistent
digest job calls the real compose and the real deliver path, which talk SMTP to
the aiosmtpd fixture. Waits are events (APScheduler's job events, messages
arriving) bounded by deadlines, never bare sleeps.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from aggregator.config import load_config
from aggregator.digest import latest_slot
from aggregator.models import DeliveryStatus, utcnow
from aggregator.scheduler import DIGEST_JOB, Service
from aggregator.store import Store
from tests.support.smtp import SmtpFixture
from tests.test_service import SECRET, _insert_last_week_items, eventually, free_port, running

SUBSCRIBERS = ("kim@example.org", "lee@example.org", "park@example.org")
# The README: "with a six-day misfire grace: after downtime the missed issue goes out once".
README_MISFIRE_GRACE = timedelta(days=6)


def write_config(
    tmp_path: Path, smtp: SmtpFixture, *, max_attempts: int = 3, schedule: str = "mon 09:00"
) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "site: {title: Test Digest, url: 'http://127.0.0.1:9/', timezone: Asia/Seoul,"
        f" output_dir: '{tmp_path / 'public'}', sender_email: digest@example.org}}\n"
        f"storage: {{url: 'sqlite:///{tmp_path / 'service.db'}'}}\n"
        f"digest: {{schedule: '{schedule}'}}\n"
        f"smtp: {{host: 127.0.0.1, port: {smtp.port}, starttls: false,"
        f" max_attempts: {max_attempts}}}\n"
        "sources:\n  - {id: kobiz, url: 'http://127.0.0.1:1/'}\n",
        encoding="utf-8",
    )
    return path


def prepare_store(path: Path) -> Any:
    """Last week's items and three active subscribers; returns the slot that period ends at."""
    config = load_config(path)
    store = Store.open(config.database_url)
    try:
        slot = latest_slot(config.digest, config.site, utcnow())
        _insert_last_week_items(store, slot)
        for email in SUBSCRIBERS:
            store.add_subscriber(email, now=utcnow() - timedelta(days=10), active=True)
    finally:
        store.close()
    return slot


def schedule_missed_by(missed_by: timedelta) -> tuple[str, datetime]:
    """A ``digest.schedule`` whose latest slot lies ``missed_by`` in the past
    (to the minute), and that slot: the one run a service down since then missed."""
    slot = (utcnow() - missed_by).replace(second=0, microsecond=0)
    local = slot.astimezone(ZoneInfo("Asia/Seoul"))
    return local.strftime("%a %H:%M").lower(), slot


def rewind_digest_job(path: Path, *, to: datetime) -> int:
    """Make the digest job a previous run stored look as if the service had gone
    down before its run at ``to``; returns the misfire grace it stored (seconds)."""
    config = load_config(path)
    store = Store.open(config.database_url)
    jobstore = SQLAlchemyJobStore(engine=store.engine, tablename="apscheduler_jobs")
    jobstore.start(BackgroundScheduler(), "persistent")
    try:
        job = jobstore.lookup_job(DIGEST_JOB)
        assert job is not None, "the service did not store its digest job"
        job._modify(next_run_time=to)
        jobstore.update_job(job)
        return int(job.misfire_grace_time)
    finally:
        jobstore.shutdown()
        store.close()


class JobEvents:
    """APScheduler events of the digest job, as an asyncio-friendly list."""

    def __init__(self, service: Service) -> None:
        self.events: list[JobEvent] = []
        service.scheduler.add_listener(
            self._record, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
        )

    def _record(self, event: JobEvent) -> None:
        if event.job_id == DIGEST_JOB:
            self.events.append(event)

    def codes(self) -> list[int]:
        return [e.code for e in self.events]


async def start_stop_once(path: Path) -> None:
    """One short run: the service stores its digest job (next Monday), then stops."""
    service = Service(load_config(path), port=free_port(), secret=SECRET, watch=False)
    task = await running(service)
    service.stop()
    await task


async def metrics_text(service: Service) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
        response = await client.get("/metrics")
        assert response.status_code == 200
        return response.text


def test_missed_digest_is_mailed_once_through_the_real_deliver_path(
    tmp_path: Path, smtp_server: SmtpFixture
) -> None:
    schedule, missed = schedule_missed_by(timedelta(hours=30))
    path = write_config(tmp_path, smtp_server, schedule=schedule)
    slot = prepare_store(path)
    assert slot == missed
    asyncio.run(start_stop_once(path))
    stored_grace = rewind_digest_job(path, to=slot)
    assert stored_grace == 6 * 24 * 3600  # the README's six days, as a literal

    async def after_downtime() -> None:
        service = Service(load_config(path), port=free_port(), secret=SECRET, watch=False)
        events = JobEvents(service)
        task = await running(service)
        try:
            await eventually(lambda: len(smtp_server.messages) == 3, what="three digests")
            await eventually(lambda: EVENT_JOB_EXECUTED in events.codes(), what="job done")
            await eventually(
                lambda: 'aggregator_digest_sends_total{result="sent"} 3' in _sync_metrics(service),
                what="sends counted",
            )
            assert 'aggregator_digest_sends_total{result="sent"} 3' in await metrics_text(service)
            # A duplicate firing (the retry job, a second node) mails nobody twice.
            report = await service.digest_now()
            assert report.sent == 0
        finally:
            service.stop()
            await task

    asyncio.run(after_downtime())
    assert sorted(r for m in smtp_server.messages for r in m.recipients) == sorted(SUBSCRIBERS)
    assert len({m.message_id for m in smtp_server.messages}) == 3

    async def restart() -> None:
        service = Service(load_config(path), port=free_port(), secret=SECRET, watch=False)
        events = JobEvents(service)
        task = await running(service)
        try:
            next_run = service.next_run(DIGEST_JOB)
            assert next_run is not None and next_run > utcnow()  # next week's slot
            assert events.codes() == []
        finally:
            service.stop()
            await task

    asyncio.run(restart())
    assert len(smtp_server.messages) == 3
    store = Store.open(load_config(path).database_url)
    try:
        digests = store.list_digests()
        assert len(digests) == 1
        # The first issue covers what was stored up to its composing (here: the
        # three items of the week before the missed slot).
        assert digests[0].period_start < slot - timedelta(days=1) < digests[0].period_end
        assert digests[0].item_count == 3
        assert digests[0].id is not None
        counts = store.delivery_counts(digests[0].id)
        assert counts[DeliveryStatus.SENT] == 3
        assert counts[DeliveryStatus.PENDING] == 0
    finally:
        store.close()


def _sync_metrics(service: Service) -> str:
    return service.metrics.render()


def test_a_digest_missed_for_almost_six_days_is_still_sent(
    tmp_path: Path, smtp_server: SmtpFixture
) -> None:
    schedule, slot = schedule_missed_by(README_MISFIRE_GRACE - timedelta(hours=2))
    path = write_config(tmp_path, smtp_server, schedule=schedule)
    prepare_store(path)
    asyncio.run(start_stop_once(path))
    rewind_digest_job(path, to=slot)

    async def after_downtime() -> None:
        service = Service(load_config(path), port=free_port(), secret=SECRET, watch=False)
        task = await running(service)
        try:
            await eventually(lambda: len(smtp_server.messages) == 3, what="three digests")
        finally:
            service.stop()
            await task

    asyncio.run(after_downtime())


def test_a_digest_missed_for_more_than_six_days_is_skipped(
    tmp_path: Path, smtp_server: SmtpFixture
) -> None:
    schedule, slot = schedule_missed_by(README_MISFIRE_GRACE + timedelta(hours=2))
    path = write_config(tmp_path, smtp_server, schedule=schedule)
    prepare_store(path)
    asyncio.run(start_stop_once(path))
    rewind_digest_job(path, to=slot)

    async def after_downtime() -> None:
        service = Service(load_config(path), port=free_port(), secret=SECRET, watch=False)
        events = JobEvents(service)
        task = await running(service)
        try:
            await eventually(lambda: events.codes() != [], what="the misfire processed")
            assert events.codes() == [EVENT_JOB_MISSED]
            assert service.store.list_digests() == []
        finally:
            service.stop()
            await task

    asyncio.run(after_downtime())
    assert smtp_server.messages == []


def test_digest_job_retries_a_deferred_address_and_counts_each_send(
    tmp_path: Path, smtp_server: SmtpFixture
) -> None:
    # One attempt per run: a 451 leaves lee pending, and the service schedules
    # a retry instead of waiting for next week.
    path = write_config(tmp_path, smtp_server, max_attempts=1)
    prepare_store(path)
    smtp_server.handler.defer("lee@example.org", times=1)

    async def scenario() -> None:
        service = Service(load_config(path), port=free_port(), secret=SECRET, watch=False)
        events = JobEvents(service)
        task = await running(service)
        try:
            # Fire the real persistent job now, as its cron trigger would.
            job = service.scheduler.get_job(DIGEST_JOB)
            assert job is not None
            job.modify(next_run_time=utcnow())
            await eventually(lambda: EVENT_JOB_EXECUTED in events.codes(), what="digest job")
            await eventually(lambda: len(smtp_server.messages) == 2, what="two digests")
            await eventually(
                lambda: service.scheduler.get_job("digest-retry") is not None, what="retry job"
            )
            retry = service.scheduler.get_job("digest-retry")
            delay = retry.next_run_time - utcnow()
            assert timedelta(minutes=9) < delay <= timedelta(minutes=10)
            text = await metrics_text(service)
            assert 'aggregator_digest_sends_total{result="sent"} 2' in text
            assert smtp_server.to("lee@example.org") == []

            retry.modify(next_run_time=utcnow())
            await eventually(lambda: len(smtp_server.messages) == 3, what="the retried digest")
            await eventually(
                lambda: 'aggregator_digest_sends_total{result="sent"} 3' in _sync_metrics(service),
                what="the retry counted",
            )
            assert service.scheduler.get_job("digest-retry") is None  # nothing left to retry
        finally:
            service.stop()
            await task

    asyncio.run(scenario())
    assert smtp_server.handler.refusals == [("lee@example.org", 451)]
    for email in SUBSCRIBERS:
        assert len(smtp_server.to(email)) == 1, email
