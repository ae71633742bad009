//! SentencePiece's precompiled normalization map (`Precompiled` in tokenizer.json, the
//! `precompiled_charsmap` of a .model file): a double-array trie from UTF-8 strings to
//! offsets into a blob of NUL-terminated replacements.
//!
//! Written here instead of using the `spm_precompiled` crate, which the reference uses:
//! that crate indexes the trie and the blob unchecked and panics on a corrupt map. Here
//! every access is checked, and a map is swept once at load (every code point looked up)
//! so that a corrupt one is refused with an error instead of normalizing garbage.

use crate::error::{Error, Result};
use unicode_segmentation::UnicodeSegmentation;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precompiled {
    trie: Vec<u32>,
    /// NUL-terminated replacement strings.
    blob: Vec<u8>,
    /// The map as the file gave it, to write it back.
    pub bytes: Vec<u8>,
}

fn has_leaf(unit: u32) -> bool {
    (unit >> 8) & 1 == 1
}
fn value(unit: u32) -> usize {
    (unit & ((1 << 31) - 1)) as usize
}
fn label(unit: u32) -> u32 {
    unit & ((1 << 31) | 0xFF)
}
fn offset(unit: u32) -> usize {
    ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize
}

impl Precompiled {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |what: &str| Error::format("", format!("precompiled_charsmap: {what}"));
        if bytes.len() < 4 {
            return Err(bad("shorter than its 4-byte header"));
        }
        let size = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if size % 4 != 0 || size == 0 || 4 + size > bytes.len() {
            return Err(bad(&format!("trie size {size} does not fit the {} bytes of the map", bytes.len())));
        }
        let trie = bytes[4..4 + size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let map = Precompiled { trie, blob: bytes[4 + size..].to_vec(), bytes: bytes.to_vec() };
        map.check()?;
        Ok(map)
    }

    /// Looks every code point up once: a corrupt trie or blob shows up as an index out of
    /// range or a replacement that is not UTF-8.
    fn check(&self) -> Result<()> {
        let mut buf = [0u8; 4];
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            self.lookup(c.encode_utf8(&mut buf).as_bytes())
                .map_err(|what| Error::format("", format!("precompiled_charsmap is corrupt: {what}")))?;
        }
        Ok(())
    }

    /// The replacement of the longest... (as the reference: the first, shortest) prefix match
    /// of `key` in the trie.
    fn lookup(&self, key: &[u8]) -> std::result::Result<Option<&str>, &'static str> {
        let unit_at = |pos: usize| self.trie.get(pos).copied().ok_or("trie index out of range");
        let mut pos = 0usize;
        let unit = unit_at(pos)?;
        pos ^= offset(unit);
        for &c in key {
            if c == 0 {
                break;
            }
            pos ^= c as usize;
            let unit = unit_at(pos)?;
            if label(unit) != c as u32 {
                return Ok(None);
            }
            pos ^= offset(unit);
            if has_leaf(unit) {
                // The reference takes the first (shortest) match.
                let start = value(unit_at(pos)?);
                if start > self.blob.len() {
                    return Err("replacement offset out of range");
                }
                let end = self.blob[start..].iter().position(|&b| b == 0).map_or(self.blob.len(), |n| start + n);
                return std::str::from_utf8(&self.blob[start..end]).map(Some).map_err(|_| "replacement is not UTF-8");
            }
        }
        Ok(None)
    }

    pub fn transform(&self, chunk: &str) -> Option<&str> {
        // Checked at load for single chars; a longer key on a map that passed is treated as
        // "no replacement" if it ever ran out of range.
        self.lookup(chunk.as_bytes()).ok().flatten()
    }

    /// The reference's edits for `text`: per grapheme of under 6 bytes when the grapheme
    /// has a replacement, else per char. `None` when nothing changes.
    pub fn edits(&self, text: &str) -> Option<Vec<(char, isize)>> {
        let mut edits = Vec::with_capacity(text.len());
        let mut modified = false;
        for grapheme in text.graphemes(true) {
            if grapheme.len() < 6 {
                if let Some(norm) = self.transform(grapheme) {
                    modified = true;
                    replace(&mut edits, grapheme, norm);
                    continue;
                }
            }
            for (i, c) in grapheme.char_indices() {
                let part = &grapheme[i..i + c.len_utf8()];
                match self.transform(part) {
                    Some(norm) => {
                        modified = true;
                        replace(&mut edits, part, norm);
                    }
                    None => edits.push((c, 0)),
                }
            }
        }
        modified.then_some(edits)
    }
}

/// The reference's change markers for replacing `old` by `new`.
fn replace(edits: &mut Vec<(char, isize)>, old: &str, new: &str) {
    let diff = new.chars().count() as isize - old.chars().count() as isize;
    edits.extend(new.chars().map(|c| (c, 0)));
    if diff > 0 {
        edits.iter_mut().rev().take(diff as usize).for_each(|(_, change)| *change = 1);
    } else if diff < 0 {
        if let Some((_, change)) = edits.last_mut() {
            *change += diff;
        }
    }
}
