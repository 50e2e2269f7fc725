"""Where the wall time of one cold ingest goes: a per-thread CPU timeline.

``python -m benchmarks.timeline --base URL --n 500 --db /tmp/t.db [--bin 0.25] [--json out.json]``

Runs ``ingest_bench ours`` in this process (a fresh database) while a thread
samples, every 50 ms, each thread of this process and each child process
(forkserver, parse workers): CPU used, and time spent runnable but waiting
for a CPU (``/proc/.../schedstat``). What is neither was blocked: a worker
waiting for a task or for its result to be read, the store thread for work,
the event loop for the network. On a shared machine the wait for a CPU is
the other jobs; the blocked time is the pipeline's own.

Also counted, per sample: sources being fetched, in the parse pool (queued
or running) and waiting for or in a store write, and the bytes held in the
byte budget. The counts come from wrapping ``Fetcher.fetch``,
``Ingestor._extract`` and ``Ingestor._write`` for this run only. The table
gives, per bin, "cpu%/wait%" of each busy thread; the summary gives each
thread's CPU, wait and blocked seconds and the store's batches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

INTERVAL = 0.05


def _schedstat(path: str) -> tuple[float, float] | None:
    """(CPU seconds, seconds runnable but waiting for a CPU) of one task."""
    try:
        ran, waited, _ = Path(path).read_text().split()
    except (OSError, ValueError):
        return None
    return int(ran) / 1e9, int(waited) / 1e9


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


class Sampler:
    """Samples this process's threads, its descendants and the stage counters."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self.names: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.budget: Callable[[], int] = lambda: 0
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2 * INTERVAL)
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            row: dict[str, Any] = {}
            for thread in threading.enumerate():
                if thread.native_id is not None:
                    self.names[f"t{thread.native_id}"] = thread.name
            for task in Path(f"/proc/{me}/task").iterdir():
                stat = _schedstat(f"{task}/schedstat")
                if stat is not None:
                    row[f"t{task.name}"] = stat
            todo, seen = _children(me), set()
            while todo:
                pid = todo.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                stat = _schedstat(f"/proc/{pid}/schedstat")
                if stat is not None:
                    row[f"p{pid}"] = stat
                todo += _children(pid)
            counts = self.counts.copy()  # one C call: safe while the loop updates it
            counts["held_kb"] = self.budget() // 1024
            row["counts"] = counts
            self.samples.append((time.perf_counter() - self.started, row))
            self._stop.wait(INTERVAL)


def _count_calls(owner: Any, name: str, counts: dict[str, int], key: str) -> None:
    """Count the calls of coroutine method ``owner.name`` under way and finished."""
    original = getattr(owner, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counts[key] = counts.get(key, 0) + 1
        try:
            result: Awaitable[Any] = original(*args, **kwargs)
            return await result
        finally:
            counts[key] -= 1
            counts[key + "_done"] = counts.get(key + "_done", 0) + 1

    setattr(owner, name, counted)


Batch = tuple[float, float, float, int]  # started at, wall s, CPU s, writes


def _time_batches(store_class: Any, batches: list[Batch], t0: float) -> None:
    original = store_class.save_batch

    def timed(self: Any, writes: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(self, writes)
        finally:
            batches.append(
                (started - t0, time.perf_counter() - started, time.thread_time() - cpu, len(writes))
            )

    store_class.save_batch = timed


def record(base: str, n: int, db: Path) -> dict[str, Any]:
    """One cold ``ingest_bench ours`` run with the sampler on; the raw timeline."""
    from aggregator import ingest
    from aggregator.fetch import Fetcher
    from aggregator.store import Store
    from benchmarks.ingest_bench import run_ours

    for old in db.parent.glob(db.name + "*"):
        old.unlink()
    batches: list[Batch] = []
    with Sampler() as sampler:
        _count_calls(Fetcher, "fetch", sampler.counts, "fetch")
        _count_calls(ingest.Ingestor, "_extract", sampler.counts, "parse")
        _count_calls(ingest.Ingestor, "_write", sampler.counts, "write")
        _time_batches(Store, batches, sampler.started)
        made = ingest.Ingestor.__init__

        def remember(self: Any, *args: Any, **kwargs: Any) -> None:
            made(self, *args, **kwargs)
            sampler.budget = lambda: self.last_budget.held if self.last_budget else 0

        ingest.Ingestor.__init__ = remember  # type: ignore[method-assign]
        result = run_ours(base, n, db)
    return {
        "result": result,
        "samples": sampler.samples,
        "names": sampler.names,
        "batches": batches,
    }


def _label(key: str, names: dict[str, str]) -> str:
    if key.startswith("t"):
        return names.get(key, key)[:10]
    return key


def report(timeline: dict[str, Any], width: float) -> None:
    samples: list[tuple[float, dict[str, Any]]] = timeline["samples"]
    names: dict[str, str] = timeline["names"]
    first: dict[str, tuple[float, float]] = {}
    last: dict[str, tuple[float, float]] = {}
    seen_at: dict[str, tuple[float, float]] = {}
    for moment, row in samples:
        for key, value in row.items():
            if key == "counts":
                continue
            first.setdefault(key, value)
            last[key] = value
            seen_at[key] = (seen_at.get(key, (moment, moment))[0], moment)
    keys = [
        k for k in first if last[k][0] - first[k][0] >= 0.1 and "sampler" not in names.get(k, "")
    ]
    result = timeline["result"]
    print(
        f"wall {result['wall']:.2f} s, CPU {result['cpu']:.2f} s, "
        f"peak PSS {result['peak_mb']:.0f} MB"
    )
    print(f"{'thread/process':>16} {'CPU s':>7} {'wait s':>7} {'blocked s':>9}")
    for key in keys:
        cpu = last[key][0] - first[key][0]
        wait = last[key][1] - first[key][1]
        span = seen_at[key][1] - seen_at[key][0]
        print(f"{_label(key, names):>16} {cpu:7.2f} {wait:7.2f} {span - cpu - wait:9.2f}")
    batches = timeline["batches"]
    if batches:
        busy = sum(b[1] for b in batches)
        gaps = sum(max(0.0, b[0] - (a[0] + a[1])) for a, b in itertools.pairwise(batches))
        writes = sum(b[3] for b in batches)
        print(
            f"store: {len(batches)} batches for {writes} writes, busy {busy:.2f} s "
            f"(CPU {sum(b[2] for b in batches):.2f} s), idle between batches {gaps:.2f} s"
        )
    print()
    print(
        f"{'t s':>6} "
        + " ".join(f"{_label(k, names):>10}" for k in keys)
        + "  fetch parse write  held"
    )
    rows: dict[int, dict[str, Any]] = {}
    for moment, row in samples:
        rows[math.floor(moment / width)] = row
    previous: dict[str, Any] | None = None
    for index in sorted(rows):
        row = rows[index]
        if previous is not None:
            cells = []
            for key in keys:
                now, then = row.get(key), previous.get(key)
                if now is None or then is None:
                    cells.append(f"{'':>10}")
                    continue
                cpu = (now[0] - then[0]) / width * 100
                wait = (now[1] - then[1]) / width * 100
                cells.append(f"{cpu:4.0f}/{wait:<5.0f}")
            counts = row["counts"]
            print(
                f"{index * width:6.2f} "
                + " ".join(cells)
                + f"  {counts.get('fetch', 0):5d} {counts.get('parse', 0):5d}"
                + f" {counts.get('write', 0):5d} {counts.get('held_kb', 0):5d}k"
            )
        previous = {**(previous or {}), **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="where the corpus is served")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (replaced)")
    parser.add_argument("--bin", type=float, default=0.25, help="seconds per table row")
    parser.add_argument("--json", type=Path, help="also keep the raw timeline here")
    args = parser.parse_args()
    timeline = record(args.base, args.n, args.db)
    if args.json:
        args.json.write_text(json.dumps(timeline))
    report(timeline, args.bin)


if __name__ == "__main__":
    main()
