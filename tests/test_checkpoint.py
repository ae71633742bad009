"""tokensmith.checkpoint.add_tokens and `tokensmith add-tokens`, end to end with transformers.

Small randomly initialized Llama models (bfloat16, hidden size 16) with real tokenizers from
the shared data, saved single-file and sharded, tied and untied. After add-tokens,
transformers must load the folder, each new token must encode to exactly its id, the new rows
must be what the init method says (references computed here with numpy and the reference
tokenizer), every other tensor must be bit-identical, and generation must run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import TOKENIZERS_DIR, require_data

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ml_dtypes = pytest.importorskip("ml_dtypes")
from safetensors import safe_open  # noqa: E402  (comes with transformers)

import tokensmith._safetensors as st  # noqa: E402
from tokensmith import CheckpointError, InvalidInputError  # noqa: E402
from tokensmith.checkpoint import add_tokens  # noqa: E402
from tokensmith.cli import main as cli  # noqa: E402

EOS = {"llama3": "<|end_of_text|>", "qwen2": "<|endoftext|>", "gemma4": "<eos>", "mistral-v3": "</s>", "tekken": "</s>",
       "llama2": "</s>"}
# Qwen pads its matrices past the tokenizer (151646 tokens)
ROWS = {"llama3": 128256, "qwen2": 151936, "gemma4": 262144, "mistral-v3": 32768, "tekken": 131072, "llama2": 32000}
NEW = ["<|box_start|>", "<|box_end|>", "<tool_call>"]


def make_model(folder: Path, name: str, tied: bool, sharded: bool) -> Path:
    require_data()
    config = transformers.LlamaConfig(
        vocab_size=ROWS[name], hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="3MB" if sharded else "10GB")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZERS_DIR / name / "tokenizer.json"), eos_token=EOS[name])
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache: dict[tuple, Path] = {}

    def get(name: str, tied: bool, sharded: bool) -> Path:
        key = (name, tied, sharded)
        if key not in cache:
            cache[key] = make_model(tmp_path_factory.mktemp("-".join(map(str, key))), *key)
        return cache[key]

    return get


def tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a folder as raw bits (bfloat16 as uint16)."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                out[name] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    return out


def as_f64(bits: np.ndarray) -> np.ndarray:
    return bits.view(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    return values.astype(ml_dtypes.bfloat16).view(np.int16)


def reserved_ids(folder: Path) -> list[int]:
    """Ids of the reserved slots: never trained, never in the statistics."""
    data = json.loads((folder / "tokenizer.json").read_text())
    return sorted(t["id"] for t in data["added_tokens"] if "reserved_special_token" in t["content"])


def grown_matrices(old: dict[str, np.ndarray], new: dict[str, np.ndarray], ids: list[int], tied: bool) -> list[str]:
    """The embedding and head names, after checking that every other tensor is bit for bit
    the same and that in those two every row but `ids` is."""
    assert set(old) == set(new)
    matrices = [n for n in old if n.endswith(("embed_tokens.weight", "lm_head.weight"))]
    assert len(matrices) == (1 if tied else 2)
    for n in old:
        if n not in matrices:
            assert new[n].tobytes() == old[n].tobytes(), n
            continue
        kept = np.setdiff1d(np.arange(old[n].shape[0]), ids)  # qwen2's new ids can be old padding rows
        assert new[n][kept].tobytes() == old[n][kept].tobytes(), f"{n}: old rows changed"
    return matrices


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


CASES = [("llama3", False, True), ("llama3", True, False), ("qwen2", False, False), ("qwen2", True, True)]


@pytest.mark.parametrize("name,tied,sharded", CASES, ids=lambda v: {True: "T", False: "F"}.get(v, v))
def test_add_tokens_end_to_end(models, tmp_path, name, tied, sharded):
    src = models(name, tied, sharded)
    before = digest(src)
    out = tmp_path / "out"
    result = add_tokens(src, out, NEW, init="pieces", pad_to_multiple_of=64 if name == "llama3" else None)
    assert digest(src) == before, "the input folder changed"

    old_size = ROWS[name] if name == "llama3" else 151646
    ids = [t.id for t in result.tokens]
    assert ids == list(range(old_size, old_size + len(NEW)))
    rows = 128320 if name == "llama3" else 151936  # llama3 grows (padded to 64); qwen2 has room
    assert result.rows_after == rows

    # transformers loads the folder; each new token is one id; generation runs.
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for token, id in zip(NEW, ids):
        assert tok.encode(token, add_special_tokens=False) == [id]
        assert tok.encode(f"a{token}b", add_special_tokens=False).count(id) == 1
    assert set(NEW) <= set(tok.all_special_tokens)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert model.config.vocab_size == rows
    assert model.get_input_embeddings().weight.shape == (rows, 16)
    prompt = tok(f"hello {NEW[0]} world", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 3

    # Rows: pieces = mean of the rows of the old tokenizer's pieces, per matrix; the rest bit-identical.
    import tokenizers

    reference = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    old, new = tensors(src), tensors(out)
    for n in grown_matrices(old, new, ids, tied):
        assert new[n].shape == (rows, 16)
        for token, id in zip(NEW, ids):
            pieces = reference.encode(token, add_special_tokens=False).ids
            want = to_bf16_bits(as_f64(old[n][pieces]).mean(axis=0))
            assert new[n][id].tobytes() == want.tobytes(), (n, token)
        padding = np.setdiff1d(np.arange(old[n].shape[0], rows), ids)
        trained = np.setdiff1d(np.arange(old_size), reserved_ids(src))
        want = to_bf16_bits(as_f64(old[n][trained]).mean(axis=0))
        assert all(row.tobytes() == want.tobytes() for row in new[n][padding]), "padding rows start at the mean"


def test_reuse_reserved_slots_renames_them_and_initializes_their_rows(models, tmp_path):
    src = models("llama3", False, False)
    out = tmp_path / "out"
    result = add_tokens(src, out, NEW, init="mean", reuse_reserved=True)
    config = json.loads((src / "tokenizer.json").read_text())
    reserved = sorted((t["id"], t["content"]) for t in config["added_tokens"] if "reserved_special_token" in t["content"])
    assert [(t.id, t.replaced) for t in result.tokens] == reserved[:3]
    assert result.rows_after == result.rows_before == 128256

    tok = transformers.AutoTokenizer.from_pretrained(out)
    for t in result.tokens:
        assert tok.encode(t.content, add_special_tokens=False) == [t.id]
        assert len(tok.encode(t.replaced, add_special_tokens=False)) > 1, "the old slot name must be gone"
    written = json.loads((out / "tokenizer.json").read_text())
    assert len(written["added_tokens"]) == len(config["added_tokens"])
    assert all(t.replaced not in written["model"]["vocab"] for t in result.tokens)

    # mean over trained rows: not the reserved slots (never trained), not the rows being replaced.
    old, new = tensors(src), tensors(out)
    reserved_ids = [id for id, _ in reserved]
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        keep = np.setdiff1d(np.arange(128256), reserved_ids)
        want = to_bf16_bits(as_f64(old[n][keep]).mean(axis=0))
        for t in result.tokens:
            assert new[n][t.id].tobytes() == want.tobytes()
        others = np.setdiff1d(np.arange(128256), [t.id for t in result.tokens])
        assert new[n][others].tobytes() == old[n][others].tobytes()


@pytest.mark.parametrize("name,slot", [("gemma4", "<unused0>"), ("mistral-v3", "[control_12]"), ("tekken", "<SPECIAL_20>")])
def test_reuse_reserved_slots_of_other_families(models, tmp_path, name, slot):
    """Gemma's <unusedN> live only in the vocabulary (not added tokens): reusing one must
    also register it as an added token so that it is matched whole."""
    src = models(name, True, False)
    result = add_tokens(src, tmp_path / "out", ["<|box_start|>", "<|box_end|>"], init="mean", reuse_reserved=True)
    assert result.tokens[0].replaced == slot and result.rows_after == ROWS[name]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for t in result.tokens:
        assert tok.encode(f"x {t.content} y", add_special_tokens=False).count(t.id) == 1
    assert result.tokens[0].id not in tok.encode(slot, add_special_tokens=False)


def test_user_reserved_pattern(models, tmp_path):
    src = models("llama3", True, False)
    result = add_tokens(src, tmp_path / "out", ["<|a|>", "<|b|>"], init="mean", reuse_reserved=True,
                        reserved_patterns=[r"<\|reserved_special_token_1\d\|>"])
    assert [t.replaced for t in result.tokens] == ["<|reserved_special_token_10|>", "<|reserved_special_token_11|>"]


def test_untied_head_rows_come_from_the_head(models, tmp_path):
    src = models("qwen2", False, False)
    out = tmp_path / "out"
    result = add_tokens(src, out, ["<|x|>"], init="mean")
    old, new = tensors(src), tensors(out)
    id = result.tokens[0].id
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        want = to_bf16_bits(as_f64(old[n][:151646]).mean(axis=0))  # trained rows only, not the padding
        assert new[n][id].tobytes() == want.tobytes(), n
    assert new["model.embed_tokens.weight"][id].tobytes() != new["lm_head.weight"][id].tobytes()


@pytest.mark.parametrize("init", ["noisy_mean", "mean_cov", "description"])
def test_other_init_methods_are_seeded(models, tmp_path, init):
    src = models("llama3", True, False)
    descriptions = ["the start of a bounding box"] if init == "description" else None
    a = add_tokens(src, tmp_path / "a", ["<|box|>"], init=init, descriptions=descriptions, seed=1)
    add_tokens(src, tmp_path / "b", ["<|box|>"], init=init, descriptions=descriptions, seed=1)
    ta, tb = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    row = ta["model.embed_tokens.weight"][a.tokens[0].id]
    assert row.tobytes() == tb["model.embed_tokens.weight"][a.tokens[0].id].tobytes()
    assert row.any()


def test_cli_add_tokens(models, tmp_path, capsys):
    src = models("llama3", True, False)
    tokens_file = tmp_path / "tokens.txt"
    tokens_file.write_text("<|a|>\n<|b|>\n")
    code = cli(["add-tokens", str(src), str(tmp_path / "out"), "--tokens", "<|c|>", "--tokens-file", str(tokens_file),
                "--init", "mean", "--reuse-reserved"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "reusing '<|reserved_special_token_0|>'" in printed and "<|b|>" in printed
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(tok.encode("<|a|><|b|><|c|>", add_special_tokens=False)) == 3
    assert cli(["add-tokens", str(tmp_path / "missing"), str(tmp_path / "o2"), "--tokens", "<|x|>"]) == 2
    assert "no such model folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input


def test_existing_token_is_reported_with_its_id(models, tmp_path):
    src = models("qwen2", True, True)
    with pytest.raises(InvalidInputError, match=r"'<\|im_end\|>' is already token 151645"):
        add_tokens(src, tmp_path / "out", ["<|new|>", "<|im_end|>"])
    with pytest.raises(InvalidInputError, match="already token"):
        add_tokens(src, tmp_path / "out", ["hello"])  # a plain vocabulary entry
    with pytest.raises(InvalidInputError, match="twice"):
        add_tokens(src, tmp_path / "out", ["<|x|>", "<|x|>"])
    assert not (tmp_path / "out").exists()


def test_missing_folder_and_non_safetensors_checkpoints(models, tmp_path):
    with pytest.raises(CheckpointError, match="no such model folder"):
        add_tokens(tmp_path / "nope", tmp_path / "out", ["<|x|>"])
    src = models("qwen2", True, False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02not really")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin, not safetensors"):
        add_tokens(pickled, tmp_path / "out", ["<|x|>"])
    assert not (tmp_path / "out").exists()


def test_truncated_and_corrupt_files_leave_the_input_untouched(models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(models("llama3", False, True), src)
    shard = sorted(src.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    before = digest(src)
    with pytest.raises(CheckpointError, match="truncated"):
        add_tokens(src, tmp_path / "out", ["<|x|>"])
    assert digest(src) == before
    shard.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    with pytest.raises(CheckpointError, match="not a safetensors file, or truncated"):
        add_tokens(src, tmp_path / "out", ["<|x|>"])
    shard.write_bytes(data[:8] + b"x" + data[9:])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        add_tokens(src, tmp_path / "out", ["<|x|>"])
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_dtype_mismatch_between_embedding_and_head(tmp_path, models):
    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(models("qwen2", False, False), src)
    with safe_open(src / "model.safetensors", "pt") as f:
        weights = {n: f.get_tensor(n) for n in f.keys()}
    weights["lm_head.weight"] = weights["lm_head.weight"].to(torch.float32)
    save_file(weights, src / "model.safetensors")
    with pytest.raises(CheckpointError, match="different dtypes"):
        add_tokens(src, tmp_path / "out", ["<|x|>"])
    weights["lm_head.weight"] = weights["lm_head.weight"].to(torch.int32)
    save_file(weights, src / "model.safetensors")
    with pytest.raises(CheckpointError):
        add_tokens(src, tmp_path / "out", ["<|x|>"])
    assert not (tmp_path / "out").exists()


def test_an_interrupted_write_leaves_no_output(models, tmp_path, monkeypatch):
    src = models("llama3", False, True)
    before = digest(src)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr("tokensmith.checkpoint.write_file", failing)
    with pytest.raises(KeyboardInterrupt):
        add_tokens(src, tmp_path / "out", ["<|x|>"])
    assert calls and not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert digest(src) == before


def test_existing_output_needs_overwrite(models, tmp_path):
    src = models("llama3", True, False)
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        add_tokens(src, tmp_path / "out", ["<|x|>"])
    add_tokens(src, tmp_path / "out", ["<|x|>"], overwrite=True, init="mean")
    assert (tmp_path / "out" / "model.safetensors").exists()
    before = digest(src)
    for out in (src, src / "inside", src.parent):
        with pytest.raises(CheckpointError, match="must not be model_dir, inside it, or a folder that contains it"):
            add_tokens(src, out, ["<|x|>"], overwrite=True)
    assert digest(src) == before


def test_safetensors_writer_round_trips_with_the_reference(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    arrays = {"b": rng.standard_normal((3, 5)).astype(np.float32), "a": np.arange(7, dtype=np.int64),
              "empty": np.zeros((0, 4), np.float16)}
    save_file(arrays, tmp_path / "x.safetensors", metadata={"format": "pt"})
    source = st.SafetensorsFile(tmp_path / "x.safetensors")
    grown = np.vstack([arrays["b"], np.ones((2, 5), np.float32)])
    replacement = st.Replacement([5, 5], lambda out: out.write(grown.tobytes()))
    st.write_file(source, tmp_path / "y.safetensors", {"b": replacement})
    loaded = load_file(tmp_path / "y.safetensors")
    assert np.array_equal(loaded["b"], grown) and np.array_equal(loaded["a"], arrays["a"])
    assert loaded["empty"].shape == (0, 4)
    assert st.SafetensorsFile(tmp_path / "y.safetensors").metadata == {"format": "pt"}


def test_other_weight_files_are_copied_with_a_warning(models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(models("llama3", True, False), src)
    (src / "original").mkdir()
    (src / "original" / "consolidated.00.pth").write_bytes(b"not updated")
    result = add_tokens(src, tmp_path / "out", ["<|x|>"], init="mean")
    assert (tmp_path / "out" / "original" / "consolidated.00.pth").read_bytes() == b"not updated"
    assert any("original/consolidated.00.pth copied unchanged" in w for w in result.warnings)
    assert "warning: original/consolidated.00.pth" in result.summary()


@pytest.mark.parametrize("special", [True, False], ids=["special", "plain"])
def test_pieces_on_a_sentencepiece_tokenizer_come_from_tokensmith(models, tmp_path, special, monkeypatch):
    """Mistral v3 is SentencePiece-style BPE: tokensmith splits the new tokens itself (the
    reference library is not used), leaving out the lone word-start piece "▁"."""
    import tokenizers

    from tokensmith import embeddings as E

    def no_fallback(*args, **kwargs):
        raise AssertionError("the reference library was used for pieces")

    monkeypatch.setattr(E, "TextOnlyTokenizer", no_fallback)
    src = models("mistral-v3", False, False)
    result = add_tokens(src, tmp_path / "out", ["<|box_start|>", "newword", "中文"], special=special)
    data = json.loads((src / "tokenizer.json").read_text())
    reference = tokenizers.Tokenizer.from_str(json.dumps(dict(data, added_tokens=[])))
    word_start = reference.token_to_id("\u2581")
    old, new = tensors(src), tensors(tmp_path / "out")
    lone = 0
    for t in result.tokens:
        pieces = reference.encode(t.content, add_special_tokens=False).ids
        lone += word_start in pieces
        pieces = [p for p in pieces if p != word_start] or pieces
        for n in ("model.embed_tokens.weight", "lm_head.weight"):
            assert new[n][t.id].tobytes() == to_bf16_bits(as_f64(old[n][pieces]).mean(axis=0)).tobytes()
    assert lone, "no token here splits into a lone word-start piece: the case is not tested"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert [tok.encode(t.content, add_special_tokens=False) for t in result.tokens] == [[t.id] for t in result.tokens]


def test_what_the_folder_uses_is_never_reused_and_lists_stay_consistent(models, tmp_path):
    """Slots named by the chat template (chat_template.jinja), by config ids or by the
    special-token fields are in use; a reused slot leaves the extra-special-token lists even
    when the new token is not special (else transformers would add its old name back)."""
    src = tmp_path / "src"
    shutil.copytree(models("llama3", False, True), src)
    (src / "chat_template.jinja").write_text("{{ '<|reserved_special_token_0|>' }}{% for m in messages %}{{ m.content }}{% endfor %}")
    config = json.loads((src / "config.json").read_text())
    config["pad_token_id"] = 128003  # <|reserved_special_token_1|>
    (src / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    tokenizer_config["additional_special_tokens"] = ["<|eot_id|>", "<|reserved_special_token_2|>"]
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (src / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": [{"content": "<|eot_id|>", "special": True}, "<|reserved_special_token_2|>"]}))
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (src / ".git").mkdir()
    (src / ".git" / "big").write_bytes(b"lfs object")

    result = add_tokens(src, tmp_path / "out", ["<|a|>", "<|b|>"], special=False, reuse_reserved=True, init="mean")
    assert [t.replaced for t in result.tokens] == ["<|reserved_special_token_2|>", "<|reserved_special_token_3|>"]
    out = tmp_path / "out"
    assert json.loads((out / "tokenizer_config.json").read_text())["additional_special_tokens"] == ["<|eot_id|>"]
    assert json.loads((out / "special_tokens_map.json").read_text())["additional_special_tokens"] == [
        {"content": "<|eot_id|>", "special": True}]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == 128256, "no token without an embedding row"
    assert [tok.encode(t.content, add_special_tokens=False) for t in result.tokens] == [[t.id] for t in result.tokens]
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens": true}'
    assert not (out / ".git").exists()


def test_text_that_is_already_one_token_or_spelled_like_a_vocabulary_entry(models, tmp_path):
    src = models("llama3", True, False)
    with pytest.raises(InvalidInputError, match=r"' hello' is already token 24748 \(the tokenizer encodes it"):
        add_tokens(src, tmp_path / "out", [" hello"])
    with pytest.raises(InvalidInputError, match="'é' is already token 978"):  # not the byte 0xE9 (165)
        add_tokens(src, tmp_path / "out", ["é"])
    with pytest.raises(InvalidInputError, match="'Ġhello' is spelled like vocabulary entry 24748"):
        add_tokens(src, tmp_path / "out", ["Ġhello"])
    assert not (tmp_path / "out").exists()


def test_config_without_vocab_size_gets_one():
    from tokensmith.checkpoint import _new_config

    assert _new_config({"text_config": {"hidden_size": 8}}, 32001) == {"text_config": {"hidden_size": 8, "vocab_size": 32001}}
    assert _new_config({"vocab_size": 100, "text_config": {"vocab_size": 100}}, 104) == {
        "vocab_size": 104, "text_config": {"vocab_size": 104}}
    assert _new_config({"model_type": "llama"}, 50) == {"model_type": "llama", "vocab_size": 50}


def test_sharded_index_metadata_follows(models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(models("llama3", False, True), src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["metadata"]["total_parameters"] = 1000
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    add_tokens(src, tmp_path / "out", ["<|x|>"], init="mean", pad_to_multiple_of=8)
    written = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert written["metadata"]["total_parameters"] == 1000 + 2 * 8 * 16  # 8 new rows x 16 in embedding and head
    sizes = sum(t.nbytes for f in set(written["weight_map"].values()) for t in st.SafetensorsFile(tmp_path / "out" / f).tensors.values())
    assert written["metadata"]["total_size"] == sizes


def test_tensors_of_dtypes_it_does_not_size_are_copied(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {"c": torch.randn(3, 2, dtype=torch.complex64), "w": torch.randn(4, 3)}
    save_file(tensors, tmp_path / "x.safetensors")
    source = st.SafetensorsFile(tmp_path / "x.safetensors")
    grown = torch.cat([tensors["w"], torch.zeros(1, 3)])
    st.write_file(source, tmp_path / "y.safetensors", {"w": st.Replacement([5, 3], lambda out: out.write(grown.numpy().tobytes()))})
    loaded = load_file(tmp_path / "y.safetensors")
    assert torch.equal(loaded["c"], tensors["c"]) and torch.equal(loaded["w"], grown)


def test_slots_named_anywhere_in_the_folder_are_in_use(models, tmp_path):
    """special_tokens_map.json, tokenizer.json padding, named extra special tokens and
    config keys such as image_token_index all keep their slot."""
    src = tmp_path / "src"
    shutil.copytree(models("llama3", True, False), src)
    (src / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|reserved_special_token_0|>"}))
    data = json.loads((src / "tokenizer.json").read_text())
    data["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 128003, "pad_type_id": 0, "pad_token": "<|reserved_special_token_1|>"}
    (src / "tokenizer.json").write_text(json.dumps(data))
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    tokenizer_config["extra_special_tokens"] = {"image_token": "<|reserved_special_token_2|>"}
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((src / "config.json").read_text())
    config["image_token_index"] = 128005  # <|reserved_special_token_3|>
    (src / "config.json").write_text(json.dumps(config))
    # padding in tokenizer.json is not supported by tokensmith: init="mean" needs no tokenizer run
    result = add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean", reuse_reserved=True)
    assert result.tokens[0].replaced == "<|reserved_special_token_4|>"


def test_a_text_the_vocabulary_lacks_is_not_mistaken_for_unk(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokensmith.checkpoint import _check_new_tokens
    from tokensmith.embeddings import TextOnlyTokenizer

    vocab = {"[UNK]": 0, "a": 1, "b": 2}
    hf = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    data = json.loads(hf.to_str())
    tok = TextOnlyTokenizer(data)
    _check_new_tokens(["🦜"], data, vocab, tok)  # encodes to [UNK]: new, accepted
    with pytest.raises(InvalidInputError, match="'a' is already token 1"):
        _check_new_tokens(["a"], data, vocab, tok)


def test_a_tokenizer_nothing_can_run_still_takes_mean_init(models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(models("llama3", True, False), src)
    data = json.loads((src / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "SomethingNew"}
    (src / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="init='mean'"):
        add_tokens(src, tmp_path / "out", ["<|a|>"], init="pieces")
    result = add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    assert result.tokens[0].id == 128256


def test_symlink_loops_are_not_followed_and_links_to_parents_are_refused(models, tmp_path):
    src = tmp_path / "models" / "src"
    shutil.copytree(models("llama3", True, False), src)
    (src / "loop").symlink_to(src)
    (tmp_path / "models" / "unrelated.bin").write_bytes(b"x")
    add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    copied = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert copied == sorted(p.name for p in src.iterdir() if p.is_file())
    for name, target in [("up", src.parent), ("rootfs", Path("/"))]:
        (src / name).symlink_to(target)
        with pytest.raises(CheckpointError, match=f"{name}: a link to the folder .*outside the model folder"):
            add_tokens(src, tmp_path / "out2", ["<|a|>"], init="mean")
        (src / name).unlink()
    assert not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------- hostile model folders


def test_links_to_files_outside_the_folder_and_special_files_are_refused(models, tmp_path):
    import os

    src = tmp_path / "src"
    shutil.copytree(models("llama3", True, False), src)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    (src / "notes.txt").symlink_to(secret)
    with pytest.raises(CheckpointError, match="notes.txt: a link to .*secret.txt, outside the model folder"):
        add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    (src / "notes.txt").unlink()
    os.mkfifo(src / "README.md")  # reading it would never end
    with pytest.raises(CheckpointError, match="README.md: not a regular file"):
        add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    (src / "README.md").unlink()
    (src / "zero").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="zero: not a regular file"):
        add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    assert not (tmp_path / "out").exists()


def test_the_hugging_face_cache_layout_of_links_into_blobs_works(models, tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(models("llama3", True, True).iterdir()):
        blob = repo / "blobs" / hashlib.sha256(path.name.encode()).hexdigest()
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    result = add_tokens(snapshot, tmp_path / "out", ["<|a|>"], init="mean")
    assert result.tokens[0].id == 128256
    assert all(not p.is_symlink() for p in (tmp_path / "out").iterdir())


@pytest.mark.parametrize("shard", ["/etc/hostname", "../secret.safetensors", "sub/../../secret.safetensors"])
def test_shards_named_outside_the_folder_are_refused(models, tmp_path, shard):
    src = tmp_path / "src"
    shutil.copytree(models("llama3", True, True), src)
    shutil.copy(next(src.glob("model-*.safetensors")), tmp_path / "secret.safetensors")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("index, message", [
    ([1, 2], "expected a JSON object, got list"),
    ({"weight_map": {"model.embed_tokens.weight": 7}}, "weight_map values must be file names, got 7"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_malformed_index_files_are_one_line_errors(models, tmp_path, index, message):
    src = tmp_path / "src"
    shutil.copytree(models("llama3", True, True), src)
    text = index if isinstance(index, str) else json.dumps(index)
    (src / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    assert cli(["add-tokens", str(src), str(tmp_path / "out"), "--tokens", "<|a|>", "--init", "mean"]) == 2


def test_a_file_that_is_not_safetensors_is_not_echoed_in_the_error(models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(models("llama3", True, False), src)
    (src / "model.safetensors").write_bytes(b"SECRET!!" + b"x" * 100)
    with pytest.raises(CheckpointError) as e:
        add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    assert "not a safetensors file" in str(e.value)
    assert str(struct.unpack("<Q", b"SECRET!!")[0]) not in str(e.value)


@pytest.mark.parametrize("header, message", [
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     '"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "names 'a' twice"),
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [false, 4]}}', "malformed header entry"),
    ('{"__metadata__": {"format": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
     "__metadata__ must map names to strings"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_safetensors_headers_the_reference_refuses_are_refused(tmp_path, header, message):
    raw = header.encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(CheckpointError, match=message):
        st.SafetensorsFile(path)


def test_stale_temp_folders_are_reported_not_deleted(models, tmp_path):
    src = models("llama3", True, False)
    (tmp_path / ".out.tmp-424242").mkdir()
    result = add_tokens(src, tmp_path / "out", ["<|a|>"], init="mean")
    assert (tmp_path / ".out.tmp-424242").exists()
    assert any(".out.tmp-424242 was left by an interrupted run" in w for w in result.warnings)


# ----------------------------------------------------------------------------- reserved slots in memory


@pytest.mark.parametrize("name,special", [("llama3", True), ("llama3", False), ("gemma4", True), ("mistral-v3", True), ("tekken", True)])
def test_reuse_reserved_in_memory_matches_the_folder(models, tmp_path, name, special):
    """Tokenizer.reuse_reserved gives the ids, vocabulary, config and encodings that
    add_tokens(reuse_reserved=True) writes, and that the reference library and transformers
    load from what it saves."""
    import tokenizers

    from tokensmith import Tokenizer

    src = models(name, True, False)
    new_tokens = ["<|box_start|>", "<|box_end|>"]
    result = add_tokens(src, tmp_path / "out", new_tokens, special=special, init="mean", reuse_reserved=True)
    assert all(t.replaced for t in result.tokens)
    tok = Tokenizer.from_pretrained(src)
    assert tok.reuse_reserved(new_tokens, special=special) == [t.id for t in result.tokens]
    written = Tokenizer.from_pretrained(tmp_path / "out")
    assert tok.get_vocab() == written.get_vocab()
    assert tok.added_tokens == written.added_tokens
    assert tok.config == written.config
    text = " ".join(f"a{t.content}b {t.replaced} c" for t in result.tokens) + " hello world"
    reference = tokenizers.Tokenizer.from_str(tok.to_str())
    for template in (False, True):
        ids = tok.encode(text, add_special_tokens=template)
        assert ids == written.encode(text, add_special_tokens=template)
        assert ids == reference.encode(text, add_special_tokens=template).ids
    assert all(t.id in tok.encode(text, add_special_tokens=False) for t in result.tokens)
    tok.save_pretrained(tmp_path / "saved")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert (set(new_tokens) <= set(hf.all_special_tokens)) == special
    assert not {t.replaced for t in result.tokens} & set(hf.all_special_tokens)


def test_reuse_reserved_in_memory_when_slots_run_out(models, tmp_path):
    from tokensmith import Tokenizer

    src = models("llama3", True, False)
    pattern = [r"<\|reserved_special_token_1[01]\|>"]
    new_tokens = ["<|a|>", "<|b|>", "<|c|>"]
    result = add_tokens(src, tmp_path / "out", new_tokens, init="mean", reuse_reserved=True, reserved_patterns=pattern)
    assert [t.replaced for t in result.tokens] == ["<|reserved_special_token_10|>", "<|reserved_special_token_11|>", None]
    tok = Tokenizer.from_pretrained(src)
    eot = tok.token_to_id("<|eot_id|>")
    ids = tok.reuse_reserved(["<|eot_id|>", *new_tokens, "<|a|>"], patterns=pattern)
    assert ids == [eot, *(t.id for t in result.tokens), result.tokens[0].id], "present tokens keep their ids"
    assert result.tokens[2].id == 128256
    assert tok.get_vocab() == Tokenizer.from_pretrained(tmp_path / "out").get_vocab()
    assert tok.reuse_reserved(["<|d|>"], patterns=pattern) == [128257], "no slot left"


# ----------------------------------------------------------------------------- --init copy


@pytest.mark.parametrize("name,tied,source,source_id", [
    ("qwen2", False, "<|im_end|>", 151645), ("llama3", True, " hello", 24748), ("mistral-v3", False, "</s>", 2),
])
def test_copy_init_copies_the_rows_of_one_token(models, tmp_path, name, tied, source, source_id):
    src = models(name, tied, False)
    result = add_tokens(src, tmp_path / "out", NEW, init="copy", copy_from=source)
    old, new = tensors(src), tensors(tmp_path / "out")
    matrices = ["model.embed_tokens.weight"] + ([] if tied else ["lm_head.weight"])
    assert sorted(result.tensors) == sorted(matrices)
    for n in matrices:
        for t in result.tokens:
            assert new[n][t.id].tobytes() == old[n][source_id].tobytes(), (n, t.content)
    if not tied:
        assert new["lm_head.weight"][source_id].tobytes() != new["model.embed_tokens.weight"][source_id].tobytes()


def test_copy_from_must_be_one_token_of_the_old_tokenizer(models, tmp_path, capsys):
    src = models("llama3", False, False)
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError, match=r"copy_from '</x>' is not a token of this tokenizer \(it splits into 3 pieces\)"):
        add_tokens(src, out, ["<|a|>"], init="copy", copy_from="</x>")
    with pytest.raises(InvalidInputError, match=r"copy_from '<\|a\|>' is not a token"):  # not before it is added
        add_tokens(src, out, ["<|a|>"], init="copy", copy_from="<|a|>")
    with pytest.raises(ValueError, match="init='copy' needs copy_from"):
        add_tokens(src, out, ["<|a|>"], init="copy")
    with pytest.raises(ValueError, match="copy_from is only used with init='copy'"):
        add_tokens(src, out, ["<|a|>"], init="mean", copy_from="<|eot_id|>")
    assert cli(["add-tokens", str(src), str(out), "--tokens", "<|a|>", "--init", "copy", "--copy-from", "</x>"]) == 2
    assert "tokensmith: error: --copy-from '</x>' is not a token of this tokenizer" in capsys.readouterr().err
    assert cli(["add-tokens", str(src), str(out), "--tokens", "<|a|>", "--init", "copy"]) == 2
    assert "--init copy needs --copy-from" in capsys.readouterr().err
    assert not out.exists()
    assert cli(["add-tokens", str(src), str(out), "--tokens", "<|a|>", "--init", "copy", "--copy-from", "<|eot_id|>"]) == 0
    old, new = tensors(src), tensors(out)
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        assert new[n][128256].tobytes() == old[n][128009].tobytes()


# ----------------------------------------------------------------------------- padding rows


@pytest.mark.parametrize("init", ["pieces", "copy", "mean", "noisy_mean", "mean_cov"])
def test_padding_rows_start_from_the_trained_rows_not_zero(models, tmp_path, init):
    src = models("llama3", False, False)
    options = {"copy_from": "<|eot_id|>"} if init == "copy" else {}
    result = add_tokens(src, tmp_path / "padded", NEW, init=init, pad_to_multiple_of=64, seed=3, **options)
    assert result.rows_after == 128320
    add_tokens(src, tmp_path / "plain", NEW, init=init, seed=3, **options)
    old, new, plain = tensors(src), tensors(tmp_path / "padded"), tensors(tmp_path / "plain")
    padding = np.arange(128256 + len(NEW), 128320)
    trained = np.setdiff1d(np.arange(128256), reserved_ids(src))
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = as_f64(new[n][padding])
        assert np.isfinite(rows).all() and rows.any(axis=1).all(), f"{n}: a padding row is zero"
        assert new[n][: 128256 + len(NEW)].tobytes() == plain[n].tobytes(), "the new rows do not depend on the padding"
        if init == "noisy_mean":
            assert len({row.tobytes() for row in new[n][padding]}) == len(padding)
        elif init != "mean_cov":
            want = to_bf16_bits(as_f64(old[n][trained]).mean(axis=0))
            assert all(row.tobytes() == want.tobytes() for row in new[n][padding]), n
    assert result.padding_rows == 61 and "61 padding rows initialized by" in result.summary()
