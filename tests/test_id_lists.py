"""Lists of ids are built by writing their slots directly, each holding a shared int of the
tokenizer whose count is raised in arrears: the uses are tallied and the counts raised once
a million slots are uncounted, or when asked (`_settle_id_counts`), each int holding a
reserve meanwhile (`IdInts` in src/py/id_lists.rs). The lists must equal the ids, own
exactly one reference per slot once settled, keep their ints when the tokenizer goes, and
give ids past the shared ints (tokens added later) ints of their own."""

from __future__ import annotations

import gc
import sys

import pytest
import tokensmith as ts
from conftest import tokenizer_path

TEXT = "The Debian project's 42 packages, installed in 2024: ünïcödé, 中文, and code() {}\n" * 20


# 560, 11,200 and 224,000 ids a list (Llama 3); the batches of 5 rows 2,800 ids and more.
@pytest.mark.parametrize("repeat", [1, 20, 400])
def test_lists_hold_one_counted_reference_per_id(repeat):
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    text = TEXT * repeat
    expected = [int(str(i)) for i in tok.encode(text, add_special_tokens=False)]
    # Ints past 256 only: the interpreter itself holds and drops references to small ints.
    shared = {id(i): i for i in tok.encode(text, add_special_tokens=False) if i > 256}
    assert len(shared) > 10
    tok._core._settle_id_counts()
    counts = {key: sys.getrefcount(obj) for key, obj in shared.items()}
    lists = [tok.encode(text, add_special_tokens=False) for _ in range(30)]
    rows = tok.encode_batch([text] * 5, add_special_tokens=False)
    assert all(ids == expected for ids in [*lists, *rows])
    tok._core._settle_id_counts()
    held = {key: sys.getrefcount(obj) - counts[key] for key, obj in shared.items()}
    assert held == {key: 35 * expected.count(obj) for key, obj in shared.items()}
    # Filled untracked, the lists are the garbage collector's again once returned.
    assert all(gc.is_tracked(ids) for ids in [*lists, *rows])
    del lists, rows
    gc.collect()
    tok._core._settle_id_counts()
    assert {key: sys.getrefcount(obj) for key, obj in shared.items()} == counts


def test_counts_stay_exact_over_a_million_slots():
    """Lists made and freed past the point where the counts settle by themselves: none of
    their ints is freed early, and the counts are exact at the end."""
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    expected = tok.encode(TEXT, add_special_tokens=False)
    shared = {id(i): i for i in expected if i > 256}
    tok._core._settle_id_counts()
    counts = {key: sys.getrefcount(obj) for key, obj in shared.items()}
    kept = []
    for n in range(2100):  # 2100 * 560 ids: past 2^20, where the uses settle unasked
        ids = tok.encode(TEXT, add_special_tokens=False)
        if n % 100 == 0:
            kept.append(ids)
    del ids
    assert len(expected) * 2100 > 1 << 20
    assert all(ids == expected for ids in kept)
    # They settled by themselves past 2^20 slots: fewer are uncounted now than were made.
    assert 0 < tok._core._settle_id_counts() < 1 << 20
    held = {key: sys.getrefcount(obj) - counts[key] for key, obj in shared.items()}
    assert held == {key: len(kept) * expected.count(obj) for key, obj in shared.items()}
    del kept
    gc.collect()
    tok._core._settle_id_counts()
    assert {key: sys.getrefcount(obj) for key, obj in shared.items()} == counts


def test_lists_keep_their_ints_when_the_tokenizer_goes():
    """The tokenizer's table settles and gives its reserve back when it goes: the ints of a
    list it made are then held by their slots alone, as those of a list built in Python."""
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    ids = tok.encode(TEXT, add_special_tokens=False)
    expected = [int(str(i)) for i in ids]
    del tok
    gc.collect()
    assert ids == expected
    # Each int past 256 at its first slot (held by nothing here but the list).
    firsts = [k for k in range(len(ids)) if ids[k] > 256 and ids.index(ids[k]) == k]
    assert len(firsts) > 10
    for k in firsts:
        plain = [int(str(ids[k]))] * ids.count(ids[k])
        assert sys.getrefcount(ids[k]) == sys.getrefcount(plain[0]), ids[k]


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
