"""The ``aggregator`` command.

Every command loads feeds.yaml (``--config``, or ``AGGREGATOR_CONFIG``, or
./feeds.yaml), opens the store it names, does one job and exits. Errors of the
project's own kinds print as one red line and a non-zero exit code; a
traceback here is a bug.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import Config, load_config, parse_duration
from .errors import AggregatorError, ConfigError
from .logs import setup_logging
from .models import IngestOutcome, IngestStats
from .store import Store

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Korean film news aggregator: fetch sources, publish one feed, mail a weekly digest.",
)
opml_app = typer.Typer(no_args_is_help=True, help="Convert between OPML and feeds.yaml sources.")
app.add_typer(opml_app, name="opml")

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("aggregator")


class _State:
    config_path: Path = Path("feeds.yaml")


_state = _State()


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
    _state.config_path = config
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    setup_logging(level, json_format=log_json)


def _config() -> Config:
    return load_config(_state.config_path)


def _store(config: Config) -> Store:
    return Store.open(config.database_url)


def _ago(when: datetime | None, now: datetime) -> str:
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


# ------------------------------------------------------------------------ commands


@app.command()
def check() -> None:
    """Validate feeds.yaml; print every problem with file:line and key."""
    config = _config()
    feeds = sum(1 for s in config.sources if s.type == "feed")
    pages = len(config.sources) - feeds
    console.print(
        f"[green]ok[/green] {config.path}: {len(config.sources)} sources "
        f"({feeds} feeds, {pages} HTML listings), {len(config.sections)} sections, "
        f"digest {config.digest.schedule_day} {config.digest.schedule_time} {config.site.timezone}"
    )


@app.command()
def fetch(
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only this source id (repeatable).")
    ] = None,
    due: Annotated[
        bool, typer.Option("--due", help="Only sources whose next fetch time has come.")
    ] = False,
) -> None:
    """Run one ingest pass: fetch, parse, normalize, deduplicate and store."""
    from .ingest import Ingestor

    config = _config()
    store = _store(config)
    chosen = source or [s.id for s in config.sources if s.enabled]
    results: list[IngestStats] = []
    try:
        with Progress(
            TextColumn("[bold]fetch[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,
        ) as progress:
            task = progress.add_task("", total=len(chosen))

            def done(stats: IngestStats) -> None:
                progress.update(task, advance=1, description=stats.source_id)

            results = asyncio.run(Ingestor(config, store).run(source, only_due=due, on_done=done))
    finally:
        store.close()
    _fetch_table(results)
    failed = [r for r in results if r.outcome is IngestOutcome.ERROR]
    if failed and len(failed) == len(results):
        raise typer.Exit(1)


def _fetch_table(results: list[IngestStats]) -> None:
    table = Table(title="Ingest", show_lines=False)
    for name in ("source", "result", "new", "updated", "duplicates", "time"):
        table.add_column(
            name, justify="right" if name in {"new", "updated", "duplicates", "time"} else "left"
        )
    totals = [0, 0, 0]
    for r in sorted(results, key=lambda r: r.source_id):
        style = {"ok": "green", "not_modified": "dim", "error": "red"}.get(r.outcome.value, "")
        label = "not modified" if r.outcome is IngestOutcome.NOT_MODIFIED else r.outcome.value
        table.add_row(
            r.source_id,
            f"[{style}]{label}[/{style}]",
            str(r.new),
            str(r.updated),
            str(r.duplicates),
            f"{r.elapsed:.2f}s",
        )
        totals[0] += r.new
        totals[1] += r.updated
        totals[2] += r.duplicates
    table.add_section()
    errors = sum(r.outcome is IngestOutcome.ERROR for r in results)
    table.add_row("total", f"{errors} errors", *map(str, totals), "")
    console.print(table)
    for r in results:
        if r.error:
            err_console.print(f"[red]error[/red] {r.error}", highlight=False)


@app.command()
def status() -> None:
    """List sources with last fetch, next fetch, error count and last error."""
    config = _config()
    store = _store(config)
    try:
        store.sync_sources(config.sources)
        states = {s.id: s for s in store.source_states()}
        counts = store.item_counts()
    finally:
        store.close()
    now = datetime.now(UTC)
    table = Table(title=f"Sources ({config.path})")
    for name in (
        "source",
        "type",
        "items",
        "last fetch",
        "last success",
        "next fetch",
        "errors",
        "last error",
    ):
        table.add_column(name, overflow="fold")
    for source in config.sources:
        st = states.get(source.id)
        if st is None:
            continue
        problem = st.broken_reason or st.last_error or st.warning or ""
        status_style = (
            "red" if st.broken_reason else "yellow" if st.error_count or st.warning else ""
        )
        table.add_row(
            source.id + ("" if source.enabled else " (disabled)"),
            source.type,
            str(counts.get(source.id, 0)),
            _ago(st.last_fetched_at, now),
            _ago(st.last_success_at, now),
            _ago(st.next_fetch_at, now) if st.next_fetch_at else "now",
            f"[{status_style}]{st.error_count}[/{status_style}]" if status_style else "0",
            ("BROKEN: " if st.broken_reason else "") + problem[:300],
        )
    console.print(table)


def _since(value: str) -> datetime:
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f'"{value}" is neither a duration (7d, 12h) nor a date (2026-11-01)'
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def items(
    since: Annotated[str, typer.Option(help="A duration (7d, 12h) or an ISO date.")] = "7d",
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 200,
    duplicates: Annotated[
        bool, typer.Option("--duplicates/--no-duplicates", help="Include duplicates.")
    ] = False,
    section: Annotated[str | None, typer.Option(help="Only this section id.")] = None,
) -> None:
    """List stored items published since a time, newest first."""
    config = _config()
    start = _since(since)
    store = _store(config)
    try:
        rows = store.items_published_since(start, include_duplicates=duplicates, limit=limit)
    finally:
        store.close()
    if section:
        rows = [r for r in rows if r.section == section]
    table = Table(title=f"{len(rows)} items since {start:%Y-%m-%d %H:%M} UTC")
    for name in ("published", "source", "section", "title", "link"):
        table.add_column(name, overflow="fold")
    for r in rows:
        title = r.title + (
            f" [dim](duplicate of #{r.duplicate_of})[/dim]" if r.duplicate_of else ""
        )
        table.add_row(f"{r.published_at:%Y-%m-%d}", r.source_id, r.section or "", title, r.url)
    console.print(table)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (also done automatically on start)."""
    config = _config()
    _store(config).close()
    console.print("[green]ok[/green] database schema is current")


@opml_app.command("import")
def opml_import(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)]) -> None:
    """Append the feeds of an OPML file to feeds.yaml (comments are kept)."""
    from .opml import import_opml

    added = import_opml(file, _state.config_path)
    console.print(f"[green]ok[/green] added {added} sources to {_state.config_path}")


@opml_app.command("export")
def opml_export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print (or write) the feed sources of feeds.yaml as OPML 2.0."""
    from .opml import export_opml

    text = export_opml(_config())
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


# ---------------------------------------------------------------------- other commands


def _register_commands() -> None:
    """Commands living in their own modules (kept small, imported lazily at run time)."""
    from . import cli_digest, cli_mail, cli_publish, cli_service

    cli_publish.register(app)
    cli_digest.register(app)
    cli_mail.register(app)
    cli_mail.register_digest_send(cli_digest.digest_app)
    cli_service.register(app)


_register_commands()

# ---------------------------------------------------------------------- entry point


def main() -> None:
    """Console entry point: project errors become one line and exit code 1."""
    try:
        result = app(standalone_mode=False)
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
