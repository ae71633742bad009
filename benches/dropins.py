"""The drop-ins against the libraries they replace, side by side in one run.

    python benches/dropins.py [--tokenizers llama3 qwen2 gpt2] [--rounds 2]

* ``datasets.Dataset.map(lambda b: tok(b["text"]), batched=True)`` over the shared English and
  Chinese documents (blank-line separated), with ``transformers.AutoTokenizer`` and with
  ``tokensmith.transformers.AutoTokenizer`` on the same folder: the whole map (fingerprinting,
  Arrow writing and all), the same columns, values checked equal.
* ``tok(batch)`` alone, 1,000 documents a call.
* ``tokensmith.tiktoken`` against ``tiktoken`` for cl100k_base and o200k_base on one core:
  one ``encode`` per document, and the documents joined in one ``encode_ordinary``.

Every number is the best of ``--rounds``; the machine's other load moves them by about 15%.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import datasets
import transformers
from conftest import DATA

import tokensmith.tiktoken as ts_tiktoken
import tokensmith.transformers as ts_transformers

CORPORA = sorted((DATA / "corpora" / "en").glob("*.txt")) + sorted((DATA / "corpora" / "zh").glob("*.txt"))


def documents() -> list[str]:
    docs: list[str] = []
    for path in CORPORA:
        docs += [d for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return docs


def best(rounds: int, f) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def transformers_rows(names: list[str], rounds: int) -> None:
    datasets.disable_caching()
    datasets.disable_progress_bars()
    docs = documents()
    mb = sum(len(d.encode()) for d in docs) / 1e6
    data = datasets.Dataset.from_dict({"text": docs})
    batches = [docs[i : i + 1000] for i in range(0, len(docs), 1000)]
    print(f"\n## transformers: {len(docs)} documents, {mb:.1f} MB, {os.cpu_count()} cores\n")
    print("| tokenizer | datasets.map transformers | datasets.map tokensmith | ratio | tok(batch) transformers | tok(batch) tokensmith | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        folder = DATA / "tokenizers" / name
        ref = transformers.AutoTokenizer.from_pretrained(folder)
        ours = ts_transformers.AutoTokenizer.from_pretrained(folder)
        outputs = {}
        times = {}
        for label, tok in (("transformers", ref), ("tokensmith", ours)):
            def run(tok=tok, label=label):
                outputs[label] = data.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
            times[label] = best(rounds, run)
            times[label + " call"] = best(rounds, lambda tok=tok: [tok(b) for b in batches])
        assert outputs["tokensmith"].features == outputs["transformers"].features
        assert outputs["tokensmith"]["input_ids"] == outputs["transformers"]["input_ids"], name
        map_ratio = times["transformers"] / times["tokensmith"]
        call_ratio = times["transformers call"] / times["tokensmith call"]
        print(f"| {name} | {mb / times['transformers']:.1f} MB/s | {mb / times['tokensmith']:.1f} MB/s | {map_ratio:.1f}x "
              f"| {mb / times['transformers call']:.1f} MB/s | {mb / times['tokensmith call']:.1f} MB/s | {call_ratio:.1f}x |")


def tiktoken_rows(rounds: int) -> None:
    import tiktoken

    docs = documents()
    text = "\n\n".join(docs)
    mb = len(text.encode()) / 1e6
    with tempfile.TemporaryDirectory() as cache:
        # tiktoken offline: the shared rank files where it keeps its downloads.
        for name, file in (("cl100k_base", "cl100k_base.tiktoken"), ("o200k_base", "o200k_base.tiktoken")):
            url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
            Path(cache, hashlib.sha1(url.encode()).hexdigest()).write_bytes((DATA / "tiktoken" / file).read_bytes())
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(f"\n## tiktoken: {len(docs)} documents, {mb:.1f} MB, one core\n")
        print("| encoding | per document tiktoken | tokensmith | ratio | whole text tiktoken | tokensmith | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in ("cl100k_base", "o200k_base"):
            ref, ours = tiktoken.get_encoding(name), ts_tiktoken.get_encoding(name)
            assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
            t = {}
            for label, enc in (("tiktoken", ref), ("tokensmith", ours)):
                t[label] = best(rounds, lambda enc=enc: [enc.encode(d) for d in docs])
                t[label + " whole"] = best(rounds, lambda enc=enc: enc.encode_ordinary(text))
            print(f"| {name} | {mb / t['tiktoken']:.1f} MB/s | {mb / t['tokensmith']:.1f} MB/s | {t['tiktoken'] / t['tokensmith']:.1f}x "
                  f"| {mb / t['tiktoken whole']:.1f} MB/s | {mb / t['tokensmith whole']:.1f} MB/s | "
                  f"{t['tiktoken whole'] / t['tokensmith whole']:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", nargs="+", default=["llama3", "qwen2", "gpt2"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers_rows(args.tokenizers, args.rounds)
    tiktoken_rows(args.rounds)


if __name__ == "__main__":
    main()
