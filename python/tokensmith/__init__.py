"""tokensmith: token-aware encoding for LLM fine-tuning.

Exact byte-level BPE (token for token like Hugging Face ``tokenizers`` and ``tiktoken``),
safe special-token handling, and fast batch encoding, from a Rust core.

>>> import tokensmith as ts
>>> tok = ts.Tokenizer.from_pretrained("path/to/model")   # doctest: +SKIP
>>> tok.encode(user_text, special="text")                 # doctest: +SKIP
"""

from ._core import __version__
from ._tokenizer import AddedToken, SpecialPolicy, Tokenizer
from .errors import (
    CheckpointError,
    DataError,
    InvalidInputError,
    SpecialTokenError,
    TokenizerError,
    TokenizerFormatError,
    UnsupportedTokenizerError,
)

__all__ = [
    "AddedToken",
    "CheckpointError",
    "DataError",
    "InvalidInputError",
    "SpecialPolicy",
    "SpecialTokenError",
    "Tokenizer",
    "TokenizerError",
    "TokenizerFormatError",
    "UnsupportedTokenizerError",
    "__version__",
]
