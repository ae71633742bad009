"""Shared fixtures and helpers for the tokensmith test suite.

The reference for every parity test is the Hugging Face ``tokenizers`` library (and
``tiktoken`` for rank files), loading the real tokenizers under ``../shared/data``.

Test data location: ``<repo>/../shared/data`` (i.e. ``Path(__file__).resolve().parents[2] /
"shared" / "data"``), overridable with the ``TOKENSMITH_DATA`` environment variable.  When the
folder is missing, every test that needs it is skipped with a reason saying where it looked;
under CI (``CI=true``) the run fails instead.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

# Nothing is downloaded at run time: transformers would otherwise look a large vocabulary's
# folder up on the Hub (for its Mistral regex check) and wait for the network to fail.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import tokenizers

import tokensmith as ts

# --------------------------------------------------------------------------------------
# Data location
# --------------------------------------------------------------------------------------

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(os.environ.get("TOKENSMITH_DATA") or _DEFAULT_DATA).resolve()

TOKENIZERS_DIR = DATA / "tokenizers"
CORPORA_DIR = DATA / "corpora"
TIKTOKEN_DIR = DATA / "tiktoken"

DATA_MISSING_REASON = (
    f"tokensmith test data not found at {DATA} "
    "(set TOKENSMITH_DATA to the folder holding tokenizers/, corpora/ and tiktoken/)"
)

#: Byte-level BPE tokenizers that tokensmith must reproduce exactly.
BYTE_LEVEL_TOKENIZERS = [
    "gpt2",
    "llama3",
    "qwen2",
    "deepseek-coder",
    "cl100k_base",
    "o200k_base",
    "tekken",
]

#: SentencePiece-style BPE tokenizers (chars alphabet, ``▁`` for spaces, byte fallback) that
#: tokensmith must reproduce exactly too.
SENTENCEPIECE_TOKENIZERS = ["llama2", "mistral-v3", "gemma4"]

#: Every shared tokenizer.
ALL_TOKENIZERS = BYTE_LEVEL_TOKENIZERS + SENTENCEPIECE_TOKENIZERS


def _bytes_to_unicode() -> dict:
    """The char that stands for each byte in a byte-level vocabulary's strings (GPT-2's
    table)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


#: byte -> the char standing for it in a byte-level vocabulary's strings.
BYTE_CHARS = _bytes_to_unicode()


def data_available() -> bool:
    return DATA.is_dir()


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> None:
    """A test's data is missing: it fails under CI (a suite that passes by skipping proves
    nothing), and is skipped elsewhere."""
    if under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pytest_configure(config) -> None:
    if under_ci() and not data_available():
        raise pytest.UsageError(DATA_MISSING_REASON)


def require_data() -> None:
    """Skip the calling test when the shared data folder is missing (fail under CI)."""
    if not data_available():
        missing(DATA_MISSING_REASON)


def tokenizer_path(name: str) -> Path:
    require_data()
    path = TOKENIZERS_DIR / name / "tokenizer.json"
    if not path.is_file():
        missing(f"tokenizer file missing: {path}")
    return path


# --------------------------------------------------------------------------------------
# Tokenizer loading (cached per name for the whole session)
# --------------------------------------------------------------------------------------


def load_hf_fresh(name: str) -> tokenizers.Tokenizer:
    """A new, private HF tokenizer (for tests that mutate it)."""
    return tokenizers.Tokenizer.from_file(str(tokenizer_path(name)))


def load_ts_fresh(name: str) -> "ts.Tokenizer":
    """A new, private tokensmith tokenizer (for tests that mutate it)."""
    return ts.Tokenizer.from_file(str(tokenizer_path(name)))


@functools.lru_cache(maxsize=None)
def _hf_cached(name: str) -> tokenizers.Tokenizer:
    return load_hf_fresh(name)


@functools.lru_cache(maxsize=None)
def _hf_text_cached(name: str) -> tokenizers.Tokenizer:
    tok = load_hf_fresh(name)
    tok.encode_special_tokens = True
    return tok


@functools.lru_cache(maxsize=None)
def _ts_cached(name: str) -> "ts.Tokenizer":
    return load_ts_fresh(name)


def hf_tokenizer(name: str) -> tokenizers.Tokenizer:
    """Shared HF tokenizer with default behaviour. Do not mutate it."""
    tokenizer_path(name)  # skip cleanly if missing
    return _hf_cached(name)


def hf_tokenizer_text(name: str) -> tokenizers.Tokenizer:
    """Shared HF tokenizer with ``encode_special_tokens = True`` (reference for special="text")."""
    tokenizer_path(name)
    return _hf_text_cached(name)


def ts_tokenizer(name: str) -> "ts.Tokenizer":
    """Shared tokensmith tokenizer. Do not mutate it."""
    tokenizer_path(name)
    return _ts_cached(name)


class TokenizerCache:
    """Session-wide access to the cached tokenizers, by name."""

    hf = staticmethod(hf_tokenizer)
    hf_text = staticmethod(hf_tokenizer_text)
    ts = staticmethod(ts_tokenizer)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    require_data()
    return DATA


@pytest.fixture(scope="session")
def tokenizer_cache() -> TokenizerCache:
    require_data()
    return TokenizerCache()


@pytest.fixture(params=BYTE_LEVEL_TOKENIZERS)
def tokenizer_name(request) -> str:
    """Byte-level tokenizer name; tests may override it with @pytest.mark.parametrize."""
    return request.param


@pytest.fixture
def hf_tok(tokenizer_name: str) -> tokenizers.Tokenizer:
    return hf_tokenizer(tokenizer_name)


@pytest.fixture
def hf_text_tok(tokenizer_name: str) -> tokenizers.Tokenizer:
    return hf_tokenizer_text(tokenizer_name)


@pytest.fixture
def ts_tok(tokenizer_name: str) -> "ts.Tokenizer":
    return ts_tokenizer(tokenizer_name)


# --------------------------------------------------------------------------------------
# Special / added token helpers (always derived from the HF reference at test time)
# --------------------------------------------------------------------------------------


def hf_added_tokens(hf: tokenizers.Tokenizer) -> Dict[int, tokenizers.AddedToken]:
    return dict(hf.get_added_tokens_decoder())


def hf_special_tokens(hf: tokenizers.Tokenizer) -> List[str]:
    """Contents of the added tokens flagged special=True, in id order."""
    return [t.content for _, t in sorted(hf_added_tokens(hf).items()) if t.special]


def hf_special_ids(hf: tokenizers.Tokenizer) -> set:
    return {i for i, t in hf_added_tokens(hf).items() if t.special}


# --------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------


def corpus_files() -> List[Path]:
    """Every file under ../shared/data/corpora (all of them), sorted."""
    if not CORPORA_DIR.is_dir():
        return []
    return sorted(p for p in CORPORA_DIR.rglob("*") if p.is_file())


def corpus_id(path: Path) -> str:
    return path.relative_to(CORPORA_DIR).as_posix()


def corpus_params() -> list:
    """Parametrize values for corpus files (a single skipped param when data is missing)."""
    files = corpus_files()
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=DATA_MISSING_REASON), id="no-data")]
    return [pytest.param(p, id=corpus_id(p)) for p in files]


def read_corpus(path: Path) -> str:
    """Read a corpus file as UTF-8, keeping line ends exactly (no newline translation)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def split_lines(text: str) -> List[str]:
    """Split on '\\n' keeping the line ends; ''.join(result) == text."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def read_all_corpora() -> Dict[str, str]:
    """{relative name: full text} for every corpus file."""
    require_data()
    return {corpus_id(p): read_corpus(p) for p in corpus_files()}


@functools.lru_cache(maxsize=2)
def corpus_lines(path: Path) -> tuple:
    return tuple(split_lines(read_corpus(path)))


# --------------------------------------------------------------------------------------
# tiktoken encodings
# --------------------------------------------------------------------------------------


def tiktoken_encodings() -> Dict[str, dict]:
    path = TIKTOKEN_DIR / "encodings.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------
# Reference calls
# --------------------------------------------------------------------------------------


def hf_encode_batch(hf: tokenizers.Tokenizer, texts: Sequence[str], add_special_tokens: bool = True,
                    chunk: int = 4096) -> List[List[int]]:
    """HF encode_batch (parallel), in chunks to bound the memory held by Encoding objects."""
    out: List[List[int]] = []
    texts = list(texts)
    for i in range(0, len(texts), chunk):
        encs = hf.encode_batch(texts[i:i + chunk], add_special_tokens=add_special_tokens)
        out.extend(e.ids for e in encs)
    return out


def ts_encode_batch(tok, texts: Sequence[str], chunk: int = 4096, **kwargs) -> List[List[int]]:
    out: List[List[int]] = []
    texts = list(texts)
    for i in range(0, len(texts), chunk):
        res = tok.encode_batch(texts[i:i + chunk], **kwargs)
        assert isinstance(res, list), f"encode_batch must return a list, got {type(res).__name__}"
        out.extend(res)
    return out


# --------------------------------------------------------------------------------------
# Comparison helpers with small, precise failure messages
# --------------------------------------------------------------------------------------


def _short(seq, limit: int = 60) -> str:
    seq = list(seq)
    if len(seq) <= limit:
        return repr(seq)
    return repr(seq[:limit])[:-1] + f", ... ({len(seq)} items)]"


def _window(ids: Sequence[int], pos: int, radius: int = 12) -> str:
    lo = max(0, pos - radius)
    hi = min(len(ids), pos + radius)
    return f"[{lo}:{hi}] = {list(ids[lo:hi])!r} (len {len(ids)})"


def _first_diff(a: Sequence, b: Sequence) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _text_repr(text: str, limit: int = 300) -> str:
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} chars)"


def assert_same(ts_ids: Sequence[Sequence[int]], hf_ids: Sequence[Sequence[int]],
                texts: Sequence[str], context: str = "") -> None:
    """Assert two batches of id lists are equal; on failure name the first differing text.

    The message shows the index of the first differing text, the text itself, and both id
    lists (or a window around the first differing id for long lists), never the whole batch.
    """
    ts_ids = [list(x) for x in ts_ids]
    prefix = f"{context}: " if context else ""
    assert len(ts_ids) == len(hf_ids), (
        f"{prefix}batch length differs: tokensmith {len(ts_ids)} vs reference {len(hf_ids)} "
        f"for {len(texts)} texts"
    )
    for idx, (a, b) in enumerate(zip(ts_ids, hf_ids)):
        b = list(b)
        if a != b:
            pos = _first_diff(a, b)
            n_diff = sum(1 for x, y in zip(ts_ids, hf_ids) if list(x) != list(y))
            text = texts[idx] if idx < len(texts) else "<no text>"
            if len(a) <= 80 and len(b) <= 80:
                detail = f"tokensmith ids: {a!r}\nreference  ids: {b!r}"
            else:
                detail = f"tokensmith ids{_window(a, pos)}\nreference  ids{_window(b, pos)}"
            pytest.fail(
                f"{prefix}{n_diff} of {len(hf_ids)} texts differ; first is #{idx}, "
                f"first differing token position {pos}\n"
                f"text: {_text_repr(text)}\n{detail}",
                pytrace=False,
            )


def assert_same_ids(ts_ids: Sequence[int], hf_ids: Sequence[int], text: str, context: str = "") -> None:
    """Single-text version of assert_same."""
    assert isinstance(ts_ids, list), f"encode must return a list, got {type(ts_ids).__name__}"
    assert_same([ts_ids], [hf_ids], [text], context)


def assert_same_strings(ts_out: Sequence[str], hf_out: Sequence[str], inputs: Sequence,
                        context: str = "") -> None:
    """Compare batches of decoded strings; on failure show the first differing one."""
    prefix = f"{context}: " if context else ""
    assert len(ts_out) == len(hf_out), f"{prefix}batch length differs: {len(ts_out)} vs {len(hf_out)}"
    for idx, (a, b) in enumerate(zip(ts_out, hf_out)):
        if a != b:
            pos = _first_diff(a, b)
            n_diff = sum(1 for x, y in zip(ts_out, hf_out) if x != y)
            lo = max(0, pos - 40)
            pytest.fail(
                f"{prefix}{n_diff} of {len(hf_out)} decodes differ; first is #{idx}, first differing char {pos}\n"
                f"input: {_short(inputs[idx]) if idx < len(inputs) else '?'}\n"
                f"tokensmith: {a[lo:pos + 40]!r} (len {len(a)})\n"
                f"reference : {b[lo:pos + 40]!r} (len {len(b)})",
                pytrace=False,
            )
