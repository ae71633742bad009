"""Embedding-row init benchmark, each case in a fresh process: a markdown table of wall
time, peak RSS above the RSS right before the operation, and speedup.

    python benches/embeddings_report.py [--repeat N] [case ...]

The cases are those of benches/test_embeddings.py. The model checkpoint for the loaded and
on-disk cases is saved once (in a temporary folder, by a separate process). With
``--repeat`` every case runs N times (each in its own process); the table shows the fastest
time and the largest peak. Speedup: in-memory cases against ``transformers_resize_plain``,
loaded ones against ``transformers_resize_plain_loaded``, on-disk cases against
``transformers_add_tokens_disk``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import test_embeddings as bench  # noqa: E402

BASELINES = {**dict.fromkeys(bench.MODEL_CASES, "transformers_resize_plain"),
             **dict.fromkeys(bench.LOADED_CASES, "transformers_resize_plain_loaded"),
             **dict.fromkeys(bench.DISK_CASES, "transformers_add_tokens_disk"),
             "tokensmith_mean_with_room": "transformers_resize_to_tokenizer"}


def child(case: str, checkpoint: str | None) -> None:
    result = bench.measure(bench.prepare(case, Path(checkpoint) if checkpoint else None))
    print("RESULT " + json.dumps(result))


def run(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return dict(error=(proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1])
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*", default=bench.CASES)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.save:
        bench.save_checkpoint(Path(args.save))
        return print("RESULT {}")
    if args.child:
        return child(args.child, args.checkpoint)

    with tempfile.TemporaryDirectory(prefix="emb-bench-") as tmp:
        checkpoint = Path(tmp) / "model"
        if any(c in bench.DISK_CASES or c in bench.LOADED_CASES for c in args.cases):
            error = run(["--save", str(checkpoint)]).get("error")
            if error:
                sys.exit(f"saving the checkpoint failed: {error}")
        results = {}
        for case in args.cases:
            runs = [run(["--child", case, "--checkpoint", str(checkpoint)]) for _ in range(args.repeat)]
            ok = [r for r in runs if "error" not in r]
            results[case] = dict(
                seconds=min(r["seconds"] for r in ok), rows=ok[0]["rows"],
                peak_gb=max(r["peak_gb"] for r in ok), anon_gb=max(r["anon_gb"] for r in ok),
                hwm_gb=max((r["hwm_gb"] for r in ok if r["hwm_gb"] is not None), default=None),
            ) if ok else runs[0]
            print(f"{case}: {results[case]}", file=sys.stderr)

    print("| case | time (s) | peak extra RSS (GB) | of which anonymous (GB) | speedup | rows after |")
    print("|---|---:|---:|---:|---:|---:|")
    missed = []
    for case, r in results.items():
        if "error" in r:
            print(f"| {case} | failed: {r['error']} | | | | |")
            continue
        base = results.get(BASELINES[case], {}).get("seconds")
        speedup = f"{base / r['seconds']:.1f}x" if base else "n/a"
        print(f"| {case} | {r['seconds']:.2f} | {r['peak_gb']:.2f} | {r['anon_gb']:.2f} | {speedup} | {r['rows']} |")
        if r["hwm_gb"] is not None and r["hwm_gb"] > r["peak_gb"] + 0.05:
            missed.append(f"{case}: kernel high-water mark +{r['hwm_gb']:.2f} GB")
    print("\nSpeedup: in-memory cases against transformers_resize_plain (tokensmith_mean_with_room against "
          "transformers_resize_to_tokenizer; *_loaded: the model loaded with from_pretrained, against "
          "transformers_resize_plain_loaded), on-disk cases against transformers_add_tokens_disk (load, add, "
          "resize with mean_resizing=True, save).")
    for line in missed:
        print(f"\nNote: the 2 ms sampler missed a peak in {line}.")


if __name__ == "__main__":
    main()
