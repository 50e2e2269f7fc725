"""``aggregator opml import|export``: convert between OPML and feeds.yaml sources."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import console, err_console, load_config, state

__all__ = ["opml_app", "register"]

opml_app = typer.Typer(no_args_is_help=True, help="Convert between OPML and feeds.yaml sources.")


def register(app: typer.Typer) -> None:
    """Add the ``opml`` command group to the main app."""
    app.add_typer(opml_app, name="opml")


@opml_app.command("import")
def opml_import(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)]) -> None:
    """Append the feeds of an OPML file to feeds.yaml (comments and layout are kept).

    The result is validated like `aggregator check` before it replaces
    feeds.yaml; feeds whose URL is already configured are skipped.
    """
    from ..opml import import_opml

    result = import_opml(file, state.config_path)
    added = ", ".join(result.added)
    console.print(
        f"[green]ok[/green] added {len(result.added)} sources to {state.config_path}"
        + (f": {added}" if added else ""),
        highlight=False,
    )
    if result.already_configured:
        console.print(
            f"skipped {len(result.already_configured)} feeds already configured", highlight=False
        )


@opml_app.command("export")
def opml_export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print (or write) the feed sources of feeds.yaml as OPML 2.0.

    HTML listings have no feed URL another reader could subscribe to; they
    are named on stderr as left out.
    """
    from ..opml import export_opml

    result = export_opml(load_config())
    if out:
        out.write_text(result.text, encoding="utf-8")
        err_console.print(f"[green]wrote[/green] {out}", highlight=False)
    else:
        sys.stdout.write(result.text)
    if result.left_out:
        err_console.print(
            f"left out {len(result.left_out)} HTML listings (no feed URL): "
            + ", ".join(result.left_out),
            highlight=False,
        )
