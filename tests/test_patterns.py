"""Split patterns beyond the shared tokenizers' own, against the reference.

Patterns without a hand-written lexer run on the `regex` crate (linear time) whenever they
can; `\\s+(?!\\S)|\\s+`, the one look-ahead real pre-tokenizers use, is matched as `\\s+` and
cut afterwards, and possessive quantifiers become greedy where that is exact. The
tokenizer.json patterns here are real ones from models the shared tokenizers do not cover:
Qwen3.5 (now a lexer's), an Indic variant that keeps ZWNJ/ZWJ in words, DeepSeek V3's chain
of three splits and Command R's digits before GPT-2's split (each fused into one pass), and
Cohere's digit groups, set on the vocabularies of Qwen2, Llama 3 and GPT-2; the tiktoken ones are cl100k's and GPT-2's with a changed digit rule (so that no
lexer takes them), on their rank files.
"""

from __future__ import annotations

import json
from typing import Callable

import pytest
import tiktoken
import tiktoken.load
import tokenizers

import tokensmith as ts
from conftest import TIKTOKEN_DIR, corpus_files, corpus_lines, require_data, tiktoken_encodings, tokenizer_path

PATTERNS = {
    "qwen3.5": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "zwj": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}|\p{M}|\u200C|\u200D)+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    # GPT-2's grammar ending in `\s` instead of `\s+`, and with 3-digit groups.
    "gpt2-tail": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s",
    # The look-ahead not followed by a whitespace alternative: the backtracking engine.
    "lookahead-only": r"'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
}

HARD = ["a  b", "a b", "  ", " x", "x \n  y", "x\t\t\u3000y  ", "a   \n\n b\u00a0\u00a0c", "", " ", "\r\n\r\n  x",
        "emoji \U0001F468\u200D\U0001F469 zwj\u200Cnj", "don't  STOP's", "12345 678\n\n\n", "x" + " " * 1000 + "y"]


def pair(pattern: str) -> tuple[ts.Tokenizer, tokenizers.Tokenizer]:
    require_data()
    spec = json.loads(tokenizer_path("qwen2").read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = pattern
    text = json.dumps(spec)
    return ts.Tokenizer.from_str(text), tokenizers.Tokenizer.from_str(text)


def pipeline(vocab: str, pre_tokenizer: Callable[[list], list]) -> tuple[ts.Tokenizer, tokenizers.Tokenizer]:
    """The vocabulary's tokenizer with the steps of its pre-tokenizer replaced, on both sides."""
    require_data()
    spec = json.loads(tokenizer_path(vocab).read_text(encoding="utf-8"))
    own = spec["pre_tokenizer"].get("pretokenizers", [spec["pre_tokenizer"]])
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": pre_tokenizer(own)}
    text = json.dumps(spec)
    return ts.Tokenizer.from_str(text), tokenizers.Tokenizer.from_str(text)


def assert_lines_match(tok: ts.Tokenizer, hf: tokenizers.Tokenizer, lines: list[str], offsets: int = 2000) -> None:
    """Ids of every line, and ids and offsets of about `offsets` of them, as the reference's."""
    got = tok.encode_batch(lines)
    want = [e.ids for e in hf.encode_batch(lines)]
    bad = [i for i in range(len(lines)) if got[i] != want[i]]
    assert not bad, f"{len(bad)} of {len(lines)} differ; first {lines[bad[0]][:200]!r}: {got[bad[0]]} != {want[bad[0]]}"
    for line in lines[:: max(1, len(lines) // offsets)]:
        assert tok.encode_with_offsets(line) == (hf.encode(line).ids, hf.encode(line).offsets), line[:200]


@pytest.mark.parametrize("name", PATTERNS)
def test_hard_cases_and_corpus_lines_match_the_reference(name):
    tok, hf = pair(PATTERNS[name])
    lines = list(HARD)
    for path in corpus_files():
        if path.parent.name in ("multi", "emoji", "code"):
            lines += corpus_lines(path)[:1500]
    got = tok.encode_batch(lines)
    want = [e.ids for e in hf.encode_batch(lines)]
    bad = [i for i in range(len(lines)) if got[i] != want[i]]
    assert not bad, f"{len(bad)} of {len(lines)} differ; first {lines[bad[0]]!r}: {got[bad[0]]} != {want[bad[0]]}"
    for line in HARD:
        assert tok.encode_with_offsets(line) == (hf.encode(line).ids, hf.encode(line).offsets)


@pytest.mark.parametrize("name", ["qwen3.5", "gpt2-tail"])
def test_a_run_of_millions_of_spaces_splits_as_the_reference_splits_it(name):
    # The backtracking engine failed here ("max stack size") past about a million chars.
    tok, hf = pair(PATTERNS[name])
    for text in [" " * 3_000_000 + "x", "x" + " \t" * 1_000_000 + "\n", " " * 3_000_000]:
        assert tok.encode(text) == hf.encode(text).ids


# DeepSeek V3, R1 and V4, as their tokenizer.json files spell it (`\r` and `\n` as the chars).
DEEPSEEK_V3 = [r"\p{N}{1,3}", "[一-龥\u3040-ゟ゠-ヿ]+",
               r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
               r"""| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""".replace(r"\r", "\r").replace(r"\n", "\n")]


def test_deepseek_v3_chain_of_splits_matches_the_reference_on_every_corpus_line():
    # On Llama 3's vocabulary: DeepSeek Coder's has single digits only and few tokens that
    # start with punctuation, so pieces cut wrong would often still give its ids.
    split = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in DEEPSEEK_V3]
    tok, hf = pipeline("llama3", lambda own: split + own[1:])
    lines = list(HARD) + ["os.path.join('a', \"b\") x=1234567 (foo)", "日本語のテキスト・カタカナー。123", "ﾟ\u3040ゟ゠ヿ"]
    for path in corpus_files():
        lines += corpus_lines(path)
    assert_lines_match(tok, hf, lines, offsets=3000)
    for path in corpus_files()[:3]:
        whole = path.read_text(encoding="utf-8")[:300_000]
        assert tok.encode(whole) == hf.encode(whole).ids, path.name


TIKTOKEN_PATTERNS = {
    "cl100k_base": r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,2}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"
                   r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s",
    "gpt2": r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}{1,4}+| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s",
}


def tiktoken_pair(name: str) -> tuple[ts.Tokenizer, tiktoken.Encoding]:
    require_data()
    spec = tiktoken_encodings()[name]
    path = TIKTOKEN_DIR / spec["file"]
    pattern = TIKTOKEN_PATTERNS[name]
    tok = ts.Tokenizer.from_tiktoken(path, pattern=pattern, special_tokens=spec["special_tokens"])
    ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    return tok, tiktoken.Encoding(name + "-variant", pat_str=pattern, mergeable_ranks=ranks,
                                  special_tokens=spec["special_tokens"])


@pytest.mark.parametrize("name", TIKTOKEN_PATTERNS)
def test_possessive_tiktoken_patterns_match_tiktoken(name):
    tok, enc = tiktoken_pair(name)
    # tiktoken itself overflows its backtracking stack on runs of a million spaces.
    lines = list(HARD) + [" " * 200_000 + "x", "x" + " \t" * 100_000 + "\n", "a1234567 ,,,\r\n\r\n  "]
    for path in corpus_files():
        if path.parent.name in ("multi", "emoji", "code", "zh"):
            lines += corpus_lines(path)[:1000]
    got = tok.encode_batch(lines, special="text", add_special_tokens=False)
    want = enc.encode_ordinary_batch(lines)
    bad = [i for i in range(len(lines)) if got[i] != want[i]]
    assert not bad, f"{len(bad)} of {len(lines)} differ; first {lines[bad[0]][:200]!r}"


# Cohere's digit groups (Command A, Tiny Aya): groups of three from the right, where the run
# of digits ends at a word boundary. Backtracking takes time quadratic in a run of digits
# (40,000 digits: 7 s); tokensmith decides it run by run.
DIGIT_GROUPS = r"\d{1,3}(?=(?:\d{3})*\b)"


def digit_groups_pair() -> tuple[ts.Tokenizer, tokenizers.Tokenizer]:
    # Llama 3's vocabulary has tokens of up to three digits, so where the groups are cut shows.
    split = {"type": "Split", "pattern": {"Regex": DIGIT_GROUPS}, "behavior": "Isolated", "invert": False}
    return pipeline("llama3", lambda own: [split, *own])


def test_digit_groups_match_the_reference_next_to_every_code_point():
    tok, hf = digit_groups_pair()
    # Which chars end a run at a word boundary (`\w` as Oniguruma reads it), and which are `\d`.
    chars = [chr(c) for c in range(0x20, 0x110000) if not 0xD800 <= c < 0xE000 and (c < 0x40000 or c % 61 == 0)]
    texts = [f"1234{c} x{c}{c}{c}{c}{c}!" for c in chars]
    got = tok.encode_batch(texts, add_special_tokens=False)
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    bad = [f"U+{ord(c):04X}" for c, g, w in zip(chars, got, want) if g != w]
    assert not bad, f"{len(bad)} code points differ, first: {bad[:10]}"


def test_digit_groups_match_the_reference_on_corpus_lines_and_long_runs():
    tok, hf = digit_groups_pair()
    lines = list(HARD) + ["1234567 12345_ 1,234,567.89 x1234567. 1234-5678 ١٢٣٤٥ x 1234٣ ４５６７８"]
    for path in corpus_files():
        lines += corpus_lines(path)[:2000]
    lines += ["9" * n + end for n in (1, 2, 3, 4, 30_001) for end in ("", " ", "a", ".")]
    assert_lines_match(tok, hf, lines)
    # Three million digits: each group of three is a piece of its own, as in the reference.
    assert tok.encode("123" * 1_000_000 + " x", add_special_tokens=False) == (
        hf.encode("123", add_special_tokens=False).ids * 1_000_000 + hf.encode(" x", add_special_tokens=False).ids
    )


def test_command_r_digits_then_byte_level_matches_the_reference_on_every_corpus_line():
    # Command R's pre-tokenizer (every digit alone, then GPT-2's split and byte mapping),
    # which tokensmith runs as one pass, on GPT-2's vocabulary.
    tok, hf = pipeline("gpt2", lambda own: [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ])
    lines = list(HARD) + ["x=1234567 ٣٤ ¼½ ⅷ 12ab  34\n", "9" * 10_000 + "  x"]
    for path in corpus_files():
        lines += corpus_lines(path)[:3000]
    assert_lines_match(tok, hf, lines)
