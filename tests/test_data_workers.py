"""``data.prepare`` with worker processes works in any calling context: a script without a
``__main__`` guard, a daemonic process, a restricted CPU set; a dead worker or an interrupt ends
the run cleanly (an exception, no output, no processes left behind); order is kept."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import tokensmith as ts
from tokensmith import data

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# The folder that holds the tokensmith this run imports (site-packages after `pip install`,
# python/ in a development checkout with the built module copied in): children import it too.
PACKAGE_PATH = Path(ts.__file__).resolve().parents[1]
GPT2 = PACKAGE_PATH / "tokensmith" / "assets" / "gpt2" / "tokenizer.json"

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def tok() -> ts.Tokenizer:
    return ts.Tokenizer.from_file(GPT2)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rows(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]


def small_records(n: int) -> list[dict]:
    return [{"text": f"record {i}: " + "word " * (i % 13)} for i in range(n)]


def env_with_package(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PACKAGE_PATH), **extra}


def processes_with_marker(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (the workers of a script inherit it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_script_without_main_guard(tok, tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl", small_records(700))
    script = tmp_path / "prepare_script.py"
    script.write_text(textwrap.dedent(f"""
        from tokensmith import Tokenizer, data
        print("TOP-LEVEL-MARKER", flush=True)
        tok = Tokenizer.from_file({str(GPT2)!r})
        result = data.prepare([{str(src)!r}], tok, {str(tmp_path / "out")!r}, pack=False, num_workers=2, progress=False)
        print("EXAMPLES", result.examples, flush=True)
    """))
    done = subprocess.run([sys.executable, str(script)], env=env_with_package(), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("TOP-LEVEL-MARKER") == 1
    assert "EXAMPLES 700" in done.stdout
    data.prepare([src], tok, tmp_path / "serial", pack=False, num_workers=1, progress=False)
    assert rows(tmp_path / "out") == rows(tmp_path / "serial")


def test_inside_a_daemonic_process(tok, tmp_path):
    import _worker_helpers

    src = write_jsonl(tmp_path / "train.jsonl", small_records(600))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        examples, count = pool.apply(_worker_helpers.prepare_in_this_process, (str(src), str(GPT2), str(tmp_path / "out")))
    assert examples == 600 and count == 600
    data.prepare([src], tok, tmp_path / "serial", pack=False, num_workers=1, progress=False)
    assert rows(tmp_path / "out") == rows(tmp_path / "serial")


def test_default_worker_count_follows_cpu_affinity():
    code = textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from tokensmith.data import _workers
        print(_workers.available_cpus())
    """)
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    done = subprocess.run([sys.executable, "-c", code], env=env_with_package(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_prepare_uses_available_cpus_by_default(tok, tmp_path, monkeypatch):
    from tokensmith.data import _workers

    started = []

    class Started(Exception):
        pass

    class RecordingPool:
        def __init__(self, function, state, workers):
            started.append(workers)
            raise Started

    monkeypatch.setattr(_workers, "WorkerPool", RecordingPool)
    monkeypatch.setattr(_workers, "available_cpus", lambda: 3)
    with pytest.raises(Started):
        data.prepare(small_records(10), tok, tmp_path / "a", progress=False)
    assert started == [3]
    monkeypatch.setattr(_workers, "available_cpus", lambda: 1)
    assert data.prepare(small_records(10), tok, tmp_path / "b", progress=False).examples == 10
    assert started == [3]  # one CPU: encoded in this process, no pool
    # Small files: encoded in this process too (workers would cost more than they give).
    monkeypatch.setattr(_workers, "available_cpus", lambda: 3)
    src = tmp_path / "small.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in small_records(10)))
    assert data.prepare([src], tok, tmp_path / "c", progress=False).examples == 10
    assert started == [3]
    with pytest.raises(Started):  # unless asked for
        data.prepare([src], tok, tmp_path / "d", progress=False, num_workers=2)
    assert started == [3, 2]


@linux_only
def test_dead_worker_raises_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "dying.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        import _worker_helpers
        from tokensmith import Tokenizer, data

        if __name__ == "__main__":  # not needed any more, but the subject here is the dead worker
            # (tokensmith.data.prepare is also the name of the function)
            sys.modules["tokensmith.data.prepare"].ExampleEncoder = _worker_helpers.DyingEncoder
            tok = Tokenizer.from_file({str(GPT2)!r})
            records = [{{"text": f"record {{i}}"}} for i in range(3000)]
            records[1500] = {{"text": "die"}}
            try:
                data.prepare(records, tok, {str(out)!r}, num_workers=2, progress=False)
            except data.DataError as e:
                print("RAISED", e, flush=True)
            print("CHILDREN", _worker_helpers.children_of(os.getpid()), flush=True)
    """))
    # A hang (the pool waiting forever for the dead worker's answer) fails here.
    done = subprocess.run([sys.executable, str(script)], env=env_with_package(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "RAISED worker process" in done.stdout and "exit code 3" in done.stdout, done.stdout + done.stderr
    assert "<iterable>:1281 to <iterable>:1536" in done.stdout  # the chunk holding record 1501
    assert "CHILDREN []" in done.stdout
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


@linux_only
def test_a_dead_worker_keeps_the_work_for_a_resume(tmp_path):
    """A worker the system kills (out of memory) is not the data's fault: the shards done
    are kept, and a resume (here with one worker) writes what one run writes."""
    tok = ts.Tokenizer.from_file(GPT2)
    src = tmp_path / "records.jsonl"
    # The worker dies on record 5000, which is sent to it only once 3,000 or more are written
    # (at most 8 chunks of 256 records are in flight): there is work to keep.
    src.write_text("".join(json.dumps({"text": "die" if i == 5000 else f"record {i}"}) + "\n" for i in range(6000)))
    options = dict(pack=False, rows_per_shard=100, progress=False)
    whole = data.prepare([src], tok, tmp_path / "whole", num_workers=1, **options)
    out = tmp_path / "out"
    script = tmp_path / "dying.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import _worker_helpers
        from tokensmith import Tokenizer, data

        sys.modules["tokensmith.data.prepare"].ExampleEncoder = _worker_helpers.DyingEncoder
        tok = Tokenizer.from_file({str(GPT2)!r})
        data.prepare([{str(src)!r}], tok, {str(out)!r}, num_workers=2, pack=False, rows_per_shard=100, progress=False)
    """))
    done = subprocess.run([sys.executable, str(script)], env=env_with_package(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "worker process" in done.stderr and "--resume" in done.stderr, done.stderr
    state = json.loads((tmp_path / ".out.partial" / "resume.json").read_text())
    assert 3000 <= state["records"] <= 5000
    resumed = data.prepare([src], tok, out, num_workers=1, resume=True, **options)
    assert resumed.rows == whole.rows == 6000
    for name in whole_files(tmp_path / "whole"):
        assert (tmp_path / "whole" / name).read_bytes() == (out / name).read_bytes(), name


def whole_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "meta.json")


@linux_only
@pytest.mark.parametrize("how", ["num_workers=2", "block_size=64"])  # worker processes; the encoding thread
def test_interrupt_terminates_workers(tmp_path, how):
    marker = f"TOKENSMITH_TEST_{uuid.uuid4().hex}"
    out = tmp_path / "out"
    script = tmp_path / "endless.py"
    script.write_text(textwrap.dedent(f"""
        import itertools
        import signal
        from tokensmith import Tokenizer, data

        # A test run started in the background (`cmd &` in a script) ignores SIGINT, and so
        # would this child: the Ctrl+C below then did nothing, and the test timed out.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def records():
            for i in itertools.count():
                if i == 3000:
                    print("READY", flush=True)
                yield {{"text": f"record {{i}} " * 20}}

        tok = Tokenizer.from_file({str(GPT2)!r})
        data.prepare(records(), tok, {str(out)!r}, {how}, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=env_with_package(**{marker: "1"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        workers = [pid for pid in processes_with_marker(marker) if pid != proc.pid]
        assert len(workers) == (2 if how == "num_workers=2" else 0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    # Python ends an uncaught KeyboardInterrupt by SIGINT. A pool cleaned up only at interpreter
    # shutdown aborted instead (SIGABRT, "Fatal Python error"), about one time in seven.
    assert "KeyboardInterrupt" in err and "Fatal Python error" not in err
    assert proc.returncode == -signal.SIGINT
    assert processes_with_marker(marker) == []
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


@linux_only
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_workers_are_stopped_before_an_error_leaves_prepare(tok, tmp_path, monkeypatch, error):
    """An error while writing (Ctrl+C, a full disk) leaves prepare with its traceback holding the
    generator that owns the pool: prepare must close it, not the garbage collector later."""
    import importlib

    # The module: `tokensmith.data.prepare` read as an attribute is the function.
    prepare_module = importlib.import_module("tokensmith.data.prepare")

    marker = f"TOKENSMITH_TEST_{uuid.uuid4().hex}"
    monkeypatch.setenv(marker, "1")  # the workers' environment, not this process's /proc entry
    seen = []

    def write_a_few(examples, *args):
        for example in examples:
            seen.append(example)
            if len(seen) == 2000:
                assert len(processes_with_marker(marker)) == 2
                raise error("stopped while writing")

    monkeypatch.setattr(prepare_module, "_write_examples", write_a_few)
    records = ({"text": f"record {i} " * 20} for i in range(100_000))
    with pytest.raises(error, match="stopped while writing") as caught:
        data.prepare(records, tok, tmp_path / "out", num_workers=2, progress=False)
    # `caught` holds the traceback, as an uncaught Ctrl+C does until the interpreter ends
    assert processes_with_marker(marker) == [], caught.value
    assert not (tmp_path / "out").exists()


def test_order_kept_across_chunks_with_records_larger_than_pipe_buffers(tok, tmp_path):
    records = small_records(1500)
    for i in range(0, len(records), 97):
        records[i] = {"text": f"big record {i} " + "the quick brown fox jumps over the lazy dog " * 4700}  # ~200 KB
    src = write_jsonl(tmp_path / "train.jsonl", records)
    parallel = data.prepare([src], tok, tmp_path / "parallel", pack=False, num_workers=2, progress=False)
    data.prepare([src], tok, tmp_path / "serial", pack=False, num_workers=1, progress=False)
    assert parallel.examples == len(records)
    assert rows(tmp_path / "parallel") == rows(tmp_path / "serial")

    from _worker_helpers import reverse_slowly
    from tokensmith.data._workers import WorkerPool

    payloads = [os.urandom(1 << 20) for _ in range(3)]  # results and items of 1 MB both ways
    items = [(i, payloads[i % 3]) for i in range(24)]
    with WorkerPool(reverse_slowly, [0.05, 0.0, 0.02, 0.0, 0.01], 2, max_in_flight=6) as pool:
        assert list(pool.imap(items)) == [(i, p[::-1]) for i, p in items]


def test_exception_in_a_worker_is_raised_and_the_pool_reaped():
    from _worker_helpers import reverse_slowly
    from tokensmith.data._workers import WorkerPool

    pool = WorkerPool(reverse_slowly, [0.0], 2)
    with pytest.raises(ZeroDivisionError, match="item 3") as caught:
        list(pool.imap([(i, b"raise" if i == 3 else b"x") for i in range(8)]))
    assert "reverse_slowly" in str(caught.value.__cause__)  # the worker's traceback
    assert all(w.process.returncode is not None for w in pool._workers)  # killed and reaped
