"""What every command module of the ``aggregator`` command shares.

This module sits at the bottom of the :mod:`aggregator.cli` package: the
command modules import from it, and it imports none of them, so there is no
circle between the modules that define commands and the one that wires them
(:mod:`aggregator.cli.main`).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console

from ..config import Config
from ..config import load_config as _load_config_file
from ..store import Store

__all__ = [
    "INTERRUPTED",
    "ago",
    "console",
    "err_console",
    "load_config",
    "log",
    "open_store",
    "state",
]

# The exit code after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130

# Output piped into grep or a log file keeps its lines whole: rich would wrap
# at 80 columns when it is not a terminal (COLUMNS still wins when set).
PIPED_WIDTH = 400


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


console = _console(stderr=False)
err_console = _console(stderr=True)
log = logging.getLogger("aggregator")


@dataclass
class CliState:
    """Options of the top-level command that the subcommands read (set by its callback)."""

    config_path: Path = Path("feeds.yaml")


state = CliState()


def load_config() -> Config:
    """feeds.yaml named by ``--config`` (or ``AGGREGATOR_CONFIG``, or ./feeds.yaml), validated."""
    return _load_config_file(state.config_path)


def open_store(config: Config) -> Store:
    """The store ``config`` names; the caller closes it."""
    return Store.open(config.database_url, isolated_migration=True)


def ago(when: datetime | None, now: datetime) -> str:
    """``when`` relative to ``now`` in one short word: ``5m ago``, ``in 2h``, ``never``."""
    if when is None:
        return "never"
    delta = now - when
    future = delta.total_seconds() < 0
    seconds = abs(int(delta.total_seconds()))
    if seconds < 90:
        text = f"{seconds}s"
    elif seconds < 5400:
        text = f"{seconds // 60}m"
    elif seconds < 172800:
        text = f"{seconds // 3600}h"
    else:
        text = f"{seconds // 86400}d"
    return f"in {text}" if future else f"{text} ago"
