"""Lists of ids are built by writing their slots directly, with each shared int's reference
count raised inline, or, in lists of 4,096 ids and more, tallied and raised once per distinct
int (`id_list` in src/py.rs): they must equal the ids, own exactly one reference per slot,
and give ids past the shared ints (tokens added later) ints of their own."""

from __future__ import annotations

import gc
import sys

import pytest
import tokensmith as ts
from conftest import tokenizer_path

TEXT = "The Debian project's 42 packages, installed in 2024: ünïcödé, 中文, and code() {}\n" * 20


@pytest.mark.parametrize("repeat", [1, 20, 400])  # about 25, 500 and 10,000 ids: both ways
def test_lists_hold_one_counted_reference_per_id(repeat):
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    text = TEXT * repeat
    expected = [int(str(i)) for i in tok.encode(text, add_special_tokens=False)]
    # Ints past 256 only: the interpreter itself holds and drops references to small ints.
    shared = {id(i): i for i in tok.encode(text, add_special_tokens=False) if i > 256}
    assert len(shared) > 10
    counts = {key: sys.getrefcount(obj) for key, obj in shared.items()}
    lists = [tok.encode(text, add_special_tokens=False) for _ in range(30)]
    rows = tok.encode_batch([text] * 10, add_special_tokens=False)
    assert all(ids == expected for ids in [*lists, *rows])
    held = {key: sys.getrefcount(obj) - counts[key] for key, obj in shared.items()}
    assert held == {key: 40 * expected.count(obj) for key, obj in shared.items()}
    del lists, rows
    gc.collect()
    assert {key: sys.getrefcount(obj) for key, obj in shared.items()} == counts


@pytest.mark.parametrize("repeat", [1, 2000])
def test_ids_past_the_shared_ints_are_ints_of_their_own(repeat):
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    tok.add_tokens(["<task_a>", "<task_b>"])
    first = tok.token_to_id("<task_a>")
    text = "x <task_a> y <task_b> z" * repeat
    ids = tok.encode(text, add_special_tokens=False)
    assert first in ids and first + 1 in ids
    assert ids == [int(str(i)) for i in ids]
    assert all(type(i) is int for i in ids)
    assert ids == tok.encode_batch([text], add_special_tokens=False)[0]
