"""Properties of normalize and dedupe that tests/test_normalize.py and test_dedupe.py leave open.

Those files already check, with hypothesis, that normalize is idempotent over
a sample of fragments, that sanitized fragments are never executable, that
``canonical_url`` is idempotent and that excerpts never cut between two ASCII
or Hangul letters. Here:

* the sanitizer against *generated* markup: random tags and attributes, URLs
  whose dangerous scheme is hidden by case, whitespace, control characters
  and character references;
* clean text is a fixed point over all of Unicode, not a sample;
* canonical links are *stable*: the same page reached through tracking
  parameters, another parameter order, host case, the default port, a
  fragment or another percent-encoding gets one canonical link, also through
  ``normalize``; and two different pages never share one;
* excerpts and cut titles never end inside a word or a grapheme cluster
  (Hangul syllables, conjoining jamo, combining marks), including the hard
  cut of a single overlong word;
* the story fingerprint ignores how a copy is dressed.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from aggregator.dedupe import canonical_url, fingerprint
from aggregator.models import RawEntry, Source
from aggregator.normalize import clean_text, cut_title, excerpt, normalize, sanitize_html

BASE = "https://news.example.kr/list.html"
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ sanitizer

SAFE_TAGS = ["p", "a", "img", "b", "i", "em", "strong", "ul", "li", "blockquote", "table", "td"]
BAD_TAGS = [
    "script", "iframe", "svg", "math", "object", "embed", "style", "form", "input", "button",
    "meta", "link", "base", "frame", "frameset", "template", "noscript", "details", "video",
    "audio", "source", "animate", "set", "foreignObject", "xmp", "plaintext", "isindex",
]  # fmt: skip
EXECUTABLE = frozenset(t.lower() for t in BAD_TAGS) - {"details"}
ATTRIBUTES = [
    "href", "src", "style", "onerror", "onload", "OnClick", "onmouseover", "formaction",
    "action", "srcdoc", "xlink:href", "background", "dynsrc", "lowsrc", "poster", "data",
    "title", "alt", "width", "class", "id",
]  # fmt: skip
SCHEMES = ["javascript", "vbscript", "data", "livescript", "jav\tascript", "java\nscript"]


def _obfuscate(scheme: str, how: int) -> str:
    if how == 0:
        return scheme
    if how == 1:
        return "".join(c.upper() if i % 2 else c for i, c in enumerate(scheme))
    if how == 2:
        return "".join(f"&#x{ord(c):x};" for c in scheme)  # all character references
    if how == 3:
        return " \x01\x0f" + scheme  # leading blanks and controls that browsers skip
    return "".join(f"&#{ord(c)};" if i == 0 else c for i, c in enumerate(scheme))


DANGEROUS_URLS = st.builds(
    lambda scheme, how, colon, payload: _obfuscate(scheme, how) + colon + payload,
    st.sampled_from(SCHEMES),
    st.integers(0, 4),
    st.sampled_from([":", "&colon;", "&#58;", "&#x3A;", "%3A"]),
    st.sampled_from(["alert(1)", "text/html;base64,PHNjcmlwdD4=", "//evil.example/%0a"]),
)
ATTRIBUTE_VALUES = st.one_of(
    DANGEROUS_URLS,
    st.sampled_from(
        ["alert(1)", "expression(alert(1))", "url(javascript:x)", "/rel/path", "https://ok.kr/"]
    ),
    st.text(max_size=8),
)


def _element(children: list[str], tag: str, attributes: list[tuple[str, str]]) -> str:
    attrs = "".join(f' {name}="{value.replace(chr(34), "&quot;")}"' for name, value in attributes)
    return f"<{tag}{attrs}>{''.join(children)}</{tag}>"


MARKUP = st.recursive(
    st.one_of(st.text(max_size=10), st.sampled_from(["<!--", "-->", "<![CDATA[", "]]>", "<"])),
    lambda inner: st.builds(
        _element,
        st.lists(inner, max_size=3),
        st.sampled_from(SAFE_TAGS + BAD_TAGS),
        st.lists(st.tuples(st.sampled_from(ATTRIBUTES), ATTRIBUTE_VALUES), max_size=3),
    ),
    max_leaves=12,
)


def executable_constructs(markup: str) -> list[str]:
    """Everything in ``markup`` a browser could run or load as active content."""
    found = []
    tree = LexborHTMLParser(f"<body>{markup}</body>")
    for node in tree.body.traverse() if tree.body else []:
        tag = (node.tag or "").lower()
        if tag in EXECUTABLE:
            found.append(f"<{tag}>")
        for name, value in node.attributes.items():
            name = name.lower()
            if name.startswith("on") or name in ("style", "srcdoc", "formaction", "action"):
                found.append(f"{tag}[{name}]")
            if value is not None and name in ("href", "src", "xlink:href", "background"):
                scheme = urlsplit(value.strip()).scheme.lower()
                if scheme not in ("", "http", "https", "mailto"):
                    found.append(f"{tag}[{name}={value!r}]")
    return found


@FAST
@given(st.lists(MARKUP, min_size=1, max_size=4).map("".join))
def test_sanitized_generated_markup_has_no_executable_construct(markup: str) -> None:
    cleaned = sanitize_html(markup, BASE)
    assert executable_constructs(cleaned) == [], (markup, cleaned)
    assert "<script" not in cleaned.lower()  # as text it would be escaped: &lt;script
    assert sanitize_html(cleaned, BASE) == cleaned


@FAST
@given(st.lists(MARKUP, min_size=1, max_size=3).map("".join), DANGEROUS_URLS)
def test_normalized_item_has_no_executable_construct(markup: str, bad_url: str) -> None:
    item = normalize(
        Source(id="s", url=BASE),
        RawEntry(
            guid="g",
            link="/story/1",
            title=markup,
            summary_html=markup,
            content_html=f'<a href="{bad_url}">x</a><img src="{bad_url}">{markup}',
            image_url=bad_url,
        ),
        sections=(),
        now=NOW,
        fallback_base=BASE,
    )
    for html in (item.summary_html, item.content_html):
        assert executable_constructs(html) == [], html
    # A raw URL is not markup: "javascript&colon;x" is a harmless relative path.
    assert item.image_url is None or urlsplit(item.image_url).scheme in ("http", "https")
    assert item.url.startswith("https://news.example.kr/")


# ------------------------------------------------------------------ clean text

ANY_TEXT = st.text(
    st.characters(codec="utf-8"),  # every scalar value, controls and marks included
    max_size=60,
)


@FAST
@given(ANY_TEXT)
def test_clean_text_is_a_fixed_point_over_all_unicode(raw: str) -> None:
    once = clean_text(raw)
    assert clean_text(once) == once
    assert once == once.strip() and "  " not in once
    assert not any(unicodedata.category(c) == "Cc" for c in once)
    assert unicodedata.is_normalized("NFC", once)


# ------------------------------------------------------------------ canonical links

TRACKING = ["utm_source", "utm_medium", "UTM_Campaign", "fbclid", "gclid", "ref", "_ga", "pk_kwd"]
SEGMENTS = st.text(alphabet="abcz09-_.가나영화", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
NAMES = st.text(alphabet="abcdefgxyz", min_size=1, max_size=6).filter(
    lambda n: n not in TRACKING and n != "ref"
)
VALUES = st.text(alphabet="abc019 가-", min_size=1, max_size=6).filter(lambda v: v.strip())


Page = tuple[str, str, str, frozenset[tuple[str, str]]]  # scheme, host, path, parameters


@st.composite
def same_page_twice(draw: st.DrawFn) -> tuple[str, str, Page]:
    """One page as a plain URL, as the same page dressed up, and what identifies
    it (drawn here, not read back through ``canonical_url``)."""
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.sampled_from(["news.example.kr", "www.kofic.or.kr", "e.kr"]))
    path = "/".join(draw(st.lists(SEGMENTS, min_size=1, max_size=3)))
    params = draw(st.dictionaries(NAMES, VALUES, max_size=4))

    def query(pairs: list[tuple[str, str]], space: str) -> str:
        return "&".join(f"{k}={quote(v, safe='').replace('%20', space)}" for k, v in pairs)

    plain = f"{scheme}://{host}/{quote(path)}"
    if params:
        plain += "?" + query(list(params.items()), "%20")

    pairs = draw(st.permutations(list(params.items())))
    extra = draw(st.lists(st.sampled_from(TRACKING), max_size=3, unique=True))
    noise = [(name, draw(VALUES)) for name in extra]
    noise += [("empty", "")] if draw(st.booleans()) else []
    mixed = list(pairs) + noise
    mixed = draw(st.permutations(mixed))
    upper_host = draw(st.booleans())
    port = {"http": ":80", "https": ":443"}[scheme] if draw(st.booleans()) else ""
    lower_escapes = draw(st.booleans())
    dressed_path = quote(path)
    if lower_escapes:
        dressed_path = dressed_path.replace("%EA", "%ea").replace("%EB", "%eb")
    dressed = (
        f"{scheme.upper() if upper_host else scheme}://"
        f"{host.upper() if upper_host else host}{port}/{dressed_path}"
    )
    if mixed:
        dressed += "?" + query(mixed, draw(st.sampled_from(["%20", "+"])))
    if draw(st.booleans()):
        dressed += "#" + draw(st.sampled_from(["top", "comments", "", "a=b"]))
    return plain, dressed, (scheme, host, path, frozenset(params.items()))


@FAST
@given(same_page_twice())
def test_the_same_page_dressed_up_has_one_canonical_link(
    pair: tuple[str, str, Page],
) -> None:
    plain, dressed, _ = pair
    canonical = canonical_url(plain)
    assert canonical_url(dressed) == canonical
    assert canonical_url(canonical) == canonical
    source = Source(id="s", url=BASE)
    item = normalize(
        source,
        RawEntry(guid=None, link=dressed, title="t", summary_html="<p>x</p>"),
        sections=(),
        now=NOW,
        fallback_base=BASE,
    )
    assert item.canonical_url == canonical
    assert item.guid == canonical  # no guid: identity is the canonical link, so it is stable


@FAST
@given(same_page_twice(), same_page_twice())
def test_different_pages_never_share_a_canonical_link(
    a: tuple[str, str, Page], b: tuple[str, str, Page]
) -> None:
    # Pages differ when the generator drew another scheme, host, path or set of
    # parameters: the expectation never goes through canonical_url itself.
    if a[2] != b[2]:
        assert canonical_url(a[1]) != canonical_url(b[1])
        assert canonical_url(a[0]) != canonical_url(b[0])


@FAST
@given(same_page_twice())
def test_every_identifying_parameter_survives_canonicalization(
    pair: tuple[str, str, Page],
) -> None:
    _, dressed, (scheme, host, path, params) = pair
    parts = urlsplit(canonical_url(dressed))
    assert (parts.scheme, parts.netloc) == (scheme, host)
    assert unquote(parts.path) == "/" + path
    kept = {tuple(unquote(x) for x in p.split("=", 1)) for p in parts.query.split("&") if p}
    assert kept == set(params)


# ------------------------------------------------------------------ excerpts

_L = ((0x1100, 0x115F), (0xA960, 0xA97C))
_V = ((0x1160, 0x11A7), (0xD7B0, 0xD7C6))
_T = ((0x11A8, 0x11FF), (0xD7CB, 0xD7FB))


def _in(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in ranges)


def _hangul_kind(ch: str) -> str:
    if _in(ch, _L):
        return "L"
    if _in(ch, _V):
        return "V"
    if _in(ch, _T):
        return "T"
    if 0xAC00 <= ord(ch) <= 0xD7A3:
        return "LV" if (ord(ch) - 0xAC00) % 28 == 0 else "LVT"
    return ""


def inside_grapheme(text: str, index: int) -> bool:
    """Whether a cut before ``text[index]`` splits a grapheme cluster (UAX #29, the
    rules that matter here: extenders, ZWJ and Hangul syllable sequences)."""
    if index <= 0 or index >= len(text):
        return False
    before, after = text[index - 1], text[index]
    if unicodedata.category(after) in ("Mn", "Me", "Mc") or after == "\u200d":
        return True
    a, b = _hangul_kind(before), _hangul_kind(after)
    return (
        (a == "L" and b in ("L", "V", "LV", "LVT"))
        or (a in ("LV", "V") and b in ("V", "T"))
        or (a in ("LVT", "T") and b == "T")
    )


def inside_word(text: str, index: int) -> bool:
    if index <= 0 or index >= len(text):
        return False
    return text[index - 1].isalnum() and text[index].isalnum()


# Letters a Korean or European news text is made of: precomposed syllables,
# conjoining jamo (old Hangul does not compose under NFC), combining marks.
HANGUL = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
JAMO_CLUSTER = st.builds(
    lambda lead, vowel, tail: lead + vowel + tail,
    st.sampled_from(["\u1100", "\u1112", "\u115e", "\ua960"]),
    st.sampled_from(["\u1161", "\u1176", "\u11a3", "\ud7b0"]),
    st.sampled_from(["", "\u11a8", "\u11ff", "\ud7cb"]),
)
ACCENTED = st.builds(lambda c, m: c + m, st.sampled_from("aeouy"), st.sampled_from("\u0301\u0308"))
LETTERS = st.one_of(HANGUL, JAMO_CLUSTER, ACCENTED, st.sampled_from("abcxyz019"))
WORD = st.lists(LETTERS, min_size=1, max_size=30).map("".join)
PUNCT = st.sampled_from(["", "", ".", ",", "!", "?", "다.", "」", "…"])


@FAST
@given(
    st.lists(st.tuples(WORD, PUNCT).map("".join), min_size=1, max_size=60),
    st.integers(min_value=10, max_value=300),
)
def test_excerpt_never_ends_inside_a_word_or_a_grapheme(words: list[str], limit: int) -> None:
    text = clean_text(" ".join(words))  # excerpts are cut from clean (NFC) text
    cut = excerpt(text, limit)
    if len(text) <= limit:
        assert cut == text
        return
    body = cut.removesuffix("…")
    assert text.startswith(body)
    assert len(body) <= 2 * limit
    assert not inside_grapheme(text, len(body)), (text, cut)
    one_overlong_word = all(
        c.isalnum() or unicodedata.category(c).startswith("M") for c in text[: 2 * limit + 1]
    )
    if not one_overlong_word:  # only a word longer than twice the limit is cut hard
        assert not inside_word(text, len(body)), (text, cut)


@FAST
@given(st.lists(WORD, min_size=1, max_size=3), st.integers(min_value=10, max_value=200))
def test_hard_cut_of_an_overlong_word_keeps_graphemes_whole(words: list[str], limit: int) -> None:
    text = clean_text("".join(words) * 20)  # one word, no spaces: Korean without spacing
    body = excerpt(text, limit).removesuffix("…")
    assert text.startswith(body)
    assert not inside_grapheme(text, len(body)), (text[: len(body) + 2], limit)
    title = cut_title(text, limit)
    head = title.removesuffix("…")
    assert len(title) <= limit and text.startswith(head)
    assert not inside_grapheme(text, len(head)), (text[: len(head) + 2], limit)
    assert cut_title(title, limit) == title


@FAST
@given(st.lists(st.tuples(WORD, PUNCT).map("".join), min_size=1, max_size=200))
def test_cut_title_is_bounded_idempotent_and_ends_at_a_word(words: list[str]) -> None:
    text = clean_text(" ".join(words))
    title = cut_title(text, 200)
    head = title.removesuffix("…")
    assert len(title) <= 200 and text.startswith(head)
    assert cut_title(title, 200) == title
    assert not inside_grapheme(text, len(head))
    if " " in text[100:199]:
        assert not inside_word(text, len(head)), title


# ------------------------------------------------------------------ fingerprints


@FAST
@given(
    st.lists(WORD, min_size=2, max_size=8),
    st.lists(WORD, min_size=1, max_size=40),
    st.sampled_from(["", "[단독] ", "(종합) ", "【속보】", "[포토] [단독] "]),
    st.sampled_from([" ", "  ", " · ", ", ", "\u3000"]),
    st.booleans(),
)
def test_fingerprint_ignores_labels_case_spacing_and_punctuation(
    title_words: list[str], text_words: list[str], label: str, separator: str, shout: bool
) -> None:
    title, text = clean_text(" ".join(title_words)), clean_text(" ".join(text_words))
    dressed_title = label + separator.join(title_words)
    dressed_text = separator.join(text_words) + " …"
    if shout:
        dressed_title, dressed_text = dressed_title.upper(), dressed_text.upper()
    dressed_title, dressed_text = clean_text(dressed_title), clean_text(dressed_text)
    assert fingerprint(dressed_title, dressed_text) == fingerprint(title, text)
