"""Which encoding a model name uses, as tiktoken's ``tiktoken.model`` maps them."""

from __future__ import annotations

from .core import Encoding
from .registry import get_encoding

__all__ = ["MODEL_PREFIX_TO_ENCODING", "MODEL_TO_ENCODING", "encoding_for_model", "encoding_name_for_model"]

#: Names that start with a prefix (dated snapshots, fine-tunes) use its encoding.
MODEL_PREFIX_TO_ENCODING: dict[str, str] = {
    "o1-": "o200k_base",
    "o3-": "o200k_base",
    "o4-mini-": "o200k_base",
    "gpt-5": "o200k_base",
    "gpt-4.5-": "o200k_base",
    "gpt-4.1-": "o200k_base",
    "chatgpt-4o-": "o200k_base",
    "gpt-4o-": "o200k_base",
    "gpt-4-": "cl100k_base",
    "gpt-3.5-turbo-": "cl100k_base",
    "gpt-35-turbo-": "cl100k_base",
    "gpt-oss-": "o200k_harmony",
    "ft:gpt-4o": "o200k_base",
    "ft:gpt-4": "cl100k_base",
    "ft:gpt-3.5-turbo": "cl100k_base",
    "ft:davinci-002": "cl100k_base",
    "ft:babbage-002": "cl100k_base",
}

_R50K_MODELS = [
    "text-davinci-001", "text-curie-001", "text-babbage-001", "text-ada-001",
    "davinci", "curie", "babbage", "ada",
    "text-similarity-davinci-001", "text-similarity-curie-001", "text-similarity-babbage-001",
    "text-similarity-ada-001", "text-search-davinci-doc-001", "text-search-curie-doc-001",
    "text-search-babbage-doc-001", "text-search-ada-doc-001",
    "code-search-babbage-code-001", "code-search-ada-code-001",
]  # fmt: skip
_P50K_MODELS = [
    "text-davinci-003", "text-davinci-002", "code-davinci-002", "code-davinci-001",
    "code-cushman-002", "code-cushman-001", "davinci-codex", "cushman-codex",
]  # fmt: skip
_CL100K_MODELS = [
    "gpt-4", "gpt-3.5-turbo", "gpt-3.5", "gpt-35-turbo", "davinci-002", "babbage-002",
    "text-embedding-ada-002", "text-embedding-3-small", "text-embedding-3-large",
]  # fmt: skip
_O200K_MODELS = ["o1", "o3", "o4-mini", "gpt-5", "gpt-4.1", "gpt-4o"]

#: Exact model names.
MODEL_TO_ENCODING: dict[str, str] = {
    **dict.fromkeys(_O200K_MODELS, "o200k_base"),
    **dict.fromkeys(_CL100K_MODELS, "cl100k_base"),
    **dict.fromkeys(_P50K_MODELS, "p50k_base"),
    **dict.fromkeys(_R50K_MODELS, "r50k_base"),
    "text-davinci-edit-001": "p50k_edit",
    "code-davinci-edit-001": "p50k_edit",
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
}


def encoding_name_for_model(model_name: str) -> str:
    """The encoding name of a model; ``KeyError`` for a model it does not know."""
    if model_name in MODEL_TO_ENCODING:
        return MODEL_TO_ENCODING[model_name]
    for prefix, encoding_name in MODEL_PREFIX_TO_ENCODING.items():
        if model_name.startswith(prefix):
            return encoding_name
    raise KeyError(
        f"Could not automatically map {model_name} to a tokeniser. "
        "Please use `tiktoken.get_encoding` to explicitly get the tokeniser you expect."
    ) from None


def encoding_for_model(model_name: str) -> Encoding:
    """The encoding a model uses (``KeyError`` for an unknown model)."""
    return get_encoding(encoding_name_for_model(model_name))
