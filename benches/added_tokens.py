"""Encoding with a large added vocabulary: 30,000 Chinese words added as (non-special) tokens,
as an extended Chinese vocabulary, against the same tokenizer without them.

    python benches/added_tokens.py [--vocab llama3] [--count 30000] [--rounds 5]

The words are the most frequent 2- and 3-character runs of Chinese in the zh corpus. Every
text is matched against them before BPE, so their cost is paid on English text too. One
pinned core; per-document calls and one whole-text call; best of the rounds, the two
tokenizers in turn. The issue's bar: within 10% of the speed without them.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter

from conftest import CORPORA, DATA, corpus

import tokensmith


def chinese_words(count: int) -> list[str]:
    text = corpus("zh")
    counts: Counter[str] = Counter()
    for run in re.findall(r"[\u4e00-\u9fff]{2,}", text):
        for n in (2, 3):
            counts.update(run[i:i + n] for i in range(len(run) - n + 1))
    return [word for word, _ in counts.most_common(count)]


def best(runs: dict[str, object], rounds: int) -> dict[str, float]:
    """The best time of each run, the runs taking turns in every round. Each timed run
    follows an untimed one of its own: the two tokenizers share this thread's piece cache,
    and a run timed right after the other's paid for its entries (2026-12-05: English per
    document 54 MB/s without the words, 71 with them, the first of each round the slower)."""
    times = {label: float("inf") for label in runs}
    for _ in range(rounds):
        for label, run in runs.items():
            run()
            start = time.perf_counter()
            run()
            times[label] = min(times[label], time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", default="llama3")
    p.add_argument("--count", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    path = DATA / "tokenizers" / args.vocab / "tokenizer.json"
    plain = tokensmith.Tokenizer.from_file(path)
    extended = tokensmith.Tokenizer.from_file(path)
    words = chinese_words(args.count)
    start = time.perf_counter()
    extended.add_tokens(words)
    print(f"{args.vocab}: {len(words)} words added in {time.perf_counter() - start:.2f} s")
    print("| text | mode | without MB/s | with MB/s | with / without |\n|---|---|---:|---:|---:|")
    for name in CORPORA:
        text = corpus(name)
        docs = [d for d in text.split("\n\n") if d.strip()]
        size = len(text.encode()) / 1e6
        options = dict(add_special_tokens=False, special="text")
        for mode in ("per-doc", "whole"):
            runs = {}
            for label, tok in (("without", plain), ("with", extended)):
                if mode == "per-doc":
                    runs[label] = lambda tok=tok: [tok.encode(d, **options) for d in docs]
                else:
                    runs[label] = lambda tok=tok: tok.encode(text, **options)
            speed = {label: size / seconds for label, seconds in best(runs, args.rounds).items()}
            print(f"| {name} | {mode} | {speed['without']:.1f} | {speed['with']:.1f} | {speed['with'] / speed['without']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
