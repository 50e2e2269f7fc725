"""detect_language counts letters in C now; it must answer as the per-character loop did."""

from __future__ import annotations

import random

import pytest

from aggregator.normalize import _HANGUL_SHARE, _LANGUAGE_SAMPLE, _is_hangul, detect_language


def loop_answer(text: str) -> str | None:
    """The previous implementation, kept as the reference."""
    letters = hangul = 0
    for ch in text[:_LANGUAGE_SAMPLE]:
        if ch.isalpha():
            letters += 1
            hangul += _is_hangul(ch)
    return "ko" if letters and hangul / letters >= _HANGUL_SHARE else None


# ASCII, Hangul syllables and the jamo blocks (with their unassigned code
# points, which are not letters), other scripts, number forms, digits.
POOLS = [
    *(range(0x20, 0x7F), range(0xAC00, 0xD7A4), range(0x1100, 0x1200), range(0x3130, 0x3190)),
    *(range(0xA960, 0xA980), range(0xD7B0, 0xD800), range(0x80, 0x3000), range(0x2150, 0x2190)),
]


@pytest.mark.parametrize("seed", range(4))
def test_same_answer_as_the_loop(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(5000):
        length = rng.choice([0, 1, 5, 40, 599, 600, 601, 900])
        mix = rng.sample(POOLS, rng.randint(1, 3))
        text = "".join(chr(rng.choice(rng.choice(mix))) for _ in range(length))
        assert detect_language(text) == loop_answer(text), repr(text[:80])
