"""Special-token policies against injected special-token strings.

For every byte-level tokenizer the texts contain every special token string of that tokenizer
(the HF added tokens with special=True), glued to words, glued to each other, and partial.

* ``special="allow"`` (default)  == HF default
* ``special="text"``             == HF with ``encode_special_tokens = True``; never a special id
* ``special="raise"``            raises SpecialTokenError naming the first special token and its
                                   offset in Python ``str`` characters (not bytes)
* ``special={...}``              only those become control ids; reference built by splitting the
                                   text on the allowed tokens and encoding the rest with HF in
                                   "text" mode, then applying the template HF applies.
"""

from __future__ import annotations

import inspect
import pickle
from unittest import mock

import pytest
import tokenizers

import tokensmith as ts
from conftest import (
    ALL_TOKENIZERS,
    assert_same,
    assert_same_ids,
    hf_special_ids,
    hf_special_tokens,
    hf_tokenizer,
    hf_tokenizer_text,
    load_ts_fresh,
    tokenizer_path,
    ts_tokenizer,
)

# A prefix whose length in characters differs from its length in UTF-8 bytes and in UTF-16 units,
# and which contains a decomposed letter (NFC for qwen2 must not shift the offsets).
PREFIX = "中文前缀：cafe\u0301 👍🏽 "

PARTIALS_ALWAYS = ["<|im_en", "<|endoftext", "<|endoftext|", "|endoftext|>", "<|im_start", "im_end|>", "<s", "</s", "[INST"]


def first_special(text: str, specials) -> tuple:
    """(offset, token) of the leftmost, then longest, special token in text; None if none."""
    best = None
    for s in specials:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
            best = (i, s)
    return best


def split_on(text: str, allowed) -> list:
    """Split text into [(is_token, piece)] on leftmost-longest occurrences of `allowed`."""
    out, pos = [], 0
    while True:
        hit = first_special(text[pos:], allowed)
        if hit is None:
            break
        i, tok = hit
        out.append((False, text[pos:pos + i]))
        out.append((True, tok))
        pos += i + len(tok)
    out.append((False, text[pos:]))
    return out


def injection_texts(specials: list) -> list:
    texts = []
    n = len(specials)
    for i, s in enumerate(specials):
        nxt = specials[(i + 1) % n]
        texts += [
            s,
            f"foo{s}bar",
            f"{PREFIX}{s}",
            f" {s} \n",
            f"{s}{nxt}",
            f"{s}{s}",
            f"word{s}{nxt}word",
            s[:-1],
            s[1:],
            s[: len(s) // 2],
            s[:-1] + s,
            f"{s[:-1]} {s[1:]}",
        ]
    texts += PARTIALS_ALWAYS
    texts += [p + "x" for p in PARTIALS_ALWAYS]
    texts.append("".join(specials))
    texts.append(" ".join(specials))
    texts.append(PREFIX + "\n".join(f"<{s}>" for s in specials[:50]))
    return texts


_cache: dict = {}


def case(name: str):
    """(specials, special_ids, texts) for a tokenizer, derived from the HF reference."""
    if name not in _cache:
        hf = hf_tokenizer(name)
        specials = hf_special_tokens(hf)
        assert specials, f"{name} has no special tokens"
        if len(specials) > 1000:
            # gemma4: 6000+ reserved <unusedN> slots; keep the named ones and a spread of the rest
            # (the automaton is still built from all of them on both sides)
            specials = specials[:100] + specials[100:-100:25] + specials[-100:]
        _cache[name] = (specials, hf_special_ids(hf), injection_texts(specials))
    return _cache[name]


def template_parts(name: str) -> tuple:
    """(prefix, suffix) ids that HF's post-processor puts around a single sequence."""
    hf = hf_tokenizer(name)
    with_t = hf.encode("x", add_special_tokens=True).ids
    body = hf.encode("x", add_special_tokens=False).ids
    for k in range(len(with_t) - len(body) + 1):
        if with_t[k:k + len(body)] == body:
            return with_t[:k], with_t[k + len(body):]
    raise AssertionError(f"cannot find the sequence inside the template for {name}")


def expected_with_allowed(name: str, text: str, allowed, add_special_tokens: bool) -> list:
    hf = hf_tokenizer(name)
    hf_text = hf_tokenizer_text(name)
    ids = []
    for is_token, piece in split_on(text, allowed):
        if is_token:
            ids.append(hf.token_to_id(piece))
        elif piece:
            ids.extend(hf_text.encode(piece, add_special_tokens=False).ids)
    if add_special_tokens:
        prefix, suffix = template_parts(name)
        ids = prefix + ids + suffix
    return ids


def allowed_sets(specials: list) -> list:
    sets = [set(), {specials[0]}, {specials[-1]}, set(specials[:2]), set(specials[::3])]
    for pair in (("<|im_start|>", "<|im_end|>"), ("[INST]", "[/INST]"), ("<|begin_of_text|>", "<|eot_id|>")):
        if all(p in specials for p in pair):
            sets.append(set(pair))
    return sets


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_allow_is_hf_default(name):
    specials, _, texts = case(name)
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    for add in (True, False):
        want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=add)]
        assert_same(tok.encode_batch(texts, add_special_tokens=add), want, texts, f"{name} default add={add}")
        assert_same(tok.encode_batch(texts, add_special_tokens=add, special="allow"), want, texts,
                    f"{name} allow add={add}")
    want = [e.ids for e in hf.encode_batch(texts[:200])]
    assert_same([tok.encode(t) for t in texts[:200]], want, texts[:200], f"{name} single encode")
    # every special token string on its own is exactly its control id
    for s in specials:
        assert tok.encode(s, add_special_tokens=False) == [hf.token_to_id(s)], s


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_text_policy_equals_hf_encode_special_tokens(name):
    _, _, texts = case(name)
    tok, hf_text = ts_tokenizer(name), hf_tokenizer_text(name)
    for add in (True, False):
        want = [e.ids for e in hf_text.encode_batch(texts, add_special_tokens=add)]
        assert_same(tok.encode_batch(texts, add_special_tokens=add, special="text"), want, texts,
                    f"{name} special='text' add={add}")
    want = [e.ids for e in hf_text.encode_batch(texts[:200])]
    assert_same([tok.encode(t, special="text") for t in texts[:200]], want, texts[:200],
                f"{name} single encode special='text'")


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_text_policy_never_yields_special_ids(name):
    specials, special_ids, texts = case(name)
    tok = ts_tokenizer(name)
    template_ids = [i for i in tok.encode("", special="text") if i in special_ids]
    for text, ids in zip(texts, tok.encode_batch(texts, add_special_tokens=False, special="text")):
        leaked = [i for i in ids if i in special_ids]
        assert not leaked, f"{name}: special ids {leaked} from {text!r} with special='text'"
    for text, ids in zip(texts, tok.encode_batch(texts, special="text")):
        assert [i for i in ids if i in special_ids] == template_ids, (name, text)


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_raise_policy_names_token_and_char_offset(name):
    specials, _, texts = case(name)
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    raised = 0
    for text in texts:
        hit = first_special(text, specials)
        if hit is None:
            # no special token inside: same as the reference, template included
            assert_same_ids(tok.encode(text, special="raise"), hf.encode(text).ids, text, f"{name} raise (clean)")
            continue
        offset, token = hit
        with pytest.raises(ts.SpecialTokenError) as info:
            tok.encode(text, special="raise")
        err = info.value
        assert isinstance(err, ts.TokenizerError)
        assert err.token == token, f"{name}: {text!r}: reported {err.token!r}, first is {token!r}"
        assert err.offset == offset, f"{name}: {text!r}: reported offset {err.offset}, expected {offset}"
        assert token in str(err) and str(offset) in str(err), str(err)
        raised += 1
    assert raised > len(specials), "the injection texts should contain special tokens"


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_raise_offset_is_in_characters_not_bytes(name):
    specials, _, _ = case(name)
    tok = ts_tokenizer(name)
    for s in (specials[0], specials[-1]):
        text = PREFIX + "some text " + s + " tail " + s
        expected = len(PREFIX) + len("some text ")
        assert expected != len((PREFIX + "some text ").encode("utf-8"))
        with pytest.raises(ts.SpecialTokenError) as info:
            tok.encode(text, special="raise")
        assert (info.value.token, info.value.offset) == (s, expected)
        assert text[info.value.offset:].startswith(s)


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_raise_policy_in_batches(name):
    specials, _, _ = case(name)
    tok = ts_tokenizer(name)
    clean = ["hello world", "中文 text", ""]
    dirty = clean + [PREFIX + specials[-1]]
    hf = hf_tokenizer(name)
    assert tok.encode_batch(clean, special="raise") == [e.ids for e in hf.encode_batch(clean)]
    with pytest.raises(ts.SpecialTokenError) as info:
        tok.encode_batch(dirty, special="raise")
    assert info.value.token == specials[-1]
    assert info.value.offset == len(PREFIX)
    with pytest.raises(ts.SpecialTokenError):
        tok.encode_batch_numpy(dirty, special="raise")


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_allowed_set_policy(name):
    specials, special_ids, texts = case(name)
    tok = ts_tokenizer(name)
    for allowed in allowed_sets(specials):
        allowed_ids = {hf_tokenizer(name).token_to_id(s) for s in allowed}
        for add in (False, True):
            want = [expected_with_allowed(name, t, allowed, add) for t in texts]
            got = tok.encode_batch(texts, add_special_tokens=add, special=allowed)
            label = sorted(allowed)[:3]
            assert_same(got, want, texts, f"{name} special={label}{'...' if len(allowed) > 3 else ''} add={add}")
            if not add:
                for text, ids in zip(texts, got):
                    leaked = [i for i in ids if i in special_ids and i not in allowed_ids]
                    assert not leaked, f"{name}: ids {leaked} not in the allowed set from {text!r}"
        single = [tok.encode(t, add_special_tokens=False, special=allowed) for t in texts[:100]]
        assert_same(single, [expected_with_allowed(name, t, allowed, False) for t in texts[:100]], texts[:100],
                    f"{name} single encode special={sorted(allowed)[:3]}")


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_empty_allowed_set_is_text_and_full_set_is_allow(name):
    specials, _, texts = case(name)
    tok = ts_tokenizer(name)
    assert tok.encode_batch(texts, special=set()) == tok.encode_batch(texts, special="text")
    assert_same(tok.encode_batch(texts, special=set(specials)),
                [e.ids for e in hf_tokenizer(name).encode_batch(texts)], texts, f"{name} all specials allowed")
    assert tok.encode_batch(texts, special=frozenset(specials)) == tok.encode_batch(texts, special=set(specials))


def test_reference_texts_have_no_ambiguous_overlaps():
    """Guard for the reference of test_allowed_set_policy: no special token occurrence overlaps
    another in the generated texts (so 'split on allowed' is the only sensible answer)."""
    for name in ALL_TOKENIZERS:
        specials, _, texts = case(name)
        for text in texts:
            spans = []
            for s in specials:
                start = text.find(s)
                while start >= 0:
                    spans.append((start, start + len(s), s))
                    start = text.find(s, start + 1)
            spans.sort()
            for (a0, a1, sa), (b0, b1, sb) in zip(spans, spans[1:]):
                assert b0 >= a1, f"{name}: {sa!r} and {sb!r} overlap in {text!r}"


@pytest.mark.parametrize(
    "special, error",
    [("bogus", ValueError), ("only", ValueError), (5, TypeError), (["<|eot_id|>", 1], TypeError), (["<nope>"], ValueError)],
)
def test_encode_checks_special_as_the_other_methods_do(special, error):
    """`encode` checks `special` in Rust, the other methods in Python (`_policy`): the same
    exception, with the same message, for every kind of wrong value."""
    tok = ts_tokenizer("llama3")
    with pytest.raises(error) as from_rust:
        tok.encode("hi", special=special)
    with pytest.raises(error) as from_python:
        tok.encode_batch(["hi"], special=special)
    assert str(from_rust.value) == str(from_python.value)


def test_encode_takes_any_collection_of_token_strings():
    tok = ts_tokenizer("llama3")
    text = "<|eot_id|> and <|begin_of_text|>"
    expected = tok.encode_batch([text], add_special_tokens=False, special={"<|eot_id|>"})[0]
    assert tok.token_to_id("<|eot_id|>") in expected
    assert tok.token_to_id("<|begin_of_text|>") not in expected
    for special in [{"<|eot_id|>"}, ["<|eot_id|>"], ("<|eot_id|>",), iter(["<|eot_id|>"]), {"<|eot_id|>": 1}]:
        assert tok.encode(text, add_special_tokens=False, special=special) == expected


def test_encode_takes_its_options_by_keyword_with_the_documented_defaults():
    """Keyword-only options, "allow" and the template by default, a docstring."""
    tok, hf = ts_tokenizer("qwen2"), hf_tokenizer("qwen2")
    text = "hi <|im_end|> there"
    assert tok.encode(text) == tok.encode(text, add_special_tokens=True, special="allow") == hf.encode(text).ids
    assert tok.encode(text, special="text") == hf_tokenizer_text("qwen2").encode(text).ids
    with pytest.raises(TypeError):
        tok.encode(text, False)
    with pytest.raises(TypeError, match="expected str"):
        tok.encode(text.encode())
    params = inspect.signature(tok.encode).parameters
    assert [(p.name, p.kind, p.default) for p in params.values()] == [
        ("text", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("add_special_tokens", inspect.Parameter.KEYWORD_ONLY, True),
        ("special", inspect.Parameter.KEYWORD_ONLY, "allow"),
    ]
    assert "special" in tok.encode.__doc__
    assert "special" in ts.Tokenizer.encode.__doc__


def test_encode_is_a_method_that_pickles_and_subclasses_override():
    """What a speed-up once broke (binding the core's method to each instance, the
    thirty-sixth round): `tok.encode` handed to worker processes (`datasets.map(tok.encode,
    num_proc=...)`), a subclass's own `encode`, `Tokenizer.encode` called on the class or
    patched there."""
    tok = ts_tokenizer("qwen2")
    text = "hi <|im_end|> there"
    assert pickle.loads(pickle.dumps(tok.encode))(text) == tok.encode(text)
    assert ts.Tokenizer.encode(tok, text, special="text") == tok.encode(text, special="text")

    class Marked(ts.Tokenizer):
        def encode(self, text, **options):
            return [-1, *super().encode(text, **options)]

    assert Marked.from_file(tokenizer_path("qwen2")).encode(text) == [-1, *tok.encode(text)]
    with mock.patch.object(ts.Tokenizer, "encode", lambda self, text, **options: [7]):
        assert ts.Tokenizer.from_file(tokenizer_path("qwen2")).encode(text) == [7]


def test_encode_follows_the_tokenizer_when_its_core_is_replaced():
    """Reserved slots reused, unpickling and `copy` make a new core: `encode` uses it."""
    tok = load_ts_fresh("llama3")
    (box,) = tok.reuse_reserved(["<|box_start|>"])
    text = "a <|box_start|> b"
    expected = tokenizers.Tokenizer.from_str(tok.to_str()).encode(text, add_special_tokens=False).ids
    assert box in expected
    assert tok.encode(text, add_special_tokens=False) == expected
    assert pickle.loads(pickle.dumps(tok)).encode(text, add_special_tokens=False) == expected
    assert tok.copy().encode(text, add_special_tokens=False) == expected
