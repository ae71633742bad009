"""Initialize new embedding rows in place: numpy arrays, CPU and CUDA torch tensors, models.

New tokens need rows in the input embedding and in an untied output head; they should
start from statistics of the trained rows, not zeros. On the host each method is one
parallel pass over the matrix in Rust (float64 accumulation); on a GPU the same statistics
are taken with torch ops on the device, in row chunks, and only the new rows travel. Only
the rows in ``ids`` are written; every other row is left bit-identical.

>>> import numpy as np
>>> from tokensmith import embeddings as E
>>> w = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
>>> E.init_rows(w, [98, 99], method="mean")

For a model, :func:`init_model` initializes the input embedding from input-embedding rows
and an untied output head from output-head rows (tied weights once), and :func:`resize`
grows both without transformers' full re-initialization.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _core
from .errors import InvalidInputError

__all__ = ["METHODS", "init_rows", "init_model", "grow", "resize", "train_only_rows"]

METHODS = ("mean", "noisy_mean", "mean_cov", "copy", "pieces", "description")
DTYPES = ("float32", "float16", "bfloat16")

# Elements per chunk when a GPU tensor is reduced in float64: bounds the temporary to
# 64 MB whatever the matrix size (a whole-matrix float64 cast would be 4x a bf16 matrix).
CHUNK_ELEMENTS = 1 << 23


def _is_torch(weight: Any) -> bool:
    return type(weight).__module__.startswith("torch")


class _HostMatrix:
    """A checked 2-D row-major matrix in host memory, handed to the Rust kernels by address
    (the buffer protocol is not in Python 3.10's stable ABI)."""

    def __init__(self, weight: Any, dtype: str | None = None) -> None:
        if _is_torch(weight):
            self.dtype = str(weight.dtype).removeprefix("torch.")
            contiguous = weight.is_contiguous()
            self.address = weight.data_ptr()
            shape = tuple(weight.shape)
        elif type(weight).__module__ == "numpy":
            self.dtype = weight.dtype.name
            if dtype is not None and dtype != self.dtype:
                # A raw 16-bit view of half-precision data (safetensors' BF16 has no numpy type).
                if weight.dtype.kind not in "ui" or weight.dtype.itemsize != 2 or dtype not in ("float16", "bfloat16"):
                    raise InvalidInputError(f"dtype={dtype!r} can only relabel a 16-bit integer array as float16 or bfloat16")
                self.dtype = dtype
            contiguous = weight.flags.c_contiguous
            if not weight.flags.writeable:
                raise InvalidInputError("weight is read-only")
            if not weight.dtype.isnative or not weight.flags.aligned:
                raise InvalidInputError("weight must be in native byte order and aligned (np.ascontiguousarray(w, w.dtype.newbyteorder('=')))")
            self.address = weight.__array_interface__["data"][0]
            shape = weight.shape
        else:
            raise TypeError(f"weight must be a numpy array or a torch tensor, got {type(weight).__name__}")
        _check_shape_dtype(shape, self.dtype)
        if not contiguous:
            raise InvalidInputError("weight must be contiguous (row-major); pass .contiguous() / np.ascontiguousarray")
        self.rows, self.cols = shape
        self.weight = weight  # keeps the memory alive while Rust uses the pointer

    def _args(self) -> tuple[int, int, str, int]:
        return self.address, self.rows * self.cols, self.dtype, self.cols

    def mean(self, include: bytes) -> list[float]:
        return _core.embed_mean(*self._args(), include)

    def mean_cov_samples(self, include: bytes, draws: int, seed: int, scale: float) -> bytes:
        return _core.embed_mean_cov_samples(*self._args(), include, draws, seed, scale)

    def group_means(self, groups: list[list[int]]) -> bytes:
        return _core.embed_group_means(*self._args(), groups)

    def _check_writable(self) -> None:
        nbytes = self.rows * self.cols * (4 if self.dtype == "float32" else 2)
        if not _core.memory_writable(self.address, nbytes):
            raise InvalidInputError(
                "the weight's memory is read-only (a tensor made from a read-only memory map?): "
                "writing it would crash the process; clone it first"
            )

    def write_rows(self, rows: list[int], values: bytes) -> None:
        self._check_writable()
        _core.embed_write_rows(*self._args(), rows, values)

    def zero_rows(self) -> list[int]:
        return _core.embed_zero_rows(*self._args())


class _DeviceMatrix:
    """A torch tensor on an accelerator: statistics by torch ops on the device in float64
    row chunks; the new rows are rounded on the host exactly as the CPU path rounds them and
    copied in, so CPU and GPU give the same bits up to the order of the float64 sums."""

    def __init__(self, weight: Any) -> None:
        import torch

        self.torch = torch
        self.dtype = str(weight.dtype).removeprefix("torch.")
        _check_shape_dtype(tuple(weight.shape), self.dtype)
        self.rows, self.cols = weight.shape
        self.weight = weight

    def _chunks(self):
        step = max(1, CHUNK_ELEMENTS // max(self.cols, 1))
        for start in range(0, self.rows, step):
            yield start, min(start + step, self.rows)

    def _flags(self, include: bytes):
        torch = self.torch
        return torch.frombuffer(bytearray(include), dtype=torch.uint8).to(self.weight.device, torch.bool)

    def mean(self, include: bytes) -> list[float]:
        # Float64 sums over row chunks; left-out rows are selected away, not multiplied by
        # zero, so a NaN or inf in them (rows about to be overwritten) cannot leak in.
        torch = self.torch
        flags = self._flags(include)
        count = _count(include)
        if count == 0:
            raise InvalidInputError("no rows to take the mean of")
        total = torch.zeros(self.cols, dtype=torch.float64, device=self.weight.device)
        with torch.no_grad():
            for a, b in self._chunks():
                chunk = self.weight[a:b].to(torch.float64)
                total += torch.where(flags[a:b, None], chunk, 0.0).sum(dim=0)
        return (total / count).tolist()

    def mean_cov_samples(self, include: bytes, draws: int, seed: int, scale: float) -> bytes:
        torch = self.torch
        device = self.weight.device
        flags = self._flags(include)
        mu = torch.tensor(self.mean(include), dtype=torch.float64, device=device)
        acc = torch.zeros((self.cols, draws), dtype=torch.float64, device=device)
        with torch.no_grad():
            for a, b in self._chunks():
                g = torch.frombuffer(bytearray(_core.embed_counter_normals(seed, draws, a, b)), dtype=torch.float64)
                g = torch.where(flags[a:b, None], g.view(b - a, draws).to(device), 0.0)
                centered = torch.where(flags[a:b, None], self.weight[a:b].to(torch.float64) - mu, 0.0)
                acc += centered.T @ g
        factor = math.sqrt(scale / max(_count(include), 1))
        return _f64_bytes(mu + acc.T * factor)

    def group_means(self, groups: list[list[int]]) -> bytes:
        torch = self.torch
        device = self.weight.device
        flat = torch.tensor([r for g in groups for r in g], dtype=torch.long, device=device)
        owner = torch.tensor([k for k, g in enumerate(groups) for _ in g], dtype=torch.long, device=device)
        counts = torch.tensor([len(g) for g in groups], dtype=torch.float64, device=device)
        with torch.no_grad():
            sums = torch.zeros((len(groups), self.cols), dtype=torch.float64, device=device)
            sums.index_add_(0, owner, self.weight[flat].to(torch.float64))
        return _f64_bytes(sums / counts[:, None])

    def zero_rows(self) -> list[int]:
        with self.torch.no_grad():
            return self.torch.nonzero(~self.weight.any(dim=1)).flatten().tolist()

    def write_rows(self, rows: list[int], values: bytes) -> None:
        torch = self.torch
        staged = torch.empty((len(rows), self.cols), dtype=self.weight.dtype)
        _HostMatrix(staged).write_rows(list(range(len(rows))), values)
        with torch.no_grad():
            index = torch.tensor(rows, dtype=torch.long, device=self.weight.device)
            self.weight.index_copy_(0, index, staged.to(self.weight.device))


def _row_flags(rows: int, left_out: Iterable[int]) -> bytes:
    """One byte per row, 1 for the rows a statistic takes and 0 for those ``left_out``."""
    flags = bytearray(b"\x01") * rows
    for r in left_out:
        flags[r] = 0
    return bytes(flags)


def _count(include: bytes) -> int:
    return len(include) - include.count(0)


def _f64_bytes(tensor: Any) -> bytes:
    """A tensor's values as native float64 bytes, on the host (the flat row format the Rust
    kernels read and write: no Python float per element)."""
    import ctypes

    import torch

    host = tensor.detach().to("cpu", torch.float64).contiguous()
    return ctypes.string_at(host.data_ptr(), host.numel() * 8)


def _check_shape_dtype(shape: tuple, dtype: str) -> None:
    if len(shape) != 2:
        raise InvalidInputError(f"weight must be 2-D (rows x dim), got shape {shape}")
    if dtype not in DTYPES:
        raise InvalidInputError(f"weight dtype must be float32, float16 or bfloat16, got {dtype}")


def _matrix(weight: Any, dtype: str | None = None) -> _HostMatrix | _DeviceMatrix:
    if _is_torch(weight):
        _check_torch_storage(weight)
        if weight.device.type != "cpu":
            return _DeviceMatrix(weight)
    return _HostMatrix(weight, dtype)


def _check_torch_storage(weight: Any) -> None:
    """Tensors with no dense memory of their own get a clear error, not a crash."""
    if weight.device.type == "meta":
        raise InvalidInputError(
            "the weight is on the meta device and has no data: load the model's weights first "
            "(from_pretrained without a meta/empty-weights context)"
        )
    if str(weight.layout) != "torch.strided":
        raise InvalidInputError(f"the weight must be a dense tensor, got layout {weight.layout} (use .to_dense())")


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
    dtype: str | None = None,
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

    ``weight`` is a numpy array or a torch tensor (CPU or CUDA) of float32, float16 or
    bfloat16; ``dtype="bfloat16"`` reads a uint16 numpy array as bfloat16 bits.

    >>> E.init_rows(w, new_ids, method="pieces", tokenizer=old_tok, texts=["<|box_start|>"])  # doctest: +SKIP
    """
    m = _matrix(weight, dtype)
    rows = _ids(ids, m.rows)
    if not rows:
        return
    include = _row_flags(m.rows, rows + _ids(exclude, m.rows, "exclude"))
    options = _Options(seed=seed, scale=scale, sources=sources, tokenizer=tokenizer, texts=texts, noise=noise)
    m.write_rows(rows, _values(m, len(rows), method, include, rows, options))


@dataclass(frozen=True)
class _Options:
    """The method parameters of :func:`init_rows` (see there)."""

    seed: int = 0
    scale: float = 1e-9
    sources: Sequence[int] | None = None
    tokenizer: Any = None
    texts: Sequence[str] | None = None
    noise: bool = False
    #: for ``pieces``: each row's old ids, given instead of ``tokenizer`` and ``texts``
    #: (vocabulary extension knows them from its merges).
    groups: Sequence[Sequence[int]] | None = None


def _values(
    m: _HostMatrix | _DeviceMatrix,
    count: int,
    method: str,
    include: bytes,
    targets: Sequence[int],
    options: _Options,
) -> bytes:
    """``count`` new rows (float64 bytes, count x dim) by ``method`` from the rows of ``m``;
    the mean-based methods take their statistics over the rows ``include`` marks;
    ``targets`` are the rows being written (pieces must not come from them)."""
    seed, sources, tokenizer, texts = options.seed, options.sources, options.tokenizer, options.texts
    targets = set(targets)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "mean_cov":
        return m.mean_cov_samples(include, count, seed, options.scale)
    if method in ("mean", "noisy_mean"):
        mean = array("d", m.mean(include)).tobytes() * count
        return mean if method == "mean" else _plus_noise(mean, seed, m.cols)
    if method == "copy":
        if sources is None or len(sources) != count:
            raise ValueError("method='copy' needs sources=[one source row per id]")
        return m.group_means([[s] for s in _ids(sources, m.rows, "sources", unique=False)])
    if method == "pieces" and options.groups is not None:
        if len(options.groups) != count:
            raise ValueError("groups= needs one group of old ids per new row")
        groups = [_ids(group, m.rows, "pieces", unique=False) for group in options.groups]
        texts = [f"new row {k}" for k in range(count)]
    elif tokenizer is None or texts is None or len(texts) != count:
        raise ValueError(f"method={method!r} needs tokenizer= (the old tokenizer) and texts=[one per id]")
    else:
        groups = piece_ids(tokenizer, texts, m.rows)
    for text, group in zip(texts, groups):
        own = [r for r in group if r in targets]
        if own:
            raise InvalidInputError(
                f"the pieces of {text!r} include row {own[0]}, one of the rows being initialized: "
                "pass the tokenizer from before the tokens were added"
            )
    values = m.group_means(groups)
    if method == "description" and options.noise:
        values = _plus_noise(values, seed, m.cols)
    return values


#: SentencePiece's word-start mark: as a piece of its own it means "a word begins here",
#: not anything of the new token.
WORD_START = "\u2581"


def piece_ids(tokenizer: Any, texts: Sequence[str], rows: int | None = None) -> list[list[int]]:
    """The ids the (old) ``tokenizer`` splits each text into, as plain text: a text that
    happens to spell a special token is not turned into that control id. ``tokenizer`` is
    a tokensmith Tokenizer, a transformers fast tokenizer or a ``tokenizers.Tokenizer``.
    On SentencePiece vocabularies the lone word-start piece (``▁``) is left out unless it
    is the whole text's only piece.

    >>> E.piece_ids(llama2_tok, ["<|box_start|>"])                    # doctest: +SKIP
    [[529, 29989, 1884, 29918, 2962, 29989, 29958]]
    """
    encode, spell = _plain_text_encoder(tokenizer)
    groups = []
    for text in texts:
        group = encode(text)
        kept = [i for i in group if spell(i) != WORD_START]
        groups.append(kept if kept else group)
    for text, group in zip(texts, groups):
        if not group:
            raise InvalidInputError(f"{text!r} encodes to no tokens: it cannot seed a row")
        if rows is not None:
            _ids(group, rows, f"pieces of {text!r}", unique=False)
    return groups


class TextOnlyTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer with its special tokens removed, so that text
    spelling a control token is split as text (what ``special="text"`` does in tokensmith;
    plain added tokens still match). Built from tokenizer.json contents."""

    def __init__(self, tokenizer_json: dict) -> None:
        import json

        import tokenizers

        plain = [t for t in tokenizer_json.get("added_tokens") or [] if not t.get("special")]
        self.tokenizer = tokenizers.Tokenizer.from_str(json.dumps(dict(tokenizer_json, added_tokens=plain)))

    def encode(self, text: str, add_special_tokens: bool = False, special: str = "text") -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def id_to_token(self, id: int) -> str | None:
        return self.tokenizer.id_to_token(id)


def _plain_text_encoder(tokenizer: Any):
    """(encode as plain text, id -> token string) for a tokenizer of any kind piece_ids takes."""
    from ._tokenizer import Tokenizer

    if isinstance(tokenizer, (Tokenizer, TextOnlyTokenizer)):
        return (lambda text: tokenizer.encode(text, add_special_tokens=False, special="text")), tokenizer.id_to_token
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # transformers fast tokenizers
    if hasattr(backend, "to_str"):
        import json

        plain = TextOnlyTokenizer(json.loads(backend.to_str()))
        return plain.encode, plain.id_to_token
    raise TypeError(
        f"tokenizer must be a tokensmith Tokenizer, a transformers fast tokenizer or a tokenizers.Tokenizer; "
        f"got {type(tokenizer).__name__}"
    )


def _plus_noise(values: bytes, seed: int, dim: int) -> bytes:
    return _core.embed_add_noise(values, seed, 1.0 / math.sqrt(dim))


def grow(weight: Any, new_rows: int, *, pad_to_multiple_of: int | None = None) -> Any:
    """A new matrix with ``new_rows`` more rows (rounded up to ``pad_to_multiple_of``), the
    old rows copied once and the new ones zero. Never shrinks: a matrix that is already
    padded past the new size is returned as a copy of the same size.

    >>> bigger = E.grow(w, 2, pad_to_multiple_of=64)                  # doctest: +SKIP
    """
    if new_rows < 0:
        raise ValueError("new_rows must be >= 0")
    if _is_torch(weight):
        _check_torch_storage(weight)
    rows, dim = weight.shape
    target = _padded(rows + new_rows, pad_to_multiple_of)
    target = max(target, rows)
    try:
        if _is_torch(weight):
            import torch

            out = torch.empty((target, dim), dtype=weight.dtype, device=weight.device)
            with torch.no_grad():
                out[:rows] = weight
                out[rows:].zero_()
        else:
            import numpy as np

            out = np.zeros((target, dim), dtype=weight.dtype)
            out[:rows] = weight
    except (MemoryError, RuntimeError, ValueError) as e:
        if isinstance(e, RuntimeError) and "alloc" not in str(e).lower() and "memory" not in str(e).lower():
            raise
        raise MemoryError(
            f"growing the matrix to {target:,} rows x {dim:,} needs {target * dim * weight.itemsize / 1e9:,.1f} GB, "
            f"which cannot be allocated ({type(e).__name__})"
        ) from None
    return out


def _padded(rows: int, multiple: int | None) -> int:
    if multiple is not None and multiple < 1:
        raise ValueError("pad_to_multiple_of must be >= 1")
    return -(-rows // multiple) * multiple if multiple else rows


def _model_weights(model: Any) -> tuple[Any, Any | None]:
    """The input embedding weight, and the output head's weight when it is a different
    tensor (None when tied or absent)."""
    inputs = model.get_input_embeddings()
    if inputs is None:
        raise InvalidInputError(f"{type(model).__name__} has no input embeddings")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    if head_weight is None or head_weight is inputs.weight or head_weight.data_ptr() == inputs.weight.data_ptr():
        return inputs.weight, None
    return inputs.weight, head_weight


def init_model(model: Any, ids: Sequence[int], method: str = "mean", **options: Any) -> None:
    """:func:`init_rows` on a model's input embedding and, when untied, its output head.

    Each matrix is initialized from its own rows (a head row from head rows, never from
    input embeddings); tied weights are written once. Noise for the head is drawn with
    ``seed + 1`` so the two matrices do not share a draw. Rows that are all zero (the
    padding :func:`resize` or ``resize_token_embeddings`` added) are left out of the
    statistics, with ``exclude``.

    >>> model.resize_token_embeddings(len(tokenizer))                # doctest: +SKIP
    >>> E.init_model(model, new_ids, "pieces", tokenizer=old_tok, texts=new_tokens)  # doctest: +SKIP
    """
    inputs, head = _model_weights(model)
    for k, weight in enumerate([inputs] if head is None else [inputs, head]):
        zero = set(_matrix(weight.data).zero_rows()) - {int(i) for i in ids}
        exclude = sorted(zero | {int(i) for i in options.get("exclude", ())})
        init_rows(weight.data, ids, method, **dict(options, exclude=exclude, seed=options.get("seed", 0) + k))


def resize(model: Any, num_tokens: int, *, pad_to_multiple_of: int | None = None) -> int:
    """Grow a transformers model's input embedding and output head to at least
    ``num_tokens`` rows (rounded up to ``pad_to_multiple_of``), keeping the old rows and
    zeroing the new ones: no full-matrix re-initialization, no float32 copy, and never a
    shrink. Returns the new number of rows; ``config.vocab_size`` follows. Initialize the
    new rows with :func:`init_model`.

    The weights grow in place: the same Parameter objects (tied weights stay one), with more
    rows and no gradient. On Linux, a CPU weight that nothing else holds hands its memory
    pages to the grown matrix instead of being copied (milliseconds rather than about 0.3 s
    per GB), a model that ``from_pretrained`` left memory-mapped too (while its pages are
    unwritten); any other weight is copied once.
    """
    with _RESIZING:
        return _resize(model, num_tokens, pad_to_multiple_of)


#: One resize at a time: two threads growing one model would move its pages twice and leave
#: the embedding, the head and the config disagreeing (resizes are rare and short).
_RESIZING = threading.Lock()


def _resize(model: Any, num_tokens: int, pad_to_multiple_of: int | None) -> int:
    inputs_module = model.get_input_embeddings()
    head_module = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs, head = _model_weights(model)
    rows = inputs.shape[0]
    target = max(_padded(num_tokens, pad_to_multiple_of), rows)
    if target == rows:
        return rows
    for parameter in [inputs] if head is None else [inputs, head]:
        _grow_parameter(parameter, target)
    inputs_module.num_embeddings = target
    if head_module is not None:
        if head is None and getattr(head_module, "weight", None) is not None:
            head_module.weight = inputs_module.weight  # tied: one Parameter, as tie_weights() leaves it
        bias = getattr(head_module, "bias", None)
        if bias is not None:
            bias.data = grow(bias.data[:, None], target - bias.shape[0])[:, 0]
            bias.grad = None
        if hasattr(head_module, "out_features"):
            head_module.out_features = target
    config = getattr(model, "config", None)
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        text_config.vocab_size = target
        config.vocab_size = target
    if isinstance(getattr(model, "vocab_size", None), int):
        model.vocab_size = target  # some models read it for the loss, as transformers' resize sets it
    return target


#: Tensors a failed page move left with unmapped holes: never handed back to the allocator.
_UNUSABLE: list = []


def _grow_parameter(parameter: Any, rows: int) -> bool:
    """Give ``parameter`` ``rows`` rows in place: the old rows kept, the new ones zero.
    Returns whether the old memory pages moved (rather than being copied)."""
    import torch

    old_rows = parameter.shape[0]
    owned = _sole_owner(parameter)
    if owned is None:
        parameter.data = grow(parameter.data, rows - old_rows)
        parameter.grad = None
        return False
    old = parameter.data
    # Memory torch did not allocate may be a file mapping: its pages go to a mapping of our
    # own, unmapped with the tensor, never to the allocator's memory (which would keep the
    # file mapped after the tensor is freed, and hand its bytes out again).
    grown = _empty_at_page_offset_of(old, rows, own_mapping=not owned)
    with torch.no_grad():
        grown[old_rows:].zero_()
    # The Parameter takes `grown` first, so that it holds every row the moment the call
    # returns; `done` (set inside the call) tells an interrupt before it from one after.
    done = bytearray(1)
    parameter.data = grown
    parameter.grad = None
    nbytes = old.numel() * old.element_size()
    try:
        return _core.move_or_copy_bytes(old.data_ptr(), grown.data_ptr(), nbytes, owned, done)
    except BaseException as error:
        if done[0]:
            raise
        parameter.data = old  # the call failed or never ran: the old rows are intact
        if not isinstance(error, MemoryError):
            raise
        _UNUSABLE.append(grown)
        parameter.data = grow(old, rows - old_rows)
        return False


def _empty_at_page_offset_of(tensor: Any, rows: int, own_mapping: bool) -> Any:
    """An empty CPU tensor of ``rows`` rows like ``tensor`` whose data starts at the same
    offset within a memory page (pages move only to the same offset). From torch's allocator
    unless ``own_mapping``, when that lands at the same offset (it does for two tensors both
    mapped on their own, not for one placed inside the heap); else in a new anonymous mapping
    of our own, unmapped with the tensor."""
    import mmap

    import torch

    shape, dtype = (rows, *tensor.shape[1:]), tensor.dtype
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    if not own_mapping:
        grown = torch.empty(shape, dtype=dtype)
        if (grown.data_ptr() - tensor.data_ptr()) % mmap.PAGESIZE == 0:
            return grown
        del grown
    gap = tensor.data_ptr() % mmap.PAGESIZE
    memory = mmap.mmap(-1, gap + count * tensor.element_size(), flags=mmap.MAP_PRIVATE)
    flat = torch.frombuffer(memory, dtype=dtype, count=count, offset=gap)
    return torch.empty(0, dtype=dtype).set_(flat.untyped_storage(), 0, shape)


def _sole_owner(parameter: Any) -> bool | None:
    """Whether ``parameter``'s memory pages may move out of its storage: None when they may
    not (a GPU or non-contiguous tensor, shared or pinned memory, or any other tensor, view
    or Python object holding the storage); else whether torch allocated the storage itself,
    so that it may read as zeros afterwards (a numpy array or buffer may still see the
    memory of a storage torch did not allocate). Rust checks the memory kinds again, and
    moves file-backed pages (a model loaded from safetensors) only while unmodified."""
    import sys

    import torch

    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or parameter.device.type != "cpu" or not parameter.is_contiguous():
        return None
    storage = parameter.untyped_storage()
    if (
        storage.is_shared()
        or parameter.is_pinned()
        or use_count(storage._cdata) != 2  # the parameter and `storage` here: no other tensor
        or sys.getrefcount(storage) != _lone_storage_refcount()  # nobody holds the storage object
    ):
        return None
    return storage.resizable()  # from_numpy / frombuffer / memory-mapped storages are not


def _lone_storage_refcount() -> int:
    """``sys.getrefcount`` of the storage object of a live tensor when only a local variable
    holds it (torch returns one Python object per storage, so a user's reference adds to it)."""
    import sys

    import torch

    tensor = torch.empty(1)
    storage = tensor.untyped_storage()
    return sys.getrefcount(storage)


def train_only_rows(module: Any, ids: Sequence[int]) -> Any:
    """Mask the gradient of ``module.weight`` (an embedding or a head) so that only rows
    ``ids`` learn. Returns the hook handle; ``handle.remove()`` undoes it. Calling it again
    for the same parameter (a tied head) adds rows to the same mask instead of stacking a
    second one. The mask follows the gradient's device and dtype (``model.to(...)`` later
    is fine).

    Optimizers with weight decay still shrink the frozen rows: give this parameter
    ``weight_decay=0`` (or its own parameter group) when the other rows must not move.
    """
    weight = module.weight
    rows = _ids(ids, weight.shape[0])
    state = getattr(weight, "_tokensmith_trainable_rows", None)
    if state is not None and state.active:
        state.rows.update(rows)
        return state
    state = _RowMask(weight, rows)
    weight._tokensmith_trainable_rows = state
    return state


class _RowMask:
    """The gradient hook of :func:`train_only_rows` and its handle."""

    def __init__(self, weight: Any, rows: list[int]) -> None:
        self.rows = set(rows)
        self.active = True
        self._mask = None
        self._handle = weight.register_hook(self)

    def __call__(self, grad: Any) -> Any:
        import torch

        key = (grad.device, grad.dtype, grad.shape[0], len(self.rows))
        if self._mask is None or self._mask[0] != key:
            mask = torch.zeros((grad.shape[0], 1), dtype=grad.dtype, device=grad.device)
            mask[sorted(self.rows)] = 1
            self._mask = (key, mask)
        return grad * self._mask[1]

    def remove(self) -> None:
        self.active = False
        self._handle.remove()

    def __getstate__(self) -> dict:
        # A pickled weight (torch.save) does not carry the hook: its copy must not look masked.
        return {"rows": self.rows, "active": False, "_mask": None, "_handle": None}
