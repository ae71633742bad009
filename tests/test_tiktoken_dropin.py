"""``tokensmith.tiktoken`` against tiktoken itself, method by method, on every encoding.

The reference is the real ``tiktoken.get_encoding(name)``, made to run offline: a temporary
tiktoken cache holds the shared rank files under the names tiktoken gives its downloads (the
SHA-1 of the URL), and tiktoken checks each against its published SHA-256. p50k_base is derived
from r50k_base (tiktoken's hash check proves the derivation). tiktoken's "gpt2" needs GPT-2's
encoder.json, which is not shared: its ranks are r50k_base's (tiktoken asserts so), so gpt2 is
compared with r50k_base's reference. tiktoken's own test suite also runs against the drop-in:
tests/peer/tiktoken_suite.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load
import tiktoken.model
import tiktoken.registry

import tokensmith.tiktoken as ts_tiktoken
from conftest import TIKTOKEN_DIR, corpus_files, corpus_lines, require_data
from tokensmith.tiktoken import load

NAMES = ["gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base", "o200k_harmony"]
RANK_FILES = {"r50k_base": "gpt2.tiktoken", "cl100k_base": "cl100k_base.tiktoken", "o200k_base": "o200k_base.tiktoken"}
URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def _fill_cache(folder: Path) -> None:
    """The shared rank files where tiktoken keeps its downloads."""
    for name, file_name in RANK_FILES.items():
        data = (TIKTOKEN_DIR / file_name).read_bytes()
        (folder / hashlib.sha1(URL.format(name).encode()).hexdigest()).write_bytes(data)
        if name == "r50k_base":
            p50k = load._p50k_from_r50k(data)
            (folder / hashlib.sha1(URL.format("p50k_base").encode()).hexdigest()).write_bytes(p50k)


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory):
    require_data()
    folder = tmp_path_factory.mktemp("tiktoken-cache")
    _fill_cache(folder)
    return folder


@pytest.fixture(scope="module")
def pair(tiktoken_cache):
    """name -> (tokensmith.tiktoken's encoding, tiktoken's), both read from the same cache."""
    saved = {k: os.environ.get(k) for k in ("TIKTOKEN_CACHE_DIR", "TOKENSMITH_TIKTOKEN_DIR")}
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tiktoken_cache)
    os.environ.pop("TOKENSMITH_TIKTOKEN_DIR", None)
    try:
        ts_tiktoken.registry.ENCODINGS.clear()
        out = {}
        for name in NAMES:
            reference = tiktoken.get_encoding("r50k_base" if name == "gpt2" else name)
            out[name] = (ts_tiktoken.get_encoding(name), reference)
        return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def texts() -> list[str]:
    """Lines of every corpus (a sample), and texts around the special tokens."""
    require_data()
    out = ["", " ", "hello world", "  \n\n x", "\r\n\t", "a" * 300, "0123456789" * 5, "😀👍🏽", "中文 text"]
    for path in corpus_files():
        lines = corpus_lines(path)
        out += lines[:: max(1, len(lines) // 80)]
    return out


SPECIAL_TEXTS = [
    "<|endoftext|>",
    "hello <|endoftext|> world",
    "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "<|endofprompt|><|reserved_200018|><|start|>user<|message|>hi<|end|>",
    "<|endoftext",
    "x<|endoftext|><|endoftext|>",
]


@pytest.mark.parametrize("name", NAMES)
def test_attributes(pair, name):
    ours, ref = pair[name]
    assert ours.name == name
    assert (ours.n_vocab, ours.max_token_value, ours.eot_token) == (ref.n_vocab, ref.max_token_value, ref.eot_token)
    assert ours.special_tokens_set == ref.special_tokens_set
    assert ours._special_tokens == ref._special_tokens
    assert ours._pat_str == ref._pat_str
    assert ours._mergeable_ranks == ref._mergeable_ranks
    assert ours.token_byte_values() == ref.token_byte_values()
    assert repr(ours) == f"<Encoding {name!r}>"
    for token in (0, 50256, ref.max_token_value):
        assert ours.is_special_token(token) == ref.is_special_token(token)


@pytest.mark.parametrize("name", NAMES)
def test_encode_every_way(pair, name):
    ours, ref = pair[name]
    lines = texts() + SPECIAL_TEXTS
    assert ours.encode_ordinary_batch(lines) == ref.encode_ordinary_batch(lines)
    assert ours.encode_batch(lines, allowed_special="all") == ref.encode_batch(lines, allowed_special="all")
    assert ours.encode_batch(lines, disallowed_special=()) == ref.encode_batch(lines, disallowed_special=())
    for line in lines:
        assert ours.encode_ordinary(line) == ref.encode_ordinary(line)
        assert ours.encode(line, allowed_special="all") == ref.encode(line, allowed_special="all")
        assert np.array_equal(ours.encode_to_numpy(line, allowed_special="all"), ref.encode_to_numpy(line, allowed_special="all"))
    whole = "\n".join(lines)
    assert ours.encode_ordinary(whole) == ref.encode_ordinary(whole)
    array = ours.encode_to_numpy(whole, disallowed_special=())
    assert array.dtype == np.uint32 and array.tolist() == ref.encode(whole, disallowed_special=())


def _outcome(f, *args, **kwargs):
    try:
        return f(*args, **kwargs)
    except ValueError as e:
        return ("ValueError", str(e).split("\n")[0].split("token ")[-1])


@pytest.mark.parametrize("name", NAMES)
def test_special_token_rules(pair, name):
    """The default raises on any special token's text; allowed and disallowed sets, with
    names that are not special tokens (ignored), as tiktoken combines them."""
    ours, ref = pair[name]
    specials = sorted(ref.special_tokens_set)[:4] + ["<|not_a_token|>"]
    choices = [
        {},
        {"allowed_special": "all"},
        {"disallowed_special": ()},
        {"allowed_special": "all", "disallowed_special": "all"},
        {"allowed_special": set(specials[:1]), "disallowed_special": ()},
        {"allowed_special": set(specials[1:3])},
        {"allowed_special": {"<|not_a_token|>"}},
        {"disallowed_special": set(specials[:1])},
        {"allowed_special": "all", "disallowed_special": set(specials[:1])},
        {"allowed_special": frozenset(specials), "disallowed_special": ()},
    ]
    for text in SPECIAL_TEXTS + ["".join(specials), " ".join(specials) + " tail"]:
        for kwargs in choices:
            want = _outcome(ref.encode, text, **kwargs)
            assert _outcome(ours.encode, text, **kwargs) == want, (text, kwargs)
            assert _outcome(ours.encode_batch, [text, "ok"], **kwargs) == _outcome(ref.encode_batch, [text, "ok"], **kwargs)
            got_np = _outcome(ours.encode_to_numpy, text, **kwargs)
            want_np = _outcome(ref.encode_to_numpy, text, **kwargs)
            assert (got_np if isinstance(got_np, tuple) else got_np.tolist()) == (
                want_np if isinstance(want_np, tuple) else want_np.tolist()
            )


def test_batches_of_any_iterable(pair):
    ours, ref = pair["cl100k_base"]
    texts_ = ["hello", "a <|endoftext|> b"]
    for kwargs in ({"allowed_special": {"<|endoftext|>"}}, {"disallowed_special": ["<|fim_prefix|>"]}):
        assert ours.encode_batch((t for t in texts_), **kwargs) == ref.encode_batch((t for t in texts_), **kwargs)
    assert _outcome(ours.encode_batch, (t for t in texts_)) == _outcome(ref.encode_batch, iter(texts_))
    assert ours.encode_batch("abc") == ref.encode_batch("abc")
    assert ours.encode_ordinary_batch(iter(texts_)) == ref.encode_ordinary_batch(iter(texts_))
    # What it hands out is the caller's to change.
    ours.token_byte_values().clear()
    ours.special_tokens_set.clear()
    assert ours.encode_with_unstable("hello fan")[1] == sorted(ref.encode_with_unstable("hello fan")[1])
    assert ours.special_tokens_set == ref.special_tokens_set
    with pytest.raises(AssertionError):
        ours.is_special_token("x")


def test_two_names_one_id(pair):
    """o200k_harmony: <|endofprompt|> and <|reserved_200018|> share id 200018; allowing one
    name leaves the other's text plain text, as tiktoken matches names, not ids."""
    ours, ref = pair["o200k_harmony"]
    text = "a<|reserved_200018|>b<|endofprompt|>c"
    for allowed in ({"<|endofprompt|>"}, {"<|reserved_200018|>"}, {"<|endofprompt|>", "<|reserved_200018|>"}):
        kwargs = {"allowed_special": allowed, "disallowed_special": ()}
        assert ours.encode(text, **kwargs) == ref.encode(text, **kwargs), allowed
        assert ours.encode_batch([text], **kwargs) == ref.encode_batch([text], **kwargs)
        assert ours.encode_to_numpy(text, **kwargs).tolist() == ref.encode_to_numpy(text, **kwargs).tolist()


@pytest.mark.parametrize("name", ["r50k_base", "cl100k_base", "o200k_base"])
def test_surrogates(pair, name):
    ours, ref = pair[name]
    for text in ["\ud83d", "a\ud83d\udc4db", "\udc00x\ud800", "<|endoftext|>\ud83d"]:
        assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
        assert _outcome(ours.encode, text) == _outcome(ref.encode, text)
        assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
        assert ours.encode_batch([text, "x"], disallowed_special=()) == ref.encode_batch([text, "x"], disallowed_special=())


@pytest.mark.parametrize("name", NAMES)
def test_decode_every_way(pair, name):
    ours, ref = pair[name]
    rng = random.Random(name)
    ids = ref.encode("\n".join(texts()), allowed_special="all")
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode_bytes(ids) == ref.decode_bytes(ids)
    assert ours.decode_tokens_bytes(ids[:5000]) == ref.decode_tokens_bytes(ids[:5000])
    assert ours.decode_with_offsets(ids[:5000]) == ref.decode_with_offsets(ids[:5000])
    valid = sorted(set(ref._mergeable_ranks.values()) | ref._special_token_values)
    for _ in range(300):
        seq = [rng.choice(valid) for _ in range(rng.randint(0, 8))]
        for errors in ("replace", "ignore", "backslashreplace", "surrogateescape"):
            assert ours.decode(seq, errors=errors) == ref.decode(seq, errors=errors)
        assert ours.decode_bytes_batch([seq, seq[:1]]) == ref.decode_bytes_batch([seq, seq[:1]])
        assert ours.decode_batch([seq]) == ref.decode_batch([seq])
    known = set(valid)
    bad = [ref.max_token_value + 1] + [i for i in range(ref.max_token_value) if i not in known][:3]
    for token in bad:
        with pytest.raises(KeyError):
            ours.decode_single_token_bytes(token)
        with pytest.raises(KeyError):
            ours.decode_bytes([0, token])
        with pytest.raises(KeyError):
            ref.decode_bytes([0, token])


@pytest.mark.parametrize("name", NAMES)
def test_single_tokens(pair, name):
    ours, ref = pair[name]
    rng = random.Random(name)
    valid = sorted(set(ref._mergeable_ranks.values()) | ref._special_token_values)
    for token in rng.sample(valid, 2000) + sorted(ref._special_token_values):
        raw = ref.decode_single_token_bytes(token)
        assert ours.decode_single_token_bytes(token) == raw
        assert ours.encode_single_token(raw) == ref.encode_single_token(raw)
    for piece in [b"", b"hello world", b"\xff\xfe", "<|endoftext|> ".encode(), "no such token here"]:
        with pytest.raises(KeyError):
            ref.encode_single_token(piece)
        with pytest.raises(KeyError):
            ours.encode_single_token(piece)


def _cuts(name: str) -> list[bytes]:
    """Texts cut at random bytes: mostly not valid UTF-8 at the end."""
    rng = random.Random(name)
    out = [b"\x80", b"\x80" * 5, b" \xec\x8b\xa4\xed", b"hello \xe4", b"  \n\xf0\x9f", b"\xe4\xb8\xadabc\xff"]
    for line in rng.sample(texts(), 120):
        raw = line.encode()
        if raw:
            out.append(raw[: rng.randint(1, len(raw))])
            out.append(raw[: rng.randint(0, len(raw))] + bytes([rng.randint(0x80, 0xFF)]) + raw[:5])
    return out


@pytest.mark.parametrize("name", ["r50k_base", "p50k_edit", "cl100k_base", "o200k_base"])
def test_encode_bytes(pair, name):
    ours, ref = pair[name]
    for raw in _cuts(name):
        assert ours._encode_bytes(raw) == ref._encode_bytes(raw), raw
        assert ours.decode_bytes(ours._encode_bytes(raw)) == raw
        assert ours._encode_single_piece(raw) == ref._encode_single_piece(raw)


@pytest.mark.parametrize("name", ["r50k_base", "cl100k_base", "o200k_harmony"])
def test_encode_with_unstable(pair, name):
    ours, ref = pair[name]
    rng = random.Random(name)
    prompts = ["hello fanta", "hello wor", "x  ", "today\n ", "def f(x):\n    ", "中文", "<|endoftext|>", "a<|endoftext|>"]
    prompts += [t[: rng.randint(1, 40)] for t in rng.sample(texts(), 40) if t]
    for text in prompts:
        for kwargs in ({"allowed_special": "all"}, {"disallowed_special": ()}):
            stable, completions = ref.encode_with_unstable(text, **kwargs)
            got = ours.encode_with_unstable(text, **kwargs)
            assert got[0] == stable, text
            assert got[1] == sorted(completions), text
    assert _outcome(ours.encode_with_unstable, "x<|endoftext|>") == _outcome(ref.encode_with_unstable, "x<|endoftext|>")


def test_model_names():
    for table in (tiktoken.model.MODEL_TO_ENCODING, tiktoken.model.MODEL_PREFIX_TO_ENCODING):
        for model in table:
            for name in (model, model + "2024-01-01"):
                try:
                    want = tiktoken.encoding_name_for_model(name)
                except KeyError:
                    with pytest.raises(KeyError):
                        ts_tiktoken.encoding_name_for_model(name)
                    continue
                assert ts_tiktoken.encoding_name_for_model(name) == want, name
    with pytest.raises(KeyError):
        ts_tiktoken.encoding_for_model("no-such-model")


def test_names(pair):
    assert ts_tiktoken.list_encoding_names() == tiktoken.list_encoding_names()
    with pytest.raises(ValueError, match="Unknown encoding"):
        ts_tiktoken.get_encoding("no_such_encoding")
    with pytest.raises(ValueError):
        ts_tiktoken.get_encoding(3)


@pytest.mark.parametrize("name", ["p50k_base", "o200k_harmony"])
def test_pickle(pair, name):
    ours, _ = pair[name]
    assert pickle.loads(pickle.dumps(ours)) is not None
    custom = ts_tiktoken.Encoding(
        "custom", pat_str=ours._pat_str, mergeable_ranks=ours._mergeable_ranks, special_tokens={"<|x|>": 300_000}
    )
    back = pickle.loads(pickle.dumps(custom))
    text = "hello <|x|> world"
    assert back.encode(text, allowed_special="all") == custom.encode(text, allowed_special="all")
    assert 300_000 in custom.encode(text, allowed_special="all")


def test_custom_encoding_errors(pair):
    ours, ref = pair["r50k_base"]
    with pytest.raises(ValueError, match="explicit_n_vocab"):
        ts_tiktoken.Encoding("x", pat_str=ours._pat_str, mergeable_ranks=ours._mergeable_ranks,
                             special_tokens={}, explicit_n_vocab=5)
    with pytest.raises(ValueError):
        ts_tiktoken.Encoding("x", pat_str="(unclosed", mergeable_ranks={b"a": 0}, special_tokens={})
    with pytest.raises(TypeError):
        ts_tiktoken.Encoding("x", pat_str=r"\w+", special_tokens={})


# ------------------------------------------------------------------ finding rank files offline


def _fresh(monkeypatch, cache, data_dir=None):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    if data_dir is None:
        monkeypatch.delenv("TOKENSMITH_TIKTOKEN_DIR", raising=False)
    else:
        monkeypatch.setenv("TOKENSMITH_TIKTOKEN_DIR", str(data_dir))


def test_rank_files_from_a_data_dir(monkeypatch, tmp_path):
    require_data()
    _fresh(monkeypatch, tmp_path / "empty-cache", TIKTOKEN_DIR)
    for name in ("r50k_base", "p50k_base", "cl100k_base", "o200k_base"):
        found = load.rank_file(name)
        assert str(TIKTOKEN_DIR) in found.source
        assert hashlib.sha256(found.data).hexdigest() == load._RANK_FILES[name][1].sha256


def test_missing_rank_file_says_where(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path / "cache", tmp_path / "data")
    with pytest.raises(FileNotFoundError) as e:
        load.rank_file("cl100k_base")
    message = str(e.value)
    assert "never downloads" in message and str(tmp_path / "data" / "cl100k_base.tiktoken") in message
    assert hashlib.sha1(URL.format("cl100k_base").encode()).hexdigest() in message
    with pytest.raises(FileNotFoundError, match="derive p50k_base"):
        load.rank_file("p50k_base")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load.load_tiktoken_bpe(URL.format("cl100k_base"))


def test_corrupt_rank_file_is_refused(monkeypatch, tmp_path):
    require_data()
    data = tmp_path / "data"
    data.mkdir()
    good = (TIKTOKEN_DIR / "cl100k_base.tiktoken").read_bytes()
    (data / "cl100k_base.tiktoken").write_bytes(good[:-10])
    _fresh(monkeypatch, tmp_path / "cache", data)
    with pytest.raises(ValueError, match="SHA-256"):
        load.rank_file("cl100k_base")
    # A file in tiktoken's cache with the wrong contents: refused too (tiktoken would fetch again).
    cache = tmp_path / "cache2"
    cache.mkdir()
    (cache / hashlib.sha1(URL.format("o200k_base").encode()).hexdigest()).write_bytes(good)
    _fresh(monkeypatch, cache)
    with pytest.raises(ValueError, match="SHA-256"):
        load.rank_file("o200k_base")


def test_gpt2_from_encoder_json(tmp_path):
    """GPT-2's encoder.json (token string -> id) gives r50k_base's ranks."""
    require_data()
    import json

    vocab = json.loads((TIKTOKEN_DIR.parent / "tokenizers" / "gpt2" / "tokenizer.json").read_text())["model"]["vocab"]
    path = tmp_path / "encoder.json"
    path.write_text(json.dumps(vocab))
    ranks = load.data_gym_to_mergeable_bpe_ranks("", str(path))
    assert ranks == load.load_tiktoken_bpe(str(TIKTOKEN_DIR / "gpt2.tiktoken"))


def test_plugins_are_found(tmp_path):
    """A tiktoken_ext plugin's encodings, as tiktoken finds them."""
    require_data()
    plugin = tmp_path / "tiktoken_ext"
    plugin.mkdir()
    (plugin / "my_plugin.py").write_text(
        textwrap.dedent(
            f"""
            from tokensmith.tiktoken.load import load_tiktoken_bpe

            def mine():
                return {{
                    "name": "mine",
                    "pat_str": r"\\S+|\\s+",
                    "mergeable_ranks": load_tiktoken_bpe({str(TIKTOKEN_DIR / "gpt2.tiktoken")!r}),
                    "special_tokens": {{"<|mine|>": 50256}},
                }}

            ENCODING_CONSTRUCTORS = {{"mine": mine}}
            """
        )
    )
    program = textwrap.dedent(
        """
        import tokensmith.tiktoken as tiktoken
        assert "mine" in tiktoken.list_encoding_names(), tiktoken.list_encoding_names()
        enc = tiktoken.get_encoding("mine")
        print(enc.encode("hello world<|mine|>", allowed_special="all"))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    reference = tiktoken.Encoding(
        "mine",
        pat_str=r"\S+|\s+",
        mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(TIKTOKEN_DIR / "gpt2.tiktoken")),
        special_tokens={"<|mine|>": 50256},
    )
    assert out.stdout.strip() == str(reference.encode("hello world<|mine|>", allowed_special="all"))
