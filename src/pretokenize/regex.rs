//! The general pattern matcher: any regex a tokenizer.json or a tiktoken encoding names.
//!
//! `fancy-regex` is used because the usual patterns need look-ahead (`\s+(?!\S)`) and
//! possessive quantifiers; patterns without such features are handed to the `regex`
//! crate's automata by fancy-regex itself.

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: fancy_regex::Regex,
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

impl Pattern {
    pub fn new(source: &str, dialect: Dialect) -> Result<Self> {
        let translated = match dialect {
            Dialect::Oniguruma => format!("(?m:{source})"),
            Dialect::Tiktoken => source.to_string(),
        };
        let regex = fancy_regex::RegexBuilder::new(&translated)
            // Long runs without a break (10 MB of letters) must not fail on the default limit
            // (the matching stays linear for the usual patterns), but a pattern that truly
            // backtracks, such as `(a+)+(?=b)` from a hostile file, must end: it fails with
            // an error naming the pattern after about a second of steps, never hangs.
            .backtrack_limit(BACKTRACK_LIMIT)
            .build()
            .map_err(|e| Error::Invalid(format!("invalid pre-tokenizer pattern {source:?}: {e}")))?;
        Ok(Pattern { source: source.to_string(), regex })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Calls `f(start, end)` for every non-overlapping match, left to right.
    pub fn for_each_match(&self, text: &str, mut f: impl FnMut(usize, usize)) -> Result<()> {
        for m in self.regex.find_iter(text) {
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
