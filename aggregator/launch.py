"""The ``aggregator`` command's entry point, deliberately free of imports.

The parse pool's workers (forkserver start method) re-run the main script
as ``__mp_main__`` before their first task, as multiprocessing does for any
start method but fork. The console script pip generates imports its entry
point's module at its top, outside the ``__main__`` guard; with the entry
point in :mod:`aggregator.cli` every worker imported the whole command line
(typer, rich, SQLAlchemy, httpx, pydantic): measured 65 MB RSS per worker
instead of 25 MB. Here the CLI is imported only when the command runs.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``aggregator`` command (see :func:`aggregator.cli.main`)."""
    from .cli import main as cli_main

    cli_main(argv)
