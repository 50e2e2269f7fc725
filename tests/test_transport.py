"""The fetcher's own HTTP/1.1 transport against a server that sends exact bytes.

Every answer here is wrong (or unusual) in one precise way, sent by a real
server on 127.0.0.1 (``tests/support/wire.py``); what is checked is what the
fetcher makes of it: the right body, a reused or a fresh connection, or a
``FetchError`` that names the source, the URL and what was wrong.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from aggregator.errors import FetchError, FetchTimeout
from aggregator.fetch import Fetcher
from aggregator.models import FetchResult
from aggregator.transport import MAX_CHUNK_LINE, MAX_HEAD_BYTES
from tests.support.smtp import self_signed_certificate
from tests.support.wire import Answer, WireServer, wire_server

SOURCE = "wire-src"


def fetch_many(
    server: WireServer, count: int = 1, *, pause: float = 0.0, **options: Any
) -> list[FetchResult | FetchError]:
    """``count`` fetches of the server's URL, one after the other, over one Fetcher."""
    options.setdefault("trust_env", False)
    outcomes: list[FetchResult | FetchError] = []

    async def go() -> None:
        async with Fetcher(**options) as fetcher:
            for n in range(count):
                if n and pause:
                    await asyncio.sleep(pause)
                try:
                    outcomes.append(await fetcher.fetch_url(server.url(), source_id=SOURCE))
                except FetchError as exc:
                    outcomes.append(exc)

    asyncio.run(go())
    return outcomes


def one(script: list[Answer], **options: Any) -> FetchResult | FetchError:
    with wire_server(script) as server:
        return fetch_many(server, **options)[0]


def refused(script: list[Answer], **options: Any) -> tuple[FetchError, str]:
    """The FetchError one fetch ends in, and the URL it was made to."""
    with wire_server(script) as server:
        outcome = fetch_many(server, **options)[0]
        url = server.url()
    assert isinstance(outcome, FetchError), outcome
    assert SOURCE in str(outcome) and url in str(outcome)
    return outcome, url


def ok(body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    lines = [b"HTTP/" + version + b" 200 OK", b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n'


# ------------------------------------------------------------- malformed heads


@pytest.mark.parametrize(
    "status_line",
    [
        b"HTTP/1.1 2OO OK",
        b"HTP/1.1 200 OK",
        b"HTTP/2 200 OK",
        b"HTTP/1.1 200OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 099 Too Low",
        b"HTTP/1.1 200 O\x00K",
        b"<html><body>It works!</body></html>",
        b"\xff\xfe\x00H\x00T\x00T\x00P",
    ],
)
def test_a_malformed_status_line_is_refused(status_line: bytes) -> None:
    error, _ = refused([Answer(status_line + b"\r\nContent-Length: 2\r\n\r\nhi")])
    assert "broke the HTTP protocol" in str(error)
    assert "status line" in str(error) or "status code" in str(error)


@pytest.mark.parametrize(
    "line",
    [
        b"Bad Name: x",
        b"X-Colon-Space : x",
        b"X-Null: a\x00b",
        b"X-Control: a\x01b",
        b"No colon at all",
        b"\xe2\x80\x9cQuoted\xe2\x80\x9d: x",
    ],
)
def test_a_malformed_header_line_is_refused(line: bytes) -> None:
    error, _ = refused([Answer(b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n")])
    assert "malformed header line" in str(error)


def test_a_continuation_line_before_any_header_is_refused() -> None:
    error, _ = refused([Answer(b"HTTP/1.1 200 OK\r\n  folded: x\r\nContent-Length: 0\r\n\r\n")])
    assert "continuation line" in str(error)


def test_folded_and_padded_header_values_are_read_as_one_trimmed_value() -> None:
    head = b'HTTP/1.1 200 OK\r\nETag:   "a\r\n\t b"  \r\nContent-Length: 2\r\n\r\nhi'
    result = one([Answer(head)])
    assert isinstance(result, FetchResult) and result.etag == '"a b"'


@pytest.mark.parametrize("pieces", [1, 7])
@pytest.mark.parametrize("size", [MAX_HEAD_BYTES - 2048, MAX_HEAD_BYTES + 10, 4 * MAX_HEAD_BYTES])
def test_a_response_head_over_the_limit_is_refused(size: int, pieces: int) -> None:
    padding = b"".join(b"X-Pad-%05d: %s\r\n" % (n, b"p" * 980) for n in range(size // 1000))
    head = b"HTTP/1.1 200 OK\r\n" + padding + b"Content-Length: 2\r\n\r\nhi"
    outcome = one([Answer(head, pieces=pieces)])
    if len(head) - 2 <= MAX_HEAD_BYTES:
        assert isinstance(outcome, FetchResult) and outcome.content == b"hi"
    else:
        assert isinstance(outcome, FetchError) and "larger than" in str(outcome)


def test_one_header_line_over_the_limit_is_refused() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"
    error, _ = refused([Answer(head, hold=True)])
    assert "larger than" in str(error)


def test_informational_answers_are_skipped() -> None:
    script = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok(b"<rss/>")
    )
    result = one([Answer(script, pieces=3)])
    assert isinstance(result, FetchResult) and result.content == b"<rss/>"


def test_bare_line_feeds_are_accepted_as_line_ends() -> None:
    result = one([Answer(b'HTTP/1.1 200 OK\nETag: "lf"\nContent-Length: 3\n\nabc')])
    assert isinstance(result, FetchResult) and (result.content, result.etag) == (b"abc", '"lf"')


# ---------------------------------------------------------------- body framing


def chunked(body: bytes, rng: random.Random, *, extensions: bool) -> bytes:
    """``body`` in chunks of random sizes, hex in either case, with extensions and a trailer."""
    out, at = [], 0
    while at < len(body):
        size = min(len(body) - at, rng.choice([1, 7, 100, 4096, 30000]))
        digits = (b"%x" if rng.random() < 0.5 else b"%X") % size
        ext = b';name=value;q="a b"' if extensions and rng.random() < 0.7 else b""
        out.append(digits + ext + b"\r\n" + body[at : at + size] + b"\r\n")
        at += size
    out.append(b"0;last\r\nX-Trailer: done\r\n\r\n" if extensions else b"0\r\n\r\n")
    return b"".join(out)


@pytest.mark.parametrize("size", [0, 1, 100, 70_000, 300_000])
@pytest.mark.parametrize("extensions", [False, True])
def test_chunked_bodies_are_read_whole_and_the_connection_kept(size: int, extensions: bool) -> None:
    rng = random.Random(size)
    body = bytes(rng.randrange(256) for _ in range(size))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + chunked(body, rng, extensions=extensions)
    with wire_server([Answer(data, pieces=5)]) as server:
        outcomes = fetch_many(server, 2)
        assert server.connections == 1
    assert [o.content for o in outcomes if isinstance(o, FetchResult)] == [body, body]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", "malformed chunk-size line"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "malformed chunk-size line"),
        (b"3\r\nhello\r\n0\r\n\r\n", "longer than its size line"),
        (b"5;" + b"e" * MAX_CHUNK_LINE + b"\r\nhello\r\n0\r\n\r\n", "chunk-size line longer"),
        (b"10000000000000000\r\nx", "malformed chunk-size line"),
    ],
)
def test_broken_chunked_framing_is_refused(body: bytes, problem: str) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    error, _ = refused([Answer(head + body, close=True)])
    assert problem in str(error)


@pytest.mark.parametrize(
    "body", [b"5\r\nhel", b"5\r\nhello\r\n", b"5\r\nhello\r\n0\r\nX-Trailer: x\r\n", b"5"]
)
def test_a_chunked_body_cut_short_is_an_error(body: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    error, _ = refused([Answer(head + body, close=True)])
    assert "closed the connection inside" in str(error)


@pytest.mark.parametrize(("length", "sent"), [(1000, 400), (10, 0), (300_000, 299_999)])
def test_a_body_shorter_than_its_content_length_is_an_error(length: int, sent: int) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length
    error, _ = refused([Answer(head + b"x" * sent, close=True, pieces=3)])
    assert f"after {sent} of {length} body bytes" in str(error)


@pytest.mark.parametrize(
    "lengths",
    [
        [b"12a"],
        [b"-1"],
        [b"5", b"6"],
        [b"5, 6"],
        [b"1" * 19],
    ],
)
def test_an_invalid_or_conflicting_content_length_is_refused(lengths: list[bytes]) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"Content-Length: %s\r\n" % v for v in lengths)
    error, _ = refused([Answer(head + b"\r\nhello", close=True)])
    assert "Content-Length" in str(error)


def test_a_repeated_equal_content_length_is_accepted() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello"
    result = one([Answer(head)])
    assert isinstance(result, FetchResult) and result.content == b"hello"


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"])
def test_a_transfer_encoding_other_than_chunked_is_refused(coding: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
    error, _ = refused([Answer(head + b"5\r\nhello\r\n0\r\n\r\n", close=True)])
    assert "unsupported Transfer-Encoding" in str(error)


def test_chunked_with_a_content_length_is_read_by_chunks_on_a_connection_not_reused() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    with wire_server([Answer(data)]) as server:
        outcomes = fetch_many(server, 2)
        assert server.connections == 2
    assert [o.content for o in outcomes if isinstance(o, FetchResult)] == [b"hello"] * 2


@pytest.mark.parametrize("size", [0, 5, 200_000])
def test_a_body_without_length_is_read_to_the_close(size: int) -> None:
    body = b"y" * size
    with wire_server([Answer(b"HTTP/1.1 200 OK\r\n\r\n" + body, close=True, pieces=4)]) as server:
        outcomes = fetch_many(server, 2)
        assert server.connections == 2
    assert [o.content for o in outcomes if isinstance(o, FetchResult)] == [body, body]


def test_headers_then_silence_hits_the_read_timeout() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
    started = time.monotonic()
    error, _ = refused([Answer(head, hold=True)], read_timeout=0.3)
    assert isinstance(error, FetchTimeout) and time.monotonic() - started < 5


@pytest.mark.parametrize(
    "cut", [b"HTTP/1.1 200 OK\r\nContent-Le", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"]
)
def test_a_request_stopped_by_its_deadline_leaves_the_next_one_a_fresh_connection(
    cut: bytes,
) -> None:
    """The deadline cancels the request mid-answer; that connection is dropped, not pooled."""
    script = [Answer(cut, hold=True), Answer(ok(b"next"))]
    outcomes: list[FetchResult | FetchError] = []

    async def go(server: WireServer) -> None:
        async with Fetcher(trust_env=False) as fetcher:
            for timeout in (0.3, 5.0):
                try:
                    outcomes.append(
                        await fetcher.fetch_url(server.url(), source_id=SOURCE, timeout=timeout)
                    )
                except FetchError as exc:
                    outcomes.append(exc)

    with wire_server(script) as server:
        asyncio.run(go(server))
        assert server.connections == 2
    assert isinstance(outcomes[0], FetchTimeout) and "deadline" in str(outcomes[0])
    assert isinstance(outcomes[1], FetchResult) and outcomes[1].content == b"next"


# ------------------------------------------------------------------ keep-alive


@pytest.mark.parametrize("count", [2, 5, 20])
def test_one_connection_carries_every_request_while_the_server_keeps_it(count: int) -> None:
    with wire_server([Answer(ok(b"<rss/>")), Answer(NOT_MODIFIED)]) as server:
        outcomes = fetch_many(server, count)
        assert server.connections == 1 and len(server.requests) == count
    assert [o.status for o in outcomes if isinstance(o, FetchResult)] == [200] + [304] * (count - 1)


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"x", b"Connection: close"),
        ok(b"x", b"Connection: keep-alive, Close"),
        ok(b"x", version=b"1.0"),
    ],
)
def test_a_connection_the_server_means_to_close_is_not_reused(answer: bytes) -> None:
    with wire_server([Answer(answer)]) as server:
        outcomes = fetch_many(server, 3)
        assert server.connections == 3
    assert all(isinstance(o, FetchResult) and o.content == b"x" for o in outcomes)


def test_bytes_after_the_end_of_an_answer_are_never_read_as_the_next_one() -> None:
    garbage = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
    script = [Answer(NOT_MODIFIED + garbage), Answer(ok(b"good"))]
    with wire_server(script) as server:
        outcomes = fetch_many(server, 2)
        assert server.connections == 2
    assert [o.status for o in outcomes if isinstance(o, FetchResult)] == [304, 200]
    assert isinstance(outcomes[1], FetchResult) and outcomes[1].content == b"good"


def test_bytes_arriving_on_an_idle_connection_retire_it() -> None:
    garbage = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
    script = [Answer(NOT_MODIFIED, after=garbage), Answer(ok(b"good"))]
    with wire_server(script) as server:
        outcomes = fetch_many(server, 2, pause=0.3)
        assert server.connections == 2
    assert isinstance(outcomes[1], FetchResult) and outcomes[1].content == b"good"


def test_a_connection_closed_while_idle_is_replaced() -> None:
    with wire_server([Answer(ok(b"one"), close=True), Answer(ok(b"two"))]) as server:
        outcomes = fetch_many(server, 2, pause=0.2)
        assert server.connections == 2
    assert [o.content for o in outcomes if isinstance(o, FetchResult)] == [b"one", b"two"]


def test_a_request_the_server_drops_on_a_reused_connection_is_sent_once_more() -> None:
    """The race of keep-alive: the server closed its side as our request left."""
    script = [Answer(ok(b"one")), Answer(b"", close=True), Answer(ok(b"three"))]
    with wire_server(script) as server:
        outcomes = fetch_many(server, 2)
        assert server.connections == 2 and len(server.requests) == 3
    assert [o.content for o in outcomes if isinstance(o, FetchResult)] == [b"one", b"three"]


def test_a_new_connection_closed_without_an_answer_is_an_error() -> None:
    error, _ = refused([Answer(b"", close=True)])
    assert "without answering" in str(error)


@pytest.mark.parametrize("where", [b"HTTP/1.1 200 OK\r\nContent-Le", b"HTTP/1.1 2"])
def test_a_connection_closed_inside_the_head_is_an_error(where: bytes) -> None:
    error, _ = refused([Answer(where, close=True)])
    assert "inside the head" in str(error)


# ------------------------------------------------------------- what is sent


@pytest.mark.parametrize(
    "etag", ['"a"\r\nX-Injected: 1', '"a"\nX-Injected: 1', '"a"\rX', '"a\x00"']
)
def test_a_validator_with_a_line_break_is_never_sent(etag: str) -> None:
    async def go(server: WireServer) -> None:
        async with Fetcher(trust_env=False) as fetcher:
            await fetcher.fetch_url(server.url(), source_id=SOURCE, etag=etag)

    with wire_server([Answer(ok(b"x"))]) as server:
        with pytest.raises(FetchError) as caught:
            asyncio.run(go(server))
        assert server.requests == []
    assert SOURCE in str(caught.value) and "CR, LF or NUL" in str(caught.value)


def test_the_request_head_is_plain_http_1_1() -> None:
    with wire_server([Answer(ok(b"x"))]) as server:
        fetch_many(server)
        (head,) = server.requests
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /feed.xml HTTP/1.1"
    names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
    assert names[0] == b"host" and len(names) == len(set(names))
    assert {b"user-agent", b"accept", b"accept-encoding", b"connection"} <= set(names)


# ------------------------------------------------------------------------ TLS


def tls_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


def test_https_is_verified_and_kept_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    context, cert = tls_server_context(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as httpx's context reads it
    body = b"<rss>" + b"k" * 100_000 + b"</rss>"
    with wire_server([Answer(ok(body)), Answer(NOT_MODIFIED)], tls=context) as server:
        outcomes = fetch_many(server, 3, trust_env=True)
        assert server.connections == 1
    assert [o.status for o in outcomes if isinstance(o, FetchResult)] == [200, 304, 304]
    assert isinstance(outcomes[0], FetchResult) and outcomes[0].content == body


def test_an_untrusted_certificate_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, _ = tls_server_context(tmp_path)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with wire_server([Answer(ok(b"x"))], tls=context) as server:
        outcome = fetch_many(server, trust_env=True)[0]
        assert server.requests == []
    assert isinstance(outcome, FetchError) and "CERTIFICATE_VERIFY_FAILED" in str(outcome)
