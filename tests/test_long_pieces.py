"""Long pieces (from 256 bytes) go to the linear-time encoder (src/bpe/backtrack.rs): its
ids, and its offsets, equal the reference's on every shared tokenizer, tiktoken rank file
and SentencePiece model.

The texts make pieces of every shape that encoder meets: runs of one char (where the
longest token is often the wrong one: Tekken's "aaa" before its "aa"), real words with the
spaces taken out (the search backs off a lot), random strings over small alphabets, pieces
on either side of the 256-byte threshold, and long pieces inside ordinary text.
"""

from __future__ import annotations

import functools
import random
import re

import pytest
import sentencepiece as spm
import tiktoken
import tiktoken.load

import tokensmith as ts
from conftest import (
    ALL_TOKENIZERS,
    DATA,
    TIKTOKEN_DIR,
    assert_same_ids,
    corpus_files,
    hf_tokenizer,
    read_corpus,
    require_data,
    tiktoken_encodings,
    ts_tokenizer,
)


def _runs() -> dict:
    return {
        "one letter": "a" * 20_000,
        "spaces": " " * 20_000,
        "newlines": "\n" * 20_000,
        "tabs": "\t" * 20_000,
        "digits": "1234567890" * 2_000,
        "one CJK char": "中" * 8_000,
        "e-acute": "\u00e9" * 10_000,
        "dashes": "-" * 20_000,
        "emoji ZWJ": "\U0001F468\u200D\U0001F469\u200D\U0001F467" * 1_000,
    }


def _random(seed: int, alphabet: str, n: int) -> str:
    rnd = random.Random(seed)
    return "".join(rnd.choices(alphabet, k=n))


@functools.lru_cache(maxsize=None)
def long_texts() -> dict:
    require_data()
    english = next(read_corpus(p) for p in corpus_files() if p.name.startswith("debian-handbook.en"))
    chinese = "".join(read_corpus(p) for p in corpus_files() if p.parent.name == "zh")
    texts = _runs()
    texts["English words, no spaces"] = re.sub(r"[^a-z]", "", english)[:30_000]
    texts["English words, no spaces, capitals"] = re.sub(r"[^A-Za-z]", "", english)[:30_000]
    texts["Chinese, no punctuation"] = re.sub(r"[^\u4e00-\u9fff]", "", chinese)[:10_000]
    texts["random a/b"] = _random(1, "ab", 20_000)
    texts["random letters"] = _random(2, "etaoinshrdlu", 20_000)
    texts["random CJK and letters"] = _random(3, "中文字测试汉语ab", 10_000)
    # Either side of the threshold, one piece per line.
    texts["around 256 bytes"] = "\n".join(_random(n, "etaoinshrdlu", n) for n in (200, 255, 256, 257, 300, 1000))
    # Long pieces among ordinary ones.
    texts["English with long runs"] = english[:5_000] + " " * 3_000 + english[5_000:8_000] + "x" * 3_000 + english[8_000:10_000]
    return texts


KINDS = sorted(set(_runs()) | {
    "English words, no spaces", "English words, no spaces, capitals", "Chinese, no punctuation", "random a/b",
    "random letters", "random CJK and letters", "around 256 bytes", "English with long runs"})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_long_pieces_match_the_reference(name, kind):
    text = long_texts()[kind]
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    for add in (True, False):
        assert_same_ids(tok.encode(text, add_special_tokens=add), hf.encode(text, add_special_tokens=add).ids,
                        text[:40] + "...", f"{name} {kind}")


@pytest.mark.parametrize("name", ["llama3", "gpt2", "tekken", "llama2", "gemma4"])
def test_long_pieces_have_the_reference_offsets(name):
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    for kind in ["one letter", "spaces", "English words, no spaces", "random CJK and letters", "English with long runs"]:
        text = long_texts()[kind][:6_000]
        ids, offsets = tok.encode_with_offsets(text)
        want = hf.encode(text)
        assert ids == want.ids, f"{name} {kind}: ids"
        assert [tuple(o) for o in offsets] == [tuple(o) for o in want.offsets], f"{name} {kind}: offsets"


@pytest.mark.parametrize("name", sorted(tiktoken_encodings()) or ["no-data"])
def test_long_pieces_match_tiktoken(name):
    """Rank files load through the rank-split merges (`Bpe::from_ranks`), with ranks shared
    by several pairs; tiktoken's own BPE is quadratic on a long piece, so these are short."""
    require_data()
    spec = tiktoken_encodings()[name]
    ranks = tiktoken.load.load_tiktoken_bpe(str(TIKTOKEN_DIR / spec["file"]))
    reference = tiktoken.Encoding(name=f"reference-{name}", pat_str=spec["pattern"], mergeable_ranks=ranks,
                                  special_tokens=dict(spec["special_tokens"]))
    tok = ts.Tokenizer.from_tiktoken(str(TIKTOKEN_DIR / spec["file"]), pattern=spec["pattern"],
                                     special_tokens=dict(spec["special_tokens"]))
    for kind, text in long_texts().items():
        text = text[:3_000]
        assert_same_ids(tok.encode(text, special="text"), reference.encode_ordinary(text), text[:40] + "...",
                        f"{name} {kind}")


@pytest.mark.parametrize("name", ["llama2", "mistral-v3"])
def test_long_pieces_match_sentencepiece(name):
    require_data()
    path = DATA / "sentencepiece" / f"{name}.model"
    tok, reference = ts.Tokenizer.from_sentencepiece(path), spm.SentencePieceProcessor(model_file=str(path))
    for kind, text in long_texts().items():
        assert_same_ids(tok.encode(text, add_special_tokens=False), reference.encode(text), text[:40] + "...",
                        f"{name} {kind}")
