"""``python -m benchmarks``: ingest side by side with lemon24/reader and the feedparser floor.

Generates N deterministic feeds, serves them with nginx on 127.0.0.1 and
measures, each in a fresh process: our cold ingest and warm re-ingest (every
feed answers 304), reader's cold and warm update at several worker counts (its
best is compared), and feedparser alone on the same bytes. Then the other
stages' scripts (publish, digest render, SMTP send) print their figures.

    python -m benchmarks            # 500 feeds
    python -m benchmarks --quick    # 50 feeds, under a minute
    python -m benchmarks --scale    # also 2,000 feeds, for memory growth
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .generate import generate
from .server import serve

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
READER_WORKERS = (1, 4, 16)


def _ensure_nginx() -> None:
    """Install Debian's nginx when missing, like scripts/test does for its servers."""
    import shutil

    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("installing nginx-light (the benchmark's HTTP server)...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"],
            check=True,
            env=env,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"could not install nginx ({exc}); falling back to a Python server", flush=True)


def _ensure_reader() -> None:
    try:
        import reader  # noqa: F401
        import sgmllib  # type: ignore[import-not-found]  # noqa: F401  (reader's feedparser)
    except ImportError:
        print("installing reader (benchmark only, not a project dependency)...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "reader", "sgmllib3k"], check=True
        )


def _measure(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest_bench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {args[0]} failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def ingest_rows(n: int) -> dict[str, Any]:
    feeds_dir = DATA / f"feeds-{n}"
    generate(feeds_dir, n)
    size_mb = sum(p.stat().st_size for p in feeds_dir.glob("*.xml")) / (1024 * 1024)
    results: dict[str, Any] = {"n": n, "size_mb": size_mb}
    with serve(feeds_dir) as (base, server), tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results["server"] = server
        db = Path(tmp) / "ours.db"
        common = ["--base", base, "--n", str(n)]
        results["ours_cold"] = _measure("ours", *common, "--db", str(db))
        results["ours_warm"] = _measure("ours", *common, "--db", str(db))
        best: dict[str, Any] | None = None
        for workers in READER_WORKERS:
            rdb = Path(tmp) / f"reader-{workers}.sqlite"
            cold = _measure("reader", *common, "--db", str(rdb), "--workers", str(workers))
            warm = _measure("reader", *common, "--db", str(rdb), "--workers", str(workers))
            results[f"reader_{workers}"] = {"cold": cold, "warm": warm}
            if best is None or cold["wall"] < best["cold"]["wall"]:
                best = {"workers": workers, "cold": cold, "warm": warm}
        results["reader_best"] = best
    results["floor"] = _measure("floor", "--dir", str(feeds_dir), "--n", str(n))
    results["floor_fast"] = _measure("floor-fast", "--dir", str(feeds_dir), "--n", str(n))
    return results


def print_table(r: dict[str, Any], scaled: dict[str, Any] | None) -> None:
    ours, warm = r["ours_cold"], r["ours_warm"]
    best = r["reader_best"]
    floor = r["floor"]
    rows = [
        ("ours, cold ingest", ours),
        ("ours, warm re-ingest (all 304)", warm),
    ]
    for workers in READER_WORKERS:
        rows.append((f"reader, workers={workers}, cold", r[f"reader_{workers}"]["cold"]))
        rows.append((f"reader, workers={workers}, warm", r[f"reader_{workers}"]["warm"]))
    print(f"\n{r['n']} feeds, {r['size_mb']:.1f} MB of XML, served by {r['server']} on 127.0.0.1;")
    print(f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}\n")
    header = f"{'run':<34}{'wall s':>9}{'CPU s':>9}{'entries/s':>11}{'peak MB':>9}{'DB MB':>8}"
    print(header)
    print("-" * len(header))
    for label, m in rows:
        rate = m["entries"] / m["wall"] if m["wall"] else 0
        print(
            f"{label:<34}{m['wall']:>9.2f}{m['cpu']:>9.2f}{rate:>11.0f}"
            f"{m['peak_mb']:>9.0f}{m.get('db_mb', 0):>8.1f}"
        )
    for label, m in (
        ("feedparser floor (defaults)", floor),
        ("feedparser floor (as we call it)", r["floor_fast"]),
    ):
        print(f"{label:<34}{m['wall']:>9.2f}{m['cpu']:>9.2f}{m['entries'] / m['cpu']:>11.0f}")
    print()
    print(
        f"ours / reader best (workers={best['workers']}), cold wall: "
        f"{ours['wall'] / best['cold']['wall']:.2f}  "
        f"(reader is {best['cold']['wall'] / ours['wall']:.1f}x slower)"
    )
    print(f"ours / reader best, warm wall:           {warm['wall'] / best['warm']['wall']:.2f}")
    print(f"ours cold wall / feedparser floor CPU:   {ours['wall'] / floor['cpu']:.2f}")
    print(f"ours warm / ours cold (wall):            {100 * warm['wall'] / ours['wall']:.1f}%")
    if scaled is not None:
        growth = scaled["ours_cold"]["peak_mb"] / ours["peak_mb"]
        print(
            f"peak RSS {r['n']} -> {scaled['n']} feeds:          "
            f"{ours['peak_mb']:.0f} -> {scaled['ours_cold']['peak_mb']:.0f} MB ({growth:.2f}x)"
        )


def other_stages(quick: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    runs = [
        (
            "publish 100 of 100,000 items",
            ["benchmarks/publish_bench.py"] + (["--items", "10000"] if quick else []),
        ),
        ("digest render, 30 items", ["benchmarks/render_bench.py"]),
        (
            "SMTP send, 2,000 subscribers",
            ["benchmarks/send_bench.py"] + (["-n", "300"] if quick else []),
        ),
    ]
    for title, args in runs:
        print(f"\n== {title} ==", flush=True)
        proc = subprocess.run(
            [sys.executable, *args], cwd=HERE.parent, env=env, capture_output=True, text=True
        )
        print((proc.stdout or proc.stderr).strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="50 feeds and small side runs")
    parser.add_argument("--scale", action="store_true", help="also 2,000 feeds (memory growth)")
    parser.add_argument("--ingest-only", action="store_true")
    args = parser.parse_args()
    _ensure_nginx()
    _ensure_reader()
    n = 50 if args.quick else args.feeds
    results = ingest_rows(n)
    scaled = None
    if args.scale:
        scaled = {"n": 2000, "ours_cold": None}
        feeds_dir = DATA / "feeds-2000"
        generate(feeds_dir, 2000)
        with serve(feeds_dir) as (base, _), tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            scaled["ours_cold"] = _measure(
                "ours", "--base", base, "--n", "2000", "--db", str(Path(tmp) / "ours.db")
            )
    print_table(results, scaled)
    if not args.ingest_only:
        other_stages(args.quick)


if __name__ == "__main__":
    main()
