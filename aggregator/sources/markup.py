"""Bounds on hostile markup, applied before any parser or sanitizer sees it.

Two classes of input break the libraries we parse with, so they are defused
here, in linear time, on the raw text:

* **Deep nesting and attribute floods.** Every HTML5 tree builder (lexbor in
  selectolax, html5ever in nh3) checks "is there an X in scope" by walking
  the stack of open elements, once per tag: 200,000 nested ``<div>`` cost
  O(n²), minutes of CPU from a 2 MB response. ``bound_markup`` drops the
  tags (never the text) that would open an element deeper than
  ``MAX_HTML_DEPTH``, so the stack the parsers walk never exceeds it;
  browsers bound the same thing (Blink's HTML parser stops nesting at 512).
  lexbor is also quadratic in the attributes of one tag, so a tag keeps at
  most ``MAX_ATTRIBUTES``.
* **Invalid character references.** ``&#xD800;`` (a surrogate), ``&#0;``,
  ``&#xFFFE;``, ``&#x110000;``, ``&#99999999999;``: feedparser raises on some
  (``OverflowError``, ``UnicodeEncodeError``) and marks the whole document
  malformed on the others. ``neutralize_char_refs`` rewrites each reference to a
  character XML does not allow as ``&#xFFFD;`` (what an HTML5 parser makes
  of it), so one bad reference costs one character, not the feed.
"""

from __future__ import annotations

import re

# Deepest element nesting we let reach a parser. Real pages and articles stay
# under ~60; 256 leaves room and keeps the parsers' per-tag scope walks short.
MAX_HTML_DEPTH = 256

# Elements that never have content: a start tag opens nothing.
_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "keygen",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
# Elements whose end tag may be left out: the next sibling closes them, so an
# unclosed run of them stays shallow in the tree and must not count as depth.
# (Not rb, rt, rp, rtc and optgroup: outside their ruby or select they nest
# without end, so they count; their parent's end tag closes them, see below.)
_OPTIONAL_END = frozenset(
    {"li", "dt", "dd", "p", "tr", "td", "th", "option"}
    | {"thead", "tbody", "tfoot", "colgroup", "caption", "html", "head", "body"}
)
# Their end tag closes whatever is still open inside them (unclosed <rt>,
# <optgroup>): the depth goes back to where they opened.
_CLOSES_CHILDREN = frozenset({"ruby", "select"})
# Their content is text, not markup: "<div>" inside a script is not a tag.
_RAW_TEXT = ("script", "style", "textarea", "title", "xmp", "noscript", "iframe", "noembed")
_RAW_END = {name: re.compile(rf"</{name}[\s/>]", re.I) for name in _RAW_TEXT}
# Inside SVG and MathML "<x/>" closes itself; in HTML the slash is ignored.
_FOREIGN = frozenset({"svg", "math"})
_TAG_NAME = re.compile(r"<(/?)([A-Za-z][^\s/>]{0,64})")


# Attributes one tag may keep. lexbor checks each new attribute against the
# tag's others, so 40,000 attributes on one tag (350 KB) cost 3 s of CPU.
MAX_ATTRIBUTES = 256
# Tags shorter than this cannot hold enough attributes to matter.
_LONG_TAG = 2048
_ATTRIBUTE = re.compile(r"""[^\s"'>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'>]*))?""")


def _fewer_attributes(tag: str, name: str, is_end: bool, name_end: int) -> str | None:
    """``tag`` with only its first ``MAX_ATTRIBUTES`` attributes, or None if it has fewer.

    ``name_end`` is where the tag name ends in ``tag``.
    """
    attributes = _ATTRIBUTE.findall(tag, name_end, len(tag) - 1)
    if len(attributes) <= MAX_ATTRIBUTES:
        return None
    slash = "/" if tag.endswith("/>") else ""
    kept = " ".join(attributes[:MAX_ATTRIBUTES])
    return f"</{name}>" if is_end else f"<{name} {kept}{slash}>"


def bound_markup(markup: str, max_depth: int = MAX_HTML_DEPTH) -> str:
    """``markup`` that no HTML parser needs more than linear time for.

    Every tag that would nest deeper than ``max_depth`` is removed, and a tag
    with more than ``MAX_ATTRIBUTES`` attributes keeps only the first ones.
    Text is kept, so nothing readable is lost; only structure beyond the caps
    goes. Runs in one pass: each character is looked at a bounded number of
    times whatever the input (unclosed comments, tags without ``>``, unclosed
    ``<script>``). The depth count is the HTML one, approximately: void
    elements and elements with optional end tags do not add depth, a ``/>``
    closes only inside SVG or MathML, and script, style and comments are
    skipped. Markup within the caps comes back unchanged.
    """
    if markup.count("<") <= max_depth and (
        len(markup) <= _LONG_TAG or max(map(len, markup.split(">"))) <= _LONG_TAG
    ):
        return markup  # too few tags to nest deeper, none long enough for many attributes
    out: list[str] = []
    kept_from = 0  # markup[kept_from:start] is still to be copied
    depth = 0
    foreign_at: int | None = None  # depth of the open <svg>/<math>, if any
    reopen: dict[str, list[int]] = {}  # depths of open <ruby>/<select> elements
    position = 0
    length = len(markup)
    while position < length:
        start = markup.find("<", position)
        if start < 0:
            break
        if markup.startswith("<!--", start):
            end = markup.find("-->", start + 4)
            if end < 0:
                break  # the rest is one comment
            position = end + 3
            continue
        close = markup.find(">", start + 1)
        if close < 0:
            break  # no tag can end after here
        match = _TAG_NAME.match(markup, start, close + 1)
        if match is None:  # "<!DOCTYPE", "<?xml", "< 3": not an element
            position = start + 1
            continue
        name = match.group(2).lower()
        is_end = bool(match.group(1))
        position = close + 1
        drop = False
        if name in _VOID or name in _OPTIONAL_END:
            pass  # adds no depth
        elif is_end:
            drop = depth > max_depth
            opened_at = reopen.get(name)
            if opened_at:
                depth = opened_at.pop() - 1
                drop = False
            else:
                depth = max(0, depth - 1)
            if foreign_at is not None and depth < foreign_at:
                foreign_at = None
        elif not (foreign_at is not None and markup[close - 1] == "/"):
            depth += 1
            drop = depth > max_depth
            if name in _FOREIGN and foreign_at is None and not drop:
                foreign_at = depth
            if name in _CLOSES_CHILDREN and not drop:
                reopen.setdefault(name, []).append(depth)
        if not is_end and name in _RAW_TEXT and markup[close - 1] != "/":
            end_match = _RAW_END[name].search(markup, position)
            position = end_match.start() if end_match else length  # the rest is its text
        if drop:
            out.append(markup[kept_from:start])
            kept_from = close + 1
        elif close - start > _LONG_TAG:
            tag = markup[start : close + 1]
            shorter = _fewer_attributes(tag, name, is_end, match.end() - start)
            if shorter is not None:
                out += (markup[kept_from:start], shorter)
                kept_from = close + 1
    if not out:
        return markup
    out.append(markup[kept_from:])
    return "".join(out)


# A numeric character reference: decimal or hex, with or without the ";".
_CHAR_REF = re.compile(r"&#(?:[xX]([0-9A-Fa-f]+)|([0-9]+));?")
_CHAR_REF_BYTES = re.compile(rb"&#(?:[xX]([0-9A-Fa-f]+)|([0-9]+));?")
_REPLACEMENT_REF = "&#xFFFD;"


def _is_xml_char(code: int) -> bool:
    """Whether XML 1.0 allows the character (its ``Char`` production)."""
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def _ref_code(hex_digits: str | bytes | None, decimal: str | bytes | None) -> int | None:
    digits = hex_digits if hex_digits is not None else decimal
    if digits is None:
        return None
    significant = digits.lstrip("0") if isinstance(digits, str) else digits.lstrip(b"0")
    if len(significant) > 8:  # beyond U+10FFFF whatever the digits: no huge ints
        return None
    return int(significant or "0", 16 if hex_digits is not None else 10)


def _fix_text_ref(match: re.Match[str]) -> str:
    code = _ref_code(match.group(1), match.group(2))
    return match.group(0) if code is not None and _is_xml_char(code) else _REPLACEMENT_REF


def _fix_bytes_ref(match: re.Match[bytes]) -> bytes:
    code = _ref_code(match.group(1), match.group(2))
    return match.group(0) if code is not None and _is_xml_char(code) else _REPLACEMENT_REF.encode()


def neutralize_char_refs(markup: str) -> str:
    """``markup`` with references to characters XML forbids replaced by ``&#xFFFD;``."""
    if "&#" not in markup:
        return markup
    return _CHAR_REF.sub(_fix_text_ref, markup)


def neutralize_char_ref_bytes(content: bytes) -> bytes:
    """The bytes version, for feeds before feedparser (ASCII-compatible encodings only).

    UTF-16 documents (which start with a byte order mark) are left alone: their
    references are not byte-for-byte ASCII.
    """
    # b"#" first: a one-byte search is a memchr, while b"&#" stops at every "&".
    if b"#" not in content or b"&#" not in content:
        return content
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content
    return _CHAR_REF_BYTES.sub(_fix_bytes_ref, content)
