"""Chat templates to token ids, with the template's special tokens as ids and message
content as plain text.

The template is rendered as ``transformers`` renders it (same Jinja environment), then
the rendered string is encoded in one pass with special-token matching switched off
inside message contents. For content without special-token strings the ids are exactly
those of ``apply_chat_template(..., tokenize=True)``; content that contains
``<|im_end|>`` or ``</s>`` cannot inject control tokens.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .._tokenizer import Tokenizer
from ..errors import TokenizerError

__all__ = ["IGNORE_INDEX", "ChatTemplateError", "Example", "encode_chat", "resolve_template", "render_template"]

#: The label of tokens that take no loss (PyTorch's cross-entropy ``ignore_index``).
IGNORE_INDEX = -100


class ChatTemplateError(TokenizerError, ValueError):
    """A chat template is missing, fails to render, or cannot be applied safely."""


@dataclass
class Example:
    """One training example: ``input_ids`` and ``labels`` (``IGNORE_INDEX`` where no loss)."""

    input_ids: list[int]
    labels: list[int]
    #: Problems found while encoding (e.g. an assistant turn with no end token), for reports.
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


# ---------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=64)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text (transformers' tag)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return GENERATION_START + caller() + GENERATION_END

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


# Markers for `{% generation %}` blocks: private-use chars that never survive into ids.
GENERATION_START = "\U000f0001"
GENERATION_END = "\U000f0002"


def resolve_template(tok: Tokenizer, chat_template: str | os.PathLike[str] | None = None) -> str:
    """The template text: ``chat_template`` (a template, a file, or a named template of the
    tokenizer), else the tokenizer's own from ``tokenizer_config.json``."""
    own = tok.config.get("chat_template")
    named = {t["name"]: t["template"] for t in own} if isinstance(own, list) else {}
    if chat_template is None:
        if isinstance(own, str):
            return own
        if "default" in named:
            return named["default"]
        raise ChatTemplateError("the tokenizer has no chat_template; pass chat_template= (a template or a .jinja file)")
    if isinstance(chat_template, str) and chat_template in named:
        return named[chat_template]
    if isinstance(chat_template, os.PathLike) or (
        isinstance(chat_template, str) and "{" not in chat_template and Path(chat_template).is_file()
    ):
        return Path(chat_template).read_text(encoding="utf-8")
    if isinstance(chat_template, str):
        return chat_template
    raise TypeError(f"chat_template must be a str or a path, got {type(chat_template).__name__}")


def _special_token_strings(tok: Tokenizer) -> dict[str, str]:
    """bos_token, eos_token, ... as the template sees them (tokenizer_config.json values)."""
    names = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
    out = {}
    for name in names:
        value = tok.config.get(name)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


def render_template(
    tok: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    chat_template: str | os.PathLike[str] | None = None,
    *,
    add_generation_prompt: bool = False,
    tools: list[Any] | None = None,
    documents: list[Any] | None = None,
    **template_kwargs: Any,
) -> str:
    """The chat as text, exactly as ``apply_chat_template(..., tokenize=False)`` renders it."""
    text = _render(resolve_template(tok, chat_template), tok, messages, add_generation_prompt, tools, documents, template_kwargs)
    return text.replace(GENERATION_START, "").replace(GENERATION_END, "")


def _render(template, tok, messages, add_generation_prompt, tools, documents, template_kwargs) -> str:
    import jinja2

    context = {**_special_token_strings(tok), **template_kwargs}
    try:
        return _compile(template).render(
            messages=list(messages),
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **context,
        )
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        # The template's own code failed on these messages (e.g. list content it cannot join).
        raise ChatTemplateError(f"chat template failed on these messages: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------- encoding


#: Message fields whose text a user or a model wrote (never template markup).
TEXT_FIELDS = ("content", "reasoning_content", "thinking")


def _text_slots(messages) -> list[tuple[int, str, int | None, str]]:
    """(message index, field, part index or None, text) for every written text: string
    fields, and the ``text`` of ``{"type": "text"}`` parts in list contents."""
    slots = []
    for i, m in enumerate(messages):
        for key in TEXT_FIELDS:
            value = m.get(key)
            if isinstance(value, str) and value:
                slots.append((i, key, None, value))
            elif isinstance(value, list):
                for j, part in enumerate(value):
                    if isinstance(part, Mapping) and isinstance(part.get("text"), str) and part["text"]:
                        slots.append((i, key, j, part["text"]))
    return slots


def _replaced(messages, slots, texts) -> list[dict[str, Any]]:
    """Copies of ``messages`` with each slot's text replaced."""
    out = [dict(m) for m in messages]
    for (i, key, j, _), text in zip(slots, texts):
        if j is None:
            out[i][key] = text
        else:
            parts = out[i][key] = list(out[i][key])
            parts[j] = {**parts[j], "text": text}
    return out


def _content_spans(template, tok, messages, rendered, add_generation_prompt, tools, documents, kwargs):
    """(start, end, message index) of each written text in ``rendered``.

    The texts are replaced by unique sentinels and the template rendered again: where the
    template copies them through unchanged, the text between sentinels is identical and
    gives exact spans. Otherwise each text is searched for in order.
    """
    slots = _text_slots(messages)
    if not slots:
        return []
    tag = uuid.uuid4().hex[:12]
    sentinels = [f"\U000f0003{tag}{k}\U000f0004" for k in range(len(slots))]
    try:
        skeleton = _render(template, tok, _replaced(messages, slots, sentinels), add_generation_prompt, tools, documents, kwargs)
    except ChatTemplateError:
        skeleton = None
    spans = _spans_from_skeleton(skeleton, dict(zip(sentinels, slots)), rendered) if skeleton else None
    return spans if spans is not None else _spans_by_search(slots, rendered)


def _spans_from_skeleton(skeleton, sentinels, rendered):
    import re

    pattern = re.compile("|".join(re.escape(s) for s in sentinels))
    spans, pieces, cursor, out_pos = [], [], 0, 0
    seen = set()
    for m in pattern.finditer(skeleton):
        if m.group() in seen:
            return None  # a template that prints a text twice: search instead
        seen.add(m.group())
        i, _, _, text = sentinels[m.group()]
        literal = skeleton[cursor : m.start()]
        out_pos += len(literal)
        spans.append((out_pos, out_pos + len(text), i))
        pieces += [literal, text]
        out_pos += len(text)
        cursor = m.end()
    pieces.append(skeleton[cursor:])
    return spans if "".join(pieces) == rendered else None


def _spans_by_search(slots, rendered):
    spans, cursor = [], 0
    for i, _, _, text in slots:
        for candidate in (text, text.strip()):
            at = rendered.find(candidate, cursor) if candidate else -1
            if at >= 0:
                spans.append((at, at + len(candidate), i))
                cursor = at + len(candidate)
                break
    return spans


def _unmarked(marked: str, offset: int) -> int:
    """``offset`` in ``marked`` as an offset in the text without generation markers."""
    prefix = marked[:offset]
    return offset - prefix.count(GENERATION_START) - prefix.count(GENERATION_END)


def _generation_spans(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Strip ``{% generation %}`` markers, returning the text and the marked spans."""
    spans, out, pos, start = [], [], 0, None
    for ch in text:
        if ch == GENERATION_START:
            start = pos
        elif ch == GENERATION_END:
            if start is not None:
                spans.append((start, pos))
            start = None
        else:
            out.append(ch)
            pos += 1
    return "".join(out), spans


def encode_chat(
    tok: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    chat_template: str | os.PathLike[str] | None = None,
    add_generation_prompt: bool = False,
    *,
    loss: str = "assistant",
    tools: list[Any] | None = None,
    documents: list[Any] | None = None,
    **template_kwargs: Any,
) -> Example:
    """Encode a chat with its template: template markers as ids, contents as text, labels.

    ``loss="assistant"`` (default) puts labels on each assistant reply and the end-of-turn
    token(s) that close it; ``loss="all"`` on every token. Everything else is
    ``IGNORE_INDEX``.

    >>> ex = encode_chat(tok, [{"role": "user", "content": "hi"},
    ...                        {"role": "assistant", "content": "hello"}])   # doctest: +SKIP
    >>> ex.input_ids, ex.labels                                              # doctest: +SKIP
    """
    return _encode_chat(
        tok, messages, chat_template, add_generation_prompt, loss=loss, tools=tools, documents=documents, **template_kwargs
    )[0]


def _encode_chat(
    tok, messages, chat_template, add_generation_prompt, *, loss, tools, documents, **template_kwargs
) -> tuple[Example, str, list[tuple[int, int, int]]]:
    """``encode_chat``, also returning the rendered text and the content spans in it."""
    if loss not in ("assistant", "all"):
        raise ValueError(f'loss must be "assistant" or "all", got {loss!r}')
    messages = _check_messages(messages)
    template = resolve_template(tok, chat_template)
    marked = _render(template, tok, messages, add_generation_prompt, tools, documents, template_kwargs)
    rendered, generation = _generation_spans(marked)
    spans = _content_spans(template, tok, messages, marked, add_generation_prompt, tools, documents, template_kwargs)
    if generation:
        spans = [(_unmarked(marked, s), _unmarked(marked, e), i) for s, e, i in spans]
    located = {j for _, _, j in spans}
    warnings = [
        f"message {i} ({messages[i]['role']}): "
        + ("the template leaves its " + key + " out" if text.strip() not in rendered
           else f"its {key} could not be located in the rendered template")
        for i, key, _, text in _text_slots(messages)
        if i not in located
    ]
    ids, offsets = tok.encode_with_offsets(
        rendered, add_special_tokens=False, special="allow", protected=[(s, e) for s, e, _ in spans]
    )
    starts = [start for start, _ in offsets]
    if loss == "all":
        return Example(ids, list(ids), warnings), rendered, spans

    regions = generation or _assistant_regions(tok, messages, rendered, spans, warnings)
    return Example(ids, _labels(ids, starts, regions), warnings), rendered, spans


def _check_messages(messages) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ValueError(f"message {i} must be a dict with a 'role' (got {m!r:.80})")
        out.append(dict(m))
    return out


def _assistant_regions(tok, messages, rendered, spans, warnings):
    """Each assistant reply's span, extended over the template text that closes the turn up
    to and including its first special token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``...)."""
    specials = [t.content for t in tok.added_tokens if t.special]
    regions = []
    for k, (start, end, i) in enumerate(spans):
        if messages[i].get("role") != "assistant":
            continue
        limit = spans[k + 1][0] if k + 1 < len(spans) else len(rendered)
        tail = rendered[end:limit]
        hits = [(tail.find(s), s) for s in specials if s and s in tail]
        if hits:
            at, token = min(hits, key=lambda h: (h[0], -len(h[1])))
            regions.append((start, end + at + len(token)))
        else:
            regions.append((start, end))
            warnings.append(f"message {i}: the template closes this assistant turn with no special token (no EOS)")
    return regions


def _labels(ids: list[int], starts: list[int], regions: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    if not regions:
        return labels
    regions = sorted(regions)
    r = 0
    for k, (id, at) in enumerate(zip(ids, starts)):
        while r < len(regions) and regions[r][1] <= at:
            r += 1
        if r < len(regions) and regions[r][0] <= at:
            labels[k] = id
    return labels
