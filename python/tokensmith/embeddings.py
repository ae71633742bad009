"""Initialize new embedding rows in place (numpy arrays and CPU torch tensors).

New tokens need rows in the input embedding and in an untied output head; they should
start from statistics of the trained rows, not zeros. Each method below computes in one
parallel pass over the matrix in Rust (f64 accumulation) and writes only the rows in
``ids``; every other row is left bit-identical. Call it once per matrix: an output head
is initialized from output-head rows, the input embedding from input-embedding rows.

>>> import numpy as np
>>> from tokensmith import embeddings as E
>>> w = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
>>> E.init_rows(w, [98, 99], method="mean")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import _core
from .errors import InvalidInputError

__all__ = ["METHODS", "init_rows", "grow"]

METHODS = ("mean", "noisy_mean", "mean_cov", "copy", "pieces", "description")


class _Matrix:
    """Pointer, element count, dtype name and shape of a checked 2-D row-major matrix."""

    def __init__(self, weight: Any) -> None:
        module = type(weight).__module__
        if module.startswith("torch"):
            if weight.device.type != "cpu":
                raise InvalidInputError(
                    f"weight is on {weight.device}: only CPU tensors are supported so far (move it with .cpu())"
                )
            self.dtype = str(weight.dtype).removeprefix("torch.")
            contiguous = weight.is_contiguous()
            self.address = weight.data_ptr()
            shape = tuple(weight.shape)
        elif module == "numpy":
            self.dtype = weight.dtype.name
            contiguous = weight.flags.c_contiguous
            if not weight.flags.writeable:
                raise InvalidInputError("weight is read-only")
            self.address = weight.__array_interface__["data"][0]
            shape = weight.shape
        else:
            raise TypeError(f"weight must be a numpy array or a torch tensor, got {type(weight).__name__}")
        if len(shape) != 2:
            raise InvalidInputError(f"weight must be 2-D (rows x dim), got shape {shape}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise InvalidInputError(f"weight dtype must be float32, float16 or bfloat16, got {self.dtype}")
        if not contiguous:
            raise InvalidInputError("weight must be contiguous (row-major); pass .contiguous() / np.ascontiguousarray")
        self.rows, self.cols = shape
        self.len = self.rows * self.cols
        self.weight = weight  # keeps the memory alive while Rust uses the pointer

    def args(self) -> tuple[int, int, str, int]:
        return self.address, self.len, self.dtype, self.cols


def _ids(ids: Sequence[int], rows: int, name: str = "ids", unique: bool = True) -> list[int]:
    out = [int(i) for i in ids]
    bad = [i for i in out if not 0 <= i < rows]
    if bad:
        raise InvalidInputError(f"{name} {bad[:5]} out of range for a matrix of {rows} rows")
    if unique and len(set(out)) != len(out):
        raise InvalidInputError(f"{name} has duplicates")
    return out


def init_rows(
    weight: Any,
    ids: Sequence[int],
    method: str = "mean",
    *,
    exclude: Sequence[int] = (),
    seed: int = 0,
    scale: float = 1e-9,
    sources: Sequence[int] | None = None,
    tokenizer: Any = None,
    texts: Sequence[str] | None = None,
    noise: bool = False,
) -> None:
    """Initialize rows ``ids`` of ``weight`` in place.

    - ``mean``: the mean of the other rows (also leaving out ``exclude``, e.g. untrained
      reserved slots), rounded once from float64.
    - ``noisy_mean``: that mean plus N(0, 1/d) noise (LLaMA-Factory's noise init), seeded.
    - ``mean_cov``: a sample of N(mean, scale * covariance), transformers'
      ``mean_resizing`` distribution, computed as mean + Xcᵀg/√N without forming the d x d
      covariance (O(N d) per row instead of O(N d²)).
    - ``copy``: row ``sources[k]`` into row ``ids[k]``.
    - ``pieces``: the mean of the rows of the pieces the *old* ``tokenizer`` splits
      ``texts[k]`` into (a new token starts from what it replaces).
    - ``description``: the same over a description of each token, plus noise if ``noise``.

    >>> E.init_rows(w, new_ids, method="pieces", tokenizer=old_tok, texts=["<|box_start|>"])  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    m = _Matrix(weight)
    rows = _ids(ids, m.rows)
    if not rows:
        return
    if method in ("mean", "noisy_mean", "mean_cov"):
        include = [True] * m.rows
        for i in rows + _ids(exclude, m.rows, "exclude"):
            include[i] = False
        mean = _core.embed_mean(*m.args(), include)
        if method == "mean":
            values = [mean] * len(rows)
        elif method == "noisy_mean":
            values = _plus_noise([mean] * len(rows), seed, m.cols)
        else:
            deltas = _core.embed_covariance_noise(*m.args(), include, mean, len(rows), seed, scale)
            values = [[a + b for a, b in zip(mean, d)] for d in deltas]
    elif method == "copy":
        if sources is None or len(sources) != len(rows):
            raise ValueError("method='copy' needs sources=[one source row per id]")
        values = _core.embed_group_means(*m.args(), [[s] for s in _ids(sources, m.rows, "sources")])
    else:
        if tokenizer is None or texts is None or len(texts) != len(rows):
            raise ValueError(f"method={method!r} needs tokenizer= (the old tokenizer) and texts=[one per id]")
        groups = [tokenizer.encode(t, add_special_tokens=False, special="text") for t in texts]
        for text, group in zip(texts, groups):
            if not group:
                raise InvalidInputError(f"{text!r} encodes to no tokens: it cannot seed a row")
            _ids(group, m.rows, f"pieces of {text!r}", unique=False)
        values = _core.embed_group_means(*m.args(), groups)
        if method == "description" and noise:
            values = _plus_noise(values, seed, m.cols)
    _core.embed_write_rows(*m.args()[:3], m.cols, rows, values)


def _plus_noise(values: list[list[float]], seed: int, dim: int) -> list[list[float]]:
    normals = _core.embed_normals(seed, len(values) * dim)
    std = 1.0 / math.sqrt(dim)
    return [[v + std * normals[k * dim + j] for j, v in enumerate(row)] for k, row in enumerate(values)]


def grow(weight: Any, new_rows: int, *, pad_to_multiple_of: int | None = None) -> Any:
    """A new matrix with ``new_rows`` more rows (rounded up to ``pad_to_multiple_of``), the
    old rows copied once and the new ones zero. Never shrinks: a matrix that is already
    padded past the new size is returned as a copy of the same size.

    >>> bigger = E.grow(w, 2, pad_to_multiple_of=64)                  # doctest: +SKIP
    """
    if new_rows < 0:
        raise ValueError("new_rows must be >= 0")
    rows, dim = weight.shape
    target = rows + new_rows
    if pad_to_multiple_of:
        target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
    target = max(target, rows)
    if type(weight).__module__.startswith("torch"):
        import torch

        out = torch.zeros((target, dim), dtype=weight.dtype, device=weight.device)
    else:
        import numpy as np

        out = np.zeros((target, dim), dtype=weight.dtype)
    out[:rows] = weight
    return out
