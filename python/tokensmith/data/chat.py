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

import bisect
import functools
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Union

from .._tokenizer import Tokenizer
from .._tokenizer_files import SPECIAL_FIELDS
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


def compile_template(template: str):
    """The template compiled as transformers compiles it; a syntax error is a
    :class:`ChatTemplateError` naming the line."""
    import jinja2

    try:
        return _compile(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e.message} (line {e.lineno})") from None


@functools.lru_cache(maxsize=64)
def _compile(template: str):
    import jinja2
    import jinja2.ext

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

    env = _sandbox_class()(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


@functools.cache
def _sandbox_class():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    #: Every attribute a plain dict has (its methods and object's): for any other name,
    #: ``getattr`` on a dict raises.
    dict_attributes = frozenset(dir(dict))

    class Sandbox(ImmutableSandboxedEnvironment):
        """transformers' sandbox, with ``message.content`` on a dict taken as an item at once.

        Jinja's sandbox asks a dict for an attribute ``content`` first, which raises, then
        takes the item: the exception was a third of a chat template's render. A plain dict
        has no attributes but ``dict_attributes``, so for any other name the item (or
        undefined) is what the sandbox itself returns; every other case is the sandbox's."""

        def getattr(self, obj, attribute):
            if obj.__class__ is dict and attribute not in dict_attributes:
                try:
                    return obj[attribute]
                except (TypeError, LookupError):
                    return self.undefined(obj=obj, name=attribute)
            return super().getattr(obj, attribute)

    return Sandbox


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
        if tools is not None and "tool_use" in named:
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
    if name not in named:
        raise ChatTemplateError(f"the tokenizer has no chat template named {name!r} (it has {sorted(named) or 'none'})")
    return named[name]


def _named_templates(own: Any) -> dict[str, str]:
    """tokenizer_config.json's ``chat_template`` as a dict by name: a string is the
    ``"default"``, a list of ``{"name": ..., "template": ...}`` names each."""
    if isinstance(own, str):
        return {"default": own}
    if not isinstance(own, list):
        return {}
    out = {}
    for entry in own:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str):
            out[entry["name"]] = entry["template"]
    return out


def config_token(tok: Tokenizer, key: str) -> str | None:
    """A token named in tokenizer_config.json (``"eos_token": "</s>"`` or ``{"content": "</s>"}``)."""
    value = tok.config.get(key)
    if value is None or value.__class__ is str:  # the usual cases, without the slower check for a Mapping
        return value or None
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _special_token_strings(tok: Tokenizer) -> dict[str, str]:
    """bos_token, eos_token, ... as the template sees them (tokenizer_config.json values)."""
    return {key: value for key in SPECIAL_FIELDS if (value := config_token(tok, key)) is not None}


#: ``content_special``: the rule (``"auto"``), every special token as text (``"text"``), or
#: a collection of the special tokens that alone become ids inside content.
ContentSpecial = Union[str, Iterable[str]]


def template_markers(tok: Tokenizer, template: str) -> set[str]:
    """The special tokens that are the template's own markup: those its text contains, the
    folder's BOS/EOS/PAD/UNK/SEP/CLS/MASK, the end-of-text token the tokenizer declares,
    and the BOS/EOS/end-of-turn/padding spellings of the common families (so that a bare
    tokenizer.json, without the folder's config, keeps them too). Inside content they are
    text: a user who writes ``<|im_end|>`` never ends a turn."""
    return set(_markers(tok._special_contents(), template, tuple(_special_token_strings(tok).values())))


@functools.lru_cache(maxsize=64)
def _markers(specials: tuple[str, ...], template: str, config_tokens: tuple[str, ...]) -> frozenset[str]:
    """:func:`template_markers` from what it depends on, once per tokenizer, template and
    config rather than per chat (a search of the template per special token: with Llama
    3's 256 special tokens, a fifth of ``encode_chat``'s time when done per chat)."""
    from .eos import CONTROL_SPELLINGS, OTHER_CONTROL_TOKENS, eos_among

    markers = {s for s in specials if s in template}
    markers |= set(specials) & (set(config_tokens) | set(CONTROL_SPELLINGS) | set(OTHER_CONTROL_TOKENS))
    declared = eos_among(specials)
    if declared is not None:
        markers.add(declared)
    return frozenset(markers)


@functools.lru_cache(maxsize=64)
def _not_markers(specials: tuple[str, ...], template: str, config_tokens: tuple[str, ...]) -> tuple[str, ...]:
    markers = _markers(specials, template, config_tokens)
    return tuple(sorted(s for s in specials if s not in markers))


def content_special_tokens(tok: Tokenizer, template: str, content_special: ContentSpecial = "auto") -> list[str]:
    """The special tokens that become ids inside message content under ``content_special``:
    with ``"auto"`` every special token but the template's markers (:func:`template_markers`);
    ``"text"`` none; a collection exactly those (each must be a special token)."""
    return list(_content_special(tok, template, content_special))


def _content_special(tok: Tokenizer, template: str, content_special: ContentSpecial) -> tuple[str, ...]:
    """:func:`content_special_tokens` as a tuple: "auto" gives the same tuple for each chat
    of a tokenizer and template, which the core then turns into ids once."""
    if isinstance(content_special, str):
        if content_special == "text":
            return ()
        if content_special != "auto":
            raise ValueError(
                f'content_special must be "auto", "text" or a collection of special tokens, got {content_special!r}'
            )
        return _not_markers(tok._special_contents(), template, tuple(_special_token_strings(tok).values()))
    try:
        chosen = list(content_special)
    except TypeError:
        raise TypeError(f"content_special must be a str or a collection of str, got {type(content_special).__name__}") from None
    specials = set(tok._special_contents())
    unknown = [t for t in chosen if not isinstance(t, str) or t not in specials]
    if unknown:
        raise ValueError(f"content_special names {unknown[0]!r}, which is not a special token of this tokenizer")
    return tuple(sorted(set(chosen)))


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


#: Bounds on one rendering. A template is code from a model folder: a loop nested over
#: ``range(10**5)``, a recursive macro or an exploding string costs that record (a
#: :class:`ChatTemplateError`), never the run. Time is checked as output is produced.
MAX_RENDERED_CHARS = 256 * 2**20
MAX_RENDER_SECONDS = 30.0


def _render(template, tok, messages, add_generation_prompt, tools, documents, template_kwargs) -> str:
    import jinja2

    context = {**_special_token_strings(tok), **template_kwargs}
    try:
        chunks, size = [], 0
        deadline = time.monotonic() + MAX_RENDER_SECONDS
        for chunk in compile_template(template).generate(
            messages=list(messages),
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **context,
        ):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise ChatTemplateError(f"chat template failed: it wrote more than {MAX_RENDERED_CHARS:,} characters")
            if time.monotonic() > deadline:
                raise ChatTemplateError(f"chat template failed: still rendering after {MAX_RENDER_SECONDS:.0f} s")
        return "".join(chunks)
    except ChatTemplateError:
        raise
    except jinja2.UndefinedError as e:
        raise ChatTemplateError(_undefined(e, messages)) from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except RecursionError:
        raise ChatTemplateError("chat template failed: it recurses too deeply") from None
    except Exception as e:  # noqa: BLE001 - the template's own code failed on these messages
        raise ChatTemplateError(f"chat template failed on these messages: {type(e).__name__}: {e}") from None


def _undefined(error: Exception, messages: Sequence[Mapping[str, Any]]) -> str:
    """Jinja's ``'dict object' has no attribute 'content'`` as which messages lack what."""
    text = str(error)
    variable = re.search(r"^'([^']*)' is undefined", text)
    if variable:
        return f"chat template failed: it reads {variable.group(1)!r}, which is not given ({text})"
    field = re.search(r"has no attribute '([^']*)'", text)
    lacking = [i for i, m in enumerate(messages) if field and field.group(1) not in m]
    if not field or not lacking:
        return f"chat template failed: {text}"
    which = ", ".join(f"{i} ({messages[i].get('role')})" for i in lacking[:5]) + (", ..." if len(lacking) > 5 else "")
    many = len(lacking) > 1
    return (f"chat template failed: it reads {field.group(1)!r}, which message{'s' if many else ''} {which} "
            f"{'do' if many else 'does'} not have ({text})")


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


def _content_spans(template, tok, messages, slots, rendered, add_generation_prompt, tools, documents, kwargs):
    """(start, end, message index) of each written text in ``rendered``.

    The texts are replaced by unique sentinels and the template rendered again (once per
    chat shape: :func:`_skeleton`). The skeleton's literal pieces must then appear in
    ``rendered`` in order, and between them each text as written or trimmed (Llama's and
    Gemma's templates ``| trim`` it): that gives exact spans. A template that changes texts
    otherwise falls back to a search.
    """
    if not slots:
        return []
    sentinels = _sentinels(len(slots))
    replaced = _replaced(messages, slots, sentinels)
    skeleton = _skeleton(template, tok, replaced, sentinels, add_generation_prompt, tools, documents, kwargs)
    spans = _spans_from_skeleton(skeleton, slots, rendered) if skeleton else None
    return spans if spans is not None else _spans_by_search(tok, slots, rendered)


#: The tag of this process's sentinels: random, so that no text can spell one, and the
#: same for every chat, so that chats of one shape have one skeleton.
_TAG = uuid.uuid4().hex[:12]
#: Skeletons by what they are rendered from (see `_skeleton`); emptied when full.
_SKELETONS: dict[tuple[Any, ...], tuple[list[str], list[int]] | None] = {}
_SKELETONS_MAX = 1024


def _skeleton(
    template, tok, replaced, sentinels, add_generation_prompt, tools, documents, kwargs
) -> tuple[list[str], list[int]] | None:
    """The template rendered on ``replaced`` (the messages with their texts as
    ``sentinels``), parsed (:func:`_parse_skeleton`); ``None`` where it fails. With the
    texts out, what is rendered is the chat's shape (roles, tool calls, the number of
    texts), which most chats of a dataset share: a skeleton is rendered and parsed once per
    shape (the render was half of ``encode_chat``'s time).
    A template that prints the date renders today's: a day-old skeleton no longer matches
    and the spans come from the search, as for any other mismatch."""
    try:
        key: tuple[Any, ...] | None = (template, add_generation_prompt, _shape(replaced, tools, documents, kwargs, tok))
    except (TypeError, ValueError):
        key = None  # values JSON cannot spell: rendered every time
    if key is not None and key in _SKELETONS:
        return _SKELETONS[key]
    try:
        skeleton = _parse_skeleton(_render(template, tok, replaced, add_generation_prompt, tools, documents, kwargs), sentinels)
    except ChatTemplateError:
        skeleton = None
    if key is not None:
        if len(_SKELETONS) >= _SKELETONS_MAX:
            _SKELETONS.clear()
        _SKELETONS[key] = skeleton
    return skeleton


def _shape(replaced, tools, documents, kwargs, tok) -> tuple[Any, ...] | str:
    """Everything a skeleton is rendered from but the template, as a dict key. Keys stay in
    their order: a template may print a message's fields as they come."""
    config = tuple(_special_token_strings(tok).items())
    if tools is None and documents is None and not kwargs and all(
        all(value.__class__ is str for value in m.values()) for m in replaced
    ):
        # Messages of strings alone (most chats): their items, without the JSON (a tenth of
        # encode_chat's time). A tuple never equals the JSON string of another shape.
        return tuple(tuple(m.items()) for m in replaced), config
    return json.dumps([replaced, tools, documents, kwargs, dict(config)])


#: A text's stand-in in the skeleton: private-use marks around a random tag and its number.
_SENTINEL_START, _SENTINEL_END = "\U000f0003", "\U000f0004"
#: One pattern for every skeleton (one made of each skeleton's sentinels was compiled per
#: chat, and was a third of encode_chat's time).
_SENTINEL = re.compile(f"{_SENTINEL_START}[0-9a-f]{{12}}[0-9]+{_SENTINEL_END}")


@functools.lru_cache(maxsize=256)
def _sentinels(count: int) -> tuple[str, ...]:
    return tuple(f"{_SENTINEL_START}{_TAG}{k}{_SENTINEL_END}" for k in range(count))


def _parse_skeleton(skeleton: str, sentinels: Sequence[str]) -> tuple[list[str], list[int]] | None:
    """The skeleton's literal texts and, between each two, the number of the slot whose
    sentinel stands there; ``None`` for a template that prints a text twice."""
    number = {sentinel: k for k, sentinel in enumerate(sentinels)}
    literals, order, cursor = [], [], 0
    for m in _SENTINEL.finditer(skeleton):
        k = number.get(m.group())
        if k is None:
            continue  # a message's own text that looks like one (the tag is random: never ours)
        literals.append(skeleton[cursor : m.start()])
        order.append(k)
        cursor = m.end()
    literals.append(skeleton[cursor:])
    return (literals, order) if len(set(order)) == len(order) else None


def _spans_from_skeleton(skeleton: tuple[list[str], list[int]], slots, rendered):
    literals, order = skeleton
    spans, pos = [], 0
    for n, k in enumerate(order):
        literal, (i, _, _, text), after = literals[n], slots[k], literals[n + 1]
        if not rendered.startswith(literal, pos):
            return None
        pos += len(literal)
        written = text  # as written, most often; else trimmed
        if not (rendered.startswith(text, pos) and rendered.startswith(after, pos + len(text))):
            for written in dict.fromkeys((text.strip(), text.lstrip(), text.rstrip())):
                if rendered.startswith(written, pos) and rendered.startswith(after, pos + len(written)):
                    break
            else:
                return None
        spans.append((pos, pos + len(written), i))
        pos += len(written)
    return spans if rendered[pos:] == literals[-1] else None


def _spans_by_search(tok, slots, rendered):
    """Each text (or its trimmed form) at its first place after the previous one that does
    not cut through a special token's spelling: a reply "a" is not the "a" of a template's
    ``<|start_header_id|>``."""
    specials = [s for s in tok._special_contents() if s]
    marks = sorted((m.start(), m.end()) for s in specials for m in re.finditer(re.escape(s), rendered))
    spans, cursor = [], 0
    for i, _, _, text in slots:
        for candidate in dict.fromkeys((text, text.strip())):
            at = rendered.find(candidate, cursor) if candidate else -1
            while at >= 0 and any(a < at + len(candidate) and at < b and not (at <= a and b <= at + len(candidate))
                                  for a, b in marks):
                at = rendered.find(candidate, at + 1)
            if at >= 0:
                spans.append((at, at + len(candidate), i))
                cursor = at + len(candidate)
                break
    return spans


def _unmarker(marked: str):
    """Maps an offset in ``marked`` to the offset in the text without generation markers (a
    binary search over the markers: linear in the text, whatever the number of turns)."""
    markers = [i for i, ch in enumerate(marked) if ch == GENERATION_START or ch == GENERATION_END]
    return lambda offset: offset - bisect.bisect_left(markers, offset)


def _generation_spans(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Strip ``{% generation %}`` markers, returning the text and the marked spans."""
    if GENERATION_START not in text and GENERATION_END not in text:
        return text, []  # most templates: no walk over every character
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
    allowed = _content_special(tok, template, content_special)
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
    slots = _text_slots(messages)
    spans = _content_spans(template, tok, messages, slots, marked, add_generation_prompt, tools, documents, template_kwargs)
    if generation:
        unmarked = _unmarker(marked)
        spans = [(unmarked(s), unmarked(e), i) for s, e, i in spans]
    located = {j for _, _, j in spans}
    warnings = [
        f"message {i} ({messages[i]['role']}): "
        + ("the template leaves its " + key + " out" if text.strip() not in rendered
           else f"its {key} could not be located in the rendered template")
        for i, key, _, text in slots
        if i not in located
    ]
    # Tool calls are written by the template from structured fields, not copied text: they
    # are neither located nor protected, and a turn of calls alone takes no loss.
    warnings += [
        f"message {i} (assistant): its tool_calls take no loss (only written text such as content does) "
        "and special-token strings in them are not protected"
        for i, m in enumerate(messages)
        if m.get("role") == "assistant" and m.get("tool_calls")
    ]
    protected = [(s, e) for s, e, _ in spans]
    # Checked by content_special_tokens; a tuple, so that the core can tell it met it before.
    inside = (allowed if isinstance(allowed, tuple) else tuple(allowed)) or None
    if loss == "all":
        ids = tok._core.encode_labeled(rendered, "allow", None, protected, inside, [], IGNORE_INDEX)[0]
        return Example(ids, list(ids), warnings), rendered, spans

    regions = generation or _assistant_regions(tok, messages, rendered, spans, warnings)
    # Labels from each token's offsets, in the core: each token that overlaps a region keeps
    # its id (a token that straddles the template text and a reply, such as ":\n\nHello",
    # takes loss: the reply needs it); a token with no chars of its own counts where it stands.
    ids, labels = tok._core.encode_labeled(rendered, "allow", None, protected, inside, list(regions), IGNORE_INDEX)
    return Example(ids, labels, warnings), rendered, spans


def _check_messages(messages) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ValueError(f"message {i} must be a dict with a 'role' (got {m!r:.80})")
        out.append(dict(m))
    return out


#: The warning for an assistant turn that no special token closes (lint's error, prepare's stop).
NO_END_TOKEN = "the template closes this assistant turn with no special token (no EOS)"


@functools.lru_cache(maxsize=16)
def _first_special(specials: tuple[str, ...]) -> re.Pattern[str] | None:
    """A pattern that finds the first special token in a text, the longest where several
    start there (one search instead of one per special token: Llama 3 has 256)."""
    alternatives = sorted({s for s in specials if s}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alternatives))) if alternatives else None


def _assistant_regions(tok, messages, rendered, spans, warnings):
    """One region per assistant message, from its first written text to its last (its
    reasoning, the template's ``</think>``, its reply), extended over the template text that
    closes the turn up to and including the first special token there (``<|im_end|>``,
    ``<|eot_id|>``, ``</s>``...)."""
    first_special = _first_special(tok._special_contents())
    extent: dict[int, list[int]] = {}
    for start, end, i in spans:
        first_last = extent.setdefault(i, [start, end])
        first_last[0], first_last[1] = min(first_last[0], start), max(first_last[1], end)
    regions = []
    for i, (start, end) in extent.items():
        if messages[i].get("role") != "assistant":
            continue
        limit = min((s for s, _ in extent.values() if s >= end), default=len(rendered))
        hit = first_special.search(rendered, end, limit) if first_special else None
        if hit:
            regions.append((start, hit.end()))
        else:
            regions.append((start, end))
            warnings.append(f"message {i}: {NO_END_TOKEN}")
    return regions

