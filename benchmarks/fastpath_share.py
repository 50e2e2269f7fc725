"""How much of each corpus takes the lxml fast path (``aggregator.sources.fastfeed``).

    PYTHONPATH=. python -m benchmarks.fastpath_share [feeds-dir]

Counts, per corpus, the documents ``parse_feed`` handed to the fast path and
that it accepted (the rest went to feedparser). Corpora: the benchmark's
feeds (served as ``application/xml``, as nginx does), feedparser's own test
files kept in tests/fixtures/feedparser, and this suite's feed fixtures.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from aggregator.errors import ParseError
from aggregator.models import FetchResult, Source
from aggregator.sources import fastfeed
from aggregator.sources import feed as feed_module

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def share(paths: list[Path], content_type: str = "application/xml") -> tuple[int, int]:
    """(taken, total) over ``paths``: documents the fast path accepted."""
    taken = 0
    real = fastfeed.parse_fast

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal taken
        answer = real(*args, **kwargs)
        taken += answer is not None
        return answer

    url = "https://bench.example.org/feed.xml"
    source = Source(id="share", url=url)
    feed_module.parse_fast = counting  # type: ignore[assignment]
    try:
        for path in paths:
            result = FetchResult(
                source_id="share",
                url=url,
                status=200,
                content=path.read_bytes(),
                content_type=content_type,
            )
            with contextlib.suppress(ParseError):  # counted as not taken
                feed_module.parse_feed(source, result)
    finally:
        feed_module.parse_fast = real  # type: ignore[assignment]
    return taken, len(paths)


def corpora(feeds_dir: Path | None) -> list[tuple[str, int, int]]:
    """(label, taken, total) for each corpus present."""
    rows = []
    if feeds_dir is not None:
        rows.append(("benchmark corpus", *share(sorted(feeds_dir.glob("*.xml")))))
    parser_files = sorted((FIXTURES / "feedparser").rglob("*.xml"))
    if parser_files:
        rows.append(("feedparser's test files", *share(parser_files)))
    suite = sorted((FIXTURES / "sources").glob("*.[xr]*"))
    if suite:
        rows.append(("test suite feed fixtures", *share(suite)))
    return rows


def main() -> None:
    feeds_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    for label, taken, total in corpora(feeds_dir):
        print(f"fast path: {label}: {taken} of {total} ({100 * taken / max(total, 1):.0f}%)")


if __name__ == "__main__":
    main()
