"""Encodings by name: OpenAI's (offline, :mod:`._openai`) and those of ``tiktoken_ext`` plugins.

A plugin is a module in the ``tiktoken_ext`` namespace package with an
``ENCODING_CONSTRUCTORS`` dict (name -> function returning ``Encoding``'s keyword arguments),
exactly as tiktoken finds them. tiktoken's own ``tiktoken_ext.openai_public`` is skipped: it
defines the same names as :mod:`._openai`, and it downloads.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from typing import Any

from . import _openai
from .core import Encoding

__all__ = ["get_encoding", "list_encoding_names"]

_lock = threading.RLock()
ENCODINGS: dict[str, Encoding] = {}
ENCODING_CONSTRUCTORS: dict[str, Callable[[], dict[str, Any]]] | None = None

_REPLACED_PLUGINS = {"tiktoken_ext.openai_public"}


def _plugin_modules() -> list[str]:
    try:
        import tiktoken_ext  # a namespace package: any installed distribution may add to it
    except ImportError:
        return []
    prefix = tiktoken_ext.__name__ + "."
    return [name for _, name, _ in pkgutil.iter_modules(tiktoken_ext.__path__, prefix) if name not in _REPLACED_PLUGINS]


def _find_constructors() -> dict[str, Callable[[], dict[str, Any]]]:
    global ENCODING_CONSTRUCTORS
    with _lock:
        if ENCODING_CONSTRUCTORS is None:
            found = dict(_openai.ENCODING_CONSTRUCTORS)
            for module_name in _plugin_modules():
                module = importlib.import_module(module_name)
                try:
                    constructors = module.ENCODING_CONSTRUCTORS
                except AttributeError as e:
                    raise ValueError(f"tiktoken plugin {module_name} does not define ENCODING_CONSTRUCTORS") from e
                for name, constructor in constructors.items():
                    if name in found:
                        raise ValueError(f"Duplicate encoding name {name} in tiktoken plugin {module_name}")
                    found[name] = constructor
            ENCODING_CONSTRUCTORS = found
        return ENCODING_CONSTRUCTORS


def get_encoding(encoding_name: str) -> Encoding:
    """The encoding of this name, built once per process (``ValueError`` for an unknown name,
    ``FileNotFoundError`` when its rank file is not on this machine: see :mod:`.load`)."""
    if not isinstance(encoding_name, str):
        raise ValueError(f"Expected a string in get_encoding, got {type(encoding_name)}")
    if encoding_name in ENCODINGS:
        return ENCODINGS[encoding_name]
    with _lock:
        if encoding_name in ENCODINGS:
            return ENCODINGS[encoding_name]
        constructors = _find_constructors()
        if encoding_name not in constructors:
            raise ValueError(
                f"Unknown encoding {encoding_name}. Known: {sorted(constructors)} "
                f"(plugins found: {_plugin_modules()})"
            )
        encoding = Encoding(**constructors[encoding_name]())
        ENCODINGS[encoding_name] = encoding
        return encoding


def list_encoding_names() -> list[str]:
    """Every name :func:`get_encoding` knows (OpenAI's and the plugins')."""
    return list(_find_constructors())
