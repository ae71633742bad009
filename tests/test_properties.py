"""Property tests (hypothesis): tokensmith == HF `tokenizers` on generated text.

Deterministic (derandomize=True) so CI runs the same examples every time.
"""

from __future__ import annotations

import functools
import itertools
import random

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokensmith as ts
from conftest import (
    corpus_files,
    hf_special_ids,
    hf_special_tokens,
    hf_tokenizer,
    hf_tokenizer_text,
    load_hf_fresh,
    load_ts_fresh,
    read_corpus,
    require_data,
    ts_tokenizer,
)

PROPERTY_TOKENIZERS = ["gpt2", "llama3", "qwen2", "o200k_base", "tekken", "deepseek-coder",
                       "llama2", "mistral-v3", "gemma4"]
SENTENCEPIECE = ["llama2", "mistral-v3", "gemma4"]

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# ---------------------------------------------------------------------------------------------
# strategies

any_unicode = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)

WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\r\r\n", " \n", "\n ", "\u00a0", "\u3000", "\u2028",
              "\u2029", "\x0b", "\x0c", "\x85", "\u200b", "\u2009", "\ufeff"]
DIGITS = ["0", "7", "12", "123", "1234", "00000", "3.14", "1,000", "٣٤٥", "１２３", "²³", "Ⅻ", "๓"]
COMBINING = ["e\u0301", "\u0301", "a\u0308\u0304", "한", "\u1100\u1161\u11a8", "ñ", "n\u0303", "Å", "A\u030a",
             "\u0344", "ǅ", "ﬁ", "Ω", "Ω", "ק\u05b8", "क\u094d\u0937", "\u0e01\u0e34"]
EMOJI = ["👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "❤️", "🇺🇸", "🇯🇵", "\u200d", "\ufe0f", "🧑🏿‍🚀", "😀", "#️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
CONTRACTIONS = ["'s", "'S", "'LL", "'ll", "’s", "'t", "'RE", "'ve", "'m", "'d", "''", "'", "’", "n't", "'Ll"]
WORDS = ["hello", "Hello", "HELLO", "world", "a", "I", "中文", "日本語", "한국어", "русский", "العربية", "ελληνικά",
         "Tiếng", "def", "__init__", "x", "camelCase", "snake_case", "http://example.com/a?b=c", "İstanbul",
         "ß", "ǈ"]
PUNCT = list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "—", "«", "»", "。", "，", "“", "”", "<|", "|>"]


def runs(chars: str, max_len: int = 120):
    return st.builds(lambda c, n: c * n, st.sampled_from(list(chars)), st.integers(1, max_len))


def piece_strategy(specials: list):
    partial = st.sampled_from(specials).flatmap(
        lambda s: st.integers(1, max(1, len(s) - 1)).map(lambda k: s[:k]) | st.just(s[1:])
    )
    return st.one_of(
        st.sampled_from(WHITESPACE),
        runs(" \t\n\r\u3000"),
        st.text(alphabet="0123456789", min_size=1, max_size=40),
        st.sampled_from(DIGITS),
        st.sampled_from(COMBINING),
        st.sampled_from(EMOJI),
        st.sampled_from(CONTRACTIONS),
        st.sampled_from(WORDS),
        st.sampled_from(PUNCT),
        st.sampled_from(specials),
        partial,
        st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=4),
    )


@functools.lru_cache(maxsize=None)
def structured_text(name: str):
    specials = hf_special_tokens(hf_tokenizer(name))
    if len(specials) > 40:  # llama3 / tekken: keep the well-known ones and a sample of the rest
        specials = specials[:10] + specials[-5:] + specials[10:-5:25]
    return st.lists(piece_strategy(specials), max_size=40).map("".join)


# ---------------------------------------------------------------------------------------------
# checks


def check_encode_parity(name: str, text: str) -> None:
    tok, hf, hf_text = ts_tokenizer(name), hf_tokenizer(name), hf_tokenizer_text(name)
    assert tok.encode(text) == hf.encode(text).ids, ("default", text)
    assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False).ids, (
        "add_special_tokens=False", text)
    assert tok.encode(text, special="text") == hf_text.encode(text).ids, ("special='text'", text)


def check_decode_parity(name: str, text: str) -> None:
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    hf_ids = hf.encode(text).ids
    for skip in (False, True):
        want = hf.decode(hf_ids, skip_special_tokens=skip)
        assert tok.decode(hf_ids, skip_special_tokens=skip) == want, (skip, text, hf_ids)
        assert tok.decode(tok.encode(text), skip_special_tokens=skip) == want, (skip, text)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROPERTY_TOKENIZERS)
@SETTINGS
@given(text=any_unicode)
def test_random_unicode_encode_parity(name, text):
    check_encode_parity(name, text)


@pytest.mark.parametrize("name", PROPERTY_TOKENIZERS)
@SETTINGS
@given(data=st.data())
def test_structured_text_encode_parity(name, data):
    text = data.draw(structured_text(name), label="text")
    check_encode_parity(name, text)


@pytest.mark.parametrize("name", PROPERTY_TOKENIZERS)
@SETTINGS
@given(text=any_unicode)
def test_random_unicode_decode_parity(name, text):
    check_decode_parity(name, text)


@pytest.mark.parametrize("name", PROPERTY_TOKENIZERS)
@SETTINGS
@given(data=st.data())
def test_structured_text_decode_parity(name, data):
    check_decode_parity(name, data.draw(structured_text(name), label="text"))


@pytest.mark.parametrize("name", PROPERTY_TOKENIZERS)
@SETTINGS
@given(data=st.data())
def test_text_policy_never_yields_special_ids(name, data):
    text = data.draw(st.one_of(structured_text(name), any_unicode), label="text")
    tok = ts_tokenizer(name)
    special_ids = hf_special_ids(hf_tokenizer(name))
    ids = tok.encode(text, add_special_tokens=False, special="text")
    leaked = [i for i in ids if i in special_ids]
    assert not leaked, (text, leaked)


@functools.lru_cache(maxsize=None)
def valid_ids(name: str) -> list:
    return sorted(set(hf_tokenizer(name).get_vocab(with_added_tokens=True).values()))


@pytest.mark.parametrize("name", PROPERTY_TOKENIZERS)
@SETTINGS
@given(data=st.data())
def test_decode_of_arbitrary_valid_ids_matches_hf(name, data):
    """Any sequence of valid ids (byte-level pieces that need not form valid UTF-8, specials)."""
    ids_pool = valid_ids(name)
    index = st.integers(0, len(ids_pool) - 1).map(ids_pool.__getitem__)
    small_ids = st.integers(0, 1000).map(lambda i: ids_pool[i])  # single bytes and common pieces
    ids = data.draw(st.lists(index | small_ids, max_size=30), label="ids")
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), (skip, ids)
    assert tok.decode_batch([ids, ids[::-1]]) == hf.decode_batch([ids, ids[::-1]], skip_special_tokens=False)


@pytest.mark.parametrize("name", PROPERTY_TOKENIZERS)
@SETTINGS
@given(texts=st.lists(any_unicode, max_size=8))
def test_batch_equals_single(name, texts):
    tok = ts_tokenizer(name)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, special="text") == [tok.encode(t, special="text") for t in texts]
    flat, offsets = tok.encode_batch_numpy(texts)
    assert [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))] == tok.encode_batch(texts)


# ---------------------------------------------------------------------------------------------
# added tokens with every kind of flag, in random surroundings

ADDED = [
    # (content, special, lstrip, rstrip, single_word, normalized)
    ("<|a|>", True, False, False, False, False),
    ("<|a|><|b|>", True, True, True, False, False),
    ("<|b|>", False, True, False, False, True),
    ("ab", False, False, False, True, True),
    ("abc", True, False, True, True, False),
    ("新词", False, False, False, False, True),
    ("café", False, True, True, False, True),
    ("hello", True, False, False, True, True),
    ("[x]", False, False, True, False, False),
    ("ne\u0301e", False, False, False, False, True),   # decomposed content, normalized (NFC for qwen2)
    ("u\u0308ber", True, False, False, False, False),  # decomposed content, not normalized
    (" lead", False, True, False, False, True),         # content starting with a space
    ("trail ", True, False, True, False, False),        # content ending with a space
    ("\t\t", False, False, False, False, False),        # whitespace-only content
    ("词语", False, False, False, True, True),            # single_word on CJK
]
ADDED_PIECES = [a[0] for a in ADDED] + ["cafe\u0301", "a", "b", "c", "<|", "|>", "<|a|", "新", "词", "née", "über",
                                        "u\u0308ber", "lead", "trail", "\t", "语"]


@functools.lru_cache(maxsize=None)
def tokenizers_with_added(name: str) -> tuple:
    """(hf, hf_text, tok) with the same ADDED tokens; built once, never mutated afterwards."""
    hf, hf_text, tok = load_hf_fresh(name), load_hf_fresh(name), load_ts_fresh(name)
    hf_tokens = [tokenizers.AddedToken(c, special=sp, lstrip=l, rstrip=r, single_word=w, normalized=n)
                 for c, sp, l, r, w, n in ADDED]
    hf.add_tokens(hf_tokens)
    hf_text.add_tokens(hf_tokens)
    hf_text.encode_special_tokens = True
    ids = tok.add_tokens([ts.AddedToken(c, special=sp, lstrip=l, rstrip=r, single_word=w, normalized=n)
                          for c, sp, l, r, w, n in ADDED])
    assert ids == [hf.token_to_id(a[0]) for a in ADDED]
    return hf, hf_text, tok


def added_piece_strategy():
    return st.one_of(
        st.sampled_from(ADDED_PIECES),
        st.sampled_from(ADDED_PIECES),
        st.sampled_from(WHITESPACE),
        runs(" \t\n", 6),
        st.sampled_from(WORDS),
        st.sampled_from(PUNCT),
        st.sampled_from(COMBINING),
        st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=3),
    )


added_text = st.lists(added_piece_strategy(), max_size=30).map("".join)


@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen2", "deepseek-coder"])
@SETTINGS
@given(text=added_text)
def test_added_tokens_in_random_text(name, text):
    hf, hf_text, tok = tokenizers_with_added(name)
    assert tok.encode(text) == hf.encode(text).ids, ("default", text)
    assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False).ids, text
    assert tok.encode(text, special="text") == hf_text.encode(text).ids, ("special='text'", text)
    ids = hf.encode(text).ids
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), (skip, ids)


# ---------------------------------------------------------------------------------------------
# special=<set>: only the allowed specials become ids


def split_on_allowed(text: str, allowed) -> list:
    out, pos = [], 0
    while True:
        hits = [(text.find(s, pos), -len(s), s) for s in allowed if text.find(s, pos) >= 0]
        if not hits:
            out.append((False, text[pos:]))
            return out
        i, _, s = min(hits)
        out.append((False, text[pos:i]))
        out.append((True, s))
        pos = i + len(s)


@pytest.mark.parametrize("name", ["qwen2", "llama3", "tekken", "gpt2"])
@SETTINGS
@given(data=st.data())
def test_allowed_subset_of_specials(name, data):
    specials = hf_special_tokens(hf_tokenizer(name))
    pool = specials[:12] + specials[-3:]
    allowed = data.draw(st.sets(st.sampled_from(pool), max_size=4), label="allowed")
    text = data.draw(structured_text(name), label="text")
    hf, hf_text = hf_tokenizer(name), hf_tokenizer_text(name)
    want = []
    for is_token, piece in split_on_allowed(text, allowed):
        if is_token:
            want.append(hf.token_to_id(piece))
        elif piece:
            want.extend(hf_text.encode(piece, add_special_tokens=False).ids)
    got = ts_tokenizer(name).encode(text, add_special_tokens=False, special=allowed)
    assert got == want, (text, sorted(allowed))


# ---------------------------------------------------------------------------------------------
# SentencePiece-style tokenizers: what Prepend / Replace("▁") / byte fallback make hard

SP_PIECES = ["▁", "▁▁", " ▁", "▁ ", "\u2581x", "x\u2581", " ", "  ", "   ", "\t", "\n", "\u00a0", "\u3000"]
BYTE_FALLBACK = ["😀", "🧑🏿\u200d🚀", "𠀀", "𪚥", "𠮷", "\U0001f9ff", "\U000e0001", "\U0010fffd", "\U0001d49c",
                 "\u0fff", "\ufffd", "\x00", "\x7f", "\u0378"]
astral = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, exclude_categories=("Cs",))


@functools.lru_cache(maxsize=None)
def sp_text(name: str):
    specials = hf_special_tokens(hf_tokenizer(name))
    specials = specials[:8] + specials[-3:]
    piece = st.one_of(
        st.sampled_from(SP_PIECES),
        runs(" \u2581\t\n", 20),
        st.sampled_from(BYTE_FALLBACK),
        st.text(alphabet=astral, min_size=1, max_size=4),
        st.sampled_from(specials),
        st.sampled_from(WORDS),
        st.sampled_from(PUNCT),
        st.sampled_from(COMBINING),
        st.sampled_from(DIGITS),
        st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=4),
    )
    return st.lists(piece, max_size=30).map("".join)


@pytest.mark.parametrize("name", SENTENCEPIECE)
@SETTINGS
@given(data=st.data())
def test_sentencepiece_structured_encode_decode(name, data):
    """Whitespace runs, `▁` typed in, text after special tokens, byte-fallback characters."""
    text = data.draw(sp_text(name), label="text")
    check_encode_parity(name, text)
    check_decode_parity(name, text)


@pytest.mark.parametrize("name", SENTENCEPIECE)
@SETTINGS
@given(special=st.data(), tail=st.lists(st.sampled_from(SP_PIECES + BYTE_FALLBACK + ["a", "Hi", "."]),
                                        max_size=12).map("".join))
def test_sentencepiece_text_after_special(name, special, tail):
    specials = hf_special_tokens(hf_tokenizer(name))
    s = special.draw(st.sampled_from(specials[:8] + specials[-3:]), label="special")
    for text in (s + tail, tail + s + tail, s + s + tail):
        check_encode_parity(name, text)
        check_decode_parity(name, text)


@pytest.mark.parametrize("name", ["llama3", "llama2"])
def test_batch_numpy_is_every_row_in_order_across_chunks(name):
    """The flat ids are written into the bytearray a chunk of texts at a time, as the chunks
    are encoded (src/py/flat_ids.rs): rows that are empty, short or longer than a chunk, at
    the edges of chunks, land in order."""
    require_data()
    english = next(read_corpus(p) for p in corpus_files() if p.name.startswith("debian-handbook.en"))
    rnd = random.Random(11)
    texts = ["", english[:300_000]]
    for _ in range(3_000):
        start = rnd.randrange(len(english) - 2_000)
        texts.append(english[start:start + rnd.choice([0, 1, 10, 200, 2_000])])
    texts += [english[300_000:600_000], ""]
    tok = ts_tokenizer(name)
    flat, offsets = tok.encode_batch_numpy(texts)
    rows = tok.encode_batch(texts)
    assert offsets.tolist() == [0] + list(itertools.accumulate(len(r) for r in rows))
    assert flat.tolist() == [i for r in rows for i in r]
