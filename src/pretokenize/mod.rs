//! Pre-tokenizers: cut a text segment into the pieces that BPE merges within.
//!
//! A pre-tokenizer is a chain of steps, each applied to every piece the previous step
//! produced (as Hugging Face `Sequence` does). Pieces are streamed to a callback, so the
//! common chain (one split pattern, then byte-level) allocates nothing per piece.

pub mod lexer;
pub mod regex;

use crate::error::{Error, Result};
use lexer::Lexer;
pub use regex::{Dialect, Pattern};
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

/// What a split step looks for.
#[derive(Debug, Clone)]
pub enum Splitter {
    /// A hand-written lexer, equivalent to a known pattern but much faster.
    Lexer(Lexer),
    Pattern(Pattern),
    /// Every char for which `char::is_numeric` holds (the `Digits` pre-tokenizer).
    Numeric,
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
            Splitter::Numeric => {
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
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

#[derive(Debug, Clone)]
pub enum Step {
    Split { splitter: Splitter, behavior: Behavior, invert: bool },
    /// Must be the last step: after it, pieces are byte strings for BPE.
    ByteLevel { add_prefix_space: bool, use_regex: bool },
}

#[derive(Debug, Clone)]
pub struct PreTokenizer {
    steps: Vec<Step>,
}

fn gpt2_splitter() -> &'static Splitter {
    static SPLITTER: OnceLock<Splitter> = OnceLock::new();
    SPLITTER.get_or_init(|| {
        Splitter::for_pattern(GPT2_PATTERN, Dialect::Oniguruma).expect("the GPT-2 pattern compiles")
    })
}

impl PreTokenizer {
    pub fn new(steps: Vec<Step>) -> Result<Self> {
        match steps.iter().position(|s| matches!(s, Step::ByteLevel { .. })) {
            Some(i) if i + 1 == steps.len() => Ok(PreTokenizer { steps }),
            Some(_) => Err(Error::Unsupported(
                "pre-tokenizer steps after ByteLevel (ByteLevel must come last)".into(),
            )),
            None => Err(Error::Unsupported(
                "a BPE model without a ByteLevel pre-tokenizer (SentencePiece-style BPE)".into(),
            )),
        }
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

    /// Calls `f` with every non-empty piece of `text`, in order.
    pub fn for_each_piece(&self, text: &str, f: &mut dyn FnMut(&str)) -> Result<()> {
        self.apply(0, text, f)
    }

    fn apply(&self, step: usize, text: &str, f: &mut dyn FnMut(&str)) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        match self.steps.get(step) {
            None => {
                f(text);
                Ok(())
            }
            Some(Step::ByteLevel { add_prefix_space, use_regex }) => {
                let prefixed;
                let text = if *add_prefix_space && !text.starts_with(' ') {
                    prefixed = format!(" {text}");
                    prefixed.as_str()
                } else {
                    text
                };
                if *use_regex {
                    self.split_isolated(gpt2_splitter(), step, text, f)
                } else {
                    self.apply(step + 1, text, f)
                }
            }
            // Isolated keeps every span whatever `invert` says: stream them.
            Some(Step::Split { splitter, behavior: Behavior::Isolated, .. }) => {
                self.split_isolated(splitter, step, text, f)
            }
            Some(Step::Split { splitter, behavior, invert }) => {
                for (start, end) in combine(splitter.spans(text, *invert)?, *behavior) {
                    self.apply(step + 1, &text[start..end], f)?;
                }
                Ok(())
            }
        }
    }

    /// Matches and the gaps between them, each passed on to the next step.
    fn split_isolated(
        &self,
        splitter: &Splitter,
        step: usize,
        text: &str,
        f: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let mut prev = 0;
        let mut result = Ok(());
        splitter.for_each_match(text, |start, end| {
            if result.is_ok() {
                result = self
                    .apply(step + 1, &text[prev..start], f)
                    .and_then(|()| self.apply(step + 1, &text[start..end], f));
            }
            prev = end;
        })?;
        result?;
        self.apply(step + 1, &text[prev..], f)
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
        p.for_each_piece(text, &mut |s| out.push(s.to_string())).unwrap();
        out
    }

    #[test]
    fn gpt2_byte_level_splits_like_the_reference() {
        let p = PreTokenizer::new(vec![Step::ByteLevel { add_prefix_space: false, use_regex: true }])
            .unwrap();
        assert_eq!(pieces(&p, "Hello   world's 123!!"), ["Hello", "  ", " world", "'s", " 123", "!!"]);
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
