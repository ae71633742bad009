"""``encode_with_offsets`` equals the reference's ``Encoding.ids`` and ``Encoding.offsets``.

On every shared tokenizer (a sample of lines of every corpus file plus hand-picked hard cases)
and on synthetic tokenizer.json variants built from the real files: the JSON is edited here and
the same text is loaded by both libraries, so the reference is always ``tokenizers`` itself.
For the variants the ids, the offsets and the decode (both ``skip_special_tokens`` values) of
the reference ids are compared, with ``add_special_tokens`` True and False.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import tokenizers

import tokensmith as ts
from conftest import (
    ALL_TOKENIZERS,
    corpus_files,
    corpus_lines,
    hf_special_tokens,
    hf_tokenizer,
    require_data,
    tokenizer_path,
    ts_tokenizer,
)

# --------------------------------------------------------------------------------------------------
# texts

HARD_CASES = [
    "Hello there, how",
    "Hello",
    " Hello",
    "  Hello  ",
    "Hello   world  ",
    "   ",
    " ",
    "",
    "a  b   c    d",
    "trailing space ",
    "\u00a0",
    "a\u00a0b \u00a0 c\u00a0",
    "x \u0301 y z",
    "cafe\u0301",
    "caf\u00e9 cafe\u0301s CAFE\u0301",
    "\u0301",
    "e\u0301\u0301\u0301",
    "😀",
    "hi 😀 there 👨\u200d👩\u200d👧\u200d👦!",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "𠀀𪚥 rare CJK 𠮷野家",
    "\U0010fffd\U000e0001",
    "中文 text 日本語テキスト",
    "▁",
    "▁▁",
    "▁Hello ▁ world▁",
    " ▁x",
    "<s>Hello",
    "Hi</s> there",
    "<s> <s>  </s>x</s>",
    "<unk> <pad>",
    "\n",
    "\n\nHello\n\n",
    "\t\tindented\ttabs",
    "line one\r\nline two\r\n",
    "3.14159 and 1234567 and 12,345",
    "don't won't it's I'LL",
    "ﬁ ﬂ Ⅻ ² ①",
    "İstanbul ß ǅ Ω",
    "ABC DEF Ghi",
    "Ａｂｃ　全角",
    "wait... what?! (yes) [no] {maybe}",
    "x" * 300,
    " " * 40 + "x",
    "αβγ δεζ",
    "مرحبا بالعالم",
]


def special_cases(name: str) -> list:
    """Texts after, before and between the tokenizer's own special tokens."""
    specials = hf_special_tokens(hf_tokenizer(name))
    picked = specials[:3] + specials[-2:]
    out = []
    for i, s in enumerate(picked):
        t = picked[(i + 1) % len(picked)]
        out += [s, f"{s}Hello", f"Hi{s} there", f" {s} ", f"{s}{t}", f"a {s}  {t}b", f"{s}\u00a0x", f"{s}▁y"]
    return out


@functools.lru_cache(maxsize=None)
def corpus_sample(per_file: int) -> tuple:
    """`per_file` lines spread over each corpus file (deterministic)."""
    require_data()
    out = []
    for path in corpus_files():
        lines = corpus_lines(path)
        step = max(1, len(lines) // per_file)
        out.extend(lines[::step][:per_file])
    assert out, "no corpus lines"
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# checks


def _fail_shortest(failures: list, total: int, context: str) -> None:
    failures.sort(key=lambda f: len(f[0]))
    text, what, got, want = failures[0]
    pytest.fail(
        f"{context}: {len(failures)} of {total} texts differ ({what}); shortest: {text!r}\n"
        f"tokensmith: {got!r}\nreference : {want!r}",
        pytrace=False,
    )


def assert_offsets_match(tok, hf, texts, context: str, add_special_tokens=(True, False)) -> None:
    texts = list(texts)
    failures = []
    total = 0
    for add in add_special_tokens:
        encs = hf.encode_batch(texts, add_special_tokens=add)
        for text, enc in zip(texts, encs):
            total += 1
            want_ids, want_offsets = enc.ids, [tuple(o) for o in enc.offsets]
            got_ids, got_offsets = tok.encode_with_offsets(text, add_special_tokens=add)
            got_offsets = [tuple(o) for o in got_offsets]
            if got_ids != want_ids:
                failures.append((text, f"ids, add_special_tokens={add}", got_ids, want_ids))
            elif got_offsets != want_offsets:
                failures.append((text, f"offsets, add_special_tokens={add}",
                                 list(zip(got_ids, got_offsets)), list(zip(want_ids, want_offsets))))
    if failures:
        _fail_shortest(failures, total, context)


def assert_encode_and_decode_match(tok, hf, texts, context: str) -> None:
    texts = list(texts)
    failures = []
    for add in (True, False):
        want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=add)]
        got = tok.encode_batch(texts, add_special_tokens=add)
        failures += [(t, f"encode_batch ids, add_special_tokens={add}", g, w)
                     for t, g, w in zip(texts, got, want) if g != w]
        if add:
            for skip in (False, True):
                want_text = hf.decode_batch(want, skip_special_tokens=skip)
                got_text = tok.decode_batch(want, skip_special_tokens=skip)
                failures += [(t, f"decode skip_special_tokens={skip} of {ids}", g, w)
                             for t, ids, g, w in zip(texts, want, got_text, want_text) if g != w]
    if failures:
        _fail_shortest(failures, len(texts) * 4, context)


# --------------------------------------------------------------------------------------------------
# the shared tokenizers as they are


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_offsets_hard_cases(name):
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    assert_offsets_match(tok, hf, HARD_CASES + special_cases(name), f"{name} hard cases")


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_offsets_corpus_sample(name):
    tok, hf = ts_tokenizer(name), hf_tokenizer(name)
    assert_offsets_match(tok, hf, corpus_sample(40), f"{name} corpus sample")


@pytest.mark.parametrize("name", ALL_TOKENIZERS)
def test_offsets_ids_equal_encode(name):
    """The ids of encode_with_offsets are the ids of encode, under every special policy."""
    tok = ts_tokenizer(name)
    texts = HARD_CASES + special_cases(name)
    for special in ("allow", "text"):
        for add in (True, False):
            bad = [t for t in texts
                   if tok.encode_with_offsets(t, add_special_tokens=add, special=special)[0]
                   != tok.encode(t, add_special_tokens=add, special=special)]
            assert not bad, (name, special, add, bad[:3])


# --------------------------------------------------------------------------------------------------
# synthetic variants built from the real files


@functools.lru_cache(maxsize=None)
def base_json(name: str) -> str:
    with open(tokenizer_path(name), encoding="utf-8") as f:
        return f.read()


def variant(name: str, **changes) -> dict:
    """The tokenizer.json of `name` with top-level keys replaced (model keys via `model`)."""
    j = json.loads(base_json(name))
    model_changes = changes.pop("model", None) or {}
    for k, v in changes.items():
        j[k] = copy.deepcopy(v)
    j["model"].update(model_changes)
    return j


def metaspace(scheme: str, split: bool) -> dict:
    return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}


def metaspace_decoder(scheme: str, split: bool) -> dict:
    return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
LLAMA_DECODER = None  # filled from the file: Replace, ByteFallback, Fuse, Strip

FALCON_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Punctuation", "behavior": "Contiguous"},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    {"type": "Digits", "individual_digits": False},
    {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": False},
]}

SP_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"},
    {"type": "Fuse"},
]}


def sp_variant(pre_tokenizer, normalizer=None, decoder=None, **kw) -> dict:
    """llama2's vocabulary (byte fallback) with another normalizer / pre-tokenizer."""
    return variant("llama2", normalizer=normalizer, pre_tokenizer=pre_tokenizer,
                   decoder=decoder if decoder is not None else SP_DECODER, **kw)


def gpt2_variant(**kw) -> dict:
    return variant("gpt2", **kw)


NORMALIZERS = {
    "Lowercase": {"type": "Lowercase"},
    "NFKC": {"type": "NFKC"},
    "NFD": {"type": "NFD"},
    "NFKD": {"type": "NFKD"},
    "Strip": {"type": "Strip", "strip_left": True, "strip_right": True},
    "StripRight": {"type": "Strip", "strip_left": False, "strip_right": True},
    "NFD-StripAccents": {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}]},
    "StripAccents": {"type": "StripAccents"},
    "BertNormalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
    "BertNormalizer-no-lower": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                "strip_accents": False, "lowercase": False},
    "Replace-regex-spaces": {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
    "Replace-regex-digits": {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "<n>"},
    "Replace-string-grows": {"type": "Replace", "pattern": {"String": "e"}, "content": "EEE"},
    "Lowercase-Strip-NFKC": {"type": "Sequence", "normalizers": [
        {"type": "Lowercase"}, {"type": "Strip", "strip_left": True, "strip_right": True}, {"type": "NFKC"}]},
}


def variants() -> dict:
    v = {}
    for scheme in ("first", "always", "never"):
        for split in (True, False):
            v[f"llama2-metaspace-{scheme}-split{split}"] = lambda s=scheme, p=split: sp_variant(
                metaspace(s, p), decoder=metaspace_decoder(s, p))
    # the same Metaspace with the file's own decoder sequence
    v["llama2-metaspace-first-llama-decoder"] = lambda: variant("llama2", normalizer=None,
                                                                 pre_tokenizer=metaspace("first", False))
    v["gpt2-falcon-sequence"] = lambda: gpt2_variant(pre_tokenizer=FALCON_PRE)
    v["gpt2-add-prefix-space"] = lambda: gpt2_variant(pre_tokenizer=dict(BYTE_LEVEL, add_prefix_space=True))
    v["gpt2-bytelevel-no-regex"] = lambda: gpt2_variant(pre_tokenizer=dict(BYTE_LEVEL, use_regex=False))
    v["gpt2-whitespace-bytelevel"] = lambda: gpt2_variant(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Whitespace"}, dict(BYTE_LEVEL, use_regex=False)]})
    for pre in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer"):
        v[f"llama2-{pre}"] = lambda p=pre: sp_variant({"type": p})
    v["llama2-CharDelimiterSplit"] = lambda: sp_variant({"type": "CharDelimiterSplit", "delimiter": " "})
    v["llama2-CharDelimiterSplit-comma"] = lambda: sp_variant({"type": "CharDelimiterSplit", "delimiter": ","})
    v["llama2-Punctuation-Metaspace"] = lambda: sp_variant({"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "Isolated"}, metaspace("always", True)]})
    v["llama2-Digits-individual"] = lambda: sp_variant({"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": True}]})
    for norm_name, norm in NORMALIZERS.items():
        v[f"llama2-norm-{norm_name}"] = lambda n=norm: sp_variant(metaspace("always", True), normalizer=n)
        v[f"gpt2-norm-{norm_name}"] = lambda n=norm: gpt2_variant(normalizer=n)
    v["gpt2-roberta-trim"] = lambda: gpt2_variant(post_processor={
        "type": "RobertaProcessing", "sep": ["<|endoftext|>", 50256], "cls": ["<|endoftext|>", 50256],
        "trim_offsets": True, "add_prefix_space": False})
    v["gpt2-roberta-trim-prefix"] = lambda: gpt2_variant(
        pre_tokenizer=dict(BYTE_LEVEL, add_prefix_space=True),
        post_processor={"type": "RobertaProcessing", "sep": ["<|endoftext|>", 50256],
                        "cls": ["<|endoftext|>", 50256], "trim_offsets": True, "add_prefix_space": True})
    v["gpt2-bytelevel-post-trim"] = lambda: gpt2_variant(post_processor=dict(BYTE_LEVEL, trim_offsets=True))
    v["gpt2-bytelevel-post-trim-prefix"] = lambda: gpt2_variant(
        pre_tokenizer=dict(BYTE_LEVEL, add_prefix_space=True),
        post_processor=dict(BYTE_LEVEL, add_prefix_space=True, trim_offsets=True))
    v["llama2-bert-processing"] = lambda: sp_variant({"type": "BertPreTokenizer"}, post_processor={
        "type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1]})
    v["llama2-template-bos-eos"] = lambda: variant("llama2", post_processor={
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                           "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}})
    v["gpt2-empty-prefix-suffix"] = lambda: gpt2_variant(model={"continuing_subword_prefix": "",
                                                                "end_of_word_suffix": ""})
    v["gpt2-bpe-decoder"] = lambda: gpt2_variant(decoder={"type": "BPEDecoder", "suffix": "</w>"})
    v["llama2-no-byte-fallback-unk"] = lambda: variant("llama2", model={"byte_fallback": False})
    v["llama2-no-fuse-unk"] = lambda: variant("llama2", model={"byte_fallback": False, "fuse_unk": False})
    return v


VARIANTS = variants()


@functools.lru_cache(maxsize=4)
def variant_pair(key: str) -> tuple:
    require_data()
    text = json.dumps(VARIANTS[key]())
    hf = tokenizers.Tokenizer.from_str(text)
    tok = ts.Tokenizer.from_str(text)
    return hf, tok


def variant_texts(key: str) -> list:
    base = "gpt2" if key.startswith("gpt2") else "llama2"
    return HARD_CASES + special_cases(base) + list(corpus_sample(16))


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_variant_offsets(key):
    hf, tok = variant_pair(key)
    assert_offsets_match(tok, hf, variant_texts(key), f"variant {key}")


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_variant_encode_decode(key):
    hf, tok = variant_pair(key)
    assert_encode_and_decode_match(tok, hf, variant_texts(key), f"variant {key}")


def test_gpt2_add_prefix_space_offsets_start():
    """The reference's offsets for the brief's example (kept as a readable smoke check)."""
    hf, tok = variant_pair("gpt2-add-prefix-space")
    text = "Hello there, how"
    want = hf.encode(text)
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == want.ids
    assert [o[0] for o in offsets] == [o[0] for o in want.offsets]
    assert [tuple(o) for o in offsets] == [tuple(o) for o in want.offsets]


def test_empty_prefix_suffix_loads_and_encodes_as_gpt2():
    """`continuing_subword_prefix: ""` / `end_of_word_suffix: ""` must not change anything."""
    hf, tok = variant_pair("gpt2-empty-prefix-suffix")
    texts = HARD_CASES + list(corpus_sample(16))
    plain = ts_tokenizer("gpt2")
    assert tok.encode_batch(texts) == plain.encode_batch(texts)
    assert tok.encode_batch(texts) == [e.ids for e in hf.encode_batch(texts)]


def test_saved_variants_reload_in_reference(tmp_path):
    """tokensmith's save() of a variant is loaded by the reference and encodes the same."""
    texts = HARD_CASES + list(corpus_sample(4))
    bad = []
    for key in sorted(VARIANTS):
        hf, tok = variant_pair(key)
        out = tmp_path / f"{key}.json"
        tok.save(str(out))
        reloaded = tokenizers.Tokenizer.from_file(str(out))
        for add in (True, False):
            want = [(e.ids, e.offsets) for e in hf.encode_batch(texts, add_special_tokens=add)]
            got = [(e.ids, e.offsets) for e in reloaded.encode_batch(texts, add_special_tokens=add)]
            if got != want:
                i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
                bad.append((key, add, texts[i], got[i], want[i]))
    assert not bad, f"{len(bad)} saved variants differ after the reference reloads them; first: {bad[0]}"
