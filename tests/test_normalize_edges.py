"""normalize's Hangul, jamo, grapheme-cluster and language helpers at their exact edges.

The property tests reach these helpers with random text, which is too slow to
run per mutant; these literal cases pin every range boundary and threshold so a
shifted bound or flipped comparison is noticed (see scripts/mutation).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.errors import EntryTooLarge, ParseError
from aggregator.models import Item, RawEntry, SectionRule, Source
from aggregator.normalize import (
    _HANGUL_RANGES,
    CUT_EXCERPT_MAX_CHARS,
    MAX_CATEGORIES,
    MAX_CATEGORY_CHARS,
    MAX_LINK_CHARS,
    MAX_SUMMARY_CHARS,
    _cluster_start,
    _cut_markup,
    _date,
    _filter_attribute,
    _http_url,
    _is_hangul,
    _is_word_char,
    _jamo,
    _letters_class,
    _splits_cluster,
    bounded_html,
    clean_plain,
    clean_text,
    cut_title,
    detect_language,
    drop_undefined_entities,
    excerpt,
    item_language,
    normalize,
    sanitize_html,
    sanitized_text,
    trim_cut_html,
    trim_cut_text,
)
from tests.test_normalize import entry as raw  # the same minimal entry

# Each range of _jamo with the code point just outside it on either side.
JAMO_EDGES = [
    (0x10FF, ""),
    (0x1100, "L"),
    (0x115F, "L"),
    (0x1160, "V"),
    (0x11A7, "V"),
    (0x11A8, "T"),
    (0x11FF, "T"),
    (0x1200, ""),
    (0xA95F, ""),
    (0xA960, "L"),
    (0xA97C, "L"),
    (0xA97D, ""),
    (0xABFF, ""),
    (0xAC00, "LV"),  # 가
    (0xAC01, "LVT"),  # 각
    (0xAC1B, "LVT"),  # 갛: the last syllable with a final before the next LV
    (0xAC1C, "LV"),  # 개 = 가 + 28
    (0xD7A3, "LVT"),  # 힣, the last syllable
    (0xD7A4, ""),
    (0xD7AF, ""),
    (0xD7B0, "V"),
    (0xD7C6, "V"),
    (0xD7C7, ""),
    (0xD7CA, ""),
    (0xD7CB, "T"),
    (0xD7FB, "T"),
    (0xD7FC, ""),
]


@pytest.mark.parametrize(("code", "kind"), JAMO_EDGES, ids=[f"U+{c:04X}" for c, _ in JAMO_EDGES])
def test_jamo_kind_at_each_range_edge(code: int, kind: str) -> None:
    assert _jamo(chr(code)) == kind


HANGUL_EDGES = [
    (0x10FF, False),
    (0x1100, True),
    (0x11FF, True),
    (0x1200, False),
    (0x312F, False),
    (0x3130, True),
    (0x318F, True),
    (0x3190, False),
    (0xA95F, False),
    (0xA960, True),
    (0xA97F, True),
    (0xA980, False),
    (0xABFF, False),
    (0xAC00, True),
    (0xD7A3, True),
    (0xD7A4, False),
    (0xD7AF, False),
    (0xD7B0, True),
    (0xD7FF, True),
    (0xD800, False),
]


@pytest.mark.parametrize(
    ("code", "hangul"), HANGUL_EDGES, ids=[f"U+{c:04X}" for c, _ in HANGUL_EDGES]
)
def test_is_hangul_at_each_range_edge(code: int, hangul: bool) -> None:
    assert _is_hangul(chr(code)) is hangul
    # detect_language counts with the regex; both must agree.
    assert bool(_HANGUL_RANGES.fullmatch(chr(code))) is hangul


def test_the_hangul_regex_and_is_hangul_agree_on_the_whole_bmp() -> None:
    text = "".join(map(chr, range(0x10000)))
    by_regex = {ord(ch) for ch in _HANGUL_RANGES.findall(text)}
    by_function = {code for code in range(0x10000) if _is_hangul(chr(code))}
    assert by_regex == by_function
    assert len(by_function) == 11172 + 256 + 96 + 32 + 80


@pytest.mark.parametrize(
    ("ranges", "letters"),
    [
        (((0x41, 0x5A),), "[A-Z]"),  # letters from the first code point to the last
        (((0x40, 0x5B),), "[A-Z]"),  # a non-letter at each end
        (((0x61, 0x61),), "[a-a]"),  # one code point
        (((0x30, 0x39), (0x61, 0x63)), "[a-c]"),  # a range without letters adds nothing
        (((0x58, 0x62),), "[X-Za-b]"),  # two runs split by "[", "\\", "]", "^", "_", "`"
        (((0x61, 0x62), (0x41, 0x42)), "[a-bA-B]"),  # each range's runs, in order
        (((0x3130, 0x318F),), "[\u3131-\u318e]"),  # compatibility jamo: unassigned ends
    ],
)
def test_letters_class_lists_the_letter_runs_of_its_ranges(
    ranges: tuple[tuple[int, int], ...], letters: str
) -> None:
    # Called once at import to build _HANGUL_LETTERS, so only a direct call
    # notices a mistake in it (mutmut's mutants never run at import time).
    assert _letters_class(*ranges) == letters
    pattern = re.compile(letters)
    for first, last in ranges:
        for code in range(first - 2, last + 3):
            inside = any(f <= code <= t for f, t in ranges)
            expected = inside and chr(code).isalpha()
            assert (pattern.fullmatch(chr(code)) is not None) is expected, hex(code)


# One character of each syllable type, and a non-Hangul letter.
KINDS = {"L": "\u1100", "V": "\u1161", "T": "\u11a8", "LV": "가", "LVT": "각", "": "a"}
# The pairs UAX #29 (GB6-GB8) keeps together.
JOINED = {
    ("L", "L"),
    ("L", "V"),
    ("L", "LV"),
    ("L", "LVT"),
    ("V", "V"),
    ("V", "T"),
    ("LV", "V"),
    ("LV", "T"),
    ("LVT", "T"),
    ("T", "T"),
}


@pytest.mark.parametrize("before", list(KINDS))
@pytest.mark.parametrize("after", list(KINDS))
def test_splits_cluster_for_every_pair_of_syllable_types(before: str, after: str) -> None:
    text = KINDS[before] + KINDS[after]
    assert _splits_cluster(text, 1) is ((before, after) in JOINED)


@pytest.mark.parametrize(
    ("text", "index", "splits"),
    [
        ("e\u0301", 1, True),  # combining acute (Mn)
        ("\u0915\u0903", 1, True),  # Devanagari visarga (Mc)
        ("a\u20dd", 1, True),  # enclosing circle (Me)
        ("a\u200db", 1, True),  # zero-width joiner
        ("a\u200cb", 1, False),  # zero-width non-joiner does not join
        ("e\u0301", 0, False),  # before the first character: nothing to split
        ("e\u0301", 2, False),  # at the end: nothing after
        ("e\u0301", 3, False),
        ("\u0301e", 0, False),
        ("a-b", 1, False),
    ],
)
def test_splits_cluster_on_marks_joiners_and_ends(text: str, index: int, splits: bool) -> None:
    assert _splits_cluster(text, index) is splits


@pytest.mark.parametrize(
    ("text", "cut", "start"),
    [
        ("ab", 1, 1),
        ("ae\u0301\u0301b", 3, 1),  # two marks: back over both to the "e"
        ("ae\u0301\u0301b", 4, 4),  # before "b": a clean cut already
        ("ae\u0301\u0301b", 2, 1),
        ("ae\u0301\u0301b", 1, 1),
        ("a\u1100\u1161\u11a8b", 3, 1),  # conjoining jamo syllable kept whole
        ("a\u1100\u1161\u11a8b", 4, 4),
        ("\u0301\u0301x", 2, 2),  # marks from the start: nothing to go back to, cut stays
        ("abc", 0, 0),
        ("e\u0301\u0301x", 2, 2),  # the cluster opens the text: walking back stops, cut stays
    ],
)
def test_cluster_start(text: str, cut: int, start: int) -> None:
    assert _cluster_start(text, cut) == start


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("가a", "ko"),  # exactly half the letters are Hangul
        ("가나ab", "ko"),
        ("가ab", None),  # a third
        ("가나abc", None),
        ("가 1 2 3 4 5 6", "ko"),  # digits and spaces are not letters
        ("—–…", None),  # not ASCII, but no letters at all
        ("", None),
        ("Parasite", None),
        ("가", "ko"),  # conjoining jamo count as Hangul
        ("ㄱㄴab", "ko"),  # so do compatibility jamo
        ("ꥠꥡab", "ko"),  # jamo extended-A
        ("ힰힱab", "ko"),  # jamo extended-B
        ("日本語", None),  # CJK letters are not Hangul
        ("가나다 ab éé", None),  # other letters count: 3 Hangul of 7 letters
        ("가나다 ab é", "ko"),  # 3 of 6
        ("가나 漢字", "ko"),  # Hanja are letters too: 2 of 4
        ("가나 漢字 Кино", None),  # 2 of 8
    ],
)
def test_detect_language_at_the_share(text: str, language: str | None) -> None:
    assert detect_language(text) == language


def test_detect_language_looks_at_the_first_600_characters_exactly() -> None:
    # Exactly half in the first 600; one more or one fewer character would tip it.
    assert detect_language("가" * 300 + "a" * 300 + "b" * 1000) == "ko"
    assert detect_language("a" * 300 + "가" * 300 + "b" * 1000) == "ko"
    assert detect_language("a" * 301 + "가" * 299 + "가" * 1000) is None
    assert detect_language("a" * 600 + "가" * 1000) is None


@pytest.mark.parametrize(
    ("declared", "title", "text", "language"),
    [
        ("en", "기생충", "봉준호 감독의 영화", "ko"),  # plainly Korean overrules
        ("en", "Parasite", "A film", "en"),
        (" en-GB ", "Parasite", "A film", "en-GB"),
        (None, "Parasite", "A film", None),
        ("", "Parasite", "A film", None),
        ("ko", "Parasite", "A film by Bong", None),  # declared Korean, no Hangul
        ("KO-kr", "Parasite", "A film by Bong", None),
        ("kor", "Parasite", "A film by Bong", "kor"),
        # 1 Hangul letter in 10: exactly a tenth keeps the declared "ko".
        ("ko", "가abcdefghi", "", "ko"),
        ("ko", "가abcdefghij", "", None),
        ("ko", "123", "", "ko"),  # no letters: nothing to contradict it
    ],
)
def test_item_language(declared: str | None, title: str, text: str, language: str | None) -> None:
    assert item_language(declared, title=title, text=text) == language


def test_named_pattern_is_a_plain_character_class() -> None:
    # Guards the literal ranges against edits that would still compile.
    assert re.fullmatch(r"\[[^\]]+\]", _HANGUL_RANGES.pattern)


@pytest.mark.parametrize(
    ("shown", "trimmed"),
    [
        ("Hello wor...", "Hello…"),  # the fragment glued to the mark goes
        ("Hello wor ...", "Hello wor…"),  # a mark after a space: the word was whole
        ("Hello wor [...]", "Hello wor…"),
        ("Hello wor[...]", "Hello…"),
        ("Hello wor[..]", "Hello…"),
        ("Hello wor[. . .]", "Hello…"),
        ("Hello wor[…]", "Hello…"),
        ("Hello wor[ … ]", "Hello…"),
        ("Hello wor……", "Hello…"),
        ("Hello wor. . .", "Hello…"),
        ("Hello wor. ..", "Hello…"),
        ("Hello wor.... ", "Hello…"),
        ("Hello wor . . .", "Hello wor…"),
        ("Hello wor...   ", "Hello…"),
        ("Hello, wor...", "Hello…"),  # punctuation before the fragment goes with it
        ("Hello — wor...", "Hello…"),
        ("A wor...", "A…"),
        ("Hello w...", "Hello…"),  # a one-letter fragment  # one letter is enough to keep
        ("Hellowor...", "Hellowor…"),  # one cut word: kept, there is nothing else
        ("End. ...", "End…"),
        ("End....", "End…"),
        ("안녕하세요 여러분입니...", "안녕하세요…"),
        # Not a cut mark: our own "…", two dots, a mark before markup, only a mark.
        # Only what is glued to the mark goes: punctuation before the fragment
        # is stripped from the end, never from the start.
        ("(Hello wor...", "(Hello…"),
        ("Hello, ...", "Hello…"),
        ("Hello X ...", "Hello X…"),
        (", wor...", ", wor…"),  # nothing but punctuation before it: the fragment stays
        ("— wor...", "— wor…"),
        ("Hello wor…", "Hello wor…"),
        ("Hello wor..", "Hello wor.."),
        ("Hello wor...</p>", "Hello wor...</p>"),
        ("Hello wor... more", "Hello wor... more"),
        ("...", "..."),
    ],
)
def test_trim_cut_text_for_each_mark(shown: str, trimmed: str) -> None:
    assert trim_cut_text(shown) == trimmed
    assert trim_cut_text(trimmed) == trimmed  # idempotent


@pytest.mark.parametrize(
    ("markup", "trimmed"),
    [
        ("<p>Hello wor...</p>", "<p>Hello…</p>"),
        ("<p>Hi, wor...</p>", "<p>Hi…</p>"),
        ("<p>Hello wor... </p> ", "<p>Hello… </p> "),
        # ";" ends the reference: it stays, or "&amp" would be left broken.
        ("<p>Tom &amp; wor...</p>", "<p>Tom &amp;…</p>"),
        ("<p>AT&amp;...</p>", "<p>AT&amp;…</p>"),
        # Left alone: the mark follows a tag, a bare "&", or only a tag is left.
        ("<p><b>x</b>...</p>", "<p><b>x</b>...</p>"),
        ("<p>a &...</p>", "<p>a &...</p>"),
        ("<p>...</p>", "<p>...</p>"),
        ("<p>wor...</p>", "<p>wor...</p>"),
        ("<p>Hello wor</p>", "<p>Hello wor</p>"),
    ],
)
def test_trim_cut_html_for_each_case(markup: str, trimmed: str) -> None:
    assert trim_cut_html(markup) == trimmed


@pytest.mark.parametrize(
    ("title", "limit", "cut"),
    [
        ("abcdefghij", 10, "abcdefghij"),  # exactly the limit: kept
        ("abcdefghijk", 10, "abcdefghi…"),  # one past: cut to limit - 1 plus "…"
        ("abcde fghij", 10, "abcde fgh…"),  # the space at exactly half: too early to use
        ("abcdef ghij", 10, "abcdef…"),  # a space past half: cut there
        ("abcdef, ghijk", 10, "abcdef…"),  # punctuation before "…" goes
        ("abcdefghe\u0301x", 10, "abcdefgh…"),  # never between a letter and its accent
        ("abcdefg\u1100\u1161\u11a8x", 10, "abcdefg…"),  # nor inside a jamo syllable
    ],
)
def test_cut_title_at_and_past_the_limit(title: str, limit: int, cut: str) -> None:
    assert cut_title(title, limit) == cut
    assert len(cut) <= limit


def test_cut_title_default_limit_is_1000() -> None:
    assert cut_title("a" * 1000) == "a" * 1000
    assert cut_title("a" * 1001) == "a" * 999 + "…"


def test_excerpt_at_and_past_the_limit() -> None:
    assert excerpt("a" * 300) == "a" * 300
    assert excerpt("word " * 100) == ("word " * 60).rstrip() + "…"
    assert excerpt("word " * 100, 20) == "word word word word…"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # A sentence end counts from character 100 on (a third of 300), not before.
        ("a" * 99 + ". " + "b" * 300, "a" * 99 + "."),
        ("a" * 98 + ". " + "b" * 300, "a" * 98 + ".…"),
        # The last sentence end within the limit wins, with its closing quotes.
        (
            "a" * 150 + '."' + " " + "b" * 100 + ". " + "c" * 300,
            "a" * 150 + '."' + " " + "b" * 100 + ".",
        ),
        ("a" * 150 + ".」 " + "c" * 300, "a" * 150 + ".」"),
        ("a" * 150 + "다. " + "c" * 300, "a" * 150 + "다."),
        ("a" * 150 + "! " + "c" * 300, "a" * 150 + "!"),
        ("a" * 150 + "? " + "c" * 300, "a" * 150 + "?"),
        ("a" * 150 + "。" + " " + "c" * 300, "a" * 150 + "。"),
        ("a" * 150 + "… " + "c" * 300, "a" * 150 + "…"),
        # A sentence end at the very last place counts; a dot glued to text does not.
        ("a" * 299 + ". " + "c" * 300, "a" * 299 + "."),
        ("a" * 150 + ".b " + "c" * 300, "a" * 150 + ".b…"),
        # A sentence end just past the limit is not looked at.
        ("a" * 300 + ". " + "c" * 300, "a" * 300 + "…"),
        # A closing quote at the limit is not taken past it.
        ("a" * 298 + '.""' + " " + "c" * 300, "a" * 298 + ".…"),
        # One long word: kept whole up to twice the limit, then cut hard.
        ("a" * 400, "a" * 400),
        ("a" * 400 + " b", "a" * 400 + "…"),
        ("a" * 401, "a" * 401),  # odd lengths too: the word is walked one by one
        ("a" * 401 + " b", "a" * 401 + "…"),
        ("a" * 600 + " b", "a" * 600 + "…"),
        ("a" * 601 + " b", "a" * 300 + "…"),
        ("a" * 700, "a" * 300 + "…"),
        ("a" * 400 + ",b" + "c" * 300, "a" * 400 + "…"),
        # Nothing word-like to keep: the hard cut shows what there is.
        ("(" * 400, "(" * 300 + "…"),
        ("a (" + "b" * 400, "a…"),
    ],
)
def test_excerpt_sentence_space_and_hard_cuts(text: str, shown: str) -> None:
    assert excerpt(text) == shown


BASE_URL = "https://news.example.kr/section/list.html"


@pytest.mark.parametrize(
    ("base", "attribute", "value", "kept"),
    [
        (BASE_URL, "title", "javascript:x", "javascript:x"),  # not a URL attribute
        (BASE_URL, "alt", " spaced ", " spaced "),
        (BASE_URL, "href", " #top ", "#top"),
        (BASE_URL, "href", "   ", None),
        (BASE_URL, "href", "", None),
        (BASE_URL, "href", "https://a.example/x", "https://a.example/x"),
        (BASE_URL, "src", "http://a.example/x", "http://a.example/x"),
        (BASE_URL, "href", "/x", "https://news.example.kr/x"),
        (BASE_URL, "src", "img/p.jpg", "https://news.example.kr/section/img/p.jpg"),
        (BASE_URL, "href", "HTTPS://A.example/x", "https://A.example/x"),
        (BASE_URL, "href", "MAILTO:desk@example.kr", "MAILTO:desk@example.kr"),
        (BASE_URL, "href", "javascript:alert(1)", None),
        (BASE_URL, "src", "data:image/png;base64,AA", None),
        ("", "href", "/x", "/x"),  # no base: a relative link stays relative
        ("", "href", "x/a:b", "x/a:b"),
        ("", "href", "ftp://a.example/x", None),
        ("", "href", "a:b/c", None),
        ("", "href", ":x", None),  # no scheme, yet a colon in the first segment
        ("", "href", "/:x/y", "/:x/y"),
        ("", "href", "x/y:z/w", "x/y:z/w"),
        # Absolute http(s) links are kept as written, not re-resolved.
        (
            "https://news.example.kr/",
            "href",
            "https://a.example/x/../y",
            "https://a.example/x/../y",
        ),
        ("http://news.example.kr/", "src", "http://a.example/x/../y", "http://a.example/x/../y"),
        ("https://news.example.kr/", "href", "https://a.example/x?", "https://a.example/x?"),
        ("http://news.example.kr/", "href", "http://a.example/x?", "http://a.example/x?"),
    ],
)
def test_filter_attribute(base: str, attribute: str, value: str, kept: str | None) -> None:
    assert _filter_attribute(base, "a", attribute, value) == kept


@pytest.mark.parametrize(
    ("markup", "limit", "cut"),
    [
        ("abcdefghij", 10, "abcdefghij"),
        ("abcdefghijk", 10, "abcdefghij"),
        ("aaaaaa<b>xx", 8, "aaaaaa"),  # inside a tag in the second half: before it
        ("aaaa<bcdefg", 8, "aaaa<bcd"),  # a tag at exactly half: cut as is
        ("aaaaa<b>xyz", 9, "aaaaa<b>x"),  # the tag closed before the limit
        ("aaaaaa<bc>xx", 9, "aaaaaa"),  # ">" right at the limit is past it
        ("aaa<b", 4, "aaa"),
        ("aaaaaaaa&amp;bb", 11, "aaaaaaaa"),  # inside a reference: before it
        ("aa&amp;bb", 6, "aa"),  # ";" right at the limit is past it
        ("aa&amp;bb", 7, "aa&amp;"),
        ("&ampaaaaaaaaaa", 5, ""),  # a reference at the very start
        ("&amp", 3, ""),
        ("x&" + "a" * 20, 13, "x"),  # "&" 12 back from the limit: still looked at
        ("x&" + "a" * 20, 14, "x&aaaaaaaaaaaa"),  # 13 back: no reference is that long
        ("aaaaaa<b", 8, "aaaaaa<b"),  # exactly the limit: kept, even an open tag
        ("aa&amp", 7, "aa&amp"),
        ("aaaaaa<b>x<y", 8, "aaaaaa"),  # a "<" past the limit is not the one cut inside
        ("aa<b>a<cdef", 9, "aa<b>a"),  # the last "<" before the limit, not the first
        ("a<b>aaa<cdef", 10, "a<b>aaa"),  # a ">" before that "<" does not close it
        ("aa&amp;bb&c", 6, "aa"),  # an "&" past the limit is not the one cut inside
        ("a&amp;b&cd", 9, "a&amp;b"),  # the last "&", not the first
        ("a;b&cdef", 6, "a;b"),  # a ";" before the "&" does not end it
    ],
)
def test_cut_markup(markup: str, limit: int, cut: str) -> None:
    assert _cut_markup(markup, limit) == cut


@pytest.mark.parametrize(
    ("text", "dropped"),
    [
        (None, None),
        ("", ""),
        ("a &lol9; b", "a  b"),
        ("&amp; &xxe;", "&amp; "),
        ("&&a;b;", ""),  # dropping "&a;" makes "&b;", dropped in the next round
        ("&lt; &LT;", "&lt; &LT;"),
        ("&zzz", "&zzz"),
        ("&a1;", ""),
        ("&" + "a" * 64 + ";", ""),  # the longest name the pattern takes
        ("&" + "a" * 65 + ";", "&" + "a" * 65 + ";"),
    ],
)
def test_drop_undefined_entities(text: str | None, dropped: str | None) -> None:
    assert drop_undefined_entities(text) == dropped


@pytest.mark.parametrize(
    ("text", "limit", "plain"),
    [
        (" " * 160 + "abc", 10, ""),  # only the first 16 x limit characters are cleaned
        (" " * 159 + "abc", 10, "a"),
        ("&amp;xxe; Title", 1000, "Title"),  # a reference only after unescaping
        ("&amp;amp;xxe;", 1000, ""),
        ("a &amp;lol; b", 1000, "a b"),
        (None, 1000, ""),
    ],
)
def test_clean_plain(text: str | None, limit: int, plain: str) -> None:
    assert clean_plain(text, limit) == plain


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("&amp;quot;", '"'),
        ("&" + "amp;" * 7 + "lt;", "<"),  # eight rounds of unescaping, no more
        ("&" + "amp;" * 8 + "lt;", "&lt;"),
        ("a\u200bb", "ab"),
        ("a\u00adb", "ab"),
        ("a\x07b", "a b"),
        ("a\x9fb", "a b"),
        ("a~b", "a~b"),
        ("  a \n b  ", "a b"),
        ("e\u0301", "\u00e9"),
        (None, ""),
        ("", ""),
    ],
)
def test_clean_text(text: str | None, clean: str) -> None:
    assert clean_text(text) == clean


BASE_PAGE = "https://news.example.kr/section/list.html"


@pytest.mark.parametrize(
    ("base", "value", "url"),
    [
        (BASE_PAGE, None, None),
        (BASE_PAGE, "  ", None),
        (BASE_PAGE, " /a ", "https://news.example.kr/a"),
        ("", "/a", None),  # relative with nothing to resolve against
        ("", " https://x.example/a ", "https://x.example/a"),
        ("", "HTTPS://x.example/", "HTTPS://x.example/"),
        (BASE_PAGE, "HTTP://X.example/a", "HTTP://X.example/a"),
        (BASE_PAGE, "mailto:x@example.kr", None),
        (BASE_PAGE, "ftp://x.example/", None),
    ],
)
def test_http_url(base: str, value: str | None, url: str | None) -> None:
    assert _http_url(base, value) == url


def test_date_is_aware_plausible_and_never_later_than_now() -> None:
    now = datetime(2025, 11, 28, 3, 0, tzinfo=UTC)
    assert _date(None, now) is None
    assert _date(datetime(2025, 11, 1), now) is None  # naive: unknown zone
    assert _date(datetime(1900, 1, 1, tzinfo=UTC), now) is None
    assert _date(now - timedelta(days=1), now) == now - timedelta(days=1)
    assert _date(now + timedelta(hours=1), now) == now
    assert _date(now, now) == now


# ------------------------------------------------------------------- normalize

NOW = datetime(2025, 11, 28, 3, 0, tzinfo=UTC)
SOURCE = Source(id="news", url=BASE_PAGE, section="general")


def run(entry: RawEntry, source: Source = SOURCE, sections: tuple[SectionRule, ...] = ()) -> Item:
    return normalize(source, entry, sections=sections, now=NOW, fallback_base=BASE_PAGE)


def test_links_and_guids_at_the_size_cap() -> None:
    at_cap = "https://x.example/" + "a" * (MAX_LINK_CHARS - len("https://x.example/"))
    assert run(raw(link=at_cap)).url == at_cap
    assert run(raw(guid="g" * MAX_LINK_CHARS)).guid == "g" * MAX_LINK_CHARS
    with pytest.raises(EntryTooLarge) as link_error:
        run(raw(link=at_cap + "a", title="Big"))
    assert (
        f"entry 'Big' refused: its link or guid is {MAX_LINK_CHARS + 1:,} characters"
        f" (the cap is {MAX_LINK_CHARS:,})"
    ) in str(link_error.value)
    assert link_error.value.source_id == "news"
    assert link_error.value.url == BASE_PAGE
    with pytest.raises(EntryTooLarge) as guid_error:
        run(raw(guid="g" * (MAX_LINK_CHARS + 1), title=None))
    assert f"entry '?' refused: its link or guid is {MAX_LINK_CHARS + 1:,} characters" in str(
        guid_error.value
    )
    assert guid_error.value.url == BASE_PAGE
    # A guid under the cap that grows past it once cleaned is still refused.
    with pytest.raises(EntryTooLarge):
        run(raw(link=at_cap[:-1] + "\u00e9"))


def test_links_resolve_against_the_entry_base_then_the_page() -> None:
    item = run(raw(base_url="https://cdn.example/a/", link="p/1", image_url="i.jpg"))
    assert item.url == "https://news.example.kr/section/p/1"  # the link: the page it came from
    assert item.image_url == "https://cdn.example/a/i.jpg"
    item = run(raw(base_url="ftp://cdn.example/", image_url="i.jpg"))
    assert item.image_url == "https://news.example.kr/section/i.jpg"
    assert run(raw(image_url="https://x.example/" + "i" * MAX_LINK_CHARS)).image_url is None
    fits = "https://x.example/" + "i" * (MAX_LINK_CHARS - 18)
    assert run(raw(image_url=fits)).image_url == fits


def test_an_entry_without_a_link_names_its_guid_or_title() -> None:
    with pytest.raises(ParseError) as by_guid:
        run(raw(link="javascript:x", guid="tag:x,1"))
    assert "entry 'tag:x,1' has no http(s) link" in str(by_guid.value)
    assert by_guid.value.source_id == "news" and by_guid.value.url == BASE_PAGE
    with pytest.raises(ParseError, match="entry 'Lost' has no"):
        run(raw(link=None, guid=None, title="Lost"))
    with pytest.raises(ParseError, match="entry '\\?' has no"):
        run(raw(link=None, guid=None, title=None))
    # A guid that is an http URL stands in for the link, resolved against nothing.
    assert run(raw(link=None, guid="https://x.example/p/1")).url == "https://x.example/p/1"
    with pytest.raises(ParseError):
        run(raw(link=None, guid="/p/1"))


def test_guid_is_cleaned_or_the_canonical_url() -> None:
    assert run(raw(guid=" g &amp; 1 ")).guid == "g & 1"
    assert run(raw(guid="  ")).guid == "https://news.example.kr/news/1"


def test_summary_and_content_kept_apart_or_once() -> None:
    big = "<p>" + "x" * (MAX_SUMMARY_CHARS - 7) + "</p>"
    assert len(big) == MAX_SUMMARY_CHARS
    item = run(raw(summary_html=big, content_html=big))
    assert item.summary_html == "" and item.content_html == big
    bigger = "<p>" + "x" * (MAX_SUMMARY_CHARS - 6) + "</p>"
    item = run(raw(summary_html=bigger, content_html=bigger))
    assert item.content_html == bigger
    assert 0 < len(item.summary_html) <= MAX_SUMMARY_CHARS  # cut to the summary's cap
    only_summary = run(raw(summary_html="<p>Short.</p>", content_html=None))
    assert only_summary.content_html == "" and only_summary.summary_html == "<p>Short.</p>"
    assert only_summary.text == "Short."


def test_cut_excerpts_are_trimmed_only_up_to_the_cap() -> None:
    words = ("word " * CUT_EXCERPT_MAX_CHARS)[: CUT_EXCERPT_MAX_CHARS - 8]
    at_cap = f"<p>{words} frag...</p>"
    item = run(raw(summary_html=at_cap))
    assert len(words + " frag...") == CUT_EXCERPT_MAX_CHARS
    assert item.text == words + "…"  # "frag" goes, the whole word before it stays
    assert item.summary_html == f"<p>{words}…</p>"
    past_cap = f"<p>{words}x frag...</p>"
    item = run(raw(summary_html=past_cap))
    assert item.text.endswith("x frag...")
    content = run(raw(summary_html="<p>In short.</p>", content_html="<p>A long wor...</p>"))
    assert content.content_html == "<p>A long…</p>" and content.text == "A long…"
    assert content.summary_html == "<p>In short.</p>"


def test_title_falls_back_to_the_text_then_the_url() -> None:
    long_text = "<p>" + "word " * 60 + "</p>"
    item = run(raw(title="  ", summary_html=long_text))
    assert item.title == ("word " * 24).rstrip() + "…"
    assert len(item.title) <= 120
    assert run(raw(title=None, summary_html=None)).title == "https://news.example.kr/news/1"
    assert run(raw(title="x" * 1001)).title == "x" * 999 + "…"


def test_author_categories_and_language_are_cleaned_and_capped() -> None:
    item = run(raw(author="  ", language="  "))
    assert item.author is None and item.language is None
    assert run(raw(author=" Kim &amp; Lee ")).author == "Kim & Lee"
    cats = tuple(f"c{i}" for i in range(MAX_CATEGORIES + 5))
    item = run(raw(categories=("", " c1 ", "c1", *cats)))
    assert item.categories == ("c1", "c0", *(f"c{i}" for i in range(2, MAX_CATEGORIES)))
    long_cat = "k" * (MAX_CATEGORY_CHARS + 1)
    assert run(raw(categories=(long_cat,))).categories == ("k" * (MAX_CATEGORY_CHARS - 1) + "…",)
    assert run(raw(categories=(long_cat[:-1],))).categories == (long_cat[:-1],)
    assert run(raw(language="en-GB-oxendict16")).language == "en-GB-oxendict16"  # 16
    assert run(raw(language="en-GB-oxendict-17")).language is None  # 17: not a tag
    assert run(raw(language="en"), replace(SOURCE, language="de")).language == "de"
    assert (
        run(raw(language="en", title="기생충", summary_html="<p>봉준호 감독</p>")).language == "ko"
    )


def test_dates_fall_back_in_order() -> None:
    day = datetime(2025, 11, 20, tzinfo=UTC)
    later = datetime(2025, 11, 25, tzinfo=UTC)
    item = run(raw(published=day, updated=later))
    assert (item.published_at, item.updated_at, item.date_missing) == (day, later, False)
    item = run(raw(published=later, updated=day))
    assert (item.published_at, item.updated_at) == (later, later)
    item = run(raw(published=None, updated=day, date_text="2025.11.01"))
    assert (item.published_at, item.updated_at) == (day, day)
    item = run(raw(published=None, date_text="2025.11.01"))
    assert item.published_at == datetime(2025, 10, 31, 15, 0, tzinfo=UTC)
    assert item.updated_at == item.published_at and not item.date_missing
    source = replace(SOURCE, timezone="UTC", date_format="%d/%m/%Y")
    item = run(raw(published=None, date_text="01/11/2025"), source)
    assert item.published_at == datetime(2025, 11, 1, tzinfo=UTC)
    item = run(raw(published=None, date_text=None))
    assert (item.published_at, item.updated_at, item.date_missing) == (NOW, NOW, True)
    item = run(raw(published=None, date_text="2099.01.01"))
    assert item.date_missing and item.published_at == NOW


def test_section_by_rule_else_the_source_default() -> None:
    rules = (
        SectionRule(id="a", title="A", source_ids=("other",)),
        SectionRule(id="b", title="B", text_pattern="Summary"),
    )
    assert run(raw(), sections=rules).section == "b"
    assert run(raw(), sections=rules[:1]).section == "general"
    assert run(raw(), replace(SOURCE, section=None), rules[:1]).section is None


def test_item_carries_excerpt_fingerprint_and_hash_of_its_own_fields() -> None:
    item = run(raw(summary_html="<p>" + "Sentence here. " * 40 + "</p>"))
    assert item.excerpt == excerpt(item.text)
    assert item.source_id == "news"
    other = run(raw(summary_html="<p>" + "Sentence here. " * 40 + "</p>", author="Kim"))
    assert other.content_hash != item.content_hash
    assert other.fingerprint == item.fingerprint
    assert run(raw(image_url="/i.jpg")).content_hash != run(raw()).content_hash
    assert run(raw(categories=("x",))).content_hash != run(raw()).content_hash
    assert run(raw(title="B")).content_hash != run(raw()).content_hash
    assert run(raw(link="/news/2")).content_hash != run(raw()).content_hash
    assert (
        run(raw(published=datetime(2025, 11, 26, tzinfo=UTC))).content_hash
        != run(raw()).content_hash
    )
    assert run(raw(content_html="<p>C</p>")).content_hash != run(raw()).content_hash


@pytest.mark.parametrize(
    ("ch", "word"),
    [
        ("a", True),
        ("가", True),
        ("1", True),
        ("\u0301", True),  # combining marks (Mn, Mc, Me) belong to the word
        ("\u0903", True),
        ("\u20dd", True),
        ("_", True),
        ("'", True),
        ("’", True),
        ("-", True),
        (" ", False),
        (",", False),
        ("(", False),
        (".", False),
    ],
)
def test_is_word_char(ch: str, word: bool) -> None:
    assert _is_word_char(ch) is word


@pytest.mark.parametrize(
    ("markup", "clean"),
    [
        (None, ""),
        ("", ""),
        ("  \n ", ""),
        ("<p>a\u200bb</p>", "<p>ab</p>"),  # zero-width characters go
        ("<p>a\x07b</p>", "<p>a b</p>"),  # control characters become a space
        ('<a href="?q">x</a>', '<a href="?q" rel="noopener noreferrer nofollow">x</a>'),
    ],
)
def test_sanitize_html_edges(markup: str | None, clean: str) -> None:
    assert sanitize_html(markup) == clean


def test_normalize_uses_every_base_and_field_it_is_given() -> None:
    # A relative xml:base resolves against the page.
    item = run(raw(base_url="/cdn/", image_url="i.jpg"))
    assert item.image_url == "https://news.example.kr/cdn/i.jpg"
    # The summary's links resolve too when it differs from the content.
    item = run(raw(summary_html='<p><a href="/p/9">x</a></p>', content_html="<p>Other.</p>"))
    assert 'href="https://news.example.kr/p/9"' in item.summary_html
    # The source's own parameters to drop.
    source = replace(SOURCE, drop_params=("pageIndex",))
    assert run(raw(link="/news/1?id=2&pageIndex=3"), source).canonical_url == (
        "https://news.example.kr/news/1?id=2"
    )
    # The summary counts in the hash.
    assert run(raw(summary_html="<p>Other.</p>")).content_hash != run(raw()).content_hash
    # The title counts for the language.
    item = run(raw(language=None, title="기생충 봉준호 감독", summary_html="<p>A film.</p>"))
    assert item.language == "ko"
    # A missing title is cut from the first 120 characters of the text.
    text = "a" * 119 + " b " + "c" * 50
    assert run(raw(title=None, summary_html=f"<p>{text}</p>")).title == "a" * 119 + "…"


def test_links_that_outgrow_the_cap_once_resolved_or_cleaned_are_refused() -> None:
    # The url alone: the fragment the canonical URL drops takes it over.
    link = "/" + "a" * (MAX_LINK_CHARS - 32) + "#" + "f" * 20
    with pytest.raises(EntryTooLarge) as error:
        run(raw(link=link))
    assert error.value.url == BASE_PAGE and error.value.source_id == "news"
    assert f"{MAX_LINK_CHARS + 13:,} characters" in str(error.value)
    # The guid alone: NFC decomposes U+0958 into two code points.
    guid = "\u0958" * (MAX_LINK_CHARS // 2 + 1)
    with pytest.raises(EntryTooLarge, match=f"{MAX_LINK_CHARS + 2:,} characters"):
        run(raw(guid=guid))


def test_a_date_without_a_year_is_read_against_the_given_now() -> None:
    # The wall clock is not NOW: read against it, "27 November" would fall in
    # another year and be clamped.
    item = run(raw(published=None, date_text="11월 27일"))
    assert item.published_at == datetime(2025, 11, 26, 15, 0, tzinfo=UTC)
    assert not item.date_missing


def test_bounded_html_cuts_to_the_limit_in_whole_elements() -> None:
    base = "https://e.example/"
    assert bounded_html("<p>" + "word " * 100 + "</p>", base, 100) == (
        "<p>" + ("word " * 19)[:-3] + "</p>"
    )
    assert bounded_html("<p>" + "<b>ab</b> " * 30 + "</p>", base, 100) == (
        "<p>" + "<b>ab</b> " * 9 + "</p>"
    )
    assert bounded_html("<p>" + "x" * 300 + "</p>", base, 100) == "<p>" + "x" * 92 + "</p>"


def test_a_long_title_is_named_by_its_first_60_characters() -> None:
    link = "/" + "a" * MAX_LINK_CHARS
    with pytest.raises(EntryTooLarge) as error:
        run(raw(link=link, title="t" * 70))
    assert f"entry {'t' * 60!r} refused" in str(error.value)


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        # The parser moves text out of a table (foster parenting); deleting tags does not.
        ("<table><tr><td>a</td></tr>b</table>", "b a c"),
        # A comment with ">" inside is not one tag to the tag-deleting regex.
        ("x<!-- a > b -->y", "xy c"),
    ],
)
def test_sanitized_text_of_markup_past_the_caps_is_the_parsers_text(markup: str, text: str) -> None:
    # Not sanitizer output (nesting beyond the cap): the shortcut does not apply.
    deep = "<div>" * 300 + "c" + "</div>" * 300
    assert sanitized_text(markup + deep) == text


@pytest.mark.parametrize("field", ["summary_html", "content_html"])
@pytest.mark.parametrize(
    ("shown", "trimmed"),
    [
        ("Premiere dates; wor...", "Premiere dates;…"),
        ("개봉일 확정; 자세한...", "개봉일 확정;…"),
        ("Premiere dates;wor...", "Premiere dates;…"),
    ],
)
def test_the_text_of_a_trimmed_excerpt_is_read_from_the_trimmed_markup(
    field: str, shown: str, trimmed: str
) -> None:
    # In markup a ";" before the cut word may end a reference, so it stays;
    # the text must say what the markup shows, not trim the plain text anew.
    item = run(raw(**{"summary_html": "<p>Short.</p>", field: f"<p>{shown}</p>"}))
    assert getattr(item, field) == f"<p>{trimmed}</p>"
    assert item.text == trimmed
    assert item.excerpt == trimmed


# ---------------------------------------------------------- bounded decoding work


@pytest.mark.parametrize(
    ("levels", "left"),
    [(1, 0), (24, 0), (31, 0), (32, 1), (40, 9), (60, 29)],
)
def test_a_title_is_decoded_at_most_32_references_deep(levels: int, left: int) -> None:
    """Four cleaning rounds of up to eight decodings each: hostile nesting costs bounded
    CPU, and whatever is nested deeper is shown still escaped, never dropped."""
    title = clean_plain("Title &" + "amp;" * levels + "lt;b&gt; end", 300)
    assert title == "Title " + ("&" + "amp;" * (left - 1) + "lt;b>" if left else "<b>") + " end"


# Ordinary nested markup whose cut, sanitized again, still does not fit after four
# rounds (found by comparing against a five-round loop on generated markup).
UNFITTING = (
    "<li><table>word <span>&amp;<em>가나 <b><blockquote><span><ul><b><li><span>ab cd "
    "<blockquote>&amp;<i>word <div><td>ab cd <div>x<em>가나 <span><i>ab cd <li>x<b>"
    "<span>가나 text"
)


def test_markup_that_cannot_be_cut_to_fit_in_four_rounds_becomes_its_escaped_text() -> None:
    shown = bounded_html(UNFITTING, "https://e.org/", 121)
    assert shown == "word &amp;가나 ab cd &amp;wor"  # the start of its text, 121 // 6 chars
    assert len(shown) <= 121 and "<" not in shown


# Nested markup whose fourth cut, sanitized, is exactly the limit long (found by
# running the four rounds on generated markup): it fits, so it is kept as markup.
FOURTH_CUT_FITS_EXACTLY = [
    (
        "<p><ul><i><p><b><ul><em><i><ul><i><b><em><ul><em><ul><li><ul><div><b><span><div>"
        + "x" * 34
        + "</div></span></b></div></ul></li></ul></em></ul></em></b></i></ul></i></em></ul>"
        "</b></p></i></ul></p>",
        157,
    ),
    (
        '<b><span><b><li><em><div><a href="/x">' + "x" * 48 + "가나</a></div></em></li></b>"
        "</span></b>",
        138,
    ),
    (
        "<li><blockquote><div><b><div><em><blockquote><li><ul><li><div>"
        + "x" * 27
        + "</div></li></ul></li></blockquote></em></div></b></div></blockquote></li>",
        106,
    ),
]


@pytest.mark.parametrize(("markup", "limit"), FOURTH_CUT_FITS_EXACTLY)
def test_markup_whose_fourth_cut_is_exactly_the_limit_stays_markup(markup: str, limit: int) -> None:
    shown = bounded_html(markup, "https://a.kr/", limit)
    assert len(shown) == limit
    assert shown.startswith("<") and "xxxx" in shown  # markup with its text, not escaped text
