"""Tokenizer.save_pretrained: transformers loads the folder and sees what tokensmith sees.

Folders with a real tokenizer.json and a tokenizer_config.json, in the two shapes found in
the wild: written by transformers 4 (``added_tokens_decoder``, ``additional_special_tokens``,
a chat template) and by transformers 5 (neither). After ``add_special_tokens`` and
``add_tokens`` tokensmith saves the folder; transformers must load every added token as the
same kind (special or not), keep the config's keys, and encode text with the new tokens to
tokensmith's ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import tokenizer_path

import tokensmith as ts

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

NAMED = {  # bos, eos
    "gpt2": ("<|endoftext|>", "<|endoftext|>"),
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>"),
    "qwen2": (None, "<|im_end|>"),
    "llama2": ("<s>", "</s>"),
}
SPECIAL = ["<|box_start|>", "<|box_end|>"]
PLAIN = ["newword"]
TEMPLATE = "{% for m in messages %}<|box_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
TEXT = "Hello <|box_start|>newword x<|box_end|>\n world newword 中文 <|box_end|><|box_start|>"


def make_folder(folder: Path, name: str, style: str) -> Path:
    """``style`` "v4": a hand-written config as transformers 4 saved them; "v5": the config
    transformers 5 writes for this tokenizer.json."""
    bos, eos = NAMED[name]
    folder.mkdir()
    if style == "v5":
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path(name)), bos_token=bos, eos_token=eos)
        tok.save_pretrained(folder)
        return folder
    shutil.copy(tokenizer_path(name), folder / "tokenizer.json")
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "model_max_length": 4096,
        "chat_template": TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": [eos],
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in added
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.parametrize("style", ["v4", "v5"])
@pytest.mark.parametrize("name", list(NAMED))
def test_transformers_loads_the_added_tokens_as_tokensmith_has_them(tmp_path, name, style):
    src = make_folder(tmp_path / "src", name, style)
    before = json.loads((src / "tokenizer_config.json").read_text())
    tok = ts.Tokenizer.from_pretrained(src)
    special_ids = tok.add_special_tokens(SPECIAL)
    plain_ids = tok.add_tokens(PLAIN)
    out = tmp_path / "out" / "nested"
    written = tok.save_pretrained(out)
    # The chat template goes to chat_template.jinja, as transformers 5 saves it.
    templates = ["chat_template.jinja"] if "chat_template" in before else []
    assert sorted(p.name for p in written) == sorted(
        templates + ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"])
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written), "no temporary file left"

    config = json.loads((out / "tokenizer_config.json").read_text())
    for key, value in before.items():
        if key == "chat_template":
            assert "chat_template" not in config and (out / "chat_template.jinja").read_text() == value
        elif key not in ("added_tokens_decoder", "additional_special_tokens"):
            assert config[key] == value, key
    assert config["additional_special_tokens"] == before.get("additional_special_tokens", []) + SPECIAL
    decoder = config["added_tokens_decoder"]
    assert len(decoder) == len(tok.added_tokens)
    for t in tok.added_tokens:
        assert decoder[str(t.id)] == {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                                      "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
    special_map = json.loads((out / "special_tokens_map.json").read_text())
    assert special_map["eos_token"] == NAMED[name][1]
    assert special_map["additional_special_tokens"] == config["additional_special_tokens"]

    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert len(hf) == tok.vocab_size
    assert hf.eos_token == NAMED[name][1] and hf.bos_token == NAMED[name][0]
    for t in tok.added_tokens:
        assert hf.added_tokens_decoder[t.id].content == t.content
        assert hf.added_tokens_decoder[t.id].special == t.special, t.content
    assert set(SPECIAL) <= set(hf.all_special_tokens)
    assert not set(PLAIN) & set(hf.all_special_tokens)
    assert [hf.convert_tokens_to_ids(t) for t in SPECIAL + PLAIN] == special_ids + plain_ids
    assert hf.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT, add_special_tokens=False)
    assert hf.encode(TEXT) == tok.encode(TEXT)  # with the BOS / EOS template
    for t, id in zip(SPECIAL + PLAIN, special_ids + plain_ids):
        assert tok.encode(f"a {t} b", add_special_tokens=False).count(id) == 1
    if style == "v4":
        assert hf.model_max_length == 4096 and hf.chat_template == TEMPLATE
        messages = [{"role": "user", "content": "hi newword"}]
        assert hf.apply_chat_template(messages, tokenize=False) == f"<|box_start|>user\nhi newword{NAMED[name][1]}"


def test_a_tokenizer_from_a_file_saves_a_folder_transformers_loads(tmp_path):
    tok = ts.Tokenizer.from_file(tokenizer_path("qwen2"))
    ids = tok.add_special_tokens(SPECIAL)
    tok.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.all_special_tokens == SPECIAL
    assert hf.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT, add_special_tokens=False)
    assert [hf.added_tokens_decoder[i].special for i in ids] == [True, True]


def test_a_token_made_plain_again_leaves_the_special_list(tmp_path):
    tok = ts.Tokenizer.from_pretrained(make_folder(tmp_path / "src", "qwen2", "v4"))
    tok.add_special_tokens(["<|x|>"])
    copy = tok.copy()
    copy.add_tokens(["<|x|>"])  # now plain, normalized
    assert tok.config["additional_special_tokens"] == ["<|im_end|>", "<|x|>"], "the copy shares nothing"
    assert copy.config["additional_special_tokens"] == ["<|im_end|>"]
    copy.save_pretrained(tmp_path / "out")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert "<|x|>" not in hf.all_special_tokens
    assert hf.added_tokens_decoder[copy.token_to_id("<|x|>")].special is False


def test_save_pretrained_into_a_file_path_is_an_error(tmp_path):
    tok = ts.Tokenizer.from_file(tokenizer_path("gpt2"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        tok.save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_a_string_where_a_list_of_special_tokens_belongs_is_an_error_not_one_token_per_char(tmp_path):
    from conftest import TOKENIZERS_DIR, require_data

    import tokensmith as ts

    require_data()
    tok = ts.Tokenizer.from_file(TOKENIZERS_DIR / "gpt2" / "tokenizer.json")
    tok.config = {"additional_special_tokens": "abc"}
    with pytest.raises(ts.TokenizerFormatError, match="additional_special_tokens must be a list of tokens"):
        tok.add_special_tokens(["<|box|>"])
