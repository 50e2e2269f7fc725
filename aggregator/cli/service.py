"""The ``run`` and ``reload`` commands: the long-running service and its admin handle."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import INTERRUPTED, console, load_config

if TYPE_CHECKING:
    from ..config import Config
    from ..scheduler import ServiceInfo

log = logging.getLogger("aggregator")

__all__ = ["register"]

DEFAULT_PORT = 8080


def run_command(
    host: Annotated[str, typer.Option(help="Interface for the web app.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="TCP port for the web app (default 8080; a demo config: the port of site.url).",
        ),
    ] = None,
    role: Annotated[
        str,
        typer.Option(help="all (scheduler + web), web (web only) or worker (scheduler only)."),
    ] = "all",
    watch: Annotated[
        bool, typer.Option("--watch/--no-watch", help="Reload feeds.yaml when it changes.")
    ] = True,
) -> None:
    """Run the service: scheduled ingest, publish and weekly digest, plus the web app.

    Stops cleanly on SIGTERM/SIGINT; SIGHUP (or `aggregator reload`) re-reads feeds.yaml.
    Refuses to start when the port is taken or another `run` uses the same database.
    """
    from urllib.parse import urlsplit

    from ..scheduler import Service
    from ..web.app import SECRET_ENV, load_secret

    if role not in ("all", "web", "worker"):
        raise typer.BadParameter(f'"{role}": use all, web or worker', param_hint="'--role'")
    config = load_config()
    if port is None:
        site_port = urlsplit(config.site.url).port
        port = site_port if config.demo and site_port else DEFAULT_PORT
    if config.queue == "procrastinate":
        from ..queue import run_distributed

        if asyncio.run(run_distributed(config, role=role, host=host, port=port)):
            raise typer.Exit(INTERRUPTED)
        return
    if role != "worker" and not config.demo and not os.environ.get(SECRET_ENV):
        log.warning(
            "%s is not set: using a random secret; confirm and unsubscribe links "
            "stop working when the service restarts",
            SECRET_ENV,
        )
    secret = load_secret(required=False)
    if config.demo and not os.environ.get(SECRET_ENV):
        from ..demo import DEMO_SECRET

        # The links in the mails the demo sent were signed with this one.
        secret = DEMO_SECRET
    service = Service(
        config,
        role=role,
        host=host,
        port=port,
        secret=secret,
        watch=watch,
        on_ready=lambda info: _print_started(info, config),
    )
    # Ctrl-C before the service took over the signals (main turns it into
    # "stopped by Ctrl-C", exit 130): nothing ran yet.
    asyncio.run(service.run())
    if service.interrupted:
        raise typer.Exit(INTERRUPTED)
    console.print("aggregator stopped", highlight=False)


def _print_started(info: ServiceInfo, config: Config) -> None:
    """The few lines an admin needs at start, without -v: where to look, what runs when."""
    from zoneinfo import ZoneInfo

    if info.home_url:
        console.print(
            f"aggregator running: home page {info.home_url} · feed {info.feed_url}",
            highlight=False,
            soft_wrap=True,
        )
        if info.public_url != info.home_url:
            console.print(
                f"  public address (site.url): {info.public_url}", highlight=False, soft_wrap=True
            )
    else:
        console.print("aggregator running (worker: no web app)", highlight=False, soft_wrap=True)
    if info.role != "web":
        zone = ZoneInfo(config.site.timezone)
        when = (
            f"{info.next_digest.astimezone(zone):%a %Y-%m-%d %H:%M %Z}"
            if info.next_digest
            else "not scheduled"
        )
        console.print(
            f"  scheduled: {info.sources} sources; next digest {when}",
            highlight=False,
            soft_wrap=True,
        )
    if config.demo and info.home_url:
        base = config.site.url.rstrip("/")
        console.print(
            f"  demo: sample sources at {base}/demo-sources/, mail filed in "
            f"{config.path.parent / 'mail' if config.path else 'mail'}",
            highlight=False,
            soft_wrap=True,
        )
    stop = "Ctrl-C stops it" if sys.stdin.isatty() else "SIGTERM stops it"
    console.print(
        f"  {stop}; `aggregator reload` re-reads {config.path}", highlight=False, soft_wrap=True
    )


def reload_command() -> None:
    """Ask the running `aggregator run` to re-read feeds.yaml (sends it SIGHUP)."""
    from ..errors import AggregatorError
    from ..scheduler import pid_file

    config = load_config()  # validate first: a broken file is reported here, not in the log
    path = pid_file(config)
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        raise AggregatorError(
            f"no running service found ({path} is missing or unreadable); is `aggregator run` up?"
        ) from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise AggregatorError(f"process {pid} from {path} is not running") from None
    console.print(f"asked process {pid} to reload {config.path}", highlight=False)


def demo_command(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Keep the demo's files here (default: a temp dir).")
    ] = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port for the demo web app (0: any free port).")
    ] = 0,
    serve: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            help="Keep serving until Ctrl-C (default: when run in a terminal).",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline offline on bundled sample sources, then show where to look.

    The directory it leaves runs as it is: `aggregator -c DIR/feeds.yaml run`.
    It refuses a directory that already holds a feeds.yaml or a database.
    """
    from rich.table import Table

    from ..demo import DemoResult, run_demo

    keep_serving = sys.stdout.isatty() if serve is None else serve

    def ready(result: DemoResult) -> None:
        table = Table(
            title="aggregator demo: everything ran offline on 127.0.0.1", show_header=False
        )
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        web = result.web_url
        # Web addresses only while something answers them.
        if result.serving:
            table.add_row("Feed (Atom)", f"{web}feed.atom")
            table.add_row("Feed (JSON Feed)", f"{web}feed.json")
            table.add_row("Home page", web)
            if result.digest_id is not None:
                table.add_row("Digest in the archive", f"{web}digests/{result.digest_id}")
        table.add_row("Feed file", str(result.feed_path))
        table.add_row("Digest preview", f"{result.preview_html}\n{result.preview_text}")
        table.add_row(
            "Emails received", "\n".join(str(p) for p in result.mails) or "none (see the log)"
        )
        table.add_row("Stored", f"{result.items} items (+{result.duplicates} duplicates found)")
        table.add_row("Digest", f"{result.digest_items} items in issue #{result.digest_id}")
        table.add_row("Config used", str(result.config_path))
        table.add_row(
            "Look around",
            f"aggregator -c {result.config_path} status\naggregator -c {result.config_path} items",
        )
        console.print(table)
        if keep_serving:
            console.print(f"Serving {web} — press Ctrl-C to stop.", highlight=False)
        else:
            # One unbroken line, to copy: the directory runs as it is.
            console.print(
                f"Serve it: aggregator -c {result.config_path} run  "
                f"(home page {web}, feed {web}feed.atom)",
                highlight=False,
                soft_wrap=True,
            )

    def progress(text: str) -> None:
        console.print(f"[dim]•[/dim] {text}", highlight=False)

    try:
        asyncio.run(
            run_demo(
                directory,
                web_port=port,
                serve_forever=keep_serving,
                on_step=progress,
                on_ready=ready,
            )
        )
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None
    if keep_serving:
        # Serving stops only on Ctrl-C (or SIGTERM), after the server closed cleanly.
        raise typer.Exit(INTERRUPTED)


def worker_command(
    concurrency: Annotated[int, typer.Option(help="Jobs run at once by this worker.")] = 4,
) -> None:
    """Run a procrastinate worker (distributed mode: storage.queue: procrastinate, PostgreSQL)."""
    from ..queue import require_distributed, run_distributed

    config = load_config()
    require_distributed(config, "workers")
    if asyncio.run(run_distributed(config, role="worker", concurrency=concurrency)):
        raise typer.Exit(INTERRUPTED)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker_command)
    app.command("demo")(demo_command)
    app.command("run")(run_command)
    app.command("reload")(reload_command)
