"""What keeps the ingest pass small: the packed trip back from the workers, a
pool that starts only when there is something to parse, bodies decoded in the
worker, and a bound in bytes on what is held between fetch and store.

Real parts throughout: the fixture HTTP server on 127.0.0.1, real parsing, a
real SQLite store, a real process pool where the test is about the pool.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import pickle
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import Config
from aggregator.extract import Extracted, extract, extract_packed, pack, pack_values, unpack
from aggregator.ingest import MAX_IN_FLIGHT, Ingestor
from aggregator.models import FetchResult, IngestOutcome, Item, Source
from aggregator.pool import make_pool
from aggregator.store import Store
from tests.support.http import FixtureServer
from tests.test_ingest import make_config, rss

SOURCE = Source(id="news", url="https://news.example.kr/feed.xml")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def store_at(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path}/db.sqlite")


def feeds(server: FixtureServer, count: int, *, items: int = 3, text_size: int = 40) -> str:
    """``count`` feeds on the server, each with validators (so a second pass is all 304)."""
    yaml = ""
    for n in range(count):
        entries = [
            (f"s{n}-{i}", f"뉴스 {n}/{i}: story", f"본문 {i} " + "가나다 word " * text_size)
            for i in range(items)
        ]
        server.add(f"/f{n}.xml", rss(entries), etag=f'"e{n}"')
        # A generous deadline: on a loaded machine a timed-out fetch would free its
        # share of the byte bound and let another source in.
        yaml += f"  - {{id: s{n}, url: '{server.url(f'/f{n}.xml')}', timeout: 60s}}\n"
    return yaml


def passes(config: Config, store: Store, **ingestor: Any) -> dict[str, Any]:
    store.sync_sources(config.sources)
    stats = asyncio.run(Ingestor(config, store, **ingestor).run())
    return {s.source_id: s for s in stats}


# ---------------------------------------------------------------- packed items


def make_item(n: int, text: str, **changes: Any) -> Item:
    base = Item(
        source_id="news",
        guid=f"g{n}",
        url=f"https://news.example.kr/{n}",
        canonical_url=f"https://news.example.kr/{n}",
        title=f"제목 {n}",
        summary_html="",
        content_html=f"<p>{text}</p>",
        text=text,
        excerpt=text[:50],
        fingerprint=f"fp{n}",
        content_hash=f"ch{n}",
        published_at=NOW - timedelta(minutes=n, microseconds=n),
        updated_at=NOW,
    )
    return replace(base, **changes)


TEXTS = ["", "short", "한국 영화 " * 80, "e\u0301 accents " * 30, "\U0001f3ac emoji " * 40]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("count", [0, 1, 17])
def test_packed_items_come_back_identical(text: str, count: int) -> None:
    items = []
    for n in range(count):
        variants: list[dict[str, Any]] = [
            {},
            {"excerpt": text[:30].rstrip() + "…"},  # cut at a word
            {"excerpt": "not a prefix at all"},
            {"canonical_url": "https://news.example.kr/canonical"},
            {"summary_html": "<p>summary</p>", "image_url": "https://i.example.kr/1.jpg"},
            {"author": "김", "categories": ("영화", "news"), "section": "ko-pick"},
            {"language": "ko", "date_missing": True},
        ]
        items.append(make_item(n, text, **variants[n % len(variants)]))
    extracted = Extracted(
        items=tuple(items),
        listing_hash="abc" if count else None,
        warning="malformed" if count == 1 else None,
        next_page_url="https://news.example.kr/?page=2",
        notes=("kept 1 of 2 entries",) if count else (),
    )

    blob = pack(extracted)

    assert unpack(blob) == extracted
    assert blob[:1] == b"M"  # the compact form, not the pickle fallback
    # What the worker packs: the same items as field tuples, never built.
    assert pack_values(replace(extracted, items=()), [values_of(i) for i in items]) == blob
    if count > 1:
        assert len(blob) < len(pickle.dumps(extracted, protocol=pickle.HIGHEST_PROTOCOL))


@pytest.mark.parametrize(
    "odd",
    [
        {"published_at": datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))},
        {"updated_at": datetime(2026, 1, 1, 9, tzinfo=UTC).replace(fold=1)},
        {"source_id": "another"},
    ],
)
def test_what_the_compact_form_cannot_carry_still_comes_back_identical(
    odd: dict[str, Any],
) -> None:
    extracted = Extracted(items=(make_item(1, "plain text"), make_item(2, "more", **odd)))

    blob = pack(extracted)
    from_values = pack_values(Extracted(), [values_of(i) for i in extracted.items])

    for packed in (blob, from_values):
        assert packed[:1] == b"P"
        back = unpack(packed)
        assert back == extracted
        assert back.items[1].published_at.utcoffset() == extracted.items[1].published_at.utcoffset()


def values_of(item: Item) -> tuple[Any, ...]:
    return tuple(getattr(item, field.name) for field in fields(Item))


@pytest.mark.parametrize("size", [0, 1, 40])
def test_the_pool_packs_what_extract_makes(size: int) -> None:
    """``extract_packed`` (field tuples packed as they come) sends what
    ``pack(extract(...))`` would: entries with and without text, one without a
    link (skipped), one whose guid is over the cap (refused, noted)."""
    entries = [(f"g{i}", f"제목 {i}", "본문 word " * (size * i)) for i in range(6)]
    document = rss(entries).replace("<link>https://news.example.kr/g2</link>", "")
    document = document.replace(">g3</guid>", f">{'x' * 40_000}</guid>")
    result = FetchResult(
        "news", SOURCE.url, 200, document.encode(), content_type="application/rss+xml"
    )

    extracted = extract(SOURCE, result, (), NOW)

    assert extract_packed(SOURCE, result, (), NOW) == pack(extracted)
    assert len(extracted.items) == 4 and len(extracted.notes) == 1


def test_errors_come_back_packed() -> None:
    extracted = Extracted(error="news: not a feed (https://news.example.kr/feed.xml)", broken=True)
    assert unpack(pack(extracted)) == extracted


def test_unpack_names_a_blob_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="not a packed extract result"):
        unpack(b"Xjunk")


# ------------------------------------------------------- decoding in the worker


@pytest.mark.parametrize("size", [1, 40, 400])
def test_a_gzip_body_left_encoded_is_decoded_by_extract(size: int) -> None:
    document = rss([(f"g{i}", f"제목 {i}", "본문 " * size) for i in range(5)]).encode()
    plain = FetchResult("news", SOURCE.url, 200, document, content_type="application/rss+xml")
    encoded = replace(
        plain, content=gzip.compress(document), content_encoding="gzip", max_bytes=10 * 2**20
    )

    assert extract(SOURCE, encoded, (), NOW) == extract(SOURCE, plain, (), NOW)


def test_a_body_left_encoded_is_still_capped_with_the_fetch_message() -> None:
    bomb = gzip.compress(b"<rss>" + b" " * (5 * 2**20))
    result = FetchResult("news", SOURCE.url, 200, bomb, content_encoding="gzip", max_bytes=2**20)

    extracted = extract(SOURCE, result, (), NOW)

    assert extracted.items == ()
    assert extracted.error is not None
    assert "response too large: more than 1048576 bytes after gzip decoding" in extracted.error
    assert SOURCE.url in extracted.error


def test_ingest_stores_the_same_from_gzip_and_plain_responses(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    entries = [(f"g{i}", f"한국 영화 {i}", "본문 " * 200) for i in range(6)]
    http_server.add("/plain.xml", rss(entries))
    http_server.add("/gz.xml", rss(entries), gzip=True)
    config = make_config(
        tmp_path,
        f"  - {{id: plain, url: '{http_server.url('/plain.xml')}'}}\n"
        f"  - {{id: gz, url: '{http_server.url('/gz.xml')}'}}\n",
    )
    store = store_at(tmp_path)

    stats = passes(config, store)

    assert stats["plain"].outcome is stats["gz"].outcome is IngestOutcome.OK
    assert http_server.requests_for("/gz.xml")[-1].headers.get("Accept-Encoding")

    def stored(source_id: str) -> list[tuple[str, str, str]]:
        return sorted(
            (i.guid, i.title, i.text)
            for i in store.recent_items(100, include_duplicates=True)
            if i.source_id == source_id
        )

    assert stored("gz") == stored("plain") and len(stored("gz")) == 6


# ------------------------------------------------------------ the lazy pool


def _children() -> set[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        pids.update(int(p) for p in task.read_text().split())
    return pids


def test_an_all_304_pass_starts_no_pool_process(http_server: FixtureServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, feeds(http_server, 10))
    store = store_at(tmp_path)
    with ThreadPoolExecutor(2) as threads:
        first = passes(config, store, pool=threads)
    assert {s.outcome for s in first.values()} == {IngestOutcome.OK}

    pool = make_pool()
    before = _children()
    try:
        second = passes(config, store, pool=pool)
        started = pool.started
        new_children = _children() - before
    finally:
        pool.shutdown()

    assert {s.outcome for s in second.values()} == {IngestOutcome.NOT_MODIFIED}
    assert not started
    assert new_children == set()  # no forkserver, no resource tracker, no worker


def test_the_pool_starts_on_the_first_body_and_parses_in_workers(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    config = make_config(tmp_path, feeds(http_server, 8, items=2))
    store = store_at(tmp_path)
    pool = make_pool(2)
    try:
        assert not pool.started
        stats = passes(config, store, pool=pool)
        assert pool.started
    finally:
        pool.shutdown()
    assert {s.outcome for s in stats.values()} == {IngestOutcome.OK}
    assert store.count_items() == 16
    with pytest.raises(RuntimeError):
        pool.submit(len, "after shutdown")


# ------------------------------------------------------------- the byte bound


def stalled_store_pass(
    server: FixtureServer, tmp_path: Path, max_bytes: int
) -> tuple[Store, Ingestor, threading.Event]:
    """An ingest of 30 feeds of ~60 KiB whose store writes wait until the event is set."""
    config = make_config(tmp_path, feeds(server, 30, items=4, text_size=1200))
    store = store_at(tmp_path)
    store.sync_sources(config.sources)
    release = threading.Event()
    save_items = store.save_items

    def stalled_save(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return save_items(*args, **kwargs)

    store.save_items = stalled_save  # type: ignore[method-assign]
    ingestor = Ingestor(config, store, pool=ThreadPoolExecutor(2))
    ingestor.max_in_flight_bytes = max_bytes
    return store, ingestor, release


@pytest.mark.parametrize(("limit_kib", "most_fetched"), [(64, 6), (256, 12)])
def test_held_bytes_bound_how_many_sources_are_fetched_ahead_of_the_store(
    http_server: FixtureServer, tmp_path: Path, limit_kib: int, most_fetched: int
) -> None:
    # 30 feeds of ~60 KiB: with the store stalled, only what fits in the byte
    # bound (plus the fetches already under way) may be fetched meanwhile.
    store, ingestor, release = stalled_store_pass(http_server, tmp_path, limit_kib * 1024)
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(asyncio.run(ingestor.run())))
    runner.start()
    try:
        fetched = -1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the fetching stops, held back
            time.sleep(0.5)
            now = sum(http_server.count(f"/f{n}.xml") for n in range(30))
            if now == fetched:
                break
            fetched = now
    finally:
        release.set()
        runner.join(60)

    assert 1 <= fetched <= most_fetched
    assert {s.outcome for s in results[0]} == {IngestOutcome.OK}  # nothing lost
    assert store.count_items() == 120


def test_without_the_byte_bound_the_stalled_store_lets_everything_pile_up(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    # The control for the test above: the same pass with a bound too large to
    # matter fetches every source while the store is stalled.
    _, ingestor, release = stalled_store_pass(http_server, tmp_path, 1 << 40)
    runner = threading.Thread(target=lambda: asyncio.run(ingestor.run()))
    runner.start()
    try:
        deadline = time.monotonic() + 20
        fetched = 0
        while time.monotonic() < deadline and fetched < 30:
            time.sleep(0.2)
            fetched = sum(http_server.count(f"/f{n}.xml") for n in range(30))
    finally:
        release.set()
        runner.join(60)
    assert fetched == 30


@pytest.mark.parametrize("count", [150, 400])
def test_tasks_alive_during_a_pass_do_not_grow_with_the_sources(
    http_server: FixtureServer, tmp_path: Path, count: int
) -> None:
    # A task per source waiting its turn held ~5 KB each (~50 MB at 10,000
    # sources); a fixed set of runners keeps the count at the in-flight limit.
    config = make_config(tmp_path, feeds(http_server, count, items=1, text_size=1))
    store = store_at(tmp_path)
    store.sync_sources(config.sources)
    alive: list[int] = []

    def on_done(_: object) -> None:
        alive.append(len(asyncio.all_tasks()))

    ingestor = Ingestor(config, store, pool=ThreadPoolExecutor(2))
    stats = asyncio.run(ingestor.run(on_done=on_done))
    assert [s.source_id for s in stats] == [f"s{n}" for n in range(count)]  # in config order
    assert {s.outcome for s in stats} == {IngestOutcome.OK}
    assert len(alive) == count
    assert max(alive) <= MAX_IN_FLIGHT + 8  # the runners, the main task, a few helpers


def test_a_pass_holds_no_state_for_sources_never_fetched(
    http_server: FixtureServer, tmp_path: Path
) -> None:
    # A never-fetched source's state says only what feeds.yaml says; held for
    # the whole of a first pass over 10,000 sources they were ~3 MB.
    held: list[dict[str, Any]] = []

    class Watched(Ingestor):
        def _prepare(self, *args: Any, **kwargs: Any) -> Any:
            states = super()._prepare(*args, **kwargs)
            held.append(states)
            return states

    yaml = feeds(http_server, 4, items=2, text_size=1)
    config = make_config(tmp_path, yaml)
    store = store_at(tmp_path)
    first = asyncio.run(Watched(config, store, pool=ThreadPoolExecutor(2)).run())
    assert held[-1] == {}
    assert [(s.outcome, s.new) for s in first] == [(IngestOutcome.OK, 2)] * 4

    http_server.add("/late.xml", rss([("late-1", "Late story", "본문")]))
    late = f"  - {{id: late, url: '{http_server.url('/late.xml')}', timeout: 60s}}\n"
    config = make_config(tmp_path, yaml + late)
    second = asyncio.run(Watched(config, store, pool=ThreadPoolExecutor(2)).run())
    assert sorted(held[-1]) == ["s0", "s1", "s2", "s3"]  # each has its etag now
    assert all(state.etag for state in held[-1].values())
    assert {s.source_id: (s.outcome, s.new) for s in second} == {
        **{f"s{n}": (IngestOutcome.NOT_MODIFIED, 0) for n in range(4)},
        "late": (IngestOutcome.OK, 1),
    }


# ------------------------------------------------------------ the console script

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import sys

HEAVY = ("typer", "rich", "sqlalchemy", "httpx", "pydantic", "aggregator.cli")


def heavy_modules(_: object) -> list[str]:
    return sorted(name for name in HEAVY if name in sys.modules)
"""


def test_pool_workers_under_the_console_script_do_not_import_the_cli(tmp_path: Path) -> None:
    """Workers re-run the main script as ``__mp_main__``: its entry-point import must be light.

    The script is written as pip writes console scripts (the entry point's
    module imported at the top, outside the guard), from pyproject's entry
    point, so a change of entry point is what this test checks.
    """
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = entry["aggregator"].split(":")
    (tmp_path / "probe.py").write_text(PROBE)
    script = tmp_path / "aggregator"
    script.write_text(
        f"import re\nimport sys\nfrom {module} import {function}\n"
        "if __name__ == '__main__':\n"
        "    import probe\n"
        "    from aggregator.pool import ParsePool\n"
        "    pool = ParsePool(workers=1)\n"
        "    print(pool.submit(probe.heavy_modules, None).result())\n"
        "    pool.shutdown()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    out = subprocess.run(
        [sys.executable, str(script)], check=True, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
