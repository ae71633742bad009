"""``encode_batch`` makes the lists of each chunk of texts while the thread pool encodes the
chunks after it, and ``encode_batch_numpy`` gathers the chunks' ids and offsets the same way
(src/py/batch_chunks.rs). Their ids are the reference's across many chunks (the corpora's
lines: tests/test_parity_corpora.py); here, what a pipeline can get wrong: chunk order with
truncation and templates, offsets across chunks, and an error in a late chunk, which must
raise the same exception as the text alone and leave the tokenizer working."""

from __future__ import annotations

import tracemalloc

import pytest
import tokensmith as ts
from conftest import assert_same, load_hf_fresh, load_ts_fresh, ts_tokenizer

# About 1.9 MB in 4,000 texts of different lengths (some empty after the prefix is cut off
# by truncation): on 2 threads some 58 chunks of 32 kB for numpy, 15 of 128 kB for lists.
TEXTS = [f"Document {i}: " + "The Debian project's packages, 中文 text, and code() {}\n" * (i % 17) for i in range(4000)]


def numpy_rows(tok, texts, **options) -> list[list[int]]:
    """`encode_batch_numpy`'s ids cut into rows at its offsets."""
    ids, offsets = tok.encode_batch_numpy(texts, **options)
    assert offsets.shape == (len(texts) + 1,) and offsets[0] == 0 and offsets[-1] == ids.shape[0]
    return [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))]


BATCH_CALLS = {"lists": lambda tok, texts, **options: tok.encode_batch(texts, **options), "numpy": numpy_rows}


@pytest.mark.parametrize("call", BATCH_CALLS)
@pytest.mark.parametrize("name", ["llama3", "llama2"])
def test_a_batch_of_many_chunks_is_truncated_and_wrapped_as_the_reference(name, call):
    tok, hf = load_ts_fresh(name), load_hf_fresh(name)
    tok.truncation = {"max_length": 100}
    hf.enable_truncation(100)
    for add in (True, False):
        want = [e.ids for e in hf.encode_batch(TEXTS, add_special_tokens=add)]
        assert BATCH_CALLS[call](tok, TEXTS, add_special_tokens=add) == want


@pytest.mark.parametrize("call", BATCH_CALLS)
def test_a_batch_of_many_chunks_keeps_its_empty_texts(call):
    tok = ts_tokenizer("llama3")
    texts = ["", *TEXTS[:2000], "", "", *TEXTS[2000:], ""]
    rows = BATCH_CALLS[call](tok, texts, add_special_tokens=False)
    assert rows == [tok.encode(t, add_special_tokens=False) for t in texts]
    assert rows[0] == rows[2001] == rows[2002] == rows[-1] == []


@pytest.mark.parametrize("call", BATCH_CALLS)
def test_chunks_done_out_of_order_are_put_back_in_order(call):
    # The first chunk is one text of 1.5 MB: the chunks after it are encoded first.
    tok = ts_tokenizer("llama3")
    texts = ["".join(TEXTS[:6000 // 4]) * 2, *TEXTS[:2000], ""]
    rows = BATCH_CALLS[call](tok, texts, add_special_tokens=False)
    assert rows == [tok.encode(t, add_special_tokens=False) for t in texts]


# GPT-2 makes 3-4 tokens of each of these chars (4 bytes of UTF-8 each, and rare).
RARE = "𓀀𓀁 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🤗" * 20


@pytest.mark.parametrize(
    "texts",
    [[RARE] * 3, [RARE] * 2000, [*TEXTS[:500], *[RARE] * 2000]],
    ids=["one chunk", "from the first chunk", "from a late chunk"],
)
def test_more_ids_than_chars_are_all_kept_in_numpy(texts):
    # encode_batch_numpy writes ids into room for a token per char on a tokenizer's first
    # batch (src/py/flat_ids.rs); the ids past it are kept aside and written at the end.
    tok, hf = load_ts_fresh("gpt2"), load_hf_fresh("gpt2")
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert sum(map(len, want)) > sum(map(len, texts)) + 4 * len(texts)  # more than the room
    assert_same(numpy_rows(tok, texts, add_special_tokens=False), want, texts)


@pytest.mark.parametrize("size", [40, 4000])
def test_a_denser_batch_after_a_sparse_one_keeps_all_its_ids(size):
    # After the first batch the room is 1.25x the last batch's ids per char: English, then
    # Chinese and rare chars (several times the ids per char) overflow it, then English again.
    tok, hf = load_ts_fresh("gpt2"), load_hf_fresh("gpt2")
    english = [f"Document {i}: the packages of the Debian project. " * (i % 5 + 1) for i in range(size)]
    batches = [english, [f"{i}: 中文的文本，{RARE}" for i in range(size)], english[::-1]]
    for texts in batches:
        want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        assert_same(numpy_rows(tok, texts, add_special_tokens=False), want, texts)


def test_the_room_after_a_batch_of_many_ids_per_char_is_at_most_a_token_per_char():
    # A thousand empty texts, each given a BOS, make 1,001 ids per char; the room of the next
    # batch is learned from the last one's ids per char (src/py/flat_ids.rs), but never
    # more than a token per char (before that cap: 5 GB of room for a batch of 1 M chars).
    tok = ts_tokenizer("llama2")
    tok.encode_batch_numpy([""] * 1000 + ["a"], add_special_tokens=True)
    chars = sum(map(len, TEXTS))
    tracemalloc.start()
    try:
        ids, _ = tok.encode_batch_numpy(TEXTS, add_special_tokens=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids.shape[0] > 0
    assert peak < 4 * (chars + 4 * len(TEXTS)) + (8 << 20)  # a token per char, and slack


@pytest.mark.parametrize("call", BATCH_CALLS)
@pytest.mark.parametrize("late", [5, 3999])
def test_a_special_token_in_a_late_chunk_raises_as_alone(late, call):
    tok = ts_tokenizer("llama3")
    texts = list(TEXTS)
    texts[late] = "a prefix, then <|eot_id|>"
    with pytest.raises(ts.SpecialTokenError) as batch:
        BATCH_CALLS[call](tok, texts, special="raise")
    with pytest.raises(ts.SpecialTokenError) as alone:
        tok.encode(texts[late], special="raise")
    assert (batch.value.token, batch.value.offset) == (alone.value.token, alone.value.offset) == ("<|eot_id|>", 15)
    # And the next batch is whole.
    assert tok.encode_batch(TEXTS[:50]) == [tok.encode(t) for t in TEXTS[:50]]


@pytest.mark.parametrize("call", BATCH_CALLS)
@pytest.mark.parametrize("late", [5, 3999])
def test_a_str_without_utf8_in_a_late_chunk_raises_as_alone(late, call):
    tok = ts_tokenizer("gpt2")
    texts = list(TEXTS)
    texts[late] = "a lone surrogate: \ud800"
    with pytest.raises(Exception) as alone:
        tok.encode(texts[late])
    with pytest.raises(type(alone.value)) as batch:
        BATCH_CALLS[call](tok, texts)
    assert str(batch.value) == str(alone.value)
    assert tok.encode_batch(TEXTS[:50]) == [tok.encode(t) for t in TEXTS[:50]]
