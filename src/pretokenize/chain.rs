//! Chains of pre-tokenizer steps, fused into one pass over the text.
//!
//! DeepSeek's tokenizers pre-tokenize in several `Split` steps, each applied to every piece
//! the step before produced. On the general path every piece goes through the next step's
//! regex, a call of the `regex` crate per piece: DeepSeek Coder and V3 encoded English at
//! 16-20 MB/s where one-pattern tokenizers with a lexer run at 100. A chain here walks the
//! text once and gives the same pieces. [`fuse`] replaces only steps whose patterns it
//! knows, spelled as the tokenizer.json files spell them (and, generally, an `Isolated`
//! split followed by a split with a lexer); the tests check each against its own steps on
//! the general path.

use super::lexer::{self, ascii_run, class, letters, Lexer, Scan, LETTER, MARK, NUMBER, PUNCT, SPACE, SYMBOL};
use super::{Behavior, CharClass, Dialect, Splitter, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// DeepSeek V3, R1 and V4: digit groups `\p{N}{1,3}`, then runs of ideographs and kana,
    /// then a Llama 3-like pattern whose words may also start with ASCII punctuation.
    DeepSeekV3,
    /// DeepSeek Coder and DeepSeek LLM: `[\r\n]`, `\s?\p{L}+`, `\s?\p{P}+`, runs of
    /// U+0800-U+9FA5 and Hangul, then every digit on its own.
    DeepSeekCoder,
}

/// A step of a chain as a tokenizer.json spells it: an `Isolated` split by this pattern, or
/// (`None`) `Digits` with `individual_digits`.
type Spelled = Option<&'static str>;

const DEEPSEEK_V3: &[Spelled] = &[
    Some(r"\p{N}{1,3}"),
    Some("[一-龥\u{3040}-ゟ゠-ヿ]+"),
    Some(r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##),
];

const DEEPSEEK_CODER: &[Spelled] =
    &[Some(r"[\r\n]"), Some(r"\s?\p{L}+"), Some(r"\s?\p{P}+"), Some("[一-龥\u{800}-一가-\u{d7ff}]+"), None];

/// The steps with the first known chain in them replaced by one split that runs it, and
/// every `Isolated` split followed by a split with a lexer made one.
pub fn fuse(mut steps: Vec<Step>) -> Vec<Step> {
    for (chain, spelled) in [(Chain::DeepSeekV3, DEEPSEEK_V3), (Chain::DeepSeekCoder, DEEPSEEK_CODER)] {
        let found = steps.windows(spelled.len()).position(|w| w.iter().zip(spelled).all(|(s, p)| spells(s, *p)));
        if let Some(i) = found {
            let fused = Step::Split { splitter: Splitter::Chain(chain), behavior: Behavior::Isolated, invert: false };
            steps.splice(i..i + spelled.len(), [fused]);
            return steps;
        }
    }
    // A `ByteLevel` with `use_regex` after a split (Command R: `Digits`, then it) is GPT-2's
    // split and then the byte mapping: written so, the split fuses below.
    while let Some(i) = steps.windows(2).position(|w| {
        matches!(w, [Step::Split { behavior: Behavior::Isolated, .. }, Step::ByteLevel { add_prefix_space: false, use_regex: true }])
    }) {
        let gpt2 = Lexer::for_pattern(super::GPT2_PATTERN, Dialect::Oniguruma).expect("GPT-2's pattern has a lexer");
        let split = Step::Split { splitter: Splitter::Lexer(gpt2), behavior: Behavior::Isolated, invert: false };
        steps.splice(i + 1..i + 2, [split, Step::ByteLevel { add_prefix_space: false, use_regex: false }]);
    }
    // Any `Isolated` split followed by one with a lexer (Command A: digit groups, then an
    // o200k-like pattern): each piece of the first goes straight to the lexer, not through
    // the general chain of steps (10 MB of digits: 3.5x -> about 2.5x the time of English).
    while let Some(i) = steps.windows(2).position(|w| {
        matches!(
            w,
            [Step::Split { behavior: Behavior::Isolated, .. }, Step::Split { splitter: Splitter::Lexer(_), behavior: Behavior::Isolated, .. }]
        )
    }) {
        let second = steps.remove(i + 1);
        let first = steps.remove(i);
        if let (Step::Split { splitter: first, .. }, Step::Split { splitter: Splitter::Lexer(lexer), .. }) = (first, second) {
            let fused = Splitter::Then(Box::new(first), lexer);
            steps.insert(i, Step::Split { splitter: fused, behavior: Behavior::Isolated, invert: false });
        }
    }
    steps
}

fn spells(step: &Step, spelled: Spelled) -> bool {
    match (step, spelled) {
        (Step::Split { splitter: Splitter::Pattern(p), behavior: Behavior::Isolated, .. }, Some(pattern)) => {
            // Some files write `\r` and `\n` as the chars themselves (JSON escapes), which
            // the regex reads the same.
            let source = p.source();
            source == pattern || (source.contains(['\r', '\n']) && source.replace('\r', r"\r").replace('\n', r"\n") == pattern)
        }
        (Step::Split { splitter: Splitter::Chars(CharClass::Numeric), behavior: Behavior::Isolated, .. }, None) => true,
        _ => false,
    }
}

impl Chain {
    /// Calls `f(start, end)` for every piece, left to right; the pieces cover the text.
    pub fn for_each_piece(self, text: &str, mut f: impl FnMut(usize, usize)) {
        let s = Scan { text, table: lexer::class_table() };
        match self {
            Chain::DeepSeekV3 => deepseek_v3(&s, &mut f),
            Chain::DeepSeekCoder => deepseek_coder(&s, &mut f),
        }
    }
}

/// The byte after the char at `at`.
#[inline]
fn after(s: &Scan, at: usize) -> usize {
    at + s.char_at(at).map_or(1, char::len_utf8)
}

// DeepSeek V3.

#[derive(Clone, Copy, PartialEq, Eq)]
enum V3Kind {
    Digit,
    /// `[一-龥\u3040-ゟ゠-ヿ]`: ideographs, hiragana, katakana.
    Kana,
    Other,
}

#[inline]
fn v3_kind(s: &Scan, at: usize) -> V3Kind {
    let b = s.text.as_bytes()[at];
    if b < 0x80 {
        return if b.is_ascii_digit() { V3Kind::Digit } else { V3Kind::Other };
    }
    let c = s.char_at(at).expect("a char boundary");
    if class(s.table, c) & NUMBER != 0 {
        V3Kind::Digit
    } else if ('\u{4e00}'..='\u{9fa5}').contains(&c) || ('\u{3040}'..='\u{30ff}').contains(&c) {
        V3Kind::Kana
    } else {
        V3Kind::Other
    }
}

fn deepseek_v3(s: &Scan, f: &mut impl FnMut(usize, usize)) {
    let bytes = s.text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        // Steps 1 and 2: groups of up to three digits, runs of ideographs and kana, and the
        // text between them. Step 3 applies to each (it leaves digit groups whole).
        let kind = v3_kind(s, at);
        let mut end = after(s, at);
        match kind {
            V3Kind::Digit => {
                for _ in 1..3 {
                    if end < bytes.len() && v3_kind(s, end) == V3Kind::Digit {
                        end = after(s, end);
                    }
                }
                f(at, end);
            }
            _ => {
                while end < bytes.len() && {
                    let b = bytes[end];
                    // ASCII other than digits is `Other`, without a char decode.
                    if b < 0x80 && kind == V3Kind::Other { !b.is_ascii_digit() } else { v3_kind(s, end) == kind }
                } {
                    end += 1;
                    while end < bytes.len() && !s.text.is_char_boundary(end) {
                        end += 1;
                    }
                }
                let part = Scan { text: &s.text[at..end], table: s.table };
                with_gaps(&part, v3_match, &mut |a, b| f(at + a, at + b));
            }
        }
        at = end;
    }
}

/// Step 3 of DeepSeek V3 at `at`, in a part without digits:
/// `[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
/// the end of the match, or `None` where nothing matches.
#[inline]
fn v3_match(s: &Scan, at: usize) -> Option<usize> {
    const WORD: u8 = LETTER | MARK;
    const PUNCT_SYMBOL: u8 = PUNCT | SYMBOL;
    let bytes = s.text.as_bytes();
    let c = s.char_at(at)?;
    let cls = class(s.table, c);
    let next = at + c.len_utf8();
    if c.is_ascii_punctuation() && bytes.get(next).is_some_and(u8::is_ascii_alphabetic) {
        return Some(ascii_run(bytes, next + 1, letters));
    }
    let next_cls = s.class_at(next);
    // A mark may be the prefix too, but then the run from it is the same.
    if cls & WORD != 0 || (c != '\r' && c != '\n' && cls & (LETTER | PUNCT_SYMBOL) == 0 && next_cls & WORD != 0) {
        return Some(s.run(next, WORD));
    }
    if cls & PUNCT_SYMBOL != 0 || (c == ' ' && next_cls & PUNCT_SYMBOL != 0) {
        let start = if cls & PUNCT_SYMBOL != 0 { at } else { next };
        return Some(s.run_of(s.run(start, PUNCT_SYMBOL), &['\r', '\n']));
    }
    (cls & SPACE != 0).then(|| lexer::llama3_spaces(s, at))
}

/// The pieces of an `Isolated` split of `s.text` by a matcher: its matches, and the runs of
/// chars where nothing matches between them.
#[inline]
fn with_gaps(s: &Scan, matcher: impl Fn(&Scan, usize) -> Option<usize>, f: &mut impl FnMut(usize, usize)) {
    let (mut at, mut gap) = (0, 0);
    while at < s.text.len() {
        match matcher(s, at) {
            Some(end) => {
                if gap < at {
                    f(gap, at);
                }
                f(at, end);
                (at, gap) = (end, end);
            }
            None => at = after(s, at),
        }
    }
    if gap < at {
        f(gap, at);
    }
}

// DeepSeek Coder.

fn deepseek_coder(s: &Scan, f: &mut impl FnMut(usize, usize)) {
    // Step 1: `\r` and `\n` each alone; steps 2-5 on the lines between.
    let mut start = 0;
    for (i, b) in s.text.bytes().enumerate() {
        if b == b'\r' || b == b'\n' {
            coder_line(&Scan { text: &s.text[start..i], table: s.table }, &mut |a, b| f(start + a, start + b));
            f(i, i + 1);
            start = i + 1;
        }
    }
    coder_line(&Scan { text: &s.text[start..], table: s.table }, &mut |a, b| f(start + a, start + b));
}

/// Step 2, `\s?\p{L}+`, on a line: words go to steps 4 and 5 (step 3, `\s?\p{P}+`, finds
/// nothing in them), the text between them to step 3.
fn coder_line(s: &Scan, f: &mut impl FnMut(usize, usize)) {
    let (mut at, mut gap) = (0, 0);
    while at < s.text.len() {
        let c = s.char_at(at).expect("a char boundary");
        let next = at + c.len_utf8();
        let cls = class(s.table, c);
        if cls & LETTER != 0 || (cls & SPACE != 0 && s.class_at(next) & LETTER != 0) {
            let end = s.run(next, LETTER);
            if gap < at {
                coder_punct(s, gap, at, f);
            }
            coder_runs(s, at, end, f);
            (at, gap) = (end, end);
        } else {
            at = next;
        }
    }
    if gap < at {
        coder_punct(s, gap, at, f);
    }
}

/// Step 3, `\s?\p{P}+`, on `start..end` (no letters, no line breaks); each piece then goes
/// through steps 4 and 5.
fn coder_punct(s: &Scan, start: usize, end: usize, f: &mut impl FnMut(usize, usize)) {
    let part = Scan { text: &s.text[start..end], table: s.table };
    let punct = |p: &Scan, at: usize| -> Option<usize> {
        let c = p.char_at(at)?;
        let next = at + c.len_utf8();
        let cls = class(p.table, c);
        (cls & PUNCT != 0 || (cls & SPACE != 0 && p.class_at(next) & PUNCT != 0)).then(|| p.run(next, PUNCT))
    };
    with_gaps(&part, punct, &mut |a, b| coder_runs(s, start + a, start + b, f));
}

/// Steps 4 and 5 on `start..end`: runs of `[一-龥ࠀ-一가-퟿]` apart from the rest, then
/// every numeric char (`char::is_numeric`, as `Digits`) on its own.
fn coder_runs(s: &Scan, start: usize, end: usize, f: &mut impl FnMut(usize, usize)) {
    let piece = &s.text[start..end];
    if piece.bytes().all(|b| b < 0x80 && !b.is_ascii_digit()) {
        return f(start, end);
    }
    let in_set = |c: char| ('\u{800}'..='\u{9fa5}').contains(&c) || ('\u{ac00}'..='\u{d7ff}').contains(&c);
    let mut run: Option<(usize, bool)> = None;
    for (i, c) in piece.char_indices() {
        let at = start + i;
        if c.is_numeric() {
            if let Some((from, _)) = run.take() {
                f(from, at);
            }
            f(at, at + c.len_utf8());
            continue;
        }
        match run {
            Some((from, kind)) if kind != in_set(c) => {
                f(from, at);
                run = Some((at, in_set(c)));
            }
            Some(_) => {}
            None => run = Some((at, in_set(c))),
        }
    }
    if let Some((from, _)) = run {
        f(from, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::{Context, Dialect, PreTokenizer};

    fn unfused(spelled: &[Spelled]) -> Vec<Step> {
        spelled
            .iter()
            .map(|p| Step::Split {
                splitter: match p {
                    Some(p) => Splitter::Pattern(crate::pretokenize::Pattern::new(p, Dialect::Oniguruma).unwrap()),
                    None => Splitter::Chars(CharClass::Numeric),
                },
                behavior: Behavior::Isolated,
                invert: false,
            })
            .collect()
    }

    fn pieces(p: &PreTokenizer, text: &str) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        p.for_each_piece(text, Context::default(), &mut |piece, origin| {
            out.push((origin.at(0), piece.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    /// Random texts over the chars where the steps' classes meet, and the corner cases.
    fn texts() -> Vec<String> {
        const ALPHABET: &[char] = &[
            'a', 'Z', 'x', ' ', ' ', '\n', '\r', '\t', '.', ',', '\'', '(', '$', '+', '_', '1', '2', '٣', '¼', 'ⅷ',
            '日', '本', 'ー', '・', '\u{3040}', 'カ', '\u{3099}', '゛', 'ゟ', '゠', 'ヿ', '龥', '\u{9fa6}', '一', '가',
            '\u{d7ff}', 'क', '\u{94d}', '\u{966}', 'ࠀ', '\u{7ff}', 'é', '\u{301}', 'Я', '、', '。', '\u{3000}', '\u{a0}',
            '\u{85}', '\u{0}', '\u{1b}', '\u{200d}', '👨', '€', '«', '\u{e000}',
        ];
        let mut next = crate::testing::random(0x9e37_79b9_7f4a_7c15);
        let mut texts: Vec<String> = [
            "", "Hello, world. os.path.join(a, 'b') x=1234567 y", "  \n\n  x \r\n\t.  ;;\n", "日本語のテキスト・カタカナー。",
            "数字１２３ and 한국어 text नमस्ते", "  $$ ++ (foo) 'quoted' don't", "a   \u{0}b \u{1b}[0m", "12 345  678\n",
            "1234567890123", "x 12345678 y", "12,345,678.9", "１２3456 7", "99 1234567a 12345_6 ٣45678",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            texts.push((0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect());
        }
        texts
    }

    #[test]
    fn each_chain_gives_the_pieces_of_its_steps() {
        let byte_level = Step::ByteLevel { add_prefix_space: false, use_regex: false };
        for (chain, spelled) in [(Chain::DeepSeekV3, DEEPSEEK_V3), (Chain::DeepSeekCoder, DEEPSEEK_CODER)] {
            let mut steps = unfused(spelled);
            steps.push(byte_level.clone());
            let fused = PreTokenizer::new(steps.clone()).unwrap();
            assert!(
                matches!(fused.steps(), [Step::Split { splitter: Splitter::Chain(c), .. }, _] if *c == chain),
                "{chain:?} was not fused"
            );
            let stepped = PreTokenizer::unfused(steps);
            for text in texts() {
                assert_eq!(pieces(&fused, &text), pieces(&stepped, &text), "{chain:?} on {text:?}");
            }
        }
    }

    #[test]
    fn digits_then_byte_level_with_its_split_gives_the_pieces_of_its_steps() {
        let steps = vec![
            Step::Split { splitter: Splitter::Chars(CharClass::Numeric), behavior: Behavior::Isolated, invert: false },
            Step::ByteLevel { add_prefix_space: false, use_regex: true },
        ];
        let fused = PreTokenizer::new(steps.clone()).unwrap();
        assert!(matches!(fused.steps(), [Step::Split { splitter: Splitter::Then(..), .. }, Step::ByteLevel { use_regex: false, .. }]));
        let stepped = PreTokenizer::unfused(steps);
        for text in texts() {
            assert_eq!(pieces(&fused, &text), pieces(&stepped, &text), "{text:?}");
        }
        // With a prefix space, each piece gets one: left as it is.
        let prefixed = vec![
            Step::Split { splitter: Splitter::Chars(CharClass::Numeric), behavior: Behavior::Isolated, invert: false },
            Step::ByteLevel { add_prefix_space: true, use_regex: true },
        ];
        assert!(matches!(fuse(prefixed)[..], [Step::Split { splitter: Splitter::Chars(_), .. }, _]));
    }

    #[test]
    fn a_split_then_a_lexer_gives_the_pieces_of_the_two_steps() {
        let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        // Runs of digits cut three ways: `\p{N}{1,3}`, `\p{N}` and ` ?\p{N}+`.
        let qwen2 = llama3.replace(r"\p{N}{1,3}", r"\p{N}");
        let split = |splitter| Step::Split { splitter, behavior: Behavior::Isolated, invert: false };
        let pattern = |p| Splitter::for_pattern(p, Dialect::Oniguruma).unwrap();
        let byte_level = Step::ByteLevel { add_prefix_space: false, use_regex: false };
        // Command A's digit groups (a pattern with matches and gaps), and `Punctuation`.
        for second in [llama3, &qwen2, super::super::GPT2_PATTERN] {
            assert!(matches!(pattern(second), Splitter::Lexer(_)), "{second}");
            for first in [pattern(r"\d{1,3}(?=(?:\d{3})*\b)"), Splitter::Chars(CharClass::Punctuation)] {
                let steps = vec![split(first), split(pattern(second)), byte_level.clone()];
                let fused = PreTokenizer::new(steps.clone()).unwrap();
                assert!(matches!(fused.steps(), [Step::Split { splitter: Splitter::Then(..), .. }, _]));
                let stepped = PreTokenizer::unfused(steps);
                for text in texts() {
                    assert_eq!(pieces(&fused, &text), pieces(&stepped, &text), "{second}: {text:?}");
                }
            }
        }
        // A second step without a lexer, or not `Isolated`: left as it is.
        let merged = Step::Split { splitter: pattern(llama3), behavior: Behavior::MergedWithNext, invert: false };
        assert_eq!(fuse(vec![split(pattern(r"\d")), merged]).len(), 2);
        assert_eq!(fuse(vec![split(pattern(r"\d")), split(pattern(r"\w+"))]).len(), 2);
    }

    #[test]
    fn chains_are_found_as_files_spell_them_and_only_then() {
        // The chars `\r` and `\n` themselves (JSON escapes) in place of the regex escapes.
        let literal = DEEPSEEK_V3.iter().map(|p| p.map(|p| p.replace(r"\r", "\r").replace(r"\n", "\n"))).collect::<Vec<_>>();
        let steps = |patterns: &[Option<String>]| {
            patterns
                .iter()
                .map(|p| Step::Split {
                    splitter: Splitter::Pattern(crate::pretokenize::Pattern::new(p.as_deref().unwrap(), Dialect::Oniguruma).unwrap()),
                    behavior: Behavior::Isolated,
                    invert: false,
                })
                .collect::<Vec<_>>()
        };
        assert!(matches!(fuse(steps(&literal))[..], [Step::Split { splitter: Splitter::Chain(Chain::DeepSeekV3), .. }]));
        let mut changed = literal.clone();
        changed[0] = Some(r"\p{N}{1,2}".to_string());
        assert_eq!(fuse(steps(&changed)).len(), 3);
        let mut merged = steps(&literal);
        if let Step::Split { behavior, .. } = &mut merged[1] {
            *behavior = Behavior::MergedWithPrevious;
        }
        assert_eq!(fuse(merged).len(), 3);
    }
}
