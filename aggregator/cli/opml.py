"""``aggregator opml import|export``: convert between OPML and feeds.yaml sources."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import console, load_config, state

__all__ = ["opml_app", "register"]

opml_app = typer.Typer(no_args_is_help=True, help="Convert between OPML and feeds.yaml sources.")


def register(app: typer.Typer) -> None:
    """Add the ``opml`` command group to the main app."""
    app.add_typer(opml_app, name="opml")


@opml_app.command("import")
def opml_import(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)]) -> None:
    """Append the feeds of an OPML file to feeds.yaml (comments are kept)."""
    from ..opml import import_opml

    added = import_opml(file, state.config_path)
    console.print(f"[green]ok[/green] added {added} sources to {state.config_path}")


@opml_app.command("export")
def opml_export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print (or write) the feed sources of feeds.yaml as OPML 2.0."""
    from ..opml import export_opml

    text = export_opml(load_config())
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
