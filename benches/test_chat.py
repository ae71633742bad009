"""Chat data to ids, end to end: tokensmith.data against the transformers path
(``apply_chat_template(..., tokenize=True)``) on the same chats, one core and all cores.

    pytest benches/test_chat.py --benchmark-only --benchmark-json=chat.json
    python benches/report.py chat.json
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import DATA, corpus

MODELS = {
    "qwen2.5": ("qwen2", "Qwen-Qwen2.5-7B-Instruct", "<|im_end|>"),
    "llama3.1": ("llama3", "meta-llama-Llama-3.1-8B-Instruct", "<|eot_id|>"),
}
N_CHATS = 2000


def chats(n: int) -> list[list[dict[str, str]]]:
    """Real text as conversations: paragraphs of the English and Chinese handbooks."""
    paragraphs = [p.strip() for name in ("en", "zh") for p in corpus(name).split("\n\n") if len(p.strip()) > 40]
    out = []
    for i in range(n):
        a, b, c = (paragraphs[(3 * i + k) % len(paragraphs)] for k in range(3))
        out.append([{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": a}, {"role": "assistant", "content": b},
                    {"role": "user", "content": "More?"}, {"role": "assistant", "content": c}])
    return out


@pytest.fixture(scope="module", params=list(MODELS))
def model(request, tmp_path_factory):
    tokenizer, template, eos = MODELS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    shutil.copy(DATA / "tokenizers" / tokenizer / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": (DATA / "chat_templates" / f"{template}.jinja").read_text(encoding="utf-8"),
        "eos_token": eos, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return request.param, folder


@pytest.mark.parametrize("library", ["tokensmith", "transformers"])
def test_chat_to_ids(benchmark, model, library, tmp_path):
    import tokensmith
    from tokensmith import data

    key, folder = model
    batch = chats(N_CHATS)
    size = sum(len(m["content"].encode()) for c in batch for m in c)
    if library == "tokensmith":
        tok = tokensmith.Tokenizer.from_pretrained(folder)
        run = lambda: [data.encode_chat(tok, c).input_ids for c in batch]  # noqa: E731
    else:
        import transformers

        hf = transformers.AutoTokenizer.from_pretrained(str(folder))
        run = lambda: [list(hf.apply_chat_template(c, tokenize=True)["input_ids"]) for c in batch]  # noqa: E731
    benchmark.group = f"chat {key}"
    benchmark.extra_info.update(bytes=size, examples=N_CHATS, library=library, mode="chat 1 core", vocab=key, corpus="en+zh chats")
    ids = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert len(ids) == N_CHATS


def test_prepare_all_cores(benchmark, model, tmp_path):
    import tokensmith
    from tokensmith import data

    key, folder = model
    batch = chats(N_CHATS)
    src = tmp_path / "chats.jsonl"
    src.write_text("\n".join(json.dumps({"messages": c}, ensure_ascii=False) for c in batch), encoding="utf-8")
    tok = tokensmith.Tokenizer.from_pretrained(folder)
    size = sum(len(m["content"].encode()) for c in batch for m in c)

    def run():
        data.prepare([src], tok, tmp_path / "out", max_length=4096, overwrite=True, progress=False)

    benchmark.group = f"chat {key}"
    benchmark.extra_info.update(bytes=size, examples=N_CHATS, library="tokensmith", mode="prepare all cores", vocab=key, corpus="en+zh chats")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
