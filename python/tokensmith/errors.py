"""Exceptions raised by tokensmith. All derive from :class:`TokenizerError`."""

from __future__ import annotations

__all__ = [
    "TokenizerError",
    "TokenizerFormatError",
    "UnsupportedTokenizerError",
    "SpecialTokenError",
    "InvalidInputError",
    "CheckpointError",
    "DataError",
]


class TokenizerError(Exception):
    """Base class of every error tokensmith raises on purpose."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.detail = detail


class TokenizerFormatError(TokenizerError, ValueError):
    """A tokenizer file is malformed; the message names the file and the field."""


class UnsupportedTokenizerError(TokenizerError):
    """The tokenizer uses a component tokensmith does not implement; the message names it."""


class InvalidInputError(TokenizerError, ValueError):
    """An argument cannot be honoured (an id outside the vocabulary, a bad pattern, ...)."""


class CheckpointError(TokenizerError, ValueError):
    """A model folder cannot be read or rewritten (missing, not safetensors, truncated, a
    tensor of the wrong shape or dtype); the message names the file. The input is untouched."""


class DataError(TokenizerError, ValueError):
    """Training data cannot be prepared as asked: a record that cannot become an example (the
    message names its file and line), nothing to write, no EOS token to end text records."""


class SpecialTokenError(TokenizerError, ValueError):
    """A special token was found in text encoded with ``special="raise"``.

    ``token`` is the special token's string and ``offset`` its position in the text, in
    characters (Python ``str`` indices).
    """

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message, detail)
        token, offset = detail if isinstance(detail, tuple) else (None, None)
        self.token: str | None = token
        self.offset: int | None = offset
