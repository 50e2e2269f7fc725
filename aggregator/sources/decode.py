"""Turn the bytes of an HTML page into text without mojibake.

Korean sites still serve EUC-KR pages, often with a wrong or missing label:
a page declared UTF-8 that is really CP949, or the reverse. Labels are hints,
not facts, so a label is only trusted when the bytes decode strictly with it.
UTF-8 is checked first among the guesses because valid multi-byte UTF-8 almost
never happens by accident in another encoding; CP949 (the Windows superset of
EUC-KR, which also covers the syllables EUC-KR lacks) comes next.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_KOREAN_LABELS = frozenset(
    {
        "euc-kr",
        "euc_kr",
        "euckr",
        "cp949",
        "ms949",
        "uhc",
        "windows-949",
        "x-windows-949",
        "ks_c_5601-1987",
        "ks_c_5601",
        "ksc5601",
        "ksc_5601",
        "korean",
        "csEUCKR",
        "iso-ir-149",
    }
)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# <meta charset="x"> and <meta http-equiv="Content-Type" content="text/html; charset=x">
_META_CHARSET = re.compile(rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]{0,200}?encoding\s*=\s*["']([A-Za-z0-9._:-]+)""")
_PRESCAN_BYTES = 4096


def codec_name(label: str | None) -> str | None:
    """A Python codec name for a charset label, or None if unknown.

    EUC-KR labels map to CP949 and Latin-1 labels to windows-1252, as browsers do.
    """
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in {name.lower() for name in _KOREAN_LABELS}:
        return "cp949"
    if label in ("iso-8859-1", "latin-1", "latin1", "us-ascii", "ascii"):
        return "windows-1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def sniff_declared(content: bytes) -> str | None:
    """The charset declared inside the document (XML declaration or ``<meta>``)."""
    head = content[:_PRESCAN_BYTES]
    match = _XML_ENCODING.match(head) or _META_CHARSET.search(head)
    return match.group(1).decode("ascii") if match else None


def _strict(content: bytes, codec: str) -> str | None:
    try:
        return content.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def is_utf8(content: bytes) -> bool:
    """Whether ``content`` is valid UTF-8 (ASCII included, a UTF-8 BOM allowed).

    Then neither ``korean_as_utf8`` nor ``damaged_utf8_as_utf8`` has anything
    to repair: a caller that asks first spares them a decode each.
    """
    return content.isascii() or _strict(content, "utf-8") is not None


def _mostly_hangul(text: str) -> bool:
    non_ascii = [ch for ch in text if ord(ch) > 127]
    hangul = sum(1 for ch in non_ascii if "\uac00" <= ch <= "\ud7a3")
    return bool(non_ascii) and hangul >= 0.8 * len(non_ascii)


# A document is UTF-8 with a few damaged bytes, not another encoding, when at
# most this share of its non-ASCII characters are bytes that fail to decode.
# Text in a legacy encoding read as UTF-8 fails on nearly every non-ASCII byte
# (CP949 Hangul: over 85%); one bad byte in a UTF-8 page is a tiny share.
MAX_DAMAGED_UTF8_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded document, the codec that was used, and how many bytes were undecodable."""

    text: str
    codec: str
    replaced: int = 0

    @property
    def warning(self) -> str | None:
        """What to tell the operator about replaced bytes, or None when there were none."""
        if not self.replaced:
            return None
        plural = "s" if self.replaced != 1 else ""
        return (
            f"{self.replaced} invalid byte{plural} in a {self.codec} document "
            f"replaced with U+FFFD; the rest of the text is intact"
        )


def _with_replacement(content: bytes, codec: str) -> Decoded:
    text = content.decode(codec, errors="replace")
    # U+FFFD written literally in the source (EF BF BD in UTF-8) is not damage.
    literal = content.count(b"\xef\xbf\xbd") if codec in ("utf-8", "utf_8") else 0
    return Decoded(text, codec, max(0, text.count("\ufffd") - literal))


def damaged_utf8(content: bytes) -> Decoded | None:
    """``content`` read as UTF-8 with its few bad bytes replaced, or None if it is not UTF-8.

    Returns None for valid UTF-8 (nothing to repair) and for bytes whose
    non-ASCII part mostly fails to decode (they are in another encoding: CP949,
    windows-1252). The caller records ``Decoded.warning`` on the source.
    """
    if content.isascii() or _strict(content, "utf-8") is not None:
        return None
    decoded = _with_replacement(content, "utf-8")
    non_ascii = sum(1 for ch in decoded.text if ord(ch) > 127)
    if not non_ascii or decoded.replaced > MAX_DAMAGED_UTF8_SHARE * non_ascii:
        return None
    return decoded


def decode_document(
    content: bytes, *, http_charset: str | None = None, override: str | None = None
) -> Decoded:
    """Decode an HTML (or XML, JSON) document to text, saying how.

    Order: the per-source ``override``; a byte order mark; then the HTTP
    charset and the document's own declaration, each used only when the bytes
    decode strictly with it, except that UTF-8 (valid, or with a few damaged
    bytes: ``damaged_utf8``) always beats a legacy label; then CP949. One bad
    byte in a UTF-8 page costs one character, never the whole page: a legacy
    codec is used only when the document really is in it.
    """
    forced = codec_name(override)
    if forced:
        return _with_replacement(content, forced)
    for bom, codec in _BOMS:
        if content.startswith(bom):
            return _with_replacement(content[len(bom) :], codec)
    if content.isascii():
        return Decoded(content.decode("ascii"), "ascii")
    as_utf8 = _strict(content, "utf-8")
    if as_utf8 is not None:
        return Decoded(as_utf8, "utf-8")
    labels = [codec_name(http_charset), codec_name(sniff_declared(content))]
    as_korean = _strict(content, "cp949")
    if as_korean is not None and _mostly_hangul(as_korean):
        # A Western single-byte label decodes anything; Hangul text says it lied.
        return Decoded(as_korean, "cp949")
    damaged = damaged_utf8(content)
    if damaged is not None:
        return damaged
    for label_codec in labels:
        if label_codec and label_codec not in ("utf-8", "utf_8"):
            text = _strict(content, label_codec)
            if text is not None:
                return Decoded(text, label_codec)
    if as_korean is not None:
        return Decoded(as_korean, "cp949")
    fallback = next((c for c in labels if c), "utf-8")
    return _with_replacement(content, fallback)


def decode_html(
    content: bytes, *, http_charset: str | None = None, override: str | None = None
) -> str:
    """The text of ``decode_document`` (for callers with no use for the warning)."""
    return decode_document(content, http_charset=http_charset, override=override).text


_XML_DECL_ENCODING = re.compile(rb"""^(\s*<\?xml[^>]{0,200}?encoding\s*=\s*["'])[A-Za-z0-9._:-]+""")


def declared_codec(content: bytes, http_charset: str | None) -> str | None:
    """The codec the document declares (XML declaration or ``<meta>``), else the HTTP one."""
    return codec_name(sniff_declared(content)) or codec_name(http_charset)


def damaged_utf8_as_utf8(content: bytes, http_charset: str | None) -> Decoded | None:
    """For feeds: UTF-8 XML with a few invalid bytes, repaired, or None.

    Only for documents that declare UTF-8 or nothing (XML's default): feedparser
    would otherwise give up on UTF-8 for the whole document and read every
    item as windows-1252 mojibake. ``text`` of the result is the repaired XML
    (its declaration still says UTF-8, which is now true once re-encoded).
    """
    declared = declared_codec(content, http_charset)
    if declared not in (None, "utf-8", "utf_8"):
        return None
    if content.startswith(tuple(bom for bom, _ in _BOMS[1:])):
        return None
    return damaged_utf8(content.removeprefix(codecs.BOM_UTF8))


def korean_as_utf8(content: bytes) -> bytes | None:
    """Korean legacy-encoded XML re-encoded as UTF-8, or None when it is not that.

    For feeds: an EUC-KR/CP949 document labelled UTF-8 (or not labelled)
    would otherwise be read as windows-1252 mojibake. Only bytes that are not
    UTF-8 and decode strictly as CP949 to mostly Hangul qualify; the XML
    declaration is rewritten to match the new bytes.
    """
    if content.isascii() or content.startswith(tuple(bom for bom, _ in _BOMS)):
        return None
    if _strict(content, "utf-8") is not None:
        return None
    text = _strict(content, "cp949")
    if text is None or not _mostly_hangul(text):
        return None
    return _XML_DECL_ENCODING.sub(rb"\1utf-8", text.encode("utf-8"), count=1)
