//! tiktoken rank files (`<base64 token> <rank>` per line) plus a split pattern and
//! special tokens, as `tiktoken.Encoding` takes them.

use crate::bpe::{rank_splits, Bpe};
use crate::bytelevel;
use crate::error::{Error, Result};
use crate::formats::tokenizer_json::TOKENSMITH_KEY;
use crate::pretokenize::{Dialect, PreTokenizer};
use crate::special::{AddedToken, AddedVocabulary};
use crate::decode::Decoder;
use crate::postprocess::PostProcessor;
use crate::tokenizer::{Tokenizer, Vocab};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Parses rank-file text into (token bytes, rank) pairs.
pub fn parse_ranks(text: &str, source: &str) -> Result<Vec<(Vec<u8>, u32)>> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut ranks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |message: String| Error::format(source, format!("line {}: {message}", i + 1));
        let (token, rank) = line
            .split_once(' ')
            .ok_or_else(|| at("expected \"<base64 token> <rank>\"".into()))?;
        let bytes = engine.decode(token).map_err(|e| at(format!("invalid base64 {token:?} ({e})")))?;
        let rank: u32 = rank
            .trim()
            .parse()
            .map_err(|_| at(format!("invalid rank {rank:?}")))?;
        ranks.push((bytes, rank));
    }
    if ranks.is_empty() {
        return Err(Error::format(source, "no ranks in the file"));
    }
    Ok(ranks)
}

/// A tokenizer equal to `tiktoken.Encoding(pat_str=pattern, mergeable_ranks=ranks,
/// special_tokens=special_tokens)`.
pub fn build(
    ranks: Vec<(Vec<u8>, u32)>,
    pattern: &str,
    special_tokens: &[(String, u32)],
) -> Result<Tokenizer> {
    // Before any table is sized by the largest rank (the fuzzer's rank of 3,333,333,382
    // took the merge tables past 4 GB).
    let limit = Vocab::id_limit(ranks.len() + special_tokens.len());
    if let Some((bytes, rank)) = ranks.iter().find(|(_, rank)| *rank as usize >= limit) {
        return Err(Error::format(
            "",
            format!("rank {rank} of {:?} is far beyond the {} ranks of the file", String::from_utf8_lossy(bytes), ranks.len()),
        ));
    }
    let pre_tokenizer = PreTokenizer::from_pattern(pattern, Dialect::Tiktoken)?;
    let bpe = Bpe::from_ranks(&ranks);
    let merges = merges_from_ranks(&ranks);
    let entries = ranks
        .iter()
        .map(|(bytes, rank)| (bytelevel::encode_bytes(bytes), *rank))
        .chain(special_tokens.iter().cloned());
    let vocab = Vocab::new(entries)?;
    let mut tokenizer = Tokenizer {
        vocab: Arc::new(vocab),
        merges: Arc::new(merges),
        ignore_merges: true,
        bpe: Arc::new(bpe),
        normalizer: None,
        pre_tokenizer,
        post_processor: PostProcessor::default(),
        decoder: Some(Decoder::ByteLevel),
        truncation: None,
        padding: None,
        added: AddedVocabulary::default(),
        passthrough: passthrough(pattern),
    };
    let specials = special_tokens.iter().map(|(content, _)| AddedToken::new(content.clone(), true)).collect();
    tokenizer.add_tokens(specials)?;
    // tiktoken matches every special string, also two on one id (the last one decodes).
    let aliases = special_tokens
        .iter()
        .filter(|(content, id)| tokenizer.added.get(*id).is_some_and(|t| &t.content != content))
        .map(|(content, id)| (*id, AddedToken::new(content.clone(), true)))
        .collect();
    tokenizer.added.add_aliases(aliases)?;
    Ok(tokenizer)
}

/// Merges for the reference loader: every split of a token into two tokens, ordered by the
/// token's rank (then by the ranks of its halves), as transformers' tiktoken converter does.
fn merges_from_ranks(ranks: &[(Vec<u8>, u32)]) -> Vec<(u32, u32)> {
    rank_splits(ranks).into_iter().map(|(_, l, r)| (l, r)).collect()
}

/// The tokenizer.json sections that describe a tiktoken encoding.
fn passthrough(pattern: &str) -> Map<String, Value> {
    // tiktoken's `$` is the end of the text; the reference (Oniguruma) needs `\z` for that.
    let onig_pattern = end_anchors_to_onig(pattern);
    let mut map = Map::new();
    map.insert(TOKENSMITH_KEY.into(), json!({"tiktoken_pattern": pattern}));
    map.insert("normalizer".into(), Value::Null);
    map.insert(
        "pre_tokenizer".into(),
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": onig_pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
    );
    map.insert("post_processor".into(), Value::Null);
    map.insert(
        "decoder".into(),
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
    );
    map
}

/// Rewrites a tiktoken (fancy-regex) pattern for Oniguruma's Ruby syntax, which the
/// reference compiles it with: an unescaped `$` outside character classes becomes `\z`, and
/// a possessive bounded repeat `{n,m}+` at the end of a branch loses its `+` (Ruby reads
/// `{n,m}+` as "one or more times {n,m}": cl100k's `\p{N}{1,3}+` would match any number of
/// digits; at a branch end nothing can backtrack into it, so the plain repeat is the same).
fn end_anchors_to_onig(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let (mut escaped, mut in_class) = (false, false);
    // Where the `{` of a possible repeat opened in `out` (not one of `\p{..}`, `\x{..}`, ...).
    let mut brace: Option<usize> = None;
    let mut after_repeat = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let mut closes_repeat = false;
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => in_class = true,
            ']' => in_class = false,
            '{' if !in_class => brace = (!out.ends_with(['p', 'P', 'x', 'u', 'k', 'g']) || !escaped_before(&out)).then_some(out.len()),
            '}' if !in_class => {
                let body = brace.take().map(|at| &out[at + 1..]);
                closes_repeat = body.is_some_and(|b| {
                    let (lo, hi) = b.split_once(',').unwrap_or((b, "0"));
                    !lo.is_empty() && lo.bytes().all(|d| d.is_ascii_digit()) && hi.bytes().all(|d| d.is_ascii_digit())
                });
            }
            '$' if !in_class => {
                out.push_str("\\z");
                after_repeat = false;
                continue;
            }
            '+' if after_repeat && matches!(chars.peek(), None | Some('|') | Some(')')) => {
                after_repeat = false;
                continue;
            }
            _ => {}
        }
        after_repeat = closes_repeat;
        out.push(c);
    }
    out
}

/// Whether the last char of `out` is escaped (preceded by an odd number of backslashes).
fn escaped_before(out: &str) -> bool {
    let body = &out[..out.len() - out.chars().next_back().map_or(0, char::len_utf8)];
    body.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_translated_outside_classes_only() {
        assert_eq!(end_anchors_to_onig(r"\s++$|[$]|\$"), r"\s++\z|[$]|\$");
        assert_eq!(end_anchors_to_onig(r"\p{N}{1,3}+|a{2}+b|(x{1,2}+)"), r"\p{N}{1,3}|a{2}+b|(x{1,2})");
        // `}` of a class name is no repeat: its `+` stays.
        assert_eq!(end_anchors_to_onig(r" ?\p{L}+| ?\p{N}+|\s+"), r" ?\p{L}+| ?\p{N}+|\s+");
    }

    #[test]
    fn a_rank_far_beyond_the_others_is_an_error_not_gigabytes() {
        let ranks = vec![(b"a".to_vec(), 0), (b"b".to_vec(), 1), (b"ab".to_vec(), 3_333_333_382)];
        let error = build(ranks, r"\w+", &[]).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("rank 3333333382 of \"ab\" is far beyond the 3 ranks"), "{error}");
        // A special token's id is checked with the vocabulary, before it is added.
        let ranks = vec![(b"a".to_vec(), 0), (b"b".to_vec(), 1)];
        assert!(build(ranks, r"\w+", &[("<|end|>".into(), 3_000_000_000)]).is_err());
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let err = parse_ranks("YQ== 0\n!!! 1\n", "x.tiktoken").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
