"""Long inputs without a break: seconds per MB against English, on every shared tokenizer
and on the pre-tokenizers of public models the shared files do not cover (VARIANTS).

    python benches/long_inputs.py [--mb 10] [--rounds 3] [--tokenizers llama3 o200k_base qwen3.5 ...]
                                  [--peers [PEER ...]] [--peer-mb 1]

Each input is `--mb` MB of one kind of text (English prose for the baseline), encoded in one
call on one pinned core, the best of `--rounds` calls after an untimed one (the first call of
a tokenizer builds its tables, and this VM's speed swings within minutes). Each call gets a
text it has not seen: a repeated kind rotated to start at another place, a new `str` as the
race's whole-text mode gives (a library that remembered a text, or CPython's UTF-8 form of
it, gains nothing), and a random kind drawn anew. A rotation of random text is no new text:
its words come back (fastokens encoded a rotation of 1 MB of random letters it had seen in
8 ms, a new one in 116 ms; tokensmith, whose piece cache keeps Gemma 4's words of it, in 58
and 105 ms). The issue's bar: every kind within 3x the per-byte time of English.

A second table gives the time per token, against English's: most kinds make a token every
byte or two where English makes one every four, and their multiple per byte is mostly that.

`--peers [PEER ...]` (none named: every installed one) then races the peers on the random
kinds of `--peer-mb` MB (1 by default) with the shared vocabularies, new text for every
call as above, each peer's ids checked against the reference's (`tokenizers`). Only the
random kinds: on a run of one letter or one pattern repeated some peers take time quadratic
in its length (tiktoken merges a piece by scanning all its parts at every merge). A peer
that takes more than `SLOW_SECONDS` for a sixteenth of a text is left out of that row, and
says so (tokie is quadratic on long pieces of random text too).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import string

from conftest import DATA, source

import tokensmith
from tokensmith import bench

KINDS = {
    "one letter": lambda n: "a" * n,
    "digits": lambda n: ("1234567890" * (n // 10 + 1))[:n],
    "CJK, no spaces": lambda n: ("人工智能数据集训练模型" * (n // 33 + 1))[: n // 3],
    "one whitespace run": lambda n: " " * n,
    "newlines": lambda n: "\n" * n,
    "emoji ZWJ": lambda n: ("\U0001F468\u200D\U0001F469\u200D\U0001F467" * (n // 18 + 1))[: n // 4],
}

#: Not a pattern repeated: a long identifier, a blob of letters or of digits. The kinds above
#: repeat a few bytes, and the linear-time encoder's memos answer most of their questions;
#: here nearly every question is new.
RANDOM_KINDS = {"random letters": string.ascii_lowercase, "random digits": string.digits}


@functools.cache
def random_text(kind: str, n: int, seed: int) -> str:
    return "".join(random.Random(seed).choices(RANDOM_KINDS[kind], k=n))


def calls(kind: str, text: str, rounds: int):
    """The texts of one cell: an untimed call's, then `rounds` timed calls', each new."""
    if kind in RANDOM_KINDS:
        return (random_text(kind, len(text), seed) for seed in range(rounds + 1))
    return (bench.rotated(text, at) if at else text for at in [0, *bench.rotation_starts(text, rounds)])


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def _split(pattern: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


#: name -> (shared vocabulary, its pre-tokenizer replaced by this one's steps, as the models'
#: tokenizer.json files spell them).
VARIANTS = {
    "qwen3.5": ("qwen2", [_split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), BYTE_LEVEL]),
    "deepseek-v3": ("llama3", [
        _split(r"\p{N}{1,3}"), _split("[一-龥\u3040-ゟ゠-ヿ]+"),
        _split((r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
                r"""| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""").replace(r"\r", "\r").replace(r"\n", "\n")),
        BYTE_LEVEL]),
    "command-r": ("gpt2", [{"type": "Digits", "individual_digits": True},
                           {**BYTE_LEVEL, "use_regex": True}]),
    "command-a": ("tekken", [_split(r"\d{1,3}(?=(?:\d{3})*\b)"), None]),
}


def tokenizer(name: str) -> tokensmith.Tokenizer:
    if name not in VARIANTS:
        return tokensmith.Tokenizer.from_file(DATA / "tokenizers" / name / "tokenizer.json")
    vocab, steps = VARIANTS[name]
    spec = json.loads((DATA / "tokenizers" / vocab / "tokenizer.json").read_text(encoding="utf-8"))
    # `None`: the vocabulary's own steps from here on.
    pre = spec["pre_tokenizer"]
    own = pre.get("pretokenizers", [pre])
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [s for step in steps for s in ([step] if step else own)]}
    return tokensmith.Tokenizer.from_str(json.dumps(spec))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = sorted(d.name for d in (DATA / "tokenizers").iterdir() if (d / "tokenizer.json").is_file())
    p.add_argument("--tokenizers", nargs="+", default=[*names, *VARIANTS])
    p.add_argument("--mb", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peers", nargs="*", metavar="PEER", help=f"race these on the random kinds (of {', '.join(bench.PEERS)})")
    p.add_argument("--peer-mb", type=float, default=1)
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    n = int(args.mb * 1e6)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    english = (DATA / "corpora" / "en" / "debian-handbook.en-US.txt").read_text(encoding="utf-8")
    english = (english * (n // len(english) + 1))[:n]
    texts = {"English": english, **{kind: make(n) for kind, make in KINDS.items()}}
    texts.update({kind: random_text(kind, n, 0) for kind in RANDOM_KINDS})
    head = "| tokenizer | " + " | ".join(f"{k} {{}}" if k == "English" else f"{k} (x English)" for k in texts) + " |"
    rule = "|---|" + "---:|" * len(texts)
    print(head.format("s/MB"), rule, sep="\n")
    per_token_rows = []
    for name in args.tokenizers:
        tok = tokenizer(name)
        per_mb, per_token = {}, {}
        for kind, text in texts.items():
            tokens = len(tok.encode(text, add_special_tokens=False, special="text"))
            best = float("inf")
            for call in itertools.islice(calls(kind, text, args.rounds), 1, None):
                # The ids are freed after the clock stops, as the race times: freeing a list
                # of 10 M ints is Python's work, whoever made it, and took a third of the
                # time of the inputs that make a token a byte.
                seconds, ids = bench._timed_output(lambda: tok.encode(call, add_special_tokens=False, special="text"))
                best = min(best, seconds)
                del ids, call
            per_mb[kind] = best / (len(text.encode()) / 1e6)
            per_token[kind] = best / max(tokens, 1) * 1e9
        base = per_mb["English"]
        cells = [f"{base:.3f}"] + [f"{per_mb[k] / base:.1f}x" for k in texts if k != "English"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        cells = [f"{per_token['English']:.0f}"] + [f"{per_token[k] / per_token['English']:.1f}x" for k in texts if k != "English"]
        per_token_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\nThe time per token:\n", head.format("ns/token"), rule, *per_token_rows, sep="\n")
    if args.peers is not None:
        shared = [name for name in args.tokenizers if name not in VARIANTS]
        race_random(shared, args.peers or bench.PEERS, int(args.peer_mb * 1e6), args.rounds)


#: A peer slower than this on a sixteenth of a random text, if quadratic, would take minutes
#: on all of it, a call.
SLOW_SECONDS = 2.0


def race_random(names: list[str], peers: list[str], n: int, rounds: int) -> None:
    """Every loaded peer against tokensmith on the random kinds: seconds per MB, the best of
    `rounds` calls on new texts after an untimed call, and the ratio to the fastest peer
    whose ids are the reference's."""
    print(f"\nRandom text, {n / 1e6:g} MB, s/MB (wrong: ids that differ from `tokenizers`'):\n")
    rows = []
    for name in names:
        encoders, skipped = bench.load(["tokenizers", *peers], source(name))
        for kind in RANDOM_KINDS:
            text = random_text(kind, n, 0)
            cells = {}
            for e in encoders:
                seconds, _ = bench._timed_output(lambda: e.encode(random_text(kind, n // 16, 0)))
                if seconds > SLOW_SECONDS:
                    print(f"- {e.name} left out of {name} {kind}: {seconds:.1f} s for {n // 16000} kB")
                    continue
                ids = list(e.encode(text))
                best = float("inf")
                for call in itertools.islice(calls(kind, text, rounds), 1, None):
                    seconds, out = bench._timed_output(lambda: e.encode(call))
                    best = min(best, seconds)
                    del out
                cells[e.name] = (best / (n / 1e6), ids)
            if "tokenizers" not in cells:
                raise SystemExit(f"no ids of the reference, tokenizers, for {name}: {skipped.get('tokenizers', 'too slow')}")
            reference = cells["tokenizers"][1]
            rows.append((name, kind, {k: (t, ids != reference) for k, (t, ids) in cells.items()}))
    libraries = list(dict.fromkeys(k for _, _, cells in rows for k in cells))
    print("| tokenizer | text | " + " | ".join(libraries) + " | vs fastest exact peer |")
    print("|---|---|" + "---:|" * (len(libraries) + 1))
    for name, kind, cells in rows:
        shown = [f"{cells[k][0]:.3f}" + (" (wrong)" if cells[k][1] else "") if k in cells else "n/a" for k in libraries]
        exact = {k: t for k, (t, wrong) in cells.items() if k != "tokensmith" and not wrong}
        best = min(exact, key=exact.get) if exact else None
        ratio = f"{exact[best] / cells['tokensmith'][0]:.2f}x {best}" if best else "n/a"
        print(f"| {name} | {kind} | " + " | ".join(shown) + f" | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
