"""How the store's cost per item grows with the database: a finished ingest replayed.

    PYTHONPATH=$PWD python -m benchmarks.store_replay SRC.db DST.db [--n 10000]
        [--batch 64] [--max-items 160] [--slice 1000] [--pragma cache_size=-16384]

``SRC.db`` is the database of a finished cold ingest (``ingest_bench ours
... --db SRC.db``; it is only read). Its items are saved again, source by
source in the order they were first stored, into the fresh ``DST.db``
through ``Store.save_batch``, in transactions of at most ``--batch``
sources and ``--max-items`` items (as ``Ingestor`` groups the writes waiting
for the store). No fetch, no parse: what is left is the store alone, so a
change of its settings shows in seconds instead of a full ingest.

For every ``--slice`` sources it prints the store's CPU seconds (the
thread's own, user + system), the wall seconds it spent saving (the
difference is waiting: for the disk, mostly the checkpoints' fsync, or for
the GIL) and, per item, the read and write system calls
and bytes of that thread (``/proc/self/task/<tid>/io``: a thread apart reads
``SRC.db``, so they are the store's alone). Counts of system calls do not
depend on the load of the machine; CPU seconds do, a little. ``--pragma``
adds a SQLite PRAGMA on the store's connections (after the project's own);
``DST.db`` is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.config import parse_config
from aggregator.ingest import MAX_ITEMS_PER_BATCH, MAX_WRITES_PER_BATCH
from aggregator.models import Item
from aggregator.store import SaveItems, Store
from aggregator.store.types import UTCDateTime

_COLUMNS = [
    "source_id",
    "guid",
    "url",
    "canonical_url",
    "title",
    "summary_html",
    "content_html",
    "text",
    "excerpt",
    "fingerprint",
    "content_hash",
    "published_at",
    "updated_at",
    "image_url",
    "author",
    "categories",
    "section",
    "language",
    "date_missing",
]
_COUNTERS = ("syscr", "syscw", "rchar", "wchar")


def _io(path: str) -> dict[str, int]:
    lines = Path(path).read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in lines}


def _item(row: Sequence[Any]) -> Item:
    values = dict(zip(_COLUMNS, row, strict=True))
    for name in ("published_at", "updated_at"):
        values[name] = UTCDateTime.sqlite_value(values[name])
    values["categories"] = tuple(json.loads(values["categories"]))
    values["date_missing"] = bool(values["date_missing"])
    return Item(**values)


def _produce(src: str, order: list[str], batch: int, max_items: int, out: queue.Queue[Any]) -> None:
    """Put the writes of each transaction on ``out`` (then None), read in this thread."""
    now = datetime.now(UTC)
    conn = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    select = f"SELECT {', '.join(_COLUMNS)} FROM items WHERE source_id = ? ORDER BY id"
    pending: list[SaveItems] = []
    held = 0
    for source_id in order:
        items = [_item(row) for row in conn.execute(select, (source_id,))]
        if pending and (len(pending) >= batch or held + len(items) > max_items):
            out.put((pending, held))
            pending, held = [], 0
        pending.append(SaveItems(source_id, items, fetched_at=now, next_fetch_at=now))
        held += len(items)
    if pending:
        out.put((pending, held))
    out.put(None)
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--n", type=int, default=10_000, help="sources replayed")
    parser.add_argument(
        "--batch", type=int, default=MAX_WRITES_PER_BATCH, help="sources per transaction"
    )
    parser.add_argument(
        "--max-items", type=int, default=MAX_ITEMS_PER_BATCH, help="items per transaction"
    )
    parser.add_argument("--slice", type=int, default=1000, help="sources per printed line")
    parser.add_argument("--pragma", action="append", default=[], help="e.g. cache_size=-8192")
    parser.add_argument("--keep", action="store_true", help="keep DST.db")
    args = parser.parse_args()

    with sqlite3.connect(f"file:{args.src}?mode=ro", uri=True) as src:
        order = [
            row[0]
            for row in src.execute(
                "SELECT source_id FROM items GROUP BY source_id ORDER BY min(id)"
            )
        ][: args.n]
    sources = "".join(f"  - {{id: {s}, url: 'http://127.0.0.1:1/{s}.xml'}}\n" for s in order)
    config = parse_config(
        f"storage: {{url: 'sqlite:///{args.dst}'}}\nsources:\n" + sources,
        path=args.dst.parent / "feeds.yaml",
    )
    store = Store.open(config.database_url, isolated_migration=True)
    store.sync_sources(config.sources)
    if args.pragma:
        from sqlalchemy import event

        def more_pragmas(dbapi_connection: Any, _record: Any) -> None:
            for pragma in args.pragma:
                dbapi_connection.execute(f"PRAGMA {pragma}")

        store.engine.dispose()
        event.listen(store.engine, "connect", more_pragmas)

    writes: queue.Queue[Any] = queue.Queue(maxsize=8)
    reader = threading.Thread(
        target=_produce,
        args=(str(args.src), order, args.batch, args.max_items, writes),
        daemon=True,
    )
    reader.start()
    mine = f"/proc/self/task/{threading.get_native_id()}/io"
    done = items = 0
    cpu = total = wall = total_wall = 0.0
    before = _io(mine)
    while (got := writes.get()) is not None:
        batch, held = got
        started, clock = time.thread_time(), time.perf_counter()
        store.save_batch(batch)
        spent = time.thread_time() - started
        waited = time.perf_counter() - clock
        cpu += spent
        total += spent
        wall += waited
        total_wall += waited
        items += held
        done += len(batch)
        if done // args.slice != (done - len(batch)) // args.slice or done == len(order):
            after = _io(mine)
            line = {
                "sources": done,
                "cpu_s": round(cpu, 2),
                "wall_s": round(wall, 2),
                **{k: round((after[k] - before[k]) / max(items, 1), 1) for k in _COUNTERS},
            }
            print(json.dumps(line), flush=True)
            before, cpu, wall, items = after, 0.0, 0.0, 0
    store.close()
    if not args.keep:
        for path in args.dst.parent.glob(args.dst.name + "*"):
            path.unlink()
    print(
        json.dumps(
            {"store_cpu_s": round(total, 2), "store_wall_s": round(total_wall, 2), "sources": done}
        )
    )


if __name__ == "__main__":
    main()
