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


# 560, 11,200 and 224,000 ids a list (Llama 3); the batches of 5 rows 2,800 ids and more:
# under 4,096 counted inline, above tallied.
@pytest.mark.parametrize("repeat", [1, 20, 400])
def test_lists_hold_one_counted_reference_per_id(repeat):
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    text = TEXT * repeat
    expected = [int(str(i)) for i in tok.encode(text, add_special_tokens=False)]
    # Ints past 256 only: the interpreter itself holds and drops references to small ints.
    shared = {id(i): i for i in tok.encode(text, add_special_tokens=False) if i > 256}
    assert len(shared) > 10
    counts = {key: sys.getrefcount(obj) for key, obj in shared.items()}
    lists = [tok.encode(text, add_special_tokens=False) for _ in range(30)]
    rows = tok.encode_batch([text] * 5, add_special_tokens=False)
    assert all(ids == expected for ids in [*lists, *rows])
    held = {key: sys.getrefcount(obj) - counts[key] for key, obj in shared.items()}
    assert held == {key: 35 * expected.count(obj) for key, obj in shared.items()}
    # Filled untracked, the lists are the garbage collector's again once returned.
    assert all(gc.is_tracked(ids) for ids in [*lists, *rows])
    del lists, rows
    gc.collect()
    assert {key: sys.getrefcount(obj) for key, obj in shared.items()} == counts


@pytest.mark.parametrize("repeat", [1, 2000])
def test_ids_past_the_shared_ints_are_ints_of_their_own(repeat):
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    tok.encode("x")  # the shared ints are made now, for the vocabulary before the new tokens
    tok.add_tokens(["<task_a>", "<task_b>"])
    first = tok.token_to_id("<task_a>")
    text = "x <task_a> y <task_b> z" * repeat
    ids = tok.encode(text, add_special_tokens=False)
    assert first in ids and first + 1 in ids
    assert ids == [int(str(i)) for i in ids]
    assert all(type(i) is int for i in ids)
    assert ids == tok.encode_batch([text], add_special_tokens=False)[0]
    # Each new int is held by its slot alone, as in a list built in Python.
    plain = [int(str(i)) for i in ids]
    new = [k for k, i in enumerate(ids) if i >= first]
    assert [sys.getrefcount(ids[k]) for k in new] == [sys.getrefcount(plain[k]) for k in new]
