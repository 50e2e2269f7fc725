"""Per-stage CPU of a worker's job (parse, normalize) over a corpus, in process.

The parsing pool's workers spend their CPU in ``parse`` and ``normalize``;
timing them in one process, without HTTP, the pool or the store, isolates
what a change to those stages saves::

    python -m benchmarks.stages benchmarks/.data/feeds-500              # CPU per stage
    python -m benchmarks.stages DIR --profile normalize --top 30        # where it goes
    python -m benchmarks.stages DIR --breakdown                         # CPU per callee
    python -m benchmarks.stages DIR --digest out.txt                    # fidelity
    python -m benchmarks.stages DIR --worker                            # the pool's whole job

``--worker`` runs what a parse worker runs per source (``extract_packed``)
on gzip bodies, as the benchmark's nginx sends them (level 1), and splits its
CPU by step: decode, parse, normalize, listing hash, pack. It only wraps the
functions ``aggregator.extract`` calls, so it times any checkout (run this
file with ``PYTHONPATH`` set to it) without depending on its internals.

``--digest`` writes one line per parsed entry and per item (the ``repr`` of
the frozen dataclass, every field, hashed) and prints one hash over them all:
run it with ``PYTHONPATH`` set to the code before a change (``git archive``)
and after, and the two must be equal. ``now`` is fixed so runs compare.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import time
from datetime import UTC, datetime
from pathlib import Path

from aggregator.config import parse_config
from aggregator.ingest import newest_entries, normalize_entries
from aggregator.models import FetchResult, ParsedFeed, Source
from aggregator.sources import parse

# Fixed so that two runs (before and after a change) produce comparable items.
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def load(corpus: Path) -> tuple[list[tuple[Source, FetchResult]], object]:
    """One (source, response) per ``feed-NNNN.xml`` of ``corpus``, as ingest would see it."""
    files = sorted(corpus.glob("feed-*.xml"))
    lines = "".join(
        f"  - {{id: f{i:04d}, url: 'http://127.0.0.1:1/{path.name}'}}\n"
        for i, path in enumerate(files)
    )
    config = parse_config(
        "storage: {url: 'sqlite:////tmp/stages-unused.db'}\nsources:\n" + lines,
        path=Path("/tmp/stages-feeds.yaml"),
    )
    pairs = [
        (
            source,
            FetchResult(
                source_id=source.id,
                url=source.url,
                status=200,
                content=path.read_bytes(),
                content_type="application/rss+xml",
                fetched_at=NOW,
            ),
        )
        for source, path in zip(config.sources, files, strict=True)
    ]
    return pairs, config


# What normalize() and parse_feed() call directly, for --breakdown. Each is
# timed only when no other one on the list is running, so nested calls
# (clean_text inside sanitized_text) count for the outer one and the rows add up.
NORMALIZE_PARTS = (
    "bounded_html", "sanitized_text", "trim_cut_html", "trim_cut_text", "clean_plain",
    "clean_text", "_http_url", "canonical_url", "fingerprint", "content_hash",
    "item_language", "excerpt", "cut_title", "match_section", "_date", "_check_link_size",
)  # fmt: skip
PARSE_PARTS = (
    ("aggregator.sources.feed", ("korean_as_utf8", "damaged_utf8_as_utf8", "_entry")),
    ("aggregator.sources.feed", ("neutralize_char_ref_bytes",)),
    ("aggregator.sources.fastfeed", ("_encoding_ok", "document_base")),
)


REST = {
    "parse": "lxml's fromstring, byte scans, the timers",
    "normalize": "normalize's own lines, Item(), the timers",
}


def _instrument() -> dict[str, float]:
    """Wrap the stage functions of --breakdown; returns the CPU seconds per name."""
    import importlib

    spent: dict[str, float] = {}
    depth = [0]

    def wrap(module: object, name: str, label: str) -> None:
        function = getattr(module, name)

        def timed(*args: object, **kwargs: object) -> object:
            if depth[0]:
                return function(*args, **kwargs)
            depth[0] += 1
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - start
                depth[0] -= 1

        setattr(module, name, timed)

    normalize_module = importlib.import_module("aggregator.normalize")
    for name in NORMALIZE_PARTS:
        wrap(normalize_module, name, f"normalize: {name}")
    for module_name, names in PARSE_PARTS:
        module = importlib.import_module(module_name)
        for name in names:
            wrap(module, name, f"parse: {name}")
    reader = importlib.import_module("aggregator.sources.fastfeed")._Reader
    for name in ("rss", "atom"):
        wrap(reader, name, "parse: fastfeed walk (_Reader.rss/atom)")
    return spent


# What extract_packed calls, by step; names missing from a checkout are skipped.
WORKER_STEPS = (
    ("aggregator.extract", "decoded", "decode"),
    ("aggregator.sources", "parse", "parse"),
    ("aggregator.dedupe", "listing_hash", "listing hash"),
    ("aggregator.extract", "normalize_entries", "normalize"),
    ("aggregator.extract", "normalize_entries_values", "normalize"),
    ("aggregator.extract", "pack", "pack"),
    ("aggregator.extract", "pack_values", "pack"),
)


def worker(pairs: list[tuple[Source, FetchResult]], sections: object) -> dict[str, float]:
    """CPU seconds of ``extract_packed`` over ``pairs`` (gzip bodies), in total and per step."""
    import gzip
    import importlib
    from dataclasses import replace

    spent: dict[str, float] = {}
    originals: list[tuple[object, str, object]] = []

    def wrap(module: object, name: str, label: str) -> None:
        function = getattr(module, name)
        originals.append((module, name, function))

        def timed(*args: object, **kwargs: object) -> object:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - start

        setattr(module, name, timed)

    extract_packed = importlib.import_module("aggregator.extract").extract_packed
    zipped = [
        (
            source,
            replace(
                result,
                content=gzip.compress(result.content or b"", 1),
                content_encoding="gzip",
                max_bytes=64 * 2**20,
            ),
        )
        for source, result in pairs
    ]
    for module_name, name, label in WORKER_STEPS:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            wrap(module, name, label)
    try:
        start = time.process_time()
        for source, result in zipped:
            extract_packed(source, result, sections, NOW)
        spent["total"] = time.process_time() - start
    finally:
        for module, name, function in originals:
            setattr(module, name, function)
    return spent


def main() -> None:
    """Time (or profile, or digest) parse and normalize over a corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--profile", choices=("parse", "normalize"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--digest", type=Path, help="write one hashed line per entry/item")
    parser.add_argument(
        "--breakdown", action="store_true", help="CPU per function called by each stage"
    )
    parser.add_argument(
        "--worker", action="store_true", help="CPU of the pool's whole job per source, by step"
    )
    args = parser.parse_args()
    spent = _instrument() if args.breakdown else {}

    pairs, config = load(args.corpus)
    sections = config.sections  # type: ignore[attr-defined]
    if args.worker:
        steps = worker(pairs, sections)
        total = steps.pop("total")
        parts = "  ".join(f"{label} {seconds:.3f}" for label, seconds in steps.items())
        rest = total - sum(steps.values())
        print(f"worker {total:.3f} s CPU: {parts}  rest {rest:.3f}")
        return
    profile = cProfile.Profile()

    start = time.process_time()
    if args.profile == "parse":
        profile.enable()
    parsed: list[ParsedFeed] = [parse(source, result) for source, result in pairs]
    if args.profile == "parse":
        profile.disable()
    parse_cpu = time.process_time() - start

    start = time.process_time()
    if args.profile == "normalize":
        profile.enable()
    items = [
        normalize_entries(
            source, newest_entries(feed.entries, source.max_items), sections, NOW, result.url
        )
        for (source, result), feed in zip(pairs, parsed, strict=True)
    ]
    if args.profile == "normalize":
        profile.disable()
    normalize_cpu = time.process_time() - start

    entries = sum(len(feed.entries) for feed in parsed)
    count = sum(len(batch) for batch in items)
    print(f"parse {parse_cpu:.3f} s CPU, {entries} entries")
    print(f"normalize {normalize_cpu:.3f} s CPU, {count} items")
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    if spent:
        stage_cpu = {"parse": parse_cpu, "normalize": normalize_cpu}
        for stage in ("parse", "normalize"):
            rows = {k: v for k, v in spent.items() if k.startswith(f"{stage}: ")}
            rows[f"{stage}: (the rest: {REST[stage]})"] = stage_cpu[stage] - sum(rows.values())
            for label, seconds in sorted(rows.items(), key=lambda kv: -kv[1]):
                share = seconds / stage_cpu[stage]
                print(f"  {label:68s} {seconds:6.3f} s {share:6.1%}")
    if args.digest:
        total = hashlib.sha256()
        with args.digest.open("w") as out:
            for (source, _), feed, batch in zip(pairs, parsed, items, strict=True):
                head = (feed.title, feed.link, feed.language, feed.warning, feed.next_page_url)
                records = [repr(head)] + [repr(e) for e in feed.entries] + [repr(i) for i in batch]
                for number, record in enumerate(records):
                    digest = hashlib.sha256(record.encode("utf-8", "surrogatepass")).hexdigest()
                    total.update(digest.encode())
                    out.write(f"{source.id} {number} {digest}\n")
        print(f"digest {total.hexdigest()} over {entries} entries and {count} items")


if __name__ == "__main__":
    main()
