//! Vocabulary extension: new BPE tokens for a tokenizer, ranked after every old one, that
//! leave protected text exactly as it was encoded and are each reachable.
//!
//! **How new tokens merge.** A new token merges any two adjacent tokens that spell it (as
//! sentencepiece merges by piece), ranked after every old merge, in the order the tokens
//! were made; a pair with a new half also merges into an old token that it spells (a
//! sentencepiece model does that by the old token's score), and old merges that this makes
//! possible follow as before. `tokenizer` writes all of these pairs as merges, so
//! tokenizer.json and a `.model` file say the same, but for one corner: tokenizer.json
//! ranks the pairs that spell one token by where they cut it, sentencepiece (and this
//! simulation) leftmost first; they differ only where two such pairs overlap in a word.
//!
//! **Why old text keeps its ids.** BPE applies the best-ranked merge present first, so on
//! any piece every old merge is done before a new one is looked at: the old segmentation is
//! reached exactly as before, and it changes only where two of its adjacent tokens spell a
//! new token (or, SentencePiece-style, where it holds the byte-fallback bytes of a new
//! character). Candidates that would do that to a piece of the protected corpora are
//! skipped: exact, with no re-encoding of the protected text per candidate.
//!
//! **Why every new token is reachable.** A token is made only when its own text is one
//! piece of the pipeline (byte-level; SentencePiece-style: its spelling, one word) that the
//! tokens so far segment into exactly two: the new token then joins them, and nothing ranked
//! later can split it. A byte-level token that is part of a character has no text of its own
//! to check: it is made in the words it was counted in (training) or is a step towards a
//! given word (`add_word`).
//!
//! **Training** is the greedy pair counting of `tokenizers`' BpeTrainer (the most frequent
//! adjacent pair becomes the next token; counts updated only in the words that hold it, a
//! heap with stale entries re-checked when they surface), started from the corpus's words
//! as the tokenizer already segments them: the old merges are not learnt again.
//! SentencePiece-style vocabularies also get the frequent characters they lack as tokens of
//! their own (there they fall back to bytes, which never merge), competing with the pairs
//! by the tokens each saves.

use crate::bpe::Alphabet;
use crate::bytelevel;
use crate::decode::byte_token;
use crate::error::{Error, Result};
use crate::formats::{sentencepiece, tokenizer_json};
use crate::special::SpecialPolicy;
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

type Pieces = FxHashMap<Box<[u8]>, u64>;

/// SentencePiece's word-start mark.
const SPACE: char = '\u{2581}';

/// How a tokenizer's tokens are spelled and how its pieces are cut into words that no
/// merge crosses.
#[derive(Debug, Clone)]
enum Spelling {
    /// Byte-level BPE: a token is bytes (spelled in GPT-2's alphabet in the vocabulary);
    /// the pre-tokenizer's pieces are the words.
    Bytes,
    /// A BPE over chars (SentencePiece-style, often with no pre-tokenizer at all): a token
    /// is its string; a piece is cut before each `▁` that begins a word, i.e. after a char
    /// other than `▁` that no token joins to `▁` (`joined` are those that some token does).
    Chars { joined: FxHashSet<char> },
}

impl Spelling {
    fn of(tok: &Tokenizer) -> Result<Self> {
        let tiktoken =
            tok.passthrough.get(tokenizer_json::TOKENSMITH_KEY).and_then(|m| m.get("tiktoken_pattern")).is_some();
        let chars = match tok.bpe.alphabet() {
            Alphabet::Chars(c) => Some(!c.has_prefix && !c.has_suffix),
            Alphabet::Bytes(_) => None,
        };
        match chars {
            _ if tiktoken || tok.ignore_merges && chars.is_some() => {}
            None if tok.pre_tokenizer.is_byte_level() => return Ok(Spelling::Bytes),
            Some(true) => {
                let mut joined = FxHashSet::default();
                for token in tok.vocab.ids.keys() {
                    for (a, b) in token.chars().zip(token.chars().skip(1)) {
                        if b == SPACE && a != SPACE {
                            joined.insert(a);
                        }
                    }
                }
                return Ok(Spelling::Chars { joined });
            }
            _ => {}
        }
        Err(Error::Unsupported(
            "vocabulary extension of this tokenizer: it needs a BPE with merges, byte-level (a tokenizer.json like \
             GPT-2's, Llama 3's or Qwen2's) or SentencePiece-style (Llama 2's, Mistral's, Gemma's); tiktoken rank \
             files and continuing-subword prefixes are not supported"
                .into(),
        ))
    }

    /// Calls `f` with each word of a pre-tokenized piece.
    fn words(&self, piece: &[u8], f: &mut dyn FnMut(&[u8])) {
        let (Spelling::Chars { joined }, Ok(text)) = (self, std::str::from_utf8(piece)) else { return f(piece) };
        let (mut start, mut prev) = (0, None);
        for (at, c) in text.char_indices() {
            if c == SPACE && prev.is_some_and(|p| p != SPACE && !joined.contains(&p)) {
                f(&piece[start..at]);
                start = at;
            }
            prev = Some(c);
        }
        f(&piece[start..]);
    }

    /// What a vocabulary entry stands for in the text.
    fn decode(&self, token: &str) -> Option<Vec<u8>> {
        match self {
            Spelling::Bytes => bytelevel::decode_str(token),
            Spelling::Chars { .. } => Some(token.as_bytes().to_vec()),
        }
    }

    fn spell(&self, bytes: &[u8]) -> String {
        match self {
            Spelling::Bytes => bytelevel::encode_bytes(bytes),
            Spelling::Chars { .. } => String::from_utf8_lossy(bytes).into_owned(),
        }
    }

    /// Where a token may be cut into two: after every byte, or every char.
    fn cuts<'b>(&self, bytes: &'b [u8]) -> impl Iterator<Item = usize> + 'b {
        let chars = matches!(self, Spelling::Chars { .. });
        (1..bytes.len()).filter(move |&at| !chars || (bytes[at] & 0xC0) != 0x80)
    }
}

/// The longest word training looks at whole. Longer ones (a 10 MB line without a space,
/// Chinese without a pre-tokenizer) are counted in chunks: every merge that touches a word
/// rewrites it, so one huge word would make training quadratic. Chunks only shift a few pair
/// counts at their edges; what is checked (protected text, reachability) never uses them.
pub const MAX_WORD_BYTES: usize = 1024;

/// The longest word `add_word` takes: each new token re-encodes it.
pub const MAX_GIVEN_WORD_BYTES: usize = 256;

/// Calls `f` with `word` in chunks of at most `MAX_WORD_BYTES`, cut between characters.
fn chunks(mut word: &[u8], f: &mut dyn FnMut(&[u8])) {
    while word.len() > MAX_WORD_BYTES {
        let mut at = MAX_WORD_BYTES;
        while at > 1 && (word[at] & 0xC0) == 0x80 {
            at -= 1;
        }
        f(&word[..at]);
        word = &word[at..];
    }
    f(word);
}

/// How often each word occurs in a corpus, as the tokenizer splits it (added tokens left
/// out). Memory grows with the distinct words, not the corpus.
#[derive(Debug)]
pub struct WordCounts {
    tok: Arc<Tokenizer>,
    spelling: Spelling,
    /// Whether long words are counted in chunks (a corpus to learn from; never a protected
    /// one, whose words must be encoded whole).
    chunked: bool,
    pub counts: Pieces,
    /// Words counted, repeats included.
    pub total: u64,
}

impl WordCounts {
    pub fn new(tok: Arc<Tokenizer>, chunked: bool) -> Result<Self> {
        let spelling = Spelling::of(&tok)?;
        Ok(WordCounts { tok, spelling, chunked, counts: Pieces::default(), total: 0 })
    }

    /// Counts the words of `texts`, on every core.
    pub fn add(&mut self, texts: &[&str]) -> Result<()> {
        let (tok, spelling, chunked) = (&self.tok, &self.spelling, self.chunked);
        let counted = texts
            .par_iter()
            .try_fold(Pieces::default, |mut counts, text| {
                let mut count = |word: &[u8]| match counts.get_mut(word) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(word.into(), 1);
                    }
                };
                tok.for_each_piece(text, &SpecialPolicy::Allow, &mut |piece| {
                    match chunked {
                        true => spelling.words(piece, &mut |word| chunks(word, &mut count)),
                        false => spelling.words(piece, &mut count),
                    }
                    Ok(())
                })?;
                Ok(counts)
            })
            .try_reduce(Pieces::default, |a, b| Ok(merge_counts(a, b)))?;
        self.total += counted.values().sum::<u64>();
        self.counts = merge_counts(std::mem::take(&mut self.counts), counted);
        Ok(())
    }
}

fn merge_counts(a: Pieces, b: Pieces) -> Pieces {
    let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    for (piece, n) in small {
        *big.entry(piece).or_insert(0) += n;
    }
    big
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

fn pair_of(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// Why a candidate was not made a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// It would change protected text.
    Protected,
    /// Its text is a token already (one that the merges do not make in this context).
    Exists,
    /// Its bytes are no valid UTF-8 (half a character) and `partial_chars` is off.
    PartialChar,
    /// The pipeline (pre-tokenizer, normalizer, an added token) splits its text.
    Split,
    /// Its text alone is segmented otherwise than as two tokens.
    Unreachable,
    /// One half is a byte-fallback or unknown token, which never merge.
    Fallback,
}

impl Skip {
    pub const ALL: [Skip; 6] =
        [Skip::Protected, Skip::Exists, Skip::PartialChar, Skip::Split, Skip::Unreachable, Skip::Fallback];

    pub fn name(self) -> &'static str {
        match self {
            Skip::Protected => "protected",
            Skip::Exists => "exists",
            Skip::PartialChar => "partial_char",
            Skip::Split => "split",
            Skip::Unreachable => "unreachable",
            Skip::Fallback => "byte_fallback",
        }
    }

    /// Whether more tokens may change the verdict (only the segmentation can change).
    fn is_final(self) -> bool {
        self != Skip::Unreachable
    }
}

/// What became of a word given to `add_word`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WordOutcome {
    /// The word is now this one (new) token.
    Added(u32),
    /// The word was a token already.
    Exists(u32),
    /// The word cannot be made a token; why.
    Refused(String),
}

/// A run of tokens a word had (`from..from + len`) that is now one new token (at `at`).
#[derive(Debug, Clone, Copy)]
struct Replaced {
    at: usize,
    from: usize,
    len: usize,
}

/// The byte of each byte-fallback token, by id: a table, not a hash map (looked up for
/// every token of the long SentencePiece-style words, it showed in the profile).
#[derive(Debug, Default)]
struct Fallback {
    bytes: Vec<Option<u8>>,
}

impl Fallback {
    fn insert(&mut self, id: u32, byte: u8) {
        if self.bytes.len() <= id as usize {
            self.bytes.resize(id as usize + 1, None);
        }
        self.bytes[id as usize] = Some(byte);
    }

    #[inline]
    fn get(&self, id: u32) -> Option<u8> {
        self.bytes.get(id as usize).copied().flatten()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The corpus being trained on: its distinct words as segmented so far.
#[derive(Debug, Default)]
struct Corpus {
    /// Each word's text, and its tokens so far.
    texts: Vec<Box<[u8]>>,
    words: Vec<Vec<u32>>,
    counts: Vec<u64>,
    pair_counts: FxHashMap<u64, i64>,
    /// The words each pair may occur in (with repeats and stale entries).
    pair_words: FxHashMap<u64, Vec<u32>>,
    heap: BinaryHeap<(i64, Reverse<u64>)>,
    /// Characters the vocabulary lacks (byte fallback), best last: (tokens saved, count, char).
    chars: Vec<(u64, u64, char)>,
    /// The words each of them occurs in (with repeats).
    char_words: FxHashMap<char, Vec<u32>>,
}

/// New tokens for a tokenizer (see the module docs).
pub struct Trainer {
    tok: Arc<Tokenizer>,
    spelling: Spelling,
    first_id: u32,
    /// What every token stands for, by id, the new ones included; `None` for tokens that
    /// never merge (byte fallback, unknown).
    token_bytes: Vec<Option<Box<[u8]>>>,
    /// Texts that are tokens (model vocabulary, added tokens, new tokens) and their ids.
    known: FxHashMap<Box<[u8]>, u32>,
    /// The byte of each byte-fallback token.
    fallback: Fallback,
    /// Two old tokens that spell a new one, and which (the first made); and the keys in the
    /// order they came (to take back the tokens of a refused word).
    old_pairs: FxHashMap<u64, u32>,
    old_pair_log: Vec<u64>,
    /// New tokens that would change protected text: what two adjacent tokens of it spell,
    /// and (SentencePiece-style) its characters that fall back to bytes.
    forbidden: FxHashSet<Box<[u8]>>,
    /// Pairs not taken: why, and for the unreachable ones how many new tokens there were then.
    skipped: FxHashMap<u64, (Skip, usize)>,
    /// Characters not made tokens because of protected text.
    skipped_chars: usize,
    /// Characters the vocabulary lacked, made tokens by training.
    new_chars: usize,
    corpus: Corpus,
    /// Whether a new byte-level token may be part of a character.
    pub partial_chars: bool,
}

impl Trainer {
    /// A trainer for `tok` that keeps the ids of every word counted in `protect`.
    pub fn new(tok: Arc<Tokenizer>, protect: &WordCounts) -> Result<Self> {
        if protect.chunked {
            return Err(Error::Invalid("protected text must be counted in whole words (chunked=False)".into()));
        }
        let spelling = Spelling::of(&tok)?;
        let (unk, has_fallback) = match tok.bpe.alphabet() {
            Alphabet::Chars(c) => (c.unk, c.byte_fallback.is_some()),
            Alphabet::Bytes(_) => (None, false),
        };
        let mut token_bytes = Vec::with_capacity(tok.vocab.tokens.len());
        let mut known: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        let mut fallback = Fallback::default();
        for (id, token) in tok.vocab.tokens.iter().enumerate() {
            let id = id as u32;
            let bytes = token.as_deref().and_then(|t| spelling.decode(t)).map(Vec::into_boxed_slice);
            if let Some(bytes) = &bytes {
                known.insert(bytes.clone(), id);
            }
            let byte = token.as_deref().and_then(byte_token).filter(|_| has_fallback);
            if let Some(b) = byte {
                fallback.insert(id, b);
            }
            token_bytes.push(bytes.filter(|_| byte.is_none() && Some(id) != unk));
        }
        for (id, token) in tok.added.tokens() {
            known.entry(token.content.as_bytes().into()).or_insert(id);
        }
        let first_id = (tok.vocab.tokens.len() as u32).max(tok.added.max_id().map_or(0, |m| m + 1));
        token_bytes.resize(first_id as usize, None);
        let mut trainer = Trainer {
            tok,
            spelling,
            first_id,
            token_bytes,
            known,
            fallback,
            old_pairs: FxHashMap::default(),
            old_pair_log: Vec::new(),
            forbidden: FxHashSet::default(),
            skipped: FxHashMap::default(),
            skipped_chars: 0,
            new_chars: 0,
            corpus: Corpus::default(),
            partial_chars: true,
        };
        let forbidden: Vec<Vec<Box<[u8]>>> = protect
            .counts
            .par_iter()
            .map(|(word, _)| trainer.forbidden_by(word))
            .collect::<Result<_>>()?;
        trainer.forbidden = forbidden.into_iter().flatten().collect();
        Ok(trainer)
    }

    /// The new tokens that would change how `word` is encoded now.
    fn forbidden_by(&self, word: &[u8]) -> Result<Vec<Box<[u8]>>> {
        let mut ids = Vec::new();
        self.tok.bpe.encode(word, &mut ids)?;
        let mut out: Vec<Box<[u8]>> =
            ids.windows(2).filter_map(|w| Some([self.token_bytes(w[0])?, self.token_bytes(w[1])?].concat().into())).collect();
        if !self.fallback.is_empty() {
            let text = String::from_utf8_lossy(word);
            out.extend(text.chars().filter(|c| !self.known.contains_key(c.to_string().as_bytes())).map(|c| c.to_string().into_bytes().into()));
        }
        Ok(out)
    }

    pub fn first_id(&self) -> u32 {
        self.first_id
    }

    /// Whether tokens are bytes (byte-level BPE) rather than chars (SentencePiece-style).
    pub fn byte_level(&self) -> bool {
        matches!(self.spelling, Spelling::Bytes)
    }

    /// How many tokens were made.
    pub fn len(&self) -> usize {
        self.token_bytes.len() - self.first_id as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of the new tokens are characters the vocabulary lacked (training only).
    pub fn new_chars(&self) -> usize {
        self.new_chars
    }

    /// What token `id` stands for in the text (bytes; SentencePiece-style: its spelling).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).and_then(|b| b.as_deref())
    }

    /// How many candidates were skipped, by reason.
    pub fn skipped(&self) -> FxHashMap<Skip, usize> {
        let mut counts = FxHashMap::default();
        for &(skip, _) in self.skipped.values() {
            *counts.entry(skip).or_insert(0) += 1;
        }
        if self.skipped_chars > 0 {
            *counts.entry(Skip::Protected).or_insert(0) += self.skipped_chars;
        }
        counts
    }

    /// The token two adjacent tokens merge into once the new tokens are in, if any, with
    /// its rank: an old merge first (by its rank: one becomes possible where a new half
    /// made an old token), then a pair with a new half that spells an old token (by its
    /// id), then the new tokens (in the order made). `tokenizer` writes them in that order.
    fn merged(&self, left: u32, right: u32, buf: &mut Vec<u8>) -> Option<(u64, u32)> {
        if left < self.first_id && right < self.first_id {
            if let Some(&id) = self.old_pairs.get(&pair_key(left, right)) {
                return Some((2 << 32 | u64::from(id), id));
            }
            return self.tok.bpe.merge_of(left, right).map(|(rank, id)| (u64::from(rank), id));
        }
        buf.clear();
        buf.extend_from_slice(self.token_bytes(left)?);
        buf.extend_from_slice(self.token_bytes(right)?);
        // Only tokens that merges make: not byte-fallback, unknown or added ones.
        let id = self.known.get(&buf[..]).copied().filter(|&id| self.token_bytes(id).is_some())?;
        Some(((if id < self.first_id { 1 } else { 2 }) << 32 | u64::from(id), id))
    }

    /// Applies the new tokens to a segmentation that the old merges are done with, best
    /// ranked first (see `merged`), leftmost first.
    fn merge_new(&self, ids: &mut Vec<u32>) {
        let mut buf = Vec::new();
        loop {
            let mut best: Option<(u64, u32, usize)> = None;
            for i in 0..ids.len().saturating_sub(1) {
                if let Some((rank, merged)) = self.merged(ids[i], ids[i + 1], &mut buf) {
                    if best.is_none_or(|(b, _, _)| rank < b) {
                        best = Some((rank, merged, i));
                    }
                }
            }
            let Some((_, merged, i)) = best else { return };
            ids[i] = merged;
            ids.remove(i + 1);
        }
    }

    /// New characters in place of the byte-fallback tokens of their bytes; what was
    /// replaced goes to `made`.
    fn with_new_chars(&self, ids: &[u32], made: &mut Vec<Replaced>) -> Vec<u32> {
        let mut out = Vec::with_capacity(ids.len());
        let mut i = 0;
        while i < ids.len() {
            let Some(lead) = self.fallback.get(ids[i]) else {
                out.push(ids[i]);
                i += 1;
                continue;
            };
            let n = match lead {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            let bytes: Option<Vec<u8>> = ids.get(i..i + n).and_then(|run| run.iter().map(|&id| self.fallback.get(id)).collect());
            match bytes.and_then(|b| self.known.get(&b[..]).copied()).filter(|&id| id >= self.first_id) {
                Some(id) => {
                    made.push(Replaced { at: out.len(), from: i, len: n });
                    out.push(id);
                    i += n;
                }
                None => {
                    out.push(ids[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// The ids of one word with the old tokens and the new ones so far.
    pub fn encode_word(&self, word: &[u8]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.tok.bpe.encode(word, &mut ids)?;
        if !self.fallback.is_empty() && !self.is_empty() {
            ids = self.with_new_chars(&ids, &mut Vec::new());
        }
        self.merge_new(&mut ids);
        Ok(ids)
    }

    /// The old tokenizer's ids for a word.
    pub fn old_ids(&self, word: &[u8]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.tok.bpe.encode(word, &mut ids)?;
        Ok(ids)
    }

    /// The new tokens that `new` (this trainer's `tokenizer`) does not produce from their
    /// own text: byte-level, the text through the whole pipeline (parts of characters have
    /// none and are left out); SentencePiece-style, the spelling as one word.
    pub fn unreachable(&self, new: &Tokenizer) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for id in self.first_id..self.first_id + self.len() as u32 {
            let bytes = self.token_bytes(id).unwrap_or_default();
            let ids = match (&self.spelling, std::str::from_utf8(bytes)) {
                (Spelling::Bytes, Ok(text)) => new.encode(text, &SpecialPolicy::Text, false)?,
                (Spelling::Bytes, Err(_)) => continue,
                (Spelling::Chars { .. }, _) => {
                    let mut ids = Vec::new();
                    new.bpe.encode(bytes, &mut ids)?;
                    ids
                }
            };
            if ids != [id] {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The words the pipeline splits `text` into.
    fn words(&self, text: &str) -> Result<Vec<Vec<u8>>> {
        let mut words = Vec::new();
        self.tok.for_each_piece(text, &SpecialPolicy::Allow, &mut |piece| {
            self.spelling.words(piece, &mut |w| words.push(w.to_vec()));
            Ok(())
        })?;
        Ok(words)
    }

    /// What the token merging `left` and `right` stands for, or why it may not be made.
    fn check(&self, left: u32, right: u32) -> Result<std::result::Result<Vec<u8>, Skip>> {
        let (Some(l), Some(r)) = (self.token_bytes(left), self.token_bytes(right)) else {
            return Ok(Err(Skip::Fallback));
        };
        let bytes = [l, r].concat();
        if self.known.contains_key(&bytes[..]) {
            return Ok(Err(Skip::Exists));
        }
        if self.forbidden.contains(&bytes[..]) {
            return Ok(Err(Skip::Protected));
        }
        if let Spelling::Bytes = self.spelling {
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return Ok(if self.partial_chars { Ok(bytes) } else { Err(Skip::PartialChar) });
            };
            if self.words(text)? != [bytes.as_slice()] {
                return Ok(Err(Skip::Split));
            }
        }
        if self.encode_word(&bytes)?.len() != 2 {
            return Ok(Err(Skip::Unreachable));
        }
        Ok(Ok(bytes))
    }

    /// Makes `bytes` the next token; its id.
    fn push_token(&mut self, bytes: Vec<u8>) -> u32 {
        let id = self.first_id + self.len() as u32;
        for at in self.spelling.cuts(&bytes) {
            let halves = (self.known.get(&bytes[..at]), self.known.get(&bytes[at..]));
            if let (Some(&l), Some(&r)) = halves {
                let key = pair_key(l, r);
                let old = l < self.first_id && r < self.first_id;
                if old && self.token_bytes(l).is_some() && self.token_bytes(r).is_some() && !self.old_pairs.contains_key(&key) {
                    self.old_pairs.insert(key, id);
                    self.old_pair_log.push(key);
                }
            }
        }
        self.known.insert(bytes.clone().into(), id);
        self.token_bytes.push(Some(bytes.into()));
        id
    }

    fn pop_tokens(&mut self, keep: usize) {
        while self.len() > keep {
            if let Some(Some(bytes)) = self.token_bytes.pop() {
                self.known.remove(&bytes);
            }
        }
        let end = self.first_id + keep as u32;
        while let Some(&key) = self.old_pair_log.last() {
            if self.old_pairs.get(&key).is_some_and(|&id| id < end) {
                break;
            }
            self.old_pairs.remove(&key);
            self.old_pair_log.pop();
        }
    }

    /// Makes `word` one token with the fewest new tokens (each reachable, protected text
    /// unchanged), or says why it cannot be. A refused word leaves no tokens behind.
    pub fn add_word(&mut self, word: &str) -> Result<WordOutcome> {
        let keep = self.len();
        let outcome = self.try_add_word(word);
        if !matches!(outcome, Ok(WordOutcome::Added(_))) {
            self.pop_tokens(keep);
        }
        outcome
    }

    fn try_add_word(&mut self, word: &str) -> Result<WordOutcome> {
        // Each new token re-encodes the word: cubic in its length, so a word is a word.
        if word.len() > MAX_GIVEN_WORD_BYTES {
            return Ok(WordOutcome::Refused(format!("longer than {MAX_GIVEN_WORD_BYTES} bytes")));
        }
        let words = self.words(word)?;
        let [target] = &words[..] else {
            let shown: Vec<String> = words.iter().map(|w| String::from_utf8_lossy(w).into_owned()).collect();
            return Ok(WordOutcome::Refused(format!(
                "the tokenizer's pre-tokenizer or normalizer makes it {shown:?}, not one piece"
            )));
        };
        if let Some(&id) = self.known.get(&target[..]) {
            if self.encode_word(target)? == [id] {
                return Ok(WordOutcome::Exists(id));
            }
            return Ok(WordOutcome::Refused(format!(
                "it is token {id} already, but no merge makes that token from its text; a second token for the \
                 same text would be ambiguous"
            )));
        }
        if !self.fallback.is_empty() {
            for c in String::from_utf8_lossy(target).chars() {
                let bytes = c.to_string().into_bytes();
                if self.known.contains_key(&bytes[..]) {
                    continue;
                }
                if self.forbidden.contains(&bytes[..]) {
                    return Ok(WordOutcome::Refused(format!("its character {c:?} is in the protected text as bytes")));
                }
                self.push_token(bytes);
            }
        }
        loop {
            let ids = self.encode_word(target)?;
            if let [id] = ids[..] {
                return Ok(WordOutcome::Added(id));
            }
            let mut reasons = Vec::new();
            let mut taken = None;
            for w in ids.windows(2) {
                match self.check(w[0], w[1])? {
                    Ok(merged) => {
                        taken = Some(merged);
                        break;
                    }
                    Err(skip) => reasons.push(skip.name()),
                }
            }
            let Some(merged) = taken else {
                reasons.sort_unstable();
                reasons.dedup();
                return Ok(WordOutcome::Refused(format!(
                    "no two adjacent pieces of it can merge ({})",
                    reasons.join(", ")
                )));
            };
            self.push_token(merged);
        }
    }

    /// Sets the corpus to learn from, segmented with the tokens so far.
    pub fn set_corpus(&mut self, counts: &WordCounts) -> Result<()> {
        let words: Vec<(&[u8], Vec<u32>, u64)> = counts
            .counts
            .par_iter()
            .map(|(word, &n)| self.encode_word(word).map(|ids| (&word[..], ids, n)))
            .filter(|w| w.as_ref().map_or(true, |(_, ids, _)| ids.len() > 1))
            .collect::<Result<_>>()?;
        let mut corpus = Corpus::default();
        let mut missing: FxHashMap<char, u64> = FxHashMap::default();
        for (index, (text, ids, n)) in words.into_iter().enumerate() {
            corpus.texts.push(text.into());
            for w in ids.windows(2) {
                let key = pair_key(w[0], w[1]);
                *corpus.pair_counts.entry(key).or_insert(0) += n as i64;
                corpus.pair_words.entry(key).or_default().push(index as u32);
            }
            for c in self.fallback_chars(&ids) {
                *missing.entry(c).or_insert(0) += n;
                corpus.char_words.entry(c).or_default().push(index as u32);
            }
            corpus.words.push(ids);
            corpus.counts.push(n);
        }
        corpus.heap = corpus.pair_counts.iter().map(|(&key, &n)| (n, Reverse(key))).collect();
        // A character saves a token for each byte past its first, where a pair saves one.
        corpus.chars = missing.into_iter().map(|(c, n)| (n * (c.len_utf8() as u64 - 1), n, c)).collect();
        corpus.chars.sort_unstable_by_key(|&(gain, _, c)| (gain, Reverse(c)));
        self.corpus = corpus;
        Ok(())
    }

    /// The characters of at least two bytes that a segmentation spells in byte-fallback tokens.
    fn fallback_chars<'i>(&'i self, ids: &'i [u32]) -> impl Iterator<Item = char> + 'i {
        let mut i = 0;
        std::iter::from_fn(move || {
            while i < ids.len() {
                let run = ids[i..].iter().map_while(|&id| self.fallback.get(id)).take(4);
                let bytes: Vec<u8> = run.collect();
                let Some(c) = bytes.utf8_chunks().next().and_then(|chunk| chunk.valid().chars().next()) else {
                    i += bytes.len().max(1);
                    continue;
                };
                i += c.len_utf8();
                if c.len_utf8() > 1 {
                    return Some(c);
                }
            }
            None
        })
    }

    /// The best pair left (its count and key), stale heap entries brought up to date.
    fn best_pair(&mut self) -> Option<(i64, u64)> {
        while let Some(&(count, Reverse(key))) = self.corpus.heap.peek() {
            let current = self.corpus.pair_counts.get(&key).copied().unwrap_or(0);
            if current == count {
                return Some((count, key));
            }
            // A stale entry: the pair's count fell since it was pushed.
            self.corpus.heap.pop();
            if current > 0 {
                self.corpus.heap.push((current, Reverse(key)));
            }
        }
        None
    }

    /// Learns up to `limit` more tokens, each from a pair (or a missing character) seen at
    /// least `min_count` times, the one that saves the most tokens first; returns how many
    /// it learnt (fewer: nothing is left that qualifies).
    pub fn train(&mut self, limit: usize, min_count: u64) -> Result<usize> {
        let min_count = min_count.clamp(1, i64::MAX as u64) as i64;
        let mut learnt = 0;
        while learnt < limit {
            let pair = self.best_pair().filter(|&(count, _)| count >= min_count);
            // By tokens saved, a rare long character can stand before frequent ones.
            let chars = &mut self.corpus.chars;
            while chars.last().is_some_and(|&(_, n, _)| (n as i64) < min_count) {
                chars.pop();
            }
            let char = self.corpus.chars.last().copied().filter(|&(_, n, _)| n as i64 >= min_count);
            match (pair, char) {
                (pair, Some((gain, _, _))) if pair.is_none_or(|(count, _)| gain as i64 >= count) => {
                    // Every character that saves at least as much as the best pair does now,
                    // in one pass over the words they occur in: those are long (Chinese
                    // without a pre-tokenizer is one word per clause), and rewriting each
                    // once per character was most of training Llama 2.
                    let bar = pair.map_or(min_count, |(count, _)| count);
                    let mut made = Vec::new();
                    while learnt < limit {
                        let Some(&(gain, n, c)) = self.corpus.chars.last() else { break };
                        if (gain as i64) < bar || (n as i64) < min_count {
                            break;
                        }
                        self.corpus.chars.pop();
                        let bytes = c.to_string().into_bytes();
                        if self.known.contains_key(&bytes[..]) {
                            continue;
                        }
                        if self.forbidden.contains(&bytes[..]) {
                            self.skipped_chars += 1;
                            continue;
                        }
                        self.push_token(bytes);
                        made.push(c);
                        learnt += 1;
                    }
                    self.new_chars += made.len();
                    self.apply_chars(&made);
                }
                (Some((_, key)), _) => {
                    self.corpus.heap.pop();
                    if let Some(&(skip, at)) = self.skipped.get(&key) {
                        if skip.is_final() || at == self.len() {
                            continue;
                        }
                    }
                    let (left, right) = pair_of(key);
                    match self.check(left, right)? {
                        Err(skip) => {
                            self.skipped.insert(key, (skip, self.len()));
                        }
                        Ok(bytes) => {
                            self.skipped.remove(&key);
                            let id = self.push_token(bytes);
                            self.apply(id);
                            learnt += 1;
                        }
                    }
                }
                (None, _) => break,
            }
        }
        Ok(learnt)
    }

    /// Re-segments, with the new token `id`, every word that holds two tokens spelling it,
    /// and updates the pair counts.
    fn apply(&mut self, id: u32) {
        let bytes = self.token_bytes(id).expect("a new token").to_vec();
        // What becomes the new token in a word: two tokens that spell it.
        let mut patterns: Vec<[u32; 2]> = Vec::new();
        let mut indices = Vec::new();
        for at in self.spelling.cuts(&bytes) {
            if let (Some(&l), Some(&r)) = (self.known.get(&bytes[..at]), self.known.get(&bytes[at..])) {
                if self.token_bytes(l).is_some() && self.token_bytes(r).is_some() {
                    patterns.push([l, r]);
                    indices.extend(self.corpus.pair_words.remove(&pair_key(l, r)).unwrap_or_default());
                }
            }
        }
        self.rewrite(indices, |trainer, _, before, made| {
            let mut word = Vec::with_capacity(before.len());
            let mut i = 0;
            while i < before.len() {
                if patterns.iter().any(|p| before[i] == p[0] && before.get(i + 1) == Some(&p[1])) {
                    made.push(Replaced { at: word.len(), from: i, len: 2 });
                    word.push(id);
                    i += 2;
                } else {
                    word.push(before[i]);
                    i += 1;
                }
            }
            // Every occurrence was replaced at once; merge_new would make one and then first
            // merge it with a neighbour that spells a better-ranked token with it, before
            // the next occurrence could take that neighbour. Then it is run from the word as
            // it was (all older tokens done, the new one ranked last: exactly as afresh).
            let mut buf = Vec::new();
            let mut spells = |l: u32, r: u32| trainer.merged(l, r, &mut buf).is_some();
            let contested = made.iter().any(|r| {
                (r.from > 0 && spells(before[r.from - 1], id)) || before.get(r.from + 2).is_some_and(|&next| spells(id, next))
            });
            if contested {
                made.clear();
                word = before.to_vec();
                trainer.merge_new(&mut word);
            }
            word
        });
    }

    /// Puts the new characters `chars` in every word they occur in, updating the counts.
    fn apply_chars(&mut self, chars: &[char]) {
        let indices = chars.iter().flat_map(|c| self.corpus.char_words.remove(c).unwrap_or_default()).collect();
        self.rewrite(indices, |trainer, index, before, made| {
            let word = trainer.with_new_chars(before, made);
            // Encoded afresh, a new character is there before any merge. A token made
            // since (a neighbour now) may have taken what the character would first have
            // merged with: if the character and the start (end) of that neighbour spell a
            // token, the word is encoded afresh.
            let mut buf = Vec::new();
            let contested = made.iter().any(|r| {
                let c = trainer.token_bytes(word[r.at]).unwrap_or_default();
                let left = r.at.checked_sub(1).map(|i| word[i]);
                let right = word.get(r.at + 1).copied();
                [(left, true), (right, false)].into_iter().any(|(n, is_left)| {
                    let Some(n) = n.filter(|&n| n >= trainer.first_id) else { return false };
                    let n = trainer.token_bytes(n).unwrap_or_default();
                    trainer.spelling.cuts(n).any(|at| {
                        buf.clear();
                        match is_left {
                            true => buf.extend_from_slice(&n[at..]),
                            false => buf.extend_from_slice(c),
                        }
                        buf.extend_from_slice(if is_left { c } else { &n[..at] });
                        trainer.known.contains_key(&buf[..])
                    })
                })
            });
            if contested {
                made.clear();
                return trainer.encode_word(&trainer.corpus.texts[index as usize]).unwrap_or(word);
            }
            word
        });
    }

    /// Rewrites the words `indices` (repeats allowed) with `replace(self, index, word,
    /// made)`, which puts new tokens in a word and says where (nothing when it re-encoded
    /// the word); then settles them and updates the counts.
    fn rewrite(&mut self, mut indices: Vec<u32>, replace: impl Fn(&Self, u32, &[u32], &mut Vec<Replaced>) -> Vec<u32>) {
        indices.sort_unstable();
        indices.dedup();
        let mut changes: FxHashMap<u64, i64> = FxHashMap::default();
        let mut grown: FxHashSet<u64> = FxHashSet::default();
        let (mut buf, mut made) = (Vec::new(), Vec::new());
        for index in indices {
            let before = std::mem::take(&mut self.corpus.words[index as usize]);
            made.clear();
            let mut word = replace(self, index, &before, &mut made);
            let local = !made.is_empty() && !self.settle(&mut word, &made, &mut buf);
            self.update_counts(index, &before, &word, local.then_some(&made[..]), &mut changes, &mut grown);
            self.corpus.words[index as usize] = word;
        }
        self.push_grown(grown);
    }

    /// After new tokens were put where `made` says: their neighbours may now spell a token
    /// too (one made earlier wins over them; see merge_new). Rare; then the word is merged
    /// again, and true returned.
    fn settle(&self, word: &mut Vec<u32>, made: &[Replaced], buf: &mut Vec<u8>) -> bool {
        let mut spells = |a: usize, b: usize| self.merged(word[a], word[b], buf).is_some();
        let more = made.iter().any(|r| (r.at > 0 && spells(r.at - 1, r.at)) || (r.at + 1 < word.len() && spells(r.at, r.at + 1)));
        if more {
            self.merge_new(word);
        }
        more
    }

    /// Each grown pair enters the heap once, with its final count: a push per word made the
    /// heap millions of stale entries long, and popping them was half the time.
    fn push_grown(&mut self, grown: FxHashSet<u64>) {
        for pair in grown {
            let count = self.corpus.pair_counts[&pair];
            self.corpus.heap.push((count, Reverse(pair)));
        }
    }

    /// The pair counts after word `index` changed from `before` to `word`; the pairs that
    /// grew are collected in `grown` (and the word listed under them).
    /// `made`: the replacements that turned `before` into `word`, when they are all.
    fn update_counts(
        &mut self,
        index: u32,
        before: &[u32],
        word: &[u32],
        made: Option<&[Replaced]>,
        changes: &mut FxHashMap<u64, i64>,
        grown: &mut FxHashSet<u64>,
    ) {
        if word == before {
            return;
        }
        let corpus = &mut self.corpus;
        let n = corpus.counts[index as usize] as i64;
        // Only the pairs around what changed: SentencePiece-style words can be whole
        // clauses of hundreds of tokens (Chinese has no spaces to cut at). Pair `j` of a
        // word is its tokens `j` and `j + 1`.
        let pairs = |w: &[u32], js: &mut dyn Iterator<Item = usize>, delta: i64, changes: &mut FxHashMap<u64, i64>| {
            let mut last = None;
            for j in js {
                if last.is_none_or(|l| j > l) && j + 1 < w.len() {
                    *changes.entry(pair_key(w[j], w[j + 1])).or_insert(0) += delta;
                    last = Some(j);
                }
            }
        };
        changes.clear();
        match made {
            Some(made) => {
                // The pairs touching each replaced run, and each new token's two.
                pairs(before, &mut made.iter().flat_map(|r| r.from.saturating_sub(1)..r.from + r.len), -n, changes);
                pairs(word, &mut made.iter().flat_map(|r| r.at.saturating_sub(1)..r.at + 1), n, changes);
            }
            None => {
                let head = before.iter().zip(word).take_while(|(a, b)| a == b).count().saturating_sub(1);
                let tail = before.iter().rev().zip(word.iter().rev()).take_while(|(a, b)| a == b).count();
                let tail = tail.min(before.len() - head).min(word.len() - head).saturating_sub(1);
                pairs(before, &mut (head..before.len() - tail), -n, changes);
                pairs(word, &mut (head..word.len() - tail), n, changes);
            }
        }
        for (&pair, &delta) in changes.iter() {
            if delta == 0 {
                continue;
            }
            *corpus.pair_counts.entry(pair).or_insert(0) += delta;
            if delta > 0 {
                grown.insert(pair);
                corpus.pair_words.entry(pair).or_default().push(index);
            }
        }
    }

    /// Every merge the new tokens bring, in rank order: (left, right, merged). Pairs with a
    /// new half that spell an old token first (by its id), then the pairs spelling each new
    /// token in the order made; each token's pairs by where they cut it.
    pub fn merges(&self) -> Vec<(u32, u32, u32)> {
        let mut merges = Vec::new();
        for id in 0..self.token_bytes.len() as u32 {
            // A new token is at most a word; an old one much longer cannot be spelled by
            // one and a word (and every cut is a lookup).
            let Some(bytes) = self.token_bytes(id).filter(|b| b.len() <= 2 * MAX_WORD_BYTES) else { continue };
            for at in self.spelling.cuts(bytes) {
                let halves = (self.known.get(&bytes[..at]), self.known.get(&bytes[at..]));
                let (Some(&l), Some(&r)) = halves else { continue };
                let mergeable = self.token_bytes(l).is_some() && self.token_bytes(r).is_some();
                if mergeable && (id >= self.first_id || l >= self.first_id || r >= self.first_id) {
                    merges.push((l, r, id));
                }
            }
        }
        merges
    }

    /// The tokenizer with the new tokens in its vocabulary and their merges after the old;
    /// SentencePiece scores (a tokenizer read from a `.model`) below every old score.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let mut root = tokenizer_json::to_value(&self.tok);
        let spell = |id: u32| -> String {
            match self.tok.vocab.get(id) {
                Some(s) => s.to_string(),
                None => self.spelling.spell(self.token_bytes(id).unwrap_or_default()),
            }
        };
        let model = root.get_mut("model").and_then(Value::as_object_mut).ok_or_else(|| Error::Invalid("no model".into()))?;
        let as_strings = matches!(model.get("merges").and_then(|m| m.get(0)), Some(Value::String(_)));
        let new_ids = self.first_id..self.first_id + self.len() as u32;
        if let Some(Value::Object(vocab)) = model.get_mut("vocab") {
            for id in new_ids.clone() {
                vocab.insert(spell(id), json!(id));
            }
            // Readers number the added tokens that are not in the model's vocabulary after
            // its entries, whatever ids the file gives them (the reference does, and so does
            // this crate): with new entries there, they would move onto the new tokens. In
            // the vocabulary at their own ids they keep them.
            for (id, token) in self.tok.added.tokens().filter(|(id, _)| *id < self.first_id) {
                if !self.tok.vocab.ids.contains_key(&token.content) {
                    vocab.entry(token.content.clone()).or_insert(json!(id));
                }
            }
        }
        if let Some(Value::Array(merges)) = model.get_mut("merges") {
            for (left, right, _) in self.merges() {
                let (l, r) = (spell(left), spell(right));
                merges.push(if as_strings { json!(format!("{l} {r}")) } else { json!([l, r]) });
            }
        }
        if let Some(Value::Array(scores)) = model.get_mut(sentencepiece::SCORES_KEY) {
            let lowest = scores.iter().filter_map(Value::as_f64).fold(0.0f32, |m, s| m.min(s as f32));
            scores.resize(self.first_id as usize, Value::Null);
            scores.extend(sentencepiece::scores_below(lowest, self.len()).into_iter().map(|s| json!(s)));
        }
        tokenizer_json::from_value(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2() -> Arc<Tokenizer> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tokensmith/assets/gpt2/tokenizer.json");
        Arc::new(tokenizer_json::from_str(&std::fs::read_to_string(path).unwrap(), path).unwrap())
    }

    fn counts(tok: &Arc<Tokenizer>, texts: &[&str]) -> WordCounts {
        let mut counts = WordCounts::new(tok.clone(), true).unwrap();
        counts.add(texts).unwrap();
        counts
    }

    fn protected(tok: &Arc<Tokenizer>, texts: &[&str]) -> WordCounts {
        let mut counts = WordCounts::new(tok.clone(), false).unwrap();
        counts.add(texts).unwrap();
        counts
    }

    /// The trained merges, run by the real encoder of the extended tokenizer: the corpus
    /// gets shorter, protected text keeps its ids, every new token encodes to itself.
    #[test]
    fn learnt_merges_shorten_the_corpus_and_keep_protected_text() {
        let tok = gpt2();
        let corpus = ["数据集和人工智能的数据集", "人工智能数据集 1234 1234", "数据集"];
        let protected = ["in 1234 and 12 go", "Hello world"];
        let mut trainer = Trainer::new(tok.clone(), &self::protected(&tok, &protected)).unwrap();
        trainer.set_corpus(&counts(&tok, &corpus)).unwrap();
        let learnt = trainer.train(1000, 2).unwrap();
        assert!(learnt > 3, "{learnt}");
        assert!(trainer.skipped().get(&Skip::Protected).is_some_and(|&n| n > 0));
        let new = trainer.tokenizer().unwrap();
        for text in corpus {
            let before = tok.encode(text, &SpecialPolicy::Allow, false).unwrap();
            let after = new.encode(text, &SpecialPolicy::Allow, false).unwrap();
            assert!(after.len() < before.len(), "{text}: {before:?} {after:?}");
        }
        for text in protected {
            assert_eq!(tok.encode(text, &SpecialPolicy::Allow, false).unwrap(), new.encode(text, &SpecialPolicy::Allow, false).unwrap());
        }
        let mut whole = 0;
        for k in 0..learnt as u32 {
            let id = trainer.first_id() + k;
            if let Ok(text) = std::str::from_utf8(trainer.token_bytes(id).unwrap()) {
                assert_eq!(new.encode(text, &SpecialPolicy::Allow, false).unwrap(), [id], "{text:?}");
                whole += 1;
            }
        }
        assert!(whole > 0, "{whole} of {learnt} new tokens are whole characters");
    }

    /// A SentencePiece-style tokenizer (Llama 2's layout) that knows few characters: most of
    /// the text falls back to bytes. Two of its tokens are made of characters it lacks
    /// (no merge makes them; once the characters are new tokens, a pair of them spells one).
    fn tiny_sentencepiece() -> Arc<Tokenizer> {
        let mut vocab: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        vocab.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        vocab.extend(["▁", "a", "b", "▁a", "ab", "中", "国", "中国", "▁中", "人民", "数据集"].map(String::from));
        let vocab: serde_json::Map<String, Value> = vocab.into_iter().enumerate().map(|(i, t)| (t, json!(i))).collect();
        let json = json!({
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null, "post_processor": null, "decoder": null, "added_tokens": [],
            "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true, "vocab": vocab,
                      "merges": [["▁", "a"], ["a", "b"], ["中", "国"], ["▁", "中"]]}
        });
        Arc::new(tokenizer_json::from_value(json).unwrap())
    }

    /// Random lines over a few characters, most of which `tiny_sentencepiece` lacks.
    fn random_lines(seed: u64, n: usize) -> Vec<String> {
        let alphabet: Vec<char> = "中国人民数据集模型训练ab  ".chars().collect();
        let mut next = crate::testing::random(seed);
        (0..n).map(|_| (0..5 + next() % 40).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()).collect()
    }

    /// What training keeps up to date, merge by merge, is what counting afresh gives: the
    /// words' segmentations (so the pair counts) equal encoding them again with the tokens
    /// so far, and that equals what the written tokenizer's own BPE gives.
    #[test]
    fn training_state_equals_encoding_afresh() {
        for tok in [gpt2(), tiny_sentencepiece()] {
            let lines = random_lines(3, 3000);
            let corpus = counts(&tok, &lines.iter().map(String::as_str).collect::<Vec<_>>());
            let mut trainer = Trainer::new(tok.clone(), &protected(&tok, &[])).unwrap();
            trainer.set_corpus(&corpus).unwrap();
            for _ in 0..6 {
                assert!(trainer.train(40, 1).unwrap() > 0);
                assert_state_is_fresh(&trainer, &corpus);
            }
            if matches!(trainer.spelling, Spelling::Chars { .. }) {
                assert!(trainer.new_chars() > 3, "the characters it lacked are tokens now");
            }
        }
    }

    /// The kept pair counts are those of the words encoded afresh, that encoding is the
    /// written tokenizer's own, and every new token is reachable.
    fn assert_state_is_fresh(trainer: &Trainer, corpus: &WordCounts) {
        let mut afresh: FxHashMap<u64, i64> = FxHashMap::default();
        for (word, &n) in &corpus.counts {
            for w in trainer.encode_word(word).unwrap().windows(2) {
                *afresh.entry(pair_key(w[0], w[1])).or_insert(0) += n as i64;
            }
        }
        let kept: FxHashMap<u64, i64> =
            trainer.corpus.pair_counts.iter().filter(|(_, &n)| n != 0).map(|(&k, &n)| (k, n)).collect();
        assert_eq!(kept, afresh);
        let new = trainer.tokenizer().unwrap();
        for word in corpus.counts.keys() {
            let mut ids = Vec::new();
            new.bpe.encode(word, &mut ids).unwrap();
            assert_eq!(ids, trainer.encode_word(word).unwrap(), "{:?}", String::from_utf8_lossy(word));
        }
        assert_eq!(trainer.unreachable(&new).unwrap(), Vec::<u32>::new());
    }

    /// Old merges that become possible again once a pair with a new half made an old token
    /// (`ab` + `cd` -> `abcd`, then the old `abcd` + `e`), and a new token whose occurrence
    /// would take the neighbour an earlier-ranked merge wants (`xyz` + `x` -> `xyzx`, an old
    /// token no old merge makes).
    #[test]
    fn old_merges_after_new_ones_and_contested_neighbours() {
        let tokens = ["a", "b", "c", "d", "e", "x", "y", "z", "Y", "Z", "bc", "cd", "abc", "abcd", "abcde", "yz", "xyzx"];
        let merges = [["c", "d"], ["b", "c"], ["a", "bc"], ["abc", "d"], ["abcd", "e"], ["y", "z"]];
        let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
        let json = json!({"normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
                          "added_tokens": [], "model": {"type": "BPE", "vocab": vocab, "merges": merges}});
        let tok = Arc::new(tokenizer_json::from_value(json).unwrap());
        let mut texts = vec!["abcdeYZ"; 10];
        texts.extend(["eY"; 300]);
        texts.extend(["eYZ"; 100]);
        texts.extend(["xyzxyz"; 50]);
        let corpus = counts(&tok, &texts);
        let mut trainer = Trainer::new(tok.clone(), &protected(&tok, &[])).unwrap();
        assert!(matches!(trainer.add_word("ab").unwrap(), WordOutcome::Added(_)));
        trainer.set_corpus(&corpus).unwrap();
        while trainer.train(1, 1).unwrap() > 0 {
            assert_state_is_fresh(&trainer, &corpus);
        }

        // A character the vocabulary lacks, made a token after `yz` was: encoded afresh it
        // is there first, and `数` + `y` (an old token) wins over `y` + `z`.
        let mut tokens: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        tokens.extend(["y", "z", "数y"].map(String::from));
        let vocab: serde_json::Map<String, Value> = tokens.into_iter().enumerate().map(|(i, t)| (t, json!(i))).collect();
        let json = json!({"normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
                          "added_tokens": [], "model": {"type": "BPE", "byte_fallback": true, "vocab": vocab, "merges": []}});
        let tok = Arc::new(tokenizer_json::from_value(json).unwrap());
        let mut texts = vec!["yz"; 500];
        texts.extend(["数yz"; 5]);
        let corpus = counts(&tok, &texts);
        let mut trainer = Trainer::new(tok.clone(), &protected(&tok, &[])).unwrap();
        trainer.set_corpus(&corpus).unwrap();
        while trainer.train(1, 1).unwrap() > 0 {
            assert_state_is_fresh(&trainer, &corpus);
        }
        assert_eq!(trainer.new_chars(), 1);
    }

    /// A pair is taken exactly when the real pipeline keeps the new token's text one piece
    /// and encodes it to two tokens (which the new token then joins): checked on random
    /// pairs of tokens.
    #[test]
    fn a_pair_is_taken_exactly_when_its_text_encodes_to_it() {
        let tok = gpt2();
        let trainer = Trainer::new(tok.clone(), &protected(&tok, &[])).unwrap();
        assert_eq!(trainer.check(tok.token_to_id("Ġ").unwrap(), tok.token_to_id("'s").unwrap()).unwrap(), Err(Skip::Split));
        let mut next = crate::testing::random(7);
        let (mut taken, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let (a, b) = ((next() % 50_000) as u32, (next() % 50_000) as u32);
            let bytes = [trainer.token_bytes(a).unwrap(), trainer.token_bytes(b).unwrap()].concat();
            let Ok(text) = std::str::from_utf8(&bytes) else { continue };
            let mut pieces = 0;
            tok.for_each_piece(text, &SpecialPolicy::Allow, &mut |_| Ok(pieces += 1)).unwrap();
            let expected = !trainer.known.contains_key(&bytes[..])
                && pieces == 1
                && tok.encode(text, &SpecialPolicy::Allow, false).unwrap().len() == 2;
            assert_eq!(trainer.check(a, b).unwrap().is_ok(), expected, "{text:?}");
            if expected { taken += 1 } else { refused += 1 }
        }
        assert!(taken > 1000 && refused > 1000, "{taken} taken, {refused} refused");
    }

    #[test]
    fn given_words_become_one_token_or_are_refused() {
        let tok = gpt2();
        let mut trainer = Trainer::new(tok.clone(), &protected(&tok, &["tokenizers are nice"])).unwrap();
        let added = trainer.add_word("人工智能").unwrap();
        let WordOutcome::Added(id) = added else { panic!("{added:?}") };
        assert_eq!(trainer.add_word("人工智能").unwrap(), WordOutcome::Exists(id));
        assert_eq!(trainer.add_word(" the").unwrap(), WordOutcome::Exists(262));
        assert!(matches!(trainer.add_word("two words").unwrap(), WordOutcome::Refused(_)));
        let before = trainer.len();
        // "tokenizers" is a protected piece: making it a token would change its ids.
        assert!(matches!(trainer.add_word("tokenizers").unwrap(), WordOutcome::Refused(_)));
        assert_eq!(trainer.len(), before, "a refused word leaves no tokens behind");
        let new = trainer.tokenizer().unwrap();
        assert_eq!(new.encode("人工智能", &SpecialPolicy::Allow, false).unwrap(), [id]);
        let old = "tokenizers are nice";
        assert_eq!(new.encode(old, &SpecialPolicy::Allow, false).unwrap(), tok.encode(old, &SpecialPolicy::Allow, false).unwrap());
    }
}
