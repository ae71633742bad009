"""``tokensmith lint``: find the data and template problems that silently ruin fine-tuning."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._tokenizer import Tokenizer
from ..errors import DataError, TokenizerError
from .chat import IGNORE_INDEX, NO_END_TOKEN, ContentSpecial, _encode_chat, _text_slots, config_token
from .eos import CONTROL_SPELLINGS
from .prepare import ExampleEncoder
from .sources import BadRecord, read_records, to_example_input, to_tools

__all__ = ["Finding", "lint", "SPECIAL_LOOKING"]

#: Strings that look like control tokens: `<|...|>`, `</s>`, `<s>`, `[INST]`, `<｜...｜>`.
SPECIAL_LOOKING = re.compile(r"<\|[^<>|\s]{1,64}\|>|</?[A-Za-z_][\w.-]{0,32}>|\[/?[A-Z][A-Z_0-9]{1,32}\]|<｜[^<>｜]{1,64}｜>")


@dataclass
class Finding:
    """One problem: where it is, how bad (``error``, ``warning`` or ``info``), what kind,
    and why; ``token`` is the special-token string it is about, if any."""

    source: str
    line: int
    severity: str
    kind: str
    message: str
    token: str | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.severity}: [{self.kind}] {self.message}"


def lint(
    inputs: Iterable[str | os.PathLike[str]] | Iterable[Mapping[str, Any]],
    tok: Tokenizer,
    *,
    chat_template: str | os.PathLike[str] | None = None,
    template_name: str | None = None,
    content_special: ContentSpecial = "auto",
    eos: str | None = None,
    max_length: int | None = None,
    mapping: Mapping[str, str] | None = None,
) -> Iterator[Finding]:
    """Yield findings for every record: malformed records, special tokens in content and
    what they become (template markers: text; task tokens: ids), EOS / end-of-turn
    spellings typed as text (``</s>`` in a reply, whether or not this tokenizer has it),
    template text that the tokenizer splits (``</s>`` as three pieces), assistant turns
    without an end token, chats with no reply to train on, a double BOS, examples over
    ``max_length``. An input with no record at all is an error.

    The options are :func:`~tokensmith.data.prepare`'s, so that lint judges the data as
    prepare will encode it.

    >>> errors = [f for f in lint(["train.jsonl"], tok) if f.severity == "error"]   # doctest: +SKIP
    """
    encoder = ExampleEncoder(
        tok, chat_template, content_special=content_special, eos=eos, template_name=template_name, mapping=mapping
    )
    specials = {t.content: t.id for t in tok.added_tokens if t.special}
    # Spellings to look for in content: this tokenizer's special tokens, and the common
    # control tokens of other families (typed as text, they are several pieces here).
    spellings = sorted(set(specials) | set(CONTROL_SPELLINGS), key=len, reverse=True)
    finder = re.compile("|".join(map(re.escape, spellings)))
    bos = config_token(tok, "bos_token")
    bos_id = tok.token_to_id(bos) if bos is not None else None
    checked_template_strings: dict[str, int] = {}
    records = 0

    for record in read_records(inputs):
        records += 1
        if isinstance(record, BadRecord):
            yield Finding(record.source, record.line, "error", "malformed", record.error)
            continue
        where = (record.source, record.line)
        try:
            kind, value = to_example_input(record.data, mapping)
            tools = to_tools(record.data, mapping) if kind == "chat" else None
        except ValueError as e:
            yield Finding(*where, "error", "malformed", str(e))
            continue
        if kind == "text":
            allowed = set(encoder.text_allowed)
        else:
            try:
                template = encoder.template_for(tools)
            except DataError as e:
                yield Finding(*where, "error", "no-template", str(e))
                continue
            allowed = set(encoder.allowed_in(template))
        for role, text in _contents(kind, value):
            for found in dict.fromkeys(finder.findall(text)):
                yield _content_finding(where, tok, role, text, found, specials, allowed)
        if kind == "text":
            if encoder.eos_id is None:
                yield Finding(*where, "error", "no-eos", str(encoder.eos_problem))
                ids = tok.encode(value, add_special_tokens=False, special=list(allowed))
            else:
                ids = encoder.encode_text(value).input_ids  # with its EOS, as prepare writes it
            labels = None
        else:
            try:
                ex, rendered, spans = _encode_chat(
                    tok, value, template, encoder.allowed_in(template), False, loss="assistant", tools=tools, documents=None
                )
            except (ValueError, TypeError, TokenizerError) as e:
                yield Finding(*where, "error", "template", str(e))
                continue
            ids, labels = ex.input_ids, ex.labels
            for w in ex.warnings:
                no_end = NO_END_TOKEN in w
                yield Finding(*where, "error" if no_end else "warning", "missing-eos" if no_end else "content", w)
            for s in _template_strings(rendered, spans):
                if s not in checked_template_strings:
                    checked_template_strings[s] = len(tok.encode(s, add_special_tokens=False))
                pieces = checked_template_strings[s]
                if pieces != 1:
                    yield Finding(*where, "error", "split-special",
                                  f"the template writes {s!r}, which this tokenizer splits into {pieces} pieces: "
                                  "it is not a token (register it with add_special_tokens)", token=s)
        if bos_id is not None and len(ids) >= 2 and ids[0] == bos_id and ids[1] == bos_id:
            yield Finding(*where, "error", "double-bos", "the example starts with two BOS tokens")
        if labels is not None and all(l == IGNORE_INDEX for l in labels):
            yield Finding(*where, "warning", "no-loss",
                          "no token of this example takes loss (no assistant reply): prepare skips it")
        if max_length is not None and len(ids) > max_length:
            yield Finding(*where, "warning", "too-long", f"{len(ids)} tokens, over max_length {max_length}")
    if not records:
        names = ", ".join(str(p) for p in inputs) if isinstance(inputs, (list, tuple)) else "the input"
        yield Finding(names, 0, "error", "empty", "no records: the input is empty")


def _contents(kind: str, value: Any) -> Iterator[tuple[str, str]]:
    """(role, text) of every text a person or a model wrote."""
    if kind == "text":
        yield "text", value
        return
    for i, _, _, text in _text_slots(value):
        yield str(value[i].get("role")), text


def _content_finding(where, tok, role, text, found, specials, allowed) -> Finding:
    """What a special-token spelling inside content becomes, and whether that is a problem."""
    subject = "the text" if role == "text" else "a reply" if role == "assistant" else f"a {role} message"
    at_end = text.rstrip().endswith(found)
    place = f"{subject} {'ends with' if at_end else 'contains'}"
    closing = ("the EOS id is added after each text record" if role == "text"
               else "the end-of-turn id is added by the template")
    if found in allowed:
        return Finding(*where, "info", "task-token",
                       f"{place} {found!r}: special token {specials[found]}, encoded as its id "
                       "(a special token the template does not use; --content-special text keeps it text)", token=found)
    if found in specials:
        why = f"; {closing}" if at_end and found in CONTROL_SPELLINGS else ": content cannot inject a control token"
        return Finding(*where, "warning", "special-in-text",
                       f"{place} {found!r}, a marker of the template: encoded as text{why}", token=found)
    pieces = len(tok.encode(found, add_special_tokens=False, special="text"))
    what = ("an ordinary token here, not a control token" if pieces == 1
            else f"{pieces} pieces here, not a control token of this tokenizer")
    return Finding(*where, "warning", "eos-as-text", f"{place} the text {found!r} ({what}); {closing}", token=found)


def _template_strings(rendered: str, spans: list[tuple[int, int, int]]) -> set[str]:
    """Special-looking strings in the template's own text (outside message contents)."""
    found, cursor = set(), 0
    for start, end, _ in sorted(spans) + [(len(rendered), len(rendered), -1)]:
        found.update(SPECIAL_LOOKING.findall(rendered[cursor:start]))
        cursor = max(cursor, end)
    return found
