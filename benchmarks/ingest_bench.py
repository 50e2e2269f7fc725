"""One measured run, in a fresh process so its peak memory and CPU are its own.

``python -m benchmarks.ingest_bench ours|reader|floor ...`` prints one JSON
object: wall and CPU seconds (this process plus its reaped children, so our
parsing pool counts), peak RSS in MB, entries and database size. The runner
(``python -m benchmarks``) starts one such process per row.

Imports beyond the few below go inside the functions: our parse workers
re-import this module as ``__mp_main__`` (multiprocessing does so for the
main script under the forkserver start method), so what it imports at its
top is measured in every worker. ``aggregator fetch``'s workers re-import
only the console script's two lines; asyncio, json and argparse here added
~2.5 MB of PSS per worker that the real command does not have.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any


def _usage() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    peak_mb = max(me.ru_maxrss, kids.ru_maxrss) / 1024
    return cpu, peak_mb


def _size(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return total / (1024 * 1024)


def _own_cpu(pid: int) -> float:
    """CPU seconds of one live process itself (not its reaped children), from /proc."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _tracker_pid() -> list[int]:
    """multiprocessing's resource tracker, a child of this process, when one was started.

    The parse pool's own small one (a ``/bin/sh`` loop, aggregator/semtracker.py)
    where the code under test has it, else the standard Python one: the same role.
    """
    from multiprocessing import resource_tracker

    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    return [pid] if pid else []


def _roles(split: dict[int, float], forkserver: list[int], tracker: list[int]) -> dict[str, float]:
    """Per-process PSS at the peak, named: main, forkserver, tracker, workers (summed)."""
    named = {"main": 0.0, "forkserver": 0.0, "tracker": 0.0, "workers": 0.0}
    for pid, mb in split.items():
        if pid == os.getpid():
            named["main"] += mb
        elif pid in forkserver:
            named["forkserver"] += mb
        elif pid in tracker:
            named["tracker"] += mb
        else:
            named["workers"] += mb
    return {k: round(v, 1) for k, v in named.items()}


def _worker_usage(pids: list[int]) -> tuple[float, float]:
    """CPU seconds and summed peak RSS (MB) of pool processes, read from /proc before they exit.

    The pool's workers are children of the forkserver, not of this process,
    so RUSAGE_CHILDREN never sees them.
    """
    tick = os.sysconf("SC_CLK_TCK")
    cpu = 0.0
    peak = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) / 1024
    return cpu, peak


class TreeMemory:
    """Peak memory of this process and all its descendants, summed at the same instant.

    A background thread samples ``/proc/<pid>/smaps_rollup`` every 50 ms for the
    whole process tree (our pool workers are grandchildren, under the
    forkserver). PSS splits shared pages among the processes sharing them, so
    the sum is what the tree occupies; the sum of each process's own peak RSS
    would count the interpreter and the libraries the workers share once per
    process. Also reports the peak of summed RSS, for comparison.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_pss_mb = 0.0
        self.peak_rss_mb = 0.0
        # PSS (MB) per process at the tree's peak, by pid; roles are named afterwards.
        self.peak_split: dict[int, float] = {}
        # CPU seconds of the sampling thread itself (in this process's CPU):
        # walking every process's page tables is system time, ~7% of a core.
        self.cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
        self.cpu = time.thread_time()

    @staticmethod
    def _tree(root: int) -> list[int]:
        pids, todo = [], [root]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in task.read_text().split())
        return pids

    def sample(self) -> None:
        pss = rss = 0
        split: dict[int, float] = {}
        for pid in self._tree(os.getpid()):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        split[pid] = int(line.split()[1]) / 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        if pss / 1024 > self.peak_pss_mb:
            self.peak_split = split
        self.peak_pss_mb = max(self.peak_pss_mb, pss / 1024)
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)


def _forkserver_pid() -> list[int]:
    """The forkserver (it imports the parsing code once for all workers) counts too."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return [pid] if pid else []


def run_ours(base: str, n: int, db: Path, profile: Path | None = None) -> dict[str, Any]:
    import asyncio
    import inspect

    from aggregator.config import parse_config
    from aggregator.ingest import Ingestor, make_pool
    from aggregator.store import Store

    lines = "".join(f"  - {{id: f{i:04d}, url: '{base}feed-{i:04d}.xml'}}\n" for i in range(n))
    config = parse_config(
        f"storage: {{url: 'sqlite:///{db}'}}\ndefaults: {{interval: 1h, timeout: 60s}}\n"
        "sources:\n" + lines,
        path=db.parent / "feeds.yaml",
    )
    # The commands read feeds.yaml and drop its text once parsed; this text
    # (~0.6 MB at 10,000 sources) would otherwise stay for the whole run.
    del lines
    # As the commands open it: a fresh database is migrated in a child process
    # (same_store.py also runs this with code from before that option).
    isolated = "isolated_migration" in inspect.signature(Store.open).parameters
    store = (
        Store.open(config.database_url, isolated_migration=True)
        if isolated
        else Store.open(config.database_url)
    )
    started = time.perf_counter()
    cpu0, _ = _usage()
    main0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    pool = make_pool()  # what Ingestor makes itself for this many sources
    profiler = None
    if profile is not None:
        import cProfile

        # CPU of this thread only: waits (pipe writes to busy workers, epoll) are not work.
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
    try:
        with TreeMemory() as memory:
            stats = asyncio.run(Ingestor(config, store, pool=pool).run())
        wall = time.perf_counter() - started
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        # ParsePool wraps a ProcessPoolExecutor (renewed when one breaks).
        executor = getattr(pool, "_executor", pool)
        processes = list(getattr(executor, "_processes", None) or {})
        workers_cpu, workers_peak = _worker_usage([*processes, *_forkserver_pid()])
        split_cpu = {
            "main": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - main0,
            "forkserver": sum(_own_cpu(p) for p in _forkserver_pid()),
            "workers": sum(_own_cpu(p) for p in processes),
            "tracker": sum(_own_cpu(p) for p in _tracker_pid()),
            # Part of "main": the PSS sampler's thread, which the real command does not have.
            "sampler_in_main": memory.cpu,
        }
        split_pss = _roles(memory.peak_split, _forkserver_pid(), _tracker_pid())
    finally:
        pool.shutdown()
    cpu, peak = _usage()
    cpu += workers_cpu
    entries = store.count_items()
    store.close()
    return {
        "wall": wall,
        "cpu": cpu - cpu0,
        "peak_mb": memory.peak_pss_mb,
        "peak_rss_tree_mb": memory.peak_rss_mb,
        # Each process at its own peak at once: an upper bound.
        "peak_rss_sum_mb": peak + workers_peak,
        "entries": entries,
        "new": sum(s.new + s.duplicates for s in stats),
        "errors": sum(1 for s in stats if s.error),
        "db_mb": _size(db),
        "split_cpu": {k: round(v, 2) for k, v in split_cpu.items()},
        "split_pss_mb": split_pss,
    }


def run_reader(base: str, n: int, db: Path, workers: int) -> dict[str, Any]:
    from reader import make_reader

    reader = make_reader(str(db))
    if not list(reader.get_feeds(limit=1)):
        for i in range(n):
            reader.add_feed(f"{base}feed-{i:04d}.xml")
    started = time.perf_counter()
    cpu0, _ = _usage()
    # scheduled=False: update every feed now, as our pass does (not only the due ones).
    with TreeMemory() as memory:
        reader.update_feeds(workers=workers, scheduled=False)
    wall = time.perf_counter() - started
    cpu, peak = _usage()
    entries = reader.get_entry_counts().total
    reader.close()
    return {
        "wall": wall,
        "cpu": cpu - cpu0,
        "peak_mb": memory.peak_pss_mb,
        "peak_rss_tree_mb": memory.peak_rss_mb,
        "peak_rss_sum_mb": peak,
        "entries": entries,
        "db_mb": _size(db),
    }


def run_floor(directory: Path, n: int, fast: bool) -> dict[str, Any]:
    """feedparser alone over the feeds' bytes: defaults, or the call parse_feed makes.

    "As we call it" is feedparser with the arguments and the base-URI cache
    of :mod:`aggregator.sources.feed`: no sanitizer, no relative-URI pass, the
    document URL and content type as response headers.
    """
    import feedparser

    blobs = [(directory / f"feed-{i:04d}.xml").read_bytes() for i in range(n)]
    calls: list[dict[str, Any]] = [{} for _ in blobs]
    if fast:
        import aggregator.sources.feed  # noqa: F401  (installs the base-URI cache)

        calls = [
            {
                "sanitize_html": False,
                "resolve_relative_uris": False,
                "response_headers": {
                    "content-location": f"http://127.0.0.1/feed-{i:04d}.xml",
                    "content-type": "application/xml",
                },
            }
            for i in range(n)
        ]
    started = time.perf_counter()
    cpu0 = time.process_time()
    entries = sum(
        len(feedparser.parse(b, **kw).entries) for b, kw in zip(blobs, calls, strict=True)
    )
    cpu = time.process_time() - cpu0
    return {"wall": time.perf_counter() - started, "cpu": cpu, "entries": entries}


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["ours", "reader", "floor", "floor-fast"])
    parser.add_argument("--base", default="")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="ours: cProfile the main process to a file")
    args = parser.parse_args()
    if args.what == "ours":
        result = run_ours(args.base, args.n, args.db, args.profile)
    elif args.what == "reader":
        result = run_reader(args.base, args.n, args.db, args.workers)
    else:
        result = run_floor(args.dir, args.n, args.what == "floor-fast")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
