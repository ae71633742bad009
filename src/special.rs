//! Added tokens: the vocabulary a user adds on top of the model, and the matcher that finds
//! them in text.
//!
//! Matching follows Hugging Face `tokenizers` (`AddedVocabulary`) exactly: tokens with
//! `normalized: false` are found in the raw text first, then the rest is normalized and
//! tokens with `normalized: true` are found in it; each pass is one leftmost-longest
//! Aho-Corasick scan, with the `single_word`, `lstrip` and `rstrip` flags applied to each
//! match. The special-token policy (allow / text / raise / an allowed set) is decided in
//! the same pass, so untrusted text costs nothing extra.

use crate::error::{Error, Result};
use aho_corasick::{AhoCorasick, AhoCorasickKind, Anchored, Input, Match, MatchKind, StartKind};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddedToken {
    pub content: String,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub special: bool,
}

impl AddedToken {
    /// The reference's defaults: special tokens are not normalized, the others are.
    pub fn new(content: impl Into<String>, special: bool) -> Self {
        AddedToken {
            content: content.into(),
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: !special,
            special,
        }
    }
}

/// What to do with special tokens found in text. Non-special added tokens always match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SpecialPolicy {
    /// Special tokens in text become their ids (the reference behaviour).
    #[default]
    Allow,
    /// Special tokens in text are plain text (`encode_special_tokens = True` in the reference).
    Text,
    /// A special token in text is an error.
    Raise,
    /// Only these special tokens (by id) become ids; the others are plain text.
    Only(FxHashSet<u32>),
}

/// A piece of input after added-token matching.
pub enum Segment<'a> {
    Text(&'a str),
    /// An added token's id and the byte range of its match (with stripped spaces).
    Token(u32, usize, usize),
}

/// Byte ranges of the input (content spliced into a template) where special tokens are
/// text whatever the policy says.
#[derive(Debug, Clone, Copy)]
pub struct Protect<'a> {
    protected: Protected<'a>,
    /// Where the text being matched starts in the input.
    base: usize,
    /// For text whose positions do not map back to the input (it was normalized): the
    /// input range it came from, all of it protected if any of it is.
    whole: Option<(usize, usize)>,
}

/// Input byte ranges (sorted, not overlapping) where special tokens are plain text whatever
/// the policy, except the `allowed` ones: user content spliced into a template, where the
/// template's own markers must not be injected but a user's task tokens may be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Protected<'a> {
    pub ranges: &'a [(usize, usize)],
    pub allowed: Option<&'a FxHashSet<u32>>,
}

impl<'a> Protected<'a> {
    pub const NONE: Protected<'static> = Protected { ranges: &[], allowed: None };
}

impl<'a> Protect<'a> {
    pub fn exact(protected: Protected<'a>, base: usize) -> Self {
        Protect { protected, base, whole: None }
    }

    pub fn whole(protected: Protected<'a>, start: usize, end: usize) -> Self {
        Protect { protected, base: start, whole: Some((start, end)) }
    }

    fn covers(&self, start: usize, end: usize, id: u32) -> bool {
        let ranges = self.protected.ranges;
        if ranges.is_empty() || self.protected.allowed.is_some_and(|allowed| allowed.contains(&id)) {
            return false;
        }
        let (start, end) = self.whole.unwrap_or((self.base + start, self.base + end));
        // The first range ending after `start` is the only candidate for an overlap.
        let i = ranges.partition_point(|&(_, e)| e <= start);
        ranges.get(i).is_some_and(|&(s, _)| s < end)
    }
}

#[derive(Debug, Clone)]
struct Matcher {
    automaton: AhoCorasick,
    ids: Vec<u32>,
    /// When no token starts with an ASCII byte: by byte, whether some token starts with it.
    /// Then only the positions whose byte starts some token (a table scan skips the rest,
    /// ASCII runs and other scripts) are searched, anchored (`matches`): 30,000 added
    /// Chinese words cost English and code text 8-17% of their speed, spent scanning for
    /// matches that cannot start there. (A set with an ASCII start such as `<|...|>` is
    /// searched as usual: for a few tokens the automaton's own prefilter, a `memchr`, is
    /// faster than a table scan.)
    starts: Option<Box<[bool; 256]>>,
    /// Every token it finds is special: with `SpecialPolicy::Text` every match would be
    /// skipped, so the text is not searched at all (a Llama 3 encode with `special="text"`
    /// spent its time scanning for 256 tokens it then ignored).
    only_specials: bool,
}

impl Matcher {
    fn build(patterns: Vec<(String, u32)>, only_specials: bool) -> Result<Option<Matcher>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let (texts, ids): (Vec<String>, Vec<u32>) = patterns.into_iter().unzip();
        // The DFA the builder picks for a few patterns is the fastest to search, but its build
        // is quadratic in a long pattern (one 32 KB token: 37 s): such sets get the NFA,
        // whose build is linear.
        let long = texts.iter().any(|t| t.len() > 512);
        // An empty token would match anywhere: it counts as an ASCII start.
        let no_ascii_start = texts.iter().all(|t| t.as_bytes().first().is_some_and(|b| !b.is_ascii()));
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(long.then_some(AhoCorasickKind::ContiguousNFA))
            .start_kind(if no_ascii_start { StartKind::Anchored } else { StartKind::Unanchored })
            .build(&texts)
            .map_err(|e| Error::Invalid(format!("cannot build the added-token matcher: {e}")))?;
        let starts = no_ascii_start.then(|| {
            let mut starts = Box::new([false; 256]);
            for text in &texts {
                starts[text.as_bytes()[0] as usize] = true;
            }
            starts
        });
        Ok(Some(Matcher { automaton, ids, starts, only_specials }))
    }

    /// The leftmost-longest matches in `text`, left to right, as `find_iter` gives them.
    fn matches<'t>(&'t self, text: &'t str) -> Matches<'t> {
        match &self.starts {
            None => Matches::Plain(self.automaton.find_iter(text)),
            Some(starts) => Matches::AtStarts { automaton: &self.automaton, starts, text, at: 0 },
        }
    }
}

enum Matches<'t> {
    Plain(aho_corasick::FindIter<'t, 't>),
    AtStarts { automaton: &'t AhoCorasick, starts: &'t [bool; 256], text: &'t str, at: usize },
}

impl Iterator for Matches<'_> {
    type Item = Match;

    fn next(&mut self) -> Option<Match> {
        match self {
            Matches::Plain(matches) => matches.next(),
            Matches::AtStarts { automaton, starts, text, at } => loop {
                // The first match at or after a position is the longest anchored match at
                // the first position that has one.
                *at += text.as_bytes().get(*at..)?.iter().position(|&b| starts[b as usize])?;
                let input = Input::new(*text).span(*at..text.len()).anchored(Anchored::Yes);
                match automaton.find(input) {
                    Some(m) => {
                        *at = m.end();
                        return Some(m);
                    }
                    None => *at += 1,
                }
            },
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AddedVocabulary {
    tokens: BTreeMap<u32, AddedToken>,
    ids: FxHashMap<String, u32>,
    /// The normalized form of `normalized: true` tokens where it differs from the content:
    /// what they are matched as, and what `decode` shows.
    normalized_forms: FxHashMap<u32, String>,
    specials: FxHashSet<String>,
    /// More strings matched as an id whose own token is another string: tiktoken allows
    /// two special-token strings on one id (gpt-oss's o200k_harmony). The reference
    /// tokenizer.json semantics keep only the last token of an id, so only tiktoken
    /// encodings have aliases.
    aliases: Vec<(u32, AddedToken)>,
    /// Normalized tokens matched by their content as spelled (see `match_literally`).
    literal: std::collections::BTreeSet<u32>,
    raw: Option<Matcher>,
    normalized: Option<Matcher>,
}

/// `\w` as the `regex` crate defines it, which is what the reference tests here.
fn is_word_char(c: char) -> bool {
    use std::sync::OnceLock;
    static WORD: OnceLock<regex::Regex> = OnceLock::new();
    let mut buf = [0u8; 4];
    WORD.get_or_init(|| regex::Regex::new(r"^\w$").expect("valid pattern"))
        .is_match(c.encode_utf8(&mut buf))
}

impl AddedVocabulary {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> impl Iterator<Item = (u32, &AddedToken)> {
        self.tokens.iter().map(|(id, t)| (*id, t))
    }

    pub fn get(&self, id: u32) -> Option<&AddedToken> {
        self.tokens.get(&id)
    }

    pub fn id_of(&self, content: &str) -> Option<u32> {
        self.ids.get(content).copied()
    }

    pub fn is_special(&self, content: &str) -> bool {
        self.specials.contains(content)
    }

    pub fn max_id(&self) -> Option<u32> {
        self.tokens.keys().next_back().copied()
    }

    /// The string `decode` uses for an added token.
    pub fn decode_form(&self, id: u32) -> Option<&str> {
        self.normalized_forms
            .get(&id)
            .map(String::as_str)
            .or_else(|| self.tokens.get(&id).map(|t| t.content.as_str()))
    }

    /// Adds tokens as the reference does and returns each token's id (existing tokens keep
    /// theirs; a content that is in the model vocabulary takes the model's id; an empty
    /// content gets `None`). `model_id` looks a string up in the model vocabulary,
    /// `model_size` is its entry count, `normalize` is the tokenizer's normalizer.
    pub fn add(
        &mut self,
        tokens: Vec<AddedToken>,
        model_id: impl Fn(&str) -> Option<u32>,
        model_size: u32,
        normalize: impl Fn(&str) -> String,
    ) -> Result<Vec<Option<u32>>> {
        let mut next_id = match self.max_id() {
            Some(max) if max >= model_size || model_size == 0 => max + 1,
            _ => model_size,
        };
        let mut ids = Vec::with_capacity(tokens.len());
        for token in tokens {
            if token.content.is_empty() {
                ids.push(None);
                continue;
            }
            let id = match self.ids.get(&token.content).copied().or_else(|| model_id(&token.content)) {
                Some(id) => id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            if self.tokens.get(&id) == Some(&token) {
                ids.push(Some(id));
                continue;
            }
            if token.normalized && !self.literal.contains(&id) {
                let normalized = normalize(&token.content);
                if normalized != token.content {
                    self.normalized_forms.insert(id, normalized);
                }
            }
            if token.special {
                self.specials.insert(token.content.clone());
            }
            self.ids.insert(token.content.clone(), id);
            self.tokens.insert(id, token);
            ids.push(Some(id));
        }
        self.rebuild()?;
        Ok(ids)
    }

    /// Makes each token match as its id, which must be an added token's; the id keeps
    /// that token's decode form.
    pub fn add_aliases(&mut self, aliases: Vec<(u32, AddedToken)>) -> Result<()> {
        for (id, token) in aliases {
            if !self.tokens.contains_key(&id) {
                return Err(Error::Invalid(format!("alias {:?}: id {id} is not an added token", token.content)));
            }
            if self.ids.get(&token.content).is_some_and(|&other| other != id) {
                return Err(Error::Invalid(format!("alias {:?} is already another token", token.content)));
            }
            if token.special {
                self.specials.insert(token.content.clone());
            }
            self.ids.insert(token.content.clone(), id);
            self.aliases.push((id, token));
        }
        self.rebuild()
    }

    /// Makes these `normalized` tokens match their content as it is spelled, not its
    /// normalized form (SentencePiece's user-defined pieces).
    pub fn match_literally(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            match self.tokens.get(id) {
                Some(t) if t.normalized => {
                    self.normalized_forms.remove(id);
                    self.literal.insert(*id);
                }
                _ => return Err(Error::Invalid(format!("id {id} is not a normalized added token"))),
            }
        }
        self.rebuild()
    }

    pub fn literal(&self) -> impl Iterator<Item = u32> + '_ {
        self.literal.iter().copied()
    }

    pub fn aliases(&self) -> &[(u32, AddedToken)] {
        &self.aliases
    }

    fn rebuild(&mut self) -> Result<()> {
        // One pattern per match form. Where two tokens match the same text (two normalized
        // tokens with one normalized form), the reference picks either, by hash-map order
        // (it changes from run to run); here the one with the higher id, every time.
        let (mut raw, mut normalized) = (FxHashMap::default(), FxHashMap::default());
        for (id, token) in &self.aliases {
            raw.insert(token.content.clone(), *id);
        }
        for (&id, token) in &self.tokens {
            if token.normalized {
                let form = self.normalized_forms.get(&id).unwrap_or(&token.content);
                normalized.insert(form.clone(), id);
            } else {
                raw.insert(token.content.clone(), id);
            }
        }
        let only_specials = |patterns: &FxHashMap<String, u32>| {
            patterns.values().all(|id| self.tokens.get(id).is_none_or(|t| self.specials.contains(&t.content)))
        };
        let (raw_special, normalized_special) = (only_specials(&raw), only_specials(&normalized));
        self.raw = Matcher::build(raw.into_iter().collect(), raw_special)?;
        self.normalized = Matcher::build(normalized.into_iter().collect(), normalized_special)?;
        Ok(())
    }

    /// Splits raw text around `normalized: false` tokens.
    pub fn split_raw(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protect: Protect,
        f: &mut dyn FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        self.split(self.raw.as_ref(), text, policy, protect, f)
    }

    /// Splits normalized text around `normalized: true` tokens.
    pub fn split_normalized(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protect: Protect,
        f: &mut dyn FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        self.split(self.normalized.as_ref(), text, policy, protect, f)
    }

    fn split(
        &self,
        matcher: Option<&Matcher>,
        text: &str,
        policy: &SpecialPolicy,
        protect: Protect,
        f: &mut dyn FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        let searched = matcher.filter(|m| !(m.only_specials && *policy == SpecialPolicy::Text));
        let Some(matcher) = searched else {
            return if text.is_empty() { Ok(()) } else { f(Segment::Text(text)) };
        };
        let mut done = 0; // end of the last emitted token
        for m in matcher.matches(text) {
            let (mut start, mut stop) = (m.start(), m.end());
            let id = matcher.ids[m.pattern().as_usize()];
            // An alias has no flags of its own: it matches as plainly as tiktoken matches it.
            let Some(token) = self.tokens.get(&id) else { continue };
            let special = self.specials.contains(&token.content);
            if special {
                match policy {
                    SpecialPolicy::Allow => {}
                    SpecialPolicy::Text => continue,
                    SpecialPolicy::Only(allowed) if !allowed.contains(&id) => continue,
                    SpecialPolicy::Only(_) => {}
                    SpecialPolicy::Raise => {}
                }
                if protect.covers(start, stop, id) {
                    continue;
                }
            }
            if token.single_word {
                let word_before = text[..start].chars().next_back().is_some_and(is_word_char);
                let word_after = text[stop..].chars().next().is_some_and(is_word_char);
                if word_before || word_after {
                    continue;
                }
            }
            if special && *policy == SpecialPolicy::Raise {
                return Err(Error::SpecialToken {
                    token: token.content.clone(),
                    offset: text[..start].chars().count(),
                });
            }
            if token.lstrip {
                let before = &text[..start];
                let spaces: usize = before
                    .chars()
                    .rev()
                    .take_while(|c| c.is_whitespace())
                    .map(char::len_utf8)
                    .sum();
                start = (start - spaces).max(done);
            }
            if token.rstrip {
                stop += text[stop..]
                    .chars()
                    .take_while(|c| c.is_whitespace())
                    .map(char::len_utf8)
                    .sum::<usize>();
            }
            if done < start {
                f(Segment::Text(&text[done..start]))?;
            }
            // lstrip can push `start` up to the end of the previous token's rstrip: such an
            // empty match is dropped, as the reference drops empty splits.
            if start < stop {
                f(Segment::Token(id, start, stop))?;
            }
            done = stop;
        }
        if done < text.len() {
            f(Segment::Text(&text[done..]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: Vec<AddedToken>) -> AddedVocabulary {
        let mut v = AddedVocabulary::default();
        v.add(tokens, |_| None, 100, |s| s.to_string()).unwrap();
        v
    }

    fn segments(v: &AddedVocabulary, text: &str, policy: &SpecialPolicy) -> Result<Vec<String>> {
        let mut out = Vec::new();
        v.split_raw(text, policy, Protect::exact(Protected::NONE, 0), &mut |s| {
            out.push(match s {
                Segment::Text(t) => t.to_string(),
                Segment::Token(id, _, _) => format!("#{id}"),
            });
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn text_policy_skips_the_search_only_when_every_token_is_special() {
        let specials = vocab(vec![AddedToken::new("<|a|>", true), AddedToken::new("<|b|>", true)]);
        assert!(specials.raw.as_ref().unwrap().only_specials);
        assert_eq!(segments(&specials, "x<|a|>y<|b|>", &SpecialPolicy::Text).unwrap(), ["x<|a|>y<|b|>"]);
        assert_eq!(segments(&specials, "x<|a|>y", &SpecialPolicy::Allow).unwrap(), ["x", "#100", "y"]);
        // A plain token among them is still found with special tokens as text.
        let mut mixed = specials.clone();
        let plain = AddedToken { normalized: false, ..AddedToken::new("<|p|>", false) };
        mixed.add(vec![plain], |_| None, 102, |s| s.to_string()).unwrap();
        assert!(!mixed.raw.as_ref().unwrap().only_specials);
        assert_eq!(segments(&mixed, "x<|a|>y<|p|>", &SpecialPolicy::Text).unwrap(), ["x<|a|>y", "#102"]);
    }

    #[test]
    fn tokens_that_start_outside_ascii_are_not_searched_for_in_ascii_text() {
        let raw = |content: &str| AddedToken { normalized: false, ..AddedToken::new(content, false) };
        let v = vocab(vec![raw("数据"), raw("é!"), raw("数据集"), raw("据集合")]);
        assert!(v.raw.as_ref().unwrap().starts.is_some());
        assert_eq!(segments(&v, "data, 数据!", &SpecialPolicy::Allow).unwrap(), ["data, ", "#100", "!"]);
        assert_eq!(segments(&v, "café!é", &SpecialPolicy::Allow).unwrap(), ["caf", "#101", "é"]);
        assert_eq!(segments(&v, "data", &SpecialPolicy::Allow).unwrap(), ["data"]);
        // The anchored steps find what the plain search finds: leftmost first, then
        // longest, the next search after the match.
        let matcher = v.raw.as_ref().unwrap();
        let plain = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(["数据", "é!", "数据集", "据集合"]).unwrap();
        let mut state = 3u32;
        for len in 0..200 {
            let text: String = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    ['数', '据', '集', '合', 'é', '!', 'a', ' '][(state >> 16) as usize % 8]
                })
                .collect();
            let spans = |ms: Vec<Match>| ms.iter().map(|m| (m.start(), m.end())).collect::<Vec<_>>();
            assert_eq!(spans(matcher.matches(&text).collect()), spans(plain.find_iter(&text).collect()), "{text}");
        }
        let v = vocab(vec![raw("数据"), AddedToken::new("<x>", true)]);
        assert!(v.raw.as_ref().unwrap().starts.is_none());
        assert_eq!(segments(&v, "a<x>", &SpecialPolicy::Allow).unwrap(), ["a", "#101"]);
    }

    #[test]
    fn longest_match_wins_and_policies_apply() {
        let v = vocab(vec![AddedToken::new("<|a|>", true), AddedToken::new("<|a|><|b|>", true)]);
        assert_eq!(segments(&v, "x<|a|><|b|>y", &SpecialPolicy::Allow).unwrap(), ["x", "#101", "y"]);
        assert_eq!(segments(&v, "x<|a|>", &SpecialPolicy::Text).unwrap(), ["x<|a|>"]);
        assert_eq!(
            segments(&v, "é<|a|>", &SpecialPolicy::Raise),
            Err(Error::SpecialToken { token: "<|a|>".into(), offset: 1 })
        );
    }

    #[test]
    fn strip_flags_take_whitespace_and_single_word_needs_boundaries() {
        let mut t = AddedToken::new("<m>", true);
        t.lstrip = true;
        t.rstrip = true;
        let mut w = AddedToken::new("cat", true);
        w.single_word = true;
        let v = vocab(vec![t, w]);
        assert_eq!(segments(&v, "a  <m>  b", &SpecialPolicy::Allow).unwrap(), ["a", "#100", "b"]);
        assert_eq!(segments(&v, "cats cat", &SpecialPolicy::Allow).unwrap(), ["cats ", "#101"]);
    }

    #[test]
    fn a_match_swallowed_by_the_previous_rstrip_is_dropped() {
        let mut space = AddedToken::new(" ", false);
        space.lstrip = true;
        space.rstrip = true;
        space.normalized = false;
        let v = vocab(vec![space]);
        assert_eq!(segments(&v, "  ", &SpecialPolicy::Allow).unwrap(), ["#100"]);
        assert_eq!(segments(&v, "a  b", &SpecialPolicy::Allow).unwrap(), ["a", "#100", "b"]);
    }
}
