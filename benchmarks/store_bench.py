"""CPU of the store's write path alone, in process, over the benchmark corpus.

    PYTHONPATH=$PWD python benchmarks/store_bench.py --n 500            # SQLite
    PYTHONPATH=$PWD pg_virtualenv -- python benchmarks/store_bench.py --pg
    # STORE_BENCH_DB=name: another database of that server (one per code version)

Run as a file (not ``-m``) so that ``PYTHONPATH`` alone picks the
``aggregator`` measured: the same script times an older checkout with
``PYTHONPATH=/tmp/before``. The corpus is parsed and normalized once and
cached as a pickle under the temp directory (parsing is not what is timed).

Three phases, each the CPU (``time.process_time``) and wall seconds of the
store calls only: ``cold`` (every item new, into a fresh database), ``warm``
(every source answers 304: ``record_not_modified`` per source) and
``unchanged`` (every source saved again with the same items). With a
checkout that has ``Store.save_batch`` and ``--batch K > 1``, K sources are
written per transaction, as the ingest pass coalesces the writes waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aggregator.config import parse_config
from aggregator.ingest import normalize_entries
from aggregator.models import FetchResult, Item, Source, utcnow
from aggregator.sources import parse
from aggregator.store import Store

CORPUS = Path(__file__).resolve().parent / ".data"


def _sources(n: int) -> list[Source]:
    lines = "".join(
        f"  - {{id: f{i:04d}, url: 'http://127.0.0.1:1/feed-{i:04d}.xml'}}\n" for i in range(n)
    )
    config = parse_config(
        "storage: {url: 'sqlite:////tmp/unused.db'}\nsources:\n" + lines,
        path=Path("/tmp/feeds.yaml"),
    )
    return list(config.sources)


def _items(n: int, sources: Sequence[Source]) -> list[tuple[Source, list[Item]]]:
    cache = Path(tempfile.gettempdir()) / f"store-bench-items-{n}.pickle"
    if cache.exists():
        loaded: list[tuple[Source, list[Item]]] = pickle.loads(cache.read_bytes())
        return loaded
    now = utcnow()
    out = []
    for source in sources:
        body = (CORPUS / f"feeds-{n}" / f"feed-{source.id[1:]}.xml").read_bytes()
        result = FetchResult(
            source_id=source.id,
            url=source.url,
            status=200,
            content=body,
            content_type="application/rss+xml",
            fetched_at=now,
        )
        parsed = parse(source, result)
        out.append((source, normalize_entries(source, parsed.entries, (), now, result.url)))
    cache.write_bytes(pickle.dumps(out))
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _pg_url() -> str:
    user, host = os.environ["PGUSER"], os.environ["PGHOST"]
    password, port = os.environ.get("PGPASSWORD", ""), os.environ.get("PGPORT", "5432")
    auth = f"{user}:{password}@" if password else f"{user}@"
    database = os.environ.get("STORE_BENCH_DB", "postgres")
    return f"postgresql+psycopg://{auth}{host}:{port}/{database}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1, help="sources per transaction")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL from PG* variables")
    parser.add_argument("--profile", type=Path, help="cProfile the cold phase into this file")
    parser.add_argument("--keep", type=Path, help="copy the SQLite file here afterwards")
    args = parser.parse_args()
    sources = _sources(args.n)
    work = _items(args.n, sources)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        url = _pg_url() if args.pg else f"sqlite:///{tmp}/bench.db"
        store = Store.open(url)
        if args.pg:
            with store.engine.begin() as conn:
                conn.exec_driver_sql("TRUNCATE items, sources CASCADE")
        store.sync_sources(sources)
        now = utcnow()
        batched = args.batch > 1 and hasattr(store, "save_batch")

        def save_all() -> None:
            if not batched:
                for source, items in work:
                    store.save_items(source.id, items, fetched_at=now, next_fetch_at=now)
                return
            from aggregator.store import SaveItems  # only in checkouts that batch

            for start in range(0, len(work), args.batch):
                store.save_batch(
                    [
                        SaveItems(source.id, tuple(items), fetched_at=now, next_fetch_at=now)
                        for source, items in work[start : start + args.batch]
                    ]
                )

        def not_modified_all() -> None:
            if not batched:
                for source, _ in work:
                    store.record_not_modified(source.id, fetched_at=now, next_fetch_at=now)
                return
            from aggregator.store import NotModified

            for start in range(0, len(work), args.batch):
                store.save_batch(
                    [
                        NotModified(source.id, fetched_at=now, next_fetch_at=now)
                        for source, _ in work[start : start + args.batch]
                    ]
                )

        if args.profile:
            import cProfile

            profile = cProfile.Profile(time.process_time)
            cold = _timed(lambda: profile.runcall(save_all))
            profile.dump_stats(args.profile)
        else:
            cold = _timed(save_all)
        warm = _timed(not_modified_all)
        unchanged = _timed(save_all)
        count = store.count_items()
        store.close()
        size = sum(p.stat().st_size for p in Path(tmp).glob("bench.db*")) / 1e6
        if args.keep and not args.pg:
            shutil.copyfile(Path(tmp) / "bench.db", args.keep)
    print(
        json.dumps(
            {
                "db": "postgresql" if args.pg else "sqlite",
                "batch": args.batch if batched else 1,
                "items": count,
                "cold_cpu": round(cold[0], 3),
                "cold_wall": round(cold[1], 3),
                "warm_cpu": round(warm[0], 4),
                "warm_wall": round(warm[1], 4),
                "unchanged_cpu": round(unchanged[0], 3),
                "unchanged_wall": round(unchanged[1], 3),
                "db_mb": round(size, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
