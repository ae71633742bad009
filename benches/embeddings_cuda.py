"""New-row initialization on a GPU: tokensmith against transformers, same process, same card.

    python benches/embeddings_cuda.py            # needs a CUDA device

A Qwen2-shaped untied model (151936 x 1536, bfloat16, one layer) on the device; 8 new rows.
Each case starts from a fresh copy of the model and is timed with torch.cuda.synchronize().
"""

from __future__ import annotations

import copy
import time

import torch
import transformers

from tokensmith import embeddings as E

ROWS, DIM, NEW = 151936, 1536, 8


def build() -> torch.nn.Module:
    config = transformers.Qwen2Config(vocab_size=ROWS, hidden_size=DIM, intermediate_size=256, num_hidden_layers=1,
                                      num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False)
    with torch.device("cuda"):
        return transformers.Qwen2ForCausalLM(config).to(torch.bfloat16)


def hf(model, mean_resizing):
    model.resize_token_embeddings(ROWS + NEW, mean_resizing=mean_resizing)


def ours(model, method):
    E.resize(model, ROWS + NEW)
    E.init_model(model, list(range(ROWS, ROWS + NEW)), method)


CASES = {
    "transformers resize (mean_resizing=False)": lambda m: hf(m, False),
    "transformers resize (mean_resizing=True)": lambda m: hf(m, True),
    "tokensmith resize + mean": lambda m: ours(m, "mean"),
    "tokensmith resize + noisy_mean": lambda m: ours(m, "noisy_mean"),
    "tokensmith resize + mean_cov": lambda m: ours(m, "mean_cov"),
}


def main() -> None:
    base = build()
    print(f"{torch.cuda.get_device_name()}: {ROWS} x {DIM} bf16, untied, {NEW} new rows")
    print("| case | seconds (min of 3) | peak extra GPU memory (GB) |")
    print("|---|---:|---:|")
    for name, run in CASES.items():
        times, peaks = [], []
        for _ in range(3):
            model = copy.deepcopy(base)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_mem = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            run(model)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            peaks.append((torch.cuda.max_memory_allocated() - start_mem) / 1e9)
            del model
            torch.cuda.empty_cache()
        print(f"| {name} | {min(times):.3f} | {max(peaks):.2f} |")


if __name__ == "__main__":
    main()
