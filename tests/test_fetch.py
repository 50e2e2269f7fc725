"""aggregator.fetch against a real HTTP server on 127.0.0.1 (tests/support/http.py)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import brotli
import pytest

from aggregator.errors import FetchError, FetchTimeout, ResponseTooLarge
from aggregator.fetch import (
    DEFAULT_USER_AGENT,
    MAX_BACKOFF,
    Fetcher,
    next_fetch_delay,
    parse_retry_after,
)
from aggregator.models import FetchResult, Source, SourceState
from tests.support.http import FixtureServer, unused_port

T = TypeVar("T")

RSS = (
    '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>한국 영화</title>'
    "<item><title>Ko-pick: 올해의 영화</title><link>https://example.org/1</link></item>"
    "</channel></rss>\n"
)
RSS_BYTES = RSS.encode("utf-8")
ETAG = '"rss-v1"'
LAST_MODIFIED = "Mon, 03 Mar 2025 10:00:00 GMT"
MB = 1024 * 1024


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def fetch_url(url: str, *, source_id: str = "test-source", **options: Any) -> FetchResult:
    """One fetch with a fresh Fetcher; ``options`` split between Fetcher and fetch_url."""
    per_call = {k: options.pop(k) for k in ("etag", "last_modified", "timeout") if k in options}

    async def go() -> FetchResult:
        async with Fetcher(trust_env=False, **options) as fetcher:
            return await fetcher.fetch_url(url, source_id=source_id, **per_call)

    return run(go())


def fetch_error(url: str, **options: Any) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch_url(url, **options)
    return caught.value


# ------------------------------------------------------------- conditional GET


def test_second_fetch_sends_validators_and_gets_not_modified(http_server: FixtureServer) -> None:
    http_server.add("/feed.xml", RSS, etag=ETAG, last_modified=LAST_MODIFIED)
    source = Source(id="kofic", url=http_server.url("/feed.xml"))

    async def go() -> tuple[FetchResult, FetchResult]:
        async with Fetcher(trust_env=False) as fetcher:
            first = await fetcher.fetch(source, None)
            state = SourceState(
                id=source.id, url=source.url, etag=first.etag, last_modified=first.last_modified
            )
            return first, await fetcher.fetch(source, state)

    first, second = run(go())

    assert first.status == 200
    assert first.content == RSS_BYTES
    assert not first.not_modified
    assert (first.etag, first.last_modified) == (ETAG, LAST_MODIFIED)
    assert first.content_type == "application/rss+xml; charset=utf-8"
    assert first.charset == "utf-8"
    assert first.url == source.url
    assert first.permanent_url is None
    assert first.elapsed > 0

    assert second.status == 304
    assert second.content is None
    assert second.not_modified
    assert (second.etag, second.last_modified) == (ETAG, LAST_MODIFIED)
    sent = http_server.requests_for("/feed.xml")[1].headers
    assert sent["If-None-Match"] == ETAG
    assert sent["If-Modified-Since"] == LAST_MODIFIED


def test_changed_feed_is_downloaded_again_despite_old_validators(
    http_server: FixtureServer,
) -> None:
    http_server.add("/feed.xml", RSS.replace("올해", "지난해"), etag='"rss-v2"')

    result = fetch_url(http_server.url("/feed.xml"), etag=ETAG)

    assert result.status == 200
    assert "지난해".encode() in (result.content or b"")
    assert result.etag == '"rss-v2"'


def test_if_modified_since_alone_gives_not_modified(http_server: FixtureServer) -> None:
    http_server.add("/feed.xml", RSS, last_modified=LAST_MODIFIED)

    result = fetch_url(http_server.url("/feed.xml"), last_modified=LAST_MODIFIED)

    assert result.not_modified
    assert result.last_modified == LAST_MODIFIED


def test_fetch_prefers_the_stored_url_over_the_configured_one(http_server: FixtureServer) -> None:
    http_server.add("/new.xml", RSS)
    source = Source(id="moved", url=http_server.url("/old.xml"))
    state = SourceState(id="moved", url=http_server.url("/new.xml"))

    async def go() -> FetchResult:
        async with Fetcher(trust_env=False) as fetcher:
            return await fetcher.fetch(source, state)

    assert run(go()).content == RSS_BYTES
    assert http_server.count("/old.xml") == 0


def test_request_headers_name_the_aggregator(http_server: FixtureServer) -> None:
    http_server.add("/feed.xml", RSS)

    fetch_url(http_server.url("/feed.xml"))
    fetch_url(http_server.url("/feed.xml"), user_agent="custom-agent/2.0")

    default, custom = http_server.requests
    assert default.headers["User-Agent"] == DEFAULT_USER_AGENT
    assert "aggregator/" in default.headers["User-Agent"]
    assert custom.headers["User-Agent"] == "custom-agent/2.0"
    assert default.headers["Accept-Encoding"] == "gzip, deflate, br"
    assert "application/rss+xml" in default.headers["Accept"]
    assert "If-None-Match" not in default.headers


def test_charset_comes_from_content_type(http_server: FixtureServer) -> None:
    http_server.add("/euc.xml", "<rss/>", content_type='text/xml; charset="EUC-KR"')

    result = fetch_url(http_server.url("/euc.xml"))

    assert result.charset == "euc-kr"
    assert result.content_type == 'text/xml; charset="EUC-KR"'


# ----------------------------------------------------------------- encodings


def test_gzip_body_is_decoded(http_server: FixtureServer) -> None:
    http_server.add("/feed.xml", RSS * 50, gzip=True)

    result = fetch_url(http_server.url("/feed.xml"))

    assert result.content == RSS_BYTES * 50


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("br", brotli.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send
        ("x-gzip", gzip.compress),
        ("gzip", lambda data: gzip.compress(data[:100]) + gzip.compress(data[100:])),
        ("gzip, br", lambda data: brotli.compress(gzip.compress(data))),
    ],
    ids=["brotli", "deflate-zlib", "deflate-raw", "x-gzip", "gzip-two-members", "gzip-then-br"],
)
def test_compressed_bodies_are_decoded(
    http_server: FixtureServer, encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    body = RSS_BYTES * 40
    http_server.add_raw(
        "/feed.xml",
        encode(body),
        headers={"Content-Type": "application/rss+xml", "Content-Encoding": encoding},
    )

    assert fetch_url(http_server.url("/feed.xml")).content == body


def test_corrupt_gzip_body_is_a_fetch_error(http_server: FixtureServer) -> None:
    http_server.add_raw(
        "/feed.xml", b"\x1f\x8bnot gzip at all", headers={"Content-Encoding": "gzip"}
    )

    error = fetch_error(http_server.url("/feed.xml"))

    assert "could not decode the gzip body" in str(error)


def test_unknown_content_encoding_is_a_fetch_error(http_server: FixtureServer) -> None:
    http_server.add_raw("/feed.xml", b"??", headers={"Content-Encoding": "zstd-custom"})

    assert "unsupported Content-Encoding 'zstd-custom'" in str(
        fetch_error(http_server.url("/feed.xml"))
    )


# ----------------------------------------------------------------- redirects


def test_permanent_redirect_chain_sets_permanent_url(http_server: FixtureServer) -> None:
    http_server.redirect("/a", "/b", status=301)
    http_server.redirect("/b", http_server.url("/c"), status=308)
    http_server.add("/c", RSS)

    result = fetch_url(http_server.url("/a"))

    assert result.content == RSS_BYTES
    assert result.url == http_server.url("/c")
    assert result.permanent_url == http_server.url("/c")


def test_a_temporary_hop_keeps_the_stored_url(http_server: FixtureServer) -> None:
    http_server.redirect("/a", "/b", status=301)
    http_server.redirect("/b", "/c", status=302)
    http_server.add("/c", RSS)

    result = fetch_url(http_server.url("/a"))

    assert result.url == http_server.url("/c")
    assert result.permanent_url is None


def test_validators_follow_redirects(http_server: FixtureServer) -> None:
    http_server.redirect("/a", "/c", status=301)
    http_server.add("/c", RSS, etag=ETAG)

    result = fetch_url(http_server.url("/a"), etag=ETAG)

    assert result.not_modified
    assert result.permanent_url == http_server.url("/c")


def test_redirect_loop_is_reported(http_server: FixtureServer) -> None:
    http_server.redirect("/a", "/b", status=302)
    http_server.redirect("/b", "/a", status=302)

    error = fetch_error(http_server.url("/a"), source_id="loopy")

    assert "redirect loop" in str(error)
    assert str(error).startswith("loopy: ")
    assert http_server.count("/a") == 1
    assert http_server.count("/b") == 1


def test_too_many_redirects_is_reported(http_server: FixtureServer) -> None:
    for hop in range(10):
        http_server.redirect(f"/r{hop}", f"/r{hop + 1}", status=301)
    http_server.add("/r3", RSS)  # three hops: fine with max_redirects=3

    assert fetch_url(http_server.url("/r0"), max_redirects=3).content == RSS_BYTES
    error = fetch_error(http_server.url("/r0"), max_redirects=2)
    assert "too many redirects" in str(error)


def test_redirect_without_location_is_reported(http_server: FixtureServer) -> None:
    http_server.add("/a", "", status=302)

    error = fetch_error(http_server.url("/a"))

    assert error.status == 302
    assert "without a Location" in str(error)


# ----------------------------------------------------------- status errors


def test_too_many_requests_carries_retry_after_seconds(http_server: FixtureServer) -> None:
    http_server.add("/feed.xml", "slow down", status=429, headers={"Retry-After": "120"})

    error = fetch_error(http_server.url("/feed.xml"), source_id="busy")

    assert error.status == 429
    assert error.retry_after == 120
    assert str(error) == f"busy: HTTP 429 Too Many Requests (retry after 120 s) ({error.url})"
    assert error.url == http_server.url("/feed.xml")


def test_service_unavailable_with_http_date_retry_after(http_server: FixtureServer) -> None:
    later = datetime.now(UTC) + timedelta(seconds=90)
    http_server.add(
        "/feed.xml", "", status=503, headers={"Retry-After": format_datetime(later, usegmt=True)}
    )

    error = fetch_error(http_server.url("/feed.xml"))

    assert error.status == 503
    assert error.retry_after is not None
    assert 80 <= error.retry_after <= 90


def test_rate_limited_then_recovered(http_server: FixtureServer) -> None:
    http_server.sequence(
        "/feed.xml",
        [{"status": 429, "headers": {"Retry-After": "1"}}, {"body": RSS, "etag": ETAG}],
    )

    async def go() -> tuple[BaseException | FetchResult, ...]:
        async with Fetcher(trust_env=False) as fetcher:
            results = []
            for _ in range(3):
                try:
                    results.append(
                        await fetcher.fetch_url(http_server.url("/feed.xml"), source_id="s")
                    )
                except FetchError as exc:
                    results.append(exc)
            return tuple(results)

    first, second, third = run(go())

    assert isinstance(first, FetchError)
    assert first.retry_after == 1
    assert isinstance(second, FetchResult)
    assert second.content == RSS_BYTES
    assert isinstance(third, FetchResult)
    assert third.content == RSS_BYTES


@pytest.mark.parametrize("status", [403, 404, 410, 500, 502])
def test_http_errors_carry_status_source_and_url(http_server: FixtureServer, status: int) -> None:
    http_server.add("/feed.xml", "nope", status=status)
    url = http_server.url("/feed.xml")

    error = fetch_error(url, source_id="broken")

    assert type(error) is FetchError
    assert error.status == status
    assert error.retry_after is None
    assert (error.source_id, error.url) == ("broken", url)
    assert str(error).startswith(f"broken: HTTP {status} ")
    assert str(error).endswith(f"({url})")


def test_unknown_path_is_404(http_server: FixtureServer) -> None:
    http_server.add("/feed.xml", RSS)
    http_server.remove("/feed.xml")

    assert fetch_error(http_server.url("/feed.xml")).status == 404


@pytest.mark.parametrize(
    ("header", "expected"),
    [("120", 120.0), (" 0 ", 0.0), ("soon", None), (None, None), ("-5", None)],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)

    assert parse_retry_after("Mon, 03 Mar 2025 10:02:00 GMT", now=now) == 120.0
    assert parse_retry_after("Mon, 03 Mar 2025 09:00:00 GMT", now=now) == 0.0


# ---------------------------------------------------------------------- size


def test_honest_content_length_over_the_cap_is_refused(http_server: FixtureServer) -> None:
    http_server.add("/big.xml", b"x" * (2 * MB))

    with pytest.raises(ResponseTooLarge) as caught:
        fetch_url(http_server.url("/big.xml"), max_bytes=MB, source_id="huge")

    assert "Content-Length 2097152 bytes exceeds the 1048576-byte limit" in str(caught.value)
    assert str(caught.value).startswith("huge: ")


def test_chunked_body_over_the_cap_is_cut_off(http_server: FixtureServer) -> None:
    http_server.add("/big.xml", b"x" * (3 * MB), chunked=True)

    with pytest.raises(ResponseTooLarge) as caught:
        fetch_url(http_server.url("/big.xml"), max_bytes=MB)

    assert "more than 1048576 bytes" in str(caught.value)


def test_body_exactly_at_the_cap_is_accepted(http_server: FixtureServer) -> None:
    http_server.add("/edge.xml", b"x" * 1000, chunked=True)

    assert len(fetch_url(http_server.url("/edge.xml"), max_bytes=1000).content or b"") == 1000


def _gzip_of_zeros(size: int) -> bytes:
    """gzip of ``size`` zero bytes, built without holding them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MB)
    parts = [compressor.compress(block) for _ in range(size // MB)]
    parts.append(compressor.flush())
    return b"".join(parts)


def _peak_rss_kib() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def test_gzip_bomb_stops_early_without_a_memory_spike(http_server: FixtureServer) -> None:
    bomb = _gzip_of_zeros(50 * MB)
    assert len(bomb) < 100 * 1024
    http_server.add_raw(
        "/bomb.xml",
        bomb,
        headers={"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"},
    )
    cap = 10 * MB
    if not _reset_peak_rss():
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    before = _peak_rss_kib()

    with pytest.raises(ResponseTooLarge) as caught:
        fetch_url(http_server.url("/bomb.xml"), max_bytes=cap, source_id="bomb")

    after = _peak_rss_kib()
    assert before is not None and after is not None
    growth = (after - before) * 1024
    assert growth < cap + 6 * MB, f"peak RSS grew by {growth / MB:.1f} MB"
    assert "after gzip decoding" in str(caught.value)


def test_brotli_bomb_stops_early(http_server: FixtureServer) -> None:
    http_server.add_raw(
        "/bomb.xml", brotli.compress(bytes(30 * MB)), headers={"Content-Encoding": "br"}
    )

    with pytest.raises(ResponseTooLarge):
        fetch_url(http_server.url("/bomb.xml"), max_bytes=MB)


# ---------------------------------------------------------------------- time


def test_trickling_server_is_cut_off_at_the_deadline(http_server: FixtureServer) -> None:
    http_server.add("/slow.xml", RSS, trickle=0.02)  # ~4 s for the whole body
    started = time.monotonic()

    with pytest.raises(FetchTimeout) as caught:
        fetch_url(http_server.url("/slow.xml"), timeout=0.5, read_timeout=5)

    assert time.monotonic() - started < 1.5
    assert "0.5 s deadline" in str(caught.value)
    assert caught.value.url == http_server.url("/slow.xml")


def test_source_timeout_is_the_deadline(http_server: FixtureServer) -> None:
    http_server.add("/slow.xml", RSS, delay=2)
    source = Source(id="sleepy", url=http_server.url("/slow.xml"), timeout=0.3)

    async def go() -> FetchResult:
        async with Fetcher(trust_env=False) as fetcher:
            return await fetcher.fetch(source, None)

    started = time.monotonic()
    with pytest.raises(FetchTimeout) as caught:
        run(go())

    assert time.monotonic() - started < 1.5
    assert str(caught.value).startswith("sleepy: ")


def test_silent_server_hits_the_read_timeout(http_server: FixtureServer) -> None:
    http_server.add("/silent.xml", RSS, delay=2)

    with pytest.raises(FetchTimeout) as caught:
        fetch_url(http_server.url("/silent.xml"), read_timeout=0.3)

    assert "timed out" in str(caught.value)


def test_connection_refused_is_a_clear_fetch_error() -> None:
    url = f"http://127.0.0.1:{unused_port()}/feed.xml"

    error = fetch_error(url, source_id="gone")

    assert not isinstance(error, FetchTimeout)
    assert error.status is None
    assert str(error).startswith("gone: connection refused by 127.0.0.1:")
    assert error.url == url


def test_invalid_url_is_a_fetch_error() -> None:
    assert "unsupported URL scheme 'ftp'" in str(fetch_error("ftp://example.org/feed.xml"))


# --------------------------------------------------------------- concurrency


async def _gather_fetches(fetcher: Fetcher, urls: list[str]) -> list[FetchResult]:
    jobs: list[Awaitable[FetchResult]] = [
        fetcher.fetch_url(url, source_id=f"s{i}") for i, url in enumerate(urls)
    ]
    return list(await asyncio.gather(*jobs))


def test_per_host_concurrency_limit_is_respected(http_server: FixtureServer) -> None:
    http_server.add("/slow.xml", RSS, delay=0.2)

    async def go() -> list[FetchResult]:
        async with Fetcher(trust_env=False, max_per_host=2) as fetcher:
            return await _gather_fetches(fetcher, [http_server.url("/slow.xml")] * 6)

    results = run(go())

    assert [r.content for r in results] == [RSS_BYTES] * 6
    assert http_server.max_concurrency("/slow.xml") == 2


def test_overall_limit_spans_hosts(http_server: FixtureServer) -> None:
    http_server.add("/slow.xml", RSS, delay=0.2)
    by_ip = http_server.url("/slow.xml")
    by_name = f"http://localhost:{http_server.port}/slow.xml"  # another host key, same server

    async def go(**limits: int) -> None:
        async with Fetcher(trust_env=False, **limits) as fetcher:
            await _gather_fetches(fetcher, [by_ip, by_name] * 3)

    run(go(max_per_host=1))
    assert http_server.max_concurrency() == 2  # one per host

    http_server.reset()
    run(go(max_per_host=4, max_connections=1))
    assert http_server.max_concurrency() == 1


def test_host_slots_are_kept_only_while_a_host_is_being_fetched(
    http_server: FixtureServer,
) -> None:
    # One semaphore kept per host ever fetched grew with feeds.yaml's hosts
    # for as long as the scheduler ran.
    http_server.add("/slow.xml", RSS, delay=0.1)
    http_server.add("/gone.xml", "", status=404)
    by_ip = http_server.url("/slow.xml")
    by_name = f"http://localhost:{http_server.port}/slow.xml"
    during: list[int] = []

    async def go() -> None:
        async with Fetcher(trust_env=False, max_per_host=1) as fetcher:

            async def watch() -> None:
                await asyncio.sleep(0.05)
                during.append(len(fetcher._host_slots))

            await asyncio.gather(_gather_fetches(fetcher, [by_ip, by_name] * 2), watch())
            assert fetcher._host_slots == {}
            with pytest.raises(FetchError):  # an error frees the slot too
                await fetcher.fetch_url(http_server.url("/gone.xml"), source_id="gone")
            assert fetcher._host_slots == {}

    run(go())
    assert during == [2]
    assert http_server.max_concurrency() == 2  # still one per host


def test_connections_are_reused(http_server: FixtureServer) -> None:
    http_server.add("/feed.xml", RSS)

    async def go() -> None:
        async with Fetcher(trust_env=False) as fetcher:
            for _ in range(3):
                await fetcher.fetch_url(http_server.url("/feed.xml"), source_id="s")

    run(go())

    assert http_server.count("/feed.xml") == 3
    assert http_server.connection_count() == 1


def test_not_modified_and_redirect_answers_keep_the_connection(http_server: FixtureServer) -> None:
    """A 304 or a redirect is read to its end, so the connection goes back to the pool.

    Closed unread, each one would cost a new TCP connection; most fetches of a
    polled feed are 304s.
    """
    http_server.add("/feed.xml", RSS, etag=ETAG)
    http_server.redirect("/old.xml", "/feed.xml", status=302)

    async def go() -> list[int]:
        async with Fetcher(trust_env=False) as fetcher:
            statuses = []
            for _ in range(3):
                result = await fetcher.fetch_url(
                    http_server.url("/feed.xml"), source_id="s", etag=ETAG
                )
                statuses.append(result.status)
            for _ in range(2):
                result = await fetcher.fetch_url(http_server.url("/old.xml"), source_id="s")
                statuses.append(result.status)
            return statuses

    assert run(go()) == [304, 304, 304, 200, 200]
    assert http_server.connection_count() == 1


# ------------------------------------------------------------------- backoff


def test_success_delay_is_the_interval_with_ten_percent_jitter() -> None:
    rng = random.Random(1)
    hour = timedelta(hours=1)

    delays = [next_fetch_delay(hour, 0, rng=rng) for _ in range(500)]

    assert all(0.9 * hour <= d <= 1.1 * hour for d in delays)
    assert len(set(delays)) > 400  # jittered, not constant
    assert min(delays) < 0.95 * hour and max(delays) > 1.05 * hour


def test_backoff_doubles_monotonically_and_is_capped() -> None:
    rng = random.Random(2)
    interval = timedelta(minutes=30)
    ranges = []
    for errors in range(1, 16):
        samples = [next_fetch_delay(interval, errors, rng=rng) for _ in range(50)]
        ranges.append((min(samples), max(samples)))

    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert high <= low or low >= 0.9 * MAX_BACKOFF  # later failures never wait less
    assert all(high <= MAX_BACKOFF for _, high in ranges)
    assert ranges[0][0] >= 0.9 * interval and ranges[0][1] <= 1.1 * interval
    assert ranges[2][0] >= 0.9 * 4 * interval  # third failure: 2 hours
    assert ranges[-1][0] >= 0.9 * MAX_BACKOFF
    assert next_fetch_delay(interval, 10_000, rng=rng) <= MAX_BACKOFF


def test_backoff_never_waits_less_than_a_long_interval() -> None:
    week = timedelta(days=7)

    assert next_fetch_delay(week, 3) >= 0.9 * week
    assert next_fetch_delay(week, 3) <= week


def test_retry_after_wins_when_longer() -> None:
    rng = random.Random(3)
    hour = timedelta(hours=1)

    assert next_fetch_delay(hour, 1, retry_after=3 * 3600, rng=rng) == timedelta(hours=3)
    assert next_fetch_delay(hour, 1, retry_after=60, rng=rng) >= 0.9 * hour
    assert next_fetch_delay(hour, 1, retry_after=10**9, rng=rng) == timedelta(days=7)
