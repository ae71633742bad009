"""Dataset preparation: records in, training-ready Parquet shards out (``tokensmith prepare``)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import atomic_folder
from .._tokenizer import Tokenizer
from ..errors import TokenizerError
from .chat import IGNORE_INDEX, Example, encode_chat, resolve_template
from .sources import BadRecord, Record, read_records, to_example_input

__all__ = ["DataError", "ExampleEncoder", "Packer", "PrepareResult", "prepare"]


class DataError(TokenizerError, ValueError):
    """A record cannot be turned into an example; the message names its file and line."""


class ExampleEncoder:
    """Turns records of any supported shape into :class:`Example` s. Picklable, so the same
    object serves worker processes, ``datasets.Dataset.map`` and Ray Data.

    >>> enc = ExampleEncoder(tok)                                                # doctest: +SKIP
    >>> ds = ds.map(enc.map_batch, batched=True, remove_columns=ds.column_names)  # doctest: +SKIP
    """

    def __init__(
        self,
        tok: Tokenizer,
        chat_template: str | os.PathLike[str] | None = None,
        *,
        loss: str = "assistant",
        mapping: Mapping[str, str] | None = None,
    ) -> None:
        self.tok = tok
        self.loss = loss
        self.mapping = dict(mapping or {})
        try:
            self.template: str | None = resolve_template(tok, chat_template)
        except TokenizerError:
            self.template = None  # text-only data needs none; chats will say so
        eos = tok.config.get("eos_token")
        eos = eos.get("content") if isinstance(eos, Mapping) else eos
        self.eos_id = tok.token_to_id(eos) if isinstance(eos, str) else None

    def __call__(self, data: Mapping[str, Any]) -> Example:
        kind, value = to_example_input(data, self.mapping)
        if kind == "text":
            return self.encode_text(value)
        if self.template is None:
            raise DataError("chat records need a chat template: the tokenizer has none, pass chat_template=")
        return encode_chat(self.tok, value, self.template, loss=self.loss)

    def encode_text(self, text: str) -> Example:
        """Continued pre-training text: plain text (never control tokens), EOS as an id."""
        ids = self.tok.encode(text, special="text")
        if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
            ids.append(self.eos_id)
        return Example(ids, list(ids))

    def map_batch(self, batch: Mapping[str, list[Any]]) -> dict[str, list[list[int]]]:
        """A ``Dataset.map(batched=True)`` / Ray ``map_batches`` function: columns in,
        ``input_ids`` and ``labels`` out."""
        columns = list(batch)
        rows = len(batch[columns[0]]) if columns else 0
        out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        for r in range(rows):
            ex = self({c: _plain(batch[c][r]) for c in columns})
            out["input_ids"].append(ex.input_ids)
            out["labels"].append(ex.labels)
        return out


def _plain(value: Any) -> Any:
    """numpy / Arrow values (from Ray batches) as plain Python objects."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Packer:
    """Concatenates examples into blocks of at most ``max_length`` tokens, never splitting an
    example; ``position_ids`` restart at each example and ``seq_lens`` give their lengths, so
    attention can be kept within examples (``cu_seqlens`` is their running sum)."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._ids: list[int] = []
        self._labels: list[int] = []
        self._positions: list[int] = []
        self._lens: list[int] = []

    def add(self, ex: Example) -> list[dict[str, list[int]]]:
        done = []
        if self._ids and len(self._ids) + len(ex.input_ids) > self.max_length:
            done.append(self.flush())
        self._ids += ex.input_ids
        self._labels += ex.labels
        self._positions += range(len(ex.input_ids))
        self._lens.append(len(ex.input_ids))
        return done

    def flush(self) -> dict[str, list[int]]:
        block = {"input_ids": self._ids, "labels": self._labels, "position_ids": self._positions, "seq_lens": self._lens}
        self._ids, self._labels, self._positions, self._lens = [], [], [], []
        return block

    def pending(self) -> bool:
        return bool(self._ids)


@dataclass
class PrepareResult:
    """What ``prepare`` did; also written to ``meta.json``."""

    out_dir: str
    examples: int = 0
    rows: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    truncated: int = 0
    skipped: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.examples / self.seconds if self.seconds else 0.0
        lines = [
            f"wrote {self.rows} rows ({self.examples} examples, {self.tokens} tokens, "
            f"{self.loss_tokens} with loss) to {self.out_dir}",
            f"{self.seconds:.1f} s, {rate:.0f} examples/s, {self.bytes_read / 1e6 / max(self.seconds, 1e-9):.1f} MB/s",
        ]
        if self.truncated:
            lines.append(f"{self.truncated} examples were longer than max_length and truncated")
        if self.skipped:
            lines.append(f"{self.skipped} records skipped (see errors in meta.json)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- workers

_WORKER: ExampleEncoder | None = None


def _init_worker(encoder: ExampleEncoder) -> None:
    global _WORKER
    _WORKER = encoder


def _encode_chunk(chunk: list[tuple[str, int, Any]]) -> list[tuple[str, int, Any]]:
    """(source, line, Example or error message) for each record of a chunk."""
    assert _WORKER is not None
    return [_encode_one(_WORKER, s, n, d) for s, n, d in chunk]


def _encode_one(encoder: ExampleEncoder, source: str, line: int, data: Any) -> tuple[str, int, Any]:
    try:
        return source, line, encoder(data)
    except (ValueError, TypeError, KeyError, TokenizerError) as e:
        return source, line, f"{type(e).__name__}: {e}"


def _chunks(records: Iterator[Record | BadRecord], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for r in records:
        chunk.append((r.source, r.line, r.error if isinstance(r, BadRecord) else r.data, isinstance(r, BadRecord)))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = self.last = time.monotonic()

    def update(self, result: PrepareResult, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.5 and not force):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        print(
            f"\r{result.examples:,} examples  {result.examples / dt:,.0f} ex/s  "
            f"{result.tokens / dt:,.0f} tokens/s  {result.tokens:,} tokens",
            end="" if not force else "\n",
            file=sys.stderr,
            flush=True,
        )


# ----------------------------------------------------------------------------- prepare


def prepare(
    inputs: Iterable[str | os.PathLike[str]] | Iterable[Mapping[str, Any]],
    tok: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    max_length: int = 4096,
    pack: bool = True,
    loss: str = "assistant",
    chat_template: str | os.PathLike[str] | None = None,
    mapping: Mapping[str, str] | None = None,
    on_error: str = "skip",
    num_workers: int | None = None,
    rows_per_shard: int = 100_000,
    overwrite: bool = False,
    progress: bool | None = None,
) -> PrepareResult:
    """Encode a dataset into Parquet shards (``input_ids``, ``labels``, and with packing
    ``position_ids`` and ``seq_lens``) plus ``meta.json`` in ``out_dir``.

    Output appears at ``out_dir`` only when complete (written under a temporary name and
    renamed), so an interrupted run leaves nothing half-written. Bad records are reported
    with file and line and skipped (``on_error="skip"``) or stop the run (``"raise"``).

    >>> prepare(["train.jsonl"], tok, "out/", max_length=4096, pack=True)   # doctest: +SKIP
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f'on_error must be "skip" or "raise", got {on_error!r}')
    if max_length < 1:
        raise ValueError("max_length must be positive")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
    encoder = ExampleEncoder(tok, chat_template, loss=loss, mapping=mapping)
    result = PrepareResult(out_dir=str(out))
    bar = _Progress(sys.stderr.isatty() if progress is None else progress)
    started = time.monotonic()
    with atomic_folder(out) as tmp:
        with _ShardWriter(tmp, pack, rows_per_shard) as writer:
            packer = Packer(max_length) if pack else None
            for source, line, value in _encoded(inputs, encoder, num_workers):
                if isinstance(value, str):
                    message = f"{source}:{line}: {value}"
                    if on_error == "raise":
                        raise DataError(message)
                    result.skipped += 1
                    if len(result.errors) < 1000:
                        result.errors.append(message)
                    continue
                ex: Example = value
                result.warnings += [f"{source}:{line}: {w}" for w in ex.warnings][: max(0, 1000 - len(result.warnings))]
                if len(ex.input_ids) > max_length:
                    result.truncated += 1
                    ex = Example(ex.input_ids[:max_length], ex.labels[:max_length])
                result.examples += 1
                result.tokens += len(ex.input_ids)
                result.loss_tokens += sum(1 for l in ex.labels if l != IGNORE_INDEX)
                rows = packer.add(ex) if packer else [{"input_ids": ex.input_ids, "labels": ex.labels}]
                for row in rows:
                    writer.write(row)
                bar.update(result)
            if packer and packer.pending():
                writer.write(packer.flush())
            result.rows = writer.rows
        result.seconds = time.monotonic() - started
        result.bytes_read = sum(os.path.getsize(p) for p in _paths(inputs))
        bar.update(result, force=True)
        meta = {
            **asdict(result),
            "out_dir": str(out),
            "tokenizer_sha256": hashlib.sha256(tok.to_str().encode()).hexdigest(),
            "chat_template": encoder.template,
            "max_length": max_length,
            "pack": pack,
            "loss": loss,
            "columns": writer.columns,
            "ignore_index": IGNORE_INDEX,
            "tokensmith_version": _version(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def _paths(inputs) -> list[str]:
    if isinstance(inputs, (list, tuple)):
        return [os.fspath(p) for p in inputs if isinstance(p, (str, os.PathLike))]
    return []


def _version() -> str:
    from .. import __version__

    return __version__


def _encoded(inputs, encoder: ExampleEncoder, num_workers: int | None) -> Iterator[tuple[str, int, Any]]:
    """(source, line, Example or error message) in input order, on all cores."""
    workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    chunks = _chunks(read_records(inputs), 256)
    if workers <= 1:
        for chunk in chunks:
            for s, n, d, bad in chunk:
                yield (s, n, d) if bad else _encode_one(encoder, s, n, d)
        return
    context = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver")
    with context.Pool(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
        for encoded in _in_pool(chunks, pool):
            yield from encoded


def _in_pool(chunks: Iterator[list[Any]], pool) -> Iterator[list[tuple[str, int, Any]]]:
    """Bad records pass through; good ones are encoded in the pool, order kept, a bounded
    number of chunks in flight (memory stays bounded on inputs larger than RAM)."""
    from collections import deque

    in_flight: deque = deque()
    limit = 4 * (pool._processes or 1)  # noqa: SLF001 - documented attribute of Pool

    def submit(chunk):
        good = [(s, n, d) for s, n, d, bad in chunk if not bad]
        in_flight.append((chunk, pool.apply_async(_encode_chunk, (good,))))

    def collect():
        chunk, job = in_flight.popleft()
        encoded = iter(job.get())
        return [(s, n, d) if bad else next(encoded) for s, n, d, bad in chunk]

    for chunk in chunks:
        submit(chunk)
        if len(in_flight) >= limit:
            yield collect()
    while in_flight:
        yield collect()


class _ShardWriter:
    """Rows to ``part-00000.parquet``, ``part-00001.parquet``, ... ``rows_per_shard`` each."""

    def __init__(self, folder: Path, packed: bool, rows_per_shard: int) -> None:
        import pyarrow as pa

        self.folder = folder
        self.columns = ["input_ids", "labels"] + (["position_ids", "seq_lens"] if packed else [])
        self.schema = pa.schema([(c, pa.list_(pa.int32())) for c in self.columns])
        self.rows_per_shard = rows_per_shard
        self.rows = 0
        self._writer = None
        self._buffer: dict[str, list[list[int]]] = {c: [] for c in self.columns}
        self._shard_rows = 0
        self._shards = 0

    def __enter__(self) -> _ShardWriter:
        return self

    def write(self, row: dict[str, list[int]]) -> None:
        for c in self.columns:
            self._buffer[c].append(row[c])
        self.rows += 1
        self._shard_rows += 1
        if len(self._buffer["input_ids"]) >= 1024:
            self._flush()
        if self._shard_rows >= self.rows_per_shard:
            self._flush()
            self._close_shard()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer["input_ids"]:
            return
        if self._writer is None:
            path = self.folder / f"part-{self._shards:05d}.parquet"
            self._writer = pq.ParquetWriter(path, self.schema)
        self._writer.write_table(pa.table(self._buffer, schema=self.schema))
        self._buffer = {c: [] for c in self.columns}

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._shards += 1
        self._shard_rows = 0

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
            if self._shards == 0 and self._writer is None:
                # An empty dataset still gets one (empty) shard with the schema.
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({c: [] for c in self.columns}, schema=self.schema), self.folder / "part-00000.parquet")
        self._close_shard()
