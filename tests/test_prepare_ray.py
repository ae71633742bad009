"""``prepare(..., ray=ADDRESS)`` / ``tokensmith prepare --ray ADDRESS`` (issue 14) on a real
two-node Ray cluster that this module starts on this machine (``ray start --head`` and a
second ``ray start --address``) and stops. The reference is a local run of the same job: the
Ray run must write the same bytes and the same ``meta.json`` counts."""

from __future__ import annotations

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
from test_data import CHATS, model_dir

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
#: keeps it).
DRIVER = """
import dataclasses, json, sys
import tokensmith as ts
from tokensmith import data
from tokensmith.data import _ray
_ray._BLOCK_BYTES = 16 << 10
args = json.loads(sys.argv[1])
tok = ts.Tokenizer.from_pretrained(args.pop("tokenizer"))
try:
    result = data.prepare(args.pop("inputs"), tok, args.pop("out"), **args)
except (data.DataError, ValueError) as e:
    print(json.dumps({type(e).__name__: str(e)}))
else:
    print(json.dumps(dataclasses.asdict(result)))
"""


def prepare_on_cluster(cluster: str, inputs: list[Path], tokenizer: Path, out: Path, **options) -> data.PrepareResult:
    args = {"inputs": [str(p) for p in inputs], "tokenizer": str(tokenizer), "out": str(out), "ray": cluster, **options}
    run = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], capture_output=True, text=True,
                         env={**os.environ, **RAY_ENV}, timeout=300)
    assert run.returncode == 0, run.stderr[-5000:]
    result = json.loads(run.stdout.splitlines()[-1])
    for error in (data.DataError, ValueError):
        if error.__name__ in result:
            raise error(result[error.__name__])
    return data.PrepareResult(**result)


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


def test_chat_data_on_the_cluster_is_the_local_run(cluster, tmp_path_factory, tmp_path):
    """SFT records of several shapes over two files, with unreadable lines, a chat with no
    reply and a record of no known shape: packed rows, skips and counts as a local run's."""
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    docs = documents()
    chats = [[{"role": "user", "content": q[:300]}, {"role": "assistant", "content": a}] for q, a in zip(docs[::2], docs[1::2])]
    first = [{"messages": c} for c in chats[:200]] + [{"messages": CHATS[0][:1]}, {"bogus": 1}]
    lines = [json.dumps(r, ensure_ascii=False) for r in first]
    lines.insert(50, "not json")
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    second = [{"prompt": c[0]["content"], "response": c[1]["content"]} for c in chats[200:]]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in second), encoding="utf-8")
    inputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    options = dict(max_length=1024, rows_per_shard=10, progress=False)
    local = data.prepare(inputs, tok, tmp_path / "local", num_workers=1, **options)
    remote = prepare_on_cluster(cluster, inputs, folder, tmp_path / "ray", **options)
    assert local.skipped_reasons == {"unreadable line": 1, "no assistant reply": 1, "malformed record": 1}
    assert local.rows > 30  # several shards
    assert (remote.examples, remote.rows, remote.tokens, remote.skipped) == (local.examples, local.rows, local.tokens, local.skipped)
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


def test_ray_takes_files_and_does_not_resume_yet(tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(str(folder))
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="list of files"):
        data.prepare(iter([{"text": "hi"}]), tok, tmp_path / "out", format="megatron", ray=True)
    with pytest.raises(ValueError, match="cannot resume yet"):
        data.prepare([src], tok, tmp_path / "out", format="megatron", ray=True, resume=True)
    # `--ray` takes an optional address: an input file right after it is not one.
    run = subprocess.run([sys.executable, "-m", "tokensmith.cli", "prepare", "-t", str(folder),
                          "-o", str(tmp_path / "out"), "--ray", str(src), str(src)], capture_output=True, text=True)
    assert run.returncode == 2 and f"--ray took the input {src} for a cluster address" in run.stderr
