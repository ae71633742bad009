"""The ``tokensmith`` command."""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

from . import Tokenizer
from .errors import TokenizerError

#: Strings that look like control tokens: `<|...|>`, `</s>`, `<s>`, `<unk>`, `[INST]`, `<unused12>`, ...
SPECIAL_LOOKING = re.compile(r"<\|[^<>|\s]{1,64}\|>|</?[A-Za-z_][\w.-]{0,32}>|\[/?[A-Z][A-Z_0-9]{1,32}\]|<｜[^<>｜]{1,64}｜>")

SAMPLE = "Hello world!<|endoftext|> A model that sees </s> as text never stops: <|im_end|>"


def _default_tokenizer() -> Tokenizer:
    path = resources.files("tokensmith") / "data" / "gpt2" / "tokenizer.json"
    with resources.as_file(path) as p:
        return Tokenizer.from_file(p)


def _load(spec: str | None) -> Tokenizer:
    if spec is None:
        return _default_tokenizer()
    path = Path(spec)
    return Tokenizer.from_pretrained(path) if path.is_dir() else Tokenizer.from_file(path)


def _show(piece: str) -> str:
    """A token's text, quoted so that leading spaces and control chars show."""
    return repr(piece)


def inspect(tok: Tokenizer, text: str, special: str, out=sys.stdout) -> int:
    """Print how ``text`` splits into tokens and whether special-looking strings are single tokens."""
    ids = tok.encode(text, add_special_tokens=False, special=special)
    specials = {t.id for t in tok.added_tokens if t.special}
    print(f"{len(text)} characters -> {len(ids)} tokens", file=out)
    for i, id in enumerate(ids):
        mark = "  [special]" if id in specials else ""
        print(f"{i:5d}  {id:8d}  {_show(tok.decode([id]))}{mark}", file=out)
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
            split = " + ".join(_show(tok.decode([p])) for p in pieces)
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
    args = parser.parse_args(argv)
    try:
        tok = _load(args.tokenizer)
        return inspect(tok, args.text, args.special)
    except (TokenizerError, OSError) as e:
        print(f"tokensmith: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
