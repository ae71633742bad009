"""Reading training data: JSONL and Parquet files in the common shapes, as records that
know where they came from (file and line) so that every problem can be reported."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Record", "BadRecord", "ReadProgress", "read_records", "skip_in_file", "to_example_input", "to_tools", "FORMATS"]

#: ShareGPT role names (LLaMA-Factory's) and the roles chat templates know. ``gpt`` and
#: ``function_call`` (the model's tool call, whose text is the call's JSON) are the model's
#: turns and take loss; ``observation`` (a tool's result) is a ``tool`` turn.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function_call": "assistant", "observation": "tool"}

FORMATS = ("messages", "sharegpt", "prompt_response", "alpaca", "text")


@dataclass
class Record:
    """One input row: its fields, and where it came from."""

    source: str
    line: int
    data: Mapping[str, Any]


@dataclass
class BadRecord:
    """An input row that could not be read (invalid JSON, not an object, ...)."""

    source: str
    line: int
    error: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.error}"


class ReadProgress:
    """How far :func:`read_records` has read: bytes of the input files as they are on disk
    (compressed bytes for ``.gz`` / ``.zst``; a Parquet file's share of its rows), for a
    progress bar's MB/s and ETA; and the records of each file read to the end, for a resumed
    run to know where each file's records start (``file_records``, inputs that are all files)."""

    def __init__(self, total: int = 0, file_records: Iterable[int] = ()) -> None:
        self.total = total
        #: Records of each input file read to the end, in input order (with a resumed run's
        #: ``skip``, those that were done before).
        self.file_records: list[int] = list(file_records)
        #: Where the reading stood once a resumed run's ``skip`` was behind it: what comes
        #: before was done by the run it goes on from, so its MB/s and ETA count from here.
        self.skipped = 0
        self._done = 0  # bytes of the files read to the end
        self._file: Any = None  # the file being read
        self._in_file = 0  # how far into a Parquet file (no file object to ask)

    @property
    def bytes(self) -> int:
        try:
            return self._done + (self._file.tell() if self._file is not None else self._in_file)
        except (OSError, ValueError):  # closed meanwhile
            return self._done

    def reached(self, bytes_read: int) -> None:
        """Where a reader elsewhere (a Ray task) is."""
        self._file, self._in_file, self._done = None, 0, bytes_read

    def _finished(self, path: Path, index: int, records: int) -> None:
        self._file, self._in_file = None, 0
        self._done += path.stat().st_size
        if index == len(self.file_records):  # else counted before (a resumed run)
            self.file_records.append(records)


def read_records(
    inputs: Iterable[str | os.PathLike[str]] | Iterable[Mapping[str, Any]],
    *,
    doc_per_line: bool = False,
    progress: ReadProgress | None = None,
    skip: int = 0,
) -> Iterator[Record | BadRecord]:
    """Records from JSONL / JSON-lines files, Parquet files, plain text files, or an
    iterable of dicts.

    A ``.txt`` file is documents separated by blank lines (one per line with
    ``doc_per_line``), each a ``{"text": ...}`` record. JSONL and text files may be
    compressed: ``.jsonl.gz``, ``.txt.zst`` (``pip install zstandard``), ... Files stream:
    memory stays bounded whatever their size. ``progress`` is kept up to date with the
    bytes read.

    ``skip`` leaves out the first records of the files, as a resumed run does with those
    done before it: a file that ``progress.file_records`` counts among them whole is not
    opened, and in the others they are counted, not parsed (nor Parquet row groups read).
    """
    progress = progress or ReadProgress()
    resuming = skip > 0  # until the records to skip are behind: this run's own reading starts there
    for n, item in enumerate(inputs):
        if isinstance(item, Mapping):
            yield Record("<iterable>", n + 1, item)
            continue
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        compressed = path.suffix.lower() in _COMPRESSED
        kind = (Path(path.stem).suffix if compressed else path.suffix).lower()
        if kind == ".parquet" and compressed:
            raise ValueError(f"{path}: Parquet compresses its own columns; give the .parquet file itself")
        here, whole = skip_in_file(skip, progress.file_records, n)
        count = here  # the file's records (a reader returns them)
        if not whole:
            with contextlib.ExitStack() as opened:
                if kind == ".parquet":
                    records = _parquet(path, progress, here)
                else:
                    raw = opened.enter_context(open(path, "rb"))
                    progress._file = raw
                    records = _plain_text(path, raw, doc_per_line, skip=here) if kind == ".txt" else _jsonl(path, raw, here)
                opened.enter_context(contextlib.closing(records))
                try:
                    count = yield from (_start_marked(records, progress) if resuming else records)
                except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                    # A cut or corrupt .gz: say which file, never keep what came before as if complete.
                    raise ValueError(f"{path}: cannot read it as gzip ({e})") from None
        skip -= min(here, count)  # fewer than ``here`` (a state saved with no count): the rest are next
        progress._finished(path, n, count)
        if resuming and (count > here or not skip):  # this run's own records started in this file, or right after
            if count <= here:
                progress.skipped = progress.bytes
            resuming = False
    if resuming:  # the inputs ended first
        progress.skipped = progress.bytes


def _start_marked(records: Generator[Record | BadRecord, None, int], progress: ReadProgress):
    """``records`` (a reader's), ``progress.skipped`` set where the reading is when the first
    comes: a resumed run's own reading starts there. Returns what the reader returns."""
    try:
        first = next(records)
    except StopIteration as end:
        return end.value
    progress.skipped = progress.bytes
    yield first
    return (yield from records)


def skip_in_file(skip: int, file_records: list[int], n: int) -> tuple[int, bool]:
    """Of ``skip`` records to leave out from input file ``n`` on, how many are in that file,
    and whether they are all of it: as many as it has where ``file_records`` counts them,
    else all that are left. A resumed run's saved counts cover every file before the one
    where it stopped (a file is counted once read to the end, and the reading is never
    behind the writing), so a file with no count holds all the records left to skip."""
    if n < len(file_records):
        here = min(skip, file_records[n])
        return here, here == file_records[n]
    return skip, False


#: Compressed files by suffix: the suffix before it says what they hold.
_COMPRESSED = (".gz", ".zst")


def _open(path: Path, raw: io.BufferedReader):
    """A binary stream of the contents of ``raw`` (the file at ``path``), decompressed."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if suffix == ".zst":
        return io.BufferedReader(_ZstdReader(path, raw), 1 << 20)
    return raw


class _ZstdReader(io.RawIOBase):
    """A .zst file's contents, every frame of it. A file that ends inside a frame is an
    error: zstandard's ``stream_reader`` returns what it has and says nothing, which would
    train on part of a corpus as if it were all of it."""

    def __init__(self, path: Path, raw: io.BufferedReader) -> None:
        try:
            import zstandard
        except ImportError:
            raise ImportError(f"{path}: reading .zst files needs the zstandard package (pip install zstandard)") from None
        self._zstd = zstandard
        self._path = path
        self._file = raw
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._fed = False  # bytes given to the current frame
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._fed and not self._frame.eof:
                    raise ValueError(f"{self._path}: the file ends inside a zstd frame (cut short?)")
                return 0
            try:
                self._out = self._decompress(chunk)
            except self._zstd.ZstdError as e:
                raise ValueError(f"{self._path}: not a valid zstd file ({e})") from None
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            if self._frame.eof:  # the next frame of a file of several (`cat a.zst b.zst`)
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
            out.append(self._frame.decompress(chunk))
            self._fed = True
            chunk = self._frame.unused_data if self._frame.eof else b""
        return b"".join(out)



#: A document of blank-line-separated text: lines with a character that is not ASCII
#: whitespace (``bytes.strip``'s set), one after another; or one such line. Anchored at line
#: starts, where every document starts: unanchored, a long run of whitespace was scanned
#: again from each of its bytes (quadratic).
_BLOCK = re.compile(rb"(?m)^[^\S\n]*\S[^\n]*(?:\n[^\S\n]*\S[^\n]*)*")
_LINE = re.compile(rb"(?m)^[^\S\n]*\S[^\n]*")


def _plain_text(
    path: Path, raw: io.BufferedReader, doc_per_line: bool, chunk: int = 4 << 20, skip: int = 0
) -> Generator[Record | BadRecord, None, int]:
    """Plain text: a document per blank-line-separated block (its first line numbers it), or
    per non-empty line. A block with a byte that is not UTF-8 is reported and skipped.

    The file is read ``chunk`` bytes at a time and cut into documents by one regex search
    over each chunk: line by line in Python, reading was a third of ``prepare``'s time on
    one core. Every document found but the last is whole (a blank line, or in
    ``doc_per_line`` a line end, follows it); the last may go on in the next chunk, so it is
    kept and searched again with it. The next read is at least as large as what is kept,
    so a document of any size costs linear time. The first ``skip`` documents are found
    and counted only. Returns how many the file has."""
    document = _LINE if doc_per_line else _BLOCK
    source = str(path)
    line = 1  # the line number at the start of ``buffer``
    documents = 0
    with _open(path, raw) as f:
        head = f.read(3)
        buffer = head[3:] if head == b"\xef\xbb\xbf" else head  # a UTF-8 byte-order mark
        at_end = False
        while not at_end:
            more = f.read(max(chunk, len(buffer)))
            at_end = not more
            buffer += more
            spans = [m.span() for m in document.finditer(buffer)]
            # Where the unfinished tail starts: the last document, or a line not yet ended.
            keep = len(buffer) if at_end else spans.pop()[0] if spans else buffer.rfind(b"\n") + 1
            documents += len(spans)
            counted = 0  # ``line`` counts the lines of ``buffer[:counted]``
            for start, end in spans:
                line += buffer.count(b"\n", counted, start)
                counted = start
                if skip:
                    skip -= 1
                    continue
                # A document ends at a line end or at the end of the file.
                yield _document(source, line, buffer[start:end], end < len(buffer))
            line += buffer.count(b"\n", counted, keep)
            buffer = buffer[keep:]
    return documents


def _document(source: str, line: int, raw: bytes, line_ended: bool) -> Record | BadRecord:
    """One document of a text file, its line breaks kept (a CRLF as LF), the one after it not."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")
        if line_ended and raw.endswith(b"\r"):
            raw = raw[:-1]  # the CR of the CRLF that ends the document
    try:
        return Record(source, line, {"text": raw.decode("utf-8")})
    except UnicodeDecodeError as e:
        bad = line + raw.count(b"\n", 0, e.start)
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1)
        where = f"byte {column + 1} of line {bad}" + (f", in the document from line {line}" if bad != line else "")
        return BadRecord(source, bad, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at {where})")


def _jsonl(path: Path, raw: io.BufferedReader, skip: int = 0) -> Generator[Record | BadRecord, None, int]:
    """Each line on its own: a bad byte or bad JSON costs that record only, never the rest
    of the file (a text-mode reader fails for the whole buffer around a bad byte). The first
    ``skip`` records are counted, not parsed. Returns how many the file has."""
    line_no = blank = 0
    with _open(path, raw) as f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if skip:
                    skip -= 1
                    continue
                yield BadRecord(str(path), line_no, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)")
                continue
            if not line.strip():
                blank += 1
                continue
            if skip:
                skip -= 1
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                yield BadRecord(str(path), line_no, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            except RecursionError:
                yield BadRecord(str(path), line_no, "JSON nested too deeply")
                continue
            if not isinstance(data, dict):
                yield BadRecord(str(path), line_no, f"expected a JSON object, got {type(data).__name__}")
                continue
            yield Record(str(path), line_no, data)
    return line_no - blank


def _parquet(path: Path, progress: ReadProgress, skip: int = 0) -> Generator[Record, None, int]:
    """The rows of a Parquet file, a row group at a time; ``progress`` follows the share of
    its rows read. Row groups within the first ``skip`` rows are not read. Returns how many
    rows it has."""
    import pyarrow.parquet as pq

    size = path.stat().st_size
    with pq.ParquetFile(path) as file:
        rows = file.metadata.num_rows
        row = 0  # rows read or passed over
        for group in range(file.num_row_groups):
            in_group = file.metadata.row_group(group).num_rows
            if row + in_group <= skip:
                row += in_group
                continue
            for batch in file.iter_batches(batch_size=1024, row_groups=[group]):
                first, row = row, row + batch.num_rows
                progress._in_file = size * row // rows
                if skip > first:
                    batch = batch.slice(skip - first)
                    first = skip
                for n, data in enumerate(batch.to_pylist(), first + 1):
                    yield Record(str(path), n, data)
    return rows


def to_example_input(data: Mapping[str, Any], mapping: Mapping[str, str] | None = None) -> tuple[str, Any]:
    """(``"chat"``, messages) or (``"text"``, text) for a record in any supported shape.

    ``mapping`` renames fields first, e.g. ``{"conversation": "messages"}``. A record-level
    ``system`` becomes the first message (unless the chat has one); Alpaca's ``history``
    (LLaMA-Factory's ``[[query, response], ...]``) becomes the turns before the
    instruction, whose ``input`` follows it on a new line, as LLaMA-Factory joins them.
    """
    if mapping:
        data = _renamed(data, mapping)
    if "messages" in data or "conversations" in data:
        key = "messages" if "messages" in data else "conversations"
        turns = data[key]
        if not isinstance(turns, list):
            raise ValueError(f"'{key}' must be a list")
        messages = [_message(t, n) for n, t in enumerate(turns)]
        if data.get("system") and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": _text(data["system"], "system")})
        return "chat", messages
    if "prompt" in data and ("response" in data or "completion" in data):
        messages = _system(data)
        messages.append({"role": "user", "content": _text(data["prompt"], "prompt")})
        messages.append({"role": "assistant", "content": _text(data.get("response", data.get("completion")), "response")})
        return "chat", messages
    if "instruction" in data and "output" in data:
        prompt = _text(data["instruction"], "instruction")
        if data.get("input"):
            prompt = f"{prompt}\n{_text(data['input'], 'input')}" if prompt else _text(data["input"], "input")
        messages = _system(data) + _history(data.get("history"))
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": _text(data["output"], "output")}]
        return "chat", messages
    if "text" in data:
        return "text", _text(data["text"], "text")
    raise ValueError(
        f"unknown record shape (fields: {sorted(data)[:8]}); expected messages, conversations, "
        "prompt/response, instruction/output or text (use a field mapping for other names)"
    )


def to_tools(data: Mapping[str, Any], mapping: Mapping[str, str] | None = None) -> list[Any] | None:
    """A chat record's ``tools`` (a list, or LLaMA-Factory's JSON string of one), for the
    template's ``tools`` variable."""
    if mapping:
        data = _renamed(data, mapping)
    tools = data.get("tools")
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise ValueError(f"'tools' is a string but not JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise ValueError("'tools' is JSON nested too deeply") from None
    if isinstance(tools, Mapping):
        tools = [tools]
    if not isinstance(tools, list):
        raise ValueError(f"'tools' must be a list of tool definitions, got {type(tools).__name__}")
    return tools


def _renamed(data: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """``data`` with its fields renamed. A field some rename targets is taken from its source
    only: with ``{"body": "text"}`` a record's own ``text`` is not its text (whichever came
    last would have won), and a record without ``body`` has none."""
    targets = set(mapping.values())
    return {mapping.get(k, k): v for k, v in data.items() if k in mapping or k not in targets}


def _system(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "system", "content": _text(data["system"], "system")}] if data.get("system") else []


def _history(history: Any) -> list[dict[str, Any]]:
    """Alpaca ``history``: ``[[query, response], ...]`` as user / assistant turns."""
    if history is None or history == []:
        return []
    if not isinstance(history, list):
        raise ValueError(f"'history' must be a list of [query, response] pairs, got {type(history).__name__}")
    turns = []
    for n, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"'history' item {n} must be a [query, response] pair")
        turns.append({"role": "user", "content": _text(pair[0], f"history[{n}][0]")})
        turns.append({"role": "assistant", "content": _text(pair[1], f"history[{n}][1]")})
    return turns


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")
    return value


def _message(m: Any, n: int) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        raise ValueError(f"message {n} must be an object")
    if "role" in m:
        out = dict(m)
    elif "from" in m and "value" in m:
        role = SHAREGPT_ROLES.get(m["from"])
        if role is None:
            raise ValueError(f"message {n}: unknown ShareGPT role {m['from']!r} (known: {', '.join(SHAREGPT_ROLES)})")
        out = {"role": role, "content": m["value"]}
    else:
        raise ValueError(f"message {n} has no 'role' (or ShareGPT 'from'/'value')")
    if out.get("content") is not None and not isinstance(out["content"], (str, list)):
        raise ValueError(f"message {n}: content must be a string or a list of parts")
    if "content" not in out and not out.get("tool_calls"):
        # Templates differ on a missing field: some fail, some print nothing (a silent empty turn).
        raise ValueError(f"message {n} ({out.get('role')}) has no 'content' (nor 'tool_calls')")
    return out
