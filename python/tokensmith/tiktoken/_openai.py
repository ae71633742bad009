"""OpenAI's encodings, as tiktoken's ``tiktoken_ext.openai_public`` defines them (names, split
patterns, special tokens), over rank files found offline (:mod:`.load`)."""

from __future__ import annotations

from typing import Any

from . import load

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"

# GPT-2's pattern with possessive repeats and `\s++$`, which tiktoken uses for speed.
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


def _spec(name: str, rank_file: str, pattern: str, special_tokens: dict[str, int], n_vocab: int | None = None) -> dict[str, Any]:
    """What ``Encoding`` is built from. ``_rank_file`` stands in for ``mergeable_ranks``: the
    file is handed to the Rust core as it is, and the ranks dict is read only if asked for."""
    spec: dict[str, Any] = {"name": name, "pat_str": pattern, "special_tokens": special_tokens}
    spec["_rank_file"] = load.rank_file(rank_file)
    if n_vocab is not None:
        spec["explicit_n_vocab"] = n_vocab
    return spec


def gpt2() -> dict[str, Any]:
    return _spec("gpt2", "r50k_base", R50K_PATTERN, {ENDOFTEXT: 50256}, 50257)


def r50k_base() -> dict[str, Any]:
    return _spec("r50k_base", "r50k_base", R50K_PATTERN, {ENDOFTEXT: 50256}, 50257)


def p50k_base() -> dict[str, Any]:
    return _spec("p50k_base", "p50k_base", R50K_PATTERN, {ENDOFTEXT: 50256}, 50281)


def p50k_edit() -> dict[str, Any]:
    specials = {ENDOFTEXT: 50256, FIM_PREFIX: 50281, FIM_MIDDLE: 50282, FIM_SUFFIX: 50283}
    return _spec("p50k_edit", "p50k_base", R50K_PATTERN, specials)


def cl100k_base() -> dict[str, Any]:
    specials = {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260, ENDOFPROMPT: 100276}
    return _spec("cl100k_base", "cl100k_base", CL100K_PATTERN, specials)


def o200k_base() -> dict[str, Any]:
    return _spec("o200k_base", "o200k_base", O200K_PATTERN, {ENDOFTEXT: 199999, ENDOFPROMPT: 200018})


def o200k_harmony() -> dict[str, Any]:
    """gpt-oss: o200k_base with its chat tokens and reserved slots up to 201087. Two names
    share an id (``<|endofprompt|>`` and ``<|reserved_200018|>``), as tiktoken defines it."""
    specials = {
        ENDOFTEXT: 199999,
        ENDOFPROMPT: 200018,
        "<|startoftext|>": 199998,
        "<|reserved_200000|>": 200000,
        "<|reserved_200001|>": 200001,
        "<|return|>": 200002,
        "<|constrain|>": 200003,
        "<|reserved_200004|>": 200004,
        "<|channel|>": 200005,
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|reserved_200009|>": 200009,
        "<|reserved_200010|>": 200010,
        "<|reserved_200011|>": 200011,
        "<|call|>": 200012,
    }
    specials.update({f"<|reserved_{i}|>": i for i in range(200013, 201088)})
    return _spec("o200k_harmony", "o200k_base", O200K_PATTERN, specials)


ENCODING_CONSTRUCTORS = {
    "gpt2": gpt2,
    "r50k_base": r50k_base,
    "p50k_base": p50k_base,
    "p50k_edit": p50k_edit,
    "cl100k_base": cl100k_base,
    "o200k_base": o200k_base,
    "o200k_harmony": o200k_harmony,
}
