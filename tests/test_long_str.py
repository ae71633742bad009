"""Long strs whose UTF-8 Python has not made yet: tokensmith transcodes them itself.

A `str` of 16 Ki chars or more whose UTF-8 CPython has not made is read from its own buffer
(Latin-1, UCS-2 or UCS-4) and transcoded by simdutf, not by CPython's encoder (see
`src/py/utf8.rs`). Every kind must give the reference's ids, a lone surrogate the same clear
error as before, and strs the fast way cannot read (a subclass, a short one, one whose UTF-8
CPython already made) CPython's way. Each text is built here, so that no library has asked
for its UTF-8 before tokensmith does.
"""

from __future__ import annotations

import sys

import pytest

from conftest import CORPORA_DIR, hf_tokenizer, read_corpus, require_data, ts_tokenizer

LONG = 1 << 14
TOKENIZERS = ["llama3", "o200k_base", "gpt2", "gemma4"]


def fresh(text: str) -> str:
    """A new str of the same chars, without UTF-8 of its own."""
    return "".join([text[:1], text[1:]])


def kind(text: str) -> int:
    """Bytes per char in CPython's buffer: 1 (Latin-1), 2 (UCS-2) or 4 (UCS-4)."""
    top = max(map(ord, text))
    return 1 if top < 256 else 2 if top < 65536 else 4


def texts() -> dict[str, str]:
    """Long texts of every kind from the shared corpora, 200 kB each."""
    require_data()
    files = {"latin-1": "code/cpython-3.11-stdlib.py.txt", "ucs-2": "en/debian-handbook.en-US.txt",
             "ucs-2 cyrillic": "multi/debian-handbook.ru-RU.txt", "ucs-4": "zh/debian-handbook.zh-CN.txt"}
    out = {name: read_corpus(CORPORA_DIR / path)[:200_000] for name, path in files.items()}
    # Kind 4 from the first char on (an emoji), then ASCII: a short str's ways do not decide.
    out["ucs-4 emoji"] = "😀 " + out["latin-1"][:100_000]
    out["ascii"] = out["latin-1"].encode("ascii", "ignore").decode()
    return out


@pytest.mark.parametrize("name", TOKENIZERS)
def test_long_strs_of_every_kind_encode_as_the_reference(name):
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    kinds = set()
    for label, text in texts().items():
        s = fresh(text)
        size = sys.getsizeof(s)
        got = tok.encode(s)
        # CPython's UTF-8 would be kept inside the str and counted in its size.
        assert sys.getsizeof(s) == size, f"{label}: tokensmith asked CPython for the UTF-8 of a long str"
        want = hf.encode(text).ids
        assert got == want, f"{name}, {label}: the ids differ from the reference"
        kinds.add(kind(text))
    assert kinds == {1, 2, 4}


def test_long_strs_give_the_reference_offsets():
    tok, hf = ts_tokenizer("llama3"), hf_tokenizer("llama3")
    for label, text in texts().items():
        text = text[:40_000]
        ids, offsets = tok.encode_with_offsets(fresh(text))
        want = hf.encode(text)
        assert ids == want.ids, label
        assert [tuple(o) for o in offsets] == [tuple(o) for o in want.offsets], label


@pytest.mark.parametrize("surrogates,at", [
    ("\ud800", 0),
    ("\udfff", 0),
    # Two lone surrogates that would make a pair in UTF-16: a UCS-2 str holds them as two.
    ("\ud83d\ude00", 0),
    ("\U0001F600\ud800", 1),  # UCS-4
    ("é\ud800", 1),
])
@pytest.mark.parametrize("where", ["start", "end"])
def test_a_lone_surrogate_in_a_long_str_is_the_same_clear_error(surrogates, at, where):
    require_data()
    tok = ts_tokenizer("gpt2")
    body = "x" * LONG
    text = surrogates + body if where == "start" else body + surrogates
    index = at if where == "start" else LONG + at
    with pytest.raises(ValueError, match=f"lone surrogate at index {index}"):
        tok.encode(fresh(text))


def test_strs_the_fast_way_does_not_read_take_cpythons():
    require_data()
    tok, hf = ts_tokenizer("llama3"), hf_tokenizer("llama3")

    class Text(str):
        pass

    text = texts()["ucs-2"]
    want = hf.encode(text).ids
    # A subclass keeps its chars elsewhere than a plain str.
    assert tok.encode(Text(text)) == want
    # A str whose UTF-8 CPython has made.
    s = fresh(text)
    s.encode("utf-8", "strict")  # does not keep it
    size = sys.getsizeof(s)
    hf.encode(s)  # does
    assert sys.getsizeof(s) > size
    assert tok.encode(s) == want
    # A short str, whose UTF-8 CPython makes and keeps.
    short = fresh(text[:LONG - 1])
    size = sys.getsizeof(short)
    assert tok.encode(short) == hf.encode(text[:LONG - 1]).ids
    assert sys.getsizeof(short) > size
