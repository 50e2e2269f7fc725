"""OPML import and export for the ``sources:`` list of feeds.yaml.

Import edits feeds.yaml with a round-trip YAML library (ruamel.yaml), not by
re-dumping it with PyYAML and not by splicing text: the admin's comments,
blank lines, quoting and key order survive, and the new entries are indented
like the ones already there. The edited text is validated with the same
loader ``check`` and ``run`` use before it replaces the file (atomically), so a
bad import never leaves a broken config behind.
"""

from __future__ import annotations

import copy
import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from .config import Config, parse_config
from .errors import ConfigError

__all__ = [
    "ExportResult",
    "ImportResult",
    "OpmlFeed",
    "add_sources_text",
    "export_opml",
    "import_opml",
    "read_opml",
    "source_id",
]

# Source ids are capped at 64 characters by the config; leave room for "-99".
_ID_STEM_MAX = 48


@dataclass(frozen=True, slots=True)
class OpmlFeed:
    """One ``<outline xmlUrl=...>`` of an OPML file."""

    title: str | None
    url: str
    html_url: str | None = None


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: the ids added, and the URLs skipped as already configured."""

    added: tuple[str, ...] = ()
    already_configured: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExportResult:
    """The OPML text and the sources it could not list (HTML listings have no feed URL)."""

    text: str
    left_out: tuple[str, ...] = field(default=())


def read_opml(data: bytes, *, name: str = "OPML") -> list[OpmlFeed]:
    """Every outline with an ``xmlUrl``, at any depth (folders are flattened)."""
    if b"<!DOCTYPE" in data[:2048].upper() or b"<!ENTITY" in data.upper():
        raise ConfigError("DOCTYPE/ENTITY declarations are not allowed in OPML", path=name)
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        line = exc.position[0] if exc.position else None
        raise ConfigError(f"not valid XML: {exc.msg}", path=name, line=line) from None
    if root.tag.lower() != "opml":
        raise ConfigError(f"root element is <{root.tag}>, expected <opml>", path=name)
    feeds = []
    for outline in root.iter("outline"):
        url = outline.get("xmlUrl") or outline.get("xmlurl")
        if url:
            title = outline.get("title") or outline.get("text")
            feeds.append(OpmlFeed(title=title, url=url.strip(), html_url=outline.get("htmlUrl")))
    return feeds


# ---------------------------------------------------------------------------- ids

# Revised Romanization of Korean, letter by letter (no sound-change rules): ids
# only need to be readable and stable, not a perfect transcription.
# fmt: off
_INITIALS = ("g", "kk", "n", "d", "tt", "r", "m", "b", "pp", "s", "ss", "", "j", "jj", "ch",
             "k", "t", "p", "h")
_MEDIALS = ("a", "ae", "ya", "yae", "eo", "e", "yeo", "ye", "o", "wa", "wae", "oe", "yo", "u",
            "wo", "we", "wi", "yu", "eu", "ui", "i")
_FINALS = ("", "k", "k", "k", "n", "n", "n", "t", "l", "k", "m", "l", "l", "l", "p", "l", "m",
           "p", "p", "t", "t", "ng", "t", "t", "k", "t", "p", "t")
# fmt: on
_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7A3


def _romanize_hangul(text: str) -> str:
    """Hangul syllables spelled in Latin letters, one word per run of syllables."""
    out: list[str] = []
    for char in text:
        code = ord(char)
        if _HANGUL_FIRST <= code <= _HANGUL_LAST:
            offset = code - _HANGUL_FIRST
            initial, medial, final = offset // 588, (offset % 588) // 28, offset % 28
            out.append(_INITIALS[initial] + _MEDIALS[medial] + _FINALS[final])
        else:
            out.append(char)
    return "".join(out)


def _ascii_slug(text: str) -> tuple[str, bool]:
    """The slug, and whether letters were lost (scripts we cannot spell in Latin)."""
    decomposed = unicodedata.normalize("NFKD", _romanize_hangul(text))
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    lost = any(c.isalnum() and not c.isascii() for c in kept)
    slug = re.sub(r"[^a-z0-9]+", "-", kept.encode("ascii", "ignore").decode().lower())
    return slug.strip("-")[:_ID_STEM_MAX].strip("-"), lost


def _host_slug(url: str) -> str:
    host = (urlsplit(url).hostname or "").removeprefix("www.")
    slug = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")
    return slug[:_ID_STEM_MAX].strip("-")


def source_id(title: str | None, url: str, taken: set[str]) -> str:
    """A valid, readable id not in ``taken`` (which it is added to).

    From the title (Hangul romanized: ``씨네21 뉴스`` → ``ssine21-nyuseu``);
    from the feed's host name when the title is missing, has no letters, or is
    in a script that cannot be spelled in Latin letters; ``-2``, ``-3``... on
    a clash.
    """
    stem, lost = _ascii_slug(title or "")
    if lost or not re.search(r"[a-z]", stem):
        stem = _host_slug(url) or stem
    if not stem or not stem[0].isalnum():
        stem = f"feed-{stem}".strip("-")
    candidate, n = stem, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}", n + 1
    taken.add(candidate)
    return candidate


# ------------------------------------------------------------------------- import


def _round_trip(text: str) -> tuple[YAML, Any]:
    """A round-trip loader set up to write the file back in its own indentation."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold the admin's long lines
    try:
        _, indent, dash_offset = load_yaml_guess_indent(text)
        data = yaml.load(text)
    except YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}") from None
    indent = indent or 2
    if dash_offset is None:
        # No block list to copy from: indent the dash like the shipped feeds.yaml.
        yaml.indent(mapping=indent, sequence=2 * indent, offset=indent)
    else:
        mapping_indent = indent - dash_offset if indent > dash_offset else 2
        yaml.indent(mapping=mapping_indent, sequence=indent, offset=dash_offset)
    return yaml, data


def _as_string(value: str) -> str:
    """``value`` quoted if the config loader (PyYAML, YAML 1.1) would read it as no string.

    ruamel.yaml writes YAML 1.2, where ``yes``, ``on`` or ``0x10`` are plain
    strings; PyYAML reads them as a boolean or a number.
    """
    try:
        plain = yaml.safe_load(value)
    except yaml.YAMLError:
        plain = None
    return value if plain == value else DoubleQuotedScalarString(value)


def _tail_comment_slot(node: Any) -> tuple[Any, Any, int] | None:
    """Where ruamel keeps the comments and blank lines after ``node``'s last value.

    They belong to whatever follows the list (often the blank line and the
    heading comment of the next top-level key), so new entries go before them.
    """
    if isinstance(node, CommentedMap) and node:
        key: Any = list(node.keys())[-1]
        position = 2
    elif isinstance(node, CommentedSeq) and node:
        key, position = len(node) - 1, 0
    else:
        return None
    child = node[key]
    if isinstance(child, CommentedMap | CommentedSeq) and child and not child.fa.flow_style():
        return _tail_comment_slot(child)
    entry = node.ca.items.get(key)
    if entry and len(entry) > position and entry[position] is not None:
        return node, key, position
    return None


def _move_tail_comment(slot: tuple[Any, Any, int], sources: CommentedSeq) -> None:
    """Keep an end-of-line comment where it is; move the lines after it past the new entries."""
    holder, key, position = slot
    token = holder.ca.items[key][position]
    value: str = token.value
    cut = value.find("\n") + 1 if value.startswith("#") else 1
    keep, move = value[:cut], value[cut:]
    if not move:
        return
    token.value = keep or "\n"
    moved = copy.copy(token)
    moved.value = "\n" + move
    new_last = sources[-1]
    if isinstance(new_last, CommentedMap) and not new_last.fa.flow_style():
        new_last.ca.items[list(new_last.keys())[-1]] = [None, None, moved, None]
    else:
        sources.ca.items[len(sources) - 1] = [moved, None, None, None]


def add_sources_text(
    text: str, feeds: Sequence[OpmlFeed], config: Config
) -> tuple[str, ImportResult]:
    """feeds.yaml text with the new feeds appended to ``sources:``.

    Feeds whose URL is already configured (or that appear twice in the OPML)
    are skipped; ids are made with :func:`source_id`.
    """
    known_urls = {s.url for s in config.sources}
    taken = {s.id for s in config.sources}
    added: list[tuple[str, OpmlFeed]] = []
    skipped: list[str] = []
    for feed in feeds:
        if feed.url in known_urls:
            skipped.append(feed.url)
            continue
        known_urls.add(feed.url)
        added.append((source_id(feed.title, feed.url, taken), feed))
    if not added:
        return text, ImportResult(already_configured=tuple(skipped))

    yaml, data = _round_trip(text)
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise ConfigError("the top level of feeds.yaml must be a mapping (site:, sources:, ...)")
    sources = data.get("sources")
    if sources is None:
        sources = CommentedSeq()
        data["sources"] = sources
    if not isinstance(sources, CommentedSeq):
        raise ConfigError("sources: must be a list")
    flow_items = (
        bool(sources) and isinstance(sources[-1], CommentedMap) and sources[-1].fa.flow_style()
    )
    tail = _tail_comment_slot(sources)
    for sid, feed in added:
        entry = CommentedMap()
        entry["id"] = _as_string(sid)
        entry["url"] = _as_string(feed.url)
        if feed.title:
            entry["title"] = _as_string(feed.title)
        if flow_items:
            entry.fa.set_flow_style()
        sources.append(entry)
    if tail is not None:
        _move_tail_comment(tail, sources)
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue(), ImportResult(
        added=tuple(sid for sid, _ in added), already_configured=tuple(skipped)
    )


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, keeping its permission bits."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_opml(opml_path: Path, config_path: Path) -> ImportResult:
    """Append the OPML's feeds to feeds.yaml; nothing is written unless the result loads."""
    from .config import load_config

    config = load_config(config_path)
    feeds = read_opml(opml_path.read_bytes(), name=str(opml_path))
    text = config_path.read_text(encoding="utf-8")
    new_text, result = add_sources_text(text, feeds, config)
    if not result.added:
        return result
    try:
        parse_config(new_text, path=config_path)
    except ConfigError as exc:
        raise ConfigError(
            f"importing {opml_path} would make the file invalid, so it was left unchanged: {exc}",
            path=str(config_path),
        ) from None
    _write_atomically(config_path, new_text)
    return result


# ------------------------------------------------------------------------- export


def export_opml(config: Config) -> ExportResult:
    """OPML 2.0 listing every feed-type source; HTML listings are named in ``left_out``."""
    root = ElementTree.Element("opml", version="2.0")
    head = ElementTree.SubElement(root, "head")
    ElementTree.SubElement(head, "title").text = f"{config.site.title} sources"
    body = ElementTree.SubElement(root, "body")
    left_out = []
    for source in config.sources:
        if source.type != "feed":
            left_out.append(source.id)
            continue
        ElementTree.SubElement(
            body,
            "outline",
            type="rss",
            text=source.display_name,
            title=source.display_name,
            xmlUrl=source.url,
        )
    ElementTree.indent(root)
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + ElementTree.tostring(root, encoding="unicode")
        + "\n"
    )
    return ExportResult(text=text, left_out=tuple(left_out))
