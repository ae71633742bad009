"""A minimal safetensors reader and writer: headers, memory-mapped tensors, byte-range copies.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header), optional ``__metadata__`` of strings, then the tensor bytes. Reading only parses the
header and maps the file; writing streams tensors one at a time, copying unchanged ones byte
for byte, so no tensor is ever decoded that does not need to be.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointError

# Element sizes of the dtypes whose byte counts are checked; a tensor of a dtype not listed
# (a newer one) is only copied, so its size need not be known.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip

# safetensors dtype -> the name tokensmith.embeddings uses, and a numpy dtype that holds the bits.
FLOAT_DTYPES = {"F32": ("float32", "<f4"), "F16": ("float16", "<f2"), "BF16": ("bfloat16", "<u2")}

MAX_HEADER = 100 * 1024 * 1024  # the reference library's limit
COPY_CHUNK = 64 * 1024 * 1024


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]
    begin: int  # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no offset


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"names {key!r} twice")
        out[key] = value
    return out


class SafetensorsFile:
    """The parsed header of one ``.safetensors`` file, checked against the file's size."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{self.path}: not a safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER or 8 + header_len > size:
                # (The length itself is not shown: for another kind of file it is that file's first bytes.)
                raise CheckpointError(f"{self.path}: not a safetensors file, or truncated ({size} bytes)")
            raw = f.read(header_len)
        try:
            header = json.loads(raw, object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: the safetensors header is not valid JSON ({e})") from None
        except RecursionError:
            raise CheckpointError(f"{self.path}: the safetensors header is nested too deeply") from None
        except ValueError as e:  # a name twice: safetensors refuses the file, so must we
            raise CheckpointError(f"{self.path}: the safetensors header {e}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: the safetensors header is not a JSON object")
        self.metadata: dict[str, str] | None = header.pop("__metadata__", None)
        if self.metadata is not None and not (
            isinstance(self.metadata, dict) and all(isinstance(v, str) for v in self.metadata.values())
        ):
            raise CheckpointError(f"{self.path}: __metadata__ must map names to strings")
        self.data_start = 8 + header_len
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            try:
                dtype, shape, (begin, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
                if not isinstance(dtype, str) or any(not _is_int(d) or d < 0 for d in shape):
                    raise ValueError
                if not (_is_int(begin) and _is_int(end) and 0 <= begin <= end):
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} has a malformed header entry: {repr(entry)[:200]}"
                ) from None
            if dtype in DTYPE_SIZES and (end - begin) != math.prod(shape) * DTYPE_SIZES[dtype]:
                raise CheckpointError(f"{self.path}: tensor {name!r}: {end - begin} bytes for {dtype}{shape}")
            self.tensors[name] = TensorInfo(name, dtype, shape, self.data_start + begin, self.data_start + end)
        data_end = max((t.end for t in self.tensors.values()), default=self.data_start)
        if data_end > size:
            raise CheckpointError(f"{self.path}: truncated: the header needs {data_end} bytes, the file has {size}")

    def ordered(self) -> list[TensorInfo]:
        """Tensors in file order (the order a rewrite keeps)."""
        return sorted(self.tensors.values(), key=lambda t: (t.begin, t.name))

    def map_rows(self, name: str) -> tuple[Any, str]:
        """A copy-on-write memory map of a 2-D float tensor as a writable numpy array (the
        kernels take a mutable pointer but only read; nothing reaches the file) and its
        tokensmith dtype name. Pages are read on demand and stay in the page cache."""
        import numpy as np

        info = self.tensors[name]
        if info.dtype not in FLOAT_DTYPES or len(info.shape) != 2:
            raise CheckpointError(f"{self.path}: {name} is {info.dtype}{info.shape}; expected a 2-D F32, F16 or BF16 matrix")
        kernel_dtype, np_dtype = FLOAT_DTYPES[info.dtype]
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=np_dtype), kernel_dtype
        array = np.memmap(self.path, dtype=np_dtype, mode="c", offset=info.begin, shape=tuple(info.shape))
        return array, kernel_dtype


@dataclass
class Replacement:
    """A tensor's new shape and a writer that streams its bytes (exactly ``nbytes``)."""

    shape: list[int]
    write: Callable[[BinaryIO], None]


def write_file(
    source: SafetensorsFile,
    target: str | os.PathLike[str],
    replacements: dict[str, Replacement],
    progress: Callable[[int], None] = lambda n: None,
) -> None:
    """Write ``source`` to ``target`` with some tensors replaced; the rest are copied byte
    for byte from the source file. The header keeps the source's tensor order and metadata
    and is padded with spaces to 8 bytes, as the reference writer does."""
    header: dict[str, Any] = {}
    if source.metadata is not None:
        header["__metadata__"] = source.metadata
    offset = 0
    plan = []
    for info in source.ordered():
        if info.name in replacements:
            shape = replacements[info.name].shape
            nbytes = math.prod(shape) * DTYPE_SIZES[info.dtype]
        else:
            shape, nbytes = info.shape, info.nbytes
        header[info.name] = {"dtype": info.dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        plan.append((info, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(source.path, "rb") as src, open(target, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for info, nbytes in plan:
            start = out.tell()
            if info.name in replacements:
                replacements[info.name].write(out)
                progress(nbytes)
            else:
                copy_range(src, out, info.begin, info.nbytes, progress)
            if out.tell() - start != nbytes:
                raise CheckpointError(f"internal error: wrote {out.tell() - start} bytes for {info.name}, expected {nbytes}")
        out.flush()
        os.fsync(out.fileno())


def copy_range(src: BinaryIO, out: BinaryIO, begin: int, length: int, progress: Callable[[int], None]) -> None:
    """Copy ``length`` bytes at ``begin`` of ``src`` to the end of ``out`` in kernel space
    (copy_file_range / sendfile where the OS has them), in chunks so progress can report."""
    out.flush()
    done = 0
    while done < length:
        n = min(COPY_CHUNK, length - done)
        try:
            copied = os.copy_file_range(src.fileno(), out.fileno(), n, begin + done)
        except (AttributeError, OSError):
            copied = 0
        if copied <= 0:  # not supported here (or nothing copied): plain read and write
            src.seek(begin + done)
            data = src.read(n)
            out.write(data)
            out.flush()
            copied = len(data)
        if copied <= 0:
            raise CheckpointError(f"{src.name}: ended early while copying (truncated file?)")
        done += copied
        progress(copied)
    out.seek(0, os.SEEK_END)


def copy_file(source: Path, target: Path, progress: Callable[[int], None]) -> None:
    """A whole file, byte for byte."""
    with open(source, "rb") as src, open(target, "wb") as out:
        copy_range(src, out, 0, source.stat().st_size, progress)
        os.fsync(out.fileno())
