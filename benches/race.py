"""The speed race on the shared vocabularies and corpora: the README's table.

    python benches/race.py [--vocabs gpt2 llama3 ...] [--corpora en zh ...] [--rounds 3] [--png race.png]

For each vocabulary, `tokensmith.bench.race` times tokensmith and every installed peer on the
same documents (per-doc and whole on one pinned core, batch on every core) and counts each
one's documents that differ from the reference (`tokenizers`). Ratios are tokensmith's speed
over the fastest peer that got every document right.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date

from conftest import CORPORA, SENTENCEPIECE_VOCABS, VOCABS, corpus, source

from tokensmith import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocabs", nargs="+", default=[*VOCABS, *SENTENCEPIECE_VOCABS])
    p.add_argument("--corpora", nargs="+", default=list(CORPORA))
    p.add_argument("--peers", nargs="+", default=bench.PEERS)
    p.add_argument("--modes", nargs="+", default=bench.MODES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--png", help="a bar chart per vocabulary: PNG path with {vocab} in it")
    args = p.parse_args()
    print(f"{date.today()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    texts = {name: corpus(name) for name in args.corpora}
    for vocab in args.vocabs:
        encoders, skipped = bench.load(args.peers, source(vocab))
        print(f"\n### {vocab}\n")
        print(", ".join(f"{e.name} {e.version}" for e in encoders))
        for name, why in skipped.items():
            print(f"- {name} skipped: {why}")
        results = bench.race(encoders, texts, modes=args.modes, rounds=args.rounds,
                             progress=lambda m: print(f"{vocab} {m}", file=sys.stderr))
        print()
        print(bench.table(results), flush=True)
        if args.png:
            bench.chart(results, args.png.format(vocab=vocab))


if __name__ == "__main__":
    main()
