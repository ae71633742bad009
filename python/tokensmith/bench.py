"""Encoding speed side by side: tokensmith and every installed peer, on one tokenizer and text.

    tokensmith bench --tokenizer model_dir --corpus a.txt b.txt [--png speed.png]

Each corpus is cut into documents at blank lines. Four ways of calling are timed:

- ``per-doc``: one ``encode`` call per document, the way ``datasets.map`` and most pipelines
  call a tokenizer, on one pinned core; the same documents in every round, so each round
  after the first meets text the library has seen;
- ``first-pass``: the same calls on documents the library has never seen, as one pass over a
  dataset meets them: each round loads every library afresh, warms it on the first fifth of
  the documents and times one pass over the rest. Caches of whole texts or lines, which make
  ``per-doc`` several times faster for some peers, do not help here;
- ``whole``: the whole corpus in one call, on one pinned core, as a pipeline meets a long
  document: once. Each call (the untimed one before each timed one, below, too) is on the
  corpus rotated to start at another of its line breaks: the same words, so caches of pieces
  are as warm as after the text itself, but never a text the library has encoded before, and
  a new ``str`` built for this library alone. fastokens remembers texts it has encoded: on the
  English handbook (Llama 3) it ran at 352 MB/s on a rotation it had encoded two calls before
  and at 234 on one it had not (medians of 12). And CPython keeps the UTF-8 that a library
  asks of a ``str`` inside it: a library timed on a ``str`` that another one has encoded skips
  that work (0.6 ms of the 1.2 MB handbook, 1.1 ms of 2 MB of Python: 12-14% of tokensmith's
  time);
- ``batch``: each library's own multi-threaded batch call over the documents, on every core
  this process may use.

Rounds are interleaved (every library once per round) and each library's best round counts,
so that a slow moment of a shared machine hits all of them alike. In ``per-doc``, ``whole``
and ``batch`` each timed call follows an untimed one of the same library: otherwise a library
pays for the caches the one before it filled with its own tables (measured, Llama 3, 2 MB of
English in one call: fastokens ran at 91-141 MB/s right after ``tokenizers`` and at 189-207
right after tokensmith; tokensmith at 107-135 and 156-162 the same way). Speed only counts for the
right answer: every library's ids are compared with the reference's (Hugging Face ``tokenizers``
when installed, else tokensmith) document by document, and its mismatching documents are
reported beside its speed.

Peers are loaded from the same local files, never downloaded. One that cannot load the
tokenizer is skipped with its reason.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Sequence

from ._tokenizer import Tokenizer

#: Peers in report order.
PEERS = ["tiktoken", "tokenizers", "gigatoken", "fastokens", "kitoken", "tokie", "bpe_openai", "tokendagger"]
MODES = ["per-doc", "first-pass", "whole", "batch"]


class Unsupported(Exception):
    """A peer that cannot encode this tokenizer (or is not installed); the message says why."""


@dataclass
class Encoder:
    name: str
    version: str
    #: One document as ordinary text: no BOS/EOS, special-token strings as plain text where
    #: the library allows it (``note`` says where it does not).
    encode: Callable[[str], list[int]]
    #: The library's own multi-threaded batch call, or None.
    encode_batch: Callable[[list[str]], list[list[int]]] | None
    note: str = ""
    #: The same library loaded again, with nothing cached (set by `load`).
    fresh: Callable[[], "Encoder"] | None = None


@dataclass
class Source:
    """The tokenizer under test: its tokenizer.json, and for a tiktoken encoding its rank file
    (``rank_file``, ``pattern``, ``special_tokens``), which some peers load instead."""

    tokenizer_json: Path
    rank_file: Path | None = None
    pattern: str | None = None
    special_tokens: dict[str, int] = field(default_factory=dict)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError as e:
        raise Unsupported("not installed") from e


def _tokensmith(src: Source) -> Encoder:
    from . import __version__

    tok = Tokenizer.from_file(src.tokenizer_json)
    # Keywords written out, as a user writes them: a `**options` call into a method written
    # in Python costs CPython 3.11 about 250 ns more (a tenth of a short document's encode),
    # where one into a method of an extension module costs 10 ns more.
    return Encoder(
        "tokensmith",
        __version__,
        lambda text: tok.encode(text, add_special_tokens=False, special="text"),
        lambda texts: tok.encode_batch(texts, add_special_tokens=False, special="text"),
    )


def _gpt2_byte_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: printable char -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tiktoken_encoding(src: Source):
    """A tiktoken ``Encoding`` of the tokenizer: from its rank file, or from a byte-level
    tokenizer.json whose ids are its ranks and whose first split pattern is tiktoken's
    (Llama 3, Qwen2: tiktoken-style BPEs). tiktoken has no normalizer (Qwen2's NFC)."""
    _version("tiktoken")
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    if src.rank_file is not None:
        return tiktoken.Encoding(
            name=src.rank_file.stem,
            pat_str=src.pattern,
            mergeable_ranks=load_tiktoken_bpe(str(src.rank_file)),
            special_tokens=src.special_tokens,
        )
    spec = json.loads(src.tokenizer_json.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    splits = [p for p in pre.get("pretokenizers", [pre]) if p.get("type") == "Split"]
    if spec["model"].get("type") != "BPE" or not splits or "Regex" not in splits[0]["pattern"]:
        raise Unsupported("not a byte-level BPE with a split pattern")
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    decoder = _gpt2_byte_decoder()
    ranks = {
        bytes(decoder[c] for c in token): id
        for token, id in spec["model"]["vocab"].items()
        if token not in added and all(c in decoder for c in token)
    }
    return tiktoken.Encoding(
        name=src.tokenizer_json.parent.name,
        pat_str=splits[0]["pattern"]["Regex"],
        mergeable_ranks=ranks,
        special_tokens=added,
    )


def _tiktoken(src: Source) -> Encoder:
    enc = tiktoken_encoding(src)
    return Encoder(
        "tiktoken",
        _version("tiktoken"),
        enc.encode_ordinary,
        lambda texts: enc.encode_ordinary_batch(texts, num_threads=len(os.sched_getaffinity(0))),
    )


def _tokenizers(src: Source) -> Encoder:
    v = _version("tokenizers")
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(src.tokenizer_json))
    tok.encode_special_tokens = True
    return Encoder(
        "tokenizers",
        v,
        lambda text: tok.encode(text, add_special_tokens=False).ids,
        lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
    )


def _gigatoken(src: Source) -> Encoder:
    v = _version("gigatoken")
    import gigatoken

    tok = gigatoken.Tokenizer(str(src.tokenizer_json))  # a path, never a Hub name
    return Encoder(
        "gigatoken",
        v,
        # Its encode returns a numpy array: .tolist() is the cheapest way to the list others return.
        lambda text: tok.encode(text).tolist(),
        tok.encode_batch_list,
        "matches special tokens in text (no switch)",
    )


def _fastokens(src: Source) -> Encoder:
    v = _version("fastokens")
    import fastokens

    try:
        tok = fastokens.Tokenizer.from_file(str(src.tokenizer_json))
    except ValueError as e:
        if src.rank_file is None:
            raise Unsupported(str(e)) from e
        # It reads no tokenizer.json of a tiktoken encoding (o200k_base), but its rank file.
        tok = fastokens.Tokenizer.from_tiktoken(
            str(src.rank_file), pattern=src.pattern, special_tokens=src.special_tokens
        )
    return Encoder(
        "fastokens",
        v,
        lambda text: tok.encode(text, add_special_tokens=False, split_special_tokens=True).ids,
        lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False, split_special_tokens=True)],
    )


def _kitoken(src: Source) -> Encoder:
    v = _version("kitoken")
    import kitoken

    tok = kitoken.Kitoken.from_tokenizers_file(str(src.tokenizer_json))
    return Encoder(
        "kitoken",
        v,
        lambda text: tok.encode(text, False),
        None,  # its encode_all is a sequential loop
        "cuts special-token strings out as pieces of their own even when not encoding them",
    )


def _tokie(src: Source) -> Encoder:
    v = _version("tokie")
    import tokie

    tok = tokie.Tokenizer.from_json(str(src.tokenizer_json))
    return Encoder(
        "tokie",
        v,
        lambda text: tok.encode(text, add_special_tokens=False).ids,
        lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
        "matches special tokens in text (no switch)",
    )


def _bpe_openai(src: Source) -> Encoder:
    v = _version("bpe-openai")
    from bpe_openai import _bindings

    name = src.rank_file.stem if src.rank_file is not None else None
    if name not in _bindings.supported_encodings():
        raise Unsupported(f"only its built-in encodings ({', '.join(_bindings.supported_encodings())})")
    # The Rust binding itself: the Python wrapper re-encodes and copies every text.
    return Encoder("bpe_openai", v, _bindings.tokenizer_for_encoding(name).encode, None)


def _tokendagger(src: Source) -> Encoder:
    v = _version("tokendagger")
    import tokendagger

    base = tiktoken_encoding(src)
    enc = tokendagger.Encoding(
        base.name, pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks, special_tokens=base._special_tokens
    )
    return Encoder("tokendagger", v, enc.encode_ordinary, None)


_LOADERS: dict[str, Callable[[Source], Encoder]] = {
    "tokensmith": _tokensmith,
    "tiktoken": _tiktoken,
    "tokenizers": _tokenizers,
    "gigatoken": _gigatoken,
    "fastokens": _fastokens,
    "kitoken": _kitoken,
    "tokie": _tokie,
    "bpe_openai": _bpe_openai,
    "tokendagger": _tokendagger,
}


def load(names: Sequence[str], src: Source) -> tuple[list[Encoder], dict[str, str]]:
    """tokensmith and the named peers that load `src`, and why the others did not."""
    loaded, skipped = [], {}
    for name in ["tokensmith", *[n for n in names if n != "tokensmith"]]:
        if name not in _LOADERS:
            raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
        try:
            encoder = _LOADERS[name](src)
            encoder.fresh = lambda name=name: _LOADERS[name](src)
            loaded.append(encoder)
        except Unsupported as e:
            skipped[name] = str(e)
        except Exception as e:  # a peer's own loading error: report it, race the others
            skipped[name] = f"{type(e).__name__}: {e}"
    return loaded, skipped


def documents(text: str) -> list[str]:
    """A corpus cut into documents at blank lines."""
    return [d for d in text.split("\n\n") if d.strip()]


@dataclass
class Result:
    library: str
    corpus: str
    mode: str
    bytes: int
    seconds: float
    #: Documents (the whole text counts as one) whose ids differ from the reference's.
    mismatches: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds


def _pin(cpus: set[int]) -> None:
    """Confines every thread of this process to `cpus`: `sched_setaffinity(0)` moves only the
    calling thread, and a peer's worker threads (started by an earlier batch) would go on
    running a "single-core" call on the other cores."""
    tasks = Path("/proc/self/task")
    for tid in [int(t) for t in os.listdir(tasks)] if tasks.is_dir() else [0]:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def _timed(run: Callable[[], object]) -> float:
    return _timed_output(run)[0]


def _timed_output(run: Callable[[], object]) -> tuple[float, object]:
    gc.disable()
    try:
        start = time.perf_counter()
        out = run()
        return time.perf_counter() - start, out
    finally:
        gc.enable()


def _first_pass(encoders: Sequence[Encoder], docs: list[str], expected: list, rounds: int,
                progress: Callable[[str], None]) -> tuple[dict[str, float], dict[str, int]]:
    """Best seconds per library over `rounds` passes over the last four fifths of `docs`, each
    by the library loaded afresh and warmed on the first fifth, and its documents there that
    differ from `expected` (the reference's ids of all of `docs`)."""
    cut = len(docs) // 5
    warm, docs = docs[:cut], docs[cut:]
    best, wrong = {e.name: float("inf") for e in encoders}, {}
    for r in range(rounds):
        progress(f"first pass: round {r + 1}/{rounds}")
        for e in encoders:
            f = e.fresh() if e.fresh is not None else e
            for d in warm:
                f.encode(d)
            seconds, out = _timed_output(lambda: [f.encode(d) for d in docs])
            best[e.name] = min(best[e.name], seconds)
            wrong.setdefault(e.name, sum(a != b for a, b in zip(out, expected[cut:])))
            del f
    return best, wrong


def _call(e: Encoder, mode: str, text: str, docs: list[str]) -> Callable[[], list] | None:
    """What one timed run of `e` does in `mode` (None: it has no batch call)."""
    if mode == "per-doc":
        return lambda: [e.encode(d) for d in docs]
    if mode == "whole":
        return lambda: [e.encode(text)]
    return (lambda: e.encode_batch(docs)) if e.encode_batch else None


def rotation_starts(text: str, n: int) -> list[int]:
    """`n` places spread over `text`, none at its start, from which ``whole`` times it
    `rotated`: the first line start after each (n + 1)th of it, or that place itself where
    no line starts after it that no place before has taken (a text of few lines)."""
    starts: list[int] = []
    for k in range(1, n + 1):
        at = len(text) * k // (n + 1)
        line = text.find("\n", at) + 1
        starts.append(line if 0 < line < len(text) and line not in starts else at)
    if len(set(starts) - {0}) < n:
        raise ValueError(f"timing a whole text needs {n + 1} chars or more; this one has {len(text)}")
    return starts


def rotated(text: str, at: int) -> str:
    """`text` from `at` on, then the rest: a new ``str`` at each call."""
    return text[at:] + text[:at]


def race(
    encoders: Sequence[Encoder],
    corpora: dict[str, str],
    *,
    modes: Sequence[str] = MODES,
    rounds: int = 3,
    core: int | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Result]:
    """Times every encoder on every corpus in every mode; `core`: the core that single-thread
    modes are pinned to (default: the first this process may use)."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    reference = next((e for e in encoders if e.name == "tokenizers"), encoders[0])
    cores = os.sched_getaffinity(0)
    results = []
    try:
        # Batch first, on every core: pinning later would leave thread pools one thread wide.
        for mode in sorted(modes, key=lambda m: m != "batch"):
            if mode != "batch":
                _pin({min(cores) if core is None else core})
            for corpus, text in corpora.items():
                docs = documents(text)
                size = len(text.encode())
                if mode == "whole":
                    expected = [reference.encode(text)]
                else:
                    expected = [reference.encode(d) for d in docs]
                if mode == "first-pass":
                    best, wrong = _first_pass(encoders, docs, expected, rounds,
                                              lambda m: progress(f"{corpus} {m}"))
                    size = sum(len(d.encode()) for d in docs[len(docs) // 5:])
                    results += [Result(e.name, corpus, mode, size, best[e.name], wrong[e.name]) for e in encoders]
                    continue
                runs = {e.name: (e, run) for e in encoders if (run := _call(e, mode, text, docs)) is not None}
                best = {name: float("inf") for name in runs}
                wrong = {}
                for name, (_, run) in runs.items():
                    out = run()
                    wrong[name] = sum(a != b for a, b in zip(out, expected))
                starts = rotation_starts(text, 2 * rounds) if mode == "whole" else []
                for r in range(rounds):
                    progress(f"{corpus} {mode}: round {r + 1}/{rounds}")
                    for name, (e, run) in runs.items():
                        # Untimed first: the caches hold this library's tables, not the last one's.
                        if mode == "whole":
                            warm, timed = (rotated(text, at) for at in starts[2 * r : 2 * r + 2])
                            e.encode(warm)
                            seconds = _timed(lambda: e.encode(timed))
                        else:
                            run()
                            seconds = _timed(run)
                        best[name] = min(best[name], seconds)
                results += [Result(name, corpus, mode, size, best[name], wrong[name]) for name in runs]
    finally:
        _pin(cores)
    return results


def table(results: Sequence[Result]) -> str:
    """A Markdown table: MB/s per library, and tokensmith's speed over the fastest peer that
    got every document right (peers with wrong documents are shown, not counted)."""
    libraries = list(dict.fromkeys(r.library for r in results))
    rows: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        rows.setdefault((r.mode, r.corpus), {})[r.library] = r
    head = ["mode", "text", *[f"{lib} MB/s" for lib in libraries], "vs fastest exact peer"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for (mode, corpus), by_lib in rows.items():
        cells = []
        for lib in libraries:
            r = by_lib.get(lib)
            cells.append("n/a" if r is None else f"{r.mb_per_s:.1f}" + (f" ({r.mismatches} wrong)" if r.mismatches else ""))
        ours = by_lib.get("tokensmith")
        exact = [r for lib, r in by_lib.items() if lib != "tokensmith" and r.mismatches == 0]
        if ours and exact:
            fastest = max(exact, key=lambda r: r.mb_per_s)
            ratio = f"{ours.mb_per_s / fastest.mb_per_s:.2f}x {fastest.library}"
        else:
            ratio = "n/a"
        lines.append(f"| {mode} | {corpus} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def chart(results: Sequence[Result], path: str | Path) -> None:
    """A bar chart of MB/s per library, one group per (mode, text); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the chart needs matplotlib: pip install 'tokensmith[bench]'") from e
    libraries = list(dict.fromkeys(r.library for r in results))
    groups = list(dict.fromkeys((r.mode, r.corpus) for r in results))
    speed = {(r.library, r.mode, r.corpus): r for r in results}
    width = 0.8 / len(libraries)
    fig, ax = plt.subplots(figsize=(min(16, 2 + 0.12 * len(groups) * len(libraries)), 4.5))
    for i, lib in enumerate(libraries):
        xs, ys, hatch = [], [], []
        for g, (mode, corpus) in enumerate(groups):
            r = speed.get((lib, mode, corpus))
            if r is not None:
                xs.append(g + i * width)
                ys.append(r.mb_per_s)
                hatch.append("//" if r.mismatches else "")
        bars = ax.bar(xs, ys, width, label=lib)
        for bar, h in zip(bars, hatch):
            bar.set_hatch(h)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{corpus}\n{mode}" for mode, corpus in groups])
    ax.set_ylabel("MB/s (hatched: some documents wrong)")
    ax.legend(fontsize="small", ncol=len(libraries), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
