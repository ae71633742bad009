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
from ._atomic import atomic_folder, exists_message, temp_folder_for
from ._safetensors import COPY_CHUNK, Replacement, SafetensorsFile, copy_file, copy_range, write_file
from ._tokenizer_files import (
    RESERVED_PATTERNS,
    TOKENIZER_FILES,
    NewToken,
    _new_special_map,
    _new_tokenizer_config,
    _new_tokenizer_json,
    _placements,
    _reserved_slots,
    _token_entry,
    _used_by,
    _vocabulary,
    write_tokenizer_files,
)
from .errors import CheckpointError, InvalidInputError, TokenizerError

__all__ = ["RESERVED_PATTERNS", "INIT_METHODS", "NewToken", "AddTokensResult", "add_tokens"]

INIT_METHODS = ("pieces", "description", "mean", "noisy_mean", "mean_cov", "copy")

# Input embeddings and output heads, by the names model families give them.
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight", "embed_in.weight")
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight", "output.weight")

REWRITTEN = ("config.json", *TOKENIZER_FILES, "model.safetensors.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")


@dataclass
class AddTokensResult:
    out_dir: Path
    tokens: list[NewToken]
    rows_before: int
    rows_after: int
    init: str
    tensors: list[str] = field(default_factory=list)  # rewritten tensors
    padding_rows: int = 0  # rows --pad-to-multiple-of added past the new tokens
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
        if self.padding_rows:
            lines.append(f"{self.padding_rows} padding rows initialized by {_padding_init(self.init)!r}")
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
    copy_from: str | None = None,
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
      ``descriptions``), ``mean``, ``noisy_mean``, ``mean_cov`` (see
      :func:`tokensmith.embeddings.init_rows`) or ``copy`` (every new row a copy of the row
      of ``copy_from``, one token of the old tokenizer, e.g. ``"</s>"``). The output head is
      initialized from its own rows; tied weights once.
    - ``reuse_reserved``: take over untrained reserved slots (:data:`RESERVED_PATTERNS`, or
      ``reserved_patterns``, regular expressions matched against whole tokens) before
      growing the matrices.
    - ``pad_to_multiple_of``: round the grown row count up (never shrinks); the padding
      rows start from the mean of the trained rows (with ``noisy_mean`` / ``mean_cov``,
      drawn like the new rows), never zero.

    Raises :class:`CheckpointError` for a folder that cannot be read (missing, not
    safetensors, truncated, inconsistent tensors) and :class:`InvalidInputError` for tokens
    that cannot be added (already present, empty, duplicated). Nothing is written then.
    """
    started = time.monotonic()
    src, out = Path(model_dir), Path(out_dir)
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {', '.join(INIT_METHODS)}; got {init!r}")
    _check_folders(src, out, overwrite)
    tokens = [str(t) for t in tokens]
    if init == "description" and (descriptions is None or len(descriptions) != len(tokens)):
        raise ValueError("init='description' needs descriptions=[one per token]")
    if (init == "copy") != (copy_from is not None):
        raise ValueError("init='copy' needs copy_from=TOKEN, and copy_from is only used with init='copy'")

    config = _read_json_object(src / "config.json")
    tokenizer_json = _read_json_object(src / "tokenizer.json")
    tokenizer_config = _read_json_object(src / "tokenizer_config.json") if (src / "tokenizer_config.json").exists() else None
    shards = _weight_files(src)

    vocab = _vocabulary(tokenizer_json)
    old_size = max(vocab.values(), default=-1) + 1
    old_tokenizer = _old_tokenizer(src / "tokenizer.json", tokenizer_json, required=init in ("pieces", "description"))
    _check_new_tokens(tokens, tokenizer_json, vocab, old_tokenizer)
    sources = None if copy_from is None else [_copy_source(copy_from, tokenizer_json, vocab, old_tokenizer)] * len(tokens)
    patterns = [re.compile(p) for p in (reserved_patterns or RESERVED_PATTERNS.values())]
    reserved = _reserved_slots(vocab, patterns)  # all untrained, in use or not
    free = _reserved_slots(vocab, patterns, _in_use(src, config, tokenizer_config, tokenizer_json))
    slots = free[: len(tokens)] if reuse_reserved else []

    new_count = len(tokens) - len(slots)
    placed = _placements(tokens, slots, old_size)
    texts = list(descriptions) if init == "description" else tokens

    def write_tokenizer(tmp: Path) -> None:
        entries = [_token_entry(t, special) for t in placed]
        replaced = {t.replaced for t in placed if t.replaced is not None}
        special_map = src / "special_tokens_map.json"
        write_tokenizer_files(
            tmp,
            json.dumps(_new_tokenizer_json(tokenizer_json, placed, special), ensure_ascii=False),
            None if tokenizer_config is None else _new_tokenizer_config(tokenizer_config, entries, replaced),
            _new_special_map(_read_json_object(special_map), entries, replaced) if special_map.exists() else None,
        )
        _verify(tmp / "tokenizer.json", placed)

    grown = _write_model(
        src,
        out,
        config=config,
        shards=shards,
        old_size=old_size,
        ids=[t.id for t in placed],
        rows_needed=old_size + new_count,
        untrained=[id for id, _ in reserved],
        init=init,
        options=E._Options(tokenizer=old_tokenizer, texts=texts, seed=seed, sources=sources),
        pad_to_multiple_of=pad_to_multiple_of,
        write_tokenizer=write_tokenizer,
        overwrite=overwrite,
        progress=progress,
    )
    return AddTokensResult(tokens=placed, init=init, seconds=time.monotonic() - started, **grown)


def _write_model(
    src: Path,
    out: Path,
    *,
    config: dict,
    shards: list[SafetensorsFile],
    old_size: int,
    ids: list[int],
    rows_needed: int,
    untrained: list[int],
    init: str,
    options: E._Options,
    pad_to_multiple_of: int | None,
    write_tokenizer: Callable[[Path], None],
    overwrite: bool,
    progress: bool | None,
    omit: Sequence[str] = (),
) -> dict[str, Any]:
    """Writes the model folder ``out``: ``src`` with the input embedding and output head
    grown to ``rows_needed`` rows (rounded up to ``pad_to_multiple_of``; never shrunk), the
    rows ``ids`` initialized by ``init``, ``config.json`` and the safetensors index updated,
    the tokenizer files written by ``write_tokenizer(folder)``, every other file but the
    top-level ``omit`` ones copied byte for byte; atomically. ``untrained`` rows (reserved
    slots) stay out of the statistics. Returns the fields of an AddTokensResult that
    describe the writing."""
    embedding, head, files = _locate_matrices(shards, config)
    rows = embedding.shape[0]
    if rows < old_size:
        raise CheckpointError(f"the embedding has {rows} rows but the tokenizer has {old_size} tokens")
    target = max(rows, E._padded(rows_needed, pad_to_multiple_of))
    padding = sorted(set(range(rows, target)) - set(ids))

    # Statistics come from trained rows only: not the padding past the tokenizer, not the
    # reserved slots (never trained), not the rows being replaced.
    include = E._row_flags(rows, [*range(old_size, rows), *untrained, *(i for i in ids if i < rows)])
    # Padding rows are never an input, but each is a logit in every softmax of an untied
    # head: a zero row gives logit 0 wherever that falls among the real logits. At the
    # mean of the trained rows its logit is the mean logit, so exp(logit) is at most the
    # mean of the real exp(logits) (Jensen): k such rows take at most k/V of the mass, the
    # bound behind mean init (Hewitt 2021) that transformers' mean_resizing also applies to
    # its padding. pieces / description / copy describe one token; a padding row stands
    # for none, so it takes that plain mean; noisy_mean and mean_cov draw around it as the
    # new rows do (with their own seed: the new rows do not change when padding is asked).
    pad_init = _padding_init(init)

    replacements: dict[Path, dict[str, Replacement]] = {}
    rewritten = []
    tied = head is None or bool(config.get("tie_word_embeddings", False))
    for k, (name, shard) in enumerate(files):
        matrix, kernel_dtype = shard.map_rows(name)
        if matrix.shape[0] != rows:
            raise CheckpointError(f"{shard.path}: {name} has {matrix.shape[0]} rows, the embedding {rows}")
        tensor_options = dataclasses.replace(options, seed=options.seed if tied else options.seed + k)
        targets = [i for i in ids if i < rows]
        host = E._HostMatrix(matrix, kernel_dtype)
        values = E._values(host, len(ids), init, include, targets, tensor_options)
        new_rows = dict(zip(ids, _round_rows(values, len(ids), matrix.shape[1], matrix.dtype, kernel_dtype)))
        if padding:
            pad_options = dataclasses.replace(tensor_options, seed=tensor_options.seed + len(files))
            values = E._values(host, len(padding), pad_init, include, padding, pad_options)
            new_rows.update(zip(padding, _round_rows(values, len(padding), matrix.shape[1], matrix.dtype, kernel_dtype)))
        replacements.setdefault(shard.path, {})[name] = Replacement(
            [target, matrix.shape[1]], _matrix_writer(shard, name, target, new_rows)
        )
        rewritten.append(name)
        del matrix, host

    stale_temp = [p for p in _stale_temp_folders(out) if p != temp_folder_for(out)]
    total = sum(p.stat().st_size for p in _files(src)) + (target - rows) * sum(
        embedding.shape[1] * (2 if shard.tensors[name].dtype in ("F16", "BF16") else 4) for name, shard in files
    )
    bar = _Progress(total, sys.stderr.isatty() if progress is None else progress)
    copied = 0
    with atomic_folder(out, overwrite=overwrite, error=CheckpointError) as tmp:
        for path in _files(src):
            target_path = tmp / path.relative_to(src)
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shard = next((s for s in shards if s.path == path), None)
            if shard is not None and path in replacements:
                write_file(shard, target_path, replacements[path], bar)
            elif path.parent == src and (path.name in REWRITTEN or path.name in omit):
                bar(path.stat().st_size)  # rewritten below, or left out
            elif shard is not None or path.stat().st_size > COPY_CHUNK:
                copy_file(path, target_path, bar)
                copied += 1
            else:
                shutil.copy2(path, target_path)
                bar(path.stat().st_size)
                copied += 1
        _write_json(tmp / "config.json", _new_config(config, target))
        index = src / "model.safetensors.index.json"
        if index.exists():
            _write_json(tmp / index.name, _new_index(_read_json_object(index), tmp, (target - rows) * embedding.shape[1] * len(files)))
        write_tokenizer(tmp)
        bar.finish()
    shard_paths = {shard.path for shard in shards}
    stale = [str(p.relative_to(src)) for p in _files(src) if p.suffix in WEIGHT_SUFFIXES and p not in shard_paths]
    return dict(
        out_dir=out,
        rows_before=rows,
        rows_after=target,
        padding_rows=len(padding),
        tensors=rewritten,
        files_copied=copied,
        bytes_written=sum(p.stat().st_size for p in _files(out)),
        warnings=[f"{name} copied unchanged: it holds weights this command does not update (delete it if unused)"
                  for name in stale]
        + [f"{p} was left by an interrupted run: delete it if no other run is writing {out}" for p in stale_temp],
    )


# ----------------------------------------------------------------------------- reading


def _check_folders(src: Path, out: Path, overwrite: bool) -> None:
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such model folder")
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents or src.resolve() in out.resolve().parents:
        raise CheckpointError("out_dir must not be model_dir, inside it, or a folder that contains it: the input is never modified")
    if out.exists() and not overwrite:
        raise CheckpointError(exists_message(out))  # early; atomic_folder claims it for good


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
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None


def _read_json_object(path: Path) -> dict:
    value = _read_json(path)
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_link(path: Path, top: str) -> None:
    """A model folder's entry may be a link to a regular file inside the folder, or into the
    ``blobs`` of the Hugging Face cache repository the folder is a snapshot of
    (``models--org--name/snapshots/REV/x -> ../../blobs/HASH``). Anything else (a file
    elsewhere, a device, a FIFO) is refused: copying it would leak or never end."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        kind = "a folder" if os.path.isdir(real) else "not a regular file (a device, a FIFO, a socket, a broken link)"
        raise CheckpointError(f"{path}: {kind} where a model file was expected; remove it from the model folder")
    if os.path.islink(path) and not _inside(real, top):
        snapshots = os.path.dirname(top)
        blobs = os.path.join(os.path.dirname(snapshots), "blobs")
        if not (os.path.basename(snapshots) == "snapshots" and _inside(real, blobs)):
            raise CheckpointError(
                f"{path}: a link to {real}, outside the model folder: not copied (copy the file in, or remove the link)"
            )


def _files(folder: Path) -> list[Path]:
    """Every file of a model folder, without hidden entries (.git with its LFS objects,
    .cache): they are not the model. Links to files stay allowed where the Hugging Face
    cache puts them (see ``_check_link``); links to folders only inside the folder."""
    found = []
    top = os.path.realpath(folder)
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or a folder reached twice
            dirs[:] = []
            continue
        seen.add(real)
        for d in dirs:
            target = os.path.realpath(os.path.join(root, d))
            if not d.startswith(".") and not _inside(target, top):
                raise CheckpointError(f"{Path(root) / d}: a link to the folder {target}, outside the model folder")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in seen)
        for f in files:
            if not f.startswith("."):
                _check_link(Path(root) / f, top)
                found.append(Path(root) / f)
    return sorted(found)


def _shard_path(src: Path, index: Path, name: str) -> Path:
    """A shard named by the index: a plain file name of the folder (or of a subfolder),
    never an absolute path or one that climbs out with ``..``."""
    if not name:
        raise CheckpointError(f"{index}: a weight_map value is empty")
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts:
        raise CheckpointError(f"{index}: the shard {name!r} is outside the model folder")
    path = src / name
    if not path.is_file():
        raise CheckpointError(f"{index} lists a shard that is missing: {name}")
    _check_link(path, os.path.realpath(src))
    return path


def _weight_files(src: Path) -> list[SafetensorsFile]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        for name in weight_map.values():
            if not isinstance(name, str):
                raise CheckpointError(f"{index}: weight_map values must be file names, got {name!r:.80}")
        return [SafetensorsFile(_shard_path(src, index, name)) for name in sorted(set(weight_map.values()))]
    if (src / "model.safetensors").is_file():
        _check_link(src / "model.safetensors", os.path.realpath(src))
        return [SafetensorsFile(src / "model.safetensors")]
    others = [p.name for p in src.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if others:
        raise CheckpointError(
            f"{src}: the weights are in {', '.join(sorted(others))}, not safetensors. add-tokens reads only "
            "safetensors (it never unpickles); convert first, e.g. model.save_pretrained(dir, safe_serialization=True)"
        )
    raise CheckpointError(f"{src}: no model.safetensors or model.safetensors.index.json")


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


def _copy_source(copy_from: str, tokenizer_json: dict, vocab: dict[str, int], old_tokenizer: Any) -> int:
    """The id of ``copy_from`` in the old tokenizer: an added token spelled so, or a text it
    encodes to one id (not the unknown token); the vocabulary's own spelling where no
    tokenizer runs. Raises InvalidInputError(detail="copy_from") otherwise."""
    added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens") or []}
    if copy_from in added:
        return added[copy_from]
    if old_tokenizer is None:
        if copy_from in vocab:
            return vocab[copy_from]
        why = "not in the vocabulary"
    else:
        ids = E._plain_text_encoder(old_tokenizer)[0](copy_from) if copy_from else []
        unk = vocab.get((tokenizer_json.get("model") or {}).get("unk_token") or "")
        if len(ids) == 1 and ids[0] != unk:
            return ids[0]
        why = "the unknown token" if ids == [unk] else f"it splits into {len(ids)} pieces"
    raise InvalidInputError(f"copy_from {copy_from!r} is not a token of this tokenizer ({why})", "copy_from")


def _padding_init(init: str) -> str:
    """How the padding rows start (see add_tokens)."""
    return init if init in ("noisy_mean", "mean_cov") else "mean"


def _in_use(src: Path, config: dict, tokenizer_config: dict | None, tokenizer_json: dict) -> tuple[set[int], str]:
    """Token ids and text the model folder uses; a reserved slot named there is in use:
    - ids: config.json / generation_config.json keys naming tokens (pad_token_id,
      image_token_index, ...);
    - text: what the tokenizer files use (see ``_tokenizer_files._used_by``: special-token
      fields, named extra tokens, padding, post-processor, the config's chat template), and
      the chat templates of their own files (chat_template.jinja / .json,
      additional_chat_templates/)."""
    ids: set[int] = set()
    configs = [config, _text_config(config)]
    if (src / "generation_config.json").exists():
        configs.append(_read_json_object(src / "generation_config.json"))
    for c in configs:
        for key, value in c.items():
            if "token" in key.lower():
                ids.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
    special_map = _read_json_object(src / "special_tokens_map.json") if (src / "special_tokens_map.json").exists() else {}
    used_ids, used_text = _used_by(tokenizer_config or {}, special_map, tokenizer_json)
    texts = [used_text]
    for template in [src / "chat_template.jinja", src / "chat_template.json", *sorted(src.glob("additional_chat_templates/*"))]:
        if template.is_file():
            texts.append(template.read_text(encoding="utf-8", errors="replace"))
    return ids | used_ids, "\n".join(texts)


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
