//! The pipeline: added-token matching, normalization, pre-tokenization, BPE,
//! post-processing; and the reverse, decoding.

use crate::bpe::cache::SHORT_MAX;
use crate::bpe::{Bpe, PieceEncoder};
use crate::decode::Decoder;
use crate::error::{Error, Result};
use crate::normalize::{self, Normalizer};
use crate::postprocess::{trim_offsets, Padding, PostProcessor, TemplatePiece, Truncation};
use crate::pretokenize::{Context, PreTokenizer};
use crate::special::{AddedToken, AddedVocabulary, Protect, Protected, Segment as AddedSegment, SpecialPolicy};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The model vocabulary: every id with its string as the file spells it.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// id -> string; `None` for ids the vocabulary skips (tiktoken files have holes).
    pub tokens: Vec<Option<String>>,
    pub ids: FxHashMap<String, u32>,
}

impl Vocab {
    /// The ids a vocabulary of `entries` strings may use: below this. The id tables have a
    /// slot for every id up to the largest, and one id of 2^31 in a file would take
    /// gigabytes (an abort, not an error). Real vocabularies have few holes.
    pub fn id_limit(entries: usize) -> usize {
        entries.saturating_mul(2).max(entries + (1 << 20))
    }

    pub fn new(entries: impl IntoIterator<Item = (String, u32)>) -> Result<Self> {
        let entries: Vec<(String, u32)> = entries.into_iter().collect();
        let limit = Self::id_limit(entries.len());
        if let Some((token, id)) = entries.iter().find(|(_, id)| *id as usize >= limit) {
            return Err(Error::format(
                "",
                format!("model.vocab: id {id} of {token:?} is far beyond the {} entries of the vocabulary", entries.len()),
            ));
        }
        let mut tokens: Vec<Option<String>> = Vec::with_capacity(entries.len());
        let mut ids = FxHashMap::default();
        for (token, id) in entries {
            let slot = id as usize;
            if tokens.len() <= slot {
                tokens.resize(slot + 1, None);
            }
            if ids.insert(token.clone(), id).is_some() {
                return Err(Error::format("", format!("model.vocab: token {token:?} appears twice")));
            }
            // Two strings may share an id (gpt-oss's o200k_harmony): both encode to it, and
            // the first one spells it.
            if tokens[slot].is_none() {
                tokens[slot] = Some(token);
            }
        }
        Ok(Vocab { tokens, ids })
    }

    /// Distinct strings, as the reference counts the vocabulary.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn get(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).and_then(|t| t.as_deref())
    }
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    // The model is shared between clones: adding tokens copies only the added vocabulary.
    pub vocab: Arc<Vocab>,
    /// Merges as (left, right) ids in rank order, kept to write tokenizer.json back.
    pub merges: Arc<Vec<(u32, u32)>>,
    pub ignore_merges: bool,
    pub bpe: Arc<Bpe>,
    pub normalizer: Option<Normalizer>,
    pub pre_tokenizer: PreTokenizer,
    pub post_processor: PostProcessor,
    pub decoder: Option<Decoder>,
    pub truncation: Option<Truncation>,
    pub padding: Option<Padding>,
    pub added: AddedVocabulary,
    /// The tokenizer.json sections this core reads but does not rewrite, kept verbatim for
    /// `save` (normalizer, pre_tokenizer, post_processor, decoder, model settings, and
    /// unknown keys).
    pub passthrough: serde_json::Map<String, serde_json::Value>,
}

/// Char indices (what Python indexes by) of byte offsets asked for mostly in increasing
/// order, as token offsets come: the chars between one offset and the next are counted as
/// the cursor moves, so a text costs one pass over its bytes. (A table of every char's
/// byte offset and a binary search per token was a fifth of a Chinese chat's
/// `encode_labeled`.) ASCII needs no counting: a char's index is its byte offset.
pub struct CharCursor<'a> {
    text: &'a [u8],
    ascii: bool,
    /// A byte offset and the number of chars that start before it.
    byte: usize,
    chars: usize,
}

impl<'a> CharCursor<'a> {
    pub fn new(s: &'a str) -> Self {
        CharCursor { text: s.as_bytes(), ascii: s.is_ascii(), byte: 0, chars: 0 }
    }

    /// How many chars start before byte `b` (an end offset in chars).
    pub fn chars_before(&mut self, b: usize) -> usize {
        let b = b.min(self.text.len());
        if self.ascii {
            return b;
        }
        // A char starts at every byte that is not a UTF-8 continuation byte (0b10xxxxxx).
        let starts = |bytes: &[u8]| bytes.iter().filter(|&&x| (x as i8) >= -0x40).count();
        if b >= self.byte {
            self.chars += starts(&self.text[self.byte..b]);
        } else {
            self.chars -= starts(&self.text[b..self.byte]);
        }
        self.byte = b;
        self.chars
    }

    /// Char index of the char containing byte `b` (past the end: the number of chars).
    pub fn char(&mut self, b: usize) -> usize {
        match b < self.text.len() {
            true => self.chars_before(b + 1) - 1,
            false => self.chars_before(b),
        }
    }
}

/// Char ranges of `s` as byte ranges: sorted, empty ones dropped, overlapping ones merged
/// (so that the added-token matcher can binary-search them). Indices past the end clamp.
/// One walk over the chars converts every end point.
pub fn byte_ranges(s: &str, char_ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = char_ranges.iter().flat_map(|&(a, b)| [a, b]).collect();
    points.sort_unstable();
    points.dedup();
    let bytes: Vec<usize> = if s.is_ascii() {
        points.iter().map(|&p| p.min(s.len())).collect()
    } else {
        // The byte offset of char k is the k-th item (the end: the text's length).
        let mut starts = s.char_indices().map(|(b, _)| b).chain([s.len()]);
        let (mut k, mut current) = (0, starts.next());
        points
            .iter()
            .map(|&p| {
                if p > k {
                    current = starts.nth(p - k - 1);
                    k = p;
                }
                current.unwrap_or(s.len())
            })
            .collect()
    };
    let byte = |i: usize| bytes[points.binary_search(&i).expect("every end point was converted")];
    let mut ranges: Vec<(usize, usize)> =
        char_ranges.iter().map(|&(a, b)| (byte(a), byte(b))).filter(|(a, b)| a < b).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// A text in a batch of at least this many bytes is encoded in sections on every core
/// (`encode_sections`): fewer, and the other documents of the batch keep the cores busy.
const SECTIONS_FROM: usize = 256 << 10;
/// About this many bytes of pieces in a section: 0.2-0.5 ms of BPE, against a few
/// microseconds to hand a task to another thread.
const SECTION_BYTES: usize = 64 << 10;

/// What `encode` makes of a text before BPE.
enum Item<'a> {
    /// An added token's id.
    Token(u32),
    /// A pre-tokenized piece's bytes.
    Piece(&'a [u8]),
}

/// Where encoded ids go, with each token's byte range in the input if asked.
struct Sink<'a> {
    ids: &'a mut Vec<u32>,
    offsets: Option<&'a mut Vec<(usize, usize)>>,
}

impl Sink<'_> {
    fn push(&mut self, id: u32, span: (usize, usize)) {
        self.ids.push(id);
        if let Some(offsets) = self.offsets.as_mut() {
            offsets.push(span);
        }
    }
}

/// Whether each token, by its (start, end) offsets, overlaps one of `regions` (start, end):
/// a token with no chars of its own (start == end) counts as the char it stands at.
pub fn labeled_tokens(offsets: &[(usize, usize)], mut regions: Vec<(usize, usize)>) -> Vec<bool> {
    // Regions by start, with the furthest end among each prefix of them: a token overlaps
    // some region exactly when the regions that start before its end reach past its start.
    regions.sort_unstable();
    let reach: Vec<usize> = regions.iter().scan(0, |far, &(_, end)| {
        *far = end.max(*far);
        Some(*far)
    }).collect();
    offsets
        .iter()
        .map(|&(start, end)| {
            let before = regions.partition_point(|&(s, _)| s < end.max(start + 1));
            before > 0 && reach[before - 1] > start
        })
        .collect()
}

/// Byte offset of `part` in `whole` when it is a slice of it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    (p >= w && p + part.len() <= w + whole.len()).then(|| p - w)
}

/// A normalized segment of the input, and how its bytes map back to the input.
struct Segment<'a> {
    text: Cow<'a, str>,
    /// Where the raw segment starts in the input.
    start: usize,
    /// Per byte of `text`, its input range relative to `start` (offsets only); `None`
    /// where `text` is the raw segment unchanged, each byte standing for itself.
    align: Option<Vec<(usize, usize)>>,
}

impl Segment<'_> {
    /// How the `protected` input ranges apply to this segment, which was `raw_len` input
    /// bytes: exactly where its text is the input's; in a changed (normalized) text,
    /// positions do not map back without alignments, so any overlap protects it all, with
    /// offsets or without (so that offsets never change the ids).
    fn protect<'p>(&self, protected: Protected<'p>, raw_len: usize) -> Protect<'p> {
        match &self.text {
            Cow::Borrowed(_) => Protect::exact(protected, self.start),
            Cow::Owned(_) => Protect::whole(protected, self.start, self.start + raw_len),
        }
    }

    /// `error` from matching in this segment, a special token's offset made the text's
    /// (counted only on error: the segment's char offset in `text`).
    fn error_in(&self, text: &str, error: Error) -> Error {
        match error {
            Error::SpecialToken { token, offset } => {
                Error::SpecialToken { token, offset: offset + text[..self.start].chars().count() }
            }
            other => other,
        }
    }

    /// The input byte range of the normalized bytes `from..to` (`to > from`).
    fn span(&self, from: usize, to: usize) -> (usize, usize) {
        match &self.align {
            Some(align) => (self.start + align[from].0, self.start + align[to - 1].1),
            None => (self.start + from, self.start + to),
        }
    }
}

/// Whether the memory a long text needs can be had: a text too long for the memory left
/// must be an `Error::Memory` (Python's `MemoryError`), not an abort in whichever of the
/// text-sized allocations comes first (normalized and byte-level copies, ids, and with
/// offsets the alignments and offsets). Reserving their sum in one block and
/// freeing it at once checks that it fits: untouched, it costs no memory. The sum, per
/// input byte, is measured on English and CJK with gpt2, llama2 and qwen2 (5-12.5 bytes
/// without offsets, 32-87 with them, the ids in Python lists included), and it stays below
/// what the Python result needs anyway, so no text that could be encoded is refused. The
/// BPE of one long piece reserves its own tables (`Bpe::merge_heap`, `backtrack`).
fn check_working_memory(len: usize, offsets: bool) -> Result<()> {
    Error::check_memory(len.saturating_mul(if offsets { 32 } else { 8 }), || format!("encoding a text of {len} bytes"))
}

/// The ids `encode` reserves for a text of `len` bytes: a third of its bytes (English takes
/// about a quarter), and room for the first batch of pieces from the cache (3 ids a piece,
/// see `ModelCache::first_way_hits`), so that a short text's ids are not moved once. The one
/// realloc a document it saved: per-doc warm (`profile_docs`, 500 kB of English, Llama 3)
/// 17.31 M -> 15.96 M instructions.
fn first_capacity(len: usize) -> usize {
    (len / 3).max(3 * len.min(64)) + 4
}

impl Tokenizer {
    /// The ids of `text`, truncated and padded as the tokenizer's settings say.
    pub fn encode(&self, text: &str, policy: &SpecialPolicy, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encode_reusing(text, policy, add_special_tokens, &mut ids)?;
        Ok(ids)
    }

    /// `encode` into `ids`, which is cleared first: a caller that copies the ids out (into a
    /// Python list) keeps one vector for many calls, without an allocation each.
    pub fn encode_reusing(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        add_special_tokens: bool,
        ids: &mut Vec<u32>,
    ) -> Result<()> {
        ids.clear();
        Error::reserve(ids, first_capacity(text.len()), "the ids of the text")?;
        self.encode_onto(text, policy, add_special_tokens, ids)?;
        if let Some(padding) = &self.padding {
            padding.apply(padding.target(ids.len()), ids, None);
        }
        Ok(())
    }

    /// The ids of `text` and each token's (start, end) char indices in it (the reference's
    /// offsets, as its Python API gives them), with special tokens treated as text inside
    /// the `protected` ranges (but the ones allowed there) whatever the policy says: for
    /// content spliced into a template.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: Protected,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let (mut ids, mut offsets) = (Vec::new(), Vec::new());
        self.run(text, policy, protected, add_special_tokens, Sink { ids: &mut ids, offsets: Some(&mut offsets) })?;
        if let Some(padding) = &self.padding {
            padding.apply(padding.target(ids.len()), &mut ids, Some(&mut offsets));
        }
        Ok((ids, offsets))
    }

    pub fn encode_batch(
        &self,
        texts: &[&str],
        policy: &SpecialPolicy,
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let mut batch: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|t| {
                let mut ids = Vec::new();
                Error::reserve(&mut ids, t.len() / 3 + 4, "the ids of the text")?;
                self.encode_onto(t, policy, add_special_tokens, &mut ids)?;
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        if let Some(padding) = &self.padding {
            let target = padding.target(batch.iter().map(Vec::len).max().unwrap_or(0));
            batch.iter_mut().for_each(|ids| padding.apply(target, ids, None));
        }
        Ok(batch)
    }

    /// Appends the ids of `text` to `ids`, truncated and wrapped in the template but not
    /// padded (padding depends on the rest of a batch: `pads`).
    pub fn encode_onto(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        add_special_tokens: bool,
        ids: &mut Vec<u32>,
    ) -> Result<()> {
        self.run(text, policy, Protected::NONE, add_special_tokens, Sink { ids, offsets: None })
    }

    /// Whether encoding pads ids to a length.
    pub fn pads(&self) -> bool {
        self.padding.is_some()
    }

    /// Encode, truncate, wrap in the template: everything but padding.
    fn run(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: Protected,
        add_special_tokens: bool,
        sink: Sink,
    ) -> Result<()> {
        check_working_memory(text.len(), sink.offsets.is_some())?;
        let template = if add_special_tokens { self.post_processor.template.as_deref() } else { None };
        if sink.offsets.is_none() && template.is_none() && self.truncation.is_none() {
            // The common case: straight into the caller's ids.
            return self.encode_into(text, policy, protected, &mut Sink { ids: sink.ids, offsets: None });
        }
        let Sink { ids, mut offsets } = sink;
        let mut body_offsets = Vec::new();
        let mut body = Vec::new();
        Error::reserve(&mut body, text.len() / 3 + 4, "the ids of the text")?;
        let track = offsets.is_some();
        self.encode_into(
            text,
            policy,
            protected,
            &mut Sink { ids: &mut body, offsets: track.then_some(&mut body_offsets) },
        )?;
        if let Some(truncation) = &self.truncation {
            let added = template.map_or(0, |_| self.post_processor.added_len());
            truncation.apply(added, &mut body, track.then_some(&mut body_offsets))?;
        }
        if track {
            // As the reference: offsets become char indices, then (after truncation, which
            // decides the first token) lose their spaces.
            let mut chars = CharCursor::new(text);
            for o in body_offsets.iter_mut() {
                let start = chars.char(o.0);
                *o = (start, chars.chars_before(o.1));
            }
            if let Some(add_prefix_space) = self.post_processor.trim_offsets {
                let tokens: Vec<&str> = body.iter().map(|&id| self.id_to_token(id).unwrap_or("")).collect();
                trim_offsets(&tokens, &mut body_offsets, add_prefix_space);
            }
        }
        let Some(pieces) = template else {
            ids.extend_from_slice(&body);
            if let Some(o) = offsets.as_mut() {
                o.extend_from_slice(&body_offsets);
            }
            return Ok(());
        };
        ids.reserve(body.len() + self.post_processor.added_len());
        for piece in pieces {
            match piece {
                TemplatePiece::Ids(special) => {
                    ids.extend_from_slice(special);
                    if let Some(o) = offsets.as_mut() {
                        o.extend(std::iter::repeat((0, 0)).take(special.len()));
                    }
                }
                TemplatePiece::Sequence => {
                    ids.extend_from_slice(&body);
                    if let Some(o) = offsets.as_mut() {
                        o.extend_from_slice(&body_offsets);
                    }
                }
            }
        }
        Ok(())
    }

    /// The normalized form of a raw segment that starts at byte `start` of the input.
    fn normalize_segment<'a>(&self, raw: &'a str, start: usize, track: bool) -> Segment<'a> {
        // An unchanged segment needs no alignment: its byte offsets are the input's. The
        // identity alignment would widen a span that ends or starts inside a char to the
        // whole char, but offsets become char indices (`CharCursor`), which give the same
        // chars either way.
        match (&self.normalizer, track) {
            (None, _) => Segment { text: Cow::Borrowed(raw), start, align: None },
            (Some(n), false) => Segment { text: n.normalize(raw), start, align: None },
            (Some(n), true) => {
                let (text, align) = n.normalize_aligned(raw).into_parts();
                Segment { text, start, align }
            }
        }
    }

    /// Whether the text from byte `at` of a normalized segment starts the input, as
    /// `Metaspace`'s `First` scheme asks of each split (the reference: whether its first
    /// byte stands for input offset 0). Past a normalized added token it does not.
    #[inline(never)]
    fn starts_input(&self, segment: &Segment, raw: &str, at: usize) -> bool {
        if segment.start != 0 || !self.pre_tokenizer.needs_input_start() {
            return segment.start == 0 && at == 0;
        }
        match (&segment.align, &self.normalizer, &segment.text) {
            (Some(align), _, _) => align.get(at).is_some_and(|a| a.0 == 0),
            (None, Some(n), Cow::Owned(_)) => {
                n.normalize_aligned(raw).into_parts().1.and_then(|align| align.get(at).copied()).is_some_and(|a| a.0 == 0)
            }
            _ => at == 0,
        }
    }

    /// The context of a text `part` of a normalized segment, its parts asked in order.
    /// `maybe_first`: no part before it was found not to start the input; once one does
    /// not, none after it does (alignments never go back), so that the alignment is worked
    /// out for a part or two at most, and the parts after them cost a test (inlined, with
    /// `starts_input` not: a call per part was 2% of an encode with 30,000 added words).
    #[inline(always)]
    fn part_context(&self, track: bool, maybe_first: &mut bool, segment: &Segment, raw: &str, part: &str) -> Context {
        if *maybe_first {
            let at = offset_in(&segment.text, part).expect("parts are slices of the segment");
            *maybe_first = self.starts_input(segment, raw, at);
        }
        Context { track, at_input_start: *maybe_first }
    }

    fn encode_into(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: Protected,
        sink: &mut Sink,
    ) -> Result<()> {
        if sink.offsets.is_none()
            && text.len() >= SECTIONS_FROM
            && rayon::current_thread_index().is_some()
            && rayon::current_num_threads() > 1
        {
            // On a thread of a rayon pool of more than one: a batch's (or, in a forked child,
            // any call's: `pool::install`). The ids are the same either way.
            return self.encode_sections(text, policy, protected, sink.ids, SECTION_BYTES);
        }
        // The piece cache is taken once per call: per piece it cost a thread-local lookup.
        self.bpe.with_caches(Some(self.pre_tokenizer.id()), |pieces| self.encode_with(pieces, text, policy, protected, sink))
    }

    /// `Some(prepend)` where a text segment can go to the model as it is, each space read as
    /// the `▁` the normalizer would put there (`PieceEncoder::encode_spaced`): a normalizer
    /// that does only that (`Normalizer::spaces_as_marks`), no pre-tokenizer, and no added
    /// token matched in normalized text.
    fn spaces_as_marks(&self) -> Option<bool> {
        if !self.pre_tokenizer.steps().is_empty() || self.added.matches_normalized() {
            return None;
        }
        self.normalizer.as_ref()?.spaces_as_marks()
    }

    fn encode_with(
        &self,
        pieces: &mut PieceEncoder,
        text: &str,
        policy: &SpecialPolicy,
        protected: Protected,
        sink: &mut Sink,
    ) -> Result<()> {
        let track = sink.offsets.is_some();
        let marks = if track { None } else { self.spaces_as_marks() };
        self.added.split_raw(text, policy, Protect::exact(protected, 0), &mut |segment| match segment {
            AddedSegment::Token(id, start, end) => {
                sink.push(id, (start, end));
                Ok(())
            }
            AddedSegment::Text(raw) => {
                if let Some(prepend) = marks {
                    if pieces.encode_spaced(raw.as_bytes(), prepend, sink.ids)? {
                        return Ok(());
                    }
                }
                let start = offset_in(text, raw).expect("segments are slices of the text");
                let segment = self.normalize_segment(raw, start, track);
                let protect = segment.protect(protected, raw.len());
                let mut maybe_first = true;
                let normalized: &str = &segment.text;
                let result = self
                    .added
                    .split_normalized(normalized, policy, protect, &mut |inner| match inner {
                        AddedSegment::Token(id, s, e) => {
                            sink.push(id, if track { segment.span(s, e) } else { (0, 0) });
                            Ok(())
                        }
                        AddedSegment::Text(part) if !track => {
                            let cx = self.part_context(track, &mut maybe_first, &segment, raw, part);
                            let encode_part = |pieces: &mut PieceEncoder, ids: &mut Vec<u32>| {
                                // The alphabet looked at once, not per piece: about 3% of a
                                // warm encode's instructions (Llama 3, English, callgrind).
                                let direct = match pieces.byte_ids() {
                                    Some(byte_ids) => self.pre_tokenizer.direct_batches(part, |start, ends| {
                                        pieces.encode_pieces_in(byte_ids, part.as_bytes(), start, ends, ids)
                                    }),
                                    None => self.pre_tokenizer.direct_pieces(part, |piece, _| pieces.encode(piece, ids)),
                                };
                                direct.unwrap_or_else(|| {
                                    self.pre_tokenizer.for_each_piece(part, cx, &mut |piece, _| pieces.encode(piece, ids))
                                })
                            };
                            // A short segment (between added tokens, most often) from the
                            // cache of segments, when its ids are its bytes' alone: not the
                            // one that starts the input where the pre-tokenizer asks that.
                            if part.len() <= SHORT_MAX && !(cx.at_input_start && self.pre_tokenizer.needs_input_start()) {
                                pieces.encode_segment(part.as_bytes(), sink.ids, encode_part)
                            } else {
                                encode_part(pieces, sink.ids)
                            }
                        }
                        AddedSegment::Text(part) => {
                            let base = offset_in(normalized, part).expect("segments are slices of the text");
                            let cx = self.part_context(track, &mut maybe_first, &segment, raw, part);
                            // A direct pre-tokenizer cuts raw bytes, so each piece's tokens
                            // follow one another from its start: their spans are their
                            // lengths added up, and the ids can come from the piece cache
                            // (without it, a chat's `encode_with_offsets` took 13x `encode`).
                            let direct = self.pre_tokenizer.direct_pieces(part, |piece, at| {
                                let first = sink.ids.len();
                                pieces.encode(piece, sink.ids)?;
                                let lens = sink.ids[first..].iter().map(|&id| self.bpe.token_len(id));
                                let offsets = sink.offsets.as_mut().expect("tracking");
                                if lens.clone().any(|len| len == 0) || lens.sum::<usize>() != piece.len() {
                                    // Bytes with no token (dropped, their length added to
                                    // the token before): the spans BPE counts, placed as
                                    // `for_each_piece` below places them.
                                    sink.ids.truncate(first);
                                    let mut spans = Vec::new();
                                    self.bpe.encode_with_spans(piece, sink.ids, &mut spans)?;
                                    for (s, e) in spans {
                                        let from = base + at + s.min(piece.len().saturating_sub(1));
                                        let to = base + at + e.max(s + 1).min(piece.len());
                                        offsets.push(segment.span(from, to.max(from + 1)));
                                    }
                                    return Ok(());
                                }
                                let mut from = base + at;
                                for &id in &sink.ids[first..] {
                                    let to = from + self.bpe.token_len(id);
                                    offsets.push(segment.span(from, to));
                                    from = to;
                                }
                                Ok(())
                            });
                            if let Some(done) = direct {
                                return done;
                            }
                            self.pre_tokenizer.for_each_piece(part, cx, &mut |piece, origin| {
                                let mut spans = Vec::new();
                                self.bpe.encode_with_spans(piece, sink.ids, &mut spans)?;
                                let offsets = sink.offsets.as_mut().expect("tracking");
                                for (s, e) in spans {
                                    // Normalized bytes s..e of the piece, through its origin
                                    // and the normalizer's alignment back to the input.
                                    let from = base + origin.at(s.min(piece.len().saturating_sub(1)));
                                    let to = base + origin.at(e.max(s + 1).min(piece.len()) - 1) + 1;
                                    offsets.push(segment.span(from, to.max(from + 1)));
                                }
                                Ok(())
                            })
                        }
                    })
                    .map_err(|e| segment.error_in(text, e));
                normalize::give_back(segment.text);
                result
            }
        })
    }

    /// Calls `f` with every pre-tokenized piece of `text` (the bytes the model encodes), as
    /// `encode` splits it: added tokens matched by `policy` are left out.
    pub fn for_each_piece(&self, text: &str, policy: &SpecialPolicy, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.for_each_item(text, policy, Protected::NONE, &mut |item| match item {
            Item::Piece(piece) => f(piece),
            Item::Token(_) => Ok(()),
        })
    }

    /// Calls `f` with what `encode` (without offsets) makes of `text` before BPE, in order:
    /// the id of each added token it matches, the bytes of each pre-tokenized piece. The
    /// same steps as `encode_with`, whose hot loop keeps its own copy so that the piece
    /// cache is inlined into the pre-tokenizer's loop.
    fn for_each_item(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: Protected,
        f: &mut dyn FnMut(Item<'_>) -> Result<()>,
    ) -> Result<()> {
        self.added.split_raw(text, policy, Protect::exact(protected, 0), &mut |segment| match segment {
            AddedSegment::Token(id, _, _) => f(Item::Token(id)),
            AddedSegment::Text(raw) => {
                let start = offset_in(text, raw).expect("segments are slices of the text");
                let segment = self.normalize_segment(raw, start, false);
                let mut maybe_first = true;
                self.added
                    .split_normalized(&segment.text, policy, segment.protect(protected, raw.len()), &mut |inner| match inner {
                        AddedSegment::Token(id, _, _) => f(Item::Token(id)),
                        AddedSegment::Text(part) => {
                            let cx = self.part_context(false, &mut maybe_first, &segment, raw, part);
                            self.pre_tokenizer.for_each_piece(part, cx, &mut |piece, _| f(Item::Piece(piece)))
                        }
                    })
                    .map_err(|e| segment.error_in(text, e))
            }
        })
    }

    /// `encode_into` of a long text without offsets, in sections on every thread of the
    /// rayon pool this runs in (a batch's). One long document in a batch otherwise keeps a
    /// core busy while the others wait: the 3.4 and 4.0 MB documents of the shared corpora
    /// (a fifth of its bytes) held 2 cores at 1.4x of one in `encode_batch_numpy`.
    ///
    /// This thread does everything up to BPE over the whole text (added tokens,
    /// normalization, pre-tokenizing: a fifth of an encode), copying the pieces' bytes into
    /// sections of about `section_bytes`; each section's pieces go through the piece cache
    /// and BPE as a task of their own, on any thread, while this one goes on. The ids are
    /// exactly `encode_into`'s: a piece's ids depend on its bytes alone, and everything that
    /// looks at context (added tokens, the pre-tokenizer's matches, a prefix space) ran over
    /// the whole text, in one pass, as it does there. This thread stays at most two
    /// sections per thread ahead of the pool (then it encodes a section itself), so the
    /// copied pieces wait in a few sections, not in a copy of the text.
    fn encode_sections(
        &self,
        text: &str,
        policy: &SpecialPolicy,
        protected: Protected,
        ids: &mut Vec<u32>,
        section_bytes: usize,
    ) -> Result<()> {
        /// The pieces' bytes one after another; after each piece, where it ends.
        #[derive(Default)]
        struct Section {
            bytes: Vec<u8>,
            items: Vec<Stored>,
        }
        enum Stored {
            Token(u32),
            PieceEnd(usize),
        }
        let done: std::sync::Mutex<Vec<(usize, Result<Vec<u32>>)>> = Default::default();
        let encode = |n: usize, section: Section| {
            let mut out = Vec::new();
            let encoded = self.bpe.with_cache(|pieces| {
                Error::reserve(&mut out, section.bytes.len() / 3 + section.items.len() / 8 + 4, "the ids of the text")?;
                let mut from = 0;
                for item in &section.items {
                    match *item {
                        Stored::Token(id) => out.push(id),
                        Stored::PieceEnd(end) => {
                            pieces.encode(&section.bytes[from..end], &mut out)?;
                            from = end;
                        }
                    }
                }
                Ok(())
            });
            done.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((n, encoded.map(|()| out)));
        };
        let encode = &encode;
        let (pending, ahead) = (&AtomicUsize::new(0), 2 * rayon::current_num_threads());
        let walked = rayon::scope(|scope| {
            let (mut section, mut n) = (Section::default(), 0);
            let walked = self.for_each_item(text, policy, protected, &mut |item| {
                match item {
                    Item::Token(id) => section.items.push(Stored::Token(id)),
                    Item::Piece(piece) => {
                        Error::reserve(&mut section.bytes, piece.len(), "a section of the text")?;
                        section.bytes.extend_from_slice(piece);
                        section.items.push(Stored::PieceEnd(section.bytes.len()));
                        if section.bytes.len() >= section_bytes {
                            let full = std::mem::take(&mut section);
                            if pending.load(Ordering::Relaxed) < ahead {
                                pending.fetch_add(1, Ordering::Relaxed);
                                scope.spawn(move |_| {
                                    encode(n, full);
                                    pending.fetch_sub(1, Ordering::Relaxed);
                                });
                            } else {
                                encode(n, full);
                            }
                            n += 1;
                        }
                    }
                }
                Ok(())
            });
            if walked.is_ok() {
                encode(n, section);
            }
            walked
        });
        walked?;
        let mut sections = done.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        sections.sort_unstable_by_key(|&(n, _)| n);
        let sections = sections.into_iter().map(|(_, ids)| ids).collect::<Result<Vec<_>>>()?;
        Error::reserve(ids, sections.iter().map(Vec::len).sum(), "the ids of the text")?;
        sections.iter().for_each(|section| ids.extend_from_slice(section));
        Ok(())
    }

    /// The last pre-tokenized piece of `text` as `encode` splits it (added tokens matched by
    /// `policy` left out), or `None` when there is none: tiktoken's "unstable" tail.
    pub fn last_piece(&self, text: &str, policy: &SpecialPolicy) -> Result<Option<Vec<u8>>> {
        // Pieces can be slices of a normalized copy that is gone after the call: copied.
        let (mut last, mut any) = (Vec::new(), false);
        self.for_each_piece(text, policy, &mut |piece| {
            last.clear();
            last.extend_from_slice(piece);
            any = true;
            Ok(())
        })?;
        Ok(any.then_some(last))
    }

    /// Whether the model's tokens stand for raw bytes through the GPT-2 byte-to-char table,
    /// so that [`Tokenizer::token_bytes`] and [`Tokenizer::encode_piece`] apply.
    pub fn is_byte_level(&self) -> bool {
        matches!(self.decoder, Some(Decoder::ByteLevel)) && matches!(self.bpe.alphabet(), crate::bpe::Alphabet::Bytes(_))
    }

    /// The bytes an id stands for (an added token: its content), as tiktoken's
    /// `decode_single_token_bytes`; `None` for an unknown id. Byte-level vocabularies only.
    pub fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        if let Some(form) = self.added.decode_form(id) {
            return Some(Cow::Borrowed(form.as_bytes()));
        }
        self.vocab.get(id).and_then(crate::bytelevel::decode_str).map(Cow::Owned)
    }

    /// The model's ids for one piece of raw bytes, with no pre-tokenization and no added
    /// tokens (tiktoken's `byte_pair_encode`, after its whole-token lookup). The bytes need not
    /// be UTF-8. Byte-level vocabularies only.
    pub fn encode_piece(&self, piece: &[u8]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if !piece.is_empty() {
            self.bpe.encode(piece, &mut ids)?;
        }
        Ok(ids)
    }

    /// The string the reference gives an id: an added token's (normalized) content, or the
    /// model vocabulary's spelling.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.added.decode_form(id).or_else(|| self.vocab.get(id))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added.id_of(token).or_else(|| self.vocab.ids.get(token).copied())
    }

    /// Entries in the vocabulary with added tokens (distinct strings), as the reference counts.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len() + self.added.tokens().filter(|(_, t)| !self.vocab.ids.contains_key(&t.content)).count()
    }

    /// One past the highest id, added tokens included: what an id's dtype must hold (ids
    /// can have holes, so this can exceed `vocab_size`).
    pub fn id_limit(&self) -> usize {
        let vocab = self.vocab.tokens.iter().rposition(Option::is_some).map_or(0, |id| id + 1);
        let added = self.added.tokens().map(|(id, _)| id as usize + 1).max().unwrap_or(0);
        vocab.max(added)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        // A token's string, its decoded copies and the text: 48 bytes per id is above what
        // the decoders take (checked as encoding's working memory is).
        Error::check_memory(ids.len().saturating_mul(48), || format!("decoding {} ids", ids.len()))?;
        let mut tokens: Vec<&str> = Vec::with_capacity(ids.len());
        for (position, &id) in ids.iter().enumerate() {
            let token = self.id_to_token(id).ok_or_else(|| {
                Error::Invalid(format!(
                    "id {id} at position {position} is not in the vocabulary of this tokenizer"
                ))
            })?;
            if skip_special_tokens && self.added.is_special(token) {
                continue;
            }
            tokens.push(token);
        }
        Ok(Decoder::decode(self.decoder.as_ref(), &tokens))
    }

    /// Adds tokens and returns their ids (`None` for an empty content, which is ignored).
    pub fn add_tokens(&mut self, tokens: Vec<AddedToken>) -> Result<Vec<Option<u32>>> {
        let vocab = &self.vocab;
        let normalizer = &self.normalizer;
        self.added.add(
            tokens,
            |s| vocab.ids.get(s).copied(),
            vocab.len() as u32,
            |s| match normalizer {
                Some(n) => n.normalize(s).into_owned(),
                None => s.to_string(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_cursor_and_byte_ranges_convert_as_the_chars_count() {
        // ASCII and not, every byte offset and char index, past the ends too; the cursor
        // going forward, back and jumping.
        for s in ["", "a", "hello world", "héllo wörld", "日本語 text", "x\u{1F600}y", "\u{1F600}\u{1F600}é"] {
            let starts: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
            let n = starts.len();
            let byte_of = |i: usize| starts.get(i).copied().unwrap_or(s.len());
            let holding = |b: usize| if b >= s.len() { n } else { starts.iter().rposition(|&x| x <= b).unwrap_or(0) };
            let before = |b: usize| starts.iter().filter(|&&x| x < b).count();
            let forward: Vec<usize> = (0..s.len() + 3).collect();
            let backward: Vec<usize> = forward.iter().rev().copied().collect();
            let jumping: Vec<usize> = forward.iter().map(|&b| (b * 7 + 3) % (s.len() + 3)).collect();
            for order in [&forward, &backward, &jumping] {
                let mut cursor = CharCursor::new(s);
                for &b in order {
                    assert_eq!(cursor.char(b), holding(b), "{s:?} byte {b}");
                    assert_eq!(cursor.chars_before(b), before(b), "{s:?} byte {b}");
                }
            }
            let ranges: Vec<(usize, usize)> = (0..n + 3).flat_map(|a| (0..n + 3).map(move |b| (a, b))).collect();
            for window in ranges.chunks(5).chain([&ranges[..], &[]]) {
                let mut want: Vec<(usize, usize)> =
                    window.iter().map(|&(a, b)| (byte_of(a), byte_of(b))).filter(|(a, b)| a < b).collect();
                want.sort_unstable();
                let mut merged: Vec<(usize, usize)> = Vec::new();
                for (a, b) in want {
                    match merged.last_mut() {
                        Some(last) if a <= last.1 => last.1 = last.1.max(b),
                        _ => merged.push((a, b)),
                    }
                }
                assert_eq!(byte_ranges(s, window), merged, "{s:?} {window:?}");
            }
        }
    }

    #[test]
    fn labeled_tokens_are_those_overlapping_a_region() {
        // Every token of offsets 0..6 (and zero-width ones) against sets of regions, some
        // overlapping, empty or out of order: as the definition says, one pair at a time.
        let tokens: Vec<(usize, usize)> = (0..6).flat_map(|s| (s..7).map(move |e| (s, e))).collect();
        let region_sets: [&[(usize, usize)]; 6] =
            [&[], &[(2, 4)], &[(4, 5), (0, 1)], &[(1, 5), (2, 3)], &[(3, 3)], &[(0, 2), (2, 4), (5, 9)]];
        for regions in region_sets {
            let found = labeled_tokens(&tokens, regions.to_vec());
            for (&(s, e), found) in tokens.iter().zip(found) {
                let e = e.max(s + 1);
                let expected = regions.iter().any(|&(rs, re)| rs < e && re > s);
                assert_eq!(found, expected, "token {s}..{e}, regions {regions:?}");
            }
        }
    }
    use crate::formats::tokenizer_json;

    fn gpt2() -> Tokenizer {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tokensmith/assets/gpt2/tokenizer.json");
        tokenizer_json::from_str(&std::fs::read_to_string(path).unwrap(), path).unwrap()
    }

    #[test]
    fn ids_that_fit_the_first_reservation_are_never_moved() {
        // Every prefix of a mixed text, cold and warm (the warm pass takes the cache's hits a
        // batch at a time, which once reserved past the first capacity).
        let tok = gpt2();
        let text = "Hello world, it's a test.\n\n    def f(x):  return x  # ok\t日本語 wörld 123456 ".repeat(4);
        let prefixes = || text.char_indices().map(|(i, _)| &text[..i]);
        for pass in ["cold", "warm"] {
            let mut fitted = 0;
            for prefix in prefixes() {
                let ids = tok.encode(prefix, &SpecialPolicy::Allow, false).unwrap();
                if ids.len() <= first_capacity(prefix.len()) {
                    assert_eq!(ids.capacity(), first_capacity(prefix.len()), "{pass} {prefix:?}");
                    fitted += 1;
                }
            }
            assert_eq!(fitted, prefixes().count(), "{pass}: every prefix fits");
        }
    }

    #[test]
    fn a_text_in_sections_gives_the_ids_of_one_pass() {
        // Sections of every size down to one piece each, on a pool of 3 threads; added tokens
        // that look at their context (lstrip, single word), a normalizer that changes the
        // text, and each policy (errors and their offsets too).
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tokensmith/assets/gpt2/tokenizer.json");
        let json = std::fs::read_to_string(path).unwrap();
        let mut lowered: serde_json::Value = serde_json::from_str(&json).unwrap();
        lowered["normalizer"] = serde_json::json!({"type": "Lowercase"});
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let one = "Hello wörld<|endoftext|> again <task> a word, swordfish 日本語\n\n  x<|endoftext|>";
        let text = one.repeat(60);
        for mut tok in [gpt2(), tokenizer_json::from_str(&lowered.to_string(), path).unwrap()] {
            let task = AddedToken { lstrip: true, ..AddedToken::new("<task>", true) };
            let word = AddedToken { single_word: true, ..AddedToken::new("word", false) };
            tok.add_tokens(vec![task, word]).unwrap();
            let eot = tok.token_to_id("<|endoftext|>").unwrap();
            for policy in [SpecialPolicy::Allow, SpecialPolicy::Text, SpecialPolicy::Raise, SpecialPolicy::Only([eot].into_iter().collect())] {
                let want = tok.encode(&text, &policy, false).map_err(|e| e.to_string());
                for section_bytes in [1, 5, 64, 1000, 1 << 20] {
                    let got = pool.install(|| {
                        let mut ids = Vec::new();
                        tok.encode_sections(&text, &policy, Protected::NONE, &mut ids, section_bytes).map(|()| ids)
                    });
                    assert_eq!(got.map_err(|e| e.to_string()), want, "sections of {section_bytes} bytes, {policy:?}");
                }
            }
            // A batch's long text goes this way.
            let long = one.repeat(SECTIONS_FROM / one.len() + 1);
            let want = tok.encode(&long, &SpecialPolicy::Allow, true).unwrap();
            let got = pool.install(|| tok.encode_batch(&[&long, "short"], &SpecialPolicy::Allow, true)).unwrap();
            assert_eq!(got[0], want);
        }
    }

    #[test]
    fn offsets_point_at_each_token_in_the_text() {
        let tok = gpt2();
        let text = "Hello wörld<|endoftext|> again";
        let chars: Vec<char> = text.chars().collect();
        let (ids, offsets) = tok.encode_with_offsets(text, &SpecialPolicy::Allow, Protected::NONE, true).unwrap();
        assert_eq!(ids, tok.encode(text, &SpecialPolicy::Allow, true).unwrap());
        let eot = tok.token_to_id("<|endoftext|>").unwrap();
        let at = ids.iter().position(|&i| i == eot).unwrap();
        assert_eq!(offsets[at], (11, 24));
        assert_eq!(offsets[0], (0, 5));
        assert!(offsets.windows(2).all(|w| w[0].1 <= w[1].0));
        // Each token is the text between its offsets (char indices).
        for (k, &(s, e)) in offsets.iter().enumerate().filter(|(k, _)| *k != at) {
            let expected: String = chars[s..e].iter().collect();
            assert_eq!(tok.decode(&[ids[k]], false).unwrap(), expected);
        }
    }

    #[test]
    fn protected_ranges_turn_special_tokens_into_text() {
        let tok = gpt2();
        let text = "<|endoftext|>user: <|endoftext|>";
        let content = (19, text.len());
        let protected = Protected { ranges: &[content], allowed: None };
        let (ids, _) = tok.encode_with_offsets(text, &SpecialPolicy::Allow, protected, false).unwrap();
        let eot = tok.token_to_id("<|endoftext|>").unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == eot).count(), 1);
        assert_eq!(ids[0], eot);
        // The rest is one run of text: BPE merges across the template/content boundary.
        assert_eq!(ids[1..], tok.encode(&text[13..], &SpecialPolicy::Text, false).unwrap()[..]);

        // A token allowed inside the ranges is an id there; the others stay text.
        let mut tok = tok;
        let boxed = tok.add_tokens(vec![AddedToken::new("<|box|>", true)]).unwrap()[0].unwrap();
        let text = "<|endoftext|>user: <|endoftext|><|box|>";
        let allowed = [boxed].into_iter().collect();
        let protected = Protected { ranges: &[(19, text.len())], allowed: Some(&allowed) };
        let (ids, _) = tok.encode_with_offsets(text, &SpecialPolicy::Allow, protected, false).unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == eot).count(), 1);
        assert_eq!(ids.last(), Some(&boxed));
    }
}
