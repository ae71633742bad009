"""``truncation`` and ``padding`` as the reference applies them (truncation first, then padding).

Each case is a tokenizer.json with ``truncation`` / ``padding`` set, loaded by both libraries;
``encode``, ``encode_batch``, ``encode_batch_numpy`` and ``encode_with_offsets`` must give the
reference's ids (and offsets); ``encode_batch`` pads to the longest of the batch. Setting the
``Tokenizer.truncation`` / ``.padding`` properties must behave as the reference's
``enable_truncation`` / ``enable_padding`` / ``no_truncation`` / ``no_padding``, and ``save()``
must keep both settings so that the reference reloads them.
"""

from __future__ import annotations

import functools
import json

import pytest
import tokenizers

import tokensmith as ts
from conftest import corpus_files, corpus_lines, require_data, tokenizer_path

NAMES = ["gpt2", "llama2", "qwen2", "gemma4"]


@functools.lru_cache(maxsize=None)
def base_json(name: str) -> dict:
    with open(tokenizer_path(name), encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def texts() -> tuple:
    require_data()
    out = ["", " ", "a", "Hello world", "Hi</s> there <|endoftext|>", "中文 text 😀", "x " * 40]
    for path in corpus_files():
        lines = corpus_lines(path)
        out.extend(lines[:: max(1, len(lines) // 6)][:6])
    return tuple(out)


def pad_token(name: str) -> tuple:
    j = base_json(name)
    tok = {"gpt2": "<|endoftext|>", "llama2": "</s>", "qwen2": "<|endoftext|>", "gemma4": "<pad>"}[name]
    pid = next((t["id"] for t in j["added_tokens"] if t["content"] == tok), None)
    if pid is None:
        pid = j["model"]["vocab"][tok]
    return tok, pid


def trunc(max_length, stride=0, direction="Right", strategy="LongestFirst") -> dict:
    return {"direction": direction, "max_length": max_length, "strategy": strategy, "stride": stride}


def pad(name, strategy="BatchLongest", direction="Right", multiple=None) -> dict:
    token, pid = pad_token(name)
    return {"strategy": strategy, "direction": direction, "pad_to_multiple_of": multiple, "pad_id": pid,
            "pad_type_id": 0, "pad_token": token}


def configs(name: str) -> dict:
    c = {
        "trunc-right-16": (trunc(16), None),
        "trunc-left-16": (trunc(16, direction="Left"), None),
        "trunc-right-5-stride-2": (trunc(5, stride=2), None),
        "trunc-left-7-stride-3": (trunc(7, stride=3, direction="Left"), None),
        "trunc-only-first-9": (trunc(9, strategy="OnlyFirst"), None),
        "trunc-only-second-9": (trunc(9, strategy="OnlySecond"), None),
        "trunc-1": (trunc(1), None),
        "trunc-2": (trunc(2), None),
        "trunc-0": (trunc(0), None),
        "trunc-stride-too-big": (trunc(4, stride=4), None),
        "pad-longest-right": (None, pad(name)),
        "pad-longest-left": (None, pad(name, direction="Left")),
        "pad-fixed-24": (None, pad(name, strategy={"Fixed": 24})),
        "pad-fixed-3-left": (None, pad(name, strategy={"Fixed": 3}, direction="Left")),
        "pad-longest-multiple-8": (None, pad(name, multiple=8)),
        "pad-fixed-10-multiple-8": (None, pad(name, strategy={"Fixed": 10}, multiple=8)),
        "trunc-12-pad-longest": (trunc(12), pad(name)),
        "trunc-left-12-pad-left-multiple-5": (trunc(12, direction="Left"), pad(name, direction="Left", multiple=5)),
        "trunc-20-pad-fixed-20": (trunc(20), pad(name, strategy={"Fixed": 20})),
        "trunc-30-stride-5-pad-fixed-8": (trunc(30, stride=5), pad(name, strategy={"Fixed": 8})),
    }
    return c


# every setting on gpt2 and llama2; a few on qwen2 (NFC) and gemma4 (slow to load: 262k vocab)
FEW = ["trunc-left-7-stride-3", "trunc-only-first-9", "pad-longest-left", "trunc-left-12-pad-left-multiple-5"]
CASES = [pytest.param(name, key, check, id=f"{name}-{key}-{check}")
         for name in NAMES for key in (configs("gpt2") if name in ("gpt2", "llama2") else FEW)
         for check in ("paths", "read_back")]


@functools.lru_cache(maxsize=2)
def pair_for(name: str, key: str) -> tuple:
    truncation, padding = configs(name)[key]
    j = dict(base_json(name))
    j["truncation"], j["padding"] = truncation, padding
    text = json.dumps(j)
    return tokenizers.Tokenizer.from_str(text), ts.Tokenizer.from_str(text)


def outcome(fn):
    """('ok', value) or ('error', None): the reference raises for some settings."""
    try:
        return "ok", fn()
    except BaseException as e:  # noqa: BLE001 - any error counts as 'refused'
        # the reference panics (pyo3 PanicException, a BaseException) for a stride too big
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        return "error", type(e).__name__


def same_outcome(got, want, context):
    if want[0] == "error":
        assert got[0] == "error", f"{context}: the reference raises ({want[1]}), tokensmith returned {got[1]!r}"[:2000]
    else:
        assert got[0] == "ok", f"{context}: tokensmith raised {got[1]}, the reference returned {want[1]!r}"[:2000]
        if got[1] != want[1]:
            g, w = got[1], want[1]
            if isinstance(w, list) and len(w) == len(g):
                i = next(i for i, (a, b) in enumerate(zip(g, w)) if a != b)
                pytest.fail(f"{context}: item #{i} differs (text {texts()[i] if i < len(texts()) else '?'!r:.200})\n"
                            f"tokensmith: {g[i]!r:.1500}\nreference : {w[i]!r:.1500}", pytrace=False)
            pytest.fail(f"{context}:\ntokensmith: {g!r:.1500}\nreference : {w!r:.1500}", pytrace=False)


def check_all_paths(tok, hf, context):
    ts_texts = list(texts())
    for add in (True, False):
        ctx = f"{context} add_special_tokens={add}"
        # encode_batch: padding to the batch's longest
        want = outcome(lambda: [e.ids for e in hf.encode_batch(ts_texts, add_special_tokens=add)])
        same_outcome(outcome(lambda: tok.encode_batch(ts_texts, add_special_tokens=add)), want, f"{ctx} encode_batch")

        def flat():
            ids, offs = tok.encode_batch_numpy(ts_texts, add_special_tokens=add)
            return [ids[offs[i]:offs[i + 1]].tolist() for i in range(len(ts_texts))]
        same_outcome(outcome(flat), want, f"{ctx} encode_batch_numpy")
        # single encodes: one text is its own batch
        want1 = outcome(lambda: [hf.encode(t, add_special_tokens=add).ids for t in ts_texts])
        same_outcome(outcome(lambda: [tok.encode(t, add_special_tokens=add) for t in ts_texts]), want1,
                     f"{ctx} encode")
        want_off = outcome(lambda: [(e.ids, [tuple(o) for o in e.offsets])
                                    for e in (hf.encode(t, add_special_tokens=add) for t in ts_texts)])

        def ts_off():
            out = []
            for t in ts_texts:
                ids, offsets = tok.encode_with_offsets(t, add_special_tokens=add)
                out.append((ids, [tuple(o) for o in offsets]))
            return out
        same_outcome(outcome(ts_off), want_off, f"{ctx} encode_with_offsets")
        # a batch of one and an empty batch
        same_outcome(outcome(lambda: tok.encode_batch(ts_texts[3:4], add_special_tokens=add)),
                     outcome(lambda: [e.ids for e in hf.encode_batch(ts_texts[3:4], add_special_tokens=add)]),
                     f"{ctx} batch of one")
        same_outcome(outcome(lambda: tok.encode_batch([], add_special_tokens=add)),
                     outcome(lambda: [e.ids for e in hf.encode_batch([], add_special_tokens=add)]),
                     f"{ctx} empty batch")


@pytest.mark.parametrize("name,key,check", CASES)
def test_settings_in_file(name, key, check):
    """paths: every encode entry point gives the reference's ids; read_back: the properties
    read the settings as the reference writes them back to tokenizer.json."""
    hf, tok = pair_for(name, key)
    if check == "paths":
        check_all_paths(tok, hf, f"{name} {key} (from tokenizer.json)")
    else:
        ref = json.loads(hf.to_str())
        assert tok.truncation == ref["truncation"], (tok.truncation, ref["truncation"])
        assert tok.padding == ref["padding"], (tok.padding, ref["padding"])


def hf_enable(hf, truncation, padding):
    if truncation is None:
        hf.no_truncation()
    else:
        hf.enable_truncation(truncation["max_length"], stride=truncation["stride"],
                             strategy={"LongestFirst": "longest_first", "OnlyFirst": "only_first",
                                       "OnlySecond": "only_second"}[truncation["strategy"]],
                             direction=truncation["direction"].lower())
    if padding is None:
        hf.no_padding()
    else:
        strategy = padding["strategy"]
        hf.enable_padding(direction=padding["direction"].lower(), pad_id=padding["pad_id"],
                          pad_type_id=padding["pad_type_id"], pad_token=padding["pad_token"],
                          length=None if strategy == "BatchLongest" else strategy["Fixed"],
                          pad_to_multiple_of=padding["pad_to_multiple_of"])


SETTER_KEYS = ["trunc-right-16", "trunc-left-7-stride-3", "pad-longest-left", "pad-fixed-24",
               "trunc-12-pad-longest", "trunc-left-12-pad-left-multiple-5", "pad-fixed-10-multiple-8"]


@pytest.mark.parametrize("name", ["gpt2", "llama2"])
def test_property_setters_match_enable_calls(name):
    hf = tokenizers.Tokenizer.from_file(str(tokenizer_path(name)))
    tok = ts.Tokenizer.from_file(str(tokenizer_path(name)))
    assert tok.truncation is None and tok.padding is None
    for key in SETTER_KEYS:
        truncation, padding = configs(name)[key]
        hf_enable(hf, truncation, padding)
        outcome_set = outcome(lambda: (setattr(tok, "truncation", truncation), setattr(tok, "padding", padding)))
        assert outcome_set[0] == "ok", (key, outcome_set)
        ref = json.loads(hf.to_str())
        assert tok.truncation == ref["truncation"], (key, tok.truncation, ref["truncation"])
        assert tok.padding == ref["padding"], (key, tok.padding, ref["padding"])
        check_all_paths(tok, hf, f"{name} {key} (set by property)")
    # turning both off again
    tok.truncation = None
    tok.padding = None
    hf.no_truncation()
    hf.no_padding()
    assert tok.truncation is None and tok.padding is None
    check_all_paths(tok, hf, f"{name} after setting None")
    plain = ts.Tokenizer.from_file(str(tokenizer_path(name)))
    assert tok.encode_batch(list(texts())) == plain.encode_batch(list(texts()))


@pytest.mark.parametrize("name", ["gpt2", "llama2"])
def test_property_setters_partial_dicts_like_reference(name):
    """Dicts with only some keys get the reference's defaults for the rest."""
    hf = tokenizers.Tokenizer.from_file(str(tokenizer_path(name)))
    tok = ts.Tokenizer.from_file(str(tokenizer_path(name)))
    tok.truncation = {"max_length": 10}
    hf.enable_truncation(10)
    assert tok.truncation == json.loads(hf.to_str())["truncation"]
    check_all_paths(tok, hf, f"{name} truncation={{'max_length': 10}}")
    tok.padding = {"pad_id": pad_token(name)[1], "pad_token": pad_token(name)[0]}
    hf.enable_padding(pad_id=pad_token(name)[1], pad_token=pad_token(name)[0])
    assert tok.padding == json.loads(hf.to_str())["padding"]
    check_all_paths(tok, hf, f"{name} padding with defaults")


@pytest.mark.parametrize("name", ["gpt2", "llama2"])
def test_save_keeps_settings(name, tmp_path):
    for key in ("trunc-left-12-pad-left-multiple-5", "trunc-30-stride-5-pad-fixed-8"):
        hf, tok = pair_for(name, key)
        fresh = ts.Tokenizer.from_file(str(tokenizer_path(name)))
        fresh.truncation, fresh.padding = configs(name)[key]
        for t in (tok, fresh):
            out = tmp_path / f"{key}.json"
            t.save(str(out))
            saved = json.loads(out.read_text(encoding="utf-8"))
            ref = json.loads(hf.to_str())
            assert saved["truncation"] == ref["truncation"] and saved["padding"] == ref["padding"], key
            reloaded = tokenizers.Tokenizer.from_file(str(out))
            assert reloaded.truncation == hf.truncation and reloaded.padding == hf.padding, key
            check_all_paths(ts.Tokenizer.from_file(str(out)), reloaded, f"{name} {key} saved and reloaded")
            for add in (True, False):
                assert [e.ids for e in reloaded.encode_batch(list(texts()), add_special_tokens=add)] == \
                    [e.ids for e in hf.encode_batch(list(texts()), add_special_tokens=add)], (key, add)


def test_a_short_text_after_a_long_padded_one_has_only_its_own_ids():
    """A short text is encoded into a vector kept per thread between calls, and shared by
    every tokenizer: a call padded to 70,000 ids (past what is kept) and calls of another
    tokenizer after it must each give the reference's ids, nothing left from the call before."""
    path = str(tokenizer_path("gpt2"))
    hf_padded, hf_plain = tokenizers.Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(path)
    token, pad_id = pad_token("gpt2")
    hf_padded.enable_padding(length=70_000, pad_id=pad_id, pad_token=token)
    padded, plain = ts.Tokenizer.from_file(path), ts.Tokenizer.from_file(path)
    padded.padding = {"strategy": {"Fixed": 70_000}, "pad_id": pad_id, "pad_token": token}
    for text in ["Hello world", "", "a", "中文 text 😀", "x " * 40]:
        before = plain.encode(text, add_special_tokens=False)
        assert padded.encode(text, add_special_tokens=False) == hf_padded.encode(text, add_special_tokens=False).ids
        assert plain.encode(text, add_special_tokens=False) == before == hf_plain.encode(text, add_special_tokens=False).ids
