"""Rank files, found offline the way tiktoken finds them, and never downloaded.

tiktoken fetches its rank files from ``openaipublic.blob.core.windows.net`` on first use and
keeps them in a cache folder, each under the SHA-1 of its URL: ``$TIKTOKEN_CACHE_DIR``, else
``$DATA_GYM_CACHE_DIR``, else ``<tempdir>/data-gym-cache``. ``tokensmith.tiktoken`` reads that
cache, and also any folder named in ``$TOKENSMITH_TIKTOKEN_DIR`` (``os.pathsep``-separated)
that holds the files by name (``cl100k_base.tiktoken``, ...). Every file of a known encoding
is checked against the SHA-256 tiktoken publishes for it. A file that is not there is a
``FileNotFoundError`` that says where to put it: nothing is ever fetched from the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["load_tiktoken_bpe", "read_file_cached", "data_gym_to_mergeable_bpe_ranks", "rank_file"]

_BLOB = "https://openaipublic.blob.core.windows.net/"


@dataclass(frozen=True)
class _Published:
    """A file OpenAI publishes: where tiktoken fetches it from and its SHA-256."""

    url: str
    sha256: str


_R50K = _Published(_BLOB + "encodings/r50k_base.tiktoken", "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")
_P50K = _Published(_BLOB + "encodings/p50k_base.tiktoken", "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069")
_CL100K = _Published(_BLOB + "encodings/cl100k_base.tiktoken", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7")
_O200K = _Published(_BLOB + "encodings/o200k_base.tiktoken", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d")
_GPT2_ENCODER_JSON = _Published(
    _BLOB + "gpt-2/encodings/main/encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
)

#: Rank file -> (the file names it may have in a data folder, the published file).
_RANK_FILES: dict[str, tuple[tuple[str, ...], _Published]] = {
    # tiktoken's "gpt2" has the same ranks as r50k_base (it asserts so when it builds them from
    # GPT-2's encoder.json), and ../shared/data calls the r50k file gpt2.tiktoken.
    "r50k_base": (("r50k_base.tiktoken", "gpt2.tiktoken"), _R50K),
    "p50k_base": (("p50k_base.tiktoken",), _P50K),
    "cl100k_base": (("cl100k_base.tiktoken",), _CL100K),
    "o200k_base": (("o200k_base.tiktoken",), _O200K),
}


def _cache_dir() -> str:
    """tiktoken's cache folder ('' turns its cache off)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            return os.environ[variable]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cache_path(url: str) -> Path | None:
    folder = _cache_dir()
    return Path(folder, hashlib.sha1(url.encode()).hexdigest()) if folder else None


def _data_dirs() -> list[Path]:
    value = os.environ.get("TOKENSMITH_TIKTOKEN_DIR", "")
    return [Path(p) for p in value.split(os.pathsep) if p]


def _is_url(path: str) -> bool:
    return "://" in path


def _check(data: bytes, expected_hash: str | None, where: str) -> bytes:
    if expected_hash is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_hash:
            raise ValueError(
                f"{where}: SHA-256 {actual} is not the expected {expected_hash}; the file is corrupt "
                "or a different one. Replace it with the published file."
            )
    return data


def read_file_cached(path_or_url: str, expected_hash: str | None = None) -> bytes:
    """The bytes of a local file, or of a URL's copy in tiktoken's cache, checked against
    ``expected_hash`` (SHA-256 hex) when given. A URL not in the cache is a
    ``FileNotFoundError``: tokensmith never downloads."""
    if not _is_url(path_or_url):
        return _check(Path(path_or_url).read_bytes(), expected_hash, path_or_url)
    cached = _cache_path(path_or_url)
    if cached is not None and cached.is_file():
        return _check(cached.read_bytes(), expected_hash, f"{cached} (tiktoken's cached copy of {path_or_url})")
    where = f"tiktoken's cache as {cached}" if cached else "tiktoken's cache (turned off: TIKTOKEN_CACHE_DIR is empty)"
    raise FileNotFoundError(
        f"{path_or_url} is not in {where}, and tokensmith.tiktoken never downloads. Copy the file "
        "there (tiktoken leaves it there after its first use), or read it from a local path."
    )


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


def load_tiktoken_bpe(path_or_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """A rank file (``<base64 token> <rank>`` per line) as ``{token bytes: rank}``, as
    ``tiktoken.load.load_tiktoken_bpe`` gives it (offline: see :func:`read_file_cached`)."""
    return _parse_ranks(read_file_cached(path_or_url, expected_hash))


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-to-char table, reversed: printable Latin-1 bytes stand for themselves,
    the others for the chars from U+0100 on, in byte order."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(others)})
    return table


def data_gym_to_mergeable_bpe_ranks(
    vocab_bpe_file: str,
    encoder_json_file: str,
    vocab_bpe_hash: str | None = None,
    encoder_json_hash: str | None = None,
) -> dict[bytes, int]:
    """GPT-2's ranks from its ``encoder.json`` (token string -> id, where the id is the rank),
    as tiktoken's function of this name gives them. ``vocab_bpe_file`` is accepted for
    tiktoken's signature and checked only when it can be read: the ids alone are the ranks."""
    del vocab_bpe_file, vocab_bpe_hash
    encoder = json.loads(read_file_cached(encoder_json_file, encoder_json_hash))
    table = _byte_level_table()
    encoder.pop("<|endoftext|>", None)
    encoder.pop("<|startoftext|>", None)
    return {bytes(table[c] for c in token): rank for token, rank in encoder.items()}


def _p50k_from_r50k(r50k: bytes) -> bytes:
    """p50k_base.tiktoken is r50k_base's ranks then runs of 2-25 spaces at ranks 50257-50280
    (checked: the result has the SHA-256 tiktoken publishes for p50k_base)."""
    spaces = b"".join(base64.b64encode(b" " * n) + b" %d\n" % (50255 + n) for n in range(2, 26))
    return r50k + spaces


@dataclass(frozen=True)
class RankFile:
    """A found and checked rank file: its bytes and where they came from."""

    data: bytes
    source: str


def _candidates(name: str) -> Iterator[tuple[str, Path]]:
    """(description, path) of every place the rank file ``name`` may be, in search order."""
    names, published = _RANK_FILES[name]
    for folder in _data_dirs():
        for file_name in names:
            yield f"{folder / file_name} ($TOKENSMITH_TIKTOKEN_DIR)", folder / file_name
    cached = _cache_path(published.url)
    if cached is not None:
        yield f"{cached} (tiktoken's cache, for {published.url})", cached


def _find(name: str, looked: list[str]) -> RankFile | None:
    published = _RANK_FILES[name][1]
    for description, path in _candidates(name):
        looked.append(description)
        if path.is_file():
            return RankFile(_check(path.read_bytes(), published.sha256, str(path)), str(path))
    return None


def rank_file(name: str) -> RankFile:
    """The checked rank file of one of OpenAI's encodings (``r50k_base``, ``p50k_base``,
    ``cl100k_base``, ``o200k_base``), found offline; ``FileNotFoundError`` if it is nowhere."""
    looked: list[str] = []
    found = _find(name, looked)
    if found is None and name == "r50k_base":
        # GPT-2's encoder.json, which tiktoken's "gpt2" encoding leaves in its cache, has the ranks.
        cached = _cache_path(_GPT2_ENCODER_JSON.url)
        if cached is not None:
            looked.append(f"{cached} (tiktoken's cache, for {_GPT2_ENCODER_JSON.url})")
            if cached.is_file():
                ranks = data_gym_to_mergeable_bpe_ranks("", str(cached), None, _GPT2_ENCODER_JSON.sha256)
                lines = b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))
                found = RankFile(_check(lines, _R50K.sha256, str(cached)), str(cached))
    if found is None and name == "p50k_base":
        try:
            r50k = rank_file("r50k_base")
        except FileNotFoundError:
            looked.append("r50k_base's places, to derive p50k_base from it: not found either")
        else:
            data = _p50k_from_r50k(r50k.data)
            found = RankFile(_check(data, _P50K.sha256, f"p50k_base derived from {r50k.source}"), r50k.source)
    if found is None:
        raise FileNotFoundError(
            f"the rank file of {name} was not found, and tokensmith.tiktoken never downloads. Looked at:\n  "
            + "\n  ".join(looked)
            + f"\nSet TOKENSMITH_TIKTOKEN_DIR to a folder with {_RANK_FILES[name][0][0]}, or TIKTOKEN_CACHE_DIR "
            "to a tiktoken cache that has it."
        )
    return found
