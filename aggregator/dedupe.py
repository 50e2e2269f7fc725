"""Identity and duplicate keys: canonical links, story fingerprints, hashes.

Three questions, three keys. *Is this the same entry of the same source?* The
guid, else the canonical link (tracking and paging parameters removed, so
``pageIndex=1`` and ``pageIndex=2`` of KoBiz name the same column). *Is this
the same story from another source?* The fingerprint of its title and opening
text, insensitive to case, spacing, punctuation and ``[단독]``-style labels.
*Did anything a reader sees change?* The content hash.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from .models import Item, RawEntry

# Parameters that only say how a reader got to a page, never which page it is.
TRACKING_PARAMS = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "gbraid",
        "wbraid",
        "msclkid",
        "yclid",
        "igshid",
        "mc_cid",
        "mc_eid",
        "ref",
        "ref_src",
        "ref_url",
        "cmpid",
        "_ga",
        "_gl",
        "_hsenc",
        "_hsmi",
        "mkt_tok",
        "vero_id",
        "oly_anon_id",
        "oly_enc_id",
        "s_cid",
        "sr_share",
        "ncid",
    }
)
_TRACKING_PREFIXES = ("utm_", "pk_", "__twitter")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = "-._~!$'()*,;:@/?"
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
# Leading labels that news sites put before the same headline: [단독], [포토], (종합), 【속보】.
_TITLE_LABEL = re.compile(r"^\s*(?:[\[［【(（<〈][^\]］】)）>〉]{1,12}[\]］】)）>〉]\s*)+")
_FINGERPRINT_TEXT_CHARS = 200


def _is_tracking(name: str) -> bool:
    lowered = name.lower()
    return lowered in TRACKING_PARAMS or lowered.startswith(_TRACKING_PREFIXES)


def _encode(part: str) -> str:
    return quote(unquote_plus(part), safe=_QUERY_SAFE)


def canonical_url(url: str, *, keep: Sequence[str] | None = None, drop: Sequence[str] = ()) -> str:
    """The stable form of a link, for recognising the same page.

    Lowercases scheme and host, drops the default port, the fragment, tracking
    parameters (``utm_*``, ``fbclid`` ...), parameters with an empty value and
    those in ``drop``; when ``keep`` is given, only those parameters survive.
    The remaining parameters are sorted. ``canonical_url`` of its own output
    returns it unchanged.
    """
    url = url.strip()
    split = _split_http(url)
    if split is None:
        try:
            parts = urlsplit(url)
        except ValueError:
            return url
        split = (parts.scheme, parts.netloc, parts.path, parts.query)
    scheme, netloc, path, query = split
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        return url
    netloc = netloc.lower()
    default_port = _DEFAULT_PORTS[scheme]
    if netloc.endswith(default_port):
        netloc = netloc[: -len(default_port)]
    netloc = netloc.rstrip(":")
    path = quote(path, safe=_PATH_SAFE) or "/"
    if "%" in path:  # else there is no escape to uppercase: spare the regex its scan
        path = _ESCAPE.sub(lambda m: m.group(0).upper(), path)
    keep_set = set(keep) if keep is not None else None
    drop_set = set(drop)
    params: list[tuple[str, str | None]] = []
    for piece in query.split("&"):
        if not piece:
            continue
        raw_name, sep, raw_value = piece.partition("=")
        name = _encode(raw_name)
        decoded_name = unquote_plus(raw_name)
        if keep_set is not None and decoded_name not in keep_set:
            continue
        if decoded_name in drop_set or _is_tracking(decoded_name):
            continue
        if sep and not raw_value:
            continue  # "returnUrl=" says nothing about which page this is
        params.append((name, _encode(raw_value) if sep else None))
    params.sort(key=lambda p: (p[0], p[1] or ""))
    query = "&".join(name if value is None else f"{name}={value}" for name, value in params)
    return urlunsplit((scheme, netloc, path, query, ""))


def _split_http(url: str) -> tuple[str, str, str, str] | None:
    """``urlsplit(url)``'s scheme, host, path, query for a printable ASCII http(s) URL, or None.

    ``urlsplit`` first removes what such a URL cannot hold (leading spaces and
    controls, tabs, newlines), checks brackets (``ValueError``) and non-ASCII
    hosts, then splits at the first "/", "?" or "#" after "//", the first "#"
    and the first "?" before it; that split, done here with three ``find``
    calls, is half of ``canonical_url``'s cost on an entry link.
    ``tests/test_normalize_fast.py`` compares the two on generated URLs.
    """
    if url.startswith("https://"):
        scheme, start = "https", 8
    elif url.startswith("http://"):
        scheme, start = "http", 7
    else:
        return None
    if not (url.isascii() and url.isprintable()) or "[" in url or "]" in url:
        return None
    end = len(url)
    for delimiter in "/?#":
        found = url.find(delimiter, start, end)
        if found >= 0:
            end = found
    rest = url[end:]
    hash_at = rest.find("#")
    if hash_at >= 0:
        rest = rest[:hash_at]
    path, _, query = rest.partition("?")
    return scheme, url[start:end], path, query


# Everything but what str.isalnum accepts: the regex engine's word characters
# are exactly those plus "_" (tests/test_normalize_fast.py checks every code
# point). Deleting them in one regex pass is ~4x faster than filtering in Python.
_NOT_ALNUM = re.compile(r"[\W_]+")


# ASCII that str.isalnum rejects, for bytes.translate to delete.
_ASCII_NOT_ALNUM = bytes(code for code in range(128) if not chr(code).isalnum())


def _key_text(text: str) -> str:
    """Lowercase letters and digits only (Hangul syllables count as letters)."""
    if text.isascii():
        # NFKC leaves ASCII as it is and casefold is lower() on it; deleting
        # bytes in C is ~10x faster than the regex (two thirds of the texts).
        return text.encode("ascii").translate(None, _ASCII_NOT_ALNUM).decode("ascii").lower()
    # Whitespace is never alphanumeric: splitting drops it in C, and the regex
    # runs only on words with something else in them (a quote, a period). It
    # steps through Hangul one failed match at a time, so a fifth less CPU.
    words = unicodedata.normalize("NFKC", text).casefold().split()
    return "".join([word if word.isalnum() else _NOT_ALNUM.sub("", word) for word in words])


def _key_prefix(text: str, length: int) -> str:
    """``_key_text(text)[:length]`` without folding the whole of a long article.

    Folds a growing prefix until it yields more than ``length`` key characters
    (the extra one keeps a character split at the window's edge out of the
    result); on a 3 KB entry this is most of the fingerprint's cost.
    """
    window = length * 2
    while True:
        key = _key_text(text[:window])
        if len(key) > length or window >= len(text):
            return key[:length]
        window *= 4


def fingerprint(title: str, text: str) -> str:
    """A key shared by copies of the same story, however they are dressed.

    Built from the title without leading labels such as ``[단독]`` and the
    first ~200 letters of the text, ignoring case, spaces and punctuation; NFKC
    folds full-width letters and compatibility jamo.
    """
    title_key = _key_text(_TITLE_LABEL.sub("", title))
    text_key = _key_prefix(text, _FINGERPRINT_TEXT_CHARS)
    digest = hashlib.sha256(f"{title_key}\x1f{text_key}".encode())
    return digest.hexdigest()[:32]


def content_hash(
    *,
    title: str,
    url: str,
    summary_html: str,
    content_html: str,
    image_url: str | None,
    author: str | None,
    categories: Sequence[str],
    published_at: datetime,
) -> str:
    """A hash of everything a reader sees of an item; it changes when any of it does.

    The hashed text is ``json.dumps([title, url, summary_html, content_html,
    image_url, author, list(categories), published_at.isoformat()],
    ensure_ascii=False, separators=(",", ":"))``, which stored hashes were
    made from. It is put together here from the same C string encoder that
    ``json.dumps`` uses, which skips building an encoder per item and
    encodes the content once when the summary is the content (most items).
    """
    content = _json_string(content_html)
    summary = content if summary_html == content_html else _json_string(summary_html)
    payload = ",".join(
        (
            _json_string(title),
            _json_string(url),
            summary,
            content,
            _json_optional(image_url),
            _json_optional(author),
            "[" + ",".join(map(_json_string, categories)) + "]",
            _json_string(published_at.isoformat()),
        )
    )
    return hashlib.sha256(f"[{payload}]".encode()).hexdigest()[:32]


# What json.dumps(ensure_ascii=False) writes for a str (the same function).
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _json_optional(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def listing_hash(entries: Sequence[RawEntry]) -> str:
    """A hash of a parsed page's entries, to skip normalizing an unchanged listing.

    Computed from what the parser extracted, not the raw bytes, so rotating
    ads, CSRF tokens or timestamps elsewhere on the page do not count as change.
    The hashed text is ``json.dumps`` of one list per entry (guid, link, title,
    summary, content, date text, ISO dates, image; ``ensure_ascii=False``,
    ``separators=(",", ":")``), which stored hashes were made from; it is put
    together from json's own string encoder as in :func:`content_hash`, which
    encodes an Atom entry's content once when it is also its summary (half of
    the benchmark corpus's entries).
    """
    rows = []
    for e in entries:
        content = _json_optional(e.content_html)
        summary = content if e.summary_html == e.content_html else _json_optional(e.summary_html)
        rows.append(
            ",".join(
                (
                    _json_optional(e.guid),
                    _json_optional(e.link),
                    _json_optional(e.title),
                    summary,
                    content,
                    _json_optional(e.date_text),
                    _json_optional(e.published.isoformat() if e.published else None),
                    _json_optional(e.updated.isoformat() if e.updated else None),
                    _json_optional(e.image_url),
                )
            )
        )
    payload = f"[[{'],['.join(rows)}]]" if rows else "[]"
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def dedupe_batch(items: Iterable[Item]) -> list[Item]:
    """Drop in-batch repeats of the same (source, guid), keeping the last copy.

    A feed that lists an entry twice would otherwise make a multi-row upsert
    fail (PostgreSQL) or depend on row order (SQLite). The surviving copy takes
    the place of the first occurrence.
    """
    by_key: dict[tuple[str, str], Item] = {}
    for item in items:
        by_key[(item.source_id, item.guid)] = item
    return list(by_key.values())
