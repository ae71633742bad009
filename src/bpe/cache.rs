//! The per-thread cache of pieces already encoded.
//!
//! Text repeats its words, so most pieces a pre-tokenizer cuts have been encoded before.
//! Profiles of per-document encoding (Llama 3, English) showed a third of the time in the
//! old cache, a `HashMap<Box<[u8]>, Box<[u32]>>`: hashing the bytes, a `memcmp` call per
//! probe, and a pointer chase to the ids. Here a short piece (up to `SHORT_MAX` bytes: nearly
//! every piece of English or code) is its own key, two `u64` words compared inline, with its
//! ids beside it in a 32-byte slot. A piece may sit in any of the four slots of its set
//! (two adjacent cache lines): the direct-mapped table this replaces (one slot a piece) let
//! pieces that hash alike evict each other. Of the 42,753 distinct pieces of 2 MB of English
//! fortunes, 28% shared a slot there, and every round over the text encoded 13,700 pieces
//! again (about 700 ns each in BPE); with four ways it is about 100, and the whole text
//! encodes 30% faster (Llama 3, one core: 68-80 -> 88-112 MB/s, four runs in turn), equal
//! on the Debian handbook, whose 16,772 distinct pieces collided less. The piece found or
//! added moves to the front of its set, so the one an insert drops is the least recently
//! used. A profile by time puts most of a lookup on the first load of its set, but asking
//! for the sets ahead did not pay: a batch of 64 at a time was no faster, and 8 pieces
//! ahead of their lookups (2026-12-02) was 10% faster on the fortunes, no faster on the
//! handbook, and slower than no prefetch once the lookups were inlined (it costs a second
//! key and hash per piece). Instructions limit a warm encode (about 215 a piece, the lexer's
//! included, at about two a cycle then; 124 on 2026-12-05), and so do mispredicted branches where the pieces' lengths vary at random:
//! see `PreTokenizer::direct_pieces`, `get_or_encode`, `first_way_hits` and
//! `PieceEncoder::encode_bytes_in`.
//!
//! Short pieces with more ids than a slot holds (4 to `WIDE_IDS`: an emoji of four byte
//! tokens, most Russian words in GPT-2's vocabulary) have slots of their own, a cache line
//! each (`WideSet`), but for runs, whose ids past the third are the third again (a line
//! break and its indentation in GPT-2's vocabulary): a slot keeps the first three and the
//! count (`Slot::ids_fit`). Longer pieces (up to `CACHED_MAX` bytes: CJK runs, identifiers), and
//! short ones with more ids still, go to a map as before, emptied when it holds
//! `LONG_MAX_BYTES`.
//!
//! Once a model's new pieces in a thread have cost about what it takes, the short pieces
//! that encode to one token of a byte alphabet (`Bpe::prefill_tokens`) are put in the slots
//! ahead (`ModelCache::prefill`): on a first pass over a dataset most new pieces are whole
//! tokens.
//!
//! Each slot is tagged with the tokenizer (BPE model) that filled it, as a small per-thread
//! number that is also part of the slot's hash: a thread switching between tokenizers never
//! clears the table, and the same piece of two tokenizers has two slots (the long-piece map
//! holds one tokenizer's pieces at a time).

use rustc_hash::FxHashMap;
#[cfg(target_os = "linux")]
use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Pieces up to this many bytes are short: inline keys.
pub const SHORT_MAX: usize = 16;
const WORDS: usize = SHORT_MAX / 8;
/// At most this many ids are kept in a slot (a short piece with more takes a wide slot).
const SHORT_IDS: usize = 3;
/// In a slot's `len`: its ids are a run (see `Slot::ids_fit`). Above any piece's length, so
/// that `Slot::holds`, the test of the loop of first-slot hits, is false for a run.
const RUN: u8 = 0x80;
const _: () = assert!(SHORT_MAX < RUN as usize);
/// At most this many ids are kept in a wide slot (a short piece with more goes to the map).
const WIDE_IDS: usize = 11;
/// SentencePiece-style text past this many bytes is cut into words before BPE (see
/// `PieceEncoder::encode`).
pub const LONG_MAX: usize = 64;
/// Pieces up to this many bytes are cached. CJK runs without punctuation are pieces of up
/// to a few hundred bytes: with 64 here, the 5% of a Chinese text's bytes in pieces longer
/// than that went through BPE again at every pass.
pub const CACHED_MAX: usize = 256;
/// The map of long pieces is emptied when it holds this many bytes (keys and ids).
const LONG_MAX_BYTES: usize = 8 << 20;
/// 2^15 sets of four 32-byte slots: 4 MB per thread (see `Table`).
/// Measured (direct-mapped then) on 2 MB of English and of Chinese (per-document calls, one
/// core, best of 30 rounds, each variant in turn): 64-byte slots for pieces up to 32 bytes
/// (2^16 of them) ran 10-25% slower than 32-byte ones, 2^14 of them 20-25% slower still;
/// 2^15 and 2^16 32-byte slots were 5-10% slower than 2^17 on English and no faster on
/// Chinese.
const SET_BITS: u32 = 15;
const SETS: usize = 1 << SET_BITS;
const WAYS: usize = 4;
/// 2^13 sets of two 64-byte wide slots: 1 MB per thread more (see `Table`).
const WIDE_SET_BITS: u32 = 13;
const WIDE_SETS: usize = 1 << WIDE_SET_BITS;
const WIDE_WAYS: usize = 2;
/// Bits of the filter of the pieces put in wide slots (see `ModelCache::take_short`).
const WIDE_FILTER_BITS: usize = 1 << 16;
/// Models remembered per thread before every tag is dropped and numbering starts again.
const MAX_TAGS: usize = 1 << 10;
/// A new piece costs about as much as putting this many tokens in the slots ahead (see
/// `ModelCache::prefill`): 700-800 ns against about 15 ns (Llama 3, a first pass over
/// English).
const PREFILL_COST_IN_NEW_PIECES: usize = 48;
/// `ModelCache::new_pieces` once the model's tokens are in the slots: never counted again.
const PREFILLED: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    words: [u64; WORDS],
    len: u8,
}

impl Key {
    /// The piece's bytes as little-endian words, zero-padded. Built from loads of the piece
    /// itself: copying it into a zeroed buffer and reading that back stalled every lookup
    /// (a store-forwarding miss: a quarter of the encode time in a profile).
    #[inline]
    pub(super) fn new(piece: &[u8]) -> Key {
        debug_assert!(piece.len() <= SHORT_MAX);
        const _: () = assert!(WORDS == 2);
        let n = piece.len();
        let word = |at: usize| u64::from_le_bytes(piece[at..at + 8].try_into().expect("8 bytes"));
        // Not a loop over 8-byte chunks: the compiler made that a `memcpy` call into the key
        // (a third of the key's instructions).
        let words = match n {
            0 => [0, 0],
            1..=7 => [partial_word(piece), 0],
            8 => [word(0), 0],
            // The last 8 bytes, shifted down past the ones the first word has.
            _ => [word(0), word(n - 8) >> ((16 - n) * 8)],
        };
        Key { words, len: n as u8 }
    }

    /// The key of the piece of `len` bytes (at most `SHORT_MAX`) that are `bits`,
    /// little-endian (the first byte lowest), zero above.
    pub(super) fn from_bits(bits: u128, len: usize) -> Key {
        const _: () = assert!(WORDS == 2);
        debug_assert!(len <= SHORT_MAX && (len == SHORT_MAX || bits >> (8 * len) == 0));
        Key { words: [bits as u64, (bits >> 64) as u64], len: len as u8 }
    }

    /// The key of the piece of `len` bytes (at most `SHORT_MAX`) at the start of `window`:
    /// the same key as `new`, built the same way whatever the length, with two loads and
    /// two masks. `new` branches on the length, and in code, whose pieces go from one byte
    /// to a word and back at random, those branches went either way: the key and the
    /// length's `match` around it were 44% of the mispredicted branches of a warm encode
    /// (callgrind `--branch-sim`, Llama 3, 2 MB of Python).
    #[inline(always)]
    pub(super) fn in_window(window: &[u8; 2 * 8], len: usize) -> Key {
        const _: () = assert!(WORDS == 2);
        let masks = KEEP_BYTES[len];
        let word = |at: usize| u64::from_le_bytes(window[at..at + 8].try_into().expect("8 bytes"));
        Key { words: [word(0) & masks[0], word(8) & masks[1]], len: len as u8 }
    }

    /// The set of this key for the model tagged `tag`: models have their own sets for a
    /// piece, so that two tokenizers used in turn do not evict each other's entries.
    #[inline]
    fn set(&self, tag: u16) -> usize {
        (self.hash(tag) >> (64 - SET_BITS)) as usize
    }

    /// Its wide set (`WideSet`), for the model tagged `tag`, and its bit in the filter of
    /// the pieces put in wide slots (`PieceCache::wide_used`): bits of the hash below those
    /// of the set, so that the pieces of one set do not share a bit.
    #[inline]
    fn wide_set_and_bit(&self, tag: u16) -> (usize, usize) {
        let hash = self.hash(tag);
        let bit = (hash >> (64 - WIDE_SET_BITS - WIDE_FILTER_BITS.trailing_zeros())) as usize % WIDE_FILTER_BITS;
        ((hash >> (64 - WIDE_SET_BITS)) as usize, bit)
    }

    #[inline]
    fn hash(&self, tag: u16) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut h = u64::from(self.len) | u64::from(tag) << 8;
        for w in self.words {
            h = (h.rotate_left(26) ^ w).wrapping_mul(K);
        }
        h
    }
}

/// By a piece's length, the masks that keep its bytes of the two words of a 16-byte window.
const KEEP_BYTES: [[u64; WORDS]; SHORT_MAX + 1] = {
    const fn low_bytes(n: usize) -> u64 {
        if n >= 8 {
            u64::MAX
        } else {
            (1 << (8 * n)) - 1
        }
    }
    let mut masks = [[0; WORDS]; SHORT_MAX + 1];
    let mut len = 0;
    while len <= SHORT_MAX {
        masks[len] = [low_bytes(len), low_bytes(len.saturating_sub(8))];
        len += 1;
    }
    masks
};

/// Up to 7 bytes as a little-endian word, zero-padded, from at most two overlapping loads.
#[inline]
fn partial_word(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    debug_assert!((1..8).contains(&n));
    let (lo, hi) = if n >= 4 {
        let lo = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        let hi = u32::from_le_bytes(bytes[n - 4..].try_into().expect("4 bytes"));
        (u64::from(lo), u64::from(hi) << ((n - 4) * 8))
    } else if n >= 2 {
        let lo = u16::from_le_bytes(bytes[..2].try_into().expect("2 bytes"));
        let hi = u16::from_le_bytes(bytes[n - 2..].try_into().expect("2 bytes"));
        (u64::from(lo), u64::from(hi) << ((n - 2) * 8))
    } else {
        (u64::from(bytes[0]), 0)
    };
    // The two loads overlap in the middle: or-ing them gives each byte once.
    lo | hi
}

/// A piece and up to `IDS` ids (the key's fields laid out flat): with `SHORT_IDS`, two slots
/// to a cache line; with `WIDE_IDS` (a `WideSlot`), one. A slot whose `n` is more than `IDS`
/// holds a run: ids past the last it has are that last one again (see `ids_fit`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot<const IDS: usize = SHORT_IDS> {
    words: [u64; WORDS],
    ids: [u32; IDS],
    /// The model that filled it (0: empty).
    tag: u16,
    /// The piece's length, with `RUN` where the ids are a run.
    len: u8,
    n: u8,
}

impl<const IDS: usize> Slot<IDS> {
    const EMPTY: Slot<IDS> = Slot { words: [0; WORDS], ids: [0; IDS], tag: 0, len: 0, n: 0 };

    /// Whether the slot holds `key`'s piece for the model `tag`, with at most `IDS` ids.
    #[inline(always)]
    fn holds(&self, key: &Key, tag: u16) -> bool {
        self.tag == tag && self.words == key.words && self.len == key.len
    }

    /// Whether the slot holds `key`'s piece for the model `tag` as a run (see `ids_fit`).
    #[inline(always)]
    fn holds_run(&self, key: &Key, tag: u16) -> bool {
        self.tag == tag && self.words == key.words && self.len == key.len | RUN
    }

    /// Whether a slot holds `ids`: at most `IDS` of them, or a run, whose ids past the
    /// first `IDS` are all the last of those (and no more than a `u8` counts).
    ///
    /// Why runs: GPT-2's vocabulary has no token for two spaces, so in Python code a line
    /// break and its indentation (`\n` and seven spaces) is a piece of a token and then the
    /// one of a space again and again: a tenth of the pieces of the code corpus. With more
    /// ids than a slot holds, each took a wide slot, found past the loop of first-slot hits
    /// (`ModelCache::first_way_hits`) after a call and the wide set's line. In a slot, a
    /// warm per-document pass over that code (Rust `profile_docs`, 500 kB, callgrind) takes
    /// 15.67 M instructions, not 16.80 M, and runs at 330-363 MB/s, not 302-310 (the builds
    /// in turn); whole, 386-454 against 358-365. Other text and vocabularies: +0.1-0.6%
    /// instructions, the same by the clock. The loop finds a run only after its test of a
    /// first slot fails (`RUN`): a test of the count after each hit cost 1.5-1.9% more
    /// instructions on pieces that are no run, and the tag, length and count compared as
    /// one word 4-10% more (it was built from the three bytes anew for every piece).
    fn ids_fit(ids: &[u32]) -> bool {
        ids.len() <= IDS || (ids.len() <= usize::from(u8::MAX) && ids[IDS..].iter().all(|&id| id == ids[IDS - 1]))
    }

    /// Makes this the slot of `key`'s piece, whose ids are `ids` (see `ids_fit`).
    fn fill(&mut self, key: &Key, tag: u16, ids: &[u32]) {
        debug_assert!(Self::ids_fit(ids));
        let len = if ids.len() > IDS { key.len | RUN } else { key.len };
        (self.words, self.len, self.tag, self.n) = (key.words, len, tag, ids.len() as u8);
        let kept = ids.len().min(IDS);
        self.ids[..kept].copy_from_slice(&ids[..kept]);
    }

    #[inline(always)]
    fn push_ids(&self, out: &mut Vec<u32>) {
        out.reserve(IDS);
        let len = out.len();
        // SAFETY: `reserve` left room for `IDS` more ids past `len`.
        let n = unsafe { self.write_ids(out.as_mut_ptr().add(len)) };
        if n > IDS {
            // SAFETY: the first `IDS` are written.
            unsafe { out.set_len(len + IDS) };
            self.push_run(out);
        } else {
            // SAFETY: the slot's `n` ids are written.
            unsafe { out.set_len(len + n) };
        }
    }

    /// Writes the slot's first `IDS` ids at `to` and returns how many it has: all of them
    /// if at most `IDS`, else a run whose rest `push_run` appends. All `IDS` are copied, as
    /// one fixed-size store, and the caller's length then counts those it has:
    /// `extend_from_slice` of a length known only at run time calls `memmove` (5% of an
    /// encode in the profile), and a `match` on the count, which pushed one id or extended
    /// by two, took a branch that went either way.
    ///
    /// # Safety
    /// `to` must be valid for writes of `IDS` ids.
    #[inline(always)]
    unsafe fn write_ids(&self, to: *mut u32) -> usize {
        // SAFETY: the caller's promise.
        unsafe { to.cast::<[u32; IDS]>().write(self.ids) };
        usize::from(self.n)
    }

    /// Appends the ids of a run past its first `IDS` (see `ids_fit`).
    #[cold]
    #[inline(never)]
    fn push_run(&self, out: &mut Vec<u32>) {
        let n = usize::from(self.n);
        out.extend(std::iter::repeat_n(self.ids[IDS - 1], n - IDS));
    }
}

/// Asks the CPU for both lines of `set`.
#[inline(always)]
fn prefetch(set: &Set) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints; `set` is a valid reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = (set as *const Set).cast::<i8>();
        _mm_prefetch::<_MM_HINT_T0>(at);
        _mm_prefetch::<_MM_HINT_T0>(at.add(64));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = set;
}

/// Finds `key`'s piece in `ways` and appends its ids (`true`), moving its slot first.
#[inline]
fn take_from<const IDS: usize>(ways: &mut [Slot<IDS>], key: &Key, tag: u16, out: &mut Vec<u32>) -> bool {
    let Some(way) = ways.iter().position(|slot| slot.holds(key, tag) || slot.holds_run(key, tag)) else {
        return false;
    };
    ways[..=way].rotate_right(1);
    ways[0].push_ids(out);
    true
}

/// Puts `key`'s piece first in `ways`, dropping the last (least recently used) slot.
fn put_first<const IDS: usize>(ways: &mut [Slot<IDS>], key: &Key, tag: u16, ids: &[u32]) {
    ways.rotate_right(1);
    ways[0].fill(key, tag, ids);
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    /// Appends this run's ids to `out`, whose ids up to `len` are written, then makes room
    /// for `room` more: returns where the ids are now and how many.
    #[cold]
    #[inline(never)]
    fn take_run(&self, out: &mut Vec<u32>, len: usize, room: usize) -> (*mut u32, usize) {
        // SAFETY: the caller wrote the ids up to `len`.
        unsafe { out.set_len(len) };
        self.push_ids(out);
        out.reserve(room);
        (out.as_mut_ptr(), out.len())
    }
}

/// The slots a piece may be in, the more recently used first.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Set([Slot; WAYS]);

const EMPTY_SET: Set = Set([Slot::EMPTY; WAYS]);

/// A short piece with more ids than a `Slot` holds, and its ids: a cache line. In the map of
/// long pieces, such a piece was hashed byte by byte, found through a control group and an
/// entry, compared in a loop and its ids copied in another: `get_long` took 20% of GPT-2's
/// encode of the Russian handbook (perf; 32,577 of its 56,000 pieces that miss the slots
/// are short) and 13% of Tekken's 10 MB of emoji.
type WideSlot = Slot<WIDE_IDS>;

const _: () = assert!(std::mem::size_of::<WideSlot>() == 64);

/// The wide slots a piece may be in, the more recently used first.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct WideSet([WideSlot; WIDE_WAYS]);

const EMPTY_WIDE_SET: WideSet = WideSet([WideSlot::EMPTY; WIDE_WAYS]);

/// A type whose value of all zero bytes is valid (every field an integer), so that a
/// `Table` of it may start as zeroed memory.
///
/// # Safety
/// All zero bytes must be a valid value of the type.
unsafe trait Zeroable: Copy {}

// SAFETY: every field of both, down to their slots, is an integer.
unsafe impl Zeroable for Set {}
unsafe impl Zeroable for WideSet {}

/// The sets, in zeroed memory that costs nothing until it is used: on Linux pages mapped
/// for it (the kernel zeroes each on its first touch), elsewhere the allocator's zeroed
/// memory. Neither `Box::new_zeroed_slice` nor `calloc` is lazy here: for sets aligned to
/// 64 bytes the first is `aligned_alloc` plus a `memset` of all 4 MB, and glibc's `calloc`
/// cleared the block too once earlier frees had raised its threshold for mapping blocks
/// (4.2-5.3 M instructions in each thread's first encode, callgrind: 8-15% of a first pass
/// over 500 kB of English).
struct Table<S: Zeroable> {
    sets: NonNull<S>,
    len: usize,
}

impl<S: Zeroable> Table<S> {
    fn zeroed(len: usize) -> Table<S> {
        #[cfg(target_os = "linux")]
        {
            let bytes = len * std::mem::size_of::<S>();
            let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
            // SAFETY: a new private anonymous mapping, aligned to a page, touches no memory of
            // ours; it is unmapped in `drop` with the same length.
            let mapped = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, flags, -1, 0) };
            if mapped != libc::MAP_FAILED {
                if let Some(sets) = NonNull::new(mapped.cast::<S>()) {
                    return Table { sets, len };
                }
            }
            let layout = Layout::array::<S>(len).expect("a table of a few MB");
            alloc::handle_alloc_error(layout)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let sets = NonNull::from(Box::leak(Box::<[S]>::new_zeroed_slice(len)));
            Table { sets: sets.cast(), len }
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<S: Zeroable> Default for Table<S> {
    fn default() -> Table<S> {
        Table { sets: NonNull::dangling(), len: 0 }
    }
}

impl<S: Zeroable> std::ops::Deref for Table<S> {
    type Target = [S];
    fn deref(&self) -> &[S] {
        // SAFETY: `sets` is aligned and holds `len` sets, each all zeros (a valid `S`, as
        // `Zeroable` promises) or written as a set since; dangling but aligned when `len` is 0.
        unsafe { std::slice::from_raw_parts(self.sets.as_ptr(), self.len) }
    }
}

impl<S: Zeroable> std::ops::DerefMut for Table<S> {
    fn deref_mut(&mut self) -> &mut [S] {
        // SAFETY: as `deref`, and `&mut self` is the only way to the sets.
        unsafe { std::slice::from_raw_parts_mut(self.sets.as_ptr(), self.len) }
    }
}

impl<S: Zeroable> Drop for Table<S> {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        #[cfg(target_os = "linux")]
        // SAFETY: mapped in `zeroed` with this length, and no reference to it outlives `self`.
        unsafe {
            libc::munmap(self.sets.as_ptr().cast(), self.len * std::mem::size_of::<S>());
        }
        #[cfg(not(target_os = "linux"))]
        // SAFETY: leaked from a box of `len` sets in `zeroed`.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.sets.as_ptr(), self.len)) });
    }
}

#[derive(Default)]
pub struct PieceCache {
    sets: Table<Set>,
    wide: Table<WideSet>,
    /// A filter of the pieces put in wide slots (`Key::wide_set_and_bit`; see `ModelCache::take_short`).
    wide_used: Vec<u64>,
    /// Model (its `Bpe::cache_owner`, and 0) -> its tag in this thread's slots; the
    /// text segments of a model and a pre-tokenizer (its `PreTokenizer::id`, never 0) ->
    /// theirs.
    tags: FxHashMap<(u64, u64), u16>,
    /// By tag: the pieces its model encoded anew in this thread, or `PREFILLED`.
    new_pieces: Vec<u32>,
    /// The last `for_model` asked (model, segments) and its tags: a thread encodes with
    /// one tokenizer most of the time, and each call asks (two lookups in `tags` for
    /// every document otherwise).
    last: Option<((u64, Option<u64>), (u16, u16))>,
    /// The long pieces of one model, `long_owner`'s.
    long: LongPieceMap,
    long_owner: u64,
}

impl PieceCache {
    /// This thread's cache, ready for the model `owner`, and for its text segments as the
    /// pre-tokenizer `segments` cuts them, where given (see
    /// `ModelCache::get_or_encode_segment`).
    pub fn for_model(&mut self, owner: u64, segments: Option<u64>) -> ModelCache<'_> {
        if self.sets.is_empty() {
            self.sets = Table::zeroed(SETS);
        }
        if self.wide.is_empty() {
            self.wide = Table::zeroed(WIDE_SETS);
            self.wide_used = vec![0; WIDE_FILTER_BITS / 64];
        }
        if self.new_pieces.is_empty() {
            self.new_pieces = vec![0; MAX_TAGS];
        }
        let (tag, segment_tag) = match self.last {
            Some((asked, tags)) if asked == (owner, segments) => tags,
            _ => {
                let tags = self.tags_of(owner, segments);
                self.last = Some(((owner, segments), tags));
                tags
            }
        };
        if self.long_owner != owner {
            self.long_owner = owner;
            self.long.clear();
        }
        let PieceCache { sets, wide, wide_used, long, new_pieces, .. } = self;
        let sets = (&mut **sets).try_into().expect("the table holds `SETS` sets");
        let wide = (&mut **wide).try_into().expect("the table holds `WIDE_SETS` sets");
        let wide_used = (&mut **wide_used).try_into().expect("the filter has `WIDE_FILTER_BITS` bits");
        let new_pieces = &mut new_pieces[usize::from(tag)];
        ModelCache { sets, wide, wide_used, long, tag, segment_tag, new_pieces }
    }

    /// The tags of `for_model`'s model and segments (0: no segments), numbered anew, every
    /// entry dropped, when there are more than `MAX_TAGS`.
    fn tags_of(&mut self, owner: u64, segments: Option<u64>) -> (u16, u16) {
        let keys = [Some((owner, 0)), segments.map(|pre_tokenizer| (owner, pre_tokenizer))];
        let new = keys.iter().flatten().filter(|key| !self.tags.contains_key(key)).count();
        if self.tags.len() + new >= MAX_TAGS {
            self.sets.fill(EMPTY_SET);
            self.wide.fill(EMPTY_WIDE_SET);
            self.wide_used.fill(0);
            self.tags.clear();
        }
        let mut tag_of = |key: (u64, u64)| {
            let next = self.tags.len() as u16 + 1;
            *self.tags.entry(key).or_insert_with(|| {
                self.new_pieces[usize::from(next)] = 0;
                next
            })
        };
        (tag_of((owner, 0)), segments.map_or(0, |pre_tokenizer| tag_of((owner, pre_tokenizer))))
    }
}

/// A thread's cache as one model sees it.
pub struct ModelCache<'a> {
    /// The sets as an array, indexed by `Key::set` (below `SETS` by its making) without a
    /// bounds check, and not through `PieceCache` and `Table` at each piece: 2% of the
    /// instructions of a warm encode (Llama 3, English, callgrind).
    sets: &'a mut [Set; SETS],
    wide: &'a mut [WideSet; WIDE_SETS],
    wide_used: &'a mut [u64; WIDE_FILTER_BITS / 64],
    long: &'a mut LongPieceMap,
    tag: u16,
    /// The tag of the text segments (0: none are kept).
    segment_tag: u16,
    /// The pieces this model encoded anew in this thread, or `PREFILLED`.
    new_pieces: &'a mut u32,
}

impl ModelCache<'_> {
    /// The same cache, for a while.
    pub(super) fn reborrow(&mut self) -> ModelCache<'_> {
        let ModelCache { sets, wide, wide_used, long, tag, segment_tag, new_pieces } = self;
        ModelCache { sets, wide, wide_used, long, tag: *tag, segment_tag: *segment_tag, new_pieces }
    }

    /// Appends the ids of `piece` to `out`, from the cache or from `encode` (whose output
    /// is then kept: in a slot, or a wide slot, where its ids fit, else in the map). `encode` is
    /// handed the cache, for the parts of a piece (see `PieceEncoder::encode_new`).
    ///
    /// Only a hit in the first slot of the set (nearly every lookup of a warm cache) is
    /// inlined into the caller's loop; the rest is a call. With the whole lookup one
    /// function, its calls' register saves and restores and those of the functions around
    /// it were a fifth of the instructions of a warm encode (callgrind, Llama 3, English).
    #[inline(always)]
    pub fn get_or_encode<E>(
        &mut self,
        piece: &[u8],
        out: &mut Vec<u32>,
        encode: impl FnOnce(&mut Self, &[u8], &mut Vec<u32>) -> Result<(), E>,
    ) -> Result<(), E> {
        if piece.len() <= SHORT_MAX {
            return self.get_or_encode_short(piece, Key::new(piece), out, encode);
        }
        self.get_or_encode_slow(piece, None, out, encode)
    }

    /// `get_or_encode` for a piece of at most `SHORT_MAX` bytes whose key the caller made.
    #[inline(always)]
    pub(super) fn get_or_encode_short<E>(
        &mut self,
        piece: &[u8],
        key: Key,
        out: &mut Vec<u32>,
        encode: impl FnOnce(&mut Self, &[u8], &mut Vec<u32>) -> Result<(), E>,
    ) -> Result<(), E> {
        debug_assert!(key == Key::new(piece));
        let at = key.set(self.tag);
        let first = &self.sets[at].0[0];
        if first.holds(&key, self.tag) {
            first.push_ids(out);
            return Ok(());
        }
        self.get_or_encode_slow(piece, Some((at, key)), out, encode)
    }

    /// Appends the ids of the pieces of `text` that end at `ends` (the first starts at
    /// `start`, each where the one before ends) while each is a short piece in the first
    /// slot of its set with 16 bytes of the text from its start (see `Key::in_window`), and
    /// returns how many it took: the caller encodes the next one its own way, then asks again.
    ///
    /// The loop over a warm text's pieces, with nothing in it but the lookup: no `Result`,
    /// no test for the cache, one `reserve` for the batch (`Slot::push_ids` took one a
    /// piece), and a branch that a piece is not short, not whole in the text or not there,
    /// nearly never taken. A warm pass over 2 MB of English (Llama 3, callgrind) took 62.5 M
    /// instructions through `get_or_encode_short` a piece at a time, 52.1 M here (the
    /// lookups about 87 a piece before, 60 after); by the clock (best of 20, six runs of the
    /// builds in turn, medians) 454 -> 508 MB/s, and 390 -> 440 on Python code. Of the time
    /// left in this loop, a profile puts nearly half on the load of the set; asking for the
    /// sets of 16 pieces ahead (a first loop making their keys, a second comparing) took
    /// 71.7 M instructions and ran 6-10% slower.
    #[inline(always)]
    pub(super) fn first_way_hits(&self, text: &[u8], mut start: usize, ends: &[usize], out: &mut Vec<u32>) -> usize {
        out.reserve(ends.len() * SHORT_IDS);
        let (mut ids, mut len) = (out.as_mut_ptr(), out.len());
        let mut taken = 0;
        for &end in ends {
            let n = end - start;
            let window = text.get(start..).and_then(<[u8]>::first_chunk::<{ 2 * 8 }>);
            let (Some(window), 1..=SHORT_MAX) = (window, n) else { break };
            let key = Key::in_window(window, n);
            let slot = &self.sets[key.set(self.tag)].0[0];
            if !slot.holds(&key, self.tag) {
                if !slot.holds_run(&key, self.tag) {
                    break;
                }
                // A run (see `Slot::ids_fit`): appended, and room made again for the pieces
                // left. A run's length is marked, so the loop's test for one is the test
                // of the length it made anyway.
                (start, taken) = (end, taken + 1);
                (ids, len) = slot.take_run(out, len, (ends.len() - taken) * SHORT_IDS);
                continue;
            }
            // SAFETY: `reserve` left room for `SHORT_IDS` ids per piece of `ends` past the
            // length it found, and each piece taken here keeps at most that many.
            len += unsafe { slot.write_ids(ids.add(len)) };
            (start, taken) = (end, taken + 1);
        }
        // SAFETY: the ids up to `len` are written, above or before.
        unsafe { out.set_len(len) };
        taken
    }

    /// `get_or_encode` past the first slot; `slot`: the set and key of a short piece.
    #[inline(never)]
    fn get_or_encode_slow<E>(
        &mut self,
        piece: &[u8],
        slot: Option<(usize, Key)>,
        out: &mut Vec<u32>,
        encode: impl FnOnce(&mut Self, &[u8], &mut Vec<u32>) -> Result<(), E>,
    ) -> Result<(), E> {
        if piece.len() > CACHED_MAX {
            return encode(self, piece, out);
        }
        if let Some((at, key)) = slot {
            if self.take_short(at, &key, self.tag, out) {
                return Ok(());
            }
        }
        if self.get_long(piece, out) {
            return Ok(());
        }
        let start = out.len();
        if *self.new_pieces < PREFILLED - 1 {
            *self.new_pieces += 1;
        }
        // The set may have changed meanwhile (`encode` kept the parts of the piece): the
        // piece still goes first in it.
        encode(self, piece, out)?;
        let ids = &out[start..];
        let kept = slot.is_some_and(|(at, key)| self.keep_short(at, &key, self.tag, ids));
        if !kept {
            self.keep_long(piece, ids);
        }
        Ok(())
    }

    /// Appends the ids of the short piece `key` (whose set is `at`) if a slot or a wide slot
    /// tagged `tag` has them (`true`), moving that slot first.
    ///
    /// The wide set is read only where the piece's bit in a filter of the pieces ever put
    /// in wide slots is set: on a first pass over English nearly every new piece came here
    /// and waited on its wide set's lines, though few pieces have more ids than a slot
    /// holds. The filter (8 kB) stays in the L1 or L2 cache; pieces pushed out of the wide
    /// slots, and those of other models, leave their bits set, which only costs the read.
    fn take_short(&mut self, at: usize, key: &Key, tag: u16, out: &mut Vec<u32>) -> bool {
        if take_from(&mut self.sets[at].0, key, tag, out) {
            return true;
        }
        let (wide, bit) = key.wide_set_and_bit(tag);
        self.wide_used[bit / 64] & 1 << (bit % 64) != 0 && take_from(&mut self.wide[wide].0, key, tag, out)
    }

    /// Keeps the ids of the short piece `key` (whose set is `at`) first in a slot, or a wide
    /// slot, tagged `tag`, where they fit (`true`).
    fn keep_short(&mut self, at: usize, key: &Key, tag: u16, ids: &[u32]) -> bool {
        if Slot::<SHORT_IDS>::ids_fit(ids) {
            put_first(&mut self.sets[at].0, key, tag, ids);
        } else if ids.len() <= WIDE_IDS {
            let (wide, bit) = key.wide_set_and_bit(tag);
            put_first(&mut self.wide[wide].0, key, tag, ids);
            self.wide_used[bit / 64] |= 1 << (bit % 64);
        } else {
            return false;
        }
        true
    }

    /// Whether `prefill` with `tokens` tokens is due: once this model's new pieces in this
    /// thread have cost what it does (see `prefill`).
    #[inline]
    pub(super) fn prefill_due(&self, tokens: usize) -> bool {
        let new_pieces = *self.new_pieces;
        new_pieces != PREFILLED && new_pieces as usize >= tokens / PREFILL_COST_IN_NEW_PIECES
    }

    /// Puts `tokens`, short pieces each of which this model encodes to one id, first in
    /// their sets, the last given first where a set has more than it holds; once per model
    /// and thread.
    ///
    /// Why: on a first pass over a text, a piece the cache has not seen costs 700-800 ns,
    /// waiting on memory (the set's second line, the wide set, the whole-token map, the
    /// merges), and most such pieces in English and code are whole tokens (6,826 of the
    /// 11,600 of Llama 3's first pass over the English handbook). Put here ahead, they are
    /// found in the slots instead. A first pass (Rust `profile_docs` with `WARM_FIFTH=1
    /// FRESH=1`, the builds in turn, three runs each, MB/s): Llama 3 English 114-119 ->
    /// 138-145, Python code 184-191 -> 214-222, Russian 72-73 -> 75-82, Chinese 55-65 ->
    /// 66-68; o200k (200 k tokens for 131 k slots, so a third are dropped again) English
    /// 99-105 -> 106-123, code 184-189 -> 202-211, Russian 60-67 -> 68-73, Chinese 48-57 ->
    /// 54-61. A warm pass is unchanged (callgrind: 16.18 M -> 16.23 M instructions).
    /// Vocabularies with merges got the same (the tokens that merges make of their own
    /// bytes), five runs of each build in turn, MB/s: Qwen2 English 77-92 -> 134-145, Python
    /// code 166-183 -> 210-245, Chinese 40-48 -> 48-55; GPT-2 English 91-128 -> 128-202, code
    /// 205-215 -> 242-265, Chinese 67-84 -> 87-99; DeepSeek-Coder English 71-79 -> 82-89.
    ///
    /// The tokens go in at about 15 ns each (1.9 ms for Llama 3's 126,690, 2.5 ms for
    /// o200k), so this waits until the model's new pieces in this thread have cost as much
    /// (`prefill_due`): a thread that stops right after has spent at most twice what its new
    /// pieces cost, and a tokenizer that encodes a few texts never pays for it. For a
    /// vocabulary with merges, the first thread also works out which tokens to give, once
    /// per model (`build_trees::self_encoding_short_tokens`: 4 ms for GPT-2, 14 ms for
    /// Qwen2, about a tenth of loading either); the threshold stays, so that a first pass
    /// over a few MB gains too. It drops most of what the sets held, once (each set gets
    /// four tokens on average).
    pub(super) fn prefill<'k>(&mut self, tokens: impl IntoIterator<Item = (&'k Key, u32)>) {
        // The set of each token is asked for `AHEAD` tokens before it is written: written as
        // the tokens came, each waited on two lines the CPU's caches did not hold (4-4.5 ms
        // for Llama 3, 5.5-7 for o200k; 1.8-2.0 and 2.4-2.6 now, and the same 32 ahead).
        // Grouped by chunks of the table first, it was slower still: 5.5 ms, most of it
        // faulting in the 8 MB of the groups.
        const AHEAD: usize = 16;
        let tag = self.tag;
        let mut ring: [Option<(&Key, u32, usize)>; AHEAD] = [None; AHEAD];
        let tokens = tokens.into_iter().map(Some).chain(std::iter::repeat_n(None, AHEAD));
        for (i, token) in tokens.enumerate() {
            let next = token.map(|(key, id)| {
                let at = key.set(tag);
                prefetch(&self.sets[at]);
                (key, id, at)
            });
            if let Some((key, id, at)) = std::mem::replace(&mut ring[i % AHEAD], next) {
                let ways = &mut self.sets[at].0;
                // A token already there was kept with these ids: its slot stays where it is.
                if !ways.iter().any(|slot| slot.holds(key, tag)) {
                    put_first(ways, key, tag, &[id]);
                }
            }
        }
        *self.new_pieces = PREFILLED;
    }

    /// Appends the ids of a short text `segment` (at most `SHORT_MAX` bytes): the text
    /// between two added tokens, whose ids `encode` gives from its bytes alone (it
    /// pre-tokenizes the segment, then encodes its pieces through this cache). A segment's
    /// ids are kept apart from a piece's of the same bytes (their own tag, which stands
    /// for the pre-tokenizer too): a segment may be several pieces. Never in the map of
    /// long pieces, which is keyed by the bytes alone.
    ///
    /// With 30,000 added Chinese words, the Chinese handbook is 21,686 segments between
    /// 50,739 matches, most of them a char or two; pre-tokenizing each (a batch of ends
    /// made and zeroed, the lexer's family chosen, the batch flushed) took about 500
    /// instructions a segment. From this cache a warm encode of the handbook took 39.9 M
    /// instructions, not 52.4 M (Llama 3, callgrind; 31.1 M without the words), and ran at
    /// 200-205 MB/s, not 169 (Rust `profile_encode`, the builds in turn; 275 without).
    #[inline]
    pub fn get_or_encode_segment<E>(
        &mut self,
        segment: &[u8],
        out: &mut Vec<u32>,
        encode: impl FnOnce(&mut Self, &mut Vec<u32>) -> Result<(), E>,
    ) -> Result<(), E> {
        debug_assert!(segment.len() <= SHORT_MAX);
        let (key, tag) = (Key::new(segment), self.segment_tag);
        if tag == 0 {
            return encode(self, out);
        }
        let at = key.set(tag);
        if self.take_short(at, &key, tag, out) {
            return Ok(());
        }
        let start = out.len();
        encode(self, out)?;
        // More ids than a wide slot holds: not kept (never in the map of long pieces).
        let ids = &out[start..];
        self.keep_short(at, &key, tag, ids);
        Ok(())
    }

    /// Appends the ids of `piece` if the map of long pieces has them (`true`).
    pub fn get_long(&self, piece: &[u8], out: &mut Vec<u32>) -> bool {
        if piece.len() > CACHED_MAX {
            return false; // never kept: not hashed for nothing
        }
        self.long.append_ids(piece, out)
    }

    /// Keeps the ids of a piece of up to `CACHED_MAX` bytes in the map of long pieces, from
    /// the second time it is asked to (`LongPieceMap::admit`).
    pub fn keep_long(&mut self, piece: &[u8], ids: &[u32]) {
        if piece.len() > CACHED_MAX {
            return;
        }
        let hash = LongPieceMap::hash(piece);
        if !self.long.admit(hash) {
            return;
        }
        if self.long.bytes() + LongPieceMap::size(piece, ids) > LONG_MAX_BYTES {
            self.long.clear();
        }
        self.long.insert(piece, hash, ids);
    }
}

/// The long pieces of one model and their ids: each piece's ids, then its bytes, in one
/// arena of words, and a table of where each piece is. A map of boxes took two allocations
/// per piece, and their frees when emptied: about 5% of a first pass over Chinese
/// (callgrind, Llama 3: `malloc` in `keep_long`). The ids beside the bytes: with the two in
/// arenas of their own, a lookup waited on a line of each.
#[derive(Default)]
struct LongPieceMap {
    table: hashbrown::HashTable<LongEntry>,
    /// Room is kept for `IDS_AT_ONCE` words past the last piece (see `append_ids`).
    arena: Vec<u32>,
    /// The pieces asked to be kept once and not kept (`admit`): a bit by hash.
    seen: Vec<u64>,
    /// The bits set in `seen` since it was last cleared.
    seen_count: usize,
}

/// Bits of `LongPieceMap::seen`: 128 kB, cleared once an eighth of them are set (131 k
/// pieces), so that a piece first asked about long ago is taken for new. A pass over 2 MB
/// of Chinese asks about some 36 k distinct long pieces, and a piece is kept only if it
/// is asked again before the bits are cleared: with 2^16 bits, a per-document pass over
/// those texts again and again never kept one.
const SEEN_BITS: usize = 1 << 20;

/// The ids `LongPieceMap::append_ids` copies at once (32 bytes).
const IDS_AT_ONCE: usize = 8;

/// Whether two byte strings of the same length are equal, compared a word at a time inline
/// (the last word overlapping the one before).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    if n < 8 {
        return n == 0 || partial_word(a) == partial_word(b);
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let mut at = 0;
    while at + 8 < n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

/// Where one piece is in the arena (its ids from `at`, its bytes after them), and its hash
/// (to grow the table).
#[derive(Clone, Copy)]
struct LongEntry {
    hash: u64,
    at: u32,
    ids_len: u32,
    bytes_len: u32,
}

impl LongPieceMap {
    fn hash(piece: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        rustc_hash::FxBuildHasher.hash_one(piece)
    }

    /// Appends the ids of `piece` to `out` if it is here (`true`). The bytes are compared
    /// and the ids copied inline, `IDS_AT_ONCE` at a time, and the length then set: `==` on
    /// the bytes called `bcmp`, and `extend_from_slice` `memmove`, 10% of the samples of a
    /// per-document loop over multilingual text with GPT-2 (perf; most of its words outside
    /// Latin script had more ids than a slot of the sets holds, and came here before they
    /// had wide slots). Inline,
    /// most of that time is the wait on the entry's and the arena's lines, and the loop ran
    /// 1-2% faster.
    #[inline(always)]
    fn append_ids(&self, piece: &[u8], out: &mut Vec<u32>) -> bool {
        let found = self.table.find(Self::hash(piece), |e| {
            e.bytes_len as usize == piece.len() && same_bytes(self.piece(e), piece)
        });
        let Some(entry) = found else { return false };
        let (at, n) = (entry.at as usize, entry.ids_len as usize);
        debug_assert!(at + n + IDS_AT_ONCE <= self.arena.capacity());
        out.reserve(n + IDS_AT_ONCE);
        // SAFETY: the arena has room for `IDS_AT_ONCE` words past its last, and `out` for as
        // many ids past these: the copies may read past the piece's ids (into its bytes or
        // that room) and write past the new length, as bytes (not values), within both
        // allocations.
        unsafe {
            let (from, to) = (self.arena.as_ptr().add(at), out.as_mut_ptr().add(out.len()));
            let mut copied = 0;
            while copied < n {
                std::ptr::copy_nonoverlapping(from.add(copied), to.add(copied), IDS_AT_ONCE);
                copied += IDS_AT_ONCE;
            }
            out.set_len(out.len() + n);
        }
        true
    }

    fn piece(&self, entry: &LongEntry) -> &[u8] {
        let words = &self.arena[(entry.at + entry.ids_len) as usize..][..Self::words(entry.bytes_len as usize)];
        // SAFETY: the words are initialized, and the piece's bytes are their first.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), entry.bytes_len as usize) }
    }

    /// The words a piece of `len` bytes takes in the arena.
    fn words(len: usize) -> usize {
        len.div_ceil(4)
    }

    /// Whether a piece whose hash is `hash` is to be kept: only from the second time
    /// (probably: two pieces may share a bit) that it is asked.
    ///
    /// Why: most long pieces of a pass over new text are never met again (CJK runs: the
    /// 12,228 of 500 kB of the Chinese handbook are 9,048 distinct), and keeping each one
    /// copied its ids and bytes into the arena, a line or two that no later lookup reads:
    /// 5% of the instructions of a first pass over Chinese, and 9% of its misses of a
    /// simulated 2 MB cache (Qwen2, callgrind). A piece met again is kept then, and found
    /// from its third time on.
    fn admit(&mut self, hash: u64) -> bool {
        if self.seen.is_empty() {
            self.seen = vec![0; SEEN_BITS / 64];
        }
        let bit = (hash >> 44) as usize % SEEN_BITS;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if self.seen[word] & mask != 0 {
            return true;
        }
        if self.seen_count == SEEN_BITS / 8 {
            self.seen.fill(0);
            self.seen_count = 0;
        }
        self.seen[word] |= mask;
        self.seen_count += 1;
        false
    }

    /// Keeps a piece that `append_ids` did not find (a second entry would only waste room),
    /// `hash` being its `hash`. The arena stays below `LONG_MAX_BYTES` (`keep_long`), so
    /// offsets fit in 32 bits.
    fn insert(&mut self, piece: &[u8], hash: u64, ids: &[u32]) {
        let offset = |len: usize| u32::try_from(len).expect("below LONG_MAX_BYTES");
        let entry = LongEntry {
            hash,
            at: offset(self.arena.len()),
            ids_len: offset(ids.len()),
            bytes_len: offset(piece.len()),
        };
        self.arena.reserve(ids.len() + Self::words(piece.len()) + IDS_AT_ONCE);
        self.arena.extend_from_slice(ids);
        self.arena.extend(piece.chunks(4).map(|chunk| {
            let mut word = [0; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            u32::from_ne_bytes(word)
        }));
        self.table.insert_unique(entry.hash, entry, |e| e.hash);
    }

    /// The bytes a piece with `ids` takes in the arena.
    fn size(piece: &[u8], ids: &[u32]) -> usize {
        4 * (ids.len() + Self::words(piece.len()))
    }

    /// The bytes of the pieces and their ids.
    fn bytes(&self) -> usize {
        4 * self.arena.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    fn clear(&mut self) {
        self.table.clear();
        self.arena.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `piece` through the cache, with a stand-in encoder that counts its calls.
    fn get(cache: &mut ModelCache, piece: &[u8], ids: &[u32], calls: &mut usize) -> Vec<u32> {
        let mut out = vec![7];
        cache
            .get_or_encode::<()>(piece, &mut out, |_, _, out| {
                *calls += 1;
                out.extend_from_slice(ids);
                Ok(())
            })
            .unwrap();
        assert_eq!(out[0], 7, "appends after what is there");
        out.split_off(1)
    }

    #[test]
    fn keys_are_the_zero_padded_bytes() {
        let text: Vec<u8> = (1..=SHORT_MAX as u8).map(|b| b.wrapping_mul(37)).collect();
        for len in 0..=SHORT_MAX {
            let mut bytes = [0u8; SHORT_MAX];
            bytes[..len].copy_from_slice(&text[..len]);
            let words: Vec<u64> =
                bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
            let key = Key::new(&text[..len]);
            assert_eq!(key.words[..], words[..], "length {len}");
            assert_eq!(key.len as usize, len);
            // Read from a window whose bytes past the piece are not zero: the same key.
            assert_eq!(Key::in_window(&text[..].try_into().unwrap(), len), key, "length {len}");
        }
    }

    #[test]
    fn keeps_pieces_of_every_length_and_id_count() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let cases: Vec<(Vec<u8>, Vec<u32>)> = vec![
            (b"a\0".to_vec(), vec![1]),
            (b"a".to_vec(), vec![2]), // a prefix with zero padding is another key
            (vec![b'x'; SHORT_MAX], vec![3; SHORT_IDS]),
            (vec![b'y'; SHORT_MAX], vec![4, 5, 6, 7]), // too many ids for a slot: a wide one
            (vec![b'v'; SHORT_MAX], (0..=WIDE_IDS as u32).collect()), // too many for a wide slot: the map
            (vec![b'u'; SHORT_MAX], vec![8; SHORT_MAX]), // a run: a slot (see `Slot::ids_fit`)
            (vec![b'z'; CACHED_MAX], vec![5; 20]),
            (vec![b'w'; CACHED_MAX + 1], vec![6; 2]), // never kept
        ];
        let mut model = cache.for_model(1, None);
        for (piece, ids) in &cases {
            // Twice: the map keeps a piece the second time (`LongPieceMap::admit`).
            for _ in 0..2 {
                assert_eq!(&get(&mut model, piece, ids, &mut calls), ids);
            }
        }
        let in_map = 3; // 'v', 'z' and 'w' (which is never kept) are encoded twice
        assert_eq!(calls, cases.len() + in_map);
        for (piece, ids) in &cases {
            let again = get(&mut model, piece, &[99], &mut calls);
            assert_eq!(again, if piece.len() > CACHED_MAX { &[99][..] } else { ids });
        }
        assert_eq!(calls, cases.len() + in_map + 1, "only the piece over CACHED_MAX is encoded again");
    }

    #[test]
    fn the_map_of_long_pieces_tells_pieces_apart_by_every_byte() {
        let mut map = LongPieceMap::default();
        let piece = |len: usize| (0..len).map(|i| (i * 37 + len) as u8).collect::<Vec<u8>>();
        let ids = |len: usize| (0..len % 19 + 1).map(|i| (len * 100 + i) as u32).collect::<Vec<u32>>();
        for len in 1..=40 {
            map.insert(&piece(len), LongPieceMap::hash(&piece(len)), &ids(len));
        }
        for len in 1..=40 {
            let mut out = vec![7];
            assert!(map.append_ids(&piece(len), &mut out), "length {len}");
            assert_eq!(out[1..], ids(len), "length {len}");
            assert_eq!(out[0], 7);
            for at in 0..len {
                let mut other = piece(len);
                other[at] ^= 0x40;
                assert!(!map.append_ids(&other, &mut out), "length {len}, byte {at}");
            }
            assert!(!map.append_ids(&piece(len)[..len - 1], &mut out), "a prefix of length {len}");
            assert_eq!(out.len(), 1 + ids(len).len(), "nothing appended where not found");
        }
    }

    #[test]
    fn the_map_keeps_a_piece_the_second_time_it_is_asked_to() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let mut model = cache.for_model(1, None);
        let piece = |i: usize| format!("{i:0>width$}", width = SHORT_MAX + 1);
        for expected_calls in [1, 2, 2] {
            assert_eq!(get(&mut model, piece(0).as_bytes(), &[1, 2], &mut calls), [1, 2]);
            assert_eq!(calls, expected_calls, "encoded the first and second time, then found");
        }
        // Once an eighth of the bits are set, they are cleared: a piece seen before is new
        // again. (Hashes by the bit they set: `admit` takes the bit from the top bits.)
        let mut map = LongPieceMap::default();
        let hash = |bit: usize| (bit as u64) << 44;
        assert!(!map.admit(hash(0)) && map.admit(hash(0)));
        for bit in 1..SEEN_BITS / 8 {
            assert!(!map.admit(hash(bit)));
        }
        assert!(map.admit(hash(0)), "not cleared yet: an eighth of the bits are set");
        assert!(!map.admit(hash(SEEN_BITS / 8)), "one more: cleared, then set");
        assert!(!map.admit(hash(0)), "cleared");
        assert!(map.admit(hash(SEEN_BITS / 8)));
    }

    #[test]
    fn the_map_of_long_pieces_stays_within_its_bytes() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let mut model = cache.for_model(1, None);
        let ids = vec![7; 16];
        let size = CACHED_MAX + 4 * ids.len();
        let fit = LONG_MAX_BYTES / size;
        for i in 0..fit + 10 {
            let piece: Vec<u8> = (i as u32).to_le_bytes().into_iter().cycle().take(CACHED_MAX).collect();
            get(&mut model, &piece, &ids, &mut calls);
            get(&mut model, &piece, &ids, &mut calls); // kept the second time
            assert!(model.long.bytes() <= LONG_MAX_BYTES);
            assert_eq!(model.long.bytes(), model.long.len() * size);
        }
        assert_eq!(model.long.len(), 10, "emptied once full, then refilled");
    }

    #[test]
    fn tokens_are_put_in_ahead_once_new_pieces_cost_as_much() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let names: Vec<String> = (0..480).map(|i| format!("t{i}")).collect();
        let keys: Vec<Key> = names.iter().map(|n| Key::new(n.as_bytes())).collect();
        let tokens = || keys.iter().zip(1000..);
        let due_after = (keys.len() / PREFILL_COST_IN_NEW_PIECES) as u32;
        // A token encoded before is kept where it is, not twice.
        assert_eq!(get(&mut cache.for_model(1, None), b"t7", &[1007], &mut calls), [1007]);
        for i in 1..due_after - 1 {
            assert!(!cache.for_model(1, None).prefill_due(keys.len()), "after {i} new pieces");
            get(&mut cache.for_model(1, None), format!("new{i}").as_bytes(), &[1, 2], &mut calls);
        }
        // Hits are no new pieces.
        get(&mut cache.for_model(1, None), b"t7", &[1007], &mut calls);
        assert!(!cache.for_model(1, None).prefill_due(keys.len()));
        get(&mut cache.for_model(1, None), b"new", &[1, 2], &mut calls);
        let mut model = cache.for_model(1, None);
        assert!(model.prefill_due(keys.len()));
        model.prefill(tokens());
        assert!(!model.prefill_due(keys.len()), "once");
        assert_eq!(calls, due_after as usize);
        for (key, _) in tokens() {
            let slots = model.sets[key.set(model.tag)].0.iter().filter(|s| s.holds(key, model.tag)).count();
            assert_eq!(slots, 1, "{key:?}");
        }
        for (name, id) in names.iter().zip(1000..) {
            assert_eq!(get(&mut model, name.as_bytes(), &[0], &mut calls), [id], "{name}");
        }
        assert_eq!(calls, due_after as usize, "every token from the slots");
        // Another model: its own count, and none of these tokens.
        let mut other = cache.for_model(2, None);
        assert!(!other.prefill_due(keys.len()));
        assert_eq!(get(&mut other, b"t7", &[5], &mut calls), [5]);
        // More models than tags: numbering starts again, and so do the counts (each of these
        // models has one new piece).
        for owner in 3..(MAX_TAGS as u64 + 10) {
            get(&mut cache.for_model(owner, None), b"x", &[1], &mut calls);
        }
        for i in 0..due_after - 1 {
            get(&mut cache.for_model(1, None), format!("again{i}").as_bytes(), &[1, 2], &mut calls);
        }
        assert!(!cache.for_model(1, None).prefill_due(keys.len()));
    }

    #[test]
    fn models_never_see_each_others_entries() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let long = [b'l'; SHORT_MAX + 1];
        for piece in [&b"hello"[..], &long] {
            assert_eq!(get(&mut cache.for_model(1, None), piece, &[1], &mut calls), [1]);
            // The map keeps a long piece the second time (`LongPieceMap::admit`).
            assert_eq!(get(&mut cache.for_model(1, None), piece, &[1], &mut calls), [1]);
            assert_eq!(get(&mut cache.for_model(1, None), piece, &[9], &mut calls), [1]);
            assert_eq!(get(&mut cache.for_model(2, None), piece, &[2], &mut calls), [2]);
            // Model 1's entry is kept (short pieces: its own slot) or encoded again (the map
            // holds one model's), never model 2's.
            let again = get(&mut cache.for_model(1, None), piece, &[3], &mut calls);
            assert_eq!(again, if piece.len() <= SHORT_MAX { [1] } else { [3] });
        }
        assert_eq!(calls, 6, "hello twice, the long piece four times (the first time it is not kept)");
        // More models than tags: everything is dropped and numbering starts again.
        for owner in 3..(MAX_TAGS as u64 + 10) {
            assert_eq!(get(&mut cache.for_model(owner, None), b"hello", &[owner as u32], &mut calls), [owner as u32]);
        }
        assert_eq!(get(&mut cache.for_model(1, None), b"hello", &[11], &mut calls), [11]);
        assert_eq!(get(&mut cache.for_model(2, None), b"hello", &[12], &mut calls), [12]);
    }

    #[test]
    fn segments_are_kept_apart_from_pieces_and_by_pre_tokenizer() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let mut segment = |model: &mut ModelCache, text: &[u8], ids: &[u32]| {
            let mut out = vec![7];
            model
                .get_or_encode_segment::<()>(text, &mut out, |_, out| {
                    calls += 1;
                    out.extend_from_slice(ids);
                    Ok(())
                })
                .unwrap();
            out[1..].to_vec()
        };
        // A piece and a segment of the same bytes, and the segments of two pre-tokenizers.
        let mut piece_calls = 0;
        assert_eq!(get(&mut cache.for_model(1, Some(1)), b"ab", &[1], &mut piece_calls), [1]);
        assert_eq!(segment(&mut cache.for_model(1, Some(1)), b"ab", &[2, 3]), [2, 3]);
        assert_eq!(segment(&mut cache.for_model(1, Some(2)), b"ab", &[4]), [4]);
        assert_eq!(segment(&mut cache.for_model(2, Some(1)), b"ab", &[5; 4]), [5; 4]);
        assert_eq!(get(&mut cache.for_model(1, Some(1)), b"ab", &[9], &mut piece_calls), [1]);
        assert_eq!(segment(&mut cache.for_model(1, Some(1)), b"ab", &[9]), [2, 3]);
        assert_eq!(segment(&mut cache.for_model(1, Some(2)), b"ab", &[9]), [4]);
        assert_eq!(segment(&mut cache.for_model(2, Some(1)), b"ab", &[9]), [5; 4]);
        // Without a pre-tokenizer nothing is kept; more ids than a wide slot are not kept.
        assert_eq!(segment(&mut cache.for_model(1, None), b"ab", &[6]), [6]);
        assert_eq!(segment(&mut cache.for_model(1, None), b"ab", &[8]), [8]);
        let many: Vec<u32> = (0..=WIDE_IDS as u32).collect();
        assert_eq!(segment(&mut cache.for_model(1, Some(1)), b"abcdefghijkl", &many), many);
        assert_eq!(segment(&mut cache.for_model(1, Some(1)), b"abcdefghijkl", &[1]), [1]);
        assert_eq!(calls, 7);
        assert_eq!(piece_calls, 1);
    }

    #[test]
    fn first_way_hits_take_the_cached_short_pieces_before_any_other() {
        let mut cache = PieceCache::default();
        let mut model = cache.for_model(1, None);
        let mut calls = 0;
        let long = "a-name-longer-than-16-bytes";
        let pieces =
            ["The", " cat", " sat", ",", " then", " ", long, " on", " a", " mat", " by", " his", " door", ".\n"];
        let text = pieces.concat();
        let ends: Vec<usize> = pieces.iter().scan(0, |end, p| Some(*end += p.len()).map(|()| *end)).collect();
        let ids = |i: usize| -> Vec<u32> { (0..=(i % SHORT_IDS) as u32).map(|k| 10 * i as u32 + k).collect() };
        for (i, piece) in pieces.iter().enumerate().filter(|&(_, p)| *p != " then") {
            get(&mut model, piece.as_bytes(), &ids(i), &mut calls);
        }
        let hits = |start: usize, ends: &[usize], text: &[u8]| {
            let mut out = vec![7];
            let taken = model.first_way_hits(text, start, ends, &mut out);
            (taken, out.split_off(1))
        };
        let expected = |pieces: std::ops::Range<usize>| -> Vec<u32> { pieces.flat_map(ids).collect() };
        // Up to a piece not in the cache.
        assert_eq!(hits(0, &ends, text.as_bytes()), (4, expected(0..4)));
        // From the piece after it: up to one longer than a key.
        assert_eq!(hits(ends[4], &ends[5..], text.as_bytes()), (1, expected(5..6)));
        // After that one: the pieces with 16 bytes of text from their start.
        let to_end = |i: usize| text.len() - ends[i - 1];
        let whole = (7..pieces.len()).take_while(|&i| to_end(i) >= 16).count();
        assert!(whole > 0 && whole < pieces.len() - 7, "the text ends within 16 bytes of a piece");
        assert_eq!(hits(ends[6], &ends[7..], text.as_bytes()), (whole, expected(7..7 + whole)));
        // A text shorter than a window.
        assert_eq!(hits(0, &[3, 7], b"The cat"), (0, vec![]));
        assert_eq!(hits(0, &[], text.as_bytes()), (0, vec![]));
    }

    #[test]
    fn runs_of_one_id_are_first_way_hits_however_many_ids() {
        let mut cache = PieceCache::default();
        let mut model = cache.for_model(1, None);
        let mut calls = 0;
        // A line break and its indentation, as GPT-2 encodes them: a token, then a space's
        // again and again; and a piece whose run starts at its third id.
        let indents: Vec<String> = (3..SHORT_MAX).map(|spaces| format!("\n{}", " ".repeat(spaces))).collect();
        let ids_of = |piece: &str| -> Vec<u32> {
            match piece.strip_prefix("\n") {
                Some(spaces) => [198].into_iter().chain(std::iter::repeat_n(220, spaces.len())).collect(),
                None => [5, 6].into_iter().chain(std::iter::repeat_n(7, piece.len() - 2)).collect(),
            }
        };
        let mut pieces: Vec<&str> = indents.iter().map(String::as_str).collect();
        pieces.push("xyzzy");
        for piece in &pieces {
            assert_eq!(get(&mut model, piece.as_bytes(), &ids_of(piece), &mut calls), ids_of(piece));
        }
        assert!(model.wide.iter().all(|set| set.0.iter().all(|slot| slot.tag == 0)), "no wide slot taken");
        // Many runs in one batch, each past the room made for `SHORT_IDS` ids a piece.
        let order: Vec<&str> = (0..40).map(|i| pieces[i * 7 % pieces.len()]).collect();
        let text = format!("{}{}", order.concat(), " ".repeat(SHORT_MAX));
        let ends: Vec<usize> = order
            .iter()
            .scan(0, |end, p| {
                *end += p.len();
                Some(*end)
            })
            .collect();
        let mut out = vec![1];
        assert_eq!(model.first_way_hits(text.as_bytes(), 0, &ends, &mut out), order.len());
        let expected: Vec<u32> = [1].into_iter().chain(order.iter().flat_map(|p| ids_of(p))).collect();
        assert_eq!(out, expected);
        // Ids whose tail is not one id again: a wide slot.
        let (piece, ids) = (b"abcd", [1, 2, 2, 3]);
        assert_eq!(get(&mut model, piece, &ids, &mut calls), ids);
        assert_eq!(get(&mut model, piece, &[0], &mut calls), ids);
        assert!(model.wide.iter().any(|set| set.0.iter().any(|slot| slot.tag != 0)));
        assert_eq!(calls, pieces.len() + 1);
    }

    #[test]
    fn short_pieces_with_more_ids_than_a_slot_take_a_wide_slot() {
        let mut cache = PieceCache::default();
        let mut model = cache.for_model(1, None);
        let mut calls = 0;
        let piece = |n: usize| format!("{n:0>width$}", width = SHORT_MAX);
        let ids = |n: usize| (0..n as u32).map(|i| 100 * n as u32 + i).collect::<Vec<u32>>();
        for n in SHORT_IDS + 1..=WIDE_IDS {
            assert_eq!(get(&mut model, piece(n).as_bytes(), &ids(n), &mut calls), ids(n));
        }
        assert_eq!(model.long.len(), 0, "none in the map");
        get(&mut model, piece(WIDE_IDS + 1).as_bytes(), &ids(WIDE_IDS + 1), &mut calls);
        assert_eq!(model.long.len(), 0, "the map keeps a piece the second time");
        get(&mut model, piece(WIDE_IDS + 1).as_bytes(), &ids(WIDE_IDS + 1), &mut calls);
        assert_eq!(model.long.len(), 1, "one id too many for a wide slot: the map");
        for n in SHORT_IDS + 1..=WIDE_IDS + 1 {
            let mut out = vec![7; 5];
            model.get_or_encode::<()>(piece(n).as_bytes(), &mut out, |_, _, _| unreachable!("kept")).unwrap();
            assert_eq!(out[..5], [7; 5], "appended after what is there");
            assert_eq!(out[5..], ids(n), "{n} ids");
        }
    }

    #[test]
    fn a_third_piece_in_a_wide_set_replaces_the_least_recently_used() {
        let mut cache = PieceCache::default();
        let mut model = cache.for_model(1, None);
        let set = Key::new(b"w0").wide_set_and_bit(model.tag).0;
        let mates: Vec<String> = (1..)
            .map(|i| format!("w{i}"))
            .filter(|p| Key::new(p.as_bytes()).wide_set_and_bit(model.tag).0 == set)
            .take(3)
            .collect();
        let (a, b, c) = (mates[0].as_bytes(), mates[1].as_bytes(), mates[2].as_bytes());
        let mut calls = 0;
        // Five ids, not a run (see `Slot::ids_fit`).
        let ids = |first: u32| [first, first + 1, first + 2, first + 3, first + 4];
        get(&mut model, a, &ids(10), &mut calls);
        get(&mut model, b, &ids(20), &mut calls);
        assert_eq!(get(&mut model, a, &[0], &mut calls), ids(10)); // now `b` is the older
        get(&mut model, c, &ids(30), &mut calls);
        assert_eq!(calls, 3);
        assert_eq!(get(&mut model, a, &[0], &mut calls), ids(10));
        assert_eq!(get(&mut model, c, &[0], &mut calls), ids(30));
        assert_eq!(calls, 3, "the more recently used and the new one stayed");
        assert_eq!(get(&mut model, b, &ids(40), &mut calls), ids(40));
        assert_eq!(calls, 4, "the least recently used was replaced");
    }

    #[test]
    fn a_wide_set_is_read_only_where_the_filter_has_the_piece() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let mut model = cache.for_model(1, None);
        // Five ids, not a run (see `Slot::ids_fit`).
        let (piece, ids) = (b"emoji", [10, 11, 12, 13, 14]);
        get(&mut model, piece, &ids, &mut calls);
        let (set, bit) = Key::new(piece).wide_set_and_bit(model.tag);
        assert!(model.wide_used[bit / 64] & 1 << (bit % 64) != 0, "its bit set when kept");
        assert_eq!(model.wide_used.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        assert_eq!(get(&mut model, piece, &[0], &mut calls), ids);
        // With its bit clear the wide set is not read: encoded again, and kept again.
        model.wide_used[bit / 64] &= !(1 << (bit % 64));
        assert_eq!(get(&mut model, piece, &[20, 21, 22, 23, 24], &mut calls), [20, 21, 22, 23, 24]);
        assert_eq!((calls, model.wide[set].0[0].tag), (2, model.tag));
        assert_eq!(get(&mut model, piece, &[0], &mut calls), [20, 21, 22, 23, 24]);
        // Dropped with the wide slots when the tags are numbered anew.
        for owner in 2..(MAX_TAGS as u64 + 10) {
            cache.for_model(owner, None);
        }
        assert!(cache.wide_used.iter().all(|&w| w == 0));
    }

    #[test]
    fn models_never_see_each_others_wide_slots() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        // Five ids, not a run (see `Slot::ids_fit`).
        let ids = |first: u32| [first, first + 1, first + 2, first + 3, first + 4];
        let (piece, one, two) = (b"emoji", ids(10), ids(20));
        assert_eq!(get(&mut cache.for_model(1, None), piece, &one, &mut calls), one);
        assert_eq!(get(&mut cache.for_model(2, None), piece, &two, &mut calls), two);
        assert_eq!(get(&mut cache.for_model(1, None), piece, &[9], &mut calls), one);
        assert_eq!(get(&mut cache.for_model(2, None), piece, &[9], &mut calls), two);
        assert_eq!(calls, 2);
        // More models than tags: the wide slots are dropped with the others (the model after
        // the last tag gets tag 1 again, and must not find model 1's piece).
        for owner in 3..(MAX_TAGS as u64 + 10) {
            let ids = ids(100 * owner as u32);
            assert_eq!(get(&mut cache.for_model(owner, None), piece, &ids, &mut calls), ids, "model {owner}");
        }
        let calls_before = calls;
        assert_eq!(get(&mut cache.for_model(1, None), piece, &ids(30), &mut calls), ids(30));
        assert_eq!(calls, calls_before + 1, "encoded again");
    }

    #[test]
    fn a_wide_slot_is_found_only_by_its_model_and_its_length() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let piece = b"emoji";
        get(&mut cache.for_model(1, None), piece, &[1, 2, 3, 4, 5], &mut calls); // not a run
        cache.for_model(2, None);
        // The slot copied into the sets where model 2's key, and the key of the same bytes
        // with one zero byte more, would be: neither may take it.
        let mut model = cache.for_model(1, None);
        let key = Key::new(piece);
        let filled = model.wide[key.wide_set_and_bit(1).0];
        let longer = Key::new(b"emoji\0");
        assert_eq!(longer.words, key.words, "the same words, another length");
        // Their bits in the filter set too, so that their wide sets are read.
        for (set, bit) in [key.wide_set_and_bit(2), longer.wide_set_and_bit(1)] {
            model.wide[set] = filled;
            model.wide_used[bit / 64] |= 1 << (bit % 64);
        }
        assert_eq!(get(&mut model, b"emoji\0", &[5, 6, 7, 8, 9, 10], &mut calls), [5, 6, 7, 8, 9, 10]);
        assert_eq!(get(&mut cache.for_model(2, None), piece, &[2, 3, 4, 5, 6], &mut calls), [2, 3, 4, 5, 6]);
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_run_is_found_only_by_its_model_and_its_length() {
        let mut cache = PieceCache::default();
        let mut calls = 0;
        let piece = b"\n    ";
        get(&mut cache.for_model(1, None), piece, &[198, 220, 220, 220, 220], &mut calls);
        cache.for_model(2, None);
        // As for a wide slot, the set copied where model 2's key, and the key of the same
        // bytes with one zero byte more, would be.
        let mut model = cache.for_model(1, None);
        let key = Key::new(piece);
        let filled = model.sets[key.set(1)];
        assert!(filled.0[0].holds_run(&key, 1), "kept as a run");
        let longer = Key::new(b"\n    \0");
        assert_eq!(longer.words, key.words, "the same words, another length");
        model.sets[key.set(2)] = filled;
        model.sets[longer.set(1)] = filled;
        assert_eq!(get(&mut model, b"\n    \0", &[1, 2, 3, 4, 5, 6], &mut calls), [1, 2, 3, 4, 5, 6]);
        assert_eq!(get(&mut cache.for_model(2, None), piece, &[7; 5], &mut calls), [7; 5]);
        assert_eq!(calls, 3);
    }

    /// Pieces whose keys fall in the set of `first`.
    fn set_mates(model: &ModelCache, first: &str, n: usize) -> Vec<String> {
        let set = Key::new(first.as_bytes()).set(model.tag);
        (1..).map(|i| format!("p{i}")).filter(|p| Key::new(p.as_bytes()).set(model.tag) == set).take(n).collect()
    }

    #[test]
    fn a_full_set_keeps_its_pieces() {
        let mut cache = PieceCache::default();
        let mut model = cache.for_model(1, None);
        let mates = set_mates(&model, "p0", WAYS);
        let mut calls = 0;
        for _ in 0..3 {
            for (id, piece) in mates.iter().enumerate() {
                assert_eq!(get(&mut model, piece.as_bytes(), &[id as u32], &mut calls), [id as u32]);
            }
        }
        assert_eq!(calls, WAYS, "each encoded once");
    }

    #[test]
    fn one_piece_too_many_replaces_the_least_recently_used() {
        let mut cache = PieceCache::default();
        let mut model = cache.for_model(1, None);
        let mates = set_mates(&model, "p0", WAYS + 1);
        let (first, second, extra) = (mates[0].as_bytes(), mates[1].as_bytes(), mates[WAYS].as_bytes());
        let mut calls = 0;
        for (id, piece) in mates[..WAYS].iter().enumerate() {
            get(&mut model, piece.as_bytes(), &[id as u32], &mut calls);
        }
        assert_eq!(get(&mut model, first, &[0], &mut calls), [0]); // now `second` is the oldest
        assert_eq!(get(&mut model, extra, &[9], &mut calls), [9]);
        assert_eq!(calls, WAYS + 1);
        assert_eq!(get(&mut model, first, &[0], &mut calls), [0]);
        assert_eq!(get(&mut model, extra, &[9], &mut calls), [9]);
        assert_eq!(calls, WAYS + 1, "the first piece and the new one stayed");
        assert_eq!(get(&mut model, second, &[1], &mut calls), [1]);
        assert_eq!(calls, WAYS + 2, "the least recently used was replaced");
        for _ in 0..3 {
            for (id, piece) in mates.iter().enumerate() {
                let id = if id == WAYS { 9 } else { id as u32 };
                assert_eq!(get(&mut model, piece.as_bytes(), &[id], &mut calls), [id]);
            }
        }
    }
}
