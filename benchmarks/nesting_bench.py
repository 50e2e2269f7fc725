"""CPU seconds one source costs at deep HTML nesting, for feeds and listing pages.

    python -m benchmarks.nesting_bench                    # 50k, 100k, 200k, 500k, 900k
    python -m benchmarks.nesting_bench --depths 200000 --kinds feed   # one row

Each row is one response of ``<div>`` nested N deep (the HTML content of an
Atom entry, and a scraped listing page whose summary holds it) run
through ``aggregator.ingest.extract``: parse + normalize, the CPU-bound half of
a source's ingest, in this process, timed with ``time.process_time``. The
response size is printed next to the 10 MB cap the fetcher enforces.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from aggregator.ingest import extract
from aggregator.models import FetchResult, Selectors, Source

DEPTHS = (50_000, 100_000, 200_000, 500_000, 900_000)  # 900,000: 9.9 MB, at the cap
SIZE_CAP = 10 * 1024 * 1024


def nested(depth: int) -> str:
    """``depth`` nested divs around one word."""
    return "<div>" * depth + "deep" + "</div>" * depth


def feed_body(depth: int) -> bytes:
    """An Atom feed of one entry whose HTML content (in CDATA) is the nested markup.

    Content rather than summary: normalize keeps up to 256 K characters of
    content (16 K of a summary), so this is the larger share that reaches the
    sanitizer.
    """
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        "<title>t</title><id>urn:bench</id><updated>2025-11-27T00:00:00Z</updated><entry>"
        "<id>urn:bench:1</id><title>nested</title><link href='https://bench.example/1'/>"
        "<updated>2025-11-27T00:00:00Z</updated>"
        f"<content type='html'><![CDATA[{nested(depth)}]]></content></entry></feed>"
    ).encode()


def listing_body(depth: int) -> bytes:
    """A listing page of one row whose summary cell is the nested markup."""
    return (
        "<html><body><ul><li class=row><a class=t href=/a/1>nested</a>"
        f"<div class=s>{nested(depth)}</div></li></ul></body></html>"
    ).encode()


def cpu_seconds(source: Source, body: bytes) -> tuple[float, int, str | None]:
    """CPU seconds of one extract, the number of items, and the error if any."""
    result = FetchResult(
        source_id=source.id,
        url=source.url,
        status=200,
        content=body,
        content_type="application/atom+xml" if source.type == "feed" else "text/html",
    )
    started = time.process_time()
    extracted = extract(source, result, (), datetime.now(UTC))
    return time.process_time() - started, len(extracted.items), extracted.error


def main() -> None:
    """Print one row per kind and depth."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    parser.add_argument("--kinds", nargs="+", choices=("feed", "html"), default=["feed", "html"])
    args = parser.parse_args()
    feed = Source(id="nested-feed", url="https://bench.example/feed.xml")
    page = Source(
        id="nested-page",
        url="https://bench.example/list",
        type="html",
        select=Selectors(item="li.row", title="a.t", link="a.t", summary="div.s"),
    )
    print(f"{'kind':8} {'depth':>8} {'MB':>6} {'under cap':>9} {'CPU s':>7} items")
    for depth in args.depths:
        for source, make in ((feed, feed_body), (page, listing_body)):
            if source.type not in args.kinds:
                continue
            body = make(depth)
            seconds, items, error = cpu_seconds(source, body)
            print(
                f"{source.type:8} {depth:>8} {len(body) / 1e6:>6.2f} "
                f"{'yes' if len(body) <= SIZE_CAP else 'no':>9} {seconds:>7.2f} {items}"
                + (f"  error: {error}" if error else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
