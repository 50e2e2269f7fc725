"""Joining a link to its base URL, cheaply for the links nearly every feed has.

``urljoin`` parses the base and the link, then splits and reassembles the
result; for an absolute http(s) link that is most of what a feed entry's URL
handling costs, in the parser (feedparser's ``_urljoin``) and in normalize.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit, urlunsplit


def join_url(base: str, url: str) -> str:
    """``urljoin(base, url)``, without its two ``urlparse`` calls in the common cases.

    ``urljoin`` returns ``url`` itself when its scheme is not the base's (an
    Atom id such as ``urn:uuid:...`` or ``tag:...``), and an absolute URL
    with a host split and put back together (which drops an empty "?" or
    "#"). ``urlsplit`` is cached, and the split made here is the one
    ``canonical_url`` asks for next. A ";" (``urlparse`` splits off
    parameters, and drops an empty one), a relative URL and one without a
    host take ``urljoin`` itself. Raises ``ValueError`` where ``urljoin``
    does (``tests/test_normalize_fast.py`` compares the two on generated URLs).
    """
    if not base or not url:
        return urljoin(base, url)
    if is_plain_absolute(url):
        # Split and put back together it is itself, whichever scheme the base has.
        return url
    scheme = _scheme_without_host(url)
    if scheme is not None and scheme != urlsplit(base).scheme:
        return url  # an Atom id ("tag:...", "urn:..."): no split of a unique string
    parts = urlsplit(url)
    if parts.scheme and parts.scheme != urlsplit(base).scheme:
        return url
    if parts.netloc and ";" not in url and url.startswith(("https://", "http://")):
        return urlunsplit(parts)
    return urljoin(base, url)


def is_plain_absolute(url: str) -> bool:
    """Whether ``urlunsplit(urlsplit(url))`` is ``url`` for this http(s) URL, with no error.

    ``urlsplit`` removes spaces and control characters, lowercases the
    scheme, checks brackets and non-ASCII hosts (``ValueError``) and loses
    an empty query or fragment; ``urlparse`` also splits off ";" parameters.
    A lowercase http(s) URL with a host and none of those is left as it is.
    """
    if url.startswith("https://"):
        host = url[8:9]
    elif url.startswith("http://"):
        host = url[7:8]
    else:
        return False
    return (
        host not in ("", "/", "?", "#")
        and url.isascii()
        and url.isprintable()
        and " " not in url
        and "[" not in url
        and "]" not in url
        and ";" not in url
        and "?#" not in url
        and not url.endswith(("?", "#"))
    )


_SCHEME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."


def _scheme_without_host(url: str) -> str | None:
    """``urlsplit(url).scheme`` when ``url`` has one and no "//" host after it, else None.

    For printable ASCII, ``urlsplit`` removes nothing first; the scheme is
    what precedes the first ":" when that starts with a letter and holds only
    scheme characters. Without a host there is nothing for it to reject
    (``ValueError``), so ``urljoin`` returns such a URL as it is whenever
    its scheme is not the base's.
    """
    colon = url.find(":")
    if colon <= 0 or not url[0].isalpha() or not (url.isascii() and url.isprintable()):
        return None
    if url.startswith("//", colon + 1) or url[:colon].strip(_SCHEME_CHARS):
        return None
    return url[:colon].lower()
