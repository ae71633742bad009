"""Turn a pytest-benchmark JSON file into the README's throughput tables.

    python benches/report.py bench.json

Ratios are tokensmith's speed over each peer's; a peer whose ids differ from tokensmith's
(the reference's) on some documents is marked with the count, e.g. `12.0 (3 wrong)`.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    runs = json.load(open(path))["benchmarks"]
    table: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    wrong: dict[tuple[str, str, str, str], int] = {}
    libraries: list[str] = []
    for run in runs:
        info = run["extra_info"]
        if "bytes" not in info:
            continue
        key = (info["mode"], info["vocab"], info["corpus"])
        table[key][info["library"]] = info["bytes"] / 1e6 / run["stats"]["min"]
        wrong[key + (info["library"],)] = info.get("mismatches", 0)
        if info["library"] not in libraries:
            libraries.append(info["library"])
    peers = [lib for lib in libraries if lib != "tokensmith"]
    print("| mode | vocabulary | text | " + " | ".join(f"{lib} MB/s" for lib in ["tokensmith"] + peers)
          + " | " + " | ".join(f"vs {lib}" for lib in peers) + " |")
    print("|---|---|---|" + "---:|" * (1 + 2 * len(peers)))
    for key, libs in sorted(table.items()):
        ts = libs.get("tokensmith")

        def cell(lib: str) -> str:
            if lib not in libs:
                return "n/a"
            n = wrong.get(key + (lib,), 0)
            return f"{libs[lib]:.1f}" + (f" ({n} wrong)" if n else "")

        ratios = [f"{ts / libs[lib]:.1f}x" if ts and lib in libs else "n/a" for lib in peers]
        print(f"| {' | '.join(key)} | " + " | ".join([cell(lib) for lib in ["tokensmith"] + peers] + ratios) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
