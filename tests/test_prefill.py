"""The piece cache is given, ahead, the short pieces that encode to one token, once a thread's
new pieces have cost what that does (``Bpe::prefill_tokens``): every short token of an
``ignore_merges`` vocabulary, and the short tokens that merges make of their own bytes
(``src/bpe/build_trees.rs``) otherwise. After that, the text of every token of every
byte-level tokenizer encodes, in the same thread, as the reference encodes it: a token given
ahead that merges would have made otherwise shows here.
"""

from __future__ import annotations

import pytest

from conftest import (
    BYTE_CHARS,
    BYTE_LEVEL_TOKENIZERS,
    CORPORA_DIR,
    assert_same,
    hf_encode_batch,
    hf_tokenizer_text,
    load_ts_fresh,
    read_corpus,
    split_lines,
)

CHAR_BYTES = {c: b for b, c in BYTE_CHARS.items()}


def token_texts(name: str) -> list[str]:
    """The text of every token of the model (added tokens aside) that is whole UTF-8."""
    hf = hf_tokenizer_text(name)
    added = set(hf.get_added_tokens_decoder())
    texts = []
    for token, id in sorted(hf.get_vocab(with_added_tokens=False).items(), key=lambda item: item[1]):
        if id in added:
            continue
        try:
            texts.append(bytes(CHAR_BYTES[c] for c in token).decode())
        except (KeyError, UnicodeDecodeError):
            continue  # a part of a char: no text is just this token
    return texts


@pytest.mark.parametrize("name", BYTE_LEVEL_TOKENIZERS)
def test_every_token_text_encodes_as_the_reference_after_the_prefill(name):
    tok = load_ts_fresh(name)  # a model this thread's cache has not met
    # The prefill comes once the new pieces number a 48th of the vocabulary (under 5,000 for
    # these); the English handbook's documents bring over 11,000.
    for line in split_lines(read_corpus(CORPORA_DIR / "en" / "debian-handbook.en-US.txt")):
        tok.encode(line, add_special_tokens=False, special="text")
    texts = token_texts(name)
    assert len(texts) > 30_000
    # One by one, in this thread: `encode_batch` would encode on other threads.
    ours = [tok.encode(text, add_special_tokens=False, special="text") for text in texts]
    assert_same(ours, hf_encode_batch(hf_tokenizer_text(name), texts, add_special_tokens=False), texts, name)
