"""One ingest pass: sources → fetch → parse → normalize → dedupe → store.

Each source is handled in isolation: whatever goes wrong with one (network,
HTTP status, unreadable bytes, a scrape whose selectors no longer match) is
recorded on that source with a backoff and never stops the others. Fetching is
concurrent over one HTTP client; parsing and normalizing are CPU-bound pure
Python, so they run in a process pool sized to the cores; each source's items
and fetch state are written in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from .arena import share_one_arena
from .config import Config
from .errors import FetchError, StoreError
from .extract import Extracted, extract, extract_packed, unpack
from .extract import newest_entries as newest_entries  # re-exported, as before the split
from .extract import normalize_entries as normalize_entries
from .fetch import Fetcher, next_fetch_delay, redirect_allowed
from .models import (
    FetchResult,
    IngestOutcome,
    IngestStats,
    Item,
    Source,
    SourceState,
    utcnow,
)
from .pool import BrokenProcessPool, OverBudget, ParsePool
from .pool import make_pool as make_pool  # re-exported: the scheduler and benchmarks use it
from .store import Failure, NotModified, SaveItems, SourceWrite, Store

__all__ = [
    "MAX_IN_FLIGHT",
    "MAX_IN_FLIGHT_BYTES",
    "MAX_ITEMS_PER_BATCH",
    "Extracted",
    "Ingestor",
    "extract",
    "ingest",
    "make_pool",
    "newest_entries",
    "normalize_entries",
]

log = logging.getLogger(__name__)

# Below this many sources a process pool costs more to start than it saves.
POOL_THRESHOLD = 8
# Sources between "fetch started" and "stored" at once. Above the fetcher's
# connection limit, so the network is never what waits; but bounded, so a
# fast server does not pile every response body (and its parsed items) up in
# memory while the parsing pool catches up: memory stays flat as sources grow.
MAX_IN_FLIGHT = 64
# ...and bytes held by sources between "body fetched" and "stored": the bodies
# as they came off the wire plus the packed items coming back from the pool.
# Counting sources alone let 64 large feeds (and their items, several times
# the body's size as Python objects) pile up in the main process while the
# store caught up. No new fetch starts while this much is held; one source
# over the limit on its own still runs (alone), so nothing is ever refused.
MAX_IN_FLIGHT_BYTES = 4 * 1024 * 1024
# Within one pass, after this many store writes in a row have failed the
# database counts as down: later sources stop waiting on it (each wait can
# last the SQLite busy timeout) and the pass ends with the error.
STORE_FAILURES_TO_GIVE_UP = 2
# Sources' writes that share one transaction at most (those waiting while the
# previous write ran). Bounds how long the write lock is held: ~64 cold
# sources are a few tenths of a second.
MAX_WRITES_PER_BATCH = 64
# ...and items (the entries the sources' feeds brought) in it. Each new item
# dirties ~6 SQLite pages (its row, one leaf in each of the random-key
# indexes); a transaction dirtying more than the page cache holds
# (``cache_size`` in store/engine.py: 4 MB, ~1,000 pages) spills pages to the
# WAL before the commit and evicts the pages every insert needs (interior
# pages, the hot leaves), read back moments later. Once the indexes outgrow
# the cache that was most of the store's cost: at 10,000 feeds, batches of
# ten 40-entry sources made ~13 reads and ~18 writes (system calls) per item,
# batches of at most 160 items ~7 and ~15. Writes without items (304s,
# errors) count nothing: a warm pass still shares one transaction per lot.
MAX_ITEMS_PER_BATCH = 160

T = TypeVar("T")


@dataclass(slots=True)
class _StoreBreaker:
    """Consecutive store failures within one ``Ingestor.run`` pass."""

    failures: int = 0
    error: StoreError | None = None


_store_breaker: ContextVar[_StoreBreaker | None] = ContextVar("store_breaker", default=None)


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A store write waiting for its turn: the call, and the record to batch it with others."""

    record: SourceWrite | None
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    done: asyncio.Future[Any]


# The store's per-source writes and the records Store.save_batch takes for them.
_BATCHABLE: dict[Any, type[SaveItems | NotModified | Failure]] = {
    Store.save_items: SaveItems,
    Store.record_not_modified: NotModified,
    Store.record_failure: Failure,
}


def _as_source_write(
    store: Store, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> SourceWrite | None:
    """``fn(*args, **kwargs)`` as a batchable record, if ``fn`` is one of ``store``'s own writes.

    Anything else (a stand-in a test put on the store) runs as called.
    """
    if getattr(fn, "__self__", None) is not store:
        return None
    record = _BATCHABLE.get(getattr(fn, "__func__", None))
    return None if record is None else record(*args, **kwargs)


@contextlib.contextmanager
def _pool_stops_on_sigterm(pool: ParsePool | None) -> Iterator[None]:
    """While a one-off pass owns ``pool``, SIGTERM kills its workers before we die.

    Python's default SIGTERM ends the process at once, leaving the workers to
    the parent-death signal; this stops them first, then dies of the same
    signal (so the exit status still says SIGTERM). Only where nobody else
    handles SIGTERM: the scheduler and the queue worker have their own clean
    shutdown, which shuts the pool down.
    """
    if (
        pool is None
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        log.warning("SIGTERM: stopping the parse pool")
        pool.terminate()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _ByteBudget:
    """Bytes held by a pass's sources between "body fetched" and "stored".

    ``room`` waits (before a source's fetch starts) until the bytes held are
    under ``limit``; each source adds what it holds with ``take`` and gives
    it all back with ``give_back`` once written. A fetch not yet answered
    holds ``estimate`` (the mean a source has held so far), so a burst of new
    fetches cannot all pass ``room`` before any body is counted. A single
    body over the limit still goes through when it is alone. ``peak`` is for
    tests and benchmarks; ``wakeups`` counts the times a waiter was resumed.

    Waiters are let through one at a time, first come first served: a
    release wakes the first in line only, and each waiter that gets through
    wakes the next once its own source has taken its estimate (one loop turn
    later), if there is still room. Waking every waiter on each release made
    them all run just to queue again: with the store behind (10,000 feeds)
    that was 31 resumptions per source instead of ~3, ~0.8 ms of the event
    loop's CPU per source.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.wakeups = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._released_bytes = 0
        self._released_sources = 0

    @property
    def estimate(self) -> int:
        """What a source about to be fetched is counted as holding (64 KiB until one is done)."""
        if not self._released_sources:
            return 64 * 1024
        return self._released_bytes // self._released_sources

    async def room(self) -> None:
        """Return once the bytes held are under the limit and no earlier caller is waiting."""
        if self.held < self.limit and not self._waiters:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            while True:
                await waiter
                self.wakeups += 1
                if self.held < self.limit:
                    break
                # Taken meanwhile by a source already under way: back to the
                # head of the line (its place), for the next release.
                self._waiters.remove(waiter)
                waiter = loop.create_future()
                self._waiters.appendleft(waiter)
        except BaseException:
            # Cancelled, perhaps after being woken: the wake must not be lost
            # with it, or the next in line would wait for a release that may
            # never come.
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            self._wake_next()
            raise
        self._waiters.remove(waiter)
        # The next in line, once this source has taken its share (the caller
        # does so without yielding to the loop).
        loop.call_soon(self._wake_next)

    def _wake_next(self) -> None:
        if self.held < self.limit and self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)

    def take(self, size: int) -> None:
        self.held += size
        self.peak = max(self.peak, self.held)

    def give_back(self, size: int, *, finished: bool = False) -> None:
        self.held -= size
        if finished:
            self._released_bytes += size
            self._released_sources += 1
        self._wake_next()


class _Held:
    """What one source holds of the pass's ``_ByteBudget``; all given back by ``release``."""

    __slots__ = ("_budget", "_estimate", "size")

    def __init__(self, budget: _ByteBudget | None) -> None:
        self._budget = budget
        self.size = 0
        # Held until the body is counted: see ``_ByteBudget``.
        self._estimate = budget.estimate if budget is not None else 0
        if budget is not None:
            budget.take(self._estimate)

    def add(self, size: int) -> None:
        if self._estimate and self._budget is not None:
            self._budget.give_back(self._estimate)
            self._estimate = 0
        self.size += size
        if self._budget is not None:
            self._budget.take(size)

    def release(self) -> None:
        if self._budget is not None:
            self._budget.give_back(self._estimate)
            self._budget.give_back(self.size, finished=self.size > 0)
        self._estimate = 0
        self.size = 0


_budget: ContextVar[_ByteBudget | None] = ContextVar("ingest_byte_budget", default=None)
# The 304 records of the running pass not yet written (see ``Ingestor._not_modified``).
_deferred: ContextVar[list[NotModified] | None] = ContextVar("ingest_deferred", default=None)


def _due(state: SourceState | None, now: datetime) -> bool:
    """Whether a source is due for a fetch (``only_due`` passes)."""
    return state is None or state.next_fetch_at is None or state.next_fetch_at <= now


def _telling(sources: Sequence[Source], states: dict[str, SourceState]) -> dict[str, SourceState]:
    """The states of the pass's sources that say more than their configuration.

    A source never fetched has a state of nothing but its id and configured
    URL, and the pass treats it exactly as no state at all (no validators, no
    stored hash, no errors, due now; the fetch goes to ``source.url``). On a
    first pass over 10,000 sources those states were ~3 MB of the main
    process's peak (``tracemalloc``: the objects and the strings of their
    rows), held until the pass ended.
    """
    kept: dict[str, SourceState] = {}
    for source in sources:
        state = states.get(source.id)
        if state is not None and state != SourceState(source.id, source.url):
            kept[source.id] = state
    return kept


def _body_expected(state: SourceState | None) -> bool:
    """Whether a fetch of this source will surely bring a body to parse (no 304 possible)."""
    return state is None or not (state.etag or state.last_modified)


class Ingestor:
    """Runs ingest passes for a config against one store.

    Store writes go through a single-thread lock: SQLite has one writer, and
    serializing them keeps PostgreSQL transactions short too.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        fetcher: Fetcher | None = None,
        pool: Executor | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._fetcher = fetcher
        self._pool = pool
        self._write_lock = asyncio.Lock()
        self._waiting: list[_Waiting] = []
        self.max_in_flight_bytes = MAX_IN_FLIGHT_BYTES
        # The byte budget of the last pass (its ``peak`` is what tests and benchmarks read).
        self.last_budget: _ByteBudget | None = None

    async def run(
        self,
        source_ids: Sequence[str] | None = None,
        *,
        only_due: bool = False,
        on_done: Callable[[IngestStats], None] | None = None,
    ) -> list[IngestStats]:
        """Ingest the chosen (default: all enabled) sources concurrently."""
        # Before the pass starts its threads: the store's threads then share
        # the event loop's malloc arena (aggregator.arena: ~4 MB less at the peak).
        share_one_arena()
        if source_ids:
            sources = [self.config.source(sid) for sid in source_ids]
        else:
            sources = [s for s in self.config.sources if s.enabled]
        own_pool = None
        pool = self._pool
        if pool is None and len(sources) >= POOL_THRESHOLD:
            pool = own_pool = make_pool()  # no process yet: see _prepare
        fetcher = self._fetcher
        try:
            with _pool_stops_on_sigterm(own_pool):
                now = utcnow()
                states = await asyncio.to_thread(self._prepare, sources, pool, only_due, now)
                if only_due:
                    sources = [s for s in sources if _due(states.get(s.id), now)]
                if own_pool is not None and len(sources) < POOL_THRESHOLD:
                    pool = None  # too few due to be worth a pool
                if fetcher is None:
                    async with Fetcher() as fetcher:
                        return await self._run_all(sources, states, fetcher, pool, on_done)
                return await self._run_all(sources, states, fetcher, pool, on_done)
        finally:
            if own_pool is not None:
                own_pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(
        self, sources: Sequence[Source], pool: Executor | None, only_due: bool, now: datetime
    ) -> dict[str, SourceState]:
        """Sync the configured sources into the store and read their states (in a thread).

        When some source of the pass is sure to answer with a body (never
        fetched, or no validators to send, so no 304 is possible), the parse
        pool starts now, in the background: the forkserver's imports (a few
        tenths of a second) then overlap the source sync and the first
        fetches instead of holding up the first parse. A pass in which every
        source can answer 304 still starts no process until a body arrives.
        When the sync writes nothing (the config did not change: every warm
        pass), the states read for that decision are the ones returned.
        """
        before: dict[str, SourceState] | None = None
        if isinstance(pool, ParsePool) and not pool.started and len(sources) >= POOL_THRESHOLD:
            before = {s.id: s for s in self.store.source_states()}
            expected = [s for s in sources if not only_due or _due(before.get(s.id), now)]
            if len(expected) >= POOL_THRESHOLD and any(
                _body_expected(before.get(s.id)) for s in expected
            ):
                pool.start()
        written = self.store.sync_sources(self.config.sources)
        if before is not None and written == 0:
            states = before
        else:
            states = {s.id: s for s in self.store.source_states()}
        return _telling(sources, states)

    async def _run_all(
        self,
        sources: Sequence[Source],
        states: dict[str, SourceState],
        fetcher: Fetcher,
        pool: Executor | None,
        on_done: Callable[[IngestStats], None] | None,
    ) -> list[IngestStats]:
        limit = max(MAX_IN_FLIGHT, 2 * getattr(fetcher, "max_connections", 0))
        budget = _ByteBudget(self.max_in_flight_bytes)
        results: list[IngestStats | Exception | None] = [None] * len(sources)
        # One shared iterator: each source is taken once, in order, by the
        # next free runner. A fixed set of runners, not a task per source:
        # 10,000 waiting tasks held ~50 MB in the main process, so memory
        # grew with the number of sources instead of staying flat.
        queue = iter(enumerate(sources))

        async def runner() -> None:
            for index, source in queue:
                try:
                    await budget.room()
                    stats = await self.ingest_source(source, states.get(source.id), fetcher, pool)
                    if on_done:
                        on_done(stats)
                except Exception as exc:  # a store error: kept, raised once all are done
                    results[index] = exc
                else:
                    results[index] = stats

        # A store error (database locked or gone) ends the pass with that error,
        # but only once every source has finished: the others' items and errors
        # are still written if the database comes back meanwhile.
        token = _store_breaker.set(_StoreBreaker())
        budget_token = _budget.set(budget)
        deferred: list[NotModified] = []
        deferred_token = _deferred.set(deferred)
        self.last_budget = budget
        try:
            await asyncio.gather(*(runner() for _ in range(min(limit, len(sources)))))
            await self._write_not_modified(deferred)  # the last few 304s
        finally:
            _deferred.reset(deferred_token)
            _budget.reset(budget_token)
            _store_breaker.reset(token)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [r for r in results if isinstance(r, IngestStats)]

    async def ingest_source(
        self,
        source: Source,
        state: SourceState | None,
        fetcher: Fetcher,
        pool: Executor | None,
    ) -> IngestStats:
        """Fetch, extract and store one source; never raises for source problems."""
        started = time.perf_counter()
        held = _Held(_budget.get())
        try:
            return await self._ingest_source(source, state, fetcher, pool, started, held)
        except FetchError as exc:
            await self._fail(source, state, str(exc), retry_after=exc.retry_after)
            return IngestStats(
                source.id,
                IngestOutcome.ERROR,
                error=str(exc),
                elapsed=time.perf_counter() - started,
            )
        except StoreError:
            raise  # the database itself is in trouble: not one source's problem
        except Exception as exc:
            log.exception("%s: unexpected error while ingesting %s", source.id, source.url)
            message = f"{source.id}: unexpected {type(exc).__name__}: {exc} ({source.url})"
            await self._fail(source, state, message)
            return IngestStats(
                source.id, IngestOutcome.ERROR, error=message, elapsed=time.perf_counter() - started
            )
        finally:
            held.release()

    async def _ingest_source(
        self,
        source: Source,
        state: SourceState | None,
        fetcher: Fetcher,
        pool: Executor | None,
        started: float,
        held: _Held,
    ) -> IngestStats:
        # The body stays compressed until a parse worker decodes it (under the
        # same cap): a fifth of the bytes to hold and to send, and the
        # decompression CPU off the main process.
        result = await fetcher.fetch(source, state, decode=False)
        error_count = 0
        next_at = result.fetched_at + next_fetch_delay(source.interval, error_count)
        if result.not_modified:
            log.info("%s: not modified", source.id)
            return await self._not_modified(source, result, next_at, started)

        held.add(len(result.content or b""))
        extracted = await self._extract(pool, source, result, held)
        result = replace(result, content=None)  # the body is not needed any more
        if extracted.error:
            await self._fail(source, state, extracted.error, broken=extracted.broken)
            return IngestStats(
                source.id,
                IngestOutcome.ERROR,
                error=extracted.error,
                elapsed=time.perf_counter() - started,
            )
        if extracted.warning:
            log.warning("%s: feed is malformed but readable: %s", source.id, extracted.warning)

        # A listing page without validators that extracts exactly what it did
        # last time is "not modified": write nothing but the fetch time.
        if (
            source.type == "html"
            and state is not None
            and state.content_hash is not None
            and extracted.listing_hash == state.content_hash
        ):
            return await self._not_modified(source, result, next_at, started)

        items = list(extracted.items)
        notes = list(extracted.notes)
        if source.type == "html" and source.max_pages > 1 and extracted.next_page_url:
            items += await self._older_pages(source, fetcher, pool, extracted, items)
            if len(items) > source.max_items:  # older pages come last: keep the first
                notes.append(
                    f"kept {source.max_items:,} of {len(items):,} entries from "
                    f"{source.max_pages} pages (max_items: {source.max_items:,})"
                )
                items = items[: source.max_items]

        counts = await self._write(
            self.store.save_items,
            source.id,
            items,
            fetched_at=result.fetched_at,
            next_fetch_at=next_at,
            etag=result.etag,
            last_modified=result.last_modified,
            content_hash=extracted.listing_hash,
            new_url=result.permanent_url,
            warnings=[*notes, extracted.warning] if extracted.warning else notes,
        )
        if counts.churned:
            log.warning(
                "%s: %d entries had a new guid for a link already stored (matched by link)",
                source.id,
                counts.churned,
            )
        if result.permanent_url:
            log.info(
                "%s: moved permanently to %s; stored URL updated", source.id, result.permanent_url
            )
        log.info(
            "%s: %d new, %d updated, %d duplicates",
            source.id,
            counts.new,
            counts.updated,
            counts.duplicates,
        )
        return IngestStats(
            source.id,
            IngestOutcome.OK,
            new=counts.new,
            updated=counts.updated,
            duplicates=counts.duplicates,
            unchanged=counts.unchanged,
            elapsed=time.perf_counter() - started,
        )

    async def _extract(
        self,
        pool: Executor | None,
        source: Source,
        result: FetchResult,
        held: _Held | None = None,
    ) -> Extracted:
        """Run ``extract`` in the pool (or a thread), turning a budget overrun or a
        dead worker into this source's error.

        A worker that dies breaks every call in flight on the pool, not only the
        one that killed it; so a call that fails that way is retried once on a
        fresh pool, and only a source that breaks it twice is blamed.
        """
        now = utcnow()
        sections = self.config.sections
        if pool is None:
            return await asyncio.to_thread(extract, source, result, sections, now)
        loop = asyncio.get_running_loop()
        if isinstance(pool, ParsePool):
            # Started in a thread (now, if no earlier step started it): the
            # first submit would otherwise spawn the workers in this event
            # loop, stopping every fetch for as long. A pool that cannot
            # start fails the submit below, which reports it as before.
            starting = pool.start()
            if not starting.done():
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(starting)
        for attempt in range(2):
            try:
                blob = await loop.run_in_executor(
                    pool, extract_packed, source, result, sections, now
                )
                if held is not None:
                    held.add(len(blob))
                return unpack(blob)
            except OverBudget as exc:
                return Extracted(
                    error=f"{source.id}: parsing {exc}; the document is too costly to read, "
                    f"skipped until it changes or the next interval ({result.url})"
                )
            except BrokenProcessPool:
                if isinstance(pool, ParsePool):
                    pool.renew()
                if attempt == 1 or not isinstance(pool, ParsePool):
                    break
        budget = getattr(pool, "cpu_budget", None)
        limit = f" or ran past its {budget:g} s CPU budget" if budget else ""
        return Extracted(
            error=f"{source.id}: the parse worker died on this document (crashed{limit}) "
            f"({result.url})"
        )

    async def _not_modified(
        self, source: Source, result: FetchResult, next_at: datetime, started: float
    ) -> IngestStats:
        """A 304, or a listing that extracts as last time: record the fetch, write nothing else.

        Within a pass (``run``) the record is not written at once: 304s are
        collected and written :data:`MAX_WRITES_PER_BATCH` at a time (one
        transaction, one UPDATE), the rest when the pass ends. In a warm pass
        every source ends here; writing each as it came meant some 250
        transactions of one or two rows and a thread hop each, a quarter of
        the pass's CPU. Nothing is lost by the delay that a refetch would
        not restore: until written, the source merely looks due again. A
        database that refuses the batch fails the pass as any store error
        does.
        """
        kwargs = {
            "fetched_at": result.fetched_at,
            "next_fetch_at": next_at,
            "etag": result.etag,
            "last_modified": result.last_modified,
        }
        deferred = _deferred.get()
        record = _as_source_write(self.store, self.store.record_not_modified, (source.id,), kwargs)
        if deferred is None or not isinstance(record, NotModified):
            await self._write(self.store.record_not_modified, source.id, **kwargs)
        else:
            deferred.append(record)
            if len(deferred) >= MAX_WRITES_PER_BATCH:
                await self._write_not_modified(deferred)
        return IngestStats(
            source.id, IngestOutcome.NOT_MODIFIED, elapsed=time.perf_counter() - started
        )

    async def _write_not_modified(self, deferred: list[NotModified]) -> None:
        """Write (and empty) ``deferred``: one ``save_batch`` call through the write queue.

        One transaction and one UPDATE for the lot. ``_write`` cannot merge
        this call with other sources' writes waiting at the same moment, so
        those few run one by one in that turn (as any write it cannot batch):
        a cost of mixed passes only, once per lot. A source the database
        refuses is logged (its 304 is simply not recorded); a database in
        trouble fails the pass.
        """
        if not deferred:
            return
        batch = deferred[:]
        deferred.clear()
        outcomes = await self._write(self.store.save_batch, batch)
        for record, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):  # that source's savepoint only; the rest stand
                log.error("%s: could not record the fetch: %s", record.source_id, outcome)

    async def _older_pages(
        self,
        source: Source,
        fetcher: Fetcher,
        pool: Executor | None,
        first: Extracted,
        seen: list[Item],
    ) -> list[Item]:
        """Follow "next page" links until known items appear or ``max_pages`` is reached.

        Runs on every fetch of a paged listing, but stops at the first page
        that holds an item we already have, so in steady state it costs one
        lookup and no extra request.
        """
        found: list[Item] = []
        guids = [i.guid for i in seen]
        known = await asyncio.to_thread(self.store.known_guids, source.id, guids)
        if known:
            return found
        url = first.next_page_url
        pages = 1
        visited = {source.url}
        while url and pages < source.max_pages and url not in visited:
            visited.add(url)
            pages += 1
            if not await redirect_allowed(source.url, url):
                log.warning("%s: stopped paging: %s is a private address", source.id, url)
                break
            try:
                result = await fetcher.fetch_url(
                    url, source_id=source.id, timeout=source.timeout, decode=False
                )
            except FetchError as exc:
                log.warning("%s: stopped paging at %s: %s", source.id, url, exc)
                break
            if result.content is None:
                break
            extracted = await self._extract(pool, replace(source, url=url), result)
            if extracted.error or not extracted.items:
                if extracted.error:
                    log.warning("%s: stopped paging at %s: %s", source.id, url, extracted.error)
                break
            found.extend(extracted.items)
            known = await asyncio.to_thread(
                self.store.known_guids, source.id, [i.guid for i in extracted.items]
            )
            if known:
                break
            url = extracted.next_page_url
        return found

    async def _fail(
        self,
        source: Source,
        state: SourceState | None,
        message: str,
        *,
        retry_after: float | None = None,
        broken: bool = False,
    ) -> None:
        errors = (state.error_count if state else 0) + 1
        now = utcnow()
        next_at = now + next_fetch_delay(source.interval, errors, retry_after=retry_after)
        log.error("%s", message)
        await self._write(
            self.store.record_failure,
            source.id,
            message,
            fetched_at=now,
            next_fetch_at=next_at,
            broken=broken,
        )

    async def _write(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """One store write, serialized; gives up early on a database that is down.

        Writes that arrive while another is running wait together, and the
        next one to run takes them all (up to :data:`MAX_WRITES_PER_BATCH`)
        into ONE transaction (:meth:`Store.save_batch`), each source in its
        own savepoint: a source the database refuses fails alone, as before,
        and only the commit is shared. Nothing waits for a batch to fill: a
        write that finds the store idle runs at once, alone.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        record = _as_source_write(self.store, fn, args, kwargs)
        self._waiting.append(_Waiting(record, fn, args, kwargs, done))
        async with self._write_lock:
            while not done.done():
                await self._write_batch(self._next_batch())
        result: T = await done
        return result

    def _next_batch(self) -> list[_Waiting]:
        """The waiting writes the next transaction takes, oldest first (at least one).

        At most :data:`MAX_WRITES_PER_BATCH` writes and, unless the first
        alone has more, :data:`MAX_ITEMS_PER_BATCH` items.
        """
        taken = items = 0
        for waiting in self._waiting[:MAX_WRITES_PER_BATCH]:
            size = len(waiting.record.items) if isinstance(waiting.record, SaveItems) else 0
            if taken and items + size > MAX_ITEMS_PER_BATCH:
                break
            taken += 1
            items += size
        batch = self._waiting[:taken]
        del self._waiting[:taken]
        return batch

    async def _write_batch(self, batch: list[_Waiting]) -> None:
        """Run ``batch`` (one transaction), settling each waiter's future."""
        breaker = _store_breaker.get()
        if breaker is not None and breaker.failures >= STORE_FAILURES_TO_GIVE_UP:
            gave_up = StoreError(f"not written, the database is unavailable: {breaker.error}")
            for waiting in batch:
                waiting.done.set_exception(gave_up)
            return
        try:
            outcomes = await self._run_writes(batch)
        except StoreError as exc:
            if breaker is not None:
                breaker.failures += 1
                breaker.error = breaker.error or exc
            for waiting in batch:
                waiting.done.set_exception(exc)
            return
        except BaseException:
            for waiting in batch:
                waiting.done.cancel()
            raise
        if breaker is not None:
            breaker.failures = 0
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                waiting.done.set_exception(outcome)
            else:
                waiting.done.set_result(outcome)

    async def _run_writes(self, batch: list[_Waiting]) -> list[Any]:
        """Each write's result or exception; a :class:`StoreError` fails them all."""
        writes = [w.record for w in batch if w.record is not None]
        if len(batch) > 1 and len(writes) == len(batch):
            return await asyncio.to_thread(self.store.save_batch, writes)
        # One write, or one the store cannot batch (a stand-in): each alone, as called.
        outcomes: list[Any] = []
        for waiting in batch:
            try:
                outcomes.append(
                    await asyncio.to_thread(waiting.fn, *waiting.args, **waiting.kwargs)
                )
            except StoreError:
                raise
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


async def ingest(
    config: Config,
    store: Store,
    source_ids: Sequence[str] | None = None,
    *,
    on_done: Callable[[IngestStats], None] | None = None,
) -> list[IngestStats]:
    """Convenience wrapper: one pass over the configured sources."""
    return await Ingestor(config, store).run(source_ids, on_done=on_done)
