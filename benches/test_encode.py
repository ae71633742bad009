"""Encoding throughput: tokensmith, tiktoken and Hugging Face tokenizers on the same
vocabularies and texts, in one run.

    pytest benches --benchmark-only --benchmark-json=bench.json
    python benches/report.py bench.json          # the README table (MB/s and ratios)

`single`: one thread encodes the whole text in one call. `batch`: the text's lines as a
batch, each library using all cores its own way. Every library gets the same text and
must return the same ids (checked once before timing).
"""

from __future__ import annotations

import os

import pytest
from conftest import CORPORA, VOCABS, corpus, hf_tokenizer, tiktoken_encoding, tokensmith_tokenizer

LIBRARIES = ["tokensmith", "tiktoken", "tokenizers"]
ROUNDS = int(os.environ.get("TOKENSMITH_BENCH_ROUNDS", 3))


def encoders(library: str, vocab: str):
    """(single, batch) callables for a library."""
    if library == "tokensmith":
        tok = tokensmith_tokenizer(vocab)
        return (
            lambda text: tok.encode(text, add_special_tokens=False, special="text"),
            lambda lines: tok.encode_batch(lines, add_special_tokens=False, special="text"),
        )
    if library == "tiktoken":
        enc = tiktoken_encoding(vocab)
        return enc.encode_ordinary, lambda lines: enc.encode_ordinary_batch(lines, num_threads=os.cpu_count())
    hf = hf_tokenizer(vocab)
    hf.encode_special_tokens = True
    return (
        lambda text: hf.encode(text, add_special_tokens=False).ids,
        lambda lines: [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)],
    )


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("corpus_name", list(CORPORA))
@pytest.mark.parametrize("vocab", list(VOCABS))
@pytest.mark.parametrize("mode", ["single", "batch"])
def test_encode(benchmark, mode, vocab, corpus_name, library):
    text = corpus(corpus_name)
    single, batch = encoders(library, vocab)
    if mode == "single":
        run, arg = single, text
    else:
        run, arg = batch, text.splitlines(keepends=True)
    benchmark.group = f"{mode} {vocab} {corpus_name}"
    benchmark.extra_info.update(bytes=len(text.encode()), library=library, mode=mode, vocab=vocab, corpus=corpus_name)
    ids = benchmark.pedantic(run, args=(arg,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    # Speed only counts for the right answer: compare with tokensmith's ids.
    reference = encoders("tokensmith", vocab)[0 if mode == "single" else 1](arg)
    assert ids == reference
