//! BPE merging, byte-level and SentencePiece-style.
//!
//! The model is a table from an adjacent pair of token ids to (rank, merged id). A piece
//! starts as one symbol per byte (byte-level vocabularies) or per char (SentencePiece-style
//! vocabularies: a char missing from the vocabulary becomes its `<0xXX>` byte tokens with
//! `byte_fallback`, else the unknown token), and the lowest-ranked adjacent pair is merged
//! until none is left (leftmost first on ties), exactly as Hugging Face `tokenizers`,
//! tiktoken and sentencepiece do.
//!
//! Performance decisions:
//! - Short pieces (nearly all of them) merge in flat arrays on the stack with one cached
//!   rank per adjacent pair: O(n) per merge, no allocation. A byte alphabet's first ranks
//!   come from a dense table of every byte pair.
//! - Long pieces (from `LONG_MIN` bytes) go to a linear-time encoder (`backtrack`), whose
//!   tables are built on the first one: 10 MB of one letter or of one whitespace run
//!   took 10-25x the per-byte time of English through the heap.
//! - Other pieces over `FLAT_MAX` use a heap over a linked list: O(n log n), so a long
//!   piece the linear encoder cannot take (a SentencePiece char outside the vocabulary)
//!   is bounded too (the flat loop would be quadratic). Its memory is 24 bytes per
//!   symbol (id, two u32 links, a 12-byte heap entry), reserved up front: a piece too
//!   long for the memory left is an `Error::Memory`, not an abort.
//! - `ignore_merges` vocabularies (Llama 3, cl100k, o200k) look a whole piece up first.
//! - Results for short pieces are kept in a per-thread cache: text repeats its words
//!   (`cache`, whose comment says what the profile showed).
//! - A caller encoding many pieces takes the cache once (`Bpe::with_cache`), not per piece.

mod backtrack;
mod build_trees;
pub(crate) mod cache;
mod cuts;
mod trie;

use crate::error::{Error, Result};
use crate::normalize;
use backtrack::LongPieces;
use cache::{Key, ModelCache, PieceCache};
use cuts::ByteCuts;
use rustc_hash::{FxHashMap, FxHashSet};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub const NO_ID: u32 = u32::MAX;
const NO_RANK: u32 = u32::MAX;
/// Pieces up to this many bytes merge in the flat loop.
const FLAT_MAX: usize = 128;
/// Byte-alphabet pieces from this many bytes on go to the backtracking encoder
/// (`backtrack`), whose tables are built the first time one comes.
const LONG_MIN: usize = 256;

/// Every way of writing a token of a rank table as two tokens: (rank of the whole, left
/// rank, right rank), sorted. These are the merges a rank table implies.
pub fn rank_splits(ranks: &[(Vec<u8>, u32)]) -> Vec<(u32, u32, u32)> {
    let by_bytes: FxHashMap<&[u8], u32> = ranks.iter().map(|(b, r)| (b.as_slice(), *r)).collect();
    // Both parts are tokens, so only cuts at a token length are tried: a long token costs
    // its length times the few lengths there are, not its length squared (one 1 MB token
    // took minutes to load).
    let lengths: FxHashSet<usize> = ranks.iter().map(|(b, _)| b.len()).collect();
    let mut sorted: Vec<usize> = lengths.iter().copied().filter(|&n| n > 0).collect();
    sorted.sort_unstable();
    let mut splits = Vec::new();
    for (bytes, rank) in ranks {
        for &at in sorted.iter().take_while(|&&at| at < bytes.len()) {
            if !lengths.contains(&(bytes.len() - at)) {
                continue;
            }
            if let (Some(&l), Some(&r)) = (by_bytes.get(&bytes[..at]), by_bytes.get(&bytes[at..])) {
                splits.push((*rank, l, r));
            }
        }
    }
    splits.sort_unstable();
    splits
}

/// How a SentencePiece-style piece becomes its first symbols, as the reference's BPE model
/// does it (`continuing_subword_prefix` / `end_of_word_suffix` spell a char inside / at the
/// end of a piece; both are usually absent).
#[derive(Debug, Clone, Default)]
pub struct CharSymbols {
    /// The id of each char as a token, by position: [plain, inside (prefixed), last
    /// (suffixed), inside and last].
    pub forms: [FxHashMap<char, u32>; 4],
    pub has_prefix: bool,
    pub has_suffix: bool,
    /// The `<0xXX>` token of each byte (`NO_ID` where missing), with `byte_fallback`.
    pub byte_fallback: Option<Box<[u32; 256]>>,
    pub unk: Option<u32>,
    pub fuse_unk: bool,
    /// Where text may be cut between two chars (see `PieceEncoder::encode_words`); `None`:
    /// never cut.
    pub word_cuts: Option<WordCuts>,
}

/// Between which two adjacent chars a text of a chars alphabet may be cut: where no token
/// holds the pair and one of the two chars has a token (runs of unknown chars fuse into
/// one unknown token, so they are never cut).
#[derive(Debug, Clone)]
pub struct WordCuts {
    /// Every pair of adjacent chars inside some token (`char << 32 | char`).
    pairs: FxHashSet<u64>,
    /// The dense index in `table` of each char of two bytes (U+0080-U+07FF) with a token,
    /// by code point from 0x80; `NOT_DENSE` for the others.
    two_byte: Box<[u16]>,
    /// One row of bits per dense char (ASCII as itself, `▁` as 128, then the chars of
    /// `two_byte`): whether the text may be cut between it and each dense char. The text
    /// of SentencePiece-style vocabularies is mostly those chars, and two or three hash
    /// lookups per char were a quarter of an encode of English (Llama 2), and of Russian
    /// before the Latin, Greek and Cyrillic chars were in the table (callgrind).
    table: Box<[u64]>,
    row_words: usize,
    /// `table`'s rows and columns of ASCII alone, for the loop over a run of ASCII in
    /// `encode_words`: indexed by two bytes below 128, without a bounds check.
    ascii: Box<[[u64; 2]; 128]>,
    /// `ascii` with a space read as `▁` (its row and column are `▁`'s), for text whose
    /// spaces stand for `▁` (`PieceEncoder::encode_spaced`).
    ascii_spaced: Box<[[u64; 2]; 128]>,
    /// The char of each dense index.
    chars: Box<[char]>,
    /// By code point below U+10000: whether the char has a token (`KNOWN`), is the first
    /// char of a pair in `pairs` (`LEFT`) and the second (`RIGHT`). Chars outside the dense
    /// table (CJK, most of all) were two hash lookups a char, in `known` and `pairs`; with
    /// this table they are one load, and `pairs` is asked only where both chars are in some
    /// pair on that side (Llama 2 has 20 pairs of CJK chars).
    bmp: Box<[u8]>,
}

const KNOWN: u8 = 1;
const LEFT: u8 = 2;
const RIGHT: u8 = 4;

const NOT_DENSE: u16 = u16::MAX;

/// A char as `WordCuts` reads it: its dense index, or the char itself (with `NOT_IN_TABLE`)
/// for a char outside the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CutChar(u32);

const NOT_IN_TABLE: u32 = 1 << 31;

impl WordCuts {
    const SPACE: char = '\u{2581}';

    /// `tokens`: the vocabulary's strings; `known`: the chars with a token.
    pub fn new<'a>(tokens: impl IntoIterator<Item = &'a str>, known: &FxHashMap<char, u32>) -> Self {
        let mut pairs = FxHashSet::default();
        for token in tokens {
            pairs.extend(token.chars().zip(token.chars().skip(1)).map(|(a, b)| Self::key(a, b)));
        }
        let mut chars: Vec<char> = (0..128u8).map(char::from).chain([Self::SPACE]).collect();
        let mut two_byte = vec![NOT_DENSE; 0x800 - 0x80].into_boxed_slice();
        let mut two_byte_known: Vec<char> = known.keys().copied().filter(|&c| (0x80..0x800).contains(&u32::from(c))).collect();
        two_byte_known.sort_unstable();
        for c in two_byte_known {
            two_byte[u32::from(c) as usize - 0x80] = chars.len() as u16;
            chars.push(c);
        }
        // The rule of `decide`, row by row: a row of a char with a token cuts everywhere, the
        // row of one without cuts before the chars with a token; then no cut inside a pair.
        let row_words = chars.len().div_ceil(64);
        let mut with_token = vec![0u64; row_words];
        for (j, c) in chars.iter().enumerate() {
            if known.contains_key(c) {
                with_token[j / 64] |= 1 << (j % 64);
            }
        }
        let mut table = vec![0u64; chars.len() * row_words].into_boxed_slice();
        for (i, a) in chars.iter().enumerate() {
            let row = &mut table[i * row_words..(i + 1) * row_words];
            if known.contains_key(a) {
                row.fill(!0);
            } else {
                row.copy_from_slice(&with_token);
            }
        }
        let (ascii, ascii_spaced) = (Box::new([[0; 2]; 128]), Box::new([[0; 2]; 128]));
        let mut bmp = vec![0u8; 0x10000].into_boxed_slice();
        let mut flag = |c: u32, bit: u8| {
            if let Some(at) = bmp.get_mut(c as usize) {
                *at |= bit;
            }
        };
        for &key in &pairs {
            flag((key >> 32) as u32, LEFT);
            flag(key as u32, RIGHT);
        }
        for &c in known.keys() {
            flag(u32::from(c), KNOWN);
        }
        let chars = chars.into_boxed_slice();
        let mut cuts = WordCuts { pairs, two_byte, table, row_words, ascii, ascii_spaced, chars, bmp };
        for &key in &cuts.pairs {
            let (a, b) = ((key >> 32) as u32, key as u32);
            let dense = |cp: u32| char::from_u32(cp).and_then(|c| cuts.dense(c));
            if let (Some(i), Some(j)) = (dense(a), dense(b)) {
                cuts.table[i * row_words + j / 64] &= !(1 << (j % 64));
            }
        }
        for (i, row) in cuts.ascii.iter_mut().enumerate() {
            row.copy_from_slice(&cuts.table[i * row_words..i * row_words + 2]);
        }
        for i in 0..128 {
            for j in 0..128 {
                let (a, b) = (Self::marked(CutChar(i as u32)), Self::marked(CutChar(j as u32)));
                if cuts.cut_between(a, b, known) {
                    cuts.ascii_spaced[i][j / 64] |= 1 << (j % 64);
                }
            }
        }
        cuts
    }

    /// `c`, a space read as `▁`.
    #[inline(always)]
    fn marked(c: CutChar) -> CutChar {
        if c.0 == u32::from(b' ') {
            CutChar(128)
        } else {
            c
        }
    }

    fn key(a: char, b: char) -> u64 {
        (u64::from(u32::from(a)) << 32) | u64::from(u32::from(b))
    }

    fn decide(pairs: &FxHashSet<u64>, known: &FxHashMap<char, u32>, a: char, b: char) -> bool {
        !pairs.contains(&Self::key(a, b))
            && (known.contains_key(&a) || known.contains_key(&b))
    }

    /// `c`'s index in `table`, if it has one.
    fn dense(&self, c: char) -> Option<usize> {
        let (read, _) = self.read(c.encode_utf8(&mut [0; 4]).as_bytes())?;
        (read.0 & NOT_IN_TABLE == 0).then_some(read.0 as usize)
    }

    /// The char at the start of `bytes` and its length; `None` for bytes that are no UTF-8.
    /// ASCII, chars of two bytes and `▁` are read from their bytes straight to their dense
    /// index: decoding each char and looking it up was 46 instructions a char of Russian
    /// (Llama 2, callgrind).
    #[inline(always)]
    fn read(&self, bytes: &[u8]) -> Option<(CutChar, usize)> {
        let b0 = *bytes.first()?;
        if b0 < 0x80 {
            return Some((CutChar(u32::from(b0)), 1));
        }
        if let (0xC2..=0xDF, Some(&b1)) = (b0, bytes.get(1)) {
            if b1 & 0xC0 != 0x80 {
                return None;
            }
            let cp = (u32::from(b0 & 0x1F) << 6) | u32::from(b1 & 0x3F);
            let i = self.two_byte[cp as usize - 0x80];
            return Some((CutChar(if i == NOT_DENSE { cp | NOT_IN_TABLE } else { u32::from(i) }), 2));
        }
        if bytes.starts_with("\u{2581}".as_bytes()) {
            return Some((CutChar(128), 3));
        }
        let (c, len) = decode_char(bytes)?;
        Some((CutChar(u32::from(c) | NOT_IN_TABLE), len))
    }

    /// Whether the text may be cut between `a` and `b`.
    #[inline(always)]
    fn cut_between(&self, a: CutChar, b: CutChar, known: &FxHashMap<char, u32>) -> bool {
        if (a.0 | b.0) & NOT_IN_TABLE == 0 {
            let (i, j) = (a.0 as usize, b.0 as usize);
            return self.table[i * self.row_words + j / 64] >> (j % 64) & 1 == 1;
        }
        let char_of = |c: CutChar| match c.0 & NOT_IN_TABLE {
            0 => self.chars[c.0 as usize],
            _ => char::from_u32(c.0 & !NOT_IN_TABLE).expect("read from UTF-8"),
        };
        let (a, b) = (char_of(a), char_of(b));
        match (self.bmp.get(u32::from(a) as usize), self.bmp.get(u32::from(b) as usize)) {
            (Some(&a_is), Some(&b_is)) => {
                (a_is | b_is) & KNOWN != 0 && (a_is & LEFT == 0 || b_is & RIGHT == 0 || !self.pairs.contains(&Self::key(a, b)))
            }
            _ => Self::decide(&self.pairs, known, a, b),
        }
    }

    /// Whether the text may be cut between `a` and `b`.
    #[cfg(test)]
    fn cut(&self, a: char, b: char, known: &FxHashMap<char, u32>) -> bool {
        let read = |c: char| self.read(c.encode_utf8(&mut [0; 4]).as_bytes()).expect("a char").0;
        self.cut_between(read(a), read(b), known)
    }
}

impl CharSymbols {
    /// Appends the symbols of `piece` and, if asked, how many bytes of it each stands for
    /// (what the reference's offsets add up).
    fn symbols(&self, piece: &str, ids: &mut Vec<u32>, mut lens: Option<&mut Vec<u32>>) {
        let mut push = |id: u32, len: usize, lens: &mut Option<&mut Vec<u32>>| {
            ids.push(id);
            if let Some(l) = lens.as_mut() {
                l.push(len as u32);
            }
        };
        // A pending unknown token: the bytes it stands for, fused over a run with fuse_unk.
        let mut unk: Option<usize> = None;
        let mut chars = piece.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            let is_last = chars.peek().is_none();
            let form = usize::from(at > 0 && self.has_prefix) | (usize::from(is_last && self.has_suffix) << 1);
            if let Some(&id) = self.forms[form].get(&c) {
                if let (Some(len), Some(unk_id)) = (unk.take(), self.unk) {
                    push(unk_id, len, &mut lens);
                }
                push(id, c.len_utf8(), &mut lens);
                continue;
            }
            if let Some(fallback) = &self.byte_fallback {
                let mut buf = [0u8; 4];
                let bytes = c.encode_utf8(&mut buf).as_bytes();
                if bytes.iter().all(|&b| fallback[b as usize] != NO_ID) {
                    // As the reference: a pending unknown token is not flushed here.
                    for &b in bytes.iter() {
                        push(fallback[b as usize], 1, &mut lens);
                    }
                    continue;
                }
            }
            if let Some(unk_id) = self.unk {
                unk = match unk {
                    Some(len) if self.fuse_unk => Some(len + c.len_utf8()),
                    Some(len) => {
                        push(unk_id, len, &mut lens);
                        Some(c.len_utf8())
                    }
                    None => Some(c.len_utf8()),
                };
            }
        }
        if let (Some(len), Some(unk_id)) = (unk, self.unk) {
            push(unk_id, len, &mut lens);
        }
    }
}

/// The first symbols of a piece.
#[derive(Debug, Clone)]
pub enum Alphabet {
    /// One symbol per byte: the id of each byte's token (`NO_ID` where missing).
    Bytes(Box<[u32; 256]>),
    Chars(Box<CharSymbols>),
}

#[derive(Debug, Clone)]
pub struct Bpe {
    alphabet: Alphabet,
    /// Byte length of each token, by id (0 for ids that are not byte strings).
    lens: Vec<u32>,
    /// (left << 32 | right) -> (rank << 32 | merged)
    pairs: FxHashMap<u64, u64>,
    /// Whole-piece lookup for `ignore_merges` vocabularies.
    whole: Option<WholeTokens>,
    /// By id: whether the token is in some pair. One that is not never merges, so the
    /// symbols on either side of it merge independently.
    paired: Vec<bool>,
    /// Byte alphabets: the pair lookup of every two bytes' tokens (`first << 8 | second`),
    /// as `pairs` values (`u64::MAX`: none). A piece's first lookups are all byte pairs:
    /// here they are one read of a 512 kB table, not a probe of a table of megabytes.
    byte_pairs: Box<[u64]>,
    cache_owner: u64,
    /// The linear-time encoder's tables, built on the first long piece (`None` inside:
    /// this vocabulary keeps the heap).
    long_pieces: OnceLock<Option<Arc<LongPieces>>>,
    /// Where pieces of a byte alphabet may be cut before merging (`cuts`), worked out on
    /// the first piece that needs them.
    cuts: OnceLock<Option<Arc<ByteCuts>>>,
    /// The tokens the piece cache is given ahead (`prefill_tokens`), worked out on the
    /// first prefill.
    prefill: OnceLock<Box<[(Key, u32)]>>,
}

/// Every token by its bytes. A piece the cache has not seen is looked up here first, and
/// with boxed keys that lookup was 40% of a cache miss (Llama 3, English fortunes: hashing,
/// a pointer to follow, a `memcmp` call); short tokens, nearly all, are their own keys.
#[derive(Debug, Clone, Default)]
struct WholeTokens {
    short: FxHashMap<Key, u32>,
    long: FxHashMap<Box<[u8]>, u32>,
}

impl WholeTokens {
    fn insert(&mut self, bytes: &[u8], id: u32) {
        if bytes.len() <= cache::SHORT_MAX {
            self.short.insert(Key::new(bytes), id);
        } else {
            self.long.insert(bytes.into(), id);
        }
    }

    #[inline]
    fn get(&self, piece: &[u8]) -> Option<u32> {
        if piece.len() <= cache::SHORT_MAX {
            self.short.get(&Key::new(piece)).copied()
        } else {
            self.long.get(piece).copied()
        }
    }
}

fn next_cache_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static CACHE: RefCell<PieceCache> = RefCell::new(PieceCache::default());
}

/// A model with this thread's piece cache in hand: what encodes the pieces of a text.
pub struct PieceEncoder<'a> {
    bpe: &'a Bpe,
    /// `None` when the cache is in use further up this thread's stack.
    cache: Option<ModelCache<'a>>,
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

impl Bpe {
    /// `tokens`: the raw bytes of every vocabulary entry that is a byte string.
    /// `merges`: (left, right, merged) ids, in rank order (a later duplicate pair wins,
    /// as in the reference).
    pub fn new<'a>(
        tokens: impl IntoIterator<Item = (&'a [u8], u32)>,
        merges: impl IntoIterator<Item = (u32, u32, u32)>,
        ignore_merges: bool,
    ) -> Self {
        Self::with_alphabet(tokens, merges, ignore_merges, None)
    }

    /// Like `new`, with the first symbols given by `chars` instead of by bytes (then
    /// `tokens` are the UTF-8 bytes of every vocabulary string).
    pub fn with_alphabet<'a>(
        tokens: impl IntoIterator<Item = (&'a [u8], u32)>,
        merges: impl IntoIterator<Item = (u32, u32, u32)>,
        ignore_merges: bool,
        chars: Option<CharSymbols>,
    ) -> Self {
        let mut byte_ids = [NO_ID; 256];
        let mut whole = ignore_merges.then(WholeTokens::default);
        let mut lens = Vec::new();
        for (bytes, id) in tokens {
            if lens.len() <= id as usize {
                lens.resize(id as usize + 1, 0);
            }
            lens[id as usize] = bytes.len() as u32;
            if let [b] = bytes {
                byte_ids[*b as usize] = id;
            }
            if let Some(whole) = whole.as_mut() {
                whole.insert(bytes, id);
            }
        }
        let mut pairs = FxHashMap::default();
        for (rank, (left, right, merged)) in merges.into_iter().enumerate() {
            pairs.insert(pair_key(left, right), ((rank as u64) << 32) | u64::from(merged));
        }
        let alphabet = match chars {
            Some(chars) => Alphabet::Chars(Box::new(chars)),
            None => Alphabet::Bytes(Box::new(byte_ids)),
        };
        let mut bpe = Bpe {
            alphabet,
            lens,
            pairs,
            whole,
            paired: Vec::new(),
            byte_pairs: Box::default(),
            cache_owner: next_cache_owner(),
            long_pieces: OnceLock::new(),
            cuts: OnceLock::new(),
            prefill: OnceLock::new(),
        };
        bpe.index_pairs();
        bpe
    }

    fn index_pairs(&mut self) {
        let mut paired = vec![false; self.lens.len()];
        for &key in self.pairs.keys() {
            for id in [(key >> 32) as usize, key as u32 as usize] {
                if paired.len() <= id {
                    paired.resize(id + 1, false);
                }
                paired[id] = true;
            }
        }
        self.paired = paired;
        if let Alphabet::Bytes(byte_ids) = &self.alphabet {
            let mut table = vec![u64::MAX; 1 << 16];
            for (a, &left) in byte_ids.iter().enumerate() {
                for (b, &right) in byte_ids.iter().enumerate() {
                    if let Some(&v) = self.pairs.get(&pair_key(left, right)) {
                        table[a << 8 | b] = v;
                    }
                }
            }
            self.byte_pairs = table.into_boxed_slice();
        }
    }

    #[inline]
    fn is_paired(&self, id: u32) -> bool {
        self.paired.get(id as usize).copied().unwrap_or(false)
    }

    pub fn alphabet(&self) -> &Alphabet {
        &self.alphabet
    }

    /// How many bytes of text the token `id` stands for.
    pub fn token_len(&self, id: u32) -> usize {
        self.lens.get(id as usize).map_or(0, |&n| n as usize)
    }

    /// A chars-alphabet BPE whose pairs carry their own ranks: (left, right, merged, rank).
    /// Equal ranks tie leftmost, as SentencePiece's merge by piece score does (its
    /// whitespace-run pieces all share one score, so no order of merges can say this).
    pub fn with_ranked_pairs<'a>(
        tokens: impl IntoIterator<Item = (&'a [u8], u32)>,
        pairs: impl IntoIterator<Item = (u32, u32, u32, u32)>,
        chars: CharSymbols,
    ) -> Self {
        let mut bpe = Self::with_alphabet(tokens, std::iter::empty(), false, Some(chars));
        for (left, right, merged, rank) in pairs {
            bpe.pairs.insert(pair_key(left, right), (u64::from(rank) << 32) | u64::from(merged));
        }
        bpe.index_pairs();
        bpe
    }

    /// Like `new`, for tiktoken rank files, where any two tokens whose concatenation is a
    /// token merge with that token's rank.
    pub fn from_ranks(ranks: &[(Vec<u8>, u32)]) -> Self {
        let mut bpe = Bpe::new(ranks.iter().map(|(b, r)| (b.as_slice(), *r)), std::iter::empty(), true);
        for (rank, left, right) in rank_splits(ranks) {
            bpe.pairs.insert(pair_key(left, right), (u64::from(rank) << 32) | u64::from(rank));
        }
        bpe.index_pairs();
        bpe
    }

    #[inline]
    fn lookup(&self, left: u32, right: u32) -> (u32, u32) {
        match self.pairs.get(&pair_key(left, right)) {
            Some(&v) => ((v >> 32) as u32, v as u32),
            None => (NO_RANK, NO_ID),
        }
    }

    /// The merge of two adjacent tokens, if any: (rank, merged id).
    pub fn merge_of(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let (rank, merged) = self.lookup(left, right);
        (merged != NO_ID).then_some((rank, merged))
    }

    /// Runs `f` with an encoder holding this thread's piece cache.
    pub fn with_cache<R>(&self, f: impl FnOnce(&mut PieceEncoder) -> R) -> R {
        self.with_caches(None, f)
    }

    /// `with_cache`, with the cache of text segments where `pre_tokenizer` is given: the
    /// `PreTokenizer::id` of what cuts the segments into pieces.
    pub fn with_caches<R>(&self, pre_tokenizer: Option<u64>, f: impl FnOnce(&mut PieceEncoder) -> R) -> R {
        CACHE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut cache) => {
                let mut cache = cache.for_model(self.cache_owner, pre_tokenizer);
                if matches!(self.alphabet, Alphabet::Bytes(_)) && cache.prefill_due(self.lens.len()) {
                    cache.prefill(self.prefill_tokens().iter().map(|(key, id)| (key, *id)));
                }
                f(&mut PieceEncoder { bpe: self, cache: Some(cache) })
            }
            Err(_) => f(&mut PieceEncoder { bpe: self, cache: None }),
        })
    }

    /// The tokens the piece cache may be given ahead (`ModelCache::prefill`), the ones to
    /// keep where a set is full last: short pieces that encode to one token. With a byte
    /// alphabet, those are
    /// - for an `ignore_merges` vocabulary, every short token, by id from the highest (a
    ///   piece that is a token encodes to it). This holds while everything that keeps a
    ///   piece under the model's own tag looks the whole piece up first
    ///   (`PieceEncoder::encode_new`, `encode_uncached`): a part's ids that merges alone
    ///   make (`encode_part`) must never be kept under it;
    /// - otherwise, the short tokens that merges make of their own bytes
    ///   (`build_trees::self_encoding_short_tokens`): merges may make other tokens of a
    ///   token's bytes (though every short token of GPT-2 and Qwen2 encodes to itself).
    ///
    /// With chars, none.
    fn prefill_tokens(&self) -> &[(Key, u32)] {
        self.prefill.get_or_init(|| match (&self.alphabet, &self.whole) {
            (Alphabet::Bytes(_), Some(whole)) => {
                // Placed by id, not sorted: a sort of Llama 3's took 2-3 ms more.
                let mut by_id = vec![None; self.lens.len()];
                for (key, &id) in &whole.short {
                    by_id[id as usize] = Some(*key);
                }
                by_id.iter().enumerate().rev().filter_map(|(id, key)| Some(((*key)?, id as u32))).collect()
            }
            (Alphabet::Bytes(_), None) => build_trees::self_encoding_short_tokens(self).into(),
            (Alphabet::Chars(_), _) => Box::default(),
        })
    }

    /// Appends the ids of one pre-tokenized piece (`with_cache` for many).
    pub fn encode(&self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        self.with_cache(|encoder| encoder.encode(piece, out))
    }

    /// The token that is the whole piece, for `ignore_merges` vocabularies.
    #[inline]
    fn whole_id(&self, piece: &[u8]) -> Option<u32> {
        self.whole.as_ref().and_then(|w| w.get(piece))
    }

    /// One piece, not from the cache.
    fn encode_uncached(&self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        match self.whole_id(piece) {
            Some(id) => {
                out.push(id);
                Ok(())
            }
            None => self.merge(piece, out),
        }
    }

    /// The first symbols of a piece, and how many bytes each stands for if asked.
    fn symbols(&self, piece: &[u8], lens: Option<&mut Vec<u32>>) -> Result<Vec<u32>> {
        // At most one symbol per byte (a char's fallback bytes included).
        let mut ids = Vec::new();
        Error::reserve(&mut ids, piece.len(), "the symbols of one piece")?;
        let mut lens = lens;
        if let Some(l) = lens.as_mut() {
            Error::reserve(l, piece.len(), "the symbol lengths of one piece")?;
        }
        match &self.alphabet {
            Alphabet::Bytes(byte_ids) => {
                // A byte without a token is dropped, as the reference does when there is no unk.
                for &b in piece {
                    let id = byte_ids[b as usize];
                    if id != NO_ID {
                        ids.push(id);
                        if let Some(l) = lens.as_mut() {
                            l.push(1);
                        }
                    }
                }
            }
            Alphabet::Chars(chars) => {
                // Pieces of a chars alphabet are text: the pre-tokenizer never splits a char.
                let text = std::str::from_utf8(piece).unwrap_or_default();
                chars.symbols(text, &mut ids, lens);
            }
        }
        Ok(ids)
    }

    fn merge(&self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        if let (Alphabet::Bytes(byte_ids), true) = (&self.alphabet, piece.len() <= FLAT_MAX) {
            // Chars of 3 bytes (CJK) from their tokens where that is exact (see
            // `ByteCuts::merge_chars`), once the cuts are worked out (`encode_new`).
            let cuts = || self.cuts.get().and_then(Option::as_deref);
            if !piece.first().is_some_and(|&b| b >= 0xE0) || !cuts().is_some_and(|cuts| cuts.merge_chars(self, byte_ids, piece, out)) {
                self.merge_short_bytes(byte_ids, piece, out);
            }
            return Ok(());
        }
        if let Some(id) = self.unmerged_run(piece) {
            out.extend(std::iter::repeat_n(id, piece.len()));
            return Ok(());
        }
        if let Some(long) = self.long_pieces(piece.len()) {
            if long.encode(self, piece, out)? {
                return Ok(());
            }
        }
        let mut symbols = self.symbols(piece, None)?;
        if symbols.len() <= FLAT_MAX {
            self.merge_flat(&symbols, out);
            return Ok(());
        }
        // Runs between symbols that never merge are independent: a whole text with no
        // pre-tokenizer (SentencePiece models) merges as its lines (a newline is a byte
        // fallback token), each small and in cache, not as one heap of millions (13.6 s ->
        // 0.9 s on 10 MB of Python with Llama 2).
        let mut start = 0;
        for i in 0..symbols.len() {
            let id = symbols[i];
            if !self.is_paired(id) {
                self.merge_run(&mut symbols[start..i], out)?;
                out.push(id);
                start = i + 1;
            }
        }
        self.merge_run(&mut symbols[start..], out)
    }

    /// The token of every byte of `piece` where it is one byte again and again whose token
    /// does not merge with itself (GPT-2's spaces): no merge applies anywhere in it. 10 MB
    /// of spaces, one piece, went through the linear-time encoder at 4.8x the time of 10 MB
    /// of English (GPT-2, `benches/long_inputs.py`), a step of its search for each of 10 M
    /// tokens.
    fn unmerged_run(&self, piece: &[u8]) -> Option<u32> {
        let (Alphabet::Bytes(byte_ids), [first, ..]) = (&self.alphabet, piece) else { return None };
        let id = byte_ids[usize::from(*first)];
        if id == NO_ID || self.lookup(id, id).1 != NO_ID {
            return None;
        }
        // A block at a time without an early exit, which the compiler makes a vector compare.
        let mut blocks = piece.chunks_exact(32);
        let same = |bytes: &[u8]| bytes.iter().fold(true, |all, b| all & (b == first));
        (blocks.all(same) && same(blocks.remainder())).then_some(id)
    }

    /// The linear-time encoder for a piece of `len` bytes, where it is exact and pays.
    fn long_pieces(&self, len: usize) -> Option<&LongPieces> {
        if len < LONG_MIN {
            return None;
        }
        if self.long_pieces.get().is_none() {
            // The tables take about 100 bytes per token and 16 per byte of every token.
            // Where that much memory cannot be had now, this piece goes to the heap, which
            // says what it lacks; a later piece tries again.
            let need = self.lens.len() * 128 + self.lens.iter().map(|&l| l as usize * 16).sum::<usize>();
            Error::check_memory(need, String::new).ok()?;
        }
        self.long_pieces.get_or_init(|| LongPieces::new(self).map(Arc::new)).as_deref()
    }

    /// Where this vocabulary's pieces may be cut (`None`: a chars alphabet, or merges that
    /// do not spell their tokens).
    fn cuts(&self) -> Option<&ByteCuts> {
        self.cuts.get_or_init(|| ByteCuts::new(self).map(Arc::new)).as_deref()
    }

    /// The ids of `piece` by merges alone (no whole-piece lookup, no backtracking encoder):
    /// what `backtrack` checks pairs of tokens against.
    fn merges_only(&self, piece: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        match &self.alphabet {
            Alphabet::Bytes(byte_ids) if piece.len() <= FLAT_MAX => self.merge_short_bytes(byte_ids, piece, &mut out),
            // Out of memory: no ids, and the check this serves fails.
            _ => {
                if let Ok(mut symbols) = self.symbols(piece, None) {
                    self.merge_run(&mut symbols, &mut out).unwrap_or_default();
                }
            }
        }
        out
    }

    /// The last merge BPE makes on `piece`, if it leaves the one token `id`: how `id` is
    /// built (for `backtrack`, once per token of a byte alphabet; `ids` and `pairs` are
    /// scratch space).
    fn last_merge_if_whole(
        &self,
        piece: &[u8],
        id: u32,
        ids: &mut Vec<u32>,
        pairs: &mut Vec<(u32, u32)>,
    ) -> Option<(u32, u32, u32)> {
        ids.clear();
        match &self.alphabet {
            Alphabet::Bytes(byte_ids) => ids.extend(piece.iter().map(|&b| byte_ids[b as usize])),
            Alphabet::Chars(chars) => chars.symbols(std::str::from_utf8(piece).ok()?, ids, None),
        }
        pairs.clear();
        pairs.extend(ids.windows(2).map(|w| self.lookup(w[0], w[1])));
        let mut last = None;
        while let Some((at, &(rank, merged))) = pairs.iter().enumerate().min_by_key(|(_, p)| p.0) {
            if rank == NO_RANK {
                break;
            }
            last = Some((ids[at], ids[at + 1], rank));
            ids[at] = merged;
            ids.remove(at + 1);
            pairs.remove(at);
            if at > 0 {
                pairs[at - 1] = self.lookup(ids[at - 1], merged);
            }
            if at + 1 < ids.len() {
                pairs[at] = self.lookup(merged, ids[at + 1]);
            }
        }
        if ids[..] == [id] {
            last
        } else {
            None
        }
    }

    fn merge_run(&self, symbols: &mut [u32], out: &mut Vec<u32>) -> Result<()> {
        if symbols.len() < 2 {
            // Nothing to merge. The runs of a line of unknown chars (each a byte fallback
            // token that pairs with nothing) are all empty: setting up the flat arrays for
            // each was a third of Llama 2's time on 10 MB of newlines.
            out.extend_from_slice(symbols);
        } else if symbols.len() <= FLAT_MAX {
            self.merge_flat(symbols, out)
        } else {
            self.merge_heap(symbols)?;
            out.extend(symbols.iter().filter(|&&id| id != NO_ID));
        }
        Ok(())
    }

    /// Appends the ids of one piece and each token's byte span in it, as the reference
    /// counts them: the lengths of the symbols before it added up (no cache: for offsets).
    pub fn encode_with_spans(
        &self,
        piece: &[u8],
        out: &mut Vec<u32>,
        spans: &mut Vec<(usize, usize)>,
    ) -> Result<()> {
        if let Some(id) = self.whole_id(piece) {
            out.push(id);
            spans.push((0, piece.len()));
            return Ok(());
        }
        if let Some(long) = self.long_pieces(piece.len()) {
            let first = out.len();
            if long.encode(self, piece, out)? {
                let mut at = 0;
                for &id in &out[first..] {
                    spans.push((at, at + self.token_len(id)));
                    at += self.token_len(id);
                }
                return Ok(());
            }
        }
        let mut lens = Vec::new();
        let mut ids = self.symbols(piece, Some(&mut lens))?;
        self.merge_heap(&mut ids)?;
        // A symbol left stands for its own bytes and those of the symbols merged into it.
        let (first, mut at) = (spans.len(), 0);
        for (&id, &len) in ids.iter().zip(&lens) {
            let len = len as usize;
            if id != NO_ID {
                out.push(id);
                spans.push((at, at + len));
            } else if let Some(span) = spans[first..].last_mut() {
                span.1 += len;
            }
            at += len;
        }
        Ok(())
    }

    /// A short piece of a byte alphabet: symbols and first lookups straight from bytes,
    /// no allocation (this is the work of every cache miss).
    fn merge_short_bytes(&self, byte_ids: &[u32; 256], piece: &[u8], out: &mut Vec<u32>) {
        // Most pieces are words: arrays sized for them, not for `FLAT_MAX`, whose 1.5 kB
        // were cleared for every cache miss (a first pass: -1.4% instructions on English,
        // -0.8% on Chinese, whose pieces are longer; Llama 3, callgrind).
        if piece.len() <= 16 {
            self.merge_short_bytes_in(&mut Flat::<16>::new(), byte_ids, piece, out);
        } else {
            self.merge_short_bytes_in(&mut Flat::<FLAT_MAX>::new(), byte_ids, piece, out);
        }
    }

    /// What merges make of a char's bytes alone, if that is one token: its id and the
    /// highest rank of those merges (see `ByteCuts::merge_chars`).
    fn merge_char(&self, byte_ids: &[u32; 256], bytes: &[u8]) -> Option<(u32, u32)> {
        let mut out = Vec::with_capacity(bytes.len());
        let (_, highest) = self.merge_short_bytes_in(&mut Flat::<4>::new(), byte_ids, bytes, &mut out);
        match out[..] {
            [id] => Some((id, highest)),
            _ => None,
        }
    }

    /// Returns the lowest and the highest rank merged (see `merge_flat_in`).
    #[inline(always)]
    fn merge_short_bytes_in<const N: usize>(
        &self,
        flat: &mut Flat<N>,
        byte_ids: &[u32; 256],
        piece: &[u8],
        out: &mut Vec<u32>,
    ) -> (u32, u32) {
        let mut prev: Option<u8> = None;
        for &b in piece {
            let id = byte_ids[b as usize];
            if id == NO_ID {
                continue; // a byte without a token is dropped, as `symbols` does
            }
            if let Some(a) = prev {
                let v = self.byte_pairs[usize::from(a) << 8 | usize::from(b)];
                flat.pairs[flat.n - 1] = if v == u64::MAX { (NO_RANK, NO_ID) } else { ((v >> 32) as u32, v as u32) };
            }
            flat.ids[flat.n] = id;
            flat.n += 1;
            prev = Some(b);
        }
        self.merge_flat_in(flat, out)
    }

    fn merge_flat(&self, symbols: &[u32], out: &mut Vec<u32>) {
        let mut flat = Flat::<FLAT_MAX>::new();
        flat.n = symbols.len();
        flat.ids[..flat.n].copy_from_slice(symbols);
        for i in 1..flat.n {
            flat.pairs[i - 1] = self.lookup(flat.ids[i - 1], flat.ids[i]);
        }
        self.merge_flat_in(&mut flat, out);
    }

    /// Merges the lowest-ranked pair (leftmost on ties) until none is left: O(n) per merge
    /// over arrays on the stack, which beats a heap for the short pieces of real text.
    /// Returns the lowest and the highest rank it merged (`NO_RANK` and 0 if none).
    fn merge_flat_in<const N: usize>(&self, flat: &mut Flat<N>, out: &mut Vec<u32>) -> (u32, u32) {
        let Flat { ids, pairs, n } = flat;
        let (mut lowest, mut highest) = (NO_RANK, 0);
        while *n >= 2 {
            let (mut best, mut at) = (NO_RANK, 0);
            for (i, &(rank, _)) in pairs[..*n - 1].iter().enumerate() {
                if rank < best {
                    best = rank;
                    at = i;
                }
            }
            if best == NO_RANK {
                break;
            }
            (lowest, highest) = (lowest.min(best), highest.max(best));
            ids[at] = pairs[at].1;
            // A few ids after the merge move in one loop for both arrays: two `memmove`
            // calls cost more than moving them (a first pass over English with Qwen2,
            // callgrind: 53.02 M -> 51.73 M instructions). More move faster by `memmove`
            // (GPT-2's Russian, whose words are 16-30 bytes, took 1.6% more instructions with
            // the loop for every shift).
            if *n - at <= SHORT_SHIFT {
                for i in at + 1..*n - 1 {
                    ids[i] = ids[i + 1];
                    pairs[i - 1] = pairs[i];
                }
            } else {
                ids.copy_within(at + 2..*n, at + 1);
                pairs.copy_within(at + 1..*n - 1, at);
            }
            *n -= 1;
            if at > 0 {
                pairs[at - 1] = self.lookup(ids[at - 1], ids[at]);
            }
            if at + 1 < *n {
                pairs[at] = self.lookup(ids[at], ids[at + 1]);
            }
        }
        out.extend_from_slice(&ids[..*n]);
        (lowest, highest)
    }

    /// Merges `ids` in place: a symbol merged into its left neighbour becomes `NO_ID`.
    fn merge_heap(&self, ids: &mut [u32]) -> Result<()> {
        let n = ids.len();
        if n < 2 {
            return Ok(());
        }
        // Positions are u32 (half the memory of usize); `END` means none.
        const END: u32 = u32::MAX;
        if n >= END as usize {
            return Err(Error::Invalid(format!("a piece of {n} symbols is too long to merge")));
        }
        let mut next: Vec<u32> = Vec::new();
        let mut prev: Vec<u32> = Vec::new();
        Error::reserve(&mut next, n, "the merge links of one piece")?;
        Error::reserve(&mut prev, n, "the merge links of one piece")?;
        next.extend((1..=n as u32).map(|i| if i as usize == n { END } else { i }));
        prev.extend((0..n as u32).map(|i| i.wrapping_sub(1))); // 0 - 1 wraps to END
        // Min-heap on (rank, position): leftmost first among equal ranks. A merge pops one
        // entry and pushes at most two, but also makes the entry on its right stale, so the
        // heap rarely outgrows its start (then it grows by doubling).
        let mut initial: Vec<Reverse<(u32, u32, u32)>> = Vec::new();
        Error::reserve(&mut initial, n, "the merge heap of one piece")?;
        initial.extend((0..n - 1).filter_map(|i| {
            let (rank, merged) = self.lookup(ids[i], ids[i + 1]);
            (rank != NO_RANK).then_some(Reverse((rank, i as u32, merged)))
        }));
        // Built in one O(n) heapify rather than n pushes.
        let mut heap = BinaryHeap::from(initial);
        while let Some(Reverse((rank, at, merged))) = heap.pop() {
            let right = next[at as usize];
            if ids[at as usize] == NO_ID || right == END {
                continue;
            }
            // Skip entries made stale by an earlier merge on either side.
            if self.lookup(ids[at as usize], ids[right as usize]) != (rank, merged) {
                continue;
            }
            ids[at as usize] = merged;
            ids[right as usize] = NO_ID;
            let after = next[right as usize];
            next[at as usize] = after;
            if after != END {
                prev[after as usize] = at;
            }
            let before = prev[at as usize];
            if before != END {
                let (r, m) = self.lookup(ids[before as usize], merged);
                if r != NO_RANK {
                    heap.push(Reverse((r, before, m)));
                }
            }
            if after != END {
                let (r, m) = self.lookup(merged, ids[after as usize]);
                if r != NO_RANK {
                    heap.push(Reverse((r, at, m)));
                }
            }
        }
        Ok(())
    }
}

/// The char that `bytes` starts with and its length in bytes; `None` where they do not
/// start with one (pieces of a chars alphabet are text, so only a bug would see that).
#[inline]
fn decode_char(bytes: &[u8]) -> Option<(char, usize)> {
    let b0 = *bytes.first()?;
    if b0 < 0x80 {
        return Some((char::from(b0), 1));
    }
    let len = match b0 {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return None,
    };
    let tail = bytes.get(1..len)?;
    if tail.iter().any(|&b| b & 0xC0 != 0x80) {
        return None;
    }
    let lead = u32::from(b0) & (0x7F >> len);
    let cp = tail.iter().fold(lead, |cp, &b| (cp << 6) | u32::from(b & 0x3F));
    Some((char::from_u32(cp)?, len))
}

/// Ids after a merge that `Bpe::merge_flat_in` moves one by one rather than by `memmove`.
const SHORT_SHIFT: usize = 8;

/// The symbols of a short piece being merged: `pairs[i]` is what merging `ids[i]` and
/// `ids[i + 1]` gives (rank, merged id).
struct Flat<const N: usize> {
    ids: [u32; N],
    pairs: [(u32, u32); N],
    n: usize,
}

impl<const N: usize> Flat<N> {
    fn new() -> Self {
        Flat { ids: [0; N], pairs: [(NO_RANK, NO_ID); N], n: 0 }
    }
}

impl<'a> PieceEncoder<'a> {
    /// Appends the ids of one pre-tokenized piece. Inlined, with the cache hit it leads to,
    /// into the pre-tokenizer's loop (see `ModelCache::get_or_encode`).
    #[inline(always)]
    pub fn encode(&mut self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        let bpe = self.bpe;
        match &bpe.alphabet {
            // The most common case tested first.
            Alphabet::Bytes(byte_ids) => self.encode_bytes(byte_ids, piece, out),
            // Not with `ignore_merges`: the whole-token lookup of the parts (through the cache)
            // could give what merges would not.
            Alphabet::Chars(chars) if piece.len() > cache::LONG_MAX && bpe.whole.is_none() => match &chars.word_cuts {
                Some(cuts) => self.encode_words(piece, cuts, &chars.forms[0], out),
                None => self.encode_word(piece, out),
            },
            Alphabet::Chars(_) if piece.is_empty() => Ok(()),
            Alphabet::Chars(_) => self.encode_word(piece, out),
        }
    }

    /// The byte table of a byte alphabet: a caller with many pieces asks once and calls
    /// `encode_bytes`, which does not look at the alphabet again for each piece.
    pub fn byte_ids(&self) -> Option<&'a [u32; 256]> {
        match &self.bpe.alphabet {
            Alphabet::Bytes(byte_ids) => Some(byte_ids),
            Alphabet::Chars(_) => None,
        }
    }

    /// `encode` for a byte alphabet whose table (`byte_ids`) the caller has.
    #[inline(always)]
    pub fn encode_bytes(&mut self, byte_ids: &[u32; 256], piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        match piece.len() {
            2..=cache::SHORT_MAX => self.encode_cached(piece, out),
            1 => {
                let id = byte_ids[piece[0] as usize];
                if id != NO_ID {
                    out.push(id);
                }
                Ok(())
            }
            0 => Ok(()),
            _ => self.encode_long(piece, out),
        }
    }

    /// `encode_bytes` for a piece at the start of `rest`, the text from there on. Where that
    /// has 16 bytes (all but the last pieces of a text), the cache key of a short piece is
    /// read from them without a branch on its length (see `Key::in_window`), and a piece of
    /// one byte takes the same way, not the byte table, so that nothing here branches on the
    /// length but the test for a short piece, which is nearly always true. In code, whose
    /// pieces go from one byte to a word and back at random, the branches on the length went
    /// either way. Callgrind's `--branch-sim` (Llama 3, 2 MB of Python, a warm pass) counted
    /// 653 k mispredicted branches before, 439 k with the key from the window and 257 k with
    /// one-byte pieces cached too, for 5% then 17% more instructions (75.0 M -> 87.6 M). By
    /// the clock (Rust, best of 20, six runs of the builds in turn, medians) the encode went
    /// from 314 to 363 MB/s on the code and from 336 to 422 on English; GPT-2 and o200k
    /// 6-23% faster, Chinese and the multilingual text 8-18%.
    #[inline(always)]
    pub fn encode_bytes_in(
        &mut self,
        byte_ids: &[u32; 256],
        piece: &[u8],
        rest: &[u8],
        out: &mut Vec<u32>,
    ) -> Result<()> {
        debug_assert!(rest.starts_with(piece));
        let window = rest.first_chunk::<{ 2 * 8 }>();
        if let (1..=cache::SHORT_MAX, Some(window), Some(cache)) = (piece.len(), window, self.cache.as_mut()) {
            let bpe = self.bpe;
            let key = Key::in_window(window, piece.len());
            return cache.get_or_encode_short(piece, key, out, |cache, piece, out| Self::encode_new(bpe, Some(cache.reborrow()), piece, out));
        }
        self.encode_bytes(byte_ids, piece, out)
    }

    /// `encode_bytes_in` for each piece of `text` that ends at `ends`, the first from
    /// `start`, each from the end of the one before: the pieces a pre-tokenizer cut, a batch
    /// at a time. The cache's hits are taken in a loop of their own (`first_way_hits`); each
    /// piece that is not one goes through `encode_bytes_in`.
    #[inline(always)]
    pub fn encode_pieces_in(
        &mut self,
        byte_ids: &[u32; 256],
        text: &[u8],
        mut start: usize,
        mut ends: &[usize],
        out: &mut Vec<u32>,
    ) -> Result<()> {
        loop {
            if let Some(cache) = &self.cache {
                let taken = cache.first_way_hits(text, start, ends, out);
                if let Some(&end) = ends[..taken].last() {
                    (start, ends) = (end, &ends[taken..]);
                }
            }
            let [end, rest @ ..] = ends else { return Ok(()) };
            self.encode_bytes_in(byte_ids, &text[start..*end], &text[start..], out)?;
            (start, ends) = (*end, rest);
        }
    }

    /// A piece of a byte alphabet longer than the cache's short pieces: from the cache, else
    /// as its parts (see `cuts`). Pieces from `LONG_MIN` bytes are cut too: parts of a few
    /// chars are cache hits, and the backtracking encoder's tables (about 480 M
    /// instructions for Llama 3) are built only for a part that long. A first pass over 2 MB
    /// of the Japanese handbook, whose runs of kana and kanji reach 256 bytes: 813 M
    /// instructions before cuts, 649 M with pieces below `LONG_MIN` cut, 166 M with all.
    #[inline(never)]
    fn encode_long(&mut self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        self.encode_cached(piece, out)
    }

    /// Appends the ids of a text segment of at most `cache::SHORT_MAX` bytes through the
    /// cache of segments (`ModelCache::get_or_encode_segment`), `encode` making them where
    /// it does not have them. `encode`'s ids must depend on the segment's bytes alone.
    #[inline]
    pub fn encode_segment(
        &mut self,
        segment: &[u8],
        out: &mut Vec<u32>,
        encode: impl FnOnce(&mut PieceEncoder, &mut Vec<u32>) -> Result<()>,
    ) -> Result<()> {
        let bpe = self.bpe;
        match self.cache.as_mut() {
            Some(cache) => cache.get_or_encode_segment(segment, out, |cache, out| {
                encode(&mut PieceEncoder { bpe, cache: Some(cache.reborrow()) }, out)
            }),
            None => encode(self, out),
        }
    }

    /// A piece of a byte alphabet: from the cache, else `encode_new`.
    #[inline(always)]
    fn encode_cached(&mut self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        let bpe = self.bpe;
        match self.cache.as_mut() {
            Some(cache) => cache.get_or_encode(piece, out, |cache, piece, out| Self::encode_new(bpe, Some(cache.reborrow()), piece, out)),
            None => Self::encode_new(bpe, None, piece, out),
        }
    }

    /// A piece of a byte alphabet that is not in the cache: the token that is the whole
    /// piece (`ignore_merges`), else its parts where it may be cut (each from `cache`), else
    /// what merges make of it.
    ///
    /// Short pieces are cut too, once a long one has had the cuts worked out: a first pass
    /// over Chinese merged its new pieces of two to five chars from their bytes, each pair
    /// looked up in a map of 280 k merges that the CPU's caches do not hold, where their
    /// parts (one or two chars) are in the piece cache. Working the cuts out takes 15 ms
    /// (Llama 3; o200k 24 ms), and a short piece of two such chars is as likely to be
    /// typographic punctuation in English (`…”`) as Chinese: a first pass over English,
    /// which has no long piece to cut, took twice as long with the cuts worked out there.
    fn encode_new(bpe: &Bpe, cache: Option<ModelCache>, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        let cut = piece.len() > cache::SHORT_MAX || bpe.cuts.get().is_some();
        if let Some(id) = bpe.whole_id(piece) {
            out.push(id);
        } else if !(cut && (PieceEncoder { bpe, cache }).encode_parts(piece, out)?) {
            bpe.merge(piece, out)?;
        }
        Ok(())
    }

    /// Appends the ids of `piece` part by part, cut where `cuts` allows; `false` (and
    /// nothing appended) where it allows no cut.
    fn encode_parts(&mut self, piece: &[u8], out: &mut Vec<u32>) -> Result<bool> {
        let (mut from, mut at) = (0, 0);
        // Worked out where first needed: text without two such chars in a row (English, code,
        // Russian) never needs them, and they take 10 ms for Llama 3.
        let mut cuts: Option<&ByteCuts> = None;
        // The char before `at`, where it is of 3-4 bytes.
        let mut before: Option<char> = None;
        while at < piece.len() {
            if piece[at] < 0xE0 {
                (before, at) = (None, at + 1); // not the first byte of a char of 3-4 bytes
                continue;
            }
            let Some((c, len)) = decode_char(&piece[at..]) else {
                (before, at) = (None, at + 1);
                continue;
            };
            if let Some(b) = before {
                let Some(found) = cuts.or_else(|| self.bpe.cuts()) else { return Ok(false) };
                if found.cut(b, c, &piece[at - b.len_utf8()..at], &piece[at..at + len]) {
                    self.encode_part(&piece[from..at], found, out)?;
                    from = at;
                }
                cuts = Some(found);
            }
            (before, at) = (Some(c), at + len);
        }
        match cuts {
            Some(cuts) if from > 0 => self.encode_part(&piece[from..], cuts, out)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// One part of a cut piece: what merges make of it, from the cache where it may be.
    fn encode_part(&mut self, part: &[u8], cuts: &ByteCuts, out: &mut Vec<u32>) -> Result<()> {
        let bpe = self.bpe;
        // The cache holds what a piece of these bytes encodes to. For a part that is what
        // merges make of it, except in `ignore_merges` vocabularies where a piece is one
        // token taken whole that merges do not make (test
        // `a_part_is_not_taken_whole_from_the_cache_of_pieces`): only an answer of one id
        // can be that, and whether merges make that id is known per id. The whole-token
        // lookup that came first before (a miss to memory in a map of every token, most
        // parts being cache hits of one or two chars) was 9% of a first pass over Chinese
        // (Llama 3, perf).
        let start = out.len();
        self.encode_word(part, out)?;
        if let (Some(_), &[id]) = (&bpe.whole, &out[start..]) {
            if !cuts.merges_make(bpe, id, part) {
                out.truncate(start);
                bpe.merge(part, out)?;
            }
        }
        Ok(())
    }

    /// SentencePiece-style vocabularies run BPE over a whole text segment (there is no
    /// pre-tokenizer), which defeats the cache and makes every merge a heap operation.
    /// Where two adjacent chars appear together in no token, no merge can ever join them:
    /// the text is cut there and each part is encoded on its own (cached, flat merges),
    /// with the same result. Cuts between two chars outside the vocabulary are not made,
    /// so that runs of unknown chars still fuse into one unknown token.
    #[inline(never)]
    fn encode_words(
        &mut self,
        piece: &[u8],
        cuts: &WordCuts,
        known: &FxHashMap<char, u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        // The chars are read here, not validated first: `from_utf8` over the whole
        // segment was a tenth of an encode of English (a `▁` every few bytes is its slow path).
        let Some((mut prev, mut at)) = cuts.read(piece) else { return self.encode_word(piece, out) };
        let mut start = 0;
        while at < piece.len() {
            let b = piece[at];
            if b < 0x80 && prev.0 < 0x80 {
                // ASCII after ASCII (most chars of English and code): the small table.
                if cuts.ascii[prev.0 as usize][usize::from(b >> 6)] >> (b & 63) & 1 == 1 {
                    self.encode_word(&piece[start..at], out)?;
                    start = at;
                }
                prev = CutChar(u32::from(b));
                at += 1;
                continue;
            }
            let Some((c, len)) = cuts.read(&piece[at..]) else { return self.encode_word(&piece[start..], out) };
            if cuts.cut_between(prev, c, known) {
                self.encode_word(&piece[start..at], out)?;
                start = at;
            }
            prev = c;
            at += len;
        }
        self.encode_word(&piece[start..], out)
    }

    /// `encode` of the text that a normalizer putting `▁` for every space (and, with
    /// `prepend`, one `▁` first) makes of `text`, read as it is: a space is taken for `▁`.
    /// `false` (and nothing appended) where this vocabulary's text is not cut into words (no
    /// `WordCuts`, or `ignore_merges`): the caller encodes the normalized text.
    ///
    /// Short texts are cut too, where `encode` takes a short piece whole: per-doc, two or
    /// three words' lookups cost less than the normalized copy and a whole text's key (Llama 2
    /// and Gemma 4 English 1-3% faster, the rest unchanged).
    ///
    /// Why: SentencePiece-style tokenizers (Llama 2, Mistral, Gemma) put `▁` for every space.
    /// The normalized copy was 8-10% of a per-document encode of English (perf, Gemma 4), each
    /// `▁` (3 bytes) took `encode_words`' slow path for a char of more than one byte, and
    /// words with it spilled past the cache's short keys.
    ///
    /// The piece cache's keys are then the text's own bytes, spaces and all. That is sound
    /// because a model's cache holds the text of its tokenizer's normalizer, which leaves no
    /// space: a space in a key stands for `▁` whichever way the key came, and the same bytes
    /// mean the same ids.
    pub fn encode_spaced(&mut self, text: &[u8], prepend: bool, out: &mut Vec<u32>) -> Result<bool> {
        let bpe = self.bpe;
        match &bpe.alphabet {
            Alphabet::Chars(_) if text.is_empty() => Ok(true),
            Alphabet::Chars(chars) if bpe.whole.is_none() => match &chars.word_cuts {
                Some(cuts) => self.encode_words_spaced(text, prepend, cuts, &chars.forms[0], out).map(|()| true),
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }

    /// `encode_words` over text whose spaces stand for `▁`: `CutChar(0x20)` is `▁` here (the
    /// ASCII loop's table is `ascii_spaced`), and with `prepend` the first word has a `▁`
    /// before it.
    ///
    /// A near-copy of `encode_words`, on purpose: one loop generic over the two (a const
    /// parameter choosing the table, the marks and the word's encoding) ran 3-4% slower
    /// per-doc on Llama 2 and Gemma 4 English (the builds in turn, 4 runs each).
    #[inline(never)]
    fn encode_words_spaced(
        &mut self,
        text: &[u8],
        prepend: bool,
        cuts: &WordCuts,
        known: &FxHashMap<char, u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let space = CutChar(u32::from(b' '));
        // With `prepend`, the first word starts at a `▁` before the text.
        let (mut prev, mut at) = match (prepend, cuts.read(text)) {
            (true, _) => (space, 0),
            (false, Some(first)) => first,
            (false, None) => return self.encode_word_spaced(text, false, out),
        };
        let (mut start, mut first) = (0, prepend);
        while at < text.len() {
            let b = text[at];
            if b < 0x80 && prev.0 < 0x80 {
                if cuts.ascii_spaced[prev.0 as usize][usize::from(b >> 6)] >> (b & 63) & 1 == 1 {
                    self.encode_word_spaced(&text[start..at], std::mem::take(&mut first), out)?;
                    start = at;
                }
                prev = CutChar(u32::from(b));
                at += 1;
                continue;
            }
            let Some((c, len)) = cuts.read(&text[at..]) else {
                return self.encode_word_spaced(&text[start..], first, out);
            };
            if cuts.cut_between(WordCuts::marked(prev), WordCuts::marked(c), known) {
                self.encode_word_spaced(&text[start..at], std::mem::take(&mut first), out)?;
                start = at;
            }
            prev = c;
            at += len;
        }
        self.encode_word_spaced(&text[start..], first, out)
    }

    /// A word of `encode_words_spaced`, after a `▁` of its own with `marked` (the first word
    /// of a text that has one put first).
    #[inline(always)]
    fn encode_word_spaced(&mut self, word: &[u8], marked: bool, out: &mut Vec<u32>) -> Result<()> {
        if marked {
            return self.encode_marked_word(word, out);
        }
        let bpe = self.bpe;
        let encode = |word: &[u8], out: &mut Vec<u32>| match word.contains(&b' ') {
            true => bpe.encode_uncached(&normalize::spaces_marked(&[word]), out),
            false => bpe.encode_uncached(word, out), // a long run of one letter: not copied
        };
        match self.cache.as_mut() {
            Some(cache) => cache.get_or_encode(word, out, |_, word, out| encode(word, out)),
            None => encode(word, out),
        }
    }

    /// `word` after a `▁`: a space and its bytes, as the cache keys it.
    #[inline(never)]
    fn encode_marked_word(&mut self, word: &[u8], out: &mut Vec<u32>) -> Result<()> {
        if word.len() >= cache::CACHED_MAX {
            // Not kept in the cache: straight to its normalized form, one copy.
            return self.bpe.encode_uncached(&normalize::spaces_marked(&[b" ", word]), out);
        }
        let mut key = Vec::with_capacity(word.len() + 1);
        key.push(b' ');
        key.extend_from_slice(word);
        self.encode_word_spaced(&key, false, out)
    }

    /// One piece that needs no further cutting: cached when short.
    #[inline(always)]
    fn encode_word(&mut self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        let bpe = self.bpe;
        match self.cache.as_mut() {
            Some(cache) => cache.get_or_encode(piece, out, |_, piece, out| bpe.encode_uncached(piece, out)),
            None => bpe.encode_uncached(piece, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bytes a=0 b=1 c=2, ab=3, bc=4, abc=5 via (ab, c)
    fn toy() -> Bpe {
        let tokens: Vec<(&[u8], u32)> =
            vec![(b"a", 0), (b"b", 1), (b"c", 2), (b"ab", 3), (b"bc", 4), (b"abc", 5)];
        Bpe::new(tokens, vec![(1, 2, 4), (0, 1, 3), (3, 2, 5)], false)
    }

    fn enc(bpe: &Bpe, s: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode(s, &mut out).unwrap();
        out
    }

    #[test]
    fn merges_by_rank_not_by_position() {
        // "bc" has the better rank, so "abc" becomes a + bc and (ab, c) never applies.
        assert_eq!(enc(&toy(), b"abc"), [0, 4]);
        assert_eq!(enc(&toy(), b"abab"), [3, 3]);
    }

    #[test]
    fn runs_split_at_tokens_without_pairs_merge_alike() {
        // "d" is in no pair: the text merges as its runs between the d's.
        let tokens: Vec<(&[u8], u32)> =
            vec![(b"a", 0), (b"b", 1), (b"c", 2), (b"ab", 3), (b"bc", 4), (b"abc", 5), (b"d", 6)];
        let bpe = Bpe::new(tokens, vec![(1, 2, 4), (0, 1, 3), (3, 2, 5)], false);
        let text: Vec<u8> = b"abcabdab".iter().cycle().take(3000).copied().collect();
        let mut symbols = bpe.symbols(&text, None).unwrap();
        bpe.merge_heap(&mut symbols).unwrap();
        let heap: Vec<u32> = symbols.into_iter().filter(|&id| id != NO_ID).collect();
        assert_eq!(enc(&bpe, &text), heap);
    }

    #[test]
    fn flat_and_heap_agree() {
        let bpe = toy();
        let Alphabet::Bytes(byte_ids) = bpe.alphabet() else { unreachable!() };
        // Pseudo-random strings over a, b, c (and d, a byte without a token) of every
        // length the flat loop takes.
        let mut state = 12345u32;
        for len in 1..=FLAT_MAX {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b"abcabcd"[(state >> 16) as usize % 7]
                })
                .collect();
            let mut symbols = bpe.symbols(&piece, None).unwrap();
            let (mut flat, mut short) = (Vec::new(), Vec::new());
            bpe.merge_flat(&symbols, &mut flat);
            bpe.merge_short_bytes(byte_ids, &piece, &mut short);
            bpe.merge_heap(&mut symbols).unwrap();
            let heap: Vec<u32> = symbols.into_iter().filter(|&id| id != NO_ID).collect();
            assert_eq!(flat, heap, "{:?}", String::from_utf8_lossy(&piece));
            assert_eq!(short, heap, "{:?}", String::from_utf8_lossy(&piece));
        }
    }

    #[test]
    fn ranks_merge_like_tiktoken() {
        let ranks = vec![(b"a".to_vec(), 0), (b"b".to_vec(), 1), (b"ab".to_vec(), 2), (b"abab".to_vec(), 3)];
        let bpe = Bpe::from_ranks(&ranks);
        assert_eq!(enc(&bpe, b"ababa"), [3, 0]);
        assert_eq!(enc(&bpe, b"abab"), [3]);
    }

    #[test]
    fn chars_decode_as_the_standard_library_decodes_them() {
        let text = "a\u{2581}é日\u{1F468}\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}";
        let mut at = 0;
        for c in text.chars() {
            assert_eq!(decode_char(&text.as_bytes()[at..]), Some((c, c.len_utf8())));
            at += c.len_utf8();
        }
        for bad in [&b""[..], b"\x80", b"\xe2\x96", b"\xe2\x41\x81", b"\xf8\x80\x80\x80", b"\xed\xa0\x80"] {
            assert_eq!(decode_char(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn word_cuts_of_the_table_are_the_rule_itself() {
        // 中 has a token and is in no pair; 語 has none and is the first of a pair.
        let tokens = ["\u{2581}a", "ab", "b\u{2581}", "é日", "\u{2581}\u{2581}", "x", "пр", "ри", "р\u{2581}", "\u{7ff}a", "中", "語日"];
        let known: FxHashMap<char, u32> =
            ['a', 'b', 'x', '\u{2581}', 'é', '日', 'п', 'р', 'и', '\u{80}', '\u{7ff}', '中'].into_iter().zip(0..).collect();
        let cuts = WordCuts::new(tokens, &known);
        let pairs = &cuts.pairs;
        let chars = [
            'a', 'b', 'x', 'q', '\u{2581}', 'é', 'è', '日', 'Z', '\u{2582}', ' ', 'п', 'р', 'и', 'ж', '\u{80}', '\u{7ff}', '\u{800}', '\u{1F600}',
            '中', '語', '本', '\u{ffff}', '\u{10000}',
        ];
        for a in chars {
            for b in chars {
                assert_eq!(cuts.cut(a, b, &known), WordCuts::decide(pairs, &known, a, b), "{a:?} {b:?}");
            }
        }
        assert!(!cuts.cut('a', 'b', &known) && cuts.cut('b', 'a', &known) && !cuts.cut('q', 'Z', &known));
        assert!(!cuts.cut('п', 'р', &known) && cuts.cut('р', 'п', &known) && cuts.cut('ж', 'п', &known));
        assert!(cuts.dense('п').is_some() && cuts.dense('ж').is_none() && cuts.dense('日').is_none());
        assert!(!cuts.cut('語', '日', &known) && cuts.cut('語', '中', &known) && cuts.cut('中', '語', &known));
        assert!(!cuts.cut('語', '本', &known) && cuts.cut('中', '中', &known));
        // The ASCII table of `encode_words`' fast loop says what the rule says.
        for a in 0..128u8 {
            for b in 0..128u8 {
                let fast = cuts.ascii[usize::from(a)][usize::from(b >> 6)] >> (b & 63) & 1 == 1;
                assert_eq!(fast, WordCuts::decide(pairs, &known, char::from(a), char::from(b)), "{a} {b}");
                // And `encode_words_spaced`' table, with a space read as `▁`.
                let spaced = cuts.ascii_spaced[usize::from(a)][usize::from(b >> 6)] >> (b & 63) & 1 == 1;
                let marked = |c: u8| if c == b' ' { WordCuts::SPACE } else { char::from(c) };
                assert_eq!(spaced, WordCuts::decide(pairs, &known, marked(a), marked(b)), "{a} {b}");
            }
        }
        let spaced = |a: u8, b: u8| cuts.ascii_spaced[usize::from(a)][usize::from(b >> 6)] >> (b & 63) & 1 == 1;
        assert!(!spaced(b' ', b'a') && !spaced(b'b', b' ') && spaced(b'a', b' '), "tokens ▁a and b▁, none with a▁");
    }
}
