"""`add-tokens` on a multi-GB sharded checkpoint, without loading it: time and peak RSS.

    python benches/add_tokens_large.py [GB] [workdir]

Writes a synthetic Qwen2-7B-shaped checkpoint (152064 x 3584 bfloat16 embedding and head,
untied, plus filler tensors up to GB gigabytes in 2 GB shards, real Qwen2 tokenizer), then
runs ``tokensmith add-tokens`` in a child process and reads its peak RSS (ru_maxrss).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROWS, DIM = 152064, 3584


def synthesize(folder: Path, gigabytes: float) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    matrix = lambda: torch.randn(ROWS, DIM, dtype=torch.bfloat16)
    shards: list[dict] = [{"model.embed_tokens.weight": matrix()}]
    filler = int((gigabytes * 1e9 - 2 * ROWS * DIM * 2) // (DIM * 18944 * 2))
    for layer in range(max(filler, 0)):
        if sum(t.nbytes for t in shards[-1].values()) > 2e9:
            shards.append({})
        shards[-1][f"model.layers.{layer}.mlp.up_proj.weight"] = torch.full((18944, DIM), layer, dtype=torch.bfloat16)
    shards[-1]["lm_head.weight"] = matrix()
    weight_map = {}
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update({t: name for t in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"model_type": "qwen2", "vocab_size": ROWS, "hidden_size": DIM, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(DATA / "tokenizers/qwen2/tokenizer.json"),
                                               eos_token="<|im_end|>")
    tok.save_pretrained(folder)


def main() -> None:
    gigabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 6
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp())
    src, out = work / "model", work / "out"
    if not src.exists():
        src.mkdir(parents=True)
        synthesize(src, gigabytes)
    shutil.rmtree(out, ignore_errors=True)
    size = sum(p.stat().st_size for p in src.iterdir())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tokensmith.cli", "add-tokens", str(src), str(out), "--init", "mean",
                    "--tokens", *[f"<|new_{i}|>" for i in range(8)]], check=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    matrices = 2 * ROWS * DIM * 2 / 1e9
    print(f"checkpoint {size / 1e9:.2f} GB: add-tokens {seconds:.1f} s ({size / 1e9 / seconds:.2f} GB/s), "
          f"peak RSS {peak:.2f} GB (embedding + head: {matrices:.2f} GB)")


if __name__ == "__main__":
    main()
