//! Where a piece of a byte-level vocabulary may be cut before it is merged.
//!
//! Why: a first pass over Chinese text was mostly merges (`first-pass zh` at 0.5-0.7x of the
//! fastest peer). A run of CJK chars without punctuation is one piece of 6-40 chars (17-120
//! bytes), merged from its bytes in O(n^2), and such runs seldom repeat, so the cache does
//! not help. Their parts between chars that no token joins do repeat: the 12,228 CJK runs of
//! 500 kB of the Chinese handbook (9,048 distinct) are 66,494 parts (2,366 distinct), nearly
//! all of one or two chars, and those are in the cache after a few pages.
//!
//! Why it is exact: every merge makes a token, so no merge ever joins two symbols across a
//! point of the text that no token spans. The symbols on either side of such a point merge
//! as if they stood alone, and the ids of the parts, joined, are the piece's.
//!
//! Where: only points between two chars of 3-4 bytes (CJK, kana, hangul, Thai, Indic
//! scripts, emoji), where the savings are. Between two Cyrillic letters, say, a cut is rare
//! and looking for one is not: the 2 MB of the Russian handbook have 18,457 pieces over 16
//! bytes, 183,260 points between two letters in them, and 2,628 of those may be cut.
//!
//! What spans a point: a token spans the point between chars `a` and `b` when it holds a
//! suffix of `a`'s bytes followed by a prefix of `b`'s. Every point inside a token that
//! merges make is the junction of one merge of its build tree, so the merges' junctions
//! say it all: where the two chars at a junction are whole, that pair of chars is never
//! cut; where one is not (a token of partial chars, such as Llama 3's "选" followed by the
//! first two bytes of "择"), no point is cut where the char before ends with the junction's
//! left bytes and the char after starts with its right ones.
//!
//! `ignore_merges` vocabularies look a whole piece up among the tokens before merging it;
//! a part is not a piece, so it gets what merges give it. That is the whole-token answer
//! for nearly every part that is a token, but not for all (`merges_make`).
//!
//! A part or piece of CJK chars that is new is merged from its chars' tokens, not from its
//! bytes, where that is sure to give the same (`ByteCuts::merge_chars`).

use super::{decode_char, Alphabet, Bpe, Flat, FLAT_MAX, NO_RANK};
use rustc_hash::FxHashSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

#[derive(Debug)]
pub(super) struct ByteCuts {
    /// Pairs of chars (`a << 32 | b`) that some token joins.
    pairs: FxHashSet<u64>,
    /// One bit per three bytes (the last of one char, the first two of the next) that a
    /// token of partial chars joins (`fine_bit`): where it is clear, no such token joins
    /// the two chars. By the last and first byte alone, the bit was set for most pairs of
    /// CJK chars in Qwen2, whose 82 such merges end in a char's last byte or start with a
    /// char's first two (`"\x9b建"`), and the junctions were searched at most points: 3.5 M
    /// instructions of a first pass over the Chinese handbook (callgrind).
    partial: Box<[u64; PARTIAL_BITS / 64]>,
    /// Where it is set, which: the junctions of merges where a part is a partial char,
    /// sorted by `bit` of their two bytes (the last before the point, the first after it),
    /// as the bytes of the left part in the char before the point and those of the right
    /// part in the char after it.
    junctions: Vec<(usize, Vec<u8>, Vec<u8>)>,
    /// By token id (`ignore_merges` vocabularies): whether merges alone make the token from
    /// its bytes (0: not asked yet, 1: yes, 2: no, or not one answer: an id of several
    /// strings).
    merges_make: Box<[AtomicU8]>,
    /// By code point below U+10000: what merges make of the char's bytes alone, where that
    /// is one token, as `ONE_TOKEN | highest rank << 32 | id`; `NOT_ONE` where it is not; 0
    /// where not asked yet (see `merge_chars`).
    chars: Box<[AtomicU64]>,
}

const ONE_TOKEN: u64 = 1 << 63;
const NOT_ONE: u64 = u64::MAX;

impl ByteCuts {
    /// `None` for a chars alphabet, or where the merges do not spell their tokens (`Ends::new`).
    pub(super) fn new(bpe: &Bpe) -> Option<ByteCuts> {
        let Alphabet::Bytes(byte_ids) = &bpe.alphabet else { return None };
        let ends = Ends::new(bpe, byte_ids)?;
        let mut pairs = FxHashSet::default();
        let mut partial = Box::new([0u64; PARTIAL_BITS / 64]);
        let mut junctions = Vec::new();
        for &key in bpe.pairs.keys() {
            let (left, right) = ((key >> 32) as usize, key as u32 as usize);
            if ends.lens[left] == 0 || ends.lens[right] == 0 {
                continue; // never met
            }
            let (last, first) = (ends.tails[left][3], ends.heads[right][0]);
            if last < 0x80 || first < 0xE0 {
                continue; // not a point between two chars of 3-4 bytes
            }
            let tail = &ends.tails[left][4 - (ends.lens[left] as usize).min(4)..];
            let head = &ends.heads[right][..(ends.lens[right] as usize).min(4)];
            match (last_char(tail), decode_char(head)) {
                (Some(a), Some((b, _))) => {
                    pairs.insert(pair_key(a, b));
                }
                _ => {
                    // The second byte of the char after the point: the right part's second
                    // byte, or any where the part is that char's first byte alone.
                    let seconds = match ends.lens[right] {
                        1 => 0x80..=0xBF,
                        _ => ends.heads[right][1]..=ends.heads[right][1],
                    };
                    for second in seconds {
                        let at = fine_bit(last, first, second);
                        partial[at / 64] |= 1 << (at % 64);
                    }
                    junctions.push((bit(last, first), last_char_bytes(tail), first_char_bytes(head)));
                }
            }
        }
        junctions.sort_unstable();
        let merges_make: Box<[AtomicU8]> = (0..bpe.lens.len()).map(|_| AtomicU8::new(0)).collect();
        if let Some(whole) = &bpe.whole {
            // An id that several strings share (a vocabulary may give two strings one id,
            // as o200k_harmony does): what merges make of one is not the other's answer, so
            // merges decide each time.
            let mut seen = vec![false; merges_make.len()];
            for &id in whole.short.values().chain(whole.long.values()) {
                if let (Some(seen), Some(known)) = (seen.get_mut(id as usize), merges_make.get(id as usize)) {
                    if *seen {
                        known.store(2, Ordering::Relaxed);
                    }
                    *seen = true;
                }
            }
        }
        let chars = (0..0x10000).map(|_| AtomicU64::new(0)).collect();
        Some(ByteCuts { pairs, partial, junctions, merges_make, chars })
    }

    /// Whether a piece may be cut between the chars `a` and `b` (both of 3-4 bytes, whose
    /// bytes are `a_bytes` and `b_bytes`).
    #[inline]
    pub(super) fn cut(&self, a: char, b: char, a_bytes: &[u8], b_bytes: &[u8]) -> bool {
        !self.partial(a_bytes, b_bytes) && !self.pairs.contains(&pair_key(a, b))
    }

    /// Whether a token of partial chars may join the chars of `a` and `b` (both whole, of
    /// 3-4 bytes): the bytes of some such junction are a suffix of `a` and a prefix of `b`.
    /// Text is UTF-8, so no junction of other bytes can be met at that point.
    fn partial(&self, a: &[u8], b: &[u8]) -> bool {
        let fine = fine_bit(a[a.len() - 1], b[0], b[1]);
        if self.partial[fine / 64] & (1 << (fine % 64)) == 0 {
            return false;
        }
        let at = bit(a[a.len() - 1], b[0]);
        let from = self.junctions.partition_point(|j| j.0 < at);
        self.junctions[from..].iter().take_while(|j| j.0 == at).any(|(_, left, right)| a.ends_with(left) && b.starts_with(right))
    }

    /// What merges make of `piece`, a run of chars of 3 bytes (CJK) of at most `FLAT_MAX`
    /// bytes, merged from the tokens of its chars rather than from its bytes; `false` (and
    /// nothing appended) where that is not sure to be the same.
    ///
    /// Why: a first pass over Chinese merges each new piece or part from its bytes, three
    /// to a char, and each of those merges looks its pair up in a map of all merges (280 k
    /// for Llama 3) that the CPU's caches do not hold. From the chars' tokens, a part of two
    /// chars takes one lookup where its bytes took about ten.
    ///
    /// Why it is exact, where:
    /// - no token joins two of its chars with part of one of them (`partial` is clear at
    ///   each point between them), so no merge ever joins part of a char with anything
    ///   outside it: each char's bytes merge as they would alone, into its token (`chars`),
    ///   and a merge across two chars joins tokens of whole chars;
    /// - every merge across chars that this makes ranks above every merge inside a char.
    ///   BPE always merges the lowest-ranked pair there is: had it merged two chars'
    ///   tokens while a char was still in pieces, some merge inside that char would have
    ///   been there to take, ranked lower. So merges across chars are taken as if every
    ///   char were its token from the start. Vocabularies made from ranks (Llama 3, o200k)
    ///   have merges ranked before those that make their parts: the check is made for the
    ///   merges of each piece, not taken for granted.
    pub(super) fn merge_chars(&self, bpe: &Bpe, byte_ids: &[u32; 256], piece: &[u8], out: &mut Vec<u32>) -> bool {
        let mut flat = Flat::<{ FLAT_MAX / 3 + 1 }>::new();
        // The highest rank of a merge inside one of the chars.
        let mut inside = 0;
        for (i, bytes) in piece.chunks(3).enumerate() {
            let Some((c, 3)) = decode_char(bytes) else { return false };
            if i > 0 && self.partial(&piece[3 * (i - 1)..3 * i], bytes) {
                return false;
            }
            let Some((id, highest)) = self.char_token(bpe, byte_ids, c, bytes) else { return false };
            inside = inside.max(highest);
            if i > 0 {
                flat.pairs[i - 1] = bpe.lookup(flat.ids[i - 1], id);
            }
            (flat.ids[i], flat.n) = (id, i + 1);
        }
        let start = out.len();
        let (lowest, _) = bpe.merge_flat_in(&mut flat, out);
        if lowest != NO_RANK && lowest <= inside {
            out.truncate(start);
            return false;
        }
        true
    }

    /// The token that merges make of a char's bytes alone and the highest rank of those
    /// merges, if that is one token: worked out once per char.
    fn char_token(&self, bpe: &Bpe, byte_ids: &[u32; 256], c: char, bytes: &[u8]) -> Option<(u32, u32)> {
        let slot = self.chars.get(c as usize)?;
        let mut known = slot.load(Ordering::Relaxed);
        if known == 0 {
            known = match bpe.merge_char(byte_ids, bytes) {
                Some((id, highest)) if highest < 1 << 31 => ONE_TOKEN | u64::from(highest) << 32 | u64::from(id),
                _ => NOT_ONE,
            };
            slot.store(known, Ordering::Relaxed);
        }
        (known != NOT_ONE).then_some((known as u32, (known >> 32) as u32 & !(1 << 31)))
    }

    /// Whether merges alone make the token `id` from its bytes, `part`: asked once per token.
    pub(super) fn merges_make(&self, bpe: &Bpe, id: u32, part: &[u8]) -> bool {
        let Some(known) = self.merges_make.get(id as usize) else { return false };
        match known.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let yes = bpe.merges_only(part) == [id];
                known.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
                yes
            }
        }
    }
}

/// The first and last four bytes of every token merges make: all that the junctions of
/// the merges need. (Spelling out every token, as the backtracking encoder does, took about 40 M
/// instructions for Llama 3.)
struct Ends {
    /// By token id: its first bytes, from the left (as many as it has, up to four).
    heads: Vec<[u8; 4]>,
    /// By token id: its last bytes, ending at the right.
    tails: Vec<[u8; 4]>,
    /// By token id: its length in bytes (0: never made).
    lens: Vec<u32>,
}

impl Ends {
    /// `None` where a byte has no token (it is dropped, and its neighbours may merge across
    /// it), where a merge's parts do not add up to its token's length, or where two merges
    /// make a token with other ends.
    fn new(bpe: &Bpe, byte_ids: &[u32; 256]) -> Option<Ends> {
        let n = bpe.lens.len();
        let len_of = |id: u32| bpe.lens.get(id as usize).copied().unwrap_or(0);
        let mut ends = Ends { heads: vec![[0; 4]; n], tails: vec![[0; 4]; n], lens: vec![0; n] };
        for (b, &id) in byte_ids.iter().enumerate() {
            let len = ends.lens.get_mut(id as usize)?;
            if *len != 0 {
                return None; // two bytes of one id: its ends are not one byte
            }
            let id = id as usize;
            (ends.heads[id], ends.tails[id], *len) = ([b as u8, 0, 0, 0], [0, 0, 0, b as u8], 1);
        }
        // Parts before wholes: every merge (a token may be made by several, and one of
        // them may have a part that nothing makes) by the length of what it makes, in a
        // counting sort (a sort of Llama 3's pairs took 40 M instructions).
        let mut longest = 0;
        for (&key, &value) in &bpe.pairs {
            let (l, r) = (len_of((key >> 32) as u32), len_of(key as u32));
            if l == 0 || r == 0 || l + r != len_of(value as u32) {
                return None; // parts that do not spell the token
            }
            longest = longest.max((l + r) as usize);
        }
        let mut next = vec![0usize; longest + 2];
        for &value in bpe.pairs.values() {
            next[len_of(value as u32) as usize + 1] += 1;
        }
        for len in 1..next.len() {
            next[len] += next[len - 1];
        }
        let mut order = vec![(0, 0, 0); bpe.pairs.len()];
        for (&key, &value) in &bpe.pairs {
            let at = &mut next[len_of(value as u32) as usize];
            (order[*at], *at) = (((key >> 32) as usize, key as u32 as usize, value as u32 as usize), *at + 1);
        }
        for (left, right, id) in order {
            let (l, r) = (ends.lens[left] as usize, ends.lens[right] as usize);
            if l == 0 || r == 0 {
                continue; // a part never made: not this way
            }
            let mut head = ends.heads[left];
            head[l.min(4)..].copy_from_slice(&ends.heads[right][..4 - l.min(4)]);
            let mut tail = ends.tails[right];
            tail[..4 - r.min(4)].copy_from_slice(&ends.tails[left][r.min(4)..]);
            if ends.lens[id] != 0 && (ends.heads[id], ends.tails[id]) != (head, tail) {
                return None; // two merges spell it differently
            }
            (ends.heads[id], ends.tails[id], ends.lens[id]) = (head, tail, (l + r) as u32);
        }
        Some(ends)
    }
}

fn pair_key(a: char, b: char) -> u64 {
    (u64::from(u32::from(a)) << 32) | u64::from(u32::from(b))
}

fn bit(last: u8, first: u8) -> usize {
    usize::from(last) << 8 | usize::from(first)
}

/// Bits of `ByteCuts::partial`: 16 kB.
const PARTIAL_BITS: usize = 1 << 17;

/// The bit of `ByteCuts::partial` for the last byte of a char and the first two of the next:
/// the low six bits of the last and the second (continuation bytes), the low five of the
/// first (`0xE0` and up). Bytes of other kinds share bits with these, which only sends a
/// point to the search of the junctions.
fn fine_bit(last: u8, first: u8, second: u8) -> usize {
    usize::from(last & 0x3F) << 11 | usize::from(first & 0x1F) << 6 | usize::from(second & 0x3F)
}

/// The bytes of `tail`, a token's end, from its last that is not a continuation byte (all
/// of them if none is).
fn last_char_bytes(tail: &[u8]) -> Vec<u8> {
    let start = tail.iter().rposition(|&b| b & 0xC0 != 0x80).unwrap_or(0);
    tail[start..].to_vec()
}

/// The bytes of `head`, a token's start, up to its second that is not a continuation byte.
fn first_char_bytes(head: &[u8]) -> Vec<u8> {
    let end = head.iter().skip(1).position(|&b| b & 0xC0 != 0x80).map_or(head.len(), |at| at + 1);
    head[..end].to_vec()
}

/// The last char of `bytes`, if it is whole there.
fn last_char(bytes: &[u8]) -> Option<char> {
    let start = bytes.iter().rposition(|&b| b & 0xC0 != 0x80)?;
    match decode_char(&bytes[start..]) {
        Some((c, len)) if start + len == bytes.len() => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary over 中 文 的 人 and `a`: each char merged from its bytes,
    /// "的" joined to the first byte of the next char (a token of partial chars, merged
    /// before the other chars are made), "文的" and "中文" by merges (in that order), and
    /// "中文的" a token no merge makes.
    fn vocab(ignore_merges: bool) -> (Bpe, u32) {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut merges = Vec::new();
        let id_of = |bytes: &[u8], tokens: &mut Vec<Vec<u8>>| match tokens.iter().position(|t| t == bytes) {
            Some(id) => id as u32,
            None => {
                tokens.push(bytes.to_vec());
                tokens.len() as u32 - 1
            }
        };
        let mut merge = |left: &[u8], right: &[u8], tokens: &mut Vec<Vec<u8>>| {
            let (l, r) = (id_of(left, tokens), id_of(right, tokens));
            let m = id_of(&[left, right].concat(), tokens);
            merges.push((l, r, m));
        };
        for c in ["的", "中", "文", "人"] {
            let b = c.as_bytes();
            merge(&b[..1], &b[1..2], &mut tokens);
            merge(&b[..2], &b[2..], &mut tokens);
            if c == "的" {
                // Before the other chars are made: "的人" merges as "的" + 0xE4, then the rest.
                merge("的".as_bytes(), &"人".as_bytes()[..1], &mut tokens);
            }
        }
        merge("文".as_bytes(), "的".as_bytes(), &mut tokens);
        merge("中".as_bytes(), "文".as_bytes(), &mut tokens);
        tokens.push("中文的".as_bytes().to_vec());
        let whole = tokens.len() as u32 - 1;
        let bpe = Bpe::new(tokens.iter().enumerate().map(|(id, t)| (t.as_slice(), id as u32)), merges, ignore_merges);
        (bpe, whole)
    }

    /// A byte-level vocabulary of every byte, merges by the strings they join, and extra
    /// strings, each with an id of its own or that of another string.
    fn built(extra: &[(&[u8], Option<&[u8]>)], merges: &[(&[u8], &[u8])], ignore_merges: bool) -> Bpe {
        let mut tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], u32::from(b))).collect();
        let id = |tokens: &mut Vec<(Vec<u8>, u32)>, bytes: &[u8]| match tokens.iter().find(|t| t.0 == bytes) {
            Some(t) => t.1,
            None => {
                let next = tokens.iter().map(|t| t.1).max().unwrap() + 1;
                tokens.push((bytes.to_vec(), next));
                next
            }
        };
        let mut ids = Vec::new();
        for (left, right) in merges {
            let (l, r) = (id(&mut tokens, left), id(&mut tokens, right));
            ids.push((l, r, id(&mut tokens, &[*left, *right].concat())));
        }
        for (bytes, shared) in extra {
            match shared {
                Some(other) => {
                    let shared = id(&mut tokens, other);
                    tokens.push((bytes.to_vec(), shared));
                }
                None => drop(id(&mut tokens, bytes)),
            }
        }
        Bpe::new(tokens.iter().map(|(b, id)| (b.as_slice(), *id)), ids, ignore_merges)
    }

    /// Encodes each text three times (from the cache the third time: the map of long pieces
    /// keeps a piece the second time it is asked to) and compares with merges
    /// alone (after the whole-piece lookup of `ignore_merges`).
    fn assert_encodes_as_merges(bpe: &Bpe, texts: &[&str]) {
        for text in texts {
            let expected = match bpe.whole_id(text.as_bytes()) {
                Some(id) => vec![id],
                None => bpe.merges_only(text.as_bytes()),
            };
            for _ in 0..3 {
                let mut out = Vec::new();
                bpe.encode(text.as_bytes(), &mut out).unwrap();
                assert_eq!(out, expected, "{text}");
            }
        }
    }

    fn char_merges(chars: &str) -> Vec<(&'static [u8], &'static [u8])> {
        let bytes: &'static [u8] = chars.to_string().leak().as_bytes();
        let mut merges = Vec::new();
        for c in bytes.chunks(3) {
            merges.push((&c[..1], &c[1..2]));
            merges.push((&c[..2], &c[2..]));
        }
        merges
    }

    #[test]
    fn a_token_several_merges_make_is_made_by_any_of_them() {
        // 中文 by (中, 文) and by (中 + 0xE6, 0x96 0x87), whose parts no merge makes: with
        // only the second kept as how 中文 is made, (中文, 人) was never looked at.
        let (zh, wen, ren) = ("中".as_bytes(), "文".as_bytes(), "人".as_bytes());
        let head: &'static [u8] = [zh, &wen[..1]].concat().leak();
        for second_first in [false, true] {
            let mut merges = char_merges("中文人");
            let mut both = [(zh, wen), (head, &wen[1..])];
            if second_first {
                both.reverse();
            }
            merges.extend(both);
            merges.push(("中文".as_bytes(), ren));
            let extra: [(&[u8], Option<&[u8]>); 2] = [(head, None), (&wen[1..], None)];
            for ignore_merges in [false, true] {
                let bpe = built(&extra, &merges, ignore_merges);
                assert!(!ByteCuts::new(&bpe).unwrap().cut('文', '人', wen, ren));
                assert_encodes_as_merges(&bpe, &["中文人中文人", "人中文人人中文人"]);
            }
        }
    }

    #[test]
    fn no_cuts_where_a_byte_has_no_token() {
        // Without a token for 0xE6 (the first byte of 文), the bytes around it merge across
        // it: 0xAD (the last of 中) with 0x96.
        let mut tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).filter(|&b| b != 0xE6).map(|b| (vec![b], u32::from(b))).collect();
        tokens.push((vec![0xAD, 0x96], 256));
        let bpe = Bpe::new(tokens.iter().map(|(b, id)| (b.as_slice(), *id)), [(0xAD, 0x96, 256)], false);
        assert!(ByteCuts::new(&bpe).is_none());
        assert_encodes_as_merges(&bpe, &["中文中文中文", "中文中文中文中文中文中文中文"]);
    }

    #[test]
    fn no_cuts_where_two_bytes_share_an_id() {
        // 0xE6 has the id of 0xE4, so (中, 0xE6) also joins 中 to 人 (E4 BA BA): the ends
        // of that id are either byte (found by a second review).
        let (zh, ren) = ("中".as_bytes(), "人".as_bytes());
        let mut tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], u32::from(if b == 0xE6 { 0xE4 } else { b }))).collect();
        let mut merges = Vec::new();
        for (left, right) in [(&zh[..1], &zh[1..2]), (&zh[..2], &zh[2..]), (zh, &[0xE6][..]), (&ren[..1], &ren[1..2]), (&ren[..2], &ren[2..])] {
            let id = |bytes: &[u8]| tokens.iter().find(|t| t.0 == bytes).map(|t| t.1);
            let (l, r) = (id(left).unwrap(), id(right).unwrap());
            let merged = [left, right].concat();
            let m = id(&merged).unwrap_or(tokens.len() as u32);
            if m == tokens.len() as u32 {
                tokens.push((merged, m));
            }
            merges.push((l, r, m));
        }
        let bpe = Bpe::new(tokens.iter().map(|(b, id)| (b.as_slice(), *id)), merges, false);
        assert!(ByteCuts::new(&bpe).is_none());
        assert_encodes_as_merges(&bpe, &["中人", "人中人", &"中人".repeat(6), "中人"]);
    }

    #[test]
    fn an_id_of_two_strings_is_merged_each_time() {
        // 中人 shares the id of 中文; (中, 0xE4) keeps 中 and 人 together.
        let (zh, ren) = ("中".as_bytes(), "人".as_bytes());
        let mut merges = char_merges("中文人");
        merges.push((zh, &ren[..1]));
        merges.push((zh, "文".as_bytes()));
        let bpe = built(&[("中人".as_bytes(), Some("中文".as_bytes()))], &merges, true);
        assert_eq!(bpe.whole_id("中文".as_bytes()), bpe.whole_id("中人".as_bytes()));
        assert_encodes_as_merges(&bpe, &["人中文人中人", "人中人人中文", "人中文人中人"]);
    }

    #[test]
    fn cuts_only_where_no_token_spans() {
        let (bpe, _) = vocab(false);
        let cuts = ByteCuts::new(&bpe).unwrap();
        let at = |a: &str, b: &str| {
            cuts.cut(a.chars().next().unwrap(), b.chars().next().unwrap(), a.as_bytes(), b.as_bytes())
        };
        assert!(!at("文", "的") && !at("中", "文"), "joined by merges");
        assert!(at("文", "中") && at("人", "人") && at("的", "文"));
        // "的" + the first byte of "人" is a token: no point between "的" and a char that
        // starts with that byte (人 and 中 both start with 0xE4) is cut.
        assert!(!at("的", "人") && !at("的", "中"));
        assert!(at("中", "的"), "no token holds 中 then 的, though 中文的 is one: merges never make it");
    }

    #[test]
    fn a_part_is_not_taken_whole_from_the_cache_of_pieces() {
        // 中文的 is a token no merge makes: a piece of those bytes is that token
        // (`ignore_merges`), kept so in the cache, while a part of a cut piece is what merges
        // make of it. The cache, shared by pieces and parts, must not give the one for the other.
        let (bpe, whole) = vocab(true);
        let mut out = Vec::new();
        bpe.encode("中文的".as_bytes(), &mut out).unwrap();
        assert_eq!(out, [whole], "a piece is looked up whole");
        let long = "文中文的文人中文的文".as_bytes(); // cut before each 中 and after each 的
        assert!(long.len() > crate::bpe::cache::SHORT_MAX);
        for _ in 0..3 {
            let mut out = Vec::new();
            bpe.encode(long, &mut out).unwrap();
            assert_eq!(out, bpe.merges_only(long));
            assert!(!out.contains(&whole));
        }
        // And the other way round: parts that filled the cache first do not make a piece
        // of their bytes what merges make of it.
        let (bpe, whole) = vocab(true);
        for _ in 0..3 {
            let mut out = Vec::new();
            bpe.encode(long, &mut out).unwrap();
            assert_eq!(out, bpe.merges_only(long));
        }
        let mut out = Vec::new();
        bpe.encode("中文的".as_bytes(), &mut out).unwrap();
        assert_eq!(out, [whole], "a piece is looked up whole after the parts");
    }

    #[test]
    fn chars_merge_from_their_tokens_only_where_no_merge_across_them_ranks_below_one_inside() {
        // (文, 人) ranks below (中, 文), and both below the merges that make 人 (as Llama 3's
        // merges, made from ranks, may): in 中文人, BPE joins 中文 while 人 is still bytes, and
        // 文人 never forms. From the chars' tokens, (文, 人) would be merged first.
        let (zh, wen, ren) = ("中".as_bytes(), "文".as_bytes(), "人".as_bytes());
        let mut merges = char_merges("中文");
        merges.extend([(wen, ren), (zh, wen)]);
        merges.extend(char_merges("人"));
        let bpe = built(&[], &merges, false);
        let (cuts, Alphabet::Bytes(byte_ids)) = (bpe.cuts().unwrap(), &bpe.alphabet) else { panic!("a byte alphabet") };
        let mut out = Vec::new();
        assert!(!cuts.merge_chars(&bpe, byte_ids, "中文人".as_bytes(), &mut out) && out.is_empty());
        assert_eq!(bpe.merges_only("中文人".as_bytes()).len(), 2);
        assert!(cuts.merge_chars(&bpe, byte_ids, "中文中文".as_bytes(), &mut out));
        assert_eq!(out, bpe.merges_only("中文中文".as_bytes()));
        let texts = ["中文人", "人中文人", "中文人文人中", "文人人文中文人中中文人文"];
        assert_encodes_as_merges(&bpe, &texts);
        // Random runs of the three chars, as pieces and as parts of longer ones.
        let chars = ["中", "文", "人"];
        let mut state = 11u32;
        let random: Vec<String> = (0..2000)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let len = 1 + (state >> 16) as usize % 30;
                (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        chars[(state >> 16) as usize % chars.len()]
                    })
                    .collect()
            })
            .collect();
        assert_encodes_as_merges(&bpe, &random.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn a_token_of_partial_chars_keeps_together_only_the_chars_it_can_join() {
        // "的" + 0xE4 (the first byte of 中 and 人) is a token: no cut between 的 and 中. 丄
        // (E4 B8 84) ends in the byte 的 ends in (E7 9A 84), but no token joins it to 中.
        let (bpe, _) = vocab(false);
        let cuts = ByteCuts::new(&bpe).unwrap();
        let at = |a: &str, b: &str| cuts.cut(a.chars().next().unwrap(), b.chars().next().unwrap(), a.as_bytes(), b.as_bytes());
        assert_eq!("的".as_bytes()[2], "丄".as_bytes()[2]);
        assert!(!at("的", "中") && at("丄", "中") && at("丄", "人"));
        assert_encodes_as_merges(&bpe, &["丄中丄人的中丄", "中丄的人丄丄的中文的丄人人"]);

        // The last byte of 文 (0x87) + "中" + the first byte of 文 (0xE6), merged before 文
        // is made: 文中文 is 文's first two bytes, that token, and 文's last two bytes. The
        // token starts with all of 中, so 人 (E4 BA BA) after 文 may be cut from it.
        let (zh, wen) = ("中".as_bytes(), "文".as_bytes());
        let zh_e6: &'static [u8] = [zh, &wen[..1]].concat().leak();
        let mut merges = char_merges("中");
        merges.extend([(zh, &wen[..1]), (&wen[2..], zh_e6)]);
        merges.extend(char_merges("文人"));
        let bpe = built(&[], &merges, false);
        let cuts = ByteCuts::new(&bpe).unwrap();
        let at = |a: &str, b: &str| cuts.cut(a.chars().next().unwrap(), b.chars().next().unwrap(), a.as_bytes(), b.as_bytes());
        assert_eq!(bpe.merges_only("文中文".as_bytes()).len(), 4);
        assert!(!at("文", "中") && at("文", "人"));
        assert_encodes_as_merges(&bpe, &["文中文", "人文中文人", "文人文中文文中文人人文中文人", "文中人文中中文文"]);

        // "中" + the first two bytes of 新 (E6 96), merged before 新 is made: no cut between
        // 中 and 新, nor before 斑 (E6 96 91, the same two bytes), but one before 明 (E6 98
        // 8E: the same first byte only; `ByteCuts::partial` tells them apart by the second).
        let (xin, ban) = ("新".as_bytes(), "斑".as_bytes());
        let zh_e696: &'static [u8] = [zh, &xin[..2]].concat().leak();
        let mut merges = char_merges("中");
        merges.extend([(&xin[..1], &xin[1..2]), (zh, &xin[..2]), (&xin[..2], &xin[2..]), (&ban[..2], &ban[2..])]);
        merges.extend(char_merges("明"));
        let bpe = built(&[], &merges, false);
        let cuts = ByteCuts::new(&bpe).unwrap();
        let at = |a: &str, b: &str| cuts.cut(a.chars().next().unwrap(), b.chars().next().unwrap(), a.as_bytes(), b.as_bytes());
        let ids = bpe.merges_only("中新".as_bytes());
        assert_eq!((ids.len(), ids[1]), (2, bpe.merges_only(&xin[2..])[0]), "中 and 新's first two bytes, then its last");
        assert_eq!(bpe.merges_only(zh_e696), ids[..1]);
        assert!(!at("中", "新") && !at("中", "斑") && at("中", "明") && at("新", "中"));
        assert_encodes_as_merges(&bpe, &["中新", "中新中明中斑中新", "明中新新中明明中斑中明中新"]);
    }

    #[test]
    fn cut_pieces_encode_as_merges_do() {
        for ignore_merges in [false, true] {
            let (bpe, whole) = vocab(ignore_merges);
            let chars = ["中", "文", "的", "人", "a"];
            let mut state = 7u32;
            let mut texts: Vec<String> = vec!["人中文的".into(), "中文的中文的人".into(), "中文的".repeat(40)];
            for _ in 0..3000 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let len = 1 + (state >> 16) as usize % 120;
                texts.push(
                    (0..len)
                        .map(|_| {
                            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                            chars[(state >> 16) as usize % chars.len()]
                        })
                        .collect(),
                );
            }
            for text in &texts {
                let piece = text.as_bytes();
                let expected = match bpe.whole_id(piece) {
                    Some(id) => vec![id],
                    None => bpe.merges_only(piece),
                };
                // Three times: the third from the cache (the map of long pieces keeps a
                // piece the second time), with the parts cached.
                for _ in 0..3 {
                    let mut out = Vec::new();
                    bpe.encode(piece, &mut out).unwrap();
                    assert_eq!(out, expected, "{text} (ignore_merges: {ignore_merges})");
                }
            }
            if ignore_merges {
                let mut out = Vec::new();
                bpe.encode("人中文的".as_bytes(), &mut out).unwrap();
                assert!(!out.contains(&whole), "a part is not a piece: 中文的 is merged, not looked up");
            }
        }
    }
}
