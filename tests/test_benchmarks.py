"""The benchmark harness works (no timings asserted: performance lives in benchmarks/)."""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import feedparser
import pytest

from benchmarks.__main__ import _publish, _render, _send, _summary, print_table
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


def test_timeline_accounts_for_every_source_of_a_pass(tmp_path: Path) -> None:
    # In a child process: the timeline wraps the ingest classes for its run.
    feeds = tmp_path / "feeds"
    generate(feeds, 12)
    raw = tmp_path / "timeline.json"
    with python_server(feeds) as base:
        command = [sys.executable, "-m", "benchmarks.timeline", "--base", base, "--n", "12"]
        command += ["--db", str(tmp_path / "t.db"), "--json", str(raw), "--bin", "0.1"]
        shown = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    timeline = json.loads(raw.read_text())
    assert timeline["result"]["errors"] == 0 and timeline["result"]["entries"] > 0
    final = timeline["samples"][-1][1]["counts"]
    assert (final["fetch_done"], final["parse_done"], final["write_done"]) == (12, 12, 12)
    assert sum(batch[3] for batch in timeline["batches"]) == 12
    assert any(key.startswith("p") for key in timeline["samples"][-1][1])  # the pool's processes
    assert "blocked s" in shown and "store:" in shown


def test_other_stages_output_is_understood() -> None:
    publish = _publish(
        "publish   100 of 100000 items (sqlite): median 28.6 ms written, 20.1 ms unchanged\n"
        "publish  1000 of 100000 items (sqlite): median 197.3 ms written, 214.5 ms unchanged\n"
    )
    assert [f.value for f in publish] == [28.6, 20.1, 197.3]
    assert publish[0].met is True
    render = _render("render_digest, 30 items, 100 runs: median 7.77 ms (min 4.99, p90 8.09)")
    assert render[0].value == 7.77
    output = (
        "run: sent 2000 (ledger rows sent: 2000) in 2.70 s, sender 0.52 ms CPU/message\n"
        "sent 2000 messages (47 KB HTML each) in 2.61 s: 766 messages/s (SQLite ledger, "
        "batch 50, loopback smtp-sink sink; fastest of 3)\n"
        "CPU per message: sender 0.48 ms median, 0.44 ms min of 3 runs "
        "(smtp-sink sink not counted: 0.41 ms median)\n"
    )
    rate, cpu = _send(output)
    assert (rate.value, rate.met, cpu.value, cpu.met) == (766, False, 0.48, True)
    assert "min 0.44 ms of 3" in cpu.note and "smtp-sink" in cpu.note
    (signed,) = _send(output.replace("0.48 ms median", "1.31 ms median"), signed=True)
    assert signed.value == 1.31 and "DKIM" in signed.label
    with pytest.raises(ValueError, match="unexpected send output"):
        _send("sent 2000 messages in 17.72 s: 113 messages/s")


def test_repeated_runs_report_median_and_min() -> None:
    runs = [
        {"wall": w, "cpu": c, "server": "nginx"} for w, c in ((3.0, 9.0), (1.0, 7.0), (2.0, 8.5))
    ]
    summary = _summary(runs)
    assert (summary["wall"], summary["cpu"]) == (2.0, 8.5)
    assert summary["min"] == {"wall": 1.0, "cpu": 7.0}
    assert summary["runs"] == runs


def test_worker_stages_split_the_pools_job(tmp_path: Path) -> None:
    from aggregator import extract as extract_module
    from benchmarks.stages import load, worker

    generate(tmp_path, 3)
    pairs, config = load(tmp_path)
    before = extract_module.pack_values

    steps = worker(pairs, config.sections)  # type: ignore[attr-defined]

    assert set(steps) == {"decode", "parse", "listing hash", "normalize", "pack", "total"}
    assert all(seconds >= 0 for seconds in steps.values())
    assert steps["total"] >= sum(v for k, v in steps.items() if k != "total") > 0
    assert extract_module.pack_values is before  # the timers are gone again


def test_scale_row_compares_the_big_run_with_the_runs_around_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The 10,000-feed ratios are side by side: each big run's reference is the
    mean of the small runs just before and after it, not the median measured
    minutes earlier; the row gives the median of those ratios."""

    def run(wall: float, cpu: float, peak: float = 100.0) -> dict[str, Any]:
        return {"wall": wall, "cpu": cpu, "peak_mb": peak, "entries": 1000, "db_mb": 1.0}

    results: dict[str, Any] = {
        "n": 500,
        "size_mb": 46.9,
        "server": "nginx",
        "runs": 1,
        "reader_workers": (4,),
        "reader_4": {"cold": run(16, 19), "warm": run(1, 1)},
        "reader_best": {"workers": 4, "cold": run(16, 19), "warm": run(1, 1)},
        # A quick machine for the median: against it the big run looks 1.5x per feed.
        "ours_cold": run(4.0, 8.0),
        "ours_warm": run(0.1, 0.1),
        "floor": run(6, 6),
        "floor_fast": run(5, 5),
    }
    scaled = {
        "n": 10_000,
        "small": 500,
        # small, big, small, big, small, big, small: each big run against its neighbours.
        "smalls": [run(5.5, 9.0), run(6.5, 11.0), run(4.0, 8.0), run(4.0, 8.0)],
        "bigs": [run(120.0, 200.0, 110.0), run(130.0, 200.0, 110.0), run(96.0, 160.0, 125.0)],
    }
    print_table(results, scaled, [])
    out = capsys.readouterr().out
    lines = out.splitlines()
    row = next(line for line in lines if "time per feed (wall) 10,000" in line)
    # 120 / 10,000 against (5.5 + 6.5) / 2 / 500: 1.00x; 130 against 5.25: 1.24x;
    # 96 against 4.0: 1.20x. The median, 1.20x, is met (shown to three
    # decimals, since two would print the limit itself).
    assert "1.200x" in row and "met" in row and "NOT" not in row
    assert "1.000x, 1.200x, 1.238x" in lines[lines.index(row) + 1]
    # Against the quick median above (4.0 s) instead, the big runs' median looks 1.50x.
    assert "1.50x" in next(line for line in lines if "median above" in line)
    peak = next(line for line in lines if "peak memory (PSS) 10,000" in line)
    assert "1.10x" in peak and "NOT" not in peak
    assert "1.10x, 1.10x, 1.25x" in lines[lines.index(peak) + 1]
    assert sum("ours, cold ingest (10,000 feeds), run" in line for line in lines) == 3
    assert "parse workers' CPU" not in out  # not measured in these runs

    # With each process's CPU: the workers' CPU per feed, big run against its
    # neighbours, is listed (the same work at any size: the machine's speed).
    for m, workers in zip(
        [*scaled["smalls"], *scaled["bigs"]], [4, 4, 4, 4, 80, 96, 88], strict=True
    ):
        m["split_cpu"] = {"workers": float(workers)}
    print_table(results, scaled, [])
    speed = next(x for x in capsys.readouterr().out.splitlines() if "parse workers' CPU" in x)
    assert "1.00x, 1.10x, 1.20x" in speed
