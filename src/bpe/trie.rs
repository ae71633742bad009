//! A byte trie of tokens for one question: the longest token a text starts with.
//!
//! Why not the `aho-corasick` crate (anchored, leftmost-longest), which answers it too:
//! building its automaton for 200k tokens took 0.4-0.8 s, paid by the first long piece a
//! tokenizer meets; this trie builds in tens of ms, since it needs no failure links.
//!
//! Layout: nodes in breadth-first order, so each node's children are contiguous and sorted
//! by their byte; the root's children are found through a 256-entry table. A node with many
//! children (the first byte of most tokens, where a search starts) also has a 256-bit set of
//! its children's bytes: the child is found by counting the bits below its byte. A binary
//! search there was the chain of dependent loads that took 45% of a long piece's encode
//! (Tekken, 10 MB of one letter).

use super::NO_ID;

#[derive(Debug)]
pub(super) struct Trie {
    /// By node: the token it spells (`NO_ID`: none), where its children start, how many.
    nodes: Vec<Node>,
    /// By node: the byte of the edge into it.
    labels: Vec<u8>,
    /// The root's child for each byte (`u32::MAX`: none).
    root: Box<[u32; 256]>,
    /// The byte sets of the nodes with more than `SCAN_MAX` children (`Node::wide`).
    wide: Vec<ByteSet>,
}

/// Children up to this many are found by scanning their bytes.
const SCAN_MAX: u32 = 16;

#[derive(Debug, Clone, Copy)]
struct Node {
    token: u32,
    first: u32,
    count: u32,
    /// Its `ByteSet` in `Trie::wide`, for a node with more than `SCAN_MAX` children.
    wide: u32,
}

/// The bytes of a node's children, and how many bits come before each 64-bit word: the
/// child with byte b is the node's child number (bits set below b).
#[derive(Debug, Clone, Copy, Default)]
struct ByteSet {
    bits: [u64; 4],
    before: [u32; 4],
}

impl ByteSet {
    fn new(bytes: &[u8]) -> Self {
        let mut set = ByteSet::default();
        for &b in bytes {
            set.bits[b as usize / 64] |= 1 << (b % 64);
        }
        for w in 1..4 {
            set.before[w] = set.before[w - 1] + set.bits[w - 1].count_ones();
        }
        set
    }

    /// The child number of `byte`, if it has a child.
    #[inline]
    fn index(&self, byte: u8) -> Option<u32> {
        let (word, bit) = (self.bits[byte as usize / 64], byte % 64);
        (word >> bit & 1 == 1).then(|| self.before[byte as usize / 64] + (word & ((1 << bit) - 1)).count_ones())
    }
}

impl Trie {
    /// The trie of `tokens`: (bytes, id) pairs, no two with the same bytes, none empty.
    pub(super) fn new<'a>(tokens: impl IntoIterator<Item = (&'a [u8], u32)>) -> Self {
        // Sorted by their first 8 bytes as a number first: comparing slices (a `memcmp`
        // call each) was 25 ms of o200k's build.
        let prefix = |bytes: &[u8]| {
            let mut word = [0u8; 8];
            let n = bytes.len().min(8);
            word[..n].copy_from_slice(&bytes[..n]);
            u64::from_be_bytes(word)
        };
        let mut keyed: Vec<(u64, &[u8], u32)> = tokens.into_iter().map(|(bytes, id)| (prefix(bytes), bytes, id)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let sorted: Vec<(&[u8], u32)> = keyed.into_iter().map(|(_, bytes, id)| (bytes, id)).collect();
        let root_node = Node { token: NO_ID, first: 1, count: 0, wide: u32::MAX };
        let mut trie =
            Trie { nodes: vec![root_node], labels: vec![0], root: Box::new([u32::MAX; 256]), wide: Vec::new() };
        // Breadth first: each entry is a node and the range of `sorted` under it, whose
        // strings share its `depth` bytes.
        let mut queue = std::collections::VecDeque::from([(0usize, 0usize, sorted.len(), 0usize)]);
        while let Some((node, mut lo, hi, depth)) = queue.pop_front() {
            if lo < hi && sorted[lo].0.len() == depth {
                trie.nodes[node].token = sorted[lo].1;
                lo += 1;
            }
            trie.nodes[node].first = trie.nodes.len() as u32;
            while lo < hi {
                let byte = sorted[lo].0[depth];
                let end = lo + sorted[lo..hi].partition_point(|(bytes, _)| bytes[depth] == byte);
                let child = trie.nodes.len();
                trie.nodes.push(Node { token: NO_ID, first: 0, count: 0, wide: u32::MAX });
                trie.labels.push(byte);
                if node == 0 {
                    trie.root[byte as usize] = child as u32;
                }
                queue.push_back((child, lo, end, depth + 1));
                lo = end;
            }
            let Node { first, .. } = trie.nodes[node];
            let count = trie.nodes.len() as u32 - first;
            trie.nodes[node].count = count;
            if count > SCAN_MAX {
                trie.nodes[node].wide = trie.wide.len() as u32;
                trie.wide.push(ByteSet::new(&trie.labels[first as usize..(first + count) as usize]));
            }
        }
        trie
    }

    /// By token id (below `n`): the longest token that is a proper prefix of it (`NO_ID`:
    /// none). One pass over the nodes, parents before children: asking `longest` for
    /// every token of o200k took 65 ms.
    pub(super) fn longest_proper_prefixes(&self, n: usize) -> Vec<u32> {
        let mut above = vec![NO_ID; self.nodes.len()]; // by node: the nearest token above it
        let mut shorter = vec![NO_ID; n];
        for (node, &Node { token, first, count, .. }) in self.nodes.iter().enumerate() {
            if token != NO_ID {
                shorter[token as usize] = above[node];
            }
            let inherited = if token != NO_ID { token } else { above[node] };
            above[first as usize..(first + count) as usize].fill(inherited);
        }
        shorter
    }

    /// The longest token `text` starts with, if any.
    #[cfg(test)]
    pub(super) fn longest(&self, text: &[u8]) -> Option<u32> {
        self.longest_seen(text).0
    }

    /// The longest token `text` starts with, and how many of its bytes the answer depends on
    /// (the bytes read: any text with these bytes first has the same answer). Where the
    /// search reached the end of `text`, the answer depends on where it ends: `text.len() + 1`.
    #[inline]
    pub(super) fn longest_seen(&self, text: &[u8]) -> (Option<u32>, usize) {
        let Some((&first, rest)) = text.split_first() else { return (None, 0) };
        let mut node = self.root[first as usize];
        if node == u32::MAX {
            return (None, 1);
        }
        let mut best = self.nodes[node as usize].token;
        let mut seen = text.len() + 1;
        for (i, &byte) in rest.iter().enumerate() {
            let Node { first, count, wide, .. } = self.nodes[node as usize];
            // Most nodes have a few children: a scan beats the branches of a search.
            let found = match count {
                0..=SCAN_MAX => self.labels[first as usize..(first + count) as usize]
                    .iter()
                    .position(|&b| b == byte)
                    .map(|i| i as u32),
                _ => self.wide[wide as usize].index(byte),
            };
            match found {
                Some(i) => node = first + i,
                None => {
                    seen = i + 2;
                    break;
                }
            }
            let token = self.nodes[node as usize].token;
            if token != NO_ID {
                best = token;
            }
        }
        ((best != NO_ID).then_some(best), seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_longest_token_a_text_starts_with() {
        let tokens: Vec<(&[u8], u32)> = vec![(b"a", 0), (b"ab", 1), (b"abcd", 2), (b"b", 3), (b"xyz", 4)];
        let trie = Trie::new(tokens);
        assert_eq!(trie.longest(b"abcde"), Some(2));
        assert_eq!(trie.longest(b"abc"), Some(1));
        assert_eq!(trie.longest(b"a"), Some(0));
        assert_eq!(trie.longest(b"bb"), Some(3));
        assert_eq!(trie.longest(b"xy"), None);
        assert_eq!(trie.longest(b"c"), None);
        assert_eq!(trie.longest(b""), None);
        assert_eq!(trie.longest_seen(b"abcde"), (Some(2), 5), "no child after abcd: e was read");
        assert_eq!(trie.longest_seen(b"abx"), (Some(1), 3));
        assert_eq!(trie.longest_seen(b"ab"), (Some(1), 3), "the text ended: a longer one may match more");
        assert_eq!(trie.longest_seen(b"cab"), (None, 1));
    }

    #[test]
    fn nodes_with_many_children_find_each_of_them() {
        // "a" + every byte, and "ab" + every other byte: two wide nodes, each child a token.
        let mut tokens: Vec<(Vec<u8>, u32)> = vec![(b"a".to_vec(), 0)];
        tokens.extend((0..=255u8).map(|b| (vec![b'a', b], 1 + b as u32)));
        tokens.extend((0..=255u8).step_by(2).map(|b| (vec![b'a', b'b', b], 300 + b as u32)));
        let trie = Trie::new(tokens.iter().map(|(bytes, id)| (bytes.as_slice(), *id)));
        assert_eq!(trie.wide.len(), 2);
        for b in 0..=255u8 {
            assert_eq!(trie.longest(&[b'a', b]), Some(1 + b as u32));
            let expected = if b % 2 == 0 { 300 + b as u32 } else { 1 + b'b' as u32 };
            assert_eq!(trie.longest(&[b'a', b'b', b, b'z']), Some(expected), "ab + {b}");
        }
        assert_eq!(ByteSet::new(&[0, 63, 64, 200, 255]).index(255), Some(4));
        assert_eq!(ByteSet::new(&[0, 63, 64, 200, 255]).index(201), None);
    }
}
