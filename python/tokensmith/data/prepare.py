"""Dataset preparation: records in, training-ready Parquet shards out (``tokensmith prepare``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import RESUME_STATE, atomic_folder, exists_message
from .._tokenizer import Tokenizer
from ..errors import DataError, TokenizerError
from .chat import (
    IGNORE_INDEX,
    NO_END_TOKEN,
    ChatTemplateError,
    ContentSpecial,
    Example,
    _encode_chat,
    compile_template,
    content_special_tokens,
    named_template,
    resolve_template,
)
from . import _ray
from .eos import NoEOSError, eos_token
from .sources import BadRecord, ReadProgress, Record, read_records, to_example_input, to_tools

__all__ = ["DataError", "ExampleEncoder", "Packer", "PrepareResult", "RecordError", "SkippedRecord", "prepare"]


class SkippedRecord(DataError):
    """A well-formed record that gives no training example (a chat with no assistant reply)."""


#: The reason a chat with nothing to train on is skipped (counted, never an error).
NO_REPLY = "no assistant reply"

CHAT_IN_STREAM = (
    "a chat record in a token stream for pre-training, which has no labels to keep its loss mask: "
    'write chat data with format="parquet" / --format parquet'
)


class _WorkerLost(DataError):
    """A worker process died (killed by the system, out of memory): the run stops, but what
    it wrote is kept for a resume."""


class _Fatal(DataError):
    """The setup's fault, not the record's (see :class:`RecordError`)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RecordError:
    """Why a record gave no example: ``reason`` is its kind (counted in the summary), and a
    ``fatal`` one is the setup's fault (no EOS, no template): it stops the run whatever
    ``on_error`` says, since every such record would fail the same way."""

    message: str
    reason: str
    fatal: bool = False

    def __str__(self) -> str:
        return self.message


class ExampleEncoder:
    """Turns records of any supported shape into :class:`Example` s. Picklable, so the same
    object serves worker processes, ``datasets.Dataset.map`` and Ray Data.

    Chat records go through the chat template (``content_special`` as in
    :func:`~tokensmith.data.encode_chat`); under ``loss="assistant"`` a chat with no
    assistant reply raises :class:`SkippedRecord`. Text records (continued pre-training)
    end with the EOS id: ``eos``, else the folder's ``eos_token``, else the tokenizer's own
    end-of-text token; never an EOS spelled as text.

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
        content_special: ContentSpecial = "auto",
        eos: str | None = None,
        template_name: str | None = None,
    ) -> None:
        if loss not in ("assistant", "all"):
            raise ValueError(f'loss must be "assistant" or "all", got {loss!r}')
        self.tok = tok
        self.loss = loss
        self.mapping = dict(mapping or {})
        self.template: str | None = None
        self.template_error: str | None = None
        if template_name is not None:
            self.template = named_template(tok, template_name)
        elif chat_template is not None:
            self.template = resolve_template(tok, chat_template)
        else:
            try:
                self.template = resolve_template(tok)
            except ChatTemplateError as e:
                self.template_error = str(e)  # text-only data needs none; chat records will say so
        # Tool records use the tokenizer's "tool_use" template where it has one, as transformers does.
        self.tool_template = self.template
        if chat_template is None and template_name is None and self.template is not None:
            self.tool_template = resolve_template(tok, tools=[{}])
        for template in {self.template, self.tool_template} - {None}:
            compile_template(template)  # a syntax error is the setup's, not each record's
        if not isinstance(content_special, str):
            content_special = sorted(set(content_special))  # an iterator would be used up
        self.content_special = content_special
        self._allowed = {
            t: tuple(content_special_tokens(tok, t, content_special)) for t in {self.template, self.tool_template} if t is not None
        }
        #: The special tokens that become ids in text records (the same rule as in chats).
        self.text_allowed = content_special_tokens(tok, self.template or "", content_special)
        self.eos_problem: str | None = None
        try:
            self.eos, self.eos_id = eos_token(tok, eos)
        except NoEOSError as e:
            if eos is not None:
                raise
            self.eos, self.eos_id, self.eos_problem = None, None, str(e)

    def __call__(self, data: Mapping[str, Any]) -> Example:
        kind, value = to_example_input(data, self.mapping)
        if kind == "text":
            return self.encode_text(value)
        ex = self.encode_messages(value, to_tools(data, self.mapping))[0]
        if self.loss == "assistant" and all(label == IGNORE_INDEX for label in ex.labels):
            raise SkippedRecord(f"{NO_REPLY}: nothing to train on (loss=\"all\" keeps such records)")
        return ex

    def template_for(self, tools: list[Any] | None) -> str:
        """The template a chat with these ``tools`` is rendered with."""
        template = self.tool_template if tools is not None else self.template
        if template is None:
            raise _Fatal(f"chat records need a chat template: {self.template_error}", "no chat template")
        return template

    def allowed_in(self, template: str) -> list[str]:
        """The special tokens that become ids inside content under ``template``."""
        return self._allowed[template]

    def encode_messages(self, messages: list[dict[str, Any]], tools: list[Any] | None = None):
        """``(Example, rendered text, content spans)`` of a chat. An assistant turn that no
        special token closes stops the run: the model would never learn to stop."""
        template = self.template_for(tools)
        encoded = _encode_chat(
            self.tok, messages, template, self.allowed_in(template), False, loss=self.loss, tools=tools, documents=None
        )
        no_end = next((w for w in encoded[0].warnings if NO_END_TOKEN in w), None)
        if no_end is not None:
            raise _Fatal(f"{no_end}: add the end-of-turn token to the template, or train with loss=\"all\"", "no end of turn")
        return encoded

    def encode_text(self, text: str) -> Example:
        """Continued pre-training text, then the EOS id. Special tokens in it follow
        ``content_special`` as in chat content (the template's markers stay text)."""
        if self.eos_id is None:
            raise _Fatal(str(self.eos_problem), "no EOS token")
        ids = self.tok.encode(text, add_special_tokens=False, special=self.text_allowed)
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return Example(ids, list(ids))

    def map_batch(self, batch: Mapping[str, list[Any]]) -> dict[str, list[list[int]]]:
        """A ``Dataset.map(batched=True)`` / Ray ``map_batches`` function: columns in,
        ``input_ids`` and ``labels`` out. Chats with no assistant reply are left out (a
        batched map may return fewer rows); any other bad record raises."""
        columns = list(batch)
        rows = len(batch[columns[0]]) if columns else 0
        out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        for r in range(rows):
            try:
                ex = self({c: _plain(batch[c][r]) for c in columns})
            except SkippedRecord:
                continue
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

    def __init__(self, max_length: int, state: dict[str, list[int]] | None = None) -> None:
        """An empty packer, or with ``state`` (from :meth:`state`) one that goes on from there."""
        self.max_length = max_length
        self._ids: list[int] = []
        self._labels: list[int] = []
        self._positions: list[int] = []
        self._lens: list[int] = []
        if state is not None:
            self._ids, self._labels, self._positions, self._lens = (list(state[c]) for c in _PACKED_COLUMNS)

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

    def state(self) -> dict[str, list[int]]:
        """The examples of the block being filled, as a resumed run takes them up."""
        return dict(zip(_PACKED_COLUMNS, (self._ids, self._labels, self._positions, self._lens)))


_PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "seq_lens")


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
    #: How many records were skipped for each reason ("malformed record", "no assistant reply", ...).
    skipped_reasons: dict[str, int] = field(default_factory=dict)
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
            lines.append(f"{self.skipped} records skipped ({self.reasons()}; see errors in meta.json)")
        return "\n".join(lines)

    def reasons(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped_reasons.items(), key=lambda kv: -kv[1]))

    def skip(self, source: str, line: int, error: RecordError) -> None:
        self.skipped += 1
        self.skipped_reasons[error.reason] = self.skipped_reasons.get(error.reason, 0) + 1
        if len(self.errors) < 1000:
            self.errors.append(f"{source}:{line}: {error}")


# ----------------------------------------------------------------------------- workers


def _encode_chunk(encoder: ExampleEncoder, chunk: list[tuple[str, int, Any]]) -> list[tuple[str, int, Any]]:
    """:func:`_encode_one` for each record of a chunk: what the worker processes
    (``_workers.WorkerPool``) run."""
    return [_encode_one(encoder, s, n, d) for s, n, d in chunk]


def _encode_one(encoder: ExampleEncoder, source: str, line: int, data: Any) -> tuple[str, int, Any]:
    try:
        return source, line, encoder(data)
    except _Fatal as e:
        return source, line, RecordError(str(e), e.reason, fatal=True)
    except SkippedRecord as e:
        return source, line, RecordError(str(e), NO_REPLY)
    except ChatTemplateError as e:
        return source, line, RecordError(str(e), "chat template failed")
    except (ValueError, TypeError, KeyError, TokenizerError) as e:
        return source, line, RecordError(f"{type(e).__name__}: {e}", "malformed record")
    except Exception as e:  # noqa: BLE001 - whatever one record does, the others go on
        return source, line, RecordError(f"{type(e).__name__}: {e}"[:2000], "failed")


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
    """One line on stderr, redrawn at most twice a second: documents, tokens, MB/s of input
    read and, where the input's size is known (files), how far and how long to go."""

    def __init__(self, enabled: bool, reading: ReadProgress, unit: str = "examples") -> None:
        self.enabled = enabled
        self.reading = reading
        self.unit = unit
        self.start = self.last = time.monotonic()

    def update(self, result: PrepareResult, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.5 and not force):
            return
        self.last = now
        print(f"\r{self.line(result, now - self.start)}", end="\n" if force else "", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def line(self, result: PrepareResult, seconds: float) -> str:
        seconds = max(seconds, 1e-9)
        read, total = self.reading.bytes, self.reading.total
        new = max(read - self.reading.skipped, 0)  # a resumed run's rate is that of its own work
        parts = [f"{result.examples:,} {self.unit}", f"{result.tokens:,} tokens", f"{new / 1e6 / seconds:,.1f} MB/s"]
        if total and new:
            left = seconds * max(total - read, 0) / new
            parts.append(f"{min(read / total, 1):.0%} of {total / 1e6:,.1f} MB, ETA {_clock(left)}")
        return "  ".join(parts) + " " * 4  # spaces: clear what a longer line left


class _ResumeState:
    """What a resumable run has done, in ``resume.json`` in its folder: the job it is (inputs,
    options, tokenizer), how many input records are in the output, the counts so far, the
    writer's state, and how many records each input file read to the end has (a resumed run
    opens no file all done, and a Ray run's readers, one per file, know what each leaves
    out). A token stream's is saved after every batch, once the batch is on disk;
    Parquet's each time a shard is closed (with the rows not in a shard yet: the packer's
    examples, the ids short of a block). A run killed at any moment leaves files at least as
    far as the state says, and a writer made with the state ``load`` returns cuts them back
    to it."""

    def __init__(
        self, path: Path, job: dict[str, Any], result: PrepareResult, reading: ReadProgress
    ) -> None:
        self.path, self.result, self.reading, self.job = path, result, reading, job
        #: Input records in the output so far (the write loops keep it up to date).
        self.records = 0
        self.writer: Any = None
        #: Whether to save after every batch (token files), else when a shard is closed.
        self.per_batch = False

    def follow(self, writer) -> None:
        """Save what ``writer`` has done: after every batch, or when it closes a shard."""
        self.writer = writer
        shards = getattr(writer, "shards", writer)
        if isinstance(shards, _ShardWriter):
            shards.on_shard_closed = self.save
        else:
            self.per_batch = True

    def save(self) -> None:
        counts = {k: v for k, v in asdict(self.result).items() if k not in ("out_dir", "seconds", "bytes_read")}
        state = {"job": self.job, "records": self.records, "result": counts, "writer": self.writer.state(),
                 "file_records": list(self.reading.file_records)}
        new = self.path.with_name(self.path.name + ".new")
        new.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        os.replace(new, self.path)

    def load(self) -> dict[str, Any] | None:
        """Take up the saved counts; the writer's saved state, for the writer to go on from
        (``None`` where nothing was saved: the run starts afresh)."""
        if not self.path.exists():
            return None
        state, job = json.loads(self.path.read_text(encoding="utf-8")), self.job
        if state["job"] != job:
            changed = sorted(k for k in {**state["job"], **job} if state["job"].get(k) != job.get(k))
            raise DataError(
                f"cannot resume {self.path.parent}: changed since the run that wrote it: {', '.join(changed)} "
                "(run without resume / --resume to start afresh)"
            )
        for key, value in state["result"].items():
            setattr(self.result, key, value)
        self.records = state["records"]
        self.reading.file_records = list(state.get("file_records", []))
        return state["writer"]


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ----------------------------------------------------------------------------- prepare


def prepare(
    inputs: Iterable[str | os.PathLike[str]] | Iterable[Mapping[str, Any]],
    tok: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    max_length: int | None = None,
    pack: bool | None = None,
    loss: str = "assistant",
    chat_template: str | os.PathLike[str] | None = None,
    template_name: str | None = None,
    content_special: ContentSpecial = "auto",
    eos: str | None = None,
    mapping: Mapping[str, str] | None = None,
    on_error: str = "skip",
    num_workers: int | None = None,
    rows_per_shard: int = 100_000,
    overwrite: bool = False,
    progress: bool | None = None,
    format: str = "parquet",
    doc_per_line: bool = False,
    block_size: int | None = None,
    keep_remainder: bool = False,
    resume: bool = False,
    ray: bool | str = False,
) -> PrepareResult:
    """Encode a dataset into Parquet shards (``input_ids``, ``labels``, and with packing
    ``position_ids`` and ``seq_lens``) plus ``meta.json`` in ``out_dir``.

    Output appears at ``out_dir`` only when complete (written under a temporary name and
    renamed), so an interrupted run leaves nothing half-written. Bad records are reported
    with file and line and skipped (``on_error="skip"``) or stop the run (``"raise"``); chats
    with no assistant reply are skipped and counted. A run that would write no example raises
    :class:`DataError` saying why, as does a setup that fails every record alike (chat
    records and no template; text records and no EOS token: pass ``eos=``).

    ``chat_template`` / ``template_name``, ``loss`` and ``content_special`` are those of
    :func:`~tokensmith.data.encode_chat`; ``eos`` the token that ends each text record.

    ``format`` picks the output:

    - ``"parquet"``: the shards above, for SFT and packed pre-training;
    - ``"megatron"``: ``data.bin`` + ``data.idx``, Megatron-LM's indexed dataset
      (``IndexedDataset("out/data")``), one document per text record;
    - ``"tokens"``: ``tokens.bin`` (all ids, uint16 where the vocabulary fits, else uint32,
      for ``numpy.memmap``) and ``offsets.npy`` (where each document starts).

    With ``block_size``, the Parquet rows are instead blocks of pre-training text, as
    transformers' ``run_clm.py`` makes them with ``group_texts``: every document's ids (as in
    the two formats below) one after another, cut every ``block_size`` tokens, ``labels`` a
    copy of ``input_ids``. The last, shorter block is dropped unless ``keep_remainder``; a
    corpus shorter than one block is an error (``group_texts`` would give no row).
    ``group_texts`` is applied to the whole corpus at once: ``run_clm.py`` applies it to
    every 1,000 documents and drops a remainder from each.

    ``max_length`` (default 4096) and ``pack`` (default on) shape the Parquet rows. In the
    other two formats each text record's ids are the tokenizer's with its template (BOS
    where the model adds one) and then the EOS id, never truncated (the trainer cuts its own
    sequences: passing ``max_length`` or ``pack`` is an error there); chat records are an
    error too. They are encoded in this process, in batches, on every core (``num_workers``
    does not apply).
    ``resume`` takes up a run that ended early (killed, interrupted, out of disk) where it
    stopped. A run from files works in ``.NAME.partial`` next to ``out_dir`` and records
    there how many input records are in the output: the token streams after every batch of
    about 4 MB of text, Parquet each time a shard is complete (with the packer's examples or
    the ids short of a block, which are not in a shard yet). A resumed run checks that the
    inputs (names, sizes, times), the options and the tokenizer are the same, skips the
    records already done without parsing them (a file all done is not opened), and writes
    the same bytes an uninterrupted run writes. Without ``resume`` a new run starts afresh.

    ``ray`` runs the job on a Ray cluster (``True``: the one this machine belongs to, or its
    address): the cluster reads the files (which every node must see at the same paths) and
    encodes the records, this process writes the same files a local run writes. It resumes
    as a local run does, and either goes on from the other; the records done are neither
    read nor encoded again on the cluster.

    Inputs are JSONL, Parquet or plain text (``.txt``: a document per blank-line-separated
    block, or per line with ``doc_per_line``), JSONL and text also ``.gz`` / ``.zst``.

    >>> prepare(["train.jsonl"], tok, "out/", max_length=4096, pack=True)   # doctest: +SKIP
    >>> prepare(["corpus.txt.zst"], tok, "out/", format="megatron")          # doctest: +SKIP
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f'on_error must be "skip" or "raise", got {on_error!r}')
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if block_size is not None and (format != "parquet" or block_size < 1):
        raise ValueError(f"block_size / --block-size cuts Parquet rows and must be positive; got {block_size} with format={format!r}")
    if keep_remainder and block_size is None:
        raise ValueError("keep_remainder / --keep-remainder is for block_size / --block-size")
    streams = format != "parquet" or block_size is not None
    if streams and (max_length is not None or pack is not None):
        raise ValueError(
            f"max_length / --max-length and pack / --pack shape Parquet rows of whole records; "
            + ("block_size / --block-size cuts the blocks" if block_size else f"format={format!r} keeps every document whole (the trainer cuts its own sequences)")
        )
    max_length = 4096 if max_length is None else max_length
    pack = True if pack is None else pack
    if max_length < 1:
        raise ValueError("max_length must be positive")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    paths = _paths(inputs)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
    files = isinstance(inputs, (list, tuple)) and len(paths) == len(inputs)
    if resume and not files:
        raise ValueError("resume / --resume needs the inputs as a list of files (to know that they did not change)")
    if ray and not files:
        raise ValueError("ray= / --ray reads a list of files (not records) on the cluster")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(exists_message(out))  # early; atomic_folder claims it for good
    encoder = ExampleEncoder(
        tok, chat_template, loss=loss, mapping=mapping, content_special=content_special, eos=eos,
        template_name=template_name,
    )
    result = PrepareResult(out_dir=str(out))
    reading = ReadProgress(sum(os.path.getsize(p) for p in paths))
    bar = _Progress(sys.stderr.isatty() if progress is None else progress, reading, "documents" if streams else "examples")
    started = time.monotonic()
    # The tokenizer's hash for meta.json and the resume check, of its fingerprint (the same
    # bytes, the same tokenizer.json): milliseconds, where hashing the tokenizer.json text
    # took 0.2-0.3 s of a one-core run for a large vocabulary.
    tokenizer_sha256 = hashlib.sha256(tok._core.fingerprint()).hexdigest()
    # Not in it: where the work is done (ray, num_workers). A local run and a Ray run write the
    # same bytes and save the same state, so either goes on from the other.
    job = {
        "inputs": [[str(Path(p).resolve()), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths],
        "format": format, "doc_per_line": doc_per_line, "mapping": encoder.mapping, "eos_id": encoder.eos_id,
        "text_allowed": sorted(encoder.text_allowed), "on_error": on_error, "tokensmith_version": _version(),
        "max_length": max_length, "pack": pack, "rows_per_shard": rows_per_shard, "block_size": block_size,
        "keep_remainder": keep_remainder, "loss": loss, "content_special": encoder.content_special,
        "chat_templates": [encoder.template, encoder.tool_template], "tokenizer_sha256": tokenizer_sha256,
    }
    with atomic_folder(out, overwrite=overwrite, resume=resume if files else None) as tmp:
        state = _ResumeState(tmp / RESUME_STATE, job, result, reading) if files else None
        saved = state.load() if state is not None and resume else None  # a changed job stops here, state kept
        if saved is not None:
            bar.note(f"resuming after {state.records:,} records ({result.examples:,} {bar.unit})")
        try:
            with _writer(format, tmp, max_length if pack else None, rows_per_shard, tok, block_size, keep_remainder, saved) as writer:
                if state is not None:
                    state.follow(writer)
                done = state.records if state is not None else 0  # records in the output already: not read again
                if ray:
                    named = [(p, str(Path(p))) for p in paths]  # named as read_records names them
                    with _ray.connected(None if ray is True else ray) as cpus, contextlib.closing(
                        _ray.encoded(named, encoder, streams, doc_per_line, cpus, reading, done)
                    ) as tables:  # closed (its execution ended) before disconnecting, on an error too
                        if streams:
                            _write_documents(_ray.documents(tables, done), on_error, result, writer, bar, state)
                        else:
                            _write_examples(_ray.examples(tables), max_length, on_error, result, writer, bar, state)
                else:
                    records = read_records(inputs, doc_per_line=doc_per_line, progress=reading, skip=done)
                    # Closed here, on an error or Ctrl+C too: left to the garbage collector, a
                    # generator that holds worker processes or a thread is closed only at
                    # interpreter shutdown, where its cleanup aborts the process ("Fatal Python
                    # error: could not acquire lock ... possibly due to daemon threads").
                    if streams:
                        with contextlib.closing(_documents(records, encoder, on_error, done)) as documents:
                            _write_documents(documents, on_error, result, writer, bar, state)
                    else:
                        with contextlib.closing(_encoded(records, encoder, num_workers, reading.total)) as examples:
                            _write_examples(examples, max_length, on_error, result, writer, bar, state)
                if not result.examples:
                    why = f"all {result.skipped} records were skipped ({result.reasons()})" if result.skipped else "the input has no records"
                    first = f"; first: {result.errors[0]}" if result.errors else ""
                    raise DataError(f"no training example to write: {why}{first}")
            if block_size and not writer.rows:
                raise DataError(
                    f"the corpus is {writer.dropped} tokens, fewer than one block of {block_size}: no row to write "
                    "(keep_remainder / --keep-remainder keeps it as one shorter block)"
                )
        except BaseException as e:
            # The data's fault: the same run would fail again, nothing to resume. A worker the
            # system killed (out of memory) is not: a run with fewer workers can go on.
            if state is not None and isinstance(e, (DataError, ValueError)) and not isinstance(e, _WorkerLost):
                state.path.unlink(missing_ok=True)
            elif state is not None and state.path.exists():
                print(f"prepare stopped; the work so far is kept in {tmp}: the same call with resume=True "
                      "(--resume) goes on from there", file=sys.stderr)
            raise
        (tmp / RESUME_STATE).unlink(missing_ok=True)
        result.rows = writer.rows  # after the writer's end: blocks write their last one there
        if block_size and writer.dropped:
            result.warnings.append(
                f"the last {writer.dropped} tokens, short of a block of {block_size}, were dropped "
                "(keep_remainder / --keep-remainder keeps them)"
            )
        result.seconds = time.monotonic() - started
        result.bytes_read = reading.total
        bar.update(result, force=True)
        meta = {
            **asdict(result),
            "out_dir": str(out),
            "tokenizer_sha256": tokenizer_sha256,
            "chat_template": encoder.template,
            "format": format,
            **(
                {"block_size": block_size, "keep_remainder": keep_remainder, "documents": result.examples}
                if block_size
                else {"dtype": str(writer.dtype), "documents": writer.rows}
                if streams
                else {"max_length": max_length, "pack": pack}
            ),
            "files": writer.files,
            "loss": loss,
            "content_special": encoder.content_special,
            "eos_token": encoder.eos,
            "columns": writer.columns,
            "ignore_index": IGNORE_INDEX,
            "tokensmith_version": _version(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def _write_examples(
    encoded, max_length: int, on_error: str, result: PrepareResult, writer: _ShardWriter, bar: _Progress,
    state: _ResumeState | None = None,
) -> None:
    """Encoded records to Parquet rows: truncated or packed; bad records counted or raised."""
    for source, line, value in encoded:
        if state is not None:
            state.records += 1
        if isinstance(value, str):  # a line that could not be read
            value = RecordError(value, "unreadable line")
        if isinstance(value, RecordError):
            if value.fatal or (on_error == "raise" and value.reason != NO_REPLY):
                raise DataError(f"{source}:{line}: {value}")
            result.skip(source, line, value)
            continue
        ex: Example = value
        result.warnings += [f"{source}:{line}: {w}" for w in ex.warnings][: max(0, 1000 - len(result.warnings))]
        if len(ex.input_ids) > max_length:
            result.truncated += 1
            ex = Example(ex.input_ids[:max_length], ex.labels[:max_length])
        result.examples += 1
        result.tokens += len(ex.input_ids)
        result.loss_tokens += sum(1 for l in ex.labels if l != IGNORE_INDEX)
        writer.add_example(ex)  # after the counts: a shard it closes saves the resume state
        bar.update(result)


#: Text records go to the core in batches of about this many characters (4 MB of English):
#: enough for every core to have work, few enough to keep memory small.
_BATCH_CHARS = 4 << 20


def _write_documents(batches: Iterable[tuple[list[Any], int | None, Any, Any]], on_error: str, result: PrepareResult, writer,
                     bar: _Progress, state: _ResumeState | None = None) -> None:
    """Batches of documents to a token stream (``format="megatron"`` / ``"tokens"``, blocks):
    each ``(errors, records done after it, ids, lengths)``, ``errors`` the records that gave
    no document, in input order."""
    for errors, records_done, ids, lengths in batches:
        for source, line, error in errors:
            if error.fatal or on_error == "raise":
                raise DataError(f"{source}:{line}: {error}")
            result.skip(source, line, error)
        result.examples += len(lengths)
        result.tokens += int(ids.size)
        result.loss_tokens += int(ids.size)
        if state is not None:
            state.records = records_done  # before the ids go in: a shard they close saves the state
        writer.add_array(ids, lengths)
        if state is not None and state.per_batch:
            state.save()
        bar.update(result)


def _documents(records: Iterator[Record | BadRecord], encoder: ExampleEncoder, on_error: str, records_done: int = 0):
    """Text records as batches of documents for :func:`_write_documents`.

    The texts go to the core in batches of about 4 MB, which it encodes on every core into
    one id array, and the ids go to the file from there: no Python object per token.
    Through the per-record path of the Parquet output (an ``Example`` and lists per record,
    pickled to worker processes) the same corpus ran at 3-4 MB/s, and slower on 2 workers
    than on 1. Reading the next batch (Python, under the GIL) overlaps encoding this one
    (the core releases the GIL): one thread encodes while this one reads. A record that
    stops the run (a chat record, any bad one under ``on_error="raise"``) ends the reading
    there: nothing read after it (a file cut short) can hide it."""

    def batches():
        """Texts, tagged with (record number, source, line), and the records that gave none
        (reported when the batch is written: after it, the resume state counts them as done);
        last, whether a record of the batch stops the run."""
        texts: list[str] = []
        where: list[tuple[int, str, int]] = []
        bad: list[tuple[tuple[int, str, int], RecordError]] = []
        size, done = 0, records_done
        for record in records:
            done += 1
            value = _text_of(record, encoder)
            if isinstance(value, RecordError):
                bad.append(((done, record.source, record.line), value))
                if value.fatal or on_error == "raise":
                    yield texts, where, bad, done, True
                    return
                if len(bad) < 1024:  # a file of bad records: reported as they come
                    continue
            else:
                texts.append(value)
                where.append((done, record.source, record.line))
                size += len(value)
                if size < _BATCH_CHARS:
                    continue
            yield texts, where, bad, done, False
            texts, where, bad, size = [], [], [], 0
        if texts or bad:
            yield texts, where, bad, done, False

    def encode(texts, where, bad, done):
        ids, lengths, refused = _encode_documents(encoder, texts, where)
        errors = [(source, line, error) for (_, source, line), error in sorted(bad + refused, key=lambda e: e[0][0])]
        return errors, done, ids, lengths

    with ThreadPoolExecutor(1) as encoding:
        pending = None
        for *batch, stops in batches():
            future = encoding.submit(encode, *batch)
            if pending is not None:
                yield pending.result()
            pending = future
            if stops:
                break
        if pending is not None:
            yield pending.result()


def _text_of(record: Record | BadRecord | Mapping[str, Any], encoder: ExampleEncoder) -> str | RecordError:
    """The text of a record (or a record's data) for a token stream, or why it gives none: a
    chat record, or no EOS token, is ``fatal`` (every record would fail alike)."""
    if isinstance(record, BadRecord):
        return RecordError(record.error, "unreadable line")
    try:
        kind, value = to_example_input(record.data if isinstance(record, Record) else record, encoder.mapping)
    except (ValueError, TypeError, KeyError) as e:
        return RecordError(f"{type(e).__name__}: {e}", "malformed record")
    if kind != "text":
        return RecordError(CHAT_IN_STREAM, "chat record", fatal=True)
    if encoder.eos_id is None:
        return RecordError(str(encoder.eos_problem), "no EOS token", fatal=True)
    return value


def _encode_documents(encoder: ExampleEncoder, texts: list[str], where: list[Any]):
    """(ids, lengths, refused records) of a batch of documents: each the tokenizer's ids with
    its template, then the EOS id unless the template already ends it with one. A refused
    record is ``(its tag in where, RecordError)``."""
    import numpy as np

    special = encoder.text_allowed
    refused: list[tuple[Any, RecordError]] = []
    try:
        ids, offsets = encoder.tok.encode_batch_numpy(texts, add_special_tokens=True, special=special)
    except (ValueError, TokenizerError):
        # A record the tokenizer refuses (a lone surrogate from JSON "\ud800") fails the
        # whole batch: find it, report it as the Parquet path does, and keep the others.
        good = []
        for text, tag in zip(texts, where):
            try:
                encoder.tok.encode(text, add_special_tokens=True, special=special)
            except (ValueError, TokenizerError) as e:
                refused.append((tag, RecordError(f"{type(e).__name__}: {e}", "malformed record")))
            else:
                good.append(text)
        texts = good
        ids, offsets = encoder.tok.encode_batch_numpy(texts, add_special_tokens=True, special=special)
    ends = offsets[1:]
    last = ids[np.maximum(ends - 1, 0)] if ids.size else np.zeros(len(texts), dtype=ids.dtype)
    missing = (np.diff(offsets) == 0) | (last != encoder.eos_id)
    return np.insert(ids, ends[missing], encoder.eos_id), np.diff(offsets) + missing, refused


def _paths(inputs) -> list[str]:
    if isinstance(inputs, (list, tuple)):
        return [os.fspath(p) for p in inputs if isinstance(p, (str, os.PathLike))]
    return []


def _version() -> str:
    from .. import __version__

    return __version__


#: Input files smaller than this are encoded in this process unless ``num_workers`` says
#: otherwise: starting workers (a process each, the tokenizer loaded in each) costs more
#: than they give. Measured on 2 cores, Qwen2.5 chats: 2.2 MB took 1.18 s in this process
#: and 1.51 s with 2 workers; 8.7 MB 3.72 s and 3.36 s.
_IN_PROCESS_BYTES = 4 << 20


def _encoded(
    records: Iterator[Record | BadRecord], encoder: ExampleEncoder, num_workers: int | None, input_bytes: int = 0
) -> Iterator[tuple[str, int, Any]]:
    """(source, line, Example or error message) in input order, on the CPUs this process may
    use (in this process for input files of less than ``_IN_PROCESS_BYTES``). Workers are
    subprocesses (see ``_workers``), so this works from a script without a ``__main__``
    guard, a notebook, or a daemonic process such as a DataLoader worker."""
    from . import _workers

    workers = num_workers if num_workers is not None else _workers.available_cpus()
    if num_workers is None and 0 < input_bytes < _IN_PROCESS_BYTES:
        workers = 1
    chunks = _chunks(records, 256)
    if workers <= 1:
        for chunk in chunks:
            for s, n, d, bad in chunk:
                yield (s, n, d) if bad else _encode_one(encoder, s, n, d)
        return
    with _workers.WorkerPool(_encode_chunk, encoder, workers) as pool:
        for encoded in _in_pool(chunks, pool):
            yield from encoded


def _in_pool(chunks: Iterator[list[Any]], pool) -> Iterator[list[tuple[str, int, Any]]]:
    """Bad records pass through; good ones are encoded in the pool, order kept, a bounded
    number of chunks in flight (memory stays bounded on inputs larger than RAM). A worker
    that dies raises :class:`DataError` naming the records it was encoding."""
    from collections import deque

    from ._workers import WorkerError

    in_flight: deque = deque()  # chunks sent to the pool and not yielded yet, in order
    yielded = 0

    def good_records():
        for chunk in chunks:
            in_flight.append(chunk)
            yield [(s, n, d) for s, n, d, bad in chunk if not bad]

    try:
        for encoded_chunk in pool.imap(good_records()):
            chunk = in_flight.popleft()
            yielded += 1
            encoded = iter(encoded_chunk)
            yield [(s, n, d) if bad else next(encoded) for s, n, d, bad in chunk]
    except WorkerError as e:
        where = ""
        if e.index is not None and 0 <= e.index - yielded < len(in_flight):
            chunk = in_flight[e.index - yielded]
            where = f" while encoding one of the records {chunk[0][0]}:{chunk[0][1]} to {chunk[-1][0]}:{chunk[-1][1]}"
        raise _WorkerLost(f"{e}{where}") from e


#: What ``prepare`` writes (``format=``).
FORMATS = ("parquet", "megatron", "tokens")


def _writer(
    format: str, folder: Path, pack_length: int | None, rows_per_shard: int, tok: Tokenizer, block_size: int | None,
    keep_remainder: bool, state: dict[str, Any] | None = None,
):
    """The writer of ``format`` in ``folder``, new or (with a saved ``state``) going on.
    Parquet rows are packed into ``pack_length`` tokens where it is given."""
    if block_size is not None:
        return _BlockWriter(_ShardWriter(folder, None, rows_per_shard, state), block_size, keep_remainder, state)
    if format == "parquet":
        return _ShardWriter(folder, pack_length, rows_per_shard, state)
    from .token_files import FlatTokensWriter, MegatronWriter  # numpy: only for these formats

    # Ids can have holes (cl100k's specials go up to 100276 over 100,261 entries): the
    # dtype must hold the highest id, not the count.
    vocab_size = max(tok.vocab_size, tok._core.id_limit)
    try:
        return MegatronWriter(folder, "data", vocab_size, state) if format == "megatron" else FlatTokensWriter(folder, vocab_size, state)
    except ValueError as e:
        raise DataError(f"cannot resume {folder}: {e}") from None


class _ShardWriter:
    """Rows to ``part-00000.parquet``, ``part-00001.parquet``, ... ``rows_per_shard`` each;
    examples packed into rows of ``pack_length`` tokens where it is given.

    With ``state`` (from :meth:`state`) it goes on from there: the shards closed then are
    kept, any later one (a killed run's shard half-written) removed. ``on_shard_closed`` is
    called each time a shard is complete."""

    def __init__(self, folder: Path, pack_length: int | None, rows_per_shard: int, state: dict[str, Any] | None = None) -> None:
        import pyarrow as pa

        self.folder = folder
        self.columns = ["input_ids", "labels"] + (["position_ids", "seq_lens"] if pack_length else [])
        self.schema = pa.schema([(c, pa.list_(pa.int32())) for c in self.columns])
        self.rows_per_shard = rows_per_shard
        self.rows = 0
        self._writer = None
        self._buffer: dict[str, list[list[int]]] = {c: [] for c in self.columns}
        self.files: list[str] = []
        self._shard_rows = 0
        self._shards = 0
        self.on_shard_closed: Any = None
        self.packer = Packer(pack_length, state and state["packer"]) if pack_length else None
        if state is not None:
            self._shards, self.rows, self.files = state["shards"], state["rows"], list(state["files"])
            for path in folder.glob("part-*.parquet"):
                if path.name not in self.files:
                    path.unlink()
            if any(not (folder / name).exists() for name in self.files):
                raise DataError(f"cannot resume {folder}: a shard it had written is gone")

    def __enter__(self) -> _ShardWriter:
        return self

    def state(self) -> dict[str, Any]:
        """The shards closed, their rows, and the packer's examples not in a row yet."""
        return {"shards": self._shards, "rows": self.rows, "files": list(self.files),
                "packer": self.packer.state() if self.packer else None}

    def room(self) -> int:
        """Rows until the shard being written is full."""
        return self.rows_per_shard - self._shard_rows

    def add_example(self, ex: Example) -> None:
        rows = self.packer.add(ex) if self.packer else [{"input_ids": ex.input_ids, "labels": ex.labels}]
        for row in rows:
            self.write(row)

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

    def write_table(self, table) -> None:
        """Rows already in Arrow form, in this writer's schema."""
        self._flush()
        while table.num_rows:
            part = table.slice(0, self.rows_per_shard - self._shard_rows)
            self._write(part)
            table = table.slice(part.num_rows)
            self.rows += part.num_rows
            self._shard_rows += part.num_rows
            if self._shard_rows >= self.rows_per_shard:
                self._close_shard()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer["input_ids"]:
            return
        self._write(pa.table(self._buffer, schema=self.schema))
        self._buffer = {c: [] for c in self.columns}

    def _write(self, table) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            path = self.folder / f"part-{self._shards:05d}.parquet"
            self.files.append(path.name)
            self._writer = pq.ParquetWriter(path, self.schema)
        self._writer.write_table(table)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._shards += 1
            self._shard_rows = 0
            if self.on_shard_closed is not None:
                self.on_shard_closed()
        self._shard_rows = 0

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.packer is not None and self.packer.pending():
                self.write(self.packer.flush())
            self._flush()
            self._close_shard()
        elif self._writer is not None:
            self._writer.close()  # the file is left for the folder to be removed, or a resume to remove
            self._writer = None


class _BlockWriter:
    """Documents' ids to Parquet rows of ``block_size`` ids (``format="parquet"`` with
    ``block_size``): ``run_clm.py``'s ``group_texts`` over the whole stream. Only the ids
    short of a group of rows wait here between batches; the rows go to Arrow from numpy.

    The rows go to Parquet in groups of about 1M ids, cut where a shard ends, whatever the
    batches that came in: the files are the same for a local run's batches, a Ray run's
    blocks, and a resumed run (whose ``state`` holds the ids not in a shard yet)."""

    columns = ["input_ids", "labels"]
    dtype = "int32"

    def __init__(self, shards: _ShardWriter, block_size: int, keep_remainder: bool, state: dict[str, Any] | None = None) -> None:
        import numpy as np

        self.shards = shards
        self.block_size = block_size
        self.keep_remainder = keep_remainder
        #: Ids after the last whole block, left out (set at the end).
        self.dropped = state["dropped"] if state else 0
        self._group = max(1, (1 << 20) // block_size)  # rows
        self._pending = np.array(state["pending"] if state else [], dtype=np.int32)

    def state(self) -> dict[str, Any]:
        return {**self.shards.state(), "pending": self._pending.tolist(), "dropped": self.dropped}

    @property
    def rows(self) -> int:
        return self.shards.rows

    @property
    def files(self) -> list[str]:
        return self.shards.files

    def __enter__(self) -> _BlockWriter:
        return self

    def add_array(self, ids, lengths) -> None:
        import numpy as np

        self._pending = np.concatenate([self._pending, ids.astype(np.int32)])
        while self._pending.size >= (size := min(self._group, self.shards.room()) * self.block_size):
            rows, self._pending = self._pending[:size], self._pending[size:]
            self._write(rows)  # may close a shard: its state has the ids after these

    def _write(self, ids) -> None:
        import numpy as np
        import pyarrow as pa

        if not ids.size:
            return
        starts = np.arange(0, ids.size + 1, self.block_size, dtype=np.int32)
        if starts[-1] != ids.size:
            starts = np.append(starts, np.int32(ids.size))
        rows = pa.ListArray.from_arrays(pa.array(starts), pa.array(ids))
        self.shards.write_table(pa.table([rows, rows], schema=self.shards.schema))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # Taken out before they are written: the state the last shard saves must not
            # hold them still (a run stopped right then would write them twice).
            rest, self._pending = self._pending, self._pending[:0]
            whole = rest.size // self.block_size * self.block_size
            if not self.keep_remainder:
                self.dropped += int(rest.size - whole)  # += : a resumed run may have counted them
            self._write(rest if self.keep_remainder else rest[:whole])
        self.shards.__exit__(exc_type, exc, tb)
