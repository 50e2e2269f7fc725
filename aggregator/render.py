"""Render the weekly digest (MJML email + plain text) and the public HTML pages.

The digest goes Jinja2 → MJML → HTML through mjml-python, and Jinja2 → plain
text for the ``text/plain`` part. Jinja2 autoescaping is on for every markup
template, and everything that came from a feed is handed to the templates as
plain text (titles, excerpts, source names), never as HTML: mjml-python passes
raw HTML straight through, so an unescaped ``</mj-text>`` in a title would
break the layout and a ``<script>`` would reach the mailbox.

Templates ship with the package (the repository's top-level ``templates/``,
copied into the wheel as ``aggregator/templates``). An admin overrides any of
them with a directory named by ``site.templates`` in feeds.yaml, or by
``$AGGREGATOR_TEMPLATES``: a template found there wins, the others still come
from the bundled set.
"""

from __future__ import annotations

import binascii
import math
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from html import escape as html_escape
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import mjml
from markupsafe import Markup

from .errors import RenderError
from .models import Digest, DigestSettings, Site, StoredItem

__all__ = [
    "ENCODED_HTML_BUDGET",
    "HTML_BUDGET_BYTES",
    "TEMPLATES_ENV_VAR",
    "UNSUBSCRIBE_PLACEHOLDER",
    "RenderedConfirmation",
    "RenderedDigest",
    "build_preheader",
    "css_value",
    "default_feed_urls",
    "encoded_html_size",
    "format_subject",
    "public_issue_html",
    "render_archive_index",
    "render_confirmation",
    "render_digest",
    "render_home",
    "render_page",
    "site_links",
    "template_dirs",
    "templates_dir",
]

UNSUBSCRIBE_PLACEHOLDER = "%%UNSUBSCRIBE_URL%%"
"""Stands in for the subscriber's unsubscribe URL; delivery replaces it per recipient."""

TEMPLATES_ENV_VAR = "AGGREGATOR_TEMPLATES"

HTML_BUDGET_BYTES = 98_000
"""Largest digest HTML we emit, in UTF-8 bytes (see also :data:`ENCODED_HTML_BUDGET`)."""

ENCODED_HTML_BUDGET = 88_000
"""Largest digest HTML part *as sent*: quoted-printable, CRLF line ends, in bytes.

Gmail clips a message whose HTML is over about 102 KB, and counts what it
received, not the decoded text: Korean is 3 UTF-8 bytes a syllable and 9 once
quoted-printable, so an issue that is 98 KB decoded was 104 KB on the wire.
We aim under 90 KB as sent, and keep 2 KB of that for delivery swapping the
unsubscribe placeholder for each subscriber's real URL.
"""

FONT_STACK = (
    "-apple-system, 'Segoe UI', Roboto, 'Apple SD Gothic Neo', 'Malgun Gothic', "
    "'Noto Sans KR', 'Nanum Gothic', sans-serif"
)

DIGEST_MJML_TEMPLATE = "digest.mjml.j2"
CONFIRM_MJML_TEMPLATE = "confirm.mjml.j2"
CONFIRM_TEXT_TEMPLATE = "mail/confirm.txt.j2"
DIGEST_TEXT_TEMPLATE = "digest.txt.j2"
ARCHIVE_TEMPLATE = "archive.html.j2"
HOME_TEMPLATE = "home.html.j2"

FEED_TYPES = {"atom": "application/atom+xml", "json": "application/feed+json"}
"""Keys accepted in ``render_home(feed_urls=...)`` and the MIME type announced for each."""

_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class RenderedDigest:
    """The two MIME parts of a digest plus its subject and preheader.

    Both ``html`` and ``text`` contain ``unsubscribe_url`` verbatim (by default
    :data:`UNSUBSCRIBE_PLACEHOLDER`), for delivery to fill in per subscriber.
    """

    html: str
    text: str
    subject: str
    preheader: str


# ------------------------------------------------------------------------ templates


def templates_dir() -> Path:
    """The bundled templates: inside the installed package, or the checkout's ``templates/``.

    A wheel carries them as ``aggregator/templates`` (see setup.py); a source
    checkout or an editable install reads the top-level directory in place.
    """
    packaged = resources.files(__package__ or "aggregator") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "templates"


def template_dirs(site: Site | None = None) -> tuple[Path, ...]:
    """Where templates are looked up, first match wins.

    ``$AGGREGATOR_TEMPLATES``, then ``site.templates`` (feeds.yaml), then the
    bundled set, so an override directory need only hold the templates it changes.
    """
    dirs: list[Path] = []
    override = os.environ.get(TEMPLATES_ENV_VAR)
    if override:
        dirs.append(Path(override))
    if site is not None and site.templates:
        dirs.append(Path(site.templates))
    dirs.append(templates_dir())
    return tuple(dirs)


@lru_cache(maxsize=8)
def _environment(directories: tuple[str, ...]) -> jinja2.Environment:
    def autoescape(name: str | None) -> bool:
        # Only the plain-text part is unescaped; its values are plain text anyway.
        return not (name or "").endswith(".txt.j2")

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(directories)),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["css"] = css_value
    return env


_CSS_VALUE = re.compile(r"^[\w\s,.'\"#%()-]*$")


def css_value(value: object) -> Markup:
    """``value`` for a ``<style>`` block, where HTML escaping does not apply.

    Browsers read a ``<style>`` element's text raw: an escaped quote
    (``&#39;Segoe UI&#39;``) is not a quote there but a syntax error that
    drops the whole declaration. So CSS values skip autoescaping, and in
    exchange only characters a font stack, a colour or a length needs are
    let through; anything else (``<``, ``;``, braces) raises
    :class:`RenderError` instead of reaching the page.
    """
    text = str(value)
    if not _CSS_VALUE.match(text):
        raise RenderError(f"not a safe CSS value for a <style> block: {text!r}")
    return Markup(text)


def _template(name: str, site: Site) -> jinja2.Template:
    directories = template_dirs(site)
    env = _environment(tuple(str(d) for d in directories))
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound as error:
        where = ", ".join(str(d) for d in directories)
        raise RenderError(f"template {name} not found in {where}") from error
    except jinja2.TemplateSyntaxError as error:
        raise RenderError(
            f"{error.filename or name}:{error.lineno}: template syntax error: {error.message}"
        ) from error


def _render_template(name: str, site: Site, context: Mapping[str, Any]) -> str:
    template = _template(name, site)
    try:
        return template.render(context)
    except jinja2.TemplateError as error:
        raise RenderError(f"{template.filename or name}: template error: {error}") from error


def _mjml_to_html(source: str, site: Site, template: str = DIGEST_MJML_TEMPLATE) -> str:
    try:
        return mjml.mjml2html(source, fonts={}, disable_comments=True)
    except Exception as error:  # mjml-python raises ValueError; be safe with the Rust layer
        path = _template(template, site).filename or template
        raise RenderError(f"{path}: MJML could not be rendered: {error}") from error


# --------------------------------------------------------------------------- values


def _zone(site: Site) -> ZoneInfo:
    try:
        return ZoneInfo(site.timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise RenderError(f"site.timezone: unknown time zone {site.timezone!r}") from error


def _long_date(moment: datetime) -> str:
    return f"{moment:%B} {moment.day}, {moment.year}"


def _short_date(moment: datetime) -> str:
    return f"{moment:%b} {moment.day}, {moment.year}"


def _period_text(start: datetime, end: datetime) -> str:
    """``Nov 2 – 9, 2026``, ``Oct 26 – Nov 2, 2026`` or ``Dec 28, 2026 – Jan 4, 2027``."""
    if start.year != end.year:
        return f"{_short_date(start)} – {_short_date(end)}"
    if start.month != end.month:
        return f"{start:%b} {start.day} – {end:%b} {end.day}, {end.year}"
    return f"{start:%b} {start.day} – {end.day}, {end.year}"


def _defuse(text: str) -> str:
    """Keep feed text from smuggling in the per-subscriber placeholder."""
    if UNSUBSCRIBE_PLACEHOLDER in text:
        # A zero-width space between the closing percent signs: delivery no longer
        # matches it, a reader sees the same characters.
        return text.replace(UNSUBSCRIBE_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER[:-1] + "\u200b%")
    return text


def _safe_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) URL we can put in href/src, else None.

    Rejects other schemes (``javascript:``, ``data:``), whitespace and control
    characters, and URLs carrying the unsubscribe placeholder (delivery would
    otherwise hand a subscriber's unsubscribe link to a third-party site).
    """
    if not url:
        return None
    url = url.strip()
    if _CONTROL_OR_SPACE.search(url) or UNSUBSCRIBE_PLACEHOLDER in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url


def _language(tag: str | None) -> str | None:
    return tag if tag and _LANGUAGE_TAG.match(tag) else None


def _plural(count: int, noun: str) -> str:
    """``3 Ko-pick columns`` / ``1 Ko-pick column`` for an English section title."""
    words = noun.split()
    if count == 1 and words:
        last = words[-1]
        if last.endswith("ies") and len(last) > 3:
            words[-1] = last[:-3] + "y"
        elif last.endswith("s") and not last.endswith(("ss", "us", "news")):
            words[-1] = last[:-1]
    return f"{count} {' '.join(words)}"


def _mid_sentence(title: str) -> str:
    """Lower-case a leading capital that only marks the start of a title ("Film previews")."""
    first, _, rest = title.partition(" ")
    if first.isascii() and first.isalpha() and first[:1].isupper() and first[1:].islower():
        return first.lower() + (" " + rest if rest else "")
    return title


def build_preheader(digest: Digest) -> str:
    """Summarise an issue: ``3 Ko-pick columns, 2 film previews and 4 more stories``.

    The first two non-empty sections are named; the rest are counted together.
    """
    sections = [s for s in digest.sections if s.items]
    if not sections:
        return "No new stories this week"
    named = sections[:2]
    parts = [_plural(len(s.items), _mid_sentence(s.title)) for s in named]
    rest = sum(len(s.items) for s in sections[2:])
    if rest:
        parts.append(f"{rest} more {'story' if rest == 1 else 'stories'}")
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True)
class _ItemView:
    title: str
    url: str | None
    source: str
    author: str | None
    date: str
    excerpt: str
    image_url: str | None
    language: str | None


@dataclass(frozen=True)
class _SectionView:
    id: str
    title: str
    items: tuple[_ItemView, ...]
    more: int = 0  # items left out to keep the email under Gmail's clipping size
    over_cap: int = 0  # items of the period beyond digest.max_items_per_section


def _item_view(item: StoredItem, zone: ZoneInfo, site_language: str) -> _ItemView:
    language = _language(item.language)
    return _ItemView(
        title=_defuse(item.title.strip()) or "(untitled)",
        url=_safe_url(item.url),
        source=_defuse(item.source_title.strip()),
        author=_defuse(item.author.strip()) if item.author else None,
        date=_short_date(item.published_at.astimezone(zone)),
        excerpt=_defuse(item.excerpt.strip()),
        image_url=_safe_url(item.image_url),
        language=language if language and language != site_language else None,
    )


def _section_views(digest: Digest, zone: ZoneInfo, site_language: str) -> list[_SectionView]:
    return [
        _SectionView(
            id=section.id,
            title=_defuse(section.title),
            items=tuple(_item_view(item, zone, site_language) for item in section.items),
            over_cap=section.more,
        )
        for section in digest.sections
        if section.items
    ]


def _drop_from_largest(sections: list[_SectionView], count: int) -> list[_SectionView]:
    """Remove ``count`` items, one at a time from the end of the currently largest section."""
    result = list(sections)
    for _ in range(count):
        index = max(range(len(result)), key=lambda i: (len(result[i].items), -i))
        section = result[index]
        if not section.items:
            break
        result[index] = replace(section, items=section.items[:-1], more=section.more + 1)
    return result


def encoded_html_size(html: str) -> int:
    """Bytes the HTML part takes on the wire: quoted-printable with CRLF line ends.

    The same encoding :mod:`aggregator.deliver` uses (``binascii.b2a_qp``), so
    this is the size Gmail's clipping sees, minus the part headers.
    """
    encoded = binascii.b2a_qp(html.encode("utf-8"), istext=True)
    return len(encoded) + encoded.count(b"\n")  # each LF goes out as CRLF


# --------------------------------------------------------------------------- digest


def format_subject(
    settings: DigestSettings, site: Site, period_start: datetime, period_end: datetime
) -> str:
    """Fill ``settings.subject`` with ``site_title``, ``period_start`` and ``period_end``.

    The dates are converted to the site's time zone first, so
    ``{period_start:%b %d}`` shows the local date. An unknown placeholder (or a
    malformed format string) raises :class:`RenderError` naming it.
    """
    zone = _zone(site)
    values: dict[str, Any] = {
        "site_title": site.title,
        "period_start": period_start.astimezone(zone),
        "period_end": period_end.astimezone(zone),
    }
    known = ", ".join("{" + name + "}" for name in values)
    fmt = settings.subject
    try:
        for _, field_name, _, _ in string.Formatter().parse(fmt):
            if field_name is None:
                continue
            root = re.split(r"[.\[]", field_name, maxsplit=1)[0]
            if root not in values:
                shown = "{" + field_name + "}" if field_name else "{}"
                raise RenderError(
                    f"digest.subject: unknown placeholder {shown} in {fmt!r}; use {known}"
                )
        subject = fmt.format(**values)
    except RenderError:
        raise
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
        raise RenderError(f"digest.subject: cannot format {fmt!r}: {error}") from error
    # A subject is one header line: no CR/LF, no runs of whitespace.
    return " ".join(subject.split())


def render_digest(
    digest: Digest,
    site: Site,
    *,
    view_url: str,
    unsubscribe_url: str = UNSUBSCRIBE_PLACEHOLDER,
    web: bool = False,
) -> RenderedDigest:
    """Render one issue as an HTML email (via MJML) and its plain-text alternative.

    Every item shows its title (linked), source, date, excerpt, image (http(s)
    only) and a "Read more" button. The footer carries the postal address, the
    ``view_url`` ("View in browser") and ``unsubscribe_url`` links. If the HTML
    would exceed :data:`HTML_BUDGET_BYTES`, items are dropped from the end of the
    largest section and a "N more on the website" line takes their place; the
    text part always lists every item. The budget is
    :data:`ENCODED_HTML_BUDGET`, on the size as sent (:func:`encoded_html_size`).
    A section that had more items than ``digest.max_items_per_section`` says
    "and N more in this section", linked to the web archive (``view_url``).

    ``web=True`` renders the public web copy: no "you are receiving this"
    notice and no unsubscribe link (nobody subscribed to a web page).
    Raises :class:`RenderError` when a template or its MJML is broken.
    """
    safe_view_url = _safe_url(view_url)
    if safe_view_url is None:
        raise RenderError(f"view_url must be an absolute http(s) URL, got {view_url!r}")
    if unsubscribe_url != UNSUBSCRIBE_PLACEHOLDER and _safe_url(unsubscribe_url) is None:
        raise RenderError(
            f"unsubscribe_url must be an absolute http(s) URL or {UNSUBSCRIBE_PLACEHOLDER}, "
            f"got {unsubscribe_url!r}"
        )
    site_url = _safe_url(site.url)
    zone = _zone(site)
    language = _language(site.language) or "en"
    sections = _section_views(digest, zone, language)
    preheader = " ".join((digest.preheader or build_preheader(digest)).split())
    subject = " ".join(digest.subject.split())
    issue_date = _long_date(digest.period_end.astimezone(zone))
    period = _period_text(digest.period_start.astimezone(zone), digest.period_end.astimezone(zone))
    context: dict[str, Any] = {
        "site_title": site.title,
        "site_url": site_url,
        "site_description": site.description,
        "postal_address": site.postal_address,
        "language": language,
        "subject": subject,
        "preheader": preheader,
        "issue_date": issue_date,
        "period": period,
        "item_count": digest.item_count,
        "view_url": safe_view_url,
        "unsubscribe_url": unsubscribe_url,
        "font_stack": FONT_STACK,
        "web": web,
    }

    def render_html(views: list[_SectionView]) -> str:
        source = _render_template(DIGEST_MJML_TEMPLATE, site, {**context, "sections": views})
        return _mjml_to_html(source, site)

    html = render_html(sections)
    size = _over_budget(html)
    shown = sum(len(s.items) for s in sections)
    while size > 0 and shown > 0:
        # Guess how many items to drop from the average item size, then re-check;
        # dropping one at a time would re-render dozens of times for a big issue.
        per_item = max(1, encoded_html_size(html) // max(shown, 1))
        drop = max(1, min(shown, math.ceil(size / per_item)))
        sections = _drop_from_largest(sections, drop)
        shown -= drop
        html = render_html(sections)
        size = _over_budget(html)
    if size > 0:
        raise RenderError(
            f"{_template(DIGEST_MJML_TEMPLATE, site).filename}: the email is "
            f"{encoded_html_size(html)} bytes as sent even without items "
            f"(limit {ENCODED_HTML_BUDGET})"
        )

    full_sections = _section_views(digest, zone, language)
    text = _render_template(DIGEST_TEXT_TEMPLATE, site, {**context, "sections": full_sections})
    return RenderedDigest(html=html, text=text, subject=subject, preheader=preheader)


@dataclass(frozen=True)
class RenderedConfirmation:
    """The double opt-in email's two parts and subject."""

    html: str
    text: str
    subject: str


def render_confirmation(
    site: Site, *, name: str | None, email: str, confirm_url: str, valid_days: int = 7
) -> RenderedConfirmation:
    """The confirmation email in the digest's MJML design, and its plain-text part.

    ``name`` and ``email`` are what the visitor typed and are escaped like feed
    text. The HTML is responsive (MJML's one-column layout at phone widths) and
    the long confirmation URL is shown breakable, so it never widens the page.
    """
    safe_confirm = _safe_url(confirm_url)
    if safe_confirm is None:
        raise RenderError(f"confirm_url must be an absolute http(s) URL, got {confirm_url!r}")
    subject = f"Confirm your subscription to {site.title}"
    context: dict[str, Any] = {
        **_page_context(site),
        "subject": subject,
        "preheader": f"One click and {site.title} arrives every week.",
        "name": _defuse(" ".join((name or "").split())) or None,
        "email": email,
        "confirm_url": safe_confirm,
        "valid_days": valid_days,
    }
    source = _render_template(CONFIRM_MJML_TEMPLATE, site, context)
    html = _mjml_to_html(source, site, CONFIRM_MJML_TEMPLATE)
    text = _render_template(CONFIRM_TEXT_TEMPLATE, site, {**context, "site_url": site.url})
    return RenderedConfirmation(html=html, text=text, subject=subject)


def _over_budget(html: str) -> int:
    """By how many bytes ``html`` exceeds either budget (0 when within both)."""
    return max(
        encoded_html_size(html) - ENCODED_HTML_BUDGET,
        len(html.encode("utf-8")) - HTML_BUDGET_BYTES,
        0,
    )


_UNSUBSCRIBE_ANCHOR = re.compile(
    r"<a\b[^>]*\bhref=\"" + re.escape(UNSUBSCRIBE_PLACEHOLDER) + r"\"[^>]*>(?P<label>.*?)</a>",
    re.DOTALL,
)


# What only a subscriber's copy says ("You are receiving this because you
# subscribed…"): the template wraps it in this element, and the public web
# copy of a frozen issue leaves it out. No element is nested inside it.
SUBSCRIBER_ONLY_CLASS = "subscriber-only"
_SUBSCRIBER_ONLY = re.compile(
    r'<div class="' + SUBSCRIBER_ONLY_CLASS + r'"[^>]*>.*?</div>', re.DOTALL
)


_TO_ARCHIVE = re.compile(r'<a class="to-archive"[^>]*>(?P<label>[^<]*)</a>')


def public_issue_html(
    html: str,
    *,
    subscribe_url: str | None,
    site: Site | None = None,
    more_html: str = "",
) -> str:
    """The web-archive copy of a frozen issue: no unsubscribe placeholder left in it.

    The subscriber-only notice ("You are receiving this because you
    subscribed…") is removed: a web visitor subscribed to nothing. The email's
    links to this very page ("and N more in this section") become plain text,
    or, given ``more_html`` (:func:`render_more_items`: the items the cap left
    out), links to that list, which is added at the end of the page.

    Each unsubscribe link becomes a "Subscribe" link to ``subscribe_url`` (or
    is dropped, keeping nothing, when ``subscribe_url`` is None); any other
    occurrence of :data:`UNSUBSCRIBE_PLACEHOLDER` is replaced the same way, so
    the page never carries a token-shaped hole that something could fill.

    As a web page the issue gets what an email does without: its content in
    one ``<main>`` landmark and, given ``site``, the feeds announced with
    ``<link rel="alternate">`` like every other page of the site.
    """
    safe = _safe_url(subscribe_url) if subscribe_url else None
    if safe is None:
        replacement = ""
    else:
        href = html_escape(safe, quote=True)
        replacement = f'<a href="{href}" style="color:#4a4a4a;">Subscribe</a>'
    html = _SUBSCRIBER_ONLY.sub("", html)
    # On the archive page a link to the archive page would only reload it.
    if more_html:
        html = _TO_ARCHIVE.sub(
            rf'<a href="#{MORE_ANCHOR}" style="color:#9c2b23;">\g<label></a>', html
        )
    else:
        html = _TO_ARCHIVE.sub(r"\g<label>", html)
    html = _UNSUBSCRIBE_ANCHOR.sub(replacement, html)
    html = html.replace(UNSUBSCRIBE_PLACEHOLDER, html_escape(safe or "", quote=True))
    if site is not None and "</head>" in html:
        links = "".join(
            f'<link rel="alternate" type="{feed["type"]}" '
            f'title="{html_escape(site.title, quote=True)}'
            f'{" (JSON Feed)" if feed["kind"] == "json" else ""}" '
            f'href="{html_escape(feed["url"], quote=True)}">'
            for feed in site_links(site)["feeds"]
        )
        html = html.replace("</head>", links + "</head>", 1)
    body = _BODY_OPEN.search(html)
    if body is not None and "<main" not in html and html.count("</body>") == 1:
        html = html[: body.end()] + "<main>" + html[body.end() :]
        html = html.replace("</body>", "</main></body>")
    if more_html:
        if html.count("</main>") == 1:
            html = html.replace("</main>", more_html + "</main>")
        else:
            html += more_html
    return html


MORE_ANCHOR = "more"
"""The id of the archive page's list of the items an issue's cap left out."""


def render_more_items(sections: Sequence[tuple[str, Sequence[StoredItem]]], site: Site) -> str:
    """The items a frozen issue left out (its per-section cap), as a list for its web page.

    The email says "and N more in this section" and links to the issue's
    archive page; this is what that link promises. Each item keeps its own
    language mark, like the items of the issue itself.
    """
    parts: list[str] = []
    for title, items in sections:
        if not items:
            continue
        entries = []
        for item in items:
            href = _safe_url(item.url)
            label = html_escape(item.title)
            marked = item.language and item.language != site.language
            lang = f' lang="{html_escape(item.language or "", quote=True)}"' if marked else ""
            link = f'<a href="{html_escape(href, quote=True)}">{label}</a>' if href else label
            entries.append(
                f'<li{lang}>{link} <span style="color:#5f5a54;">'
                f"· {html_escape(item.source_title)}</span></li>"
            )
        parts.append(f"<h3>{html_escape(title)}</h3><ul>{''.join(entries)}</ul>")
    if not parts:
        return ""
    return (
        f'<section id="{MORE_ANCHOR}" style="max-width:600px;margin:24px auto;'
        'padding:0 16px;font-family:sans-serif;color:#2b2b2b;">'
        f"<h2>More from this issue&#8217;s week</h2>{''.join(parts)}</section>"
    )


_BODY_OPEN = re.compile(r"<body\b[^>]*>")


# ---------------------------------------------------------------------------- pages


ARCHIVE_PATH = "digests/"
SUBSCRIBE_PATH = "subscribe"
"""Where the web app serves the archive and the subscribe form, relative to ``site.url``."""


def site_links(site: Site) -> dict[str, Any]:
    """The links every public page carries: home, archive, subscribe, and the two feeds.

    Every page (home, archive, the subscribe and unsubscribe pages) announces
    the feeds with ``<link rel="alternate">`` and shows them, the archive and
    the subscribe form in its header, so no page is a dead end.
    """
    base = site.url.rstrip("/") + "/"
    return {
        "home_url": _safe_url(base),
        "archive_url": _safe_url(base + ARCHIVE_PATH),
        "subscribe_url": _safe_url(base + SUBSCRIBE_PATH),
        "feeds": [
            {"kind": kind, "type": FEED_TYPES[kind], "url": url}
            for kind, url in default_feed_urls(site).items()
            if _safe_url(url)
        ],
    }


def _page_context(site: Site) -> dict[str, Any]:
    return {
        "site_title": site.title,
        "site_url": _safe_url(site.url),
        "site_description": site.description,
        "postal_address": site.postal_address,
        "language": _language(site.language) or "en",
        "font_stack": FONT_STACK,
        "current": "",
        "masthead_heading": True,
        **site_links(site),
    }


def render_page(template: str, site: Site, context: Mapping[str, Any]) -> str:
    """Render a page template (one that extends ``_page.html.j2``) with the site's links.

    Used by the subscribe, confirm and unsubscribe pages
    (``mail/page.html.j2``), so they share the home page's header, footer and
    feed links. ``context`` wins over the defaults.
    """
    return _render_template(template, site, {**_page_context(site), **context})


def _default_issue_url(site: Site) -> Callable[[Digest], str | None]:
    def issue_url(digest: Digest) -> str | None:
        if digest.id is None:
            return None
        return site.url.rstrip("/") + f"/digests/{digest.id}"

    return issue_url


def render_archive_index(
    digests: Sequence[Digest],
    site: Site,
    *,
    issue_url: Callable[[Digest], str | None] | None = None,
    subscribe_url: str | None = None,
) -> str:
    """An HTML5 page listing past issues, newest first, each linked to its web copy.

    ``issue_url`` maps a digest to its page; by default ``<site.url>/digests/<id>``
    (digests without an id are listed without a link). ``subscribe_url`` adds a
    link to the subscribe form.
    """
    zone = _zone(site)
    link_for = issue_url or _default_issue_url(site)
    issues = [
        {
            "subject": digest.subject,
            "url": _safe_url(link_for(digest)),
            "date": _long_date(digest.period_end.astimezone(zone)),
            "iso_date": digest.period_end.astimezone(zone).date().isoformat(),
            "item_count": digest.item_count,
            "summary": digest.preheader or build_preheader(digest),
        }
        for digest in sorted(digests, key=lambda d: d.period_end, reverse=True)
    ]
    context = {**_page_context(site), "issues": issues, "current": "archive"}
    if subscribe_url:
        context["subscribe_url"] = _safe_url(subscribe_url)
    return _render_template(ARCHIVE_TEMPLATE, site, context)


FEED_FILENAMES = {"atom": "feed.atom", "json": "feed.json"}
"""The published feed files, relative to ``site.url``."""


def default_feed_urls(site: Site) -> dict[str, str]:
    """``{"atom": <site.url>/feed.atom, "json": <site.url>/feed.json}``."""
    base = site.url.rstrip("/") + "/"
    return {kind: base + name for kind, name in FEED_FILENAMES.items()}


def render_home(
    items: Sequence[StoredItem],
    site: Site,
    *,
    feed_urls: Mapping[str, str] | None = None,
    archive_url: str | None = None,
    subscribe_url: str | None = None,
) -> str:
    """The public home page: recent items plus feed autodiscovery links.

    ``feed_urls`` maps ``"atom"`` and/or ``"json"`` to the published feed URLs
    (default: :func:`default_feed_urls`); each becomes a ``<link rel="alternate">``
    in the head and a visible link. ``archive_url`` and ``subscribe_url`` add
    links to the digest archive and the subscribe form.
    """
    if feed_urls is None:
        feed_urls = default_feed_urls(site)
    unknown = sorted(set(feed_urls) - set(FEED_TYPES))
    if unknown:
        raise RenderError(
            f"feed_urls: unknown feed type {unknown[0]!r}; use {', '.join(FEED_TYPES)}"
        )
    feeds = []
    for kind, url in feed_urls.items():
        safe = _safe_url(url)
        if safe is None:
            raise RenderError(f"feed_urls[{kind!r}]: not an absolute http(s) URL: {url!r}")
        feeds.append({"kind": kind, "type": FEED_TYPES[kind], "url": safe})
    zone = _zone(site)
    context = _page_context(site)
    views = [_item_view(item, zone, context["language"]) for item in items]
    context.update(items=views, feeds=feeds, current="home")
    if archive_url:
        context["archive_url"] = _safe_url(archive_url)
    if subscribe_url:
        context["subscribe_url"] = _safe_url(subscribe_url)
    return _render_template(HOME_TEMPLATE, site, context)
