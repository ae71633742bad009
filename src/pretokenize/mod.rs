//! Pre-tokenizers: cut a text segment into the pieces that BPE merges within.
//!
//! A pre-tokenizer is a chain of steps, each applied to every piece the previous step
//! produced (as Hugging Face `Sequence` does). Pieces are streamed to a callback, so the
//! common chain (one split pattern, then byte-level) allocates nothing per piece.

pub mod chain;
pub mod lexer;
pub mod regex;

use crate::bytelevel;
use crate::error::Result;
use lexer::{Lexer, Matches};
pub use regex::{Dialect, Pattern};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The GPT-2 pattern that a `ByteLevel` pre-tokenizer with `use_regex: true` splits with.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// What happens to the delimiter matches of a split (Hugging Face `SplitDelimiterBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

/// A class of chars each of which is a match of its own (the reference's char patterns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharClass {
    /// ASCII punctuation or a Unicode `P*` char (`Punctuation`, `BertPreTokenizer`).
    Punctuation,
    /// `char::is_whitespace` (`WhitespaceSplit`, `BertPreTokenizer`).
    Whitespace,
    /// One given char (`CharDelimiterSplit`).
    Is(char),
    /// `char::is_numeric` (`Digits`).
    Numeric,
}

impl CharClass {
    fn contains(self, c: char) -> bool {
        use unicode_categories::UnicodeCategories;
        match self {
            CharClass::Punctuation => c.is_ascii_punctuation() || c.is_punctuation(),
            CharClass::Whitespace => c.is_whitespace(),
            CharClass::Is(d) => c == d,
            CharClass::Numeric => c.is_numeric(),
        }
    }
}

/// What a split step looks for.
#[derive(Debug, Clone)]
pub enum Splitter {
    /// A hand-written lexer, equivalent to a known pattern but much faster.
    Lexer(Lexer),
    Pattern(Pattern),
    /// Every char of a class, one match each.
    Chars(CharClass),
    /// Several known split steps in one (`chain::fuse`): its pieces are the matches.
    Chain(chain::Chain),
    /// An `Isolated` split, then a lexer on each of its pieces (`chain::fuse`): the pieces
    /// of the two steps, as matches.
    Then(Box<Splitter>, Lexer),
}

impl Splitter {
    /// A splitter for `pattern`: a hand-written lexer when one matches it exactly.
    pub fn for_pattern(pattern: &str, dialect: Dialect) -> Result<Self> {
        match Lexer::for_pattern(pattern, dialect) {
            Some(lexer) => Ok(Splitter::Lexer(lexer)),
            None => Ok(Splitter::Pattern(Pattern::new(pattern, dialect)?)),
        }
    }

    fn for_each_match(&self, text: &str, mut f: impl FnMut(usize, usize)) -> Result<()> {
        match self {
            Splitter::Lexer(lexer) => {
                lexer.for_each_match(text, f);
                Ok(())
            }
            Splitter::Pattern(pattern) => pattern.for_each_match(text, f),
            Splitter::Chain(chain) => {
                chain.for_each_piece(text, f);
                Ok(())
            }
            Splitter::Then(first, lexer) => {
                let mut prev = 0;
                // A piece of one byte is one match of every lexer (each matches any char
                // alone; a test checks it): Command R's digits are a piece each, and setting
                // up the lexer for each was 44% of 10 MB of digits. A piece of ASCII digits
                // alone (Command A's groups of three) is cut as the lexer cuts a run of
                // digits: setting up the lexer for each group was a third of 10 MB of digits.
                let digits = lexer.digits_per_match();
                let mut second = |s: usize, e: usize| match e - s {
                    1 => f(s, e),
                    _ if text.as_bytes()[s..e].iter().all(u8::is_ascii_digit) => {
                        for from in (s..e).step_by(digits) {
                            f(from, e.min(from.saturating_add(digits)));
                        }
                    }
                    _ => lexer.for_each_match(&text[s..e], |a, b| f(s + a, s + b)),
                };
                // Through `dyn`: a generic closure here would instantiate this function
                // again for every level of nesting.
                let pieces: &mut dyn FnMut(usize, usize) = &mut |start, end| {
                    if prev < start {
                        second(prev, start);
                    }
                    second(start, end);
                    prev = end;
                };
                first.for_each_match(text, pieces)?;
                if prev < text.len() {
                    second(prev, text.len());
                }
                Ok(())
            }
            Splitter::Chars(class) => {
                for (i, c) in text.char_indices() {
                    if class.contains(c) {
                        f(i, i + c.len_utf8());
                    }
                }
                Ok(())
            }
        }
    }

    /// The text cut into (start, end, is_match) spans that cover it, as HF's `find_matches`.
    fn spans(&self, text: &str, invert: bool) -> Result<Vec<(usize, usize, bool)>> {
        let mut spans = Vec::new();
        let mut prev = 0;
        self.for_each_match(text, |start, end| {
            if prev != start {
                spans.push((prev, start, invert));
            }
            spans.push((start, end, !invert));
            prev = end;
        })?;
        if prev != text.len() {
            spans.push((prev, text.len(), invert));
        }
        Ok(spans)
    }
}

/// When `Metaspace` puts its replacement char in front of a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrependScheme {
    Always,
    /// Only for the piece that starts the input text.
    First,
    Never,
}

#[derive(Debug, Clone)]
pub enum Step {
    Split { splitter: Splitter, behavior: Behavior, invert: bool },
    /// Splits with the GPT-2 pattern (`use_regex`) and maps bytes to printable chars: the
    /// steps after it see the mapped text, as in the reference (BPE itself works on bytes).
    ByteLevel { add_prefix_space: bool, use_regex: bool },
    /// Spaces become `replacement`, which is put in front as `prepend` says; with `split`,
    /// each piece starts at a replacement char.
    Metaspace { replacement: char, prepend: PrependScheme, split: bool },
}

#[derive(Debug, Clone)]
pub struct PreTokenizer {
    steps: Vec<Step>,
    /// Set when the steps come down to one split into pieces kept whole, each piece's raw
    /// bytes going to BPE (a `Split` with `Isolated` then a plain `ByteLevel`, or a
    /// `ByteLevel` with `use_regex`: nearly every byte-level tokenizer). Then pieces are
    /// handed over straight from the matcher: the general chain of steps cost 15% of a
    /// per-document encode (Llama 3, English) in calls and checks per piece.
    direct: Option<Direct>,
    /// Tells pre-tokenizers built apart from one another, for the cache of what they make
    /// of short text segments (`Bpe::with_caches`): nothing changes a pre-tokenizer once
    /// built, and a clone, which has its id, is the same.
    id: u64,
}

#[derive(Debug, Clone, Copy)]
enum Direct {
    /// The splitter of `steps[0]`.
    First,
    Gpt2,
}

fn gpt2_splitter() -> &'static Splitter {
    static SPLITTER: OnceLock<Splitter> = OnceLock::new();
    SPLITTER.get_or_init(|| {
        Splitter::for_pattern(GPT2_PATTERN, Dialect::Oniguruma).expect("the GPT-2 pattern compiles")
    })
}

/// Where a piece's bytes are in the text given to the pre-tokenizer: from `at` on, or,
/// for a piece a step rewrote, byte by byte in `map` (built only for offsets; without it,
/// `at` still says where the piece starts).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    at: usize,
    map: Option<&'a [usize]>,
}

impl<'a> Origin<'a> {
    fn start() -> Self {
        Origin { at: 0, map: None }
    }

    /// A rewritten piece whose first byte comes from `at`, mapped byte by byte if `track`.
    fn rewritten(at: usize, map: &'a [usize], track: bool) -> Self {
        Origin { at, map: track.then_some(map) }
    }

    #[inline]
    fn sub(self, start: usize, end: usize) -> Origin<'a> {
        match self.map {
            None => Origin { at: self.at + start, map: None },
            Some(map) => {
                let part = &map[start.min(map.len())..end.min(map.len())];
                Origin { at: part.first().copied().unwrap_or(self.at), map: Some(part) }
            }
        }
    }

    /// The text offset of byte `i` of the piece.
    #[inline]
    pub fn at(self, i: usize) -> usize {
        match self.map {
            None => self.at + i,
            Some(map) => map.get(i).or(map.last()).copied().unwrap_or(self.at),
        }
    }
}

/// How a text is pre-tokenized.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// Build `Origin::Map`s for rewritten pieces (for offsets).
    pub track: bool,
    /// The text starts the input (what `Metaspace`'s `First` scheme asks).
    pub at_input_start: bool,
}

impl PreTokenizer {
    pub fn new(steps: Vec<Step>) -> Result<Self> {
        Ok(Self::unfused(chain::fuse(steps)))
    }

    /// The steps as given, without fusing known chains of them.
    fn unfused(steps: Vec<Step>) -> Self {
        let plain_byte_level = |s: &Step| matches!(s, Step::ByteLevel { add_prefix_space: false, use_regex: false });
        let direct = match steps.as_slice() {
            [Step::Split { behavior: Behavior::Isolated, .. }, last] if plain_byte_level(last) => Some(Direct::First),
            [Step::ByteLevel { add_prefix_space: false, use_regex: true }] => Some(Direct::Gpt2),
            _ => None,
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        PreTokenizer { steps, direct, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// See the field `id`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A single split by `pattern` followed by byte-level mapping: a tiktoken encoding.
    pub fn from_pattern(pattern: &str, dialect: Dialect) -> Result<Self> {
        Self::new(vec![
            Step::Split {
                splitter: Splitter::for_pattern(pattern, dialect)?,
                behavior: Behavior::Isolated,
                invert: false,
            },
            Step::ByteLevel { add_prefix_space: false, use_regex: false },
        ])
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Whether pieces are byte strings for a byte-level BPE (a `ByteLevel` step maps them).
    pub fn is_byte_level(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::ByteLevel { .. }))
    }

    /// Whether `Context::at_input_start` changes anything.
    pub fn needs_input_start(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Metaspace { prepend: PrependScheme::First, .. }))
    }

    /// Calls `f` with every non-empty piece of `text` (raw bytes) and where it is, in order.
    pub fn for_each_piece(
        &self,
        text: &str,
        cx: Context,
        f: &mut dyn FnMut(&[u8], Origin) -> Result<()>,
    ) -> Result<()> {
        match self.direct_pieces(text, |piece, at| f(piece, Origin { at, map: None })) {
            Some(result) => result,
            None => self.apply(0, text, Origin::start(), false, cx, f),
        }
    }

    /// For pre-tokenizers whose pieces are the text's own bytes (see `direct`): calls `f`
    /// with every non-empty piece and where it starts, in order. `None`: not such a
    /// pre-tokenizer. Generic, so that the caller's work per piece is inlined into the
    /// matcher's loop: through a `dyn` callback, moving each piece's `Result` through
    /// memory took 15% of an encode.
    #[inline]
    pub fn direct_pieces(&self, text: &str, mut f: impl FnMut(&[u8], usize) -> Result<()>) -> Option<Result<()>> {
        let bytes = text.as_bytes();
        self.direct_batches(text, |mut start, ends| {
            for &end in ends {
                f(&bytes[start..end], start)?;
                start = end;
            }
            Ok(())
        })
    }

    /// `direct_pieces` a batch of pieces at a time: `f(start, ends)` for the pieces that
    /// end at `ends`, the first starting at `start` and each at the end of the one before.
    /// After an error `f` is not called again.
    #[inline]
    pub fn direct_batches(&self, text: &str, f: impl FnMut(usize, &[usize]) -> Result<()>) -> Option<Result<()>> {
        let splitter = match (self.direct, &self.steps[..]) {
            (Some(Direct::First), [Step::Split { splitter, .. }, ..]) => splitter,
            (Some(Direct::Gpt2), _) => gpt2_splitter(),
            _ => return None,
        };
        let mut batch = Batch { ends: [0; BATCH + GROUP], n: 0, start: 0, result: Ok(()), f };
        let matched = match splitter {
            // A lexer's matches tile the text (every char is in one), none empty: each match
            // is a piece, known by its end. Without the general case's two tests per match
            // below, a warm encode took 5% fewer instructions (Llama 3, English, callgrind).
            Splitter::Lexer(lexer) => {
                lexer.for_each_match_inlined(text, &mut batch);
                Ok(())
            }
            // Matches and the gaps between them, as `split_isolated`.
            _ => splitter.for_each_match(text, |start, end| {
                for cut in [start, end] {
                    if cut > batch.last() {
                        batch.one(batch.last(), cut);
                    }
                }
            }),
        };
        if batch.last() < text.len() {
            batch.one(batch.last(), text.len());
        }
        batch.flush();
        Some(matched.and(batch.result))
    }

    /// `mapped`: `text` is byte-level mapped chars, one per raw byte.
    #[inline]
    fn apply(
        &self,
        step: usize,
        text: &str,
        origin: Origin,
        mapped: bool,
        cx: Context,
        f: &mut dyn FnMut(&[u8], Origin) -> Result<()>,
    ) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        match self.steps.get(step) {
            None if !mapped => f(text.as_bytes(), origin),
            None => {
                let bytes: Vec<u8> = text.chars().filter_map(bytelevel::char_to_byte).collect();
                let map: Vec<usize> = if cx.track {
                    text.char_indices().map(|(i, _)| origin.at(i)).collect()
                } else {
                    Vec::new()
                };
                f(&bytes, Origin::rewritten(origin.at(0), &map, cx.track))
            }
            Some(Step::ByteLevel { add_prefix_space, use_regex }) => {
                let (prefixed, map);
                let (text, origin) = if *add_prefix_space && !text.starts_with(' ') {
                    prefixed = format!(" {text}");
                    // The added space stands for the first char, as in the reference.
                    map = if cx.track {
                        std::iter::once(origin.at(0)).chain((0..text.len()).map(|i| origin.at(i))).collect()
                    } else {
                        Vec::new()
                    };
                    (prefixed.as_str(), Origin::rewritten(origin.at(0), &map, cx.track))
                } else {
                    (text, origin)
                };
                if *use_regex {
                    self.split_isolated(gpt2_splitter(), step, text, origin, mapped, cx, f)
                } else {
                    self.byte_level_next(step, text, origin, mapped, cx, f)
                }
            }
            // Isolated keeps every span whatever `invert` says: stream them.
            Some(Step::Split { splitter, behavior: Behavior::Isolated, .. }) => {
                self.split_isolated(splitter, step, text, origin, mapped, cx, f)
            }
            Some(Step::Split { splitter, behavior, invert }) => {
                for (start, end) in combine(splitter.spans(text, *invert)?, *behavior) {
                    self.apply(step + 1, &text[start..end], origin.sub(start, end), mapped, cx, f)?;
                }
                Ok(())
            }
            Some(Step::Metaspace { replacement, prepend, split }) => {
                let rep = *replacement;
                let starts_input = cx.at_input_start && origin.at(0) == 0;
                let first_is_space = text.starts_with(' ') || text.starts_with(rep);
                let add = !first_is_space
                    && match prepend {
                        PrependScheme::Always => true,
                        PrependScheme::First => starts_input,
                        PrependScheme::Never => false,
                    };
                let mut out = String::with_capacity(text.len() + 8);
                let mut map = Vec::new();
                if add {
                    out.push(rep);
                    if cx.track {
                        map.extend(std::iter::repeat(origin.at(0)).take(rep.len_utf8()));
                    }
                }
                for (i, c) in text.char_indices() {
                    let c2 = if c == ' ' { rep } else { c };
                    out.push(c2);
                    if cx.track {
                        map.extend(std::iter::repeat(origin.at(i)).take(c2.len_utf8()));
                    }
                }
                let origin = Origin::rewritten(origin.at(0), &map, cx.track);
                if *split {
                    let spans = Splitter::Chars(CharClass::Is(rep)).spans(&out, false)?;
                    for (start, end) in combine(spans, Behavior::MergedWithNext) {
                        self.apply(step + 1, &out[start..end], origin.sub(start, end), mapped, cx, f)?;
                    }
                    Ok(())
                } else {
                    self.apply(step + 1, &out, origin, mapped, cx, f)
                }
            }
        }
    }

    /// After a ByteLevel step: the last step hands raw bytes to BPE; steps after it see
    /// the mapped chars, as in the reference.
    #[inline]
    fn byte_level_next(
        &self,
        step: usize,
        text: &str,
        origin: Origin,
        mapped: bool,
        cx: Context,
        f: &mut dyn FnMut(&[u8], Origin) -> Result<()>,
    ) -> Result<()> {
        if mapped || step + 1 == self.steps.len() {
            return self.apply(step + 1, text, origin, mapped, cx, f);
        }
        let mut out = String::with_capacity(text.len() * 2);
        let mut map = Vec::new();
        for (i, b) in text.bytes().enumerate() {
            let c = bytelevel::byte_to_char(b);
            out.push(c);
            if cx.track {
                map.extend(std::iter::repeat(origin.at(i)).take(c.len_utf8()));
            }
        }
        self.apply(step + 1, &out, Origin::rewritten(origin.at(0), &map, cx.track), true, cx, f)
    }

    /// Matches and the gaps between them, each passed on to the next step.
    #[allow(clippy::too_many_arguments)]
    fn split_isolated(
        &self,
        splitter: &Splitter,
        step: usize,
        text: &str,
        origin: Origin,
        mapped: bool,
        cx: Context,
        f: &mut dyn FnMut(&[u8], Origin) -> Result<()>,
    ) -> Result<()> {
        let byte_level = matches!(self.steps.get(step), Some(Step::ByteLevel { .. }));
        let mut next = |s: usize, e: usize| {
            if byte_level {
                self.byte_level_next(step, &text[s..e], origin.sub(s, e), mapped, cx, f)
            } else {
                self.apply(step + 1, &text[s..e], origin.sub(s, e), mapped, cx, f)
            }
        };
        let mut prev = 0;
        let mut result = Ok(());
        splitter.for_each_match(text, |start, end| {
            if result.is_ok() {
                result = next(prev, start).and_then(|()| next(start, end));
            }
            prev = end;
        })?;
        result?;
        next(prev, text.len())
    }
}

/// Pieces of a direct pre-tokenizer encoded at a time (see `direct_batches`).
const BATCH: usize = 64;
/// The ends of a block's matches are written this many at a time (`Batch::block`).
const GROUP: usize = 8;

/// The ends of the pieces a matcher has cut and `f` has not yet had: the pieces tile the
/// text, so each is known by its end. The matcher only writes the ends down, and `f` runs
/// over a batch of them in a loop of its own: called from inside the matcher's loop, where
/// the compiler would not inline it, the calls' register saves and restores were a fifth
/// of a warm encode's instructions (callgrind, Llama 3). The lexer is compiled into
/// `direct_batches` with the batch (`for_each_match_inlined`), so that its loop keeps the
/// count in a register: through a closure's pointer it loaded, incremented and stored it at
/// each match (perf; Llama 3, best of 20, six runs in turn, medians: code 421 -> 446 MB/s,
/// English 515 -> 538; GPT-2 346 -> 364 and 468 -> 490).
struct Batch<F> {
    /// `GROUP` more than a batch: the slack that `block` writes past its last end.
    ends: [usize; BATCH + GROUP],
    n: usize,
    /// Where the batch's first piece starts.
    start: usize,
    /// The first error of `f`, after which it is not called again.
    result: Result<()>,
    f: F,
}

impl<F: FnMut(usize, &[usize]) -> Result<()>> Batch<F> {
    /// The end of the last piece cut.
    #[inline(always)]
    fn last(&self) -> usize {
        if self.n == 0 {
            self.start
        } else {
            self.ends[self.n - 1]
        }
    }

    #[inline(never)]
    fn flush(&mut self) {
        if self.n == 0 {
            return;
        }
        if self.result.is_ok() {
            // Only an error is moved into `result`: copying every piece's `Ok` (the size of
            // an `Error`) showed in the profile.
            if let Err(e) = (self.f)(self.start, &self.ends[..self.n]) {
                self.result = Err(e);
            }
        }
        self.start = self.ends[self.n - 1];
        self.n = 0;
    }
}

impl<F: FnMut(usize, &[usize]) -> Result<()>> Matches for Batch<F> {
    #[inline(always)]
    fn one(&mut self, start: usize, end: usize) {
        debug_assert!(start == self.last() && end > start, "the pieces tile the text");
        if self.n == BATCH {
            self.flush();
        }
        self.ends[self.n] = end;
        self.n += 1;
    }

    /// The ends are written `GROUP` at a time, whatever the count, the last group past it
    /// into the slack: a loop over the cuts one at a time left at a count it could not
    /// predict, once a block (61 k of the 168 k mispredicted branches of a warm encode of
    /// 2 MB of English, Llama 3, callgrind), as simdjson found for its bits.
    #[inline(always)]
    fn block(&mut self, at: usize, mut cuts: u64, end: usize) {
        let count = cuts.count_ones() as usize + 1;
        if self.n + count > BATCH {
            self.flush();
        }
        let groups = (count - 1).next_multiple_of(GROUP);
        for group in self.ends[self.n..self.n + groups].chunks_exact_mut(GROUP) {
            for slot in group {
                *slot = at + cuts.trailing_zeros() as usize;
                cuts &= cuts.wrapping_sub(1);
            }
        }
        self.ends[self.n + count - 1] = at + end;
        self.n += count;
    }
}

/// Applies a split behavior to spans, as HF's `NormalizedString::split`.
fn combine(spans: Vec<(usize, usize, bool)>, behavior: Behavior) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    match behavior {
        Behavior::Isolated => out.extend(spans.iter().map(|&(s, e, _)| (s, e))),
        Behavior::Removed => out.extend(spans.iter().filter(|sp| !sp.2).map(|&(s, e, _)| (s, e))),
        Behavior::Contiguous => {
            let mut previous_match = false;
            for (s, e, is_match) in spans {
                match out.last_mut() {
                    Some(last) if is_match == previous_match => last.1 = e,
                    _ => out.push((s, e)),
                }
                previous_match = is_match;
            }
        }
        Behavior::MergedWithPrevious => {
            let mut previous_match = false;
            for (s, e, is_match) in spans {
                match out.last_mut() {
                    Some(last) if is_match && !previous_match => last.1 = e,
                    _ => out.push((s, e)),
                }
                previous_match = is_match;
            }
        }
        Behavior::MergedWithNext => {
            let mut previous_match = false;
            for (s, e, is_match) in spans.into_iter().rev() {
                match out.last_mut() {
                    Some(last) if is_match && !previous_match => last.0 = s,
                    _ => out.push((s, e)),
                }
                previous_match = is_match;
            }
            out.reverse();
        }
    }
    out.retain(|&(s, e)| s < e);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(p: &PreTokenizer, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        p.for_each_piece(text, Context::default(), &mut |s, _| {
            out.push(String::from_utf8_lossy(s).into_owned());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn gpt2_byte_level_splits_like_the_reference() {
        let p = PreTokenizer::new(vec![Step::ByteLevel { add_prefix_space: false, use_regex: true }])
            .unwrap();
        assert_eq!(pieces(&p, "Hello   world's 123!!"), ["Hello", "  ", " world", "'s", " 123", "!!"]);
    }

    #[test]
    fn direct_pieces_are_the_pieces_of_the_steps() {
        let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let split = Step::Split {
            splitter: Splitter::for_pattern(llama3, Dialect::Oniguruma).unwrap(),
            behavior: Behavior::Isolated,
            invert: false,
        };
        let byte_level = Step::ByteLevel { add_prefix_space: false, use_regex: false };
        let gpt2 = Step::ByteLevel { add_prefix_space: false, use_regex: true };
        // A pattern that leaves text between its matches.
        let digits = Step::Split {
            splitter: Splitter::for_pattern(r"\d+", Dialect::Oniguruma).unwrap(),
            behavior: Behavior::Isolated,
            invert: false,
        };
        // The last: more pieces than one batch of `direct_pieces`.
        let long = "Hello   world's 123!!\n".repeat(100);
        let mut texts: Vec<String> = ["", "Hello   world's 123!!", "  \n\n  x\r\n", "日本語のテキスト, 12345", "a\u{a0}b  \t", &long]
            .map(String::from)
            .to_vec();
        // Random texts too: a lexer's pieces are taken as tiling the text (checked in debug).
        let mut next = crate::testing::random(0x3c6e_f372_fe94_f82b);
        let alphabet = ["a", "Zb", " ", "  ", "\n", "\r\n", "\t", "'s", "'T", "1", "234", "!", "?!.", "ж", "É", "日本", "\u{a0}", "\u{1F600}", "\u{300}"];
        for round in 0..300 {
            // Some long enough for batches to fill, at a block's matches or at one match.
            let len = if round % 10 == 0 { 40 * round } else { round % 90 };
            texts.push((0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect());
        }
        for steps in [vec![split, byte_level.clone()], vec![gpt2], vec![digits, byte_level]] {
            let p = PreTokenizer::new(steps.clone()).unwrap();
            for text in texts.iter().map(String::as_str) {
                let mut direct = Vec::new();
                p.direct_pieces(text, |piece, at| {
                    direct.push((piece.to_vec(), at));
                    Ok(())
                })
                .expect("a direct pre-tokenizer")
                .unwrap();
                let mut stepped = Vec::new();
                p.apply(0, text, Origin::start(), false, Context::default(), &mut |piece, origin| {
                    stepped.push((piece.to_vec(), origin.at(0)));
                    Ok(())
                })
                .unwrap();
                assert_eq!(direct, stepped, "{steps:?} on {text:?}");
                let mut batched = Vec::new();
                p.direct_batches(text, |mut start, ends| {
                    assert!(!ends.is_empty() && ends.len() <= BATCH, "a batch of {} pieces", ends.len());
                    for &end in ends {
                        batched.push((text.as_bytes()[start..end].to_vec(), start));
                        start = end;
                    }
                    Ok(())
                })
                .expect("a direct pre-tokenizer")
                .unwrap();
                assert_eq!(batched, stepped, "{steps:?} on {text:?}");
            }
        }
        let metaspace = Step::Metaspace { replacement: '▁', prepend: PrependScheme::Always, split: true };
        assert!(PreTokenizer::new(vec![metaspace]).unwrap().direct_pieces("a b", |_, _| Ok(())).is_none());
    }

    #[test]
    fn direct_pieces_stop_at_the_first_error() {
        let p = PreTokenizer::new(vec![Step::ByteLevel { add_prefix_space: false, use_regex: true }]).unwrap();
        let text = "word ".repeat(BATCH * 3);
        for fail_at in [0, 1, BATCH - 2, BATCH, BATCH * 2 + 5] {
            let mut calls = 0;
            let result = p
                .direct_pieces(&text, |_, _| {
                    calls += 1;
                    match calls > fail_at {
                        true => Err(crate::error::Error::Invalid(format!("piece {calls}"))),
                        false => Ok(()),
                    }
                })
                .expect("a direct pre-tokenizer");
            assert!(matches!(result, Err(crate::error::Error::Invalid(m)) if m == format!("piece {}", fail_at + 1)));
            assert_eq!(calls, fail_at + 1, "no piece is encoded after an error");
        }
    }

    #[test]
    fn behaviors_combine_like_the_reference() {
        // "a-b--c" split on "-": spans a | - | b | -- would be two matches "-" "-".
        let spans = vec![(0, 1, false), (1, 2, true), (2, 3, false), (3, 4, true), (4, 5, true), (5, 6, false)];
        assert_eq!(combine(spans.clone(), Behavior::Removed), [(0, 1), (2, 3), (5, 6)]);
        assert_eq!(combine(spans.clone(), Behavior::MergedWithPrevious), [(0, 2), (2, 4), (4, 5), (5, 6)]);
        assert_eq!(combine(spans.clone(), Behavior::MergedWithNext), [(0, 1), (1, 3), (3, 4), (4, 6)]);
        assert_eq!(combine(spans, Behavior::Contiguous), [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6)]);
    }
}
