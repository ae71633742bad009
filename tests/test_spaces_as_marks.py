"""Text read with each space as the `▁` a SentencePiece-style normalizer puts there.

Llama 2, Mistral and Gemma normalize by putting `▁` for every space (Llama 2 and Mistral put
one first, too). Without offsets, their text goes to the model as it is, each space taken for
`▁` (`PieceEncoder::encode_spaced`), and the piece cache keys its words by their own bytes;
with offsets, it is normalized first. Each case here is checked against the reference
(`tokenizers`): texts where spaces, literal `▁`, cuts and the first word's `▁` meet, segments
between added tokens (each is normalized, and so prefixed, on its own), the cache filled by
the other path first, and normalizers that only look like the one this path is for.
"""

from __future__ import annotations

import json
import random

import pytest
import tokenizers

import tokensmith as ts
from conftest import tokenizer_path

VOCABS = ["llama2", "mistral-v3", "gemma4"]

#: Pieces the random texts are made of: spaces and `▁` next to each other and to words,
#: chars of every length, chars outside Llama 2's vocabulary (byte fallback), newlines.
PARTS = [" ", "  ", "\u2581", " \u2581 ", "a", "the", "Hello", ",", ".", "\n", "\t", "日本語", "语",
         "é", "ж", "\U0001F600", "\ue000", "123", "'s", "x\u2581y", "\u2581\u2581"]


def texts() -> list[str]:
    """Crafted texts, each once short and once long, and random ones."""
    cores = [" leading space", "trailing space ", "   runs   of   spaces   ", "\u2581starts with a mark",
             "mark\u2581and space \u2581 mixed", "日本語のテキスト 中文 text", "\U0001F600 emoji \U0001F600\U0001F600",
             "\ue000\ue001 private use  \ue002", " ", "\u2581", "x"]
    # Words past what the cache keeps (256 bytes), first in the text and after it.
    runs = [" " * 300, "a" * 300, "\u2581" * 100, "\n" * 300, "語" * 100, "a b" * 100]
    out = ["", *runs, *(f"x {run}" for run in runs)]
    for core in cores:
        out += [core, core * (80 // len(core) + 2), " " * 70 + core, core + " " * 70]
    rng = random.Random(20261205)
    for _ in range(300):
        out.append("".join(rng.choice(PARTS) for _ in range(rng.randrange(1, 120))))
    return out


@pytest.fixture(scope="module", params=VOCABS)
def pair(request) -> tuple[ts.Tokenizer, tokenizers.Tokenizer]:
    path = str(tokenizer_path(request.param))
    return ts.Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(path)


def test_texts_encode_as_the_reference(pair) -> None:
    tok, hf = pair
    cases = texts()
    for text in cases:
        want = hf.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=False) == want, repr(text)
        assert tok.encode(text) == hf.encode(text).ids, repr(text)
    want = [e.ids for e in hf.encode_batch(cases, add_special_tokens=False)]
    assert tok.encode_batch(cases, add_special_tokens=False) == want


def test_segments_between_added_tokens_each_get_their_mark(pair) -> None:
    tok, hf = pair
    eos = hf.id_to_token(hf.token_to_id("</s>") if hf.token_to_id("</s>") is not None else 1)
    long = "the words of a segment long enough to be read with its spaces as marks"
    for text in [f"{long}{eos}{long}", f"{eos} {long} {eos}  {long}", f"{long}{eos}", f"{eos}{long}{eos}",
                 f"{eos}{eos} a{eos}b {eos}"]:
        want = hf.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=False, special="allow") == want, repr(text)


@pytest.mark.parametrize("offsets_first", [True, False])
def test_the_cache_filled_by_either_path_gives_the_same_ids(offsets_first: bool) -> None:
    # The normalized path (with offsets) keys words with `▁`, this one with spaces: one
    # tokenizer's cache holds both, and each must read back what the reference gives.
    path = str(tokenizer_path("llama2"))
    tok, hf = ts.Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(path)
    words = [" ".join(random.Random(n).sample(["alpha", "beta", "▁gamma", "delta", "语言", "x"], 6)) for n in range(40)]
    for text in [w * 3 for w in words]:
        want = hf.encode(text, add_special_tokens=False).ids
        first, second = (tok.encode_with_offsets, tok.encode) if offsets_first else (tok.encode, tok.encode_with_offsets)
        a, b = first(text, add_special_tokens=False), second(text, add_special_tokens=False)
        ids = [x[0] if isinstance(x, tuple) else x for x in (a, b)]
        assert ids[0] == want and ids[1] == want, repr(text)


def variant(normalizer: dict | None) -> tuple[ts.Tokenizer, tokenizers.Tokenizer]:
    spec = json.loads(tokenizer_path("llama2").read_text(encoding="utf-8"))
    spec["normalizer"] = normalizer
    text = json.dumps(spec)
    return ts.Tokenizer.from_str(text), tokenizers.Tokenizer.from_str(text)


def replace(pattern: str, content: str) -> dict:
    return {"type": "Replace", "pattern": {"String": pattern}, "content": content}


def prepend(prefix: str) -> dict:
    return {"type": "Prepend", "prepend": prefix}


@pytest.mark.parametrize("normalizer", [
    replace(" ", "\u2581"),
    {"type": "Sequence", "normalizers": [replace(" ", "\u2581")]},
    {"type": "Sequence", "normalizers": [prepend("\u2581"), replace(" ", "\u2581")]},
    # Alike but not the same: these keep the normalized path.
    {"type": "Sequence", "normalizers": [replace(" ", "\u2581"), prepend("\u2581")]},
    {"type": "Sequence", "normalizers": [prepend("x"), replace(" ", "\u2581")]},
    {"type": "Sequence", "normalizers": [prepend("\u2581"), replace(" ", "_")]},
    replace("  ", "\u2581"),
    None,
], ids=["replace", "sequence-of-replace", "prepend-replace", "replace-prepend", "other-prefix", "other-mark",
        "two-spaces", "none"])
def test_normalizers_alike_encode_as_the_reference(normalizer: dict | None) -> None:
    tok, hf = variant(normalizer)
    for text in texts()[::3]:
        assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False).ids, repr(text)


def test_a_token_matched_in_normalized_text_keeps_the_normalized_path() -> None:
    # A `normalized: true` token is matched after the spaces became marks: "a b" as "a▁b".
    spec = json.loads(tokenizer_path("llama2").read_text(encoding="utf-8"))
    spec["added_tokens"].append({"id": 32000, "content": "blue sky", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": True, "special": False})
    text = json.dumps(spec)
    tok, hf = ts.Tokenizer.from_str(text), tokenizers.Tokenizer.from_str(text)
    sample = "under the blue sky, a blue  sky and blue sky again " * 3
    want = hf.encode(sample, add_special_tokens=False).ids
    assert 32000 in want
    assert tok.encode(sample, add_special_tokens=False) == want
