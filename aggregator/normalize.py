"""``RawEntry`` → ``Item``: safe HTML, absolute URLs, clean text, UTC dates, a section.

Everything that comes out of here may be shown to readers (web page, feed,
email), so third-party HTML is sanitized with nh3 against an allow-list, and
relative ``href``/``src`` values are resolved in the same pass through nh3's
``attribute_filter``. Measured on a 5 KB fragment with 80 relative URLs:
``nh3.clean`` alone ~170 µs, with the filter ~680 µs (the Python callback and
``urljoin``), nh3 followed by a selectolax pass rewriting the URLs ~820 µs. So
the filter wins, and it skips ``urljoin`` for URLs that are already absolute.

Normalizing is idempotent: an ``Item`` turned back into a ``RawEntry`` and
normalized again comes out the same. Re-ingesting an unchanged entry therefore
never looks like an update.
"""

from __future__ import annotations

import html
import html.entities
import logging
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache, partial
from urllib.parse import urljoin, urlsplit

import nh3
from selectolax.lexbor import LexborHTMLParser

from .dedupe import canonical_url, content_hash, fingerprint
from .errors import EntryTooLarge, ParseError
from .models import Item, RawEntry, SectionRule, Source
from .sources.dates import is_plausible, parse_date
from .sources.links import is_plain_absolute, join_url
from .sources.markup import bound_markup

log = logging.getLogger(__name__)

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "dl",
        "dt", "em", "figcaption", "figure", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
        "ins", "li", "ol", "p", "pre", "q", "s", "small", "strong", "sub", "sup", "table",
        "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height", "title"},
    "abbr": {"title"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"
# Dropped with everything inside them: their content is code or chrome, not text.
DROP_WITH_CONTENT = frozenset(
    {
        "script", "style", "iframe", "object", "embed", "noscript", "template", "svg", "math",
        "textarea", "select", "button", "form", "frameset", "frame", "applet", "head", "title",
    }
)  # fmt: skip
_URL_ATTRIBUTES = frozenset({"href", "src"})

MAX_TITLE_CHARS = 1000
# What one entry may store (SECURITY.md, "Stored sizes"). A link or guid over
# its cap refuses the entry: cut, it would point elsewhere or collide. Markup is
# cut after sanitizing (which caps nesting and closes what a cut leaves open).
# Real links stay under 2 KB and real
# summaries under a few KB; the caps leave wide room while keeping a feed's
# 500 entries (``max_items``) well under the 10 MB response cap in the store.
MAX_LINK_CHARS = 32 * 1024  # url, canonical_url (percent-encoded) and guid
MAX_SUMMARY_CHARS = 16 * 1024
MAX_CONTENT_CHARS = 256 * 1024
MAX_CATEGORY_CHARS = 200
MAX_CATEGORIES = 50
MAX_LANGUAGE_CHARS = 16  # items.language is String(16)
# A named reference: "&name;". Those HTML does not define are dropped.
_NAMED_REFERENCE = re.compile(r"&([A-Za-z][A-Za-z0-9]{0,63});")
EXCERPT_CHARS = 300
# A sentence end shorter than this would make a stubby excerpt; cut at a word instead.
_MIN_SENTENCE_EXCERPT = EXCERPT_CHARS // 3
_SENTENCE_END = frozenset(".!?。！？…")
_SENTENCE_END_CHAR = re.compile(f"[{re.escape(''.join(sorted(_SENTENCE_END)))}]")
_CLOSERS = frozenset("\"'”’)]」』》〉")
_TRIM_BEFORE_ELLIPSIS = ",;:-–—·/([{\"'“‘「『《〈 "
# Zero-width and bidi-control characters: invisible, used to defeat matching.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\u00ad]")
# C0/C1 controls except tab, newline and carriage return (turned into spaces below).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Block-level boundaries that must separate words when HTML is turned into text.
_BLOCK_BOUNDARY = re.compile(
    r"<(?:/?(?:p|div|li|ul|ol|h[1-6]|blockquote|pre|table|tr|td|th|figure|figcaption|dt|dd|dl"
    r"|caption|thead|tbody|tfoot)\b[^>]*|br\s*/?|hr\s*/?)>",
    re.I,
)


# ------------------------------------------------------------------------- text


# Either of the two above: one scan finds that a text has neither (nearly all do).
_INVISIBLE_OR_CONTROL = re.compile(f"[{_INVISIBLE.pattern[1:-1]}{_CONTROL.pattern[1:-1]}]")


# The ASCII characters that are not _CONTROL ones: deleting them from ASCII
# text leaves its control characters. For ASCII, which has no _INVISIBLE
# characters, that C loop is ~4x faster than the regex scan.
_ASCII_NOT_CONTROL = bytes(code for code in range(128) if not _CONTROL.match(chr(code)))


def has_stray_characters(text: str) -> bool:
    """Whether ``text`` holds an ``_INVISIBLE`` or ``_CONTROL`` character."""
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _ASCII_NOT_CONTROL))
    return _INVISIBLE_OR_CONTROL.search(text) is not None


def _clean_once(text: str) -> str:
    text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    if has_stray_characters(text):
        text = _CONTROL.sub(" ", _INVISIBLE.sub("", text))  # disjoint sets: order is free
    return " ".join(text.split())


# Short texts are often clean already, and checking is cheaper than cleaning;
# a long text is an article's, whose block tags left runs of spaces.
_SHORT_CLEAN_CHARS = 300


def clean_text(text: str | None) -> str:
    """Plain text for titles, authors and the like.

    Entities are decoded (repeatedly: feeds often double-escape, ``&amp;quot;``),
    the text is NFC-normalized, control and zero-width characters are removed
    and whitespace runs become one space. Repeating until nothing changes makes
    the result a fixed point, so cleaning clean text is a no-op.
    """
    if not text:
        return ""
    if (
        len(text) <= _SHORT_CLEAN_CHARS
        and text.isascii()
        and "&" not in text
        and text.isprintable()
        and "  " not in text
        and not text.startswith(" ")
        and not text.endswith(" ")
    ):
        # Clean already (ids, most titles and authors): printable ASCII has no
        # control character and no whitespace but the space, which stands
        # alone inside it; nothing to decode, and NFC leaves ASCII alone.
        return text
    for _ in range(8):  # each changing round shortens the text; 8 is plenty
        cleaned = _clean_once(text)
        if cleaned == text:
            break
        text = cleaned
        # Already a fixed point when nothing is left to decode or compose: the
        # other steps cannot undo each other's work. Saves the confirming round.
        if "&" not in text and unicodedata.is_normalized("NFC", text):
            break
    return text


def html_text(markup: str) -> str:
    """The readable text of (sanitized) HTML, block elements separated by spaces.

    Expects ``sanitize_html`` output, whose nesting is already capped; other
    markup is capped here, as lexbor is quadratic in nesting depth too.
    """
    if not markup:
        return ""
    spaced = _BLOCK_BOUNDARY.sub(r" \g<0> ", bound_markup(markup))
    body = LexborHTMLParser(f"<body>{spaced}</body>").body
    return clean_text(body.text(deep=True) if body is not None else "")


# On sanitized markup every "<" opens a tag and every tag ends at the next ">",
# except inside attribute values, which nh3 writes in double quotes without
# escaping "<" or ">" (a title of "a>b"): markup with such a value takes the
# parser's way.
_TAG = re.compile(r"<[^>]*>")
_ANGLE_IN_ATTRIBUTE = re.compile(r'="[^"]*[<>]')


def sanitized_text(markup: str) -> str:
    """:func:`html_text` of ``sanitize_html`` output, without an HTML parser.

    nh3 writes a well-formed tree: text escapes only ``&``, ``<``, ``>`` and
    no-break spaces, as complete references, and re-parsing it moves no text,
    so deleting the tags (block tags leave a space) and decoding the
    references yields the parser's text. A third of ``html_text``'s cost
    (tests/test_normalize_fast.py compares the two on generated markup).
    Markup beyond ``bound_markup``'s caps, or with "<" or ">" in an attribute
    value, goes to ``html_text``.
    """
    if not markup:
        return ""
    if bound_markup(markup) != markup or ('="' in markup and _ANGLE_IN_ATTRIBUTE.search(markup)):
        return html_text(markup)
    return clean_text(html.unescape(_TAG.sub("", _BLOCK_BOUNDARY.sub(" ", markup))))


def _jamo(ch: str) -> str:
    """The Hangul syllable type of ``ch`` (UAX #29): "L", "V", "T", "LV", "LVT" or ""."""
    code = ord(ch)
    if 0x1100 <= code <= 0x115F or 0xA960 <= code <= 0xA97C:
        return "L"
    if 0x1160 <= code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
        return "V"
    if 0x11A8 <= code <= 0x11FF or 0xD7CB <= code <= 0xD7FB:
        return "T"
    if 0xAC00 <= code <= 0xD7A3:
        return "LV" if (code - 0xAC00) % 28 == 0 else "LVT"
    return ""


def _splits_cluster(text: str, index: int) -> bool:
    """Whether cutting before ``text[index]`` splits a grapheme cluster.

    The rules that matter for news text: combining marks and ZWJ extend what
    precedes them, and conjoining jamo (old Hangul, which NFC cannot compose)
    form one syllable.
    """
    if index <= 0 or index >= len(text):
        return False
    after = text[index]
    if after == "\u200d" or unicodedata.category(after) in ("Mn", "Mc", "Me"):
        return True
    before, kind = _jamo(text[index - 1]), _jamo(after)
    return (
        (before == "L" and kind in ("L", "V", "LV", "LVT"))
        or (before in ("LV", "V") and kind in ("V", "T"))
        or (before in ("LVT", "T") and kind == "T")
    )


def _cluster_start(text: str, cut: int) -> int:
    """``cut`` moved back to the start of the grapheme cluster it falls inside."""
    start = cut
    while start > 0 and _splits_cluster(text, start):
        start -= 1
    return start or cut


def cut_title(title: str, limit: int = MAX_TITLE_CHARS) -> str:
    """``title`` shortened to ``limit`` characters at a word boundary, with "…"."""
    if len(title) <= limit:
        return title
    head = title[: _cluster_start(title, limit - 1)]
    space = head.rfind(" ")
    if space > limit // 2:
        head = head[:space]
    return head.rstrip(_TRIM_BEFORE_ELLIPSIS) + "…"


def _is_word_char(ch: str) -> bool:
    # Letters, digits and combining marks belong to a word; Hangul syllables are letters.
    return ch.isalnum() or unicodedata.category(ch).startswith("M") or ch in "_'’-"


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of ``text``, at most ~``limit`` characters, ending cleanly.

    Prefers the last sentence end (``.``, ``!``, ``?``, ``。``, and so Korean
    ``…다.``) within the limit, keeping closing quotes after it; else cuts at
    the last space and adds "…". Never cuts inside a word or Hangul syllable:
    a single word longer than the limit is kept whole up to twice the limit,
    and only beyond that cut hard (still between code points, with "…").
    """
    if len(text) <= limit:
        return text
    best = -1
    # Only the sentence ends between the minimum and the limit, last first.
    ends = [m.start() for m in _SENTENCE_END_CHAR.finditer(text, _MIN_SENTENCE_EXCERPT - 1, limit)]
    for index in reversed(ends):
        end = index + 1
        while end < len(text) and end < limit and text[end] in _CLOSERS:
            end += 1
        if end == len(text) or text[end].isspace():
            best = end
            break
    if best > 0:
        return text[:best]
    cut = limit
    while cut > 0 and not (text[cut].isspace() or not _is_word_char(text[cut])):
        cut -= 1
    if cut == 0:
        # One very long "word" (a URL, unspaced CJK): extend to its end if reasonable.
        end = cut = limit
        while end < len(text) and end < 2 * limit and _is_word_char(text[end]):
            end += 1
        if end == len(text):
            return text
        if not _is_word_char(text[end]):
            cut = end
    cut = _cluster_start(text, cut)  # a hard cut still keeps syllables and accents whole
    head = text[:cut].rstrip(_TRIM_BEFORE_ELLIPSIS)
    return (head or text[:cut]) + "…"


# A listing page's own truncation mark at the very end: "...", ". . .", "……" or
# WordPress's "[...]" / "[…]", optionally followed by closing tags and spaces. A
# single "…" is what we write ourselves: treating it as a mark would trim one
# more word on every pass, and normalizing must be idempotent.
_CUT_MARK = re.compile(
    r"(?P<mark>\s*\[\s*(?:\.\s*){2,}\.?\s*\]|\s*\[\s*…\s*\]|(?:\.\s?){2,}\.|……+)"
    r"(?P<tail>(?:\s|</[A-Za-z][A-Za-z0-9]*\s*>)*)$"
)
# A text that is one cut word keeps it (there is nothing else to show); any
# whole word before the fragment is better than the fragment.
_MIN_TRIMMED = 1
# Sites cut *excerpts*; a full article that ends in "..." ends that way on
# purpose. Only texts up to this long are taken for cut excerpts.
CUT_EXCERPT_MAX_CHARS = 1000


# What a tail (see ``_CUT_MARK``) may end in after the mark: the mark itself
# never contains these, so the mark can only end where the longest tail starts.
_TAIL_END_TAG = re.compile(r"</[A-Za-z][A-Za-z0-9]*\s*>")
# The last characters of each kind of mark: "]" (a bracketed mark), "……", and
# three dots with at most one space between each two.
_MARK_END = re.compile(r"(?:\]|……|\.\s?\.\s?\.)\Z")


def _may_end_in_cut_mark(text: str) -> bool:
    """False when ``_CUT_MARK`` cannot match ``text``: a cheap test that spares its search.

    The search tries the mark at every position of the text (a tenth of
    normalizing the corpus, on texts that almost never end in one). A match
    ends the text with a mark followed by a tail of spaces and end tags; the
    tail's units never contain ".", "]" or "…", so the mark must end exactly
    where the longest such tail starts, and that is found from the end in
    one step per unit (an end tag starts at the last "<" before its ">").
    """
    end = len(text)
    while end:
        if text[end - 1].isspace():  # what "\s" matches
            end -= 1
            continue
        if text[end - 1] != ">":
            break
        start = text.rfind("<", 0, end)
        if start < 0 or _TAIL_END_TAG.fullmatch(text, start, end) is None:
            break
        end = start
    return _MARK_END.search(text, max(0, end - 5), end) is not None


def trim_cut_text(text: str) -> str:
    """``text`` whose source cut it mid-word ("…certainly il...") trimmed to a whole word.

    Listing pages shorten their excerpts to a fixed number of characters and
    append "...", so the last word is usually a fragment. When the mark touches
    a word (no space before it), that word is dropped, trailing punctuation
    goes with it, and the text ends with one "…"; a mark after a space only
    becomes "…". Korean is cut at the space before the fragment, never inside
    the word. Text without such a mark is returned unchanged; a text that is a
    single cut word keeps it, with "…".
    """
    if not _may_end_in_cut_mark(text):
        return text
    match = _CUT_MARK.search(text)
    if match is None or match.group("tail").strip():
        return text
    trimmed = _trim_before(text[: match.start("mark")], match.group("mark"), _TRIM_BEFORE_ELLIPSIS)
    return text if trimmed is None else trimmed + "…"


def _trim_before(head: str, mark: str, strip: str) -> str | None:
    """``head`` without a word fragment glued to ``mark`` and the punctuation before it.

    None when nothing would be left (the caller keeps what it had).
    """
    if head and not mark[:1].isspace() and _is_word_char(head[-1]):
        start = len(head)
        while start > 0 and _is_word_char(head[start - 1]):
            start -= 1
        shorter = head[:start].rstrip(strip)
        if len(shorter) >= _MIN_TRIMMED:
            head = shorter
    head = head.rstrip(strip + ".")
    return head or None


# In markup ";" may end a character reference ("&amp;"): never strip it there.
_TRIM_BEFORE_ELLIPSIS_HTML = _TRIM_BEFORE_ELLIPSIS.replace(";", "")


def trim_cut_html(markup: str) -> str:
    """:func:`trim_cut_text` for sanitized HTML: the mark may sit before closing tags.

    Only the text right before the mark is touched; when the mark follows a
    tag rather than text, the markup is left as it is.
    """
    if not _may_end_in_cut_mark(markup):
        return markup
    match = _CUT_MARK.search(markup)
    if match is None:
        return markup
    head = markup[: match.start("mark")]
    if head.endswith(">"):
        return markup
    trimmed = _trim_before(head, match.group("mark"), _TRIM_BEFORE_ELLIPSIS_HTML)
    if trimmed is None or trimmed.endswith((">", "&")):
        return markup
    return trimmed + "…" + match.group("tail")


# ------------------------------------------------------------------------- html


def _filter_attribute(base: str, tag: str, attribute: str, value: str) -> str | None:
    """nh3 hook: make ``href``/``src`` absolute, dropping any that are not http(s)/mailto.

    nh3 has already rejected disallowed schemes, but its check runs before this
    hook, so the resolved URL is checked again here.
    """
    if attribute not in _URL_ATTRIBUTES:
        return value
    value = value.strip()
    if not value or value.startswith("#"):
        return value or None
    if value.startswith(("https://", "http://")):
        return value  # already absolute (most feeds): skip urljoin, the bulk of the cost
    resolved = urljoin(base, value) if base else value
    scheme = urlsplit(resolved).scheme.lower()
    if scheme in URL_SCHEMES:
        return resolved
    return resolved if not scheme and ":" not in resolved.split("/", 1)[0] else None


@lru_cache(maxsize=256)
def _cleaner(base: str) -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROP_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel=LINK_REL,
        strip_comments=True,
        attribute_filter=partial(_filter_attribute, base),
    )


def sanitize_html(markup: str | None, base: str = "") -> str:
    """Third-party HTML reduced to safe formatting, with absolute links.

    Allow-list only: no script, style, iframe, event handlers, ``style``
    attributes, ``javascript:`` or ``data:`` URLs. Links get
    ``rel="noopener noreferrer nofollow"``. Idempotent.
    """
    if not markup or not markup.strip():
        return ""
    if has_stray_characters(markup):
        markup = _INVISIBLE.sub("", _CONTROL.sub(" ", markup))
    # The input bound: html5ever (inside nh3) is quadratic in nesting depth, so
    # tags nested past MAX_HTML_DEPTH are dropped (their text kept) first, and
    # so are attributes past MAX_ATTRIBUTES on one tag.
    return _cleaner(base).clean(bound_markup(markup)).strip()


# ------------------------------------------------------------------- language

# Share of letters that must be Hangul for a text to count as Korean. Korean
# news mixes in Latin names and titles (CJ ENM, "Parasite"), so not all.
_HANGUL_SHARE = 0.5
# Letters looked at: the opening of a text tells its language as well as the whole.
_LANGUAGE_SAMPLE = 600


_HANGUL_RANGES = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff]")


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return (
        0xAC00 <= code <= 0xD7A3  # syllables
        or 0x1100 <= code <= 0x11FF  # conjoining jamo
        or 0x3130 <= code <= 0x318F  # compatibility jamo
        or 0xA960 <= code <= 0xA97F
        or 0xD7B0 <= code <= 0xD7FF
    )


def _letters_class(*ranges: tuple[int, int]) -> str:
    """A regex character class of the letters (``str.isalpha``) within ``ranges``."""
    runs: list[str] = []
    for first, last in ranges:
        start = None
        for code in range(first, last + 2):
            is_letter = code <= last and chr(code).isalpha()
            if is_letter and start is None:
                start = code
            elif not is_letter and start is not None:
                runs.append(f"{chr(start)}-{chr(code - 1)}")
                start = None
    return f"[{''.join(runs)}]"


# _is_hangul's ranges, letters only (their unassigned code points are not letters).
_HANGUL_LETTERS = re.compile(
    _letters_class(
        (0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF)
    )
    + "+"
)
_ASCII_LETTER_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Every byte but the UTF-8 lead bytes of U+A000-U+DFFF (0xEA-0xED).
_NOT_A000_TO_DFFF_LEADS = bytes(code for code in range(256) if not 0xEA <= code <= 0xED)
# Hangul letters that are not syllables (U+AC00-U+D7A3), and the rest of
# U+A000-U+DFFF: where these occur, syllables are not counted by lead bytes.
_HANGUL_BEYOND_SYLLABLES = re.compile("[\u1100-\u11ff\u3130-\u318f\ua000-\uabff\ud7a4-\udfff]")
_OTHER_NON_ASCII = re.compile(f"[^\x00-\x7f{_HANGUL_RANGES.pattern[1:-1]}]")


def detect_language(text: str) -> str | None:
    """``"ko"`` when most letters of ``text`` are Hangul, else None.

    Only Korean is told apart: it is the one language besides the site's that
    the sources carry, and a screen reader reading Hangul with an English voice
    is what readers notice. None means "not detected", not "English".
    """
    sample = text[:_LANGUAGE_SAMPLE]
    if sample.isascii() or _HANGUL_RANGES.search(sample) is None:
        return None  # no Hangul at all (and the per-letter count was 40% of normalize)
    # The same counts as a per-character loop, done in C: letters are what
    # str.isalpha accepts; Hangul is _is_hangul's ranges, letters only. Both
    # are counted in the UTF-8 bytes, where regex passes stepped through
    # Hangul one failed match at a time: an ASCII letter is one byte, and no
    # other character has a byte below 0x80; a character from U+A000 to
    # U+DFFF has a lead byte 0xEA-0xED, which no other byte equals, so without
    # the few of them that are not syllables (nor other Hangul letters, which
    # the regex counts) those bytes count the syllables, all letters.
    encoded = sample.encode("utf-8", "surrogatepass")
    if _HANGUL_BEYOND_SYLLABLES.search(sample) is None:
        hangul = len(encoded.translate(None, _NOT_A000_TO_DFFF_LEADS))
    else:
        hangul = len(sample) - len(_HANGUL_LETTERS.sub("", sample))
    letters = hangul + len(encoded) - len(encoded.translate(None, _ASCII_LETTER_BYTES))
    letters += sum(map(str.isalpha, _OTHER_NON_ASCII.findall(sample)))
    if letters and hangul / letters >= _HANGUL_SHARE:
        return "ko"
    return None


def item_language(declared: str | None, *, title: str, text: str) -> str | None:
    """The language to mark an item with: detected Korean, else what the source declared.

    A feed that declares one language for everything (often the outlet's
    main one) is overruled by text that is plainly Korean; a declared ``ko``
    on text with almost no Hangul is dropped rather than trusted, so the item
    falls back to the site's language instead of being read with a Korean voice.
    """
    sample = f"{title} {text[:_LANGUAGE_SAMPLE]}"
    if detect_language(sample) == "ko":
        return "ko"
    declared = clean_text(declared) or None
    if declared and declared.lower().split("-")[0] == "ko":
        letters = sum(1 for ch in sample if ch.isalpha())
        hangul = sum(1 for ch in sample if _is_hangul(ch))
        if letters and hangul / letters < 0.1:
            return None
    return declared


# ---------------------------------------------------------------------- bounds


def _drop_undefined(match: re.Match[str]) -> str:
    return match.group(0) if match.group(1) + ";" in html.entities.html5 else ""


def drop_undefined_entities(text: str | None) -> str | None:
    """``text`` without named references that HTML does not define (``&lol9;``, ``&xxe;``).

    A feed that declares its own entities (billion laughs, XXE) is parsed
    without expanding them, which leaves the references as literal text; shown
    to readers, they are junk at best. Repeated until stable, since removing
    one can join the halves of another (``&&a;b;``); each round shortens the text.
    """
    while text and "&" in text:
        shorter = _NAMED_REFERENCE.sub(_drop_undefined, text)
        if shorter == text:
            break
        text = shorter
    return text


# Authors, categories and languages repeat from entry to entry: short values
# are cleaned once per worker. The bound keeps the cache's memory small.
_CACHED_PLAIN_CHARS = 200


def clean_plain(text: str | None, limit: int = MAX_TITLE_CHARS) -> str:
    """:func:`clean_text` without undefined references, cut to ``limit`` (titles, authors).

    Dropping runs before and after cleaning: a double-escaped ``&amp;xxe;``
    only becomes a reference once cleaned. A few rounds reach a fixed point,
    so normalizing stays idempotent.
    """
    if text and len(text) <= _CACHED_PLAIN_CHARS:
        return _clean_plain_cached(text, limit)
    return _clean_plain(text, limit)


@lru_cache(maxsize=2048)
def _clean_plain_cached(text: str, limit: int) -> str:
    return _clean_plain(text, limit)


def _clean_plain(text: str | None, limit: int) -> str:
    text = (text or "")[: 16 * limit]  # cleaning a megabyte only to cut it wastes CPU
    for _ in range(4):
        cleaned = clean_text(drop_undefined_entities(text))
        if cleaned == text:
            break
        text = cleaned
    return cut_title(text, limit)


def _cut_markup(markup: str, limit: int) -> str:
    """At most ``limit`` characters of ``markup``, not inside a tag when avoidable."""
    if len(markup) <= limit:
        return markup
    tag_start = markup.rfind("<", 0, limit)
    if tag_start > limit // 2 and markup.find(">", tag_start, limit) < 0:
        limit = tag_start  # the cut would fall inside this tag
    reference = markup.rfind("&", max(0, limit - 12), limit)
    if reference >= 0 and markup.find(";", reference, limit) < 0:
        limit = reference  # nor inside a reference such as "&lt;" ("&l" would show)
    return markup[:limit]


def bounded_html(markup: str | None, base: str, limit: int) -> str:
    """``markup`` sanitized and at most ``limit`` characters long.

    The cut comes after sanitizing: the sanitizer caps nesting and drops
    what is not shown, so text buried under 200,000 wrappers survives while
    the wrappers do not (the input's own size is bounded by the response
    cap). A cut can leave elements open, which sanitizing again closes; the
    few end tags that adds are paid for by cutting a little shorter each
    round. As a last resort the result is the escaped start of its text.
    """
    if not markup:
        return ""
    clean = sanitize_html(drop_undefined_entities(markup), base)
    cut = limit
    for _ in range(4):
        if len(clean) <= limit:
            return clean
        clean = sanitize_html(_cut_markup(clean, cut), base)
        cut -= max(len(clean) - limit, limit // 20)
    if len(clean) <= limit:
        return clean
    return html.escape(html_text(clean)[: limit // 6])  # escaping at most sextuples a char


def _check_link_size(source: Source, entry: RawEntry, fallback_base: str, *links: str) -> None:
    """Refuse an entry whose link or guid would be stored over ``MAX_LINK_CHARS``."""
    longest = max(len(link) for link in links)
    if longest > MAX_LINK_CHARS:
        raise EntryTooLarge(
            f"entry {(entry.title or '?')[:60]!r} refused: its link or guid is "
            f"{longest:,} characters (the cap is {MAX_LINK_CHARS:,})",
            source_id=source.id,
            url=fallback_base,
        )


# -------------------------------------------------------------------- sections


@lru_cache(maxsize=256)
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def match_section(
    rules: Sequence[SectionRule],
    *,
    source_id: str,
    title: str,
    text: str,
    categories: Sequence[str],
) -> str | None:
    """The id of the first rule that matches, or None.

    Within a rule every criterion that is set must match (a title pattern
    *and* a source list narrow each other); a rule with no criteria never
    matches. Patterns are searched, not anchored.
    """
    for rule in rules:
        checks: list[bool] = []
        if rule.source_ids:
            checks.append(source_id in rule.source_ids)
        if rule.title_pattern:
            checks.append(bool(_pattern(rule.title_pattern).search(title)))
        if rule.text_pattern:
            checks.append(bool(_pattern(rule.text_pattern).search(text)))
        if rule.category_pattern:
            pattern = _pattern(rule.category_pattern)
            checks.append(any(pattern.search(c) for c in categories))
        if checks and all(checks):
            return rule.id
    return None


# ----------------------------------------------------------------------- entry


def _http_url(base: str, value: str | None) -> str | None:
    if value is not None and len(value) <= _CACHED_URL_CHARS:
        return _http_url_cached(base, value)
    return _resolve_http_url(base, value)


# An entry's base URL is usually its feed's, entry after entry: cached, when
# short (a hostile megabyte URL must not stay in memory with 255 others).
_CACHED_URL_CHARS = 2048


@lru_cache(maxsize=256)
def _http_url_cached(base: str, value: str) -> str | None:
    return _resolve_http_url(base, value)


def _resolve_http_url(base: str, value: str | None) -> str | None:
    if not value or not value.strip():
        return None
    value = value.strip()
    if is_plain_absolute(value):
        # What join_url returns as it is, and an http(s) URL that splitting
        # leaves alone: no urlsplit to ask its scheme (most entry links).
        return value
    url = join_url(base, value) if base else value
    return url if urlsplit(url).scheme.lower() in ("http", "https") else None


def _date(value: datetime | None, now: datetime) -> datetime | None:
    if value is None or value.tzinfo is None or not is_plausible(value, now):
        return None
    return min(value, now)


def normalize(
    source: Source,
    entry: RawEntry,
    *,
    sections: Sequence[SectionRule],
    now: datetime,
    fallback_base: str,
) -> Item:
    """Turn one parsed entry into a storable, displayable ``Item``.

    ``fallback_base`` (the URL the document was fetched from) resolves links
    when the entry has no base of its own. Dates fall back from published to
    updated to ``date_text`` to ``now`` (then ``date_missing`` is set); dates
    in the future are clamped to ``now``. Raises ``ParseError`` for an entry
    with no usable http(s) link, which cannot be shown or deduplicated.
    """
    return Item(
        *normalized_values(source, entry, sections=sections, now=now, fallback_base=fallback_base)
    )


# ``Item``'s fields in their order (``Item(*values)``), as ``normalized_values`` returns them.
ItemValues = tuple[
    str, str, str, str, str, str, str, str, str, str, str, datetime, datetime,
    str | None, str | None, tuple[str, ...], str | None, str | None, bool,
]  # fmt: skip


def normalized_values(
    source: Source,
    entry: RawEntry,
    *,
    sections: Sequence[SectionRule],
    now: datetime,
    fallback_base: str,
) -> ItemValues:
    """:func:`normalize`'s ``Item`` as the tuple of its field values, in field order.

    A parse worker packs these for the main process (``extract.pack``) as
    they are: building each frozen ``Item`` only to read its fields back
    cost ~5 µs an entry. Raises what ``normalize`` raises.
    """
    if entry.guid and len(entry.guid) > MAX_LINK_CHARS:  # before cleaning a megabyte
        _check_link_size(source, entry, fallback_base, entry.guid)
    if entry.link and len(entry.link) > MAX_LINK_CHARS:
        _check_link_size(source, entry, fallback_base, entry.link)
    base = _http_url(fallback_base, entry.base_url) or fallback_base
    url = _http_url(fallback_base, entry.link)
    if url is None and entry.guid:
        url = _http_url("", entry.guid)
    if url is None:
        raise ParseError(
            f"entry {entry.guid or entry.title or '?'!r} has no http(s) link",
            source_id=source.id,
            url=fallback_base,
        )
    canonical = canonical_url(url, keep=source.identity_params, drop=source.drop_params)
    guid = clean_text(entry.guid) or canonical
    if max(len(url), len(canonical), len(guid)) > MAX_LINK_CHARS:
        _check_link_size(source, entry, fallback_base, url, canonical, guid)

    content_html = bounded_html(entry.content_html, base, MAX_CONTENT_CHARS)
    if entry.summary_html == entry.content_html and len(content_html) <= MAX_SUMMARY_CHARS:
        # feedparser gives an Atom entry without <summary> its content as the
        # summary: sanitize it once (a third of normalizing such an entry).
        summary_html = content_html
    else:
        summary_html = bounded_html(entry.summary_html, base, MAX_SUMMARY_CHARS)
    shown = content_html or summary_html
    text = sanitized_text(shown)
    if len(text) <= CUT_EXCERPT_MAX_CHARS:
        summary_html = trim_cut_html(summary_html)
        content_html = trim_cut_html(content_html)
        if (content_html or summary_html) != shown:  # else its text is the one above
            text = sanitized_text(content_html or summary_html)
        text = trim_cut_text(text)
    title = clean_plain(entry.title) or cut_title(excerpt(text, 120)) or url
    author = clean_plain(entry.author) or None
    categories = tuple(
        dict.fromkeys(
            c for c in (clean_plain(c, MAX_CATEGORY_CHARS) for c in entry.categories) if c
        )
    )[:MAX_CATEGORIES]
    language = clean_plain(entry.language) or None
    if language is not None and len(language) > MAX_LANGUAGE_CHARS:
        language = None  # the column holds a language tag; anything longer is not one
    image_url = _http_url(base, entry.image_url)
    if image_url is not None and len(image_url) > MAX_LINK_CHARS:
        image_url = None  # an image is optional: drop it, keep the entry

    published = _date(entry.published, now) or _date(entry.updated, now)
    date_missing = False
    if published is None and entry.date_text:
        published = _date(
            parse_date(entry.date_text, tz=source.timezone, fmt=source.date_format, now=now), now
        )
    if published is None:
        published = now
        date_missing = True
    updated = _date(entry.updated, now) or published
    updated = max(updated, published)

    section = (
        match_section(sections, source_id=source.id, title=title, text=text, categories=categories)
        or source.section
    )
    return (
        source.id,
        guid,
        url,
        canonical,
        title,
        # Kept only when it says something the content does not: stored twice,
        # it doubled what every Atom entry writes. Readers fall back from
        # content to summary, never the other way.
        "" if summary_html == content_html else summary_html,
        content_html,
        text,
        excerpt(text),
        fingerprint(title, text),
        content_hash(
            title=title,
            url=url,
            # An empty summary counts as the content, as readers show it; so
            # the hash does not depend on whether the summary was stored.
            summary_html=summary_html or content_html,
            content_html=content_html,
            image_url=image_url,
            author=author,
            categories=categories,
            published_at=published,
        ),
        published,
        updated,
        image_url,
        author,
        categories,
        section,
        item_language(source.language or language, title=title, text=text),
        date_missing,
    )
