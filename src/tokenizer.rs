//! The pipeline: added-token matching, normalization, pre-tokenization, BPE,
//! post-processing; and the reverse, decoding.

use crate::bpe::Bpe;
use crate::bytelevel;
use crate::error::{Error, Result};
use crate::normalize::Normalizer;
use crate::pretokenize::PreTokenizer;
use crate::special::{AddedToken, AddedVocabulary, Segment, SpecialPolicy};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

/// The model vocabulary: every id with its string as the file spells it.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// id -> string; `None` for ids the vocabulary skips (tiktoken files have holes).
    pub tokens: Vec<Option<String>>,
    pub ids: FxHashMap<String, u32>,
}

impl Vocab {
    pub fn new(entries: impl IntoIterator<Item = (String, u32)>) -> Result<Self> {
        let mut tokens: Vec<Option<String>> = Vec::new();
        let mut ids = FxHashMap::default();
        for (token, id) in entries {
            let slot = id as usize;
            if tokens.len() <= slot {
                tokens.resize(slot + 1, None);
            }
            if let Some(other) = &tokens[slot] {
                return Err(Error::format(
                    "",
                    format!("model.vocab: id {id} is given to both {other:?} and {token:?}"),
                ));
            }
            if ids.insert(token.clone(), id).is_some() {
                return Err(Error::format("", format!("model.vocab: token {token:?} appears twice")));
            }
            tokens[slot] = Some(token);
        }
        Ok(Vocab { tokens, ids })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn get(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).and_then(|t| t.as_deref())
    }
}

/// One item of a `TemplateProcessing` single-sequence template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePiece {
    Ids(Vec<u32>),
    Sequence,
}

/// What `add_special_tokens=True` wraps around the ids of a text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostProcessor {
    /// `None` when the post-processor adds nothing (absent, or ByteLevel).
    pub template: Option<Vec<TemplatePiece>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    ByteLevel,
    /// No decoder: the reference joins token strings with spaces.
    None,
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub vocab: Vocab,
    /// Merges as (left, right) ids in rank order, kept to write tokenizer.json back.
    pub merges: Vec<(u32, u32)>,
    pub ignore_merges: bool,
    pub bpe: Bpe,
    pub normalizer: Option<Normalizer>,
    pub pre_tokenizer: PreTokenizer,
    pub post_processor: PostProcessor,
    pub decoder: Decoder,
    pub added: AddedVocabulary,
    /// The tokenizer.json sections this core reads but does not rewrite, kept verbatim for
    /// `save` (normalizer, pre_tokenizer, post_processor, decoder, and unknown keys).
    pub passthrough: serde_json::Map<String, serde_json::Value>,
}

impl Tokenizer {
    /// The ids of `text`.
    pub fn encode(&self, text: &str, policy: &SpecialPolicy, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 4);
        let template = if add_special_tokens { self.post_processor.template.as_deref() } else { None };
        match template {
            None => self.encode_into(text, policy, &mut ids)?,
            Some(pieces) => {
                for piece in pieces {
                    match piece {
                        TemplatePiece::Ids(special) => ids.extend_from_slice(special),
                        TemplatePiece::Sequence => self.encode_into(text, policy, &mut ids)?,
                    }
                }
            }
        }
        Ok(ids)
    }

    fn encode_into(&self, text: &str, policy: &SpecialPolicy, ids: &mut Vec<u32>) -> Result<()> {
        let mut chars_before = 0usize; // for error offsets in the normalized pass
        let mut raw_start = 0usize;
        self.added.split_raw(text, policy, &mut |segment| match segment {
            Segment::Token(id) => {
                ids.push(id);
                Ok(())
            }
            Segment::Text(raw) => {
                let normalized = match &self.normalizer {
                    Some(n) => n.normalize(raw),
                    None => std::borrow::Cow::Borrowed(raw),
                };
                let offset_base = {
                    // `raw` is a slice of `text`: its char offset, counted incrementally.
                    let start = raw.as_ptr() as usize - text.as_ptr() as usize;
                    chars_before += text[raw_start..start].chars().count();
                    raw_start = start;
                    chars_before
                };
                self.added
                    .split_normalized(&normalized, policy, &mut |inner| match inner {
                        Segment::Token(id) => {
                            ids.push(id);
                            Ok(())
                        }
                        Segment::Text(piece_text) => {
                            self.pre_tokenizer
                                .for_each_piece(piece_text, &mut |piece| self.bpe.encode(piece.as_bytes(), ids))
                        }
                    })
                    .map_err(|e| match e {
                        Error::SpecialToken { token, offset } => {
                            Error::SpecialToken { token, offset: offset + offset_base }
                        }
                        other => other,
                    })
            }
        })
    }

    pub fn encode_batch(
        &self,
        texts: &[&str],
        policy: &SpecialPolicy,
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t, policy, add_special_tokens)).collect()
    }

    /// The string the reference gives an id: an added token's (normalized) content, or the
    /// model vocabulary's spelling.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.added.decode_form(id).or_else(|| self.vocab.get(id))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added.id_of(token).or_else(|| self.vocab.ids.get(token).copied())
    }

    /// Entries in the vocabulary with added tokens (distinct strings), as the reference counts.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len() + self.added.tokens().filter(|(_, t)| !self.vocab.ids.contains_key(&t.content)).count()
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut tokens: Vec<&str> = Vec::with_capacity(ids.len());
        for (position, &id) in ids.iter().enumerate() {
            let token = self.id_to_token(id).ok_or_else(|| {
                Error::Invalid(format!(
                    "id {id} at position {position} is not in the vocabulary of this tokenizer"
                ))
            })?;
            if skip_special_tokens && self.added.is_special(token) {
                continue;
            }
            tokens.push(token);
        }
        Ok(match self.decoder {
            Decoder::None => tokens.join(" "),
            Decoder::ByteLevel => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                for token in tokens {
                    match bytelevel::decode_str(token) {
                        Some(b) => bytes.extend_from_slice(&b),
                        // A token outside the byte alphabet (an added word) is its own UTF-8.
                        None => bytes.extend_from_slice(token.as_bytes()),
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        })
    }

    /// Adds tokens and returns their ids (`None` for an empty content, which is ignored).
    pub fn add_tokens(&mut self, tokens: Vec<AddedToken>) -> Result<Vec<Option<u32>>> {
        let vocab = &self.vocab;
        let normalizer = &self.normalizer;
        self.added.add(
            tokens,
            |s| vocab.ids.get(s).copied(),
            vocab.len() as u32,
            |s| match normalizer {
                Some(n) => n.normalize(s).into_owned(),
                None => s.to_string(),
            },
        )
    }
}
