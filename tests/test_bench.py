"""`tokensmith.bench` and `tokensmith bench`: the side-by-side speed comparison counts wrong
documents, times what it says, and leaves the process as it found it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import DATA, require_data, tokenizer_path
from tokensmith import bench


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    require_data()
    text = (DATA / "corpora" / "en" / "debian-handbook.en-US.txt").read_text(encoding="utf-8")
    return {"en": text[:40_000]}


def test_peers_agree_with_the_reference_and_a_wrong_encoder_is_counted(corpus):
    encoders, skipped = bench.load(["tokenizers", "tiktoken"], bench.Source(tokenizer_path("llama3")))
    assert [e.name for e in encoders] == ["tokensmith", "tokenizers", "tiktoken"], skipped
    # Ids of the first document everywhere, so each document of the corpus comes out wrong.
    first = encoders[0].encode(bench.documents(corpus["en"])[0])
    wrong = bench.Encoder("wrong", "0", lambda text: first, lambda texts: [first] * len(texts))
    affinity = os.sched_getaffinity(0)
    results = bench.race([*encoders, wrong], corpus, rounds=1)
    assert os.sched_getaffinity(0) == affinity
    docs = bench.documents(corpus["en"])
    differ = sum(encoders[0].encode(d) != first for d in docs)  # a heading may come back
    # The first pass times the documents after the fifth it warms up on.
    differ_unseen = sum(encoders[0].encode(d) != first for d in docs[len(docs) // 5:])
    got = {(r.library, r.mode): r for r in results}
    for mode in bench.MODES:
        assert got["tokensmith", mode].mismatches == 0
        assert got["tokenizers", mode].mismatches == 0  # the reference itself
        want = {"whole": 1, "first-pass": differ_unseen}.get(mode, differ)
        assert got["wrong", mode].mismatches == want
        assert got["tokensmith", mode].seconds > 0
    assert ("tiktoken", "batch") in got
    table = bench.table(results)
    assert f"({differ} wrong)" in table and "vs fastest exact peer" in table
    # The wrong encoder is never the peer a ratio is taken against.
    assert "x wrong |" not in table


def test_a_first_pass_meets_each_document_once_on_a_library_loaded_afresh(corpus):
    encoders, _ = bench.load([], bench.Source(tokenizer_path("gpt2")))
    seen: list[list[str]] = []

    def loaded() -> bench.Encoder:
        calls: list[str] = []
        seen.append(calls)
        return bench.Encoder("counting", "0", lambda text: calls.append(text) or encoders[0].encode(text), None,
                             fresh=loaded)

    counting = loaded()
    results = bench.race([encoders[0], counting], corpus, modes=["first-pass"], rounds=2)
    docs = bench.documents(corpus["en"])
    warm, unseen = docs[: len(docs) // 5], docs[len(docs) // 5:]
    # The instance `load` gave is never timed; each round's own instance warms up, then
    # meets every other document once.
    assert seen[0] == [] and seen[1:] == [warm + unseen] * 2
    got = {r.library: r for r in results}
    assert got["counting"].mismatches == 0 and got["counting"].bytes == sum(len(d.encode()) for d in unseen)


def test_whole_times_texts_of_the_same_words_never_encoded_before(corpus):
    encoders, _ = bench.load([], bench.Source(tokenizer_path("gpt2")))
    calls: list[str] = []
    counting = bench.Encoder("counting", "0", lambda text: calls.append(text) or encoders[0].encode(text), None)
    results = bench.race([encoders[0], counting], corpus, modes=["whole"], rounds=2)
    text = corpus["en"]
    # A call that checks the ids, then each round's untimed call and timed one.
    assert calls[0] == text and len(calls) == 5
    # A library that remembers texts it has encoded (fastokens does) finds none of them again.
    assert len(set(calls)) == 5
    for rotated in calls[1:]:  # the text from one of its line breaks on, then the rest
        at = (text + text).index(rotated)
        assert len(rotated) == len(text) and text[at - 1] == "\n"
    got = {r.library: r for r in results}
    assert got["counting"].mismatches == 0 and got["counting"].bytes == len(text.encode())
    # Each library is timed on a str of its own (CPython keeps the UTF-8 of a str once asked).
    at = bench.rotation_starts(text, 1)[0]
    assert bench.rotated(text, at) is not bench.rotated(text, at)
    # A text of few lines (a user's own corpus may be one) is rotated between lines too.
    one_line = text.replace("\n", " ")
    assert bench.rotation_starts(one_line, 6) == [len(one_line) * k // 7 for k in range(1, 7)]
    assert len(set(bench.rotation_starts("two\nlines", 6))) == 6
    with pytest.raises(ValueError, match="needs 5 chars"):
        bench.rotation_starts("abc", 4)


def test_unknown_peer_or_mode_is_an_error(corpus):
    with pytest.raises(ValueError, match="unknown peer"):
        bench.load(["no-such-peer"], bench.Source(tokenizer_path("gpt2")))
    encoders, _ = bench.load([], bench.Source(tokenizer_path("gpt2")))
    with pytest.raises(ValueError, match="unknown modes"):
        bench.race(encoders, corpus, modes=["fast"])


def test_bench_command_prints_the_table(tmp_path, corpus):
    text = tmp_path / "en.txt"
    text.write_text(corpus["en"], encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "tokensmith.cli", "bench", "--tokenizer", str(tokenizer_path("gpt2").parent),
         "--corpus", str(text), "--peers", "tokenizers", "--rounds", "1", "--modes", "per-doc", "whole"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| per-doc") or line.startswith("| whole")]
    assert len(rows) == 2 and all("en.txt" in row and "wrong" not in row for row in rows), done.stdout
    assert "tokenizers " in done.stderr  # the peers and their versions


def test_bench_command_explains_a_missing_tokenizer(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tokensmith.cli", "bench", "--tokenizer", str(tmp_path), "--corpus", "x.txt"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2 and "no tokenizer.json" in done.stderr
