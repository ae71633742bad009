"""The ``tokensmith`` command."""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import resources
from pathlib import Path

from . import Tokenizer
from .bench import MODES, PEERS
from .checkpoint import INIT_METHODS
from .vocab import MODEL_INIT_METHODS
from .data.lint import SPECIAL_LOOKING
from .errors import InvalidInputError, TokenizerError


SAMPLE = "Hello world!<|endoftext|> A model that sees </s> as text never stops: <|im_end|>"


def _default_tokenizer() -> Tokenizer:
    path = resources.files("tokensmith") / "assets" / "gpt2" / "tokenizer.json"
    with resources.as_file(path) as p:
        return Tokenizer.from_file(p)


def _load(spec: str | None) -> Tokenizer:
    if spec is None:
        return _default_tokenizer()
    path = Path(spec)
    if path.is_dir() or (path.name == "tokenizer.json" and (path.parent / "tokenizer_config.json").is_file()):
        # A model folder's tokenizer.json comes with its config: chat template, BOS/EOS.
        return Tokenizer.from_pretrained(path if path.is_dir() else path.parent)
    return Tokenizer.from_file(path)


def _show(piece: str) -> str:
    """A token's text, quoted so that leading spaces and control chars show."""
    return repr(piece)


def _surfaces(tok: Tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds where it stands: a SentencePiece decoder drops the space of
    a first token (``▁here`` alone decodes to ``here``), so each token is shown as what it
    adds to the decoded text before it (its own decode where that is not a clean suffix,
    e.g. part of a UTF-8 char)."""
    if len(ids) > 2000:
        return [tok.decode([id]) for id in ids]
    out, before = [], ""
    for i, id in enumerate(ids):
        text = tok.decode(ids[: i + 1])
        out.append(text[len(before):] if text.startswith(before) and "\ufffd" not in text[len(before):] else tok.decode([id]))
        before = text
    return out


def inspect(tok: Tokenizer, text: str, special: str, out=sys.stdout) -> int:
    """Print how ``text`` splits into tokens and whether special-looking strings are single tokens."""
    ids = tok.encode(text, add_special_tokens=False, special=special)
    specials = {t.id for t in tok.added_tokens if t.special}
    print(f"{len(text)} characters -> {len(ids)} tokens", file=out)
    for i, (id, surface) in enumerate(zip(ids, _surfaces(tok, ids))):
        mark = "  [special]" if id in specials else ""
        print(f"{i:5d}  {id:8d}  {_show(surface)}{mark}", file=out)
    found = sorted(set(SPECIAL_LOOKING.findall(text)), key=text.index)
    if found:
        print("\nspecial-looking strings:", file=out)
    for s in found:
        token_id = tok.token_to_id(s)
        pieces = tok.encode(s, add_special_tokens=False, special="text")
        if token_id is not None and token_id in specials:
            verdict = f"special token {token_id}" + (
                "" if special != "text" else ", but encoded as text here (--special text)"
            )
        elif token_id is not None and pieces == [token_id]:
            verdict = f"single token {token_id} (not special)"
        else:
            split = " + ".join(_show(p) for p in _surfaces(tok, pieces))
            verdict = f"NOT a token: {len(pieces)} pieces ({split}); register it with add_special_tokens"
        print(f"  {s!r:24} {verdict}", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokensmith", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("inspect", help="show how a string splits into tokens")
    p.add_argument("text", nargs="?", default=SAMPLE, help="text to inspect (default: a sample)")
    p.add_argument(
        "--tokenizer", "-t", help="tokenizer.json or a model folder (default: the bundled GPT-2 tokenizer)"
    )
    p.add_argument("--special", choices=["allow", "text"], default="allow",
                   help="whether special tokens in the text become control ids (default: allow)")

    p = commands.add_parser("prepare", help="encode chat / text data into training-ready files")
    p.add_argument("inputs", nargs="+",
                   help="JSONL, Parquet or .txt files (JSONL and .txt may be .gz / .zst compressed)")
    p.add_argument("--tokenizer", "-t", required=True, help="model folder (tokenizer.json + tokenizer_config.json)")
    p.add_argument("--out", "-o", required=True, help="output folder (written atomically)")
    p.add_argument("--max-length", type=int, default=None, help="Parquet rows: at most this many tokens (default 4096)")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="Parquet rows: pack examples into max-length blocks (default) or truncate each")
    p.add_argument("--format", choices=["parquet", "megatron", "tokens"], default="parquet",
                   help="parquet: shards with labels (default); megatron: Megatron-LM's indexed dataset "
                        "(data.bin + data.idx); tokens: tokens.bin + offsets.npy. The last two hold text "
                        "documents for pre-training, each with the model's BOS and the EOS id, never truncated")
    p.add_argument("--block-size", type=int, metavar="N",
                   help="parquet: rows of N tokens of pre-training text, as transformers' run_clm.py "
                        "group_texts makes them (documents with BOS and EOS ids, one after another)")
    p.add_argument("--keep-remainder", action="store_true",
                   help="--block-size: keep the last, shorter block (default: dropped, as group_texts does)")
    p.add_argument("--doc-per-line", action="store_true",
                   help=".txt inputs: a document per line (default: per blank-line-separated block)")
    p.add_argument("--text-field", metavar="NAME", help="the JSONL / Parquet field that holds the text (default: text)")
    _data_options(p)
    p.add_argument("--loss", choices=["assistant", "all"], default="assistant",
                   help="labels on the assistant replies and their end-of-turn token (default), or on everything")
    p.add_argument("--map", action="append", default=[], metavar="FROM=TO",
                   help="rename an input field, e.g. --map conversation=messages")
    p.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="skip malformed records (reported with file and line) or stop")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: the CPUs this process may use)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--resume", action="store_true",
                   help="go on from where a killed or interrupted run into the same --out stopped (same inputs, "
                        "options and tokenizer; Parquet from its last complete shard; with --ray or without, whichever the "
                        "stopped run used); the result is what one run writes")
    p.add_argument("--ray", nargs="?", const=True, default=False, metavar="ADDRESS",
                   help="read and encode on a Ray cluster (default: the one this machine belongs to); "
                        "the files are written here, the same as a local run's. Every node needs the inputs "
                        "at the same paths and the same tokensmith")

    p = commands.add_parser("lint", help="report data and template problems; exits 1 on errors")
    p.add_argument("inputs", nargs="+", help="JSONL or Parquet files")
    p.add_argument("--tokenizer", "-t", required=True, help="model folder or tokenizer.json")
    _data_options(p)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--map", action="append", default=[], metavar="FROM=TO")
    p.add_argument("--limit", type=int, default=50, help="print at most this many findings (all are counted)")

    p = commands.add_parser("add-tokens", help="add tokens to a model folder: tokenizer files and embedding rows")
    p.add_argument("model_dir", help="Hugging Face model folder (safetensors, one file or sharded)")
    p.add_argument("out_dir", help="new model folder (written atomically; the input is never modified)")
    p.add_argument("--tokens", nargs="+", default=[], metavar="TOKEN", help="tokens to add")
    p.add_argument("--tokens-file", help="a file with one token per line (added after --tokens)")
    p.add_argument("--init", choices=INIT_METHODS, default="pieces",
                   help="how the new rows start (default: pieces, the mean of the rows of the pieces "
                        "the old tokenizer splits each token into)")
    p.add_argument("--descriptions-file", help="with --init description: one description per token, one per line")
    p.add_argument("--copy-from", metavar="TOKEN",
                   help="with --init copy: the existing token whose rows every new row copies, e.g. '</s>'")
    p.add_argument("--not-special", action="store_true", help="add plain tokens instead of special tokens")
    p.add_argument("--reuse-reserved", action="store_true",
                   help="take over untrained reserved slots (<|reserved_special_token_N|>, <unusedN>, "
                        "[control_N], <SPECIAL_N>) before growing the matrices")
    p.add_argument("--reserved-pattern", action="append", metavar="REGEX",
                   help="a reserved-slot pattern (whole token) instead of the built-in ones; repeatable")
    p.add_argument("--pad-to-multiple-of", type=int, default=None, help="round the row count up to this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = commands.add_parser(
        "extend", help="extend a model's vocabulary: new merges learnt from a corpus or given words, rows initialized")
    p.add_argument("model_dir", help="Hugging Face model folder (byte-level BPE tokenizer.json, safetensors)")
    p.add_argument("out_dir", help="new model folder (written atomically; the input is never modified)")
    p.add_argument("--corpus", nargs="+", default=None, metavar="GLOB",
                   help="text to learn merges from: .txt (a document per line), .jsonl (--text-field), .gz of either")
    p.add_argument("--num-new", type=int, default=None, help="how many merges to learn from the corpus")
    p.add_argument("--pieces-file", help="words to make single tokens, one per line (before the corpus merges)")
    p.add_argument("--protect", nargs="+", default=None, metavar="GLOB",
                   help="text whose ids must not change (checked; merges that would change it are skipped)")
    p.add_argument("--evaluate", nargs="+", default=None, metavar="GLOB",
                   help="more text to measure before and after (held-out files)")
    p.add_argument("--init", choices=MODEL_INIT_METHODS, default="pieces",
                   help="how the new rows start (default: pieces, the mean of the rows of the old tokens "
                        "each new token stands for)")
    p.add_argument("--min-frequency", type=int, default=2, help="a merge's pair must occur this often (default 2)")
    p.add_argument("--text-field", default="text", help="the field of .jsonl records to read (default: text)")
    p.add_argument("--pad-to-multiple-of", type=int, default=None, help="round the row count up to this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = commands.add_parser("bench", help="encoding speed of tokensmith and every installed peer, side by side")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json, or a model folder holding one")
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                   help="UTF-8 text files; each is cut into documents at blank lines")
    p.add_argument("--peers", nargs="+", default=None, metavar="PEER",
                   help="peers to race (default: every one installed): " + ", ".join(PEERS))
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES,
                   help="per-doc, first-pass and whole run on one pinned core, batch on every core (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the best counts (default 3)")
    p.add_argument("--max-mb", type=float, default=2.0, help="use the first N MB of each file (default 2)")
    p.add_argument("--png", help="also draw a bar chart here (needs matplotlib)")

    args = parser.parse_args(argv)
    try:
        if args.command == "add-tokens":
            return _add_tokens(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "extend":
            return _extend(args)
        tok = _load(args.tokenizer)
        if args.command == "inspect":
            return inspect(tok, args.text, args.special)
        if args.command == "prepare":
            return _prepare(tok, args)
        return _lint(tok, args)
    except (TokenizerError, OSError, ValueError) as e:
        print(f"tokensmith: error: {_cli_terms(str(e))}", file=sys.stderr)
        return 2


def _data_options(p: argparse.ArgumentParser) -> None:
    """The options prepare and lint share: how records become examples."""
    p.add_argument("--template", help="chat template (.jinja file) instead of the tokenizer's")
    p.add_argument("--template-name", help="one of the tokenizer's named chat templates (e.g. tool_use)")
    p.add_argument("--content-special", default="auto", metavar="auto|text|TOKEN,...",
                   help="what special tokens inside message content become: auto (default: the template's "
                        "markers, BOS/EOS/PAD... stay text, task tokens such as <|box_start|> become ids), "
                        "text (all stay text), or a comma-separated list of the tokens that become ids")
    p.add_argument("--eos", metavar="TOKEN",
                   help="the token that ends each text record (default: eos_token of tokenizer_config.json, "
                        "else the tokenizer's end-of-text token such as <|endoftext|>)")


def _content_special(value: str) -> str | list[str]:
    return value if value in ("auto", "text") else [t for t in value.split(",") if t]


def _cli_terms(message: str) -> str:
    """Messages name an option both ways, ``overwrite=True / --overwrite``: keep the flag."""
    return re.sub(r"\b[a-z_]+=[\w.]* / (--[a-z-]+)", r"\1", message)


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            raise ValueError(f"--map takes FROM=TO, got {pair!r}")
        mapping[source] = target
    return mapping


def _prepare(tok: Tokenizer, args: argparse.Namespace) -> int:
    from .data import prepare

    if isinstance(args.ray, str) and os.path.exists(args.ray):
        raise ValueError(f"--ray took the input {args.ray} for a cluster address: put --ray after the inputs, "
                         "or write --ray=ADDRESS")

    result = prepare(
        args.inputs, tok, args.out, max_length=args.max_length, pack=args.pack, loss=args.loss,
        chat_template=args.template, template_name=args.template_name,
        content_special=_content_special(args.content_special), eos=args.eos,
        mapping=_mapping(args.map + ([f"{args.text_field}=text"] if args.text_field else [])),
        on_error=args.on_error, num_workers=args.workers, overwrite=args.overwrite,
        format=args.format, doc_per_line=args.doc_per_line, block_size=args.block_size,
        keep_remainder=args.keep_remainder, resume=args.resume, ray=args.ray,
    )
    for message in result.errors[:20]:
        print(f"skipped {_cli_terms(message)}", file=sys.stderr)
    print(result.summary())
    return 0


def _lines(path: str) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _add_tokens(args: argparse.Namespace) -> int:
    from .checkpoint import add_tokens

    tokens = args.tokens + (_lines(args.tokens_file) if args.tokens_file else [])
    if (args.init == "copy") != (args.copy_from is not None):
        raise ValueError("--init copy needs --copy-from TOKEN, and --copy-from is only used with --init copy")
    try:
        result = add_tokens(
            args.model_dir, args.out_dir, tokens, special=not args.not_special, init=args.init,
            descriptions=_lines(args.descriptions_file) if args.descriptions_file else None,
            copy_from=args.copy_from, reuse_reserved=args.reuse_reserved, reserved_patterns=args.reserved_pattern,
            pad_to_multiple_of=args.pad_to_multiple_of, seed=args.seed, overwrite=args.overwrite,
        )
    except InvalidInputError as e:
        if e.detail != "copy_from":
            raise
        raise InvalidInputError(f"--copy-from{str(e).removeprefix('copy_from')}") from None
    print(result.summary())
    return 0


def _extend(args: argparse.Namespace) -> int:
    from .vocab import extend_model

    result = extend_model(
        args.model_dir, args.out_dir, corpus=args.corpus, num_new=args.num_new,
        pieces=_lines(args.pieces_file) if args.pieces_file else None, protect=args.protect, evaluate=args.evaluate,
        init=args.init, min_frequency=args.min_frequency, text_field=args.text_field,
        pad_to_multiple_of=args.pad_to_multiple_of, seed=args.seed, overwrite=args.overwrite,
    )
    print(result.summary())
    return 0


def _lint(tok: Tokenizer, args: argparse.Namespace) -> int:
    from collections import Counter

    from .data import lint

    counts: Counter[tuple[str, str]] = Counter()
    shown = 0
    tokens: Counter[tuple[str, str]] = Counter()
    for finding in lint(args.inputs, tok, chat_template=args.template, template_name=args.template_name,
                        content_special=_content_special(args.content_special), eos=args.eos,
                        max_length=args.max_length, mapping=_mapping(args.map)):
        counts[(finding.severity, finding.kind)] += 1
        if finding.token is not None and finding.kind in _TREATMENT:
            tokens[(finding.token, finding.kind)] += 1
        if shown < args.limit:
            print(_cli_terms(str(finding)))
            shown += 1
    if tokens:
        print("\nspecial-token spellings in content:")
        for (token, kind), n in sorted(tokens.items(), key=lambda kv: -kv[1]):
            print(f"  {token!r:28} {n:6d} records  {_TREATMENT[kind]}")
    errors = sum(n for (severity, _), n in counts.items() if severity == "error")
    summary = ", ".join(f"{n} {kind} {severity}s" for (severity, kind), n in sorted(counts.items())) or "no problems"
    print(f"\n{summary}")
    return 1 if errors else 0


#: How lint's content findings say each spelling is encoded.
_TREATMENT = {
    "task-token": "-> its id (a task token; --content-special text keeps it text)",
    "special-in-text": "-> text (a marker of the template: content cannot inject it)",
    "eos-as-text": "-> text (not a control token of this tokenizer)",
}


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    path = Path(args.tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{args.tokenizer}: no tokenizer.json there")
    if args.rounds < 1 or args.max_mb <= 0:
        raise ValueError("--rounds and --max-mb must be positive")
    corpora = {}
    for file in args.corpus:
        data = Path(file).read_bytes()[: int(args.max_mb * 1e6)]
        corpora[Path(file).name] = data.decode("utf-8", "ignore")  # a cut char at the end is dropped
    encoders, skipped = bench.load(args.peers if args.peers is not None else PEERS, bench.Source(path))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    for e in encoders:
        print(f"{e.name} {e.version}" + (f" ({e.note})" if e.note else ""), file=sys.stderr)
    results = bench.race(encoders, corpora, modes=args.modes, rounds=args.rounds,
                         progress=lambda m: print(m, file=sys.stderr))
    print(bench.table(results))
    if args.png:
        bench.chart(results, args.png)
        print(f"chart: {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

