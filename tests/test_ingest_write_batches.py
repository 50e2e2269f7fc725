"""How a cold pass groups its sources' store writes into transactions.

Writes that wait while the store is busy share one transaction, at most
:data:`~aggregator.ingest.MAX_WRITES_PER_BATCH` sources and
:data:`~aggregator.ingest.MAX_ITEMS_PER_BATCH` items: a transaction that
dirties more SQLite pages than the page cache holds spills them and reads
them back (see the constant's comment). Real HTTP on 127.0.0.1, a real
SQLite file; the store is made slow on purpose so that writes pile up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import parse_config
from aggregator.ingest import MAX_ITEMS_PER_BATCH, Ingestor
from aggregator.models import IngestOutcome
from aggregator.store import SaveItems, SourceWrite, Store
from tests.support.feeds import simple_rss
from tests.support.http import FixtureServer


def _slow_batches(store: Store, pause: float) -> list[list[int]]:
    """Items of each write of every transaction; each transaction first waits ``pause`` s.

    The wait stands for a store slower than the fetches and parses: the
    writes arriving meanwhile queue up, as they do at 10,000 feeds.
    """
    batches: list[list[int]] = []
    real = store.save_batch

    def save_batch(writes: Sequence[SourceWrite]) -> Any:
        batches.append([len(w.items) if isinstance(w, SaveItems) else 0 for w in writes])
        time.sleep(pause)
        return real(writes)

    store.save_batch = save_batch  # type: ignore[method-assign]
    return batches


@pytest.mark.parametrize(
    ("sources", "entries"),
    [(24, 40), (30, 7), (12, MAX_ITEMS_PER_BATCH // 2 + 1), (6, MAX_ITEMS_PER_BATCH + 25)],
)
def test_a_transaction_takes_the_waiting_writes_up_to_the_item_limit(
    http_server: FixtureServer, sqlite_url: str, sources: int, entries: int
) -> None:
    ids = [f"s{n:03d}" for n in range(sources)]
    for source_id in ids:
        http_server.add(f"/{source_id}.xml", simple_rss(source_id, entries))
    config = parse_config(
        f"storage: {{url: '{sqlite_url}'}}\ndefaults: {{interval: 1h, timeout: 10s}}\n"
        "sources:\n"
        + "".join(f"  - {{id: {i}, url: '{http_server.url(f'/{i}.xml')}'}}\n" for i in ids),
        path=Path("feeds.yaml"),
    )
    store = Store.open(sqlite_url)
    try:
        batches = _slow_batches(store, 0.15)

        stats = asyncio.run(Ingestor(config, store).run())

        assert {s.outcome for s in stats} == {IngestOutcome.OK}
        assert sorted(n for batch in batches for n in batch) == [entries] * sources
        assert store.item_counts() == dict.fromkeys(ids, entries)
        for batch in batches:
            # A source over the limit on its own is still written (alone).
            assert len(batch) == 1 or sum(batch) <= MAX_ITEMS_PER_BATCH, batches
        if 2 * entries <= MAX_ITEMS_PER_BATCH:
            # Still batched: the writes waiting share transactions.
            assert max(len(b) for b in batches) > 1, batches
    finally:
        store.close()
