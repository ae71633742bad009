"""``encode_batch`` makes the lists of each chunk of texts while the thread pool encodes the
chunks after it (src/py/batch_lists.rs). Its ids are the reference's across many chunks
(the corpora's lines: tests/test_parity_corpora.py); here, what a pipeline can get wrong:
chunk order with truncation and templates, and an error in a late chunk, which must raise
the same exception as the text alone and leave the tokenizer working."""

from __future__ import annotations

import pytest
import tokensmith as ts
from conftest import load_hf_fresh, load_ts_fresh, ts_tokenizer

# About 1 MB in 4,000 texts of different lengths: some 30 chunks of 32 kB.
TEXTS = [f"Document {i}: " + "The Debian project's packages, 中文 text, and code() {}\n" * (i % 17) for i in range(4000)]


@pytest.mark.parametrize("name", ["llama3", "llama2"])
def test_a_batch_of_many_chunks_is_truncated_and_wrapped_as_the_reference(name):
    tok, hf = load_ts_fresh(name), load_hf_fresh(name)
    tok.truncation = {"max_length": 100}
    hf.enable_truncation(100)
    for add in (True, False):
        want = [e.ids for e in hf.encode_batch(TEXTS, add_special_tokens=add)]
        assert tok.encode_batch(TEXTS, add_special_tokens=add) == want


@pytest.mark.parametrize("late", [5, 3999])
def test_a_special_token_in_a_late_chunk_raises_as_alone(late):
    tok = ts_tokenizer("llama3")
    texts = list(TEXTS)
    texts[late] = "a prefix, then <|eot_id|>"
    with pytest.raises(ts.SpecialTokenError) as batch:
        tok.encode_batch(texts, special="raise")
    with pytest.raises(ts.SpecialTokenError) as alone:
        tok.encode(texts[late], special="raise")
    assert (batch.value.token, batch.value.offset) == (alone.value.token, alone.value.offset) == ("<|eot_id|>", 15)
    # And the next batch is whole.
    assert tok.encode_batch(TEXTS[:50]) == [tok.encode(t) for t in TEXTS[:50]]


@pytest.mark.parametrize("late", [5, 3999])
def test_a_str_without_utf8_in_a_late_chunk_raises_as_alone(late):
    tok = ts_tokenizer("gpt2")
    texts = list(TEXTS)
    texts[late] = "a lone surrogate: \ud800"
    with pytest.raises(Exception) as alone:
        tok.encode(texts[late])
    with pytest.raises(type(alone.value)) as batch:
        tok.encode_batch(texts)
    assert str(batch.value) == str(alone.value)
    assert tok.encode_batch(TEXTS[:50]) == [tok.encode(t) for t in TEXTS[:50]]
