"""New-embedding-row initialization: tokensmith against transformers' resize and
LLaMA-Factory's noise init, on a Qwen2-shaped untied float32 model (151936 x 1536
embedding and head), adding 8 tokens; plus the on-disk path (checkpoint in, checkpoint out).

    pytest benches/test_embeddings.py --benchmark-only --benchmark-json=emb.json
    python benches/embeddings_report.py        # each case in a fresh process: time, peak RSS

Each case takes seconds and changes the model, so it runs once (``rounds=1``) on a freshly
built model; building, saving and ``gc.collect()`` happen before the clock starts. The
peak RSS above the RSS right before the operation goes into ``extra_info``. The module only
runs with ``--benchmark-only`` (the project's addopts skip benchmarks by default).
"""

from __future__ import annotations

import functools
import gc
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import DATA

OLD_ROWS, NEW_ROWS = 151936, 151944
NEW_IDS = list(range(OLD_ROWS, NEW_ROWS))
# The real Qwen2 tokenizer has 151646 tokens: its matrices already have room for 8 more.
TOKENIZER_SIZE = 151646
ROOM_IDS = list(range(TOKENIZER_SIZE, TOKENIZER_SIZE + 8))
NEW_TOKENS = [f"<|tok{i}|>" for i in range(NEW_ROWS - OLD_ROWS)]


def build_model():
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=OLD_ROWS, hidden_size=1536, intermediate_size=256, num_hidden_layers=1,
        num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False,
    )
    return transformers.Qwen2ForCausalLM(config)  # float32


# ----------------------------------------------------------------------------- LLaMA-Factory


def _noisy_mean_initialization(embed_weight, num_new_tokens: int) -> None:
    # LLaMA-Factory src/llamafactory/model/model_utils/embedding.py (hiyouga/LLaMA-Factory
    # @1212919), its `token_ids=None` path: the one `patch_model` takes (it passes no new_tokens).
    import torch

    embedding_dim = embed_weight.size(1)
    avg_weight = embed_weight[:-num_new_tokens].mean(dim=0, keepdim=True)
    noise_weight = torch.empty_like(embed_weight[-num_new_tokens:])
    noise_weight.normal_(mean=0, std=(1.0 / math.sqrt(embedding_dim)))
    embed_weight[-num_new_tokens:] = avg_weight + noise_weight


def llamafactory_resize_embedding_layer(model, vocab_size: int, **resize_options) -> None:
    """LLaMA-Factory's `resize_embedding_layer` (same file) with ``len(tokenizer)`` given as
    ``vocab_size``, minus its DeepSpeed ZeRO-3 and quantization branches. Upstream now calls
    ``resize_token_embeddings(..., pad_to_multiple_of=64, mean_resizing=False)``; releases up
    to 0.9.x passed no ``mean_resizing``, i.e. transformers' default True (the
    ``llamafactory_noise_init_0_9`` case), then overwrote those rows with noise anyway."""
    current = model.get_input_embeddings().weight.size(0)
    if vocab_size > current:
        model.resize_token_embeddings(vocab_size, pad_to_multiple_of=64, **resize_options)
    new = model.get_input_embeddings().weight.size(0)
    num_new_tokens = new - current
    if num_new_tokens <= 0:
        return
    _noisy_mean_initialization(model.get_input_embeddings().weight.data, num_new_tokens)
    if model.get_output_embeddings() is not None and not model.config.tie_word_embeddings:
        _noisy_mean_initialization(model.get_output_embeddings().weight.data, num_new_tokens)
    model.config.vocab_size = new


# ----------------------------------------------------------------------------- in-memory cases


def _tokensmith(method: str, ids: list[int] = NEW_IDS):
    def run(model):
        from tokensmith import embeddings as E

        rows = E.resize(model, ids[-1] + 1)  # a no-op when the matrix has room
        E.init_model(model, ids, method)
        return rows

    return run


#: name -> operation on a freshly built model; returns the embedding's row count after.
MODEL_CASES = {
    "transformers_resize_plain": lambda m: m.resize_token_embeddings(NEW_ROWS, mean_resizing=False).num_embeddings,
    "transformers_resize_mean": lambda m: m.resize_token_embeddings(NEW_ROWS, mean_resizing=True).num_embeddings,
    "llamafactory_noise_init": lambda m: llamafactory_resize_embedding_layer(m, NEW_ROWS, mean_resizing=False),
    "llamafactory_noise_init_0_9": lambda m: llamafactory_resize_embedding_layer(m, NEW_ROWS),
    "tokensmith_mean": _tokensmith("mean"),
    "tokensmith_noisy_mean": _tokensmith("noisy_mean"),
    "tokensmith_mean_cov": _tokensmith("mean_cov"),
    # len(tokenizer) after adding 8 tokens to the real Qwen2 tokenizer: transformers shrinks
    # the padded matrix to it (and, since that is a shrink, initializes nothing);
    # tokensmith keeps the rows and initializes the 8.
    "transformers_resize_to_tokenizer": lambda m: m.resize_token_embeddings(ROOM_IDS[-1] + 1).num_embeddings,
    "tokensmith_mean_with_room": _tokensmith("mean", ROOM_IDS),
}
NEW_ROWS_OF = {"transformers_resize_to_tokenizer": ROOM_IDS, "tokensmith_mean_with_room": ROOM_IDS}


# ----------------------------------------------------------------------------- on-disk cases


def save_checkpoint(folder: Path) -> Path:
    """The model as safetensors plus the Qwen2 tokenizer (151646 tokens; the matrix has
    151936 rows, as in the real Qwen2 checkpoints)."""
    import transformers

    build_model().save_pretrained(folder)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(DATA / "tokenizers" / "qwen2" / "tokenizer.json"), eos_token="<|im_end|>")
    tok.save_pretrained(folder)
    return folder


def tokensmith_add_tokens(src: Path, out: Path) -> int:
    from tokensmith import checkpoint

    return checkpoint.add_tokens(src, out, NEW_TOKENS, init="mean").rows_after


def transformers_add_tokens(src: Path, out: Path) -> int:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens({"additional_special_tokens": NEW_TOKENS})
    model.resize_token_embeddings(len(tok), mean_resizing=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model.get_input_embeddings().num_embeddings


#: name -> operation (checkpoint folder, output folder); returns the row count written.
DISK_CASES = {
    "tokensmith_add_tokens_disk": tokensmith_add_tokens,
    "transformers_add_tokens_disk": transformers_add_tokens,
}
#: In-memory cases again on the saved checkpoint loaded with from_pretrained, which leaves
#: the weights memory-mapped on the safetensors file (transformers 5).
LOADED_CASES = {f"{name}_loaded": MODEL_CASES[name]
                for name in ("transformers_resize_plain", "tokensmith_mean", "tokensmith_mean_cov")}
CASES = [*MODEL_CASES, *LOADED_CASES, *DISK_CASES]


# ----------------------------------------------------------------------------- measuring


def _rss() -> tuple[int, int]:
    """(resident, resident minus file-backed/shared) bytes, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        resident, shared = (int(v) for v in f.read().split()[1:3])
    page = os.sysconf("SC_PAGE_SIZE")
    return resident * page, (resident - shared) * page


def _hwm() -> int | None:
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), None)


class PeakRSS:
    """Peak RSS above the RSS at entry, in bytes (collect garbage first).

    ``sampled``: /proc/self/statm read every 2 ms by a thread; ``anon``: the same without
    file-backed pages (a memory-mapped checkpoint, which the kernel can drop); ``hwm``: the
    kernel's high-water mark, reset at entry (None where /proc/self/clear_refs is not
    writable), a check that also sees peaks while native code holds the GIL."""

    def __enter__(self) -> PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.base, self.anon_base = _rss()
        self._peak, self._anon = self.base, self.anon_base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._update()

    def _update(self) -> None:
        rss, anon = _rss()
        self._peak, self._anon = max(self._peak, rss), max(self._anon, anon)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        self.sampled, self.anon = self._peak - self.base, self._anon - self.anon_base
        self.hwm = _hwm() - self.base if self._hwm_reset else None


def prepare(name: str, checkpoint: Path | None = None):
    """Set up case ``name`` (build a fresh model, or pick an empty output folder) and
    return the operation to time: no arguments, returns the matrix's row count after.
    ``checkpoint``: the saved model folder, for the loaded and on-disk cases."""
    if name in MODEL_CASES or name in LOADED_CASES:
        if name in MODEL_CASES:
            model, op = build_model(), MODEL_CASES[name]
        else:
            import transformers

            model, op = transformers.AutoModelForCausalLM.from_pretrained(checkpoint), LOADED_CASES[name]

        def call() -> int:
            op(model)
            return model.get_input_embeddings().weight.shape[0]

        call.model, call.ids = model, NEW_ROWS_OF.get(name, NEW_IDS)
        call.kept = _sample_rows(model)
    else:
        out = Path(tempfile.mkdtemp(prefix="emb-out-")) / "out"
        call = functools.partial(DISK_CASES[name], checkpoint, out)
        call.folder = out.parent  # removed after the run
    gc.collect()
    return call


def measure(call) -> dict:
    """Time ``call`` once and take its peak RSS above the RSS right before it."""
    with PeakRSS() as peak:
        start = time.perf_counter()
        rows = call()
        seconds = time.perf_counter() - start
    if hasattr(call, "model"):
        _check_new_rows(call.model, rows, call.ids)
        kept = zip(_sample_rows(call.model), call.kept)
        assert all(after.equal(before[: len(after)]) for after, before in kept), "an old row changed"
    if hasattr(call, "folder"):
        shutil.rmtree(call.folder)
    return dict(seconds=seconds, rows=rows, peak_gb=peak.sampled / 1e9, anon_gb=peak.anon / 1e9,
                hwm_gb=None if peak.hwm is None else peak.hwm / 1e9)


#: Old rows compared before and after each case: the ends and rows across the matrix.
SAMPLE_ROWS = [0, 1, 4095, 4096, 77777, TOKENIZER_SIZE - 1, OLD_ROWS - 2, OLD_ROWS - 1]


def _sample_rows(model) -> list:
    """SAMPLE_ROWS of the embedding and the head (those a shrink left)."""
    weights = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    return [w.data[[r for r in SAMPLE_ROWS if r < w.shape[0]]].clone() for w in weights]


def _check_new_rows(model, rows: int, ids: list[int]) -> None:
    """Both matrices have ``rows`` rows and the 8 new ones are finite and not zero."""
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        new = weight.data[ids]
        assert weight.shape[0] == rows and bool(new.isfinite().all()) and bool(new.abs().sum(dim=1).gt(0).all())


# ----------------------------------------------------------------------------- pytest


@pytest.fixture(scope="module", autouse=True)
def _only_with_benchmark_only(request):
    if not request.config.getoption("benchmark_only"):
        pytest.skip("seconds-long embedding benchmarks: run with --benchmark-only")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = save_checkpoint(tmp_path_factory.mktemp("qwen2-shaped"))
    yield folder
    shutil.rmtree(folder)  # 1.9 GB


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model(benchmark, case):
    _bench(benchmark, case, None)


@pytest.mark.parametrize("case", list(LOADED_CASES))
def test_loaded_model(benchmark, case, checkpoint):
    _bench(benchmark, case, checkpoint)


@pytest.mark.parametrize("case", list(DISK_CASES))
def test_checkpoint(benchmark, case, checkpoint):
    _bench(benchmark, case, checkpoint)


def _bench(benchmark, case: str, checkpoint: Path | None) -> None:
    benchmark.group = "embeddings"
    setup = lambda: ((prepare(case, checkpoint),), {})  # noqa: E731  (untimed: model build)
    result = benchmark.pedantic(measure, setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(result, case=case)
