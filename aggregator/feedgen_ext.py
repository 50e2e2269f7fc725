"""A feedgen extension that fills the gaps feedgen 1.0 leaves in Atom entries.

feedgen's own ``FeedEntry`` loses a link's ``rel``/``type``/``hreflang``/
``title``/``length`` when it writes an entry (it reads them back from the new
XML element instead of the link dict), writes an ``atom:source`` with only a
title and a bare link (RFC 4287 4.2.11 wants the source feed's ``id`` and
``updated`` so a reader can tell where a copied entry came from), and has no
per-entry ``xml:lang``. :class:`AggregatorEntryExtension` repairs all three
while feedgen builds the tree, so nothing is ever patched in serialized text,
and adds the entry's image as Media RSS (``media:thumbnail``/``media:content``).

Use it through :func:`register`::

    fg = FeedGenerator()
    register(fg)
    fe = fg.add_entry(order="append")
    fe.link(href=url, rel="alternate", type="text/html")
    ext = entry_extension(fe)
    ext.source(id="urn:...", title="KoBiz", link="https://...", updated=dt)

feedgen creates its Atom elements without a namespace and declares the Atom
namespace with a literal ``xmlns`` attribute on the root; the elements added
here follow the same convention so they serialize into the Atom namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.util import xml_elem

__all__ = [
    "EXTENSION_NAME",
    "MEDIA_NS",
    "AggregatorEntryExtension",
    "AggregatorFeedExtension",
    "AtomSource",
    "entry_extension",
    "register",
]

#: The attribute name feedgen gives the extension on each ``FeedEntry``.
EXTENSION_NAME = "aggregator"

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
#: Media RSS: what feed readers (newsboat, NetNewsWire, Feedly, reader) read an
#: entry's picture from in Atom, which has no image element of its own.
MEDIA_NS = "http://search.yahoo.com/mrss/"
# The link attributes RFC 4287 4.2.7 allows besides href, in output order.
_LINK_ATTRIBUTES = ("rel", "type", "hreflang", "title", "length")


@dataclass(frozen=True, slots=True)
class AtomSource:
    """The original feed an entry was copied from (RFC 4287 4.2.11)."""

    id: str
    title: str
    link: str | None
    updated: datetime


class AggregatorFeedExtension(BaseExtension):  # type: ignore[misc]  # feedgen is untyped
    """Feed-level half of the extension: feedgen requires one; it adds nothing."""

    def extend_ns(self) -> dict[str, str]:
        # Entry images are written as Media RSS elements; the rest is plain Atom.
        return {"media": MEDIA_NS}


class AggregatorEntryExtension(BaseEntryExtension):  # type: ignore[misc]  # feedgen is untyped
    """Entry-level half: a full ``atom:source``, link attributes, ``xml:lang``."""

    def __init__(self) -> None:
        self._entry: Any = None
        self._source: AtomSource | None = None
        self._language: str | None = None
        self._image: tuple[str, str | None] | None = None

    def bind(self, entry: Any) -> None:
        """Remember the ``FeedEntry`` this extension belongs to, to read its links back."""
        self._entry = entry

    def source(self, *, id: str, title: str, link: str | None, updated: datetime) -> None:
        """Set the ``atom:source`` of the entry; ``updated`` must be timezone-aware."""
        if updated.tzinfo is None:
            raise ValueError("atom:source updated needs a timezone-aware datetime")
        self._source = AtomSource(id=id, title=title, link=link, updated=updated)

    def language(self, language: str | None) -> None:
        """Set ``xml:lang`` on the entry (None leaves the feed's language in force)."""
        self._language = language or None

    def image(self, url: str | None, media_type: str | None = None) -> None:
        """The entry's picture, as ``media:thumbnail`` and ``media:content`` (None: no image).

        ``media_type`` (``image/jpeg``) is written when known; readers that
        show enclosures get one from an ``enclosure`` link the caller adds.
        """
        self._image = (url, media_type) if url else None

    # ------------------------------------------------------------ called by feedgen

    def extend_atom(self, entry: Any) -> Any:
        """Complete the ``<entry>`` element feedgen has just built."""
        if self._language:
            entry.attrib[_XML_LANG] = self._language
        self._restore_link_attributes(entry)
        if self._source is not None:
            self._write_source(entry, self._source)
        if self._image is not None:
            url, media_type = self._image
            xml_elem(f"{{{MEDIA_NS}}}thumbnail", entry, url=url)
            content = xml_elem(f"{{{MEDIA_NS}}}content", entry, url=url, medium="image")
            if media_type:
                content.attrib["type"] = media_type
        return entry

    def extend_rss(self, item: Any) -> Any:
        """RSS output is not published; leave items as feedgen wrote them."""
        return item

    def _restore_link_attributes(self, entry: Any) -> None:
        if self._entry is None:
            return
        links: list[dict[str, Any]] = self._entry.link() or []
        # feedgen writes one direct <link> child per link dict, in list order,
        # and nothing else adds direct <link> children before extensions run.
        elements = entry.findall("link")
        if len(elements) != len(links):
            raise RuntimeError(
                f"feedgen wrote {len(elements)} entry links for {len(links)} set; "
                "the feedgen version is not the one this extension was written for"
            )
        for element, data in zip(elements, links, strict=True):
            for name in _LINK_ATTRIBUTES:
                value = data.get(name)
                if value:
                    element.attrib[name] = str(value)

    @staticmethod
    def _write_source(entry: Any, source: AtomSource) -> None:
        # feedgen's own (incomplete) atom:source is never set by us, but drop
        # one if a caller did, so an entry never carries two.
        for old in entry.findall("source"):
            entry.remove(old)
        element = xml_elem("source", entry)
        xml_elem("id", element).text = source.id
        xml_elem("title", element).text = source.title
        if source.link:
            xml_elem("link", element, rel="alternate", href=source.link)
        xml_elem("updated", element).text = source.updated.isoformat()


def register(fg: Any) -> None:
    """Load the extension into a ``FeedGenerator`` (before or after adding entries)."""
    fg.register_extension(
        EXTENSION_NAME,
        AggregatorFeedExtension,
        AggregatorEntryExtension,
        atom=True,
        rss=False,
    )


def entry_extension(fe: Any) -> AggregatorEntryExtension:
    """The extension instance attached to a ``FeedEntry`` by :func:`register`, bound to it."""
    ext = getattr(fe, EXTENSION_NAME, None)
    if not isinstance(ext, AggregatorEntryExtension):
        raise RuntimeError("the aggregator feedgen extension is not registered on this feed")
    ext.bind(fe)
    return ext
