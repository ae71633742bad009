"""Add tokens to a saved Hugging Face model folder without loading the model.

:func:`add_tokens` reads a model folder (safetensors, one file or sharded) and writes a new
one in which the tokenizer knows the new tokens and the input embedding and output head have
initialized rows for them. Only those two tensors are read (memory-mapped) and rewritten;
every other tensor is copied byte for byte without being decoded, so a multi-GB checkpoint
needs about the memory of the new rows. The output is written to a hidden temporary folder
and renamed at the end: an interrupted run leaves the input untouched and no half-written
output.

>>> from tokensmith.checkpoint import add_tokens
>>> result = add_tokens("Llama-3.2-1B", "Llama-3.2-1B-box", ["<|box_start|>", "<|box_end|>"],
...                     reuse_reserved=True)                         # doctest: +SKIP
>>> print(result.summary())                                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import embeddings as E
from ._atomic import atomic_folder, temp_folder_for
from ._safetensors import COPY_CHUNK, Replacement, SafetensorsFile, copy_file, copy_range, write_file
from .errors import CheckpointError, InvalidInputError, TokenizerError

__all__ = ["RESERVED_PATTERNS", "INIT_METHODS", "NewToken", "AddTokensResult", "add_tokens"]

# Slots that tokenizers ship untrained, by family; each is reusable for a new token.
RESERVED_PATTERNS = {
    "llama3": r"<\|reserved_special_token_\d+\|>",
    "gemma": r"<unused\d+>",
    "mistral": r"\[control_\d+\]",
    "tekken": r"<SPECIAL_\d+>",
}

INIT_METHODS = ("pieces", "description", "mean", "noisy_mean", "mean_cov")

# Input embeddings and output heads, by the names model families give them.
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight", "embed_in.weight")
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight", "output.weight")

REWRITTEN = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "model.safetensors.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
# Special-token fields of tokenizer_config.json whose tokens a reserved slot must not be taken from.
SPECIAL_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


@dataclass
class NewToken:
    content: str
    id: int
    replaced: str | None = None  # the reserved slot it took over, if any


@dataclass
class AddTokensResult:
    out_dir: Path
    tokens: list[NewToken]
    rows_before: int
    rows_after: int
    init: str
    tensors: list[str] = field(default_factory=list)  # rewritten tensors
    files_copied: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.out_dir} in {self.seconds:.1f} s ({self.bytes_written / 1e9:.2f} GB)"]
        for t in self.tokens:
            how = f"reusing {t.replaced!r}" if t.replaced else "new row"
            lines.append(f"  {t.id:8d}  {t.content!r}  ({how})")
        grown = "unchanged" if self.rows_after == self.rows_before else f"{self.rows_before} -> {self.rows_after}"
        lines.append(f"embedding rows: {grown}; rows initialized by {self.init!r} in: {', '.join(self.tensors)}")
        lines.append(f"{self.files_copied} other files copied byte for byte")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class _Progress:
    """Bytes written so far, on one stderr line, at most twice a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.start = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.5:
            self.last = now
            self._print("")

    def finish(self) -> None:
        if self.enabled:
            self._print("\n")

    def _print(self, end: str) -> None:
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        done = min(self.done, self.total)
        print(
            f"\rwriting {done / 1e9:6.2f} / {self.total / 1e9:.2f} GB  {100 * done / self.total:3.0f}%  {rate / 1e6:,.0f} MB/s",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def add_tokens(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tokens: Sequence[str],
    *,
    special: bool = True,
    init: str = "pieces",
    descriptions: Sequence[str] | None = None,
    reuse_reserved: bool = False,
    reserved_patterns: Sequence[str] | None = None,
    pad_to_multiple_of: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | None = None,
) -> AddTokensResult:
    """Write a copy of ``model_dir`` to ``out_dir`` with ``tokens`` added.

    - ``special``: register them as special tokens (matched whole, never split, skipped by
      ``decode(skip_special_tokens=True)``); else as plain added tokens.
    - ``init``: how their rows start: ``pieces`` (mean of the rows of the pieces the old
      tokenizer splits the token's text into), ``description`` (the same over
      ``descriptions``), ``mean``, ``noisy_mean`` or ``mean_cov`` (see
      :func:`tokensmith.embeddings.init_rows`). The output head is initialized from its own
      rows; tied weights once.
    - ``reuse_reserved``: take over untrained reserved slots (:data:`RESERVED_PATTERNS`, or
      ``reserved_patterns``, regular expressions matched against whole tokens) before
      growing the matrices.
    - ``pad_to_multiple_of``: round the grown row count up (never shrinks).

    Raises :class:`CheckpointError` for a folder that cannot be read (missing, not
    safetensors, truncated, inconsistent tensors) and :class:`InvalidInputError` for tokens
    that cannot be added (already present, empty, duplicated). Nothing is written then.
    """
    started = time.monotonic()
    src, out = Path(model_dir), Path(out_dir)
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {', '.join(INIT_METHODS)}; got {init!r}")
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such model folder")
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents or src.resolve() in out.resolve().parents:
        raise CheckpointError("out_dir must not be model_dir, inside it, or a folder that contains it: the input is never modified")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    tokens = [str(t) for t in tokens]
    if init == "description" and (descriptions is None or len(descriptions) != len(tokens)):
        raise ValueError("init='description' needs descriptions=[one per token]")

    config = _read_json(src / "config.json")
    tokenizer_json = _read_json(src / "tokenizer.json")
    tokenizer_config = _read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").exists() else None
    shards = _weight_files(src)

    vocab = _vocabulary(tokenizer_json)
    old_size = max(vocab.values(), default=-1) + 1
    old_tokenizer = _old_tokenizer(src / "tokenizer.json", tokenizer_json, required=init in ("pieces", "description"))
    _check_new_tokens(tokens, tokenizer_json, vocab, old_tokenizer)
    patterns = [re.compile(p) for p in (reserved_patterns or RESERVED_PATTERNS.values())]
    reserved = _reserved_slots(vocab, patterns)  # all untrained, in use or not
    free = _reserved_slots(vocab, patterns, _in_use(src, config, tokenizer_config, tokenizer_json))
    slots = free[: len(tokens)] if reuse_reserved else []

    embedding, head, files = _locate_matrices(shards, config)
    rows = embedding.shape[0]
    if rows < old_size:
        raise CheckpointError(f"the embedding has {rows} rows but the tokenizer has {old_size} tokens")
    new_count = len(tokens) - len(slots)
    target = max(rows, E._padded(old_size + new_count, pad_to_multiple_of))
    placed = [NewToken(t, id, old) for t, (id, old) in zip(tokens, slots)]
    placed += [NewToken(t, old_size + k, None) for k, t in enumerate(tokens[len(slots):])]
    ids = [t.id for t in placed]

    # Statistics come from trained rows only: not the padding past the tokenizer, not the
    # reserved slots (never trained), not the rows being replaced.
    include = E._row_flags(rows, [*range(old_size, rows), *(id for id, _ in reserved), *(i for i in ids if i < rows)])
    texts = list(descriptions) if init == "description" else tokens
    method_options = E._Options(tokenizer=old_tokenizer, texts=texts, seed=seed)

    replacements: dict[Path, dict[str, Replacement]] = {}
    rewritten = []
    tied = head is None or bool(config.get("tie_word_embeddings", False))
    for k, (name, shard) in enumerate(files):
        matrix, kernel_dtype = shard.map_rows(name)
        if matrix.shape[0] != rows:
            raise CheckpointError(f"{shard.path}: {name} has {matrix.shape[0]} rows, the embedding {rows}")
        options = dataclasses.replace(method_options, seed=seed if tied else seed + k)
        targets = [i for i in ids if i < rows]
        values = E._values(E._HostMatrix(matrix, kernel_dtype), len(ids), init, include, targets, options)
        staged = _round_rows(values, len(ids), matrix.shape[1], matrix.dtype, kernel_dtype)
        replacements.setdefault(shard.path, {})[name] = Replacement(
            [target, matrix.shape[1]], _matrix_writer(shard, name, target, dict(zip(ids, staged)))
        )
        rewritten.append(name)
        del matrix

    stale_temp = [p for p in _stale_temp_folders(out) if p != temp_folder_for(out)]
    total = sum(p.stat().st_size for p in _files(src)) + (target - rows) * sum(
        embedding.shape[1] * (2 if shard.tensors[name].dtype in ("F16", "BF16") else 4) for name, shard in files
    )
    bar = _Progress(total, sys.stderr.isatty() if progress is None else progress)
    copied = 0
    with atomic_folder(out) as tmp:
        for path in _files(src):
            target_path = tmp / path.relative_to(src)
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shard = next((s for s in shards if s.path == path), None)
            if shard is not None and path in replacements:
                write_file(shard, target_path, replacements[path], bar)
            elif path.parent == src and path.name in REWRITTEN:
                bar(path.stat().st_size)  # rewritten below
            elif shard is not None or path.stat().st_size > COPY_CHUNK:
                copy_file(path, target_path, bar)
                copied += 1
            else:
                shutil.copy2(path, target_path)
                bar(path.stat().st_size)
                copied += 1
        _write_json(tmp / "config.json", _new_config(config, target))
        _write_json(tmp / "tokenizer.json", _new_tokenizer_json(tokenizer_json, placed, special), pretty=False)
        if tokenizer_config is not None:
            _write_json(tmp / "tokenizer_config.json", _new_tokenizer_config(tokenizer_config, placed, special))
        if (src / "special_tokens_map.json").exists():
            _write_json(tmp / "special_tokens_map.json", _new_special_map(_read_json(src / "special_tokens_map.json"), placed, special))
        index = src / "model.safetensors.index.json"
        if index.exists():
            _write_json(tmp / index.name, _new_index(_read_json(index), tmp, (target - rows) * embedding.shape[1] * len(files)))
        _verify(tmp / "tokenizer.json", placed)
        bar.finish()
    shard_paths = {shard.path for shard in shards}
    stale = [str(p.relative_to(src)) for p in _files(src) if p.suffix in WEIGHT_SUFFIXES and p not in shard_paths]
    return AddTokensResult(
        out_dir=out,
        tokens=placed,
        rows_before=rows,
        rows_after=target,
        init=init,
        tensors=rewritten,
        files_copied=copied,
        bytes_written=sum(p.stat().st_size for p in _files(out)),
        seconds=time.monotonic() - started,
        warnings=[f"{name} copied unchanged: it holds weights add-tokens does not update (delete it if unused)"
                  for name in stale]
        + [f"{p} was left by an interrupted run: delete it if no other run is writing {out}" for p in stale_temp],
    )


# ----------------------------------------------------------------------------- reading


def _stale_temp_folders(out: Path) -> list[Path]:
    """Temp folders that interrupted runs (killed before their cleanup) left next to ``out``.
    Reported, not deleted: one may belong to a run on another machine sharing the disk."""
    return sorted(p for p in out.parent.glob(f".{glob.escape(out.name)}.tmp-*") if p.is_dir())


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path.parent}: no {path.name} (is this a Hugging Face model folder?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _files(folder: Path) -> list[Path]:
    """Every file of a model folder, following symlinked folders (the Hugging Face cache),
    without hidden entries (.git with its LFS objects, .cache): they are not the model."""
    found = []
    top = os.path.realpath(folder)
    seen = {os.path.dirname(top)}  # never climb out through a link to a parent
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or a folder reached twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and not top.startswith(os.path.realpath(os.path.join(root, d)) + os.sep)
            and os.path.realpath(os.path.join(root, d)) not in seen
        )
        found += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(found)


def _weight_files(src: Path) -> list[SafetensorsFile]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return [SafetensorsFile(src / n) for n in names]
    if (src / "model.safetensors").is_file():
        return [SafetensorsFile(src / "model.safetensors")]
    others = [p.name for p in src.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if others:
        raise CheckpointError(
            f"{src}: the weights are in {', '.join(sorted(others))}, not safetensors. add-tokens reads only "
            "safetensors (it never unpickles); convert first, e.g. model.save_pretrained(dir, safe_serialization=True)"
        )
    raise CheckpointError(f"{src}: no model.safetensors or model.safetensors.index.json")


def _vocabulary(tokenizer_json: dict) -> dict[str, int]:
    model = tokenizer_json.get("model") or {}
    vocab = model.get("vocab")
    out: dict[str, int] = {}
    if isinstance(vocab, dict):
        out.update(vocab)
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        out.update({entry[0]: i for i, entry in enumerate(vocab)})
    for t in tokenizer_json.get("added_tokens") or []:
        out[t["content"]] = t["id"]
    return out


def _check_new_tokens(tokens: list[str], tokenizer_json: dict, vocab: dict[str, int], old_tokenizer: Any) -> None:
    """A new token must not be an added token already, nor a text the old tokenizer already
    encodes to one id, nor spelled like a vocabulary entry (the internal spelling of another
    text, e.g. byte-level 'é' for the byte 0xE9): all three would make two ids for one
    string."""
    if not tokens:
        raise InvalidInputError("no tokens to add")
    added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens") or []}
    unk = vocab.get((tokenizer_json.get("model") or {}).get("unk_token") or "")
    encode = E._plain_text_encoder(old_tokenizer)[0] if old_tokenizer is not None else lambda text: []
    seen = set()
    for t in tokens:
        if not t:
            raise InvalidInputError("an empty string cannot be a token")
        if t in seen:
            raise InvalidInputError(f"{t!r} is listed twice")
        seen.add(t)
        if t in added:
            raise InvalidInputError(f"{t!r} is already token {added[t]}: nothing was written")
        ids = encode(t)
        if len(ids) == 1 and ids[0] != unk:  # a text the vocabulary lacks may encode to <unk>
            raise InvalidInputError(f"{t!r} is already token {ids[0]} (the tokenizer encodes it to that one id): nothing was written")
        if t in vocab:
            raise InvalidInputError(
                f"{t!r} is spelled like vocabulary entry {vocab[t]}, which stands for another text in this "
                "tokenizer's internal alphabet; adding it would make the tokenizer ambiguous: nothing was written"
            )


def _in_use(src: Path, config: dict, tokenizer_config: dict | None, tokenizer_json: dict) -> tuple[set[int], str]:
    """Token ids and text the model folder uses; a reserved slot named there is in use:
    - ids: config.json / generation_config.json keys naming tokens (pad_token_id,
      image_token_index, ...);
    - text: special-token fields and named extra tokens of tokenizer_config.json and
      special_tokens_map.json (not the plain lists of extra special tokens, which enumerate
      free slots too), tokenizer.json's padding and post-processor, and the chat templates
      (tokenizer_config.json, chat_template.jinja / .json, additional_chat_templates/)."""
    ids: set[int] = set()
    texts: list[str] = []
    configs = [config, _text_config(config)]
    if (src / "generation_config.json").exists():
        configs.append(_read_json(src / "generation_config.json"))
    for c in configs:
        for key, value in c.items():
            if "token" in key.lower():
                ids.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
    special_map = _read_json(src / "special_tokens_map.json") if (src / "special_tokens_map.json").exists() else {}
    for fields in (tokenizer_config or {}, special_map):
        for key, value in fields.items():
            if key in SPECIAL_FIELDS or (key.endswith("special_tokens") and isinstance(value, dict)):
                texts.append(json.dumps(value, ensure_ascii=False))
        texts.append(json.dumps(fields.get("chat_template") or "", ensure_ascii=False))
    texts.append(json.dumps([tokenizer_json.get("padding"), tokenizer_json.get("post_processor")], ensure_ascii=False))
    if isinstance((tokenizer_json.get("padding") or {}).get("pad_id"), int):
        ids.add(tokenizer_json["padding"]["pad_id"])
    for template in [src / "chat_template.jinja", src / "chat_template.json", *sorted(src.glob("additional_chat_templates/*"))]:
        if template.is_file():
            texts.append(template.read_text(encoding="utf-8", errors="replace"))
    return ids, "\n".join(texts)


def _reserved_slots(vocab: dict[str, int], patterns: list[re.Pattern], in_use: tuple[set[int], str] = (set(), "")) -> list[tuple[int, str]]:
    """(id, content) of every reserved token, by id, except those the folder uses."""
    used_ids, used_text = in_use
    return sorted(
        (id, content)
        for content, id in vocab.items()
        if any(p.fullmatch(content) for p in patterns) and id not in used_ids and content not in used_text
    )


def _locate_matrices(shards: list[SafetensorsFile], config: dict) -> tuple[Any, Any, list[tuple[str, SafetensorsFile]]]:
    """The input embedding's and the output head's tensor infos (head None when the file has
    none, i.e. tied), and (name, file) of each to rewrite."""

    def find(suffixes: tuple[str, ...]) -> list[tuple[str, SafetensorsFile]]:
        found = [(n, s) for s in shards for n in s.tensors if n.endswith(suffixes) and len(s.tensors[n].shape) == 2]
        vocab_size = _text_config(config).get("vocab_size")
        if len(found) > 1 and vocab_size:
            found = [(n, s) for n, s in found if s.tensors[n].shape[0] == vocab_size] or found
        if len(found) > 1:
            raise CheckpointError(f"several candidate tensors: {', '.join(n for n, _ in found)}")
        return found

    embeddings = find(EMBEDDING_SUFFIXES)
    if not embeddings:
        raise CheckpointError(f"no input embedding tensor (a name ending in one of {', '.join(EMBEDDING_SUFFIXES)})")
    heads = find(HEAD_SUFFIXES)
    files = embeddings + heads
    infos = [s.tensors[n] for n, s in files]
    if len({i.dtype for i in infos}) > 1:
        raise CheckpointError("the embedding and the head have different dtypes: " + ", ".join(f"{i.name} {i.dtype}" for i in infos))
    if len({i.shape[0] for i in infos}) > 1 or len({i.shape[1] for i in infos}) > 1:
        raise CheckpointError("the embedding and the head have different shapes: " + ", ".join(f"{i.name} {i.shape}" for i in infos))
    return infos[0], (infos[1] if heads else None), files


def _text_config(config: dict) -> dict:
    return config.get("text_config") if isinstance(config.get("text_config"), dict) else config


def _old_tokenizer(path: Path, tokenizer_json: dict, required: bool) -> Any:
    """The tokenizer that splits a new token's text into pieces: tokensmith's own, or for a
    tokenizer it does not run (SentencePiece-style BPE, Unigram, ...) the reference library;
    None when neither can run it and ``required`` is false."""
    from ._tokenizer import Tokenizer

    try:
        return Tokenizer.from_file(path)
    except TokenizerError as e:
        reason = e
    try:
        return E.TextOnlyTokenizer(tokenizer_json)
    except ImportError:
        reason = f"{reason}; Hugging Face tokenizers is not installed (pip install tokenizers)"
    except Exception as e:  # tokenizers raises plain Exceptions for what it cannot parse
        reason = f"{reason}; Hugging Face tokenizers cannot load it either ({e})"
    if not required:
        return None
    raise CheckpointError(f"{path}: {reason}. init='pieces'/'description' needs a tokenizer that runs: use init='mean'")


# ----------------------------------------------------------------------------- writing
# The _new_* functions update the JSON documents read above in place and return them.


def _round_rows(values: bytes, count: int, cols: int, np_dtype: Any, kernel_dtype: str) -> list[bytes]:
    """Each float64 row rounded to the tensor's dtype exactly as init_rows rounds it."""
    import numpy as np

    staged = np.zeros((count, cols), dtype=np_dtype)
    if count:
        E._HostMatrix(staged, kernel_dtype).write_rows(list(range(count)), values)
    return [row.tobytes() for row in staged]


def _matrix_writer(shard: SafetensorsFile, name: str, target_rows: int, new_rows: dict[int, bytes]) -> Callable[[BinaryIO], None]:
    """Streams the grown matrix: old rows copied from the file, rows in ``new_rows`` written
    from their bytes, the rest of the new rows zero."""
    info = shard.tensors[name]
    old_rows, cols = info.shape
    row_bytes = info.nbytes // old_rows if old_rows else 0

    def write(out: BinaryIO) -> None:
        with open(shard.path, "rb") as src:
            row = 0
            for r in sorted(new_rows) + [target_rows]:
                if r > row:  # a run of untouched rows
                    copy_end = min(r, old_rows)
                    if copy_end > row:
                        copy_range(src, out, info.begin + row * row_bytes, (copy_end - row) * row_bytes, lambda n: None)
                    zeros = r - max(row, old_rows)
                    for start in range(0, max(zeros, 0) * row_bytes, COPY_CHUNK):
                        out.write(bytes(min(COPY_CHUNK, zeros * row_bytes - start)))
                if r < target_rows:
                    out.write(new_rows[r])
                row = r + 1

    return write


def _write_json(path: Path, value: Any, pretty: bool = True) -> None:
    # Python's JSON encoder is pure Python (slow) when indenting: a tokenizer.json is written compact.
    text = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _new_config(config: dict, target: int) -> dict:
    """``vocab_size`` = the new row count, in the text config even where the file left it
    out (a default that no longer matches), and at the top level where it is given."""
    text = _text_config(config)
    text["vocab_size"] = max(text.get("vocab_size") or 0, target)
    if text is not config and isinstance(config.get("vocab_size"), int):
        config["vocab_size"] = max(config["vocab_size"], target)
    return config


def _token_entry(t: NewToken, special: bool) -> dict:
    return {
        "id": t.id,
        "content": t.content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": not special,
        "special": special,
    }


def _new_tokenizer_json(data: dict, placed: list[NewToken], special: bool) -> dict:
    """New tokens appended to ``added_tokens``; a reused slot's entry replaced, and its
    vocabulary key renamed (Gemma's <unusedN> are vocabulary entries only: they get an
    added-token entry, which makes the new token match whole)."""
    by_id = {t.id: t for t in placed}
    added = [a for a in data.setdefault("added_tokens", []) if a["id"] not in by_id]
    added += [_token_entry(t, special) for t in placed]
    data["added_tokens"] = sorted(added, key=lambda a: a["id"])
    model = data.get("model") or {}
    renames = {t.replaced: t.content for t in placed if t.replaced is not None}
    if renames and isinstance(model.get("vocab"), dict):
        model["vocab"] = {renames.get(k, k): v for k, v in model["vocab"].items()}
    return data


def _new_tokenizer_config(config: dict, placed: list[NewToken], special: bool) -> dict:
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for t in placed:
            entry = _token_entry(t, special)
            del entry["id"]
            decoder[str(t.id)] = entry
        config["added_tokens_decoder"] = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
    _update_special_list(config, placed, special)
    return config


def _update_special_list(config: dict, placed: list[NewToken], special: bool) -> None:
    """Reused slots leave the list of extra special tokens (else transformers would add the
    old name back as a new id); special new tokens join it, under the key the file uses
    (transformers 5 writes ``extra_special_tokens``, 4.x ``additional_special_tokens``)."""
    key = "extra_special_tokens" if isinstance(config.get("extra_special_tokens"), list) else "additional_special_tokens"
    replaced = {t.replaced for t in placed if t.replaced is not None}
    content = lambda x: x.get("content") if isinstance(x, dict) else x  # noqa: E731
    current = [x for x in config.get(key) or [] if content(x) not in replaced]
    if special:
        current += [t.content for t in placed]
    if current or key in config:
        config[key] = current


def _new_special_map(special_map: dict, placed: list[NewToken], special: bool) -> dict:
    _update_special_list(special_map, placed, special)
    return special_map


def _new_index(index: dict, out: Path, added_parameters: int) -> dict:
    total = 0
    for name in sorted(set(index["weight_map"].values())):
        shard = SafetensorsFile(out / name)
        total += sum(t.nbytes for t in shard.tensors.values())
    metadata = index.setdefault("metadata", {})
    metadata["total_size"] = total
    if isinstance(metadata.get("total_parameters"), int):
        metadata["total_parameters"] += added_parameters
    return index


def _verify(path: Path, placed: list[NewToken]) -> None:
    """Each new token must encode to exactly its id with the written tokenizer (tokensmith's,
    else the reference library's; skipped when neither can run it)."""
    from ._tokenizer import Tokenizer

    try:
        encode = Tokenizer.from_file(path).encode
    except TokenizerError:
        try:
            import tokenizers

            reference = tokenizers.Tokenizer.from_file(str(path))
        except Exception:  # not installed, or cannot parse it either: transformers checks on load
            return
        encode = lambda text, add_special_tokens: reference.encode(text, add_special_tokens=add_special_tokens).ids  # noqa: E731
    for t in placed:
        got = encode(t.content, add_special_tokens=False)
        if got != [t.id]:
            raise CheckpointError(
                f"{t.content!r} would encode to {got}, not to its new id {t.id}, with this tokenizer "
                "(try adding it as a special token); nothing was written"
            )
