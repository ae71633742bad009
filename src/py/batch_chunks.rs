//! A batch encoded a chunk at a time, each chunk's results made while the chunks after it
//! are still being encoded: lists of ids for `encode_batch`, and the flat ids and offsets of
//! `encode_batch_flat` (`encode_batch_numpy`).
//!
//! Why: lists of Python ints can only be made holding the GIL, one thread at a time. Made
//! after the whole batch was encoded, they kept the other cores idle: in a loop of
//! `encode_batch` over 6,774 English documents (GPT-2, 2 cores; 2026-12-04) the encode took
//! 4-6 ms on both cores and then the calling thread 2-3 ms alone (the texts' UTF-8 0.3 ms,
//! the lists 2 ms, freeing the rows 0.3 ms); perf gave the calling thread as many samples as
//! each core's worker. Here the texts go to the pool's threads in chunks as they are read,
//! and the calling thread makes each chunk's lists as soon as it is encoded, so that only
//! the last chunk's lists come after the encode.
//!
//! Writing the slots on every core instead was tried and measured first: no faster (0.90-1.05x
//! of the calling thread alone), as the slots, zeroed by the calling thread, moved between
//! the cores' caches.
//!
//! The flat ids took the same way on 2026-12-06: they had been made all at once, and lists
//! ran faster than them (see `encode_to_flat`).

use super::flat_ids::{FlatIds, RoomHint};
use super::id_lists::IdInts;
use super::{check_python_room, text_ref, to_py, IntoPy, IDS};
use crate::error::{Error, Result};
use crate::special::SpecialPolicy;
use crate::tokenizer::Tokenizer;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList, PyString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};

/// UTF-8 bytes of text per chunk of the flat ids, at most: small enough that the last
/// chunk's ids (written after everything else) are few, large enough that a chunk's
/// overhead (a task, a message, a wait) stays below 1% of its encode. A smaller batch is
/// cut into 8 chunks per thread, of at least `CHUNK_MIN`.
const CHUNK_BYTES: usize = 32 << 10;
const CHUNK_MIN: usize = 4 << 10;
/// The same for lists, in 4 chunks per thread. The calling thread makes each chunk's lists
/// (about 0.6 us per kB of English) on a core the pool's threads would use, and fewer,
/// larger turns of it ran faster, the two sizes in turn in the same build (the race's
/// documents, 2 cores, best of 20 calls in each of 5-6 processes, 2026-12-06): Llama 3
/// English 2.81 -> 2.73 ms (median 3.08 -> 2.81), GPT-2 code 5.27 -> 4.71 (5.58 -> 5.27),
/// o200k English 2.92 -> 2.82 (3.08 -> 2.91). The flat ids, whose turns are a copy of a
/// few us, did not gain (2.30 -> 2.38 and 2.40 -> 2.47 ms on the English, at best). Why the
/// turns' number matters is not pinned down: context switches were about the same (perf
/// stat, 11-12 a call either way), and no wait of the channel shows in perf.
const LIST_CHUNK_BYTES: usize = 128 << 10;
/// Chars of text below which a batch is encoded at once on the calling thread: a chunk sent
/// to the pool costs 20-25 us of waking and waiting (one text of 40 chars: 28 us sent, 3 us
/// here).
const PIPELINE_FROM: usize = 16 << 10;

/// A chunk's ids one after another, and where each text's ids end.
struct Encoded {
    ids: Vec<u32>,
    ends: Vec<usize>,
}

type Message = (usize, Result<Encoded>);

/// The lists of ids of `texts`, in order: `Tokenizer::encode_batch` and then a list per row,
/// with the lists made while the pool's threads encode the chunks after. Not for a tokenizer
/// that pads (the length it pads to depends on the whole batch).
pub(super) fn encode_to_lists<'py>(
    py: Python<'py>,
    tokenizer: &Tokenizer,
    table: &IdInts,
    texts: &[Bound<'py, PyString>],
    policy: &SpecialPolicy,
    add_special_tokens: bool,
) -> PyResult<Vec<Bound<'py, PyList>>> {
    let mut lists = Lists { lists: Vec::with_capacity(texts.len()), ids: 0 };
    let mut take = |chunk: Encoded| lists.append(py, table, &chunk);
    let chars = chars(texts);
    encode_in_chunks(py, tokenizer, texts, chars, policy, add_special_tokens, Take::WithGil(&mut take))?;
    Ok(lists.lists)
}

/// The ids of `texts` one after another (little-endian `u32`s, see `flat_ids`), and the
/// n + 1 offsets of each text's first id (little-endian `i64`s, the last the number of ids).
/// Not for a tokenizer that pads.
///
/// Why in chunks: the texts' UTF-8 (made by CPython on first use of a non-ASCII str, with
/// the GIL) is read while the first chunks are encoded, and a chunk's ids are one `Vec`,
/// not one per text, written into the bytearray as soon as the chunks before it are. Before,
/// the UTF-8 of every text was read first and each text's ids were a `Vec` of their own,
/// and lists of ids ran at 1.06-1.45x of this call's speed. Chunks alone, the two builds in
/// turn (Llama 3, the race's documents, 2 cores, best of 10, two runs each): English
/// 281-290 -> 451-491 MB/s, Chinese 257-268 -> 331-347, Python code 383-394 -> 574-588;
/// the ids written as they come (`flat_ids`) added 4-13%. The chunks are received without
/// the GIL (`Take::WithoutGil`).
pub(super) fn encode_to_flat<'py>(
    py: Python<'py>,
    tokenizer: &Tokenizer,
    texts: &[Bound<'_, PyString>],
    policy: &SpecialPolicy,
    add_special_tokens: bool,
    room_hint: &RoomHint,
) -> PyResult<(Bound<'py, PyByteArray>, Vec<u8>)> {
    let (mut offsets, mut ids) = (Vec::new(), 0usize);
    Error::reserve(&mut offsets, (texts.len() + 1) * 8, "the offsets of the batch").or_raise(py)?;
    offsets.extend_from_slice(&0i64.to_le_bytes());
    let chars = chars(texts);
    let mut flat = FlatIds::with_room(py, room_hint.room(chars, texts.len()))?;
    let room = flat.room();
    let mut take = |chunk: Encoded| {
        for &end in &chunk.ends {
            offsets.extend_from_slice(&((ids + end) as i64).to_le_bytes());
        }
        ids += chunk.ids.len();
        check_python_room(ids, 4)?;
        room.push(chunk.ids);
        Ok(())
    };
    encode_in_chunks(py, tokenizer, texts, chars, policy, add_special_tokens, Take::WithoutGil(&mut take))?;
    room_hint.learn(chars, ids);
    Ok((flat.finish(py)?, offsets))
}

/// The chars of `texts`, all told.
fn chars(texts: &[Bound<'_, PyString>]) -> usize {
    texts.iter().map(|s| s.len().unwrap_or(0)).sum()
}

/// How `encode_in_chunks` hands over each chunk.
enum Take<'a> {
    /// Holding the GIL, taken back after each wait for a chunk (lists are Python objects).
    WithGil(&'a mut dyn FnMut(Encoded) -> PyResult<()>),
    /// With the GIL released from when the last chunk is sent (reading the texts needs it)
    /// to when the last one is taken. Taken back after each wait, it had to be won from
    /// whichever thread held it meanwhile, up to CPython's switch interval (5 ms) each time:
    /// `prepare` reads its next batch on another thread while this one encodes, and with a
    /// chunk at a time its megatron output ran slower than before chunks (53-55 against
    /// 57-59 MB/s, Llama 3, 12.7 MB of the corpora, 2 cores); received this way, as fast
    /// (four runs each, in turn: 49.6-53.5 against 47.4-55.6, its own reading in Python
    /// being what sets its pace).
    WithoutGil(&'a mut (dyn FnMut(Encoded) -> Result<()> + Send)),
}

impl Take<'_> {
    /// UTF-8 bytes of text per chunk, for a batch of `chars` chars.
    fn chunk_bytes(&self, chars: usize) -> usize {
        let (most, per_thread) = match self {
            Take::WithGil(_) => (LIST_CHUNK_BYTES, 4),
            Take::WithoutGil(_) => (CHUNK_BYTES, 8),
        };
        (chars / (per_thread * crate::pool::threads())).clamp(CHUNK_MIN, most)
    }
}

/// Encodes `texts` a chunk at a time on the pool's threads and hands each chunk to `take`
/// on this thread, in order, as soon as it and the ones before it are encoded. `chars`: the
/// texts' chars, all told.
fn encode_in_chunks(
    py: Python<'_>,
    tokenizer: &Tokenizer,
    texts: &[Bound<'_, PyString>],
    chars: usize,
    policy: &SpecialPolicy,
    add_special_tokens: bool,
    take: Take<'_>,
) -> PyResult<()> {
    debug_assert!(!tokenizer.pads());
    let batch = Batch { tokenizer, policy, add_special_tokens, stop: AtomicBool::new(false) };
    if chars < PIPELINE_FROM {
        let strs = texts.iter().map(text_ref).collect::<PyResult<Vec<_>>>()?;
        let bytes = strs.iter().map(|s| s.len()).sum();
        let encoded = py.allow_threads(|| batch.encode(&strs, bytes)).or_raise(py)?;
        return match take {
            Take::WithGil(take) => take(encoded),
            Take::WithoutGil(take) => take(encoded).or_raise(py),
        };
    }
    crate::pool::in_place_scope(|scope| {
        let (sender, receiver) = mpsc::channel();
        // In a lock only to be waited on with the GIL released (a receiver is not `Sync`).
        let receiver = Mutex::new(receiver);
        let made = send_chunks(scope, &batch, texts, take.chunk_bytes(chars), sender).and_then(|chunks| match take {
            Take::WithGil(take) => receive_chunks(py, &receiver, chunks, take),
            Take::WithoutGil(take) => {
                py.allow_threads(|| receive_chunks_without_gil(&receiver, chunks, take)).map_err(|lost| lost.raise(py))
            }
        });
        if made.is_err() {
            // The scope's end waits for every task, holding the GIL: let the running ones
            // finish first, without it (the receiver ends when every task has ended).
            batch.stop.store(true, Ordering::Relaxed);
            py.allow_threads(|| while lock(&receiver).recv().is_ok() {});
        }
        made
    })
}

/// What every chunk of a batch is encoded with.
struct Batch<'a> {
    tokenizer: &'a Tokenizer,
    policy: &'a SpecialPolicy,
    add_special_tokens: bool,
    /// Set on an error: the chunks not yet begun are then left alone (the scope waits for
    /// every task before it returns).
    stop: AtomicBool,
}

impl Batch<'_> {
    fn encode(&self, texts: &[&str], bytes: usize) -> Result<Encoded> {
        let mut ids = Vec::new();
        Error::reserve(&mut ids, bytes / 3 + 4 * texts.len(), "the ids of the texts")?;
        let mut ends = Vec::with_capacity(texts.len());
        for text in texts {
            self.tokenizer.encode_onto(text, self.policy, self.add_special_tokens, &mut ids)?;
            ends.push(ids.len());
        }
        Ok(Encoded { ids, ends })
    }
}

/// Reads the texts (their UTF-8 form, made on first use of a non-ASCII str, needs the GIL)
/// and sends each chunk to the pool as soon as it is read; returns how many chunks there are.
fn send_chunks<'a>(
    scope: &rayon::Scope<'a>,
    batch: &'a Batch<'a>,
    texts: &'a [Bound<'_, PyString>],
    target: usize,
    sender: mpsc::Sender<Message>,
) -> PyResult<usize> {
    let (mut chunks, mut rest) = (0, texts);
    while !rest.is_empty() {
        let (mut strs, mut bytes) = (Vec::new(), 0);
        for s in rest {
            let s = text_ref(s)?;
            strs.push(s);
            bytes += s.len();
            if bytes >= target {
                break;
            }
        }
        rest = &rest[strs.len()..];
        let (sender, n) = (sender.clone(), chunks);
        scope.spawn(move |_| {
            if batch.stop.load(Ordering::Relaxed) {
                return;
            }
            let encoded = batch.encode(&strs, bytes);
            if encoded.is_err() {
                batch.stop.store(true, Ordering::Relaxed);
            }
            let _ = sender.send((n, encoded));
        });
        chunks += 1;
    }
    Ok(chunks)
}

/// Hands each chunk to `take` in order, as the chunks come, the GIL released while waiting
/// for one.
fn receive_chunks(
    py: Python<'_>,
    receiver: &Mutex<mpsc::Receiver<Message>>,
    chunks: usize,
    take: &mut dyn FnMut(Encoded) -> PyResult<()>,
) -> PyResult<()> {
    let mut in_order = InOrder::new(chunks);
    while let Some(chunk) = in_order.next(|| py.allow_threads(|| lock(receiver).recv())) {
        take(chunk.map_err(|lost| lost.raise(py))?)?;
    }
    Ok(())
}

/// `receive_chunks` for a `take` that needs no GIL, called without it.
fn receive_chunks_without_gil(
    receiver: &Mutex<mpsc::Receiver<Message>>,
    chunks: usize,
    take: &mut (dyn FnMut(Encoded) -> Result<()> + Send),
) -> std::result::Result<(), Lost> {
    let mut in_order = InOrder::new(chunks);
    while let Some(chunk) = in_order.next(|| lock(receiver).recv()) {
        take(chunk?).map_err(Lost::Error)?;
    }
    Ok(())
}

/// Why a chunk did not come.
enum Lost {
    /// Encoding it failed (the first error to come, whichever chunk's: every chunk not yet
    /// begun then is left alone, so one before it may never come).
    Error(Error),
    /// Every sender was gone before it came: a task panicked (and the scope's end raises
    /// its panic).
    Panicked,
}

impl Lost {
    fn raise(self, py: Python<'_>) -> PyErr {
        match self {
            Lost::Error(e) => to_py(py, e),
            Lost::Panicked => PyRuntimeError::new_err("a thread encoding the batch failed"),
        }
    }
}

/// The chunks of a batch in order, from messages that come in any order.
struct InOrder {
    early: Vec<Option<Encoded>>,
    next: usize,
}

impl InOrder {
    fn new(chunks: usize) -> Self {
        InOrder { early: (0..chunks).map(|_| None).collect(), next: 0 }
    }

    /// The next chunk, waiting for messages with `recv`; `None` after the last.
    fn next(
        &mut self,
        mut recv: impl FnMut() -> std::result::Result<Message, mpsc::RecvError>,
    ) -> Option<std::result::Result<Encoded, Lost>> {
        let chunk = match self.early.get_mut(self.next)?.take() {
            Some(chunk) => chunk,
            None => loop {
                let Ok((n, encoded)) = recv() else { return Some(Err(Lost::Panicked)) };
                match encoded {
                    Err(e) => return Some(Err(Lost::Error(e))),
                    Ok(chunk) if n == self.next => break chunk,
                    Ok(chunk) => self.early[n] = Some(chunk),
                }
            },
        };
        self.next += 1;
        Some(Ok(chunk))
    }
}

/// The lists made so far, and their ids.
struct Lists<'py> {
    lists: Vec<Bound<'py, PyList>>,
    ids: usize,
}

impl<'py> Lists<'py> {
    /// Appends the lists of a chunk's texts.
    fn append(&mut self, py: Python<'py>, table: &IdInts, chunk: &Encoded) -> PyResult<()> {
        self.ids += chunk.ids.len();
        check_python_room(self.ids, IDS).or_raise(py)?;
        let mut start = 0;
        let rows = chunk
            .ends
            .iter()
            .map(|&end| {
                let row = &chunk.ids[start..end];
                start = end;
                row
            })
            .collect::<Vec<_>>();
        self.lists.extend(table.lists(py, &rows)?);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
