"""The ``aggregator`` app: the top-level options, every command group, the entry point.

The only module of the package that imports the command modules; they import
only :mod:`._common`. Errors of the project's own kinds print as one red line
and a non-zero exit code; a traceback here is a bug.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import click
import typer

from ..errors import AggregatorError, ConfigError
from ..logs import setup_logging
from . import digest, mail, opml, publish, queue, service, sources
from ._common import err_console, state

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Korean film news aggregator: fetch sources, publish one feed, mail a weekly digest.",
)


@app.callback()
def _options(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", envvar="AGGREGATOR_CONFIG", help="Path to feeds.yaml."),
    ] = Path("feeds.yaml"),
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
    log_json: Annotated[
        bool | None,
        typer.Option("--log-json/--log-text", help="Log format (default: JSON when not a TTY)."),
    ] = None,
) -> None:
    state.config_path = config
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    setup_logging(level, json_format=log_json)


sources.register(app)
opml.register(app)
publish.register(app)
digest.register(app)
mail.register(app)
mail.register_digest_send(digest.digest_app)
service.register(app)
queue.register(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: project errors become one line and exit code 1.

    ``argv`` defaults to the process's arguments; tests pass their own and get
    the same handling as the ``aggregator`` script.
    """
    try:
        result = app(
            args=None if argv is None else list(argv), prog_name="aggregator", standalone_mode=False
        )
    except ConfigError as exc:
        err_console.print(f"[red]config error[/red] {exc}", highlight=False)
        sys.exit(2)
    except AggregatorError as exc:
        err_console.print(f"[red]error[/red] {exc}", highlight=False)
        sys.exit(1)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(result, int) and result:
        sys.exit(result)
