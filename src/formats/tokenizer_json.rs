//! Hugging Face `tokenizer.json`: read any BPE tokenizer (byte-level or SentencePiece-style)
//! with the components listed in the README, write one back that the reference loads and
//! encodes identically.

use crate::bpe::{Bpe, CharSymbols, WordCuts, NO_ID};
use crate::bytelevel;
use crate::decode::{byte_token, Decoder};
use crate::error::{Error, Result};
use crate::formats::sentencepiece;
use crate::formats::typed_json::{Document, Merge, ModelSection, Part};
use crate::normalize::{Normalizer, Precompiled, Replacement};
use crate::postprocess::{Direction, Padding, PostProcessor, Strategy, TemplatePiece, Truncation};
use crate::pretokenize::{Behavior, CharClass, Dialect, Pattern, PreTokenizer, PrependScheme, Splitter, Step};
use crate::special::{AddedToken, AddedVocabulary};
use crate::tokenizer::{Tokenizer, Vocab};
use base64::Engine;
use rustc_hash::FxHashSet;

use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The key under which tokensmith records what the reference format cannot say. It is
/// written inside the model section, where the reference ignores unknown keys (it refuses
/// them at the top level since tokenizers 0.22); files that have it at the top level load too.
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
    // The vocab and merges are read typed (see `typed_json`); a text that reader refuses
    // is read again as a `Value`, whose checks then say what is wrong with it.
    let tokenizer = match serde_json::from_str::<Document>(text) {
        Ok(Document { top, model }) => from_parts(top, model),
        Err(_) => {
            let root: Value = serde_json::from_str(text)
                .map_err(|e| Error::format(source, format!("not valid JSON ({e})")))?;
            from_value(root)
        }
    };
    tokenizer.map_err(|e| e.in_file(source))
}

pub fn from_value(mut root: Value) -> Result<Tokenizer> {
    let Some(obj) = root.as_object_mut() else {
        return Err(bad("the top level must be a JSON object"));
    };
    let model = obj.remove("model").ok_or_else(|| bad("missing field \"model\""))?;
    from_parts(std::mem::take(obj), ModelSection::from_value(&model))
}

/// The tokenizer from the top-level keys of its tokenizer.json but "model", and its model.
fn from_parts(mut obj: Map<String, Value>, model: ModelSection) -> Result<Tokenizer> {
    let added_tokens = obj.remove("added_tokens").unwrap_or(Value::Array(vec![]));
    let mut passthrough = obj;
    if let Some(meta) = model.rest.get(TOKENSMITH_KEY) {
        passthrough.insert(TOKENSMITH_KEY.into(), meta.clone());
    }
    let null = Value::Null;

    // The model first: "not a BPE" says more than any component it comes with.
    let model = parse_model(model)?;
    let truncation = parse_truncation(passthrough.get("truncation").unwrap_or(&null))?;
    let padding = parse_padding(passthrough.get("padding").unwrap_or(&null))?;
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
    let decoder = parse_decoder(passthrough.get("decoder").unwrap_or(&null), "decoder")?;
    let tokens = parse_added_tokens(&added_tokens)?;
    let sentencepiece_scores = match model.settings.get(sentencepiece::SCORES_KEY) {
        Some(scores) => Some(sentencepiece::scores_from_value(scores)?),
        None => None,
    };
    let bpe = match tiktoken_pattern {
        Some(_) => {
            let specials: FxHashSet<&str> =
                tokens.iter().filter(|t| t.special).map(|t| t.content.as_str()).collect();
            let ranks: Vec<(Vec<u8>, u32)> = model
                .vocab
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
        None if pre_tokenizer.is_byte_level() => build_bpe(&model)?,
        None => build_char_bpe(&model, sentencepiece_scores.as_deref())?,
    };

    let mut tokenizer = Tokenizer {
        vocab: Arc::new(model.vocab),
        merges: Arc::new(model.merges),
        ignore_merges: model.ignore_merges,
        bpe: Arc::new(bpe),
        normalizer,
        pre_tokenizer,
        post_processor,
        decoder,
        truncation,
        padding,
        added: AddedVocabulary::default(),
        passthrough,
    };
    tokenizer.passthrough.insert(MODEL_SETTINGS_KEY.into(), Value::Object(model.settings));
    tokenizer.add_tokens(tokens)?;
    // Special strings that share an id with another (tiktoken encodings only).
    let meta = tokenizer.passthrough.get(TOKENSMITH_KEY).cloned();
    let meta = meta.as_ref();
    let mut aliases = Vec::new();
    for (i, alias) in meta.and_then(|m| m.get("aliases")).and_then(Value::as_array).into_iter().flatten().enumerate() {
        match alias.as_array().map(Vec::as_slice) {
            Some([id, Value::String(content)]) if id.as_u64().is_some_and(|id| id < u64::from(u32::MAX)) => {
                let id = id.as_u64().unwrap_or_default() as u32;
                if tokenizer.vocab.ids.get(content).is_some_and(|&other| other != id) {
                    return Err(bad(format!("model.{TOKENSMITH_KEY}.aliases[{i}]: {content:?} is another token")));
                }
                aliases.push((id, AddedToken::new(content.clone(), true)));
            }
            _ => return Err(bad(format!("model.{TOKENSMITH_KEY}.aliases[{i}]: expected [id, content]"))),
        }
    }
    tokenizer.added.add_aliases(aliases).map_err(|e| bad(format!("model.{TOKENSMITH_KEY}.aliases: {e}")))?;
    // Normalized tokens matched as spelled (SentencePiece's user-defined pieces).
    let literal: Vec<u32> = match meta.and_then(|m| m.get("literal_added")) {
        None | Some(Value::Null) => Vec::new(),
        Some(list) => list
            .as_array()
            .and_then(|l| l.iter().map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok())).collect())
            .ok_or_else(|| bad(format!("model.{TOKENSMITH_KEY}.literal_added: expected a list of ids")))?,
    };
    tokenizer.added.match_literally(&literal).map_err(|e| bad(format!("model.{TOKENSMITH_KEY}.literal_added: {e}")))?;
    Ok(tokenizer)
}

/// Where the model's settings (everything but vocab and merges) wait in `passthrough` to be
/// written back; never written as a key of its own.
const MODEL_SETTINGS_KEY: &str = "\0model";

fn usize_field(obj: &Value, path: &str, key: &str, default: Option<usize>) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| bad(format!("{path}: missing field {key:?}"))),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad(format!("{path}.{key}: expected a non-negative integer"))),
    }
}

fn parse_direction(obj: &Value, path: &str) -> Result<Direction> {
    match obj.get("direction").and_then(Value::as_str) {
        None | Some("Right") => Ok(Direction::Right),
        Some("Left") => Ok(Direction::Left),
        Some(other) => Err(bad(format!("{path}.direction: expected \"Left\" or \"Right\", got {other:?}"))),
    }
}

pub fn parse_truncation(value: &Value) -> Result<Option<Truncation>> {
    if value.is_null() {
        return Ok(None);
    }
    let path = "truncation";
    let strategy = match value.get("strategy").and_then(Value::as_str) {
        None | Some("LongestFirst") => Strategy::LongestFirst,
        Some("OnlyFirst") => Strategy::OnlyFirst,
        Some("OnlySecond") => Strategy::OnlySecond,
        Some(other) => return Err(bad(format!("{path}.strategy: unknown strategy {other:?}"))),
    };
    Ok(Some(Truncation {
        max_length: usize_field(value, path, "max_length", None)?,
        stride: usize_field(value, path, "stride", Some(0))?,
        strategy,
        direction: parse_direction(value, path)?,
    }))
}

/// The longest padded length a tokenizer.json may ask for (16M ids).
const MAX_PADDED_LENGTH: usize = 1 << 24;

pub fn parse_padding(value: &Value) -> Result<Option<Padding>> {
    if value.is_null() {
        return Ok(None);
    }
    let path = "padding";
    let fixed = match value.get("strategy") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "BatchLongest" => None,
        Some(v) => match v.get("Fixed") {
            Some(n) => Some(n.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                bad(format!("{path}.strategy.Fixed: expected a non-negative integer"))
            })?),
            None => return Err(bad(format!("{path}.strategy: expected \"BatchLongest\" or {{\"Fixed\": n}}"))),
        },
    };
    let pad_id = usize_field(value, path, "pad_id", Some(0))?;
    let pad_to_multiple_of = match value.get("pad_to_multiple_of") {
        None | Some(Value::Null) => None,
        Some(_) => Some(usize_field(value, path, "pad_to_multiple_of", None)?),
    };
    // Padding allocates that many ids per text: a length past any model's context is a
    // mistake (or a hostile file), not a reason to exhaust memory.
    for (what, n) in [("strategy.Fixed", fixed), ("pad_to_multiple_of", pad_to_multiple_of)] {
        if n.is_some_and(|n| n > MAX_PADDED_LENGTH) {
            return Err(bad(format!("{path}.{what}: {} is more than {MAX_PADDED_LENGTH} ids", n.unwrap_or(0))));
        }
    }
    Ok(Some(Padding {
        fixed,
        pad_to_multiple_of,
        pad_id: u32::try_from(pad_id).map_err(|_| bad(format!("{path}.pad_id: {pad_id} is not a valid id")))?,
        direction: parse_direction(value, path)?,
    }))
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Left => "Left",
        Direction::Right => "Right",
    }
}

pub fn truncation_to_value(t: &Option<Truncation>) -> Value {
    match t {
        None => Value::Null,
        Some(t) => json!({"direction": direction_name(t.direction), "max_length": t.max_length,
            "strategy": format!("{:?}", t.strategy), "stride": t.stride}),
    }
}

/// `pad_token` and `pad_type_id` are kept from `previous` (the file's own settings).
pub fn padding_to_value(p: &Option<Padding>, previous: Option<&Value>) -> Value {
    match p {
        None => Value::Null,
        Some(p) => {
            let strategy = match p.fixed {
                Some(n) => json!({"Fixed": n}),
                None => json!("BatchLongest"),
            };
            let keep = |key: &str, default: Value| previous.and_then(|v| v.get(key)).cloned().unwrap_or(default);
            json!({"strategy": strategy, "direction": direction_name(p.direction),
                "pad_to_multiple_of": p.pad_to_multiple_of, "pad_id": p.pad_id,
                "pad_type_id": keep("pad_type_id", json!(0)), "pad_token": keep("pad_token", json!("[PAD]"))})
        }
    }
}

fn parse_replacement(value: &Value, path: &str) -> Result<Replacement> {
    let pattern = field(value, path, "pattern")?;
    if let Some(s) = pattern.get("String").and_then(Value::as_str) {
        if s.is_empty() {
            // An empty literal matches between every char, as its escaped regex does.
            return Ok(Replacement::Regex(Pattern::new("", Dialect::Oniguruma)?));
        }
        Ok(Replacement::Literal(s.to_string()))
    } else if let Some(s) = pattern.get("Regex").and_then(Value::as_str) {
        Ok(Replacement::Regex(
            Pattern::new(s, Dialect::Oniguruma).map_err(|e| bad(format!("{path}.pattern: {e}")))?,
        ))
    } else {
        Err(bad(format!("{path}.pattern: expected {{\"String\": ...}} or {{\"Regex\": ...}}")))
    }
}

fn char_field(obj: &Value, path: &str, key: &str) -> Result<char> {
    let s = str_field(obj, path, key)?;
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(bad(format!("{path}.{key}: expected one char, got {s:?}"))),
    }
}

fn prepend_scheme(obj: &Value, path: &str) -> Result<PrependScheme> {
    let scheme = match obj.get("prepend_scheme").and_then(Value::as_str) {
        None => PrependScheme::Always,
        Some("always") => PrependScheme::Always,
        Some("first") => PrependScheme::First,
        Some("never") => PrependScheme::Never,
        Some(other) => return Err(bad(format!("{path}.prepend_scheme: unknown scheme {other:?}"))),
    };
    // Files from before prepend_scheme say add_prefix_space: false for "never".
    match obj.get("add_prefix_space") {
        Some(Value::Bool(false)) if scheme != PrependScheme::Never && obj.get("prepend_scheme").is_some() => {
            Err(bad(format!("{path}: add_prefix_space does not match declared prepend_scheme")))
        }
        Some(Value::Bool(false)) => Ok(PrependScheme::Never),
        _ => Ok(scheme),
    }
}

fn parse_behavior(value: &Value, path: &str, default: Option<Behavior>) -> Result<Behavior> {
    Ok(match value.get("behavior").and_then(Value::as_str) {
        None if default.is_some() => return default.ok_or_else(|| bad(format!("{path}: no behavior"))),
        Some("Removed") => Behavior::Removed,
        Some("Isolated") => Behavior::Isolated,
        Some("MergedWithPrevious") => Behavior::MergedWithPrevious,
        Some("MergedWithNext") => Behavior::MergedWithNext,
        Some("Contiguous") => Behavior::Contiguous,
        other => return Err(bad(format!("{path}.behavior: unknown behavior {other:?}"))),
    })
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
        "Prepend" => Normalizer::Prepend(str_field(value, path, "prepend")?.to_string()),
        "Replace" => Normalizer::Replace {
            pattern: parse_replacement(value, path)?,
            content: str_field(value, path, "content")?.to_string(),
        },
        "Strip" => Normalizer::Strip {
            left: bool_field(value, path, "strip_left", false)?,
            right: bool_field(value, path, "strip_right", false)?,
        },
        "StripAccents" => Normalizer::StripAccents,
        "Precompiled" => {
            let encoded = str_field(value, path, "precompiled_charsmap")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| bad(format!("{path}.precompiled_charsmap: invalid base64 ({e})")))?;
            let map = Precompiled::from_bytes(&bytes).map_err(|e| match e {
                Error::Format { message, .. } => bad(format!("{path}: {message}")),
                other => other,
            })?;
            Normalizer::Precompiled(Arc::new(map))
        }
        "BertNormalizer" => Normalizer::Bert {
            clean_text: bool_field(value, path, "clean_text", true)?,
            handle_chinese_chars: bool_field(value, path, "handle_chinese_chars", true)?,
            strip_accents: match value.get("strip_accents") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(bad(format!("{path}.strip_accents: expected true, false or null"))),
            },
            lowercase: bool_field(value, path, "lowercase", true)?,
        },
        "Sequence" => {
            let mut steps = Vec::new();
            for (i, step) in array(value, path, "normalizers")?.iter().enumerate() {
                if let Some(n) = parse_normalizer(step, &format!("{path}.normalizers[{i}]"))? {
                    steps.push(n);
                }
            }
            Normalizer::Sequence(steps)
        }
        other => return Err(Error::Unsupported(format!("normalizer {other:?} (at {path})"))),
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
    let split = |splitter, behavior| Step::Split { splitter, behavior, invert: false };
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
            let behavior = parse_behavior(value, path, None)?;
            let splitter = Splitter::for_pattern(&source, Dialect::Oniguruma)
                .map_err(|e| bad(format!("{path}.pattern: {e}")))?;
            steps.push(Step::Split { splitter, behavior, invert: bool_field(value, path, "invert", false)? });
        }
        "Digits" => steps.push(split(
            Splitter::Chars(CharClass::Numeric),
            if bool_field(value, path, "individual_digits", false)? { Behavior::Isolated } else { Behavior::Contiguous },
        )),
        "Punctuation" => steps.push(split(
            Splitter::Chars(CharClass::Punctuation),
            parse_behavior(value, path, Some(Behavior::Isolated))?,
        )),
        "WhitespaceSplit" => steps.push(split(Splitter::Chars(CharClass::Whitespace), Behavior::Removed)),
        // The pieces are the matches of `\w+|[^\w\s]+` (the reference splits on the inverse).
        "Whitespace" => steps.push(Step::Split {
            splitter: Splitter::Pattern(Pattern::new(r"\w+|[^\w\s]+", Dialect::Tiktoken)?),
            behavior: Behavior::Removed,
            invert: true,
        }),
        "CharDelimiterSplit" => steps.push(split(
            Splitter::Chars(CharClass::Is(char_field(value, path, "delimiter")?)),
            Behavior::Removed,
        )),
        "BertPreTokenizer" => {
            steps.push(split(Splitter::Chars(CharClass::Whitespace), Behavior::Removed));
            steps.push(split(Splitter::Chars(CharClass::Punctuation), Behavior::Isolated));
        }
        "Metaspace" => steps.push(Step::Metaspace {
            replacement: char_field(value, path, "replacement")?,
            prepend: prepend_scheme(value, path)?,
            split: bool_field(value, path, "split", true)?,
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

/// A `[token, id]` pair of RobertaProcessing / BertProcessing.
fn token_id(value: &Value, path: &str, key: &str) -> Result<u32> {
    match field(value, path, key)?.as_array().map(Vec::as_slice) {
        Some([Value::String(_), id]) => id
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad(format!("{path}.{key}: expected [token, id]"))),
        _ => Err(bad(format!("{path}.{key}: expected [token, id]"))),
    }
}

fn set_template(post: &mut PostProcessor, path: &str, items: Vec<TemplatePiece>) -> Result<()> {
    if post.template.is_some() {
        return Err(Error::Unsupported(format!("two post-processors that add special tokens (at {path})")));
    }
    post.template = Some(items);
    Ok(())
}

fn collect_post_processor(value: &Value, path: &str, post: &mut PostProcessor) -> Result<()> {
    match type_of(value, path)? {
        "ByteLevel" => {
            if bool_field(value, path, "trim_offsets", true)? {
                post.trim_offsets = Some(bool_field(value, path, "add_prefix_space", true)?);
            }
            Ok(())
        }
        "RobertaProcessing" | "BertProcessing" => {
            let (cls, sep) = (token_id(value, path, "cls")?, token_id(value, path, "sep")?);
            if type_of(value, path)? == "RobertaProcessing" && bool_field(value, path, "trim_offsets", true)? {
                post.trim_offsets = Some(bool_field(value, path, "add_prefix_space", true)?);
            }
            set_template(post, path, vec![TemplatePiece::Ids(vec![cls]), TemplatePiece::Sequence, TemplatePiece::Ids(vec![sep])])
        }
        "Sequence" => {
            for (i, p) in array(value, path, "processors")?.iter().enumerate() {
                collect_post_processor(p, &format!("{path}.processors[{i}]"), post)?;
            }
            Ok(())
        }
        "TemplateProcessing" => {
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
            set_template(post, path, items)
        }
        other => Err(Error::Unsupported(format!("post-processor {other:?} (at {path})"))),
    }
}

fn parse_decoder(value: &Value, path: &str) -> Result<Option<Decoder>> {
    if value.is_null() {
        return Ok(None);
    }
    Ok(Some(match type_of(value, path)? {
        "ByteLevel" => Decoder::ByteLevel,
        "Replace" => Decoder::Replace {
            pattern: parse_replacement(value, path)?,
            content: str_field(value, path, "content")?.to_string(),
        },
        "ByteFallback" => Decoder::ByteFallback,
        "Fuse" => Decoder::Fuse,
        "Strip" => Decoder::Strip {
            content: char_field(value, path, "content")?,
            start: usize_field(value, path, "start", Some(0))?,
            stop: usize_field(value, path, "stop", Some(0))?,
        },
        "Metaspace" => Decoder::Metaspace {
            replacement: char_field(value, path, "replacement")?,
            prepend: prepend_scheme(value, path)?,
        },
        "BPEDecoder" => Decoder::Bpe {
            suffix: value.get("suffix").and_then(Value::as_str).unwrap_or("</w>").to_string(),
        },
        "Sequence" => {
            let mut steps = Vec::new();
            for (i, step) in array(value, path, "decoders")?.iter().enumerate() {
                if let Some(d) = parse_decoder(step, &format!("{path}.decoders[{i}]"))? {
                    steps.push(d);
                }
            }
            // A lone ByteLevel keeps its fast path.
            match <[Decoder; 1]>::try_from(steps) {
                Ok([Decoder::ByteLevel]) => Decoder::ByteLevel,
                Ok([d]) => Decoder::Sequence(vec![d]),
                Err(steps) => Decoder::Sequence(steps),
            }
        }
        other => return Err(Error::Unsupported(format!("decoder {other:?} (at {path})"))),
    }))
}

/// A BPE model section.
struct Model {
    vocab: Vocab,
    /// (left, right, merged) ids in rank order.
    merges: Vec<(u32, u32)>,
    merged: Vec<u32>,
    ignore_merges: bool,
    prefix: Option<String>,
    suffix: Option<String>,
    byte_fallback: bool,
    unk: Option<String>,
    fuse_unk: bool,
    /// The section without vocab and merges, to write back.
    settings: Map<String, Value>,
}

fn optional_str(obj: &Value, path: &str, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{path}.{key}: expected a string or null"))),
    }
}

fn parse_model(section: ModelSection) -> Result<Model> {
    // The keys but vocab and merges, for the checks below and then to write back.
    let mut model = Value::Object(section.rest);
    let kind = model.get("type").and_then(Value::as_str);
    if let Some(kind) = kind {
        if kind != "BPE" {
            return Err(Error::Unsupported(format!("model {kind:?} (only BPE is supported)")));
        }
    } else if matches!(section.merges, Part::Missing) {
        return Err(bad("model: not a BPE model (no \"type\" and no \"merges\")"));
    }
    if let Some(d) = model.get("dropout").and_then(Value::as_f64) {
        if d != 0.0 {
            return Err(Error::Unsupported(format!(
                "BPE dropout {d} (random by design: no two encodes agree; set \"dropout\": null)"
            )));
        }
    }
    // An empty prefix or suffix changes nothing (the reference's own trainer writes "").
    let prefix = optional_str(&model, "model", "continuing_subword_prefix")?.filter(|s| !s.is_empty());
    let suffix = optional_str(&model, "model", "end_of_word_suffix")?.filter(|s| !s.is_empty());
    let ignore_merges = bool_field(&model, "model", "ignore_merges", false)?;
    let vocab_entries = match section.vocab {
        Part::Missing => return Err(bad("model: missing field \"vocab\"")),
        Part::Malformed => return Err(bad("model.vocab: expected an object of token -> id")),
        Part::Read(entries) => entries,
    };
    let entries = vocab_entries
        .into_iter()
        .map(|(token, id)| match id.ok().and_then(|v| u32::try_from(v).ok()).filter(|&v| v < u32::MAX) {
            Some(valid) => Ok((token.into_owned(), valid)),
            None => {
                let id = id.map_or_else(Value::to_string, |v| v.to_string());
                Err(bad(format!("model.vocab: the id of {token:?} is not a valid id: {id}")))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab = Vocab::new(entries)?;
    let unk = optional_str(&model, "model", "unk_token")?;
    if let Some(unk) = &unk {
        if !vocab.ids.contains_key(unk) {
            return Err(bad(format!("model.unk_token: {unk:?} is not in the vocabulary")));
        }
    }
    let merge_list = match section.merges {
        Part::Missing => return Err(bad("model: missing field \"merges\"")),
        Part::Malformed => return Err(bad("model.merges: expected a list")),
        Part::Read(list) => list,
    };
    let prefix_len = prefix.as_ref().map_or(0, String::len);
    let (mut merges, mut merged) = (Vec::new(), Vec::new());
    // Whether a merge names a string that shares its id with another one (the ids then
    // cannot spell the merges back).
    let mut respelled = false;
    // Loading Llama 3 (280,000 merges) spent 8% of its time making a new string for every
    // merged token: one buffer now.
    let mut joined = String::new();
    for (rank, merge) in merge_list.iter().enumerate() {
        let (left, right) = match merge {
            Merge::Joined(s) => match s.split_once(' ') {
                Some((l, r)) if !r.contains(' ') => (l, r),
                _ => return Err(bad(format!("model.merges[{rank}]: expected two tokens separated by one space, got {s:?}"))),
            },
            Merge::Pair(l, r) => (l.as_ref(), r.as_ref()),
            Merge::NotAPair => return Err(bad(format!("model.merges[{rank}]: expected a pair of strings"))),
            Merge::Neither => return Err(bad(format!("model.merges[{rank}]: expected a string or a pair"))),
        };
        let id = |t: &str| {
            vocab.ids.get(t).copied().ok_or_else(|| {
                bad(format!("model.merges[{rank}]: {t:?} is not in the vocabulary"))
            })
        };
        let (l, r) = (id(left)?, id(right)?);
        // As the reference: the right part loses its continuing-subword prefix.
        let tail = right.get(prefix_len..).ok_or_else(|| {
            bad(format!("model.merges[{rank}]: {right:?} does not start with the continuing_subword_prefix"))
        })?;
        joined.clear();
        joined.push_str(left);
        joined.push_str(tail);
        merged.push(id(&joined)?);
        merges.push((l, r));
        respelled |= vocab.get(l) != Some(left) || vocab.get(r) != Some(right);
    }
    let byte_fallback = bool_field(&model, "model", "byte_fallback", false)?;
    let fuse_unk = bool_field(&model, "model", "fuse_unk", false)?;
    // Merges are written back from the ids; kept verbatim (for `to_string`), in their place,
    // only when they can't be.
    let mut settings = model.as_object_mut().map(std::mem::take).unwrap_or_default();
    if respelled {
        if let Some(place) = settings.get_mut("merges") {
            *place = Value::Array(merge_list.iter().map(Merge::to_value).collect());
        }
    } else {
        settings.shift_remove("merges");
    }
    Ok(Model { vocab, merges, merged, ignore_merges, prefix, suffix, byte_fallback, unk, fuse_unk, settings })
}

/// A BPE over the chars of the text (no ByteLevel pre-tokenizer: SentencePiece-style).
/// With `scores` (a tokenizer made from a SentencePiece .model), pairs merge by the score
/// of the piece they make, as sentencepiece does, instead of by the order of the merges.
fn build_char_bpe(model: &Model, scores: Option<&[Option<f32>]>) -> Result<Bpe> {
    let vocab = &model.vocab;
    let mut chars = CharSymbols {
        has_prefix: model.prefix.is_some(),
        has_suffix: model.suffix.is_some(),
        unk: model.unk.as_ref().and_then(|u| vocab.ids.get(u).copied()),
        fuse_unk: model.fuse_unk,
        ..Default::default()
    };
    let (prefix, suffix) = (model.prefix.as_deref().unwrap_or(""), model.suffix.as_deref().unwrap_or(""));
    let one_char = |s: &str| {
        let mut it = s.chars();
        match (it.next(), it.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    };
    let mut fallback = Box::new([NO_ID; 256]);
    for (token, &id) in &vocab.ids {
        // The forms a char takes: plain, inside a piece, at its end, both (see CharSymbols).
        if let Some(c) = one_char(token) {
            chars.forms[0].insert(c, id);
        }
        let inner = token.strip_prefix(prefix).filter(|_| chars.has_prefix);
        if let Some(c) = inner.and_then(one_char) {
            chars.forms[1].insert(c, id);
        }
        let last = token.strip_suffix(suffix).filter(|_| chars.has_suffix);
        if let Some(c) = last.and_then(one_char) {
            chars.forms[2].insert(c, id);
        }
        if let Some(c) = inner.and_then(|t| t.strip_suffix(suffix)).filter(|_| chars.has_suffix).and_then(one_char) {
            chars.forms[3].insert(c, id);
        }
        if let Some(b) = byte_token(token) {
            // `<0xXX>` spelled the reference's way (upper-case hex) is what it looks up.
            if token == &format!("<{b:#04X}>") {
                fallback[b as usize] = id;
            }
        }
    }
    if !chars.has_prefix {
        chars.forms[1] = chars.forms[0].clone();
    }
    if !chars.has_suffix {
        chars.forms[2] = chars.forms[0].clone();
        chars.forms[3] = chars.forms[1].clone();
    } else if !chars.has_prefix {
        chars.forms[3] = chars.forms[2].clone();
    }
    // Cutting text between chars that no token joins is exact only when every merge joins
    // chars (not byte-fallback or unknown symbols) and chars are looked up plainly.
    // And only when no char is dropped (a char with neither a token, byte tokens nor unk
    // vanishes, and its neighbours may merge across it).
    let mut symbol_only = vec![false; vocab.tokens.len()];
    for id in fallback.iter().copied().chain(chars.unk).filter(|&id| id != NO_ID) {
        symbol_only[id as usize] = true;
    }
    let merges_chars = !model.merges.iter().any(|&(l, r)| symbol_only[l as usize] || symbol_only[r as usize]);
    let nothing_dropped = chars.unk.is_some() || (model.byte_fallback && !fallback.contains(&NO_ID));
    if merges_chars && nothing_dropped && !chars.has_prefix && !chars.has_suffix && !model.ignore_merges {
        chars.word_cuts = Some(WordCuts::new(vocab.ids.keys().map(String::as_str), &chars.forms[0]));
    }
    if model.byte_fallback {
        if chars.has_prefix || chars.has_suffix {
            // The reference falls back on the bytes of the prefixed string; no model uses both.
            return Err(Error::Unsupported(
                "BPE byte_fallback together with continuing_subword_prefix / end_of_word_suffix".into(),
            ));
        }
        chars.byte_fallback = Some(fallback);
    }
    let tokens = vocab.ids.iter().map(|(t, &id)| (t.as_bytes(), id));
    if let Some(scores) = scores {
        let pairs = sentencepiece::score_pairs(vocab, scores);
        return Ok(Bpe::with_ranked_pairs(tokens, pairs, chars));
    }
    Ok(Bpe::with_alphabet(
        tokens,
        model.merges.iter().zip(&model.merged).map(|(&(l, r), &m)| (l, r, m)),
        model.ignore_merges,
        Some(chars),
    ))
}

/// A byte-level BPE: vocabulary strings are bytes spelled in the GPT-2 alphabet.
fn build_bpe(model: &Model) -> Result<Bpe> {
    if model.prefix.is_some() || model.suffix.is_some() {
        return Err(Error::Unsupported(
            "continuing_subword_prefix / end_of_word_suffix on a byte-level BPE".into(),
        ));
    }
    let vocab = &model.vocab;
    if model.unk.is_some() {
        let missing = (0..=255u8).find(|&b| !vocab.ids.contains_key(&bytelevel::byte_to_char(b).to_string()));
        if let Some(b) = missing {
            return Err(Error::Unsupported(format!(
                "a byte-level vocabulary without a token for byte {b:#04x} that falls back to unk_token"
            )));
        }
    }
    let byte_tokens: Vec<(Vec<u8>, u32)> =
        vocab.ids.iter().filter_map(|(t, &id)| Some((bytelevel::decode_str(t)?, id))).collect();
    Ok(Bpe::new(
        byte_tokens.iter().map(|(b, id)| (b.as_slice(), *id)),
        model.merges.iter().zip(&model.merged).map(|(&(l, r), &m)| (l, r, m)),
        model.ignore_merges,
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
    serde_json::to_string_pretty(&to_value(tokenizer)).map_err(|e| Error::Invalid(e.to_string()))
}

/// The tokenizer as a tokenizer.json document.
pub fn to_value(tokenizer: &Tokenizer) -> Value {
    to_value_with(tokenizer, true)
}

/// Bytes that identify a tokenizer as its tokenizer.json text does (the same bytes, the
/// same tokenizer.json), for `prepare`'s `meta.json` and resume check: the JSON of
/// everything but the model's vocab and merges, then the vocab (its size, then by id: id,
/// length, token) and the merges (their count, then two ids each) as little-endian binary.
/// Llama 3's tokenizer.json took 0.15-0.25 s to write out as text, a tenth of a one-core
/// `prepare` of 37 MB; these bytes take milliseconds, as no JSON value is made per entry.
pub fn fingerprint(tokenizer: &Tokenizer) -> Vec<u8> {
    let mut out = serde_json::to_vec(&to_value_with(tokenizer, false)).expect("a Value always serializes");
    // The JSON holds no zero byte, and every list and token is preceded by its length, so
    // two different tokenizers never give the same bytes.
    out.push(0);
    let vocab = vocab_by_id(tokenizer);
    out.extend_from_slice(&(vocab.len() as u64).to_le_bytes());
    for (token, id) in vocab {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(token.len() as u64).to_le_bytes());
        out.extend_from_slice(token.as_bytes());
    }
    out.extend_from_slice(&(tokenizer.merges.len() as u64).to_le_bytes());
    for &(left, right) in tokenizer.merges.iter() {
        out.extend_from_slice(&left.to_le_bytes());
        out.extend_from_slice(&right.to_le_bytes());
    }
    out
}

fn vocab_by_id(tokenizer: &Tokenizer) -> Vec<(&String, u32)> {
    let mut entries: Vec<(&String, u32)> = tokenizer.vocab.ids.iter().map(|(t, &id)| (t, id)).collect();
    entries.sort_unstable_by_key(|&(t, id)| (id, t));
    entries
}

/// The tokenizer.json value; with `lists` false, without the model's vocab and merges
/// (their keys are left out: `fingerprint` writes them its own way).
fn to_value_with(tokenizer: &Tokenizer, lists: bool) -> Value {
    let mut root = Map::new();
    root.insert("version".into(), json!("1.0"));
    root.insert("truncation".into(), truncation_to_value(&tokenizer.truncation));
    root.insert("padding".into(), padding_to_value(&tokenizer.padding, tokenizer.passthrough.get("padding")));
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
        if !root.contains_key(key) && key != MODEL_SETTINGS_KEY && key != TOKENSMITH_KEY {
            root.insert(key.clone(), value.clone());
        }
    }
    let mut meta = tokenizer.passthrough.get(TOKENSMITH_KEY).cloned();
    let aliases: Vec<Value> = tokenizer.added.aliases().iter().map(|(id, t)| json!([id, t.content])).collect();
    let literal: Vec<Value> = tokenizer.added.literal().map(|id| json!(id)).collect();
    for (key, list) in [("aliases", aliases), ("literal_added", literal)] {
        if !list.is_empty() {
            if let Some(m) = meta.get_or_insert_with(|| json!({})).as_object_mut() {
                m.insert(key.into(), Value::Array(list));
            }
        }
    }
    let mut model = match tokenizer.passthrough.get(MODEL_SETTINGS_KEY) {
        Some(Value::Object(settings)) => settings.clone(),
        _ => json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false})
        .as_object()
        .cloned()
        .unwrap_or_default(),
    };
    model.insert("type".into(), json!("BPE"));
    model.insert("ignore_merges".into(), json!(tokenizer.ignore_merges));
    if let Some(meta) = meta {
        model.insert(TOKENSMITH_KEY.into(), meta);
    }
    if !lists {
        root.insert("model".into(), Value::Object(model));
        return Value::Object(root);
    }
    let mut vocab = Map::new();
    for (token, id) in vocab_by_id(tokenizer) {
        vocab.insert(token.clone(), json!(id));
    }
    model.insert("vocab".into(), Value::Object(vocab));
    if !model.contains_key("merges") {
        let merges = tokenizer.merges.iter().map(|&(l, r)| json!([tokenizer.vocab.get(l), tokenizer.vocab.get(r)]));
        model.insert("merges".into(), Value::Array(merges.collect()));
    }
    root.insert("model".into(), Value::Object(model));
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::special::SpecialPolicy;
    use std::fmt::Write;

    /// The text with every non-ASCII char written as a `\uXXXX` escape (such strings cannot
    /// be borrowed from the text).
    fn escape_non_ascii(text: &str) -> String {
        let mut out = String::new();
        for c in text.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            }
        }
        out
    }

    /// Loads `text` through the typed reader and through a `Value`, checks that the typed
    /// reader took it (a reader that refused good files would only make them slow) and that
    /// both give the same tokenizer, down to the order of what is written back.
    fn load_both_ways(text: &str) -> Tokenizer {
        assert!(serde_json::from_str::<Document>(text).is_ok(), "the typed reader refused {text}");
        let typed = from_str(text, "t.json").unwrap();
        let general = from_value(serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(typed.vocab.tokens, general.vocab.tokens);
        assert_eq!(typed.vocab.ids, general.vocab.ids);
        assert_eq!(typed.merges, general.merges);
        let keys = |t: &Tokenizer| serde_json::to_string(&t.passthrough).unwrap();
        assert_eq!(keys(&typed), keys(&general));
        assert_eq!(to_string(&typed).unwrap(), to_string(&general).unwrap());
        for sample in ["hello world", "abc abcab \u{120}a", "héllo wörld 中文 👍<|endoftext|>", "q\"c"] {
            let encode = |t: &Tokenizer| t.encode(sample, &SpecialPolicy::Allow, true).unwrap();
            assert_eq!(encode(&typed), encode(&general), "{sample:?}");
        }
        typed
    }

    #[test]
    fn gpt2_loads_the_same_typed_and_as_a_value_escaped_or_not() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tokensmith/assets/gpt2/tokenizer.json");
        let text = std::fs::read_to_string(path).unwrap();
        let escaped = escape_non_ascii(&text);
        assert!(escaped.contains("\\u0120") && escaped.is_ascii());
        let (plain, escaped) = (load_both_ways(&text), load_both_ways(&escaped));
        assert_eq!(plain.vocab.tokens, escaped.vocab.tokens);
        assert_eq!(plain.merges, escaped.merges);
        assert_eq!(to_string(&plain).unwrap(), to_string(&escaped).unwrap());
    }

    /// A model section with the vocab after the merges, escaped tokens, merges in both
    /// spellings, "c" given twice (first place, last id, as serde_json's map keeps it), and
    /// the model between other keys (whose order the tokenizer keeps).
    fn small_model(vocab: &str) -> String {
        format!(
            r#"{{"zeta": {{"k": [true]}}, "model": {{"merges": ["a b", ["ab", "c"], ["\u0120", "a"]], "type": "BPE",
                "vocab": {vocab}, "dropout": null, "tail": [1, {{"x": 2}}]}},
              "added_tokens": [], "extra": 1, "version": "1.0", "omega": 2}}"#
        )
    }

    #[test]
    fn an_odd_model_section_loads_the_same_typed_and_as_a_value() {
        let vocab = r#"{"a": 0, "b": 1, "c": 9, "ab": 3, "abc": 4, "\u0120": 5, "\u0120a": 6, "c": 2, "q\"": 7}"#;
        let tok = load_both_ways(&small_model(vocab));
        let tokens: Vec<_> = tok.vocab.tokens.iter().map(|t| t.as_deref().unwrap_or("-")).collect();
        assert_eq!(tokens, ["a", "b", "c", "ab", "abc", "\u{120}", "\u{120}a", "q\""]);
        assert_eq!(tok.vocab.ids.get("c"), Some(&2));
        assert_eq!(tok.merges.as_slice(), [(0, 1), (3, 2), (5, 0)]);
        // The first place of a key given twice is the one that counts: "c" first with 2, then
        // "ab" with 2 as well, spells id 2 as "c".
        let vocab = r#"{"a": 0, "b": 1, "c": 9, "ab": 3, "abc": 4, "\u0120": 5, "\u0120a": 6, "x": 2, "c": 2, "q\"": 7}"#;
        assert_eq!(load_both_ways(&small_model(vocab)).vocab.get(2), Some("c"));
    }

    #[test]
    fn merges_naming_a_second_spelling_of_an_id_are_written_back_as_they_were_read() {
        // "B" shares the id of "b": the ids cannot spell the merge "a B" back.
        let text = small_model(r#"{"a": 0, "b": 1, "B": 1, "c": 2, "ab": 3, "aB": 3, "abc": 4, "\u0120": 5, "\u0120a": 6}"#)
            .replace(r#""a b""#, r#""a B""#);
        let written = to_string(&load_both_ways(&text)).unwrap();
        let merges: Value = serde_json::from_str::<Value>(&written).unwrap()["model"]["merges"].clone();
        assert_eq!(merges, json!(["a B", ["ab", "c"], ["\u{120}", "a"]]));
    }

    /// Errors found after the typed reader took the file, and errors that make it refuse the
    /// file, read the same as through a `Value`.
    #[test]
    fn bad_model_sections_fail_the_same_typed_and_as_a_value() {
        let good = r#"{"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "\u0120": 5, "\u0120a": 6}"#;
        let cases = [
            (good.replace(r#""c": 2"#, r#""c": 4294967295"#), "the id of \"c\" is not a valid id: 4294967295"),
            (good.replace(r#""c": 2"#, r#""c": -1"#), "the id of \"c\" is not a valid id: -1"),
            (good.replace(r#""c": 2"#, r#""c": 2, "c": "2""#), "the id of \"c\" is not a valid id: \"2\""),
            (good.replace(r#""c": 2"#, r#""c": 99999999"#), "far beyond"),
            (good.replace(r#""ab": 3, "#, ""), "model.merges[0]: \"ab\" is not in the vocabulary"),
            (r#"[["a", 0]]"#.to_string(), "model.vocab: expected an object"),
        ];
        let mut texts: Vec<(String, &str)> = cases.iter().map(|(vocab, error)| (small_model(vocab), *error)).collect();
        for (from, to, error) in [
            (r#""a b""#, r#""a  b""#, "model.merges[0]: expected two tokens separated by one space"),
            (r#"["ab", "c"]"#, r#"["ab", "c", "d"]"#, "model.merges[1]: expected a pair of strings"),
            (r#"["ab", "c"]"#, "5", "model.merges[1]: expected a string or a pair"),
            (r#""type": "BPE""#, r#""type": "Unigram""#, "only BPE"),
        ] {
            texts.push((small_model(good).replace(from, to), error));
        }
        for (text, error) in texts {
            let typed = from_str(&text, "t.json").unwrap_err();
            let general = from_value(serde_json::from_str(&text).unwrap()).map_err(|e| e.in_file("t.json"));
            let general = general.unwrap_err();
            assert_eq!(typed, general);
            assert!(typed.to_string().contains(error), "{typed} should say {error:?}");
        }
    }


    /// DeepSeek's chains of splits, as their tokenizer.json files spell them (Coder as in
    /// the shared file, V3 with the chars `\r` and `\n` themselves), become one step.
    #[test]
    fn deepseek_split_chains_are_fused_into_one_step() {
        let split = |pattern: &str| format!(r#"{{"type": "Split", "pattern": {{"Regex": {pattern}}}, "behavior": "Isolated", "invert": false}}"#);
        let byte_level = r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}"#;
        let coder = [r#""[\\r\\n]""#, r#""\\s?\\p{L}+""#, r#""\\s?\\p{P}+""#, r#""[一-龥ࠀ-一가-\ud7ff]+""#].map(split).join(", ");
        let coder = format!(r#"{{"type": "Sequence", "pretokenizers": [{coder}, {{"type": "Digits", "individual_digits": true}}, {byte_level}]}}"#);
        let v3 = [
            r#""\\p{N}{1,3}""#,
            r#""[一-龥\u3040-ゟ゠-ヿ]+""#,
            r##""[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+""##,
        ]
        .map(split)
        .join(", ");
        let v3 = format!(r#"{{"type": "Sequence", "pretokenizers": [{v3}, {byte_level}]}}"#);
        for json in [coder, v3] {
            let p = parse_pre_tokenizer(&serde_json::from_str(&json).unwrap()).unwrap();
            assert!(
                matches!(p.steps(), [Step::Split { splitter: Splitter::Chain(_), .. }, Step::ByteLevel { .. }]),
                "not fused: {json}"
            );
        }
    }
}
