"""The batch lines of the speed goal, for each vocabulary and corpus: `encode_batch_numpy` on
every core against its own rate on one core, and `encode_batch` (lists of ids) against
`encode_batch_numpy` on every core.

    python benches/batch_scaling.py [--vocabs gpt2 llama3 ...] [--corpora en zh ...] [--rounds 20] [--runs 3]

One core is a process pinned to one CPU whose pool has one thread (`RAYON_NUM_THREADS=1`);
every core is a process with the default pool. Each run is a fresh process, the two kinds in
turn, so that a slow stretch of this shared machine falls on both; a figure is the best of
its runs, each the best of `--rounds` calls. Both calls' ids are checked against each other.
The machine's own scaling (pure arithmetic, a process per core, see `prepare_throughput.py`)
is printed before and after: the ceiling of any program's scaling here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date

from conftest import CORPORA, SENTENCEPIECE_VOCABS, VOCABS, corpus, tokensmith_tokenizer
from prepare_throughput import machine_scaling

GOAL_SCALING = 1.8
GOAL_LISTS = 0.85


def child(vocab: str, corpus_name: str, rounds: int) -> None:
    """Prints the best MB/s of `encode_batch_numpy` and `encode_batch` in this process."""
    from tokensmith import bench

    tok = tokensmith_tokenizer(vocab)
    docs = bench.documents(corpus(corpus_name))
    size = sum(len(d.encode()) for d in docs)
    numpy = lambda: tok.encode_batch_numpy(docs, add_special_tokens=False, special="text")  # noqa: E731
    lists = lambda: tok.encode_batch(docs, add_special_tokens=False, special="text")  # noqa: E731
    ids, offsets = numpy()
    rows = lists()
    if [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] != rows:
        sys.exit(f"{vocab} {corpus_name}: encode_batch_numpy and encode_batch differ")
    best = {"numpy": float("inf"), "lists": float("inf")}
    for _ in range(rounds):  # the two calls in turn
        for name, run in (("numpy", numpy), ("lists", lists)):
            best[name] = min(best[name], bench._timed(run))
    print(json.dumps({name: size / 1e6 / seconds for name, seconds in best.items()}))


def measure(vocab: str, corpus_name: str, cores: int, rounds: int) -> dict[str, float]:
    env = dict(os.environ)
    command = [sys.executable, __file__, "--child", vocab, corpus_name, "--rounds", str(rounds)]
    if cores == 1:
        env["RAYON_NUM_THREADS"] = "1"
        cpu = min(os.sched_getaffinity(0))
        command = ["taskset", "-c", str(cpu), *command]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{vocab} {corpus_name} on {cores} core(s) failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocabs", nargs="+", default=[*VOCABS, *SENTENCEPIECE_VOCABS])
    p.add_argument("--corpora", nargs="+", default=list(CORPORA))
    p.add_argument("--rounds", type=int, default=20, help="calls per process (the best is kept)")
    p.add_argument("--runs", type=int, default=5, help="processes per figure (the best is kept)")
    p.add_argument("--child", nargs=2, metavar=("VOCAB", "CORPUS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child, args.rounds)
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        raise SystemExit("this measures scaling: it needs at least 2 CPUs")
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {cores} cores, "
          f"Python {platform.python_version()}")
    print(f"the machine's own scaling before: {machine_scaling(cores):.2f}x")
    print(f"\n| vocabulary | corpus | numpy, 1 core | numpy, {cores} cores | scaling (goal {GOAL_SCALING}x) "
          f"| lists, {cores} cores | lists / numpy (goal {GOAL_LISTS}x) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    start = time.perf_counter()
    for vocab in args.vocabs:
        for name in args.corpora:
            one, every = {"numpy": 0.0, "lists": 0.0}, {"numpy": 0.0, "lists": 0.0}
            for _ in range(args.runs):
                for best, n in ((one, 1), (every, cores)):
                    for call, mb_s in measure(vocab, name, n, args.rounds).items():
                        best[call] = max(best[call], mb_s)
            # Ratios to two decimals, as printed (the machine's noise is larger than that).
            scaling = round(every["numpy"] / one["numpy"], 2)
            lists = round(every["lists"] / every["numpy"], 2)
            print(f"| {vocab} | {name} | {one['numpy']:.0f} MB/s | {every['numpy']:.0f} MB/s | "
                  f"{scaling:.2f}x{'' if scaling >= GOAL_SCALING else ' (below)'} | {every['lists']:.0f} MB/s | "
                  f"{lists:.2f}x{'' if lists >= GOAL_LISTS else ' (below)'} |", flush=True)
    print(f"\nthe machine's own scaling after: {machine_scaling(cores):.2f}x "
          f"({time.perf_counter() - start:.0f} s of measuring)")


if __name__ == "__main__":
    main()
