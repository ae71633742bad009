//! A byte trie of tokens for one question: the longest token a text starts with.
//!
//! Why not the `aho-corasick` crate (anchored, leftmost-longest), which answers it too:
//! building its automaton for 200k tokens took 0.4-0.8 s, paid by the first long piece a
//! tokenizer meets; this trie builds in tens of ms, since it needs no failure links.
//!
//! Layout: nodes in breadth-first order, so each node's children are contiguous and sorted
//! by their byte; the root's children are found through a 256-entry table.

use super::NO_ID;

#[derive(Debug)]
pub(super) struct Trie {
    /// By node: the token it spells (`NO_ID`: none), where its children start, how many.
    nodes: Vec<Node>,
    /// By node: the byte of the edge into it.
    labels: Vec<u8>,
    /// The root's child for each byte (`u32::MAX`: none).
    root: Box<[u32; 256]>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    token: u32,
    first: u32,
    count: u32,
}

impl Trie {
    /// The trie of `tokens`: (bytes, id) pairs, no two with the same bytes, none empty.
    pub(super) fn new<'a>(tokens: impl IntoIterator<Item = (&'a [u8], u32)>) -> Self {
        let mut sorted: Vec<(&[u8], u32)> = tokens.into_iter().collect();
        sorted.sort_unstable();
        let root_node = Node { token: NO_ID, first: 1, count: 0 };
        let mut trie = Trie { nodes: vec![root_node], labels: vec![0], root: Box::new([u32::MAX; 256]) };
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
                trie.nodes.push(Node { token: NO_ID, first: 0, count: 0 });
                trie.labels.push(byte);
                if node == 0 {
                    trie.root[byte as usize] = child as u32;
                }
                queue.push_back((child, lo, end, depth + 1));
                lo = end;
            }
            trie.nodes[node].count = trie.nodes.len() as u32 - trie.nodes[node].first;
        }
        trie
    }

    /// The longest token `text` starts with, if any.
    #[inline]
    pub(super) fn longest(&self, text: &[u8]) -> Option<u32> {
        let (&first, rest) = text.split_first()?;
        let mut node = self.root[first as usize];
        if node == u32::MAX {
            return None;
        }
        let mut best = self.nodes[node as usize].token;
        for &byte in rest {
            let Node { first, count, .. } = self.nodes[node as usize];
            let children = &self.labels[first as usize..(first + count) as usize];
            // Most nodes have a few children: a scan beats the branches of a binary search.
            let found = match children.len() {
                0..=16 => children.iter().position(|&b| b == byte),
                _ => children.binary_search(&byte).ok(),
            };
            match found {
                Some(i) => node = first + i as u32,
                None => break,
            }
            let token = self.nodes[node as usize].token;
            if token != NO_ID {
                best = token;
            }
        }
        (best != NO_ID).then_some(best)
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
    }
}
