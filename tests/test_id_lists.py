"""Lists of ids are built by writing their slots directly, each holding an int made once for
the process and shared by every tokenizer, immortal so that a slot needs no reference of its
own (`IdInts` in src/py/id_lists.rs). The lists must equal the ids and belong to the garbage
collector, their ints must outlive every list freed and the tokenizer, and ids past the
shared ints (tokens added later) must get ints of their own, counted."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
import tokensmith as ts
from conftest import tokenizer_path

TEXT = "The Debian project's 42 packages, installed in 2024: ünïcödé, 中文, and code() {}\n" * 20

# An immortal int's count reads 3 * 2^30 or more from Python 3.12 on; up to 3.11 it holds 2^62 more.
IMMORTAL = 1 << 31


# 560, 11,200 and 224,000 ids a list (Llama 3); the batches of 5 rows 2,800 ids and more.
@pytest.mark.parametrize("repeat", [1, 20, 400])
def test_lists_equal_the_ids_and_belong_to_the_collector(repeat):
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    text = TEXT * repeat
    expected = [int(str(i)) for i in tok.encode(text, add_special_tokens=False)]
    lists = [tok.encode(text, add_special_tokens=False) for _ in range(3)]
    rows = tok.encode_batch([text] * 5, add_special_tokens=False)
    assert all(ids == expected for ids in [*lists, *rows])
    assert all(type(i) is int for ids in [*lists, *rows] for i in ids)
    # Filled untracked, the lists are the garbage collector's again once returned.
    assert all(gc.is_tracked(ids) for ids in [*lists, *rows])


def test_lists_grow_and_shrink_as_lists_built_in_python():
    """A list's slots are allocated without `PyList_New` zeroing them, its size and room set
    by hand: growing, shrinking and sorting it must work as on any list."""
    tok = ts.Tokenizer.from_file(tokenizer_path("gpt2"))
    texts = ["", "x", TEXT, TEXT * 50]
    for ids, plain in zip(tok.encode_batch(texts, add_special_tokens=False), [tok.encode(t, add_special_tokens=False) for t in texts]):
        expected = [int(str(i)) for i in plain]
        assert ids == expected
        for lst in (ids, expected):
            lst.append(7)
            lst.extend(range(1000))
            del lst[: len(lst) // 3]
            lst.insert(0, 9)
            lst.sort()
        assert ids == expected
        ids.clear()
        assert ids == []


def test_ints_are_immortal_and_shared_by_every_tokenizer():
    llama3 = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    a = llama3.encode(TEXT, add_special_tokens=False)
    # Ints past 256 only: the interpreter's small ints are its own.
    assert sum(i > 256 for i in a) > 10
    assert all(sys.getrefcount(i) >= IMMORTAL for i in a if i > 256)
    # The same id is the same object, whichever tokenizer made the list.
    c = ts.Tokenizer.from_file(tokenizer_path("llama3")).encode(TEXT, add_special_tokens=False)
    assert c == a and all(x is y for x, y in zip(a, c))


def test_ints_outlive_every_list_freed_and_the_tokenizer():
    """Three million slots made and freed uncounted, then the tokenizer freed: every int is
    still the int it was (a slot that had lowered a count to 0 would have freed its int)."""
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    expected = [int(str(i)) for i in tok.encode(TEXT, add_special_tokens=False)]
    kept = []
    for n in range(6000):  # 6000 * 560 ids
        ids = tok.encode(TEXT, add_special_tokens=False)
        if n % 1000 == 0:
            kept.append(ids)
        del ids
    rows = tok.encode_batch([TEXT] * 1000, add_special_tokens=False)
    del rows
    del tok
    gc.collect()
    assert all(ids == expected for ids in kept)
    assert all(sys.getrefcount(i) >= IMMORTAL for ids in kept for i in ids if i > 256)
    assert ts.Tokenizer.from_file(tokenizer_path("llama3")).encode(TEXT, add_special_tokens=False) == expected


# In a new process: the process's first list of ids, made while the shared ints are taken.
REENTRY = """
import gc, json, sys, tokensmith as ts
a, b = (ts.Tokenizer.from_file(sys.argv[1]) for _ in range(2))
inner = []
def collecting(phase, info):
    if phase == "start" and not inner:
        inner.append(b.encode("hello world", add_special_tokens=False))
gc.collect()
gc.callbacks.append(collecting)
gc.set_threshold(1)  # a collection at the next object the collector tracks
outer = a.encode("hello world", add_special_tokens=False)
gc.set_threshold(700)
print(json.dumps([outer, inner]))
"""


def test_a_collection_while_the_first_ints_are_made_may_encode():
    """Up to Python 3.11, making the first list (where lists keep their slots is checked
    once) may run the collector, whose callbacks may encode with a tokenizer that has no
    table yet: it must get its ids, not a `RefCell already borrowed` panic."""
    run = subprocess.run([sys.executable, "-c", REENTRY, tokenizer_path("gpt2")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    outer, inner = json.loads(run.stdout)
    expected = ts.Tokenizer.from_file(tokenizer_path("gpt2")).encode("hello world", add_special_tokens=False)
    assert outer == expected
    assert inner == [expected]


@pytest.mark.parametrize("repeat", [1, 2000])
def test_ids_past_the_shared_ints_are_ints_of_their_own(repeat):
    tok = ts.Tokenizer.from_file(tokenizer_path("llama3"))
    tok.encode("x")  # the shared ints are taken now, for the vocabulary before the new tokens
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
