"""The fine-tuning data path gives the training data the user meant (issue 10): task tokens
as ids, templates from every file transformers reads, no silent empty output, EOS never
missing, EOS typed as text found, labels by characters, every record shape.

References: transformers' ``apply_chat_template`` (ids) and ``tokenizers``' offsets, on the
real tokenizers and templates under ``../shared/data``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import DATA, require_data
from test_data import CHATS, MODELS, hf_ids, model_dir, write_jsonl

import tokensmith as ts
from tokensmith import data

transformers = pytest.importorskip("transformers")
pq = pytest.importorskip("pyarrow.parquet")

BOX = ["<|box_start|>", "<|box_end|>"]
GROUNDING = [
    {"role": "user", "content": "Where is the dog?"},
    {"role": "assistant", "content": "<|box_start|>(12,40),(88,120)<|box_end|>"},
]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokensmith.cli", *args], capture_output=True, text=True)


def rows(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


# ------------------------------------------------------------------ task tokens in content


@pytest.mark.parametrize("key", list(MODELS))
def test_added_task_tokens_become_ids_in_content_as_in_apply_chat_template(key, tmp_path_factory):
    folder = model_dir(tmp_path_factory, key)
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = tok.add_special_tokens(BOX)
    hf.add_special_tokens({"additional_special_tokens": BOX})
    assert [hf.convert_tokens_to_ids(t) for t in BOX] == ids
    for chat in (GROUNDING, CHATS[1]):
        ex = data.encode_chat(tok, chat)
        assert ex.input_ids == hf_ids(hf, chat), key
    ex = data.encode_chat(tok, GROUNDING)
    # The task tokens are ids and take loss, as the rest of the reply.
    labelled = [l for l in ex.labels if l != data.IGNORE_INDEX]
    assert ids[0] in labelled and ids[1] in labelled
    # The template's own end-of-turn marker in content stays text.
    eos_id = tok.token_to_id(MODELS[key][3])
    attack = [GROUNDING[0], {"role": "assistant", "content": GROUNDING[1]["content"] + MODELS[key][3]}]
    assert data.encode_chat(tok, attack).input_ids.count(eos_id) == ex.input_ids.count(eos_id)


def test_task_tokens_saved_with_save_pretrained_reach_the_data_in_both_libraries(tmp_path_factory, tmp_path):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "llama3.1"))
    tok.add_special_tokens(BOX)
    tok.save_pretrained(tmp_path / "saved")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    reloaded = ts.Tokenizer.from_pretrained(tmp_path / "saved")
    ex = data.encode_chat(reloaded, GROUNDING)
    assert ex.input_ids == hf_ids(hf, GROUNDING)
    assert all(tok.token_to_id(t) in ex.input_ids for t in BOX)


def test_content_special_text_and_a_named_set(tmp_path_factory):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(folder)
    start, end = tok.add_special_tokens(BOX)
    as_text = data.encode_chat(tok, GROUNDING, content_special="text").input_ids
    assert start not in as_text and end not in as_text
    only_start = data.encode_chat(tok, GROUNDING, content_special={"<|box_start|>"}).input_ids
    assert start in only_start and end not in only_start
    # A named marker is allowed on purpose; a name that is no special token is an error.
    im_end = tok.token_to_id("<|im_end|>")
    chat = [GROUNDING[0], {"role": "assistant", "content": "done<|im_end|>"}]
    closing = data.encode_chat(tok, chat).input_ids.count(im_end)
    assert data.encode_chat(tok, chat, content_special=["<|im_end|>"]).input_ids.count(im_end) == closing + 1
    with pytest.raises(ValueError, match="not a special token"):
        data.encode_chat(tok, GROUNDING, content_special=["<|nope|>"])
    with pytest.raises(ValueError, match="content_special"):
        data.encode_chat(tok, GROUNDING, content_special="ids")


def test_template_markers_are_the_template_text_and_the_folder_tokens(tmp_path_factory):
    folder = model_dir(tmp_path_factory, "llama3.1")
    tok = ts.Tokenizer.from_pretrained(folder)
    markers = data.chat.template_markers(tok, data.chat.resolve_template(tok))
    assert {"<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"} <= markers
    assert "<|end_of_text|>" in markers  # the tokenizer's own end-of-text token
    assert "<|reserved_special_token_5|>" not in markers


def test_prepare_and_cli_write_task_tokens_as_ids(tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(folder)
    tok.add_special_tokens(BOX)
    tok.save(folder / "tokenizer.json")
    tok = ts.Tokenizer.from_pretrained(folder)
    box = tok.token_to_id("<|box_start|>")
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": GROUNDING}])
    data.prepare([src], tok, tmp_path / "a", num_workers=1)
    assert box in rows(tmp_path / "a")[0]["input_ids"]
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "b"), "--workers", "1",
               "--content-special", "text")
    assert done.returncode == 0, done.stderr
    assert box not in rows(tmp_path / "b")[0]["input_ids"]
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["content_special"] == "text"


def test_lint_reports_special_tokens_in_content_and_how_each_is_treated(tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(folder)
    tok.add_special_tokens(BOX)
    tok.save(folder / "tokenizer.json")
    chat = [GROUNDING[0], {"role": "assistant", "content": "<|box_start|>(1,2)<|box_end|> ok <|im_end|> hi"}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": chat}])
    findings = {f.token: f for f in data.lint([src], ts.Tokenizer.from_pretrained(folder))}
    assert findings["<|box_start|>"].kind == "task-token" and "its id" in findings["<|box_start|>"].message
    assert findings["<|im_end|>"].kind == "special-in-text" and "text" in findings["<|im_end|>"].message
    done = cli("lint", str(src), "-t", str(folder))
    assert "'<|box_start|>'" in done.stdout and "-> its id" in done.stdout
    assert "-> text (a marker of the template" in done.stdout


# ------------------------------------------------------------------ templates from every file


def bare_folder(tmp_path: Path, tokenizer: str = "qwen2", config: dict | None = None) -> Path:
    require_data()
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "tokenizers" / tokenizer / "tokenizer.json", tmp_path / "tokenizer.json")
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


def template(name: str) -> str:
    return (DATA / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def test_transformers_save_pretrained_template_file_is_found(tmp_path_factory, tmp_path):
    hf = transformers.AutoTokenizer.from_pretrained(str(model_dir(tmp_path_factory, "qwen2.5")))
    hf.save_pretrained(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    tok = ts.Tokenizer.from_pretrained(tmp_path / "saved")
    assert tok.config["chat_template"] == hf.chat_template
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}])
    result = data.prepare([src], tok, tmp_path / "out", num_workers=1)
    assert result.examples == 1
    assert rows(tmp_path / "out")[0]["input_ids"] == hf_ids(hf, CHATS[0])


def test_named_templates_from_the_config_list_and_the_folder(tmp_path):
    qwen, llama = template("Qwen-Qwen2.5-7B-Instruct"), template("meta-llama-Llama-3.1-8B-Instruct")
    folder = bare_folder(tmp_path / "a", config={
        "chat_template": [{"name": "default", "template": qwen}, {"name": "other", "template": llama}],
        "eos_token": "<|im_end|>"})
    tok = ts.Tokenizer.from_pretrained(folder)
    assert data.chat.resolve_template(tok) == qwen
    assert data.chat.named_template(tok, "other") == llama
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert data.render_template(tok, CHATS[0], "other") == hf.apply_chat_template(CHATS[0], chat_template="other", tokenize=False)
    # transformers' folder layout: chat_template.jinja and additional_chat_templates/NAME.jinja
    folder = bare_folder(tmp_path / "b", config={"eos_token": "<|im_end|>", "chat_template": "{{ 'stale' }}"})
    (folder / "chat_template.jinja").write_text(qwen, encoding="utf-8")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text(llama, encoding="utf-8")
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert data.chat.resolve_template(tok) == qwen == hf.get_chat_template()
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}]
    assert data.chat.resolve_template(tok, tools=tools) == llama == hf.get_chat_template(tools=tools)
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}])
    # (Llama's template on Qwen's tokenizer: <|eot_id|> is no token here, so no turn has an end.)
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "o"), "--workers", "1",
               "--template-name", "tool_use")
    assert done.returncode == 2 and "closes this assistant turn with no special token" in done.stderr
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "o"), "--workers", "1",
               "--template-name", "tool_use", "--loss", "all")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["chat_template"] == llama
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "p"), "--template-name", "nope")
    assert done.returncode == 2 and "no chat template named 'nope'" in done.stderr
    # Processors' chat_template.json
    folder = bare_folder(tmp_path / "c", config={"eos_token": "<|im_end|>"})
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": qwen}), encoding="utf-8")
    assert ts.Tokenizer.from_pretrained(folder).config["chat_template"] == qwen


def test_a_template_path_with_a_typo_is_an_error_not_a_template(tmp_path):
    tok = ts.Tokenizer.from_pretrained(bare_folder(tmp_path, config={"eos_token": "<|im_end|>"}))
    with pytest.raises(data.ChatTemplateError, match="not a chat template, a template file or a template name"):
        data.encode_chat(tok, CHATS[0], chat_template="templates/chatml.jinja")


# ------------------------------------------------------------------ no silent empty output


def test_prepare_with_nothing_to_write_fails_and_says_why(tmp_path):
    folder = bare_folder(tmp_path / "m", config={"eos_token": "<|im_end|>", "chat_template": template("Qwen-Qwen2.5-7B-Instruct")})
    tok = ts.Tokenizer.from_pretrained(folder)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(data.DataError, match="the input has no records"):
        data.prepare([empty], tok, tmp_path / "o1", num_workers=1)
    assert not (tmp_path / "o1").exists()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"foo": 1}, {"messages": [{"role": "user", "content": "no reply"}]}],
                      bad_lines=[(0, "{oops")])
    with pytest.raises(data.DataError, match=r"all 3 records were skipped \(.*1 unreadable line.*1 malformed record.*1 no assistant reply") as e:
        data.prepare([bad], tok, tmp_path / "o2", num_workers=1)
    assert "bad.jsonl:1" in str(e.value)
    assert not (tmp_path / "o2").exists()
    done = cli("prepare", str(empty), "-t", str(folder), "-o", str(tmp_path / "o3"))
    assert done.returncode == 2 and "no training example" in done.stderr
    assert not (tmp_path / "o3").exists()
    done = cli("lint", str(empty), "-t", str(folder))
    assert done.returncode == 1 and "[empty]" in done.stdout and "no problems" not in done.stdout


def test_a_chat_with_no_reply_is_skipped_and_counted(tmp_path):
    folder = bare_folder(tmp_path / "m", config={"eos_token": "<|im_end|>", "chat_template": template("Qwen-Qwen2.5-7B-Instruct")})
    tok = ts.Tokenizer.from_pretrained(folder)
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[3]}, {"messages": CHATS[0]}])
    result = data.prepare([src], tok, tmp_path / "o", num_workers=1, on_error="raise")
    assert result.examples == 1 and result.skipped == 1
    assert result.skipped_reasons == {"no assistant reply": 1}
    assert "1 no assistant reply" in result.summary()
    # loss="all" trains on it.
    assert data.prepare([src], tok, tmp_path / "all", num_workers=1, loss="all").examples == 2


# ------------------------------------------------------------------ EOS never missing


def test_text_records_end_with_the_tokenizers_own_end_of_text_token(tmp_path):
    folder = bare_folder(tmp_path / "gpt2", "gpt2")  # a bare tokenizer.json: no tokenizer_config.json
    tok = ts.Tokenizer.from_pretrained(folder)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "one document"}, {"text": "another"}])
    data.prepare([src], tok, tmp_path / "o", num_workers=1, pack=False)
    eot = tok.token_to_id("<|endoftext|>")
    assert [r["input_ids"][-1] for r in rows(tmp_path / "o")] == [eot, eot]
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["eos_token"] == "<|endoftext|>"
    for name, eos in [("llama3", "<|end_of_text|>"), ("llama2", "</s>"), ("gemma4", "<eos>"),
                      ("deepseek-coder", "<｜end▁of▁sentence｜>"), ("tekken", "</s>")]:
        tok = ts.Tokenizer.from_pretrained(bare_folder(tmp_path / name, name))
        assert data.ExampleEncoder(tok).encode_text("x").input_ids[-1] == tok.token_to_id(eos), name


def test_no_eos_anywhere_stops_with_an_error_asking_for_eos(tmp_path):
    require_data()
    spec = json.loads((DATA / "tokenizers" / "gpt2" / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"] = []
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    tok = ts.Tokenizer.from_pretrained(folder)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(data.DataError, match="in.jsonl:1: .*names none.*eos="):
        data.prepare([src], tok, tmp_path / "o", num_workers=1)
    assert not (tmp_path / "o").exists()
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "o"))
    assert done.returncode == 2 and "--eos TOKEN" in done.stderr and "eos=" not in done.stderr
    # Named explicitly, a token that is not one is refused: never appended as text.
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "o"), "--eos", "</s>")
    assert done.returncode == 2 and "'</s>' is not a token of this tokenizer" in done.stderr
    assert not (tmp_path / "o").exists()
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "o"), "--eos", "!", "--no-pack")
    assert done.returncode == 0, done.stderr
    assert [r["input_ids"][-1] for r in rows(tmp_path / "o")] == [tok.token_to_id("!")] * 2


def test_a_config_eos_that_is_not_a_token_is_an_error(tmp_path):
    folder = bare_folder(tmp_path / "m", config={"eos_token": "<eos>"})  # Qwen2 has no <eos>
    tok = ts.Tokenizer.from_pretrained(folder)
    with pytest.raises(data.DataError, match="eos_token '<eos>' is not a token of this tokenizer .*3 pieces"):
        data.prepare([write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])], tok, tmp_path / "o", num_workers=1)


# ------------------------------------------------------------------ lint: EOS typed as text


@pytest.mark.parametrize("key, spelling", [("llama3.1", "</s>"), ("llama3.1", "<|im_end|>"), ("qwen2.5", "<eos>"),
                                            ("gemma4", "<|endoftext|>"), ("mistral-v3", "<|eot_id|>")])
def test_lint_finds_eos_typed_as_text_that_is_no_token_here(key, spelling, tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, key)
    tok = ts.Tokenizer.from_pretrained(folder)
    assert spelling not in {t.content for t in tok.added_tokens}
    pieces = len(tok.encode(spelling, add_special_tokens=False))
    assert pieces > 1
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"Hello!{spelling}"}]},
        {"text": f"a document{spelling}"},
    ])
    findings = [f for f in data.lint([src], tok) if f.kind == "eos-as-text"]
    assert [f.line for f in findings] == [1, 2]
    assert f"a reply ends with the text {spelling!r} ({pieces} pieces here" in findings[0].message
    assert "the end-of-turn id is added by the template" in findings[0].message
    assert "the EOS id is added after each text record" in findings[1].message


def test_lint_finds_an_eos_spelling_that_the_vocabulary_has_but_encoding_never_gives(tmp_path_factory, tmp_path):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    assert tok.token_to_id("</s>") is not None  # in Qwen2's BPE vocabulary, but no merge reaches it
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "Bye</s>"}]}])
    [finding] = [f for f in data.lint([src], tok) if f.kind == "eos-as-text"]
    assert "a reply ends with the text '</s>' (3 pieces here, not a control token of this tokenizer)" in finding.message


# ------------------------------------------------------------------ labels by characters


def nfkc_qwen(tmp_path: Path) -> Path:
    require_data()
    spec = json.loads((DATA / "tokenizers" / "qwen2" / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "NFKC"}
    folder = tmp_path / "nfkc"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    config = {"eos_token": "<|im_end|>", "chat_template": template("Qwen-Qwen2.5-7B-Instruct")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


REPLIES = [
    "Cafe\u0301 au lait, s\u030cee\u0301 \u00e9",  # combining marks: NFC composes them
    "\ufb01ne \u2460 \uff21\uff22 \u00bd",  # compatibility chars: NFKC rewrites them
    "👍🏽 family 👨‍👩‍👧 ok",
    "中文回答：好的。",
    " leading space and e\u0301",
]


@pytest.mark.parametrize("key", ["qwen2.5", "nfkc", "llama3.1", "gemma4", "mistral-v3", "deepseek-v3.1"])
def test_labels_cover_every_token_that_overlaps_a_reply(key, tmp_path_factory, tmp_path):
    folder = nfkc_qwen(tmp_path) if key == "nfkc" else model_dir(tmp_path_factory, key)
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    eos = "<|im_end|>" if key == "nfkc" else MODELS[key][3]
    for reply in REPLIES:
        chat = [{"role": "user", "content": "Say something"}, {"role": "assistant", "content": reply}]
        ex = data.encode_chat(tok, chat)
        assert ex.input_ids == hf_ids(hf, chat), (key, reply)
        rendered = data.render_template(tok, chat)
        written = reply if reply in rendered else reply.strip()  # Llama's and Gemma's templates trim
        start = rendered.index(written)
        region = (start, rendered.index(eos, start + len(written)) + len(eos))
        # Offsets from the reference tokenizer, not ours.
        encoding = hf.backend_tokenizer.encode(rendered, add_special_tokens=False)
        assert encoding.ids == ex.input_ids
        want = [id if s < region[1] and max(e, s + 1) > region[0] else data.IGNORE_INDEX
                for id, (s, e) in zip(encoding.ids, encoding.offsets)]
        assert ex.labels == want, (key, reply)
        # What takes loss decodes to the whole reply (normalized as the tokenizer does) and its end.
        trained = tok.decode([l for l in ex.labels if l != data.IGNORE_INDEX])
        form = "NFKC" if key == "nfkc" else "NFC" if key.startswith("qwen") else None
        expected = unicodedata.normalize(form, reply) if form else reply
        assert expected.strip() in trained, (key, reply, trained)


# ------------------------------------------------------------------ record shapes


def test_alpaca_history_and_system_become_turns():
    kind, messages = data.to_example_input({
        "system": "Be brief.", "instruction": "Translate", "input": "bonjour", "output": "hello",
        "history": [["hi", "hello!"], ["how are you", "fine"]],
    })
    assert kind == "chat"
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "Translate\nbonjour"}, {"role": "assistant", "content": "hello"},
    ]
    with pytest.raises(ValueError, match="'history' item 0 must be a \\[query, response\\] pair"):
        data.to_example_input({"instruction": "a", "output": "b", "history": [["only one"]]})


def test_sharegpt_roles_system_and_tools_as_llama_factory_means_them(tmp_path_factory):
    record = {
        "system": "You can call tools.",
        "tools": json.dumps([{"type": "function", "function": {"name": "weather", "description": "Weather",
                                                              "parameters": {"type": "object", "properties": {}}}}]),
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "It is 21 degrees."},
        ],
    }
    kind, messages = data.to_example_input(record)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    tools = data.sources.to_tools(record)
    assert tools[0]["function"]["name"] == "weather"
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    ex = data.ExampleEncoder(tok)(record)
    assert ex.input_ids == hf_ids(hf, messages, tools=tools)
    trained = tok.decode([l for l in ex.labels if l != data.IGNORE_INDEX])
    assert '"city": "Paris"' in trained and "21 degrees" in trained and "Weather in Paris" not in trained
    assert '{"temp": 21}' not in trained
    with pytest.raises(ValueError, match="unknown ShareGPT role 'bot' \\(known: human, "):
        data.to_example_input({"conversations": [{"from": "bot", "value": "x"}]})


# ------------------------------------------------------------------ errors that say where and what


def test_template_errors_name_the_record_and_the_missing_field(tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    tok = ts.Tokenizer.from_pretrained(folder)
    with pytest.raises(data.ChatTemplateError, match="it reads 'content', which message 1 \\(assistant\\) does not have"):
        data.encode_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant"}])
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}, {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}])
    with pytest.raises(data.DataError, match="in.jsonl:2: .*message 1 \\(assistant\\) has no 'content'"):
        data.prepare([src], tok, tmp_path / "o", num_workers=1, on_error="raise")
    findings = [f for f in data.lint([src], tok) if f.severity == "error"]
    assert [(f.line, f.kind) for f in findings] == [(2, "malformed")]
    assert "has no 'content'" in findings[0].message
    # A template reading a field these messages lack.
    with pytest.raises(data.ChatTemplateError, match="it reads 'weight', which messages 0 \\(user\\), 1 \\(assistant\\) do not"):
        data.encode_chat(tok, CHATS[0], chat_template="{% for m in messages %}{{ m.weight.value }}{% endfor %}")


def test_cli_errors_speak_cli(tmp_path_factory, tmp_path):
    folder = model_dir(tmp_path_factory, "qwen2.5")
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}])
    (tmp_path / "o").mkdir()
    done = cli("prepare", str(src), "-t", str(folder), "-o", str(tmp_path / "o"))
    assert done.returncode == 2 and "--overwrite" in done.stderr and "overwrite=True" not in done.stderr
    bare = bare_folder(tmp_path / "bare")
    done = cli("prepare", str(src), "-t", str(bare), "-o", str(tmp_path / "p"))
    assert done.returncode == 2 and "--template FILE" in done.stderr and "chat_template=" not in done.stderr


# ------------------------------------------------------------------ where content is, exactly


def test_trimmed_content_is_located_between_the_templates_own_text(tmp_path_factory):
    folder = model_dir(tmp_path_factory, "llama3.1")
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    chat = [{"role": "user", "content": "Is it true? "}, {"role": "assistant", "content": "a"}]
    ex = data.encode_chat(tok, chat)
    assert ex.input_ids == hf_ids(hf, chat)
    assert tok.decode([l for l in ex.labels if l != data.IGNORE_INDEX]) == "a<|eot_id|>"
    # The fallback search never takes a piece of a special token's spelling for content.
    rendered = "<|start_header_id|>user<|end_header_id|>\n\nart<|eot_id|>"
    [(start, end, _)] = data.chat._spans_by_search(tok, [(0, "content", None, "art")], rendered)
    assert rendered[start:] == "art<|eot_id|>"


def test_reasoning_and_reply_are_one_region_with_the_templates_think_tags(tmp_path_factory):
    folder = model_dir(tmp_path_factory, "qwen3")
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    chat = [{"role": "user", "content": "2+2?"},
            {"role": "assistant", "reasoning_content": "add them", "content": "4"}]
    ex = data.encode_chat(tok, chat)
    assert ex.input_ids == hf_ids(hf, chat)
    assert ex.warnings == []
    trained = tok.decode([l for l in ex.labels if l != data.IGNORE_INDEX])
    assert trained.startswith("add them") and "</think>" in trained and trained.endswith("4<|im_end|>")


def test_a_template_that_does_not_compile_stops_before_any_record(tmp_path):
    tok = ts.Tokenizer.from_pretrained(bare_folder(tmp_path / "m", config={"eos_token": "<|im_end|>"}))
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}, {"text": "plain"}])
    with pytest.raises(data.ChatTemplateError, match="does not compile: .*line 1"):
        data.prepare([src], tok, tmp_path / "o", num_workers=1, chat_template="{% for m in messages %}{{ m }")
    assert not (tmp_path / "o").exists()


def test_an_assistant_turn_without_an_end_token_stops_prepare(tmp_path):
    tok = ts.Tokenizer.from_pretrained(bare_folder(tmp_path / "m", config={"eos_token": "<|im_end|>"}))
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": CHATS[0]}] * 3)
    with pytest.raises(data.DataError, match="in.jsonl:1: .*no special token.*loss=\"all\""):
        data.prepare([src], tok, tmp_path / "o", num_workers=1, chat_template=template)
    assert not (tmp_path / "o").exists()
    assert data.prepare([src], tok, tmp_path / "o", num_workers=1, chat_template=template, loss="all").examples == 3
    assert {f.kind for f in data.lint([src], tok, chat_template=template) if f.severity == "error"} == {"missing-eos"}


@pytest.mark.parametrize("name", ["gemma4", "llama3", "llama2", "tekken"])
def test_a_bare_tokenizer_json_keeps_its_control_tokens_text_in_content(name, tmp_path):
    tok = ts.Tokenizer.from_file(bare_folder(tmp_path, name) / "tokenizer.json")
    allowed = set(data.content_special_tokens(tok, "{{ messages }}"))
    controls = {"<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<s>", "</s>", "<|begin_of_text|>", "<|end_of_text|>",
                "<|eot_id|>", "<|finetune_right_pad_id|>"}
    assert not allowed & controls
    assert not allowed & {t.content for t in tok.added_tokens if t.special and t.content in controls}


def test_map_batch_leaves_out_chats_with_no_reply(tmp_path_factory):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    out = data.ExampleEncoder(tok).map_batch({"messages": [CHATS[0], CHATS[3], CHATS[1]]})
    assert out["input_ids"] == [data.encode_chat(tok, c).input_ids for c in (CHATS[0], CHATS[1])]


def test_save_pretrained_writes_templates_where_transformers_reads_them_first(tmp_path):
    qwen, llama = template("Qwen-Qwen2.5-7B-Instruct"), template("meta-llama-Llama-3.1-8B-Instruct")
    folder = bare_folder(tmp_path / "m", config={"eos_token": "<|im_end|>"})
    (folder / "chat_template.jinja").write_text(llama, encoding="utf-8")
    tok = ts.Tokenizer.from_pretrained(folder)
    assert tok.config["chat_template"] == llama
    tok.config["chat_template"] = [{"name": "default", "template": qwen}, {"name": "tool_use", "template": llama}]
    tok.save_pretrained(folder)  # over the folder it came from: the old chat_template.jinja must not win
    for loaded in (ts.Tokenizer.from_pretrained(folder).config["chat_template"],
                   transformers.AutoTokenizer.from_pretrained(str(folder)).chat_template):
        named = {t["name"]: t["template"] for t in loaded} if isinstance(loaded, list) else loaded
        assert named == {"default": qwen, "tool_use": llama}


def test_template_files_replace_the_configs_templates_as_in_transformers(tmp_path):
    qwen, llama = template("Qwen-Qwen2.5-7B-Instruct"), template("meta-llama-Llama-3.1-8B-Instruct")
    folder = bare_folder(tmp_path / "m", config={
        "eos_token": "<|im_end|>",
        "chat_template": [{"name": "default", "template": llama}, {"name": "tool_use", "template": llama}]})
    (folder / "chat_template.jinja").write_text(qwen, encoding="utf-8")
    tok = ts.Tokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert tok.config["chat_template"] == hf.chat_template == qwen


def test_tool_call_turns_are_reported_not_silently_untrained(tmp_path_factory, tmp_path):
    tok = ts.Tokenizer.from_pretrained(model_dir(tmp_path_factory, "qwen2.5"))
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    chat = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "21"}, {"role": "assistant", "content": "21 degrees"}]
    ex = data.encode_chat(tok, chat)
    assert any("message 1 (assistant): its tool_calls take no loss" in w for w in ex.warnings)
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": chat}])
    assert any(f.kind == "content" and "tool_calls" in f.message for f in data.lint([src], tok))
