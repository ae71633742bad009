"""``Encoding``: tiktoken's class, with tokensmith's Rust core underneath.

Every public method of ``tiktoken.Encoding`` is here with its signature and its results
(ids, errors, exception types). ``num_threads`` is accepted and ignored: batches run on
tokensmith's own thread pool, with the GIL released.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, AbstractSet, Any, Literal

from .. import _core
from ..errors import SpecialTokenError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .load import RankFile

__all__ = ["Encoding"]

_Allowed = Literal["all"] | AbstractSet[str]
_Disallowed = Literal["all"] | Collection[str]

# Rust's `char::is_whitespace` (Unicode White_Space), which tiktoken's unstable-token logic
# uses; Python's str.isspace also takes U+001C-U+001F.
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    chr(c) for c in range(0x2000, 0x200B)
)


def _without_surrogates(text: str) -> str | None:
    """``text`` with lone surrogates replaced (and surrogate pairs joined) as tiktoken does,
    or ``None`` when it has none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return None


def _disallowed_error(token: str) -> SpecialTokenError:
    return SpecialTokenError(
        f"Encountered text corresponding to disallowed special token {token!r}.\n"
        f"To encode it as the special token, pass it in `allowed_special`, e.g. "
        f"`allowed_special={{{token!r}, ...}}`.\n"
        f"To encode it as plain text, leave it out of the check: "
        f"`disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\n"
        "To encode every special token's text as plain text, pass `disallowed_special=()`.\n",
        (token, None),
    )


@functools.lru_cache(maxsize=128)
def _special_token_regex(tokens: frozenset[str]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(t) for t in tokens))


class Encoding:
    """A tiktoken encoding: split pattern, mergeable ranks, special tokens.

    >>> enc = Encoding("custom", pat_str=p, mergeable_ranks=ranks, special_tokens={})  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        *,
        pat_str: str,
        mergeable_ranks: dict[bytes, int] | None = None,
        special_tokens: dict[str, int],
        explicit_n_vocab: int | None = None,
        _rank_file: RankFile | None = None,
    ) -> None:
        self.name = name
        self._pat_str = pat_str
        self._special_tokens = special_tokens
        # Two names on one id both match it; one decodes. tiktoken's choice comes from the order
        # of its hash map: for o200k_harmony's shared id that is the name listed first. The core
        # decodes an id as the last name given to it, hence the reversed list.
        specials = list(special_tokens.items())[::-1]
        if mergeable_ranks is not None:
            self._mergeable_ranks = mergeable_ranks
            self._core = _core.CoreTokenizer.from_tiktoken_ranks(list(mergeable_ranks.items()), pat_str, specials)
        elif _rank_file is not None:
            # A known rank file (checked against its published hash): parsed in Rust, and in
            # Python only if `_mergeable_ranks` is asked for.
            self._rank_file = _rank_file
            self._core = _core.CoreTokenizer.from_tiktoken_data(_rank_file.data, _rank_file.source, pat_str, specials)
        else:
            raise TypeError("Encoding() needs mergeable_ranks")
        self._special_token_values = set(special_tokens.values())
        if explicit_n_vocab:
            n_ranks = len(self._mergeable_ranks)
            if n_ranks + len(special_tokens) != explicit_n_vocab or self.max_token_value != explicit_n_vocab - 1:
                raise ValueError(
                    f"{name}: {n_ranks} ranks and {len(special_tokens)} special tokens (largest id "
                    f"{self.max_token_value}) do not make explicit_n_vocab={explicit_n_vocab}"
                )

    @functools.cached_property
    def _mergeable_ranks(self) -> dict[bytes, int]:
        from .load import _parse_ranks

        return _parse_ranks(self._rank_file.data)

    @functools.cached_property
    def max_token_value(self) -> int:
        if "_mergeable_ranks" in self.__dict__ or not hasattr(self, "_rank_file"):
            top = max(self._mergeable_ranks.values())
        else:
            # A published rank file (its hash was checked) lists its ranks in order.
            top = int(self._rank_file.data.rstrip().rsplit(b" ", 1)[1])
        return max(top, max(self._special_tokens.values(), default=0))

    def __repr__(self) -> str:
        return f"<Encoding {self.name!r}>"

    # ------------------------------------------------------------------ encoding

    def _policy(self, allowed: frozenset[str]) -> tuple[str, list[str] | None] | None:
        """The core's special-token policy for the names in ``allowed`` (others ignored, as
        tiktoken ignores them), or ``None`` when it cannot say it: an allowed name shares its
        id with a name that is not allowed, and the core matches by id."""
        names = allowed & self._special_names
        if names in self._policy_cache:
            return self._policy_cache[names]
        if not names:
            policy: tuple[str, list[str] | None] | None = ("text", None)
        elif len(names) == len(self._special_tokens):
            policy = ("allow", None)
        else:
            ids = {self._special_tokens[n] for n in names}
            shared = any(i in ids and n not in names for n, i in self._special_tokens.items())
            policy = None if shared else ("only", sorted(names))
        if len(self._policy_cache) < 64:
            self._policy_cache[names] = policy
        return policy

    @functools.cached_property
    def _policy_cache(self) -> dict[frozenset[str], tuple[str, list[str] | None] | None]:
        return {}

    def _check_disallowed(self, texts: Sequence[str], allowed: frozenset[str], disallowed_special: _Disallowed) -> None:
        disallowed = self._special_names - allowed if disallowed_special == "all" else frozenset(disallowed_special)
        if disallowed:
            regex = _special_token_regex(disallowed)
            for text in texts:
                if match := regex.search(text):
                    raise _disallowed_error(match.group())

    def _allowed(self, allowed_special: _Allowed) -> frozenset[str]:
        return self._special_names if allowed_special == "all" else frozenset(allowed_special)

    def _checked_policy(
        self, texts: Sequence[str], allowed_special: _Allowed, disallowed_special: _Disallowed
    ) -> tuple[str, list[str] | None] | None:
        """tiktoken's rules: "all" allows every special token; by default any special token
        not allowed is an error (``ValueError``); ``disallowed_special=()`` makes them text."""
        allowed = self._allowed(allowed_special)
        if not allowed and disallowed_special == "all":
            return "raise", None  # the default: the core raises on any special token
        self._check_disallowed(texts, allowed, disallowed_special)
        return self._policy(allowed)

    def _run(self, encode: Any, text: Any, policy: tuple[str, list[str] | None]) -> Any:
        """``encode(text, policy)``, retried on the text without lone surrogates as tiktoken
        does (it replaces them with U+FFFD)."""
        try:
            return encode(text, False, *policy)
        except SpecialTokenError:
            # Only "raise" raises this: name the token as tiktoken does (its first match).
            self._check_disallowed((text,) if isinstance(text, str) else text, frozenset(), "all")
            raise
        except ValueError:
            if isinstance(text, str):
                fixed = _without_surrogates(text)
            else:
                fixed = [_without_surrogates(t) or t for t in text]
                fixed = None if fixed == list(text) else fixed
            if fixed is None:
                raise
            return self._run(encode, fixed, policy)

    def _split_encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        """tiktoken's loop, for the allowed sets the core's id-based policy cannot express:
        find the next special token's text, skip it unless allowed, encode what is between."""
        regex = _special_token_regex(self._special_names)
        ids: list[int] = []
        start = 0
        while True:
            match = regex.search(text, start)
            while match is not None and match.group() not in allowed:
                match = regex.search(text, match.start() + 1)
            end = match.start() if match else len(text)
            ids += self.encode_ordinary(text[start:end])
            if match is None:
                return ids
            ids.append(self._special_tokens[match.group()])
            start = match.end()

    def _encode(self, text: str, allowed_special: _Allowed, disallowed_special: _Disallowed) -> list[int]:
        policy = self._checked_policy((text,), allowed_special, disallowed_special)
        if policy is None:
            return self._split_encode(text, self._allowed(allowed_special) & self._special_names)
        return self._run(self._core.encode, text, policy)

    def encode_ordinary(self, text: str) -> list[int]:
        """The ids of ``text`` with special tokens' text encoded as plain text."""
        return self._run(self._core.encode, text, ("text", None))

    def encode(
        self,
        text: str,
        *,
        allowed_special: _Allowed = frozenset(),
        disallowed_special: _Disallowed = "all",
    ) -> list[int]:
        """The ids of ``text``. A special token's text is an error (``ValueError``) unless it is
        in ``allowed_special`` (then it is the special token) or left out of
        ``disallowed_special`` (then it is plain text)."""
        if not allowed_special and disallowed_special == "all":
            return self._run(self._core.encode, text, ("raise", None))
        return self._encode(text, allowed_special, disallowed_special)

    def encode_to_numpy(
        self,
        text: str,
        *,
        allowed_special: _Allowed = frozenset(),
        disallowed_special: _Disallowed = "all",
    ) -> npt.NDArray[np.uint32]:
        """``encode`` into a ``uint32`` array, without a Python list."""
        import numpy as np

        policy = self._checked_policy((text,), allowed_special, disallowed_special)
        if policy is None:
            return np.array(self._encode(text, allowed_special, disallowed_special), dtype=np.uint32)
        ids, _ = self._run(self._core.encode_batch_flat, [text], policy)
        return np.frombuffer(ids, dtype="<u4")

    def encode_ordinary_batch(self, text: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        """``encode_ordinary`` of each text, in parallel."""
        return self._run(self._core.encode_batch, list(text), ("text", None))

    def encode_batch(
        self,
        text: Sequence[str],
        *,
        num_threads: int = 8,
        allowed_special: _Allowed = frozenset(),
        disallowed_special: _Disallowed = "all",
    ) -> list[list[int]]:
        """``encode`` of each text, in parallel."""
        text = list(text)  # any iterable, read once (a str is its chars, as in tiktoken)
        policy = self._checked_policy(text, allowed_special, disallowed_special)
        if policy is None:
            return [self._encode(t, allowed_special, disallowed_special) for t in text]
        return self._run(self._core.encode_batch, text, policy)

    def encode_with_unstable(
        self,
        text: str,
        *,
        allowed_special: _Allowed = frozenset(),
        disallowed_special: _Disallowed = "all",
    ) -> tuple[list[int], list[list[int]]]:
        """The stable ids of ``text`` and every id sequence that could continue them, for a
        text that may be cut mid-token (tiktoken's unstable-token logic, which it calls
        unstable API itself). The completions come sorted."""
        allowed = self._allowed(allowed_special)
        self._check_disallowed((text,), allowed, disallowed_special)
        tokens = self._encode(text, allowed, ())
        n = self._last_piece_len(text, tokens, allowed)
        if n == 0:
            return tokens, []
        n = self._widen_to_spaces(tokens, n)
        unstable = self.decode_bytes(tokens[-n:])
        tokens = tokens[:-n]
        if not unstable:
            return tokens, []
        completions: set[tuple[int, ...]] = set()
        sorted_bytes = self._sorted_token_bytes
        # Single tokens that start with the unstable bytes.
        at = bisect.bisect_left(sorted_bytes, unstable)
        while at < len(sorted_bytes) and sorted_bytes[at].startswith(unstable):
            completions.add((self._mergeable_ranks[sorted_bytes[at]],))
            at += 1
        # A token straddling each other cut: encode the prefix plus the token, and keep ids
        # until they cover the unstable bytes.
        texts: list[str] = []
        encodings: list[list[int]] = []
        for i in range(1, len(unstable)):
            prefix, suffix = unstable[:i], unstable[i:]
            at = bisect.bisect_left(sorted_bytes, suffix)
            while at < len(sorted_bytes) and sorted_bytes[at].startswith(suffix):
                possibility = prefix + sorted_bytes[at]
                try:
                    texts.append(possibility.decode("utf-8"))  # split by the pattern, as text
                except UnicodeDecodeError:
                    encodings.append(self._encode_single_piece(possibility))
                at += 1
        lengths = self._token_lengths
        for encoded in self.encode_ordinary_batch(texts) + encodings:
            seq, covered = [], 0
            for token in encoded:
                seq.append(token)
                covered += lengths[token]
                if covered >= len(unstable):
                    break
            completions.add(tuple(seq))
        # A whitespace char at the end could split off once more text comes (`\s+(?!\S)`).
        if len(unstable) > 1:
            last, size = _last_char(unstable)
            if size < len(unstable) and last is not None and last in _WHITE_SPACE:
                split = self._encode_single_piece(unstable[:-size]) + self._encode_single_piece(unstable[-size:])
                completions.add(tuple(split))
        return tokens, [list(c) for c in sorted(completions)]

    def encode_single_token(self, text_or_bytes: str | bytes) -> int:
        """The id of the token that is exactly this text or these bytes (special tokens
        included); ``KeyError`` if there is none."""
        piece = text_or_bytes.encode("utf-8") if isinstance(text_or_bytes, str) else bytes(text_or_bytes)
        ids = self._core.encode_piece(piece) if piece else []
        if len(ids) == 1:
            return ids[0]
        try:
            return self._special_tokens[piece.decode("utf-8")]
        except (UnicodeDecodeError, KeyError):
            raise KeyError(piece) from None

    # ------------------------------------------------------------------ tiktoken's private helpers

    def _encode_single_piece(self, text_or_bytes: str | bytes) -> list[int]:
        """BPE of one piece, with no splitting and no special tokens."""
        piece = text_or_bytes.encode("utf-8") if isinstance(text_or_bytes, str) else bytes(text_or_bytes)
        return self._core.encode_piece(piece)

    def _encode_only_native_bpe(self, text: str) -> list[int]:
        """Split then BPE, special tokens as text: ``encode_ordinary``."""
        return self.encode_ordinary(text)

    def _encode_bytes(self, text: bytes) -> list[int]:
        """The ids of bytes that need not be UTF-8: the valid prefix is encoded as text, and
        its last piece is encoded again together with the bytes that follow it."""
        try:
            return self.encode_ordinary(text.decode("utf-8"))
        except UnicodeDecodeError as e:
            valid = e.start
        tokens = self.encode_ordinary(text[:valid].decode("utf-8"))
        n = self._widen_to_spaces(tokens, self._last_piece_len(text[:valid].decode("utf-8"), tokens, frozenset()))
        if tokens and n > 0:
            unstable = self.decode_bytes(tokens[-n:]) + text[valid:]
            tokens = tokens[:-n]
        else:
            unstable = text[valid:]
        return tokens + self._encode_single_piece(unstable) if unstable else tokens

    def _last_piece_len(self, text: str, tokens: list[int], allowed: frozenset[str]) -> int:
        """How many of ``tokens`` come from the last piece the pattern split ``text`` into
        (0 when the text ends in a special token or has no piece)."""
        if not tokens or tokens[-1] in self._special_token_values:
            return 0
        policy = self._policy(allowed & self._special_names) or ("only", sorted(allowed & self._special_names))
        fixed = _without_surrogates(text)
        piece = self._core.last_piece(fixed if fixed is not None else text, *policy)
        return len(self._core.encode_piece(piece)) if piece else 0

    def _widen_to_spaces(self, tokens: list[int], n: int) -> int:
        """tiktoken's fix for splits that can vanish: a last piece that starts with a token of
        spaces, tabs and newlines takes in the run of such tokens before it."""

        def spaces(token: int) -> bool:
            return token not in self._special_token_values and all(
                b in b" \n\t" for b in self.decode_single_token_bytes(token)
            )

        if n > 0 and spaces(tokens[-n]):
            while n < len(tokens) and spaces(tokens[-n - 1]):
                n += 1
        return n

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of ``tokens`` (``KeyError`` for an id that is no token)."""
        return self._core.decode_bytes(tokens)

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """The text of ``tokens``; invalid UTF-8 is handled as ``bytes.decode(errors=)`` does."""
        return self._core.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token (``KeyError`` if it is none)."""
        return self._core.token_bytes([token])[0]

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """Each token's bytes."""
        return self._core.token_bytes(tokens)

    def decode_with_offsets(self, tokens: Sequence[int]) -> tuple[str, list[int]]:
        """The text of ``tokens`` and the char index where each token starts; a token that
        starts inside a char gets that char's index."""
        pieces = self.decode_tokens_bytes(tokens)
        offsets, chars = [], 0
        for piece in pieces:
            # A UTF-8 continuation byte first: the token began in the char before.
            offsets.append(max(0, chars - (0x80 <= piece[0] < 0xC0)))
            chars += sum(1 for b in piece if not 0x80 <= b < 0xC0)
        return b"".join(pieces).decode("utf-8", errors="strict"), offsets

    def decode_batch(self, batch: Sequence[Sequence[int]], *, errors: str = "replace", num_threads: int = 8) -> list[str]:
        """``decode`` of each id list."""
        return [self.decode(tokens, errors=errors) for tokens in batch]

    def decode_bytes_batch(self, batch: Sequence[Sequence[int]], *, num_threads: int = 8) -> list[bytes]:
        """``decode_bytes`` of each id list."""
        return [self.decode_bytes(tokens) for tokens in batch]

    # ------------------------------------------------------------------ the vocabulary

    def token_byte_values(self) -> list[bytes]:
        """Every mergeable token's bytes, sorted (a new list each time)."""
        return list(self._sorted_token_bytes)

    @functools.cached_property
    def _sorted_token_bytes(self) -> list[bytes]:
        return sorted(self._mergeable_ranks)

    @functools.cached_property
    def _token_lengths(self) -> dict[int, int]:
        return {rank: len(token) for token, rank in self._mergeable_ranks.items()}

    @functools.cached_property
    def eot_token(self) -> int:
        return self._special_tokens["<|endoftext|>"]

    @functools.cached_property
    def _special_names(self) -> frozenset[str]:
        return frozenset(self._special_tokens)

    @property
    def special_tokens_set(self) -> set[str]:
        """The special tokens' names (a new set each time, as in tiktoken)."""
        return set(self._special_tokens)

    def is_special_token(self, token: int) -> bool:
        assert isinstance(token, int)
        return token in self._special_token_values

    @property
    def n_vocab(self) -> int:
        """One more than the largest id."""
        return self.max_token_value + 1

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> object:
        from . import registry

        # A registered encoding travels by name, as in tiktoken.
        if self is registry.ENCODINGS.get(self.name):
            return self.name
        return {
            "name": self.name,
            "pat_str": self._pat_str,
            "mergeable_ranks": self._mergeable_ranks,
            "special_tokens": self._special_tokens,
        }

    def __setstate__(self, value: object) -> None:
        from . import registry

        if isinstance(value, str):
            self.__dict__ = registry.get_encoding(value).__dict__
            return
        assert isinstance(value, dict)
        self.__init__(**value)  # type: ignore[misc]


def _last_char(data: bytes) -> tuple[str | None, int]:
    """The last char of ``data`` and its byte length, or (None, 1) when the data does not end
    in a whole UTF-8 char (as Rust's ``bstr::decode_last_utf8``)."""
    for size in range(1, min(4, len(data)) + 1):
        try:
            char = data[-size:].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if len(char) == 1:
            return char, size
        break
    return None, 1
