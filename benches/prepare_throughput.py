"""Plain text to Megatron-LM's indexed dataset: tokensmith against the two usual ways, on one
core and on every core.

    python benches/prepare_throughput.py [--vocab llama3] [--rounds 2] [--mb 0]

- `tokensmith`: `tokensmith.data.prepare([corpus.txt], tok, out, format="megatron")`, from the
  text file to `data.bin` + `data.idx`.
- `datasets.map`: transformers' fast tokenizer (`tokenizers`) in `Dataset.map(batched=True)`,
  the EOS id appended to each document; `num_proc` = the cores. The dataset is built from the
  same documents before the clock starts (no reading, no Megatron files: the peer's best case).
- `megatron`: Megatron-LM's `tools/preprocess_data.py` approach: a `multiprocessing.Pool` of
  one worker per core reads JSONL lines (`imap`, chunks of 32), each worker encodes with the
  transformers tokenizer and appends the EOS id, and megatron-core's `IndexedDatasetBuilder`
  writes the files.

The corpus is every file of `../shared/data/corpora/{en,zh,multi,code}` (37 MB), cut into
documents at blank lines (117,796 of them); `--mb` takes only the first MB of it. Each run is
a fresh process pinned to its cores before anything is imported; the tokenizer is loaded
before the clock starts. The runs take turns in each round; the best round counts. Every
run's ids are hashed and compared: a run with other ids than tokensmith's is marked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import DATA

SYSTEMS = ["tokensmith", "datasets.map", "megatron"]
CORPUS_DIRS = ["en", "zh", "multi", "code"]


def build_corpus(work: Path, limit: int) -> tuple[Path, Path, int]:
    """The corpus as .txt (blank-line-separated documents) and as JSONL of the same documents."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from tokensmith.data.sources import read_records

    raw = b"".join(p.read_bytes().rstrip(b"\n") + b"\n\n" for d in CORPUS_DIRS for p in sorted((DATA / "corpora" / d).glob("*.txt")))
    if limit:
        raw = raw[: raw.rfind(b"\n\n", 0, limit) + 2]
    txt = work / "corpus.txt"
    txt.write_bytes(raw)
    docs = [r.data["text"] for r in read_records([txt])]
    jsonl = work / "corpus.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    return txt, jsonl, len(docs)


def ids_digest(arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.asarray(a, dtype="<i4").tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def run_tokensmith(args, work: Path) -> tuple[float, str]:
    import numpy  # noqa: F401 - imported before the clock, as the peers' transformers imports it
    import tokensmith
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokensmith import data

    tok = tokensmith.Tokenizer.from_file(args.tokenizer)
    out = work / f"ts-{args.cores}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    data.prepare([args.txt], tok, out, format="megatron", progress=False)
    seconds = time.perf_counter() - start
    ds = IndexedDataset(str(out / "data"))
    return seconds, ids_digest(ds[i] for i in range(len(ds)))


def hf_tokenizer(path: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=path)


def run_datasets(args, work: Path) -> tuple[float, str]:
    import datasets

    datasets.disable_progress_bars()
    tok = hf_tokenizer(args.tokenizer)
    docs = [json.loads(line)["text"] for line in open(args.jsonl, encoding="utf-8")]
    ds = datasets.Dataset.from_dict({"text": docs})
    eos = args.eos

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tok(batch["text"])["input_ids"]]}

    start = time.perf_counter()
    out = ds.map(tokenize, batched=True, num_proc=args.cores if args.cores > 1 else None, remove_columns=["text"],
                 cache_file_name=str(work / f"map-{args.cores}.arrow"), load_from_cache_file=False)
    seconds = time.perf_counter() - start
    return seconds, ids_digest(out["input_ids"])


class _MegatronEncoder:
    """What `preprocess_data.py`'s `Encoder.encode` does for one JSONL line, with a Hugging
    Face tokenizer and `--append-eod`."""

    def __init__(self, path: str, eos: int) -> None:
        self.path, self.eos = path, eos

    def initializer(self) -> None:
        _MegatronEncoder.tok = hf_tokenizer(self.path)

    def encode(self, line: str):
        text = json.loads(line)["text"]
        ids = _MegatronEncoder.tok(text).input_ids
        ids.append(self.eos)
        return ids, len(line)


def run_megatron(args, work: Path) -> tuple[float, str]:
    import multiprocessing

    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    encoder = _MegatronEncoder(args.tokenizer, args.eos)
    vocab_size = len(hf_tokenizer(args.tokenizer))
    prefix = work / f"mg-{args.cores}"
    start = time.perf_counter()
    with multiprocessing.Pool(args.cores, initializer=encoder.initializer) as pool, open(args.jsonl, encoding="utf-8") as f:
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(vocab_size))
        for ids, _ in pool.imap(encoder.encode, f, 32):
            builder.add_document(np.array(ids), [len(ids)])
        builder.finalize(f"{prefix}.idx")
    seconds = time.perf_counter() - start
    ds = IndexedDataset(str(prefix))
    return seconds, ids_digest(ds[i] for i in range(len(ds)))


def _spin(_=None) -> float:
    """Pure-Python arithmetic: what one core does when nothing else limits it."""
    start, total = time.perf_counter(), 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def machine_scaling(cores: int) -> float:
    """How much work `cores` processes get done at once against one alone, each pinned to its
    own core: the ceiling of any program's scaling here. On a VM whose cores share hardware
    with other guests it is below `cores`."""
    import multiprocessing

    cpus = sorted(os.sched_getaffinity(0))[:cores]
    with multiprocessing.Pool(cores) as pool:
        pids = pool.map(_pid, range(cores))
        for pid, cpu in zip(sorted(set(pids)), cpus):
            os.sched_setaffinity(pid, {cpu})
        alone = min(pool.apply(_spin) for _ in range(3))
        together = min(max(pool.map(_spin, range(cores), chunksize=1)) for _ in range(3))
    return cores * alone / together


def _pid(_) -> int:
    time.sleep(0.2)  # every worker takes one
    return os.getpid()


def child(args) -> None:
    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cpus)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    work = Path(args.work)
    run = {"tokensmith": run_tokensmith, "datasets.map": run_datasets, "megatron": run_megatron}[args.run]
    seconds, digest = run(args, work)
    print(json.dumps({"seconds": seconds, "digest": digest}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", default="llama3")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mb", type=float, default=0, help="only the first MB of the corpus (0: all of it)")
    p.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    p.add_argument("--run", choices=SYSTEMS, help=argparse.SUPPRESS)
    for name in ("work", "txt", "jsonl", "tokenizer"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--cores", type=int, help=argparse.SUPPRESS)
    p.add_argument("--eos", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        return child(args)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import tokensmith
    from tokensmith.data import ExampleEncoder

    tokenizer = str(DATA / "tokenizers" / args.vocab / "tokenizer.json")
    eos = ExampleEncoder(tokensmith.Tokenizer.from_file(tokenizer)).eos_id
    all_cores = len(os.sched_getaffinity(0))
    configs = [(s, c) for s in args.systems for c in sorted({1, all_cores})]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        txt, jsonl, docs = build_corpus(work, int(args.mb * 1e6))
        mb = txt.stat().st_size / 1e6
        print(f"{args.vocab}: {mb:.1f} MB, {docs:,} documents; cores: {all_cores}")
        best: dict[tuple[str, int], float] = {}
        digests: dict[tuple[str, int], str] = {}
        for _ in range(args.rounds):
            for system, cores in configs:
                done = subprocess.run(
                    [sys.executable, __file__, "--run", system, "--cores", str(cores), "--work", tmp, "--txt", str(txt),
                     "--jsonl", str(jsonl), "--tokenizer", tokenizer, "--eos", str(eos)],
                    capture_output=True, text=True, check=False,
                )
                if done.returncode:
                    sys.exit(f"{system} on {cores} cores failed:\n{done.stderr[-3000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                best[system, cores] = min(best.get((system, cores), float("inf")), r["seconds"])
                digests[system, cores] = r["digest"]
    if all_cores > 1:
        print(f"this machine's own scaling: {all_cores} processes of pure arithmetic, each on its core, do "
              f"{machine_scaling(all_cores):.2f}x the work of one (the ceiling for every row below)")
    reference = digests.get(("tokensmith", 1))
    print("| system | cores | MB/s | vs one core | tokensmith's MB/s over it |\n|---|---:|---:|---:|---:|")
    for system, cores in configs:
        rate = mb / best[system, cores]
        same = "" if reference is None or digests[system, cores] == reference else " (other ids!)"
        own = mb / best[system, 1]
        theirs = mb / best["tokensmith", cores] if ("tokensmith", cores) in best else float("nan")
        print(f"| {system}{same} | {cores} | {rate:.1f} | {rate / own:.2f}x | {theirs / rate:.1f}x |")


if __name__ == "__main__":
    main()
