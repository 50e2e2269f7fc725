"""What a subscriber may choose: the digest's sections and its language.

A subscriber's choice is stored as given (:class:`~aggregator.models.Subscriber`
``sections`` and ``language``); this module knows which choices exist, from
feeds.yaml, and checks them, so the web form, the CLI and an import refuse the
same things with the same words.

``sections=None`` means "every section", including one added to feeds.yaml
later; an explicit list that happens to name every section today is stored
as None too, for the same reason. ``language=None`` means the site's language.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import Config
from .digest import OTHER_SECTION
from .errors import SubscriberError

__all__ = [
    "LANGUAGES",
    "Preferences",
    "SectionChoice",
    "check_preferences",
    "parse_sections",
    "section_choices",
]

LANGUAGES: dict[str, str] = {"en": "English", "ko": "한국어"}
"""The languages a digest can be read in, each named in itself (as a language menu does)."""


@dataclass(frozen=True, slots=True)
class SectionChoice:
    """One checkbox of the preferences form."""

    id: str
    title: str


@dataclass(frozen=True, slots=True)
class Preferences:
    """A checked choice, ready to store: None means "all" / "the site's language"."""

    sections: tuple[str, ...] | None
    language: str | None


def section_choices(config: Config, language: str | None = None) -> tuple[SectionChoice, ...]:
    """The sections a subscriber can pick: ``digest.sections`` in order, then "other news".

    Titled in ``language`` where feeds.yaml gives titles per language.
    """
    choices = [
        SectionChoice(sid, config.section_title(sid, language))
        for sid in dict.fromkeys(config.digest.sections)
    ]
    if config.digest.other_section_title:
        other = config.digest.other_title_for(language) if language else None
        choices.append(SectionChoice(OTHER_SECTION, other or config.digest.other_section_title))
    return tuple(choices)


def parse_sections(raw: str) -> list[str]:
    """``"ko-pick, previews"`` → ``["ko-pick", "previews"]`` (the CLI's and CSV's spelling)."""
    return [part.strip() for part in raw.split(",") if part.strip()]


def check_preferences(
    config: Config, sections: Iterable[str] | None, language: str | None
) -> Preferences:
    """The choice as stored, or :class:`SubscriberError` naming what is unknown.

    Unknown section ids and languages are refused rather than dropped: a
    typo in ``subscribers set`` must not silently leave someone without mail.
    """
    known = [choice.id for choice in section_choices(config)]
    chosen: tuple[str, ...] | None = None
    if sections is not None:
        picked = list(dict.fromkeys(sections))
        unknown = [sid for sid in picked if sid not in known]
        if unknown:
            raise SubscriberError(
                f"unknown section {', '.join(repr(s) for s in unknown)} "
                f"(choose from: {', '.join(known)})"
            )
        # Stored in the digest's order, and "all of them" as None (see the module docstring).
        chosen = None if set(picked) == set(known) else tuple(s for s in known if s in picked)
    if language is not None and language not in LANGUAGES:
        raise SubscriberError(
            f"unknown language {language!r} (choose from: {', '.join(LANGUAGES)})"
        )
    return Preferences(chosen, language)


def describe(sections: Sequence[str] | None, language: str | None) -> str:
    """A short line for the CLI: ``sections ko-pick, previews; language ko``."""
    shown = "all" if sections is None else (", ".join(sections) or "none")
    return f"sections {shown}; language {language or 'site default'}"
