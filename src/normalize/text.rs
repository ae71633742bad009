//! A normalized text and, when offsets are wanted, where each of its bytes came from.
//!
//! This mirrors the reference's `NormalizedString`: every normalizer is written once as
//! edits on this type (`transform`, `prepend`, `replace`, ...). With alignment tracking off
//! (plain `encode`) an edit only rebuilds the text, and edits that would change nothing
//! leave the borrowed input untouched; with tracking on, each byte of the text carries the
//! (start, end) byte range of the input it stands for, updated by the reference's rules,
//! so offsets come out exactly as the reference gives them.

use crate::pretokenize::Pattern;
use std::borrow::Cow;
use std::cell::Cell;

#[derive(Debug, Clone)]
pub struct NormalizedText<'a> {
    text: Cow<'a, str>,
    /// For each byte of `text`, the input byte range it stands for (`None`: not tracked,
    /// or not built yet).
    align: Option<Vec<(usize, usize)>>,
    /// Tracking is on and nothing has changed yet: the alignment is the identity, built
    /// only when an edit needs it (most texts pass a normalizer such as NFC unchanged, and
    /// building it was a sixth of a Chinese chat's `encode_labeled`).
    identity: bool,
}

/// Each byte of `text` aligned to the char that holds it, as the reference starts.
pub fn identity_alignment(text: &str) -> Vec<(usize, usize)> {
    let mut align = Vec::with_capacity(text.len());
    for (b, c) in text.char_indices() {
        let n = c.len_utf8();
        align.extend(std::iter::repeat((b, b + n)).take(n));
    }
    align
}

impl<'a> NormalizedText<'a> {
    pub fn new(text: &'a str, track: bool) -> Self {
        NormalizedText { align: None, identity: track, text: Cow::Borrowed(text) }
    }

    /// Builds the identity alignment that tracking has left unbuilt, before an edit.
    fn build_alignment(&mut self) {
        if std::mem::take(&mut self.identity) {
            self.align = Some(identity_alignment(&self.text));
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_changed(&self) -> bool {
        matches!(self.text, Cow::Owned(_))
    }

    pub fn into_text(self) -> Cow<'a, str> {
        self.text
    }

    /// The text and its alignment (tracking must have been on); `None` where nothing
    /// changed, so that each byte stands for itself (and char offsets are the same as
    /// through the identity alignment).
    pub fn into_parts(self) -> (Cow<'a, str>, Option<Vec<(usize, usize)>>) {
        (self.text, self.align)
    }

    /// Replaces the text by `dest`, where each char comes with the reference's change
    /// marker: 0 replaces the next old char, 1 is inserted, -N replaces the next old char
    /// and removes the N after it; `initial_offset` old chars are removed at the start.
    pub fn transform(&mut self, dest: impl IntoIterator<Item = (char, isize)>, initial_offset: usize) {
        self.build_alignment();
        let Some(old_align) = self.align.as_ref() else {
            self.text = Cow::Owned(dest.into_iter().map(|(c, _)| c).collect());
            return;
        };
        let mut old = self.text.chars();
        let mut offset: usize = old.by_ref().take(initial_offset).map(char::len_utf8).sum();
        let mut text = String::with_capacity(self.text.len());
        let mut align = Vec::with_capacity(old_align.len());
        for (c, change) in dest {
            let at = if change > 0 {
                if offset == 0 {
                    (0, 0)
                } else {
                    old_align[offset - 1]
                }
            } else {
                // In range for edits that describe the text; the fallback keeps a malformed
                // edit list from panicking.
                old_align.get(offset).or(old_align.last()).copied().unwrap_or((0, 0))
            };
            if change <= 0 {
                offset += old.next().map_or(0, char::len_utf8);
            }
            if change < 0 {
                offset += old.by_ref().take(change.unsigned_abs()).map(char::len_utf8).sum::<usize>();
            }
            align.extend(std::iter::repeat(at).take(c.len_utf8()));
            text.push(c);
        }
        self.text = Cow::Owned(text);
        self.align = Some(align);
    }

    /// `transform` line by line (each line ends after its `\n`): `edit` gives a line's new
    /// chars with their change markers, or `None` to keep the line as it is. Without
    /// tracking, kept lines are copied whole, and a text with no line edited stays borrowed.
    pub fn transform_lines(&mut self, mut edit: impl FnMut(&str) -> Option<Vec<(char, isize)>>) {
        // (start, end, new chars) of each edited line
        let edits: Vec<(usize, usize, Vec<(char, isize)>)> = self
            .text
            .split_inclusive('\n')
            .scan(0, |at, line| {
                let start = *at;
                *at += line.len();
                Some((start, line))
            })
            .filter_map(|(start, line)| Some((start, start + line.len(), edit(line)?)))
            .collect();
        if edits.is_empty() {
            return;
        }
        self.build_alignment();
        if self.align.is_some() {
            let mut dest = Vec::with_capacity(self.text.len());
            let mut kept = 0;
            for (start, end, chars) in edits {
                dest.extend(self.text[kept..start].chars().map(|c| (c, 0)));
                dest.extend(chars);
                kept = end;
            }
            dest.extend(self.text[kept..].chars().map(|c| (c, 0)));
            return self.transform(dest, 0);
        }
        let mut text = String::with_capacity(self.text.len());
        let mut kept = 0;
        for (start, end, chars) in edits {
            text.push_str(&self.text[kept..start]);
            text.extend(chars.into_iter().map(|(c, _)| c));
            kept = end;
        }
        text.push_str(&self.text[kept..]);
        self.text = Cow::Owned(text);
    }

    /// Puts `s` before the text (nothing when the text is empty); the new chars stand
    /// for the first char of the text.
    pub fn prepend(&mut self, s: &str) {
        let Some(first) = self.text.chars().next() else { return };
        if s.is_empty() {
            return;
        }
        self.build_alignment();
        match self.align.as_mut() {
            // Not `format!`: its machinery was 900 instructions a document (Llama 2).
            None => self.text = Cow::Owned([s, &self.text].concat()),
            Some(align) => {
                // The reference replaces the first char by the prefix's first char and
                // inserts the rest of the prefix and the first char again after it.
                let n = first.len_utf8();
                let head = s.chars().next().map_or(0, char::len_utf8);
                let mut new_align = Vec::with_capacity(align.len() + s.len());
                new_align.extend(std::iter::repeat(align[0]).take(head));
                new_align.extend(std::iter::repeat(align[n - 1]).take(s.len() - head + n));
                new_align.extend_from_slice(&align[n..]);
                *align = new_align;
                self.text = Cow::Owned([s, &self.text].concat());
            }
        }
    }

    /// `prepend(prefix)` then `replace(pattern, content)`, in one copy of the text where
    /// offsets are not tracked and `pattern` is one ASCII char (`false`: nothing done, the
    /// two steps are the caller's). Llama 2 and Mistral put `▁` first and replace every
    /// space by it: one copy of each document instead of two (the first a `format!`) took
    /// 7% off a warm per-document encode (callgrind, Llama 2, English).
    pub fn prepend_and_replace(&mut self, prefix: &str, pattern: &Replacement, content: &str) -> bool {
        let (false, None, Some(byte)) = (self.identity, &self.align, pattern.ascii_byte()) else {
            return false;
        };
        // `prepend` leaves an empty text as it is, and `replace` finds nothing in it.
        if !self.text.is_empty() {
            // One `byte` can match nowhere but inside a part.
            let count = count_byte(prefix.as_bytes(), byte) + count_byte(self.text.as_bytes(), byte);
            if count > 0 || !prefix.is_empty() {
                self.text = Cow::Owned(replaced([prefix, &self.text], byte, content, count));
            }
        }
        true
    }

    /// Replaces every match of `pattern` with `content`; the new chars stand for the last
    /// byte of the match they replace.
    pub fn replace(&mut self, pattern: &Replacement, content: &str) {
        // Without offsets tracked, one ASCII char is replaced in one pass (`replace_byte`).
        if let (false, None, Some(byte)) = (self.identity, &self.align, pattern.ascii_byte()) {
            if let Some(text) = replace_byte(&self.text, byte, content) {
                self.text = Cow::Owned(text);
            }
            return;
        }
        // Built as the matches stream by, and only once there is one.
        self.build_alignment();
        let mut out: Option<(String, Option<Vec<(usize, usize)>>)> = None;
        let mut last = 0;
        let (old_text, old_align) = (&self.text, &self.align);
        pattern.for_each_match(old_text, |start, end| {
            let (text, align) = out.get_or_insert_with(|| {
                let text = String::with_capacity(old_text.len() + old_text.len() / 4 + content.len());
                (text, old_align.as_ref().map(|a| Vec::with_capacity(a.len() + a.len() / 4)))
            });
            text.push_str(&old_text[last..start]);
            if let (Some(new), Some(old)) = (align.as_mut(), old_align.as_ref()) {
                new.extend_from_slice(&old[last..start]);
                // An empty match at the very start has nothing before it: (0, 0).
                let at = if end == 0 { (0, 0) } else { old[end - 1] };
                new.extend(std::iter::repeat(at).take(content.len()));
            }
            text.push_str(content);
            last = end;
        });
        let Some((mut text, mut align)) = out else { return };
        text.push_str(&self.text[last..]);
        if let (Some(new), Some(old)) = (align.as_mut(), self.align.as_ref()) {
            new.extend_from_slice(&old[last..]);
        }
        self.text = Cow::Owned(text);
        self.align = align;
    }

    /// Keeps the chars for which `keep` holds.
    pub fn filter(&mut self, keep: impl Fn(char) -> bool) {
        if self.text.chars().all(&keep) {
            return;
        }
        let mut removed = 0isize;
        let mut removed_start = 0usize;
        let mut transforms = Vec::with_capacity(self.text.len());
        let mut last = None;
        for c in self.text.chars() {
            if keep(c) {
                match last {
                    Some(lc) => transforms.push((lc, -removed)),
                    None => removed_start = removed as usize,
                }
                last = Some(c);
                removed = 0;
            } else {
                removed += 1;
            }
        }
        if let Some(lc) = last {
            transforms.push((lc, -removed));
        }
        self.transform(transforms, removed_start);
    }

    /// Maps each char to one char.
    pub fn map(&mut self, f: impl Fn(char) -> char) {
        if self.text.chars().all(|c| f(c) == c) {
            return;
        }
        let dest: Vec<(char, isize)> = self.text.chars().map(|c| (f(c), 0)).collect();
        self.transform(dest, 0);
    }

    /// Maps each char to zero or more chars: the first replaces it, the rest are inserted.
    pub fn flat_map<I: IntoIterator<Item = char>>(&mut self, f: impl Fn(char) -> I) {
        let dest: Vec<(char, isize)> = self
            .text
            .chars()
            .flat_map(|c| f(c).into_iter().enumerate().map(|(i, n)| (n, isize::from(i > 0))))
            .collect();
        self.transform(dest, 0);
    }

    pub fn lowercase(&mut self) {
        let unchanged = |c: char| {
            let mut lower = c.to_lowercase();
            lower.len() == 1 && lower.next() == Some(c)
        };
        if self.text.chars().all(unchanged) {
            return;
        }
        self.flat_map(char::to_lowercase);
    }

    /// Removes whitespace at the start and/or the end.
    pub fn strip(&mut self, left: bool, right: bool) {
        let leading = if left { self.text.chars().take_while(|c| c.is_whitespace()).count() } else { 0 };
        let count = self.text.chars().count();
        let trailing = if right && leading < count {
            self.text.chars().rev().take_while(|c| c.is_whitespace()).count()
        } else {
            0
        };
        if leading == 0 && trailing == 0 {
            return;
        }
        // The reference compares a char index with a byte length here; kept as it is, since
        // it only decides which kept char "removes" the trailing ones (same alignment).
        let len = self.text.len();
        let dest: Vec<(char, isize)> = self
            .text
            .chars()
            .enumerate()
            .filter_map(|(i, c)| {
                if i < leading || i >= count - trailing {
                    None
                } else if i + trailing + 1 == len {
                    Some((c, -(trailing as isize)))
                } else {
                    Some((c, 0))
                }
            })
            .collect();
        self.transform(dest, leading);
    }
}

/// The high bit of each byte of `chunk` that is `byte`, exactly (no carry crosses a byte).
#[inline(always)]
fn bytes_equal(chunk: &[u8], byte: u8) -> u64 {
    const LOW: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) ^ u64::from_ne_bytes([byte; 8]);
    !(((x & LOW) + LOW) | x | LOW)
}

/// Calls `f` with the position of each `byte` in `text`, 8 bytes at a time.
///
/// Why not memchr: spaces are every 6 bytes of English and 14 of Russian, and each memchr
/// call (from `str::match_indices`) cost about 40 instructions to start: the search for
/// spaces was a sixth of a warm per-document encode of Russian with Llama 2 (callgrind).
fn for_each_byte(text: &[u8], byte: u8, mut f: impl FnMut(usize)) {
    let mut chunks = text.chunks_exact(8);
    for (k, chunk) in chunks.by_ref().enumerate() {
        let mut found = bytes_equal(chunk, byte);
        while found != 0 {
            f(8 * k + (found.trailing_zeros() / 8) as usize);
            found &= found - 1;
        }
    }
    let tail = text.len() - chunks.remainder().len();
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if b == byte {
            f(tail + i);
        }
    }
}

thread_local! {
    /// A normalized text's buffer given back (`give_back`) for the next `replaced` on this
    /// thread. Texts of every length, one call each, made the allocator's slow path a
    /// `calloc` a call: 3% of per-document encoding with Gemma 4 (perf).
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The buffers kept for reuse are at most this large: a long text's is handed back to the
/// allocator, not held by the thread.
const SPARE_MAX: usize = 1 << 20;

/// Hands a normalized text's buffer to the next normalization on this thread.
pub fn give_back(text: Cow<'_, str>) {
    if let Cow::Owned(text) = text {
        if text.capacity() <= SPARE_MAX {
            SPARE.set(text.into_bytes());
        }
    }
}

/// `text` with each `byte` (ASCII) replaced by `content`, or `None` where it has none.
///
/// Why: SentencePiece-style tokenizers replace every space by `▁`. Built a match at a time
/// (two `push_str` each), that took 22 instructions a byte of English, a quarter of a warm
/// per-document encode with Llama 2 (callgrind). Here the output is sized first and written
/// 8 bytes at a time: each 8 bytes of text are stored whole, then again from after each
/// match, the content stored over what follows the match (the output has 8 bytes to
/// spare for the last store).
fn replace_byte(text: &str, byte: u8, content: &str) -> Option<String> {
    let count = count_byte(text.as_bytes(), byte);
    (count > 0).then(|| replaced([text], byte, content, count))
}

/// How many times `byte` is in `text`.
fn count_byte(text: &[u8], byte: u8) -> usize {
    let chunks = text.chunks_exact(8);
    let tail = chunks.remainder().iter().filter(|&&b| b == byte).count();
    chunks.map(|chunk| bytes_equal(chunk, byte).count_ones() as usize).sum::<usize>() + tail
}

/// `parts` one after another, each space in them a `▁`: the text that a normalizer putting
/// `▁` for every space makes of them (`PieceEncoder::encode_spaced`, for the words the cache
/// lacks).
pub fn spaces_marked(parts: &[&[u8]]) -> Vec<u8> {
    let count = parts.iter().map(|part| count_byte(part, b' ')).sum();
    replaced_bytes(parts, b' ', "\u{2581}", count)
}

/// `parts` one after another, each `byte` (ASCII) in them replaced by `content`; `count`:
/// how many of `byte` they hold. One copy, however many parts (`prepend_and_replace`).
fn replaced<const N: usize>(parts: [&str; N], byte: u8, content: &str, count: usize) -> String {
    let out = replaced_bytes(&parts.map(str::as_bytes), byte, content, count);
    // SAFETY: `out` is the UTF-8 `parts` one after another, with some of their ASCII chars,
    // each a whole char, replaced by `content`: UTF-8 put together from UTF-8. (Validating
    // it again was as long as the replacing: `▁` every few bytes is the validator's slow
    // path.)
    unsafe { String::from_utf8_unchecked(out) }
}

/// `replaced` of any bytes.
fn replaced_bytes(parts: &[&[u8]], byte: u8, content: &str, count: usize) -> Vec<u8> {
    debug_assert!(byte.is_ascii());
    let len = parts.iter().map(|part| part.len()).sum::<usize>() - count + count * content.len();
    let mut out = SPARE.take();
    out.clear();
    out.resize(len + 8, 0);
    let mut o = 0;
    for part in parts {
        // A part's last stores may run past its end: the next part's overwrite them.
        let mut chunks = part.chunks_exact(8);
        for chunk in chunks.by_ref() {
            let mut found = bytes_equal(chunk, byte);
            out[o..o + 8].copy_from_slice(chunk);
            if found == 0 {
                o += 8;
                continue;
            }
            let mut from = 0;
            while found != 0 {
                let at = (found.trailing_zeros() / 8) as usize;
                o += at - from;
                out[o..o + content.len()].copy_from_slice(content.as_bytes());
                o += content.len();
                from = at + 1;
                // What follows the match, over the rest of the content's store.
                let rest = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) >> (8 * from.min(7));
                out[o..o + 8].copy_from_slice(&rest.to_le_bytes());
                found &= found - 1;
            }
            o += 8 - from;
        }
        for &b in chunks.remainder() {
            if b == byte {
                out[o..o + content.len()].copy_from_slice(content.as_bytes());
                o += content.len();
            } else {
                out[o] = b;
                o += 1;
            }
        }
    }
    debug_assert_eq!(o, len);
    out.truncate(len);
    out
}

/// What a `Replace` normalizer or decoder looks for.
#[derive(Debug, Clone)]
pub enum Replacement {
    /// A literal string (the reference escapes it into a regex: the same matches).
    Literal(String),
    Regex(Pattern),
}

impl Replacement {
    /// The pattern's one char, where it is a literal of one ASCII char.
    fn ascii_byte(&self) -> Option<u8> {
        match self {
            Replacement::Literal(s) if s.len() == 1 => Some(s.as_bytes()[0]),
            _ => None,
        }
    }

    pub fn for_each_match(&self, text: &str, mut f: impl FnMut(usize, usize)) {
        match self {
            Replacement::Literal(s) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    // One ASCII char (a space, in every SentencePiece-style tokenizer).
                    (Some(c), None) if c.is_ascii() => for_each_byte(text.as_bytes(), c as u8, |at| f(at, at + 1)),
                    // One char: a char search runs on memchr, a string search was 7% of an
                    // encode.
                    (Some(c), None) => text.match_indices(c).for_each(|(at, m)| f(at, at + m.len())),
                    _ => text.match_indices(s.as_str()).for_each(|(at, m)| f(at, at + m.len())),
                }
            }
            // A pattern that fails on this input (backtracking limits are off) matches nothing more.
            Replacement::Regex(p) => {
                let _ = p.for_each_match(text, f);
            }
        }
    }

    /// `text` with every match replaced by `content`.
    pub fn apply<'t>(&self, text: &'t str, content: &str) -> Cow<'t, str> {
        if let Some(byte) = self.ascii_byte() {
            return replace_byte(text, byte, content).map_or(Cow::Borrowed(text), Cow::Owned);
        }
        let mut out: Option<String> = None;
        let mut last = 0;
        self.for_each_match(text, |s, e| {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[last..s]);
            o.push_str(content);
            last = e;
        });
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[last..]);
                Cow::Owned(o)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_is_replaced_as_a_char_search_replaces_it() {
        let mut next = crate::testing::random(0x9b05_688c_2b3e_6c1f);
        let alphabet = ["a", " ", "\u{2581}", "ж", "  ", "\u{1F600}", "!", "bcdefgh"];
        for round in 0..20_000 {
            let mut text = String::new();
            for _ in 0..round % 40 {
                text.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            for content in ["\u{2581}", "", "_", "ab", "\u{1F600}x", "\u{2581}\u{2581}\u{2581}"] {
                let expected = text.contains(' ').then(|| text.replace(' ', content));
                let got = replace_byte(&text, b' ', content);
                assert_eq!(got, expected, "{text:?} {content:?}");
                // The next call writes its text into this one's buffer, over what it holds.
                if let Some(got) = got {
                    give_back(Cow::Owned(got));
                }
            }
        }
    }

    #[test]
    fn prepend_and_replace_in_one_copy_is_the_two_steps() {
        let mut next = crate::testing::random(0x6a09_e667_f3bc_c908);
        let alphabet = ["a", " ", "\u{2581}", "ж", "  ", "\u{1F600}", "!", "bcdefgh"];
        let mut fused = 0;
        for round in 0..10_000 {
            let mut text = String::new();
            for _ in 0..round % 40 {
                text.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            for prefix in ["\u{2581}", "", " ", "x y ", "\u{1F600}"] {
                for content in ["\u{2581}", "", "ab"] {
                    let pattern = Replacement::Literal(" ".into());
                    let mut steps = NormalizedText::new(&text, false);
                    steps.prepend(prefix);
                    steps.replace(&pattern, content);
                    let mut one = NormalizedText::new(&text, false);
                    assert!(one.prepend_and_replace(prefix, &pattern, content));
                    assert_eq!(one.as_str(), steps.as_str(), "{text:?} {prefix:?} {content:?}");
                    assert_eq!(one.is_changed(), steps.is_changed(), "{text:?} {prefix:?} {content:?}");
                    fused += usize::from(one.is_changed());
                }
            }
        }
        assert!(fused > 100_000, "{fused}");
        // Offsets tracked, or a pattern of more than one byte: the caller runs the two steps.
        assert!(!NormalizedText::new("a b", true).prepend_and_replace("_", &Replacement::Literal(" ".into()), "_"));
        assert!(!NormalizedText::new("a b", false).prepend_and_replace("_", &Replacement::Literal("ab".into()), "_"));
    }

    #[test]
    fn each_byte_is_found_where_a_char_search_finds_it() {
        let mut next = crate::testing::random(0x2545_f491_4f6c_dd1d);
        let alphabet = ["a", " ", "\u{2581}", "\u{7f}", "\u{80}", "ж", " ", "\u{1F600}", "\0", "~", "!", "`", "\u{1}"];
        for round in 0..20_000 {
            let mut text = String::new();
            for _ in 0..round % 48 {
                text.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            for byte in [b' ', b'a', 0x7F, 0, b'~', b'b'] {
                let mut found = Vec::new();
                for_each_byte(text.as_bytes(), byte, |at| found.push(at));
                let expected: Vec<usize> = text.match_indices(char::from(byte)).map(|(at, _)| at).collect();
                assert_eq!(found, expected, "{text:?} {byte}");
            }
        }
    }
}
