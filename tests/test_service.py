"""The running service: scheduler jobs, missed digests, hot reload, shutdown, health.

Each test runs a real :class:`Service` (APScheduler, uvicorn, the store) in an
event loop, against the fixture HTTP server; intervals are seconds, not hours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from aggregator.config import load_config
from aggregator.models import utcnow
from aggregator.scheduler import Service
from aggregator.store import Store
from tests.support.feeds import simple_rss
from tests.support.http import FixtureServer
from tests.support.items import make_item

SECRET = "s" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss(n_items: int, prefix: str = "story") -> str:
    return simple_rss(prefix, n_items, title="{prefix} number {n}")


def write_config(tmp_path: Path, sources: str, *, port: int, schedule: str = "mon 09:00") -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(
        f"site: {{title: Test Digest, url: 'http://127.0.0.1:{port}/',"
        f" output_dir: '{tmp_path / 'public'}', sender_email: digest@example.org}}\n"
        f"storage: {{url: 'sqlite:///{tmp_path / 'service.db'}'}}\n"
        "defaults: {interval: 1h, timeout: 5s}\n"
        f"digest: {{schedule: '{schedule}'}}\n"
        "sources:\n" + sources,
        encoding="utf-8",
    )
    return path


class OutputLines:
    """A child process's output, read line by line in a thread while it runs,
    so a test can wait for a line (an event) instead of sleeping."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line)

    def wait_for(self, text: str, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {text!r} in:\n{self.text()}")

    def finish(self, timeout: float = 10.0) -> str:
        """All of the output, once the process closed it."""
        self._thread.join(timeout)
        return self.text()

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 20.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


async def running(service: Service) -> asyncio.Task[None]:
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), timeout=30)
    return task


def test_scheduler_ingests_each_source_and_publishes(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    http_server.add("/a.xml", rss(3, "alpha"), etag='"a1"')
    http_server.add("/b.xml", rss(2, "beta"))
    port = free_port()
    path = write_config(
        tmp_path,
        f"  - {{id: a, url: '{http_server.url('/a.xml')}', interval: 1s}}\n"
        f"  - {{id: b, url: '{http_server.url('/b.xml')}', interval: 1h}}\n",
        port=port,
    )

    async def scenario() -> None:
        service = Service(load_config(path), port=port, secret=SECRET, watch=False)
        service.publish_delay = timedelta(milliseconds=200)
        task = await running(service)
        try:
            await eventually(lambda: service.store.count_items() == 5, what="5 items stored")
            await eventually(
                lambda: (tmp_path / "public" / "feed.atom").exists(), what="feed published"
            )
            # The 1-second source is fetched again and again, the hourly one once.
            await eventually(lambda: http_server.count("/a.xml") >= 3, what="a refetched")
            assert http_server.count("/b.xml") == 1
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                feed = await client.get("/feed.atom")
                assert feed.status_code == 200
                assert "alpha number 0" in feed.text
                metrics = (await client.get("/metrics")).text
                assert 'aggregator_fetches_total{result="ok"}' in metrics
                assert 'aggregator_fetches_total{result="not_modified"}' in metrics
                assert "aggregator_fetch_duration_seconds_bucket" in metrics
                assert 'aggregator_items_stored_total{kind="new"} 5' in metrics
                health = await client.get("/healthz")
                assert health.status_code == 200
                body = health.json()
                assert body["checks"]["database"] == "ok"
                assert body["checks"]["scheduler"] == "running"
                assert body["checks"]["last_ingest_age_seconds"] is not None
        finally:
            service.stop()
            await task

    asyncio.run(scenario())


def _insert_last_week_items(store: Store, slot: Any) -> None:
    from aggregator.models import Source

    store.sync_sources([Source(id="kobiz", url="https://kobiz.example/", type="feed")])
    seen = slot - timedelta(days=1)
    items = [make_item("kobiz", n, title=f"Ko-pick: column {n}", published=seen) for n in range(3)]
    store.save_items("kobiz", items, fetched_at=seen, next_fetch_at=slot + timedelta(days=30))


def test_hot_reload_applies_valid_edits_and_keeps_config_on_invalid_ones(
    http_server: FixtureServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    http_server.add("/a.xml", rss(1, "alpha"))
    http_server.add("/b.xml", rss(1, "beta"))
    port = free_port()
    a_line = f"  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n"
    path = write_config(tmp_path, a_line, port=port)

    async def scenario() -> None:
        service = Service(load_config(path), port=port, secret=SECRET, watch=True)
        task = await running(service)
        try:
            await eventually(lambda: service.store.count_items() == 1, what="a ingested")
            assert service.next_run("ingest:a") is not None

            # A valid edit: a new source appears and is fetched, no restart.
            text = path.read_text(encoding="utf-8")
            path.write_text(
                text + f"  - {{id: b, url: '{http_server.url('/b.xml')}'}}\n", encoding="utf-8"
            )
            await eventually(lambda: service.reloads >= 1, what="reload after a valid edit")
            await eventually(lambda: service.store.count_items() == 2, what="b ingested")
            assert {s.id for s in service.config.sources} == {"a", "b"}

            # An invalid edit is logged with file:line and the running config stays.
            caplog.clear()
            path.write_text(
                path.read_text(encoding="utf-8").replace("interval: 1h", "interval: fortnightly"),
                encoding="utf-8",
            )
            await eventually(
                lambda: "not reloaded" in caplog.text, what="the invalid edit is reported"
            )
            assert f"{path}:3: defaults.interval" in caplog.text
            assert {s.id for s in service.config.sources} == {"a", "b"}
            assert service.reloads == 1

            # Removing a source unschedules it but keeps its items.
            path.write_text(text, encoding="utf-8")
            await eventually(lambda: service.reloads >= 2, what="reload after removal")
            assert service.next_run("ingest:b") is None
            assert service.store.count_items() == 2
        finally:
            service.stop()
            await task

    with caplog.at_level(logging.INFO, logger="aggregator"):
        asyncio.run(scenario())


def test_sigterm_during_fetch_shuts_down_cleanly(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    http_server.add("/fast.xml", rss(4, "fast"))
    http_server.add("/slow.xml", rss(4, "slow"), trickle=0.2)  # ~60 s to send
    port = free_port()
    path = write_config(
        tmp_path,
        f"  - {{id: fast, url: '{http_server.url('/fast.xml')}'}}\n"
        f"  - {{id: slow, url: '{http_server.url('/slow.xml')}', timeout: 120s}}\n",
        port=port,
    )
    env = dict(os.environ, AGGREGATOR_SECRET=SECRET)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aggregator",
            "-c",
            str(path),
            "--log-text",
            "-v",
            "run",
            "--port",
            str(port),
            "--no-watch",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = OutputLines(proc.stdout)
    try:
        deadline = time.monotonic() + 30
        while http_server.count("/slow.xml") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http_server.count("/slow.xml") == 1, "the slow fetch never started"
        # The fast fetch is done (it logs its counts as it returns): the only
        # job still running at SIGTERM is the slow one.
        lines.wait_for("fast: 4 new")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        took = time.monotonic() - started
        output = lines.finish()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stopped" in output, output
    # The README: "give running fetches ten seconds to finish, then cancel them".
    # The trickling fetch needs a minute, so the stop takes the whole grace and
    # little more (closing the web server and the store).
    assert "waiting up to 10s for 1 running jobs" in output, output
    assert "slow: fetch cancelled by shutdown; it runs again after restart" in output, output
    assert 10.0 <= took < 15.0, took
    db = sqlite3.connect(tmp_path / "service.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(db.execute("SELECT source_id, count(*) FROM items GROUP BY source_id"))
        assert rows.get("fast") == 4
        assert rows.get("slow") in (None, 4)  # all of a source's items or none
    finally:
        db.close()
    assert not (tmp_path / "data" / "aggregator.pid").exists()


@pytest.mark.parametrize("how", ["sighup", "reload"])
@pytest.mark.parametrize("old, new", [("1h", "1s"), ("6h", "2s")])
def test_a_shorter_interval_applied_by_reload_takes_effect_at_once(
    http_server: FixtureServer, tmp_path: Path, how: str, old: str, new: str
) -> None:
    http_server.add("/a.xml", rss(2, "alpha"), etag='"a1"')
    port = free_port()
    path = write_config(
        tmp_path, f"  - {{id: a, url: '{http_server.url('/a.xml')}', interval: {old}}}\n", port=port
    )
    new_seconds = int(new.removesuffix("s"))

    async def scenario() -> None:
        service = Service(load_config(path), port=port, secret=SECRET, watch=False)
        task = await running(service)
        try:
            await eventually(lambda: http_server.count("/a.xml") == 1, what="first fetch")
            await eventually(
                lambda: (s := service.store.source_state("a")) is not None and s.next_fetch_at,
                what="next fetch stored",
            )
            path.write_text(
                path.read_text(encoding="utf-8").replace(f"interval: {old}", f"interval: {new}"),
                encoding="utf-8",
            )
            before = utcnow()
            if how == "sighup":
                os.kill(os.getpid(), signal.SIGHUP)
                await eventually(lambda: service.reloads == 1, what="reload by SIGHUP")
            else:
                assert await service.reload()
            state = service.store.source_state("a")
            assert state is not None and state.next_fetch_at is not None
            # The stored time follows the new interval, not the old one's hour.
            assert state.next_fetch_at <= utcnow() + timedelta(seconds=new_seconds)
            await eventually(
                lambda: http_server.count("/a.xml") >= 3,
                timeout=6 * new_seconds + 10,
                what=f"fetched again every {new}",
            )
            assert utcnow() - before < timedelta(minutes=1)
        finally:
            service.stop()
            await task

    asyncio.run(scenario())


async def watcher_saw(marker: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Write ``marker`` next to feeds.yaml until the config watcher reports it
    filtered out (watchfiles' debug line naming it). watchfiles reports
    changes in order, so by then it has handled every change made before:
    a positive barrier for "nothing more comes of them"."""

    def seen() -> bool:
        marker.write_text(f"{time.monotonic()}\n", encoding="utf-8")
        return any(
            "filtered out" in r.getMessage() and marker.name in r.getMessage()
            for r in caplog.records
        )

    await eventually(seen, what=f"the config watcher to see {marker.name}")


def test_config_watcher_ignores_files_next_to_feeds_yaml(
    http_server: FixtureServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    http_server.add("/a.xml", rss(1, "alpha"))
    port = free_port()
    path = write_config(tmp_path, f"  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n", port=port)
    log_file = tmp_path / "aggregator.log"
    nested = tmp_path / "logs" / "deep" / "run.log"
    nested.parent.mkdir(parents=True)

    async def scenario() -> None:
        service = Service(load_config(path), port=port, secret=SECRET, watch=True)
        task = await running(service)
        try:
            await watcher_saw(tmp_path / "ready.marker", caplog)  # the watcher is up
            caplog.clear()
            for n in range(25):
                for target in (log_file, nested):
                    with target.open("a", encoding="utf-8") as handle:
                        handle.write(f"line {n}\n")
                # A log written in bursts, as a running service writes it.
                await asyncio.sleep(0.04)
            await watcher_saw(tmp_path / "after-logs.marker", caplog)
            assert service.reloads == 0
            noticed = [r for r in caplog.records if "detected" in r.getMessage()]
            assert noticed == [], [r.getMessage() for r in noticed]

            path.write_text(
                path.read_text(encoding="utf-8").replace("Test Digest", "Edited Digest"),
                encoding="utf-8",
            )
            await eventually(lambda: service.reloads == 1, what="reload after editing feeds.yaml")
            await watcher_saw(tmp_path / "after-edit.marker", caplog)
            # The edit woke the watcher once: one reload requested, one done.
            noticed = [r for r in caplog.records if "detected" in r.getMessage()]
            assert len(noticed) == 1, [r.getMessage() for r in noticed]
            assert service.reloads == 1
            assert service.config.site.title == "Edited Digest"
        finally:
            service.stop()
            await task

    with caplog.at_level(logging.DEBUG, logger="watchfiles"):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    "new_url",
    [
        "https://news.example.org/",
        "https://example.org/korean-film/digest/",
        "http://127.0.0.1:9/",
    ],
)
@pytest.mark.parametrize("how", ["reload", "restart"])
def test_published_feeds_follow_a_new_site_url_at_once(
    http_server: FixtureServer, tmp_path: Path, new_url: str, how: str
) -> None:
    http_server.add("/a.xml", rss(3, "alpha"), etag='"a1"')
    port = free_port()
    path = write_config(tmp_path, f"  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n", port=port)
    atom = tmp_path / "public" / "feed.atom"
    old_url = f"http://127.0.0.1:{port}/"

    async def first_run() -> None:
        service = Service(load_config(path), port=port, secret=SECRET, watch=False)
        service.publish_delay = timedelta(milliseconds=100)
        task = await running(service)
        try:
            await eventually(lambda: atom.exists(), what="first publish")
            assert old_url + "feed.atom" in atom.read_text(encoding="utf-8")
            path.write_text(
                path.read_text(encoding="utf-8").replace(old_url, new_url), encoding="utf-8"
            )
            if how == "reload":
                assert await service.reload()
                items = service.store.count_items()
                text = atom.read_text(encoding="utf-8")
                assert new_url + "feed.atom" in text and old_url not in text
                assert service.store.count_items() == items  # no new item was needed
        finally:
            service.stop()
            await task

    async def second_run() -> None:
        service = Service(load_config(path), port=free_port(), secret=SECRET, watch=False)
        task = await running(service)
        try:
            await eventually(
                lambda: new_url + "feed.atom" in atom.read_text(encoding="utf-8"),
                what="feed rebuilt at start",
            )
            assert old_url not in atom.read_text(encoding="utf-8")
            assert service.store.count_items() == 3
        finally:
            service.stop()
            await task

    asyncio.run(first_run())
    if how == "restart":
        asyncio.run(second_run())


@pytest.mark.parametrize(
    ("zone", "schedule"),
    [("Asia/Seoul", "mon 09:00"), ("America/New_York", "sun 23:30"), ("UTC", "fri 00:00")],
)
def test_started_service_reports_its_addresses_and_next_digest_in_the_site_zone(
    tmp_path: Path, zone: str, schedule: str
) -> None:
    from aggregator.digest import next_slot
    from aggregator.scheduler import ServiceInfo

    port = free_port()
    path = write_config(
        tmp_path, "  - {id: a, url: 'http://127.0.0.1:1/'}\n", port=port, schedule=schedule
    )
    path.write_text(
        path.read_text(encoding="utf-8").replace("title: Test Digest,", f"timezone: {zone},"),
        encoding="utf-8",
    )
    config = load_config(path)
    seen: list[ServiceInfo] = []

    async def scenario() -> None:
        service = Service(config, port=0, secret=SECRET, watch=False, on_ready=seen.append)
        task = await running(service)
        service.stop()
        await task

    asyncio.run(scenario())
    (info,) = seen
    assert info.home_url is not None and info.home_url.startswith("http://127.0.0.1:")
    assert info.home_url != "http://127.0.0.1:0/"  # the port actually bound
    assert info.feed_url == info.home_url + "feed.atom"
    assert info.sources == 1
    expected = next_slot(config.digest, config.site, utcnow())
    assert info.next_digest == expected
    assert info.next_digest is not None
    local = info.next_digest.astimezone(ZoneInfo(zone))
    assert f"{local:%a %H:%M}".lower() == schedule


def test_stopping_waits_for_a_running_store_job_and_logs_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start-up job that removes unconfirmed subscribers runs its store
    # call in a thread. Stopped while it ran, the service closed the store
    # under it, and APScheduler logged the cancelled job with a traceback
    # (CI saw it after Ctrl-C). Now the job gets the grace period like any.
    port = free_port()
    path = write_config(tmp_path, "  - {id: a, url: 'http://127.0.0.1:1/'}\n", port=port)
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    async def scenario() -> None:
        service = Service(load_config(path), port=port, secret=SECRET, watch=False)
        expire, close = service.store.expire_pending, service.store.close

        def slow_expire(**kwargs: Any) -> list[str]:
            entered.set()
            release.wait(20)
            gone = expire(**kwargs)
            order.append("expired")
            return gone

        def close_store() -> None:
            order.append("closed")
            close()

        monkeypatch.setattr(service.store, "expire_pending", slow_expire)
        monkeypatch.setattr(service.store, "close", close_store)
        task = await running(service)
        assert await asyncio.to_thread(entered.wait, 20), "the expiry job never ran"
        service.stop()
        await asyncio.sleep(0.5)  # shutdown is under way, the job still running
        assert not task.done()
        release.set()
        await asyncio.wait_for(task, 20)

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert order == ["expired", "closed"]
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert tracebacks == []
    assert "waiting up to 10s for" in caplog.text
