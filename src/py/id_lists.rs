//! Python lists of ids, written slot by slot, of ints made once per tokenizer.
//!
//! A list of ids is what `encode` returns, and making it was a large part of a call from
//! Python: a new int per id took about 35 ns (a fifth of a per-document encode), and
//! `PyList_SetItem` with `Py_IncRef`, two exported calls per id under the limited API,
//! 13-24 ns an id. So every id has its int in a table (`IdInts`), and a list's slots are
//! written here directly, as fastokens (also abi3) writes them.
//!
//! Counting the references of those slots is what is left, and it is the subject of the
//! rest of this file: see `IdInts`.

use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyList, PyString};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

type Object = *mut pyo3::ffi::PyObject;

/// Where a list object keeps the address of its array of slots, if it is where CPython's
/// `PyListObject` has it (after the variable-size object header), checked once on a real
/// list; `None` leaves lists to `PyList_SetItem`.
///
/// Why: under the limited API `PyList_SetItem` and `Py_IncRef` are exported functions, two
/// calls per id, and a list of ids cost 13-24 ns an id: 35-40% of a whole-text `encode`
/// from Python (Llama 3, Debian handbook: 206-221 MB/s in Rust, 126 from Python). Measured
/// with `perf` (one core, 2026-12-02): the list's share of a per-document encode loop fell
/// from 10.7% of the samples to 8.6% (the encode's own: 20-24%), of a whole-text loop from
/// 22% to 19%.
pub(super) fn list_items_offset(py: Python<'_>) -> Option<usize> {
    static OFFSET: GILOnceCell<Option<usize>> = GILOnceCell::new();
    *OFFSET.get_or_init(py, || {
        if !(cfg!(target_endian = "little") && cfg!(target_pointer_width = "64")) {
            return None; // the counts below are read as the low 32 bits of the first word
        }
        let marker = PyString::new(py, "tokensmith: where are a list's slots?");
        let list = PyList::new(py, [&marker]).ok()?;
        let at = 3 * std::mem::size_of::<usize>(); // ob_refcnt, ob_type, ob_size
                                                   // SAFETY: a `PyListObject` is at least its header and the slots' address long.
        let items = unsafe { *list.as_ptr().cast::<u8>().add(at).cast::<*const Object>() };
        // SAFETY: read only when it is the address of a one-slot array.
        (!items.is_null() && unsafe { *items } == marker.as_ptr()).then_some(at)
    })
}

/// How an object's reference count is kept, which changed in Python 3.12.
#[derive(Clone, Copy)]
enum Counts {
    /// Up to 3.11: the whole first word counts, and no object is immortal.
    Wide,
    /// From 3.12 on: an object whose count's low 32 bits are negative as an `i32` is
    /// immortal (small ints, for one); its count must not be written, and a mortal count
    /// must stay below that range.
    Narrow,
}

impl Counts {
    /// # Safety
    /// `object` is a live Python object, and the GIL is held.
    #[inline(always)]
    unsafe fn is_immortal(self, object: Object) -> bool {
        matches!(self, Counts::Narrow) && (*object.cast::<isize>() as i32) < 0
    }

    /// `Py_INCREF` inline: the count is the object's first word. An immortal object goes to
    /// `Py_IncRef`, which does what the running version requires.
    ///
    /// # Safety
    /// `object` is a live Python object, and the GIL is held.
    #[inline(always)]
    unsafe fn incref(self, object: Object) {
        if self.is_immortal(object) {
            pyo3::ffi::Py_IncRef(object);
        } else {
            *object.cast::<isize>() += 1;
        }
    }

    /// Raises the count by `n` in one step: false (and nothing done) where that would take
    /// a narrow count into the immortal range, or the object is immortal.
    ///
    /// # Safety
    /// `object` is a live Python object, and the GIL is held.
    unsafe fn try_add(self, object: Object, n: u32) -> bool {
        let count = object.cast::<isize>();
        match self {
            Counts::Wide => *count += n as isize,
            Counts::Narrow
                if (*count as i32) >= 0 && i64::from(*count as i32) + i64::from(n) <= i64::from(i32::MAX) =>
            {
                *count += n as isize
            }
            Counts::Narrow => return false,
        }
        true
    }

    /// `incref` `n` times: in one step where it can, else `Py_IncRef` until the count stops
    /// moving (an immortal object: one call) or `n` times.
    ///
    /// # Safety
    /// `object` is a live Python object, and the GIL is held.
    unsafe fn add(self, object: Object, n: u32) {
        if self.try_add(object, n) {
            return;
        }
        let count = object.cast::<isize>();
        for _ in 0..n {
            let before = *count;
            pyo3::ffi::Py_IncRef(object);
            if *count == before {
                break;
            }
        }
    }
}

/// The references each table int holds in advance, for slots written without raising its
/// count (see `IdInts`). Below 2^31 with room to spare, so that a 3.12+ count stays mortal.
const RESERVE: u32 = 1 << 29;
/// Slots written uncounted, in all, after which their counts are settled.
const SETTLE_AT: usize = 1 << 20;
/// A fill of more ids than this raises each count inline: with `SETTLE_AT` it keeps the
/// uncounted slots below `RESERVE`.
const FILL_MAX: usize = 1 << 28;
const _: () = assert!(SETTLE_AT + FILL_MAX < RESERVE as usize);

/// A table int, and how many slots hold it uncounted.
struct IdInt {
    int: PyObject,
    uses: AtomicU32,
}

/// The slots written uncounted since the last settling.
#[derive(Default)]
struct Uncounted {
    /// The ids whose `uses` are not 0, in the order they were first used.
    used: Vec<u32>,
    slots: usize,
}

/// An int for every id of a vocabulary, made once, whose references in lists are counted
/// in arrears.
///
/// Why: raising each slot's int's count was the largest cost of a per-document call after
/// the encode itself (`fill_lists`, 13% of the samples of a Llama 3 English loop, against
/// 31% for pre-tokenizing and BPE). The ints are spread over 4 MB (Llama 3), and every
/// count is a read and a write of a line that is rarely in the core's cache. Without those
/// writes a document took 18-20% less time (measured with the counts left out altogether,
/// 2026-12-04: English 1,460 -> 1,200 ns, Chinese 1,760 -> 1,400 ns a document, lists
/// kept), and as built below 16-17% less (English 1,565 -> 1,300 ns, Chinese 2,106 ->
/// 1,768 ns; medians of four runs of the two builds in turn, one core, the same day).
/// Long lists had been tallied this way since 2026-12-02, each settled at its end: a count
/// then rose once per distinct id (the first 2 MB of the Debian handbook in one list:
/// 264,658 ids, 15,025 distinct), and whole-text calls ran 144 -> 152 MB/s (English),
/// 68 -> 78 (Chinese), 124 -> 131 (CPython source). Per-document lists gained nothing
/// from that: most of their ids are distinct, so settling each list touched every int.
///
/// How it stays correct: each int's count holds `RESERVE` references more than it has when
/// the table is made. A slot is then written with its int's `uses` raised instead of its
/// count (`uses` sits beside the int's address, which the slot needs anyway), and the
/// counts are raised by their uses once `SETTLE_AT` slots are uncounted (`settle`). Until
/// then a slot freed by Python lowers a count its own reference never raised, which the
/// reserve covers: no count can fall by more than the uncounted slots, always fewer than
/// `RESERVE` (`SETTLE_AT + FILL_MAX`). So no table int is freed while a slot holds it. When
/// the table goes, it settles and gives the reserve back, and the ints are then counted
/// exactly as if each slot had been counted when written. On Python 3.12+ an int that is
/// immortal (below 256) has no reserve and needs none; a table one of whose ints cannot
/// take its reserve counts inline, as without one.
pub(super) struct IdInts {
    ints: Vec<IdInt>,
    counts: Counts,
    /// Whether every int holds `RESERVE` (else every slot is counted when written).
    reserved: bool,
    /// Whoever holds it owns every `uses`; a fill that finds it taken counts inline.
    uncounted: Mutex<Uncounted>,
}

impl IdInts {
    /// The ints of ids below `n`.
    pub(super) fn new(py: Python<'_>, n: u32) -> IdInts {
        let counts = if py.version_info() >= (3, 12) { Counts::Narrow } else { Counts::Wide };
        // Only where slots are written here: elsewhere (`PyList_SetItem`) each is counted,
        // and a count read as 32 bits of a 64-bit word would be wrong.
        let direct = list_items_offset(py).is_some();
        let int = |id: u32| IdInt {
            int: id.into_pyobject(py).expect("infallible").into_any().unbind(),
            uses: AtomicU32::new(0),
        };
        let ints: Vec<IdInt> = (0..n).map(int).collect();
        // SAFETY: the GIL is held, and the ints are live (the table holds them).
        let reserved = direct && unsafe {
            let mortal = || ints.iter().map(|entry| entry.int.as_ptr()).filter(|&int| !counts.is_immortal(int));
            let given = mortal().take_while(|&int| counts.try_add(int, RESERVE)).count();
            let all = given == mortal().count();
            if !all {
                for int in mortal().take(given) {
                    *int.cast::<isize>() -= RESERVE as isize;
                }
            }
            all
        };
        IdInts { ints, counts, reserved, uncounted: Mutex::new(Uncounted::default()) }
    }

    /// The int of `id`: the table's, or a new one past it.
    pub(super) fn int<'py>(&self, py: Python<'py>, id: u32) -> Bound<'py, PyAny> {
        match self.ints.get(id as usize) {
            Some(entry) => entry.int.bind(py).clone(),
            None => id.into_pyobject(py).expect("infallible").into_any(),
        }
    }

    /// `ids` as a Python list of these ints: `lists` for one row, without a vector of one.
    pub(super) fn list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        let Some(items_at) = list_items_offset(py) else {
            return PyList::new(py, ids.iter().map(|&id| self.int(py, id)));
        };
        let list = empty_list(py, ids.len())?;
        // SAFETY: the list is new, untracked and of the row's length.
        unsafe { self.fill_lists(py, items_at, std::slice::from_ref(&list), &[ids])? };
        Ok(list)
    }

    /// Each row of ids as a Python list of these ints.
    pub(super) fn lists<'py>(&self, py: Python<'py>, rows: &[&[u32]]) -> PyResult<Vec<Bound<'py, PyList>>> {
        let Some(items_at) = list_items_offset(py) else {
            return rows.iter().map(|ids| PyList::new(py, ids.iter().map(|&id| self.int(py, id)))).collect();
        };
        let lists = rows.iter().map(|ids| empty_list(py, ids.len())).collect::<PyResult<Vec<_>>>()?;
        // SAFETY: the lists are new, untracked and each of its row's length.
        unsafe { self.fill_lists(py, items_at, &lists, rows)? };
        Ok(lists)
    }

    /// Writes the ints of each row into its list, then gives the lists to the garbage
    /// collector. On an error (no memory for an int past the table) the slots not yet
    /// written stay NULL, which `list_dealloc` skips, and every written one is accounted for.
    ///
    /// # Safety
    /// Each list is new, untracked by the garbage collector (`empty_list`), seen by no one
    /// else, and of its row's length; `items_at` is `list_items_offset`'s answer.
    pub(super) unsafe fn fill_lists(
        &self,
        py: Python<'_>,
        items_at: usize,
        lists: &[Bound<'_, PyList>],
        rows: &[&[u32]],
    ) -> PyResult<()> {
        // Taken only now that every list is made: making one may run the garbage collector
        // and finalizers, which may let another thread in. From here on only an error
        // (`PyErr::fetch`) may run Python code, and that is safe: the lists are untracked,
        // the table's own references keep every int alive, and another fill finds the
        // uncounted slots taken.
        let mut uncounted = self.take_uncounted(py, rows.iter().map(|ids| ids.len()).sum());
        let filled = lists
            .iter()
            .zip(rows)
            .try_for_each(|(list, ids)| self.fill(py, list_items(list, items_at), ids, uncounted.as_deref_mut()));
        // On an error too: the lists are then freed at once, each slot lowering a count it
        // never raised, and failing fills in a row must not use up the reserve unsettled.
        if let Some(uncounted) = uncounted.as_deref_mut() {
            if uncounted.slots >= SETTLE_AT {
                self.settle(uncounted);
            }
        }
        drop(uncounted);
        filled?;
        for list in lists {
            pyo3::ffi::PyObject_GC_Track(list.as_ptr().cast());
        }
        Ok(())
    }

    /// The uncounted slots, with room for `ids` more, or `None` where the fill must count
    /// inline: the table has no reserve, the fill is too large, or another fill holds them.
    fn take_uncounted(&self, _py: Python<'_>, ids: usize) -> Option<MutexGuard<'_, Uncounted>> {
        if !self.reserved || ids > FILL_MAX {
            return None;
        }
        let mut uncounted = match self.uncounted.try_lock() {
            Ok(uncounted) => uncounted,
            // A panic while it was held: every use it records is still a slot uncounted.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        if uncounted.slots >= SETTLE_AT {
            // SAFETY: the GIL is held (`_py`), and these are this table's uncounted slots.
            unsafe { self.settle(&mut uncounted) };
        }
        uncounted.slots += ids;
        Some(uncounted)
    }

    /// Writes the int of each id into `items`, one slot each, each holding a reference:
    /// counted at once without `uncounted`, else recorded in its uses. Stops at the first
    /// error, with the slots from there on unwritten.
    ///
    /// # Safety
    /// The GIL is held, `items` has room for `ids.len()` slots no one else can see, and
    /// `uncounted` is this table's, with room for these ids (`take_uncounted`).
    #[inline(always)]
    unsafe fn fill(
        &self,
        py: Python<'_>,
        items: *mut Object,
        ids: &[u32],
        mut uncounted: Option<&mut Uncounted>,
    ) -> PyResult<()> {
        // A new int past the table, without `into_pyobject`, which panics where memory is
        // short: unwinding here would leave slots that Python frees, uncounted and unsettled.
        let new_int = |id: u32| {
            let int = pyo3::ffi::PyLong_FromUnsignedLongLong(id.into());
            if int.is_null() {
                Err(PyErr::fetch(py))
            } else {
                Ok(int)
            }
        };
        for (i, &id) in ids.iter().enumerate() {
            *items.add(i) = match self.ints.get(id as usize) {
                Some(entry) => {
                    match &mut uncounted {
                        None => self.counts.incref(entry.int.as_ptr()),
                        Some(uncounted) => {
                            // Plain loads and stores: the holder of `uncounted` alone touches
                            // the uses.
                            let uses = entry.uses.load(Ordering::Relaxed);
                            if uses == 0 {
                                uncounted.used.push(id);
                            }
                            entry.uses.store(uses + 1, Ordering::Relaxed);
                        }
                    }
                    entry.int.as_ptr()
                }
                None => new_int(id)?,
            };
        }
        Ok(())
    }

    /// Raises each used int's count by its uses, and clears them.
    ///
    /// # Safety
    /// The GIL is held, and `uncounted` is this table's.
    unsafe fn settle(&self, uncounted: &mut Uncounted) {
        for id in uncounted.used.drain(..) {
            let entry = &self.ints[id as usize];
            self.counts.add(entry.int.as_ptr(), entry.uses.load(Ordering::Relaxed));
            entry.uses.store(0, Ordering::Relaxed);
        }
        uncounted.slots = 0;
    }

    /// Settles the uncounted slots now: every int's count is then its references plus its
    /// reserve (what the tests of the counts compare). Returns how many slots were uncounted.
    pub(super) fn settle_now(&self, _py: Python<'_>) -> usize {
        let mut uncounted = self.uncounted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let slots = uncounted.slots;
        // SAFETY: the GIL is held (`_py`), and `uncounted` is this table's.
        unsafe { self.settle(&mut uncounted) };
        slots
    }
}

impl Drop for IdInts {
    /// Settles, and gives each int's reserve back: a slot still holding one is then counted,
    /// and the table's own reference (dropped with `ints`) is the int's last but theirs.
    fn drop(&mut self) {
        if !self.reserved {
            return;
        }
        // The table belongs to a tokenizer object, which Python frees holding the GIL.
        Python::with_gil(|py| {
            self.settle_now(py);
            for entry in &self.ints {
                let int = entry.int.as_ptr();
                // SAFETY: the GIL is held, and the int is live (the table holds it). Its count
                // holds the table's reference and `RESERVE` besides, unless it is immortal
                // (below 256 on 3.12+, or past 2^31 references, left as it is).
                unsafe {
                    if !self.counts.is_immortal(int) {
                        *int.cast::<isize>() -= RESERVE as isize;
                    }
                }
            }
        });
    }
}

/// A new list of `len` empty (NULL) slots, untracked by the garbage collector until
/// `IdInts::fill_lists` has written them: the collector, which may run while the next
/// list of a batch is made, must not hand a half-made list to Python code.
pub(super) fn empty_list(py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyList>> {
    let len = isize::try_from(len).map_err(|_| PyMemoryError::new_err("too many ids for a list"))?;
    // SAFETY: `PyList_New` returns a new list or NULL with an error set. Untracking an
    // object twice is allowed, and so `list_dealloc` may drop it untracked.
    unsafe {
        let list = Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyList_New(len))?.downcast_into_unchecked::<PyList>();
        pyo3::ffi::PyObject_GC_UnTrack(list.as_ptr().cast());
        Ok(list)
    }
}

/// The array of a list's slots, at `items_at` (`list_items_offset`).
///
/// # Safety
/// `items_at` is `list_items_offset`'s answer.
unsafe fn list_items(list: &Bound<'_, PyList>, items_at: usize) -> *mut Object {
    *list.as_ptr().cast::<u8>().add(items_at).cast::<*mut Object>()
}
