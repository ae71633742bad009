"""The typed Python face of the Rust tokenizer core."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from . import _core
from .errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AddedToken", "Tokenizer", "SpecialPolicy"]

#: ``"allow"`` (special tokens in text become ids, the reference behaviour), ``"text"``
#: (they are plain text: use it for untrusted input), ``"raise"`` (a
#: :class:`~tokensmith.SpecialTokenError`), or a collection of token strings that alone
#: become ids.
SpecialPolicy = Union[str, Iterable[str]]

_POLICIES = ("allow", "text", "raise")


@dataclass
class AddedToken:
    """A token added on top of the model vocabulary, with Hugging Face's flags.

    ``normalized`` left unset (``None``) becomes ``not special`` when the token is added
    (with ``add_special_tokens`` the token is special), as in ``tokenizers``.

    >>> AddedToken("<|box_start|>", special=True)
    AddedToken(content='<|box_start|>', single_word=False, lstrip=False, rstrip=False, normalized=None, special=True, id=None)
    """

    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool | None = None
    special: bool = False
    id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.content, str):
            raise TypeError(f"AddedToken content must be str, got {type(self.content).__name__}")

    def _flags(self) -> tuple[str, bool, bool, bool, bool, bool]:
        # Left unset, `normalized` follows `special` as it is when the token is added: the
        # reference stores False for a plain AddedToken given to add_special_tokens.
        normalized = not self.special if self.normalized is None else self.normalized
        return (
            self.content,
            bool(self.single_word),
            bool(self.lstrip),
            bool(self.rstrip),
            bool(normalized),
            bool(self.special),
        )


def _policy(special: SpecialPolicy) -> tuple[str, list[str] | None]:
    if isinstance(special, str):
        if special not in _POLICIES:
            raise ValueError(
                f'special must be "allow", "text", "raise" or a collection of token strings, got {special!r}'
            )
        return special, None
    try:
        allowed = list(special)
    except TypeError:
        raise TypeError(f"special must be a str or a collection of str, got {type(special).__name__}") from None
    if not all(isinstance(t, str) for t in allowed):
        raise TypeError("special must be a collection of token strings")
    return "only", allowed


class Tokenizer:
    """A byte-level BPE tokenizer that encodes token for token like the reference libraries.

    >>> tok = Tokenizer.from_pretrained("path/to/model")            # doctest: +SKIP
    >>> tok.encode("Hello</s>", special="text")                     # doctest: +SKIP
    """

    __slots__ = ("_core", "config", "_specials")

    def __init__(self, core: _core.CoreTokenizer, config: dict[str, Any] | None = None) -> None:
        self._core = core
        self._specials: tuple[str, ...] | None = None  # see _special_contents
        #: tokenizer_config.json of the folder it was loaded from (``{}`` otherwise), kept in
        #: step with the tokens added since (``added_tokens_decoder``, the extra special
        #: tokens), as :meth:`save_pretrained` writes it.
        self.config: dict[str, Any] = config or {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a Hugging Face ``tokenizer.json``.

        >>> tok = Tokenizer.from_file("tokenizer.json")              # doctest: +SKIP
        """
        return cls(_core.CoreTokenizer.from_file(os.fspath(path)))

    @classmethod
    def from_str(cls, json_text: str) -> Tokenizer:
        """Load a tokenizer from the text of a ``tokenizer.json``."""
        return cls(_core.CoreTokenizer.from_str(json_text))

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike[str]) -> Tokenizer:
        """Load ``tokenizer.json`` (and ``tokenizer_config.json`` if present) from a local folder.

        Never downloads: a name that is not a folder is an error.

        >>> tok = Tokenizer.from_pretrained("models/Qwen2.5-0.5B")   # doctest: +SKIP
        >>> tok.config.get("eos_token")                              # doctest: +SKIP
        '<|im_end|>'
        """
        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: not a folder (tokensmith loads local folders only and never downloads)"
            )
        path = folder / "tokenizer.json"
        sentencepiece_model = folder / "tokenizer.model"
        if not path.is_file() and not sentencepiece_model.is_file():
            raise FileNotFoundError(f"{folder}: no tokenizer.json or tokenizer.model in this folder")
        config: dict[str, Any] = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                from .errors import TokenizerFormatError

                raise TokenizerFormatError(f"{config_path}: not valid JSON ({e})") from None
        templates = _chat_templates(folder, config)
        if templates is not None:
            config["chat_template"] = templates
        if not path.is_file():
            # Older SentencePiece checkpoints ship only the .model file.
            return cls(_core.CoreTokenizer.from_sentencepiece(str(sentencepiece_model)), config)
        return cls(_core.CoreTokenizer.from_file(str(path)), config)

    @classmethod
    def from_tiktoken(
        cls,
        path: str | os.PathLike[str],
        pattern: str,
        special_tokens: dict[str, int] | None = None,
    ) -> Tokenizer:
        """Load a tiktoken rank file with its split pattern and special tokens.

        >>> tok = Tokenizer.from_tiktoken("cl100k_base.tiktoken", pattern=CL100K_PATTERN,
        ...                               special_tokens={"<|endoftext|>": 100257})  # doctest: +SKIP
        """
        specials = sorted((special_tokens or {}).items(), key=lambda kv: kv[1])
        return cls(_core.CoreTokenizer.from_tiktoken(os.fspath(path), pattern, specials))

    @classmethod
    def from_sentencepiece(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a SentencePiece ``.model`` file (BPE models: Llama 2, Mistral, ...).

        ``encode(text, add_special_tokens=False, special="text")`` gives the ids of
        ``sentencepiece.SentencePieceProcessor(model_file=path).encode(text)``, and
        ``add_special_tokens=True`` puts the BOS piece first. Control pieces (``<s>``,
        ``</s>``, ...) are special tokens: under the default ``special="allow"`` a ``"</s>"``
        written in the text becomes the EOS id, where sentencepiece (and ``special="text"``)
        spells it out as text. ``decode`` equals ``sp.decode`` on the ids of text; it
        differs where the tokenizer.json decoders cannot follow: the unknown id decodes to
        ``<unk>`` (sentencepiece: `` ⁇ ``) and control ids to their text (sentencepiece:
        nothing; pass ``skip_special_tokens=True``). ``save()`` writes a tokenizer.json that
        Hugging Face ``tokenizers`` loads and that tokensmith reloads with sentencepiece's
        merge order (the piece scores travel in the model section). User-defined pieces
        match in the normalized text as spelled, as sentencepiece matches them (the saved
        file's reference normalizes them: its ids differ on text that contains them). A
        non-empty precompiled charsmap normalizes as ``tokenizers``' conversion does (per
        grapheme), which can differ from sentencepiece's longest-prefix rule on
        compatibility characters; Llama 2 and Mistral models have none. Unigram, word and char models raise
        :class:`UnsupportedTokenizerError`; a file that is not a model raises
        :class:`TokenizerFormatError`.

        >>> tok = Tokenizer.from_sentencepiece("tokenizer.model")    # doctest: +SKIP
        >>> tok.encode("Hello world", special="text")                # doctest: +SKIP
        [1, 15043, 3186]
        """
        return cls(_core.CoreTokenizer.from_sentencepiece(os.fspath(path)))

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, *, add_special_tokens: bool = True, special: SpecialPolicy = "allow") -> list[int]:
        """The token ids of ``text``.

        ``add_special_tokens`` applies the tokenizer's template (BOS/EOS). ``special``
        decides what special-token strings inside ``text`` become: see :data:`SpecialPolicy`.

        >>> tok.encode("<|im_start|>user", special="text")            # doctest: +SKIP
        """
        # `special` is checked in Rust, as `_policy` checks it for the other methods.
        return self._core.encode(text, add_special_tokens, special)

    def encode_with_offsets(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        special: SpecialPolicy = "allow",
        protected: Iterable[tuple[int, int]] = (),
        protected_allowed: Iterable[str] = (),
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of ``text`` and each token's ``(start, end)`` indices in ``text``.

        The offsets are the reference's (``tokenizers``' ``Encoding.offsets``): through
        normalizers and prefix spaces, with ``trim_offsets`` as the file says; tokens the
        template adds get ``(0, 0)``. Inside the ``protected`` ``(start, end)`` ranges
        special-token strings are plain text whatever ``special`` says, but those named in
        ``protected_allowed``: use it for user content spliced into a template.

        >>> ids, offsets = tok.encode_with_offsets("<|im_start|>user\nhi", protected=[(17, 19)])  # doctest: +SKIP
        """
        policy, allowed = _policy(special)
        inside = _policy(protected_allowed)[1] or None
        return self._core.encode_with_offsets(text, add_special_tokens, policy, allowed, list(protected), inside)

    def encode_batch(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, special: SpecialPolicy = "allow"
    ) -> list[list[int]]:
        """``encode`` for many texts at once, in parallel on all cores (the GIL is released).

        >>> tok.encode_batch(["a", "b"])                               # doctest: +SKIP
        """
        policy, allowed = _policy(special)
        return self._core.encode_batch(texts, add_special_tokens, policy, allowed)

    def encode_batch_numpy(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, special: SpecialPolicy = "allow"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode many texts into one flat ``uint32`` id array and ``int64`` offsets of length n + 1.

        The ids of text ``i`` are ``ids[offsets[i]:offsets[i + 1]]``; no Python list is built.

        >>> ids, offsets = tok.encode_batch_numpy(["a b", "c"])        # doctest: +SKIP
        """
        import numpy as np

        policy, allowed = _policy(special)
        ids, offsets = self._core.encode_batch_flat(texts, add_special_tokens, policy, allowed)
        return np.frombuffer(ids, dtype="<u4"), np.frombuffer(offsets, dtype="<i8")

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ``ids`` (invalid UTF-8 becomes U+FFFD, as in the reference).

        >>> tok.decode(tok.encode("hello"))                             # doctest: +SKIP
        'hello'
        """
        try:
            return self._core.decode(ids, skip_special_tokens)
        except (OverflowError, TypeError) as e:
            raise (_bad_ids(ids) or e) from None

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special_tokens: bool = False) -> list[str]:
        """``decode`` for many id lists at once, in parallel."""
        try:
            return self._core.decode_batch(batch, skip_special_tokens)
        except (OverflowError, TypeError) as e:
            for ids in batch:
                error = _bad_ids(ids)
                if error is not None:
                    raise error from None
            raise e

    # ------------------------------------------------------------------ vocabulary

    def add_tokens(self, tokens: Iterable[str | AddedToken]) -> list[int]:
        """Add tokens (plain strings are non-special, normalized vocabulary) and return their ids.

        A token that already exists keeps its id. Same ids as ``tokenizers``' ``add_tokens``.

        >>> tok.add_tokens(["新词", AddedToken("<|box_start|>", special=True)])   # doctest: +SKIP
        [50257, 50258]
        """
        return self._add([t if isinstance(t, AddedToken) else AddedToken(t, special=False) for t in tokens])

    def add_special_tokens(self, tokens: Iterable[str | AddedToken]) -> list[int]:
        """Add special tokens (never normalized unless an AddedToken says so) and return their ids.

        >>> tok.add_special_tokens(["<|box_start|>", "<|box_end|>"])  # doctest: +SKIP
        [50257, 50258]
        """
        resolved = []
        for t in tokens:
            if isinstance(t, AddedToken):
                # As the reference: the token becomes special; `normalized` keeps an explicit value.
                t = AddedToken(t.content, t.single_word, t.lstrip, t.rstrip, t.normalized, special=True)
            else:
                t = AddedToken(t, special=True)
            resolved.append(t)
        return self._add(resolved)

    def _add(self, tokens: list[AddedToken]) -> list[int]:
        for t in tokens:
            if not isinstance(t, AddedToken):
                raise TypeError(f"expected str or AddedToken, got {type(t).__name__}")
        from ._tokenizer_files import FLAGS, _new_tokenizer_config

        flags = [t._flags() for t in tokens]
        self._specials = None
        ids = self._core.add_tokens(flags)
        # transformers learns which tokens are special from tokenizer_config.json, not from
        # tokenizer.json: the config follows every addition (the core has just set each
        # token's flags to these, new or not, as the reference does).
        _new_tokenizer_config(self.config, [dict(zip(("content", *FLAGS), f), id=i) for f, i in zip(flags, ids) if i is not None])
        empty = [t.content for t, i in zip(tokens, ids) if i is None]
        if empty:
            raise InvalidInputError("cannot add an empty token")
        return ids

    def reuse_reserved(
        self, tokens: Iterable[str], *, patterns: Iterable[str] | None = None, special: bool = True
    ) -> list[int]:
        """Add ``tokens`` into untrained reserved slots first, and return their ids.

        Each new token takes over the next free slot (Llama 3 ``<|reserved_special_token_N|>``,
        Gemma ``<unusedN>``, Mistral ``[control_N]``, Tekken ``<SPECIAL_N>``, or ``patterns``,
        regular expressions matched against whole tokens): the slot is renamed and keeps its
        id, so the embedding needs no new row. Slots that ``config`` names (special-token
        fields, chat template) or that tokenizer.json pads or post-processes with are not
        taken. When the slots run out the rest are added after the vocabulary; a token that
        exists already keeps its id, as with :meth:`add_special_tokens` (``special=True``) or
        :meth:`add_tokens`. Same ids as :func:`tokensmith.checkpoint.add_tokens` with
        ``reuse_reserved=True`` on the folder, except for slots that only the model's
        config.json or generation_config.json name (e.g. a ``pad_token_id``), which a
        Tokenizer does not see: the folder tool skips those too.

        >>> tok.reuse_reserved(["<|box_start|>", "<|box_end|>"])       # doctest: +SKIP
        [128002, 128003]
        """
        import re

        from . import _tokenizer_files as F

        tokens = list(tokens)
        for t in tokens:
            if not isinstance(t, str):
                raise TypeError(f"tokens must be str, got {type(t).__name__}")
            if not t:
                raise InvalidInputError("cannot add an empty token")
        compiled = [re.compile(p) for p in (list(patterns or ()) or F.RESERVED_PATTERNS.values())]
        present = [t for t in tokens if self.token_to_id(t) is not None]
        if present:
            (self.add_special_tokens if special else self.add_tokens)(present)
        new = list(dict.fromkeys(t for t in tokens if t not in set(present)))
        if new:
            data = json.loads(self.to_str())
            vocab = F._vocabulary(data)
            asked = set(tokens)
            free = [s for s in F._reserved_slots(vocab, compiled, F._used_by(self.config, {}, data)) if s[1] not in asked]
            placed = F._placements(new, free, max(vocab.values(), default=-1) + 1)
            F._new_tokenizer_json(data, placed, special)
            self._core = _core.CoreTokenizer.from_str(json.dumps(data, ensure_ascii=False))
            self._specials = None
            replaced = {t.replaced for t in placed if t.replaced is not None}
            F._new_tokenizer_config(self.config, [F._token_entry(t, special) for t in placed], replaced)
        return [self._core.token_to_id(t) for t in tokens]

    @property
    def truncation(self) -> dict[str, Any] | None:
        """The truncation settings, as tokenizer.json spells them (``None``: off).

        ``encode`` and ``encode_batch`` keep ``max_length`` ids (special tokens included),
        as the reference does. Set a dict to change them, ``None`` to turn them off.

        >>> tok.truncation = {"max_length": 512}                      # doctest: +SKIP
        """
        text = self._core.settings("truncation")
        return None if text is None else json.loads(text)

    @truncation.setter
    def truncation(self, value: dict[str, Any] | None) -> None:
        self._core.set_settings("truncation", None if value is None else json.dumps(value))

    @property
    def padding(self) -> dict[str, Any] | None:
        """The padding settings, as tokenizer.json spells them (``None``: off).

        ``encode_batch`` pads every text to the longest (or to ``{"Fixed": n}``) with
        ``pad_id``, as the reference does.

        >>> tok.padding = {"strategy": "BatchLongest", "pad_id": 0}   # doctest: +SKIP
        """
        text = self._core.settings("padding")
        return None if text is None else json.loads(text)

    @padding.setter
    def padding(self, value: dict[str, Any] | None) -> None:
        self._core.set_settings("padding", None if value is None else json.dumps(value))

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string as the vocabulary spells it (``None`` if absent)."""
        return self._core.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        """The vocabulary spelling of an id (``None`` if absent)."""
        if id < 0 or id >= 2**32:
            return None
        return self._core.id_to_token(id)

    @property
    def vocab_size(self) -> int:
        """Distinct entries with added tokens (``tokenizers``' ``get_vocab_size(True)``)."""
        return self._core.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """Every token string with its id, added tokens included."""
        return self._core.get_vocab()

    def _special_contents(self) -> tuple[str, ...]:
        """The special added tokens' strings, by id: what the chat and data code asks for on
        every record, kept until tokens are added (building :attr:`added_tokens` for
        Llama 3's 256 specials was half of ``encode_chat``'s time)."""
        if self._specials is None:
            self._specials = tuple(content for _, content, *_, special in self._core.added_tokens() if special)
        return self._specials

    @property
    def added_tokens(self) -> list[AddedToken]:
        """The added tokens, by id."""
        return [
            AddedToken(content, single_word, lstrip, rstrip, normalized, special, id=id)
            for id, content, single_word, lstrip, rstrip, normalized, special in self._core.added_tokens()
        ]

    # ------------------------------------------------------------------ saving

    def to_str(self) -> str:
        """The tokenizer as ``tokenizer.json`` text, loadable by ``tokenizers``."""
        return self._core.to_json()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``tokenizer.json`` atomically (temporary file, then rename).

        >>> tok.save("out/tokenizer.json")                             # doctest: +SKIP
        """
        self._core.save(os.fspath(path))

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> list[Path]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into a
        folder (created if missing) for ``transformers.AutoTokenizer.from_pretrained``.

        The config keeps every key of :attr:`config` (BOS/EOS, model max length, ...) but
        the chat templates, written as transformers 5 writes them (chat_template.jinja and
        additional_chat_templates/NAME.jinja); its ``added_tokens_decoder`` lists every added token with the flags
        tokenizer.json has, and the special tokens added here are in its list of extra
        special tokens, so transformers sees each added token as special or not as
        tokensmith does and encodes to the same ids. Each file is written under a temporary
        name and renamed. Returns the written paths.

        >>> tok = Tokenizer.from_pretrained("Qwen2.5-0.5B")          # doctest: +SKIP
        >>> tok.add_special_tokens(["<|box_start|>"]); tok.save_pretrained("out")  # doctest: +SKIP
        """
        from ._tokenizer_files import _added_entries, _special_tokens_map, _with_decoder, write_tokenizer_files

        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder}: not a folder")
        from .data.chat import _named_templates

        config = _with_decoder(self.config, _added_entries(self._core.added_tokens()))
        templates = _named_templates(config.pop("chat_template", None))
        return write_tokenizer_files(folder, self.to_str(), config, _special_tokens_map(config), templates)

    def copy(self) -> Tokenizer:
        """An independent copy (cheap: the model is shared, the added tokens are not).

        >>> base = Tokenizer.from_file("tokenizer.json")              # doctest: +SKIP
        >>> tok = base.copy(); tok.add_special_tokens(["<x>"])         # base is unchanged  # doctest: +SKIP
        """
        return Tokenizer(self._core.copy(), dict(self.config))

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> Tokenizer:
        return self.copy()

    def __getstate__(self) -> dict[str, Any]:
        return {"json": self.to_str(), "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._core = _core.CoreTokenizer.from_str(state["json"], "<pickle>")
        self._specials = None
        self.config = state["config"]

    def __repr__(self) -> str:
        return f"<tokensmith.Tokenizer vocab_size={self.vocab_size} added_tokens={len(self._core.added_tokens())}>"


def _chat_templates(folder: Path, config: dict[str, Any]) -> str | list[dict[str, str]] | None:
    """The folder's chat templates from every place ``transformers`` keeps them, in
    tokenizer_config.json's form (a string, or a list of ``{"name", "template"}``).

    ``chat_template.jinja`` (what transformers 5 ``save_pretrained`` writes) and
    ``additional_chat_templates/NAME.jinja`` replace tokenizer_config.json's ``chat_template``
    when they exist, as in transformers; ``chat_template.json`` (``{"chat_template": ...}``,
    processors' file) is read where none of them has one.
    """
    from .errors import TokenizerFormatError

    def read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            raise TokenizerFormatError(f"{path}: cannot read the chat template ({e})") from None

    templates: dict[str, str] = {}
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = read(folder / "chat_template.jinja")
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        templates.update({p.stem: read(p) for p in sorted(extra.glob("*.jinja"))})
    if templates:
        pass  # as in transformers, template files replace the config's templates whole
    elif isinstance(config.get("chat_template"), (str, list)):
        from .data.chat import _named_templates

        templates = _named_templates(config["chat_template"])
    elif (folder / "chat_template.json").is_file():
        legacy = folder / "chat_template.json"
        try:
            value = json.loads(read(legacy)).get("chat_template")
        except (ValueError, AttributeError) as e:
            raise TokenizerFormatError(f"{legacy}: not a JSON object with a chat_template ({e})") from None
        if isinstance(value, str):
            templates["default"] = value
    if not templates:
        return None
    if list(templates) == ["default"]:
        return templates["default"]
    return [{"name": name, "template": text} for name, text in templates.items()]


def _bad_ids(ids: Sequence[int]) -> Exception | None:
    """The error that explains why ``ids`` cannot be decoded, if one id is at fault."""
    try:
        items = list(enumerate(ids))
    except TypeError:
        return TypeError(f"ids must be a sequence of int, got {type(ids).__name__}")
    for position, id in items:
        if not isinstance(id, int):
            return TypeError(f"ids must be int, got {type(id).__name__} at position {position}")
        if not 0 <= id < 2**32:
            return InvalidInputError(f"id {id} at position {position} is not in the vocabulary of this tokenizer")
    return None
