"""Vocabulary extension: new BPE merges for a new language or domain that leave old text
exactly as it was encoded and make every new token reachable.

The popular recipe (append a separately trained vocabulary, resize the embeddings) changes
how old text is split and adds tokens BPE never produces. :func:`extend` instead continues
BPE training from the tokenizer's own merges: it counts adjacent pairs of the corpus as the
tokenizer segments it and appends the most frequent ones as merges ranked after every old
merge, with ids after every id in use. A candidate is skipped when its two tokens stand
next to each other anywhere in the ``protect`` corpora (it would change their ids) or when
the new token's own text would not encode to it. See ``src/train.rs`` for why that is exact.

>>> from tokensmith import Tokenizer, vocab
>>> tok = Tokenizer.from_file("llama3/tokenizer.json")                   # doctest: +SKIP
>>> new_tok, report = vocab.extend(tok, corpus=["zh/*.txt"], num_new=20000,
...                                protect=["en/*.txt"])                 # doctest: +SKIP
>>> print(report.summary())                                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import glob
import gzip
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _core
from . import checkpoint as C
from . import embeddings as E
from ._tokenizer import Tokenizer
from ._tokenizer_files import RESERVED_PATTERNS, _reserved_slots, _vocabulary, write_tokenizer_files
from .errors import CheckpointError, InvalidInputError, TokenizerError

__all__ = ["MODEL_INIT_METHODS", "ExtendModelResult", "ExtendReport", "extend", "extend_model", "read_documents"]

#: Documents sent to the core at once: large enough for both cores, small enough to stream.
BATCH_BYTES = 8 << 20


@dataclass
class ExtendReport:
    """What :func:`extend` did, measured with the old and the new tokenizer."""

    first_id: int
    new_tokens: int
    #: whether tokens are bytes (byte-level BPE) rather than chars (SentencePiece-style).
    byte_level: bool = True
    #: per file: documents, chars, tokens before and after, tokens per char before and after,
    #: and documents whose ids changed.
    compression: dict[str, dict[str, float]] = field(default_factory=dict)
    #: documents of the ``protect`` corpora whose ids changed (0 is the contract).
    changed_old_docs: int = 0
    #: new tokens whose text does not encode to them (always empty; checked).
    unreachable: list[int] = field(default_factory=list)
    #: new tokens that are parts of a character (steps towards whole ones, as GPT-2's
    #: byte pieces are); those of them that no evaluated document uses.
    partial: list[int] = field(default_factory=list)
    partial_unused: list[int] = field(default_factory=list)
    #: new id -> the old ids it stands for (its pieces under the old tokenizer).
    id_map: dict[int, list[int]] = field(default_factory=dict)
    #: SentencePiece-style vocabularies: characters they lacked (byte fallback), now tokens.
    new_chars: int = 0
    #: given words: the id each became ("added" or "exists"), or why it could not.
    words: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: candidate merges skipped, by reason.
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["id_map"] = {str(k): v for k, v in self.id_map.items()}
        return out

    def summary(self) -> str:
        lines = [f"{self.new_tokens} new tokens, ids {self.first_id}..{self.first_id + self.new_tokens - 1}"]
        if self.compression:
            lines.append("tokens per char, before -> after:")
            width = max(len(Path(f).name) for f in self.compression)
            for f, c in self.compression.items():
                changed = f"  {c['changed_docs']:,} of {c['documents']:,} documents changed" if c["changed_docs"] else ""
                lines.append(
                    f"  {Path(f).name:<{width}}  {c['before']:.3f} -> {c['after']:.3f}  "
                    f"({1 - c['tokens_after'] / max(c['tokens_before'], 1):.1%} fewer tokens){changed}"
                )
        if self.new_chars:
            lines.append(f"characters the vocabulary lacked, now tokens: {self.new_chars}")
        lines.append(f"protected documents changed: {self.changed_old_docs}")
        lines.append(f"unreachable new tokens: {len(self.unreachable)}")
        if self.partial:
            lines.append(
                f"parts of characters: {len(self.partial)} ({len(self.partial_unused)} used by no evaluated document, "
                "only as steps of longer tokens)"
            )
        refused = {w: r["why"] for w, r in self.words.items() if r["status"] == "refused"}
        if self.words:
            lines.append(f"given words: {len(self.words) - len(refused)} tokens, {len(refused)} refused")
            lines += [f"  refused {w!r}: {why}" for w, why in list(refused.items())[:20]]
        skipped = ", ".join(f"{n:,} {k}" for k, n in self.skipped.items() if n)
        if skipped:
            lines.append(f"candidate merges skipped: {skipped}")
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def read_documents(path: str | os.PathLike[str], text_field: str = "text") -> Iterator[str]:
    """The documents of a corpus file: each non-empty line of a text file, each record's
    ``text_field`` of a ``.jsonl`` file; ``.gz`` files are read through gzip."""
    path = Path(path)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="strict") as f:  # type: ignore[operator]
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not name.endswith(".jsonl"):
                    yield line.rstrip("\n")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidInputError(f"{path}:{n}: not a JSON line ({e.msg})") from None
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise InvalidInputError(f"{path}:{n}: no string field {text_field!r}")
                yield text
        except UnicodeDecodeError as e:
            raise InvalidInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block)") from None


def _files(patterns: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None, what: str) -> list[str]:
    """The files of glob patterns, each pattern matching at least one (an empty corpus would
    silently train nothing)."""
    if patterns is None:
        return []
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matched:
            raise InvalidInputError(f"{what}: no file matches {pattern!r}")
        files += [m for m in matched if m not in files]
    return files


def _batches(files: Sequence[str], text_field: str) -> Iterator[tuple[list[str], int]]:
    """(documents, their UTF-8 bytes) in batches of about BATCH_BYTES."""
    for f in files:
        batch: list[str] = []
        size = 0
        for doc in read_documents(f, text_field):
            batch.append(doc)
            size += len(doc.encode("utf-8", "surrogatepass"))
            if size >= BATCH_BYTES:
                yield batch, size
                batch, size = [], 0
        if batch:
            yield batch, size


class _Progress:
    """One stderr line, at most twice a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = self.last = time.monotonic()

    def show(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self.last >= 0.5):
            self.last = now
            print(f"\r{message}  [{now - self.start:.0f} s]\033[K", end="\n" if force else "", file=sys.stderr, flush=True)


def _count(tok: Tokenizer, files: Sequence[str], text_field: str, bar: _Progress, what: str, chunked: bool) -> Any:
    counts = _core.WordCounts(tok._core, chunked)
    total = sum(os.path.getsize(f) for f in files)
    done = 0
    for docs, size in _batches(files, text_field):
        counts.add(docs)
        done += size
        bar.show(f"counting {what}: {done / 1e6:,.0f} / {total / 1e6:,.0f} MB, {len(counts):,} distinct words")
    return counts


def extend(
    tok: Tokenizer | str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    num_new: int | None = None,
    pieces: Iterable[str] | None = None,
    protect: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    evaluate: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    min_frequency: int = 2,
    partial_chars: bool = True,
    text_field: str = "text",
    measure_corpus: bool = True,
    progress: bool | None = None,
) -> tuple[Tokenizer, ExtendReport]:
    """A tokenizer with new tokens learnt from ``corpus`` and/or given as ``pieces``, and a
    report measured on the corpora.

    - ``corpus``: files or glob patterns (text: a document per non-empty line; ``.jsonl``:
      the ``text_field`` of each record; ``.gz`` of either), streamed.
    - ``num_new``: how many merges to learn from the corpus (fewer when no pair is left
      that occurs ``min_frequency`` times).
    - ``pieces``: words to make single tokens first, each from the fewest new merges of its
      pieces; a word that cannot be (the pre-tokenizer splits it, or it would change
      protected text) is reported in ``report.words`` with the reason, never added dead.
    - ``protect``: corpora whose ids must not change; ``report.changed_old_docs`` counts
      their documents that did (0, checked by encoding them with both tokenizers).
    - ``evaluate``: more corpora to measure (held-out text): tokens per char before and
      after, changed documents.
    - ``partial_chars``: allow new tokens that are parts of a character (needed where the
      old merges cut characters, as GPT-2's do on CJK).
    - ``measure_corpus``: also measure the training corpus (encodes it twice more; the
      protected and evaluated corpora are always measured).

    Byte-level BPE tokenizers with merges (GPT-2, Llama 3, Qwen2, ...) and
    SentencePiece-style BPE (Llama 2, Mistral, Gemma) are supported; others raise
    :class:`UnsupportedTokenizerError`.

    >>> new_tok, report = extend(tok, pieces=["人工智能", "数据集"])          # doctest: +SKIP
    >>> report.words["人工智能"]                                             # doctest: +SKIP
    {'status': 'added', 'id': 128261, 'why': None}
    """
    if not isinstance(tok, Tokenizer):
        tok = Tokenizer.from_pretrained(tok) if Path(tok).is_dir() else Tokenizer.from_file(tok)
    corpus_files = _files(corpus, "corpus")
    protect_files = _files(protect, "protect")
    evaluate_files = _files(evaluate, "evaluate")
    words = list(dict.fromkeys(pieces or []))
    if corpus_files and (num_new is None or num_new <= 0):
        raise ValueError("a corpus needs num_new > 0 (how many new tokens to learn)")
    if num_new and not corpus_files:
        raise ValueError("num_new needs a corpus to learn from")
    if not corpus_files and not words:
        raise ValueError("nothing to add: give a corpus (with num_new) or pieces")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1; got {min_frequency}")
    bar = _Progress(sys.stderr.isatty() if progress is None else bool(progress))
    seconds: dict[str, float] = {}
    warnings: list[str] = []

    started = time.monotonic()
    protected = _count(tok, protect_files, text_field, bar, "protected text", chunked=False)
    trainer = _core.VocabTrainer(tok._core, protected, partial_chars)
    outcomes: dict[str, dict[str, Any]] = {}
    for word in words:
        status, id, why = trainer.add_word(word)
        outcomes[word] = {"status": status, "id": id, "why": why}
    counts = _count(tok, corpus_files, text_field, bar, "corpus", chunked=True) if corpus_files else None
    if counts is not None and counts.total == 0:
        raise InvalidInputError(f"the corpus ({', '.join(corpus_files)}) has no text to learn from")
    seconds["count"] = time.monotonic() - started

    started = time.monotonic()
    if counts is not None:
        trainer.set_corpus(counts)
        learnt = 0
        while learnt < num_new:
            step = trainer.train(min(1000, num_new - learnt), min_frequency)
            learnt += step
            bar.show(f"learning tokens: {learnt:,} / {num_new:,}")
            if step == 0:
                break
        bar.show(f"learnt {learnt:,} tokens", force=True)
        if learnt < num_new:
            warnings.append(
                f"learnt {learnt:,} of the {num_new:,} tokens asked: no other pair (or missing character) occurs "
                f"{min_frequency} times or more without changing protected text"
            )
    new_tok = Tokenizer(trainer.tokenizer(), copy.deepcopy(tok.config))
    seconds["train"] = time.monotonic() - started

    started = time.monotonic()
    first = trainer.first_id
    report = ExtendReport(
        first_id=first, new_tokens=len(trainer), byte_level=trainer.byte_level, words=outcomes,
        skipped=dict(trainer.skipped()), warnings=warnings,
    )
    report.new_chars = trainer.new_chars
    for id in range(first, first + len(trainer)):
        report.id_map[id] = _pieces(trainer.old_ids(id), tok)
        try:
            trainer.token_bytes(id).decode("utf-8")
        except UnicodeDecodeError:
            report.partial.append(id)
    report.unreachable = trainer.unreachable(new_tok._core)
    used: set[int] = set()
    measured = [*(corpus_files if measure_corpus else []), *protect_files, *evaluate_files]
    for f in dict.fromkeys(measured):
        report.compression[f] = _measure(tok, new_tok, f, text_field, used, bar)
        if f in protect_files:
            report.changed_old_docs += int(report.compression[f]["changed_docs"])
    report.partial_unused = [id for id in report.partial if id not in used]
    seconds["check"] = time.monotonic() - started
    report.seconds = seconds
    bar.show("checked", force=True)
    return new_tok, report


def _pieces(ids: list[int], tok: Tokenizer) -> list[int]:
    """A new token's old ids, without a lone SentencePiece word-start piece (it says that a
    word begins, nothing of the token) unless that is all there is."""
    kept = [i for i in ids if tok.id_to_token(i) != E.WORD_START]
    return kept or ids


def _measure(old: Tokenizer, new: Tokenizer, path: str, text_field: str, used: set[int], bar: _Progress) -> dict[str, float]:
    docs = chars = before = after = changed = 0
    for batch, _ in _batches([path], text_field):
        a = old.encode_batch(batch, add_special_tokens=False)
        b = new.encode_batch(batch, add_special_tokens=False)
        docs += len(batch)
        chars += sum(map(len, batch))
        before += sum(map(len, a))
        after += sum(map(len, b))
        changed += sum(x != y for x, y in zip(a, b))
        for ids in b:
            used.update(ids)
        bar.show(f"measuring {Path(path).name}: {docs:,} documents")
    return {
        "documents": docs,
        "chars": chars,
        "tokens_before": before,
        "tokens_after": after,
        "before": before / max(chars, 1),
        "after": after / max(chars, 1),
        "changed_docs": changed,
    }


#: How the new rows of ``extend_model`` may start (see :func:`tokensmith.embeddings.init_rows`).
MODEL_INIT_METHODS = ("pieces", "mean", "noisy_mean", "mean_cov")


@dataclass
class ExtendModelResult:
    """What :func:`extend_model` wrote."""

    out_dir: Path
    report: ExtendReport
    init: str
    rows_before: int
    rows_after: int
    tensors: list[str] = field(default_factory=list)  # rewritten tensors
    padding_rows: int = 0
    files_copied: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [self.report.summary(), f"wrote {self.out_dir} in {self.seconds:.1f} s ({self.bytes_written / 1e9:.2f} GB)"]
        lines.append(
            f"embedding rows: {self.rows_before} -> {self.rows_after}; new rows initialized by {self.init!r} "
            f"in: {', '.join(self.tensors)}"
        )
        if self.padding_rows:
            lines.append(f"{self.padding_rows} padding rows")
        lines.append(f"{self.files_copied} other files copied byte for byte; id_map.json and extend_report.json written")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def extend_model(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    init: str = "pieces",
    pad_to_multiple_of: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | None = None,
    **extend_options: Any,
) -> ExtendModelResult:
    """:func:`extend` the tokenizer of a Hugging Face model folder and write a new folder
    with the grown input embedding and output head, like ``add-tokens``: atomically, only
    those two tensors rewritten (old rows bit for bit), every other file copied byte for
    byte, ``vocab_size`` updated, plus ``id_map.json`` (new id -> old ids) and
    ``extend_report.json``.

    - ``init``: ``pieces`` (each new row the mean of the rows of the old tokens it stands
      for, separately in the embedding and the head; tied weights once), ``mean``,
      ``noisy_mean`` or ``mean_cov``.
    - ``extend_options``: those of :func:`extend` (``corpus``, ``num_new``, ``pieces``,
      ``protect``, ``evaluate``, ...).

    >>> result = extend_model("Llama-3.2-1B", "Llama-3.2-1B-zh", corpus=["zh/*.txt"],
    ...                       num_new=20000, protect=["en/*.txt"])       # doctest: +SKIP
    >>> print(result.summary())                                          # doctest: +SKIP
    """
    started = time.monotonic()
    src, out = Path(model_dir), Path(out_dir)
    if init not in MODEL_INIT_METHODS:
        raise ValueError(f"init must be one of {', '.join(MODEL_INIT_METHODS)}; got {init!r}")
    C._check_folders(src, out, overwrite)
    config = C._read_json_object(src / "config.json")
    tokenizer_json = C._read_json_object(src / "tokenizer.json")
    shards = C._weight_files(src)
    tok = Tokenizer.from_pretrained(src)
    new_tok, report = extend(tok, progress=progress, **extend_options)
    if report.new_tokens == 0:
        raise InvalidInputError("no new token was learnt or added (see the report): nothing was written")
    ids = list(range(report.first_id, report.first_id + report.new_tokens))
    # Files that would not know the new tokens: SentencePiece's own gets them (a
    # SentencePiece-style tokenizer's; made before any tensor is written, so that a
    # mismatch stops it early); a slow tokenizer's vocab.json and merges.txt are left out.
    model = src / "tokenizer.model"
    model_bytes = None
    omit = [name for name in ("vocab.json", "merges.txt") if (src / name).is_file()]
    if model.is_file() and report.byte_level:
        omit.append(model.name)
    elif model.is_file():
        try:
            pieces = [new_tok.id_to_token(id) for id in ids]
            model_bytes = _core.sentencepiece_append_pieces(model.read_bytes(), pieces, ids[0], str(model))
        except (ValueError, TokenizerError) as e:
            raise CheckpointError(f"{e}; nothing was written") from None
    warnings = [f"{name} left out: it does not hold the new tokens (tokenizer.json does)" for name in omit]
    patterns = [re.compile(p) for p in RESERVED_PATTERNS.values()]
    vocab = _vocabulary(tokenizer_json)

    def write_tokenizer(tmp: Path) -> None:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (src / name).is_file():  # no added token changed: kept as they are
                (tmp / name).write_bytes((src / name).read_bytes())
        write_tokenizer_files(tmp, new_tok.to_str(), None, None)
        if model_bytes is not None:
            (tmp / model.name).write_bytes(model_bytes)
        C._write_json(tmp / "id_map.json", {str(k): v for k, v in report.id_map.items()}, pretty=False)
        C._write_json(tmp / "extend_report.json", report.to_json())
        # The written file must be the tokenizer the report measured.
        reloaded = Tokenizer.from_file(tmp / "tokenizer.json")
        sample = " ".join(new_tok.decode([id]) for id in ids)
        if reloaded.get_vocab() != new_tok.get_vocab() or reloaded.encode(sample) != new_tok.encode(sample):
            raise CheckpointError("the written tokenizer.json does not encode as the extended tokenizer; nothing was written")

    grown = C._write_model(
        src,
        out,
        config=config,
        shards=shards,
        old_size=report.first_id,
        ids=ids,
        rows_needed=report.first_id + report.new_tokens,
        untrained=[id for id, _ in _reserved_slots(vocab, patterns)],
        init=init,
        options=E._Options(groups=[report.id_map[id] for id in ids], seed=seed),
        pad_to_multiple_of=pad_to_multiple_of,
        write_tokenizer=write_tokenizer,
        overwrite=overwrite,
        progress=progress,
        omit=omit,
    )
    grown["warnings"] = warnings + grown["warnings"]
    return ExtendModelResult(report=report, init=init, seconds=time.monotonic() - started, **grown)
