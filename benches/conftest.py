"""Benchmark inputs: the shared tokenizers and corpora, with every peer loaded side by side."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

DATA = Path(os.environ.get("TOKENSMITH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

#: vocabulary -> tiktoken rank file of the same vocabulary (None: the ranks are read from
#: tokenizer.json, whose byte-level vocabulary is a rank table for these models)
VOCABS = {"gpt2": "gpt2", "llama3": None, "qwen2": None, "o200k_base": "o200k_base"}

#: SentencePiece-style BPE vocabularies (tokenizer.json files; `sentencepiece` itself runs
#: their .model files in `test_encode_sentencepiece.py`).
SENTENCEPIECE_VOCABS = ["llama2", "mistral-v3", "gemma4"]

#: A corpus per kind of text; each benchmark encodes the whole file.
CORPORA = {
    "en": "en/debian-handbook.en-US.txt",
    "zh": "zh/debian-handbook.zh-CN.txt",
    "code": "code/cpython-3.11-stdlib.py.txt",
    "multi": "multi/debian-handbook.ru-RU.txt",
}

#: Code is 10 MB; the reference `tokenizers` needs seconds per MB, so cap each text.
MAX_BYTES = int(os.environ.get("TOKENSMITH_BENCH_BYTES", 2_000_000))


@functools.cache
def corpus(name: str) -> str:
    text = (DATA / "corpora" / CORPORA[name]).read_text(encoding="utf-8")
    return text.encode()[:MAX_BYTES].decode("utf-8", "ignore")


@functools.cache
def tokensmith_tokenizer(vocab: str):
    import tokensmith

    return tokensmith.Tokenizer.from_file(DATA / "tokenizers" / vocab / "tokenizer.json")


@functools.cache
def hf_tokenizer(vocab: str):
    import tokenizers

    return tokenizers.Tokenizer.from_file(str(DATA / "tokenizers" / vocab / "tokenizer.json"))


def source(vocab: str):
    """The vocabulary's files for `tokensmith.bench`: its tokenizer.json and, for a tiktoken
    encoding, its rank file (which some peers load instead)."""
    from tokensmith import bench

    src = bench.Source(DATA / "tokenizers" / vocab / "tokenizer.json")
    if VOCABS.get(vocab) is not None:
        spec = json.loads((DATA / "tiktoken" / "encodings.json").read_text())[VOCABS[vocab]]
        src.rank_file = DATA / "tiktoken" / spec["file"]
        src.pattern, src.special_tokens = spec["pattern"], spec["special_tokens"]
    return src


@functools.cache
def tiktoken_encoding(vocab: str):
    """The tiktoken peer for a vocabulary: its rank file, or its tokenizer.json vocabulary
    as ranks with the first Split pattern (Llama 3 and Qwen2 are tiktoken-style BPEs)."""
    from tokensmith import bench

    return bench.tiktoken_encoding(source(vocab))
