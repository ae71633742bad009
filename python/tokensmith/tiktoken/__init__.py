"""A drop-in for ``tiktoken``: change one import, keep the code.

>>> import tokensmith.tiktoken as tiktoken          # instead of: import tiktoken
>>> enc = tiktoken.get_encoding("cl100k_base")      # doctest: +SKIP
>>> enc.encode("hello world")                       # doctest: +SKIP
[15339, 1917]

The same API and the same ids as tiktoken (its own test suite runs against this module in
tokensmith's CI), encoded by tokensmith's Rust core. Rank files are never downloaded: they are
read from tiktoken's cache or from ``$TOKENSMITH_TIKTOKEN_DIR`` (see :mod:`.load`).
"""

from .._core import __version__
from . import core, load, model, registry
from .core import Encoding
from .model import encoding_for_model, encoding_name_for_model
from .registry import get_encoding, list_encoding_names

__all__ = [
    "Encoding",
    "__version__",
    "core",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "list_encoding_names",
    "load",
    "model",
    "registry",
]
