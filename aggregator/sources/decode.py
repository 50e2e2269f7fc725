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


def _mostly_hangul(text: str) -> bool:
    non_ascii = [ch for ch in text if ord(ch) > 127]
    hangul = sum(1 for ch in non_ascii if "\uac00" <= ch <= "\ud7a3")
    return bool(non_ascii) and hangul >= 0.8 * len(non_ascii)


def decode_html(
    content: bytes, *, http_charset: str | None = None, override: str | None = None
) -> str:
    """Decode an HTML (or XML) document to text.

    Order: the per-source ``override``; a byte order mark; then the HTTP
    charset and the document's own declaration, each used only when the bytes
    decode strictly with it, except that valid non-ASCII UTF-8 always beats a
    legacy label; then UTF-8; then CP949. Only when nothing decodes cleanly are
    undecodable bytes replaced.
    """
    forced = codec_name(override)
    if forced:
        return content.decode(forced, errors="replace")
    for bom, codec in _BOMS:
        if content.startswith(bom):
            return content[len(bom) :].decode(codec, errors="replace")
    if content.isascii():
        return content.decode("ascii")
    as_utf8 = _strict(content, "utf-8")
    if as_utf8 is not None:
        return as_utf8
    labels = [codec_name(http_charset), codec_name(sniff_declared(content))]
    as_korean = _strict(content, "cp949")
    if as_korean is not None and _mostly_hangul(as_korean):
        # A Western single-byte label decodes anything; Hangul text says it lied.
        return as_korean
    for label_codec in labels:
        if label_codec and label_codec not in ("utf-8", "utf_8"):
            text = _strict(content, label_codec)
            if text is not None:
                return text
    if as_korean is not None:
        return as_korean
    fallback = next((c for c in labels if c), "utf-8")
    return content.decode(fallback, errors="replace")


_XML_DECL_ENCODING = re.compile(rb"""^(\s*<\?xml[^>]{0,200}?encoding\s*=\s*["'])[A-Za-z0-9._:-]+""")


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
