"""Token streams for pre-training (issue 14): ``prepare(format="megatron" | "tokens")`` and
plain-text / compressed inputs.

References: megatron-core's own ``IndexedDataset`` (reads our files) and
``IndexedDatasetBuilder`` (writes the same ids: our files must be byte for byte its files),
and transformers' tokenizer with the EOS id appended, which is what Megatron-LM's
``preprocess_data.py --append-eod`` encodes with a Hugging Face tokenizer."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, require_data
from test_data import MODELS, model_dir, write_jsonl

import tokensmith as ts
from tokensmith import data

transformers = pytest.importorskip("transformers")
indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
zstandard = pytest.importorskip("zstandard")

#: One vocabulary over 65,500 ids with a BOS in its template (int32 ids), one without a BOS,
#: and one that fits uint16.
KEYS = ["llama3.1", "qwen2.5", "mistral-v3"]


def documents() -> list[str]:
    """Real documents of several languages: blank-line-separated blocks of the handbooks."""
    require_data()
    docs = []
    for name, n in (("en/debian-handbook.en-US.txt", 120), ("zh/debian-handbook.zh-CN.txt", 60), ("multi/debian-handbook.ru-RU.txt", 40)):
        text = (DATA / "corpora" / name).read_text(encoding="utf-8")
        docs += [d.strip("\n") for d in text.split("\n\n") if d.strip()][200 : 200 + n]
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[str], Path]:
    docs = documents()
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return docs, path


def reference(folder: Path, docs: list[str]) -> list[list[int]]:
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    return [hf(d)["input_ids"] + [hf.eos_token_id] for d in docs]


@pytest.mark.parametrize("key", KEYS)
def test_megatron_output_is_what_megatron_core_writes_and_reads(key, corpus, tmp_path_factory, tmp_path):
    docs, path = corpus
    folder = model_dir(tmp_path_factory, key)
    tok = ts.Tokenizer.from_pretrained(folder)
    result = data.prepare([path], tok, tmp_path / "out", format="megatron", progress=False, num_workers=1)
    assert result.examples == result.rows == len(docs)
    expected = reference(folder, docs)
    assert result.tokens == sum(map(len, expected))

    ds = indexed_dataset.IndexedDataset(str(tmp_path / "out" / "data"))
    assert len(ds) == len(docs)
    assert [ds[i].tolist() for i in range(len(ds))] == expected
    assert ds.document_indices.tolist() == list(range(len(docs) + 1))

    # megatron-core's builder on the same ids, with the dtype it picks for this vocabulary.
    dtype = indexed_dataset.DType.optimal_dtype(tok.vocab_size)
    builder = indexed_dataset.IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)

    for ids in expected:
        builder.add_document(np.array(ids), [len(ids)])
    builder.finalize(str(tmp_path / "ref.idx"))
    for suffix in ("bin", "idx"):
        assert (tmp_path / "out" / f"data.{suffix}").read_bytes() == (tmp_path / f"ref.{suffix}").read_bytes(), suffix

    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["format"] == "megatron" and meta["files"] == ["data.bin", "data.idx"]
    assert meta["dtype"] == np.dtype(dtype).name and meta["documents"] == len(docs)


@pytest.mark.parametrize("key", KEYS)
def test_flat_tokens_are_every_document_with_its_offsets(key, corpus, tmp_path_factory, tmp_path):
    docs, path = corpus
    folder = model_dir(tmp_path_factory, key)
    tok = ts.Tokenizer.from_pretrained(folder)
    data.prepare([path], tok, tmp_path / "out", format="tokens", progress=False)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["dtype"] == ("uint16" if tok.vocab_size <= 1 << 16 else "uint32")
    tokens = np.memmap(tmp_path / "out" / "tokens.bin", dtype=meta["dtype"], mode="r")
    offsets = np.load(tmp_path / "out" / "offsets.npy")
    expected = reference(folder, docs)
    assert offsets.tolist() == [0, *np.cumsum([len(e) for e in expected]).tolist()]
    assert [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == expected


def test_text_files_line_by_line_compressed_and_jsonl_fields_give_the_same_documents(corpus, tmp_path_factory, tmp_path):
    docs, path = corpus
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))

    def tokens(inputs, **kwargs) -> bytes:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        data.prepare(inputs, tok, out, format="tokens", progress=False, **kwargs)
        return (out / "tokens.bin").read_bytes() + (out / "offsets.npy").read_bytes()

    plain = tokens([path])
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(path.read_bytes()))
    (tmp_path / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
    assert tokens([tmp_path / "c.txt.gz"]) == plain
    assert tokens([tmp_path / "c.txt.zst"]) == plain
    lines = write_jsonl(tmp_path / "c.jsonl", [{"body": d} for d in docs])
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.read_bytes()))
    assert tokens([tmp_path / "c.jsonl.zst"], mapping={"body": "text"}) == plain
    # One document per line: the documents' lines, CRLF line ends and a byte-order mark.
    one_line = [d.replace("\n", " ") for d in docs]
    (tmp_path / "lines.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(one_line).encode() + b"\r\n\r\n")
    assert tokens([tmp_path / "lines.txt"], doc_per_line=True) == tokens([write_jsonl(tmp_path / "l.jsonl", [{"text": d} for d in one_line])])


def test_a_block_that_is_not_utf8_is_reported_and_the_others_kept(tmp_path_factory, tmp_path):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    (tmp_path / "c.txt").write_bytes(b"first doc\n\nbad \xff byte\nstill bad\n\nthird doc\n")
    result = data.prepare([tmp_path / "c.txt"], tok, tmp_path / "out", format="megatron", progress=False)
    assert result.examples == 2 and result.skipped == 1
    assert "c.txt:3: not valid UTF-8" in result.errors[0]
    ds = indexed_dataset.IndexedDataset(str(tmp_path / "out" / "data"))
    eos = tok.token_to_id("<|im_end|>")
    assert [ds[i].tolist() for i in range(2)] == [tok.encode("first doc") + [eos], tok.encode("third doc") + [eos]]


@pytest.mark.parametrize("format", ["megatron", "tokens"])
def test_chat_records_and_empty_inputs_are_errors_and_write_nothing(format, tmp_path_factory, tmp_path):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"text": "pre-training"}, {"prompt": "hi", "response": "yo"}])
    with pytest.raises(data.DataError, match="no labels to keep its loss mask"):
        data.prepare([chats], tok, tmp_path / "out", format=format, progress=False)
    (tmp_path / "empty.txt").write_text("\n\n\n", encoding="utf-8")
    with pytest.raises(data.DataError, match="no training example"):
        data.prepare([tmp_path / "empty.txt"], tok, tmp_path / "out", format=format, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="format must be one of"):
        data.prepare([chats], tok, tmp_path / "out", format="arrow")
    with pytest.raises(ValueError, match="Parquet compresses its own columns"):
        (tmp_path / "x.parquet.gz").write_bytes(b"")
        data.prepare([tmp_path / "x.parquet.gz"], tok, tmp_path / "out", format=format)


def test_an_id_that_does_not_fit_the_dtype_is_an_error_never_wrapped(tmp_path):
    from tokensmith.data.token_files import FlatTokensWriter, MegatronWriter

    # A vocabulary of 65,536 fits uint16 exactly: its last id is kept, one past it refused.
    writer = FlatTokensWriter(tmp_path, 1 << 16)
    writer.add([0, 65535])
    with pytest.raises(ValueError, match="id 65536 does not fit the uint16 ids of tokens.bin"):
        writer.add([65536])
    writer.close()
    assert np.fromfile(tmp_path / "tokens.bin", dtype="<u2").tolist() == [0, 65535]
    assert np.load(tmp_path / "offsets.npy").tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"id 1000 is not in the vocabulary \(ids 0-999\)"):
        FlatTokensWriter(tmp_path, 1000).add([5, 1000])
    assert MegatronWriter(tmp_path, "m", 65499).dtype == np.uint16
    assert MegatronWriter(tmp_path, "m", 65500).dtype == np.int32  # megatron-core's own threshold
    assert indexed_dataset.DType.optimal_dtype(65499) == np.uint16
    assert indexed_dataset.DType.optimal_dtype(65500) == np.int32


def test_cli_prepare_writes_megatron_files(corpus, tmp_path_factory, tmp_path):
    docs, path = corpus
    folder = model_dir(tmp_path_factory, "llama3.1")
    lines = write_jsonl(tmp_path / "c.jsonl", [{"body": d} for d in docs[:50]])
    run = subprocess.run(
        [sys.executable, "-m", "tokensmith.cli", "prepare", str(lines), "-t", str(folder), "-o", str(tmp_path / "out"),
         "--format", "megatron", "--text-field", "body", "--workers", "2"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "wrote 50 rows" in run.stdout
    ds = indexed_dataset.IndexedDataset(str(tmp_path / "out" / "data"))
    assert [ds[i].tolist() for i in range(len(ds))] == reference(folder, docs[:50])


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_compressed_file_cut_short_is_an_error_naming_it_never_part_of_a_corpus(suffix, corpus, tmp_path_factory, tmp_path):
    docs, path = corpus
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    body = path.read_bytes()
    packed = gzip.compress(body) if suffix == ".gz" else zstandard.ZstdCompressor().compress(body)
    (tmp_path / f"c.txt{suffix}").write_bytes(packed[: len(packed) // 2])
    for format in ("megatron", "parquet"):
        with pytest.raises(ValueError, match=f"c.txt{suffix}: "):
            data.prepare([tmp_path / f"c.txt{suffix}"], tok, tmp_path / "out", format=format, progress=False)
        assert not (tmp_path / "out").exists()
    (tmp_path / f"bad.txt{suffix}").write_bytes(body[:1000])  # not compressed at all
    with pytest.raises(ValueError, match=f"bad.txt{suffix}: "):
        data.prepare([tmp_path / f"bad.txt{suffix}"], tok, tmp_path / "out", format="tokens", progress=False)
    # Several frames (or members) one after another are one file, read whole.
    block = body + b"\n"  # a blank line between the copies' documents
    whole = gzip.compress(block) * 2 if suffix == ".gz" else zstandard.ZstdCompressor().compress(block) * 2
    (tmp_path / f"two.txt{suffix}").write_bytes(whole)
    result = data.prepare([tmp_path / f"two.txt{suffix}"], tok, tmp_path / "out", format="tokens", progress=False)
    assert result.examples == 2 * len(docs)


def test_a_record_the_tokenizer_refuses_is_reported_with_its_line_and_the_rest_kept(tmp_path_factory, tmp_path):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    lines = ['{"text": "first"}', '{"text": "bad \\ud800 surrogate"}', '{"text": "third"}']
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = data.prepare([tmp_path / "s.jsonl"], tok, tmp_path / "out", format="megatron", progress=False)
    assert result.examples == 2 and result.skipped == 1
    assert result.errors[0].startswith(f"{tmp_path / 's.jsonl'}:2: ") and "surrogate" in result.errors[0]
    ds = indexed_dataset.IndexedDataset(str(tmp_path / "out" / "data"))
    eos = tok.token_to_id("<|im_end|>")
    assert [ds[i].tolist() for i in range(2)] == [tok.encode("first") + [eos], tok.encode("third") + [eos]]
    with pytest.raises(data.DataError, match="s.jsonl:2: "):
        data.prepare([tmp_path / "s.jsonl"], tok, tmp_path / "out2", format="tokens", on_error="raise", progress=False)


def test_the_text_field_is_taken_from_that_field_only(tmp_path_factory, tmp_path):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    records = [{"body": "B1", "text": "T1"}, {"text": "T2", "body": "B2"}, {"text": "T3"}]
    path = write_jsonl(tmp_path / "f.jsonl", records)
    for format in ("tokens", "parquet"):
        result = data.prepare([path], tok, tmp_path / format, format=format, mapping={"body": "text"}, progress=False)
        assert result.examples == 2 and result.skipped == 1, format
        assert result.errors[0].startswith(f"{path}:3: ")
    offsets = np.load(tmp_path / "tokens" / "offsets.npy")
    tokens = np.fromfile(tmp_path / "tokens" / "tokens.bin", dtype="<u4")
    eos = tok.token_to_id("<|im_end|>")
    assert [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == [tok.encode("B1") + [eos], tok.encode("B2") + [eos]]


def test_ids_past_the_entry_count_fit_and_parquet_options_are_refused(tmp_path):
    require_data()
    # cl100k's specials have holes: 100,261 entries, ids up to 100276.
    tok = ts.Tokenizer.from_file(DATA / "tokenizers" / "cl100k_base" / "tokenizer.json")
    assert tok.vocab_size < 100277 and tok.token_to_id("<|endofprompt|>") == 100276
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}])
    data.prepare([path], tok, tmp_path / "out", format="megatron", eos="<|endofprompt|>", progress=False)
    ds = indexed_dataset.IndexedDataset(str(tmp_path / "out" / "data"))  # kept: its items view its mmap
    assert ds[0].tolist() == tok.encode("hello") + [100276]
    for option in ({"max_length": 2048}, {"pack": False}):
        with pytest.raises(ValueError, match="shape Parquet rows"):
            data.prepare([path], tok, tmp_path / "out2", format="tokens", eos="<|endofprompt|>", **option)
