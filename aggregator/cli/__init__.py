"""The ``aggregator`` command (typer + rich).

One module per command group (:mod:`.sources`, :mod:`.opml`, :mod:`.digest`,
:mod:`.mail`, :mod:`.publish`, :mod:`.service`, :mod:`.queue`) over one shared
helpers module (:mod:`._common`); :mod:`.main` wires them into one app and is
the console script's entry point.
"""

from .main import app, main

__all__ = ["app", "main"]
