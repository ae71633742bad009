"""Mutation fuzzing of the files tokensmith reads (issue 15): a mutated tokenizer.json,
SentencePiece .model or safetensors header gets a clean Python exception or loads and
then encodes and decodes anything; never a panic, an abort or a hang.

CI runs a short, deterministic campaign. A long one: ``FUZZ_EXAMPLES=30000 python3 -m
pytest tests/test_fuzz_files.py`` (the count per target; the .model target runs a fifth)."""

from __future__ import annotations

import json
import os
import struct

import pytest
from conftest import DATA, require_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import tiny_tokenizer

import tokensmith as ts
from tokensmith.errors import TokenizerError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

#: What a bad file or input may raise: tokensmith's errors, and Python's for wrong types.
CLEAN = (TokenizerError, ValueError, TypeError, OverflowError, MemoryError, UnicodeError)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=8,
)


def paths(value, prefix=()):
    """Every path into a JSON value (keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:40]):  # the merges list is long: its head is enough
            yield from paths(v, prefix + (i,))


def mutated(spec, data):
    spec = json.loads(json.dumps(spec))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(list(paths(spec))[1:]))
        parent = spec
        for key in where[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "component"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif action == "component":
            # A real component of another kind where one is expected.
            parent[where[-1]] = json.loads(json.dumps(data.draw(st.sampled_from(COMPONENTS))))  # a copy
        else:
            parent[where[-1]] = data.draw(json_values)
    return spec


COMPONENTS = [
    {"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Prepend", "prepend": "▁"},
    {"type": "Replace", "pattern": {"Regex": "(a+)+"}, "content": "b"},
    {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
    {"type": "Split", "pattern": {"Regex": "\\s+(?!\\S)"}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    {"type": "Sequence", "pretokenizers": []}, {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}]},
    {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|end|>", "type_id": 0}}], "pair": [],
     "special_tokens": {"<|end|>": {"id": "<|end|>", "ids": [2**31], "tokens": ["<|end|>"]}}},
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0},
]

TEXTS = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["hello world<|end|>", "a" * 300 + "!", " \n\t é 中文 👍🏽", "<|end|><|end|>x"])


def exercise(tok, data):
    """Encode, offsets, batch and decode on anything: clean errors only."""
    for _ in range(3):
        text = data.draw(TEXTS)
        try:
            ids = tok.encode(text)
            tok.encode_with_offsets(text, add_special_tokens=False)
            tok.encode_batch([text, text[::-1]])
            tok.decode(ids)
        except CLEAN:
            pass
    try:
        tok.decode(data.draw(st.lists(st.integers(0, 2**32 - 1), max_size=8)))
    except CLEAN:
        pass


@FUZZ
@given(data=st.data())
def test_mutated_tokenizer_json(data):
    spec = mutated(tiny_tokenizer(), data)
    try:
        tok = ts.Tokenizer.from_str(json.dumps(spec))
    except CLEAN:
        return
    exercise(tok, data)


@FUZZ
@given(data=st.data())
def test_mutated_bytes_of_a_tokenizer_json(data):
    raw = bytearray(json.dumps(tiny_tokenizer()).encode())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    try:
        tok = ts.Tokenizer.from_str(raw.decode("utf-8", errors="replace"))
    except CLEAN:
        return
    exercise(tok, data)


@pytest.fixture(scope="module")
def sentencepiece_bytes():
    require_data()
    return (DATA / "sentencepiece" / "llama2.model").read_bytes()


@settings(FUZZ, max_examples=max(EXAMPLES // 5, 10))
@given(data=st.data())
def test_mutated_sentencepiece_model(sentencepiece_bytes, tmp_path_factory, data):
    raw = bytearray(sentencepiece_bytes)
    for _ in range(data.draw(st.integers(1, 16))):
        # Mutate near the start (the trainer and normalizer specs) or anywhere.
        limit = len(raw) - 1 if data.draw(st.booleans()) else min(4096, len(raw) - 1)
        raw[data.draw(st.integers(0, limit))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    path = tmp_path_factory.mktemp("sp") / "m.model"
    path.write_bytes(bytes(raw))
    try:
        tok = ts.Tokenizer.from_sentencepiece(path)
    except CLEAN:
        return
    exercise(tok, data)


@FUZZ
@given(header=json_values, extra=st.binary(max_size=64))
def test_any_safetensors_header(tmp_path_factory, header, extra):
    from tokensmith import _safetensors
    from tokensmith.errors import CheckpointError

    raw = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + extra)
    try:
        _safetensors.SafetensorsFile(path)
    except CheckpointError:
        pass
