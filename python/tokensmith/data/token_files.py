"""Token streams for pre-training frameworks: Megatron-LM's indexed dataset and flat token
files (``prepare(format="megatron" | "tokens")``).

Both hold documents as runs of ids, nothing else: the ids go to disk as they come (one
write per batch of documents), and so do their lengths, into a side file that becomes the
index at the end. What is on disk is all there is: a run can be taken up again from any
``state()`` (``prepare(resume=True)``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["MegatronWriter", "FlatTokensWriter", "megatron_dtype", "flat_dtype"]

#: Megatron's index: magic, version 1, then a dtype code (its ``DType`` enum).
_MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
_MEGATRON_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


def megatron_dtype(vocab_size: int) -> np.dtype:
    """The dtype megatron-core picks for a vocabulary (``DType.optimal_dtype``): uint16 below
    65,500 entries, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def flat_dtype(vocab_size: int) -> np.dtype:
    """uint16 where every id fits (nanoGPT's ``train.bin``), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


#: The index is written this many documents at a time: its temporaries stay a few MB
#: whatever the corpus (only the lengths, 8 bytes a document, are kept whole).
_PART = 1 << 20


def _parts(lengths: np.ndarray):
    return (lengths[at : at + _PART] for at in range(0, lengths.size, _PART))


class _TokenFile:
    """What both writers share: documents' ids appended to one file in ``dtype``, their
    lengths kept for the index. As a context manager, the index is written on a clean exit
    only (``prepare`` drops the temporary folder else)."""

    files: list[str]
    #: ``prepare``'s ``meta.json`` names the one column these files hold.
    columns = ["input_ids"]

    def __init__(self, ids_path: Path, dtype: np.dtype, vocab_size: int, state: dict[str, int] | None = None) -> None:
        """New files, or with ``state`` (from ``state()``) the files of a run that stopped,
        cut back to that state (a killed run may have written more) and appended to."""
        self.dtype = dtype
        self.vocab_size = vocab_size
        self.rows = 0  # documents written
        self._path = ids_path
        self._lengths_path = ids_path.with_name(ids_path.name + ".lengths")
        if state is not None:
            for path, size in ((ids_path, state["bytes"]), (self._lengths_path, 8 * state["documents"])):
                if not path.exists() or path.stat().st_size < size:
                    raise ValueError(f"{path.name} is shorter than when the run saved its state: it cannot go on from there")
                os.truncate(path, size)
            self.rows = state["documents"]
        mode = "wb" if state is None else "ab"
        self._file = open(ids_path, mode)
        self._lengths = open(self._lengths_path, mode)

    def add(self, ids: list[int]) -> None:
        """One document."""
        self.add_array(np.asarray(ids, dtype=np.int64), [len(ids)])

    def add_array(self, ids: np.ndarray, lengths) -> None:
        """Documents whose ids are ``ids`` one after another, ``lengths`` long."""
        low, high = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        if high > np.iinfo(self.dtype).max or low < 0:
            # Never wrap an id into the dtype: that is a different token.
            raise ValueError(f"id {high if low >= 0 else low} does not fit the {self.dtype} ids of {self._path.name}")
        if high >= self.vocab_size:
            raise ValueError(f"id {high} is not in the vocabulary (ids 0-{self.vocab_size - 1})")
        self._file.write(ids.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        lengths = np.asarray(lengths, dtype="<i8")
        self._lengths.write(lengths.tobytes())
        self.rows += lengths.size

    def state(self) -> dict[str, int]:
        """Where the files stand, everything so far on disk: a writer made with this
        ``state`` goes on from here."""
        self._file.flush()
        self._lengths.flush()
        return {"bytes": self._file.tell(), "documents": self.rows}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._lengths.close()

    def close(self) -> None:
        """Closes the ids' file and writes the index. The lengths' file goes only once the
        index is whole: a run stopped while writing it can still be resumed."""
        self._file.close()
        self._lengths.close()
        self._write_index(np.fromfile(self._lengths_path, dtype="<i8"))
        os.unlink(self._lengths_path)

    def _write_index(self, lengths: np.ndarray) -> None:
        raise NotImplementedError


class MegatronWriter(_TokenFile):
    """``PREFIX.bin`` + ``PREFIX.idx``: what ``megatron.core.datasets.indexed_dataset.
    IndexedDataset(PREFIX)`` reads, one sequence per document, as Megatron-LM's
    ``preprocess_data.py`` writes them without ``--split-sentences``."""

    def __init__(self, folder: Path, prefix: str, vocab_size: int, state: dict[str, int] | None = None) -> None:
        self.files = [f"{prefix}.bin", f"{prefix}.idx"]
        self._idx = folder / self.files[1]
        super().__init__(folder / self.files[0], megatron_dtype(vocab_size), vocab_size, state)

    def _write_index(self, lengths: np.ndarray) -> None:
        if lengths.size and lengths.max() > np.iinfo(np.int32).max:
            raise ValueError("a document of over 2^31 tokens does not fit Megatron's index")
        n = lengths.size
        with open(self._idx, "wb") as f:
            f.write(_MEGATRON_MAGIC)
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", _MEGATRON_CODES[self.dtype]))
            f.write(struct.pack("<Q", n))  # sequences
            f.write(struct.pack("<Q", n + 1))  # document indices: 0, then each document's end
            for part in _parts(lengths):
                f.write(part.astype("<i4").tobytes())
            start = 0  # byte offset of each sequence in the .bin
            for part in _parts(lengths):
                ends = start + np.cumsum(part * self.dtype.itemsize)
                f.write(np.concatenate(([start], ends[:-1])).astype("<i8").tobytes())
                start = int(ends[-1])
            for at in range(0, n + 1, _PART):
                f.write(np.arange(at, min(at + _PART, n + 1), dtype="<i8").tobytes())


class FlatTokensWriter(_TokenFile):
    """``tokens.bin`` (every document's ids, one after another, little-endian, no header:
    ``numpy.memmap(path, dtype)`` as nanoGPT reads ``train.bin``) and ``offsets.npy``
    (int64, documents + 1: document i is ``tokens[offsets[i]:offsets[i + 1]]``)."""

    files = ["tokens.bin", "offsets.npy"]

    def __init__(self, folder: Path, vocab_size: int, state: dict[str, int] | None = None) -> None:
        self._folder = folder
        super().__init__(folder / self.files[0], flat_dtype(vocab_size), vocab_size, state)

    def _write_index(self, lengths: np.ndarray) -> None:
        with open(self._folder / self.files[1], "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (lengths.size + 1,)})
            start = 0
            f.write(np.array([0], dtype="<i8").tobytes())
            for part in _parts(lengths):
                ends = start + np.cumsum(part)
                f.write(ends.astype("<i8").tobytes())
                start = int(ends[-1])
