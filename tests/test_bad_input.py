"""Bad and extreme input: every problem must be a clear Python exception, never a crash or hang.

* malformed / truncated / structurally wrong tokenizer.json -> TokenizerFormatError (a
  TokenizerError) whose message names the file or the field;
* unsupported components (WordPiece, Unigram, FixedLength, BPE dropout) ->
  UnsupportedTokenizerError naming the component;
* missing files / folders -> FileNotFoundError or TokenizerError naming the path;
* invalid ids in decode -> ValueError or TokenizerError naming the id;
* lone surrogates -> ValueError / UnicodeError; wrong types -> TypeError; bad policy -> ValueError;
* very long inputs without whitespace, long whitespace runs and a 100 MB document.

A tiny, valid byte-level BPE tokenizer built here is the positive control: it loads in both
libraries and encodes identically, so each negative case fails for the reason it names.
"""

from __future__ import annotations

import json
import random
import string

import pytest
import tokenizers

import tokensmith as ts
from conftest import (
    BYTE_CHARS,
    TIKTOKEN_DIR,
    assert_same_ids,
    corpus_files,
    hf_tokenizer,
    read_corpus,
    require_data,
    tiktoken_encodings,
    tokenizer_path,
    ts_tokenizer,
)

# --------------------------------------------------------------------------------------------------
# A tiny valid byte-level BPE tokenizer.json (built here, so these tests need no data folder)


TINY_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"),
               ("l", "d"), ("Ġwor", "ld")]


def tiny_tokenizer(merges_as_pairs: bool = True) -> dict:
    vocab = {BYTE_CHARS[b]: i for i, b in enumerate(range(256))}
    for a, b in TINY_MERGES:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|end|>"] = len(vocab)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": vocab["<|end|>"], "content": "<|end|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab,
                  "merges": [list(m) if merges_as_pairs else " ".join(m) for m in TINY_MERGES]},
    }


def write_json(tmp_path, obj, name="tokenizer.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def assert_mentions(exc_info, *needles):
    message = str(exc_info.value)
    missing = [n for n in needles if str(n) not in message]
    assert not missing, f"error message should mention {missing}: {type(exc_info.value).__name__}: {message!r}"


def assert_mentions_any(exc_info, *needles):
    message = str(exc_info.value)
    assert any(str(n) in message for n in needles), (
        f"error message should mention one of {needles}: {type(exc_info.value).__name__}: {message!r}")


TINY_TEXTS = ["hello world", "hello world<|end|>", "<|end|>hello", "héllo wörld 中文 👍", "", "  \n\t", "hellohello"]


@pytest.mark.parametrize("merges_as_pairs", [True, False], ids=["merges-pairs", "merges-strings"])
def test_tiny_tokenizer_control(tmp_path, merges_as_pairs):
    path = write_json(tmp_path, tiny_tokenizer(merges_as_pairs))
    hf = tokenizers.Tokenizer.from_file(str(path))
    tok = ts.Tokenizer.from_file(str(path))
    for text in TINY_TEXTS:
        assert_same_ids(tok.encode(text), hf.encode(text).ids, text, "tiny tokenizer")
        assert tok.decode(tok.encode(text)) == hf.decode(hf.encode(text).ids, skip_special_tokens=False)
    assert tok.vocab_size == hf.get_vocab_size(with_added_tokens=True)


# --------------------------------------------------------------------------------------------------
# malformed files


def test_malformed_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"version": "1.0", "model": {not json', encoding="utf-8")
    with pytest.raises(ts.TokenizerFormatError) as info:
        ts.Tokenizer.from_file(str(path))
    assert isinstance(info.value, ts.TokenizerError)
    assert_mentions(info, path.name)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    with pytest.raises(ts.TokenizerFormatError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, path.name)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"model": "\xff\xfe"}')
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, path.name)


def test_truncated_real_file(tmp_path):
    require_data()
    raw = tokenizer_path("gpt2").read_bytes()
    path = tmp_path / "truncated.json"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ts.TokenizerFormatError) as info:
        ts.Tokenizer.from_file(str(path))
    assert isinstance(info.value, ts.TokenizerError)
    assert_mentions(info, path.name)


@pytest.mark.parametrize("cut", ["1-byte", "100-bytes", "half", "all-but-10", "all-but-1"])
def test_truncated_tiny_file(tmp_path, cut):
    raw = json.dumps(tiny_tokenizer()).encode()
    keep = {"1-byte": 1, "100-bytes": 100, "half": len(raw) // 2, "all-but-10": len(raw) - 10,
            "all-but-1": len(raw) - 1}[cut]
    path = tmp_path / "truncated.json"
    path.write_bytes(raw[:keep])
    with pytest.raises(ts.TokenizerFormatError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, path.name)


def test_json_not_an_object(tmp_path):
    path = write_json(tmp_path, [1, 2, 3])
    with pytest.raises(ts.TokenizerFormatError):
        ts.Tokenizer.from_file(str(path))


def test_missing_model(tmp_path):
    obj = tiny_tokenizer()
    del obj["model"]
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, "model")


def test_model_without_vocab(tmp_path):
    obj = tiny_tokenizer()
    del obj["model"]["vocab"]
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, "vocab")


def test_unknown_pre_tokenizer_type(tmp_path):
    obj = tiny_tokenizer()
    obj["pre_tokenizer"] = {"type": "Whatever"}
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, "Whatever")


def test_unknown_pre_tokenizer_inside_sequence(tmp_path):
    obj = tiny_tokenizer()
    obj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "Whatever2"}]}
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, "Whatever2")


def test_fixed_length_pre_tokenizer_is_unsupported(tmp_path):
    obj = tiny_tokenizer()
    obj["pre_tokenizer"] = {"type": "FixedLength", "length": 5}
    path = write_json(tmp_path, obj)
    tokenizers.Tokenizer.from_file(str(path))  # valid for the reference
    with pytest.raises(ts.UnsupportedTokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert isinstance(info.value, ts.TokenizerError)
    assert_mentions(info, "FixedLength")


def test_bpe_dropout_is_refused_with_the_reason(tmp_path):
    obj = tiny_tokenizer()
    obj["model"]["dropout"] = 0.1
    path = write_json(tmp_path, obj)
    tokenizers.Tokenizer.from_file(str(path))  # valid for the reference (random ids)
    with pytest.raises(ts.UnsupportedTokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions_any(info, "dropout")
    assert_mentions_any(info, "random")


def test_wordpiece_model_is_unsupported(tmp_path):
    obj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
           "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
           "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                     "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1, "##b": 2}}}
    path = write_json(tmp_path, obj)
    tokenizers.Tokenizer.from_file(str(path))  # valid for the reference
    with pytest.raises(ts.UnsupportedTokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, "WordPiece")


def test_unigram_model_is_unsupported(tmp_path):
    obj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": None, "post_processor": None, "decoder": None,
           "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]], "byte_fallback": False}}
    path = write_json(tmp_path, obj)
    tokenizers.Tokenizer.from_file(str(path))
    with pytest.raises(ts.UnsupportedTokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, "Unigram")


def test_merges_naming_unknown_tokens(tmp_path):
    obj = tiny_tokenizer()
    obj["model"]["merges"].append(["zz", "qq"])
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions_any(info, "zz", "qq")


def test_merge_result_not_in_vocab(tmp_path):
    obj = tiny_tokenizer()
    obj["model"]["merges"].append(["a", "b"])  # "a" and "b" exist, "ab" does not
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions_any(info, "ab", "merge")


def test_two_strings_on_one_id_load_as_the_reference_loads_them(tmp_path):
    # gpt-oss's o200k_harmony puts <|endofprompt|> and <|reserved_200018|> on one id.
    obj = tiny_tokenizer()
    vocab = obj["model"]["vocab"]
    dup_id = vocab["hell"]
    vocab["duplicate"] = dup_id
    path = write_json(tmp_path, obj)
    hf = tokenizers.Tokenizer.from_file(str(path))
    tok = ts.Tokenizer.from_file(str(path))
    for text in TINY_TEXTS + ["duplicate hell"]:
        assert tok.encode(text) == hf.encode(text).ids
    assert tok.token_to_id("duplicate") == tok.token_to_id("hell") == dup_id
    assert tok.get_vocab()["duplicate"] == dup_id


def test_malformed_merge_entry(tmp_path):
    obj = tiny_tokenizer()
    obj["model"]["merges"].append(["onlyone"])
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError):
        ts.Tokenizer.from_file(str(path))


@pytest.mark.parametrize("merge", ["h e l", "he", "h  e", " h e", "h e "])
def test_merge_string_without_exactly_one_space(tmp_path, merge):
    obj = tiny_tokenizer()
    obj["model"]["merges"].append(merge)
    path = write_json(tmp_path, obj)
    with pytest.raises(ts.TokenizerError, match="separated by one space"):
        ts.Tokenizer.from_file(str(path))


# --------------------------------------------------------------------------------------------------
# paths


def test_nonexistent_path(tmp_path):
    path = tmp_path / "does-not-exist" / "tokenizer.json"
    with pytest.raises((FileNotFoundError, ts.TokenizerError)) as info:
        ts.Tokenizer.from_file(str(path))
    assert_mentions(info, "does-not-exist")


def test_from_pretrained_folder_without_tokenizer_json(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises((FileNotFoundError, ts.TokenizerError)) as info:
        ts.Tokenizer.from_pretrained(str(tmp_path))
    assert_mentions_any(info, "tokenizer.json", str(tmp_path))


def test_from_pretrained_missing_folder(tmp_path):
    with pytest.raises((FileNotFoundError, ts.TokenizerError)) as info:
        ts.Tokenizer.from_pretrained(str(tmp_path / "no-such-model"))
    assert_mentions(info, "no-such-model")


def test_from_pretrained_loads_a_folder(tmp_path):
    write_json(tmp_path, tiny_tokenizer())
    tok = ts.Tokenizer.from_pretrained(str(tmp_path))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in TINY_TEXTS:
        assert tok.encode(text) == hf.encode(text).ids


def test_tiktoken_nonexistent_file(tmp_path):
    path = tmp_path / "missing.tiktoken"
    with pytest.raises((FileNotFoundError, ts.TokenizerError)) as info:
        ts.Tokenizer.from_tiktoken(str(path), pattern=r"\S+|\s+", special_tokens={})
    assert_mentions(info, "missing.tiktoken")


def test_tiktoken_malformed_rank_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("IQ== 0\nIg== 1\n!!!not-base64!!! 2\n", encoding="utf-8")
    with pytest.raises(ts.TokenizerError) as info:
        ts.Tokenizer.from_tiktoken(str(path), pattern=r"\S+|\s+", special_tokens={})
    assert_mentions(info, "bad.tiktoken")


def test_tiktoken_bad_pattern(tmp_path):
    require_data()
    spec = tiktoken_encodings()["gpt2"]
    with pytest.raises((ValueError, ts.TokenizerError)):
        ts.Tokenizer.from_tiktoken(str(TIKTOKEN_DIR / spec["file"]), pattern="(unclosed", special_tokens={})


# --------------------------------------------------------------------------------------------------
# decode with invalid ids


def _tokenizers_for_ids():
    return ["gpt2", "cl100k_base"]


@pytest.mark.parametrize("name", _tokenizers_for_ids())
def test_decode_invalid_ids(name):
    tok = ts_tokenizer(name)
    top = max(hf_tokenizer(name).get_vocab(with_added_tokens=True).values())
    for bad in (-1, -(2**40), top + 1, top + 1000, 2**32 - 1, 2**32, 2**64 + 5):
        with pytest.raises((ValueError, ts.TokenizerError)) as info:
            tok.decode([15, bad, 16])
        assert_mentions(info, bad)
        with pytest.raises((ValueError, ts.TokenizerError)) as info:
            tok.decode_batch([[1, 2], [15, bad]])
        assert_mentions(info, bad)
    assert tok.decode([top]) == hf_tokenizer(name).decode([top], skip_special_tokens=False)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_decode_ids_in_vocabulary_holes(name):
    """Ids below the largest id that name no token: either HF's result (the hole is dropped) or a
    ValueError / TokenizerError naming the id; never a crash or garbage."""
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    used = set(hf.get_vocab(with_added_tokens=True).values())
    holes = [i for i in range(max(used)) if i not in used]
    assert holes, f"{name} should have holes in its ids"
    for hole in holes[:3] + holes[-2:]:
        ids = [15339, hole, 15339]
        try:
            got = tok.decode(ids)
        except (ValueError, ts.TokenizerError) as e:
            assert str(hole) in str(e), str(e)
        else:
            assert got == hf.decode(ids, skip_special_tokens=False), (hole, got)
        assert tok.id_to_token(hole) is None


def test_decode_wrong_types():
    require_data()
    tok = ts_tokenizer("gpt2")
    for bad in (["a"], [1.5], None, 5, [[1, 2]]):
        with pytest.raises(TypeError):
            tok.decode(bad)
    with pytest.raises(TypeError):
        tok.decode_batch([[1, "x"]])


# --------------------------------------------------------------------------------------------------
# encode with bad arguments


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "ok \ud83d", "中文\udc00中文"])
def test_lone_surrogates(text):
    require_data()
    tok = ts_tokenizer("gpt2")
    for call in (
        lambda: tok.encode(text),
        lambda: tok.encode(text, special="text"),
        lambda: tok.encode(text, special="raise"),
        lambda: tok.encode(text, special={"<|endoftext|>"}),
        lambda: tok.encode_batch(["fine", text]),
        lambda: tok.encode_batch_numpy(["fine", text]),
    ):
        with pytest.raises((ValueError, UnicodeError)):
            call()
    # the tokenizer still works afterwards
    assert tok.encode("hello") == hf_tokenizer("gpt2").encode("hello").ids


def test_wrong_types():
    require_data()
    tok = ts_tokenizer("gpt2")
    for bad in (123, None, b"bytes", ["list"], 1.5):
        with pytest.raises(TypeError):
            tok.encode(bad)
    for bad in ([1, 2], ["ok", None], [b"x"]):
        with pytest.raises(TypeError):
            tok.encode_batch(bad)
    with pytest.raises(TypeError):
        tok.encode_batch(None)


def test_bad_special_policy():
    require_data()
    tok = ts_tokenizer("gpt2")
    with pytest.raises(ValueError) as info:
        tok.encode("hello", special="bogus")
    assert_mentions(info, "bogus")
    with pytest.raises(ValueError):
        tok.encode_batch(["hello"], special="ALLOW")
    with pytest.raises((TypeError, ValueError)):
        tok.encode("hello", special=123)


def test_empty_inputs():
    require_data()
    for name in ("gpt2", "deepseek-coder"):
        tok, hf = ts_tokenizer(name), hf_tokenizer(name)
        assert tok.encode("") == hf.encode("").ids
        assert tok.encode("", add_special_tokens=False) == []
        assert tok.encode_batch([]) == []
        assert tok.encode_batch(["", ""]) == [hf.encode("").ids] * 2
        ids, offsets = tok.encode_batch_numpy([])
        assert ids.shape == (0,) and offsets.tolist() == [0]
        assert tok.decode([]) == ""
        assert tok.decode_batch([]) == []


# --------------------------------------------------------------------------------------------------
# very long inputs


LONG_KINDS = {
    "a-run": lambda n, rnd: "a" * n,
    "random-letters": lambda n, rnd: "".join(rnd.choices(string.ascii_letters, k=n)),
    "e-acute-run": lambda n, rnd: "\u00e9" * n,
    "cjk-run": lambda n, rnd: "中" * n,
    "random-cjk-letters": lambda n, rnd: "".join(rnd.choices("中文字测试汉语ab", k=n)),
    "digits": lambda n, rnd: "7" * n,
    "punctuation": lambda n, rnd: "!" * n,
    "spaces": lambda n, rnd: " " * n,
    "newlines": lambda n, rnd: "\n" * n,
    "mixed-whitespace": lambda n, rnd: "".join(rnd.choices(" \t\n\r", k=n)),
}


def long_input(kind: str, n: int) -> str:
    return LONG_KINDS[kind](n, random.Random(1234))


LONG_200K = {kind: long_input(kind, 200_000) for kind in LONG_KINDS}


@pytest.mark.parametrize("kind", sorted(LONG_200K))
@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen2", "o200k_base"])
def test_200kb_without_whitespace_matches_hf(name, kind):
    text = LONG_200K[kind]
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    assert_same_ids(tok.encode(text), hf.encode(text).ids, text[:50] + "...", f"{name} {kind} (200k chars)")


@pytest.mark.parametrize("kind", ["a-run", "random-letters", "e-acute-run", "spaces", "cjk-run", "mixed-whitespace"])
@pytest.mark.parametrize("name", ["gpt2", "llama3"])
def test_10mb_inputs_finish(name, kind):
    """Must terminate (a hang shows up as a CI timeout) and round-trip."""
    text = long_input(kind, 10_000_000)
    tok = ts_tokenizer(name)
    ids = tok.encode(text)
    assert len(ids) > 0
    assert tok.decode(ids) == text


def test_100mb_document():
    """English corpus repeated to 100 MB, encoded in one call; decode round trip is exact."""
    require_data()
    english = "".join(read_corpus(p) for p in corpus_files() if p.parent.name == "en")
    assert english
    reps = 100_000_000 // len(english.encode("utf-8")) + 1
    text = english * reps
    del english
    tok = ts_tokenizer("gpt2")
    ids = tok.encode(text)
    assert len(ids) > len(text) // 10
    assert tok.decode(ids) == text
    # the start is tokenized as if it were encoded on its own: cut between two words
    cut = next(p for p in range(100_000, len(text))
               if text[p] == " " and text[p - 1].isalpha() and text[p + 1].isalpha())
    head_ids = hf_tokenizer("gpt2").encode(text[:cut]).ids
    assert ids[: len(head_ids)] == head_ids


@pytest.mark.parametrize("id", [2**31, 2**32 - 2, 5_000_000])
def test_an_id_far_beyond_the_vocabulary_is_a_format_error_not_an_abort(tmp_path, id):
    spec = tiny_tokenizer()
    spec["model"]["vocab"]["zz"] = id
    with pytest.raises(ts.TokenizerFormatError) as e:
        ts.Tokenizer.from_file(write_json(tmp_path, spec))
    assert_mentions(e, "model.vocab", str(id), "far beyond")
    # Holes of a real size still load (tiktoken vocabularies have some).
    spec["model"]["vocab"]["zz"] = len(spec["model"]["vocab"]) + 1000
    ts.Tokenizer.from_file(write_json(tmp_path, spec))


def run_python(code: str, seconds: int, what: str):
    """`code` in a fresh Python; a test failure naming `what` if it runs past `seconds`."""
    import subprocess
    import sys

    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} still runs after {seconds} s")


@pytest.mark.parametrize("pattern", [r"(a+)+(?=b)", r"(a|aa)+\1c", r"(?:a|a)+(?!a)c"])
def test_a_regex_bomb_in_a_split_pattern_ends_with_an_error_naming_it(tmp_path, pattern):
    spec = tiny_tokenizer()
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    path = write_json(tmp_path, spec)
    code = (
        "import sys, tokensmith as ts\n"
        f"tok = ts.Tokenizer.from_file({str(path)!r})\n"
        "try:\n    tok.encode('a' * 40 + '!')\nexcept ts.InvalidInputError as e:\n    print(e)\n"
    )
    done = run_python(code, 120, "the pattern")
    assert done.returncode == 0, done.stderr
    assert pattern in done.stdout.replace("\\\\", "\\") and "backtrack" in done.stdout  # Rust escapes \\


def test_a_100_kb_added_token_loads_and_matches(tmp_path):
    """One long token once made the matcher's build quadratic (100 KB: hours)."""

    spec = tiny_tokenizer()
    long_token = "<|" + "x" * 100_000 + "|>"
    spec["added_tokens"].append({"id": len(spec["model"]["vocab"]), "content": long_token, "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    path = write_json(tmp_path, spec)
    code = (
        "import tokensmith as ts\n"
        f"tok = ts.Tokenizer.from_file({str(path)!r})\n"
        "token = '<|' + 'x' * 100_000 + '|>'\n"
        "print(tok.encode('hello' + token + 'world').count(tok.token_to_id(token)))\n"
    )
    done = run_python(code, 120, "loading a tokenizer with one 100 KB added token")
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr


@pytest.mark.parametrize("name", ["gpt2", "llama2", "qwen2"])
def test_a_text_too_long_for_the_memory_left_is_a_memory_error_not_an_abort(name):
    """100 MB of one letter (one piece that merges in about 2.4 GB) and 96 MB of CJK, and
    30 million ids to decode, with 100 MB, 300 MB and 1 GB of address space left
    (RLIMIT_AS). The process used to abort (or hang in a panic that could not allocate);
    now each call raises MemoryError or succeeds, and the tokenizer goes on working."""
    import subprocess
    import sys

    require_data()
    code = (
        "import resource, tokensmith as ts\n"
        f"tok = ts.Tokenizer.from_file({str(tokenizer_path(name))!r})\n"
        "texts = ['a' * 100_000_000, '中文' * 16_000_000]\n"
        "expected = tok.encode('hello world')\n"
        "ids = [expected[0]] * 30_000_000\n"
        "tok.encode_with_offsets('warm up')\n"
        "calls = [tok.encode, tok.encode_with_offsets, lambda t: tok.encode_batch([t]),\n"
        "         lambda t: tok.encode_batch_numpy([t])]\n"
        "vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
        "def run(f, arg):\n"
        "    try:\n        f(arg)\n        print('ok')\n"
        "    except MemoryError as e:\n        print('MemoryError', e)\n"
        "for limit in (1000, 300, 100):\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (vm + (limit << 20), resource.RLIM_INFINITY))\n"
        "    for text in texts:\n"
        "        for f in calls:\n            run(f, text)\n"
        "    run(tok.decode, ids)\n"
        "    run(lambda i: tok.decode_batch([i]), ids)\n"
        "assert tok.encode('hello world') == expected\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 30 and all(line == "ok" or line.startswith("MemoryError") for line in lines), lines
    assert sum(line != "ok" for line in lines) >= 20, lines


def test_a_1_mb_token_in_a_tiktoken_rank_file_loads_and_encodes(tmp_path):
    """Finding the merges a rank file implies tried every cut of every token: one 1 MB
    token took minutes to load (quadratic in its length)."""
    import base64

    long_token = b"x" * 1_000_000
    lines = [base64.b64encode(bytes([b])).decode() + f" {b}" for b in range(256)]
    lines += [base64.b64encode(b"xx").decode() + " 256", base64.b64encode(long_token).decode() + " 257"]
    path = tmp_path / "long.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    code = (
        "import tokensmith as ts\n"
        f"tok = ts.Tokenizer.from_tiktoken({str(path)!r}, pattern=r'\\w+|\\s+')\n"
        "print(tok.encode('x' * 1_000_000), tok.encode('xxxxx'))\n"
    )
    done = run_python(code, 120, "loading a rank file with one 1 MB token")
    assert done.returncode == 0, done.stderr[-2000:]
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)} | {b"xx": 256, long_token: 257}
    reference = tiktoken.Encoding("long", pat_str=r"\w+|\s+", mergeable_ranks=ranks, special_tokens={})
    assert done.stdout.strip() == f"{reference.encode('x' * 1_000_000)} {reference.encode('xxxxx')}"
