"""Long inputs without a break: seconds per MB against English, on every shared tokenizer.

    python benches/long_inputs.py [--mb 10] [--tokenizers llama3 o200k_base ...]

Each input is `--mb` MB of one kind of text (English prose for the baseline), encoded in one
call on one pinned core. The issue's bar: every kind within 3x the per-byte time of English.
"""

from __future__ import annotations

import argparse
import os
import time

from conftest import DATA

import tokensmith

KINDS = {
    "one letter": lambda n: "a" * n,
    "digits": lambda n: ("1234567890" * (n // 10 + 1))[:n],
    "CJK, no spaces": lambda n: ("人工智能数据集训练模型" * (n // 33 + 1))[: n // 3],
    "one whitespace run": lambda n: " " * n,
    "newlines": lambda n: "\n" * n,
    "emoji ZWJ": lambda n: ("\U0001F468\u200D\U0001F469\u200D\U0001F467" * (n // 18 + 1))[: n // 4],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = sorted(d.name for d in (DATA / "tokenizers").iterdir() if (d / "tokenizer.json").is_file())
    p.add_argument("--tokenizers", nargs="+", default=names)
    p.add_argument("--mb", type=float, default=10)
    args = p.parse_args()
    n = int(args.mb * 1e6)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    english = (DATA / "corpora" / "en" / "debian-handbook.en-US.txt").read_text(encoding="utf-8")
    english = (english * (n // len(english) + 1))[:n]
    texts = {"English": english, **{kind: make(n) for kind, make in KINDS.items()}}
    print("| tokenizer | " + " | ".join(f"{k} s/MB" if k == "English" else f"{k} (x English)" for k in texts) + " |")
    print("|---|" + "---:|" * len(texts))
    for name in args.tokenizers:
        tok = tokensmith.Tokenizer.from_file(DATA / "tokenizers" / name / "tokenizer.json")
        per_mb = {}
        for kind, text in texts.items():
            start = time.perf_counter()
            tok.encode(text, add_special_tokens=False, special="text")
            per_mb[kind] = (time.perf_counter() - start) / (len(text.encode()) / 1e6)
        base = per_mb["English"]
        cells = [f"{base:.3f}"] + [f"{per_mb[k] / base:.1f}x" for k in texts if k != "English"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
