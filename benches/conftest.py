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


def _gpt2_byte_decoder() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@functools.cache
def tiktoken_encoding(vocab: str):
    """The tiktoken peer for a vocabulary: its rank file, or its tokenizer.json vocabulary
    as ranks with the first Split pattern (Llama 3 and Qwen2 are tiktoken-style BPEs)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    name = VOCABS[vocab]
    if name is not None:
        spec = json.loads((DATA / "tiktoken" / "encodings.json").read_text())[name]
        return tiktoken.Encoding(
            name=name,
            pat_str=spec["pattern"],
            mergeable_ranks=load_tiktoken_bpe(str(DATA / "tiktoken" / spec["file"])),
            special_tokens=spec["special_tokens"],
        )
    spec = json.loads((DATA / "tokenizers" / vocab / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    decoder = _gpt2_byte_decoder()
    ranks = {
        bytes(decoder[c] for c in token): id
        for token, id in spec["model"]["vocab"].items()
        if token not in added and all(c in decoder for c in token)
    }
    pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    return tiktoken.Encoding(name=vocab, pat_str=pattern, mergeable_ranks=ranks, special_tokens=added)
