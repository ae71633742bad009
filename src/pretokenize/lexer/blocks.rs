//! The lexers' matches over ASCII text, and Latin and Cyrillic letters, 64 bytes at a time.
//!
//! Why: the per-match lexer (`Lexer::ascii_match`) costs about 90 instructions a match on
//! English, a third of a warm encode, in branches that depend on the text (which alternative,
//! how long a run), and ran at 650 MB/s alone (Llama 3, the Debian handbook, one core). Here a
//! block is classified at once into bitmaps (letters, digits, whitespace, newlines, spaces),
//! and where each match starts is bit arithmetic over them, the patterns' alternatives worked
//! out by hand below; the matches are then read off the set bits. As fastokens does. The
//! lexer alone: 650 -> 1,320 MB/s; a warm encode 47.6 M -> 37.2 M instructions (callgrind).
//!
//! What a block cannot know stays with the per-match lexer: chars outside ASCII (one may be
//! a letter, a digit or whitespace) but the letters of two bytes it reads (`classify`; with
//! them, Russian per-document encodes took 20-25% fewer instructions) and the no-break space
//! (U+00A0, 9,180 of them in 2 MB of the English corpora; with it, see
//! `Classes::space_seconds`, a warm encode of that took 52.1 M -> 50.3 M instructions, 198 k -> 121 k mispredicted
//! branches, and ran at 508 -> 526 MB/s, Llama 3) end the part of the block that is read.
//! Contractions are worked in at the apostrophes (`with_contractions`): where a match starts
//! (the first alternative of most patterns), or after a letter (o200k's, which end words).
//! And the run of one kind (letters, digits, whitespace, other)
//! that reaches the block's end may go on past it. So a block hands back only the matches
//! that end at or before the start of its last run (or, for a run of digits split every
//! `n`, before its last start), and the next block starts where the last of them ends.
//!
//! The cl100k family (cl100k, Llama 3, Qwen2, Qwen3.5; o200k and Tekken differ only in
//! words), for ASCII, contractions aside, in order (Llama 3's spelling):
//! `[^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+`
//! - a letter run starts a match, unless the char before it is taken as its prefix: that char
//!   (not a letter, digit, `\r` or `\n`) starts a match of its own otherwise, which holds for
//!   whitespace (it is the last char of its run, see below) and for punctuation that starts
//!   its run (a one-char run, as a letter follows) and has no space before it;
//! - o200k's words are `U*W+|U+W*` (upper-, then lower-case): over ASCII letters a new match
//!   starts at each upper-case letter after a lower-case one;
//! - a digit run starts a match every `n` digits;
//! - a punctuation run (chars that are no letter, digit or whitespace) starts a match, unless
//!   a space before it is taken with it; the `\r` and `\n` right after it join its match
//!   (in o200k `\r`, `\n` and `/`: after a newline, a `/` joins, and what follows starts);
//! - a whitespace run (the part not joined to punctuation before it) matches up to its last
//!   newline, then the rest but its last char, then its last char; at the end of the text
//!   the rest is one match (cl100k's `\s++$` takes all of it: left to the per-match lexer).
//!
//! GPT-2's ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`: a run of letters, of digits
//! or of punctuation is a match, with the space before it if there is one; whitespace matches
//! but its last char, then its last char (the whole run at the end of the text).
use super::{Contractions, Lexer, Matches, Numbers, Scan, Spaces, Words};

/// Bitmaps of a block: bit `i` is the block's byte `i`.
#[derive(Default)]
pub(super) struct Classes {
    letter: u64,
    upper: u64,
    digit: u64,
    /// `\t \n \x0b \x0c \r` and space: ASCII's `\s`.
    space: u64,
    newline: u64,
    blank: u64,
    slash: u64,
    /// Bytes from 0x80.
    unknown: u64,
    apostrophe: u64,
    /// The second bytes of the whitespace chars of two bytes (U+00A0, the no-break space):
    /// no char starts there.
    space_seconds: u64,
}

pub(super) const BLOCK: usize = 64;

/// What `block` did: the end of the last match it reported (`None`: none), and where the
/// first byte it could not read is (the caller matches up to it one match at a time).
pub(super) struct Block {
    pub(super) end: Option<usize>,
    pub(super) unknown: Option<usize>,
}

impl Lexer {
    /// Whether `block` can match for this lexer: the families whose ASCII matches the rules
    /// above describe.
    #[inline(always)]
    pub(super) fn has_blocks(&self) -> bool {
        match self.words {
            Words::AnyPrefix | Words::CaseAware => {
                matches!(self.numbers, Numbers::UpTo(1 | 3))
                    && matches!(self.punct_tail, ['\r', '\n'] | ['\r', '\n', '/'])
                    && matches!(self.spaces, Spaces::Llama3 | Spaces::Cl100k)
            }
            Words::SpacePrefixed => {
                self.numbers == Numbers::SpacePrefixed && self.punct_tail.is_empty() && self.spaces == Spaces::Gpt2
            }
        }
    }

    /// Whether a block reads a char that starts with `lead` (a byte from 0x80) as a letter
    /// or as whitespace (some of them: C3 is also the lead of `×`, and of C2's chars only
    /// U+00A0 is read).
    #[inline(always)]
    pub(super) fn block_reads(&self, lead: u8) -> bool {
        matches!(lead, 0xC2 | 0xC3 | 0xD0 | 0xD1) || (self.words != Words::CaseAware && MORE_LEADS.contains(&lead))
    }

    /// Hands `f` the matches of `text` from `at` (where a match starts) that the block of 64
    /// bytes from `at` decides, all at once (`Matches::block`), its bytes classified by
    /// `classes`.
    #[inline(always)]
    pub(super) fn block(&self, s: &Scan, at: usize, f: &mut impl Matches, classes: &impl Classify) -> Block {
        let rest = &s.text.as_bytes()[at..];
        let mut padded = [0u8; BLOCK];
        let bytes: &[u8; BLOCK] = match rest.first_chunk() {
            Some(bytes) => bytes,
            None => {
                padded[..rest.len()].copy_from_slice(rest);
                &padded
            }
        };
        let c = classes.classify(bytes, self.words == Words::CaseAware);
        let available = rest.len().min(BLOCK);
        let n = (c.unknown.trailing_zeros() as usize).min(available);
        let unknown = (n < available).then_some(at + n);
        // The block reaches the end of the text. cl100k's `\s++$` takes whitespace at the end
        // whole, newlines and all: there the text's last run is left to the per-match lexer.
        let last = n == rest.len() && self.spaces != Spaces::Cl100k;
        if n == 0 {
            return Block { end: None, unknown };
        }
        let valid = if n == BLOCK { !0 } else { (1u64 << n) - 1 };
        let (letter, digit, space) = (c.letter & valid, c.digit & valid, c.space & valid);
        let (newline, blank) = (c.newline & valid, c.blank & valid);
        let punct = valid & !(letter | digit | space);
        let first = |class: u64| class & !(class << 1);
        // Where the char of a byte starts: the byte itself, or the one before it in a
        // whitespace char of two bytes (`space_seconds`). The starts that are found from the
        // byte before another (a word's prefix char) or from a run's last byte (its last
        // char) are moved there; the others are the first byte of a run, or the byte after one.
        let char_start = |bytes: u64| (bytes & !c.space_seconds) | (bytes & c.space_seconds) >> 1;
        // The text's last char: `\s+(?!\S)` does not leave a whitespace run's last char there.
        let end_of_text = if last { 1u64 << (n - 1) } else { 0 };
        // Bit 0 is a start whatever comes before it, as at the start of a text: `at` starts
        // a match, so nothing before it reaches past it.
        let starts = if self.words == Words::SpacePrefixed {
            let prefix = blank & ((letter | digit | punct) >> 1);
            let runs = first(letter) | first(digit) | first(punct);
            let last_chars = char_start(space & !(space >> 1) & !end_of_text);
            1 | prefix | (runs & !(prefix << 1)) | first(space) | last_chars
        } else {
            let spaces = space & !newline;
            // The chars after a punctuation run that join its match: `[\r\n]*` (`[\r\n/]*`
            // in o200k), from the first newline after punctuation on. Adding that newline's
            // bit clears the rest of its run of such chars (the carry runs through it); a later
            // newline in the run after a `/` adds only its own bit, taken back out.
            let joins = if self.punct_tail.contains(&'/') { newline | (c.slash & valid) } else { newline };
            let seeds = newline & (punct << 1);
            let joined = joins & !(joins.wrapping_add(seeds) & !seeds);
            // Punctuation starts a match at the start of its run, or after a joined `/`.
            let punct_starts = (first(punct) | (joined << 1)) & punct & !joined & !(blank << 1);

            // Words: the prefix char before a letter run, or the run's first letter.
            let before_letters = (letter >> 1) & (spaces | punct_starts);
            let mut words = (first(letter) & !(before_letters << 1)) | char_start(before_letters);
            if self.words == Words::CaseAware {
                words |= c.upper & valid & ((letter & !c.upper) << 1);
            }

            let mut numbers = first(digit);
            match self.numbers {
                Numbers::UpTo(1) => numbers = digit,
                Numbers::UpTo(most) => {
                    // The third digit after a start in the same run starts the next match.
                    debug_assert_eq!(most, 3);
                    let mut starts = numbers;
                    loop {
                        starts = (starts << 3) & digit & (digit << 1) & (digit << 2);
                        if starts == 0 {
                            break;
                        }
                        numbers |= starts;
                    }
                }
                Numbers::SpacePrefixed => unreachable!("GPT-2's numbers go with its words"),
            }

            // Whitespace, less the newlines joined to punctuation before it.
            let runs = (first(space) & !joined) | ((joined << 1) & !joined & space);
            // After a run's last newline: the chars after a newline that are not newlines,
            // when their run reaches the end of the whitespace (a newline after them is a
            // later one).
            let mut after_newline = spaces & (newline << 1);
            let reached = spaces.wrapping_add(after_newline) & !spaces;
            let mut later = reached & newline;
            while later != 0 {
                // The rare whitespace with newlines apart (`\n \n`): the run after the first
                // one is not the last. Its start is the highest `after_newline` below the
                // newline.
                let below = after_newline & ((1u64 << later.trailing_zeros()) - 1);
                after_newline &= !(1u64 << (63 - below.leading_zeros()));
                later &= later - 1;
            }
            let last_chars = char_start(spaces & !(space >> 1) & !end_of_text);
            1 | words | numbers | punct_starts | runs | after_newline | last_chars
        };
        let starts = match self.contractions {
            Contractions::None => starts,
            // o200k's contractions end words (`P?U*W+C?`): an apostrophe after a letter.
            _ if self.words == Words::CaseAware => {
                self.with_contractions(s, at, starts, c.apostrophe & valid & (letter << 1), true)
            }
            // The others' are the first alternative: an apostrophe that starts a match.
            _ => self.with_contractions(s, at, starts, starts & c.apostrophe & valid, false),
        };

        // The matches from `at` up to `end`, cut at `cuts`. Away from the end of the text, the
        // last run (from `tail` on) may go on past the block: the matches reported end at or
        // before it.
        let (cuts, end) = if last {
            (starts & valid & !1, n)
        } else {
            let changes = ((letter ^ (letter << 1)) | (digit ^ (digit << 1)) | (space ^ (space << 1))) & valid & !1;
            let tail = if changes == 0 { 0 } else { 63 - changes.leading_zeros() };
            // Except a run of digits split every `n` (not GPT-2's): where its matches start
            // depends only on where it starts. Without this, 10 MB of digits (one match per
            // 1-3 digits) classified a block per match: 3.6-7.9x the time of English.
            let digits_go_on = self.numbers != Numbers::SpacePrefixed && digit >> tail & 1 == 1;
            let decided = if digits_go_on { starts & valid } else { starts & (2u64 << tail).wrapping_sub(1) };
            let end = 63 - decided.leading_zeros() as usize;
            (decided & !1 & !(1 << end), end)
        };
        if end == 0 {
            return Block { end: None, unknown };
        }
        f.block(at, cuts, end);
        Block { end: Some(at + end), unknown }
    }

    /// `starts` (of the block at `at`) with the contractions (`'s`, `'LL`, ...) at the
    /// apostrophes `quotes`: a match ends after the contraction, where a new one starts, and
    /// none starts inside it (GPT-2's letter run after the apostrophe). The letters after it
    /// are a word of their own: `'dog` is `'d`, `og`. A contraction is the pattern's first
    /// alternative, a match of its own, or (`suffix`, o200k) the end of the word before it,
    /// where no match starts at the apostrophe either.
    ///
    /// In Python code, with an apostrophe every 61 bytes, blocks ended at each before: a warm
    /// encode of 2 MB of it (Llama 3, callgrind) took 72.1 M -> 56.6 M instructions with this,
    /// 260 k -> 120 k mispredicted branches, and ran at 438 -> 543 MB/s (best of 20, six runs
    /// in turn, medians); English, with few apostrophes, the same. o200k's blocks ended at each
    /// apostrophe until 2026-12-07: a warm encode of 1 MB of the same code took 31.1 M -> 24.3 M
    /// instructions (callgrind), and o200k's code cell of the race (whole text, from Python)
    /// ran at 285 -> 332 MB/s, 1.28x -> 1.59x fastokens.
    #[inline(always)]
    fn with_contractions(&self, s: &Scan, at: usize, mut starts: u64, mut quotes: u64, suffix: bool) -> u64 {
        // Where the last contraction ended: a word that ends in one takes no second (`it's's`
        // is `it's`, `'s`).
        let mut after = 0;
        while quotes != 0 {
            let i = quotes.trailing_zeros() as usize;
            quotes &= quotes - 1;
            if suffix && i == after {
                continue;
            }
            if let Some(end) = s.contraction(at + i, self.contractions == Contractions::CaseInsensitive) {
                // Bits from `i` (or the one after it), wide enough for a contraction's end past
                // the block (it ends within 4 bytes of its apostrophe: `'ſ` is one, case-folded).
                after = end - at;
                let from = if suffix { i } else { i + 1 };
                let inside = ((1u128 << (after - from)) - 1) << from;
                starts = (starts & !(inside as u64)) | (1u128 << after) as u64;
            }
        }
        starts
    }
}

/// The chars of two bytes that blocks read as letters, by lead byte: every char of
/// U+00C0-U+00FF (lead C3) but `×` and `÷`, and U+0400-U+047F (leads D0, D1: the Cyrillic of
/// Russian, Ukrainian, Bulgarian, Serbian). Both have one case per letter, upper- or lower-case,
/// which o200k's words need. The other lexers also take U+0100-U+02BF (leads C4-CA: the
/// Latin of Polish, Czech, Turkish, Romanian, the IPA and modifier letters), all letters but some
/// of neither case only (`ƻ`, `ǅ`, `ʔ`, `ʰ`). Other chars from 0x80 end what a block reads. The
/// tests check every char of two bytes against the patterns' classes.
const MORE_LEADS: std::ops::RangeInclusive<u8> = 0xC4..=0xCA;

/// How a block's bytes are classified: the code of a lexer is compiled once for each way
/// (`Lexer::for_each_match_inlined`).
pub(super) trait Classify {
    fn classify(&self, bytes: &[u8; BLOCK], cased: bool) -> Classes;
}

/// `classify`: SSE2 on x86-64, a byte at a time elsewhere.
pub(super) struct Narrow;

impl Classify for Narrow {
    #[inline(always)]
    fn classify(&self, bytes: &[u8; BLOCK], cased: bool) -> Classes {
        classify(bytes, cased)
    }
}

/// `classify_wide`, on a CPU with AVX-512BW: the block in one register, each class one or two
/// compares straight into a bitmap, where SSE2 takes four loads, and a `movemask`, a shift
/// and an `or` per class and 16 bytes. A warm encode of 2 MB (best of 20, six runs in turn,
/// medians; callgrind cannot count it, valgrind has no AVX-512): Llama 3 English 544 -> 581
/// MB/s, code 544 -> 586, Chinese 276 -> 282; o200k English 491 -> 523; GPT-2 472 -> 480.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Wide(());

#[cfg(target_arch = "x86_64")]
impl Wide {
    /// `Wide`, where this CPU has what it needs.
    #[inline(always)]
    pub(super) fn detect() -> Option<Wide> {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")).then_some(Wide(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Classify for Wide {
    #[inline(always)]
    fn classify(&self, bytes: &[u8; BLOCK], cased: bool) -> Classes {
        // SAFETY: a `Wide` is made only where the CPU has AVX-512F and AVX-512BW (`detect`).
        unsafe { classify_wide(bytes, cased) }
    }
}

/// `classify` with AVX-512BW.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn classify_wide(bytes: &[u8; BLOCK], cased: bool) -> Classes {
    use std::arch::x86_64::*;
    let v = _mm512_loadu_si512(bytes.as_ptr().cast());
    let splat = |b: u8| _mm512_set1_epi8(b as i8);
    let is = |b: u8| _mm512_cmpeq_epi8_mask(v, splat(b));
    // `lo..=hi`, unsigned: `v - lo` wraps past `hi - lo` below `lo`.
    let between_in = |v: __m512i, lo: u8, hi: u8| _mm512_cmple_epu8_mask(_mm512_sub_epi8(v, splat(lo)), splat(hi - lo));
    let between = |lo: u8, hi: u8| between_in(v, lo, hi);
    let blank = is(b' ');
    let high = _mm512_movepi8_mask(v);
    let mut c = Classes {
        letter: between_in(_mm512_or_si512(v, splat(0x20)), b'a', b'z'),
        upper: between(b'A', b'Z'),
        digit: between(b'0', b'9'),
        space: blank | between(b'\t', b'\r'),
        newline: is(b'\n') | is(b'\r'),
        blank,
        slash: is(b'/'),
        unknown: high,
        apostrophe: is(b'\''),
        space_seconds: 0,
    };
    if high == 0 {
        return c;
    }
    let two = TwoBytes {
        c2: is(0xC2),
        c3: is(0xC3),
        d0: is(0xD0),
        d1: is(0xD1),
        more: between(*MORE_LEADS.start(), *MORE_LEADS.end()),
        not_letter: is(0x97) | is(0xB7),
        a0: is(0xA0),
        below_9f: between(0x80, 0x9E),
        below_a0: between(0x80, 0x9F),
        below_b0: between(0x80, 0xAF),
        odd: _mm512_test_epi8_mask(v, splat(1)),
    };
    two.add_to(&mut c, cased);
    c
}

/// The block's bitmaps, 16 bytes at a time with SSE2 (part of every x86-64 CPU).
/// `cased`: only the letters of leads C3, D0 and D1, each with its case.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify(bytes: &[u8; BLOCK], cased: bool) -> Classes {
    use std::arch::x86_64::*;
    let mut c = Classes::default();
    let mut high = 0u64;
    // SAFETY: SSE2 is in the x86-64 baseline, and each load reads 16 of the block's 64 bytes.
    unsafe {
        let splat = |b: u8| _mm_set1_epi8(b as i8);
        // Signed compares: bytes from 0x80 are negative, below every ASCII range, and ranges
        // of bytes from 0x80 compare among themselves.
        let between = |v: __m128i, lo: u8, hi: u8| {
            _mm_and_si128(_mm_cmpgt_epi8(v, splat(lo.wrapping_sub(1))), _mm_cmplt_epi8(v, splat(hi.wrapping_add(1))))
        };
        let load = |k: usize| _mm_loadu_si128(bytes.as_ptr().add(16 * k).cast());
        for k in 0..BLOCK / 16 {
            let v = load(k);
            let bits = |m: __m128i| u64::from(_mm_movemask_epi8(m) as u16) << (16 * k);
            let blank = _mm_cmpeq_epi8(v, splat(b' '));
            let newline = _mm_or_si128(_mm_cmpeq_epi8(v, splat(b'\n')), _mm_cmpeq_epi8(v, splat(b'\r')));
            c.letter |= bits(between(_mm_or_si128(v, splat(0x20)), b'a', b'z'));
            c.upper |= bits(between(v, b'A', b'Z'));
            c.digit |= bits(between(v, b'0', b'9'));
            c.space |= bits(_mm_or_si128(blank, between(v, b'\t', b'\r')));
            c.newline |= bits(newline);
            c.blank |= bits(blank);
            c.slash |= bits(_mm_cmpeq_epi8(v, splat(b'/')));
            c.apostrophe |= bits(_mm_cmpeq_epi8(v, splat(b'\'')));
            high |= bits(v);
        }
        c.unknown |= high;
        if high == 0 {
            return c;
        }
        // The bytes from 0x80: lead bytes and the second bytes after them, as bitmaps.
        let mut two = TwoBytes::default();
        for k in 0..BLOCK / 16 {
            let v = load(k);
            let bits = |m: __m128i| u64::from(_mm_movemask_epi8(m) as u16) << (16 * k);
            let is = |b: u8| bits(_mm_cmpeq_epi8(v, splat(b)));
            // A second byte (0x80-0xBF) below `b`.
            let below = |b: u8| bits(_mm_cmplt_epi8(v, splat(b)));
            two.c2 |= is(0xC2);
            two.c3 |= is(0xC3);
            two.d0 |= is(0xD0);
            two.d1 |= is(0xD1);
            two.more |= bits(between(v, *MORE_LEADS.start(), *MORE_LEADS.end()));
            two.not_letter |= is(0x97) | is(0xB7);
            two.a0 |= is(0xA0);
            two.below_9f |= below(0x9F);
            two.below_a0 |= below(0xA0);
            two.below_b0 |= below(0xB0);
            two.odd |= bits(_mm_cmpeq_epi8(_mm_and_si128(v, splat(1)), splat(1)));
        }
        two.add_to(&mut c, cased);
    }
    c
}

/// Bitmaps of a block's bytes from 0x80, for `TwoBytes::add_to`: which lead bytes, and what
/// the byte is when it is the second byte of a char (0x80-0xBF).
#[derive(Default)]
struct TwoBytes {
    c2: u64,
    c3: u64,
    d0: u64,
    d1: u64,
    /// Leads C4-CA.
    more: u64,
    /// 0x97, 0xB7: after C3, `×` and `÷`.
    not_letter: u64,
    /// After C2, the no-break space.
    a0: u64,
    below_9f: u64,
    below_a0: u64,
    below_b0: u64,
    odd: u64,
}

impl TwoBytes {
    /// Marks the letters of two bytes in `c`: both bytes letters (upper-case for an upper-case
    /// letter), and no longer unknown; and the no-break space: both bytes whitespace, the
    /// second in `space_seconds`. The text is UTF-8 and a block starts at a char, so a
    /// lead byte's next bit is its second byte; a lead at the block's last byte has its
    /// second byte in the next block and stays unknown.
    #[inline(always)]
    fn add_to(&self, c: &mut Classes, cased: bool) {
        let second = |bits: u64| bits >> 1;
        let c3 = self.c3 & !second(self.not_letter);
        let mut leads = c3 | self.d0 | self.d1;
        if !cased {
            leads |= self.more;
        }
        leads &= !(1 << (BLOCK - 1));
        let letters = leads | leads << 1;
        c.letter |= letters;
        c.unknown &= !letters;
        let nbsp = self.c2 & second(self.a0) & !(1 << (BLOCK - 1));
        c.space |= nbsp | nbsp << 1;
        c.unknown &= !(nbsp | nbsp << 1);
        c.space_seconds = nbsp << 1;
        if cased {
            // U+00C0-U+00DE, U+0400-U+042F, and U+0460-U+047F's even chars.
            let upper = (c3 & second(self.below_9f))
                | (self.d0 & second(self.below_b0))
                | (self.d1 & !second(self.below_a0) & !second(self.odd));
            let upper = upper & leads;
            c.upper |= upper | upper << 1;
        }
    }
}

/// The block's bitmaps, a byte at a time.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify(bytes: &[u8; BLOCK], cased: bool) -> Classes {
    classify_bytes(bytes, cased)
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn classify_bytes(bytes: &[u8; BLOCK], cased: bool) -> Classes {
    let mut c = Classes::default();
    let mut two = TwoBytes::default();
    for (i, &b) in bytes.iter().enumerate() {
        let bit = 1u64 << i;
        let set = |mask: &mut u64, yes: bool| *mask |= if yes { bit } else { 0 };
        set(&mut c.letter, b.is_ascii_alphabetic());
        set(&mut c.upper, b.is_ascii_uppercase());
        set(&mut c.digit, b.is_ascii_digit());
        set(&mut c.space, matches!(b, b'\t'..=b'\r' | b' '));
        set(&mut c.newline, matches!(b, b'\n' | b'\r'));
        set(&mut c.blank, b == b' ');
        set(&mut c.slash, b == b'/');
        set(&mut c.unknown, b >= 0x80);
        set(&mut c.apostrophe, b == b'\'');
        set(&mut two.c2, b == 0xC2);
        set(&mut two.c3, b == 0xC3);
        set(&mut two.d0, b == 0xD0);
        set(&mut two.d1, b == 0xD1);
        set(&mut two.more, MORE_LEADS.contains(&b));
        set(&mut two.not_letter, b == 0x97 || b == 0xB7);
        set(&mut two.a0, b == 0xA0);
        set(&mut two.below_9f, (0x80..0x9F).contains(&b));
        set(&mut two.below_a0, (0x80..0xA0).contains(&b));
        set(&mut two.below_b0, (0x80..0xB0).contains(&b));
        set(&mut two.odd, b & 1 == 1);
    }
    two.add_to(&mut c, cased);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_classifiers_agree() {
        let mut next = crate::testing::random(0x9e37_79b9_7f4a_7c15);
        // The bytes the chars of two bytes are told apart by, and their neighbours.
        const EDGES: &[u8] = &[0x80, 0x96, 0x97, 0x98, 0x9E, 0x9F, 0xA0, 0xAF, 0xB0, 0xB6, 0xB7, 0xBF, 0xC2, 0xC3, 0xC4, 0xCA, 0xCB, 0xCF, 0xD0, 0xD1, 0xD2];
        for round in 0..8192 {
            let mut bytes = [0u8; BLOCK];
            for (i, b) in bytes.iter_mut().enumerate() {
                // Every byte value at every position, then random blocks, then blocks of the
                // bytes above.
                let r = next();
                *b = match round {
                    0..256 => (round + i) as u8,
                    256..4096 => r as u8,
                    _ => EDGES[(r % EDGES.len() as u64) as usize],
                };
            }
            for cased in [false, true] {
                let (a, b) = (classify(&bytes, cased), classify_bytes(&bytes, cased));
                let fields = |c: &Classes| {
                    [
                        c.letter,
                        c.upper,
                        c.digit,
                        c.space,
                        c.newline,
                        c.blank,
                        c.slash,
                        c.unknown,
                        c.apostrophe,
                        c.space_seconds,
                    ]
                };
                assert_eq!(fields(&a), fields(&b), "{bytes:?}");
                #[cfg(target_arch = "x86_64")]
                if let Some(wide) = Wide::detect() {
                    assert_eq!(fields(&wide.classify(&bytes, cased)), fields(&b), "AVX-512: {bytes:?}");
                }
            }
        }
    }

    /// ASCII as the per-match lexer's class table (the regex's Unicode classes) sees it.
    #[test]
    fn classes_are_the_patterns_classes() {
        use super::super::{class_table, LETTER, NUMBER, SPACE};
        let bytes: [u8; BLOCK] = std::array::from_fn(|i| i as u8);
        let high: [u8; BLOCK] = std::array::from_fn(|i| 64 + i as u8);
        for (block, first) in [(bytes, 0), (high, 64)] {
            for cased in [false, true] {
                let c = classify_bytes(&block, cased);
                for i in 0..BLOCK {
                    let flags = class_table()[first + i];
                    let has = |mask: u64| mask >> i & 1 == 1;
                    assert_eq!(has(c.letter), flags & LETTER != 0, "byte {}", first + i);
                    assert_eq!(has(c.digit), flags & NUMBER != 0, "byte {}", first + i);
                    assert_eq!(has(c.space), flags & SPACE != 0, "byte {}", first + i);
                }
            }
        }
    }

    /// Every char of two bytes, at every position of a block: what the blocks read as a
    /// letter is one to the patterns, of one case where o200k's words need one, what they
    /// read as whitespace is that, and the letters of Latin-1, Latin Extended and Cyrillic
    /// and the no-break space are read.
    #[test]
    fn chars_of_two_bytes_read_are_the_patterns_letters_and_whitespace() {
        use super::super::{class_table, LETTER, LOWER, NUMBER, SPACE, UPPER};
        for cased in [false, true] {
            let lexer = if cased { super::super::O200K } else { super::super::LLAMA3 };
            let mut read = 0;
            for cp in 0x80u32..0x800 {
                let ch = char::from_u32(cp).expect("no surrogates below 0x800");
                let mut utf8 = [0u8; 2];
                ch.encode_utf8(&mut utf8);
                let flags = class_table()[cp as usize];
                for at in 0..BLOCK - 1 {
                    let mut block = [b' '; BLOCK];
                    block[at..at + 2].copy_from_slice(&utf8);
                    let c = classify_bytes(&block, cased);
                    let both = 3u64 << at;
                    let (letter, space) = (c.letter & both, c.space & both);
                    assert!(letter == 0 || letter == both, "{ch:?} at {at}");
                    assert!(space == 0 || (space == both && letter == 0), "{ch:?} at {at}");
                    assert_eq!(c.unknown & both, both & !letter & !space, "{ch:?} at {at}");
                    assert_eq!(c.space_seconds, space & !(1 << at), "{ch:?} at {at}: only a space's second byte");
                    if letter | space == 0 {
                        continue;
                    }
                    assert!(lexer.block_reads(utf8[0]), "{ch:?}");
                    read += 1;
                    if space != 0 {
                        assert!(flags & SPACE != 0 && flags & (LETTER | NUMBER) == 0, "{ch:?} is no whitespace");
                        continue;
                    }
                    assert!(flags & LETTER != 0, "{ch:?} is no letter");
                    if cased {
                        let upper = c.upper & both;
                        assert!(upper == 0 || upper == both, "{ch:?} at {at}");
                        let case = if upper == both { UPPER } else { LOWER };
                        assert_eq!(flags & (UPPER | LOWER), case, "{ch:?}");
                    }
                }
                // The last byte of the block is a lead with its second byte beyond it.
                let mut block = [b' '; BLOCK];
                block[BLOCK - 1] = utf8[0];
                assert_eq!(classify_bytes(&block, cased).unknown >> (BLOCK - 1), 1);
                let expected = match cp {
                    0xA0 => true,
                    0xD7 | 0xF7 => false,
                    0xC0..=0xFF | 0x400..=0x47F => true,
                    0x100..=0x2BF => !cased,
                    _ => false,
                };
                assert_eq!(read > 0, expected, "{ch:?}");
                read = 0;
            }
        }
    }
}
