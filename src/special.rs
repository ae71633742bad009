//! Added tokens: the vocabulary a user adds on top of the model, and the matcher that finds
//! them in text.
//!
//! Matching follows Hugging Face `tokenizers` (`AddedVocabulary`) exactly: tokens with
//! `normalized: false` are found in the raw text first, then the rest is normalized and
//! tokens with `normalized: true` are found in it; each pass finds the leftmost-longest
//! matches (an Aho-Corasick scan, or, where no token starts with an ASCII byte, lookups at
//! the places where one may start: see `Search`), with the `single_word`, `lstrip` and
//! `rstrip` flags applied to each match. The special-token policy (allow / text / raise / an allowed set) is decided in
//! the same pass, so untrusted text costs nothing extra.

use crate::error::{Error, Result};
use aho_corasick::{AhoCorasick, AhoCorasickKind, Anchored, Input, Match, MatchKind, StartKind};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddedToken {
    pub content: String,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub special: bool,
}

impl AddedToken {
    /// The reference's defaults: special tokens are not normalized, the others are.
    pub fn new(content: impl Into<String>, special: bool) -> Self {
        AddedToken {
            content: content.into(),
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: !special,
            special,
        }
    }
}

/// What to do with special tokens found in text. Non-special added tokens always match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SpecialPolicy {
    /// Special tokens in text become their ids (the reference behaviour).
    #[default]
    Allow,
    /// Special tokens in text are plain text (`encode_special_tokens = True` in the reference).
    Text,
    /// A special token in text is an error.
    Raise,
    /// Only these special tokens (by id) become ids; the others are plain text.
    Only(FxHashSet<u32>),
}

/// A piece of input after added-token matching.
pub enum Segment<'a> {
    Text(&'a str),
    /// An added token's id and the byte range of its match (with stripped spaces).
    Token(u32, usize, usize),
}

/// Byte ranges of the input (content spliced into a template) where special tokens are
/// text whatever the policy says.
#[derive(Debug, Clone, Copy)]
pub struct Protect<'a> {
    protected: Protected<'a>,
    /// Where the text being matched starts in the input.
    base: usize,
    /// For text whose positions do not map back to the input (it was normalized): the
    /// input range it came from, all of it protected if any of it is.
    whole: Option<(usize, usize)>,
}

/// Input byte ranges (sorted, not overlapping) where special tokens are plain text whatever
/// the policy, except the `allowed` ones: user content spliced into a template, where the
/// template's own markers must not be injected but a user's task tokens may be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Protected<'a> {
    pub ranges: &'a [(usize, usize)],
    pub allowed: Option<&'a FxHashSet<u32>>,
}

impl<'a> Protected<'a> {
    pub const NONE: Protected<'static> = Protected { ranges: &[], allowed: None };
}

impl<'a> Protect<'a> {
    pub fn exact(protected: Protected<'a>, base: usize) -> Self {
        Protect { protected, base, whole: None }
    }

    pub fn whole(protected: Protected<'a>, start: usize, end: usize) -> Self {
        Protect { protected, base: start, whole: Some((start, end)) }
    }

    fn covers(&self, start: usize, end: usize, id: u32) -> bool {
        let ranges = self.protected.ranges;
        if ranges.is_empty() || self.protected.allowed.is_some_and(|allowed| allowed.contains(&id)) {
            return false;
        }
        let (start, end) = self.whole.unwrap_or((self.base + start, self.base + end));
        // The first range ending after `start` is the only candidate for an overlap.
        let i = ranges.partition_point(|&(_, e)| e <= start);
        ranges.get(i).is_some_and(|&(s, _)| s < end)
    }
}

#[derive(Debug, Clone)]
struct Matcher {
    search: Search,
    ids: Vec<u32>,
    /// By pattern: whether its token is plain, neither special nor with a flag, so that a
    /// match of it is the token whatever the policy. Each match of 30,000 added Chinese
    /// words looked its token up in a `BTreeMap` and hashed its text to ask whether it was
    /// special: a third of an encode of Chinese text (Llama 3, perf).
    plain: Vec<bool>,
    /// Every token it finds is special: with `SpecialPolicy::Text` every match would be
    /// skipped, so the text is not searched at all (a Llama 3 encode with `special="text"`
    /// spent its time scanning for 256 tokens it then ignored).
    only_specials: bool,
}

#[derive(Debug, Clone)]
enum Search {
    /// Some token starts with an ASCII byte: the automaton's own search. For a few tokens
    /// such as `<|...|>` its prefilter, a `memchr`, is faster than the table scan below.
    Unanchored(AhoCorasick),
    /// No token starts with an ASCII byte. Then only the positions whose byte starts some
    /// token (`starts`, a table scan that skips ASCII runs and other scripts) and whose
    /// first bytes begin some token (`prefixes`) are searched, for the longest token that
    /// starts there: 30,000 added Chinese words cost English and code text 8-17% of their
    /// speed when the automaton scanned all of it for matches that cannot start there.
    AtStarts { starts: FirstBytes, prefixes: Option<Prefixes>, longest: Longest },
}

/// The longest token that starts at a position.
#[derive(Debug, Clone)]
enum Longest {
    /// Tokens of at most `LOOKUP_MAX` bytes: looked up by their lengths (`Lookups`).
    Lookups(Lookups),
    /// An anchored search of the automaton.
    Anchored(AhoCorasick),
}

/// Tokens up to this many bytes are found by `Lookups`.
const LOOKUP_MAX: usize = 63;

impl Matcher {
    /// `patterns`: each text to match, the id it is, and whether that token is plain.
    fn build(patterns: Vec<(String, u32, bool)>, only_specials: bool) -> Result<Option<Matcher>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let (mut texts, mut ids, mut plain) = (Vec::new(), Vec::new(), Vec::new());
        for (text, id, is_plain) in patterns {
            texts.push(text);
            ids.push(id);
            plain.push(is_plain);
        }
        // An empty token would match anywhere: it counts as an ASCII start.
        let no_ascii_start = texts.iter().all(|t| t.as_bytes().first().is_some_and(|b| !b.is_ascii()));
        let automaton = |start_kind| {
            // The DFA the builder picks for a few patterns is the fastest to search, but its
            // build is quadratic in a long pattern (one 32 KB token: 37 s): such sets get the
            // NFA, whose build is linear.
            let long = texts.iter().any(|t| t.len() > 512);
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .kind(long.then_some(AhoCorasickKind::ContiguousNFA))
                .start_kind(start_kind)
                .build(&texts)
                .map_err(|e| Error::Invalid(format!("cannot build the added-token matcher: {e}")))
        };
        let search = if no_ascii_start {
            let starts = FirstBytes::new(texts.iter().map(|t| t.as_bytes()[0]));
            let longest = match Lookups::new(&texts) {
                Some(lookups) => Longest::Lookups(lookups),
                None => Longest::Anchored(automaton(StartKind::Anchored)?),
            };
            Search::AtStarts { starts, prefixes: Prefixes::new(&texts), longest }
        } else {
            Search::Unanchored(automaton(StartKind::Unanchored)?)
        };
        Ok(Some(Matcher { search, ids, plain, only_specials }))
    }

    /// The leftmost-longest matches in `text`, left to right, as the automaton's `find_iter`
    /// gives them.
    fn matches<'t>(&'t self, text: &'t str) -> Matches<'t> {
        match &self.search {
            Search::Unanchored(automaton) => Matches::Unanchored(automaton.find_iter(text)),
            Search::AtStarts { starts, prefixes, longest } => {
                Matches::AtStarts { starts, prefixes: prefixes.as_ref(), longest, text, at: 0 }
            }
        }
    }
}

/// The first bytes of every token (as many as the shortest has, up to 8), hashed into a
/// bitmap small enough to stay in the L1 cache: where a position's bytes are not there, no
/// token starts at it, and nothing more is asked. By its first byte alone every char of
/// Chinese text may start one of 30,000 added Chinese words; by its first char, 62 k of
/// the 767 k chars of the Chinese handbook do.
#[derive(Debug, Clone)]
struct Prefixes {
    len: usize,
    bits: Box<[u64]>,
    shift: u32,
}

impl Prefixes {
    /// `None` where the shortest token has a single byte: its first byte says all.
    fn new(texts: &[String]) -> Option<Prefixes> {
        let len = texts.iter().map(String::len).min()?.min(8);
        if len < 2 {
            return None;
        }
        // 8 bits a token or more: at most 1 in 8 set, so a position that starts no token
        // is searched about 1 time in 8.
        let bits_log2 = (texts.len() * 8).next_power_of_two().trailing_zeros().clamp(12, 24);
        let mut prefixes = Prefixes { len, bits: vec![0; 1 << (bits_log2 - 6)].into_boxed_slice(), shift: 64 - bits_log2 };
        for text in texts {
            let bit = (word(&text.as_bytes()[..len]).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> prefixes.shift) as usize;
            prefixes.bits[bit / 64] |= 1 << (bit % 64);
        }
        Some(prefixes)
    }

    /// Whether some token may start at `bytes[at..]`: false only where none does.
    #[inline]
    fn may_start(&self, bytes: &[u8], at: usize) -> bool {
        let Some(first) = word_of(&bytes[at..], self.len) else { return false };
        let bit = (first.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        self.bits[bit / 64] >> (bit % 64) & 1 == 1
    }
}

/// Up to 8 bytes as a little-endian word, zero-padded.
#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// The first `len` (at most 8) of `bytes` as a `word`: one load and a mask where 8 bytes
/// are there (a copy of `len` bytes is a call to `memcpy`).
#[inline]
fn word_of(bytes: &[u8], len: usize) -> Option<u64> {
    debug_assert!((1..=8).contains(&len));
    match bytes.first_chunk::<8>() {
        Some(eight) => Some(u64::from_le_bytes(*eight) & (u64::MAX >> (64 - 8 * len))),
        None => bytes.get(..len).map(word),
    }
}

/// The longest token at a position by lookups, in tables small enough for the L2 cache:
/// for each length a token has, longest first, whether a token of that length begins
/// with the position's first bytes (`begins`, a bitmap), and if so whether the bytes of
/// that length are one (`tokens`). An anchored search of the automaton for each of 50,739
/// matches of 30,000 added Chinese words (and at 62 k more places where none starts) was
/// 35% of an encode of the Chinese handbook (Llama 3, perf), stepping through an NFA of
/// 74,434 states; maps keyed by the tokens' bytes (2.6 MB) missed the L2 cache at every
/// lookup.
#[derive(Debug, Clone)]
struct Lookups {
    /// Every length a token has, longest first.
    lengths: Vec<usize>,
    /// As many first bytes as the shortest token has, up to 8.
    first: usize,
    /// Bits of (first bytes, length) of every token.
    begins: Box<[u64]>,
    shift: u32,
    /// Every token, by the hash of its bytes (`token_hash`): its pattern, and where its
    /// bytes are in `bytes` (`Span`), so that checking one is one load more, not two.
    tokens: hashbrown::HashTable<(u32, Span)>,
    /// The tokens' bytes, one after another.
    bytes: Vec<u8>,
}

/// A token's bytes in `Lookups::bytes`: its start (26 bits) and its length (6 bits).
#[derive(Debug, Clone, Copy)]
struct Span(u32);

impl Span {
    fn of<'a>(self, bytes: &'a [u8]) -> &'a [u8] {
        let at = (self.0 >> 6) as usize;
        &bytes[at..at + (self.0 & 63) as usize]
    }
}

fn token_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

impl Lookups {
    /// `None` where a token is longer than `LOOKUP_MAX`.
    fn new(texts: &[String]) -> Option<Lookups> {
        let all_bytes: usize = texts.iter().map(String::len).sum();
        if texts.iter().any(|t| t.len() > LOOKUP_MAX) || all_bytes >= 1 << 26 {
            return None;
        }
        let first = texts.iter().map(String::len).min()?.min(8);
        let mut lengths: Vec<usize> = texts.iter().map(String::len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        // 16 bits a token or more: a length whose bit is set by chance sends about 1 in 16
        // positions to `tokens` for nothing.
        let bits_log2 = (texts.len() * 16).next_power_of_two().trailing_zeros().clamp(12, 26);
        let mut lookups = Lookups {
            lengths,
            first,
            begins: vec![0; 1 << (bits_log2 - 6)].into_boxed_slice(),
            shift: 64 - bits_log2,
            tokens: hashbrown::HashTable::with_capacity(texts.len()),
            bytes: Vec::with_capacity(all_bytes),
        };
        for (pattern, text) in texts.iter().enumerate() {
            let bytes = text.as_bytes();
            let bit = lookups.bit(word(&bytes[..first]), bytes.len());
            lookups.begins[bit / 64] |= 1 << (bit % 64);
            let span = Span((lookups.bytes.len() as u32) << 6 | bytes.len() as u32);
            lookups.bytes.extend_from_slice(bytes);
            let all = &lookups.bytes;
            lookups.tokens.insert_unique(token_hash(bytes), (pattern as u32, span), |(_, span)| token_hash(span.of(all)));
        }
        Some(lookups)
    }

    #[inline]
    fn bit(&self, first: u64, len: usize) -> usize {
        ((first ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The longest token at the start of `rest`: its pattern and length.
    #[inline]
    fn longest(&self, rest: &[u8]) -> Option<(u32, usize)> {
        let first = word_of(rest, self.first)?;
        for &len in self.lengths.iter().filter(|&&len| len <= rest.len()) {
            let bit = self.bit(first, len);
            if self.begins[bit / 64] >> (bit % 64) & 1 == 0 {
                continue;
            }
            let candidate = &rest[..len];
            if let Some(&(pattern, _)) = self.tokens.find(token_hash(candidate), |(_, span)| span.of(&self.bytes) == candidate) {
                return Some((pattern, len));
            }
        }
        None
    }
}

enum Matches<'t> {
    Unanchored(aho_corasick::FindIter<'t, 't>),
    AtStarts {
        starts: &'t FirstBytes,
        prefixes: Option<&'t Prefixes>,
        longest: &'t Longest,
        text: &'t str,
        at: usize,
    },
}

impl Iterator for Matches<'_> {
    type Item = Match;

    fn next(&mut self) -> Option<Match> {
        match self {
            Matches::Unanchored(matches) => matches.next(),
            Matches::AtStarts { starts, prefixes, longest, text, at } => loop {
                // The first match at or after a position is the longest token at the first
                // position where one starts.
                let bytes = text.as_bytes();
                *at = starts.next(bytes, *at)?;
                if prefixes.is_some_and(|p| !p.may_start(bytes, *at)) {
                    *at += 1;
                    continue;
                }
                let found = match longest {
                    Longest::Lookups(lookups) => {
                        lookups.longest(&bytes[*at..]).map(|(pattern, len)| Match::must(pattern as usize, *at..*at + len))
                    }
                    Longest::Anchored(automaton) => {
                        automaton.find(Input::new(*text).span(*at..text.len()).anchored(Anchored::Yes))
                    }
                };
                match found {
                    Some(m) => {
                        *at = m.end();
                        return Some(m);
                    }
                    None => *at += 1,
                }
            },
        }
    }
}

/// The bytes that tokens start with, none of them ASCII.
#[derive(Debug, Clone)]
struct FirstBytes {
    table: Box<[bool; 256]>,
    /// The lowest of them, and how far above it the highest is.
    low: u8,
    span: u8,
}

impl FirstBytes {
    fn new(bytes: impl Iterator<Item = u8>) -> FirstBytes {
        let mut table = Box::new([false; 256]);
        for b in bytes {
            table[b as usize] = true;
        }
        let low = table.iter().position(|&t| t).unwrap_or(255) as u8;
        let high = table.iter().rposition(|&t| t).unwrap_or(255) as u8;
        FirstBytes { table, low, span: high - low }
    }

    /// The first position from `at` whose byte starts some token. 16 bytes at a time
    /// are tested against the range of those bytes (a fold the compiler makes one
    /// compare of a vector), and only where one is in it against the table. Byte by byte,
    /// English and code text with 30,000 added Chinese words ran 13-18% slower than
    /// without them (whole texts, Llama 3); 8 bytes at a time and ASCII alone skipped,
    /// Russian still ran 13% slower (Cyrillic is no ASCII, and in no CJK range).
    #[inline]
    fn next(&self, bytes: &[u8], mut at: usize) -> Option<usize> {
        let (low, span) = (self.low, self.span);
        while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
            if chunk.iter().fold(false, |any, &b| any | (b.wrapping_sub(low) <= span)) {
                if let Some(i) = chunk.iter().position(|&b| self.table[b as usize]) {
                    return Some(at + i);
                }
            }
            at += 16;
        }
        bytes.get(at..)?.iter().position(|&b| self.table[b as usize]).map(|i| at + i)
    }
}

#[derive(Debug, Clone, Default)]
pub struct AddedVocabulary {
    tokens: BTreeMap<u32, AddedToken>,
    ids: FxHashMap<String, u32>,
    /// The normalized form of `normalized: true` tokens where it differs from the content:
    /// what they are matched as, and what `decode` shows.
    normalized_forms: FxHashMap<u32, String>,
    specials: FxHashSet<String>,
    /// More strings matched as an id whose own token is another string: tiktoken allows
    /// two special-token strings on one id (gpt-oss's o200k_harmony). The reference
    /// tokenizer.json semantics keep only the last token of an id, so only tiktoken
    /// encodings have aliases.
    aliases: Vec<(u32, AddedToken)>,
    /// Normalized tokens matched by their content as spelled (see `match_literally`).
    literal: std::collections::BTreeSet<u32>,
    raw: Option<Matcher>,
    normalized: Option<Matcher>,
}

/// `\w` as the `regex` crate defines it, which is what the reference tests here.
fn is_word_char(c: char) -> bool {
    use std::sync::OnceLock;
    static WORD: OnceLock<regex::Regex> = OnceLock::new();
    let mut buf = [0u8; 4];
    WORD.get_or_init(|| regex::Regex::new(r"^\w$").expect("valid pattern"))
        .is_match(c.encode_utf8(&mut buf))
}

impl AddedVocabulary {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether some token is matched in normalized text (`split_normalized`).
    pub fn matches_normalized(&self) -> bool {
        self.normalized.is_some()
    }

    pub fn tokens(&self) -> impl Iterator<Item = (u32, &AddedToken)> {
        self.tokens.iter().map(|(id, t)| (*id, t))
    }

    pub fn get(&self, id: u32) -> Option<&AddedToken> {
        self.tokens.get(&id)
    }

    pub fn id_of(&self, content: &str) -> Option<u32> {
        self.ids.get(content).copied()
    }

    pub fn is_special(&self, content: &str) -> bool {
        self.specials.contains(content)
    }

    pub fn max_id(&self) -> Option<u32> {
        self.tokens.keys().next_back().copied()
    }

    /// The string `decode` uses for an added token.
    pub fn decode_form(&self, id: u32) -> Option<&str> {
        self.normalized_forms
            .get(&id)
            .map(String::as_str)
            .or_else(|| self.tokens.get(&id).map(|t| t.content.as_str()))
    }

    /// Adds tokens as the reference does and returns each token's id (existing tokens keep
    /// theirs; a content that is in the model vocabulary takes the model's id; an empty
    /// content gets `None`). `model_id` looks a string up in the model vocabulary,
    /// `model_size` is its entry count, `normalize` is the tokenizer's normalizer.
    pub fn add(
        &mut self,
        tokens: Vec<AddedToken>,
        model_id: impl Fn(&str) -> Option<u32>,
        model_size: u32,
        normalize: impl Fn(&str) -> String,
    ) -> Result<Vec<Option<u32>>> {
        let mut next_id = match self.max_id() {
            Some(max) if max >= model_size || model_size == 0 => max + 1,
            _ => model_size,
        };
        let mut ids = Vec::with_capacity(tokens.len());
        for token in tokens {
            if token.content.is_empty() {
                ids.push(None);
                continue;
            }
            let id = match self.ids.get(&token.content).copied().or_else(|| model_id(&token.content)) {
                Some(id) => id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            if self.tokens.get(&id) == Some(&token) {
                ids.push(Some(id));
                continue;
            }
            if token.normalized && !self.literal.contains(&id) {
                let normalized = normalize(&token.content);
                if normalized != token.content {
                    self.normalized_forms.insert(id, normalized);
                }
            }
            if token.special {
                self.specials.insert(token.content.clone());
            }
            self.ids.insert(token.content.clone(), id);
            self.tokens.insert(id, token);
            ids.push(Some(id));
        }
        self.rebuild()?;
        Ok(ids)
    }

    /// Makes each token match as its id, which must be an added token's; the id keeps
    /// that token's decode form.
    pub fn add_aliases(&mut self, aliases: Vec<(u32, AddedToken)>) -> Result<()> {
        for (id, token) in aliases {
            if !self.tokens.contains_key(&id) {
                return Err(Error::Invalid(format!("alias {:?}: id {id} is not an added token", token.content)));
            }
            if self.ids.get(&token.content).is_some_and(|&other| other != id) {
                return Err(Error::Invalid(format!("alias {:?} is already another token", token.content)));
            }
            if token.special {
                self.specials.insert(token.content.clone());
            }
            self.ids.insert(token.content.clone(), id);
            self.aliases.push((id, token));
        }
        self.rebuild()
    }

    /// Makes these `normalized` tokens match their content as it is spelled, not its
    /// normalized form (SentencePiece's user-defined pieces).
    pub fn match_literally(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            match self.tokens.get(id) {
                Some(t) if t.normalized => {
                    self.normalized_forms.remove(id);
                    self.literal.insert(*id);
                }
                _ => return Err(Error::Invalid(format!("id {id} is not a normalized added token"))),
            }
        }
        self.rebuild()
    }

    pub fn literal(&self) -> impl Iterator<Item = u32> + '_ {
        self.literal.iter().copied()
    }

    pub fn aliases(&self) -> &[(u32, AddedToken)] {
        &self.aliases
    }

    fn rebuild(&mut self) -> Result<()> {
        // One pattern per match form. Where two tokens match the same text (two normalized
        // tokens with one normalized form), the reference picks either, by hash-map order
        // (it changes from run to run); here the one with the higher id, every time.
        let (mut raw, mut normalized) = (FxHashMap::default(), FxHashMap::default());
        for (id, token) in &self.aliases {
            raw.insert(token.content.clone(), *id);
        }
        for (&id, token) in &self.tokens {
            if token.normalized {
                let form = self.normalized_forms.get(&id).unwrap_or(&token.content);
                normalized.insert(form.clone(), id);
            } else {
                raw.insert(token.content.clone(), id);
            }
        }
        let only_specials = |patterns: &FxHashMap<String, u32>| {
            patterns.values().all(|id| self.tokens.get(id).is_none_or(|t| self.specials.contains(&t.content)))
        };
        let (raw_special, normalized_special) = (only_specials(&raw), only_specials(&normalized));
        let plain = |id: u32| {
            self.tokens.get(&id).is_some_and(|t| {
                !(self.specials.contains(&t.content) || t.single_word || t.lstrip || t.rstrip)
            })
        };
        let patterns = |map: FxHashMap<String, u32>| map.into_iter().map(|(text, id)| (text, id, plain(id))).collect();
        self.raw = Matcher::build(patterns(raw), raw_special)?;
        self.normalized = Matcher::build(patterns(normalized), normalized_special)?;
        Ok(())
    }

    /// Splits raw text around `normalized: false` tokens.
    pub fn split_raw(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protect: Protect,
        f: &mut dyn FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        self.split(self.raw.as_ref(), text, policy, protect, f)
    }

    /// Splits normalized text around `normalized: true` tokens.
    pub fn split_normalized(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protect: Protect,
        f: &mut dyn FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        self.split(self.normalized.as_ref(), text, policy, protect, f)
    }

    fn split(
        &self,
        matcher: Option<&Matcher>,
        text: &str,
        policy: &SpecialPolicy,
        protect: Protect,
        f: &mut dyn FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        let searched = matcher.filter(|m| !(m.only_specials && *policy == SpecialPolicy::Text));
        let Some(matcher) = searched else {
            return if text.is_empty() { Ok(()) } else { f(Segment::Text(text)) };
        };
        let mut done = 0; // end of the last emitted token
        for m in matcher.matches(text) {
            let (mut start, mut stop) = (m.start(), m.end());
            let id = matcher.ids[m.pattern().as_usize()];
            if matcher.plain[m.pattern().as_usize()] {
                if done < start {
                    f(Segment::Text(&text[done..start]))?;
                }
                if start < stop {
                    f(Segment::Token(id, start, stop))?;
                }
                done = stop;
                continue;
            }
            // An alias has no flags of its own: it matches as plainly as tiktoken matches it.
            let Some(token) = self.tokens.get(&id) else { continue };
            let special = self.specials.contains(&token.content);
            if special {
                match policy {
                    SpecialPolicy::Allow => {}
                    SpecialPolicy::Text => continue,
                    SpecialPolicy::Only(allowed) if !allowed.contains(&id) => continue,
                    SpecialPolicy::Only(_) => {}
                    SpecialPolicy::Raise => {}
                }
                if protect.covers(start, stop, id) {
                    continue;
                }
            }
            if token.single_word {
                let word_before = text[..start].chars().next_back().is_some_and(is_word_char);
                let word_after = text[stop..].chars().next().is_some_and(is_word_char);
                if word_before || word_after {
                    continue;
                }
            }
            if special && *policy == SpecialPolicy::Raise {
                return Err(Error::SpecialToken {
                    token: token.content.clone(),
                    offset: text[..start].chars().count(),
                });
            }
            if token.lstrip {
                let before = &text[..start];
                let spaces: usize = before
                    .chars()
                    .rev()
                    .take_while(|c| c.is_whitespace())
                    .map(char::len_utf8)
                    .sum();
                start = (start - spaces).max(done);
            }
            if token.rstrip {
                stop += text[stop..]
                    .chars()
                    .take_while(|c| c.is_whitespace())
                    .map(char::len_utf8)
                    .sum::<usize>();
            }
            if done < start {
                f(Segment::Text(&text[done..start]))?;
            }
            // lstrip can push `start` up to the end of the previous token's rstrip: such an
            // empty match is dropped, as the reference drops empty splits.
            if start < stop {
                f(Segment::Token(id, start, stop))?;
            }
            done = stop;
        }
        if done < text.len() {
            f(Segment::Text(&text[done..]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: Vec<AddedToken>) -> AddedVocabulary {
        let mut v = AddedVocabulary::default();
        v.add(tokens, |_| None, 100, |s| s.to_string()).unwrap();
        v
    }

    fn segments(v: &AddedVocabulary, text: &str, policy: &SpecialPolicy) -> Result<Vec<String>> {
        let mut out = Vec::new();
        v.split_raw(text, policy, Protect::exact(Protected::NONE, 0), &mut |s| {
            out.push(match s {
                Segment::Text(t) => t.to_string(),
                Segment::Token(id, _, _) => format!("#{id}"),
            });
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn text_policy_skips_the_search_only_when_every_token_is_special() {
        let specials = vocab(vec![AddedToken::new("<|a|>", true), AddedToken::new("<|b|>", true)]);
        assert!(specials.raw.as_ref().unwrap().only_specials);
        assert_eq!(segments(&specials, "x<|a|>y<|b|>", &SpecialPolicy::Text).unwrap(), ["x<|a|>y<|b|>"]);
        assert_eq!(segments(&specials, "x<|a|>y", &SpecialPolicy::Allow).unwrap(), ["x", "#100", "y"]);
        // A plain token among them is still found with special tokens as text.
        let mut mixed = specials.clone();
        let plain = AddedToken { normalized: false, ..AddedToken::new("<|p|>", false) };
        mixed.add(vec![plain], |_| None, 102, |s| s.to_string()).unwrap();
        assert!(!mixed.raw.as_ref().unwrap().only_specials);
        assert_eq!(segments(&mixed, "x<|a|>y<|p|>", &SpecialPolicy::Text).unwrap(), ["x<|a|>y", "#102"]);
    }

    #[test]
    fn tokens_that_start_outside_ascii_are_not_searched_for_in_ascii_text() {
        let raw = |content: &str| AddedToken { normalized: false, ..AddedToken::new(content, false) };
        let v = vocab(vec![raw("数据"), raw("é!"), raw("数据集"), raw("据集合")]);
        assert!(matches!(v.raw.as_ref().unwrap().search, Search::AtStarts { longest: Longest::Lookups(_), .. }));
        assert_eq!(segments(&v, "data, 数据!", &SpecialPolicy::Allow).unwrap(), ["data, ", "#100", "!"]);
        assert_eq!(segments(&v, "café!é", &SpecialPolicy::Allow).unwrap(), ["caf", "#101", "é"]);
        assert_eq!(segments(&v, "data", &SpecialPolicy::Allow).unwrap(), ["data"]);
        // The lookups and the anchored steps find what the plain search finds: leftmost
        // first, then longest, the next search after the match. A token over `LOOKUP_MAX`
        // bytes takes the anchored steps.
        let long = "据集".repeat(11); // 66 bytes
        let sets = [vec!["数据", "é!", "数据集", "据集合"], vec!["数据", "é!", "数据集", "据集合", long.as_str()], vec!["据", "数据集合", "é数据", "数据集合é!!", "集合é数据集合é!!", "集合é数据集合é!!!"]];
        for (set, anchored) in sets.iter().zip([false, true, false]) {
            let v = vocab(set.iter().map(|&t| raw(t)).collect());
            let matcher = v.raw.as_ref().unwrap();
            let Search::AtStarts { longest, .. } = &matcher.search else { panic!("no ASCII start: {set:?}") };
            assert_eq!(matches!(longest, Longest::Anchored(_)), anchored);
            let plain = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(set).unwrap();
            let mut state = 3u32;
            for len in 0..300 {
                let text: String = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        ['数', '据', '集', '合', 'é', '!', 'a', ' '][(state >> 16) as usize % 8]
                    })
                    .collect();
                // Long runs of the long token's two chars, so that it matches now and then.
                let text = if len % 3 == 0 { text.replace('a', &long[..long.len() - 3 * (len % 4)]) } else { text };
                let spans = |ms: Vec<Match>| ms.iter().map(|m| (m.start(), m.end())).collect::<Vec<_>>();
                assert_eq!(spans(matcher.matches(&text).collect()), spans(plain.find_iter(&text).collect()), "{text}");
            }
        }
        let v = vocab(vec![raw("数据"), AddedToken::new("<x>", true)]);
        assert!(matches!(v.raw.as_ref().unwrap().search, Search::Unanchored(_)));
        assert_eq!(segments(&v, "a<x>", &SpecialPolicy::Allow).unwrap(), ["a", "#101"]);
    }

    #[test]
    fn longest_match_wins_and_policies_apply() {
        let v = vocab(vec![AddedToken::new("<|a|>", true), AddedToken::new("<|a|><|b|>", true)]);
        assert_eq!(segments(&v, "x<|a|><|b|>y", &SpecialPolicy::Allow).unwrap(), ["x", "#101", "y"]);
        assert_eq!(segments(&v, "x<|a|>", &SpecialPolicy::Text).unwrap(), ["x<|a|>"]);
        assert_eq!(
            segments(&v, "é<|a|>", &SpecialPolicy::Raise),
            Err(Error::SpecialToken { token: "<|a|>".into(), offset: 1 })
        );
    }

    #[test]
    fn strip_flags_take_whitespace_and_single_word_needs_boundaries() {
        let mut t = AddedToken::new("<m>", true);
        t.lstrip = true;
        t.rstrip = true;
        let mut w = AddedToken::new("cat", true);
        w.single_word = true;
        let v = vocab(vec![t, w]);
        assert_eq!(segments(&v, "a  <m>  b", &SpecialPolicy::Allow).unwrap(), ["a", "#100", "b"]);
        assert_eq!(segments(&v, "cats cat", &SpecialPolicy::Allow).unwrap(), ["cats ", "#101"]);
    }

    #[test]
    fn a_match_swallowed_by_the_previous_rstrip_is_dropped() {
        let mut space = AddedToken::new(" ", false);
        space.lstrip = true;
        space.rstrip = true;
        space.normalized = false;
        let v = vocab(vec![space]);
        assert_eq!(segments(&v, "  ", &SpecialPolicy::Allow).unwrap(), ["#100"]);
        assert_eq!(segments(&v, "a  b", &SpecialPolicy::Allow).unwrap(), ["a", "#100", "b"]);
    }
}
