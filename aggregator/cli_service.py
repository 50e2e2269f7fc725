"""The ``run`` and ``reload`` commands: the long-running service and its admin handle."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Annotated

import typer

log = logging.getLogger("aggregator")

__all__ = ["register"]


def run_command(
    host: Annotated[str, typer.Option(help="Interface for the web app.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port for the web app.")] = 8080,
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
    """
    from .cli import _config
    from .scheduler import Service
    from .web.app import SECRET_ENV, load_secret

    config = _config()
    if config.queue == "procrastinate" and role != "web":
        from .queue import run_distributed

        asyncio.run(run_distributed(config, role=role, host=host, port=port))
        return
    if role != "worker" and not os.environ.get(SECRET_ENV):
        log.warning(
            "%s is not set: using a random secret; confirm and unsubscribe links "
            "stop working when the service restarts",
            SECRET_ENV,
        )
    secret = load_secret(required=False)
    service = Service(config, role=role, host=host, port=port, secret=secret, watch=watch)
    asyncio.run(service.run())


def reload_command() -> None:
    """Ask the running `aggregator run` to re-read feeds.yaml (sends it SIGHUP)."""
    from .cli import _config, console
    from .errors import AggregatorError
    from .scheduler import pid_file

    config = _config()  # validate first: a broken file is reported here, not in the log
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


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("reload")(reload_command)
