"""``tokensmith.transformers`` against transformers itself: the same folder loaded by
``transformers.AutoTokenizer`` (the reference) and by the drop-in must answer every call alike.

Each shared tokenizer is made into a model folder the way people ship one (tokenizer.json plus a
tokenizer_config.json with its BOS/EOS/pad tokens, and a real chat template where the model has
one). Calls that tokensmith's engine serves and calls it hands to transformers' engine are both
compared, value for value, with ``word_ids()`` and ``tokens()`` of every row.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import random
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch
import transformers

import tokensmith.transformers as ts_transformers
from conftest import DATA, corpus_files, corpus_lines, require_data, tokenizer_path
from tokensmith.errors import UnsupportedTokenizerError

# name -> tokenizer_config.json entries (the strings are checked to be tokens) and chat template file.
MODELS = {
    "gpt2": ({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, None),
    "llama3": (
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"},
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
    ),
    "qwen2": ({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "llama2": ({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, None),
    "mistral-v3": ({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}, None),
    "gemma4": ({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, None),
    "tekken": ({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, None),
    "deepseek-coder": (
        {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", "pad_token": "<｜end▁of▁sentence｜>"},
        None,
    ),
    "o200k_base": ({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, None),
    "cl100k_base": ({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, None),
}
NAMES = list(MODELS)


def make_folder(name: str, folder) -> str:
    config, template = MODELS[name]
    vocab = json.loads(tokenizer_path(name).read_text(encoding="utf-8"))
    tokens = set(vocab["model"]["vocab"]) | {t["content"] for t in vocab["added_tokens"]}
    assert all(v in tokens for v in config.values()), (name, config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tokenizer_path(name).read_text(encoding="utf-8"), encoding="utf-8")
    config = dict(config, model_max_length=4096)
    if template:
        config["chat_template"] = (DATA / "chat_templates" / template).read_text(encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(folder)


_LOADED: dict = {}


@pytest.fixture(params=NAMES)
def pair(request, tmp_path_factory):
    """(drop-in, reference) for one folder; cached for the module, as both load slowly."""
    require_data()
    name = request.param
    if name not in _LOADED:
        folder = make_folder(name, tmp_path_factory.mktemp("models") / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _LOADED[name] = (folder, ts_transformers.AutoTokenizer.from_pretrained(folder),
                             transformers.AutoTokenizer.from_pretrained(folder))  # fmt: skip
    return _LOADED[name]


def texts() -> list[str]:
    require_data()
    out = ["Hello world", "", " leading space", "a </s> <s> <|endoftext|> <|im_end|> text", "中文 text 😀", "x " * 60]
    for path in corpus_files():
        lines = corpus_lines(path)
        out += lines[:: max(1, len(lines) // 8)][:8]
    return out


def plain(value):
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return ("array", str(value.dtype), value.tolist())
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def same_output(ours, ref, args, kwargs):
    try:
        b = ref(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 (the same error, whichever it is)
        with pytest.raises(type(e)):
            ours(*args, **kwargs)
        return None
    a = ours(*args, **kwargs)
    assert type(a) is type(b)
    assert list(a) == list(b), kwargs
    for key in b:
        assert plain(a[key]) == plain(b[key]), (key, kwargs)
    rows = len(b["input_ids"]) if isinstance(args[0], list) or kwargs.get("return_overflowing_tokens") else None
    for i in range(rows or 1):
        index = i if rows is not None else 0
        assert a.word_ids(index) == b.word_ids(index), (index, kwargs)
        assert a.tokens(index) == b.tokens(index), (index, kwargs)
        assert a.sequence_ids(index) == b.sequence_ids(index)
    return a


CALLS = [
    {},
    {"padding": True},
    {"padding": "longest", "padding_side": "left"},
    {"padding": "max_length", "max_length": 24, "truncation": True},
    {"truncation": True, "max_length": 9},
    {"truncation": "only_first", "max_length": 16, "padding": True, "pad_to_multiple_of": 8},
    {"truncation": True, "max_length": 9, "truncation_side": "left"},
    {"add_special_tokens": False, "padding": True, "return_length": True},
    {"return_attention_mask": False},
    {"padding": True, "return_tensors": "np"},
    {"padding": True, "truncation": True, "max_length": 16, "return_tensors": "pt"},
    {"split_special_tokens": True},
    {"return_offsets_mapping": True, "return_special_tokens_mask": True},
    {"return_token_type_ids": True, "padding": True, "padding_side": "left"},
    {"return_offsets_mapping": True, "return_special_tokens_mask": True, "return_token_type_ids": True,
     "truncation": True, "max_length": 10, "padding": "max_length", "add_special_tokens": False},
    {"return_offsets_mapping": True, "return_special_tokens_mask": True, "truncation": True, "max_length": 6,
     "padding": True, "return_tensors": "np"},
    # transformers' engine:
    {"truncation": True, "max_length": 8, "stride": 2, "return_overflowing_tokens": True},
    {"truncation": "only_second", "max_length": 8},
]

PAIR_CALLS = [
    {},
    {"padding": True, "return_token_type_ids": True, "return_special_tokens_mask": True},
    {"truncation": True, "max_length": 12, "padding": "max_length", "return_token_type_ids": True},
    {"truncation": "longest_first", "max_length": 7, "truncation_side": "left"},
    {"truncation": "only_first", "max_length": 14, "return_special_tokens_mask": True},
    {"truncation": "only_second", "max_length": 14, "padding": True, "padding_side": "left", "return_tensors": "np"},
    {"truncation": "only_second", "max_length": 2},
    {"truncation": True, "max_length": 1},
    {"add_special_tokens": False, "truncation": True, "max_length": 5, "return_token_type_ids": True},
    {"split_special_tokens": True, "return_length": True},
    # transformers' engine:
    {"return_offsets_mapping": True},
]


FAST_CALLS = 16  # the first CALLS run on tokensmith's engine, the others on transformers'


@pytest.fixture
def engine_calls(monkeypatch):
    """How many calls reached transformers' own engine."""
    calls = []
    base = transformers.tokenization_utils_tokenizers.TokenizersBackend._encode_plus

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return base(self, *args, **kwargs)

    monkeypatch.setattr(transformers.tokenization_utils_tokenizers.TokenizersBackend, "_encode_plus", spy)
    return calls


@contextlib.contextmanager
def truncation_side(ours, ref, side):
    """Both tokenizers cut on ``side`` for the block (they are shared between tests)."""
    ours.truncation_side = ref.truncation_side = side
    try:
        yield
    finally:
        ours.truncation_side = ref.truncation_side = "right"


@pytest.mark.parametrize("call", range(len(CALLS)))
def test_call_on_batches_and_single_texts(pair, call, engine_calls):
    _, ours, ref = pair
    kwargs = dict(CALLS[call])
    with truncation_side(ours, ref, kwargs.pop("truncation_side", "right")):
        lines = texts()
        same_output(ours, ref, (lines,), kwargs)
        for text in lines[:6]:
            same_output(ours, ref, (text,), kwargs)
        # Every call went through transformers' engine once (the reference); the drop-in's too
        # only for the options tokensmith's engine leaves to it.
        assert len(engine_calls) == 7 * (1 if call < FAST_CALLS else 2)


@pytest.mark.parametrize("call", range(len(PAIR_CALLS)))
def test_pairs(pair, call, engine_calls):
    _, ours, ref = pair
    kwargs = dict(PAIR_CALLS[call])
    with truncation_side(ours, ref, kwargs.pop("truncation_side", "right")):
        lines = texts()
        firsts, seconds = lines[: len(lines) // 2], lines[len(lines) // 2 : 2 * (len(lines) // 2)]
        results = [same_output(ours, ref, (firsts, seconds), kwargs)]
        results += [same_output(ours, ref, (a, b), kwargs) for a, b in zip(firsts[:5], seconds[:5])]
        results.append(same_output(ours, ref, ("only one", ""), kwargs))
        # The reference's 7 calls, and the drop-in's own on transformers' engine: where the
        # reference raised (the drop-in lets it raise its own error), or for offsets of pairs.
        # ("only one", "") is one text: with only_second, transformers' engine decides.
        raised = sum(r is None for r in results[:-1]) + (results[-1] is None or kwargs.get("truncation") == "only_second")
        fast = call < len(PAIR_CALLS) - 1
        assert len(engine_calls) == 7 + (raised if fast else 6)


def test_random_settings(pair):
    """Random combinations of every option the fast path serves."""
    _, ours, ref = pair
    rng = random.Random(7)
    lines = texts()
    for _ in range(40):
        kwargs = {
            "padding": rng.choice([False, True, "longest", "max_length"]),
            "truncation": rng.choice([False, True, "longest_first", "only_first"]),
            "max_length": rng.choice([None, 1, 3, 12, 40]),
            "add_special_tokens": rng.random() < 0.7,
            "pad_to_multiple_of": rng.choice([None, None, 4]),
            "padding_side": rng.choice([None, "left", "right"]),
            "return_length": rng.random() < 0.3,
        }
        if kwargs["padding"] == "max_length" and kwargs["max_length"] is None:
            kwargs["max_length"] = 10
        batch = rng.sample(lines, rng.randint(1, 6))
        try:
            want = ref(batch, **kwargs)
        except Exception as e:  # noqa: BLE001 (the same error, whichever it is)
            with pytest.raises(type(e)):
                ours(batch, **kwargs)
            continue
        same_output(ours, ref, (batch,), kwargs)
        assert ours(batch[0], **kwargs).keys() == want.keys()


def test_pairs_and_words(pair):
    _, ours, ref = pair
    lines = texts()
    same_output(ours, ref, (lines[:4], lines[4:8]), {"padding": True, "return_offsets_mapping": True})
    same_output(ours, ref, (lines[0], lines[1]), {"truncation": "only_second", "max_length": 6})
    words = [line.split() for line in lines[:5]]
    same_output(ours, ref, (words,), {"is_split_into_words": True, "padding": True})


def test_encode_decode_and_vocabulary(pair):
    _, ours, ref = pair
    for text in texts():
        ids = ref.encode(text)
        assert ours.encode(text) == ids
        assert ours.encode(text, add_special_tokens=False, truncation=True, max_length=5) == ref.encode(
            text, add_special_tokens=False, truncation=True, max_length=5
        )
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
        assert ours.decode(ids, clean_up_tokenization_spaces=True) == ref.decode(ids, clean_up_tokenization_spaces=True)
        assert ours.tokenize(text) == ref.tokenize(text)
        assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
        assert ours.convert_tokens_to_ids(ref.convert_ids_to_tokens(ids)) == ids
    batch = [ref.encode(t) for t in texts()]
    assert ours.batch_decode(batch) == ref.batch_decode(batch)
    assert ours.decode(np.array(batch[3])) == ref.decode(np.array(batch[3]))
    assert ours.decode(torch.tensor(batch[3])) == ref.decode(torch.tensor(batch[3]))
    assert ours.decode([len(ref) + 10]) == ref.decode([len(ref) + 10])
    assert len(ours) == len(ref) and ours.get_vocab() == ref.get_vocab()
    assert ours.all_special_ids == ref.all_special_ids


def test_added_tokens_and_templates_follow(pair, tmp_path):
    folder, _, _ = pair
    ours = ts_transformers.AutoTokenizer.from_pretrained(folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    text = "a<|box_start|>b <task> c 新词"
    for tok in (ours, ref):
        tok.add_special_tokens({"additional_special_tokens": ["<|box_start|>"]})
        tok.add_tokens(["<task>", "新词"])
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    for tok in (ours, ref):
        tok.add_eos_token = True  # rebuilds the post-processor
    assert ours([text, "x"])["input_ids"] == ref([text, "x"])["input_ids"]
    # save_pretrained writes what transformers writes, and transformers loads it back.
    written = ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    for path in written:
        name = os.path.basename(path)
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    reloaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ours"))
    assert type(reloaded).__name__ == type(ref).__name__
    assert reloaded("x y")["input_ids"] == ref("x y")["input_ids"]


@pytest.mark.parametrize("pair", [n for n in NAMES if MODELS[n][1]], indirect=True)
def test_chat_template(pair):
    _, ours, ref = pair
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say <|im_end|> and </s> back to me."},
        {"role": "assistant", "content": "<|im_end|> </s>"},
    ]
    for kwargs in ({}, {"add_generation_prompt": True}, {"return_dict": True, "padding": True}):
        a = ours.apply_chat_template(chat, tokenize=True, **kwargs)
        b = ref.apply_chat_template(chat, tokenize=True, **kwargs)
        assert plain(dict(a) if kwargs.get("return_dict") else a) == plain(dict(b) if kwargs.get("return_dict") else b)
    assert ours.apply_chat_template(chat, tokenize=False) == ref.apply_chat_template(chat, tokenize=False)


def test_special_text_option(pair):
    _, ours, ref = pair
    text = "user says <|im_end|></s><|endoftext|><eos> done"
    assert ours(text, special="text")["input_ids"] == ref(text, split_special_tokens=True)["input_ids"]
    assert ours([text], special="text", return_offsets_mapping=True)["input_ids"] == ref(
        [text], split_special_tokens=True
    )["input_ids"]
    assert ours(text, special="allow")["input_ids"] == ref(text)["input_ids"]
    with pytest.raises(ValueError, match="special"):
        ours(text, special="raise")


def test_pickle_and_copy(pair):
    _, ours, ref = pair
    lines = texts()
    for clone in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours)):
        assert type(clone) is type(ours)
        assert clone(lines, padding=True)["input_ids"] == ref(lines, padding=True)["input_ids"]
    # With tokens added (which o200k_base and cl100k_base cannot rebuild from the saved form).
    ours, ref = copy.deepcopy(ours), copy.deepcopy(ref)
    for tok in (ours, ref):
        tok.add_special_tokens({"additional_special_tokens": ["<|box_zz|>"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone, ref_clone = pickle.loads(pickle.dumps(ours)), pickle.loads(pickle.dumps(ref))
    # (transformers' own pickle reloads the backend from its saved form: on o200k_base the
    # added token comes back at another id, in both.)
    assert clone(lines + ["a<|box_zz|>"])["input_ids"] == ref_clone(lines + ["a<|box_zz|>"])["input_ids"]


def test_datasets_map_and_a_preprocessing_function(pair):
    """A LLaMA-Factory-style pretraining preprocessor and a TRL-style chat preprocessor,
    written for transformers and run unchanged through datasets.map."""
    import datasets

    folder, ours, ref = pair
    name = os.path.basename(folder)

    def pretrain(examples, tokenizer, block_size=64):
        eos = tokenizer.eos_token
        tokenized = tokenizer([text + eos for text in examples["text"]], add_special_tokens=False)
        concatenated = {k: sum(tokenized[k], []) for k in tokenized.keys()}
        total = (len(concatenated["input_ids"]) // block_size) * block_size
        return {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}

    def supervised(examples, tokenizer):
        out = tokenizer(examples["text"], truncation=True, max_length=32, padding="max_length")
        out["labels"] = [[(t if m else -100) for t, m in zip(ids, mask)] for ids, mask in zip(out["input_ids"], out["attention_mask"])]
        return out

    data = datasets.Dataset.from_dict({"text": texts()})
    for fn in (pretrain, supervised):
        got = data.map(fn, batched=True, fn_kwargs={"tokenizer": ours}, remove_columns=["text"], load_from_cache_file=False)
        want = data.map(fn, batched=True, fn_kwargs={"tokenizer": ref}, remove_columns=["text"], load_from_cache_file=False)
        assert got.features == want.features
        assert got.to_dict() == want.to_dict()
    got = data.map(lambda b: ours(b["text"]), batched=True, load_from_cache_file=False)
    want = data.map(lambda b: ref(b["text"]), batched=True, load_from_cache_file=False)
    assert got.features == want.features and got.to_dict() == want.to_dict()
    if name not in ("gpt2", "llama2", "qwen2"):
        return  # the rest: pickling a large vocabulary to workers only takes time
    # In worker processes (the tokenizer is pickled to them) and one example at a time.
    got = data.map(lambda x: ours(x["text"], truncation=True, max_length=16), num_proc=2, load_from_cache_file=False)
    want = data.map(lambda x: ref(x["text"], truncation=True, max_length=16), load_from_cache_file=False)
    assert got.to_dict() == want.to_dict()


def test_threads(pair):
    """Calls with different settings from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    _, ours, ref = pair
    lines = texts()
    settings = [{"truncation": True, "max_length": n} for n in (3, 7, 20)] + [{}]
    jobs = [(lines[i % len(lines) :] + lines[: i % len(lines)], settings[i % 4]) for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: ours(job[0], **job[1])["input_ids"], jobs))
    assert got == [ref(batch, **kwargs)["input_ids"] for batch, kwargs in jobs]


def test_id_rows_to_arrow():
    rows = ts_transformers._IdRows([[1, 2, 3], [], [4]])
    assert pa.array(rows).equals(pa.array([[1, 2, 3], [], [4]]))
    rows[0][1] = 99  # changed in place after the call: read as it is now
    assert pa.array(rows).equals(pa.array([[1, 99, 3], [], [4]]))
    for odd in ([[True, False]], [[1, None]], [None, [1]], [[2**40, -3]], []):
        assert pa.array(ts_transformers._IdRows(odd)).equals(pa.array(odd))
    assert rows == [[1, 99, 3], [], [4]] and isinstance(rows, list)


def test_disagreement_is_loud(pair):
    """If the reference ever encoded a row differently, asking for its word ids says so."""
    _, ours, _ = pair
    batch = ours(["hello world"])
    encoding = batch.encodings[0]
    encoding.ids = [encoding.ids[0] + 1] + encoding.ids[1:]
    with pytest.raises(RuntimeError, match="differently"):
        encoding.word_ids  # noqa: B018


def test_changes_behind_its_back(pair):
    """Tokens added to the backend directly, or through a shallow copy that shares it, and a
    changed pad token or post-processor after a call."""
    folder, _, _ = pair
    ours = ts_transformers.AutoTokenizer.from_pretrained(folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    text = "a zzqq b newtok c"
    copy.copy(ours).add_tokens(["zzqq"])
    ref.add_tokens(["zzqq"])
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    for tok in (ours, ref):
        tok.backend_tokenizer.add_tokens(["newtok"])
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    assert ours.decode(ref(text)["input_ids"], skip_special_tokens=True) == ref.decode(ref(text)["input_ids"], skip_special_tokens=True)
    result = ours([text, "x"], padding=True)
    want = ref([text, "x"], padding=True)
    ours.pad_token = ref.pad_token = ours.eos_token
    assert result.word_ids(1) == want.word_ids(1)  # the pad token of the call
    ours.add_tokens(["<later_zz>"])
    if isinstance(result.encodings[0], ts_transformers._LazyEncoding):
        with pytest.raises(RuntimeError, match="changed since the call"):
            result.word_ids(0)
    else:
        # o200k_base, cl100k_base: the added tokens cannot be rebuilt from the saved form (see
        # _check_added), so transformers' engine took over, with its own encodings.
        assert result.word_ids(0) == want.word_ids(0)


def test_what_it_cannot_run(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"unk_token": "[UNK]"}))
    with pytest.raises(UnsupportedTokenizerError, match="tokensmith cannot run"):
        ts_transformers.AutoTokenizer.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="transformers' own"):
        tok = ts_transformers.AutoTokenizer.from_pretrained(tmp_path, fallback=True)
    assert tok("hello world")["input_ids"] == [1, 2]
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ts_transformers.AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B")
