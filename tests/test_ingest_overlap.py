"""The parse pool starts early in a pass, and in the background: the event loop
never waits for the forkserver.

Real parts: the fixture HTTP server on 127.0.0.1, real parsing in a real
process pool, a real SQLite store.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aggregator.ingest import Ingestor
from aggregator.models import IngestOutcome
from aggregator.pool import ParsePool, make_pool
from tests.support.http import FixtureServer
from tests.test_ingest import make_config, rss
from tests.test_ingest_memory import feeds, store_at


def _serve(server: FixtureServer, count: int, *, delay: float = 0.0, tag: str = "a") -> str:
    yaml = ""
    for n in range(count):
        entries = [(f"{tag}{n}-{i}", f"영화 {n}/{i}", f"본문 {tag} {i} " * 20) for i in range(3)]
        server.add(f"/f{n}.xml", rss(entries), etag=f'"{tag}{n}"', delay=delay)
        yaml += f"  - {{id: s{n}, url: '{server.url(f'/f{n}.xml')}', timeout: 60s}}\n"
    return yaml


@pytest.mark.parametrize("count", [8, 20])
def test_a_pass_of_new_sources_starts_the_pool_before_any_body_arrives(
    http_server: FixtureServer, tmp_path: Path, count: int
) -> None:
    # Every response waits 2 s: a pool that starts only on the first body
    # cannot have started within the first second of the pass.
    config = make_config(tmp_path, _serve(http_server, count, delay=2.0))
    store = store_at(tmp_path)
    pool = make_pool(2)
    results: list[Any] = []
    runner = threading.Thread(
        target=lambda: results.append(asyncio.run(Ingestor(config, store, pool=pool).run()))
    )
    try:
        runner.start()
        deadline = time.monotonic() + 1.0
        while not pool.started and time.monotonic() < deadline:
            time.sleep(0.01)
        started_early = pool.started
        runner.join(60)
    finally:
        pool.shutdown()
    assert started_early
    assert {s.outcome for s in results[0]} == {IngestOutcome.OK}
    assert store.count_items() == 3 * count


class _SlowStartPool(ParsePool):
    """A pool whose workers take ``pause`` seconds to start (a slow forkserver)."""

    pause = 1.0

    def _new_executor(self) -> Any:
        time.sleep(self.pause)
        return super()._new_executor()


async def _pass_and_longest_stall(ingestor: Ingestor) -> tuple[list[Any], float]:
    """Run a pass while a ticker measures the longest the event loop stood still."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        stats = await ingestor.run()
    finally:
        done = True
        await ticker
    return stats, longest


@pytest.mark.parametrize("first_pass", ["new sources", "sources with validators"])
def test_the_event_loop_keeps_running_while_the_pool_starts(
    http_server: FixtureServer, tmp_path: Path, first_pass: str
) -> None:
    # New sources start the pool before fetching; sources with validators
    # start it on the first body (it could be a 304 pass). Either way the
    # start must not stop the loop: fetches and writes go on meanwhile.
    config = make_config(tmp_path, _serve(http_server, 10))
    store = store_at(tmp_path)
    if first_pass == "sources with validators":
        seeded = asyncio.run(Ingestor(config, store, pool=None).run())
        assert {s.outcome for s in seeded} == {IngestOutcome.OK}
        _serve(http_server, 10, tag="b")  # new etags and entries: every source answers 200
    pool = _SlowStartPool(2)
    try:
        stats, longest = asyncio.run(_pass_and_longest_stall(Ingestor(config, store, pool=pool)))
    finally:
        pool.shutdown()
    assert {s.outcome for s in stats} == {IngestOutcome.OK}
    assert store.count_items() == (30 if first_pass == "new sources" else 60)
    assert longest < _SlowStartPool.pause / 2


def test_a_pass_whose_sources_all_have_validators_starts_no_pool_early(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    # All 304 after the first pass: nothing may start the pool (not even early).
    config = make_config(tmp_path, feeds(http_server, 10))
    store = store_at(tmp_path)
    asyncio.run(Ingestor(config, store, pool=None).run())
    pool = make_pool(2)
    try:
        stats = asyncio.run(Ingestor(config, store, pool=pool).run())
        started = pool.started
    finally:
        pool.shutdown()
    assert {s.outcome for s in stats} == {IngestOutcome.NOT_MODIFIED}
    assert not started


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.update(int(p) for p in task.read_text().split())
    return found


def _grandchildren(pid: int) -> set[int]:
    return {g for child in _children(pid) for g in _children(child)}


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_start_spawns_the_workers_once(workers: int) -> None:
    pool = make_pool(workers)
    try:
        starting = pool.start()
        assert pool.start() is starting
        starting.result(60)
        assert len(_grandchildren(os.getpid())) == workers  # forked by the forkserver
        assert pool.submit(len, "abc").result(60) == 3
    finally:
        pool.shutdown()


def test_start_has_spawned_every_worker_when_it_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    # ProcessPoolExecutor spawns a worker on submit only while none is idle.
    # A warm-up call that returned before the next submit left an idle
    # worker, so that submit spawned none and the last worker came later,
    # with a submit from the event loop (CI once saw 2 of 3 workers). Slow
    # spawns, as on a loaded machine, make that race certain.
    spawn = ProcessPoolExecutor._spawn_process  # type: ignore[attr-defined]

    def slow_spawn(executor: ProcessPoolExecutor) -> None:
        spawn(executor)
        time.sleep(0.5)

    monkeypatch.setattr(ProcessPoolExecutor, "_spawn_process", slow_spawn)
    pool = make_pool(3)
    try:
        pool.start().result(60)
        assert len(_grandchildren(os.getpid())) == 3
    finally:
        pool.shutdown()


def test_start_after_shutdown_reports_the_error() -> None:
    pool = make_pool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.start().result(10)
