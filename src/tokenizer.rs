//! The pipeline: added-token matching, normalization, pre-tokenization, BPE,
//! post-processing; and the reverse, decoding.

use crate::bpe::Bpe;
use crate::bytelevel;
use crate::error::{Error, Result};
use crate::normalize::Normalizer;
use crate::pretokenize::PreTokenizer;
use crate::special::{AddedToken, AddedVocabulary, Protect, Segment, SpecialPolicy};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::sync::Arc;

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
    // The model is shared between clones: adding tokens copies only the added vocabulary.
    pub vocab: Arc<Vocab>,
    /// Merges as (left, right) ids in rank order, kept to write tokenizer.json back.
    pub merges: Arc<Vec<(u32, u32)>>,
    pub ignore_merges: bool,
    pub bpe: Arc<Bpe>,
    pub normalizer: Option<Normalizer>,
    pub pre_tokenizer: PreTokenizer,
    pub post_processor: PostProcessor,
    pub decoder: Decoder,
    pub added: AddedVocabulary,
    /// The tokenizer.json sections this core reads but does not rewrite, kept verbatim for
    /// `save` (normalizer, pre_tokenizer, post_processor, decoder, and unknown keys).
    pub passthrough: serde_json::Map<String, serde_json::Value>,
}

/// Where encoded ids go, with the byte offset in the input where each starts if asked.
struct Sink<'a> {
    ids: &'a mut Vec<u32>,
    starts: Option<&'a mut Vec<usize>>,
}

impl Sink<'_> {
    fn push(&mut self, id: u32, start: usize) {
        self.ids.push(id);
        if let Some(starts) = self.starts.as_mut() {
            starts.push(start);
        }
    }
}

/// Byte offset of `part` in `whole` when it is a slice of it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    (p >= w && p + part.len() <= w + whole.len()).then(|| p - w)
}

impl Tokenizer {
    /// The ids of `text`.
    pub fn encode(&self, text: &str, policy: &SpecialPolicy, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 4);
        self.run(text, policy, &[], add_special_tokens, Sink { ids: &mut ids, starts: None })?;
        Ok(ids)
    }

    /// The ids of `text` and the byte offset where each starts, with special tokens
    /// treated as text inside the `protected` byte ranges (sorted, not overlapping)
    /// whatever the policy says: for content spliced into a template.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: &[(usize, usize)],
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, Vec<usize>)> {
        let (mut ids, mut starts) = (Vec::new(), Vec::new());
        self.run(text, policy, protected, add_special_tokens, Sink { ids: &mut ids, starts: Some(&mut starts) })?;
        Ok((ids, starts))
    }

    fn run(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: &[(usize, usize)],
        add_special_tokens: bool,
        mut sink: Sink,
    ) -> Result<()> {
        let template = if add_special_tokens { self.post_processor.template.as_deref() } else { None };
        let Some(pieces) = template else {
            return self.encode_into(text, policy, protected, &mut sink);
        };
        let mut seen_text = false;
        for piece in pieces {
            match piece {
                TemplatePiece::Ids(special) => {
                    let at = if seen_text { text.len() } else { 0 };
                    special.iter().for_each(|&id| sink.push(id, at));
                }
                TemplatePiece::Sequence => {
                    self.encode_into(text, policy, protected, &mut sink)?;
                    seen_text = true;
                }
            }
        }
        Ok(())
    }

    fn encode_into(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: &[(usize, usize)],
        sink: &mut Sink,
    ) -> Result<()> {
        self.added.split_raw(text, policy, Protect::exact(protected, 0), &mut |segment| match segment {
            Segment::Token(id, start) => {
                sink.push(id, start);
                Ok(())
            }
            Segment::Text(raw) => {
                let start = offset_in(text, raw).expect("segments are slices of the text");
                let normalized = match &self.normalizer {
                    Some(n) => n.normalize(raw),
                    None => std::borrow::Cow::Borrowed(raw),
                };
                // Positions in a changed (normalized) segment do not map back to the input:
                // its tokens all start at the segment, and any protected overlap protects it all.
                let exact = matches!(normalized, std::borrow::Cow::Borrowed(_));
                let protect = if exact {
                    Protect::exact(protected, start)
                } else {
                    Protect::whole(protected, start, start + raw.len())
                };
                let segment_text: &str = &normalized;
                self.added
                    .split_normalized(segment_text, policy, protect, &mut |inner| match inner {
                        Segment::Token(id, at) => {
                            sink.push(id, if exact { start + at } else { start });
                            Ok(())
                        }
                        Segment::Text(piece_text) => self.pre_tokenizer.for_each_piece(piece_text, &mut |piece| {
                            let first = sink.ids.len();
                            self.bpe.encode(piece.as_bytes(), sink.ids);
                            if let Some(starts) = sink.starts.as_mut() {
                                // A piece outside the segment (ByteLevel's prefix space) has
                                // no exact position either.
                                let (mut at, exact) = match offset_in(segment_text, piece) {
                                    Some(i) if exact => (start + i, true),
                                    _ => (start, false),
                                };
                                for &id in &sink.ids[first..] {
                                    starts.push(at);
                                    if exact {
                                        at += self.bpe.token_len(id);
                                    }
                                }
                            }
                        }),
                    })
                    .map_err(|e| match e {
                        Error::SpecialToken { token, offset } => {
                            // Counted only on error: the segment's char offset in the text.
                            Error::SpecialToken { token, offset: offset + text[..start].chars().count() }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::tokenizer_json;

    fn gpt2() -> Tokenizer {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tokensmith/assets/gpt2/tokenizer.json");
        tokenizer_json::from_str(&std::fs::read_to_string(path).unwrap(), path).unwrap()
    }

    #[test]
    fn offsets_point_at_each_token_in_the_text() {
        let tok = gpt2();
        let text = "Hello wörld<|endoftext|> again";
        let (ids, starts) = tok.encode_with_offsets(text, &SpecialPolicy::Allow, &[], true).unwrap();
        assert_eq!(ids, tok.encode(text, &SpecialPolicy::Allow, true).unwrap());
        let eot = tok.token_to_id("<|endoftext|>").unwrap();
        let at = ids.iter().position(|&i| i == eot).unwrap();
        assert_eq!(starts[at], text.find("<|").unwrap());
        assert_eq!(starts[0], 0);
        assert!(starts.windows(2).all(|w| w[0] <= w[1]));
        // Each token's bytes are the text between its start and the next one's.
        let decoded: Vec<String> = ids.iter().map(|&i| tok.decode(&[i], false).unwrap()).collect();
        for (k, piece) in decoded.iter().enumerate().filter(|(k, _)| *k != at) {
            let end = starts.get(k + 1).copied().unwrap_or(text.len());
            let expected = text.as_bytes()[starts[k]..end].to_vec();
            if let Ok(s) = String::from_utf8(expected) {
                assert_eq!(&s, piece);
            }
        }
    }

    #[test]
    fn protected_ranges_turn_special_tokens_into_text() {
        let tok = gpt2();
        let text = "<|endoftext|>user: <|endoftext|>";
        let content = (19, text.len());
        let (ids, _) = tok.encode_with_offsets(text, &SpecialPolicy::Allow, &[content], false).unwrap();
        let eot = tok.token_to_id("<|endoftext|>").unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == eot).count(), 1);
        assert_eq!(ids[0], eot);
        // The rest is one run of text: BPE merges across the template/content boundary.
        assert_eq!(ids[1..], tok.encode(&text[13..], &SpecialPolicy::Text, false).unwrap()[..]);
    }
}
