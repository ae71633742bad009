"""``prepare(..., ray=ADDRESS)`` / ``tokensmith prepare --ray ADDRESS`` (issue 14) on a real
two-node Ray cluster that this module starts on this machine (``ray start --head`` and a
second ``ray start --address``) and stops. The reference is a local run of the same job: the
Ray run must write the same bytes and the same ``meta.json`` counts."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zstandard
from conftest import DATA, require_data
from test_data import CHATS, model_dir, write_jsonl

import tokensmith as ts
from tokensmith import data

#: The cluster and its driver agree to run without token authentication (a test cluster on
#: one machine; Ray's default would want a token file shared by every process), and send
#: no usage statistics.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    """One Ray node, in its own process group: stopping it stops everything it started
    (``ray stop`` would stop every Ray on the machine, other tests' too)."""
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": os.pathsep.join(sys.path)}  # the nodes import this tokensmith
    common = ["--block", "--num-cpus", "2", "--object-store-memory", str(200 << 20), "--disable-usage-stats",
              "--dashboard-agent-listen-port", str(_free_port())]
    return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args, *common], env=env, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-node, four-CPU Ray cluster on this machine."""
    temp = Path(tempfile.mkdtemp(prefix="tsray", dir="/tmp"))  # short: Ray's socket paths must fit
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [_ray_start(["--head", "--port", str(port), "--temp-dir", str(temp),
                         "--include-dashboard", "false", "--dashboard-port", str(_free_port())], temp / "head.log")]
    try:
        nodes.append(_ray_start(["--address", address], temp / "node.log"))
        deadline = time.monotonic() + 120
        while True:  # the second node joins a few seconds after its `ray start`
            alive = 0 if any(n.poll() is not None for n in nodes) else _alive_nodes(address)
            if alive == 2:
                break
            if time.monotonic() > deadline or any(n.poll() is not None for n in nodes):
                logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in temp.glob("*.log"))
                pytest.fail(f"the Ray cluster did not come up ({alive} nodes):\n{logs}")
            time.sleep(1)
        yield address
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)


def _alive_nodes(address: str) -> int:
    code = f"import ray; ray.init(address={address!r}, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    try:
        run = subprocess.run([sys.executable, "-c", code], env={**os.environ, **RAY_ENV}, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return 0
    return int(run.stdout.split()[-1]) if run.returncode == 0 and run.stdout.split() else 0


def _stop(node: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.wait(wait)
            time.sleep(1)  # the rest of the group (raylet, workers) goes down with it
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(node.pid, signal.SIGKILL)  # anything left in the group
    except ProcessLookupError:
        pass


#: ``prepare`` on the cluster, run in a fresh process: Ray keeps settings per process (a
#: local ``ray.init()`` earlier in a test process turns on token authentication for good),
#: so a test process cannot be trusted to join this cluster. Blocks of 16 kB spread the
#: small test files over every encoder of both nodes (and out of order, unless the run
#: keeps it). It counts the rows the cluster sends (one per record read and encoded there),
#: and with ``die_after_records`` it is killed (as by the system) when about to save its
#: second state past that many records: one is on disk, and the files hold more than it says.
DRIVER = """
import contextlib, dataclasses, importlib, json, os, sys
import tokensmith as ts
from tokensmith import data
from tokensmith.data import _ray
_ray._BLOCK_BYTES = 16 << 10
args = json.loads(sys.argv[1])
tok = ts.Tokenizer.from_pretrained(args.pop("tokenizer"))
rows, encoded = 0, _ray.encoded

def counted(*a, **k):
    global rows
    with contextlib.closing(encoded(*a, **k)) as tables:
        for table in tables:
            rows += table.num_rows
            yield table

_ray.encoded = counted
die_after = args.pop("die_after_records", None)
prepare_module = importlib.import_module("tokensmith.data.prepare")
save, past = prepare_module._ResumeState.save, []

def save_then_die(self):
    if die_after is not None and self.records > die_after:
        past.append(self.records)
        if len(past) == 2:
            self.writer.state()  # token files: what was written since the last state, on disk
            os._exit(9)
    save(self)

prepare_module._ResumeState.save = save_then_die
try:
    result = data.prepare(args.pop("inputs"), tok, args.pop("out"), **args)
except (data.DataError, ValueError) as e:
    print(json.dumps({type(e).__name__: str(e)}))
else:
    print(json.dumps({**dataclasses.asdict(result), "records_encoded": rows}))
"""


def run_driver(cluster: str, inputs: list[Path], tokenizer: Path, out: Path, **options) -> subprocess.CompletedProcess:
    args = {"inputs": [str(p) for p in inputs], "tokenizer": str(tokenizer), "out": str(out), "ray": cluster, **options}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, **RAY_ENV}, timeout=300)


def prepare_on_cluster(cluster: str, inputs: list[Path], tokenizer: Path, out: Path, **options) -> data.PrepareResult:
    """``prepare`` on the cluster; the result also has ``records_encoded``, the rows the cluster sent."""
    run = run_driver(cluster, inputs, tokenizer, out, **options)
    assert run.returncode == 0, run.stderr[-5000:]
    result = json.loads(run.stdout.splitlines()[-1])
    for error in (data.DataError, ValueError):
        if error.__name__ in result:
            raise error(result[error.__name__])
    records_encoded = result.pop("records_encoded")
    result = data.PrepareResult(**result)
    result.records_encoded = records_encoded  # type: ignore[attr-defined]
    return result


def same_output(local: Path, remote: Path) -> None:
    """Every file byte for byte; ``meta.json`` equal but for the folder and the time."""
    names = sorted(p.name for p in local.iterdir())
    assert sorted(p.name for p in remote.iterdir()) == names
    for name in names:
        if name != "meta.json":
            assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    meta = [json.loads((folder / "meta.json").read_text(encoding="utf-8")) for folder in (local, remote)]
    for m in meta:
        del m["out_dir"], m["seconds"]
    assert meta[0] == meta[1]


def documents() -> list[str]:
    require_data()
    docs = []
    for name in ("en/debian-handbook.en-US.txt", "zh/debian-handbook.zh-CN.txt"):
        text = (DATA / "corpora" / name).read_text(encoding="utf-8")
        docs += [d.strip("\n") for d in text.split("\n\n") if d.strip()][300:700]
    return docs


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory) -> list[Path]:
    """SFT records of several shapes over two files, with an unreadable line, a chat with no
    reply and a record of no known shape."""
    folder = tmp_path_factory.mktemp("ray-chats")
    docs = documents()
    chats = [[{"role": "user", "content": q[:300]}, {"role": "assistant", "content": a}] for q, a in zip(docs[::2], docs[1::2])]
    first = [{"messages": c} for c in chats[:200]] + [{"messages": CHATS[0][:1]}, {"bogus": 1}]
    lines = [json.dumps(r, ensure_ascii=False) for r in first]
    lines.insert(50, "not json")
    (folder / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    second = [{"prompt": c[0]["content"], "response": c[1]["content"]} for c in chats[200:]]
    (folder / "b.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in second), encoding="utf-8")
    return [folder / "a.jsonl", folder / "b.jsonl"]


#: Packed rows of the chat files, in shards of a few rows.
CHAT_OPTIONS = {"max_length": 1024, "rows_per_shard": 10}


def test_chat_data_on_the_cluster_is_the_local_run(cluster, chat_files, tmp_path_factory, tmp_path):
    """Packed rows, skips and counts as a local run's."""
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    local = data.prepare(chat_files, tok, tmp_path / "local", num_workers=1, progress=False, **CHAT_OPTIONS)
    remote = prepare_on_cluster(cluster, chat_files, folder, tmp_path / "ray", progress=False, **CHAT_OPTIONS)
    assert local.skipped_reasons == {"unreadable line": 1, "no assistant reply": 1, "malformed record": 1}
    assert local.rows > 30  # several shards
    assert (remote.examples, remote.rows, remote.tokens, remote.skipped) == (local.examples, local.rows, local.tokens, local.skipped)
    assert remote.records_encoded == local.examples + local.skipped
    same_output(tmp_path / "local", tmp_path / "ray")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Pre-training text in a .txt and a .jsonl.zst with an unreadable line and a record the
    tokenizer refuses (a lone surrogate)."""
    docs = documents()
    folder = tmp_path_factory.mktemp("ray-corpus")
    (folder / "a.txt").write_text("\n\n".join(docs[:500]) + "\n", encoding="utf-8")
    lines = [json.dumps({"text": d}, ensure_ascii=False) for d in docs[500:]]
    lines[30:30] = ["not json", '{"text": "a \\ud800 b"}']
    (folder / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    return [folder / "a.txt", folder / "b.jsonl.zst"]


@pytest.mark.parametrize("format, options", [("tokens", []), ("parquet", ["--block-size", "256"])])
def test_token_streams_on_the_cluster_are_the_local_run(cluster, corpus, format, options, tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "llama3.1")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    block = {"block_size": int(options[1])} if options else {}
    local = data.prepare(corpus, tok, tmp_path / "local", format=format, progress=False, **block)
    remote = prepare_on_cluster(cluster, corpus, folder, tmp_path / "ray", format=format, progress=False, **block)
    assert local.skipped_reasons == {"unreadable line": 1, "malformed record": 1}
    assert (remote.examples, remote.tokens) == (local.examples, local.tokens)
    same_output(tmp_path / "local", tmp_path / "ray")


def test_cli_megatron_on_the_cluster_is_the_local_run(cluster, corpus, tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    runs = {}
    for name, extra in (("local", []), ("ray", ["--ray", cluster])):
        runs[name] = subprocess.run(
            [sys.executable, "-m", "tokensmith.cli", "prepare", *map(str, corpus), "-t", str(folder),
             "-o", str(tmp_path / name), "--format", "megatron", *extra],
            capture_output=True, text=True, env={**os.environ, **RAY_ENV}, timeout=300,
        )
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
    wrote = {name: run.stdout.splitlines()[0].replace(str(tmp_path / name), "OUT") for name, run in runs.items()}
    assert wrote["ray"] == wrote["local"]  # "wrote N rows (N examples, N tokens ...) to OUT"
    print(runs["ray"].stderr)
    same_output(tmp_path / "local", tmp_path / "ray")


def test_a_chat_record_in_a_token_stream_fails_as_locally(cluster, tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [{"text": "one"}] * 300 + [{"messages": CHATS[0]}, {"text": "two"}]))
    with pytest.raises(data.DataError) as local:
        data.prepare([src], tok, tmp_path / "local", format="megatron", progress=False)
    with pytest.raises(data.DataError) as remote:
        prepare_on_cluster(cluster, [src], folder, tmp_path / "ray", format="megatron", progress=False)
    assert str(remote.value) == str(local.value) and f"{src}:301: a chat record" in str(local.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]  # nothing half-written


def test_a_file_cut_short_fails_as_locally(cluster, corpus, tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    packed = corpus[1].read_bytes()
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(packed[: len(packed) // 2])
    inputs = [corpus[0], cut]
    with pytest.raises(ValueError) as local:
        data.prepare(inputs, tok, tmp_path / "local", format="megatron", progress=False)
    with pytest.raises(ValueError) as remote:
        prepare_on_cluster(cluster, inputs, folder, tmp_path / "ray", format="megatron", progress=False)
    assert str(remote.value) == str(local.value) and str(local.value).startswith(f"{cut}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.jsonl.zst"]


@pytest.mark.parametrize("format", ["megatron", "parquet"])
def test_a_killed_run_on_the_cluster_resumes_to_the_same_bytes(format, cluster, corpus, chat_files, tmp_path_factory, tmp_path,
                                                               monkeypatch):
    """A Ray run killed mid-way, in its second file, goes on with resume=True (``--resume``):
    the cluster neither reads nor encodes the records done again (the first file, all done,
    gives nothing; the second skips its first records), and the files and ``meta.json`` are
    one local run's. A local run and a Ray run are the same job: the same folder goes on in a
    local run too, and a local run's on the cluster."""
    from tokensmith.data.sources import read_records

    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    inputs, options = (corpus, {"format": "megatron"}) if format == "megatron" else (chat_files, CHAT_OPTIONS)
    whole = data.prepare(inputs, tok, tmp_path / "whole", num_workers=1, progress=False, **options)
    records, first = whole.examples + whole.skipped, len(list(read_records(inputs[:1])))

    killed = run_driver(cluster, inputs, folder, tmp_path / "out", die_after_records=first, progress=False, **options)
    assert killed.returncode == 9, killed.stderr[-5000:]
    partial = tmp_path / ".out.partial"
    state = json.loads((partial / "resume.json").read_text())
    assert first < state["records"] < records and state["file_records"][0] == first and not (tmp_path / "out").exists()
    shutil.copytree(partial, tmp_path / ".local.partial")

    resumed = prepare_on_cluster(cluster, inputs, folder, tmp_path / "out", resume=True, progress=False, **options)
    assert resumed.records_encoded == records - state["records"]
    assert (resumed.examples, resumed.skipped, resumed.tokens) == (whole.examples, whole.skipped, whole.tokens)
    same_output(tmp_path / "whole", tmp_path / "out")
    assert not partial.exists()
    data.prepare(inputs, tok, tmp_path / "local", num_workers=1, progress=False, resume=True, **options)
    same_output(tmp_path / "whole", tmp_path / "local")
    if format == "parquet":
        return
    # And the other way: a local run stopped (Ctrl-C) in the second file goes on on the cluster.
    prepare_module = importlib.import_module("tokensmith.data.prepare")
    save, past = prepare_module._ResumeState.save, []

    def interrupt(self):
        past.extend([1] if self.records > first else [])
        if len(past) == 2:
            raise KeyboardInterrupt
        save(self)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(prepare_module, "_BATCH_CHARS", 5_000)
        m.setattr(prepare_module._ResumeState, "save", interrupt)
        data.prepare(inputs, tok, tmp_path / "again", progress=False, **options)
    state = json.loads((tmp_path / ".again.partial" / "resume.json").read_text())
    assert first < state["records"] < records
    again = prepare_on_cluster(cluster, inputs, folder, tmp_path / "again", resume=True, progress=False, **options)
    assert again.records_encoded == records - state["records"]
    same_output(tmp_path / "whole", tmp_path / "again")


def test_the_cluster_readers_leave_out_the_records_done_and_follow_parquet_files(tmp_path):
    """A Ray task's reader (``_read_files``, called here as Ray Data calls it): a file all
    done gives no row, a file partly done its records after those; each row says its file
    and how far the reading is, within a Parquet file too (not only at its end)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokensmith.data import _ray

    lines = write_jsonl(tmp_path / "a.jsonl", [{"text": str(i)} for i in range(10)])
    rows = tmp_path / "r.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(3000)]}), rows, row_group_size=1000)
    sizes = [lines.stat().st_size, rows.stat().st_size]

    def read(skip: list[int], records: list[int | None]) -> dict[str, list]:
        batch = pa.table({"path": [str(lines), str(rows)], "name": ["a.jsonl", "r.parquet"], "start": [0, sizes[0]],
                          "file": [0, 1], "skip": skip, "records": pa.array(records, pa.int64())})
        return pa.concat_tables(_ray._read_files(batch, doc_per_line=False, block_bytes=1 << 20)).to_pydict()

    every = read([0, 0], [None, None])
    assert every["file"] == [0] * 10 + [1] * 3000 and every["line"] == [*range(1, 11), *range(1, 3001)]
    in_parquet = every["read"][10:]
    assert in_parquet == sorted(in_parquet) and len(set(in_parquet)) >= 3 and in_parquet[-1] == sum(sizes)
    assert sizes[0] < in_parquet[0] < sum(sizes)
    resumed = read([10, 1500], [10, None])
    assert resumed["file"] == [1] * 1500 and resumed["line"] == list(range(1501, 3001))
    assert resumed["read"] == every["read"][1510:]


def test_ray_takes_files(tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="list of files"):
        data.prepare(iter([{"text": "hi"}]), tok, tmp_path / "out", format="megatron", ray=True)
    # `--ray` takes an optional address: an input file right after it is not one.
    run = subprocess.run([sys.executable, "-m", "tokensmith.cli", "prepare", "-t", str(folder),
                          "-o", str(tmp_path / "out"), "--ray", str(src), str(src)], capture_output=True, text=True)
    assert run.returncode == 2 and f"--ray took the input {src} for a cluster address" in run.stderr
