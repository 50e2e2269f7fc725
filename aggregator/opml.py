"""OPML import and export for the ``sources:`` list of feeds.yaml.

Import edits feeds.yaml as text, not by re-dumping YAML, so the admin's
comments and layout survive; the edited text is validated before it replaces
the file (atomically), so a bad import never leaves a broken config behind.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import yaml

from .config import Config, parse_config
from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class OpmlFeed:
    title: str | None
    url: str
    html_url: str | None = None


def read_opml(data: bytes, *, name: str = "OPML") -> list[OpmlFeed]:
    """Every outline with an ``xmlUrl``, at any depth (folders are flattened)."""
    if b"<!DOCTYPE" in data[:2048].upper() or b"<!ENTITY" in data.upper():
        raise ConfigError("DOCTYPE/ENTITY declarations are not allowed in OPML", path=name)
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise ConfigError(f"not valid XML: {exc}", path=name) from None
    if root.tag.lower() != "opml":
        raise ConfigError(f"root element is <{root.tag}>, expected <opml>", path=name)
    feeds = []
    for outline in root.iter("outline"):
        url = outline.get("xmlUrl") or outline.get("xmlurl")
        if url:
            title = outline.get("title") or outline.get("text")
            feeds.append(OpmlFeed(title=title, url=url.strip(), html_url=outline.get("htmlUrl")))
    return feeds


def _slug(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:48] or "feed"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def add_sources_text(text: str, feeds: Sequence[OpmlFeed], config: Config) -> tuple[str, int]:
    """Return feeds.yaml text with the new feeds appended to ``sources:``.

    Feeds whose URL is already configured are skipped; ids are made from the
    titles and kept unique.
    """
    known_urls = {s.url for s in config.sources}
    ids = {s.id for s in config.sources}
    entries = []
    for feed in feeds:
        if feed.url in known_urls:
            continue
        known_urls.add(feed.url)
        base = _slug(feed.title or re.sub(r"^https?://", "", feed.url))
        sid, n = base, 2
        while sid in ids:
            sid, n = f"{base}-{n}", n + 1
        ids.add(sid)
        entries.append((sid, feed))
    if not entries:
        return text, 0

    node = yaml.compose(text) if text.strip() else None
    sources_node = None
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "sources":
                sources_node = value
    lines = text.splitlines(keepends=True)
    if text and not text.endswith("\n"):
        lines[-1] += "\n"

    def block(indent: str) -> list[str]:
        out = []
        for sid, feed in entries:
            out.append(f"{indent}- id: {sid}\n")
            out.append(f"{indent}  url: {_quote(feed.url)}\n")
            if feed.title:
                out.append(f"{indent}  title: {_quote(feed.title)}\n")
        return out

    if (
        isinstance(sources_node, yaml.SequenceNode)
        and sources_node.value
        and not sources_node.flow_style
    ):
        indent = " " * sources_node.value[0].start_mark.column
        insert_at = sources_node.end_mark.line
        # end_mark sits on the line after the last item unless the file ends there.
        if sources_node.end_mark.column != 0:
            insert_at += 1
        lines[insert_at:insert_at] = block(indent)
    elif sources_node is None or (
        isinstance(sources_node, yaml.ScalarNode) and not sources_node.value
    ):
        if sources_node is not None:  # an empty "sources:" line: replace it
            lines = [ln for ln in lines if not re.match(r"^sources:\s*(#.*)?$", ln)]
        lines += ["sources:\n", *block("  ")]
    else:
        raise ConfigError("sources: is written in flow style ([...]); convert it to a list first")
    return "".join(lines), len(entries)


def import_opml(opml_path: Path, config_path: Path) -> int:
    """Append the OPML's feeds to feeds.yaml; returns how many were added."""
    from .config import load_config

    config = load_config(config_path)
    feeds = read_opml(opml_path.read_bytes(), name=str(opml_path))
    text = config_path.read_text(encoding="utf-8")
    new_text, added = add_sources_text(text, feeds, config)
    if not added:
        return 0
    parse_config(new_text, path=config_path)  # refuse to write a config that would not load
    fd, tmp = tempfile.mkstemp(dir=config_path.parent, prefix=".feeds.", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_text)
        os.replace(tmp, config_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return added


def export_opml(config: Config) -> str:
    """OPML 2.0 listing every feed-type source (HTML listings are not feeds)."""
    root = ElementTree.Element("opml", version="2.0")
    head = ElementTree.SubElement(root, "head")
    ElementTree.SubElement(head, "title").text = f"{config.site.title} sources"
    body = ElementTree.SubElement(root, "body")
    for source in config.sources:
        if source.type != "feed":
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
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + ElementTree.tostring(root, encoding="unicode")
        + "\n"
    )
