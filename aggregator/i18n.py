"""The reader's language: gettext catalogs (Babel) and dates in that language.

The English text is written in the templates and the code (the msgids); a
catalog per other language lives in ``aggregator/locale/<lang>/LC_MESSAGES/``.
``scripts/i18n`` extracts the strings (``babel.cfg``), updates the ``.po``
files and compiles them to ``.mo``; ``setup.py`` compiles them into a built
wheel. A checkout where nobody compiled them (an editable install, a fresh
clone) still works: the ``.po`` is compiled in memory on first use, so a
translation never silently falls back to English for want of a build step.

Dates go through Babel in the reader's language and the site's time zone:
``Mon, Nov 30, 2026`` / ``2026년 11월 30일 (월)``.
"""

from __future__ import annotations

import gettext
import io
import logging
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel.dates import format_date, format_interval
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

__all__ = [
    "DOMAIN",
    "LOCALE_DIR",
    "N_",
    "Translator",
    "format_issue_date",
    "format_item_date",
    "format_period",
    "jinja_context",
    "normalize_language",
    "translator",
]

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"
SOURCE_LANGUAGE = "en"
"""The language the msgids are written in: it needs no catalog."""

# Babel patterns per language; a language without one uses English's.
_ISSUE_DATE = {"en": "EEE, MMM d, y", "ko": "y년 M월 d일 (E)"}
_ITEM_DATE = {"en": "MMM d, y", "ko": "y년 M월 d일"}

Translator = gettext.NullTranslations


def N_(message: str) -> str:
    """Mark ``message`` for extraction; it is translated where it is shown."""
    return message


def normalize_language(tag: str | None) -> str:
    """``ko-KR`` → ``ko``; None or empty → English."""
    return (tag or SOURCE_LANGUAGE).split("-")[0].split("_")[0].lower() or SOURCE_LANGUAGE


@lru_cache(maxsize=16)
def translator(language: str | None) -> gettext.NullTranslations:
    """The catalog for ``language``: the compiled ``.mo``, else the ``.po`` compiled now.

    English, and a language without a catalog, get the identity translation.
    """
    lang = normalize_language(language)
    if lang == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    compiled = folder / f"{DOMAIN}.mo"
    source = folder / f"{DOMAIN}.po"
    if compiled.is_file() and (
        not source.is_file() or compiled.stat().st_mtime >= source.stat().st_mtime
    ):
        with compiled.open("rb") as handle:
            return gettext.GNUTranslations(handle)
    if source.is_file():
        # No build step ran (or the .po is newer): compile in memory.
        with source.open("rb") as handle:
            catalog = read_po(handle, locale=lang, domain=DOMAIN)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        return gettext.GNUTranslations(buffer)
    log.warning("no %s catalog in %s: using English", lang, folder)
    return gettext.NullTranslations()


def jinja_context(language: str | None) -> dict[str, Callable[..., Any]]:
    """``gettext``, ``ngettext`` and ``_`` for a template's context (jinja2.ext.i18n).

    Passed per render rather than installed on the shared environment, so
    two renders in two languages at once (web threads) never mix.
    """
    t = translator(language)
    return {"gettext": t.gettext, "ngettext": t.ngettext, "_": t.gettext}


def _locale(language: str | None) -> str:
    return normalize_language(language)


def format_issue_date(moment: datetime, language: str | None) -> str:
    """``Mon, Nov 30, 2026`` / ``2026년 11월 30일 (월)`` (``moment`` already in the site's zone)."""
    lang = _locale(language)
    return format_date(moment.date(), _ISSUE_DATE.get(lang, _ISSUE_DATE["en"]), locale=lang)


def format_item_date(moment: datetime, language: str | None) -> str:
    """``Nov 30, 2026`` / ``2026년 11월 30일``."""
    lang = _locale(language)
    return format_date(moment.date(), _ITEM_DATE.get(lang, _ITEM_DATE["en"]), locale=lang)


def format_period(start: datetime, end: datetime, language: str | None) -> str:
    """The week an issue covers, e.g. ``2026년 11월 23일~30일``, in the reader's language."""
    return format_interval(start.date(), end.date(), "yMMMd", locale=_locale(language))
