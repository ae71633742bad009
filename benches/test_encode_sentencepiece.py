"""Encoding throughput on the SentencePiece-style vocabularies (Llama 2, Mistral v0.3,
Gemma 4): tokensmith against `tokenizers`, `sentencepiece` (where a .model file exists),
kitoken and gigatoken, on the same text in one run.

    pytest benches/test_encode_sentencepiece.py --benchmark-only --benchmark-json=sp.json
    python benches/report.py sp.json

`single`: the whole text in one call. `docs`: one call per document (blank-line separated
paragraphs), the way `datasets.map` calls an encoder. Both on one thread: pin the process
(`taskset -c 0`) for one-core numbers. `batch`: the documents as one batch on all cores,
for the libraries that have a batch call. A peer's ids are compared with tokensmith's (equal
to the reference's, see tests/): the number of documents that differ is recorded as
`mismatches` and shown in the report (a peer's speed on wrong ids does not count).
"""

from __future__ import annotations

import os

import pytest
from conftest import CORPORA, DATA, corpus, hf_tokenizer, tokensmith_tokenizer

SP_VOCABS = ["llama2", "mistral-v3", "gemma4"]
LIBRARIES = ["tokensmith", "tokenizers", "sentencepiece", "kitoken", "gigatoken"]
ROUNDS = int(os.environ.get("TOKENSMITH_BENCH_ROUNDS", 3))


def encoders(library: str, vocab: str):
    """(one text -> ids, list of texts -> list of ids or None) for a library, or None when
    the library is missing or cannot load this vocabulary."""
    path = DATA / "tokenizers" / vocab / "tokenizer.json"
    if library == "tokensmith":
        tok = tokensmith_tokenizer(vocab)
        return (
            lambda text: tok.encode(text, add_special_tokens=False, special="text"),
            lambda texts: tok.encode_batch(texts, add_special_tokens=False, special="text"),
        )
    if library == "tokenizers":
        hf = hf_tokenizer(vocab)
        hf.encode_special_tokens = True
        return (
            lambda text: hf.encode(text, add_special_tokens=False).ids,
            lambda texts: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)],
        )
    if library == "sentencepiece":
        spm = pytest.importorskip("sentencepiece")
        model = DATA / "sentencepiece" / f"{vocab}.model"
        if not model.is_file():
            return None
        sp = spm.SentencePieceProcessor(model_file=str(model))
        return sp.encode, lambda texts: sp.encode(texts, num_threads=os.cpu_count())
    if library == "kitoken":
        kitoken = pytest.importorskip("kitoken")
        k = kitoken.Kitoken.from_tokenizers_file(str(path))
        return (lambda text: k.encode(text, True)), (lambda texts: k.encode_all(texts, True))
    if library == "gigatoken":
        gigatoken = pytest.importorskip("gigatoken")
        g = gigatoken.Tokenizer.from_json(path.read_text(encoding="utf-8"))
        return (lambda text: g.encode(text).tolist()), g.encode_batch_list
    raise AssertionError(library)


def documents(text: str) -> list[str]:
    return [d for d in text.split("\n\n") if d]


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("corpus_name", list(CORPORA))
@pytest.mark.parametrize("vocab", SP_VOCABS)
@pytest.mark.parametrize("mode", ["single", "docs", "batch"])
def test_encode(benchmark, mode, vocab, corpus_name, library):
    text = corpus(corpus_name)
    pair = encoders(library, vocab)
    if pair is None:
        pytest.skip(f"{library} has no {vocab} model")
    single, batch = pair
    docs = documents(text)
    run, arg = {
        "single": (single, text),
        "docs": (lambda ds: [single(d) for d in ds], docs),
        "batch": (batch, docs),
    }[mode]
    benchmark.group = f"{mode} {vocab} {corpus_name}"
    ids = benchmark.pedantic(run, args=(arg,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ours = encoders("tokensmith", vocab)
    want = ours[0](text) if mode == "single" else ours[1](docs)
    got, want = ([ids], [want]) if mode == "single" else (ids, want)
    mismatches = sum(list(a) != list(b) for a, b in zip(got, want)) + abs(len(got) - len(want))
    benchmark.extra_info.update(bytes=len(text.encode()), library=library, mode=mode, vocab=vocab,
                                corpus=corpus_name, mismatches=mismatches)
    if library == "tokensmith":
        assert mismatches == 0
