"""How long publishing the newest N items takes from a store holding 100,000 items.

    python3 benchmarks/publish_bench.py                    # SQLite file in a temp dir
    (from the repository root after `pip install -e .`, or with PYTHONPATH=.)
    python3 benchmarks/publish_bench.py --db bench.db      # keep (and reuse) the database
    python3 benchmarks/publish_bench.py --url postgresql+psycopg://...   # PostgreSQL

Prints the median wall time of :func:`aggregator.publish.publish_from_store`
for a feed of 100 and of 1,000 items: once into an empty directory (query,
build Atom and JSON Feed, write both files) and once republishing unchanged
items (query, build, compare, nothing written). The query reads only the
newest rows through the ``published_at`` index; it must not grow with the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.models import Item, Site, Source
from aggregator.publish import publish_from_store
from aggregator.store import Store

SOURCES = 20
START = datetime(2020, 1, 1, tzinfo=UTC)
BODY = "<p>" + "Ko-pick: the week in Korean cinema, festivals and box office. " * 12 + "</p>"


def make_items(source_id: str, first: int, count: int) -> list[Item]:
    items = []
    for n in range(first, first + count):
        url = f"https://{source_id}.example/articles/{n}"
        moment = START + timedelta(minutes=7 * n)
        items.append(
            Item(
                source_id=source_id,
                guid=url,
                url=url,
                canonical_url=url,
                title=f"Story {n}: 부산국제영화제 line-up announced",
                summary_html=f"<p>Summary of story {n}.</p>",
                content_html=BODY,
                text=f"Story {n}.",
                excerpt=f"Story {n}: the week in Korean cinema.",
                fingerprint=f"fp-{source_id}-{n}",
                content_hash=f"h-{source_id}-{n}",
                published_at=moment,
                updated_at=moment,
                author="Kim Ji-seok",
                categories=("Festivals", "Industry"),
                section="ko-pick" if n % 5 == 0 else None,
            )
        )
    return items


def fill(store: Store, total: int) -> None:
    have = store.count_items()
    if have >= total:
        print(f"store already holds {have} items", file=sys.stderr)
        return
    sources = [
        Source(id=f"src{i:02d}", url=f"https://src{i:02d}.example/feed", title=f"Source {i}")
        for i in range(SOURCES)
    ]
    store.sync_sources(sources)
    per_source = total // SOURCES
    batch = 5_000
    started = time.perf_counter()
    for index, source in enumerate(sources):
        for first in range(0, per_source, batch):
            # Interleave sources in time, so the newest items come from all of them.
            items = make_items(source.id, index * per_source + first, batch)
            store.save_items(source.id, items, fetched_at=START, next_fetch_at=START)
    took = time.perf_counter() - started
    print(f"stored {store.count_items()} items in {took:.1f} s", file=sys.stderr)


def median_ms(store: Store, site: Site, runs: int, *, fresh: bool) -> float:
    timings = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs + 1):
            out = Path(tmp) / (f"run{run}" if fresh else "same")
            started = time.perf_counter()
            publish_from_store(store, site, out, sections={"ko-pick": "Ko-pick columns"})
            if run:  # the first run warms caches (and creates the files to compare with)
                timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="SQLite file to use (kept afterwards)")
    parser.add_argument("--url", help="database URL (overrides --db)")
    parser.add_argument("--items", type=int, default=100_000, help="items in the store")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per case")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{args.db or Path(tmp) / 'bench.db'}"
        store = Store.open(url)
        try:
            fill(store, args.items)
            total = store.count_items()
            for size in (100, 1_000):
                site = Site(url="https://digest.example.org/", feed_size=size)
                written = median_ms(store, site, args.runs, fresh=True)
                unchanged = median_ms(store, site, args.runs, fresh=False)
                print(
                    f"publish {size:>5} of {total} items ({store.dialect}): "
                    f"median {written:.1f} ms written, {unchanged:.1f} ms unchanged"
                )
        finally:
            store.close()


if __name__ == "__main__":
    main()
