//! SentencePiece `.model` files (a `ModelProto` protobuf) with a BPE model, encoded as the
//! `sentencepiece` library encodes them.
//!
//! The model is turned into the tokenizer.json that says the same thing (the layout of the
//! Llama 2 tokenizer.json: normalizer `Prepend("▁")` + `Replace(" ", "▁")`, a BPE over chars
//! with byte fallback and a fused unknown token, a `<s>` template) and loaded through
//! `tokenizer_json`, so that `save()` writes a file the reference loads. One thing the
//! reference format cannot say is kept in the model section (`SCORES_KEY`): the piece scores.
//! sentencepiece merges the pair that makes the highest-scored piece, leftmost on equal
//! scores, and real models have many equal scores (every run of `▁` in Llama 2 scores
//! -1e9); a merge list gives every pair its own rank, so it can only approximate that.

use crate::error::{Error, Result};
use crate::formats::tokenizer_json::{self, TOKENSMITH_KEY};
use crate::tokenizer::{Tokenizer, Vocab};
use base64::Engine;
use prost::Message;
use serde_json::{json, Map, Value};

/// Where a saved tokenizer.json keeps the piece scores: a key of the model section, because
/// the reference (tokenizers 0.23) refuses unknown top-level keys but skips unknown model keys.
pub const SCORES_KEY: &str = "tokensmith_sentencepiece_scores";

/// The fields of `sentencepiece_model.proto` this reader needs (field numbers from there);
/// prost skips the others. Hand-written so that the build needs no protoc.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// NORMAL = 1 (the default), UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6.
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrainerSpec {
    /// UNIGRAM = 1 (the default), BPE = 2, WORD = 3, CHAR = 4.
    #[prost(int32, optional, tag = "3")]
    pub model_type: Option<i32>,
    #[prost(bool, optional, tag = "24")]
    pub treat_whitespace_as_suffix: Option<bool>,
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "41")]
    pub bos_id: Option<i32>,
    #[prost(string, optional, tag = "46")]
    pub bos_piece: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    pub escape_whitespaces: Option<bool>,
}

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
/// The longest scored piece accepted (sentencepiece's trainer caps pieces far below it).
const MAX_PIECE_BYTES: usize = 1024;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;
const BPE: i32 = 2;

fn model_type_name(t: i32) -> String {
    match t {
        1 => "UNIGRAM".into(),
        2 => "BPE".into(),
        3 => "WORD".into(),
        4 => "CHAR".into(),
        other => format!("{other} (not a known type)"),
    }
}

/// A tokenizer that encodes like `sentencepiece.SentencePieceProcessor(model_file=source)`.
/// `source` names the file in errors.
pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Tokenizer> {
    let json = to_tokenizer_json(bytes, source)?;
    tokenizer_json::from_value(json).map_err(|e| e.in_file(source))
}

/// The tokenizer.json (as a JSON value) equivalent to a .model file.
pub fn to_tokenizer_json(bytes: &[u8], source: &str) -> Result<Value> {
    let bad = |message: String| Error::format(source, message);
    let model = ModelProto::decode(bytes).map_err(|e| {
        bad(format!(
            "not a SentencePiece model (the protobuf does not decode: {e})"
        ))
    })?;
    if model.pieces.is_empty() {
        return Err(bad("the model has no pieces".into()));
    }
    // Every model sentencepiece writes has both specs after the pieces: one missing means a
    // file cut short (at a field boundary, where the protobuf still decodes).
    let trainer = model.trainer_spec.clone().ok_or_else(|| {
        bad("no trainer_spec (the file is truncated or not a SentencePiece model)".into())
    })?;
    let model_type = trainer.model_type.unwrap_or(1);
    if model_type != BPE {
        return Err(Error::Unsupported(format!(
            "{source}: SentencePiece model type {} (only BPE is supported)",
            model_type_name(model_type)
        )));
    }
    if trainer.treat_whitespace_as_suffix.unwrap_or(false) {
        return Err(Error::Unsupported(format!(
            "{source}: SentencePiece treat_whitespace_as_suffix"
        )));
    }
    let byte_fallback = trainer.byte_fallback.unwrap_or(false);

    // Checks as sentencepiece's ModelInterface::InitializePieces does, so that a model it
    // refuses is refused here too.
    let mut vocab = Map::new();
    let mut scores: Vec<Option<f32>> = Vec::with_capacity(model.pieces.len());
    let (mut unk, mut added, mut literal) = (None, Vec::new(), Vec::new());
    for (id, p) in model.pieces.iter().enumerate() {
        let piece = p.piece.as_deref().unwrap_or("");
        let at = |what: &str| bad(format!("pieces[{id}] ({piece:?}): {what}"));
        if piece.is_empty() {
            return Err(at("empty piece"));
        }
        if vocab.insert(piece.to_string(), json!(id)).is_some() {
            return Err(at("defined twice"));
        }
        let kind = p.r#type.unwrap_or(NORMAL);
        // Every split of a scored piece is looked up (quadratic in its length); trainers
        // write pieces of at most a few dozen chars, so a huge one is a broken or hostile file.
        if kind == NORMAL && piece.len() > MAX_PIECE_BYTES {
            return Err(at(&format!("{} bytes, more than the {MAX_PIECE_BYTES} a trained piece can have", piece.len())));
        }
        scores.push((kind == NORMAL).then(|| p.score.unwrap_or(0.0)));
        match kind {
            NORMAL => {}
            UNKNOWN => {
                if unk.replace(piece.to_string()).is_some() {
                    return Err(at("a second UNKNOWN piece"));
                }
                added.push(json!({"id": id, "content": piece, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true}));
            }
            // Control pieces never come from text in sentencepiece: special tokens here, so
            // that `special="text"` is sentencepiece's behaviour.
            CONTROL => added.push(json!({"id": id, "content": piece, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})),
            // sentencepiece matches user-defined pieces in the normalized text, spelled as
            // they are, and never merges them; the dummy prefix goes once before the whole
            // text. So they are normalized tokens matched by their literal content (the
            // reference would normalize the content: see `literal_added`).
            USER_DEFINED => {
                added.push(json!({"id": id, "content": piece, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": true, "special": false}));
                literal.push(json!(id));
            }
            UNUSED => {
                return Err(Error::Unsupported(format!(
                    "{source}: UNUSED piece {piece:?} (sentencepiece merges through it and then splits it back)"
                )))
            }
            BYTE => {
                if !byte_fallback {
                    return Err(at("a BYTE piece although byte_fallback is false"));
                }
                if crate::decode::byte_token(piece).is_none() {
                    return Err(at("a BYTE piece that is not <0xXX>"));
                }
            }
            other => return Err(at(&format!("unknown piece type {other}"))),
        }
    }
    let unk = unk.ok_or_else(|| bad("no UNKNOWN piece (sentencepiece requires one)".into()))?;

    let normalizer_spec = model.normalizer_spec.clone().ok_or_else(|| {
        bad("no normalizer_spec (the file is truncated or not a SentencePiece model)".into())
    })?;
    let normalizer = normalizer(&normalizer_spec, source)?;
    let escape = normalizer_spec.escape_whitespaces.unwrap_or(true);
    let dummy_prefix = normalizer_spec.add_dummy_prefix.unwrap_or(true);

    // The BOS template, as the Llama 2 tokenizer.json: sentencepiece adds it on request only.
    let bos_piece = trainer.bos_piece.clone().unwrap_or_else(|| "<s>".into());
    let bos = (trainer.bos_id.unwrap_or(1) >= 0)
        .then(|| vocab.get(&bos_piece).and_then(Value::as_u64))
        .flatten();
    let post_processor = match bos {
        Some(id) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_piece, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_piece, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos_piece, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_piece.clone(): {"id": bos_piece, "ids": [id], "tokens": [bos_piece]}}}),
        None => Value::Null,
    };
    // sp.decode turns every ▁ into a space whatever escape_whitespaces says, and drops the
    // ▁ that starts the text when the normalizer may have put it there (it only can when
    // spaces are escaped).
    let mut decoders = vec![json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})];
    decoders.extend([json!({"type": "ByteFallback"}), json!({"type": "Fuse"})]);
    if escape && (dummy_prefix || normalizer_spec.remove_extra_whitespaces.unwrap_or(true)) {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }

    let ids = Vocab::new(
        vocab
            .iter()
            .filter_map(|(t, id)| Some((t.clone(), id.as_u64()? as u32))),
    )
    .map_err(|e| e.in_file(source))?;
    // For the reference: pairs by the score of what they make, best first; equal scores
    // keep the vocabulary order (see the module comment for why this can differ).
    let merges: Vec<Value> = score_pairs(&ids, &scores)
        .into_iter()
        .map(|(l, r, _, _)| json!([ids.get(l), ids.get(r)]))
        .collect();

    let mut root = Map::new();
    root.insert("version".into(), json!("1.0"));
    root.insert("truncation".into(), Value::Null);
    root.insert("padding".into(), Value::Null);
    root.insert("added_tokens".into(), Value::Array(added));
    root.insert("normalizer".into(), normalizer);
    root.insert("pre_tokenizer".into(), Value::Null);
    root.insert("post_processor".into(), post_processor);
    root.insert(
        "decoder".into(),
        json!({"type": "Sequence", "decoders": decoders}),
    );
    root.insert(
        "model".into(),
        json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
               "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": byte_fallback,
               "ignore_merges": false, SCORES_KEY: scores, TOKENSMITH_KEY: {"literal_added": literal},
               "vocab": vocab, "merges": merges}),
    );
    Ok(Value::Object(root))
}

/// The normalizer section for a NormalizerSpec, in sentencepiece's order: the charsmap,
/// extra spaces removed, the dummy prefix, spaces escaped as `▁`.
fn normalizer(spec: &NormalizerSpec, source: &str) -> Result<Value> {
    let mut steps = Vec::new();
    let charsmap = spec.precompiled_charsmap.as_deref().unwrap_or(&[]);
    if !charsmap.is_empty() {
        // Refused here with the file's name when corrupt (the tokenizer.json reader checks it too).
        crate::normalize::Precompiled::from_bytes(charsmap).map_err(|e| match e {
            Error::Format { message, .. } => {
                Error::format(source, format!("normalizer_spec.{message}"))
            }
            other => other,
        })?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(charsmap);
        steps.push(json!({"type": "Precompiled", "precompiled_charsmap": encoded}));
    }
    if spec.remove_extra_whitespaces.unwrap_or(true) {
        // sentencepiece drops leading and trailing spaces and keeps one of each run.
        steps.push(json!({"type": "Replace", "pattern": {"Regex": "\\A +| +\\z"}, "content": ""}));
        steps.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
    }
    let escape = spec.escape_whitespaces.unwrap_or(true);
    if spec.add_dummy_prefix.unwrap_or(true) {
        steps.push(json!({"type": "Prepend", "prepend": if escape { "▁" } else { " " }}));
    }
    if escape {
        steps.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    }
    Ok(match steps.len() {
        0 => Value::Null,
        _ => json!({"type": "Sequence", "normalizers": steps}),
    })
}

/// Every way to make a scored piece from two scored pieces: (left, right, merged, rank),
/// sorted by rank, where the rank orders the scores best first and equal scores share one.
pub fn score_pairs(vocab: &Vocab, scores: &[Option<f32>]) -> Vec<(u32, u32, u32, u32)> {
    let score_of = |id: u32| scores.get(id as usize).copied().flatten();
    let mut distinct: Vec<f32> = scores.iter().flatten().copied().collect();
    distinct.sort_unstable_by(|a, b| b.total_cmp(a));
    distinct.dedup_by(|a, b| a.total_cmp(b).is_eq());
    let rank_of = |s: f32| distinct.partition_point(|d| d.total_cmp(&s).is_gt()) as u32;
    let mut pairs = Vec::new();
    for (id, token) in vocab.tokens.iter().enumerate() {
        let (Some(token), Some(score)) = (token, score_of(id as u32)) else {
            continue;
        };
        let half = |s: &str| vocab.ids.get(s).copied().filter(|&h| score_of(h).is_some());
        for (at, _) in token.char_indices().skip(1) {
            if let (Some(l), Some(r)) = (half(&token[..at]), half(&token[at..])) {
                pairs.push((l, r, id as u32, rank_of(score), at));
            }
        }
    }
    pairs.sort_unstable_by_key(|&(_, _, merged, rank, at)| (rank, merged, at));
    pairs
        .into_iter()
        .map(|(l, r, m, rank, _)| (l, r, m, rank))
        .collect()
}

/// `count` scores below `lowest`, each below the one before: for pieces that must lose to
/// every old piece (vocabulary extension). The steps stay whole f32 steps apart at any
/// magnitude (Llama 2 scores its runs of `▁` -1e9).
pub fn scores_below(lowest: f32, count: usize) -> Vec<f32> {
    let step = (lowest.abs() * 2f32.powi(-20)).max(1.0);
    (1..=count).map(|k| lowest - step * k as f32).collect()
}

/// A `.model` file with `pieces` appended as NORMAL pieces scored below every piece it has
/// (protobuf concatenates repeated fields, so the original bytes stay as they are, fields
/// this reader does not know included). The new pieces must get the ids `first_id..`.
pub fn append_pieces(bytes: &[u8], pieces: &[String], first_id: u32, source: &str) -> Result<Vec<u8>> {
    let model = ModelProto::decode(bytes).map_err(|e| Error::format(source, format!("not a SentencePiece model ({e})")))?;
    if model.pieces.len() != first_id as usize {
        return Err(Error::Invalid(format!(
            "{source} has {} pieces, but the new tokens start at id {first_id}: its ids would not match tokenizer.json",
            model.pieces.len()
        )));
    }
    let lowest = model.pieces.iter().filter_map(|p| p.score).fold(0.0f32, f32::min);
    let new = ModelProto {
        pieces: pieces
            .iter()
            .zip(scores_below(lowest, pieces.len()))
            .map(|(piece, score)| SentencePiece { piece: Some(piece.clone()), score: Some(score), r#type: None })
            .collect(),
        trainer_spec: None,
        normalizer_spec: None,
    };
    Ok([bytes, &new.encode_to_vec()].concat())
}

/// The `SCORES_KEY` list of a saved tokenizer.json: one score per id, null for
/// pieces that are never made by merging.
pub fn scores_from_value(value: &Value) -> Result<Vec<Option<f32>>> {
    let bad = || {
        Error::format(
            "",
            "model.tokensmith_sentencepiece_scores: expected a list of numbers or nulls",
        )
    };
    value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|v| match v {
            Value::Null => Ok(None),
            v => v.as_f64().map(|f| Some(f as f32)).ok_or_else(bad),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(p: &str, score: f32, kind: i32) -> SentencePiece {
        SentencePiece {
            piece: Some(p.into()),
            score: Some(score),
            r#type: Some(kind),
        }
    }

    fn toy(model_type: i32) -> Vec<u8> {
        let pieces = vec![
            piece("<unk>", 0.0, UNKNOWN),
            piece("<s>", 0.0, CONTROL),
            piece("</s>", 0.0, CONTROL),
            piece("▁▁", -10.0, NORMAL),
            piece("ab", -1.0, NORMAL),
            piece("▁", -10.0, NORMAL),
            piece("a", -2.0, NORMAL),
            piece("b", -3.0, NORMAL),
        ];
        let model = ModelProto {
            pieces,
            trainer_spec: Some(TrainerSpec {
                model_type: Some(model_type),
                ..Default::default()
            }),
            normalizer_spec: Some(NormalizerSpec {
                remove_extra_whitespaces: Some(false),
                ..Default::default()
            }),
        };
        model.encode_to_vec()
    }

    #[test]
    fn equal_scores_merge_leftmost() {
        let tok = from_bytes(&toy(BPE), "toy.model").unwrap();
        let policy = crate::special::SpecialPolicy::Text;
        // "▁▁▁": both pairs make ▁▁ (one score): the left pair merges first.
        assert_eq!(tok.encode("  ab", &policy, false).unwrap(), [3, 5, 4]);
        assert_eq!(tok.encode("ab", &policy, true).unwrap(), [1, 5, 4]);
    }

    #[test]
    fn bad_models_are_refused_with_the_file_name() {
        let err = from_bytes(&toy(1), "toy.model").unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported(m) if m.contains("UNIGRAM") && m.contains("toy.model")),
            "{err}"
        );
        let bytes = toy(BPE);
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            let err = from_bytes(&bytes[..cut], "toy.model").unwrap_err();
            assert!(
                matches!(&err, Error::Format { source, .. } if source == "toy.model"),
                "{err}"
            );
        }
        let err = from_bytes(b"", "empty.model").unwrap_err();
        assert!(err.to_string().contains("no pieces"), "{err}");
    }
}
