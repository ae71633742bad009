//! Hand-written lexers for the pre-tokenizer patterns of the common model families.
//!
//! Nearly every byte-level BPE in use splits text with one of a handful of regexes (GPT-2,
//! cl100k / Llama 3 / Qwen2, o200k / Tekken). Their look-ahead (`\s+(?!\S)`) forces a
//! backtracking engine, which is where most of the encoding time goes. Each lexer here
//! reproduces one family exactly — the leftmost-first alternation, greedy runs and the
//! backtracking the regex would do — as straight-line code over a per-char class table.
//! `Lexer::for_pattern` only returns a lexer for a pattern string it knows to be
//! equivalent; anything else goes to the general regex matcher. Over ASCII, the matches
//! are worked out 64 bytes at a time from bitmaps (`blocks.rs`); this file's per-match code
//! does the rest. The tests below check each lexer against the regex it replaces, and the
//! blocks against the per-match code.
//!
//! Char classes come from `regex-syntax`, the same Unicode tables the regex fallback uses.

use super::regex::Dialect;
use std::sync::OnceLock;

mod blocks;

use blocks::Classify;

pub(super) const LETTER: u8 = 1; // \p{L}
pub(super) const NUMBER: u8 = 2; // \p{N}
pub(super) const SPACE: u8 = 4; // \s
const UPPER: u8 = 8; // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
const LOWER: u8 = 16; // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
pub(super) const MARK: u8 = 32; // \p{M}
pub(super) const PUNCT: u8 = 64; // \p{P}
pub(super) const SYMBOL: u8 = 128; // \p{S}

/// Each char's classes, as flags, indexed by code point.
pub(super) fn class_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![0u8; 0x11_0000];
        for (pattern, flag) in [
            (r"\p{L}", LETTER),
            (r"\p{N}", NUMBER),
            (r"\s", SPACE),
            (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", UPPER),
            (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", LOWER),
            (r"\p{M}", MARK),
            (r"\p{P}", PUNCT),
            (r"\p{S}", SYMBOL),
        ] {
            let hir = regex_syntax::parse(pattern).expect("valid class");
            let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) = hir.kind() else {
                unreachable!("{pattern} is a Unicode class")
            };
            for range in class.iter() {
                for cp in u32::from(range.start())..=u32::from(range.end()) {
                    table[cp as usize] |= flag;
                }
            }
        }
        table
    })
}

/// The class every char from U+5000 to U+9FFF has (0 if they differ): the CJK ideographs
/// whose UTF-8 lead bytes are E5-E9. A run of them is read 3 bytes at a time without
/// decoding each (Chinese text: 5% fewer instructions in a warm encode, Llama 3).
pub(super) fn ideograph_class() -> u8 {
    static CLASS: OnceLock<u8> = OnceLock::new();
    *CLASS.get_or_init(|| {
        let chars = &class_table()[0x5000..=0x9FFF];
        if chars.iter().all(|&c| c == chars[0]) {
            chars[0]
        } else {
            0
        }
    })
}

#[inline]
pub(super) fn class(table: &[u8], c: char) -> u8 {
    table[c as usize]
}

/// How contractions (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contractions {
    None,
    CaseSensitive,
    CaseInsensitive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Words {
    /// ` ?\p{L}+`
    SpacePrefixed,
    /// `[^\r\n\p{L}\p{N}]?\p{L}+`
    AnyPrefix,
    /// o200k: `P?U*W+C?|P?U+W*C?` with case-aware classes and contraction suffixes.
    CaseAware,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbers {
    /// ` ?\p{N}+`
    SpacePrefixed,
    /// `\p{N}{1,n}`
    UpTo(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spaces {
    /// `\s+(?!\S)|\s+`
    Gpt2,
    /// `\s++$|\s*[\r\n]|\s+(?!\S)|\s`
    Cl100k,
    /// `\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexer {
    /// The class words are runs of (`\p{L}`, or `[\p{L}\p{M}]` in Qwen3.5); punctuation
    /// runs are of chars outside it, `\p{N}` and `\s`.
    word: u8,
    contractions: Contractions,
    words: Words,
    numbers: Numbers,
    /// The chars `[\r\n]*` (or `[\r\n/]*`) lets punctuation runs take after them.
    punct_tail: &'static [char],
    spaces: Spaces,
}

impl Lexer {
    /// How many digits a match takes from a text of ASCII digits alone: a run of `\p{N}`
    /// is cut into matches of this many from its start, the last one shorter.
    pub fn digits_per_match(&self) -> usize {
        match self.numbers {
            Numbers::SpacePrefixed => usize::MAX,
            Numbers::UpTo(n) => n,
        }
    }
}

const GPT2: Lexer = Lexer {
    word: LETTER,
    contractions: Contractions::CaseSensitive,
    words: Words::SpacePrefixed,
    numbers: Numbers::SpacePrefixed,
    punct_tail: &[],
    spaces: Spaces::Gpt2,
};
const CL100K: Lexer = Lexer {
    word: LETTER,
    contractions: Contractions::CaseInsensitive,
    words: Words::AnyPrefix,
    numbers: Numbers::UpTo(3),
    punct_tail: &['\r', '\n'],
    spaces: Spaces::Cl100k,
};
const LLAMA3: Lexer = Lexer { spaces: Spaces::Llama3, ..CL100K };
const QWEN2: Lexer = Lexer { numbers: Numbers::UpTo(1), ..LLAMA3 };
/// Qwen3.5: Qwen2 with combining marks in words (Indic and Arabic words no longer break at
/// every vowel sign) and out of punctuation.
const QWEN35: Lexer = Lexer { word: LETTER | MARK, ..QWEN2 };
const O200K: Lexer = Lexer {
    word: LETTER,
    contractions: Contractions::CaseInsensitive,
    words: Words::CaseAware,
    numbers: Numbers::UpTo(3),
    punct_tail: &['\r', '\n', '/'],
    spaces: Spaces::Llama3,
};
const TEKKEN: Lexer = Lexer { contractions: Contractions::None, numbers: Numbers::UpTo(1), ..O200K };

/// Every pattern string with a lexer, as tokenizer.json files and tiktoken spell them.
/// `None` as dialect: the pattern means the same in both.
const KNOWN: &[(&str, Option<Dialect>, Lexer)] = &[
    (super::GPT2_PATTERN, None, GPT2),
    (
        r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s",
        Some(Dialect::Tiktoken),
        GPT2,
    ),
    (
        r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s",
        Some(Dialect::Tiktoken),
        CL100K,
    ),
    (
        r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++\z|\s*[\r\n]|\s+(?!\S)|\s",
        None,
        CL100K,
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        None,
        LLAMA3,
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        None,
        QWEN2,
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        None,
        QWEN35,
    ),
    (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        None,
        O200K,
    ),
    (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        None,
        TEKKEN,
    ),
];

/// Text plus the class table, with small helpers over char positions (byte offsets).
pub(super) struct Scan<'a> {
    pub(super) text: &'a str,
    pub(super) table: &'a [u8],
}

impl Scan<'_> {
    #[inline(always)]
    pub(super) fn char_at(&self, at: usize) -> Option<char> {
        let b = *self.text.as_bytes().get(at)?;
        if b < 0x80 {
            Some(b as char)
        } else {
            Some(self.wide_char_at(at).0)
        }
    }

    /// The char at `at` (a char boundary, not ASCII) and its length in bytes, read from
    /// the bytes: the text is a `str`, so they are valid UTF-8 and its lead byte tells the
    /// length. `self.text[at..].chars().next()` checked the boundary and decoded in a
    /// general loop: on Chinese text, where every char of a letter run comes here, that
    /// took 3% more instructions of a warm encode (Llama 3, callgrind).
    #[inline(always)]
    fn wide_char_at(&self, at: usize) -> (char, usize) {
        let bytes = self.text.as_bytes();
        debug_assert!(self.text.is_char_boundary(at) && bytes[at] >= 0x80);
        let tail = |i: usize| u32::from(bytes[at + i] & 0x3F);
        let b = u32::from(bytes[at]);
        let (cp, len) = if b < 0xE0 {
            ((b & 0x1F) << 6 | tail(1), 2)
        } else if b < 0xF0 {
            ((b & 0x0F) << 12 | tail(1) << 6 | tail(2), 3)
        } else {
            ((b & 0x07) << 18 | tail(1) << 12 | tail(2) << 6 | tail(3), 4)
        };
        debug_assert!(char::from_u32(cp).is_some());
        // SAFETY: the text is a `str`, so from a lead byte these are the UTF-8 bytes of one
        // char, which decode to a Unicode scalar value; and were `at` inside a char, its
        // byte (0x80-0xBF) would take the first branch, whose 11 bits are no surrogate.
        (unsafe { char::from_u32_unchecked(cp) }, len)
    }

    #[inline]
    pub(super) fn class_at(&self, at: usize) -> u8 {
        self.char_at(at).map_or(0, |c| class(self.table, c))
    }

    /// End of the run of chars whose class has any of `flags`, from `at`.
    #[inline]
    pub(super) fn run(&self, mut at: usize, flags: u8) -> usize {
        let bytes = self.text.as_bytes();
        let ideographs = ideograph_class() & flags != 0;
        while at < bytes.len() {
            let b = bytes[at];
            if b < 0x80 {
                if self.table[b as usize] & flags == 0 {
                    break;
                }
                at += 1;
            } else if ideographs && (0xE5..=0xE9).contains(&b) {
                at += 3;
            } else {
                let (c, len) = self.wide_char_at(at);
                if class(self.table, c) & flags == 0 {
                    break;
                }
                at += len;
            }
        }
        at
    }

    /// End of the run of chars in `set`, from `at`.
    #[inline(always)]
    pub(super) fn run_of(&self, at: usize, set: &[char]) -> usize {
        // Nearly always empty (a punctuation run's `[\r\n]*` tail): told by one byte, where
        // the loop below cost 46 instructions a call (callgrind, English).
        match self.text.as_bytes().get(at) {
            Some(&b) if b >= 0x80 || set.contains(&char::from(b)) => self.run_of_from(at, set),
            _ => at,
        }
    }

    fn run_of_from(&self, mut at: usize, set: &[char]) -> usize {
        while let Some(c) = self.char_at(at).filter(|c| set.contains(c)) {
            at += c.len_utf8();
        }
        at
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` at `at` (an apostrophe), case-folded if asked.
    fn contraction(&self, at: usize, case_insensitive: bool) -> Option<usize> {
        let rest = self.text.get(at..)?.strip_prefix('\'')?;
        let fold = |c: char| -> char {
            if !case_insensitive {
                c
            } else if c == 'ſ' {
                // U+017F LATIN SMALL LETTER LONG S case-folds to `s`.
                's'
            } else {
                c.to_ascii_lowercase()
            }
        };
        let mut chars = rest.chars();
        let first = chars.next()?;
        let second = chars.next();
        let end1 = at + 1 + first.len_utf8();
        match (fold(first), second.map(fold)) {
            ('s' | 't' | 'm' | 'd', _) => Some(end1),
            ('r', Some('e')) | ('v', Some('e')) | ('l', Some('l')) => Some(end1 + second?.len_utf8()),
            _ => None,
        }
    }
}

/// `\s*[\r\n]+|\s+(?!\S)|\s+` at `at`, a whitespace char: Llama 3's whitespace rules.
pub(super) fn llama3_spaces(s: &Scan, at: usize) -> usize {
    LLAMA3.spaces_at(s, at)
}

/// Where a lexer's matches go, one at a time or a block's at once.
pub trait Matches {
    /// The match from `start` to `end`.
    fn one(&mut self, start: usize, end: usize);

    /// The matches of a block at `at`: from `at`, cut at the offsets of `cuts`' set bits, the
    /// last ending at `at + end`.
    #[inline(always)]
    fn block(&mut self, at: usize, mut cuts: u64, end: usize) {
        let mut from = 0;
        while cuts != 0 {
            let to = cuts.trailing_zeros() as usize;
            self.one(at + from, at + to);
            from = to;
            cuts &= cuts - 1;
        }
        self.one(at + from, at + end);
    }
}

impl<F: FnMut(usize, usize)> Matches for F {
    #[inline(always)]
    fn one(&mut self, start: usize, end: usize) {
        self(start, end)
    }
}

impl Lexer {
    pub fn for_pattern(pattern: &str, dialect: Dialect) -> Option<Lexer> {
        KNOWN
            .iter()
            .find(|(known, d, _)| *known == pattern && d.is_none_or(|d| d == dialect))
            .map(|(_, _, lexer)| lexer.clone())
    }

    /// Calls `f(start, end)` for each match, left to right; the matches cover the text.
    pub fn for_each_match(&self, text: &str, mut f: impl FnMut(usize, usize)) {
        self.for_each_match_inlined(text, &mut f)
    }

    /// `for_each_match` compiled into its caller, so that the caller's variables that `f`
    /// changes at each match can stay in registers (see `PreTokenizer::direct_batches`),
    /// and the matches of a block can go to it at once (`Matches::block`).
    #[inline(always)]
    pub fn for_each_match_inlined(&self, text: &str, f: &mut impl Matches) {
        #[cfg(target_arch = "x86_64")]
        if let Some(wide) = blocks::Wide::detect() {
            // SAFETY: the CPU has what `Wide` needs (it exists).
            return unsafe { self.families_wide(text, f, wide) };
        }
        self.families(text, f, blocks::Narrow)
    }

    /// `families` compiled for the CPUs with AVX-512BW, which classify a block with one
    /// compare a class (`blocks::Wide`).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn families_wide(&self, text: &str, f: &mut impl Matches, wide: blocks::Wide) {
        self.families(text, f, wide)
    }

    #[inline(always)]
    fn families(&self, text: &str, f: &mut impl Matches, classes: impl Classify) {
        // The common families compiled each on its own, their settings constants: the
        // branches on them folded away, a warm encode took 7% fewer instructions (Llama 3
        // and o200k on English, callgrind; 3-5% on Chinese, where `match_at` does most).
        // A loop over the families instead of this chain did not fold them.
        if *self == LLAMA3 {
            LLAMA3.matches(text, f, classes)
        } else if *self == QWEN2 {
            QWEN2.matches(text, f, classes)
        } else if *self == CL100K {
            CL100K.matches(text, f, classes)
        } else if *self == O200K {
            O200K.matches(text, f, classes)
        } else if *self == GPT2 {
            GPT2.matches(text, f, classes)
        } else {
            self.matches(text, f, classes)
        }
    }

    #[inline(always)]
    fn matches(&self, text: &str, f: &mut impl Matches, classes: impl Classify) {
        self.matches_in(text, self.has_blocks().then_some(classes), f)
    }

    /// `blocks`: the ASCII stretches 64 bytes at a time (`blocks.rs`), classified by it, else
    /// a match at a time.
    #[inline(always)]
    fn matches_in(&self, text: &str, blocks: Option<impl Classify>, f: &mut impl Matches) {
        let scan = Scan { text, table: class_table() };
        let bytes = text.as_bytes();
        let mut at = 0;
        // Matches are read one at a time up to here (past a byte the blocks cannot read).
        let mut singly_to = 0;
        while at < bytes.len() {
            if blocks.is_some() && at >= singly_to {
                // A char outside ASCII that blocks do not read (see `Lexer::block_reads`; the
                // first such char among the next 8 bytes tells which script the text goes on
                // in): a block would end there having decided next to nothing, so it is not
                // classified. In Russian text (before blocks read Cyrillic), where an
                // ASCII space starts most matches, a warm encode took 22% more instructions
                // with blocks than without before this check, and 7% fewer after (callgrind).
                // Under 8 bytes left, a block does not pay either: Command A's digit groups
                // are a lexer call each, and classifying a block for each 1-3 digits was a
                // quarter of its time on 10 MB of digits (perf).
                match bytes.get(at..at + 8) {
                    Some(next) => {
                        let high = u64::from_le_bytes(next.try_into().expect("8 bytes")) & 0x8080_8080_8080_8080;
                        if high != 0 {
                            let first = at + (high.trailing_zeros() / 8) as usize;
                            if !self.block_reads(bytes[first]) {
                                singly_to = first + 1;
                            }
                        }
                    }
                    None => singly_to = bytes.len(),
                }
            }
            if let Some(classes) = blocks.as_ref().filter(|_| at >= singly_to) {
                let block = self.block(&scan, at, f, classes);
                if let Some(end) = block.end {
                    at = end;
                }
                // A block that stopped short leaves `at` before the text's end.
                match (block.end, block.unknown) {
                    (Some(_), None) => continue,
                    (_, unknown) => singly_to = unknown.unwrap_or(at) + 1,
                }
            }
            let end = match self.ascii_match(&scan, at) {
                Some(end) => end,
                None => {
                    let c = scan.char_at(at).expect("a char boundary");
                    self.match_at(&scan, at, c).unwrap_or(at + c.len_utf8())
                }
            };
            f.one(at, end);
            at = end;
        }
    }

    /// The end of the match at `at` when its char and the next are ASCII, else `None`
    /// (then `match_at` decides). Profiled on English (Llama 3 pattern), the lexer took 26 ns
    /// a match, a third of the whole encode, mostly in mispredicted branches: the class of
    /// each char tested in turn through `match_at`'s alternatives, and the exit of the
    /// per-char loop at every word's end. Here the first two bytes pick the alternative and
    /// letter runs are read 8 bytes at a time (`ascii_run`), whose exit is rarely mispredicted.
    #[inline(always)]
    fn ascii_match(&self, s: &Scan, at: usize) -> Option<usize> {
        let bytes = s.text.as_bytes();
        let b = bytes[at];
        let cls = *s.table.get(b as usize).filter(|_| b < 0x80)?;
        let next = bytes.get(at + 1).copied();
        // A char outside ASCII next may be a letter or a digit that joins this match: only
        // a word that has begun knows what to do with it.
        if cls & LETTER == 0 && next.is_some_and(|n| n >= 0x80) {
            return None;
        }
        if b == b'\'' && self.contractions != Contractions::None && self.words != Words::CaseAware {
            if let Some(end) = s.contraction(at, self.contractions == Contractions::CaseInsensitive) {
                return Some(end);
            }
        }
        if let Some(end) = self.ascii_word(s, at, b, cls, next) {
            return end;
        }
        let next_cls = next.map_or(0, |n| s.table[n as usize]);
        if cls & NUMBER != 0 || (b == b' ' && next_cls & NUMBER != 0 && self.numbers == Numbers::SpacePrefixed) {
            return match self.numbers {
                Numbers::SpacePrefixed => {
                    let end = ascii_run(bytes, at + 1, digits);
                    Some(if bytes.get(end).is_some_and(|&b| b >= 0x80) { s.run(end, NUMBER) } else { end })
                }
                Numbers::UpTo(n) => {
                    let end = ascii_run(&bytes[..bytes.len().min(at + n)], at + 1, digits);
                    // Short of `n` digits at a char outside ASCII: it may be a digit.
                    (end == at + n || bytes.get(end).is_none_or(|&b| b < 0x80)).then_some(end)
                }
            };
        }
        let other = |flags: u8| flags & (self.word | NUMBER | SPACE) == 0;
        let punct_start = if other(cls) {
            at
        } else if b == b' ' && next.is_some() && other(next_cls) {
            at + 1
        } else {
            // Whitespace that no earlier alternative takes.
            return Some(self.spaces_at(s, at));
        };
        // ASCII first, by table: handing this run and the word and digit runs to `run_other`
        // and `Scan::run` (a char decode per byte) made code encode a third slower.
        let mut end = punct_start + 1;
        while end < bytes.len() && bytes[end] < 0x80 && other(s.table[bytes[end] as usize]) {
            end += 1;
        }
        if bytes.get(end).is_some_and(|&b| b >= 0x80) {
            end = s.run_other(end, self.word);
        }
        Some(s.run_of(end, self.punct_tail))
    }

    /// `ascii_match` for a word of ASCII letters with its prefix char: `None` when the
    /// match is not a word, `Some(None)` when it is one that `match_at` must read.
    #[inline(always)]
    fn ascii_word(&self, s: &Scan, at: usize, b: u8, cls: u8, next: Option<u8>) -> Option<Option<usize>> {
        let bytes = s.text.as_bytes();
        let start = if cls & LETTER != 0 {
            at
        } else {
            // The one prefix char a word may take: ` ` (GPT-2), any but \r \n, letters
            // and digits (the others).
            let prefix = match self.words {
                Words::SpacePrefixed => b == b' ',
                Words::AnyPrefix | Words::CaseAware => b != b'\r' && b != b'\n' && cls & NUMBER == 0,
            };
            if !prefix || !next?.is_ascii_alphabetic() {
                return None;
            }
            at + 1
        };
        Some(match self.words {
            Words::SpacePrefixed | Words::AnyPrefix => {
                let end = ascii_run(bytes, start + 1, letters);
                // A letter outside ASCII continues the word.
                Some(if bytes.get(end).is_some_and(|&b| b >= 0x80) { s.run(end, self.word) } else { end })
            }
            Words::CaseAware => {
                // `U*W+` or `U+W*`: over ASCII both are upper-case letters, then lower-case.
                let end = ascii_run(bytes, ascii_run(bytes, start, upper), lower);
                // A char outside ASCII may continue either run, and an apostrophe may add
                // a contraction: `match_at` does those.
                match bytes.get(end) {
                    Some(&b) if b >= 0x80 || b == b'\'' => None,
                    _ => Some(end),
                }
            }
        })
    }

    /// The end of the match starting at `at` (whose char is `c`), trying the pattern's
    /// alternatives in order.
    #[inline(always)] // into each family's `matches`
    fn match_at(&self, s: &Scan, at: usize, c: char) -> Option<usize> {
        let t = s.table;
        let cls = class(t, c);
        let next = at + c.len_utf8();
        let word = self.word;
        let other = |flags: u8| flags & (word | NUMBER | SPACE) == 0;
        let prefix = c != '\r' && c != '\n' && cls & (LETTER | NUMBER) == 0;

        // Contractions as their own alternative.
        if c == '\'' && self.contractions != Contractions::None && self.words != Words::CaseAware {
            if let Some(end) = s.contraction(at, self.contractions == Contractions::CaseInsensitive) {
                return Some(end);
            }
        }
        // Words.
        match self.words {
            Words::SpacePrefixed => {
                if cls & word != 0 {
                    return Some(s.run(next, word));
                }
                if c == ' ' && s.class_at(next) & word != 0 {
                    return Some(s.run(next, word));
                }
            }
            Words::AnyPrefix => {
                if cls & word != 0 {
                    return Some(s.run(next, word));
                }
                if prefix && s.class_at(next) & word != 0 {
                    return Some(s.run(next, word));
                }
            }
            Words::CaseAware => {
                if let Some(end) = self.case_aware_word(s, at, next, prefix) {
                    return Some(end);
                }
            }
        }
        // Numbers.
        match self.numbers {
            Numbers::SpacePrefixed => {
                if cls & NUMBER != 0 {
                    return Some(s.run(next, NUMBER));
                }
                if c == ' ' && s.class_at(next) & NUMBER != 0 {
                    return Some(s.run(next, NUMBER));
                }
            }
            Numbers::UpTo(n) => {
                if cls & NUMBER != 0 {
                    let mut end = next;
                    for _ in 1..n {
                        match s.char_at(end) {
                            Some(d) if class(t, d) & NUMBER != 0 => end += d.len_utf8(),
                            _ => break,
                        }
                    }
                    return Some(end);
                }
            }
        }
        // Punctuation and symbols: ` ?[^\s\p{L}\p{N}]+` then the tail chars.
        let punct_start = if other(cls) {
            Some(at)
        } else if c == ' ' && s.char_at(next).is_some_and(|d| other(class(t, d))) {
            Some(next)
        } else {
            None
        };
        if let Some(start) = punct_start {
            return Some(s.run_of(s.run_other(start, self.word), self.punct_tail));
        }
        // Whitespace.
        if cls & SPACE != 0 {
            return Some(self.spaces_at(s, at));
        }
        None
    }

    fn spaces_at(&self, s: &Scan, at: usize) -> usize {
        // A run of ASCII whitespace before an ASCII char that is not whitespace, the
        // common case, by bytes: the general rules below cost 134 instructions a call
        // (callgrind, English), a quarter of them finding the run's last char.
        let bytes = s.text.as_bytes();
        let mut end = at;
        let mut after_newline = None;
        while let Some(&b) = bytes.get(end).filter(|&&b| b < 0x80 && s.table[b as usize] & SPACE != 0) {
            end += 1;
            if b == b'\r' || b == b'\n' {
                after_newline = Some(end);
            }
        }
        if end > at && bytes.get(end).is_some_and(|&b| b < 0x80) {
            // `\s+(?!\S)` takes all but the last char, there being more than one.
            let lookahead = (end - at > 1).then_some(end - 1);
            return match self.spaces {
                Spaces::Gpt2 => lookahead.unwrap_or(end),
                Spaces::Cl100k => after_newline.or(lookahead).unwrap_or(at + 1),
                Spaces::Llama3 => after_newline.or(lookahead).unwrap_or(end),
            };
        }
        self.spaces_in_general(s, at)
    }

    fn spaces_in_general(&self, s: &Scan, at: usize) -> usize {
        let end = s.run(at, SPACE);
        let run = &s.text[at..end];
        let last = run.chars().next_back().expect("a non-empty run");
        let several = run.len() > last.len_utf8();
        let at_end = end == s.text.len();
        let last_newline = || run.rfind(['\r', '\n']).map(|i| at + i + 1);
        // `\s+(?!\S)`: the whole run at the end of the text, else all but its last char.
        let lookahead = if at_end {
            Some(end)
        } else if several {
            Some(end - last.len_utf8())
        } else {
            None
        };
        let one = at + run.chars().next().expect("non-empty").len_utf8();
        match self.spaces {
            Spaces::Gpt2 => lookahead.unwrap_or(end),
            Spaces::Cl100k => {
                if at_end {
                    end
                } else {
                    last_newline().or(lookahead).unwrap_or(one)
                }
            }
            Spaces::Llama3 => last_newline().or(lookahead).unwrap_or(end),
        }
    }

    /// o200k words: `P?U*W+C?` then `P?U+W*C?`, where P is the optional prefix char,
    /// U the upper-case class, W the lower-case class (they share Lm, Lo and marks) and
    /// C an optional contraction.
    fn case_aware_word(&self, s: &Scan, at: usize, next: usize, prefix: bool) -> Option<usize> {
        let starts = if prefix { [Some(next), Some(at)] } else { [Some(at), None] };
        let lower_after_upper = |start: usize| -> Option<usize> {
            // U* is greedy and backtracks until W+ can match: W+ starts at the last
            // position p in [start, end of the U run] whose char is in W.
            let upper_end = s.run(start, UPPER);
            let from = if s.class_at(upper_end) & LOWER != 0 {
                Some(upper_end)
            } else {
                s.text[start..upper_end]
                    .char_indices()
                    .rev()
                    .find(|&(_, c)| class(s.table, c) & LOWER != 0)
                    .map(|(i, _)| start + i)
            }?;
            Some(s.run(from, LOWER))
        };
        let upper_then_lower = |start: usize| -> Option<usize> {
            let upper_end = s.run(start, UPPER);
            (upper_end > start).then(|| s.run(upper_end, LOWER))
        };
        let with_suffix = |end: usize| -> usize {
            match self.contractions {
                Contractions::None => end,
                mode => s.contraction(end, mode == Contractions::CaseInsensitive).unwrap_or(end),
            }
        };
        for alternative in [&lower_after_upper as &dyn Fn(usize) -> Option<usize>, &upper_then_lower] {
            for start in starts.into_iter().flatten() {
                if let Some(end) = alternative(start) {
                    return Some(with_suffix(end));
                }
            }
        }
        None
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is in `lo..=hi` (both ASCII), as SWAR arithmetic:
/// with the high bits cleared, adding `0x80 - lo` sets a byte's high bit when it is at least
/// `lo`, and no byte carries into the next.
#[inline(always)]
fn in_range(w: u64, lo: u8, hi: u8) -> u64 {
    let low7 = w & !HIGH;
    let at_least_lo = low7 + ONES * u64::from(0x80 - lo);
    let above_hi = low7 + ONES * u64::from(0x7f - hi);
    at_least_lo & !above_hi & !w & HIGH
}

#[inline(always)]
pub(super) fn letters(w: u64) -> u64 {
    // Setting bit 5 maps A-Z onto a-z and no other byte into a-z.
    in_range(w | ONES * 0x20, b'a', b'z')
}

#[inline(always)]
fn upper(w: u64) -> u64 {
    in_range(w, b'A', b'Z')
}

#[inline(always)]
fn lower(w: u64) -> u64 {
    in_range(w, b'a', b'z')
}

#[inline(always)]
fn digits(w: u64) -> u64 {
    in_range(w, b'0', b'9')
}

/// The end of the run from `at` of bytes that `class` marks (the high bit of each byte it
/// accepts in a word of 8), 8 bytes at a time.
#[inline(always)]
pub(super) fn ascii_run(bytes: &[u8], mut at: usize, class: fn(u64) -> u64) -> usize {
    while let Some(chunk) = bytes.get(at..at + 8) {
        let stop = !class(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))) & HIGH;
        if stop != 0 {
            return at + (stop.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while at < bytes.len() && class(u64::from(bytes[at])) & 0x80 != 0 {
        at += 1;
    }
    at
}

impl Scan<'_> {
    /// End of a run of chars outside `word` (\p{L}, or with \p{M}), \p{N} and \s.
    fn run_other(&self, mut at: usize, word: u8) -> usize {
        while let Some(c) = self.char_at(at) {
            if class(self.table, c) & (word | NUMBER | SPACE) != 0 {
                break;
            }
            at += c.len_utf8();
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::regex::Pattern;

    fn lexed(lexer: &Lexer, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        lexer.for_each_match(text, |s, e| out.push((s, e)));
        out
    }

    /// The pattern on fancy-regex, the backtracking engine that reads it as the reference
    /// does, and as our `Pattern` (the linear engine after its rewrites).
    fn engines(pattern: &str, dialect: Option<Dialect>) -> (fancy_regex::Regex, Pattern) {
        let dialect = dialect.unwrap_or(Dialect::Oniguruma);
        let source = if dialect == Dialect::Oniguruma { format!("(?m:{pattern})") } else { pattern.to_string() };
        (fancy_regex::Regex::new(&source).unwrap(), Pattern::new(pattern, dialect).unwrap())
    }

    /// The spans (matches and the gaps between them) of fancy-regex, checked equal to ours.
    fn regexed((fancy, ours): &(fancy_regex::Regex, Pattern), text: &str) -> Vec<(usize, usize)> {
        let spans = |matches: &mut dyn Iterator<Item = (usize, usize)>| {
            let (mut out, mut prev) = (Vec::new(), 0);
            for (s, e) in matches {
                if prev < s {
                    out.push((prev, s));
                }
                out.push((s, e));
                prev = e;
            }
            if prev < text.len() {
                out.push((prev, text.len()));
            }
            out
        };
        let want = spans(&mut fancy.find_iter(text).map(|m| m.unwrap()).map(|m| (m.start(), m.end())));
        let mut matches = Vec::new();
        ours.for_each_match(text, |s, e| matches.push((s, e))).unwrap();
        assert_eq!(spans(&mut matches.into_iter()), want, "Pattern and fancy-regex on {}\ntext {text:?}", ours.source());
        want
    }

    const SAMPLES: &[&str] = &[
        "Hello world's 123456 !! ok\n\n  x  \r\n\tfoo   ",
        "I'LL DO it, they're HERE'S 've 'd 'ſ 'Ll",
        "  \n  \n\n   end\n",
        "CamelCase HTTPServer iPhone ÉCOLE école ǅungla ʰmodifier\u{301}x a\u{301}\u{302}",
        "数字１２３ ٣٤٥ ⅷ 日本語テキスト 한국어 العربية",
        "path/to/file.rs://\n/*comment*/ <|endoftext|> x=1+2;\r\r\n",
        "emoji 👨‍👩‍👧‍👦 🏳️‍🌈 flags\u{a0}\u{a0}nbsp\u{3000}\u{3000}ideographic",
        "'", "'s", " '", "\u{301}", " \u{301}a", "a\u{301}'S", "ʰʰ", "Aʰb", "$$$ %%%\n\n/",
        "\n", " ", "  ", "\t\t", "x\u{85}\u{85}y", "12345678 1,234.5",
        // Ideographs read 3 bytes at a time (U+5000-U+9FFF) beside chars that are not.
        "中文分词测试，\u{5000}\u{9fff}\u{4dc0}\u{4dff}\u{a000}\u{4e00}䷀乾坤 ２０２６年",
    ];

    #[test]
    fn every_lexer_matches_its_regex() {
        let corpus: Vec<String> = SAMPLES
            .iter()
            .map(|s| s.to_string())
            .chain([SAMPLES.concat(), SAMPLES.join(" "), SAMPLES.join("\n")])
            .collect();
        for (pattern, dialect, lexer) in KNOWN {
            let engines = engines(pattern, *dialect);
            for text in &corpus {
                assert_eq!(lexed(lexer, text), regexed(&engines, text), "pattern {pattern}\ntext {text:?}");
            }
        }
    }

    /// The ideographs `Scan::run` reads without decoding are all letters (\p{Lo}), as the
    /// class table says char by char.
    #[test]
    fn ideographs_share_the_class_of_other_letters() {
        assert_eq!(ideograph_class(), LETTER | UPPER | LOWER);
        assert_eq!(class(class_table(), '中'), ideograph_class());
        assert_ne!(class(class_table(), '\u{4dc0}'), ideograph_class()); // a hexagram: \p{So}
    }

    /// `Splitter::Then` gives a piece of one byte as it is, without its lexer.
    #[test]
    fn every_lexer_matches_each_ascii_byte_alone() {
        for (pattern, _, lexer) in KNOWN {
            for byte in 0..128u8 {
                assert_eq!(lexed(lexer, &char::from(byte).to_string()), [(0, 1)], "pattern {pattern}, byte {byte}");
            }
        }
    }

    /// Random strings over the chars where the patterns' classes meet.
    #[test]
    fn every_lexer_matches_its_regex_on_random_text() {
        const ALPHABET: &[char] = &[
            'a', 'Z', 's', 'S', 't', 'l', 'L', 'e', 'v', 'r', 'R', 'm', 'd', 'ſ', '\'', '’', ' ', ' ', '\n',
            '\r', '\t', '\u{b}', '\u{85}', '\u{a0}', '\u{3000}', '1', '٣', 'ⅷ', '¼', '.', '/', '!', '_',
            '\u{301}', '\u{903}', 'क', '\u{94d}', 'ʰ', 'ǅ', 'É', 'é', '日', 'ー', '👨', '\u{200d}', '\u{fe0f}', '$',
            '\u{5000}', '\u{9fff}', '\u{4dc0}', '\u{a000}', '，',
        ];
        let mut next = crate::testing::random(0x2545_f491_4f6c_dd1d);
        // Mostly ASCII letters, in runs longer than the 8 bytes the fast path reads at once.
        const WORDY: &[char] = &[
            'a', 'b', 'x', 'y', 'z', 'A', 'B', 'Z', 's', 'S', 't', 'é', 'É', 'ʰ', '\u{301}', '\'', ' ', '\n', '1', '.',
            '@', '[', '`', '{', '2', '3', '٣', '_', '\t', '\r', '\u{a0}',
        ];
        let mut texts = Vec::new();
        // (alphabet, how many of its first chars half the draws come from, longest text)
        for (alphabet, favoured, max_len) in [(ALPHABET, ALPHABET.len(), 24), (WORDY, 8, 40)] {
            for _ in 0..20_000 {
                let len = (next() % max_len) as usize;
                let text = (0..len).map(|_| {
                    let r = next();
                    let from = if r & 1 == 0 { favoured } else { alphabet.len() };
                    alphabet[((r >> 1) % from as u64) as usize]
                });
                texts.push(text.collect::<String>());
            }
        }
        for (pattern, dialect, lexer) in KNOWN {
            let engines = engines(pattern, *dialect);
            for text in &texts {
                assert_eq!(lexed(lexer, text), regexed(&engines, text), "pattern {pattern}\ntext {text:?}");
            }
        }
    }

    fn assert_blocks_match(lexer: &Lexer, text: &str) {
        let mut by_blocks = Vec::new();
        lexer.matches_in(text, Some(blocks::Narrow), &mut |s, e| by_blocks.push((s, e)));
        let mut singly = Vec::new();
        lexer.matches_in(text, None::<blocks::Narrow>, &mut |s, e| singly.push((s, e)));
        assert_eq!(by_blocks, singly, "{lexer:?}\ntext {text:?}");
        #[cfg(target_arch = "x86_64")]
        if let Some(wide) = blocks::Wide::detect() {
            let mut by_wide_blocks = Vec::new();
            lexer.matches_in(text, Some(wide), &mut |s, e| by_wide_blocks.push((s, e)));
            assert_eq!(by_wide_blocks, singly, "AVX-512, {lexer:?}\ntext {text:?}");
        }
    }

    /// The blocks (`blocks.rs`) against the lexer's match-at-a-time path, on texts of up to
    /// six blocks: mostly ASCII of every class the blocks tell apart, in runs that cross the
    /// blocks' edges, contractions among them (after words too, o200k's), with the chars they
    /// leave to the other path (chars outside ASCII that are letters, digits or whitespace)
    /// now and then.
    #[test]
    fn blocks_match_like_one_match_at_a_time() {
        const COMMON: &[&str] = &["a", "Zq", "xyz", "AB", "Cd", " ", " ", "\n", "1", "2024", ".", ",", "\t", "\r\n", "\r", "  ", "    ", "!?", "_", "/", "\u{a0}", "'", "'s", "'ll", "it's", "Ab'S'd"];
        const RARE: &[&str] = &[
            "'", "'s", "'LL", "'Re", "'d", "'ſt", "''", "é", "\u{85}", "\u{a0}", "日本", "٣", "\x0b", "\x0c", "\n\n", "\n \n", "/", "\u{1F600}",
            "\0", "\x01", "\x1f", "\x7f", "#", "@", "[", "`", "{", "~", "\u{301}", "ʰ",
        ];
        // Text in the scripts whose letters of two bytes the blocks read (Latin-1, Latin
        // Extended, Cyrillic, in both cases and across their edges), with its neighbours
        // that they do not read (Greek, `×`, `µ`, `ª`, marks, `²`, `«`).
        const TWO_BYTES: &[&str] = &[
            "при", "вет", "Мир", "ЁЖ", "яё", "ѠѡѢѣ", "ѿ", "Ѐ", "ӀӁ", "é", "Ü", "ßÀÞ", "ÿ", "×", "÷", "ł", "Ĳ", "ǅ", "ƻ", "ʔ",
            "ʯ", "ʰ", "λόγος", "µ", "ª", "\u{301}", "²", "«", "»", " ", " ", ".", "-", "1", "a", "B", "\n", "'", "\u{a0}",
        ];
        let mut next = crate::testing::random(0x3c6e_f372_fe94_f82b);
        let blocked: Vec<Lexer> = KNOWN.iter().map(|(_, _, lexer)| lexer.clone()).collect();
        assert!(blocked.iter().all(Lexer::has_blocks));
        for round in 0..80_000 {
            let rare_share = [0, 4, 20, 60, 0][round % 5];
            let common = if round % 5 == 4 { TWO_BYTES } else { COMMON };
            let mut text = String::new();
            let len = (next() % 384) as usize;
            while text.len() < len {
                let r = next();
                let from = if (r % 100) < rare_share { RARE } else { common };
                text.push_str(from[((r >> 8) % from.len() as u64) as usize]);
            }
            for lexer in &blocked {
                assert_blocks_match(lexer, &text);
            }
        }
    }

    /// Every text of up to three chars where a block ends: after 60 to 64 bytes of one
    /// kind, so that the last run of the block goes on past it, or the text ends there.
    #[test]
    fn blocks_match_like_one_match_at_a_time_at_their_edge() {
        const CHARS: &[&str] = &["a", "B", "1", " ", "\t", "\n", "\r", ".", "'", "é", "Ж", "ж", "×", "\u{a0}", "s", "L"];
        let mut tails = vec![String::new()];
        for len in 1..=3 {
            let mut more = vec![String::new()];
            for _ in 0..len {
                more = more.iter().flat_map(|t| CHARS.iter().map(move |c| format!("{t}{c}"))).collect();
            }
            tails.extend(more);
        }
        let mut lexers: Vec<&Lexer> = KNOWN.iter().map(|(_, _, lexer)| lexer).collect();
        lexers.dedup();
        for lexer in lexers {
            for filler in ["a", " ", "1", "Ab. 12\n", "Жж", "ж ", "aé", "\u{a0}", "a\u{a0}"] {
                for len in 60..=64 {
                    let head: String = filler.chars().cycle().take(len).collect();
                    for tail in &tails {
                        for end in ["", " a"] {
                            assert_blocks_match(lexer, &format!("{head}{tail}{end}"));
                        }
                    }
                }
            }
        }
    }

    /// Runs of digits of every length up to three blocks, from every offset of a block,
    /// between the chars that may end them.
    #[test]
    fn blocks_match_like_one_match_at_a_time_over_long_digit_runs() {
        let mut lexers: Vec<&Lexer> = KNOWN.iter().map(|(_, _, lexer)| lexer).collect();
        lexers.dedup();
        for lexer in lexers {
            for offset in 0..=64 {
                let head: String = "ab. 1\n".chars().cycle().take(offset).collect();
                for len in 1..=192 {
                    let digits: String = "1234567890".chars().cycle().take(len).collect();
                    for end in ["", "a", " ", "\n", ".", "٣", "'s"] {
                        assert_blocks_match(lexer, &format!("{head}{digits}{end} x"));
                        assert_blocks_match(lexer, &format!("{head}{digits}{end}"));
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_patterns_get_no_lexer() {
        assert!(Lexer::for_pattern(r"\w+", Dialect::Oniguruma).is_none());
        // `$` means end of line to Oniguruma: not the tiktoken lexer.
        let cl100k = KNOWN[2].0;
        assert!(Lexer::for_pattern(cl100k, Dialect::Oniguruma).is_none());
        assert!(Lexer::for_pattern(cl100k, Dialect::Tiktoken).is_some());
    }
}
