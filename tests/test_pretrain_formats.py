"""Token streams for pre-training (issue 14): ``prepare(format="megatron" | "tokens")`` and
plain-text / compressed inputs.

References: megatron-core's own ``IndexedDataset`` (reads our files) and
``IndexedDatasetBuilder`` (writes the same ids: our files must be byte for byte its files),
and transformers' tokenizer with the EOS id appended, which is what Megatron-LM's
``preprocess_data.py --append-eod`` encodes with a Hugging Face tokenizer."""

from __future__ import annotations

import gzip
import importlib
import itertools
import json
import re
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
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    with pytest.raises(data.DataError, match="all 2 records were skipped"):
        data.prepare([bad], tok, tmp_path / "out", format=format, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "chat.jsonl", "empty.txt"]  # no .out.partial
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

    # --resume with nothing to resume from is a whole run; --block-size with --keep-remainder.
    for out, options in (("resumed", ["--format", "megatron", "--resume"]), ("blocks", ["--block-size", "64", "--keep-remainder"])):
        run = subprocess.run(
            [sys.executable, "-m", "tokensmith.cli", "prepare", str(lines), "-t", str(folder), "-o", str(tmp_path / out),
             "--text-field", "body", *options],
            capture_output=True, text=True,
        )
        assert run.returncode == 0, run.stderr
    assert (tmp_path / "resumed" / "data.bin").read_bytes() == (tmp_path / "out" / "data.bin").read_bytes()
    blocks = parquet_rows(tmp_path / "blocks")["input_ids"]
    assert sum(blocks, []) == sum(reference(folder, docs[:50]), []) and {len(b) for b in blocks[:-1]} == {64}


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


def test_a_record_that_stops_the_run_is_reported_before_a_cut_file_after_it(corpus, tmp_path_factory, tmp_path):
    """A chat record in a token stream, or a bad line under on_error="raise", stops the
    run where it is: reading does not go on, so a file cut short further on cannot hide it."""
    docs, _ = corpus
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    for bad, on_error, message in (({"messages": [{"role": "user", "content": "hi"}]}, "skip", ":11: a chat record in a token stream"),
                                   ("not json", "raise", ":11: invalid JSON")):
        lines = [json.dumps({"text": d}) for d in docs[:10]] + [bad if isinstance(bad, str) else json.dumps(bad)]
        lines += [json.dumps({"text": d}) for d in docs[10:]] * 20
        packed = gzip.compress(("\n".join(lines) + "\n").encode())
        (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) * 3 // 4])
        with pytest.raises(data.DataError, match=re.escape(f"cut.jsonl.gz{message}")):
            data.prepare([tmp_path / "cut.jsonl.gz"], tok, tmp_path / "out", format="tokens", progress=False, on_error=on_error)
        assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


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


def _documents_line_by_line(raw: bytes, doc_per_line: bool) -> list[tuple[int, str | None]]:
    """The text format's definition, one line at a time: (first line, text), or (the line of
    the first bad byte, None) where the document is not UTF-8. ``_plain_text`` reads in chunks with a regex; this is its model."""
    out, block, first = [], [], 0
    lines = raw.split(b"\n")
    ends = [True] * (len(lines) - 1) + [False]
    if lines[-1] == b"":
        lines, ends = lines[:-1], ends[:-1]

    def done():
        text = b"".join(block)
        text = text[:-1] if text.endswith(b"\n") else text
        try:
            out.append((first, text.decode("utf-8")))
        except UnicodeDecodeError as e:
            out.append((first + text.count(b"\n", 0, e.start), None))

    for n, (line, ended) in enumerate(zip(lines, ends), 1):
        if n == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        line = (line + b"\n" if ended else line).replace(b"\r\n", b"\n")
        blank = not line.strip()
        if block and (blank or doc_per_line):
            done()
            block = []
        if not blank:
            if not block:
                first = n
            block.append(line)
    if block:
        done()
    return out


from hypothesis import given, settings, strategies as st  # noqa: E402

_PIECES = [b"a", b"b c", b" ", b"\t", b"\r", b"\n", b"\n\n", b"\r\n", b"\x0b", b"\xff", "\u00e9".encode(), b"\xef\xbb\xbf"]


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.sampled_from(_PIECES), max_size=40), chunk=st.integers(1, 9), doc_per_line=st.booleans())
def test_text_files_are_cut_into_documents_as_line_by_line_reading_would(tmp_path_factory, pieces, chunk, doc_per_line):
    from tokensmith.data.sources import BadRecord, _plain_text

    raw = b"".join(pieces)
    path = tmp_path_factory.mktemp("txt") / "t.txt"
    path.write_bytes(raw)
    with open(path, "rb") as f:
        got = [(r.line, None if isinstance(r, BadRecord) else r.data["text"]) for r in _plain_text(path, f, doc_per_line, chunk)]
    assert got == _documents_line_by_line(raw, doc_per_line)


def group_texts(examples, block_size):
    """transformers' ``examples/pytorch/language-modeling/run_clm.py`` ``group_texts``, as it
    is there (Apache-2.0), with its ``block_size`` as an argument."""
    from itertools import chain

    concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
    total_length = len(concatenated_examples[list(examples.keys())[0]])
    total_length = (total_length // block_size) * block_size
    result = {
        k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
        for k, t in concatenated_examples.items()
    }
    result["labels"] = result["input_ids"].copy()
    return result


def parquet_rows(folder: Path) -> dict[str, list[list[int]]]:
    import pyarrow.parquet as pq

    meta = json.loads((folder / "meta.json").read_text())
    tables = [pq.read_table(folder / f) for f in meta["files"]]
    return {c: [row for t in tables for row in t.column(c).to_pylist()] for c in ("input_ids", "labels")}


@pytest.mark.parametrize("key", ["llama3.1", "qwen2.5"])
def test_blocks_are_what_run_clm_group_texts_makes(key, corpus, tmp_path_factory, tmp_path):
    docs, path = corpus
    folder = model_dir(tmp_path_factory, key)
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    # run_clm's tokenize_function (the tokenizer's ids and mask), each document then ending in the EOS id.
    encoded = hf(docs)
    examples = {
        "input_ids": [ids + [hf.eos_token_id] for ids in encoded["input_ids"]],
        "attention_mask": [mask + [1] for mask in encoded["attention_mask"]],
    }
    total = sum(map(len, examples["input_ids"]))
    for block_size in (1024, 77):
        expected = group_texts(examples, block_size)
        out = tmp_path / f"b{block_size}"
        result = data.prepare([path], tok, out, block_size=block_size, rows_per_shard=50, progress=False)
        rows = parquet_rows(out)
        assert rows["input_ids"] == expected["input_ids"] and rows["labels"] == expected["labels"]
        assert result.rows == len(expected["input_ids"]) and result.tokens == total
        assert total % block_size and f"the last {total % block_size} tokens" in result.warnings[-1]
        meta = json.loads((out / "meta.json").read_text())
        assert (meta["block_size"], meta["documents"], meta["rows"]) == (block_size, len(docs), result.rows)
        assert len(meta["files"]) == -(-result.rows // 50)
    kept = data.prepare([path], tok, tmp_path / "kept", block_size=77, keep_remainder=True, progress=False)
    rows = parquet_rows(tmp_path / "kept")["input_ids"]
    assert sum(map(len, rows)) == total and rows[:-1] == group_texts(examples, 77)["input_ids"]
    assert 0 < len(rows[-1]) < 77 and kept.rows == len(rows) and not kept.warnings
    # A corpus shorter than one block: group_texts gives no row, which is an error here.
    assert group_texts(examples, total + 1)["input_ids"] == []
    with pytest.raises(data.DataError, match=f"the corpus is {total} tokens, fewer than one block of {total + 1}"):
        data.prepare([path], tok, tmp_path / "short", block_size=total + 1, progress=False)
    assert not (tmp_path / "short").exists()
    short = data.prepare([path], tok, tmp_path / "short", block_size=total + 1, keep_remainder=True, progress=False)
    assert short.rows == 1 and parquet_rows(tmp_path / "short")["input_ids"] == [sum(examples["input_ids"], [])]


def test_block_options_are_checked(tmp_path_factory, tmp_path, corpus):
    _, path = corpus
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    with pytest.raises(ValueError, match="block_size"):
        data.prepare([path], tok, tmp_path / "a", format="megatron", block_size=128, progress=False)
    with pytest.raises(ValueError, match="must be positive"):
        data.prepare([path], tok, tmp_path / "a", block_size=0, progress=False)
    with pytest.raises(ValueError, match="keep_remainder"):
        data.prepare([path], tok, tmp_path / "a", keep_remainder=True, progress=False)
    with pytest.raises(ValueError, match="block_size / --block-size cuts the blocks"):
        data.prepare([path], tok, tmp_path / "a", block_size=128, max_length=64, progress=False)
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "hi", "response": "yo"}])
    with pytest.raises(data.DataError, match="no labels"):
        data.prepare([chats], tok, tmp_path / "a", block_size=128, progress=False)
    assert not (tmp_path / "a").exists()


def test_progress_counts_bytes_read_on_disk_and_shows_rate_and_eta(corpus, tmp_path_factory, tmp_path, capsys):
    from tokensmith.data.prepare import PrepareResult, _Progress
    from tokensmith.data.sources import ReadProgress, read_records

    docs, path = corpus
    packed = tmp_path / "c.txt.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress((path.read_bytes() + b"\n") * 3))
    files = [path, packed]
    reading = ReadProgress(sum(f.stat().st_size for f in files))
    seen = []
    for n, _ in enumerate(read_records(files, progress=reading)):
        seen.append(reading.bytes)
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] <= reading.total == reading.bytes
    assert n + 1 == 4 * len(docs)

    half = ReadProgress(100_000_000)
    half._done = 50_000_000
    line = _Progress(True, half, "documents").line(PrepareResult(out_dir="x", examples=1234, tokens=5_678_901), 80.0)
    assert "1,234 documents  5,678,901 tokens  0.6 MB/s  50% of 100.0 MB, ETA 1:20" in line

    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    data.prepare(files, tok, tmp_path / "out", format="tokens", progress=True)
    last = capsys.readouterr().err.rstrip().split("\r")[-1]
    assert f"{4 * len(docs):,} documents" in last and f"100% of {reading.total / 1e6:,.1f} MB, ETA 0:00" in last


_KILLED_RUN = """
import os, sys
import tokensmith as ts
from tokensmith import data
import importlib

prepare_module = importlib.import_module("tokensmith.data.prepare")
prepare_module._BATCH_CHARS = 5_000
save = prepare_module._ResumeState.save
calls = 0

def save_then_die(self):
    global calls
    calls += 1
    if calls == 4:
        self.writer.state()  # this batch's ids are on disk, the state still says 3 batches
        os._exit(9)
    save(self)

prepare_module._ResumeState.save = save_then_die
folder, out, format, *inputs = sys.argv[1:]
data.prepare(inputs, ts.Tokenizer.from_pretrained(folder), out, format=format, progress=False)
"""


def _same_output(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for f in a.iterdir():
        if f.name == "meta.json":
            meta_a, meta_b = (json.loads((d / "meta.json").read_text()) for d in (a, b))
            for m, d in ((meta_a, a), (meta_b, b)):
                del m["seconds"]
                m["out_dir"] = m["out_dir"].replace(str(d), "OUT")
            assert meta_a == meta_b
        else:
            assert f.read_bytes() == (b / f.name).read_bytes(), f.name


def _interrupted_after_a_batch(monkeypatch, run) -> None:
    """``run()``, stopped by Ctrl-C when it is about to save its second state (batch or shard)."""
    prepare_module = importlib.import_module("tokensmith.data.prepare")
    save, calls = prepare_module._ResumeState.save, []

    def interrupt(self):
        calls.append(self.records)
        if len(calls) == 2:
            raise KeyboardInterrupt
        save(self)

    with monkeypatch.context() as m:
        m.setattr(prepare_module._ResumeState, "save", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run()


@pytest.mark.parametrize("format", ["megatron", "tokens"])
def test_a_killed_run_resumes_to_the_same_bytes(format, corpus, tmp_path_factory, tmp_path, monkeypatch):
    prepare_module = importlib.import_module("tokensmith.data.prepare")
    docs, path = corpus
    folder = model_dir(tmp_path_factory, "mistral-v3")
    tok = ts.Tokenizer.from_pretrained(folder)
    # A bad line and a record the tokenizer refuses, to be counted once, not once per run.
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"text": "a"}\nnot json\n{"text": "\\ud800"}\n' + "".join(json.dumps({"text": d}) + "\n" for d in docs[:50]))
    inputs = [path, extra]
    monkeypatch.setattr(prepare_module, "_BATCH_CHARS", 5_000)
    whole = data.prepare(inputs, tok, tmp_path / "whole", format=format, progress=False)
    assert whole.skipped == 2

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(folder), str(out), format, *map(str, inputs)], capture_output=True, text=True)
    partial = tmp_path / ".out.partial"
    assert done.returncode == 9, done.stderr
    assert not out.exists() and (partial / "resume.json").exists()
    state = json.loads((partial / "resume.json").read_text())
    assert 0 < state["records"] < len(docs) and state["result"]["examples"] == state["writer"]["documents"]

    # The records done are not read again (only counted off): the reader gives the others only.
    read, read_records = [], prepare_module.read_records
    with monkeypatch.context() as m:
        m.setattr(prepare_module, "read_records", lambda *a, **k: (read.append(r) or r for r in read_records(*a, **k)))
        resumed = data.prepare(inputs, tok, out, format=format, progress=False, resume=True)
    assert len(read) == whole.examples + whole.skipped - state["records"]
    assert not partial.exists() and (resumed.examples, resumed.skipped, resumed.tokens) == (whole.examples, 2, whole.tokens)
    _same_output(tmp_path / "whole", out)

    # Interrupted in this process (Ctrl-C): the finished part is kept, and resumed again.
    _interrupted_after_a_batch(monkeypatch, lambda: data.prepare(inputs, tok, tmp_path / "again", format=format, progress=False))
    assert (tmp_path / ".again.partial" / "resume.json").exists()
    data.prepare(inputs, tok, tmp_path / "again", format=format, progress=False, resume=True)
    _same_output(tmp_path / "whole", tmp_path / "again")


_KILLED_PARQUET_RUN = """
import json, os, sys
import tokensmith as ts
from tokensmith import data
import importlib

prepare_module = importlib.import_module("tokensmith.data.prepare")
prepare_module._BATCH_CHARS = 5_000
save, write = prepare_module._ResumeState.save, prepare_module._ShardWriter._write
saves = 0

def counted_save(self):
    global saves
    saves += 1
    save(self)

def write_then_die(self, table):
    write(self, table)
    if saves == 3:
        os._exit(9)  # the fourth shard half-written; the state says three

prepare_module._ResumeState.save = counted_save
prepare_module._ShardWriter._write = write_then_die
folder, out, options, *inputs = sys.argv[1:]
data.prepare(inputs, ts.Tokenizer.from_pretrained(folder), out, progress=False, **json.loads(options))
"""


@pytest.mark.parametrize("kind", ["packed", "unpacked", "blocks"])
def test_a_killed_parquet_run_resumes_to_the_same_bytes(kind, corpus, tmp_path_factory, tmp_path, monkeypatch):
    """Parquet runs save their state when a shard is closed, with what is not in a shard yet
    (the packer's examples, the ids short of a block): killed with a shard half-written, or
    stopped by Ctrl-C, they resume to what one run writes."""
    prepare_module = importlib.import_module("tokensmith.data.prepare")
    docs, path = corpus
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(folder)
    if kind == "blocks":
        extra = tmp_path / "extra.jsonl"
        extra.write_text('{"text": "a"}\nnot json\n{"text": "\\ud800"}\n' + "".join(json.dumps({"text": d}) + "\n" for d in docs[:50]))
        inputs, options, skipped = [path, extra], {"block_size": 64, "rows_per_shard": 40}, 2
    else:
        chats = [{"messages": [{"role": "user", "content": q[:200]}, {"role": "assistant", "content": a[:600]}]}
                 for q, a in zip(docs[::2], docs[1::2])]
        chats[10:10] = [{"messages": [{"role": "user", "content": "no reply"}]}, {"bogus": 1}]
        lines = [json.dumps(c, ensure_ascii=False) for c in chats]
        lines.insert(20, "not json")
        inputs = [tmp_path / "chats.jsonl"]
        inputs[0].write_text("\n".join(lines) + "\n", encoding="utf-8")
        options = {"max_length": 256, "rows_per_shard": 7} if kind == "packed" else {"pack": False, "max_length": 256, "rows_per_shard": 9}
        skipped = 3
    monkeypatch.setattr(prepare_module, "_BATCH_CHARS", 5_000)
    whole = data.prepare(inputs, tok, tmp_path / "whole", progress=False, **options)
    assert whole.skipped == skipped and len(whole.errors) == skipped and len(list((tmp_path / "whole").glob("*.parquet"))) > 5

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _KILLED_PARQUET_RUN, str(folder), str(out), json.dumps(options), *map(str, inputs)],
                          capture_output=True, text=True)
    partial = tmp_path / ".out.partial"
    assert done.returncode == 9, done.stderr
    assert not out.exists() and (partial / "resume.json").exists() and (partial / "part-00003.parquet").exists()
    state = json.loads((partial / "resume.json").read_text())
    assert state["writer"]["files"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert 0 < state["records"] < len(docs) // (1 if kind == "blocks" else 2)

    resumed = data.prepare(inputs, tok, out, progress=False, resume=True, **options)
    assert not partial.exists() and (resumed.examples, resumed.skipped, resumed.tokens) == (whole.examples, skipped, whole.tokens)
    _same_output(tmp_path / "whole", out)

    _interrupted_after_a_batch(monkeypatch, lambda: data.prepare(inputs, tok, tmp_path / "again", progress=False, **options))
    assert (tmp_path / ".again.partial" / "resume.json").exists()
    data.prepare(inputs, tok, tmp_path / "again", progress=False, resume=True, **options)
    _same_output(tmp_path / "whole", tmp_path / "again")

    # Stopped just after the last save (the last shard closed, the folder not renamed yet).
    save, saves = prepare_module._ResumeState.save, []
    with monkeypatch.context() as m:
        m.setattr(prepare_module._ResumeState, "save", lambda self: (saves.append(1), save(self)))
        data.prepare(inputs, tok, tmp_path / "count", progress=False, **options)

    def stop_after_the_last(self):
        save(self)
        saves.append(1)
        if len(saves) == 2 * last:
            raise KeyboardInterrupt

    last = len(saves)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(prepare_module._ResumeState, "save", stop_after_the_last)
        data.prepare(inputs, tok, tmp_path / "late", progress=False, **options)
    data.prepare(inputs, tok, tmp_path / "late", progress=False, resume=True, **options)
    _same_output(tmp_path / "whole", tmp_path / "late")


def test_resume_refuses_a_changed_job_and_starts_afresh_without_state(corpus, tmp_path_factory, tmp_path, monkeypatch):
    prepare_module = importlib.import_module("tokensmith.data.prepare")
    docs, path = corpus
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    monkeypatch.setattr(prepare_module, "_BATCH_CHARS", 5_000)
    _interrupted_after_a_batch(monkeypatch, lambda: data.prepare([path], tok, tmp_path / "out", format="tokens", progress=False))
    copy = tmp_path / "corpus.txt"
    copy.write_bytes(path.read_bytes() + b"\n\none more document\n")
    with pytest.raises(data.DataError, match="cannot resume .*: changed since the run that wrote it: inputs "):
        data.prepare([copy], tok, tmp_path / "out", format="tokens", progress=False, resume=True)
    with pytest.raises(data.DataError, match="changed since the run that wrote it: eos_id, inputs "):
        data.prepare([copy], tok, tmp_path / "out", format="tokens", progress=False, resume=True, eos="<|endoftext|>")
    # Without resume the partial work is dropped; with resume and nothing saved, it starts afresh.
    fresh = data.prepare([path], tok, tmp_path / "out", format="tokens", progress=False)
    assert fresh.examples == len(docs) and not (tmp_path / ".out.partial").exists()
    data.prepare([path], tok, tmp_path / "other", format="tokens", progress=False, resume=True)
    _same_output(tmp_path / "out", tmp_path / "other")
    # A run that fails on its data leaves nothing to resume from.
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x" * 30_000}, {"prompt": "a", "response": "b"}])
    with pytest.raises(data.DataError, match="no labels"):
        data.prepare([bad], tok, tmp_path / "bad", format="tokens", progress=False)
    assert not (tmp_path / ".bad.partial").exists() and not (tmp_path / "bad").exists()


def test_the_tokenizer_fingerprint_is_the_same_exactly_for_the_same_tokenizer_json():
    """meta.json's and the resume check's ``tokenizer_sha256`` is of the core's fingerprint:
    equal for equal tokenizer.json text, different for any change, the vocab and merges too."""
    require_data()
    base = json.loads((DATA / "tokenizers" / "gpt2" / "tokenizer.json").read_text(encoding="utf-8"))

    def edited(edit):
        variant = json.loads(json.dumps(base))
        edit(variant)
        return ts.Tokenizer.from_str(json.dumps(variant))

    def swap_ids(t):
        vocab = t["model"]["vocab"]
        vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]

    variants = [
        ts.Tokenizer.from_str(json.dumps(base)),
        edited(lambda t: t["model"]["merges"].pop()),
        edited(lambda t: t["model"]["merges"].insert(0, t["model"]["merges"].pop(1))),
        edited(swap_ids),
        edited(lambda t: t["model"]["vocab"].update({"zzqq": len(t["model"]["vocab"])})),
        edited(lambda t: t.update(normalizer={"type": "NFC"})),
        edited(lambda t: t["pre_tokenizer"].update(add_prefix_space=True)),
        edited(lambda t: t["model"].update(unk_token="<|endoftext|>")),
        edited(lambda t: t["added_tokens"][0].update(special=False)),
    ]
    added = ts.Tokenizer.from_str(json.dumps(base))
    added.add_tokens(["<task>"])
    variants.append(added)
    texts = [v.to_str() for v in variants]
    prints = [v._core.fingerprint() for v in variants]
    assert len(set(texts)) == len(texts) and len(set(prints)) == len(prints)
    for text, fingerprint in zip(texts, prints):
        assert ts.Tokenizer.from_str(text)._core.fingerprint() == fingerprint


def test_text_reading_is_linear_on_long_whitespace(tmp_path):
    from tokensmith.data.sources import read_records

    # A blank line of 300,000 spaces: the document regex once tried it again from every byte
    # (minutes); the line-by-line reader, and this one, take milliseconds.
    (tmp_path / "t.txt").write_bytes(b"one\n" + b" " * 300_000 + b"\ntwo\n\n" + b"\t" * 300_000 + b"three")
    for per_line, expected in ((False, [(1, "one"), (3, "two"), (5, "\t" * 300_000 + "three")]),
                               (True, [(1, "one"), (3, "two"), (5, "\t" * 300_000 + "three")])):
        assert [(r.line, r.data["text"]) for r in read_records([tmp_path / "t.txt"], doc_per_line=per_line)] == expected


def _reader_inputs(folder: Path) -> list[tuple[Path, bool]]:
    """A file of every kind ``read_records`` reads, with what trips a reader that counts
    records differently from its own: a byte-order mark, CRLF line ends, blank and
    whitespace-only lines (a line of U+3000 is blank to ``str.strip``, not to ``bytes.strip``),
    bytes that are not UTF-8, lines that are not JSON or not an object; and a Parquet file
    of several row groups. ``(path, doc_per_line)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "\ufeffone\r\ntwo\r\n\r\nthree\n \n\nfour \xe9\n\n\n  five\n"
    (folder / "t.txt").write_bytes(text.encode() + b"bad \xff byte\n\nsix")
    lines = ['{"text": "a"}', "", "\u3000", "not json", "[1]", '{"text": "b"}', "  ", '{"text": "c\\u3000"}']
    jsonl = ("\ufeff" + "\n".join(lines) + "\n").encode()
    jsonl = jsonl.replace(b"not json", b"not \xfe json") + b'{"text": "d"}\n'
    (folder / "l.jsonl").write_bytes(jsonl)
    (folder / "l.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (folder / "t.txt.zst").write_bytes(zstandard.ZstdCompressor().compress((folder / "t.txt").read_bytes()))
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(2500)]}), folder / "r.parquet", row_group_size=1000)
    return [(folder / "t.txt", False), (folder / "t.txt", True), (folder / "l.jsonl", False), (folder / "l.jsonl.gz", False),
            (folder / "t.txt.zst", False), (folder / "r.parquet", False)]


def test_a_resumed_read_skips_the_records_done_exactly_and_without_parsing_them(tmp_path, monkeypatch):
    """``read_records(skip=N)`` is every record after the first N, as a resumed run needs
    them, in every reader; files whose records ``progress.file_records`` counts as all done
    are not opened; the records skipped are counted, not parsed."""
    from tokensmith.data import sources
    from tokensmith.data.sources import ReadProgress, read_records

    inputs = _reader_inputs(tmp_path)
    for path, per_line in inputs:
        full = list(read_records([path], doc_per_line=per_line))
        assert any(isinstance(r, sources.BadRecord) for r in full) or path.suffix == ".parquet"
        skips = range(len(full) + 2) if len(full) < 100 else [0, 1, 999, 1000, 1001, 1024, 2048, 2499, 2500, 2501]
        for skip in skips:
            assert list(read_records([path], doc_per_line=per_line, skip=skip)) == full[skip:], (path, per_line, skip)

    # Across files: those counted in file_records (the run being resumed read them to the end)
    # are skipped whole; the others read, their records counted off.
    files = [tmp_path / "l.jsonl", tmp_path / "r.parquet", tmp_path / "t.txt"]
    full, counts = [], []
    for f in files:
        full += list(read_records([f]))
        counts.append(len(full) - sum(counts))
    progress = ReadProgress()
    assert list(read_records(files, progress=progress)) == full and progress.file_records == counts
    for known in range(4):
        for skip in (0, 3, counts[0], counts[0] + 1, counts[0] + 2000, counts[0] + counts[1], len(full) - 1, len(full)):
            progress = ReadProgress(file_records=counts[:known])
            assert list(read_records(files, skip=skip, progress=progress)) == full[skip:], (known, skip)
            assert progress.file_records == counts

    # A file all done is not opened (this one cannot be read), nor parsed, when it is counted.
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b not gzip")
    lines = list(read_records([tmp_path / "l.jsonl"]))
    assert list(read_records([broken, tmp_path / "l.jsonl"], skip=9, progress=ReadProgress(file_records=[7]))) == lines[2:]
    with pytest.raises(ValueError, match="broken.jsonl.gz"):
        list(read_records([broken, tmp_path / "l.jsonl"], skip=9))
    parsed = []
    monkeypatch.setattr(sources, "json", type("json", (), {"loads": lambda s: (parsed.append(s), json.loads(s))[1],
                                                           "JSONDecodeError": json.JSONDecodeError}))
    plain = write_jsonl(tmp_path / "p.jsonl", [{"text": str(i)} for i in range(50)])
    assert [r.data["text"] for r in read_records([plain], skip=45)] == ["45", "46", "47", "48", "49"] and len(parsed) == 5


def test_a_resumed_run_counts_only_what_it_reads_in_its_rate_and_eta(tmp_path):
    """The progress line of a resumed run: MB/s and the time left from the bytes read after
    the records done before it (``ReadProgress.skipped``), not from the whole input."""
    from tokensmith.data.prepare import PrepareResult, _Progress
    from tokensmith.data.sources import ReadProgress, read_records

    resumed = ReadProgress(100_000_000)
    resumed._done, resumed.skipped = 50_000_000, 40_000_000
    line = _Progress(True, resumed, "documents").line(PrepareResult(out_dir="x", examples=1234, tokens=5_678_901), 80.0)
    assert "0.1 MB/s  50% of 100.0 MB, ETA 6:40" in line  # 10 MB in 80 s; 50 MB to go

    files = [tmp_path / "l.jsonl", tmp_path / "r.parquet", tmp_path / "t.txt"]
    _reader_inputs(tmp_path)
    sizes = [f.stat().st_size for f in files]
    counts = [len(list(read_records([f]))) for f in files]
    fresh = ReadProgress(sum(sizes))
    next(read_records(files, progress=fresh))
    assert fresh.skipped == 0
    # Past the first file (counted as done: not opened) and into the second.
    past = ReadProgress(sum(sizes), file_records=counts[:1])
    records = read_records(files, skip=counts[0] + 1500, progress=past)
    assert next(records).line == 1501 and sizes[0] < past.skipped == past.bytes < sizes[0] + sizes[1]
    list(records)
    assert past.bytes == sum(sizes) and past.skipped < past.bytes
    # Nothing left to read: all of it was done before.
    done = ReadProgress(sum(sizes), file_records=counts)
    assert list(read_records(files, skip=sum(counts), progress=done)) == [] and done.skipped == done.bytes == sum(sizes)


def test_progress_moves_within_a_parquet_file(tmp_path):
    from tokensmith.data.sources import ReadProgress, read_records

    _reader_inputs(tmp_path)
    path = tmp_path / "r.parquet"
    progress = ReadProgress(path.stat().st_size)
    seen = [progress.bytes for _ in read_records([path], progress=progress)]
    assert seen == sorted(seen) and len(set(seen)) >= 3 and 0 < seen[0] and seen[-1] <= progress.bytes == path.stat().st_size


def test_bad_records_are_reported_as_they_come(tmp_path_factory, tmp_path, monkeypatch):
    prepare_module = importlib.import_module("tokensmith.data.prepare")
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    lines = tmp_path / "c.jsonl"
    lines.write_text("not json\n" * 5000 + '{"text": "the only document"}\n')
    saves = []
    save = prepare_module._ResumeState.save
    monkeypatch.setattr(prepare_module._ResumeState, "save", lambda self: (saves.append(self.records), save(self)))
    result = data.prepare([lines], tok, tmp_path / "out", format="tokens", progress=False)
    assert result.skipped == 5000 and result.examples == 1
    assert saves == [1024, 2048, 3072, 4096, 5001]  # batches of bad records, never all of them held
    # With on_error="raise" the first one stops the run, whatever follows it.
    endless = itertools.chain([{"body": "no text field"}], ({"text": "x"} for _ in itertools.count()))
    with pytest.raises(data.DataError, match="<iterable>:1: ValueError: unknown record shape"):
        data.prepare(endless, tok, tmp_path / "raised", format="tokens", progress=False, on_error="raise")


def test_a_run_stopped_while_writing_the_index_or_resumed_with_other_options_still_resumes(corpus, tmp_path_factory, tmp_path, monkeypatch):
    from tokensmith.data import token_files

    prepare_module = importlib.import_module("tokensmith.data.prepare")
    _, path = corpus
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "mistral-v3"))
    monkeypatch.setattr(prepare_module, "_BATCH_CHARS", 5_000)
    data.prepare([path], tok, tmp_path / "whole", format="megatron", progress=False)

    write_index = token_files.MegatronWriter._write_index

    def interrupted(self, lengths):
        write_index(self, lengths[:3])  # part of the index is on disk
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(token_files.MegatronWriter, "_write_index", interrupted)
        with pytest.raises(KeyboardInterrupt):
            data.prepare([path], tok, tmp_path / "out", format="megatron", progress=False)
    # Resuming with another format is refused, and leaves nothing of that format behind.
    with pytest.raises(data.DataError, match="changed since the run that wrote it: format"):
        data.prepare([path], tok, tmp_path / "out", format="tokens", progress=False, resume=True)
    data.prepare([path], tok, tmp_path / "out", format="megatron", progress=False, resume=True)
    _same_output(tmp_path / "whole", tmp_path / "out")


def test_token_file_writers_start_new_files(tmp_path):
    from tokensmith.data.token_files import FlatTokensWriter

    for ids in ([1, 2, 3, 4, 5], [7, 8]):
        with FlatTokensWriter(tmp_path, 100) as w:
            w.add(ids)
    assert np.fromfile(tmp_path / "tokens.bin", dtype=np.uint16).tolist() == [7, 8]
    assert np.load(tmp_path / "offsets.npy").tolist() == [0, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offsets.npy", "tokens.bin"]
