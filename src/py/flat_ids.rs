//! The ids of `encode_batch_numpy`: one bytearray of little-endian `u32`s, written as the
//! ids come, with the GIL released.
//!
//! Why not `PyByteArray::new_with` once every id is known: it zeroes the bytes before they
//! are written, and then the copy comes after the encode, on the calling thread alone (on
//! every core it was slower: the pool's threads have to wake for it). For 6,774 English
//! documents (1 MB of ids, Llama 3, 2 cores, 2026-12-06) zeroing took 60 us, the copy on
//! every core 130-140 us and on one thread 77-79 us, of a 2.2-2.4 ms call. Here the
//! bytearray is made before the encode, with room for the ids the batch is expected to make
//! (`RoomHint`), and `encode_to_flat` writes each chunk's ids into it while the pool encodes
//! the chunks after; only ids past the room wait for the end. The room's bytes left
//! unwritten are never touched, and so take no pages of memory; the bytearray's size is
//! then cut to the ids', which gives that room back only where the ids fill less than half
//! of it (CPython reallocates a bytearray that shrinks by more than half, and otherwise only
//! sets its size: `sys.getsizeof` then counts up to twice the ids' bytes, as a second review
//! measured with a room of a token per char). Under CPython's debug allocator (`-X dev`) the
//! whole room is written with a pattern, and where memory is committed strictly it counts
//! in full; a room that cannot be had is none (`with_room`). The two builds in turn (Llama 3,
//! the race's documents, best of 20 calls in each of 4-6 processes, a room of a token per
//! char): 2 cores, English 509 -> 576 MB/s, Chinese 359 -> 372, Python code 609 -> 649; one
//! core 287 -> 298, 194 -> 204, 330 -> 351.

use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ids a tokenizer's last batch made per char, to size the next batch's room.
///
/// Why not a room of one id per char: that is 4-5x the ids of English text, and a room of
/// more than glibc's mmap threshold (128 kB, raised to the size of the largest block freed
/// since) is mapped for each call, its pages faulted in as they are written and unmapped
/// when the array is freed. With a room of 4 bytes a char (4.8 MB for the race's English
/// documents, 1.1 MB of ids) every call made an `mmap`, an `mremap` (CPython shrinking the
/// array) and an `munmap`: 2.3-2.8% of a call's samples were page faults in `Room::push`,
/// and on 2 cores the unmap interrupted the other core. A room of 1.25x the last batch's
/// ids per char comes back from the heap once one such block has been freed. A batch that
/// makes more ids than its room still gets them all: the rest wait for `finish`. The two
/// builds in turn (the race's documents, best of 20 calls in each of 3 processes,
/// 2026-12-06): GPT-2 English, 2 cores 478 -> 546 MB/s, one core 270 -> 292 (its scaling
/// 1.77x -> 1.87x); Llama 3 English 512 -> 556 and 288 -> 292; o200k multilingual 468 ->
/// 497 and 257 -> 263; Qwen2 Chinese, whose room was already on the heap, 317 and 310.
pub(super) struct RoomHint {
    /// Ids per char, in 1/65536ths; 0 before the first batch.
    ids_per_char: AtomicU32,
}

impl RoomHint {
    const ONE: u64 = 1 << 16;

    pub(super) const fn new() -> RoomHint {
        RoomHint { ids_per_char: AtomicU32::new(0) }
    }

    /// The ids to make room for, for `chars` chars in `texts` texts: a token per char
    /// before any batch, then 1.25x the last batch's ids per char, never more than a token
    /// per char, plus 4 per text (a template's tokens).
    ///
    /// Why at most a token per char: a batch of few chars can make many ids per char (a
    /// thousand empty texts, each given a BOS, and one char: 1,001), and a room sized from
    /// that took 5 GB of address space for the next batch of 1 M chars (a second review,
    /// `tracemalloc`), which `-X dev` writes in full and strict overcommit counts.
    pub(super) fn room(&self, chars: usize, texts: usize) -> usize {
        let per_char = match u64::from(self.ids_per_char.load(Ordering::Relaxed)) {
            0 => Self::ONE,
            learned => (learned + learned / 4).min(Self::ONE),
        };
        let ids = (chars as u128 * u128::from(per_char)) >> 16;
        usize::try_from(ids).unwrap_or(usize::MAX).saturating_add(texts.saturating_mul(4))
    }

    /// Remembers the ids per char of a batch.
    pub(super) fn learn(&self, chars: usize, ids: usize) {
        if chars > 0 {
            let per_char = (ids as u128 * u128::from(Self::ONE)) / chars as u128;
            // At least one 65536th, so that a batch of no ids does not read as unlearned.
            self.ids_per_char.store(per_char.clamp(1, u128::from(u32::MAX)) as u32, Ordering::Relaxed);
        }
    }
}

/// A bytearray being filled with ids: `room` lends the part that may be written without
/// the GIL, `finish` ends it, with the GIL.
pub(super) struct FlatIds<'py> {
    array: Bound<'py, PyByteArray>,
    room: Room,
}

/// Where ids go while the GIL is released: the bytearray's bytes not yet written, then, past
/// them, rows kept aside.
pub(super) struct Room {
    /// The first byte not yet written.
    at: *mut u8,
    /// Ids that fit from `at` on.
    ids_left: usize,
    /// Ids written.
    written: usize,
    /// Rows that did not fit, in order.
    spilled: Vec<Vec<u32>>,
}

// SAFETY: `at` points into the bytearray of the `FlatIds` that owns the `Room`, which no
// Python code can reach until `FlatIds::finish` returns it, and only the thread holding the
// `Room` (lent by `FlatIds::room`, so the bytearray outlives it) writes there.
unsafe impl Send for Room {}

impl<'py> FlatIds<'py> {
    /// A bytearray with room for `ids` ids, not yet written. When that much memory cannot be
    /// had, the room is empty and every id waits for `finish` (which needs only the ids'
    /// own size).
    pub(super) fn with_room(py: Python<'py>, ids: usize) -> PyResult<FlatIds<'py>> {
        let new = |bytes: usize| {
            // SAFETY: a bytearray made from NULL has `bytes` bytes not yet written (and a
            // trailing NUL after them); `Room` writes them, and `finish` makes its size the
            // number written before any Python code can see it.
            unsafe {
                let object = pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), bytes as pyo3::ffi::Py_ssize_t);
                Bound::from_owned_ptr_or_err(py, object).map(|array| array.downcast_into_unchecked::<PyByteArray>())
            }
        };
        let (array, ids) = match ids.checked_mul(4).filter(|&bytes| bytes <= isize::MAX as usize).map(new) {
            Some(Ok(array)) => (array, ids),
            _ => (new(0)?, 0),
        };
        // SAFETY: the bytearray's bytes, alive as long as `array`, which `FlatIds` keeps.
        let at = unsafe { pyo3::ffi::PyByteArray_AsString(array.as_ptr()).cast::<u8>() };
        Ok(FlatIds { array, room: Room { at, ids_left: ids, written: 0, spilled: Vec::new() } })
    }

    /// Where the ids go, in order (`Room::push`); it may be sent to a thread without the GIL.
    pub(super) fn room(&mut self) -> &mut Room {
        &mut self.room
    }

    /// The bytearray of every id pushed, its size the ids' own.
    pub(super) fn finish(self, py: Python<'py>) -> PyResult<Bound<'py, PyByteArray>> {
        let room = self.room;
        let spilled = room.spilled.iter().map(Vec::len).sum::<usize>();
        let bytes = (room.written + spilled) * 4;
        // Growing the bytearray may move its bytes (see the module's comment on shrinking).
        // SAFETY: the object is a bytearray that only this function can reach.
        if unsafe { pyo3::ffi::PyByteArray_Resize(self.array.as_ptr(), bytes as pyo3::ffi::Py_ssize_t) } != 0 {
            return Err(PyErr::fetch(py));
        }
        if spilled > 0 {
            // SAFETY: the bytes from the `written` ids on are the spilled ids' room, made just
            // above (its address read again: the resize may have moved it).
            let at = unsafe { pyo3::ffi::PyByteArray_AsString(self.array.as_ptr()).cast::<u8>().add(room.written * 4) };
            let mut rest = Room { at, ids_left: spilled, written: 0, spilled: Vec::new() };
            py.allow_threads(move || room.spilled.into_iter().for_each(|row| rest.push(row)));
        }
        Ok(self.array)
    }
}

impl Room {
    /// Writes `ids` after those written so far, or keeps them for `FlatIds::finish` if they
    /// do not fit (and, the room then closed, every id after them too).
    pub(super) fn push(&mut self, ids: Vec<u32>) {
        if ids.len() > self.ids_left {
            self.ids_left = 0;
            self.spilled.push(ids);
            return;
        }
        for &id in &ids {
            // SAFETY: `ids_left` ids fit from `at` on (checked above).
            unsafe {
                self.at.copy_from_nonoverlapping(id.to_le_bytes().as_ptr(), 4);
                self.at = self.at.add(4);
            }
        }
        self.ids_left -= ids.len();
        self.written += ids.len();
    }
}
