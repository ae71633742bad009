"""tokensmith.embeddings on numpy matrices of every supported dtype, against numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from tokensmith import InvalidInputError
from tokensmith import embeddings as E

ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


def matrix(dtype, rows=300, dim=16, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mean_is_the_float64_mean_rounded_once_and_other_rows_untouched(dtype):
    w = matrix(dtype)
    before = w.copy()
    ids, exclude = [297, 298, 299], [0, 5]
    E.init_rows(w, ids, method="mean", exclude=exclude)
    keep = np.ones(len(w), bool)
    keep[ids + exclude] = False
    want = before[keep].astype(np.float64).mean(axis=0).astype(dtype)
    for i in ids:
        assert w[i].tobytes() == want.tobytes()
    others = np.setdiff1d(np.arange(len(w)), ids)
    assert w[others].tobytes() == before[others].tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_noisy_mean_is_seeded_and_has_variance_one_over_d(dtype):
    a, b, c = matrix(dtype), matrix(dtype), matrix(dtype)
    ids = list(range(200, 300))
    E.init_rows(a, ids, method="noisy_mean", seed=3)
    E.init_rows(b, ids, method="noisy_mean", seed=3)
    E.init_rows(c, ids, method="noisy_mean", seed=4)
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    mean = matrix(dtype)[:200].astype(np.float64).mean(axis=0)
    z = (a[ids].astype(np.float64) - mean) * np.sqrt(a.shape[1])
    assert abs(z.mean()) < 0.15 and abs(z.var() - 1.0) < 0.2


def test_mean_cov_samples_have_the_mean_and_covariance_of_the_rows():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((400, 4)) @ np.array([[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0.5, 0], [0, 0, 0.3, 1]])
    w = np.vstack([base, np.zeros((4000, 4))]).astype(np.float32)
    ids = list(range(400, 4400))
    E.init_rows(w, ids, method="mean_cov", seed=0, scale=1.0)
    samples = w[ids].astype(np.float64)
    mu = base.mean(axis=0)
    sigma = np.cov(base, rowvar=False, bias=True)
    assert np.allclose(samples.mean(axis=0), mu, atol=0.1)
    assert np.allclose(np.cov(samples, rowvar=False), sigma, atol=0.25 * np.abs(sigma).max())
    # The transformers default scale (1e-9) gives the mean to float32 precision.
    v = np.vstack([base, np.zeros((3, 4))]).astype(np.float32)
    E.init_rows(v, [400, 401, 402], method="mean_cov", seed=0)
    assert np.allclose(v[400:], base.astype(np.float32).astype(np.float64).mean(axis=0), atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_copy_and_pieces_are_the_looked_up_rows(dtype):
    import tokensmith as ts
    from tokensmith.cli import _default_tokenizer

    tok = _default_tokenizer()
    w = matrix(dtype, rows=tok.vocab_size + 2)
    before = w.copy()
    new = [w.shape[0] - 2, w.shape[0] - 1]
    E.init_rows(w, new, method="copy", sources=[10, 20])
    assert w[new[0]].tobytes() == before[10].tobytes() and w[new[1]].tobytes() == before[20].tobytes()
    texts = ["<|box_start|>", "新词"]
    E.init_rows(w, new, method="pieces", tokenizer=tok, texts=texts)
    for row, text in zip(new, texts):
        pieces = tok.encode(text, add_special_tokens=False, special="text")
        want = before[pieces].astype(np.float64).mean(axis=0).astype(dtype)
        assert w[row].tobytes() == want.tobytes()
    assert isinstance(tok, ts.Tokenizer)


def test_grow_copies_once_pads_and_never_shrinks():
    w = matrix(np.float32, rows=100)
    g = E.grow(w, 3, pad_to_multiple_of=64)
    assert g.shape == (128, 16) and g[:100].tobytes() == w.tobytes() and not g[100:].any()
    assert E.grow(g, 0).shape == (128, 16)


def test_bad_inputs_are_clear_errors():
    w = matrix(np.float32)
    with pytest.raises(ValueError, match="out of range"):
        E.init_rows(w, [300])
    with pytest.raises(ValueError, match="dtype"):
        E.init_rows(w.astype(np.float64), [1])
    with pytest.raises(ValueError, match="contiguous"):
        E.init_rows(np.asfortranarray(w), [1])
    with pytest.raises(ValueError, match="2-D"):
        E.init_rows(w[0], [1])
    ro = w.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        E.init_rows(ro, [1])
    with pytest.raises(ValueError, match="method"):
        E.init_rows(w, [1], method="zeros")
    with pytest.raises(ValueError, match="sources"):
        E.init_rows(w, [1], method="copy")
    # dtype= only relabels 16-bit integer arrays; foreign byte order and misalignment are refused
    with pytest.raises(ValueError, match="can only relabel"):
        E.init_rows(np.zeros((4, 8), np.uint16), [3], dtype="float32")
    with pytest.raises(ValueError, match="can only relabel"):
        E.init_rows(w, [3], dtype="bfloat16")
    with pytest.raises(ValueError, match="native byte order"):
        E.init_rows(w.astype(">f4"), [3])
    unaligned = np.frombuffer(bytearray(w.nbytes + 1), np.float32, offset=1).reshape(w.shape)
    with pytest.raises(ValueError, match="read-only|aligned"):
        E.init_rows(unaligned, [3])


# ----------------------------------------------------------------------------- torch models

def tiny_llama(tied: bool, rows: int = 300, hidden: int = 16):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=rows, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_resize_and_init_model_use_each_matrix_own_rows(tied):
    import torch

    model = tiny_llama(tied)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    assert E.resize(model, 303, pad_to_multiple_of=8) == 304
    assert E.resize(model, 10) == 304, "never shrinks"
    inputs, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert inputs.shape == head.shape == (304, 16) and model.config.vocab_size == model.vocab_size == 304
    assert (head is inputs) == tied
    assert torch.equal(inputs[:300], old_in) and torch.equal(head[:300], old_out)
    assert not inputs[300:].any()

    E.init_model(model, [300, 301, 302], "mean")
    want_in = old_in.double().mean(0).float()
    want_out = old_out.double().mean(0).float()
    assert torch.equal(inputs[301], want_in)
    assert torch.equal(head[301], want_in if tied else want_out), "a head row comes from head rows"
    assert not inputs[303].any()
    logits = model(torch.tensor([[1, 300, 302]])).logits
    assert logits.shape == (1, 3, 304) and torch.isfinite(logits).all()


def test_resize_grows_large_weights_in_place():
    import torch

    # Large enough (> 1 MiB, and 2 MiB per matrix) that the pages move where they can.
    model = tiny_llama(tied=False, rows=8192, hidden=64)
    inputs, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    old_in, old_out = inputs.detach().clone(), head.detach().clone()
    assert E.resize(model, 8200) == 8200
    assert model.get_input_embeddings().weight is inputs and model.get_output_embeddings().weight is head
    assert torch.equal(inputs[:8192], old_in) and torch.equal(head[:8192], old_out)
    assert not inputs[8192:].any() and not head[8192:].any()
    assert torch.isfinite(model(torch.tensor([[1, 8199]])).logits).all()


def test_resize_from_many_threads_at_once_keeps_the_model_consistent():
    import threading

    import torch

    model = tiny_llama(tied=False, rows=8192, hidden=64)
    inputs, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    old_in, old_out = inputs.detach().clone(), head.detach().clone()
    barrier = threading.Barrier(4)
    errors = []

    def grow(target):
        try:
            barrier.wait()
            E.resize(model, target)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=grow, args=(8192 + 8 * k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    inputs, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert inputs.shape[0] == head.shape[0] == model.config.vocab_size == model.get_input_embeddings().num_embeddings == 8224
    assert torch.equal(inputs[:8192], old_in) and torch.equal(head[:8192], old_out)
    assert not inputs[8192:].any() and not head[8192:].any()


def _moves_pages() -> bool:
    import platform

    release = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])
    return platform.system() == "Linux" and release >= (5, 7)  # MREMAP_DONTUNMAP


def test_grow_parameter_moves_pages_only_when_nothing_else_shares_them():
    import torch

    from tokensmith import _core

    torch.manual_seed(0)
    # 64 MiB: above glibc's largest mmap threshold, so torch's allocations are page-mapped.
    parameter = torch.nn.Parameter(torch.randn(16384, 1024))
    before = parameter.detach().clone()
    assert E._grow_parameter(parameter, 16390) == _moves_pages()
    assert parameter.shape == (16390, 1024) and parameter.requires_grad and parameter.grad is None
    assert torch.equal(parameter[:16384], before) and not parameter[16384:].any()

    # A weight at another offset within its page than torch gives a new tensor (here 1000
    # floats into its storage; glibc does it to a tensor it places inside the heap): the pages
    # move into a mapping of our own instead.
    shifted = torch.nn.Parameter(torch.randn(16384 * 1024 + 1000)[1000:].view(16384, 1024))
    kept = shifted.detach().clone()
    assert E._grow_parameter(shifted, 16390) == _moves_pages()
    assert torch.equal(shifted[:16384], kept) and not shifted[16384:].any()
    del shifted, kept

    # A view shares the storage: the rows are copied and the view keeps its values.
    view = parameter.detach()[:100]
    assert not E._grow_parameter(parameter, 16400)
    assert torch.equal(view, before[:100]) and torch.equal(parameter[:16384], before)
    del view

    # Memory that numpy owns is never emptied.
    array = before.numpy().copy()
    borrowed = torch.nn.Parameter(torch.from_numpy(array))
    assert not E._grow_parameter(borrowed, 16385)
    assert np.array_equal(array, before.numpy()) and torch.equal(borrowed[:16384], before)

    # A storage object someone holds: copied, and it keeps its values.
    held = parameter.untyped_storage()
    assert not E._grow_parameter(parameter, 16420)
    assert torch.equal(torch.empty(0).set_(held)[: 100 * 1024].view(100, 1024), before[:100])
    del held

    with pytest.raises(ValueError, match="overlap"):
        _core.move_or_copy_bytes(before.data_ptr(), before.data_ptr() + 64, 4096, True, bytearray(1))


def _in_file_mapping(tensor) -> bool:
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[4] != "0" and len(fields) > 5 and fields[5].startswith("/")
    return False


def test_a_memory_mapped_model_moves_its_unwritten_pages(tmp_path):
    import torch
    import transformers

    tiny_llama(tied=False, rows=8192, hidden=64).save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    inputs, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    mapped = _in_file_mapping(inputs)  # transformers 5 leaves safetensors weights memory-mapped
    with torch.no_grad():
        head[3000] += 1  # a page written since loading: it must not move (the file still has the old bytes)
    before_in, before_out = inputs.detach().clone(), head.detach().clone()
    assert E._grow_parameter(inputs, 8200) == (mapped and _moves_pages())
    assert not E._grow_parameter(head, 8200)
    assert torch.equal(inputs[:8192], before_in) and torch.equal(head[:8192], before_out)
    assert not inputs[8192:].any() and not head[8192:].any()
    E.init_model(model, list(range(8192, 8200)), "mean")
    assert torch.isfinite(model(torch.tensor([[1, 8199]])).logits).all()
    # Unwritten pages move again; the grown weights save like any others.
    assert E._grow_parameter(inputs, 8300) == (mapped and _moves_pages())
    assert torch.equal(inputs[:8192], before_in)
    from safetensors.torch import save_model

    model.config.vocab_size = 8300  # the head stays at 8200: only the tensors matter here
    save_model(model, tmp_path / "resized.safetensors")
    del model, inputs, head
    # Nothing keeps the checkpoint mapped once the model is gone.
    assert not any(str(tmp_path / "model.safetensors") in line for line in open("/proc/self/maps"))


def test_an_interrupt_around_the_page_move_leaves_every_row(monkeypatch):
    import torch

    from tokensmith import _core

    real = _core.move_or_copy_bytes

    def interrupted_after(*args):
        real(*args)
        raise KeyboardInterrupt

    def interrupted_before(*args):
        raise KeyboardInterrupt

    for fake in (interrupted_after, interrupted_before):
        parameter = torch.nn.Parameter(torch.randn(16384, 1024))
        before = parameter.detach().clone()
        monkeypatch.setattr(_core, "move_or_copy_bytes", fake)
        with pytest.raises(KeyboardInterrupt):
            E._grow_parameter(parameter, 16390)
        rows = 16390 if fake is interrupted_after else 16384
        assert parameter.shape[0] == rows and torch.equal(parameter[:16384], before)


def test_train_only_rows_masks_the_gradient():
    import torch

    model = tiny_llama(tied=False)
    emb = model.get_input_embeddings()
    before = emb.weight.detach().clone()
    handle = E.train_only_rows(emb, [5, 7])
    model(torch.tensor([[3, 5, 7, 9]])).logits.sum().backward()
    grad = emb.weight.grad
    assert grad[[5, 7]].abs().sum() > 0 and not grad[[3, 9]].any()
    torch.optim.SGD([emb.weight], lr=1.0).step()
    changed = (emb.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [5, 7]
    handle.remove()
    emb.weight.grad = None
    model(torch.tensor([[3]])).logits.sum().backward()
    assert emb.weight.grad[3].any()


def test_torch_cpu_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    w = matrix(np.float32)
    t = torch.from_numpy(w.copy())
    E.init_rows(w, [1, 2], method="mean_cov", seed=5, scale=1.0)
    E.init_rows(t, [1, 2], method="mean_cov", seed=5, scale=1.0)
    assert t.numpy().tobytes() == w.tobytes()


# ----------------------------------------------------------------------------- CUDA

def cuda_or_skip():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("method", ["mean", "noisy_mean", "mean_cov", "copy", "pieces"])
def test_cuda_tensors_match_the_cpu_path(method, dtype):
    torch = cuda_or_skip()
    from tokensmith.cli import _default_tokenizer

    tok = _default_tokenizer()
    rows = tok.vocab_size + 40_000  # more rows than one device chunk
    torch.manual_seed(0)
    cpu = torch.randn(rows, 64).to(getattr(torch, dtype))
    gpu = cpu.cuda()
    ids = [rows - 3, rows - 2, rows - 1]
    options = {"copy": dict(sources=[10, 20, 10]),
               "pieces": dict(tokenizer=tok, texts=["<|box|>", "新词", " hello"])}.get(method, {})
    E.init_rows(cpu, ids, method, exclude=[0, 1], seed=3, scale=1e-2, **options)
    E.init_rows(gpu, ids, method, exclude=[0, 1], seed=3, scale=1e-2, **options)
    back = gpu.cpu()
    others = torch.ones(rows, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(back[others], cpu[others]), "rows outside ids must be bit-identical"
    # Same statistics, same noise: equal up to the order of the float64 sums (one ulp at most).
    tol = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
    torch.testing.assert_close(back[ids].double(), cpu[ids].double(), rtol=tol, atol=tol)


def test_cuda_model_init_and_train_only_rows():
    torch = cuda_or_skip()
    model = tiny_llama(tied=False).cuda()
    E.resize(model, 310)
    E.init_model(model, [300, 301], "noisy_mean", seed=1)
    assert model.get_input_embeddings().weight.is_cuda
    emb = model.get_input_embeddings()
    E.train_only_rows(emb, [300])
    model(torch.tensor([[1, 300]], device="cuda")).logits.sum().backward()
    assert emb.weight.grad[300].any() and not emb.weight.grad[1].any()


def test_pieces_with_a_transformers_or_tokenizers_tokenizer_split_special_text_as_text():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokensmith.cli import _default_tokenizer

    from importlib import resources

    ours = _default_tokenizer()
    hf = tokenizers.Tokenizer.from_file(str(resources.files("tokensmith") / "assets" / "gpt2" / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf)
    texts = ["<|endoftext|> box", "新词"]  # the first spells GPT-2's special token
    want = [ours.encode(t, add_special_tokens=False, special="text") for t in texts]
    assert 50256 not in want[0]
    assert E.piece_ids(hf, texts) == want
    assert E.piece_ids(fast, texts) == want
    with pytest.raises(TypeError, match="tokenizer must be"):
        E.piece_ids(object(), texts)


def test_pieces_on_sentencepiece_vocabularies_leave_out_the_lone_word_start_piece():
    import tokenizers

    from conftest import tokenizer_path

    import tokensmith as ts

    path = str(tokenizer_path("llama2"))
    reference = tokenizers.Tokenizer.from_file(path)
    word_start = reference.token_to_id("\u2581")
    texts = ["中文", "<|box_start|>", " "]
    want = [reference.encode(t, add_special_tokens=False).ids for t in texts]
    assert word_start in want[0] and len(want[0]) > 1  # the reference's split starts with a lone "▁"
    expected = [[i for i in ids if i != word_start] or ids for ids in want]
    assert expected[0] != want[0] and expected[2] == want[2]
    assert E.piece_ids(ts.Tokenizer.from_file(path), texts) == expected
    assert E.piece_ids(reference, texts) == expected


def test_pieces_from_the_rows_being_initialized_is_an_error():
    from tokensmith.cli import _default_tokenizer

    tok = _default_tokenizer()
    w = matrix(np.float32, rows=tok.vocab_size)
    target = tok.encode("hello", add_special_tokens=False, special="text")
    with pytest.raises(ValueError, match="include row .* one of the rows being initialized"):
        E.init_rows(w, target, method="pieces", tokenizer=tok, texts=["hello"])


def test_device_path_ignores_non_finite_rows_it_leaves_out():
    """The torch-ops path (run here on CPU tensors) selects rows instead of multiplying by 0/1."""
    torch = pytest.importorskip("torch")
    w = torch.randn(100, 4)
    w[99], w[98] = float("nan"), 1e30
    host, device = w.clone(), w.clone()
    for method in ("mean", "mean_cov"):
        E.init_rows(host, [99], method, exclude=[98], scale=1.0)
        values = E._values(E._DeviceMatrix(device), 1, method, E._row_flags(100, [98, 99]), [99], E._Options(scale=1.0))
        E._DeviceMatrix(device).write_rows([99], values)
        torch.testing.assert_close(device[99], host[99])
        assert torch.isfinite(host[99]).all()


def test_train_only_rows_follows_dtype_and_merges_on_tied_weights():
    import torch

    model = tiny_llama(tied=True)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    E.train_only_rows(emb, [5])
    handle = E.train_only_rows(head, [7])  # the same Parameter: one mask, rows 5 and 7
    model.to(torch.bfloat16)
    model(torch.tensor([[3, 5, 7]])).logits.float().sum().backward()
    grad = emb.weight.grad
    assert grad.dtype == torch.bfloat16
    assert grad[5].any() and grad[7].any() and not grad[3].any() and not grad[100].any()
    handle.remove()


def test_a_pickled_weight_does_not_keep_a_dead_mask(tmp_path):
    import torch

    emb = torch.nn.Embedding(10, 4)
    E.train_only_rows(emb, [1])
    torch.save(emb, tmp_path / "emb.pt")
    loaded = torch.load(tmp_path / "emb.pt", weights_only=False)
    E.train_only_rows(loaded, [2])
    loaded(torch.tensor([1, 2, 3])).sum().backward()
    assert loaded.weight.grad[2].any() and not loaded.weight.grad[1].any() and not loaded.weight.grad[3].any()


# ----------------------------------------------------------------------------- tensors that cannot be written


def test_a_tensor_on_a_read_only_memory_map_is_an_error_not_a_crash(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = f"""
import mmap, warnings
import numpy as np, torch
from tokensmith import embeddings as E, InvalidInputError
path = {str(tmp_path / "w.bin")!r}
np.arange(40, dtype=np.float32).reshape(10, 4).tofile(path)
with open(path, "rb") as f:
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch warns that the buffer is not writable, and goes on
    weight = torch.frombuffer(mm, dtype=torch.float32).reshape(10, 4)
try:
    E.init_rows(weight, [8, 9], "mean")
except InvalidInputError as e:
    print("refused:", e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    assert "refused:" in done.stdout and "read-only" in done.stdout


def test_meta_sparse_and_impossible_tensors_get_clear_errors():
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidInputError, match="meta device"):
        E.init_rows(torch.empty((10, 4), device="meta"), [9], "mean")
    with pytest.raises(InvalidInputError, match="dense tensor"):
        E.init_rows(torch.eye(10, 4).to_sparse(), [9], "mean")
    with pytest.raises(InvalidInputError, match="meta device"):
        E.grow(torch.empty((10, 4), device="meta"), 2)
    with pytest.raises(MemoryError, match="needs .* GB"):
        E.grow(torch.zeros((10, 4)), 10**15)
    with pytest.raises(MemoryError, match="needs .* GB"):
        E.grow(np.zeros((10, 4), np.float32), 10**15)
