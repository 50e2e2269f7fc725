"""Commands about feeds.yaml's sources and what they stored.

``check``, ``fetch``, ``status``, ``items``, ``migrate`` and ``try-source``;
added to the main app by :func:`register`. Each loads feeds.yaml, opens the
store it names, does one job and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import Config, parse_duration
from ..errors import ConfigError, ConfigErrors
from ..models import FetchResult, IngestOutcome, IngestStats, Selectors, Source, utcnow
from ._common import ago, console, err_console, load_config, open_store

__all__ = ["register"]


# ------------------------------------------------------------------------ commands


def check(
    dns: Annotated[
        bool,
        typer.Option("--dns", help="Also look up the SPF, DKIM and DMARC records in DNS."),
    ] = False,
    nameserver: Annotated[
        str | None,
        typer.Option(
            "--nameserver",
            metavar="IP[:PORT]",
            help="Ask this DNS server instead of the system's resolver (with --dns).",
        ),
    ] = None,
) -> None:
    """Validate feeds.yaml; print every problem with file:line and key.

    With ``--dns``, exit 1 when a record is missing, different or cannot be
    looked up, so a deploy script can stop on it.
    """
    from ..mail.dnscheck import parse_nameserver

    server = None
    if nameserver is not None:
        if not dns:
            raise typer.BadParameter("needs --dns", param_hint="--nameserver")
        try:
            server = parse_nameserver(nameserver)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--nameserver") from None
    config = load_config()
    feeds = sum(1 for s in config.sources if s.type == "feed")
    pages = len(config.sources) - feeds
    console.print(
        f"[green]ok[/green] {config.path}: {len(config.sources)} sources "
        f"({feeds} feeds, {pages} HTML listings), {len(config.sections)} sections, "
        f"digest {config.digest.schedule_day} {config.digest.schedule_time} {config.site.timezone}"
    )
    from .dkim import print_dns_records

    print_dns_records(config)
    if dns:
        from .dkim import print_dns_lookup

        if not print_dns_lookup(config, server):
            raise typer.Exit(1)


def fetch(
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only this source id (repeatable).")
    ] = None,
    due: Annotated[
        bool, typer.Option("--due", help="Only sources whose next fetch time has come.")
    ] = False,
) -> None:
    """Run one ingest pass: fetch, parse, normalize, deduplicate and store."""
    from ..ingest import Ingestor

    config = load_config()
    store = open_store(config)
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


def status() -> None:
    """List sources with last fetch, next fetch, error count and last error."""
    config = load_config()
    store = open_store(config)
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
            ago(st.last_fetched_at, now),
            ago(st.last_success_at, now),
            ago(st.next_fetch_at, now) if st.next_fetch_at else "now",
            f"[{status_style}]{st.error_count}[/{status_style}]" if status_style else "0",
            ("BROKEN: " if st.broken_reason else "") + problem[:300],
        )
    console.print(table)
    from .bounces import print_bounce_summary

    store = open_store(config)
    try:
        print_bounce_summary(store)
    finally:
        store.close()


def _since(value: str, zone: tzinfo = UTC) -> datetime:
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f'"{value}" is neither a duration (7d, 12h) nor a date (2026-11-01)',
            param_hint="'--since'",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def items(
    since: Annotated[str, typer.Option(help="A duration (7d, 12h) or an ISO date.")] = "7d",
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 200,
    duplicates: Annotated[
        bool, typer.Option("--duplicates/--no-duplicates", help="Include duplicates.")
    ] = False,
    section: Annotated[str | None, typer.Option(help="Only this section id.")] = None,
) -> None:
    """List stored items published since a time, newest first.

    Dates are shown, and a date given to --since is read, in the site's time
    zone (site.timezone), like every other command.
    """
    _since(since, UTC)  # a mistyped option is reported before the config is read
    config = load_config()
    zone = ZoneInfo(config.site.timezone)
    start = _since(since, zone)
    store = open_store(config)
    try:
        rows = store.items_published_since(start, include_duplicates=duplicates, limit=limit)
    finally:
        store.close()
    if section:
        rows = [r for r in rows if r.section == section]
    local_start = start.astimezone(zone)
    table = Table(
        title=f"{len(rows)} items since {local_start:%Y-%m-%d %H:%M %Z}, "
        f"times in {config.site.timezone}"
    )
    for name in ("published", "source", "section", "title", "link"):
        table.add_column(name, overflow="fold")
    for r in rows:
        title = r.title + (
            f" [dim](duplicate of #{r.duplicate_of})[/dim]" if r.duplicate_of else ""
        )
        published = r.published_at.astimezone(zone)
        table.add_row(f"{published:%Y-%m-%d %H:%M}", r.source_id, r.section or "", title, r.url)
    console.print(table)


def migrate() -> None:
    """Create or upgrade the database schema (also done automatically on start)."""
    config = load_config()
    store = open_store(config)
    try:
        if config.queue == "procrastinate":
            from ..queue import apply_schema, require_postgres

            require_postgres(config)
            for name in apply_schema(store):
                console.print(f"procrastinate: applied {name}")
    finally:
        store.close()
    console.print("[green]ok[/green] database schema is current")


_SELECT_FIELDS = ("item", "title", "link", "summary", "date", "image", "author", "next_page")


def _try_target(target: str, select: list[str], kind: str | None) -> tuple[Source, Config | None]:
    """The source to try: a feeds.yaml source id, or a URL with selectors on the command line."""
    overrides: dict[str, str] = {}
    for spec in select:
        name, sep, css = spec.partition("=")
        if not sep or name.strip() not in _SELECT_FIELDS or not css.strip():
            raise typer.BadParameter(
                f'"{spec}": use FIELD=CSS with FIELD one of {", ".join(_SELECT_FIELDS)}',
                param_hint="'--select'",
            )
        overrides[name.strip()] = css.strip()
    config: Config | None = None
    if "://" in target:
        with contextlib.suppress(ConfigError, ConfigErrors, OSError):
            config = load_config()
        html = kind == "html" or (kind is None and bool(overrides))
        base = Source(id="try", url=target, type="html" if html else "feed")
    else:
        config = load_config()
        base = config.source(target)
        if kind is not None:
            base = replace(base, type="html" if kind == "html" else "feed")
    if base.type == "html":
        current = base.select or Selectors(item="", title="", link="")
        fields = {f: getattr(current, f) for f in _SELECT_FIELDS}
        fields.update(overrides)
        if not fields["item"] or not fields["title"]:
            raise typer.BadParameter(
                "an HTML listing needs at least --select item=... title=...",
                param_hint="'--select'",
            )
        base = replace(base, select=Selectors(**fields))
    return base, config


def try_source(
    target: Annotated[str, typer.Argument(help="A source id from feeds.yaml, or a URL.")],
    select: Annotated[
        list[str] | None,
        typer.Option(
            "--select", help='Override a selector: FIELD=CSS, e.g. --select "title=p.tit a".'
        ),
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--type", help="feed or html (default: html when --select).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many items.")] = 20,
) -> None:
    """Dry-run one source: fetch, parse and normalize it, print what would be stored.

    Nothing is written. For admins writing selectors: the breakage alarms that
    would mark the source broken are printed as errors here.
    """
    from ..fetch import Fetcher
    from ..ingest import extract

    if kind not in (None, "feed", "html"):
        raise typer.BadParameter(f'"{kind}": use "feed" or "html"', param_hint="'--type'")
    source, config = _try_target(target, select or [], kind)
    sections = config.sections if config else ()

    async def fetch() -> FetchResult:
        async with Fetcher() as fetcher:
            return await fetcher.fetch_url(source.url, source_id=source.id, timeout=source.timeout)

    result = asyncio.run(fetch())
    extracted = extract(source, result, sections, utcnow())
    if extracted.error:
        err_console.print(
            f"[red]{'broken' if extracted.broken else 'error'}[/red] {extracted.error}",
            highlight=False,
        )
        raise typer.Exit(1)
    if extracted.warning:
        err_console.print(f"[yellow]warning[/yellow] {extracted.warning}", highlight=False)
    table = Table(title=f"{source.id}: {len(extracted.items)} items from {result.url}")
    for name in ("date", "section", "title", "canonical link", "excerpt"):
        table.add_column(name, overflow="fold")
    for item in extracted.items[:limit]:
        date = "(none)" if item.date_missing else f"{item.published_at:%Y-%m-%d %H:%M}"
        table.add_row(date, item.section or "", item.title, item.canonical_url, item.excerpt[:160])
    console.print(table)
    if extracted.next_page_url:
        console.print(f"next page: {extracted.next_page_url}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the commands about sources and what they stored to the main app."""
    app.command()(check)
    app.command()(fetch)
    app.command()(status)
    app.command()(items)
    app.command()(migrate)
    app.command("try-source")(try_source)
