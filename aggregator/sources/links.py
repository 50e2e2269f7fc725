"""Joining a link to its base URL, cheaply for the links nearly every feed has.

``urljoin`` parses the base and the link, then splits and reassembles the
result; for an absolute http(s) link that is most of what a feed entry's URL
handling costs, in the parser (feedparser's ``_urljoin``) and in normalize.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit, urlunsplit


def join_url(base: str, url: str) -> str:
    """``urljoin(base, url)``, without its two ``urlparse`` calls for an absolute http(s) URL.

    For such a URL ``urljoin`` returns ``url`` when its scheme differs from
    the base's, and else ``url`` split and put back together (which drops an
    empty "?" or "#"). ``urlsplit`` is cached, and the split made here is the
    one ``canonical_url`` asks for next. A ";" (``urlparse`` splits off
    parameters, and drops an empty one) and a URL without a host take
    ``urljoin`` itself. Raises ``ValueError`` where ``urljoin`` does
    (``tests/test_normalize_fast.py`` compares the two on generated URLs).
    """
    if not base or not url.startswith(("https://", "http://")) or ";" in url:
        return urljoin(base, url)
    parts = urlsplit(url)
    if not parts.netloc:
        return urljoin(base, url)
    if parts.scheme != urlsplit(base).scheme:
        return url
    return urlunsplit(parts)
