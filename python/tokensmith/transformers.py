"""A drop-in for ``transformers.AutoTokenizer``: change one import, keep the code.

>>> from tokensmith.transformers import AutoTokenizer     # instead of: from transformers import AutoTokenizer
>>> tok = AutoTokenizer.from_pretrained("models/Qwen2.5-0.5B")   # doctest: +SKIP
>>> tok(["a text", "another"], truncation=True, max_length=512)  # doctest: +SKIP

The object returned **is** the tokenizer transformers builds for the folder (its class,
settings, chat template, ``save_pretrained``, every method), with tokensmith's core
underneath for the calls that decide preprocessing speed. How the work is divided:

* ``tok(text or texts, ...)``, ``tok(texts, second_texts)``, ``encode``, ``decode``,
  ``batch_decode``: tokensmith, for ids, attention masks, lengths, special-token masks, token
  type ids and (for single texts) offsets, with every truncation strategy, padding strategy and
  side, ``pad_to_multiple_of`` and ``return_tensors``. That is what ``datasets.map``
  preprocessing, TRL and LLaMA-Factory ask for.
* The same calls with offsets of pairs, pre-split words, overflowing windows or
  ``sanitize_control_tokens``: transformers' own engine, unchanged.
* ``BatchEncoding.tokens()`` comes from tokensmith's ids; ``word_ids()`` and the other
  per-token maps of a fast-path result are computed by transformers' engine when first asked
  for (with the settings of the call), and their ids are checked against tokensmith's.
* Everything else (vocabulary, added tokens, chat templates, saving) is transformers' code on
  transformers' state; tokensmith's core follows that state (it is rebuilt when tokens are
  added or a pipeline component changes).

``tok(texts, special="text")`` encodes special-token strings in untrusted text as plain text,
an option transformers lacks (its ``split_special_tokens=True`` does the same).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import transformers
from tokenizers import Tokenizer as _HFTokenizer
from transformers.tokenization_utils_base import BatchEncoding, TruncationStrategy
from transformers.utils import PaddingStrategy

from . import _core
from ._tokenizer import AddedToken, Tokenizer
from .errors import TokenizerError, UnsupportedTokenizerError

__all__ = ["AutoTokenizer", "accelerate"]


class AutoTokenizer:
    """``transformers.AutoTokenizer`` for local folders, with tokensmith's engine."""

    def __init__(self) -> None:
        raise OSError("use AutoTokenizer.from_pretrained(folder)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *inputs: Any, fallback: bool = False, **kwargs: Any) -> Any:
        """The tokenizer transformers loads from a local folder, running on tokensmith.

        Nothing is downloaded: a name that is not a folder is an error. When tokensmith cannot
        run the folder's tokenizer, the error says why; with ``fallback=True`` transformers'
        own tokenizer is returned instead, with a warning.
        """
        folder = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{folder!r} is not a folder: tokensmith.transformers loads local folders only and never downloads"
            )
        kwargs["local_files_only"] = True
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, *inputs, **kwargs)
        return accelerate(tokenizer, fallback=fallback)


def accelerate(tokenizer: Any, *, fallback: bool = False) -> Any:
    """Puts tokensmith's engine under an existing transformers fast tokenizer, in place, and
    returns it (see the module's documentation)."""
    if isinstance(tokenizer, _Accelerated):
        return tokenizer
    try:
        core = _core_for(tokenizer)
    except UnsupportedTokenizerError as e:
        if not fallback:
            raise
        warnings.warn(f"{e}; using transformers' own tokenizer", stacklevel=2)
        return tokenizer
    tokenizer.__class__ = _accelerated_class(type(tokenizer))
    tokenizer._ts = _Engine(core, _fingerprint(tokenizer._tokenizer))
    return tokenizer


def _core_for(tokenizer: Any) -> Tokenizer:
    backend = getattr(tokenizer, "_tokenizer", None)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not getattr(tokenizer, "is_fast", False) or not isinstance(backend, _HFTokenizer):
        raise UnsupportedTokenizerError(
            f"tokensmith cannot run {name}: {type(tokenizer).__name__} is not a Hugging Face `tokenizers` "
            "tokenizer (no tokenizer.json backend)"
        )
    try:
        core = Tokenizer.from_str(backend.to_str())
    except TokenizerError as e:
        raise UnsupportedTokenizerError(f"tokensmith cannot run {name}: {e}") from e
    # Padding happens per call, in Python; truncation is set per call.
    core.padding = None
    core.truncation = None
    _check_added(core, backend, name)
    return core


def _check_added(core: Tokenizer, backend: _HFTokenizer, name: str) -> None:
    """Every added token has transformers' id in the core. A tokenizer.json loads its added
    tokens at the next free ids, whatever ids it lists, so the saved form of a tokenizer that
    had tokens added can load with other ids than the live one holds (o200k_base: 200019
    becomes 200000)."""
    for id, token in backend.get_added_tokens_decoder().items():
        if core.token_to_id(token.content) != id:
            raise UnsupportedTokenizerError(
                f"tokensmith cannot run {name}: its added token {token.content!r} has id {id}, and the "
                f"tokenizer rebuilt from its saved form gives {core.token_to_id(token.content)}"
            )


def _added_token(token: Any) -> AddedToken:
    return AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip, rstrip=token.rstrip,
                      normalized=token.normalized, special=token.special)  # fmt: skip


def _fingerprint(backend: _HFTokenizer) -> tuple:
    """What the backend's pipeline is (about 7 us a call): a change means the core must be
    rebuilt. The count of added tokens catches tokens added to the backend directly (or
    through a shallow copy of the tokenizer, which shares it); ``_add_tokens`` updates the core
    itself. A BPE model's dropout is the one model setting that changes ids."""
    parts = (backend.normalizer, backend.pre_tokenizer, backend.post_processor, backend.decoder)
    states = tuple(None if p is None else p.__getstate__() for p in parts)
    return (*states, backend.get_vocab_size(with_added_tokens=True), getattr(backend.model, "dropout", None))


class _Engine:
    """tokensmith's core for one transformers tokenizer, and what it was built from. ``core``
    is ``None`` when that state cannot be rebuilt exactly: transformers' engine runs it."""

    __slots__ = ("core", "fingerprint", "truncated", "templates")

    def __init__(self, core: Tokenizer | None, fingerprint: tuple) -> None:
        self.core = core
        self.fingerprint = fingerprint
        #: A copy of the core per truncation setting in use (copies share the model), so that
        #: calls with different settings can run at once, from any thread, without a lock.
        self.truncated: dict[str, Tokenizer] = {}
        #: (add_special_tokens, pair) -> what the post-processor adds (`_template`).
        self.templates: dict[tuple[bool, bool], _Template | None] = {}

    def __reduce__(self) -> tuple:
        # Only hashing sees an engine pickled (datasets fingerprints the tokenizer's __dict__,
        # whose `_tokenizer` already says everything); a real pickle leaves it out and the
        # unpickled tokenizer builds its own.
        return _no_engine, ()

    def with_truncation(self, truncation: dict[str, Any] | None) -> Tokenizer:
        assert self.core is not None
        if truncation is None:
            return self.core
        key = json.dumps(truncation, sort_keys=True)
        core = self.truncated.get(key)
        if core is None:
            core = self.core.copy()
            core.truncation = truncation
            if len(self.truncated) >= 16:  # settings are few in practice; never many copies
                self.truncated.clear()
            self.truncated[key] = core
        return core


@contextlib.contextmanager
def _backend_settings(
    backend: _HFTokenizer, truncation: dict[str, Any] | None, padding: dict[str, Any] | None, split_special: bool
) -> Iterator[_HFTokenizer]:
    """The backend with these settings for one encode (one thread at a time), then with the
    settings it had before."""

    def apply(truncation: dict[str, Any] | None, padding: dict[str, Any] | None, split_special: bool) -> None:
        backend.enable_truncation(**truncation) if truncation else backend.no_truncation()
        if padding:
            backend.enable_padding(**{k: v for k, v in padding.items() if k != "strategy"})
        else:
            backend.no_padding()
        backend.encode_special_tokens = split_special

    with _BACKEND_LOCK:
        saved = (backend.truncation, backend.padding, backend.encode_special_tokens)
        apply(truncation, padding, split_special)
        try:
            yield backend
        finally:
            apply(*saved)


def _no_engine() -> None:
    return None


_CLASSES: dict[type, type] = {}
_BACKEND_LOCK = threading.Lock()


def _accelerated_class(base: type) -> type:
    """``base`` with tokensmith's engine: a subclass with the same name, so that
    ``isinstance`` checks and ``save_pretrained``'s ``tokenizer_class`` are unchanged."""
    if base not in _CLASSES:
        _CLASSES[base] = type(base.__name__, (_Accelerated, base), {"__module__": base.__module__, "__qualname__": base.__qualname__})
    return _CLASSES[base]


def _restore(base: type, state: dict[str, Any]) -> Any:
    """An unpickled (or deep-copied) tokenizer: its engine is built on first use, and if its
    state cannot be rebuilt exactly, transformers' engine runs it (``_engine``)."""
    tokenizer = base.__new__(_accelerated_class(base))
    tokenizer.__dict__.update(state)
    return tokenizer


_FAST_TRUNCATION = (
    TruncationStrategy.DO_NOT_TRUNCATE,
    TruncationStrategy.LONGEST_FIRST,
    TruncationStrategy.ONLY_FIRST,
    TruncationStrategy.ONLY_SECOND,
)
_STRATEGIES = {TruncationStrategy.LONGEST_FIRST: "LongestFirst", TruncationStrategy.ONLY_FIRST: "OnlyFirst"}


class _Template:
    """A post-processor's output around one text or a pair: ``parts`` are the fixed tokens
    (ids, special-token mask, type ids) before each text and after the last, ``body_types`` each
    text's type id."""

    __slots__ = ("parts", "body_types", "specials", "bodies")

    def __init__(self, parts: list[tuple[list[int], list[int], list[int]]], body_types: list[int], specials: bool) -> None:
        self.parts, self.body_types, self.specials = parts, body_types, specials
        self.bodies: list[list[int]] = []

    @classmethod
    def find(cls, full: Any, bodies: list[list[int]], specials: bool) -> _Template | None:
        parts, body_types, at = [], [], 0
        for body in bodies:
            start = next(
                (i for i in range(at, len(full.ids) - len(body) + 1)
                 if body and full.ids[i : i + len(body)] == body and not any(full.special_tokens_mask[i : i + len(body)])),
                None,
            )  # fmt: skip
            if start is None:
                return None
            parts.append((full.ids[at:start], full.special_tokens_mask[at:start], full.type_ids[at:start]))
            body_types.append(full.type_ids[start])
            at = start + len(body)
        parts.append((full.ids[at:], full.special_tokens_mask[at:], full.type_ids[at:]))
        return cls(parts, body_types, specials)

    def assemble(self, lengths: list[int], field: int) -> list[int]:
        """One row's special-token mask (``field`` 1) or type ids (2), given its texts' lengths."""
        out: list[int] = []
        for part, n, body_type in zip(self.parts, lengths, self.body_types):
            out += part[field]
            out += [0 if field == 1 else body_type] * n
        return out + self.parts[-1][field]


def _truncate_pair(a: list[int], b: list[int], max_length: int, strategy: str, direction: str) -> tuple[list[int], list[int]] | None:
    """tokenizers' truncation of a pair (``truncate_encodings``), or ``None`` where it raises."""

    def keep(ids: list[int], n: int) -> list[int]:
        return ids[:n] if direction == "right" else ids[max(0, len(ids) - n) :]

    if max_length == 0:
        return [], []
    to_remove = len(a) + len(b) - max_length
    if to_remove <= 0:
        return a, b
    if strategy == "longest_first":
        n1, n2 = len(a), len(b)
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > max_length else max(n1, max_length - n1)
        if n1 + n2 > max_length:
            n1 = max_length // 2
            n2 = n1 + max_length % 2
        if swap:
            n1, n2 = n2, n1
        return keep(a, n1), keep(b, n2)
    if strategy == "only_first":
        return (keep(a, len(a) - to_remove), b) if len(a) > to_remove else None
    return (a, keep(b, len(b) - to_remove)) if len(b) > to_remove else None


class _Accelerated:
    """The methods tokensmith takes over; everything else is the transformers class's."""

    _ts: _Engine

    def __reduce__(self) -> tuple:
        state = {k: v for k, v in self.__dict__.items() if k != "_ts"}
        return _restore, (type(self).__mro__[2], state)

    def _engine(self) -> _Engine | None:
        """The core, rebuilt first if transformers' pipeline changed since it was made;
        ``None`` when it cannot be (then transformers' engine does the work)."""
        engine = self.__dict__.get("_ts")
        fingerprint = _fingerprint(self._tokenizer)
        if engine is None or fingerprint != engine.fingerprint:
            try:
                core = _core_for(self)
            except UnsupportedTokenizerError as e:
                warnings.warn(f"{e}; transformers' own engine runs it from now on", stacklevel=3)
                core = None
            self._ts = engine = _Engine(core, fingerprint)
        return engine if engine.core is not None else None

    def _add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        added = super()._add_tokens(new_tokens, special_tokens)  # type: ignore[misc]
        engine = self.__dict__.get("_ts")
        if engine is None:  # transformers' __init__ adding its own tokens, or unpickling
            return added
        # Added to the core as transformers added them, for the same ids (rebuilding from the
        # saved form may not give them: see _check_added).
        core = None
        if engine.core is not None:
            core = engine.core.copy()
            tokens = [t if isinstance(t, str) else _added_token(t) for t in new_tokens]
            try:
                core.add_special_tokens(tokens) if special_tokens else core.add_tokens(tokens)
                _check_added(core, self._tokenizer, self.name_or_path)  # type: ignore[attr-defined]
            except TokenizerError:
                core = None
        if core is None:
            self.__dict__.pop("_ts")
            self._engine()
        else:
            self._ts = _Engine(core, _fingerprint(self._tokenizer))
        return added

    def _encode_plus(
        self,
        text: Any,
        text_pair: Any = None,
        add_special_tokens: bool = True,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        truncation_strategy: TruncationStrategy = TruncationStrategy.DO_NOT_TRUNCATE,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: Any = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        split_special_tokens: bool | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        special = kwargs.pop("special", None)
        if special not in (None, "allow", "text"):
            raise ValueError(f'special must be "allow" or "text", got {special!r}')
        if special is not None:
            split_special_tokens = special == "text"

        def transformers_engine() -> BatchEncoding:
            return super(_Accelerated, self)._encode_plus(  # type: ignore[misc]
                text, text_pair, add_special_tokens, padding_strategy, truncation_strategy, max_length, stride,
                is_split_into_words, pad_to_multiple_of, padding_side, return_tensors, return_token_type_ids,
                return_attention_mask, return_overflowing_tokens, return_special_tokens_mask, return_offsets_mapping,
                return_length, verbose, split_special_tokens, **kwargs,
            )  # fmt: skip

        batched = isinstance(text, (list, tuple))
        texts = text if batched else [text]
        if batched:
            pairs = text_pair  # None, or one second text per text
        else:
            pairs = [text_pair] if text_pair else None  # transformers reads an empty pair as none
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names  # type: ignore[attr-defined]
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names  # type: ignore[attr-defined]
        fast = (
            not is_split_into_words
            and all(isinstance(t, str) for t in texts)
            and (pairs is None or (isinstance(pairs, (list, tuple)) and len(pairs) == len(texts)
                                   and all(isinstance(t, str) for t in pairs) and not return_offsets_mapping))
            and not return_overflowing_tokens
            and truncation_strategy in _FAST_TRUNCATION
            and not kwargs.get("sanitize_control_tokens")
        )  # fmt: skip
        engine = self._engine() if fast else None
        template = None
        if engine is not None and (pairs is not None or return_token_type_ids or return_special_tokens_mask):
            template = self._template(engine, add_special_tokens, pairs is not None)
            if template is None:
                engine = None
        if engine is None:
            return transformers_engine()
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens  # type: ignore[attr-defined]
        truncation = core_truncation = None
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE:
            cut = self.truncation_side  # type: ignore[attr-defined]
            truncation = {"max_length": max_length, "stride": stride, "strategy": truncation_strategy.value, "direction": cut}
            if truncation_strategy != TruncationStrategy.ONLY_SECOND:
                # The core reads them as tokenizer.json spells them.
                core_truncation = dict(truncation, strategy=_STRATEGIES[truncation_strategy], direction=cut.capitalize())
        policy = "text" if split_special_tokens else "allow"
        spans = None
        try:
            if pairs is not None:
                rows = self._pair_rows(engine, template, texts, pairs, policy, truncation)
                if rows is None:  # a truncation transformers refuses: its engine says so
                    return transformers_engine()
            elif core_truncation is None and truncation is not None:
                return transformers_engine()  # only_second on one text: transformers' error
            else:
                core = engine.with_truncation(core_truncation)
                if return_offsets_mapping:
                    encoded = [core.encode_with_offsets(t, add_special_tokens=add_special_tokens, special=policy) for t in texts]
                    rows, spans = [e[0] for e in encoded], [e[1] for e in encoded]
                elif batched:
                    rows = core.encode_batch(texts, add_special_tokens=add_special_tokens, special=policy)
                else:
                    rows = [core.encode(text, add_special_tokens=add_special_tokens, special=policy)]
        except TokenizerError:
            # A setting the core refuses (max_length below the template's tokens, ...):
            # transformers' engine says what it says about it.
            return transformers_engine()
        lengths = [len(r) for r in rows]
        side = padding_side if padding_side is not None else self.padding_side  # type: ignore[attr-defined]
        target = None
        if padding_strategy != PaddingStrategy.DO_NOT_PAD:
            # As tokenizers pads a batch: to the longest (or to max_length), rounded up to a
            # multiple; rows already as long are left as they are.
            target = max_length if padding_strategy == PaddingStrategy.MAX_LENGTH else max(lengths, default=0)
            if pad_to_multiple_of and target % pad_to_multiple_of:
                target += pad_to_multiple_of - target % pad_to_multiple_of

        def padded(seqs: list[list[Any]], value: Any) -> list[list[Any]]:
            if target is None:
                return seqs
            fill = [value]
            if side == "right":
                return [s + fill * (target - len(s)) if len(s) < target else s for s in seqs]
            return [fill * (target - len(s)) + s if len(s) < target else s for s in seqs]

        # Keys in transformers' order.
        data: dict[str, Any] = {"input_ids": _IdRows(padded(rows, self.pad_token_id))}  # type: ignore[attr-defined]
        if template is not None:
            fixed = sum(len(ids) for ids, _, _ in template.parts)
            bodies = template.bodies if pairs is not None else [[n - fixed] for n in lengths]
        if return_token_type_ids:
            types = [template.assemble(b, 2) for b in bodies]
            data["token_type_ids"] = _IdRows(padded(types, self.pad_token_type_id))  # type: ignore[attr-defined]
        if return_attention_mask:
            data["attention_mask"] = _IdRows(padded([[1] * n for n in lengths], 0))
        if return_special_tokens_mask:
            data["special_tokens_mask"] = _IdRows(padded([template.assemble(b, 1) for b in bodies], 1))
        if spans is not None:
            data["offset_mapping"] = padded(spans, (0, 0))
        rows = data["input_ids"]
        if return_length:
            data["length"] = [len(r) for r in rows]
        for ids in rows:
            self._eventual_warn_about_too_long_sequence(ids, max_length, verbose)  # type: ignore[attr-defined]
        pad = (self.pad_token_id, self.pad_token, self.pad_token_type_id)  # type: ignore[attr-defined]
        settings = (add_special_tokens, split_special_tokens, truncation, side, pad, engine.fingerprint)
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encodings = [_LazyEncoding(self, t, r, n, settings) for t, r, n in zip(inputs, rows, lengths)]
        if not batched and return_tensors is None:
            data = {k: (v[0] if v and isinstance(v[0], list) else v) for k, v in data.items()}
        return BatchEncoding(data, encodings, tensor_type=return_tensors, n_sequences=1 if pairs is None else 2)

    def _pair_rows(
        self, engine: _Engine, template: _Template, firsts: Any, seconds: Any, policy: str, truncation: dict[str, Any] | None
    ) -> list[list[int]] | None:
        """Each pair's ids: both texts encoded alone, truncated as tokenizers truncates a pair,
        in the post-processor's pair template. ``None`` where tokenizers raises instead.
        ``template.bodies`` is left holding each row's two text lengths."""
        core = engine.core
        assert core is not None
        a_rows = core.encode_batch(list(firsts), add_special_tokens=False, special=policy)
        b_rows = core.encode_batch(list(seconds), add_special_tokens=False, special=policy)
        limit = None
        if truncation is not None:
            added = sum(len(ids) for ids, _, _ in template.parts) if template.specials else 0
            limit = truncation["max_length"] - added
        # A max_length below the template's tokens cuts nothing: tokenizers' unsigned
        # subtraction wraps around.
        if limit is not None and limit >= 0:
            cut = [_truncate_pair(a, b, limit, truncation["strategy"], truncation["direction"])  # type: ignore[index]
                   for a, b in zip(a_rows, b_rows)]  # fmt: skip
            if any(c is None for c in cut):
                return None
            a_rows, b_rows = [c[0] for c in cut], [c[1] for c in cut]  # type: ignore[index]
        template.bodies = [[len(a), len(b)] for a, b in zip(a_rows, b_rows)]
        (pre, _, _), (mid, _, _), (post, _, _) = template.parts
        return [pre + a + mid + b + post for a, b in zip(a_rows, b_rows)]

    def _template(self, engine: _Engine, add_special_tokens: bool, pair: bool) -> _Template | None:
        """What the post-processor puts around one text or a pair, read once from transformers'
        engine on probe texts. ``None`` when the texts' ids do not appear whole and in order in
        the result (a post-processor that is not a template)."""
        key = (add_special_tokens, pair)
        if key not in engine.templates:
            backend = self._tokenizer
            probes = ["a", "b"] if pair else ["a"]
            with _backend_settings(backend, None, None, False):
                bodies = [backend.encode(p, add_special_tokens=False).ids for p in probes]
                full = backend.encode(*probes, add_special_tokens=add_special_tokens)
            engine.templates[key] = _Template.find(full, bodies, add_special_tokens)
        template = engine.templates[key]
        # A fresh copy per call: `bodies` is per call.
        return None if template is None else _Template(template.parts, template.body_types, template.specials)

    def _reference_encoding(self, text: str | tuple[str, str], ids: list[int], length: int, settings: tuple) -> Any:
        """transformers' own encoding of ``text`` with the settings of the call that made
        ``ids``, for the per-token maps tokensmith does not compute; its ids must be ``ids``."""
        add_special_tokens, split_special_tokens, truncation, side, (pad_id, pad_token, pad_type_id), made_with = settings
        backend = self._tokenizer
        if _fingerprint(backend) != made_with:
            raise RuntimeError(
                "this result's word_ids() and other per-token maps are computed when first asked for, and "
                "the tokenizer has changed since the call that made it (tokens added, a new post-processor, "
                "...): ask for them before changing the tokenizer, or call it again"
            )
        padding = None
        if len(ids) > length:  # padded: to this row's length, as the call padded it
            padding = {"length": len(ids), "direction": side, "pad_id": pad_id, "pad_token": pad_token, "pad_type_id": pad_type_id}
        with _backend_settings(backend, truncation, padding, split_special_tokens):
            texts = text if isinstance(text, tuple) else (text,)
            encoding = backend.encode(*texts, add_special_tokens=add_special_tokens)
        if encoding.ids != ids:
            raise RuntimeError(
                f"tokensmith and transformers encode {text[:80]!r} differently ({ids[:20]} vs {encoding.ids[:20]}); "
                "please report this"
            )
        return encoding

    def _decode(self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> str:
        cleanup = clean_up_tokenization_spaces if clean_up_tokenization_spaces is not None else self.clean_up_tokenization_spaces  # type: ignore[attr-defined]
        if cleanup:  # transformers decides whether and how to clean up: its own path
            return super()._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces, **kwargs)  # type: ignore[misc]
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        elif isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        engine = self._engine()
        try:
            if engine is None:
                raise TypeError("no engine")
            return engine.core.decode(token_ids, skip_special_tokens=skip_special_tokens)
        except (TokenizerError, TypeError, OverflowError):
            # Ids outside the vocabulary (tokenizers skips them) and other odd input: its own path.
            return super()._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces, **kwargs)  # type: ignore[misc]


class _IdRows(list):
    """A batch's rows of ids (or mask values): a ``list`` of lists, as transformers returns
    it, that also hands its current contents to Arrow in one pass. ``datasets.map`` writes
    these columns, and pyarrow's own conversion takes about 100 ns per Python int: more than
    the whole encode. Rows changed after the call are read as they are then."""

    __slots__ = ()

    def __arrow_array__(self, type: Any = None) -> Any:
        import numpy as np
        import pyarrow as pa

        flat = _core.flatten_int_rows(self) if self else None
        if flat is None:  # not rows of ints (changed by the caller), or empty: pyarrow's way
            return pa.array(list(self), type=type)
        values, offsets = flat
        array = pa.ListArray.from_arrays(pa.array(np.frombuffer(offsets, "<i4")), pa.array(np.frombuffer(values, "<i8")))
        return array if type is None else array.cast(type)


class _LazyEncoding:
    """One text's entry in ``BatchEncoding.encodings``: ids and attention mask from
    tokensmith; tokens from the ids; any other attribute (``word_ids``, ``offsets``,
    ``char_to_token``, ...) from transformers' engine on first use."""

    __slots__ = ("_owner", "_text", "ids", "_length", "_settings", "_reference")

    def __init__(self, owner: _Accelerated, text: str | tuple[str, str], ids: list[int], length: int, settings: tuple) -> None:
        self._owner, self._text, self.ids, self._length, self._settings = owner, text, ids, length, settings
        self._reference: Any = None

    @property
    def attention_mask(self) -> list[int]:
        pad = len(self.ids) - self._length
        return [1] * self._length + [0] * pad if self._settings[3] == "right" else [0] * pad + [1] * self._length

    @property
    def tokens(self) -> list[str]:
        return self._owner.convert_ids_to_tokens(self.ids)  # type: ignore[attr-defined]

    @property
    def n_sequences(self) -> int:
        return len(self._text) if isinstance(self._text, tuple) else 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._reference is None:
            self._reference = self._owner._reference_encoding(self._text, self.ids, self._length, self._settings)
        return getattr(self._reference, name)

    def __reduce__(self) -> tuple:
        self.word_ids  # noqa: B018 (makes the reference encoding, which pickles)
        return _identity, (self._reference,)

    def __repr__(self) -> str:
        return f"Encoding(num_tokens={len(self.ids)}, from tokensmith)"


def _identity(value: Any) -> Any:
    return value
