"""Chat templates to token ids, with the template's special tokens as ids and message
content as text, but for the task tokens a user added.

The template is rendered as ``transformers`` renders it (same Jinja environment), then the
rendered string is encoded in one pass. Inside message contents the template's own markers
(every special token the template text contains, and the folder's BOS/EOS/PAD/... tokens)
are plain text, so content that contains ``<|im_end|>`` or ``</s>`` cannot inject control
tokens; every other special token (``<|box_start|>``, tokens the user added) is its id, as
the user who added it means it. For content without template markers the ids are exactly
those of ``apply_chat_template(..., tokenize=True)``.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Union

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


def resolve_template(
    tok: Tokenizer, chat_template: str | os.PathLike[str] | None = None, *, tools: list[Any] | None = None
) -> str:
    """The template text: ``chat_template`` (a template, a ``.jinja`` file, or the name of one
    of the tokenizer's templates), else the tokenizer's own: its ``"tool_use"`` template when
    ``tools`` are given and it has one, else its ``"default"``, as ``transformers`` picks."""
    own = tok.config.get("chat_template")
    named = _named_templates(own)
    if chat_template is None:
        if isinstance(own, str):
            return own
        if tools and "tool_use" in named:
            return named["tool_use"]
        if "default" in named:
            return named["default"]
        if named:
            raise ChatTemplateError(
                f"the tokenizer has several chat templates and none is \"default\": choose one of {sorted(named)} "
                "by name (chat_template=NAME / --template-name NAME)"
            )
        raise ChatTemplateError(
            "the tokenizer has no chat template (not in tokenizer_config.json, chat_template.jinja or "
            "chat_template.json); pass one (chat_template= / --template FILE)"
        )
    if isinstance(chat_template, str) and chat_template in named:
        return named[chat_template]
    if isinstance(chat_template, os.PathLike) or (
        isinstance(chat_template, str) and "{" not in chat_template and Path(chat_template).is_file()
    ):
        return Path(chat_template).read_text(encoding="utf-8")
    if isinstance(chat_template, str):
        if "{" not in chat_template:
            # Neither a template nor a file: a name or a path with a typo, never a template.
            known = f"; the tokenizer's templates are {sorted(named)}" if named else ""
            raise ChatTemplateError(f"{chat_template!r} is not a chat template, a template file or a template name{known}")
        return chat_template
    raise TypeError(f"chat_template must be a str or a path, got {type(chat_template).__name__}")


def named_template(tok: Tokenizer, name: str) -> str:
    """The tokenizer's chat template called ``name`` (``--template-name``)."""
    named = _named_templates(tok.config.get("chat_template"))
    if isinstance(tok.config.get("chat_template"), str):
        named.setdefault("default", tok.config["chat_template"])
    if name not in named:
        raise ChatTemplateError(f"the tokenizer has no chat template named {name!r} (it has {sorted(named) or 'none'})")
    return named[name]


def _named_templates(own: Any) -> dict[str, str]:
    """tokenizer_config.json's list of ``{"name": ..., "template": ...}`` as a dict."""
    if not isinstance(own, list):
        return {}
    out = {}
    for entry in own:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str):
            out[entry["name"]] = entry["template"]
    return out


#: The config keys of the tokens a template may write through variables (``{{ eos_token }}``).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _special_token_strings(tok: Tokenizer) -> dict[str, str]:
    """bos_token, eos_token, ... as the template sees them (tokenizer_config.json values)."""
    out = {}
    for name in SPECIAL_TOKEN_KEYS:
        value = tok.config.get(name)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


#: ``content_special``: the rule (``"auto"``), every special token as text (``"text"``), or
#: a collection of the special tokens that alone become ids inside content.
ContentSpecial = Union[str, Iterable[str]]


def template_markers(tok: Tokenizer, template: str) -> set[str]:
    """The special tokens that are the template's own markup: those its text contains, the
    folder's BOS/EOS/PAD/UNK/SEP/CLS/MASK, and the end-of-text token the tokenizer declares.
    Inside content they are text: a user who writes ``<|im_end|>`` never ends a turn."""
    from .eos import declared_eos

    specials = {t.content for t in tok.added_tokens if t.special}
    markers = {s for s in specials if s in template}
    markers |= {s for s in _special_token_strings(tok).values() if s in specials}
    declared = declared_eos(tok)
    if declared is not None:
        markers.add(declared)
    return markers


def content_special_tokens(tok: Tokenizer, template: str, content_special: ContentSpecial = "auto") -> list[str]:
    """The special tokens that become ids inside message content under ``content_special``:
    with ``"auto"`` every special token but the template's markers (:func:`template_markers`);
    ``"text"`` none; a collection exactly those (each must be a special token)."""
    if isinstance(content_special, str):
        if content_special == "text":
            return []
        if content_special != "auto":
            raise ValueError(
                f'content_special must be "auto", "text" or a collection of special tokens, got {content_special!r}'
            )
        markers = template_markers(tok, template)
        return sorted(t.content for t in tok.added_tokens if t.special and t.content not in markers)
    try:
        chosen = list(content_special)
    except TypeError:
        raise TypeError(f"content_special must be a str or a collection of str, got {type(content_special).__name__}") from None
    specials = {t.content for t in tok.added_tokens if t.special}
    unknown = [t for t in chosen if not isinstance(t, str) or t not in specials]
    if unknown:
        raise ValueError(f"content_special names {unknown[0]!r}, which is not a special token of this tokenizer")
    return sorted(set(chosen))


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
    except jinja2.UndefinedError as e:
        raise ChatTemplateError(_undefined(e, messages)) from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        # The template's own code failed on these messages (e.g. list content it cannot join).
        raise ChatTemplateError(f"chat template failed on these messages: {type(e).__name__}: {e}") from None


def _undefined(error: Exception, messages: Sequence[Mapping[str, Any]]) -> str:
    """Jinja's ``'dict object' has no attribute 'content'`` as which message lacks what."""
    import re

    found = re.search(r"has no attribute '([^']*)'|'([^']*)' is undefined", str(error))
    name = next((g for g in found.groups() if g), None) if found else None
    lacking = [i for i, m in enumerate(messages) if name is not None and name not in m]
    if lacking:
        i = lacking[0]
        return (f"chat template failed: message {i} ({messages[i].get('role')}) has no {name!r}, "
                f"which the template reads ({error})")
    if name is not None:
        return f"chat template failed: it reads {name!r}, which these messages and options do not give ({error})"
    return f"chat template failed: {error}"


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
    content_special: ContentSpecial = "auto",
    tools: list[Any] | None = None,
    documents: list[Any] | None = None,
    **template_kwargs: Any,
) -> Example:
    """Encode a chat with its template: template markers as ids, contents as text, labels.

    ``loss="assistant"`` (default) puts labels on every token that overlaps an assistant
    reply or the template text that closes it, up to and including its end-of-turn token;
    ``loss="all"`` on every token. Everything else is ``IGNORE_INDEX``.

    ``content_special`` decides what special tokens written inside message content become.
    ``"auto"`` (default): the template's own markers (special tokens its text contains, the
    folder's BOS/EOS/PAD/UNK/SEP/CLS/MASK, the tokenizer's end-of-text token) stay text, so
    content cannot end a turn or forge a role; every other special token (a task token such
    as ``<|box_start|>``, tokens you added) becomes its id. ``"text"``: all stay text. A
    collection: exactly those become ids.

    >>> ex = encode_chat(tok, [{"role": "user", "content": "hi"},
    ...                        {"role": "assistant", "content": "hello"}])   # doctest: +SKIP
    >>> ex.input_ids, ex.labels                                              # doctest: +SKIP
    """
    template = resolve_template(tok, chat_template, tools=tools)
    allowed = content_special_tokens(tok, template, content_special)
    return _encode_chat(
        tok, messages, template, allowed, add_generation_prompt, loss=loss, tools=tools, documents=documents,
        **template_kwargs,
    )[0]


def _encode_chat(
    tok, messages, template, allowed, add_generation_prompt, *, loss, tools, documents, **template_kwargs
) -> tuple[Example, str, list[tuple[int, int, int]]]:
    """``encode_chat`` with the template text and the special tokens allowed in content
    resolved, also returning the rendered text and the content spans in it."""
    if loss not in ("assistant", "all"):
        raise ValueError(f'loss must be "assistant" or "all", got {loss!r}')
    messages = _check_messages(messages)
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
        rendered, add_special_tokens=False, special="allow", protected=[(s, e) for s, e, _ in spans],
        protected_allowed=allowed,
    )
    if loss == "all":
        return Example(ids, list(ids), warnings), rendered, spans

    regions = generation or _assistant_regions(tok, messages, rendered, spans, warnings)
    return Example(ids, _labels(ids, offsets, regions), warnings), rendered, spans


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


def _labels(ids: list[int], offsets: list[tuple[int, int]], regions: list[tuple[int, int]]) -> list[int]:
    """Each token that overlaps a region keeps its id as label: a token that straddles the
    template text and a reply (``":\n\nHello"``) takes loss, as the reply needs it. A
    token with no characters of its own counts where it stands."""
    labels = [IGNORE_INDEX] * len(ids)
    if not regions:
        return labels
    regions = sorted(regions)
    r = 0
    for k, (start, end) in enumerate(offsets):
        end = max(end, start + 1)
        while r < len(regions) and regions[r][1] <= start:
            r += 1
        if r < len(regions) and regions[r][0] < end:
            labels[k] = ids[k]
    return labels
