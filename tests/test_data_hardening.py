"""Hostile or broken data costs the records it is in, never the run or the output (issue 15):
bad bytes, deep JSON, templates that crash, loop or explode, two runs into one folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_data import CHATS, model_dir, write_jsonl

import tokensmith as ts
from tokensmith import data
from tokensmith._atomic import atomic_folder

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))


def test_a_bad_byte_costs_its_line_only(qwen, tmp_path):
    lines = [json.dumps({"messages": CHATS[0]}).encode() for _ in range(1000)]
    lines[2] = lines[2].replace(b"Hello", b"Hel\xfflo")
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # with a byte-order mark
    result = data.prepare([src], qwen, tmp_path / "o", num_workers=1)
    assert (result.examples, result.skipped) == (999, 1)
    assert result.errors == [f"{src}:3: not valid UTF-8 (byte 0xff at byte 47 of the line)"]
    findings = [f for f in data.lint([src], qwen) if f.severity == "error"]
    assert [(f.line, f.kind) for f in findings] == [(3, "malformed")]


def test_json_nested_too_deep_is_a_bad_record(qwen, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("[" * 100_000 + "]" * 100_000 + "\n" + json.dumps({"messages": CHATS[0]}) + "\n")
    result = data.prepare([src], qwen, tmp_path / "o", num_workers=1)
    assert (result.examples, result.skipped) == (1, 1)
    assert "nested too deeply" in result.errors[0] and ":1:" in result.errors[0]


@pytest.mark.parametrize("body, why", [
    ("{{ range(10**9) | list }}", "OverflowError"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurses too deeply"),
])
def test_template_runtime_errors_skip_that_record(qwen, tmp_path, body, why):
    # The template fails only on records that ask for it (a user message "boom").
    template = ("{% for m in messages %}{% if m['content'] == 'boom' %}" + body + "{% endif %}"
                "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    boom = [{"role": "user", "content": "boom"}, {"role": "assistant", "content": "x"}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}, {"messages": boom}, {"messages": CHATS[1]}])
    result = data.prepare([src], qwen, tmp_path / "o", num_workers=1, chat_template=template)
    assert (result.examples, result.skipped) == (2, 1)
    assert result.errors[0].startswith(f"{src}:2: chat template failed") and why in result.errors[0]
    assert result.skipped_reasons == {"chat template failed": 1}
    findings = [f for f in data.lint([src], qwen, chat_template=template) if f.severity == "error"]
    assert [(f.line, f.kind) for f in findings] == [(2, "template")]


def test_rendering_is_bounded_in_size_and_time(qwen, monkeypatch):
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}"
    monkeypatch.setattr(data.chat, "MAX_RENDERED_CHARS", 1_000_000)
    with pytest.raises(data.ChatTemplateError, match="wrote more than 1,000,000 characters"):
        data.encode_chat(qwen, CHATS[0], chat_template=loop)
    monkeypatch.setattr(data.chat, "MAX_RENDERED_CHARS", 10**12)
    monkeypatch.setattr(data.chat, "MAX_RENDER_SECONDS", 0.2)
    with pytest.raises(data.ChatTemplateError, match="still rendering after"):
        data.encode_chat(qwen, CHATS[0], chat_template=loop)


def test_generation_templates_map_offsets_in_one_pass():
    marked = "ab" + data.chat.GENERATION_START + "cd" + data.chat.GENERATION_END + "ef" + data.chat.GENERATION_START
    unmarked = data.chat._unmarker(marked)
    assert [unmarked(i) for i in (0, 2, 3, 5, 6, 8, 9)] == [0, 2, 2, 4, 4, 6, 6]


def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as first:
        (first / "a").write_text("first")
        with pytest.raises(FileExistsError, match="another run is writing it now"):
            with atomic_folder(out, overwrite=True):
                pass
    assert (out / "a").read_text() == "first"
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_folder(out):
            pass
    # A run that fails leaves nothing.
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "failed"):
            raise RuntimeError
    assert not (tmp_path / "failed").exists()
    # overwrite replaces the old folder whole.
    with atomic_folder(out, overwrite=True) as second:
        (second / "b").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_killed_run_leaves_no_claim(tmp_path):
    script = (
        "import os, sys, pathlib\n"
        "from tokensmith._atomic import atomic_folder\n"
        "with atomic_folder(pathlib.Path(sys.argv[1])):\n"
        "    os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")])
    assert done.returncode == 9
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "x").write_text("ok")
    assert (tmp_path / "out" / "x").read_text() == "ok"


def test_prepare_into_a_folder_another_run_claimed_fails(qwen, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}])
    out = tmp_path / "o"
    with atomic_folder(out):  # another run, still writing
        with pytest.raises(FileExistsError):
            data.prepare([src], qwen, out, num_workers=1)
    assert not any(Path(tmp_path).glob(".o.tmp-*"))
