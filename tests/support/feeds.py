"""Small RSS documents for tests that need a feed but not a particular one."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

from aggregator.models import utcnow


def simple_rss(prefix: str, count: int, *, title: str = "{prefix} story {n}") -> str:
    """``count`` entries ``prefix-0`` …, an hour apart, with links under news.example.kr."""
    items = "".join(
        f"<item><guid>{prefix}-{n}</guid><title>{title.format(prefix=prefix, n=n)}</title>"
        f"<link>https://news.example.kr/{prefix}/{n}</link>"
        f"<pubDate>{format_datetime(utcnow() - timedelta(hours=n + 1))}</pubDate>"
        f"<description>Text of {prefix} {n}.</description></item>"
        for n in range(count)
    )
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
        f"<link>https://news.example.kr/</link><description>d</description>{items}"
        "</channel></rss>"
    )
