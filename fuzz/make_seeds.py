"""Seed corpora and dictionaries for the fuzz targets, made from the real files in
../shared/data (or $TOKENSMITH_DATA): small copies of every shared tokenizer.json, the real
.model files and tiny ones trained here with sentencepiece, rank-file heads with their
patterns, and corpus lines for the encode and decode targets.

    python3 fuzz/make_seeds.py            # writes fuzz/corpus/<target>/ and fuzz/*.dict
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("TOKENSMITH_DATA", HERE.parent.parent / "shared" / "data"))
CORPUS = HERE / "corpus"
#: Ids kept in a small tokenizer.json: small files mutate and load fast.
KEEP = 400


def write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def small_tokenizer_json(spec: dict) -> dict:
    """The same pipeline with the vocabulary cut to its first KEEP ids and the merges
    among them (added tokens keep their ids: ids may have holes)."""
    model = spec["model"]
    vocab = {token: i for token, i in model["vocab"].items() if i < KEEP}
    model["vocab"] = vocab
    merges = []
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    model["merges"] = merges
    return spec


def tokenizer_json_seeds(components: set) -> None:
    for folder in sorted((DATA / "tokenizers").iterdir()):
        path = folder / "tokenizer.json"
        if not path.is_file():
            continue
        spec = small_tokenizer_json(json.loads(path.read_text(encoding="utf-8")))
        for section in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
            collect_types(spec.get(section), components)
        collect_types({k: v for k, v in spec["model"].items() if k not in ("vocab", "merges")}, components)
        write("tokenizer_json", folder.name + ".json", json.dumps(spec, ensure_ascii=False).encode())


def collect_types(value, found: set) -> None:
    if isinstance(value, dict):
        for key, v in value.items():
            found.add(key)
            if key == "type" and isinstance(v, str):
                found.add(v)
            collect_types(v, found)
    elif isinstance(value, list):
        for v in value[:20]:
            collect_types(v, found)


def sentencepiece_seeds() -> None:
    import sentencepiece as spm

    for path in sorted((DATA / "sentencepiece").glob("*.model")):
        write("sentencepiece", path.name, path.read_bytes())
    text = (DATA / "corpora" / "en" / "fortunes-en.txt").read_text(encoding="utf-8").splitlines()[:3000]
    for name, options in {
        # Without a charsmap (as llama2's), and with nmt_nfkc's (240 KB).
        "tiny-bpe": dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity"),
        "tiny-bpe-nfkc": dict(model_type="bpe", user_defined_symbols=["<tool>", "</tool>"]),
        "tiny-unigram": dict(model_type="unigram", normalization_rule_name="identity"),
    }.items():
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=500,
                                       minloglevel=2, **options)
        write("sentencepiece", name + ".model", model.getvalue())


def tiktoken_seeds() -> None:
    encodings = json.loads((DATA / "tiktoken" / "encodings.json").read_text(encoding="utf-8"))
    for name, encoding in encodings.items():
        ranks = (DATA / "tiktoken" / encoding["file"]).read_text(encoding="utf-8").splitlines()[:KEEP]
        write("tiktoken", name + ".txt", (encoding["pattern"] + "\n" + "\n".join(ranks) + "\n").encode())


def text_seeds() -> None:
    """Corpus lines of every script, each behind a few bytes for the structured fields."""
    count = 0
    for path in sorted((DATA / "corpora").rglob("*.txt")):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for i, line in enumerate(lines[:: max(1, len(lines) // 8)][:8]):
            data = bytes([count % 7, 0, 0, 0]) + line.encode()
            write("encode", f"{path.stem}-{i}", data)
            write("decode", f"{path.stem}-{i}", data)
            count += 1


def dictionary(name: str, words, raw) -> None:
    """A libFuzzer dictionary of JSON strings (printable ASCII only: its escapes are few)."""
    words = [json.dumps(w) for w in sorted(words) if w.isascii() and w.isprintable() and 0 < len(w) < 64]
    lines = ['"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"' for w in words + raw]
    (HERE / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    if not DATA.is_dir():
        raise SystemExit(f"no shared data at {DATA} (set TOKENSMITH_DATA)")
    components: set = set()
    tokenizer_json_seeds(components)
    dictionary("tokenizer_json.dict", components, raw=["true", "false", "null", "[]", "{}", "-1", "4294967296"])
    sentencepiece_seeds()
    tiktoken_seeds()
    text_seeds()
    print(f"seeds in {CORPUS}")


if __name__ == "__main__":
    main()
