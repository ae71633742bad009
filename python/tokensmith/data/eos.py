"""End-of-text tokens: which id ends a document, and the control-token spellings people
type as text by mistake (``"...</s>"``), which a tokenizer may not even have."""

from __future__ import annotations

from collections.abc import Iterable

from .._tokenizer import Tokenizer
from ..errors import DataError
from .chat import config_token

__all__ = ["EOS_SPELLINGS", "CONTROL_SPELLINGS", "OTHER_CONTROL_TOKENS", "declared_eos", "eos_token", "NoEOSError"]

#: End-of-text tokens of the model families people fine-tune, most common first: the token a
#: pre-training document ends with when tokenizer_config.json names no ``eos_token``.
EOS_SPELLINGS = (
    "<|endoftext|>",  # GPT-2, GPT-4 (tiktoken), Qwen
    "<|end_of_text|>",  # Llama 3
    "</s>",  # Llama 2, Mistral
    "<eos>",  # Gemma
    "<｜end▁of▁sentence｜>",  # DeepSeek
    "<|end▁of▁sentence|>",
)

#: BOS / EOS / end-of-turn spellings of those families: typed into a reply, they are text
#: (or, on a tokenizer that lacks them, several pieces of text), never the end of a turn.
CONTROL_SPELLINGS = EOS_SPELLINGS + (
    "<s>",
    "<bos>",
    "<|begin_of_text|>",
    "<｜begin▁of▁sentence｜>",
    "<|im_end|>",
    "<|im_start|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<start_of_turn>",
    "<turn|>",
    "<|end|>",
    "<|return|>",
    "<|endofprompt|>",
)


#: Padding, unknown, mask and separator tokens of those families: control tokens too, never
#: task tokens, whether or not a tokenizer_config.json names them.
OTHER_CONTROL_TOKENS = ("<pad>", "<unk>", "<mask>", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|pad|>",
                        "<|padding|>", "<|finetune_right_pad_id|>", "<｜▁pad▁｜>")


class NoEOSError(DataError):
    """No end-of-text token can be determined, or the one named is not a token."""


def declared_eos(tok: Tokenizer) -> str | None:
    """The end-of-text token of the tokenizer itself (not of its folder's config): the first
    of :data:`EOS_SPELLINGS` that is a special token of it."""
    return eos_among(tok._special_contents())


def eos_among(specials: Iterable[str]) -> str | None:
    """The first of :data:`EOS_SPELLINGS` among ``specials``."""
    specials = set(specials)
    return next((s for s in EOS_SPELLINGS if s in specials), None)


def eos_token(tok: Tokenizer, eos: str | None = None) -> tuple[str, int]:
    """The token (and its id) that ends each text record: ``eos`` if given, else the folder's
    ``eos_token``, else :func:`declared_eos`. It must be one token of this tokenizer: an EOS
    appended as text (``</s>`` as ``</``, ``s``, ``>``) never stops a model."""
    where = "eos" if eos is not None else "tokenizer_config.json's eos_token"
    content = eos if eos is not None else config_token(tok, "eos_token")
    if content is None:
        content = declared_eos(tok)
        where = "the tokenizer's end-of-text token"
    if content is None:
        raise NoEOSError(
            "text records end with an EOS id, but this tokenizer names none (no eos_token in "
            "tokenizer_config.json, no end-of-text token such as <|endoftext|> or </s>): name the "
            "token that ends a document (eos= / --eos TOKEN)"
        )
    id = tok.token_to_id(content)
    if id is None:
        pieces = len(tok.encode(content, add_special_tokens=False, special="text"))
        raise NoEOSError(
            f"{where} {content!r} is not a token of this tokenizer (it would be {pieces} pieces of text, "
            "and a model trained on them never stops): add it as a special token or name another (eos= / --eos TOKEN)"
        )
    return content, id
