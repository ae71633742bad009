//! Linear-time BPE for long pieces: the backtracking encoder of rust-gems `bpe`
//! (github.com/github/rust-gems, `crates/bpe`; its README gives the proofs), adapted from
//! token ranks to the pair ranks of a merges list.
//!
//! Why: the heap (`Bpe::merge_heap`) is O(n log n) with a cache miss per heap step; 10 MB
//! of one letter, of digits or of one whitespace run (one piece each) took 10-50x the
//! per-byte time of English. This encoder takes 0.2-2x (README, "Long inputs").
//!
//! How:
//! - The BPE encoding of a text is the only sequence of tokens that spells it in which
//!   every token encodes to itself and every two neighbours encode to themselves
//!   ("compatible"). A left-to-right search that tries the longest token first and backs
//!   off to the next shorter prefix token when a pair is not compatible finds it. A bit
//!   per position marks where no encoding can go on (the prefix before a position has one
//!   encoding, so one failure there is final), which keeps the search linear.
//! - Whether two tokens are compatible is decided without encoding them again (`walk`):
//!   undo the merges that built them, latest first, and at each step check whether the
//!   pair across the boundary would have merged before the merge being undone. That is
//!   exact when each token in both build trees was last merged after its parts were made
//!   (`in_order`), so that the merges of each side run in non-decreasing rank order: every
//!   token of a trained vocabulary.
//! - Vocabularies converted from tiktoken rank files (Llama 3, cl100k, Tekken) have a few
//!   tokens built out of that order: Llama 3's ".:.:" is last merged from ".:." and ":" at
//!   rank 236225, but ".:." is only made at rank 243897. A pair with such a token is
//!   checked by encoding its bytes again.
//! - Every answer is kept in a small per-thread table (`PairMemo`): the search asks about
//!   the same pairs again and again.

use super::build_trees::BuildTrees;
use super::trie::Trie;
use super::{Alphabet, Bpe, NO_ID};
use crate::error::{Error, Result};
use std::cell::RefCell;

/// Tokens longer than this make a vocabulary keep the heap: working out how each token is
/// built costs its length squared, and no real vocabulary comes near.
const MAX_TOKEN_LEN: usize = 1024;

#[derive(Debug)]
pub(super) struct LongPieces {
    /// Every token that encodes to itself.
    tokens: Trie,
    trees: BuildTrees,
    /// By token id: the longest token that is a proper prefix of it (`NO_ID`: none).
    shorter: Vec<u32>,
    /// By token id: (start, len) of its bytes in `arena` (len 0: no merge makes it).
    spans: Vec<(u32, u32)>,
    arena: Vec<u8>,
    /// By token id: every merge of its build tree ranks after the merges that made its
    /// parts, so `walk` may decide pairs with it.
    in_order: Vec<bool>,
    /// Tells this thread's `PairMemo` which tables its answers belong to.
    memo_owner: u64,
}

/// Pairs of tokens already decided, per thread: a direct-mapped table of 2^14 pairs. The
/// search tries the same pairs again and again (a run of spaces in Tekken tries space
/// tokens after each of its longest, and each walk takes about 20 steps; a repeated text
/// repeats its pairs), and one probe of this small table replaces a walk or an encoding.
/// Beside it, the same for `LongPieces::first_fit`.
struct PairMemo {
    owner: u64,
    pairs: Box<[u64]>,
    answers: Box<[bool]>,
    /// By (token, candidate): the first of the candidate and its shorter prefixes that is
    /// compatible after the token (`NO_ID`: none). See `LongPieces::first_fit`.
    fit_pairs: Box<[u64]>,
    fits: Box<[u32]>,
}

const MEMO_BITS: u32 = 14;
const NO_PAIR: u64 = u64::MAX; // no token id is `NO_ID`

thread_local! {
    static MEMO: RefCell<PairMemo> = RefCell::new(PairMemo::new(0));
}

impl PairMemo {
    fn new(owner: u64) -> Self {
        let size = 1 << MEMO_BITS;
        PairMemo {
            owner,
            pairs: vec![NO_PAIR; size].into_boxed_slice(),
            answers: vec![false; size].into_boxed_slice(),
            fit_pairs: vec![NO_PAIR; size].into_boxed_slice(),
            fits: vec![NO_ID; size].into_boxed_slice(),
        }
    }

    fn slot(pair: u64) -> usize {
        (pair.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - MEMO_BITS)) as usize
    }

    #[inline(always)]
    fn get_or_insert_with(&mut self, pair: u64, decide: impl FnOnce() -> bool) -> bool {
        let slot = Self::slot(pair);
        if self.pairs[slot] != pair {
            self.answers[slot] = decide();
            self.pairs[slot] = pair;
        }
        self.answers[slot]
    }
}

impl LongPieces {
    /// The tables for `bpe`, or `None` where this encoder would not be exact: a byte
    /// without a token, chars spelled otherwise inside or at the end of a word
    /// (`continuing_subword_prefix`, `end_of_word_suffix`), a merge whose parts do not
    /// spell its result or a token over `MAX_TOKEN_LEN`. With a chars alphabet, a piece
    /// with a char outside the vocabulary is left to the heap (`encode` gives `false`).
    pub(super) fn new(bpe: &Bpe) -> Option<Self> {
        // The first symbols: each byte's token, or each char's.
        let base: Vec<(Vec<u8>, u32)> = match &bpe.alphabet {
            Alphabet::Bytes(byte_ids) => (0..=255u8).map(|b| (vec![b], byte_ids[b as usize])).collect(),
            Alphabet::Chars(chars) if !chars.has_prefix && !chars.has_suffix => {
                chars.forms[0].iter().map(|(c, &id)| (c.to_string().into_bytes(), id)).collect()
            }
            Alphabet::Chars(_) => return None,
        };
        let n = bpe.lens.len();
        let mut is_byte = vec![false; n];
        for &(_, id) in &base {
            if id as usize >= n || is_byte[id as usize] {
                return None;
            }
            is_byte[id as usize] = true;
        }
        // Every merge, grouped by the token it makes (vocabularies converted from tiktoken
        // ranks list a merge for each way to split a token into two).
        let len = |id: u32| bpe.token_len(id);
        let mut first = vec![0u32; n + 1]; // the makers of `id`: makers[first[id]..first[id + 1]]
        for (&key, &value) in &bpe.pairs {
            let (left, right, merged) = ((key >> 32) as u32, key as u32, value as u32);
            let (l, r, m) = (len(left), len(right), len(merged));
            if l == 0 || r == 0 || m != l + r || m > MAX_TOKEN_LEN {
                return None;
            }
            first[merged as usize + 1] += 1;
        }
        for id in 0..n {
            first[id + 1] += first[id];
        }
        let mut makers = vec![(0u32, 0u32, 0u32); bpe.pairs.len()]; // (left, right, rank)
        let mut next = first.clone();
        for (&key, &value) in &bpe.pairs {
            let merged = value as u32 as usize;
            makers[next[merged] as usize] = ((key >> 32) as u32, key as u32, (value >> 32) as u32);
            next[merged] += 1;
        }
        let makers_of = |id: u32| &makers[first[id as usize] as usize..first[id as usize + 1] as usize];

        let mut spans = vec![(0u32, 0u32); n]; // (start, len) in `arena`; len 0: unknown
        let mut arena = Vec::new();
        for (bytes, id) in &base {
            spans[*id as usize] = (arena.len() as u32, bytes.len() as u32);
            arena.extend_from_slice(bytes);
        }
        // The bytes of every token a merge makes, shortest first (parts before wholes).
        let mut merged: Vec<u32> = (0..n as u32).filter(|&id| !makers_of(id).is_empty()).collect();
        merged.sort_by_key(|&id| bpe.lens[id as usize]);
        for &id in &merged {
            // The first maker whose parts both have bytes (a part that no merge or byte
            // makes never meets); none: this token is never made.
            let has_bytes = |&&(l, r, _): &&(u32, u32, u32)| spans[l as usize].1 > 0 && spans[r as usize].1 > 0;
            let Some(&(left, right, _)) = makers_of(id).iter().find(has_bytes) else { continue };
            let (l, r) = (spans[left as usize], spans[right as usize]);
            let start = arena.len() as u32;
            arena.extend_from_within(l.0 as usize..(l.0 + l.1) as usize);
            arena.extend_from_within(r.0 as usize..(r.0 + r.1) as usize);
            spans[id as usize] = (start, l.1 + r.1);
        }
        let bytes = |id: u32| {
            let (start, len) = spans[id as usize];
            &arena[start as usize..(start + len) as usize]
        };

        // How BPE builds each token from its bytes: the tokens that encode to themselves
        // (`reachable`), and the last merge of each. Shortest first, so a token's parts are
        // decided before it.
        // - Merges in rank order: each token's last merge ranks after those of its parts.
        //   Only these merges ever happen: a merge that makes `m` happens after everything
        //   inside `m`'s bytes has merged as if they stood alone, so it is `m`'s last merge.
        //   Other pairs in the table, such as Llama 3's ("ĠGlob", "al") ranked long before
        //   "ĠGlob" itself, never meet.
        // - A token encodes to itself exactly when BPE on its bytes reaches the two parts of
        //   one of the merges that make it (then they merge). It reaches at most one such
        //   pair, and only a pair of parts that encode to themselves (the merges inside a
        //   part's bytes are those of the part alone). Where these parts are built in order,
        //   `walk` decides from the build trees whether BPE reaches them before anything
        //   merges across them (the pairs it looks up are all shorter than the token, so
        //   already in `last_merges`). Otherwise the token is encoded again, merge by merge
        //   (`last_merge_if_whole`): encoding all 200k tokens of o200k that way was 150 ms,
        //   half of building these tables.
        let mut trees = BuildTrees::new(n);
        let mut reachable = is_byte.clone();
        let mut in_order = is_byte;
        let (mut ids, mut pairs) = (Vec::new(), Vec::new());
        for &id in &merged {
            if spans[id as usize].1 == 0 {
                continue;
            }
            let mut last_merge = None;
            for &(left, right, rank) in makers_of(id) {
                let (l, r) = (left as usize, right as usize);
                if !(reachable[l] && reachable[r]) {
                    continue;
                }
                if !(in_order[l] && in_order[r]) {
                    last_merge = bpe.last_merge_if_whole(bytes(id), id, &mut ids, &mut pairs);
                    break;
                }
                if trees.walk(left, right, 0) {
                    last_merge = Some((left, right, rank));
                    break;
                }
            }
            if let Some((left, right, rank)) = last_merge {
                let at = rank.checked_add(1)?;
                trees.split[id as usize] = (left, right);
                trees.built_at[id as usize] = at;
                trees.last_merges.insert(super::pair_key(left, right), at);
                reachable[id as usize] = true;
                in_order[id as usize] = in_order[left as usize]
                    && in_order[right as usize]
                    && trees.built_at[left as usize] < at
                    && trees.built_at[right as usize] < at;
            }
        }

        let ids: Vec<u32> = (0..n as u32).filter(|&id| reachable[id as usize]).collect();
        let tokens = Trie::new(ids.iter().map(|&id| (bytes(id), id)));
        let shorter = tokens.longest_proper_prefixes(n);
        Some(LongPieces { tokens, trees, shorter, spans, arena, in_order, memo_owner: super::next_cache_owner() })
    }

    fn bytes(&self, id: u32) -> &[u8] {
        let (start, len) = self.spans[id as usize];
        &self.arena[start as usize..(start + len) as usize]
    }

    /// Whether BPE encodes the bytes of `left` followed by those of `right` as these two.
    #[inline(always)]
    fn compatible(&self, bpe: &Bpe, left: u32, right: u32, memo: &mut PairMemo) -> bool {
        memo.get_or_insert_with(super::pair_key(left, right), || {
            if self.in_order[left as usize] && self.in_order[right as usize] {
                return self.trees.walk(left, right, u64::MAX);
            }
            let mut pair = self.bytes(left).to_vec();
            pair.extend_from_slice(self.bytes(right));
            bpe.merges_only(&pair) == [left, right]
        })
    }

    /// The first of `candidate` (`NO_ID`: none) and its shorter prefixes (`shorter`) that
    /// is compatible after `left`; `NO_ID`: none is.
    #[inline(always)]
    fn first_fit(&self, bpe: &Bpe, left: u32, candidate: u32, memo: &mut PairMemo) -> u32 {
        if candidate == NO_ID {
            return NO_ID;
        }
        let pair = super::pair_key(left, candidate);
        let slot = PairMemo::slot(pair);
        if memo.fit_pairs[slot] == pair {
            return memo.fits[slot];
        }
        let mut fit = candidate;
        while fit != NO_ID && !self.compatible(bpe, left, fit, memo) {
            fit = self.shorter[fit as usize];
        }
        (memo.fit_pairs[slot], memo.fits[slot]) = (pair, fit);
        fit
    }

    /// Appends the encoding of `text`. `false` (and nothing appended) if the search found
    /// none: a char outside the vocabulary of a chars alphabet (the checks in `new` rule
    /// out every other case); the caller then uses the heap.
    pub(super) fn encode(&self, bpe: &Bpe, text: &[u8], out: &mut Vec<u32>) -> Result<bool> {
        MEMO.with(|cell| match cell.try_borrow_mut() {
            Ok(mut memo) => {
                if memo.owner != self.memo_owner {
                    memo.pairs.fill(NO_PAIR);
                    memo.fit_pairs.fill(NO_PAIR);
                    memo.owner = self.memo_owner;
                }
                self.search(bpe, text, out, &mut memo)
            }
            // The search never calls itself, so this is not reached; a memo of its own is right.
            Err(_) => self.search(bpe, text, out, &mut PairMemo::new(self.memo_owner)),
        })
    }

    fn search(&self, bpe: &Bpe, text: &[u8], out: &mut Vec<u32>, memo: &mut PairMemo) -> Result<bool> {
        let n = text.len();
        let mut tokens: Vec<u32> = Vec::new();
        let mut dead: Vec<u64> = Vec::new();
        Error::reserve(&mut tokens, n, "the tokens of one piece")?;
        Error::reserve(&mut dead, n / 64 + 1, "the search marks of one piece")?;
        dead.resize(n / 64 + 1, 0);
        let is_dead = |dead: &[u64], at: usize| dead[at / 64] >> (at % 64) & 1 == 1;
        // The trie is asked the same questions again and again on the long pieces that are
        // slow to encode (runs of one char, repeated patterns), and comparing bytes beats
        // walking the trie down them again. Two memos, both of answers that do not depend
        // on where the text ends:
        // - the last question (where it started, how many bytes its answer depends on) and
        //   its answer: a run of one char asks it at every token;
        // - answers that depend on at most 8 bytes, by those 8 bytes: a repeated pattern
        //   asks a few questions in turn.
        // 10 MB in one piece, one core. The first memo: Tekken's one letter (5 million
        // tokens "aa", "aaa" tried first) 0.31 -> 0.13 s, its spaces (a walk 65 nodes deep
        // for each 64-space token) 0.31 -> 0.12 s. The second, on top: a repeated CJK
        // phrase 0.074-0.087 -> 0.034-0.039 s (o200k) and 0.10-0.12 -> 0.08 s (Tekken),
        // emoji ZWJ sequences 0.11 -> 0.065 s (o200k).
        let mut longest = LongestAt { text, trie: &self.tokens, recent: None, windows: WindowMemo::new() };
        // A third memo, of dead ends: after a token, where the next 8 bytes are a window,
        // no token fits. Kept only where that was found without a mark or a dead end
        // (every token tried there, from the longest, was not compatible, which does not
        // depend on the text) and the longest token there depends on at most these bytes.
        // A token is then not taken where a dead end would follow it, rather than taken,
        // followed by nothing and taken back. Runs where that happened at every other
        // token, 10 MB in one piece, one core: GPT-2's digits 0.20-0.21 s -> 0.16-0.18 s,
        // Tekken's one letter ("aaa" after "aa", taken back for "aa") 0.15 s -> 0.08 s.
        // (A first version that tested every token tried for a mark twice, once for
        // `marks_seen`, made Tekken's run of spaces, 12 tokens tried after each 64-space
        // token, 25% slower; now it is unchanged.)
        let mut dead_ends = DeadEnds::new();
        let mut at = 0;
        let (mut next, mut seen) = longest.at(0);
        'search: while let Some(longest_here) = next {
            let last = tokens.last().copied();
            // The tokens to try at `at`, from the longest there down its shorter prefixes,
            // each against the marks, then `last`, then the dead ends; `None`: none is left.
            let mut candidate = Some(longest_here);
            let mut marks_seen = false; // a token was not taken for a mark
            while let Some(token) = candidate {
                let end = at + bpe.token_len(token);
                if is_dead(&dead, end) {
                    marks_seen = true;
                } else if last.is_none_or(|l| self.compatible(bpe, l, token, memo)) {
                    // A dead end depends on bytes past this window: it counts as a mark
                    // (found by a review: as a pure rejection, a dead end recorded through
                    // it was false where those bytes differ, and the search failed).
                    if window_at(text, end).is_some_and(|w| dead_ends.contains(token, w)) {
                        marks_seen = true;
                    } else {
                        tokens.push(token);
                        at = end;
                        (next, seen) = longest.at(at);
                        continue 'search;
                    }
                } else if let Some(l) = last {
                    // Not compatible after `last`, and neither are its prefixes before the
                    // first that is (`first_fit`): whether two tokens are compatible depends
                    // on them alone, so they are passed over, not tried in turn, and a mark
                    // at the end of one would not have mattered (nor made a dead end found
                    // here depend on the text). A run of spaces in Tekken, whose tokens of
                    // 75, 71 and 67 spaces have no space token after them, tried the 60
                    // shorter space tokens after each: 130 tries for each 64-space token
                    // kept, and 70% of the time of 10 MB of spaces.
                    candidate = Some(self.first_fit(bpe, l, self.shorter[token as usize], memo)).filter(|&t| t != NO_ID);
                    continue;
                }
                candidate = Some(self.shorter[token as usize]).filter(|&t| t != NO_ID);
            }
            // No token fits after `last`: no encoding goes through `at`. Take `last` back
            // and try its shorter prefixes. (A token taken back meets the mark just set at
            // its end first, so a dead end is only kept where the search started from the
            // longest token.)
            if let (Some(l), Some(w), true) = (last, window_at(text, at), !marks_seen && seen <= 8) {
                dead_ends.insert(l, w);
            }
            dead[at / 64] |= 1 << (at % 64);
            tokens.pop();
            at -= last.map_or(0, |l| bpe.token_len(l));
            next = last;
        }
        if at != n {
            return Ok(false);
        }
        out.extend_from_slice(&tokens);
        Ok(true)
    }
}

/// The longest token at a position of one text, and how many bytes the answer depends on,
/// through the two memos that `search` describes.
struct LongestAt<'a> {
    text: &'a [u8],
    trie: &'a Trie,
    recent: Option<(usize, usize, Option<u32>)>,
    windows: WindowMemo,
}

impl LongestAt<'_> {
    /// The memos inlined into the search, the trie's walk not: as a closure (called from
    /// two places, so not inlined) a question the memos answered cost about 100
    /// instructions, the closure's captures loaded through pointers and its answer
    /// returned through memory (callgrind, GPT-2, repeated digits).
    #[inline(always)]
    fn at(&mut self, at: usize) -> (Option<u32>, usize) {
        if let Some((start, seen, answer)) = self.recent {
            if at + seen <= self.text.len() && same_bytes(self.text, start, at, seen) {
                return (answer, seen);
            }
        }
        let window = window_at(self.text, at);
        if let Some(answer) = window.and_then(|w| self.windows.get(w)) {
            return (answer, 8);
        }
        self.walk(at, window)
    }

    #[inline(never)]
    fn walk(&mut self, at: usize, window: Option<u64>) -> (Option<u32>, usize) {
        let (answer, seen) = self.trie.longest_seen(&self.text[at..]);
        if let (Some(w), true) = (window, seen <= 8) {
            self.windows.insert(w, answer);
        }
        self.recent = (at + seen <= self.text.len()).then_some((at, seen, answer));
        (answer, seen)
    }
}

/// The 8 bytes of `text` from `at`, as a number, if there are 8.
#[inline]
fn window_at(text: &[u8], at: usize) -> Option<u64> {
    text.get(at..at + 8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
}

/// (token, window) pairs after which no token fits (`search`): a direct-mapped table of 64.
struct DeadEnds {
    keys: [(u32, u64); 64],
}

impl DeadEnds {
    fn new() -> Self {
        DeadEnds { keys: [(NO_ID, 0); 64] }
    }

    #[inline]
    fn slot(token: u32, window: u64) -> usize {
        ((window ^ u64::from(token).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize
    }

    #[inline]
    fn contains(&self, token: u32, window: u64) -> bool {
        self.keys[Self::slot(token, window)] == (token, window)
    }

    #[inline]
    fn insert(&mut self, token: u32, window: u64) {
        self.keys[Self::slot(token, window)] = (token, window);
    }
}

/// Answers of the trie that depend on at most the first 8 bytes of the text, by those
/// bytes: 64 sets of two, the more recently inserted first. A repeated pattern asks about
/// as many windows as its period has bytes, and with one slot a window (the table this
/// replaces), three of the ten of GPT-2's repeated digits shared a slot and pushed each
/// other out: half of the questions went down the trie again (3 M of 6 M on 10 MB).
struct WindowMemo {
    windows: [[u64; 2]; 64],
    answers: [[Option<u32>; 2]; 64],
    /// Bit `2 * set + way`: that slot holds a window.
    filled: u128,
}

impl WindowMemo {
    fn new() -> Self {
        WindowMemo { windows: [[0; 2]; 64], answers: [[None; 2]; 64], filled: 0 }
    }

    #[inline]
    fn set(window: u64) -> usize {
        // The high half folded in first: windows that differ only in their last bytes (the
        // high bits) went to few sets through the multiplication alone.
        ((window ^ window >> 32).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize
    }

    #[inline]
    fn get(&self, window: u64) -> Option<Option<u32>> {
        let set = Self::set(window);
        let filled = (self.filled >> (2 * set)) as u32;
        let ways = &self.windows[set];
        if filled & 1 == 1 && ways[0] == window {
            Some(self.answers[set][0])
        } else if filled & 2 == 2 && ways[1] == window {
            Some(self.answers[set][1])
        } else {
            None
        }
    }

    #[inline]
    fn insert(&mut self, window: u64, answer: Option<u32>) {
        let set = Self::set(window);
        let (windows, answers) = (&mut self.windows[set], &mut self.answers[set]);
        (windows[1], answers[1]) = (windows[0], answers[0]);
        (windows[0], answers[0]) = (window, answer);
        // The first way is filled now, the second where the first was.
        let first = self.filled >> (2 * set) & 1;
        self.filled |= (1 | first << 1) << (2 * set);
    }
}

/// Whether `text[a..a + len]` equals `text[b..b + len]` (both in bounds). Up to 8 bytes,
/// two loads and a mask: a `memcmp` call cost more than the short tokens of a run.
#[inline]
fn same_bytes(text: &[u8], a: usize, b: usize, len: usize) -> bool {
    let word = |at: usize| text.get(at..at + 8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
    match (len, word(a), word(b)) {
        (1..=8, Some(x), Some(y)) => (x ^ y) & (u64::MAX >> (64 - 8 * len)) == 0,
        _ => text[a..a + len] == text[b..b + len],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    /// Byte tokens for a, b, c (ids 0-2) and every other byte (ids 3..), then `merged`.
    fn vocab(merged: &[&'static [u8]], merges: &[(u32, u32, u32)]) -> Bpe {
        let mut tokens: Vec<(Vec<u8>, u32)> = b"abc".iter().enumerate().map(|(i, &b)| (vec![b], i as u32)).collect();
        let others = (0..=255u8).filter(|b| !b"abc".contains(b));
        tokens.extend(others.enumerate().map(|(i, b)| (vec![b], 3 + i as u32)));
        tokens.extend(merged.iter().enumerate().map(|(i, m)| (m.to_vec(), 256 + i as u32)));
        Bpe::new(tokens.iter().map(|(b, id)| (b.as_slice(), *id)), merges.iter().copied(), false)
    }

    fn random_text(state: &mut u32, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                alphabet[(*state >> 16) as usize % alphabet.len()]
            })
            .collect()
    }

    /// A few random chunks of 1-14 bytes, repeated in random order, some with one byte
    /// changed: the searches' memos see the same windows again with different bytes after
    /// them (from a review, where such texts found memo bugs ten times as often).
    fn repeated_chunks(state: &mut u32, len: usize, alphabet: &[u8]) -> Vec<u8> {
        let count = 2 + random_text(state, 1, &[0, 1, 2, 3])[0] as usize;
        let lens: Vec<u8> = (1..=14).collect();
        let chunks: Vec<Vec<u8>> = (0..count).map(|_| {
            let n = random_text(state, 1, &lens)[0] as usize;
            random_text(state, n, alphabet)
        }).collect();
        let which: Vec<u8> = (0..count as u8).collect();
        let mut text = Vec::new();
        while text.len() < len {
            let mut chunk = chunks[random_text(state, 1, &which)[0] as usize].clone();
            if random_text(state, 1, &[0, 1, 2])[0] == 0 {
                let at = random_text(state, 1, &lens[..chunk.len()])[0] as usize - 1;
                chunk[at] = random_text(state, 1, alphabet)[0];
            }
            text.extend(chunk);
        }
        text.truncate(len);
        text
    }

    /// `out_of_order`: the tokens whose build tree has a merge out of rank order.
    fn assert_same_as_heap(bpe: &Bpe, out_of_order: &[u32]) {
        let long = LongPieces::new(bpe).expect("a vocabulary the linear encoder takes");
        let found: Vec<u32> = (0..bpe.lens.len() as u32).filter(|&id| long.spans[id as usize].1 > 0 && !long.in_order[id as usize]).collect();
        assert_eq!(found, out_of_order);
        let mut state = 7;
        for len in (1..300).chain([1000, 5000]) {
            for alphabet in [&b"abc"[..], b"aab", b"ab", b"abcd"] {
                let text = random_text(&mut state, len, alphabet);
                assert_linear_as_heap(&long, bpe, &text);
            }
        }
    }

    /// The tables equal what encoding each token's bytes again says: whether it encodes to
    /// itself, and if so its last merge.
    fn assert_tables_as_if_each_token_were_encoded(bpe: &Bpe) {
        let long = LongPieces::new(bpe).expect("a vocabulary the linear encoder takes");
        let (mut ids, mut pairs) = (Vec::new(), Vec::new());
        let mut checked = 0;
        for id in 0..bpe.lens.len() as u32 {
            if long.spans[id as usize].1 == 0 {
                continue; // no merge makes it
            }
            // A first symbol (a byte's token) encodes to itself with no merge: `None` both.
            let expected = bpe.last_merge_if_whole(long.bytes(id), id, &mut ids, &mut pairs);
            let at = long.trees.built_at[id as usize];
            let found = (at > 0 && long.tokens.longest(long.bytes(id)) == Some(id)).then(|| {
                let (left, right) = long.trees.split[id as usize];
                (left, right, at - 1)
            });
            assert_eq!(found, expected, "token {id} {:?}", String::from_utf8_lossy(long.bytes(id)));
            checked += 1;
        }
        assert!(checked > 0);
    }

    /// A vocabulary grown as training grows one, then converted as from tiktoken ranks:
    /// `count` tokens after the bytes of `alphabet`, each two earlier tokens joined, then a
    /// merge for every split of a token into two tokens, ranked by the token it makes, then
    /// by the parts' ids (as transformers converts a rank file). So some tokens are built
    /// out of rank order (a split whose part comes later), and most by several merges.
    fn trained_vocab(state: &mut u32, alphabet: &[u8], count: usize) -> Bpe {
        let mut all: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut id_of: FxHashMap<Vec<u8>, u32> = all.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut grown: Vec<u32> = alphabet.iter().map(|&b| u32::from(b)).collect();
        while all.len() < 256 + count {
            let pick = random_text(state, 2, &(0..grown.len().min(255) as u8).collect::<Vec<u8>>());
            let token = [all[grown[pick[0] as usize] as usize].clone(), all[grown[pick[1] as usize] as usize].clone()].concat();
            if token.len() <= 12 && !id_of.contains_key(&token) {
                id_of.insert(token.clone(), all.len() as u32);
                grown.push(all.len() as u32);
                all.push(token);
            }
        }
        let mut merges = Vec::new();
        for (id, token) in all.iter().enumerate().skip(256) {
            let mut splits: Vec<(u32, u32)> = (1..token.len())
                .filter_map(|cut| Some((*id_of.get(&token[..cut])?, *id_of.get(&token[cut..])?)))
                .collect();
            splits.sort_unstable();
            merges.extend(splits.into_iter().map(|(l, r)| (l, r, id as u32)));
        }
        Bpe::new(all.iter().enumerate().map(|(i, t)| (t.as_slice(), i as u32)), merges, false)
    }

    #[test]
    fn tables_are_what_encoding_each_token_again_gives() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tokensmith/assets/gpt2/tokenizer.json");
        let gpt2 = crate::formats::tokenizer_json::from_str(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        assert_tables_as_if_each_token_were_encoded(&gpt2.bpe);
        let mut state = 11;
        for round in 0..200 {
            let alphabet: &[u8] = [&b"ab"[..], b"abc", b"aab", b"abca"][round % 4];
            let bpe = trained_vocab(&mut state, &alphabet[..3.min(alphabet.len())], 30 + round % 90);
            assert_tables_as_if_each_token_were_encoded(&bpe);
            let long = LongPieces::new(&bpe).unwrap();
            for len in [50, 300, 777, 999, 1234, 2000] {
                let text = random_text(&mut state, len, alphabet);
                assert_linear_as_heap(&long, &bpe, &text);
            }
        }
    }

    /// Vocabularies no training would make: random strings, each made by a merge for every
    /// split into two tokens, ranked in the order of the tokens they make (as a rank file's
    /// conversion does), shuffled (so most tokens are built out of rank order and many are
    /// never made), or on a chars alphabet with tied ranks (as SentencePiece scores tie).
    /// The tables and the search are exact on them too: every token whose bytes encode to
    /// itself is found in the trie, and every text encodes as the heap does.
    #[test]
    fn random_vocabularies_with_every_split_a_merge_match_the_heap() {
        let mut state = 5;
        for round in 0..300 {
            let alphabet: &[u8] = [&b"ab"[..], b"abc", b"aab"][round % 3];
            let mut all: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
            let mut id_of: FxHashMap<Vec<u8>, u32> = all.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
            let (count, longest) = (5 + round % 60, 3 + round % 9);
            for _ in 0..20 * count {
                let len = 2 + random_text(&mut state, 1, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9][..longest - 1])[0] as usize;
                let token = random_text(&mut state, len, alphabet);
                if all.len() < 256 + count && !id_of.contains_key(&token) {
                    id_of.insert(token.clone(), all.len() as u32);
                    all.push(token);
                }
            }
            let mut merges = Vec::new();
            for (id, token) in all.iter().enumerate().skip(256) {
                let splits = (1..token.len()).filter_map(|cut| Some((*id_of.get(&token[..cut])?, *id_of.get(&token[cut..])?)));
                merges.extend(splits.map(|(l, r)| (l, r, id as u32)));
            }
            let tokens = || all.iter().enumerate().map(|(i, t)| (t.as_slice(), i as u32));
            let bpe = match round % 3 {
                0 => Bpe::new(tokens(), merges, false),
                1 => {
                    let order = random_text(&mut state, merges.len(), &(0..=255u8).collect::<Vec<u8>>());
                    let mut shuffled: Vec<(u8, (u32, u32, u32))> = order.into_iter().zip(merges).collect();
                    shuffled.sort_by_key(|&(key, _)| key);
                    Bpe::new(tokens(), shuffled.into_iter().map(|(_, merge)| merge), false)
                }
                _ => {
                    let mut chars = super::super::CharSymbols::default();
                    chars.forms[0].extend(alphabet.iter().map(|&b| (char::from(b), u32::from(b))));
                    let tie = 1 + round as u32 % 4;
                    let ranked = merges.iter().enumerate().map(|(rank, &(l, r, m))| (l, r, m, rank as u32 / tie));
                    Bpe::with_ranked_pairs(tokens().filter(|(t, id)| *id >= 256 || alphabet.contains(&t[0])), ranked, chars)
                }
            };
            let long = LongPieces::new(&bpe).expect("a vocabulary the linear encoder takes");
            assert_tables_as_if_each_token_were_encoded(&bpe);
            for (id, token) in all.iter().enumerate().skip(256) {
                let mut heap = bpe.symbols(token, None).unwrap();
                bpe.merge_heap(&mut heap).unwrap();
                heap.retain(|&id| id != NO_ID);
                let in_trie = long.tokens.longest(token) == Some(id as u32);
                assert_eq!(in_trie, heap == [id as u32], "round {round}: {:?}", String::from_utf8_lossy(token));
            }
            for len in [1, 2, 5, 17, 60, 300] {
                let text = random_text(&mut state, len, alphabet);
                assert_linear_as_heap(&long, &bpe, &text);
            }
            assert_linear_as_heap(&long, &bpe, &repeated_chunks(&mut state, 1000, alphabet));
        }
    }

    /// The linear encoder finds an encoding of `text`, and it is the heap's.
    fn assert_linear_as_heap(long: &LongPieces, bpe: &Bpe, text: &[u8]) {
        let mut heap = bpe.symbols(text, None).unwrap();
        bpe.merge_heap(&mut heap).unwrap();
        heap.retain(|&id| id != NO_ID);
        let mut linear = Vec::new();
        assert!(long.encode(bpe, text, &mut linear).unwrap(), "{:?}", String::from_utf8_lossy(text));
        assert_eq!(linear, heap, "{:?}", String::from_utf8_lossy(text));
    }

    #[test]
    fn a_dead_end_found_through_a_dead_end_is_not_kept() {
        // From a review. Bytes are their own ids; merged tokens from 256, in rank order.
        // "dc" then "ba" is a dead end before "xyyyyyvv" but not before "xyyyyyz".
        let names: &[&[u8]] = &[b"yy", b"yyyy", b"yyyyy", b"xyyyyy", b"xyyyyyz", b"ax", b"axyyyyy", b"ba", b"cb", b"dc"];
        let id = |t: &[u8]| if t.len() == 1 { u32::from(t[0]) } else { 256 + names.iter().position(|n| *n == t).unwrap() as u32 };
        let parts: [(&[u8], &[u8]); 10] = [
            (b"y", b"y"), (b"yy", b"yy"), (b"yyyy", b"y"), (b"x", b"yyyyy"), (b"xyyyyy", b"z"),
            (b"a", b"x"), (b"a", b"xyyyyy"), (b"b", b"a"), (b"c", b"b"), (b"d", b"c"),
        ];
        let merges: Vec<(u32, u32, u32)> = parts.iter().map(|(l, r)| (id(l), id(r), id(&[*l, *r].concat()))).collect();
        let mut tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], u32::from(b))).collect();
        tokens.extend(names.iter().map(|n| (n.to_vec(), id(n))));
        let bpe = Bpe::new(tokens.iter().map(|(b, i)| (b.as_slice(), *i)), merges, false);
        assert_linear_as_heap(&LongPieces::new(&bpe).unwrap(), &bpe, b"baxyyyyyvvwdcbaxyyyyyvvwdcbaxyyyyyzw");
    }

    #[test]
    fn a_token_made_by_a_merge_with_a_part_never_made_is_spelled_by_another() {
        // From a review: xy is in the vocabulary but no merge makes it; xyz is made by
        // (xy, z) and by (x, yz). Ids shifted to vary the order of the merge table.
        for extra in 0..4u32 {
            for reversed in [false, true] {
                let base = 256 + extra;
                let mut tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], u32::from(b))).collect();
                tokens.extend((0..extra).map(|i| (vec![b'q'; 2 + i as usize], 256 + i)));
                tokens.extend([(b"xy".to_vec(), base), (b"yz".to_vec(), base + 1), (b"xyz".to_vec(), base + 2)]);
                let (x, y, z) = (u32::from(b'x'), u32::from(b'y'), u32::from(b'z'));
                let mut two = vec![(base, z, base + 2), (x, base + 1, base + 2)];
                if reversed {
                    two.reverse();
                }
                let merges = [vec![(y, z, base + 1)], two].concat();
                let bpe = Bpe::new(tokens.iter().map(|(b, i)| (b.as_slice(), *i)), merges, false);
                assert_linear_as_heap(&LongPieces::new(&bpe).unwrap(), &bpe, b"xyzxyzwxyz");
            }
        }
    }

    #[test]
    fn merges_in_rank_order_walk_back_and_match_the_heap() {
        // ab=256, bc=257, abc=258 (never made: "abc" merges as a + bc), aa=259, aaa=260,
        // abab=261, caa=262.
        let bpe = vocab(
            &[b"ab", b"bc", b"abc", b"aa", b"aaa", b"abab", b"caa"],
            &[(1, 2, 257), (0, 1, 256), (256, 2, 258), (0, 0, 259), (259, 0, 260), (256, 256, 261), (2, 259, 262)],
        );
        assert_same_as_heap(&bpe, &[258]); // never made, so never walked
        let long = LongPieces::new(&bpe).unwrap();
        assert_eq!(long.tokens.longest(b"abcc"), Some(256), "abc is not a token BPE can make");
    }

    #[test]
    fn merges_out_of_rank_order_encode_pairs_again_and_match_the_heap() {
        // aab=257 is made from a + ab=256 at rank 0, before ab itself (rank 1); so is aaba,
        // which contains it. The other pairs are walked.
        let bpe = vocab(&[b"ab", b"aab", b"ba", b"aaba"], &[(0, 256, 257), (0, 1, 256), (1, 0, 258), (257, 0, 259)]);
        assert_same_as_heap(&bpe, &[257, 259]);
    }

    #[test]
    fn the_window_memo_keeps_every_window_of_a_repeated_pattern() {
        // The windows of GPT-2's repeated digits that the search asks about (three of them
        // shared a slot of the table before), then those of letters repeated with a few
        // other periods up to 16.
        let digits = b"1234567890".repeat(4);
        for period in [10, 2, 3, 5, 7, 11, 13, 16] {
            let text = if period == 10 { digits.clone() } else { (0..48u8).map(|i| b'a' + i % period).collect() };
            let windows: Vec<u64> = (0..usize::from(period)).map(|at| window_at(&text, at).unwrap()).collect();
            let mut memo = WindowMemo::new();
            for (i, &w) in windows.iter().enumerate() {
                memo.insert(w, Some(i as u32));
            }
            for (i, &w) in windows.iter().enumerate() {
                assert_eq!(memo.get(w), Some(Some(i as u32)), "period {period}, window {i}");
            }
        }
        // Three windows of one set: the least recently inserted goes, the others stay.
        let same_set: Vec<u64> = (0..u64::MAX).step_by(1 << 40).filter(|&w| WindowMemo::set(w) == 5).take(3).collect();
        let mut memo = WindowMemo::new();
        assert_eq!(memo.get(same_set[0]), None, "an empty memo holds nothing, not even window 0");
        for (i, &w) in same_set.iter().enumerate() {
            memo.insert(w, (i > 0).then_some(i as u32));
        }
        assert_eq!(memo.get(same_set[0]), None);
        assert_eq!(memo.get(same_set[1]), Some(Some(1)));
        assert_eq!(memo.get(same_set[2]), Some(Some(2)));
    }

    #[test]
    fn same_bytes_compares_exactly_len_bytes() {
        let text = b"abcdefghXbcdefghabcdefgh";
        for len in 1..=8 {
            assert!(same_bytes(text, 0, 16, len), "{len}");
            assert_eq!(same_bytes(text, 0, 8, len), false, "{len}: the first byte differs");
            assert_eq!(same_bytes(text, 1, 9, len), len < 8, "{len}: the 8th byte differs");
        }
        assert!(same_bytes(text, 20, 20, 4), "near the end: compared as slices");
        assert!(!same_bytes(text, 8, 0, 9));
        let long = b"abcdefghijabcdefghijabcdefghiX";
        assert!(same_bytes(long, 0, 10, 10) && !same_bytes(long, 0, 20, 10), "over 8 bytes: compared as slices");
    }

    #[test]
    fn runs_of_one_letter_match_the_heap_at_every_length() {
        // Runs ask the trie the same question at every token; tokens of 1-16 `a`s make some
        // answers depend on more than 8 bytes, and texts ending mid-token on the text's end.
        // aa=256, aaa=257 (after aa, as Tekken has it), aaaa=258, a8=259, a16=260, ba=261.
        let bpe = vocab(
            &[b"aa", b"aaa", b"aaaa", b"aaaaaaaa", b"aaaaaaaaaaaaaaaa", b"ba"],
            &[(0, 0, 256), (256, 256, 258), (1, 0, 261), (258, 258, 259), (0, 256, 257), (259, 259, 260)],
        );
        let long = LongPieces::new(&bpe).unwrap();
        for n in 1..100 {
            for text in [vec![b'a'; n], [&b"b"[..], &vec![b'a'; n], b"c", &vec![b'a'; n / 2]].concat()] {
                assert_linear_as_heap(&long, &bpe, &text);
            }
        }
    }

    #[test]
    fn vocabularies_it_cannot_take_keep_the_heap() {
        // A byte without a token.
        let tokens: Vec<(&[u8], u32)> = vec![(b"a", 0), (b"b", 1), (b"ab", 2)];
        assert!(LongPieces::new(&Bpe::new(tokens, vec![(0, 1, 2)], false)).is_none());
        // A merge whose parts do not spell its result.
        assert!(LongPieces::new(&vocab(&[b"abc"], &[(0, 1, 256)])).is_none());
    }
}

