"""Distributed mode throughput: ingest with 1, 2 and 4 worker processes, and dispatch jobs/s.

Needs a PostgreSQL server; the simplest is Debian's throwaway cluster:

    pg_virtualenv -t -- python -m benchmarks.queue_bench [--feeds 200]

Each row starts from an empty database: ``dispatch_due`` queues one job per
source, then W ``aggregator worker`` processes drain the queue while the
feeds are served by nginx on 127.0.0.1. On a 2-core machine the curve is
expected to flatten after two workers: parsing is CPU-bound.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from .generate import generate
from .server import nginx

HERE = Path(__file__).resolve().parent


def _admin_url(db: str = "postgres") -> str:
    user = os.environ.get("PGUSER", "postgres")
    password = os.environ.get("PGPASSWORD", "")
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT", "5432")
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{db}"


def _fresh_database(name: str) -> str:
    engine = sa.create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return _admin_url(name)


def _config(tmp: Path, base: str, n: int) -> Path:
    path = tmp / "feeds.yaml"
    lines = "".join(f"  - {{id: f{i:04d}, url: '{base}feed-{i:04d}.xml'}}\n" for i in range(n))
    path.write_text(
        f"site: {{output_dir: '{tmp}/pub'}}\nstorage: {{queue: procrastinate}}\n"
        "defaults: {interval: 1h, timeout: 60s}\nsources:\n" + lines,
        encoding="utf-8",
    )
    return path


def run_workers(base: str, n: int, workers: int, tmp: Path) -> tuple[float, int]:
    from aggregator import queue
    from aggregator.config import load_config
    from aggregator.store import Store

    url = _fresh_database(f"bench_w{workers}")
    os.environ["DATABASE_URL"] = url
    config = load_config(_config(tmp, base, n))
    store = Store.open(url)
    queue.apply_schema(store)
    store.sync_sources(config.sources)
    queue.dispatch_due(store, config)
    env = {**os.environ, "AGGREGATOR_SECRET": "b" * 32, "PYTHONPATH": str(HERE.parent)}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aggregator",
                "-c",
                str(tmp / "feeds.yaml"),
                "worker",
                "--concurrency",
                "8",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        with store.engine.connect() as conn:
            while True:
                left = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM procrastinate_jobs "
                        "WHERE task_name = :t AND status IN ('todo', 'doing')"
                    ),
                    {"t": queue.FETCH_TASK},
                ).scalar_one()
                conn.commit()
                if left == 0:
                    break
                time.sleep(0.1)
        elapsed = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    entries = store.count_items()
    store.close()
    return elapsed, entries


def small_feeds(directory: Path, n: int) -> None:
    """``n`` two-item RSS feeds: each job is cheap, so claiming jobs dominates."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        path = directory / f"feed-{index:04d}.xml"
        if path.exists():
            continue
        items = "".join(
            f"<item><guid>small-{index}-{k}</guid><title>Story {k} of outlet {index}</title>"
            f"<link>https://small{index}.example.kr/{k}</link>"
            "<pubDate>Mon, 02 Nov 2026 09:00:00 +0000</pubDate>"
            "<description>A short piece.</description></item>"
            for k in range(2)
        )
        path.write_text(
            f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Outlet {index}</title><link>https://small{index}.example.kr/</link>"
            f"<description>d</description>{items}</channel></rss>",
            encoding="utf-8",
        )


def dispatch_rate(n: int, tmp: Path) -> float:
    from aggregator import queue
    from aggregator.config import load_config
    from aggregator.store import Store

    url = _fresh_database("bench_dispatch")
    os.environ["DATABASE_URL"] = url
    config = load_config(_config(tmp, "http://127.0.0.1:9/", n))
    store = Store.open(url)
    queue.apply_schema(store)
    store.sync_sources(config.sources)
    started = time.perf_counter()
    queued = len(queue.dispatch_due(store, config, limit=n))
    elapsed = time.perf_counter() - started
    store.close()
    return queued / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=200)
    args = parser.parse_args()
    if not os.environ.get("PGHOST") and not os.environ.get("PGPORT"):
        sys.exit("no PostgreSQL: run under `pg_virtualenv -t -- python -m benchmarks.queue_bench`")
    feeds_dir = HERE / ".data" / f"feeds-{args.feeds}"
    generate(feeds_dir, args.feeds)
    print(f"{args.feeds} feeds, PostgreSQL, {os.cpu_count()} CPU cores")
    print(f"{'workers':>8}{'wall s':>9}{'entries/s':>11}{'speed-up':>10}")
    first = None
    with nginx(feeds_dir) as base, tempfile.TemporaryDirectory(prefix="qbench-") as tmp:
        for workers in (1, 2, 4):
            wall, entries = run_workers(base, args.feeds, workers, Path(tmp))
            first = first or wall
            print(f"{workers:>8}{wall:>9.2f}{entries / wall:>11.0f}{first / wall:>10.2f}")
        rate = dispatch_rate(2000, Path(tmp))
    print(f"dispatch: {rate:,.0f} jobs/s queued (2,000 due sources, one transaction)")
    small = HERE / ".data" / "small-2000"
    small_feeds(small, 2000)
    with nginx(small) as base, tempfile.TemporaryDirectory(prefix="qbench-") as tmp:
        wall, _ = run_workers(base, 2000, 1, Path(tmp))
    print(f"claims: {2000 / wall:,.0f} jobs/s (2,000 two-item feeds, 1 worker: per-job cost)")


if __name__ == "__main__":
    main()
