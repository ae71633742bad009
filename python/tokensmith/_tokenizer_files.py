"""The Hugging Face tokenizer files of a folder, kept in step when tokens are added.

One implementation for both paths that add tokens: :func:`tokensmith.checkpoint.add_tokens`
(on the JSON documents of a model folder) and :class:`tokensmith.Tokenizer`
(``add_tokens`` / ``reuse_reserved`` in memory, ``save_pretrained``): reserved slots, the
``tokenizer.json`` entries of new or renamed tokens, ``tokenizer_config.json``'s
``added_tokens_decoder`` and extra-special-token list, ``special_tokens_map.json``, and
writing the three files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Slots that tokenizers ship untrained, by family; each is reusable for a new token.
RESERVED_PATTERNS = {
    "llama3": r"<\|reserved_special_token_\d+\|>",
    "gemma": r"<unused\d+>",
    "mistral": r"\[control_\d+\]",
    "tekken": r"<SPECIAL_\d+>",
}

# Special-token fields of tokenizer_config.json whose tokens a reserved slot must not be taken from.
SPECIAL_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# The flags of an added token, in the order tokenizer.json and transformers spell them.
FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


@dataclass
class NewToken:
    content: str
    id: int
    replaced: str | None = None  # the reserved slot it took over, if any


# ----------------------------------------------------------------------------- reserved slots


def _vocabulary(tokenizer_json: dict) -> dict[str, int]:
    model = tokenizer_json.get("model") or {}
    vocab = model.get("vocab")
    out: dict[str, int] = {}
    if isinstance(vocab, dict):
        out.update(vocab)
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        out.update({entry[0]: i for i, entry in enumerate(vocab)})
    for t in tokenizer_json.get("added_tokens") or []:
        out[t["content"]] = t["id"]
    return out


def _used_by(tokenizer_config: dict, special_map: dict, tokenizer_json: dict) -> tuple[set[int], str]:
    """Token ids and text the tokenizer files use (a reserved slot named there is in use):
    special-token fields and named extra tokens of tokenizer_config.json and
    special_tokens_map.json (not the plain lists of extra special tokens, which enumerate
    free slots too), their chat templates, and tokenizer.json's padding and post-processor."""
    ids: set[int] = set()
    texts: list[str] = []
    for fields in (tokenizer_config, special_map):
        for key, value in fields.items():
            if key in SPECIAL_FIELDS or (key.endswith("special_tokens") and isinstance(value, dict)):
                texts.append(json.dumps(value, ensure_ascii=False))
        texts.append(json.dumps(fields.get("chat_template") or "", ensure_ascii=False))
    texts.append(json.dumps([tokenizer_json.get("padding"), tokenizer_json.get("post_processor")], ensure_ascii=False))
    if isinstance((tokenizer_json.get("padding") or {}).get("pad_id"), int):
        ids.add(tokenizer_json["padding"]["pad_id"])
    return ids, "\n".join(texts)


def _reserved_slots(vocab: dict[str, int], patterns: list[re.Pattern], in_use: tuple[set[int], str] = (set(), "")) -> list[tuple[int, str]]:
    """(id, content) of every reserved token, by id, except those the folder uses."""
    used_ids, used_text = in_use
    return sorted(
        (id, content)
        for content, id in vocab.items()
        if any(p.fullmatch(content) for p in patterns) and id not in used_ids and content not in used_text
    )


def _placements(tokens: list[str], slots: list[tuple[int, str]], next_id: int) -> list[NewToken]:
    """The first tokens take over the slots (id kept), the rest get ids from ``next_id`` on."""
    placed = [NewToken(t, id, old) for t, (id, old) in zip(tokens, slots)]
    placed += [NewToken(t, next_id + k, None) for k, t in enumerate(tokens[len(placed):])]
    return placed


# ----------------------------------------------------------------------------- documents
# The _new_* functions update the JSON documents in place and return them.


def _token_entry(t: NewToken, special: bool) -> dict:
    return {
        "id": t.id,
        "content": t.content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": not special,
        "special": special,
    }


def _decoder_entry(entry: dict) -> dict:
    """A tokenizer.json added-token entry as ``added_tokens_decoder`` spells it (no id)."""
    flags = ("lstrip", "normalized", "rstrip", "single_word", "special")
    return {"content": entry["content"], **{flag: bool(entry[flag]) for flag in flags}}


def _new_tokenizer_json(data: dict, placed: list[NewToken], special: bool) -> dict:
    """New tokens appended to ``added_tokens``; a reused slot's entry replaced, and its
    vocabulary key renamed (Gemma's <unusedN> are vocabulary entries only: they get an
    added-token entry, which makes the new token match whole)."""
    by_id = {t.id: t for t in placed}
    added = [a for a in data.setdefault("added_tokens", []) if a["id"] not in by_id]
    added += [_token_entry(t, special) for t in placed]
    data["added_tokens"] = sorted(added, key=lambda a: a["id"])
    model = data.get("model") or {}
    renames = {t.replaced: t.content for t in placed if t.replaced is not None}
    if renames and isinstance(model.get("vocab"), dict):
        model["vocab"] = {renames.get(k, k): v for k, v in model["vocab"].items()}
    return data


def _new_tokenizer_config(config: dict, entries: list[dict], replaced: Collection[str] = ()) -> dict:
    """``entries`` (tokenizer.json added-token entries of tokens just added, or renamed from
    the ``replaced`` slots) into ``added_tokens_decoder`` where the file has one, and into or
    out of the list of extra special tokens. Copy on write: copies of a Tokenizer share the
    values of their configs."""
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict) and entries:
        last = int(next(reversed(decoder), -1))
        decoder = dict(decoder)
        for entry in entries:
            decoder[str(entry["id"])] = _decoder_entry(entry)
        if any(entry["id"] <= last for entry in entries):  # else already in order: tokens added one by one stay linear
            decoder = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
        config["added_tokens_decoder"] = decoder
    _update_special_list(config, entries, replaced)
    return config


def _update_special_list(config: dict, entries: list[dict], replaced: Collection[str] = ()) -> None:
    """Special tokens join the list of extra special tokens (what makes transformers count
    them in ``all_special_tokens``), under the key the file uses (transformers 5 writes
    ``extra_special_tokens``, 4.x ``additional_special_tokens``); reused slots (else
    transformers would add the old name back as a new id) and tokens now plain leave it."""
    key = "extra_special_tokens" if isinstance(config.get("extra_special_tokens"), list) else "additional_special_tokens"
    content = lambda x: x.get("content") if isinstance(x, dict) else x  # noqa: E731
    leaving = set(replaced) | {e["content"] for e in entries if not e["special"]}
    if not isinstance(config.get(key) or [], list):  # a string would become one token per char
        from .errors import TokenizerFormatError

        raise TokenizerFormatError(f"tokenizer_config.json: {key} must be a list of tokens, got {config[key]!r:.80}")
    current = [x for x in config.get(key) or [] if content(x) not in leaving]
    listed = {content(x) for x in current}
    for e in entries:
        if e["special"] and e["content"] not in listed:
            current.append(e["content"])
            listed.add(e["content"])
    if current or key in config:
        config[key] = current


def _new_special_map(special_map: dict, entries: list[dict], replaced: Collection[str] = ()) -> dict:
    _update_special_list(special_map, entries, replaced)
    return special_map


def _special_tokens_map(config: dict) -> dict:
    """special_tokens_map.json as transformers 4 writes it, from a tokenizer_config.json:
    the named special tokens and the list of extra ones (transformers 5 reads the config)."""
    def plain(value: Any) -> Any:
        return {k: v for k, v in value.items() if k != "__type"} if isinstance(value, dict) else value

    out = {key: plain(config[key]) for key in SPECIAL_FIELDS if config.get(key) is not None}
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(config.get(key), list):
            out[key] = [plain(x) for x in config[key]]
    return out


def _added_entries(added: Iterable[tuple[int, str, bool, bool, bool, bool, bool]]) -> list[dict]:
    """tokenizer.json added-token entries from the core's ``added_tokens()`` tuples."""
    return [dict(zip(("id", "content", *FLAGS), t)) for t in added]


def _with_decoder(config: dict, entries: list[dict]) -> dict:
    """A copy of ``config`` whose ``added_tokens_decoder`` is exactly ``entries``: transformers
    5 re-adds a decoder entry that differs from tokenizer.json with the config's flags, so
    the two files must agree token for token."""
    decoder = {str(e["id"]): _decoder_entry(e) for e in sorted(entries, key=lambda e: e["id"])}
    return {**config, "added_tokens_decoder": decoder}


# ----------------------------------------------------------------------------- writing


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_tokenizer_files(
    folder: str | os.PathLike[str],
    tokenizer_json: str,
    config: dict | None,
    special_map: dict | None,
    templates: dict[str, str] | None = None,
) -> list[Path]:
    """Write tokenizer.json (its text as given), tokenizer_config.json and
    special_tokens_map.json (each skipped when None) into ``folder``, created if missing,
    and ``templates`` as transformers 5 writes chat templates: ``"default"`` in
    chat_template.jinja, the others in additional_chat_templates/NAME.jinja (template files
    win over the config's on loading, so stale ones must not stay behind).
    Each file is written under a temporary name first and all are renamed at the end, so a
    failure leaves the old files, never a half-written one. Returns the written paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"tokenizer.json": tokenizer_json if tokenizer_json.endswith("\n") else tokenizer_json + "\n"}
    if config is not None:
        texts["tokenizer_config.json"] = _json_text(config)
    if special_map is not None:
        texts["special_tokens_map.json"] = _json_text(special_map)
    for name, template in (templates or {}).items():
        if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
            raise ValueError(f"chat template name {name!r} is not a plain file name")
        texts["chat_template.jinja" if name == "default" else f"additional_chat_templates/{name}.jinja"] = template
    if templates and any(name != "default" for name in templates):
        (out / "additional_chat_templates").mkdir(exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, text in texts.items():
            path = out / name
            temp = path.parent / f".{path.name}.tmp-{os.getpid()}"
            staged.append((temp, path))
            temp.write_text(text, encoding="utf-8")
        for temp, path in staged:
            os.replace(temp, path)
    except BaseException:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
        raise
    return [path for _, path in staged]
