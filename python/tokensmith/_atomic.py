"""Folders that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_folder_for(out: Path) -> Path:
    """The hidden folder next to ``out`` that this process writes it in."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``out``; when the block ends it replaces ``out``
    (one rename), and when the block raises (KeyboardInterrupt too) it is removed, so an
    interrupted run leaves no half-written output."""
    tmp = temp_folder_for(out)
    shutil.rmtree(tmp, ignore_errors=True)  # a dead run's, whose pid this process now has
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
