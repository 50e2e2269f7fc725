"""The ``publish`` and ``serve`` commands, added to the main app by :func:`register`.

Examples::

    aggregator publish                 # write public/feed.atom and public/feed.json
    aggregator serve --port 8080       # then subscribe to http://127.0.0.1:8080/feed.atom
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Annotated

import typer

from ._common import console, err_console, load_config, open_store

log = logging.getLogger("aggregator")

__all__ = ["publish_command", "register", "serve_command"]


def publish_command() -> None:
    """Write the combined feed (Atom and JSON Feed) of the newest items; ping the hub if changed."""
    from ..publish import ping_pending, publish_from_store

    config = load_config()
    store = open_store(config)
    try:
        sections = {section.id: section.title for section in config.sections}
        result = publish_from_store(store, config.site, config.output_dir, sections=sections)
    finally:
        store.close()
    state = "[green]changed[/green]" if result.changed else "[dim]unchanged[/dim]"
    console.print(
        f"{result.atom_path} {state} ({result.item_count} items; also {result.json_path.name})",
        highlight=False,
    )
    if result.ping_pending:
        ping = asyncio.run(ping_pending(config.site, config.output_dir))
        if ping is not None and ping.ok:
            console.print(f"pinged hub {ping.hub_url}", highlight=False)
        elif ping is not None:
            # Never fatal: the ping stays pending and the next publish retries it.
            err_console.print(
                f"[yellow]warning[/yellow] {ping.error} (will retry on the next publish)",
                highlight=False,
            )


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8080,
) -> None:
    """Serve the feeds, the home page and the subscription pages with uvicorn."""
    import uvicorn

    from ..web.app import SECRET_ENV, WebContext, create_app, load_secret

    config = load_config()
    if not os.environ.get(SECRET_ENV):
        log.warning(
            "%s is not set: using a random secret, so confirm and unsubscribe links "
            "stop working when the server restarts",
            SECRET_ENV,
        )
    secret = load_secret(required=False)
    store = open_store(config)
    try:
        app = create_app(WebContext(config=config, store=store, secret=secret))
        console.print(f"serving on http://{host}:{port}/ (feed: /feed.atom)", highlight=False)
        uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add ``publish`` and ``serve`` to the ``aggregator`` command."""
    app.command("publish")(publish_command)
    app.command("serve")(serve_command)
