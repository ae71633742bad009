"""Pipeline corners found in review, each against the reference on a tokenizer.json built
here: chars no token, byte or unk stands for, truncation before offset trimming, Metaspace's
"first" scheme after a step that rewrote the text, and the Oniguruma translation of a
saved tiktoken pattern."""

from __future__ import annotations

import json

import pytest
import tokenizers

import tokensmith as ts
from conftest import TIKTOKEN_DIR, require_data, tokenizer_path


def pair(obj: dict) -> tuple[ts.Tokenizer, tokenizers.Tokenizer]:
    text = json.dumps(obj)
    return ts.Tokenizer.from_str(text), tokenizers.Tokenizer.from_str(text)


def char_bpe(unk: str | None = None, byte_fallback: bool = False) -> dict:
    vocab = {"a": 0, "b": 1, "ab": 2}
    if unk:
        vocab[unk] = len(vocab)
    if byte_fallback:
        vocab["<0x62>"] = len(vocab)
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": None, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": byte_fallback,
                      "vocab": vocab, "merges": [["a", "b"]]}}


@pytest.mark.parametrize("text", ["aXb" * 100, "aXXb", "XaXbX" * 40, "ab" * 50 + "X" + "ab" * 50])
def test_a_dropped_char_lets_its_neighbours_merge_on_long_pieces(text):
    # No unk and no byte fallback: the reference drops X, and a, b around it merge.
    tok, hf = pair(char_bpe())
    assert tok.encode(text) == hf.encode(text).ids
    ids, offsets = tok.encode_with_offsets(text)
    assert (ids, offsets) == (hf.encode(text).ids, hf.encode(text).offsets)


@pytest.mark.parametrize("text", ["éba", "aéb", "ééab", "bé"])
def test_offsets_add_up_symbol_lengths_around_unknown_chars(text):
    tok, hf = pair(char_bpe(unk="<unk>", byte_fallback=True))
    want = hf.encode(text)
    assert tok.encode_with_offsets(text) == (want.ids, want.offsets)


def test_truncation_comes_before_offset_trimming():
    obj = json.loads(tokenizer_path("gpt2").read_text(encoding="utf-8"))
    obj["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    obj["truncation"] = {"direction": "Left", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    tok, hf = pair(obj)
    for text in ["hello big wide world", " a b c d", "x  y   z"]:
        want = hf.encode(text)
        assert tok.encode_with_offsets(text) == (want.ids, want.offsets), text


def test_metaspace_first_after_a_rewriting_step_agrees_with_and_without_offsets():
    obj = json.loads(tokenizer_path("llama2").read_text(encoding="utf-8"))
    obj["normalizer"] = None
    obj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": False},
        {"type": "Split", "pattern": {"String": "▁"}, "behavior": "Removed", "invert": False},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}]}
    tok, hf = pair(obj)
    for text in ["a b", " a b", "hello world again", "<s>a b"]:
        want = hf.encode(text)
        assert tok.encode(text) == want.ids, text
        assert tok.encode_with_offsets(text) == (want.ids, want.offsets), text


def test_saved_tiktoken_pattern_keeps_plain_repeats():
    """A `}` that closes a class name (\\p{L}) is no bounded repeat: its `+` stays."""
    require_data()
    pattern = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
    tok = ts.Tokenizer.from_tiktoken(TIKTOKEN_DIR / "gpt2.tiktoken", pattern=pattern, special_tokens={})
    hf = tokenizers.Tokenizer.from_str(tok.to_str())
    for text in ["Hello world 12345", "it's a test, isn't it?", "  spaced   out  "]:
        assert hf.encode(text).ids == tok.encode(text), text


def test_aliases_in_a_file_are_checked():
    obj = json.loads(tokenizer_path("gpt2").read_text(encoding="utf-8"))
    obj["model"]["tokensmith"] = {"aliases": [[0, "zzz"]]}  # id 0 is no added token
    with pytest.raises(ts.TokenizerError, match="aliases"):
        ts.Tokenizer.from_str(json.dumps(obj))
    obj["model"]["tokensmith"] = {"aliases": [[50256, "hello"]]}  # another token's string
    with pytest.raises(ts.TokenizerError, match="aliases"):
        ts.Tokenizer.from_str(json.dumps(obj))


def test_huge_padding_is_refused_not_allocated():
    obj = json.loads(tokenizer_path("gpt2").read_text(encoding="utf-8"))
    obj["padding"] = {"strategy": {"Fixed": 10**12}, "direction": "Right", "pad_to_multiple_of": None,
                      "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    with pytest.raises(ts.TokenizerError, match="Fixed"):
        ts.Tokenizer.from_str(json.dumps(obj))


def test_merges_of_a_string_that_shares_its_id_save_as_spelled():
    # Found by the tokenizer_json fuzz target: '*' given the id of "'" (ids may be shared,
    # as in gpt-oss's harmony vocabulary). The merge ('*', '*') was saved as ("'", "'"), so
    # the saved file did not load ("''" is no token).
    spec = char_bpe()
    spec["model"]["vocab"] = {"'": 0, "*": 0, "**": 1, "b": 2}
    spec["model"]["merges"] = [["*", "*"]]
    tok, hf = pair(spec)
    saved = json.loads(tok.to_str())
    assert saved["model"]["merges"] == [["*", "*"]]
    again = ts.Tokenizer.from_str(tok.to_str())
    for text in ["**b", "''", "*'"]:
        assert tok.encode(text) == again.encode(text) == hf.encode(text).ids
