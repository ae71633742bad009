"""Every Unicode code point, in a few contexts, encodes as the reference does.

This pins the char classes of the hand-written lexers, the regex fallback and the
normalizers to the reference's Unicode tables across the whole code space, not only the
scripts the corpora happen to contain.
"""

from __future__ import annotations

import pytest
from conftest import ALL_TOKENIZERS, hf_tokenizer, ts_tokenizer

# Every code point of the planes with assigned characters (0-3: BMP, supplementary
# multilingual and ideographic planes; the tags and variation selectors of plane 14); the
# rest of planes 4-14 is unassigned and 15-16 private use, each a single class all through,
# so every 61st of them (a step prime to every block size) stands for the rest: 0.28M code
# points instead of 1.1M, a quarter of the time per tokenizer.
CODE_POINTS = [
    c
    for c in range(0x20, 0x110000)
    if not 0xD800 <= c < 0xE000 and (c < 0x40000 or 0xE0000 <= c < 0xE1000 or c % 61 == 0)
]


def contexts(c: str) -> str:
    # Inside a word, doubled after a space (compositions, runs), after a digit and an apostrophe.
    return f"a{c}b {c}{c} 1{c}'{c}s\n{c}"


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_every_code_point_in_context(name):
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    step = 100_000
    for start in range(0, len(CODE_POINTS), step):
        chars = [chr(c) for c in CODE_POINTS[start : start + step]]
        texts = [contexts(c) for c in chars]
        got = tok.encode_batch(texts, add_special_tokens=False)
        want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        bad = [f"U+{ord(c):04X}" for c, g, w in zip(chars, got, want) if g != w]
        assert not bad, f"{name}: {len(bad)} code points differ, first: {bad[:10]}"
