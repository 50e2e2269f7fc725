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
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from ..errors import AggregatorError, ConfigError
from ..logs import setup_logging
from . import bounces, digest, dkim, mail, opml, publish, queue, service, sources
from ._common import INTERRUPTED, err_console, state

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    # A bug's traceback must not print local variables: they hold the SMTP password.
    pretty_exceptions_show_locals=False,
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
dkim.register(app)
bounces.register(app, subscribers_app=mail.subscribers_app)


def _typer_click_class(name: str) -> type[Exception]:
    """The exception class called ``name`` in the click that typer itself runs on.

    typer may bundle its own copy of click (``typer._click``) or use the
    installed one, and the two copies' classes are unrelated: catching
    ``click.ClickException`` misses every error typer raises when it runs on
    its own copy. ``typer.BadParameter`` always comes from the click typer
    uses, so its base classes are the ones to catch.
    """
    for klass in typer.BadParameter.__mro__:
        if klass.__name__ == name:
            return klass
    raise LookupError(f"typer.BadParameter has no base class named {name}")  # pragma: no cover


_CLICK_EXCEPTION = _typer_click_class("ClickException")
_USAGE_ERROR = _typer_click_class("UsageError")
# Raised (click >= 8.2) for a group or command called without the arguments it needs
# to do anything; older click prints the help and exits 0 instead.
_NO_ARGS_IS_HELP: type[Exception] | None = getattr(
    sys.modules[_USAGE_ERROR.__module__], "NoArgsIsHelpError", None
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(label: str, message: str, code: int) -> NoReturn:
    """Print ``label message`` as one line on stderr (never wrapped) and exit with ``code``."""
    err_console.print(f"[red]{label}[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: every error a user can cause is one line on stderr, never a traceback.

    Exit codes: 0 done; 1 the job failed (a source, the database, the mail
    relay); 2 the command line or feeds.yaml is wrong (unknown option, missing
    or malformed value, unreadable config); 130 stopped by Ctrl-C. A command
    group called without a subcommand (``aggregator``, ``aggregator digest``)
    prints its help on stdout and exits 2, as click does.

    ``argv`` defaults to the process's arguments; tests pass their own and get
    exactly what the ``aggregator`` script does.
    """
    try:
        result = app(
            args=None if argv is None else list(argv), prog_name="aggregator", standalone_mode=False
        )
    except ConfigError as exc:
        _fail("config error", str(exc), 2)
    except AggregatorError as exc:
        _fail("error", str(exc), 1)
    except typer.Abort:
        _fail("stopped", "by Ctrl-C", INTERRUPTED)
    except KeyboardInterrupt:
        _fail("stopped", "by Ctrl-C", INTERRUPTED)
    except _CLICK_EXCEPTION as exc:
        _click_error(exc)
    except OSError as exc:
        # A file or directory named on the command line or in feeds.yaml that cannot
        # be read or written: the text names the path, which is all the user needs.
        _fail("error", str(exc), 1)
    if result == INTERRUPTED:
        _fail("stopped", "by Ctrl-C", INTERRUPTED)
    if isinstance(result, int) and result:
        sys.exit(result)


def _click_error(exc: Exception) -> NoReturn:
    """A usage error as one line naming the command and where to look; help for a bare group."""
    ctx = getattr(exc, "ctx", None)
    if _NO_ARGS_IS_HELP is not None and isinstance(exc, _NO_ARGS_IS_HELP) and ctx is not None:
        help_text = ctx.get_help()  # typer's rich help prints itself and returns ""
        if help_text:
            sys.stdout.write(help_text.rstrip("\n") + "\n")
        sys.exit(2)
    message = _one_line(exc.format_message())  # type: ignore[attr-defined]
    code: int = getattr(exc, "exit_code", 1)
    if isinstance(exc, _USAGE_ERROR):
        # Errors found while splitting the command line (``--flag=value`` for a
        # flag) come without the command they belong to.
        path = ctx.command_path if ctx is not None else "aggregator"
        _fail("usage error", f"{path}: {message} (see '{path} --help')", code)
    _fail("error", message, code)
