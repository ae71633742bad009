//! Vocabulary extension: new BPE merges for a tokenizer, ranked after every old merge, that
//! leave protected text exactly as it was encoded and make every new token reachable.
//!
//! Why old text keeps its ids: BPE applies the lowest-ranked merge present first, so on any
//! piece every old merge is done before a new one is looked at; the old segmentation is
//! reached exactly as before, and a new merge changes it only if its two tokens are
//! adjacent in it. A protected piece therefore keeps its ids iff no new merge is a pair
//! adjacent in its old ids. Candidates that would break that are skipped: exact, and with
//! no re-encoding of the protected text per candidate. (Where `ignore_merges` looks whole
//! pieces up in the vocabulary, a new token that spells a protected piece would change it
//! too; but such a token's text starts from the piece's old ids, so the check below that
//! makes it reachable would need one of their pairs merged: it is never taken.)
//!
//! Why every new token is reachable: a merge (a, b) is taken only when the new token's own
//! text, run through the pipeline, is one piece that the merges so far leave as exactly
//! [a, b]; the new merge then makes it one token, which nothing ranked later can split.
//! A token that is part of a character has no text of its own to check: it is made in the
//! words it was counted in (training) or is a step towards a given word (`add_word`).
//!
//! Training is the greedy pair counting of `tokenizers`' BpeTrainer (the most frequent
//! adjacent pair becomes the next merge; counts updated only in the words that contain it,
//! a heap with stale entries re-checked when they surface), started from the corpus's
//! words as the tokenizer segments them instead of from their bytes: the old merges are
//! not learnt again.

use crate::bytelevel;
use crate::error::{Error, Result};
use crate::formats::tokenizer_json;
use crate::special::SpecialPolicy;
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

type Pieces = FxHashMap<Box<[u8]>, u64>;

/// How often each pre-tokenized piece occurs in a corpus, as the tokenizer splits it
/// (added tokens left out). Memory grows with the distinct pieces, not the corpus.
#[derive(Debug, Default, Clone)]
pub struct WordCounts {
    pub counts: Pieces,
    /// Pieces counted, repeats included.
    pub total: u64,
}

impl WordCounts {
    /// Counts the pieces of `texts`, on every core.
    pub fn add(&mut self, tok: &Tokenizer, texts: &[&str]) -> Result<()> {
        let counted = texts
            .par_iter()
            .try_fold(Pieces::default, |mut counts, text| {
                tok.for_each_piece(text, &SpecialPolicy::Allow, &mut |piece| {
                    match counts.get_mut(piece) {
                        Some(n) => *n += 1,
                        None => {
                            counts.insert(piece.into(), 1);
                        }
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

/// Why a candidate merge was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Its pair is adjacent in protected text.
    Protected,
    /// Its text is a token already (one the old merges do not reach in this context).
    Exists,
    /// Its bytes are no valid UTF-8: half a character.
    PartialChar,
    /// The pre-tokenizer (or normalizer, or an added token) splits its text.
    Split,
    /// Its text alone is segmented otherwise than as the two tokens.
    Unreachable,
}

impl Skip {
    pub const ALL: [Skip; 5] = [Skip::Protected, Skip::Exists, Skip::PartialChar, Skip::Split, Skip::Unreachable];

    pub fn name(self) -> &'static str {
        match self {
            Skip::Protected => "protected",
            Skip::Exists => "exists",
            Skip::PartialChar => "partial_char",
            Skip::Split => "split",
            Skip::Unreachable => "unreachable",
        }
    }

    /// Whether more merges may change the verdict (only the segmentation can change).
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

/// The corpus being trained on: its distinct words as segmented so far.
#[derive(Debug, Default)]
struct Corpus {
    words: Vec<Vec<u32>>,
    counts: Vec<u64>,
    pair_counts: FxHashMap<u64, i64>,
    /// The words each pair may occur in (with repeats and stale entries).
    pair_words: FxHashMap<u64, Vec<u32>>,
    heap: BinaryHeap<(i64, Reverse<u64>)>,
}

/// New merges for a byte-level BPE tokenizer (see the module docs).
pub struct Trainer {
    tok: Arc<Tokenizer>,
    first_id: u32,
    /// Every token's bytes by id, the new ones included.
    token_bytes: Vec<Option<Box<[u8]>>>,
    /// Texts that are tokens (model vocabulary, added tokens, new tokens) and their ids.
    known: FxHashMap<Box<[u8]>, u32>,
    /// New merges in rank order; the new token of merge k has id `first_id + k`.
    merges: Vec<(u32, u32)>,
    ranks: FxHashMap<u64, u32>,
    forbidden_pairs: FxHashSet<u64>,
    /// Pairs not taken: why, and for the unreachable ones how many merges there were then.
    skipped: FxHashMap<u64, (Skip, usize)>,
    corpus: Corpus,
    /// Whether a new token may be part of a character.
    pub partial_chars: bool,
}

impl Trainer {
    /// A trainer for `tok` that keeps the ids of every piece counted in `protect`.
    pub fn new(tok: Arc<Tokenizer>, protect: &WordCounts) -> Result<Self> {
        let tiktoken = tok.passthrough.get(tokenizer_json::TOKENSMITH_KEY).and_then(|m| m.get("tiktoken_pattern")).is_some();
        if !tok.pre_tokenizer.is_byte_level() || tiktoken {
            return Err(Error::Unsupported(
                "vocabulary extension of this tokenizer: it needs a byte-level BPE with merges (a tokenizer.json \
                 like GPT-2's, Llama 3's or Qwen2's); SentencePiece-style and tiktoken-rank tokenizers are not \
                 supported yet"
                    .into(),
            ));
        }
        let mut token_bytes: Vec<Option<Box<[u8]>>> =
            tok.vocab.tokens.iter().map(|t| t.as_deref().and_then(bytelevel::decode_str).map(Into::into)).collect();
        let mut known: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        for (id, bytes) in token_bytes.iter().enumerate() {
            if let Some(bytes) = bytes {
                known.insert(bytes.clone(), id as u32);
            }
        }
        for (id, token) in tok.added.tokens() {
            known.entry(token.content.as_bytes().into()).or_insert(id);
        }
        let first_id = (tok.vocab.tokens.len() as u32).max(tok.added.max_id().map_or(0, |m| m + 1));
        token_bytes.resize(first_id as usize, None);

        let protected: Vec<Vec<u32>> = protect
            .counts
            .par_iter()
            .map(|(piece, _)| {
                let mut ids = Vec::new();
                tok.bpe.encode(piece, &mut ids).map(|()| ids)
            })
            .collect::<Result<_>>()?;
        let forbidden_pairs = protected.iter().flat_map(|ids| ids.windows(2).map(|w| pair_key(w[0], w[1]))).collect();
        Ok(Trainer {
            tok,
            first_id,
            token_bytes,
            known,
            merges: Vec::new(),
            ranks: FxHashMap::default(),
            forbidden_pairs,
            skipped: FxHashMap::default(),
            corpus: Corpus::default(),
            partial_chars: true,
        })
    }

    pub fn first_id(&self) -> u32 {
        self.first_id
    }

    /// The new merges in rank order, as (left, right) ids; merge k makes id `first_id + k`.
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).and_then(|b| b.as_deref())
    }

    /// How many candidate pairs were skipped, by reason.
    pub fn skipped(&self) -> FxHashMap<Skip, usize> {
        let mut counts = FxHashMap::default();
        for &(skip, _) in self.skipped.values() {
            *counts.entry(skip).or_insert(0) += 1;
        }
        counts
    }

    /// The ids of one piece under the old merges and the new ones so far.
    pub fn encode_piece(&self, piece: &[u8]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.tok.bpe.encode(piece, &mut ids)?;
        // Every old merge is done; the new ones apply lowest rank first, leftmost first.
        while let Some((rank, i)) = ids
            .windows(2)
            .enumerate()
            .filter_map(|(i, w)| self.ranks.get(&pair_key(w[0], w[1])).map(|&rank| (rank, i)))
            .min()
        {
            ids[i] = self.first_id + rank;
            ids.remove(i + 1);
        }
        Ok(ids)
    }

    /// The pieces the pipeline splits `text` into.
    fn pieces(&self, text: &str) -> Result<Vec<Vec<u8>>> {
        let mut pieces = Vec::new();
        self.tok.for_each_piece(text, &SpecialPolicy::Allow, &mut |p| {
            pieces.push(p.to_vec());
            Ok(())
        })?;
        Ok(pieces)
    }

    /// The bytes of the token merging `left` and `right`, or why it may not be made.
    fn check(&self, left: u32, right: u32) -> Result<std::result::Result<Vec<u8>, Skip>> {
        if self.forbidden_pairs.contains(&pair_key(left, right)) {
            return Ok(Err(Skip::Protected));
        }
        let (Some(l), Some(r)) = (self.token_bytes(left), self.token_bytes(right)) else {
            return Ok(Err(Skip::Split));
        };
        let bytes = [l, r].concat();
        if self.known.contains_key(&bytes[..]) {
            return Ok(Err(Skip::Exists));
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            // Part of a character (a step towards whole ones where the old merges cross
            // character boundaries, as GPT-2's do on CJK): no text is this token alone, so
            // only the words it was counted in show that it is made.
            return Ok(if self.partial_chars { Ok(bytes) } else { Err(Skip::PartialChar) });
        };
        if self.pieces(text)? != [bytes.as_slice()] {
            return Ok(Err(Skip::Split));
        }
        if self.encode_piece(&bytes)? != [left, right] {
            return Ok(Err(Skip::Unreachable));
        }
        Ok(Ok(bytes))
    }

    fn push_merge(&mut self, left: u32, right: u32, bytes: Vec<u8>) -> u32 {
        let id = self.first_id + self.merges.len() as u32;
        self.ranks.insert(pair_key(left, right), self.merges.len() as u32);
        self.merges.push((left, right));
        self.known.insert(bytes.clone().into(), id);
        self.token_bytes.push(Some(bytes.into()));
        id
    }

    fn pop_merges(&mut self, keep: usize) {
        while self.merges.len() > keep {
            let (left, right) = self.merges.pop().expect("longer than keep");
            self.ranks.remove(&pair_key(left, right));
            if let Some(Some(bytes)) = self.token_bytes.pop() {
                self.known.remove(&bytes);
            }
        }
    }

    /// Makes `word` one token with the fewest new merges of its pieces (each one reachable
    /// and protected text unchanged), or says why it cannot be.
    pub fn add_word(&mut self, word: &str) -> Result<WordOutcome> {
        let bytes = word.as_bytes();
        if bytes.is_empty() {
            return Ok(WordOutcome::Refused("an empty word".into()));
        }
        if let Some(&id) = self.known.get(bytes) {
            return Ok(WordOutcome::Exists(id));
        }
        let pieces = self.pieces(word)?;
        if pieces != [bytes] {
            let shown: Vec<String> = pieces.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            return Ok(WordOutcome::Refused(format!(
                "the tokenizer's pre-tokenizer or normalizer makes it {shown:?}, not one piece"
            )));
        }
        let keep = self.merges.len();
        loop {
            let ids = self.encode_piece(bytes)?;
            if let [id] = ids[..] {
                return Ok(WordOutcome::Added(id));
            }
            let mut reasons = Vec::new();
            let mut taken = None;
            for w in ids.windows(2) {
                match self.check(w[0], w[1])? {
                    Ok(merged) => {
                        taken = Some((w[0], w[1], merged));
                        break;
                    }
                    Err(skip) => reasons.push(skip.name()),
                }
            }
            let Some((left, right, merged)) = taken else {
                self.pop_merges(keep);
                reasons.sort_unstable();
                reasons.dedup();
                return Ok(WordOutcome::Refused(format!(
                    "no two adjacent pieces of it can merge ({})",
                    reasons.join(", ")
                )));
            };
            self.push_merge(left, right, merged);
        }
    }

    /// Sets the corpus to learn merges from (segmented with the merges so far).
    pub fn set_corpus(&mut self, counts: &WordCounts) -> Result<()> {
        let words: Vec<(Vec<u32>, u64)> = counts
            .counts
            .par_iter()
            .map(|(piece, &n)| self.encode_piece(piece).map(|ids| (ids, n)))
            .filter(|w| w.as_ref().map_or(true, |(ids, _)| ids.len() > 1))
            .collect::<Result<_>>()?;
        let mut corpus = Corpus::default();
        for (index, (ids, n)) in words.into_iter().enumerate() {
            for w in ids.windows(2) {
                let key = pair_key(w[0], w[1]);
                *corpus.pair_counts.entry(key).or_insert(0) += n as i64;
                corpus.pair_words.entry(key).or_default().push(index as u32);
            }
            corpus.words.push(ids);
            corpus.counts.push(n);
        }
        corpus.heap = corpus.pair_counts.iter().map(|(&key, &n)| (n, Reverse(key))).collect();
        self.corpus = corpus;
        Ok(())
    }

    /// Learns up to `limit` more merges, each of a pair seen at least `min_count` times;
    /// returns how many it learnt (fewer: no pair is left that qualifies).
    pub fn train(&mut self, limit: usize, min_count: u64) -> Result<usize> {
        let mut learnt = 0;
        while learnt < limit {
            let Some((count, Reverse(key))) = self.corpus.heap.pop() else { break };
            let current = self.corpus.pair_counts.get(&key).copied().unwrap_or(0);
            if current != count {
                // A stale entry: the pair's count fell since it was pushed.
                if current >= min_count as i64 && current > 0 {
                    self.corpus.heap.push((current, Reverse(key)));
                }
                continue;
            }
            if count < min_count as i64 || count <= 0 {
                break;
            }
            if let Some(&(skip, at)) = self.skipped.get(&key) {
                if skip.is_final() || at == self.merges.len() {
                    continue;
                }
            }
            let (left, right) = pair_of(key);
            match self.check(left, right)? {
                Err(skip) => {
                    self.skipped.insert(key, (skip, self.merges.len()));
                }
                Ok(bytes) => {
                    self.skipped.remove(&key);
                    let id = self.push_merge(left, right, bytes);
                    self.apply(key, id);
                    learnt += 1;
                }
            }
        }
        Ok(learnt)
    }

    /// Merges the pair `key` into `id` in every word that holds it, updating the counts.
    fn apply(&mut self, key: u64, id: u32) {
        let (left, right) = pair_of(key);
        let corpus = &mut self.corpus;
        let mut indices = corpus.pair_words.remove(&key).unwrap_or_default();
        indices.sort_unstable();
        indices.dedup();
        let mut changes: FxHashMap<u64, i64> = FxHashMap::default();
        for index in indices {
            let word = &mut corpus.words[index as usize];
            if !word.windows(2).any(|w| w[0] == left && w[1] == right) {
                continue; // a stale entry
            }
            let n = corpus.counts[index as usize] as i64;
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == left && word[i + 1] == right {
                    merged.push(id);
                    i += 2;
                } else {
                    merged.push(word[i]);
                    i += 1;
                }
            }
            changes.clear();
            for w in word.windows(2) {
                *changes.entry(pair_key(w[0], w[1])).or_insert(0) -= n;
            }
            for w in merged.windows(2) {
                *changes.entry(pair_key(w[0], w[1])).or_insert(0) += n;
            }
            for (&pair, &delta) in &changes {
                if delta == 0 {
                    continue;
                }
                let count = corpus.pair_counts.entry(pair).or_insert(0);
                *count += delta;
                if delta > 0 {
                    corpus.heap.push((*count, Reverse(pair)));
                    corpus.pair_words.entry(pair).or_default().push(index);
                }
            }
            *word = merged;
        }
        corpus.pair_counts.remove(&key);
    }

    /// The tokenizer with the new tokens in its vocabulary and the new merges after the old.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let mut root = tokenizer_json::to_value(&self.tok);
        let spell = |id: u32| -> String {
            match self.tok.vocab.get(id) {
                Some(s) => s.to_string(),
                None => bytelevel::encode_bytes(self.token_bytes(id).unwrap_or_default()),
            }
        };
        let model = root.get_mut("model").and_then(Value::as_object_mut).ok_or_else(|| Error::Invalid("no model".into()))?;
        let as_strings = matches!(model.get("merges").and_then(|m| m.get(0)), Some(Value::String(_)));
        if let Some(Value::Object(vocab)) = model.get_mut("vocab") {
            for k in 0..self.merges.len() as u32 {
                vocab.insert(spell(self.first_id + k), json!(self.first_id + k));
            }
        }
        if let Some(Value::Array(merges)) = model.get_mut("merges") {
            for &(left, right) in &self.merges {
                let (l, r) = (spell(left), spell(right));
                merges.push(if as_strings { json!(format!("{l} {r}")) } else { json!([l, r]) });
            }
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

    fn counts(tok: &Tokenizer, texts: &[&str]) -> WordCounts {
        let mut counts = WordCounts::default();
        counts.add(tok, texts).unwrap();
        counts
    }

    /// The trained merges, run by the real encoder of the extended tokenizer: the corpus
    /// gets shorter, protected text keeps its ids, every new token encodes to itself.
    #[test]
    fn learnt_merges_shorten_the_corpus_and_keep_protected_text() {
        let tok = gpt2();
        let corpus = ["数据集和人工智能的数据集", "人工智能数据集 1234 1234", "数据集"];
        let protected = ["in 1234 and 12 go", "Hello world"];
        let mut trainer = Trainer::new(tok.clone(), &counts(&tok, &protected)).unwrap();
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

    /// A pair is taken exactly when the real pipeline keeps the new token's text one piece
    /// and encodes it to the two tokens (so that the new merge makes it one): checked on
    /// random pairs of tokens.
    #[test]
    fn a_pair_is_taken_exactly_when_its_text_encodes_to_it() {
        let tok = gpt2();
        let trainer = Trainer::new(tok.clone(), &WordCounts::default()).unwrap();
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
                && tok.encode(text, &SpecialPolicy::Allow, false).unwrap() == [a, b];
            assert_eq!(trainer.check(a, b).unwrap().is_ok(), expected, "{text:?}");
            if expected { taken += 1 } else { refused += 1 }
        }
        assert!(taken > 1000 && refused > 1000, "{taken} taken, {refused} refused");
    }

    #[test]
    fn given_words_become_one_token_or_are_refused() {
        let tok = gpt2();
        let mut trainer = Trainer::new(tok.clone(), &counts(&tok, &["tokenizers are nice"])).unwrap();
        let added = trainer.add_word("人工智能").unwrap();
        let WordOutcome::Added(id) = added else { panic!("{added:?}") };
        assert_eq!(trainer.add_word("人工智能").unwrap(), WordOutcome::Exists(id));
        assert_eq!(trainer.add_word(" the").unwrap(), WordOutcome::Exists(262));
        assert!(matches!(trainer.add_word("two words").unwrap(), WordOutcome::Refused(_)));
        let before = trainer.merges().len();
        // "tokenizers" is a protected piece: making it a token would change its ids.
        assert!(matches!(trainer.add_word("tokenizers").unwrap(), WordOutcome::Refused(_)));
        assert_eq!(trainer.merges().len(), before, "a refused word leaves no merges behind");
        let new = trainer.tokenizer().unwrap();
        assert_eq!(new.encode("人工智能", &SpecialPolicy::Allow, false).unwrap(), [id]);
        let old = "tokenizers are nice";
        assert_eq!(new.encode(old, &SpecialPolicy::Allow, false).unwrap(), tok.encode(old, &SpecialPolicy::Allow, false).unwrap());
    }
}
