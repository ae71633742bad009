"""Exact id parity with Hugging Face `tokenizers` on every line of every corpus file.

For every shared tokenizer (byte-level and SentencePiece-style) and every corpus file (whole files, every line, line ends kept)
the lines are encoded as one batch on both sides and compared for:

* ``default``      -- ``encode_batch(lines)`` vs HF ``encode_batch(lines)``
* ``offsets``      -- ``encode_with_offsets(line)`` for every line vs HF ids and ``offsets``
* ``no_special``   -- ``add_special_tokens=False`` on both sides
* ``text``         -- ``special="text"`` vs HF with ``encode_special_tokens = True``
* ``decode``       -- ``decode_batch`` of the HF default ids, both ``skip_special_tokens`` values
* ``numpy``        -- ``encode_batch_numpy`` is the flattened HF default ids + offsets

and, for gpt2, llama3 and llama2, each corpus file is also encoded as ONE string with ``encode``
(for llama2, with no pre-tokenizer, a whole file is one single piece for the BPE model), and
in a batch (where a text of 256 kB or more is encoded in sections on every core). Every
tokenizer encodes a long text of every language with its special tokens in it, in a batch.

HF's ``encode_batch`` is parallel; the reference ids of the current (tokenizer, file) are cached
so the default ids are computed once for the default/decode/numpy checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (
    ALL_TOKENIZERS,
    assert_same,
    assert_same_ids,
    assert_same_strings,
    corpus_lines,
    corpus_params,
    hf_encode_batch,
    hf_tokenizer,
    hf_tokenizer_text,
    read_corpus,
    ts_encode_batch,
    ts_tokenizer,
)

CHECKS = ["default", "offsets", "no_special", "text", "decode", "numpy"]
WHOLE_FILE_TOKENIZERS = ["gpt2", "llama3", "llama2"]

# (tokenizer, corpus, check) in an order that keeps one (tokenizer, corpus) pair together, so the
# cached reference ids are reused by the checks that follow.
CASES = [
    pytest.param(name, corpus.values[0], check, id=f"{name}-{corpus.id}-{check}", marks=corpus.marks)
    for name in ALL_TOKENIZERS
    for corpus in corpus_params()
    for check in CHECKS
]

_reference_cache: dict = {}


def template_parts(name: str) -> tuple:
    """(prefix, suffix) ids that HF's post-processor puts around a single sequence."""
    hf = hf_tokenizer(name)
    for probe in ("x", "hello world", "<|endoftext|> 中文"):
        with_t = hf.encode(probe, add_special_tokens=True).ids
        body = hf.encode(probe, add_special_tokens=False).ids
        k = next(k for k in range(len(with_t) - len(body) + 1) if with_t[k:k + len(body)] == body)
        parts = (with_t[:k], with_t[k + len(body):])
        if probe == "x":
            first = parts
        assert parts == first, f"{name}: template differs between probes"
    return first


def reference_ids(name: str, path, mode: str):
    """HF ids for every line of `path`; mode in {"default", "no_special", "text"}. Cached (small)."""
    key = (name, str(path), mode)
    if key not in _reference_cache:
        # keep only the entries of the current (tokenizer, corpus) pair
        for k in [k for k in _reference_cache if k[:2] != key[:2]]:
            del _reference_cache[k]
        lines = corpus_lines(path)
        if mode == "default":
            # One pass of the reference gives the ids and the offsets (kept as compact arrays).
            hf, ids, offsets = hf_tokenizer(name), [], []
            for i in range(0, len(lines), 4096):
                for e in hf.encode_batch(lines[i:i + 4096], add_special_tokens=True):
                    ids.append(e.ids)
                    offsets.append(np.array(e.offsets, dtype=np.int32).reshape(-1, 2))
            _reference_cache[(name, str(path), "offsets")] = offsets
        elif mode == "no_special":
            # HF's post-processor only adds the template ids around the sequence, so the ids
            # without it are the default ids minus the template (computed once, checked below).
            prefix, suffix = template_parts(name)
            default = reference_ids(name, path, "default")
            ids = []
            for row in default:
                assert row[:len(prefix)] == prefix and (not suffix or row[-len(suffix):] == suffix), row[:8]
                ids.append(row[len(prefix):len(row) - len(suffix)])
            _reference_cache[key] = ids
            return ids
        elif mode == "text":
            ids = hf_encode_batch(hf_tokenizer_text(name), lines, add_special_tokens=True)
        else:
            raise AssertionError(mode)
        _reference_cache[key] = ids
    return _reference_cache[key]


@pytest.mark.parametrize("name,corpus,check", CASES)
def test_corpus_lines_parity(name, corpus, check):
    tok = ts_tokenizer(name)
    lines = corpus_lines(corpus)
    assert lines, f"empty corpus file {corpus}"
    context = f"{name} on {corpus.name} [{check}]"

    if check == "default":
        got = ts_encode_batch(tok, lines)
        assert_same(got, reference_ids(name, corpus, "default"), lines, context)
    elif check == "offsets":
        want_ids = reference_ids(name, corpus, "default")
        want = _reference_cache[(name, str(corpus), "offsets")]
        bad = []
        for k, line in enumerate(lines):
            ids, offsets = tok.encode_with_offsets(line)
            if ids != want_ids[k] or not np.array_equal(np.array(offsets, dtype=np.int32).reshape(-1, 2), want[k]):
                bad.append(k)
        if bad:
            k = bad[0]
            ids, offsets = tok.encode_with_offsets(lines[k])
            raise AssertionError(f"{context}: {len(bad)} of {len(lines)} lines differ; first is #{k} {lines[k]!r}\n"
                                 f"tokensmith {list(zip(ids, offsets))[:40]}\nreference  "
                                 f"{list(zip(want_ids[k], map(tuple, want[k].tolist())))[:40]}")
    elif check == "no_special":
        got = ts_encode_batch(tok, lines, add_special_tokens=False)
        assert_same(got, reference_ids(name, corpus, "no_special"), lines, context)
    elif check == "text":
        got = ts_encode_batch(tok, lines, special="text")
        assert_same(got, reference_ids(name, corpus, "text"), lines, context)
    elif check == "decode":
        ids = reference_ids(name, corpus, "default")
        hf = hf_tokenizer(name)
        for skip in (False, True):
            want, got = [], []
            for i in range(0, len(ids), 4096):
                chunk = ids[i:i + 4096]
                want.extend(hf.decode_batch(chunk, skip_special_tokens=skip))
                got.extend(tok.decode_batch(chunk, skip_special_tokens=skip))
            assert_same_strings(got, want, ids, f"{context} skip_special_tokens={skip}")
    elif check == "numpy":
        want = reference_ids(name, corpus, "default")
        flat_ids, offsets = tok.encode_batch_numpy(list(lines))
        assert isinstance(flat_ids, np.ndarray) and flat_ids.dtype == np.uint32, (flat_ids.dtype, type(flat_ids))
        assert isinstance(offsets, np.ndarray) and offsets.dtype == np.int64, (offsets.dtype, type(offsets))
        assert offsets.shape == (len(lines) + 1,)
        assert offsets[0] == 0 and offsets[-1] == flat_ids.shape[0]
        assert np.all(np.diff(offsets) >= 0), "offsets must be non-decreasing"
        got = [flat_ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(lines))]
        assert_same(got, want, lines, context)
    else:  # pragma: no cover
        raise AssertionError(check)


@pytest.mark.parametrize("name", WHOLE_FILE_TOKENIZERS)
@pytest.mark.parametrize("corpus", corpus_params())
def test_whole_file_parity(name, corpus):
    """Each corpus file encoded as one single string."""
    text = read_corpus(corpus)
    tok = ts_tokenizer(name)
    want = hf_tokenizer(name).encode(text).ids
    # In a batch, beside a short text: a long one is encoded in sections on every core.
    in_batch = tok.encode_batch([text, text[:100]])[0]
    assert_same_ids(in_batch, want, "the whole file in a batch", f"{name} whole file {corpus.name} in a batch")
    got = tok.encode(text)
    if got != want:
        # Point at the line that holds the first differing token, not at a 10 MB diff.
        hf = hf_tokenizer(name)
        pos = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        prefix = hf.decode(want[:pos])
        line_no = prefix.count("\n")
        line = text.split("\n")[line_no] if line_no < text.count("\n") + 1 else ""
        assert_same_ids(got, want, f"(line {line_no}) {line}", f"{name} whole file {corpus.name}")


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
@pytest.mark.parametrize("special", ["allow", "text"])
def test_a_long_text_in_a_batch_is_encoded_as_one_call_encodes_it(name, special):
    """A batch encodes a text of 256 kB or more in sections on every core: the ids are the
    reference's, with the tokenizer's special tokens (allowed or as text) and every
    language of the corpora in the text."""
    hf = hf_tokenizer(name) if special == "allow" else hf_tokenizer_text(name)
    tok = ts_tokenizer(name)
    specials = [t.content for t in hf.get_added_tokens_decoder().values()][:8] or ["<|endoftext|>"]
    parts = []
    for path in (p.values[0] for p in corpus_params()):
        paragraphs = read_corpus(path)[:40_000].split("\n\n")
        parts.extend(p + (specials[len(parts) % len(specials)] if len(parts) % 3 == 0 else "") for p in paragraphs)
    text = "\n\n".join(parts)
    assert len(text.encode()) > 3 * 256 * 1024, len(text.encode())
    want = hf.encode(text, add_special_tokens=True).ids
    got = tok.encode_batch(["short", text], special=special)[1]
    assert_same_ids(got, want, text[:200], f"{name} long text in a batch, special={special}")
    flat, offsets = tok.encode_batch_numpy([text, "short"], special=special)
    assert flat[: offsets[1]].tolist() == want
