"""The warm pass (most sources answer 304) and the per-request fetch path.

A warm pass's 304s are queued :data:`aggregator.ingest.MAX_WRITES_PER_BATCH`
at a time and share transactions (not one transaction per source or two); a
pass that mixes 304s, new entries and errors still stores every source as
before. Requests go to httpx's transport
directly, so what the client used to add is checked here on the wire.
Real HTTP on 127.0.0.1, a real SQLite and PostgreSQL store (``db_url``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest

from aggregator.config import Config, parse_config
from aggregator.fetch import Fetcher
from aggregator.ingest import MAX_WRITES_PER_BATCH, Ingestor
from aggregator.models import IngestOutcome, IngestStats, Source, utcnow
from aggregator.store import SourceWrite, Store
from tests.support.http import FixtureServer


def rss(source_id: str, count: int) -> str:
    now = utcnow()
    entries = "".join(
        f"<item><guid>{source_id}-{n}</guid><title>{escape(source_id)} story {n}</title>"
        f"<link>https://{source_id}.example.kr/{n}</link>"
        f"<pubDate>{format_datetime(now)}</pubDate><description>Story {n}.</description></item>"
        for n in range(count)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>t</title>'
        f"<link>https://{source_id}.example.kr/</link><description>d</description>"
        f"{entries}</channel></rss>"
    )


def config_for(db_url: str, server: FixtureServer, ids: Sequence[str]) -> Config:
    return parse_config(
        f"storage: {{url: '{db_url}'}}\ndefaults: {{interval: 1h, timeout: 10s}}\nsources:\n"
        + "".join(f"  - {{id: {i}, url: '{server.url(f'/{i}.xml')}'}}\n" for i in ids),
        path=Path("feeds.yaml"),
    )


def batch_sizes(store: Store) -> list[int]:
    """Record the size of every ``save_batch`` the store runs (the real one still runs)."""
    sizes: list[int] = []
    real = store.save_batch

    def save_batch(writes: Sequence[SourceWrite]) -> Any:
        sizes.append(len(writes))
        return real(writes)

    store.save_batch = save_batch  # type: ignore[method-assign]
    return sizes


def by_id(stats: list[IngestStats]) -> dict[str, IngestStats]:
    return {s.source_id: s for s in stats}


@pytest.mark.parametrize("count", [MAX_WRITES_PER_BATCH, 150])
def test_a_warm_pass_records_its_304s_in_few_transactions(
    http_server: FixtureServer, db_url: str, count: int
) -> None:
    ids = [f"s{n:03d}" for n in range(count)]
    for n, source_id in enumerate(ids):
        http_server.add(f"/{source_id}.xml", rss(source_id, 1 + n % 3), etag=f'"v{n}"')
    config = config_for(db_url, http_server, ids)
    store = Store.open(db_url)
    try:
        asyncio.run(Ingestor(config, store).run())
        before = {s.id: s for s in store.source_states()}
        sizes = batch_sizes(store)

        warm = asyncio.run(Ingestor(config, store).run())

        assert {s.outcome for s in warm} == {IngestOutcome.NOT_MODIFIED}
        # Queued 64 at a time: the first of each lot finds the store idle and
        # runs alone, the others go together (a few more transactions if the
        # store happens to start on a lot before all of it is queued). Written
        # as they came, it was about one transaction per two sources.
        lots = -(-count // MAX_WRITES_PER_BATCH)
        assert sum(sizes) == count and len(sizes) <= 3 * lots
        after = {s.id: s for s in store.source_states()}
        for source_id in ids:
            old, new = before[source_id], after[source_id]
            assert new.etag == old.etag and new.error_count == 0
            assert new.last_fetched_at is not None and old.last_fetched_at is not None
            assert new.last_fetched_at > old.last_fetched_at
            assert new.next_fetch_at is not None and new.next_fetch_at > new.last_fetched_at
    finally:
        store.close()


@pytest.mark.parametrize(("unchanged", "changed", "gone"), [(70, 10, 5), (5, 40, 3), (130, 1, 1)])
def test_a_pass_of_304s_new_entries_and_errors_stores_every_source(
    http_server: FixtureServer, db_url: str, unchanged: int, changed: int, gone: int
) -> None:
    """Deferred 304s share transactions with other sources' writes; none is lost or mixed up."""
    ids = [f"s{n:03d}" for n in range(unchanged + changed + gone)]
    for n, source_id in enumerate(ids):
        http_server.add(f"/{source_id}.xml", rss(source_id, 2), etag=f'"v{n}"')
    config = config_for(db_url, http_server, ids)
    store = Store.open(db_url)
    try:
        asyncio.run(Ingestor(config, store).run())
        for n, source_id in enumerate(ids[unchanged : unchanged + changed]):
            http_server.add(f"/{source_id}.xml", rss(source_id, 5), etag=f'"w{n}"')
        for source_id in ids[unchanged + changed :]:
            http_server.remove(f"/{source_id}.xml")

        stats = by_id(asyncio.run(Ingestor(config, store).run()))

        states = {s.id: s for s in store.source_states()}
        counts = store.item_counts()
        for source_id in ids[:unchanged]:
            assert stats[source_id].outcome == IngestOutcome.NOT_MODIFIED
            assert counts[source_id] == 2 and states[source_id].error_count == 0
        for n, source_id in enumerate(ids[unchanged : unchanged + changed]):
            assert (stats[source_id].outcome, stats[source_id].new) == (IngestOutcome.OK, 3)
            assert counts[source_id] == 5 and states[source_id].etag == f'"w{n}"'
        for source_id in ids[unchanged + changed :]:
            assert stats[source_id].outcome == IngestOutcome.ERROR
            assert states[source_id].error_count == 1
            assert "404" in (states[source_id].last_error or "")
    finally:
        store.close()


def test_ingest_source_alone_still_records_its_304(
    http_server: FixtureServer, store: Store
) -> None:
    """Outside a pass (no batch to join) a 304 is written before ``ingest_source`` returns."""
    http_server.add("/one.xml", rss("one", 2), etag='"v1"')
    source = Source(id="one", url=http_server.url("/one.xml"))
    config = parse_config(
        f"sources:\n  - {{id: one, url: '{source.url}'}}\n", path=Path("feeds.yaml")
    )
    store.sync_sources(config.sources)
    ingestor = Ingestor(config, store)

    async def twice() -> tuple[IngestStats, IngestStats]:
        async with Fetcher(trust_env=False) as fetcher:
            first = await ingestor.ingest_source(source, None, fetcher, None)
            state = store.source_state("one")
            second = await ingestor.ingest_source(source, state, fetcher, None)
            return first, second

    before = utcnow()
    first, second = asyncio.run(twice())

    assert (first.outcome, second.outcome) == (IngestOutcome.OK, IngestOutcome.NOT_MODIFIED)
    state = store.source_state("one")
    assert state is not None and state.last_fetched_at is not None
    assert state.last_fetched_at >= before and http_server.count("/one.xml") == 2


# ------------------------------------------------------- the request on the wire


@pytest.mark.parametrize(
    ("etag", "last_modified"),
    [(None, None), ('"abc"', None), (None, "Mon, 23 Nov 2026 00:00:00 GMT"), ('W/"x"', "Tue")],
)
def test_every_request_carries_the_client_headers_and_only_its_own_validators(
    http_server: FixtureServer, etag: str | None, last_modified: str | None
) -> None:
    http_server.add("/feed.xml", rss("f", 1))

    async def go() -> None:
        async with Fetcher(trust_env=False, user_agent="probe/1.0") as fetcher:
            await fetcher.fetch_url(
                http_server.url("/feed.xml"), source_id="f", etag=etag, last_modified=last_modified
            )
            await fetcher.fetch_url(http_server.url("/feed.xml"), source_id="f")

    asyncio.run(go())

    first, second = (r.headers for r in http_server.requests_for("/feed.xml"))
    for headers in (first, second):
        assert headers.get("User-Agent") == "probe/1.0"
        assert headers.get("Host") == http_server.url("/").split("/")[2]
        assert "application/rss+xml" in (headers.get("Accept") or "")
        assert "gzip" in (headers.get("Accept-Encoding") or "")
        assert (headers.get("Connection") or "").lower() == "keep-alive"
    assert (first.get("If-None-Match"), first.get("If-Modified-Since")) == (etag, last_modified)
    # The validators of one request do not leak into the next (the base headers are shared).
    assert (second.get("If-None-Match"), second.get("If-Modified-Since")) == (None, None)


def test_one_sites_cookies_are_not_sent_back_on_later_polls(http_server: FixtureServer) -> None:
    """A feed poller keeps no cookie jar: polls do not carry what a site set before."""
    http_server.add("/a.xml", rss("a", 1), headers={"Set-Cookie": "visitor=123; Path=/"})
    http_server.add("/b.xml", rss("b", 1))

    async def go() -> None:
        async with Fetcher(trust_env=False) as fetcher:
            for path in ("/a.xml", "/a.xml", "/b.xml"):
                await fetcher.fetch_url(http_server.url(path), source_id="s")

    asyncio.run(go())

    requests = [*http_server.requests_for("/a.xml"), *http_server.requests_for("/b.xml")]
    assert len(requests) == 3
    assert all(r.headers.get("Cookie") is None for r in requests)


# ------------------------------------------------------- before the first request


def count_calls(store: Store, name: str) -> list[int]:
    """Count calls of ``store.<name>`` (the real method still runs)."""
    calls: list[int] = []
    real = getattr(store, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    setattr(store, name, counted)
    return calls


@pytest.mark.parametrize("count", [8, 40])
def test_a_warm_pass_reads_the_source_states_once(
    http_server: FixtureServer, db_url: str, count: int
) -> None:
    """The states read to decide on the parse pool serve the pass when the sync wrote nothing."""
    ids = [f"s{n:03d}" for n in range(count)]
    for n, source_id in enumerate(ids):
        http_server.add(f"/{source_id}.xml", rss(source_id, 1), etag=f'"v{n}"')
    store = Store.open(db_url)
    try:
        asyncio.run(Ingestor(config_for(db_url, http_server, ids), store).run())
        reads = count_calls(store, "source_states")

        warm = asyncio.run(Ingestor(config_for(db_url, http_server, ids), store).run())

        assert len(reads) == 1
        assert {s.outcome for s in warm} == {IngestOutcome.NOT_MODIFIED}
        # A config that adds a source is synced, then the states are read again:
        # the new source is fetched as new, the others still answer 304.
        http_server.add("/extra.xml", rss("extra", 3), etag='"x"')
        reads.clear()
        mixed = by_id(
            asyncio.run(Ingestor(config_for(db_url, http_server, [*ids, "extra"]), store).run())
        )
        assert len(reads) == 2
        assert (mixed["extra"].outcome, mixed["extra"].new) == (IngestOutcome.OK, 3)
        assert {mixed[i].outcome for i in ids} == {IngestOutcome.NOT_MODIFIED}
    finally:
        store.close()


def test_sync_sources_says_how_many_rows_it_wrote(store: Store) -> None:
    def sources(yaml: str) -> Sequence[Source]:
        return parse_config("sources:\n" + yaml, path=Path("feeds.yaml")).sources

    three = "".join(f"  - {{id: s{n}, url: 'http://127.0.0.1/{n}.xml'}}\n" for n in range(3))
    assert store.sync_sources(sources(three)) == 3
    assert store.sync_sources(sources(three)) == 0
    moved = three.replace("/1.xml", "/1-new.xml")
    assert store.sync_sources(sources(moved)) == 1
    titled = moved.replace("{id: s2,", "{id: s2, title: Two,")
    assert (
        store.sync_sources(sources(titled + "  - {id: s3, url: 'http://127.0.0.1/3.xml'}\n")) == 2
    )
    assert store.sync_sources(sources(titled)) == 0  # a source left out is kept, not written
