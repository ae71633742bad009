//! The general pattern matcher: any regex a tokenizer.json or a tiktoken encoding names.
//!
//! Patterns run on the `regex` crate's automata, in time linear in the text, whenever they
//! can. Two rewrites, each exact, bring the real pre-tokenizer patterns there:
//! - the one look-around they use, a whitespace run that leaves its last char to the next
//!   word (`\s+(?!\S)|\s+`, in Qwen2, Llama 3, DeepSeek V3, cl100k and their derivatives),
//!   is matched as `\s+` and cut afterwards ([`ws_lookahead`]);
//! - possessive quantifiers (tiktoken's `\p{L}++`) become greedy where giving chars back
//!   can never change the match ([`greedy_alternative`]).
//!
//! One pattern with a look-ahead the `regex` crate cannot run has an engine of its own:
//! Cohere's digit groups `\d{1,3}(?=(?:\d{3})*\b)` ([`digit_groups`]), which backtracking
//! runs in time quadratic in a run of digits.
//!
//! Anything else the `regex` crate cannot compile (other look-around, backreferences, the
//! possessives left) goes to `fancy-regex`, a backtracking engine, with a step limit: a
//! pattern that backtracks without end fails with an error naming it.

use crate::error::{Error, Result};
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    engine: Engine,
}

#[derive(Debug, Clone)]
enum Engine {
    /// Linear time. `ws_group`: the capture group that stands for `\s+(?!\S)`.
    Linear { regex: regex::Regex, ws_group: Option<usize> },
    Backtracking(fancy_regex::Regex),
    /// `\d{1,3}(?=(?:\d{3})*\b)` read as Oniguruma reads it.
    DigitGroups,
}

/// Which regex dialect a pattern was written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Oniguruma (Ruby syntax), as Hugging Face `tokenizers` compiles Split patterns:
    /// `^` and `$` match at line boundaries.
    Oniguruma,
    /// fancy-regex, as tiktoken compiles its patterns: `$` is the end of the text.
    Tiktoken,
}

/// Backtracking steps one match may take: ten per byte of a 10 MB run.
const BACKTRACK_LIMIT: usize = 100_000_000;

/// Cohere's pattern (Command A, Tiny Aya): digits in groups of three from the right.
const DIGIT_GROUPS: &str = r"\d{1,3}(?=(?:\d{3})*\b)";

/// The name of the group that replaces `\s+(?!\S)`.
const WS_GROUP: &str = "tokensmith_ws";

impl Pattern {
    pub fn new(source: &str, dialect: Dialect) -> Result<Self> {
        if source == DIGIT_GROUPS && dialect == Dialect::Oniguruma {
            return Ok(Pattern { source: source.to_string(), engine: Engine::DigitGroups });
        }
        let wrap = |pattern: &str| match dialect {
            Dialect::Oniguruma => format!("(?m:{pattern})"),
            Dialect::Tiktoken => pattern.to_string(),
        };
        // Flags set for the rest of the pattern change what later atoms mean: no possessive
        // is rewritten after them.
        let alternatives = top_level_alternatives(source);
        let rewritten = match has_unscoped_flags(source) {
            true => source.to_string(),
            false => alternatives.into_iter().map(|a| greedy_alternative(a, dialect)).collect::<Vec<_>>().join("|"),
        };
        let rewritten = ws_lookahead(&rewritten).unwrap_or(rewritten);
        // Syntax the `regex` crate reads otherwise than fancy-regex and Oniguruma goes to the
        // backtracking engine: see `reads_differently`.
        let linear = match reads_differently(&rewritten) {
            true => None,
            false => regex::RegexBuilder::new(&wrap(&rewritten)).build().ok(),
        };
        let engine = match linear {
            Some(regex) => {
                let ws_group = regex.capture_names().position(|name| name == Some(WS_GROUP));
                Engine::Linear { regex, ws_group }
            }
            None => Engine::Backtracking(
                fancy_regex::RegexBuilder::new(&wrap(source))
                    // Long runs without a break (10 MB of letters) must not fail on the
                    // default limit, but a pattern that truly backtracks, such as `(a+)+(?=b)`
                    // from a hostile file, must end: it fails with an error naming the
                    // pattern after about a second of steps, never hangs.
                    .backtrack_limit(BACKTRACK_LIMIT)
                    .build()
                    .map_err(|e| Error::Invalid(format!("invalid pre-tokenizer pattern {source:?}: {e}")))?,
            ),
        };
        Ok(Pattern { source: source.to_string(), engine })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether matching is linear in the text (no backtracking engine).
    pub fn is_linear(&self) -> bool {
        matches!(self.engine, Engine::Linear { .. } | Engine::DigitGroups)
    }

    /// Calls `f(start, end)` for every non-overlapping match, left to right (empty matches
    /// right after a match are skipped, as `find_iter` does).
    pub fn for_each_match(&self, text: &str, mut f: impl FnMut(usize, usize)) -> Result<()> {
        match &self.engine {
            Engine::Linear { regex, ws_group: None } => {
                regex.find_iter(text).for_each(|m| f(m.start(), m.end()));
                Ok(())
            }
            Engine::Linear { regex, ws_group: Some(group) } => {
                let mut locations = regex.capture_locations();
                let (mut at, mut last_end) = (0, None);
                while at <= text.len() {
                    let Some(m) = regex.captures_read_at(&mut locations, text, at) else { break };
                    let (start, mut end) = (m.start(), m.end());
                    if start == end {
                        at = next_char(text, end);
                        if last_end == Some(end) {
                            continue;
                        }
                    } else {
                        if locations.get(*group).is_some() {
                            end = ws_lookahead_end(text, start, end);
                        }
                        at = end;
                    }
                    last_end = Some(end);
                    f(start, end);
                }
                Ok(())
            }
            Engine::DigitGroups => {
                digit_groups(text, f);
                Ok(())
            }
            Engine::Backtracking(regex) => {
                for m in regex.find_iter(text) {
                    let m = m.map_err(|e| {
                        Error::Invalid(format!(
                            "pattern {:?} failed on the input: {e} (a pattern that backtracks this much cannot split it in bounded time)",
                            self.source
                        ))
                    })?;
                    f(m.start(), m.end());
                }
                Ok(())
            }
        }
    }
}

/// The matches of `\d{1,3}(?=(?:\d{3})*\b)`, run by run of `\d`, in linear time.
///
/// Inside a run of digits there is no word boundary (digits are word chars), so the
/// look-ahead holds only where the rest of the run is a multiple of three digits and the run
/// ends at a boundary: at the end of the text or before a char that is not a word char. Then
/// the run is cut into groups of three from the right (the leftmost match takes the 1-3
/// digits left over); otherwise no part of it matches.
///
/// ASCII digits are read a byte at a time, and a run of them alone is cut by arithmetic, not
/// char by char: this function was 7% of 10 MB of digits on Command A (perf), and the call is
/// about 3% faster so.
fn digit_groups(text: &str, mut f: impl FnMut(usize, usize)) {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(i) = text[at..].find(is_decimal_digit) {
        let start = at + i;
        let (mut end, mut ascii) = (start, true);
        // The run's end, and the char after it.
        let after = loop {
            end += bytes[end..].iter().position(|b| !b.is_ascii_digit()).unwrap_or(bytes.len() - end);
            match text[end..].chars().next() {
                Some(c) if !c.is_ascii() && is_decimal_digit(c) => (end, ascii) = (end + c.len_utf8(), false),
                after => break after,
            }
        };
        at = end;
        if after.is_some_and(is_word_char) {
            continue;
        }
        let run = &text[start..end];
        if ascii {
            let mut from = start;
            for to in (start + (run.len() - 1) % 3 + 1..=end).step_by(3) {
                f(from, to);
                from = to;
            }
            continue;
        }
        let mut left = (run.chars().count() - 1) % 3 + 1;
        let mut from = start;
        for (i, c) in run.char_indices() {
            left -= 1;
            if left == 0 {
                let to = start + i + c.len_utf8();
                f(from, to);
                (from, left) = (to, 3);
            }
        }
    }
}

/// `\d` in Oniguruma (as Hugging Face `tokenizers` runs it): `\p{Nd}`.
fn is_decimal_digit(c: char) -> bool {
    static DIGITS: OnceLock<Vec<(char, char)>> = OnceLock::new();
    c.is_ascii_digit() || (!c.is_ascii() && in_ranges(c, DIGITS.get_or_init(|| class_ranges(r"\p{Nd}"))))
}

/// `\w` in Oniguruma: alphabetic, marks, decimal digits and connector punctuation, and in
/// Latin-1 the superscript digits and vulgar fractions too (measured on every code point
/// against `tokenizers`; the `regex` crate's `\w` differs there and adds ZWNJ and ZWJ).
fn is_word_char(c: char) -> bool {
    static WORD: OnceLock<Vec<(char, char)>> = OnceLock::new();
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    let word = WORD.get_or_init(|| class_ranges(r"[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\u{b2}\u{b3}\u{b9}\u{bc}-\u{be}]"));
    in_ranges(c, word)
}

fn class_ranges(class: &str) -> Vec<(char, char)> {
    char_set(class).expect("a Unicode class").iter().map(|r| (r.start(), r.end())).collect()
}

fn in_ranges(c: char, ranges: &[(char, char)]) -> bool {
    let i = ranges.partition_point(|&(_, hi)| hi < c);
    ranges.get(i).is_some_and(|&(lo, _)| lo <= c)
}

fn next_char(text: &str, at: usize) -> usize {
    at + text[at..].chars().next().map_or(1, char::len_utf8)
}

/// `pattern` with its top-level alternatives `\s+(?!\S)|\s+` (or `|\s`) made one group
/// `(?P<tokensmith_ws>\s+)`, when it has them; `None` otherwise.
///
/// Why this is exact: at a position where a whitespace run of k chars starts and no
/// earlier alternative matches, `\s+(?!\S)` backtracks to the longest run not followed by
/// a non-space: all k chars at the end of the text or before more space, k - 1 before a
/// non-space when k > 1; when k = 1 before a non-space it fails, and the `\s+` (or `\s`)
/// after it takes that one char. That is `\s+` with one char given back when it stops
/// before a non-space and is longer than one ([`ws_lookahead_end`]). Both forms match at
/// the same positions, so the leftmost match and the alternative chosen there agree.
fn ws_lookahead(pattern: &str) -> Option<String> {
    let alternatives = top_level_alternatives(pattern);
    let at = alternatives
        .windows(2)
        .position(|pair| pair[0] == r"\s+(?!\S)" && (pair[1] == r"\s+" || pair[1] == r"\s"))?;
    let mut rewritten: Vec<String> = alternatives.iter().map(|a| a.to_string()).collect();
    rewritten[at] = format!(r"(?P<{WS_GROUP}>\s+)");
    rewritten.remove(at + 1);
    Some(rewritten.join("|"))
}

/// The end of a `\s+(?!\S)` match found as the run `start..end` of `\s+`.
fn ws_lookahead_end(text: &str, start: usize, end: usize) -> usize {
    let before_non_space = text[end..].chars().next().is_some_and(|c| !c.is_whitespace());
    let last = text[start..end].chars().next_back().map_or(0, char::len_utf8);
    if before_non_space && end - start > last {
        end - last
    } else {
        end
    }
}

/// One item of a sequence: an atom and its quantifier.
struct Item<'a> {
    atom: &'a str,
    /// The quantifier as written, without a possessive `+`.
    quantifier: &'a str,
    /// The fewest times the atom must match.
    min: u32,
    possessive: bool,
}

impl Item<'_> {
    fn is_anchor(&self) -> bool {
        matches!(self.atom, "^" | "$") || self.atom.starts_with("\\b") || self.atom.starts_with("\\B")
            || self.atom.starts_with("\\A") || self.atom.starts_with("\\z") || self.atom.starts_with("\\Z")
    }

    /// Whether it always matches, at any place (possibly empty).
    fn always_matches(&self) -> bool {
        self.min == 0 && !self.is_anchor()
    }
}

/// The chars a single-char atom matches (a class, an escape or a literal char).
fn char_set(atom: &str) -> Option<regex_syntax::hir::ClassUnicode> {
    use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, HirKind};
    let hir = regex_syntax::Parser::new().parse(atom).ok()?;
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => Some(class.clone()),
        HirKind::Literal(literal) => {
            let mut chars = std::str::from_utf8(&literal.0).ok()?.chars();
            let c = chars.next()?;
            chars.next().is_none().then(|| ClassUnicode::new([ClassUnicodeRange::new(c, c)]))
        }
        _ => None,
    }
}

/// `alternative` (a top-level one) with its possessive quantifiers made greedy where that
/// cannot change what it matches; as written where it can or where it is not understood.
///
/// A possessive `X*+` never gives chars back; a greedy `X*` gives them back one by one only
/// when the rest of the alternative fails after the longest run. So they agree when:
/// - everything after X always matches (nothing, or items that may match empty): the rest
///   never fails after the longest run, and the alternative ends there;
/// - the item after X must match at least once and starts with no char X matches: after
///   giving a char back, the rest would have to start with that char;
/// - the rest is `$` as tiktoken reads it (the end of the text), or any `$` when X matches
///   no `\n`: a shorter run ends before a char of X, never at a line end.
fn greedy_alternative(alternative: &str, dialect: Dialect) -> String {
    let Some(items) = items(alternative) else { return alternative.to_string() };
    // Inline flags (`(?i)`, `(?x)`) change what the atoms after them mean.
    if items.iter().any(|item| item.atom.starts_with("(?") && item.atom.ends_with(')') && !item.atom.contains(':'))
        || !items.iter().any(|item| item.possessive)
    {
        return alternative.to_string();
    }
    let mut out = String::with_capacity(alternative.len());
    for (i, item) in items.iter().enumerate() {
        let rest = &items[i + 1..];
        let safe = !item.possessive
            || rest.iter().all(Item::always_matches)
            || rest.first().is_some_and(|next| {
                next.min >= 1
                    && match (char_set(item.atom), char_set(next.atom)) {
                        (Some(mut x), Some(y)) => {
                            x.intersect(&y);
                            x.ranges().is_empty()
                        }
                        _ => false,
                    }
            })
            || (rest.len() == 1
                && rest[0].atom == "$"
                && rest[0].quantifier.is_empty()
                && (dialect == Dialect::Tiktoken
                    || char_set(item.atom).is_some_and(|x| !x.ranges().iter().any(|r| r.start() <= '\n' && '\n' <= r.end()))));
        if !safe {
            return alternative.to_string();
        }
        out.push_str(item.atom);
        out.push_str(item.quantifier);
    }
    out
}

/// The items of a sequence (no top-level `|`), or `None` for syntax this does not follow.
fn items(sequence: &str) -> Option<Vec<Item<'_>>> {
    let bytes = sequence.as_bytes();
    let mut items = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        i = match bytes[i] {
            b'\\' => {
                let letter = *bytes.get(i + 1)?;
                match (letter, bytes.get(i + 2)) {
                    (b'p' | b'P' | b'x' | b'u', Some(b'{')) => i + 2 + sequence[i + 2..].find('}')? + 1,
                    (b'p' | b'P', _) => i + 3,
                    (b'x', _) => i + 4,
                    (b'u', _) => i + 6,
                    (b'U', _) => i + 10,
                    _ => i + 1 + sequence[i + 1..].chars().next()?.len_utf8(),
                }
            }
            b'[' => i + class_len(&sequence[i..])?,
            b'(' => i + group_len(&sequence[i..])?,
            b')' | b'|' | b'*' | b'+' | b'?' => return None,
            _ => i + sequence[i..].chars().next()?.len_utf8(),
        };
        let atom = sequence.get(start..i)?;
        let quantifier_start = i;
        let min = match bytes.get(i) {
            Some(b'*') => {
                i += 1;
                0
            }
            Some(b'+') => {
                i += 1;
                1
            }
            Some(b'?') => {
                i += 1;
                0
            }
            Some(b'{') => {
                let close = sequence[i..].find('}')?;
                let counts = &sequence[i + 1..i + close];
                if counts.is_empty() || !counts.chars().all(|c| c.is_ascii_digit() || c == ',') {
                    return None;
                }
                i += close + 1;
                counts.split(',').next()?.parse().ok()?
            }
            _ => 1,
        };
        let (mut quantifier_end, mut possessive) = (i, false);
        if i > quantifier_start {
            match bytes.get(i) {
                Some(b'?') => {
                    i += 1;
                    quantifier_end = i;
                }
                Some(b'+') => {
                    possessive = true;
                    i += 1;
                }
                _ => {}
            }
        }
        items.push(Item { atom, quantifier: &sequence[quantifier_start..quantifier_end], min, possessive });
    }
    Some(items)
}

/// The length of the class `[...]` that `s` starts with (nested classes included).
fn class_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' => {
                depth += 1;
                // A `]` first in a class (after `[` or `[^`) is a literal.
                if bytes.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if bytes.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The length of the group `(...)` that `s` starts with.
fn group_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' => i += class_len(&s[i..])? - 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the `regex` crate would compile `pattern` into other matches than fancy-regex
/// (and Oniguruma): a possessive quantifier (`x++` reads as the nested `(x+)+`), a count
/// with spaces (`a{1, 3}` is a count to it, literal text to them), or flags other than
/// `i`, `m` and `s` (`x` hides quantifiers from this scan, `u` and `U` change `\s` and
/// greediness, `R` is a recursion to Oniguruma).
fn reads_differently(pattern: &str) -> bool {
    let bytes = pattern.as_bytes();
    let (mut i, mut after_quantifier) = (0, false);
    while i < bytes.len() {
        let quantifier = match bytes[i] {
            b'\\' => {
                i += 1;
                false
            }
            b'[' => match class_len(&pattern[i..]) {
                Some(len) => {
                    i += len - 1;
                    false
                }
                None => return true,
            },
            b'(' if bytes.get(i + 1) == Some(&b'?') => {
                // Flags end with `:` or `)`; `(?P<name>`, `(?=` and the like are no flags.
                let rest = &pattern[i + 2..];
                let flags = &rest[..rest.bytes().take_while(|b| b.is_ascii_alphabetic() || *b == b'-').count()];
                let is_flags = matches!(rest.as_bytes().get(flags.len()), Some(b':' | b')'));
                if is_flags && flags.bytes().any(|b| !matches!(b, b'i' | b'm' | b's' | b'-')) {
                    return true;
                }
                i += 1; // the `?` is no quantifier
                false
            }
            b'+' if after_quantifier => return true,
            b'*' | b'+' | b'?' => true,
            b'{' => {
                let counts = pattern[i + 1..].split('}').next().unwrap_or("");
                let counted = !counts.is_empty() && counts.bytes().all(|b| b.is_ascii_digit() || b == b',');
                if !counted && counts.bytes().any(|b| b == b' ') && counts.bytes().all(|b| b.is_ascii_digit() || b == b',' || b == b' ') {
                    return true;
                }
                if counted {
                    i += counts.len() + 1;
                }
                counted
            }
            _ => false,
        };
        after_quantifier = quantifier;
        i += 1;
    }
    false
}

/// Whether `pattern` sets flags for the rest of it (`(?i)`, not the scoped `(?i:...)`).
fn has_unscoped_flags(pattern: &str) -> bool {
    pattern.match_indices("(?").any(|(at, _)| {
        let rest = &pattern[at + 2..];
        let flags = rest.bytes().take_while(|b| b.is_ascii_alphabetic() || *b == b'-').count();
        flags > 0 && rest.as_bytes().get(flags) == Some(&b')')
    })
}

/// The alternatives of `pattern` at depth 0: `|` outside groups, classes and escapes.
fn top_level_alternatives(pattern: &str) -> Vec<&str> {
    let (mut parts, mut start) = (Vec::new(), 0);
    let bytes = pattern.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            // An unclosed class runs to the end (the pattern is then invalid anyway).
            b'[' => i += class_len(&pattern[i..]).unwrap_or(bytes.len() - i) - 1,
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b'|' if depth == 0 => {
                parts.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&pattern[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &Pattern, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        pattern.for_each_match(text, |s, e| out.push(text[s..e].to_string())).unwrap();
        out
    }

    #[test]
    fn possessives_become_greedy_only_where_that_is_exact() {
        let g = |p| greedy_alternative(p, Dialect::Tiktoken);
        // At the end, before items that may match empty, before a disjoint class.
        assert_eq!(g(r"[^\r\n\p{L}\p{N}]?+\p{L}++"), r"[^\r\n\p{L}\p{N}]?\p{L}+");
        assert_eq!(g(r" ?[^\s\p{L}\p{N}]++[\r\n]*+"), r" ?[^\s\p{L}\p{N}]+[\r\n]*");
        assert_eq!(g(r"\p{N}{1,3}+"), r"\p{N}{1,3}");
        assert_eq!(g(r"\s++$"), r"\s+$");
        // `$` at a line end: `\s` holds `\n`, so a shorter run could end at one.
        assert_eq!(greedy_alternative(r"\s++$", Dialect::Oniguruma), r"\s++$");
        assert_eq!(greedy_alternative(r"[ \t]++$", Dialect::Oniguruma), r"[ \t]+$");
        // Giving back could help: kept possessive (the backtracking engine).
        assert_eq!(g(r"a++a"), r"a++a");
        assert_eq!(g(r"\w++\d"), r"\w++\d");
        assert_eq!(g(r"(?i)a++b"), r"(?i)a++b");
        assert_eq!(g(r"\U00000061++a"), r"\U00000061++a");
        assert_eq!(g(r"[ab]++\b"), r"[ab]++\b");
    }

    #[test]
    fn rewritten_patterns_match_as_the_backtracking_engine() {
        let patterns = [
            r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s",
            r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s",
            r"a++b|\s++$|[ab]?+c|x*+",
        ];
        let texts = ["Hello world's  test\n\n  x", "a\u{a0}\u{a0}b  ", "aab ab abc  c\n", "12345 , ..\r\n\r\n  ", "   ", "xx"];
        for (pattern, dialect) in patterns.iter().flat_map(|p| [(p, Dialect::Tiktoken), (p, Dialect::Oniguruma)]) {
            let linear = Pattern::new(pattern, dialect).unwrap();
            let source = if dialect == Dialect::Oniguruma { format!("(?m:{pattern})") } else { pattern.to_string() };
            let backtracking = fancy_regex::Regex::new(&source).unwrap();
            for text in texts {
                let want: Vec<String> = backtracking.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect();
                assert_eq!(matches(&linear, text), want, "{pattern} ({dialect:?}) on {text:?}");
            }
        }
        // Flags set in one alternative hold in the next ones (found in review).
        for (pattern, text) in [(r"(?i)x|a++A", "aa"), (r"(?s)q|.++\n", "a\n"), (r"(?m)x|\s++$", " \n x"), (r"[]|\s+(?!\S)|\s+|]", "x ]")] {
            let backtracking = fancy_regex::Regex::new(pattern).unwrap();
            let want: Vec<String> = backtracking.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect();
            assert_eq!(matches(&Pattern::new(pattern, Dialect::Tiktoken).unwrap(), text), want, "{pattern}");
        }
        let cl100k = patterns[0];
        assert!(Pattern::new(cl100k, Dialect::Tiktoken).unwrap().is_linear());
        assert!(!Pattern::new(cl100k, Dialect::Oniguruma).unwrap().is_linear());
    }

    #[test]
    fn possessive_quantifiers_are_found() {
        for p in [r"a++", r"\p{L}*+", r"x?+y", r"\d{1,3}+", r"[^a]++", r"[]a]++", r"a{1, 3}", r"(?x)a+ +a", r"(?u:\s)"] {
            assert!(reads_differently(p), "{p}");
        }
        for p in [r"a+", r"a+?", r"\++", r"[a++]", r"(?:a)+", r"a{2}", r"a{x}+", r"\s+(?!\S)|\s+", r"(?i:'s)|(?m)$"] {
            assert!(!reads_differently(p), "{p}");
        }
    }

    #[test]
    fn alternatives_split_at_depth_zero_only() {
        assert_eq!(top_level_alternatives(r"a|(b|c)|[|\]]|\||d"), ["a", "(b|c)", r"[|\]]", r"\|", "d"]);
        assert_eq!(top_level_alternatives(r"[]|\s]|x|[^]|]"), [r"[]|\s]", "x", "[^]|]"]);
    }

    #[test]
    fn the_whitespace_lookahead_runs_linear_and_as_the_backtracking_engine() {
        let source = r"'s|\s?\p{L}+|\s?\p{P}+|\s*[\r\n]+|\s+(?!\S)|\s+";
        let linear = Pattern::new(source, Dialect::Oniguruma).unwrap();
        assert!(linear.is_linear());
        let backtracking = fancy_regex::Regex::new(&format!("(?m:{source})")).unwrap();
        for text in ["a  b", "a b", "  ", " x", "x \n  y", "x\t\t\u{3000}y  ", "a   \n\n b\u{a0}\u{a0}c", "", " "] {
            let want: Vec<String> = backtracking.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect();
            assert_eq!(matches(&linear, text), want, "{text:?}");
        }
    }

    #[test]
    fn other_look_around_backtracks_with_a_limit() {
        assert!(!Pattern::new(r"\s+(?!\S)|\w", Dialect::Oniguruma).unwrap().is_linear());
        assert!(!Pattern::new(r"\p{L}++\p{L}|\s", Dialect::Tiktoken).unwrap().is_linear());
        assert!(Pattern::new(r"\w+|[^\w\s]+", Dialect::Tiktoken).unwrap().is_linear());
    }

    #[test]
    fn digit_groups_run_linear_and_as_the_backtracking_engine() {
        let pattern = Pattern::new(DIGIT_GROUPS, Dialect::Oniguruma).unwrap();
        assert!(pattern.is_linear());
        let backtracking = fancy_regex::Regex::new(&format!("(?m:{DIGIT_GROUPS})")).unwrap();
        // fancy-regex reads `\w` as the `regex` crate does, not as Oniguruma: the chars where
        // the two differ are left out (they have a test against `tokenizers`).
        const ALPHABET: &[char] = &['1', '2', '0', '٣', '١', '１', '⁰', 'ⅷ', 'a', 'é', '\u{301}', '_', ' ', '.', '-', '\n', '‿', '日'];
        // Mostly ASCII digits: long runs of them alone, which are cut by arithmetic.
        const DIGITS: &[char] = &['1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '٣', ' ', 'a', '.'];
        let mut next = crate::testing::random(0x51_7cc1_b727_220a);
        for alphabet in [ALPHABET, DIGITS] {
            for _ in 0..20_000 {
                let len = (next() % 24) as usize;
                let text: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
                let want: Vec<String> = backtracking.find_iter(&text).map(|m| m.unwrap().as_str().to_string()).collect();
                assert_eq!(matches(&pattern, &text), want, "{text:?}");
            }
        }
        assert!(!Pattern::new(DIGIT_GROUPS, Dialect::Tiktoken).unwrap().is_linear());
    }
}
