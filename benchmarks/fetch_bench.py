"""CPU per request of the fetch path alone: ``Fetcher.fetch_url`` against a served corpus.

``python -m benchmarks.fetch_bench --base URL --n 500 [--rounds 5]`` fetches
``feed-NNNN.xml`` for N feeds in one process, as an ingest pass does (64
concurrent callers, the Fetcher's own per-host limit), and prints the CPU of
the process per request, min and median over the rounds, for:

* ``full``: unconditional GETs, bodies read as they came off the wire
  (``decode=False``, what a cold pass's main process does; nothing parsed);
* ``304``: conditional GETs with the validators the first round returned
  (a warm pass's requests; every answer a 304).

The first round of each kind opens the connections and is not counted. No
store, no parsing: the difference from a whole pass is the rest of the pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from aggregator.fetch import Fetcher
from aggregator.models import FetchResult

RUNNERS = 64


async def _round(
    fetcher: Fetcher, urls: list[str], validators: dict[str, FetchResult] | None
) -> tuple[float, dict[str, FetchResult]]:
    """One pass over ``urls``; the CPU it took and each URL's result."""
    results: dict[str, FetchResult] = {}
    queue = iter(urls)

    async def runner() -> None:
        for url in queue:
            known = validators.get(url) if validators is not None else None
            results[url] = await fetcher.fetch_url(
                url,
                source_id="bench",
                etag=known.etag if known else None,
                last_modified=known.last_modified if known else None,
                decode=False,
            )

    started = time.process_time()
    await asyncio.gather(*(runner() for _ in range(RUNNERS)))
    return time.process_time() - started, results


async def measure(base: str, n: int, rounds: int) -> dict[str, dict[str, float]]:
    """CPU milliseconds per request, min and median of ``rounds``, for each kind."""
    urls = [f"{base}feed-{i:04d}.xml" for i in range(n)]
    figures: dict[str, dict[str, float]] = {}
    async with Fetcher() as fetcher:
        _, first = await _round(fetcher, urls, None)
        for kind, validators in (("full", None), ("304", first)):
            per_request = []
            for _ in range(rounds):
                cpu, results = await _round(fetcher, urls, validators)
                expected = 304 if validators is not None else 200
                if any(r.status != expected for r in results.values()):
                    raise SystemExit(f"{kind}: not every answer was {expected}")
                per_request.append(cpu / n * 1000)
            figures[kind] = {
                "cpu_ms_min": round(min(per_request), 3),
                "cpu_ms_median": round(statistics.median(per_request), 3),
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="where the corpus is served, ending in /")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.base, args.n, args.rounds))))


if __name__ == "__main__":
    main()
