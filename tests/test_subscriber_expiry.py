"""Pending subscribers who never confirm are removed after ``subscribers.expire_pending_after``."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregator.config import load_config
from aggregator.models import SubscriberStatus, utcnow
from aggregator.scheduler import Service
from aggregator.store import Store
from tests.support.cli import run_cli
from tests.test_service import eventually, free_port, running

if TYPE_CHECKING:
    from tests.support.smtp import SmtpFixture

SECRET = "expiry-test-secret-0123456789"


def feeds_yaml(tmp_path: Path, db_url: str, extra: str = "", smtp_port: int = 25) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "site: {title: T, url: 'http://127.0.0.1:9/', sender_email: d@example.org,"
        f" output_dir: '{tmp_path / 'public'}'}}\n"
        f"storage: {{url: '{db_url}'}}\n"
        f"smtp: {{host: 127.0.0.1, port: {smtp_port}, max_attempts: 1}}\n"
        "sources: []\n" + extra,
        encoding="utf-8",
    )
    return path


def add_aged(db_url: str, people: dict[str, tuple[float, SubscriberStatus]]) -> None:
    """Subscribers added ``days`` ago, in the given status."""
    store = Store.open(db_url)
    try:
        for email, (days, status) in people.items():
            when = utcnow() - timedelta(days=days)
            subscriber, _ = store.add_subscriber(
                email, now=when, active=status is SubscriberStatus.ACTIVE
            )
            if status is SubscriberStatus.UNSUBSCRIBED:
                store.unsubscribe_subscriber(subscriber.id, subscriber.email, now=when)
    finally:
        store.close()


def remaining(db_url: str) -> set[str]:
    store = Store.open(db_url)
    try:
        return {s.email for s in store.list_subscribers()}
    finally:
        store.close()


AGES = [0.0, 1.0, 2.9, 3.1, 6.9, 7.1, 30.0, 400.0]


@pytest.mark.parametrize(
    ("setting", "window"), [("", 7.0), ("subscribers: {expire_pending_after: 3d}\n", 3.0)]
)
def test_expire_removes_only_pending_past_the_window(
    db_url: str, tmp_path: Path, setting: str, window: float
) -> None:
    people = {
        f"pending{n}@example.org": (age, SubscriberStatus.PENDING) for n, age in enumerate(AGES)
    }
    people |= {
        f"active{n}@example.org": (age, SubscriberStatus.ACTIVE) for n, age in enumerate(AGES)
    }
    people |= {"left@example.org": (400.0, SubscriberStatus.UNSUBSCRIBED)}
    add_aged(db_url, people)
    config = feeds_yaml(tmp_path, db_url, setting)

    result = run_cli("-c", str(config), "subscribers", "expire")
    assert result.exit_code == 0, result.output
    expired = {
        e
        for e, (age, status) in people.items()
        if status is SubscriberStatus.PENDING and age > window
    }
    assert expired and f"removed {len(expired)} pending subscribers" in " ".join(
        result.output.split()
    )
    assert remaining(db_url) == set(people) - expired
    again = run_cli("-c", str(config), "subscribers", "expire")
    assert "no pending subscribers past their confirmation window" in again.output


def test_list_expires_before_it_shows(sqlite_url: str, tmp_path: Path) -> None:
    add_aged(
        sqlite_url,
        {
            "old@example.org": (8, SubscriberStatus.PENDING),
            "new@example.org": (1, SubscriberStatus.PENDING),
        },
    )
    result = run_cli("-c", str(feeds_yaml(tmp_path, sqlite_url)), "subscribers", "list")
    assert result.exit_code == 0
    assert "old@example.org" in result.stderr  # named as removed
    assert "old@example.org" not in result.stdout and "new@example.org" in result.stdout
    assert remaining(sqlite_url) == {"new@example.org"}


def test_a_fresh_link_restarts_the_window(
    sqlite_url: str, tmp_path: Path, smtp_server: SmtpFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGGREGATOR_SECRET", SECRET)
    add_aged(
        sqlite_url,
        {
            "late@example.org": (10, SubscriberStatus.PENDING),
            "silent@example.org": (10, SubscriberStatus.PENDING),
        },
    )
    config = feeds_yaml(tmp_path, sqlite_url, smtp_port=smtp_server.port)
    sent = run_cli("-c", str(config), "subscribers", "confirm-mail", "late@example.org")
    assert sent.exit_code == 0, sent.output
    assert len(smtp_server.to("late@example.org")) == 1
    assert run_cli("-c", str(config), "subscribers", "expire").exit_code == 0
    assert remaining(sqlite_url) == {"late@example.org"}


@pytest.mark.parametrize("value", ["1h", "0s", "soon"])
def test_a_window_shorter_than_a_day_fails_check(tmp_path: Path, value: str) -> None:
    config = feeds_yaml(
        tmp_path, "sqlite:///x.db", f"subscribers:\n  expire_pending_after: {value}\n"
    )
    result = run_cli("-c", str(config), "check")
    assert result.exit_code == 2
    assert f"{config}:6: subscribers.expire_pending_after" in " ".join(result.output.split())


def test_the_running_service_expires_them(sqlite_url: str, tmp_path: Path) -> None:
    add_aged(
        sqlite_url,
        {
            "stale@example.org": (8, SubscriberStatus.PENDING),
            "fresh@example.org": (0, SubscriberStatus.PENDING),
        },
    )
    config = load_config(feeds_yaml(tmp_path, sqlite_url))

    async def scenario() -> None:
        service = Service(config, port=free_port(), secret=SECRET, watch=False)
        task = await running(service)
        try:
            await eventually(
                lambda: remaining(sqlite_url) == {"fresh@example.org"}, what="stale one removed"
            )
        finally:
            service.stop()
            await task

    asyncio.run(scenario())


@pytest.mark.postgres
def test_distributed_mode_expires_them_in_the_hourly_cleanup(pg_url: str, tmp_path: Path) -> None:
    from aggregator import queue

    add_aged(
        pg_url,
        {
            "stale@example.org": (8, SubscriberStatus.PENDING),
            "fresh@example.org": (0, SubscriberStatus.PENDING),
        },
    )
    path = feeds_yaml(tmp_path, pg_url, "")
    text = path.read_text(encoding="utf-8").replace(
        f"storage: {{url: '{pg_url}'}}", f"storage: {{url: '{pg_url}', queue: procrastinate}}"
    )
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    store = Store.open(pg_url)
    queue.apply_schema(store)

    async def scenario() -> None:
        tasks_app = queue.bound_app(config)
        await queue.start_runtime(config, secret=SECRET, store=store, tasks=tasks_app)
        try:
            async with tasks_app.open_async():
                await queue.cleanup(0)
        finally:
            await queue.stop_runtime()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert remaining(pg_url) == {"fresh@example.org"}


def test_signing_up_again_while_pending_restarts_the_window(db_url: str, tmp_path: Path) -> None:
    # What the web form does when someone subscribes again: add_subscriber, then a new link.
    add_aged(db_url, {"again@example.org": (10, SubscriberStatus.PENDING)})
    store = Store.open(db_url)
    try:
        again, created = store.add_subscriber("Again@example.org", now=utcnow())
        assert not created and again.status is SubscriberStatus.PENDING
        assert store.expire_pending(added_before=utcnow() - timedelta(days=7)) == []
    finally:
        store.close()
    assert remaining(db_url) == {"again@example.org"}
