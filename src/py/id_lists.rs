//! Python lists of ids, written slot by slot, of ints made once per process.
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
use pyo3::sync::{GILOnceCell, GILProtected};
use pyo3::types::{PyList, PyString};
use std::cell::RefCell;
use std::ptr::NonNull;

type Object = *mut pyo3::ffi::PyObject;

/// Where a list object keeps the address of its array of slots, if it is where CPython's
/// `PyListObject` has it (after the variable-size object header, whose last word is the
/// list's size, and before the array's length), checked once on a real list; `None` leaves
/// lists to `PyList_SetItem`.
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
        // SAFETY: a `PyListObject` is at least its header, the slots' address and their
        // number long; the slots are read only when that address is not NULL.
        let word = |at: usize| unsafe { *list.as_ptr().cast::<u8>().add(at).cast::<usize>() };
        let (size, items, allocated) = (word(at - 8), word(at) as *const Object, word(at + 8));
        (size == 1 && allocated == 1 && !items.is_null() && unsafe { *items } == marker.as_ptr()).then_some(at)
    })
}

/// Makes `int` live as long as the process, so that slots may hold it without raising
/// its count (see `IdInts`). From Python 3.12 on, an object whose count's low 32 bits are
/// negative as an `i32` is immortal: `Py_INCREF` and `Py_DECREF` leave it as it is, and
/// it is never freed. The value written there is 3.14's own for immortal objects (3 << 30,
/// `_Py_IMMORTAL_INITIAL_REFCNT`), immortal on 3.12 and 3.13 too, and about a billion away
/// from either end of that range: 3.14 counts in those 32 bits alone (its high 32 bits hold
/// flags, left alone here), and an extension built for 3.11 or older, which raises the whole
/// word inline, would carry a count of 0xFFFF_FFFF into them and leave the int mortal at 0
/// (found by a second review). Up to 3.11 no
/// object is immortal, and the count gains 2^62 references: slots freed uncounted, one a
/// reference, could not take them back in centuries.
///
/// `from_3_12`: whether this Python is 3.12 or later (asked once per table: each
/// `version_info` parses the version string).
///
/// # Safety
/// `int` is a live object, the GIL is held, and an object's count is its first word, read
/// as little-endian (`list_items_offset` checks the layout).
unsafe fn make_immortal(int: Object, from_3_12: bool) {
    if from_3_12 {
        let low = int.cast::<u32>();
        if (*low as i32) >= 0 {
            *low = 3 << 30;
        }
    } else {
        *int.cast::<isize>() += 1 << 62;
    }
}

/// Ints for ids, made once for the process and never freed: those of ids below the
/// largest vocabulary seen so far (`IdInts::new`), each an owned reference held here.
static SHARED_INTS: GILProtected<RefCell<Vec<Py<PyAny>>>> = GILProtected::new(RefCell::new(Vec::new()));

/// A table int's address.
#[derive(Clone, Copy)]
struct Int(NonNull<pyo3::ffi::PyObject>);

// SAFETY: the object is one of `SHARED_INTS`, never freed, and read or written only with
// the GIL held.
unsafe impl Send for Int {}
unsafe impl Sync for Int {}

/// The int of every id of a vocabulary, as a list slot holds it: a slot is written with
/// the int's address and nothing else, its count not raised.
///
/// Why: raising each slot's int's count was the largest cost of a per-document call after
/// the encode itself (`fill_lists`, 13% of the samples of a Llama 3 English loop, against
/// 31% for pre-tokenizing and BPE). The ints are spread over 4 MB (Llama 3), and every
/// count is a read and a write of a line that is rarely in the core's cache. Counting in
/// arrears (2026-12-04 to 12-05: a tally beside each int's address, the counts raised by
/// their tallies every million slots, each int holding 2^29 references in reserve
/// meanwhile) took 16-17% off a per-document call, but `fill_lists` still read and wrote a
/// 16-byte entry per slot: 16% of the samples of a per-document loop over Python code
/// (o200k). Here a slot costs the load of an 8-byte address from this table, which is
/// smaller (1.6 MB for o200k) and only read: per-document calls, one core, the two builds
/// in turn, 2026-12-05: o200k code 174-178 -> 188-191 MB/s, GPT-2 code 147-150 -> 166-171,
/// Llama 3 English 158-161 -> 172-175.
///
/// How it stays correct: the ints are immortal (`make_immortal`), shared by every
/// tokenizer of the process, and so a slot needs no reference of its own: Python freeing a
/// list lowers counts that nothing can bring to 0. The cost is that the ints of the
/// largest vocabulary used (at most 2^20 ids: 32 MB of ints, mostly less than 8) stay until
/// the process ends, as CPython's own small ints do. Where the layout of lists and counts
/// is not CPython's (`list_items_offset`), slots are written by `PyList_SetItem`, each
/// counted, and the ints are left mortal, held by `SHARED_INTS`.
pub(super) struct IdInts {
    ints: Box<[Int]>,
}

impl IdInts {
    /// The ints of ids below `n`.
    pub(super) fn new(py: Python<'_>, n: u32) -> IdInts {
        let n = n as usize;
        // Before the borrow: the first call makes a list, which may start the garbage
        // collector (3.10, 3.11), whose callbacks and finalizers may encode with a tokenizer
        // that has no table yet, and so come here again (found by a second review). Making
        // ints below runs no Python code.
        let immortal = list_items_offset(py).is_some();
        let from_3_12 = py.version_info() >= (3, 12);
        let mut shared = SHARED_INTS.get(py).borrow_mut();
        while shared.len() < n {
            let int = (shared.len() as u64).into_pyobject(py).expect("infallible").into_any().unbind();
            if immortal {
                // SAFETY: a live int, the GIL held, and the layout checked.
                unsafe { make_immortal(int.as_ptr(), from_3_12) };
            }
            shared.push(int);
        }
        let ints = shared[..n].iter().map(|int| Int(NonNull::new(int.as_ptr()).expect("a live int"))).collect();
        IdInts { ints }
    }

    /// The int of `id`: the table's, or a new one past it.
    pub(super) fn int<'py>(&self, py: Python<'py>, id: u32) -> Bound<'py, PyAny> {
        match self.ints.get(id as usize) {
            // SAFETY: a live object (see `Int`), and a new reference to it.
            Some(int) => unsafe { Bound::from_borrowed_ptr(py, int.0.as_ptr()) },
            None => id.into_pyobject(py).expect("infallible").into_any(),
        }
    }

    /// `ids` as a Python list of these ints: `lists` for one row, without a vector of one.
    pub(super) fn list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        let Some(items_at) = list_items_offset(py) else {
            return PyList::new(py, ids.iter().map(|&id| self.int(py, id)));
        };
        // SAFETY: `items_at` is `list_items_offset`'s answer.
        let list = unsafe { unfilled_list(py, items_at, ids.len())? };
        // SAFETY: the list is new, untracked and has room for the row.
        unsafe { self.fill_lists(py, items_at, std::slice::from_ref(&list), &[ids])? };
        Ok(list)
    }

    /// Each row of ids as a Python list of these ints.
    pub(super) fn lists<'py>(&self, py: Python<'py>, rows: &[&[u32]]) -> PyResult<Vec<Bound<'py, PyList>>> {
        let Some(items_at) = list_items_offset(py) else {
            return rows.iter().map(|ids| PyList::new(py, ids.iter().map(|&id| self.int(py, id)))).collect();
        };
        // SAFETY: `items_at` is `list_items_offset`'s answer.
        let lists = rows.iter().map(|ids| unsafe { unfilled_list(py, items_at, ids.len()) }).collect::<PyResult<Vec<_>>>()?;
        // SAFETY: the lists are new, untracked and each has room for its row.
        unsafe { self.fill_lists(py, items_at, &lists, rows)? };
        Ok(lists)
    }

    /// Writes the ints of each row into its list and sets its size, then gives the lists to
    /// the garbage collector. On an error (no memory for an int past the table) a list's
    /// size is the slots written, and the lists after it stay empty.
    ///
    /// # Safety
    /// Each list is new, untracked by the garbage collector (`unfilled_list`), seen by no
    /// one else, and has room for its row; `items_at` is `list_items_offset`'s answer.
    unsafe fn fill_lists(
        &self,
        py: Python<'_>,
        items_at: usize,
        lists: &[Bound<'_, PyList>],
        rows: &[&[u32]],
    ) -> PyResult<()> {
        // Python code may run only on an error (`PyErr::fetch`), which is safe: the lists
        // are untracked, and the table's ints live as long as the process.
        for (list, ids) in lists.iter().zip(rows) {
            let at = |offset: usize| list.as_ptr().cast::<u8>().add(offset);
            let (written, filled) = self.fill(py, *at(items_at).cast::<*mut Object>(), ids);
            *at(items_at - 8).cast::<isize>() = written as isize;
            filled?;
        }
        for list in lists {
            pyo3::ffi::PyObject_GC_Track(list.as_ptr().cast());
        }
        Ok(())
    }

    /// Writes the int of each id into `items`, one slot each: a table int uncounted (it is
    /// immortal), a new one past the table with its own reference. Stops at the first
    /// error; returns the slots written.
    ///
    /// # Safety
    /// The GIL is held, and `items` has room for `ids.len()` slots no one else can see.
    #[inline(always)]
    unsafe fn fill(&self, py: Python<'_>, items: *mut Object, ids: &[u32]) -> (usize, PyResult<()>) {
        for (i, &id) in ids.iter().enumerate() {
            *items.add(i) = match self.ints.get(id as usize) {
                Some(int) => int.0.as_ptr(),
                // A new int without `into_pyobject`, which panics where memory is short.
                None => {
                    let int = pyo3::ffi::PyLong_FromUnsignedLongLong(id.into());
                    if int.is_null() {
                        return (i, Err(PyErr::fetch(py)));
                    }
                    int
                }
            };
        }
        (ids.len(), Ok(()))
    }
}

/// A new list with room for `len` slots and none in it yet (`fill_lists` writes them and
/// sets its size), untracked by the garbage collector until then: the collector, which may
/// run while the next list of a batch is made, must not hand a half-made list to Python code.
///
/// Why not `PyList_New(len)`: it zeroes the slots (`calloc`), which for a whole text's list
/// (600 k ids, 4.8 MB) was a `memset` of 3% of the encode (o200k, Python source, perf). The
/// slots are allocated here with `PyMem_Malloc`, as the list's own growth does.
///
/// # Safety
/// `items_at` is `list_items_offset`'s answer.
unsafe fn unfilled_list(py: Python<'_>, items_at: usize, len: usize) -> PyResult<Bound<'_, PyList>> {
    let bytes = len
        .checked_mul(std::mem::size_of::<Object>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or_else(|| PyMemoryError::new_err("too many ids for a list"))?;
    // SAFETY: `PyList_New` returns a new list or NULL with an error set. Untracking an
    // object twice is allowed, and so `list_dealloc` may drop it untracked. An empty list
    // has no array (NULL) and room for none; the array set here is freed by the list with
    // `PyMem_Free`, and its slots past the size are never read.
    unsafe {
        let list = Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyList_New(0))?.downcast_into_unchecked::<PyList>();
        pyo3::ffi::PyObject_GC_UnTrack(list.as_ptr().cast());
        if len > 0 {
            let items = pyo3::ffi::PyMem_Malloc(bytes);
            if items.is_null() {
                return Err(PyMemoryError::new_err("no memory for a list of ids"));
            }
            let at = |offset: usize| list.as_ptr().cast::<u8>().add(offset).cast::<usize>();
            *at(items_at) = items as usize;
            *at(items_at + 8) = len;
        }
        Ok(list)
    }
}
