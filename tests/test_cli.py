"""The ``tokensmith inspect`` command on the bundled GPT-2 tokenizer (no shared data needed)."""

from __future__ import annotations

import subprocess
import sys

import tokenizers

from tokensmith.cli import _default_tokenizer


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokensmith.cli", *args], capture_output=True, text=True)


def test_inspect_shows_pieces_and_flags_split_special_strings():
    done = run("inspect", "Stop here</s> <|endoftext|>")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "'</s>'" in out and "NOT a token: 3 pieces ('</' + 's' + '>')" in out
    assert "special token 50256" in out
    # The ids printed are the reference's ids for this text.
    from importlib import resources

    path = resources.files("tokensmith") / "assets" / "gpt2" / "tokenizer.json"
    hf = tokenizers.Tokenizer.from_file(str(path))
    want = hf.encode("Stop here</s> <|endoftext|>", add_special_tokens=False).ids
    printed = [int(line.split()[1]) for line in out.splitlines() if line[:5].strip().isdigit()]
    assert printed == want


def test_inspect_with_special_text_encodes_markers_as_text():
    done = run("inspect", "<|endoftext|>", "--special", "text")
    assert done.returncode == 0
    assert "encoded as text here" in done.stdout
    assert "[special]" not in done.stdout


def test_inspect_default_sample_and_bad_tokenizer_path(tmp_path):
    assert run("inspect").returncode == 0
    done = run("inspect", "x", "--tokenizer", str(tmp_path / "missing.json"))
    assert done.returncode == 2 and "no such file" in done.stderr


def test_bundled_tokenizer_loads():
    tok = _default_tokenizer()
    assert tok.token_to_id("<|endoftext|>") == 50256


def test_the_suite_fails_under_ci_without_the_shared_data(tmp_path):
    """.ci/run sets CI=true: a missing ../shared/data must fail the run, not skip 500 tests."""
    import os
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "CI": "true", "TOKENSMITH_DATA": str(tmp_path / "nowhere")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests / "test_offsets.py"),
                           "--co"], capture_output=True, text=True, env=env, cwd=tests.parent)
    assert done.returncode != 0 and "test data not found" in done.stdout + done.stderr
    assert "CI=true" in (tests.parent / ".ci" / "run").read_text()
