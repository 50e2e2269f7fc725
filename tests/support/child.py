"""Run code in a fresh interpreter: for checks on a process itself (its imports,
its malloc arenas), which this test process, having imported much more and run
many threads, cannot stand for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# A real ingest pass as the commands run it: argv[1] a directory for the SQLite
# file, argv[2] the ``sources:`` lines of feeds.yaml. A script continues it
# (``stats`` holds the pass's results) to print what it checks.
INGEST_PASS = """
import asyncio, sys
from pathlib import Path
from aggregator.config import parse_config
from aggregator.ingest import Ingestor
from aggregator.store import Store

tmp, yaml = Path(sys.argv[1]), sys.argv[2]
config = parse_config(
    f"storage: {{url: 'sqlite:///{tmp}/db.sqlite'}}\\n"
    "defaults: {interval: 1h, timeout: 30s}\\nsources:\\n" + yaml,
    path=tmp / "feeds.yaml",
)
store = Store.open(config.database_url, isolated_migration=True)  # as the commands do
store.sync_sources(config.sources)
stats = asyncio.run(Ingestor(config, store).run())
"""


def run_python(*args: str) -> list[str]:
    """The lines ``python ARGS`` prints, with this checkout's code importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, *args], check=True, env=env, capture_output=True, text=True, timeout=120
    )
    return out.stdout.strip().splitlines()
