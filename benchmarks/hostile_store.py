"""Time one ingest of a hostile feed: huge links, guids and titles, or too many entries.

    python -m benchmarks.hostile_store --size 1048576          # SQLite in a temp dir
    python -m benchmarks.hostile_store --db postgresql://...   # or PostgreSQL
    python -m benchmarks.hostile_store --items 20000           # the max_items cap

The feed is served from 127.0.0.1 by a thread in this process. Prints the
pass's wall time, each source's outcome and counts, and the warning
``aggregator status`` shows for the source.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import threading
import time
from datetime import timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aggregator.config import parse_config
from aggregator.ingest import Ingestor
from aggregator.models import utcnow
from aggregator.store import Store

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789가나다라마바사아자차카타파하αβγδ日本語éü"


def _noise(rng: random.Random, nbytes: int) -> str:
    text = "".join(rng.choices(_ALPHABET, k=nbytes))
    return text.encode("utf-8")[:nbytes].decode("utf-8", "ignore")


def hostile_feed(size: int, good: int, items: int) -> bytes:
    """``good`` ordinary entries, one each with a ``size``-byte link, guid and title,
    and ``items`` more ordinary entries (for the max_items cap)."""
    rng = random.Random(size)
    now = utcnow()
    rows = []

    def row(guid: str, title: str, link: str, hours: int) -> str:
        date = format_datetime(now - timedelta(hours=hours))
        return (
            f"<item><guid isPermaLink='false'>{guid}</guid><title>{title}</title>"
            f"<link>{link}</link><pubDate>{date}</pubDate><description>Text.</description></item>"
        )

    for n in range(good + items):
        rows.append(row(f"g{n}", f"Story {n}", f"https://feed.example/{n}", n + 1))
    if size:
        rows.append(row("long-link", "Long link", "https://feed.example/" + _noise(rng, size), 1))
        rows.append(row(_noise(rng, size), "Long guid", "https://feed.example/guid", 1))
        rows.append(row("long-title", "T " + _noise(rng, size), "https://feed.example/title", 1))
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>H</title>'
        "<link>https://feed.example/</link><description>d</description>"
        + "".join(rows)
        + "</channel></rss>"
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--size", type=int, default=1024 * 1024, help="bytes per long field")
    parser.add_argument("--good", type=int, default=9, help="ordinary entries")
    parser.add_argument("--items", type=int, default=0, help="extra ordinary entries")
    args = parser.parse_args()
    body = hostile_feed(args.size, args.good, args.items)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        url = f"http://127.0.0.1:{server.server_address[1]}/feed.xml"
        config = parse_config(
            f"site: {{title: T, output_dir: '{tmp}/pub'}}\nstorage: {{url: '{db}'}}\n"
            f"sources:\n  - {{id: hostile, url: '{url}'}}\n"
        )
        store = Store.open(db)
        try:
            started = time.perf_counter()
            stats = asyncio.run(Ingestor(config, store).run())
            elapsed = time.perf_counter() - started
            state = store.source_state("hostile")
            print(f"database: {store.dialect}; response: {len(body) / 1e6:.2f} MB")
            print(f"ingest pass: {elapsed:.2f} s")
            for s in stats:
                print(f"{s.source_id}: {s.outcome.value}, {s.new} new, error={s.error}")
            print(f"stored items: {store.count_items()}")
            print(f"status warning: {state.warning if state else None}")
        finally:
            store.close()
            server.shutdown()


if __name__ == "__main__":
    main()
