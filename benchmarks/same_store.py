"""Check that a code change stores the same thing: ingest the benchmark corpus with two
checkouts and compare the databases, timestamps and row ids aside.

    git archive <commit> | tar -x -C /tmp/before     # the code before the change
    PYTHONPATH=. python -m benchmarks.same_store --before /tmp/before --n 50

Each checkout's ``aggregator`` runs this checkout's ``benchmarks.ingest_bench
ours`` (a real cold ingest through nginx) into its own SQLite file; items are
then compared by (source, guid), every column except the row id and
``first_seen_at``; which copy is an item's story (``story_*``) or the original
of its duplicates (``duplicate_of``) depends on which feed answered first, so
those are compared as groups (each named by its smallest (source, guid));
sources by id without their fetch times. Both databases are first brought to
the ``--after`` checkout's schema by its own migrations (as an upgrade
would: migration 0012 rewrites the stored link keys), so what is compared is
what an installation holds after the change. Exit status 1 and the first
differences when they differ.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .generate import generate
from .server import serve

HERE = Path(__file__).resolve().parent
SKIP_ITEM = {"id", "first_seen_at"}
SKIP_SOURCE = {"last_fetched_at", "last_success_at", "next_fetch_at", "created_at"}


def _ingest(code: Path, base: str, n: int, db: Path) -> None:
    """One cold ingest with ``code``'s aggregator package and this checkout's benchmark runner."""
    with tempfile.TemporaryDirectory(prefix="runner-") as runner:
        # The runner's directory comes first on sys.path: only ``benchmarks`` there.
        (Path(runner) / "benchmarks").symlink_to(HERE)
        env = {**os.environ, "PYTHONPATH": str(code)}
        subprocess.run(
            [sys.executable, "-m", "benchmarks.ingest_bench", "ours", "--base", base,
             "--n", str(n), "--db", str(db)],
            check=True, env=env, cwd=runner, stdout=subprocess.DEVNULL,
        )  # fmt: skip


def _upgrade(code: Path, db: Path) -> None:
    """Run ``code``'s migrations on ``db``: a database as that code would leave it."""
    script = "import sys; from aggregator.store import Store; Store.open(sys.argv[1]).close()"
    env = {**os.environ, "PYTHONPATH": str(code)}
    subprocess.run([sys.executable, "-c", script, f"sqlite:///{db}"], check=True, env=env)


def _snapshot(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM items")]
    key_of = {r["id"]: (r["source_id"], r["guid"]) for r in rows}
    # Which copy of a story is "the first" depends on which feed answered
    # first, and the pool makes that vary from run to run: a story (and a
    # duplicate group) is compared by its members, named by the smallest.
    stories: dict[Any, list[Any]] = {}
    groups: dict[Any, list[Any]] = {}
    for r in rows:
        key = key_of[r["id"]]
        if r.get("story_guid") is not None:
            stories.setdefault((r["story_source_id"], r["story_guid"]), []).append(key)
        root = key_of.get(r["duplicate_of"]) if r["duplicate_of"] else None
        if root is not None:
            groups.setdefault(root, [root]).append(key)
    story_name = {k: min(members) for members in stories.values() for k in members}
    group_name = {k: min(members) for members in groups.values() for k in members}
    items = {}
    for r in rows:
        key = key_of[r["id"]]
        r["duplicate_of"] = group_name.get(key)
        if "story_guid" in r:
            r["story_source_id"] = r["story_guid"] = None
            r["story"] = story_name.get(key)
        items[key] = {k: v for k, v in r.items() if k not in SKIP_ITEM}
    sources = {
        r["id"]: {k: v for k, v in dict(r).items() if k not in SKIP_SOURCE}
        for r in conn.execute("SELECT * FROM sources")
    }
    conn.close()
    return {"items": items, "sources": sources}


def compare(before: Path, after: Path, feeds: Path, n: int) -> tuple[list[str], int, int]:
    """Ingest the first ``n`` feeds of ``feeds`` with each checkout; returns the differences
    (empty: the same content), and the items and sources compared."""
    snapshots = []
    with serve(feeds) as (base, _), tempfile.TemporaryDirectory(prefix="same-") as tmp:
        for name, code in (("before", before), ("after", after)):
            db = Path(tmp) / f"{name}.db"
            _ingest(code.resolve(), base, n, db)
            _upgrade(after.resolve(), db)
            snapshots.append(_snapshot(db))
    old_snapshot, new_snapshot = snapshots
    problems = []
    for table in ("items", "sources"):
        old, new = old_snapshot[table], new_snapshot[table]
        for key in sorted(set(old) | set(new), key=repr):
            if old.get(key) != new.get(key):
                a, b = old.get(key) or {}, new.get(key) or {}
                cols = [c for c in set(a) | set(b) if a.get(c) != b.get(c)]
                problems.append(f"{table} {key}: differs in {sorted(cols)}")
    return problems, len(new_snapshot["items"]), len(new_snapshot["sources"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--after", type=Path, default=HERE.parent)
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    feeds = HERE / ".data" / f"feeds-{args.n}"
    generate(feeds, args.n)
    problems, count, sources = compare(args.before, args.after, feeds, args.n)
    if problems:
        print(f"{len(problems)} differences over {count} items:", *problems[:20], sep="\n  ")
        sys.exit(1)
    print(f"same content: {count} items and {sources} sources, "
          "all columns but ids and timestamps")  # fmt: skip


if __name__ == "__main__":
    main()
