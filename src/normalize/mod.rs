//! Normalizers from tokenizer.json, each written once as edits on a [`NormalizedText`]
//! (see `text.rs`): `NFC`, `NFD`, `NFKC`, `NFKD`, `Lowercase`, `Prepend`, `Replace`,
//! `Strip`, `StripAccents`, `Precompiled`, `BertNormalizer`, `Sequence`.

mod precompiled;
mod text;

pub use precompiled::Precompiled;
pub use text::{give_back, identity_alignment, spaces_marked, NormalizedText, Replacement};

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
// The same normalization crate (and so the same Unicode 9 tables) as the reference
// `tokenizers`: a newer table composes pairs the reference leaves apart.
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::char::{canonical_combining_class, is_combining_mark};
use unicode_normalization_alignments::{
    is_nfc_quick, is_nfd_quick, is_nfkc_quick, is_nfkd_quick, IsNormalized, UnicodeNormalization,
};

#[derive(Debug, Clone)]
pub enum Normalizer {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
    Prepend(String),
    Replace { pattern: Replacement, content: String },
    Strip { left: bool, right: bool },
    StripAccents,
    Precompiled(Arc<Precompiled>),
    Bert { clean_text: bool, handle_chinese_chars: bool, strip_accents: Option<bool>, lowercase: bool },
    Sequence(Vec<Normalizer>),
}

impl Normalizer {
    /// The normalized text (borrowed when nothing changes).
    pub fn normalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut n = NormalizedText::new(text, false);
        self.apply(&mut n);
        n.into_text()
    }

    /// The normalized text with each byte's input range, as the reference aligns it.
    pub fn normalize_aligned<'a>(&self, text: &'a str) -> NormalizedText<'a> {
        let mut n = NormalizedText::new(text, true);
        self.apply(&mut n);
        n
    }

    /// `Some(prepend)` where this normalizer only puts `▁` for every space, after putting one
    /// `▁` first with `prepend` (which, as `Prepend` does, leaves an empty text empty):
    /// Gemma's `Replace`, and the `Prepend` and `Replace` of Llama 2 and Mistral.
    pub fn spaces_as_marks(&self) -> Option<bool> {
        let marks = |n: &Normalizer| {
            matches!(n, Normalizer::Replace { pattern: Replacement::Literal(p), content } if p == " " && content == "\u{2581}")
        };
        match self {
            n if marks(n) => Some(false),
            Normalizer::Sequence(steps) => match steps.as_slice() {
                [one] => one.spaces_as_marks(),
                [Normalizer::Prepend(p), replace] if p == "\u{2581}" && marks(replace) => Some(true),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn apply(&self, n: &mut NormalizedText) {
        // The quick checks only skip work: a text they pass is left as it is by the
        // reference too (every char replaced by itself, alignment unchanged).
        match self {
            Normalizer::Nfc => unicode_form(n, &NFC, |t| t.nfc().collect()),
            Normalizer::Nfd => unicode_form(n, &NFD, |t| t.nfd().collect()),
            Normalizer::Nfkc => unicode_form(n, &NFKC, |t| t.nfkc().collect()),
            Normalizer::Nfkd => unicode_form(n, &NFKD, |t| t.nfkd().collect()),
            Normalizer::Lowercase => n.lowercase(),
            Normalizer::Prepend(s) => n.prepend(s),
            Normalizer::Replace { pattern, content } => n.replace(pattern, content),
            Normalizer::Strip { left, right } => n.strip(*left, *right),
            Normalizer::StripAccents => n.filter(|c| !is_combining_mark(c)),
            Normalizer::Precompiled(map) => {
                if let Some(edits) = map.edits(n.as_str()) {
                    n.transform(edits, 0);
                }
            }
            Normalizer::Bert { clean_text, handle_chinese_chars, strip_accents, lowercase } => {
                if *clean_text {
                    n.filter(|c| !(c == '\0' || c == '\u{fffd}' || bert_is_control(c)));
                    n.map(|c| if bert_is_whitespace(c) { ' ' } else { c });
                }
                if *handle_chinese_chars && n.as_str().chars().any(is_chinese_char) {
                    let dest: Vec<(char, isize)> = n
                        .as_str()
                        .chars()
                        .flat_map(|c| {
                            if is_chinese_char(c) {
                                vec![(' ', 0), (c, 1), (' ', 1)]
                            } else {
                                vec![(c, 0)]
                            }
                        })
                        .collect();
                    n.transform(dest, 0);
                }
                if strip_accents.unwrap_or(*lowercase) {
                    Normalizer::Nfd.apply(n);
                    n.filter(|c| !c.is_mark_nonspacing());
                }
                if *lowercase {
                    n.lowercase();
                }
            }
            Normalizer::Sequence(steps) => {
                let mut steps = &steps[..];
                while let [step, rest @ ..] = steps {
                    steps = rest;
                    if let (Normalizer::Prepend(prefix), [Normalizer::Replace { pattern, content }, after @ ..]) = (step, rest) {
                        if n.prepend_and_replace(prefix, pattern, content) {
                            steps = after;
                            continue;
                        }
                    }
                    step.apply(n);
                }
            }
        }
    }
}

/// A Unicode normalization form's quick check, and the chars below `ALONE_END` (the first
/// three planes) that pass it on their own: "yes" with combining class 0, one bit per char,
/// worked out from the same crate's tables 64 chars at a time as texts meet them (the 64 k
/// chars of the first plane at once took 15 M instructions, 5 ms, a tenth of a first pass
/// over the English handbook).
///
/// Why: a text of only such chars passes the quick check (nothing to compose with, nothing
/// to reorder), and the crate's check looks up each char's combining class and property in
/// hashed tables: 36% of a warm per-document encode of Chinese with Qwen2 (NFC, callgrind).
///
/// Why three planes, not one: a char past the table failed the check of the whole text,
/// which then went line by line through it again (and the crate's check for the line
/// with the char): the Chinese handbook has two CJK chars of the second plane (`𧢒`, `𪅈`),
/// and the check was 12% of a whole-text encode of it with Qwen2 (perf; 152-156 -> 187
/// MB/s with the three planes). Emoji are in the first plane.
struct UnicodeForm {
    quick: fn(&str) -> IsNormalized,
    alone: [AtomicU64; ALONE_END / 64],
    /// Which words of `alone` are worked out.
    known: [AtomicU64; ALONE_END / 64 / 64],
}

/// The chars below this are in `UnicodeForm`'s table; those past it are checked one by one.
const ALONE_END: usize = 0x3_0000;

impl UnicodeForm {
    const fn new(quick: fn(&str) -> IsNormalized) -> Self {
        UnicodeForm {
            quick,
            alone: [const { AtomicU64::new(0) }; ALONE_END / 64],
            known: [const { AtomicU64::new(0) }; ALONE_END / 64 / 64],
        }
    }

    fn passes_alone(&self, c: char) -> bool {
        canonical_combining_class(c) == 0 && (self.quick)(c.encode_utf8(&mut [0; 4])) == IsNormalized::Yes
    }

    /// The bits of `alone` for the chars from `64 * word`.
    #[inline]
    fn alone_word(&self, word: usize) -> u64 {
        let flag = 1u64 << (word % 64);
        if self.known[word / 64].load(Ordering::Acquire) & flag != 0 {
            return self.alone[word].load(Ordering::Relaxed);
        }
        let bits = (0..64)
            .filter(|i| char::from_u32((64 * word + i) as u32).is_some_and(|c| self.passes_alone(c)))
            .fold(0u64, |bits, i| bits | 1 << i);
        // Threads that meet the word together store the same bits.
        self.alone[word].store(bits, Ordering::Relaxed);
        self.known[word / 64].fetch_or(flag, Ordering::Release);
        bits
    }

    /// Whether every char of `text` passes the check on its own (then `text` passes it).
    /// ASCII passes, and is skipped 8 bytes at a time, the rest read char by char up to
    /// the next ASCII char: char by char throughout, this check was 7% of a whole-text
    /// encode of English with Qwen2 (NFC; perf, 2026-12-05).
    fn passes_char_by_char(&self, text: &str) -> bool {
        let mut rest = text;
        loop {
            let bytes = rest.as_bytes();
            let mut at = 0;
            while let Some(word) = bytes.get(at..at + 8) {
                let high = u64::from_le_bytes(word.try_into().expect("8 bytes")) & 0x8080_8080_8080_8080;
                if high != 0 {
                    at += (high.trailing_zeros() / 8) as usize;
                    break;
                }
                at += 8;
            }
            // A char boundary: the bytes before are ASCII.
            let mut chars = rest[at..].chars();
            loop {
                let Some(c) = chars.next() else { return true };
                let cp = c as usize;
                if cp < 0x80 {
                    break;
                }
                let alone = if cp < ALONE_END {
                    self.alone_word(cp / 64) >> (cp % 64) & 1 == 1
                } else {
                    self.passes_alone(c)
                };
                if !alone {
                    return false;
                }
            }
            rest = chars.as_str();
        }
    }

    fn passes(&self, text: &str) -> bool {
        self.passes_char_by_char(text) || (self.quick)(text) == IsNormalized::Yes
    }
}

static NFC: UnicodeForm = UnicodeForm::new(|t| is_nfc_quick(t.chars()));
static NFD: UnicodeForm = UnicodeForm::new(|t| is_nfd_quick(t.chars()));
static NFKC: UnicodeForm = UnicodeForm::new(|t| is_nfkc_quick(t.chars()));
static NFKD: UnicodeForm = UnicodeForm::new(|t| is_nfkd_quick(t.chars()));

/// A Unicode normalization form, applied line by line to the lines the quick check does
/// not pass. A line break is a safe place to cut for every form: a starter that composes
/// with nothing, decomposes to itself and stops reordering, so each line normalizes as it
/// does in place. Where the whole text went through the form as soon as one char failed
/// the check, Qwen2 (NFC) encoded the 2 MB Russian handbook in one call at 24 MB/s, slower
/// than one call per document (37 MB/s).
fn unicode_form(n: &mut NormalizedText, form: &UnicodeForm, normalize: fn(&str) -> Vec<(char, isize)>) {
    if form.passes_char_by_char(n.as_str()) {
        return;
    }
    n.transform_lines(|line| (!form.passes(line)).then(|| normalize(line)));
}

fn bert_is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn bert_is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts of chars that pass a form's check on their own pass it whole, and the form
    /// leaves them as they are; chars that do not pass alone are not taken for ones that do.
    #[test]
    fn texts_of_chars_that_pass_alone_are_in_the_form() {
        let mut next = crate::testing::random(0x5851_f42d_4c95_7f2d);
        let forms: [(&UnicodeForm, fn(&str) -> String); 4] = [
            (&NFC, |t| t.nfc().map(|(c, _)| c).collect()),
            (&NFD, |t| t.nfd().map(|(c, _)| c).collect()),
            (&NFKC, |t| t.nfkc().map(|(c, _)| c).collect()),
            (&NFKD, |t| t.nfkd().map(|(c, _)| c).collect()),
        ];
        for (form, normalize) in forms {
            // The table's chars, and some past it (plane 3's CJK, plane 14's tags and
            // variation selectors).
            let table = (0..ALONE_END as u32 + 0x400).chain(0xE_0000..0xE_0200).filter_map(char::from_u32);
            let (alone, not): (Vec<char>, Vec<char>) = table.partition(|&c| form.passes_alone(c));
            assert!(alone.len() > 100_000 && !not.is_empty(), "{} {}", alone.len(), not.len());
            assert!(not.iter().any(|&c| u32::from(c) >= 0x1_0000), "some chars past U+FFFF do not pass");
            for &c in &not {
                // After ASCII that is skipped a word at a time, or not.
                for ascii in [1, 7, 8, 9, 16, 17] {
                    assert!(!form.passes_char_by_char(&format!("{}{c}xyz", "a".repeat(ascii))), "{c:?} after {ascii}");
                }
            }
            for _ in 0..20_000 {
                let text: String = (0..1 + next() % 20)
                    .map(|_| if next() % 2 == 0 { 'a' } else { alone[(next() % alone.len() as u64) as usize] })
                    .collect();
                assert!(form.passes_char_by_char(&text));
                assert_eq!((form.quick)(&text), IsNormalized::Yes, "{text:?}");
                assert_eq!(normalize(&text), text);
            }
        }
    }

    #[test]
    fn nfc_composes_and_borrows_when_clean() {
        assert_eq!(Normalizer::Nfc.normalize("e\u{301}"), "\u{e9}");
        // Dives Akuru (Unicode 13) does not compose under the reference's tables.
        assert_eq!(Normalizer::Nfc.normalize("\u{11935}\u{11930}"), "\u{11935}\u{11930}");
        assert!(matches!(Normalizer::Nfc.normalize("plain"), Cow::Borrowed(_)));
        let seq = Normalizer::Sequence(vec![Normalizer::Nfkc, Normalizer::Lowercase]);
        assert_eq!(seq.normalize("Ｈello"), "hello");
    }

    #[test]
    fn unicode_forms_line_by_line_are_the_forms_of_the_whole_text() {
        use unicode_normalization_alignments::UnicodeNormalization;
        const ALPHABET: &[char] = &[
            'a', 'e', '\n', '\n', ' ', '\u{301}', '\u{308}', '\u{323}', '\u{e9}', 'Å', '\u{212b}', 'ﬁ', '①', '\u{1100}',
            '\u{1161}', '\u{11a8}', '가', '\u{0cc6}', '\u{0cc2}', '\u{0cd5}', 'й', 'и', '\u{306}', '\u{3099}', 'か',
        ];
        let forms: [(Normalizer, fn(&str) -> Vec<(char, isize)>); 4] = [
            (Normalizer::Nfc, |t| t.nfc().collect()),
            (Normalizer::Nfd, |t| t.nfd().collect()),
            (Normalizer::Nfkc, |t| t.nfkc().collect()),
            (Normalizer::Nfkd, |t| t.nfkd().collect()),
        ];
        let mut next = crate::testing::random(0x2545_f491_4f6c_dd1d);
        let mut changed = 0;
        for _ in 0..5_000 {
            let len = (next() % 20) as usize;
            let text: String = (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect();
            for (normalizer, form) in &forms {
                let mut whole = NormalizedText::new(&text, true);
                whole.transform(form(&text), 0);
                let ours = normalizer.normalize_aligned(&text);
                changed += usize::from(ours.is_changed());
                // An unchanged text leaves its identity alignment unbuilt.
                let full = |n: NormalizedText| {
                    let (text, align) = n.into_parts();
                    let align = align.unwrap_or_else(|| identity_alignment(&text));
                    (text.into_owned(), align)
                };
                assert_eq!(full(ours), full(whole), "{normalizer:?} on {text:?}");
            }
        }
        assert!(changed > 1000, "the texts need normalizing: {changed}");
    }

    #[test]
    fn llama_prepend_and_replace_align_to_the_input() {
        let n = Normalizer::Sequence(vec![
            Normalizer::Prepend("▁".into()),
            Normalizer::Replace { pattern: Replacement::Literal(" ".into()), content: "▁".into() },
        ]);
        let (text, align) = n.normalize_aligned("Hi yé").into_parts();
        let align = align.expect("changed, so aligned");
        assert_eq!(text, "▁Hi▁yé");
        assert_eq!(n.normalize("Hi yé"), text);
        // ▁ stands for "H", the second ▁ for the space, é for its two bytes.
        assert_eq!(align[0], (0, 1));
        assert_eq!(align[3], (0, 1));
        assert_eq!(align[5], (2, 3));
        assert_eq!(align[text.len() - 1], (4, 6));
    }
}
