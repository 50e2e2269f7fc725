"""``/healthz`` for load balancers and admins, ``/metrics`` for Prometheus.

Health is deliberately strict about what makes the service useless (the
database is unreachable, the scheduler stopped, nothing ingested for far
longer than any source's interval: 503) and merely informative about what an
admin should look at but a load balancer should not act on (a broken scraper).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ..models import utcnow
from .context import WebContext

# Ingest is "stale" after this many of the longest source interval.
STALE_FACTOR = 3
MIN_STALE = timedelta(hours=6)


def stale_after(ctx: WebContext) -> timedelta:
    intervals = [s.interval for s in ctx.config.sources if s.enabled]
    return max(MIN_STALE, STALE_FACTOR * max(intervals, default=MIN_STALE))


def health_report(ctx: WebContext) -> tuple[bool, dict[str, Any]]:
    """(healthy, details); runs in a thread because it queries the store."""
    checks: dict[str, Any] = {}
    healthy = True

    db_ok = ctx.store.ping()
    checks["database"] = "ok" if db_ok else "unreachable"
    healthy &= db_ok

    for name, check in ctx.health_checks.items():
        value = check()
        checks[name] = value
        if value is False or value in ("stopped", "error"):
            healthy = False

    if db_ok:
        last = ctx.store.latest_success()
        if last is None:
            checks["last_ingest_age_seconds"] = None
        else:
            age = utcnow() - last
            checks["last_ingest_age_seconds"] = round(age.total_seconds())
            if age > stale_after(ctx):
                checks["ingest"] = f"stale: nothing fetched successfully for {age}"
                healthy = False
        broken = [
            {"source": s.id, "reason": s.broken_reason}
            for s in ctx.store.source_states()
            if s.broken_reason
        ]
        checks["broken_sources"] = broken
    return healthy, checks


def routes(ctx: WebContext) -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        healthy, checks = await asyncio.to_thread(health_report, ctx)
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", "checks": checks},
            status_code=200 if healthy else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(request: Request) -> Response:
        if ctx.metrics_text is None:
            return PlainTextResponse("metrics are collected by `aggregator run`\n", 404)
        text = await asyncio.to_thread(ctx.metrics_text)
        return PlainTextResponse(
            text,
            media_type="text/plain; version=0.0.4",
            headers={"Cache-Control": "no-store"},
        )

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
