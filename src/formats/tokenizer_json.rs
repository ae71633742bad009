//! Hugging Face `tokenizer.json`: read any byte-level BPE tokenizer, write one back that
//! the reference loads and encodes identically.

use crate::bpe::Bpe;
use crate::bytelevel;
use crate::error::{Error, Result};
use crate::normalize::Normalizer;
use crate::pretokenize::{Behavior, Dialect, PreTokenizer, Splitter, Step};
use crate::special::{AddedToken, AddedVocabulary};
use crate::tokenizer::{Decoder, PostProcessor, TemplatePiece, Tokenizer, Vocab};
use rustc_hash::FxHashSet;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The top-level key under which tokensmith records what the reference format cannot say.
pub const TOKENSMITH_KEY: &str = "tokensmith";

fn bad(message: impl Into<String>) -> Error {
    Error::format("", message)
}

fn field<'a>(obj: &'a Value, path: &str, key: &str) -> Result<&'a Value> {
    obj.get(key).ok_or_else(|| bad(format!("{path}: missing field {key:?}")))
}

fn str_field<'a>(obj: &'a Value, path: &str, key: &str) -> Result<&'a str> {
    field(obj, path, key)?
        .as_str()
        .ok_or_else(|| bad(format!("{path}.{key}: expected a string")))
}

fn bool_field(obj: &Value, path: &str, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("{path}.{key}: expected true or false"))),
    }
}

fn type_of<'a>(obj: &'a Value, path: &str) -> Result<&'a str> {
    if !obj.is_object() {
        return Err(bad(format!("{path}: expected an object")));
    }
    str_field(obj, path, "type")
}

fn array<'a>(obj: &'a Value, path: &str, key: &str) -> Result<&'a Vec<Value>> {
    field(obj, path, key)?
        .as_array()
        .ok_or_else(|| bad(format!("{path}.{key}: expected a list")))
}

/// Parses tokenizer.json text. `source` names the file in error messages.
pub fn from_str(text: &str, source: &str) -> Result<Tokenizer> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| Error::format(source, format!("not valid JSON ({e})")))?;
    from_value(root).map_err(|e| e.in_file(source))
}

pub fn from_value(mut root: Value) -> Result<Tokenizer> {
    let Some(obj) = root.as_object_mut() else {
        return Err(bad("the top level must be a JSON object"));
    };
    let model = obj.remove("model").ok_or_else(|| bad("missing field \"model\""))?;
    let added_tokens = obj.remove("added_tokens").unwrap_or(Value::Array(vec![]));
    let passthrough: Map<String, Value> = obj.clone();
    let null = Value::Null;
    for key in ["truncation", "padding"] {
        if passthrough.get(key).is_some_and(|v| !v.is_null()) {
            return Err(Error::Unsupported(format!(
                "{key} settings in tokenizer.json (set \"{key}\": null; truncate or pad the ids instead)"
            )));
        }
    }

    // The model first: "not a BPE" says more than any component it comes with.
    let (vocab, merges, ignore_merges) = parse_model(&model)?;
    let normalizer = parse_normalizer(passthrough.get("normalizer").unwrap_or(&null), "normalizer")?;
    // A tokenizer made from a tiktoken file keeps tiktoken's exact semantics when saved and
    // reloaded here: its pattern dialect and merging by ranks (the reference ignores this key).
    let tiktoken_pattern = passthrough
        .get(TOKENSMITH_KEY)
        .and_then(|meta| meta.get("tiktoken_pattern"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let pre_tokenizer = match &tiktoken_pattern {
        Some(pattern) => PreTokenizer::from_pattern(pattern, Dialect::Tiktoken)?,
        None => parse_pre_tokenizer(passthrough.get("pre_tokenizer").unwrap_or(&null))?,
    };
    let post_processor = parse_post_processor(passthrough.get("post_processor").unwrap_or(&null))?;
    let decoder = parse_decoder(passthrough.get("decoder").unwrap_or(&null))?;
    let tokens = parse_added_tokens(&added_tokens)?;
    let bpe = match tiktoken_pattern {
        Some(_) => {
            let specials: FxHashSet<&str> =
                tokens.iter().filter(|t| t.special).map(|t| t.content.as_str()).collect();
            let ranks: Vec<(Vec<u8>, u32)> = vocab
                .tokens
                .iter()
                .enumerate()
                .filter_map(|(id, t)| {
                    let t = t.as_deref().filter(|t| !specials.contains(t))?;
                    Some((bytelevel::decode_str(t)?, id as u32))
                })
                .collect();
            Bpe::from_ranks(&ranks)
        }
        None => build_bpe(&vocab, &merges, ignore_merges)?,
    };

    let mut tokenizer = Tokenizer {
        vocab: Arc::new(vocab),
        merges: Arc::new(merges),
        ignore_merges,
        bpe: Arc::new(bpe),
        normalizer,
        pre_tokenizer,
        post_processor,
        decoder,
        added: AddedVocabulary::default(),
        passthrough,
    };
    tokenizer.add_tokens(tokens)?;
    Ok(tokenizer)
}

fn parse_normalizer(value: &Value, path: &str) -> Result<Option<Normalizer>> {
    if value.is_null() {
        return Ok(None);
    }
    Ok(Some(match type_of(value, path)? {
        "NFC" => Normalizer::Nfc,
        "NFD" => Normalizer::Nfd,
        "NFKC" => Normalizer::Nfkc,
        "NFKD" => Normalizer::Nfkd,
        "Lowercase" => Normalizer::Lowercase,
        "Sequence" => {
            let mut steps = Vec::new();
            for (i, step) in array(value, path, "normalizers")?.iter().enumerate() {
                if let Some(n) = parse_normalizer(step, &format!("{path}.normalizers[{i}]"))? {
                    steps.push(n);
                }
            }
            Normalizer::Sequence(steps)
        }
        other => return Err(Error::Unsupported(format!("normalizer {other:?}"))),
    }))
}

fn parse_pre_tokenizer(value: &Value) -> Result<PreTokenizer> {
    let mut steps = Vec::new();
    if !value.is_null() {
        collect_steps(value, "pre_tokenizer", &mut steps)?;
    }
    PreTokenizer::new(steps)
}

fn collect_steps(value: &Value, path: &str, steps: &mut Vec<Step>) -> Result<()> {
    match type_of(value, path)? {
        "Sequence" => {
            for (i, step) in array(value, path, "pretokenizers")?.iter().enumerate() {
                collect_steps(step, &format!("{path}.pretokenizers[{i}]"), steps)?;
            }
        }
        "ByteLevel" => steps.push(Step::ByteLevel {
            add_prefix_space: bool_field(value, path, "add_prefix_space", true)?,
            use_regex: bool_field(value, path, "use_regex", true)?,
        }),
        "Split" => {
            let pattern = field(value, path, "pattern")?;
            let source = if let Some(s) = pattern.get("Regex").and_then(Value::as_str) {
                s.to_string()
            } else if let Some(s) = pattern.get("String").and_then(Value::as_str) {
                regex::escape(s)
            } else {
                return Err(bad(format!("{path}.pattern: expected {{\"Regex\": ...}} or {{\"String\": ...}}")));
            };
            let behavior = match str_field(value, path, "behavior")? {
                "Removed" => Behavior::Removed,
                "Isolated" => Behavior::Isolated,
                "MergedWithPrevious" => Behavior::MergedWithPrevious,
                "MergedWithNext" => Behavior::MergedWithNext,
                "Contiguous" => Behavior::Contiguous,
                other => return Err(bad(format!("{path}.behavior: unknown behavior {other:?}"))),
            };
            let splitter = Splitter::for_pattern(&source, Dialect::Oniguruma)
                .map_err(|e| bad(format!("{path}.pattern: {e}")))?;
            steps.push(Step::Split { splitter, behavior, invert: bool_field(value, path, "invert", false)? });
        }
        "Digits" => steps.push(Step::Split {
            splitter: Splitter::Numeric,
            behavior: if bool_field(value, path, "individual_digits", false)? {
                Behavior::Isolated
            } else {
                Behavior::Contiguous
            },
            invert: false,
        }),
        other => return Err(Error::Unsupported(format!("pre-tokenizer {other:?} (at {path})"))),
    }
    Ok(())
}

fn parse_post_processor(value: &Value) -> Result<PostProcessor> {
    let mut post = PostProcessor::default();
    if !value.is_null() {
        collect_post_processor(value, "post_processor", &mut post)?;
    }
    Ok(post)
}

fn collect_post_processor(value: &Value, path: &str, post: &mut PostProcessor) -> Result<()> {
    match type_of(value, path)? {
        // ByteLevel only trims offsets, which ids do not carry.
        "ByteLevel" => Ok(()),
        "Sequence" => {
            for (i, p) in array(value, path, "processors")?.iter().enumerate() {
                collect_post_processor(p, &format!("{path}.processors[{i}]"), post)?;
            }
            Ok(())
        }
        "TemplateProcessing" => {
            if post.template.is_some() {
                return Err(Error::Unsupported(format!("two TemplateProcessing post-processors (at {path})")));
            }
            let specials = field(value, path, "special_tokens")?;
            let mut items = Vec::new();
            for (i, item) in array(value, path, "single")?.iter().enumerate() {
                let item_path = format!("{path}.single[{i}]");
                if let Some(special) = item.get("SpecialToken") {
                    let name = str_field(special, &item_path, "id")?;
                    let entry = specials
                        .get(name)
                        .ok_or_else(|| bad(format!("{item_path}: {name:?} is not in {path}.special_tokens")))?;
                    let ids = array(entry, &format!("{path}.special_tokens.{name}"), "ids")?
                        .iter()
                        .map(|v| {
                            v.as_u64()
                                .and_then(|v| u32::try_from(v).ok())
                                .ok_or_else(|| bad(format!("{path}.special_tokens.{name}.ids: expected ids")))
                        })
                        .collect::<Result<Vec<u32>>>()?;
                    items.push(TemplatePiece::Ids(ids));
                } else if item.get("Sequence").is_some() {
                    items.push(TemplatePiece::Sequence);
                } else {
                    return Err(bad(format!("{item_path}: expected SpecialToken or Sequence")));
                }
            }
            post.template = Some(items);
            Ok(())
        }
        other => Err(Error::Unsupported(format!("post-processor {other:?} (at {path})"))),
    }
}

fn parse_decoder(value: &Value) -> Result<Decoder> {
    if value.is_null() {
        return Ok(Decoder::None);
    }
    match type_of(value, "decoder")? {
        "ByteLevel" => Ok(Decoder::ByteLevel),
        "Sequence" => {
            let decoders = array(value, "decoder", "decoders")?;
            match decoders.as_slice() {
                [single] if type_of(single, "decoder.decoders[0]")? == "ByteLevel" => Ok(Decoder::ByteLevel),
                _ => Err(Error::Unsupported("decoder Sequence other than [ByteLevel]".into())),
            }
        }
        other => Err(Error::Unsupported(format!("decoder {other:?}"))),
    }
}

fn parse_model(model: &Value) -> Result<(Vocab, Vec<(u32, u32)>, bool)> {
    let kind = model.get("type").and_then(Value::as_str);
    if let Some(kind) = kind {
        if kind != "BPE" {
            return Err(Error::Unsupported(format!("model {kind:?} (only BPE is supported)")));
        }
    } else if model.get("merges").is_none() {
        return Err(bad("model: not a BPE model (no \"type\" and no \"merges\")"));
    }
    if let Some(d) = model.get("dropout").and_then(Value::as_f64) {
        if d != 0.0 {
            return Err(Error::Unsupported("BPE dropout".into()));
        }
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model.get(key).is_some_and(|v| !v.is_null()) {
            return Err(Error::Unsupported(format!("BPE {key}")));
        }
    }
    if bool_field(model, "model", "byte_fallback", false)? {
        return Err(Error::Unsupported("BPE byte_fallback (SentencePiece-style BPE)".into()));
    }
    let ignore_merges = bool_field(model, "model", "ignore_merges", false)?;
    let vocab_obj = field(model, "model", "vocab")?
        .as_object()
        .ok_or_else(|| bad("model.vocab: expected an object of token -> id"))?;
    let entries = vocab_obj
        .iter()
        .map(|(token, id)| {
            id.as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| v < u32::MAX)
                .map(|id| (token.clone(), id))
                .ok_or_else(|| bad(format!("model.vocab: the id of {token:?} is not a valid id: {id}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab = Vocab::new(entries)?;
    if model.get("unk_token").is_some_and(|v| !v.is_null()) {
        let missing = (0..=255u8).find(|&b| !vocab.ids.contains_key(&bytelevel::byte_to_char(b).to_string()));
        if let Some(b) = missing {
            return Err(Error::Unsupported(format!(
                "a byte-level vocabulary without a token for byte {b:#04x} that falls back to unk_token"
            )));
        }
    }
    let mut merges = Vec::new();
    for (rank, merge) in array(model, "model", "merges")?.iter().enumerate() {
        let (left, right) = match merge {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(' ').collect();
                match parts.as_slice() {
                    [l, r] => (*l, *r),
                    _ => return Err(bad(format!("model.merges[{rank}]: expected two tokens separated by one space, got {s:?}"))),
                }
            }
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(l), Value::String(r)] => (l.as_str(), r.as_str()),
                _ => return Err(bad(format!("model.merges[{rank}]: expected a pair of strings"))),
            },
            _ => return Err(bad(format!("model.merges[{rank}]: expected a string or a pair"))),
        };
        let id = |t: &str| {
            vocab.ids.get(t).copied().ok_or_else(|| {
                bad(format!("model.merges[{rank}]: {t:?} is not in the vocabulary"))
            })
        };
        let (l, r) = (id(left)?, id(right)?);
        id(&format!("{left}{right}"))?;
        merges.push((l, r));
    }
    Ok((vocab, merges, ignore_merges))
}

pub(crate) fn build_bpe(vocab: &Vocab, merges: &[(u32, u32)], ignore_merges: bool) -> Result<Bpe> {
    let byte_tokens: Vec<(Vec<u8>, u32)> = vocab
        .tokens
        .iter()
        .enumerate()
        .filter_map(|(id, t)| Some((bytelevel::decode_str(t.as_deref()?)?, id as u32)))
        .collect();
    let merged = |(l, r): (u32, u32)| -> u32 {
        let joined = format!("{}{}", vocab.get(l).unwrap_or(""), vocab.get(r).unwrap_or(""));
        vocab.ids[&joined]
    };
    Ok(Bpe::new(
        byte_tokens.iter().map(|(b, id)| (b.as_slice(), *id)),
        merges.iter().map(|&(l, r)| (l, r, merged((l, r)))),
        ignore_merges,
    ))
}

fn parse_added_tokens(value: &Value) -> Result<Vec<AddedToken>> {
    let list = value.as_array().ok_or_else(|| bad("added_tokens: expected a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let path = format!("added_tokens[{i}]");
            let special = bool_field(t, &path, "special", false)?;
            Ok(AddedToken {
                content: str_field(t, &path, "content")?.to_string(),
                single_word: bool_field(t, &path, "single_word", false)?,
                lstrip: bool_field(t, &path, "lstrip", false)?,
                rstrip: bool_field(t, &path, "rstrip", false)?,
                normalized: bool_field(t, &path, "normalized", !special)?,
                special,
            })
        })
        .collect()
}

/// The tokenizer as tokenizer.json text.
pub fn to_string(tokenizer: &Tokenizer) -> Result<String> {
    let mut root = Map::new();
    root.insert("version".into(), json!("1.0"));
    root.insert("truncation".into(), Value::Null);
    root.insert("padding".into(), Value::Null);
    let added: Vec<Value> = tokenizer
        .added
        .tokens()
        .map(|(id, t)| {
            json!({"id": id, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
                   "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special})
        })
        .collect();
    root.insert("added_tokens".into(), Value::Array(added));
    for key in ["normalizer", "pre_tokenizer", "post_processor", "decoder"] {
        root.insert(key.into(), tokenizer.passthrough.get(key).cloned().unwrap_or(Value::Null));
    }
    for (key, value) in &tokenizer.passthrough {
        if !root.contains_key(key) {
            root.insert(key.clone(), value.clone());
        }
    }
    let mut vocab = Map::new();
    for (id, token) in tokenizer.vocab.tokens.iter().enumerate() {
        if let Some(token) = token {
            vocab.insert(token.clone(), json!(id));
        }
    }
    let merges: Vec<Value> = tokenizer
        .merges
        .iter()
        .map(|&(l, r)| json!([tokenizer.vocab.get(l), tokenizer.vocab.get(r)]))
        .collect();
    root.insert(
        "model".into(),
        json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
               "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
               "ignore_merges": tokenizer.ignore_merges, "vocab": vocab, "merges": merges}),
    );
    serde_json::to_string_pretty(&Value::Object(root)).map_err(|e| Error::Invalid(e.to_string()))
}
