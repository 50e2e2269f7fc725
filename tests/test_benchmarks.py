"""The benchmark harness works (no timings asserted: performance lives in benchmarks/)."""

from __future__ import annotations

import gzip
import http.client
from pathlib import Path

import feedparser

from benchmarks.__main__ import _publish, _render, _send
from benchmarks.generate import generate
from benchmarks.ingest_bench import TreeMemory, run_floor
from benchmarks.server import python_server, serve


def test_generator_is_deterministic_and_within_the_issue_bounds(tmp_path: Path) -> None:
    names = generate(tmp_path / "a", 6)
    again = generate(tmp_path / "b", 6)
    assert names == again
    kinds = set()
    for name in names:
        data = (tmp_path / "a" / name).read_bytes()
        assert data == (tmp_path / "b" / name).read_bytes()
        assert 15_000 <= len(data) <= 200_000
        parsed = feedparser.parse(data)
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert 20 <= len(parsed.entries) <= 60
        kinds.add(parsed.version)
    assert {"rss20", "atom10"} <= kinds
    text = b"".join((tmp_path / "a" / n).read_bytes() for n in names).decode()
    assert "영화" in text and "festival" in text


def _get(port: int, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers)
    return conn.getresponse()


def _check_server(base: str, name: str, body: bytes) -> None:
    port = int(base.rsplit(":", 1)[1].strip("/"))
    first = _get(port, f"/{name}", {"Accept-Encoding": "gzip"})
    payload = first.read()
    assert first.status == 200
    assert first.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(payload) == body
    etag, modified = first.getheader("ETag"), first.getheader("Last-Modified")
    assert etag and modified
    again = _get(port, f"/{name}", {"If-None-Match": etag})
    again.read()
    assert again.status == 304


def test_servers_answer_with_validators_gzip_and_304(tmp_path: Path) -> None:
    names = generate(tmp_path, 2)
    body = (tmp_path / names[0]).read_bytes()
    with serve(tmp_path) as (base, _):  # nginx when installed
        _check_server(base, names[0], body)
    with python_server(tmp_path) as base:  # the fallback
        _check_server(base, names[0], body)


def test_floor_and_memory_sampler(tmp_path: Path) -> None:
    generate(tmp_path, 2)
    with TreeMemory() as memory:
        result = run_floor(tmp_path, 2, fast=True)
    assert result["entries"] >= 40 and result["cpu"] > 0
    assert memory.peak_pss_mb > 0


def test_other_stages_output_is_understood() -> None:
    publish = _publish(
        "publish   100 of 100000 items (sqlite): median 28.6 ms written, 20.1 ms unchanged\n"
        "publish  1000 of 100000 items (sqlite): median 197.3 ms written, 214.5 ms unchanged\n"
    )
    assert [f.value for f in publish] == [28.6, 20.1, 197.3]
    assert publish[0].met is True
    render = _render("render_digest, 30 items, 100 runs: median 7.77 ms (min 4.99, p90 8.09)")
    assert render[0].value == 7.77
    send = _send(
        "sent 2000 messages (47 KB HTML each, ledger rows sent: 2000) in 17.72 s: 113 messages/s"
    )
    assert send[0].value == 113 and send[0].met is False
