"""What the worker processes of tests/test_data_workers.py unpickle: a worker imports by name,
so these live in an importable module, never in a test's ``__main__``. The tests folder reaches
the workers through the parent's ``sys.path``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tokensmith import Tokenizer, data


class DyingEncoder(data.ExampleEncoder):
    """Ends its worker process abruptly, as a crash or the OOM killer would, on the record whose
    text is ``"die"``."""

    def __call__(self, record: Any) -> data.Example:
        if record.get("text") == "die":
            os._exit(3)
        return super().__call__(record)


def reverse_slowly(delays: list[float], item: tuple[int, bytes]) -> tuple[int, bytes]:
    """``item`` reversed after a pause chosen by its index, so later items often finish first."""
    index, payload = item
    time.sleep(delays[index % len(delays)])
    if payload == b"raise":
        raise ZeroDivisionError(f"item {index}")
    return index, payload[::-1]


def prepare_in_this_process(src: str, tokenizer: str, out: str) -> tuple[int, int]:
    """A ``multiprocessing.Pool`` task: ``prepare`` with two workers inside a daemonic process."""
    tok = Tokenizer.from_file(tokenizer)
    result = data.prepare([src], tok, out, pack=False, num_workers=2, progress=False)
    return result.examples, result.rows


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of the processes whose parent is ``pid``, zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((int(entry), fields[0]))
    return found
