"""One tokenizer shared by threads and forked processes never deadlocks or hangs (issue 15).

Each scenario runs in a child interpreter with a deadline, so that a regression fails the
test instead of hanging the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import TOKENIZERS_DIR, require_data

DEADLINE = 120


def run(script: str) -> subprocess.CompletedProcess:
    require_data()
    code = f"TOKENIZER = {str(TOKENIZERS_DIR / 'gpt2' / 'tokenizer.json')!r}\n" + textwrap.dedent(script)
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {DEADLINE} s: a deadlock or a hang")


def test_encoding_while_another_thread_adds_tokens():
    done = run("""
        import pickle, threading
        import tokensmith as ts
        tok = ts.Tokenizer.from_file(TOKENIZER)
        long_text = "hello world, " * 2000  # long enough to release the GIL while encoding
        errors = []

        def encode():
            try:
                for _ in range(300):
                    tok.encode(long_text)
                    tok.encode_batch([long_text, "<|box_0|> x"])
            except Exception as e:
                errors.append(e)

        def add():
            try:
                for i in range(300):
                    tok.add_special_tokens([f"<|box_{i}|>"])
                    tok.truncation = None
                    pickle.loads(pickle.dumps(tok))
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=f) for f in (encode, encode, add, add)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not errors, errors
        # No addition lost to a concurrent one.
        assert all(tok.token_to_id(f"<|box_{i}|>") is not None for i in range(300))
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_batch_work_in_a_forked_child_after_the_parent_used_the_thread_pool():
    done = run("""
        import os
        import tokensmith as ts
        tok = ts.Tokenizer.from_file(TOKENIZER)
        # 46k chars: more than a batch encoded on the calling thread (src/py/batch_chunks.rs)
        texts = [f"text number {i}" for i in range(3000)]
        want = tok.encode_batch(texts)  # the parent's thread pool is up
        pid = os.fork()
        if pid == 0:
            ok = tok.encode_batch(texts) == want
            ids, offsets = tok.encode_batch_numpy(texts)
            ok = ok and ids.tolist() == [i for row in want for i in row]
            ok = ok and tok.decode_batch(want) == texts
            grandchild = os.fork()  # a child of a child builds its own pool again
            if grandchild == 0:
                os._exit(0 if tok.encode_batch(texts) == want else 1)
            ok = ok and os.waitpid(grandchild, 0)[1] == 0
            os._exit(0 if ok else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert tok.encode_batch(texts) == want  # the parent's pool still works
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_datasets_map_with_processes_after_encode_batch():
    pytest.importorskip("datasets")
    done = run("""
        import datasets
        import tokensmith as ts
        tok = ts.Tokenizer.from_file(TOKENIZER)
        texts = [f"text number {i}" for i in range(200)]
        want = tok.encode_batch(texts)
        ds = datasets.Dataset.from_dict({"text": texts})
        ds = ds.map(lambda b: {"ids": tok.encode_batch(b["text"])}, batched=True, batch_size=50, num_proc=2)
        assert ds["ids"] == want
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_short_texts_raising_while_another_thread_adds_tokens():
    """A short text is encoded under the tokenizer's read lock; the lock must be let go
    before the error is made into its Python class, whose code may hand the GIL to another
    thread (a guard held there blocked a queued `add_tokens`, and every reader after it)."""
    done = run("""
        import sys, threading
        import tokensmith as ts
        sys.setswitchinterval(1e-6)  # hand the GIL over as often as CPython will
        tok = ts.Tokenizer.from_file(TOKENIZER)
        errors = []

        def encode():
            try:
                for _ in range(3000):
                    try:
                        tok.encode("a <|endoftext|> b", special="raise")
                        errors.append("no error raised")
                    except ts.SpecialTokenError:
                        pass
                    tok.encode("short text")
            except Exception as e:
                errors.append(e)

        def add():
            try:
                for i in range(100):
                    tok.add_special_tokens([f"<|task_{i}|>"])
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=f) for f in (encode, encode, encode, add)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not errors, errors[:3]
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
