"""Turn a pytest-benchmark JSON file into the README's throughput table.

    python benches/report.py bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    runs = json.load(open(path))["benchmarks"]
    table: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for run in runs:
        info = run["extra_info"]
        mb_per_s = info["bytes"] / 1e6 / run["stats"]["min"]
        table[(info["mode"], info["vocab"], info["corpus"])][info["library"]] = mb_per_s
    print("| mode | vocabulary | text | tokensmith MB/s | tiktoken MB/s | tokenizers MB/s | vs tiktoken | vs tokenizers |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for (mode, vocab, corpus), libs in sorted(table.items()):
        ts = libs.get("tokensmith")
        cells = [f"{libs[lib]:.1f}" if lib in libs else "n/a" for lib in ("tokensmith", "tiktoken", "tokenizers")]
        ratios = [f"{ts / libs[lib]:.1f}x" if ts and lib in libs else "n/a" for lib in ("tiktoken", "tokenizers")]
        print(f"| {mode} | {vocab} | {corpus} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
