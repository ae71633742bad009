"""Reading training data: JSONL and Parquet files in the common shapes, as records that
know where they came from (file and line) so that every problem can be reported."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Record", "BadRecord", "read_records", "to_example_input", "FORMATS"]

#: ShareGPT role names and their OpenAI equivalents.
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


def read_records(inputs: Iterable[str | os.PathLike[str]] | Iterable[Mapping[str, Any]]) -> Iterator[Record | BadRecord]:
    """Records from JSONL / JSON-lines files, Parquet files, or an iterable of dicts.

    Files stream: memory stays bounded whatever their size.
    """
    for n, item in enumerate(inputs):
        if isinstance(item, Mapping):
            yield Record("<iterable>", n + 1, item)
            continue
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix == ".parquet":
            yield from _parquet(path)
        else:
            yield from _jsonl(path)


def _jsonl(path: Path) -> Iterator[Record | BadRecord]:
    with open(path, encoding="utf-8", errors="strict") as f:
        line_no = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                yield BadRecord(str(path), line_no + 1, f"not valid UTF-8 ({e.reason})")
                return
            if not line:
                return
            line_no += 1
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                yield BadRecord(str(path), line_no, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(data, dict):
                yield BadRecord(str(path), line_no, f"expected a JSON object, got {type(data).__name__}")
                continue
            yield Record(str(path), line_no, data)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            row += 1
            yield Record(str(path), row, data)


def to_example_input(data: Mapping[str, Any], mapping: Mapping[str, str] | None = None) -> tuple[str, Any]:
    """(``"chat"``, messages) or (``"text"``, text) for a record in any supported shape.

    ``mapping`` renames fields first, e.g. ``{"conversation": "messages"}``.
    """
    if mapping:
        data = {mapping.get(k, k): v for k, v in data.items()}
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list):
            raise ValueError("'messages' must be a list")
        return "chat", [_message(m, n) for n, m in enumerate(messages)]
    if "conversations" in data:
        turns = data["conversations"]
        if not isinstance(turns, list):
            raise ValueError("'conversations' must be a list")
        return "chat", [_message(t, n) for n, t in enumerate(turns)]
    if "prompt" in data and ("response" in data or "completion" in data):
        messages = []
        if data.get("system"):
            messages.append({"role": "system", "content": str(data["system"])})
        messages.append({"role": "user", "content": _text(data["prompt"], "prompt")})
        messages.append({"role": "assistant", "content": _text(data.get("response", data.get("completion")), "response")})
        return "chat", messages
    if "instruction" in data and "output" in data:
        prompt = _text(data["instruction"], "instruction")
        if data.get("input"):
            prompt = f"{prompt}\n\n{_text(data['input'], 'input')}"
        messages = []
        if data.get("system"):
            messages.append({"role": "system", "content": str(data["system"])})
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": _text(data["output"], "output")}]
        return "chat", messages
    if "text" in data:
        return "text", _text(data["text"], "text")
    raise ValueError(
        f"unknown record shape (fields: {sorted(data)[:8]}); expected messages, conversations, "
        "prompt/response, instruction/output or text (use a field mapping for other names)"
    )


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
            raise ValueError(f"message {n}: unknown ShareGPT role {m['from']!r}")
        out = {"role": role, "content": m["value"]}
    else:
        raise ValueError(f"message {n} has no 'role' (or ShareGPT 'from'/'value')")
    if out.get("content") is not None and not isinstance(out["content"], (str, list)):
        raise ValueError(f"message {n}: content must be a string or a list of parts")
    return out
