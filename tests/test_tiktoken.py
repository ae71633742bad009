"""Tokenizer.from_tiktoken parity with tiktoken itself.

For each entry of ../shared/data/tiktoken/encodings.json the rank file is loaded by tokensmith
(``from_tiktoken(file, pattern=..., special_tokens=...)``) and by tiktoken
(``tiktoken.Encoding(..., mergeable_ranks=load_tiktoken_bpe(path))``), then compared on every line
of every corpus file and on each whole file:

* ``special="text"``   == ``encode_ordinary``
* ``special="allow"``  == ``encode(x, allowed_special="all")``
* ``special={...}``    == ``encode(x, allowed_special={...}, disallowed_special=())``
* ``special="raise"``  raises where tiktoken's default ``encode`` refuses the text
* ``decode``           == tiktoken ``decode`` (and the original text: valid UTF-8 round trip)
"""

from __future__ import annotations

import functools

import pytest
import tiktoken
import tiktoken.load

import tokensmith as ts
from conftest import (
    DATA_MISSING_REASON,
    TIKTOKEN_DIR,
    assert_same,
    assert_same_ids,
    assert_same_strings,
    corpus_lines,
    corpus_params,
    read_corpus,
    tiktoken_encodings,
)

ENCODINGS = tiktoken_encodings()
ENCODING_PARAMS = list(ENCODINGS) or [
    pytest.param(None, marks=pytest.mark.skip(reason=DATA_MISSING_REASON), id="no-data")
]


@functools.lru_cache(maxsize=None)
def reference(name: str) -> tiktoken.Encoding:
    spec = ENCODINGS[name]
    ranks = tiktoken.load.load_tiktoken_bpe(str(TIKTOKEN_DIR / spec["file"]))
    return tiktoken.Encoding(
        name=f"reference-{name}",
        pat_str=spec["pattern"],
        mergeable_ranks=ranks,
        special_tokens=dict(spec["special_tokens"]),
    )


@functools.lru_cache(maxsize=None)
def loaded(name: str) -> "ts.Tokenizer":
    spec = ENCODINGS[name]
    return ts.Tokenizer.from_tiktoken(
        str(TIKTOKEN_DIR / spec["file"]),
        pattern=spec["pattern"],
        special_tokens=dict(spec["special_tokens"]),
    )


def specials_of(name: str) -> list:
    return sorted(ENCODINGS[name]["special_tokens"], key=ENCODINGS[name]["special_tokens"].get)


def injection_texts(name: str) -> list:
    specials = specials_of(name)
    texts = []
    for i, s in enumerate(specials):
        nxt = specials[(i + 1) % len(specials)]
        texts += [s, f"foo{s}bar", f"中文{s}中文", f"{s}{nxt}", f" {s} \n", s[:-1], s[1:], s[:-1] + s,
                  f"print('{s}')"]
    texts += ["".join(specials), " ".join(specials), "<|endoftext", "<|im_start|>", "hello world"]
    return texts


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODING_PARAMS)
@pytest.mark.parametrize("corpus", corpus_params())
def test_corpus_lines_text_policy(name, corpus):
    lines = list(corpus_lines(corpus))
    enc, tok = reference(name), loaded(name)
    want = enc.encode_ordinary_batch(lines, num_threads=4)
    got = tok.encode_batch(lines, special="text")
    assert_same(got, want, lines, f"{name} {corpus.name} special='text' vs encode_ordinary")
    # decode: tiktoken's decode, which is the original line (valid UTF-8 round trip)
    decoded = tok.decode_batch(want)
    assert_same_strings(decoded, lines, want, f"{name} {corpus.name} decode_batch round trip")
    for i in range(0, len(lines), max(1, len(lines) // 50)):
        assert tok.decode(want[i]) == enc.decode(want[i]) == lines[i], (name, corpus.name, i)


@pytest.mark.parametrize("name", ENCODING_PARAMS)
@pytest.mark.parametrize("corpus", corpus_params())
def test_corpus_lines_allow_policy(name, corpus):
    lines = list(corpus_lines(corpus))
    enc, tok = reference(name), loaded(name)
    want = enc.encode_batch(lines, num_threads=4, allowed_special="all")
    assert_same(tok.encode_batch(lines, special="allow"), want, lines,
                f"{name} {corpus.name} special='allow' vs encode(allowed_special='all')")
    assert_same(tok.encode_batch(lines), want, lines, f"{name} {corpus.name} default policy")


@pytest.mark.parametrize("name", ENCODING_PARAMS)
@pytest.mark.parametrize("corpus", corpus_params())
def test_whole_file(name, corpus):
    text = read_corpus(corpus)
    enc, tok = reference(name), loaded(name)
    assert_same_ids(tok.encode(text, special="text"), enc.encode_ordinary(text), f"<whole {corpus.name}>",
                    f"{name} whole file special='text'")


@pytest.mark.parametrize("name", ENCODING_PARAMS)
def test_special_tokens_policies(name):
    enc, tok = reference(name), loaded(name)
    specials = specials_of(name)
    texts = injection_texts(name)
    assert_same(tok.encode_batch(texts, special="allow"),
                [enc.encode(t, allowed_special="all") for t in texts], texts, f"{name} allow")
    assert_same(tok.encode_batch(texts, special="text"),
                [enc.encode_ordinary(t) for t in texts], texts, f"{name} text")
    for allowed in ({specials[0]}, set(specials[-2:]), set()):
        want = [enc.encode(t, allowed_special=allowed, disallowed_special=()) for t in texts]
        assert_same(tok.encode_batch(texts, special=allowed), want, texts, f"{name} special={sorted(allowed)}")
        assert_same([tok.encode(t, special=allowed) for t in texts], want, texts, f"{name} encode special=set")
    special_ids = set(ENCODINGS[name]["special_tokens"].values())
    for t in texts:
        assert not special_ids & set(tok.encode(t, special="text")), t
        try:
            want = enc.encode(t)  # tiktoken's default refuses any special token in the text
        except ValueError:
            with pytest.raises(ts.SpecialTokenError) as info:
                tok.encode(t, special="raise")
            assert t[info.value.offset:].startswith(info.value.token), (t, info.value.token, info.value.offset)
            assert info.value.token in specials
            first = min(t.find(s) for s in specials if s in t)
            assert info.value.offset == first, (t, info.value.offset, first)
        else:
            assert tok.encode(t, special="raise") == want, t


@pytest.mark.parametrize("name", ENCODING_PARAMS)
def test_decode_matches_tiktoken(name):
    enc, tok = reference(name), loaded(name)
    texts = injection_texts(name) + ["héllo wörld 👨‍👩‍👧‍👦 🏳️‍🌈 中文", "\r\n\t  x", ""]
    batch = [enc.encode(t, allowed_special="all") for t in texts]
    assert_same_strings(tok.decode_batch(batch), [enc.decode(ids) for ids in batch], batch, f"{name} decode_batch")
    assert_same_strings([tok.decode(ids) for ids in batch], texts, batch, f"{name} decode round trip")


@pytest.mark.parametrize("name", ENCODING_PARAMS)
def test_vocab_matches_rank_file(name):
    enc, tok = reference(name), loaded(name)
    ranks = tiktoken.load.load_tiktoken_bpe(str(TIKTOKEN_DIR / ENCODINGS[name]["file"]))
    for s, i in ENCODINGS[name]["special_tokens"].items():
        assert tok.token_to_id(s) == i, s
        assert tok.id_to_token(i) == s, i
        assert tok.decode([i]) == s
    # every rank decodes to its bytes (checked on a deterministic stride of the ranks)
    items = sorted(ranks.items(), key=lambda kv: kv[1])
    for raw, rank in items[:: max(1, len(items) // 5000)]:
        assert enc.decode_single_token_bytes(rank) == raw
        assert tok.decode([rank]) == enc.decode([rank]), rank


def test_two_special_strings_on_one_id_as_gpt_oss_harmony_defines_them(tmp_path):
    """tiktoken's o200k_harmony puts <|endofprompt|> and <|reserved_200018|> on id 200018."""
    if "o200k_base" not in ENCODINGS:
        pytest.fail(DATA_MISSING_REASON)
    spec = ENCODINGS["o200k_base"]
    path = str(TIKTOKEN_DIR / spec["file"])
    specials = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018, "<|reserved_200018|>": 200018}
    enc = tiktoken.Encoding("harmony-like", pat_str=spec["pattern"],
                            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(path), special_tokens=specials)
    tok = ts.Tokenizer.from_tiktoken(path, pattern=spec["pattern"], special_tokens=specials)
    text = "a<|endofprompt|>b<|reserved_200018|>c<|endoftext|>"
    want = enc.encode(text, allowed_special="all")
    assert want.count(200018) == 2
    assert tok.encode(text) == want
    assert tok.encode(text, special="text") == enc.encode_ordinary(text)
    with pytest.raises(ts.SpecialTokenError):
        tok.encode(text, special="raise")
    assert tok.decode([200018]) == enc.decode([200018])
    # Saved and reloaded by tokensmith, both strings still match.
    tok.save(tmp_path / "tokenizer.json")
    assert ts.Tokenizer.from_file(tmp_path / "tokenizer.json").encode(text) == want


@pytest.mark.parametrize("name", ENCODING_PARAMS)
def test_saved_file_loads_in_the_reference_and_encodes_like_tiktoken(name, tmp_path):
    """The tokensmith-only settings go where `tokenizers` ignores them (it refuses unknown
    top-level keys): the saved file loads there and gives tiktoken's ids."""
    import tokenizers

    tok = loaded(name)
    tok.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    lines = corpus_lines(corpus_params()[0].values[0])[:2000]
    want = [reference(name).encode_ordinary(line) for line in lines]
    assert_same([e.ids for e in hf.encode_batch(lines, add_special_tokens=False)], want, lines, f"{name} saved")
    assert ts.Tokenizer.from_file(tmp_path / "tokenizer.json").encode_batch(lines) == want
