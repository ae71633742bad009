"""``tokensmith lint``: find the data and template problems that silently ruin fine-tuning."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._tokenizer import Tokenizer
from ..errors import TokenizerError
from .chat import _encode_chat, resolve_template
from .sources import BadRecord, read_records, to_example_input

__all__ = ["Finding", "lint", "SPECIAL_LOOKING"]

#: Strings that look like control tokens: `<|...|>`, `</s>`, `<s>`, `[INST]`, `<｜...｜>`.
SPECIAL_LOOKING = re.compile(r"<\|[^<>|\s]{1,64}\|>|</?[A-Za-z_][\w.-]{0,32}>|\[/?[A-Z][A-Z_0-9]{1,32}\]|<｜[^<>｜]{1,64}｜>")


@dataclass
class Finding:
    """One problem: where it is, how bad (``error`` or ``warning``), what kind, and why."""

    source: str
    line: int
    severity: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.severity}: [{self.kind}] {self.message}"


def lint(
    inputs: Iterable[str | os.PathLike[str]] | Iterable[Mapping[str, Any]],
    tok: Tokenizer,
    *,
    chat_template: str | os.PathLike[str] | None = None,
    max_length: int | None = None,
    mapping: Mapping[str, str] | None = None,
) -> Iterator[Finding]:
    """Yield findings for every record: malformed records, special-token strings in
    content, template text that the tokenizer splits (`</s>` as three pieces), assistant
    turns without an end token, a double BOS, examples over ``max_length``.

    >>> errors = [f for f in lint(["train.jsonl"], tok) if f.severity == "error"]   # doctest: +SKIP
    """
    specials = sorted({t.content for t in tok.added_tokens if t.special}, key=len, reverse=True)
    bos = tok.config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, Mapping) else bos
    bos_id = tok.token_to_id(bos) if isinstance(bos, str) else None
    try:
        template = resolve_template(tok, chat_template)
    except TokenizerError:
        template = None
    checked_template_strings: dict[str, bool] = {}

    for record in read_records(inputs):
        if isinstance(record, BadRecord):
            yield Finding(record.source, record.line, "error", "malformed", record.error)
            continue
        where = (record.source, record.line)
        try:
            kind, value = to_example_input(record.data, mapping)
        except ValueError as e:
            yield Finding(*where, "error", "malformed", str(e))
            continue
        contents = [value] if kind == "text" else [m.get("content") for m in value if isinstance(m.get("content"), str)]
        for text in contents:
            for s in specials:
                if s in text:
                    yield Finding(*where, "warning", "special-in-text",
                                  f"content contains the special token {s!r}: the usual apply_chat_template + "
                                  "encode path turns it into a control token (tokensmith encodes it as text)")
        if kind == "text":
            ids = tok.encode(value, special="text")
            labels = None
        else:
            if template is None:
                yield Finding(*where, "error", "no-template", "chat record but no chat template (pass --template)")
                continue
            try:
                ex, rendered, spans = _encode_chat(tok, value, template, False, loss="assistant", tools=None, documents=None)
            except (ValueError, TypeError, TokenizerError) as e:
                yield Finding(*where, "error", "template", str(e))
                continue
            ids, labels = ex.input_ids, ex.labels
            for w in ex.warnings:
                yield Finding(*where, "error" if "no EOS" in w else "warning", "missing-eos" if "no EOS" in w else "content", w)
            for s in _template_strings(rendered, spans):
                if s not in checked_template_strings:
                    checked_template_strings[s] = len(tok.encode(s, add_special_tokens=False)) == 1
                if not checked_template_strings[s]:
                    pieces = len(tok.encode(s, add_special_tokens=False))
                    yield Finding(*where, "error", "split-special",
                                  f"the template writes {s!r}, which this tokenizer splits into {pieces} pieces: "
                                  "it is not a token (register it with add_special_tokens)")
        if bos_id is not None and len(ids) >= 2 and ids[0] == bos_id and ids[1] == bos_id:
            yield Finding(*where, "error", "double-bos", "the example starts with two BOS tokens")
        if labels is not None and all(l == -100 for l in labels):
            yield Finding(*where, "warning", "no-loss", "no token of this example takes loss (no assistant reply?)")
        if max_length is not None and len(ids) > max_length:
            yield Finding(*where, "warning", "too-long", f"{len(ids)} tokens, over max_length {max_length}")


def _template_strings(rendered: str, spans: list[tuple[int, int, int]]) -> set[str]:
    """Special-looking strings in the template's own text (outside message contents)."""
    found, cursor = set(), 0
    for start, end, _ in sorted(spans) + [(len(rendered), len(rendered), -1)]:
        found.update(SPECIAL_LOOKING.findall(rendered[cursor:start]))
        cursor = max(cursor, end)
    return found
