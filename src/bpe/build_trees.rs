//! How BPE builds each token that encodes to itself, from its last merge down, and which
//! tokens of a vocabulary with merges do.
//!
//! Two users: the linear-time encoder of long pieces (`backtrack`) asks whether two tokens
//! stay apart, and the piece cache is given the short tokens that encode to themselves
//! ahead of a first pass (`self_encoding_short_tokens`, `ModelCache::prefill`).

use super::cache::{Key, SHORT_MAX};
use super::{Alphabet, Bpe, NO_ID};
use rustc_hash::FxHashMap;

#[derive(Debug)]
pub(super) struct BuildTrees {
    /// By token id: the two tokens its last merge joined (a byte's token: itself twice).
    pub(super) split: Vec<(u32, u32)>,
    /// By token id: 1 + the rank of that last merge; 0 for a byte's token.
    pub(super) built_at: Vec<u32>,
    /// The pairs that are some token's last merge (`left << 32 | right`) -> that token's
    /// `built_at`. No other pair of the table ever merges (see `LongPieces::new`), and this
    /// map is a fraction of the table's size: `walk` looks pairs up here, mostly in cache.
    pub(super) last_merges: FxHashMap<u64, u32>,
}

impl BuildTrees {
    /// For `tokens` ids, each a byte's token until its last merge is set.
    pub(super) fn new(tokens: usize) -> Self {
        BuildTrees {
            split: (0..tokens as u32).map(|id| (id, id)).collect(),
            built_at: vec![0; tokens],
            last_merges: FxHashMap::default(),
        }
    }

    /// Whether BPE on the bytes of `left` followed by those of `right` reaches these two
    /// tokens, and then leaves them apart if `limit` is `u64::MAX` (with 0: whatever
    /// comes after). Both must be built in order (`LongPieces::in_order`).
    pub(super) fn walk(&self, left: u32, right: u32, limit: u64) -> bool {
        self.walk_by(|pair| self.last_merges.get(&pair).map(|&at| at - 1), left, right, limit)
    }

    /// `walk` with the rank of a pair of tokens (`left << 32 | right`) from `rank_of`,
    /// which must give the rank of every pair that merges.
    #[inline]
    fn walk_by(&self, rank_of: impl Fn(u64) -> Option<u32>, mut left: u32, mut right: u32, mut limit: u64) -> bool {
        // A merge across the boundary ranked below `limit` would have happened before the
        // merge last undone; at the end no merge is left to come first.
        loop {
            // With no limit, no lookup: a walk for a merge's own parts starts so (Qwen2's
            // walks in `self_encoding_short_tokens` looked up 543 k pairs, 393 k now).
            if limit > 0 && rank_of(super::pair_key(left, right)).is_some_and(|rank| u64::from(rank) < limit) {
                return false;
            }
            let (left_at, right_at) = (self.built_at[left as usize], self.built_at[right as usize]);
            if left_at > right_at {
                // `left` was made last. Before, its right part faced `right`; that pair
                // merges first only below the rank of `left`'s merge, which lies further
                // left and wins ties.
                limit = u64::from(left_at - 1);
                left = self.split[left as usize].1;
            } else if right_at > 0 {
                // `right` was made last (on equal ranks too: the leftmost merge goes first).
                // The pair across the boundary lies left of it, so it wins a tie.
                limit = u64::from(right_at);
                right = self.split[right as usize].0;
            } else {
                return true; // two bytes' tokens, checked above
            }
        }
    }
}

/// The tokens of at most `SHORT_MAX` bytes that BPE makes of their own bytes, with their
/// keys, for a byte alphabet with merges (empty otherwise): the tokens a piece cache may be
/// given ahead. The latest merge's token first, each byte's token last.
///
/// Merges in rank order: a merge whose two parts encode to themselves makes a token that
/// does when `walk` finds that BPE on its bytes reaches the two parts (then they merge).
/// The walk asks the whole table for the ranks of the pairs it meets, so it is exact
/// whatever the order of the table; a token it never finds (one made by a merge ranked
/// before a part of it exists, say) is only left out. Built once per model, on the first
/// prefill: 4 ms for GPT-2, 14 ms for Qwen2 (every one of their merges makes a token that
/// encodes to itself).
pub(super) fn self_encoding_short_tokens(bpe: &Bpe) -> Vec<(Key, u32)> {
    let Alphabet::Bytes(byte_ids) = &bpe.alphabet else { return Vec::new() };
    let n = bpe.lens.len();
    let len = |id: u32| bpe.token_len(id);
    // The merges by rank, placed, not sorted: a table of merges has one rank per merge, up
    // to the number of merges given (a duplicate pair leaves a gap).
    let mut by_rank = vec![None; bpe.pairs.len()];
    for (&pair, &value) in &bpe.pairs {
        let (left, right, merged, rank) = ((pair >> 32) as u32, pair as u32, value as u32, (value >> 32) as usize);
        let (l, r, m) = (len(left), len(right), len(merged));
        if l == 0 || r == 0 || m != l + r || m > SHORT_MAX {
            continue;
        }
        if by_rank.len() <= rank {
            by_rank.resize(rank + 1, None);
        }
        by_rank[rank] = Some((left, right, merged));
    }
    let rank_of = |pair: u64| bpe.pairs.get(&pair).map(|&value| (value >> 32) as u32);

    // The bytes of each token found (little-endian) and whether it encodes to itself.
    let mut bytes = vec![0u128; n];
    let mut reached = vec![false; n];
    let mut found = Vec::new();
    for (byte, &id) in byte_ids.iter().enumerate() {
        if id == NO_ID || len(id) != 1 {
            // No token holds this byte, or its id is another string's too (a vocabulary may
            // give two strings one id), whose length `lens` holds: left out, with every
            // token that holds the byte.
            continue;
        }
        if reached[id as usize] {
            return Vec::new(); // one token for two bytes: the walk would not hold
        }
        reached[id as usize] = true;
        bytes[id as usize] = byte as u128;
    }
    let mut trees = BuildTrees::new(n);
    for (rank, merge) in by_rank.iter().enumerate() {
        let Some(&(left, right, merged)) = merge.as_ref() else { continue };
        let (l, r, m) = (left as usize, right as usize, merged as usize);
        // Both parts were built at lower ranks (in order, as `walk` needs).
        if reached[m] || !reached[l] || !reached[r] || !trees.walk_by(rank_of, left, right, 0) {
            continue;
        }
        trees.split[m] = (left, right);
        trees.built_at[m] = rank as u32 + 1;
        reached[m] = true;
        bytes[m] = bytes[l] | bytes[r] << (8 * len(left));
        found.push(merged);
    }
    let key = |id: u32| (Key::from_bits(bytes[id as usize], len(id)), id);
    let byte_tokens = byte_ids.iter().copied().filter(|&id| id != NO_ID && reached[id as usize]);
    let mut tokens = Vec::with_capacity(found.len() + 256);
    tokens.extend(found.iter().rev().copied().chain(byte_tokens).map(key));
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `self_encoding_short_tokens` against encoding each short token's bytes again:
    /// every token it gives encodes to itself, under its own key, once; the latest last
    /// merge's first and the bytes' tokens last. Returns how many it gave, and how many
    /// short tokens encode to themselves.
    fn assert_each_encodes_to_itself(bpe: &Bpe, bytes_of: impl Fn(u32) -> Option<Vec<u8>>) -> (usize, usize) {
        let tokens = self_encoding_short_tokens(bpe);
        let (mut ids, mut pairs) = (Vec::new(), Vec::new());
        let mut last_rank = u32::MAX;
        let mut given = rustc_hash::FxHashSet::default();
        for &(key, id) in &tokens {
            let bytes = bytes_of(id).expect("a token with bytes");
            assert_eq!(key, Key::new(&bytes), "token {id}");
            assert_eq!(bpe.merges_only(&bytes), [id], "token {id} {:?}", String::from_utf8_lossy(&bytes));
            assert!(given.insert(id), "token {id} twice");
            // A byte's token has no last merge: `None`, after every other.
            let rank = bpe.last_merge_if_whole(&bytes, id, &mut ids, &mut pairs).map(|(_, _, rank)| rank);
            assert!(rank.is_none() || rank < Some(last_rank), "token {id} out of order");
            last_rank = rank.unwrap_or(0);
            assert_eq!(rank.is_none(), bytes.len() == 1);
        }
        let whole = (0..bpe.lens.len() as u32)
            .filter_map(|id| Some((id, bytes_of(id)?)))
            .filter(|(id, bytes)| !bytes.is_empty() && bytes.len() <= SHORT_MAX && bpe.merges_only(bytes) == [*id])
            .count();
        (tokens.len(), whole)
    }

    #[test]
    fn a_token_whose_bytes_merge_otherwise_is_left_out() {
        // "abc": "bc" merges first (rank 0), so "ab" (rank 1) and then "abc" never form.
        let tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], u32::from(b))).chain([
            (b"bc".to_vec(), 256),
            (b"ab".to_vec(), 257),
            (b"abc".to_vec(), 258),
        ]).collect();
        let (a, b, c) = (u32::from(b'a'), u32::from(b'b'), u32::from(b'c'));
        let bpe = Bpe::new(tokens.iter().map(|(t, id)| (t.as_slice(), *id)), [(b, c, 256), (a, b, 257), (257, c, 258)], false);
        let bytes_of = |id: u32| tokens.get(id as usize).map(|(t, _)| t.clone());
        assert_eq!(bpe.merges_only(b"abc"), [a, 256]);
        assert_eq!(assert_each_encodes_to_itself(&bpe, bytes_of), (258, 258));
        let ids: Vec<u32> = self_encoding_short_tokens(&bpe).iter().map(|&(_, id)| id).take(2).collect();
        assert_eq!(ids, [257, 256]);
    }

    #[test]
    fn a_byte_whose_id_another_string_shares_is_left_out() {
        // "!" and "xy" share id 33: its length is 2, and a key of "!" that long would be "!\0".
        let tokens: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], u32::from(b))).chain([(b"xy".to_vec(), 33)]).collect();
        let bpe = Bpe::new(tokens.iter().map(|(t, id)| (t.as_slice(), *id)), [(33, 0, 256)], false);
        let ids: Vec<u32> = self_encoding_short_tokens(&bpe).iter().map(|&(_, id)| id).collect();
        assert_eq!(ids.len(), 255);
        assert!(!ids.contains(&33) && !ids.contains(&256));
    }

    #[test]
    fn every_short_token_of_gpt2_encodes_to_itself_and_is_found() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tokensmith/assets/gpt2/tokenizer.json");
        let gpt2 = crate::formats::tokenizer_json::from_str(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        let bytes_of = |id: u32| gpt2.vocab.tokens.get(id as usize)?.as_deref().and_then(crate::bytelevel::decode_str);
        let (given, whole) = assert_each_encodes_to_itself(&gpt2.bpe, bytes_of);
        assert_eq!(given, whole);
        assert!(given > 45_000, "{given}");
    }

    /// Random vocabularies: grown as training grows one (each new token two earlier ones
    /// joined, by one merge, in order), or converted from ranks (a merge for every split of
    /// a token, ranked by the token: many tokens are made before their parts), or that
    /// with the merges shuffled. Whatever is given encodes to itself; from merges in order,
    /// everything that does is given.
    #[test]
    fn random_vocabularies_give_only_tokens_that_encode_to_themselves() {
        let mut state = 3u32;
        let mut random = |below: usize| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as usize % below
        };
        let mut counts = [(0, 0); 3]; // (given, whole) for each kind, bytes' tokens aside
        for round in 0..300 {
            let alphabet: &[u8] = [&b"ab"[..], b"abc", b"abcd"][round / 3 % 3];
            let mut all: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
            let mut id_of: FxHashMap<Vec<u8>, u32> = all.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
            let mut merges = Vec::new();
            let grown = round % 3 == 0;
            while all.len() < 256 + 10 + round % 80 {
                let token = if grown {
                    let pick = |r: usize| if r < alphabet.len() { u32::from(alphabet[r]) } else { 256 + (r - alphabet.len()) as u32 };
                    let range = alphabet.len() + all.len() - 256;
                    let (left, right) = (pick(random(range)), pick(random(range)));
                    merges.push((left, right, all.len() as u32));
                    [all[left as usize].clone(), all[right as usize].clone()].concat()
                } else {
                    (0..2 + random(17)).map(|_| alphabet[random(alphabet.len())]).collect()
                };
                if token.len() > 24 || id_of.contains_key(&token) {
                    merges.truncate(merges.len() - usize::from(grown));
                    continue;
                }
                id_of.insert(token.clone(), all.len() as u32);
                all.push(token);
            }
            if !grown {
                for (id, token) in all.iter().enumerate().skip(256) {
                    let splits = (1..token.len()).filter_map(|cut| Some((*id_of.get(&token[..cut])?, *id_of.get(&token[cut..])?)));
                    merges.extend(splits.map(|(l, r)| (l, r, id as u32)));
                }
            }
            if round % 3 == 2 {
                for i in (1..merges.len()).rev() {
                    merges.swap(i, random(i + 1));
                }
            }
            let bpe = Bpe::new(all.iter().enumerate().map(|(i, t)| (t.as_slice(), i as u32)), merges, false);
            let (given, whole) = assert_each_encodes_to_itself(&bpe, |id| all.get(id as usize).cloned());
            counts[round % 3].0 += given - 256;
            counts[round % 3].1 += whole - 256;
        }
        assert_eq!(counts[0].0, counts[0].1);
        assert!(counts[0].0 > 1500, "{counts:?}");
        assert!(counts[1].0 * 3 > counts[1].1 * 2, "{counts:?}");
    }
}
