"""Fault injection: kill -9, a locked or missing database, a full disk, a dying SMTP server.

Each test breaks a real component (a process, a SQLite lock, a file size
limit, an SMTP server) and checks two things: the error names the problem,
and nothing stored is lost or half-written, so the next run completes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from aggregator.config import load_config, parse_config
from aggregator.deliver import deliver_digest
from aggregator.errors import DeliveryError, StoreError
from aggregator.ingest import Ingestor
from aggregator.models import DeliveryStatus, Site
from aggregator.publish import publish_from_store
from aggregator.scheduler import Service
from aggregator.store import Store
from tests.support.feeds import simple_rss
from tests.support.http import FixtureServer
from tests.support.smtp import SmtpFixture
from tests.test_deliver import add_active, make_digest

SECRET = "f" * 32


def rss(prefix: str, count: int) -> str:
    return simple_rss(prefix, count)


def write_config(tmp_path: Path, sources: str, db: str | None = None) -> Path:
    path = tmp_path / "feeds.yaml"
    db = db or f"sqlite:///{tmp_path / 'faults.db'}"
    path.write_text(
        f"site: {{title: T, url: 'http://127.0.0.1:9/', output_dir: '{tmp_path}/pub'}}\n"
        f"storage: {{url: '{db}'}}\n"
        "defaults: {interval: 1h, timeout: 60s}\nsources:\n" + sources,
        encoding="utf-8",
    )
    return path


def aggregator(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--log-text", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
    )


def counts_by_source(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return dict(conn.execute("SELECT source_id, count(*) FROM items GROUP BY source_id"))
    finally:
        conn.close()


def test_sigkill_during_ingest_leaves_a_consistent_store(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    lines = []
    for n in range(6):
        http_server.add(f"/f{n}.xml", rss(f"f{n}", 8))
        lines.append(f"  - {{id: f{n}, url: '{http_server.url(f'/f{n}.xml')}'}}\n")
    http_server.add("/slow.xml", rss("slow", 8), trickle=0.05)  # ~1 min to send
    lines.append(f"  - {{id: slow, url: '{http_server.url('/slow.xml')}'}}\n")
    config = write_config(tmp_path, "".join(lines))
    db = tmp_path / "faults.db"

    proc = aggregator("-c", str(config), "fetch")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if db.exists():
            try:
                if len(counts_by_source(db)) >= 6:
                    break
            except sqlite3.OperationalError:
                pass  # schema not there yet
        assert proc.poll() is None, "the fetch ended before the kill"
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the six fast sources were not stored within 60 s")
    assert http_server.answered("/slow.xml") == 0  # killed before the slow feed came in full
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    after_kill = counts_by_source(db)
    assert all(after_kill.get(f"f{n}") == 8 for n in range(6)), after_kill
    assert after_kill.get("slow") is None  # its transaction never started

    http_server.add("/slow.xml", rss("slow", 8))
    rerun = aggregator("-c", str(config), "fetch")
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    final = counts_by_source(db)
    assert final == {**{f"f{n}": 8 for n in range(6)}, "slow": 8}


def test_locked_database_is_waited_for_then_reported_clearly(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    http_server.add("/a.xml", rss("a", 3))
    db = tmp_path / "locked.db"
    config = write_config(
        tmp_path,
        f"  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n",
        db=f"sqlite:///{db}?timeout=1",
    )
    Store.open(f"sqlite:///{db}").close()  # migrated, ready

    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        locked = aggregator("-c", str(config), "fetch")
        _, err = locked.communicate(timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert locked.returncode == 1
    assert "database is locked" in err
    assert str(db) in err
    assert "Traceback" not in err

    # A lock released within the wait is not an error at all.
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, lambda: (holder.execute("ROLLBACK"), holder.close())).start()
    waited = aggregator("-c", str(config), "fetch")
    _, err = waited.communicate(timeout=60)
    assert waited.returncode == 0, err
    assert counts_by_source(db) == {"a": 3}


def test_lock_taken_mid_run_fails_one_write_and_keeps_the_others(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    """A write that outwaits the busy timeout fails the pass, not the other sources.

    ``early`` is stored before the lock is taken; ``victim`` answers while the
    lock is held and gives up after the 1 s busy timeout; ``broken`` (HTTP 500)
    and ``late`` answer after the lock is gone, so their error and items are
    recorded. The command still exits 1 naming the database, and the next
    ``fetch --due`` stores ``victim`` and nothing else.
    """
    http_server.add("/early.xml", rss("early", 2))
    http_server.add("/victim.xml", rss("victim", 2), delay=1.5)
    http_server.add("/broken.xml", "oops", status=500, content_type="text/plain", delay=6)
    http_server.add("/late.xml", rss("late", 2), delay=6)
    db = tmp_path / "midrun.db"
    names = ("early", "victim", "broken", "late")
    config = write_config(
        tmp_path,
        "".join(f"  - {{id: {n}, url: '{http_server.url(f'/{n}.xml')}'}}\n" for n in names),
        db=f"sqlite:///{db}?timeout=1",
    )
    Store.open(f"sqlite:///{db}").close()

    proc = aggregator("-c", str(config), "fetch")
    deadline = time.monotonic() + 30
    while counts_by_source(db).get("early") != 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    # victim's feed arrives (its 1.5 s delay) while the lock is held ...
    while http_server.answered("/victim.xml") == 0:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    # ... and its write must outwait the 1 s busy timeout: holding the lock that
    # long (and a second more for a loaded machine) is the scenario itself, not
    # a guess at when something settles.
    time.sleep(2.0)
    # broken and late answer only at ~6 s, after the lock is gone.
    assert http_server.answered("/broken.xml") == 0 and http_server.answered("/late.xml") == 0
    holder.execute("ROLLBACK")
    holder.close()
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    assert "database is locked" in err and str(db) in err
    assert "Traceback" not in err
    assert counts_by_source(db) == {"early": 2, "late": 2}
    conn = sqlite3.connect(db)
    try:
        errors = dict(conn.execute("SELECT id, last_error FROM sources"))
    finally:
        conn.close()
    assert "500" in (errors["broken"] or ""), errors
    assert errors["victim"] is None  # not its fault: no backoff, fetched again next run

    # The next scheduled pass retries exactly what the lock cost: victim is due
    # (no backoff), broken backs off, early and late wait for their interval.
    rerun = aggregator("-c", str(config), "fetch", "--due")
    _, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    assert counts_by_source(db) == {"early": 2, "victim": 2, "late": 2}
    assert [http_server.count(f"/{n}.xml") for n in names] == [1, 2, 1, 1]


def test_running_service_rides_out_a_locked_database(
    http_server: FixtureServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler logs the lock, keeps its pace (no crash, no tight loop) and catches up."""
    http_server.add("/a.xml", rss("one", 2))
    db = tmp_path / "service.db"
    path = tmp_path / "service.yaml"
    path.write_text(
        f"site: {{title: T, url: 'http://127.0.0.1:9/', output_dir: '{tmp_path}/pub'}}\n"
        f"storage: {{url: 'sqlite:///{db}?timeout=0.3'}}\n"
        "defaults: {interval: 1s, timeout: 5s}\n"
        f"sources:\n  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n",
        encoding="utf-8",
    )
    caplog.set_level(logging.ERROR, logger="aggregator")

    def lock_errors() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "database is locked" in r.getMessage()]

    async def scenario() -> None:
        service = Service(load_config(path), role="worker", watch=False, secret=SECRET)
        task = asyncio.create_task(service.run())
        await asyncio.wait_for(service.ready.wait(), timeout=30)
        try:
            while service.store.count_items() < 2:
                await asyncio.sleep(0.1)
            http_server.add("/a.xml", rss("two", 4))
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            before = http_server.count("/a.xml")
            seen = len(lock_errors())
            # Held until the scheduler has hit the lock three times (not for a
            # fixed while): each hit is one fetch whose write gave up and was logged.
            deadline = time.monotonic() + 20
            while len(lock_errors()) < seen + 3:
                assert not task.done(), "the service stopped on a locked database"
                assert time.monotonic() < deadline, "the scheduler stopped retrying"
                await asyncio.sleep(0.05)
            hits = lock_errors()[seen : seen + 3]
            during = http_server.count("/a.xml") - before
            holder.execute("ROLLBACK")
            holder.close()
            assert not task.done()  # no crash
            # Still once a second (the interval), not a retry loop paced by the
            # 0.3 s busy timeout; every fetch in between was a logged hit.
            assert hits[2].created - hits[0].created >= 1.5, [h.created for h in hits]
            assert 3 <= during <= 4, during
            deadline = time.monotonic() + 15
            while service.store.count_items() < 6:
                assert time.monotonic() < deadline, "not caught up after the lock"
                await asyncio.sleep(0.1)
        finally:
            service.stop()
            await task

    asyncio.run(scenario())
    locked = [r.getMessage() for r in caplog.records if "database is locked" in r.getMessage()]
    assert locked and all("retrying at the next interval" in m for m in locked), locked


def test_unreachable_database_is_a_clear_error_without_the_password(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, f"  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n")
    proc = aggregator(
        "-c",
        str(config),
        "fetch",
        env={"DATABASE_URL": "postgresql://digest:hunter2@127.0.0.1:1/x"},
    )
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 1
    assert "cannot connect to database" in err and "127.0.0.1:1" in err
    assert "hunter2" not in err
    assert "Traceback" not in err
    assert http_server.count("/a.xml") == 0  # nothing fetched that could not be stored


DISK_FULL_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from aggregator.errors import PublishError
from aggregator.publish import write_if_changed

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    write_if_changed(Path(sys.argv[1]), b"<feed>" + b"x" * (1024 * 1024) + b"</feed>")
except PublishError as exc:
    print(exc)
    sys.exit(3)
"""


def test_disk_full_while_publishing_keeps_the_old_feed(tmp_path: Path) -> None:
    feed = tmp_path / "feed.atom"
    feed.write_bytes(b"<feed>the old, complete feed</feed>")

    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(feed)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 3, proc.stderr
    assert str(feed) in proc.stdout
    assert feed.read_bytes() == b"<feed>the old, complete feed</feed>"
    assert [p.name for p in tmp_path.iterdir()] == ["feed.atom"]  # no temp file left


def long_rss(prefix: str, count: int) -> str:
    """Like ``rss`` but each entry carries ~2 KB of text, so the feed is large."""
    return rss(prefix, count).replace("</description>", " " + "words " * 350 + "</description>")


def limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec: EFBIG instead of death by SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_during_the_publish_command_keeps_the_old_feeds(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    http_server.add("/a.xml", long_rss("a", 10))
    path = write_config(tmp_path, f"  - {{id: a, url: '{http_server.url('/a.xml')}'}}\n")
    config = load_config(path)
    pub = tmp_path / "pub"

    def ingest_and_publish() -> None:  # in-process: only the command under test is a subprocess
        store = Store.open(config.database_url)
        try:
            asyncio.run(Ingestor(config, store).run())
            publish_from_store(store, config.site, config.output_dir)
        finally:
            store.close()

    ingest_and_publish()
    old = {p.name: p.read_bytes() for p in pub.iterdir()}
    assert {"feed.atom", "feed.json"} <= set(old)

    http_server.add("/a.xml", long_rss("b", 60))  # the new feed will not fit in 64 KB
    store = Store.open(config.database_url)
    try:
        asyncio.run(Ingestor(config, store).run())
    finally:
        store.close()
    full = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--log-text", "-c", str(path), "publish"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
        preexec_fn=limit_file_size(64 * 1024),
    )
    _, err = full.communicate(timeout=60)

    assert full.returncode == 1, err
    assert "could not write the feed (File too large); the old file is kept" in err
    assert "Traceback" not in err
    assert str(pub / "feed.atom") in err or str(pub / "feed.json") in err
    assert {p.name: p.read_bytes() for p in pub.iterdir()} == old  # intact, no temp files

    ingest_and_publish()  # space is back: the next run publishes
    assert (pub / "feed.atom").read_bytes() != old["feed.atom"]
    assert b"b story 59" in (pub / "feed.atom").read_bytes()


def test_a_database_down_mid_pass_is_waited_for_twice_not_once_per_source(
    http_server: FixtureServer, sqlite_url: str, tmp_path: Path
) -> None:
    lines = []
    for n in range(6):
        http_server.add(f"/d{n}.xml", rss(f"d{n}", 2))
        lines.append(f"  - {{id: d{n}, url: '{http_server.url(f'/d{n}.xml')}'}}\n")
    config = parse_config(
        write_config(tmp_path, "".join(lines), db=sqlite_url).read_text(encoding="utf-8"),
        path=tmp_path / "feeds.yaml",
    )
    store = Store.open(sqlite_url)
    attempts: list[str] = []

    def locked(source_id: str, *args: object, **kwargs: object) -> None:
        attempts.append(source_id)
        time.sleep(0.2)  # the busy timeout, shortened
        raise StoreError(f"database error ({sqlite_url}): database is locked")

    store.save_items = locked  # type: ignore[method-assign]
    store.record_failure = locked  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="database is locked"):
            asyncio.run(Ingestor(config, store).run())
        assert len(attempts) == 2  # then the other four stop waiting
        assert time.monotonic() - started < 5
    finally:
        store.close()


def test_smtp_server_dying_mid_send_then_returning_delivers_the_rest_once(
    sqlite_url: str, smtp_server: SmtpFixture
) -> None:
    store = Store.open(sqlite_url)
    try:
        digest = make_digest(store)
        emails = add_active(store, 6)
        smtp_server.handler.delay = 0.2
        site = Site(title="T", url="http://127.0.0.1:9/", sender_email="digest@example.org")
        settings = smtp_server.settings(max_attempts=3)

        def kill_after_two() -> None:
            smtp_server.wait_for(2, timeout=30)
            smtp_server.stop()

        killer = threading.Thread(target=kill_after_two)
        killer.start()
        with pytest.raises(DeliveryError, match=rf"127\.0\.0\.1:{smtp_server.port}"):
            asyncio.run(
                deliver_digest(
                    store, digest, site=site, smtp=settings, secret=SECRET, retry_delay=0.1
                )
            )
        killer.join()
        counts = store.delivery_counts(digest.id or 0)
        assert counts[DeliveryStatus.SENT] == len(smtp_server.messages) >= 2
        assert counts[DeliveryStatus.SENT] < len(emails)  # the rest is still to send

        # The server comes back on the same address (a stopped controller cannot restart).
        smtp_server.handler.delay = 0
        smtp_server._controller = Controller(
            smtp_server.handler, hostname=smtp_server.host, port=smtp_server.port
        )
        smtp_server.start()
        second = asyncio.run(
            deliver_digest(
                store,
                digest,
                site=site,
                smtp=settings,
                secret=SECRET,
                retry_delay=0.1,
                lease=timedelta(seconds=1),
            )
        )
        assert second.pending == 0
        for email in emails:
            assert len(smtp_server.to(email)) == 1, email
    finally:
        store.close()


@pytest.mark.postgres
def test_store_survives_a_killed_writer_on_postgres(pg_url: str) -> None:
    """A writer killed mid-transaction leaves no rows behind (PostgreSQL rolls back)."""
    script = (
        "import os, signal, sys\n"
        "from aggregator.store import Store\n"
        "from tests.support.items import make_item\n"
        "from aggregator.models import Source, utcnow\n"
        "s = Store.open(sys.argv[1])\n"
        "s.sync_sources([Source(id='k', url='https://k.example/', type='feed')])\n"
        "from sqlalchemy import event\n"
        "# Killed after the rows are written, before they are committed.\n"
        "event.listen(s.engine, 'commit', lambda conn: os.kill(os.getpid(), signal.SIGKILL))\n"
        "items = [make_item('k', n) for n in range(50)]\n"
        "s.save_items('k', items, fetched_at=utcnow(), next_fetch_at=utcnow())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, pg_url], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = Store.open(pg_url)
    try:
        assert store.count_items() == 0
    finally:
        store.close()
