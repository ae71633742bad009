//! The UTF-8 of a long Python `str`, transcoded by simdutf rather than by CPython.
//!
//! An abi3 module asks for a `str`'s UTF-8 with `PyUnicode_AsUTF8AndSize`. For a `str`
//! that is not ASCII, CPython runs its scalar encoder once and keeps the result inside the
//! `str`. On text met once (a long document), that encoder was 12-18% of an encode: the
//! English handbook (1.2 MB, UCS-2 for its typographic quotes) took 1.15 ms, 2 MB of Python
//! source (Latin-1) 1.56 ms, 2.2 MB of Russian 1.83 ms, against 7-10 ms for the whole
//! encode (Llama 3). simdutf does the same work with SIMD: whole texts from Python (o200k,
//! the two builds in turn) went from 255 to 304 MB/s (English), 210 to 247 (code), 213 to
//! 271 (Russian) and 164 to 177 (Chinese, UCS-4 for one char outside the BMP).
//!
//! Reading a `str`'s own buffer needs its layout, which the limited API hides. The layouts
//! of CPython 3.10-3.14 are written here, and checked on first use against a `str` of every
//! kind. Where they do not match (another Python), every `str` takes CPython's way.
//!
//! Short strs take CPython's way too: their UTF-8 costs little, and it stays in the `str`
//! for the next call (a document encoded again, in a later epoch or by another library).
//! Transcoded here from 64 chars on, new documents of English and Russian ran 2% and 10%
//! faster, and the same documents encoded again 3% and 6% slower.
//! So does a `str` whose UTF-8 CPython has already made, and one with a lone surrogate,
//! which CPython's way turns into the error that `text` reports.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::PyString;
use std::borrow::Cow;

/// From this many chars on, a `str` without UTF-8 of its own is transcoded here.
const LONG: usize = 1 << 14;

/// Where a compact `str`'s fields are (`PyASCIIObject`, `PyCompactUnicodeObject`).
#[derive(Clone, Copy)]
struct Layout {
    /// Bytes before an ASCII `str`'s chars: `sizeof(PyASCIIObject)`.
    ascii_size: usize,
    /// Bytes before another compact `str`'s chars: `sizeof(PyCompactUnicodeObject)`.
    compact_size: usize,
    /// The `utf8` pointer, null until CPython has made the `str`'s UTF-8.
    utf8_at: usize,
}

/// After `PyObject_HEAD` (16 bytes on 64-bit builds): `length`, `hash`, then `state`, whose
/// bits from the lowest are `interned` (2), `kind` (3), `compact`, `ascii`.
const LENGTH_AT: usize = 16;
const STATE_AT: usize = 32;

/// A compact `str` as its fields say it is.
struct Fields {
    kind: u32,
    ascii: bool,
    len: usize,
    chars: *const u8,
    has_utf8: bool,
}

impl Layout {
    /// The layout of this Python, where it is one of those written here and checked.
    fn of(py: Python<'_>) -> Option<Layout> {
        if cfg!(not(all(target_pointer_width = "64", target_endian = "little"))) {
            return None;
        }
        let cpython = py.import("sys").ok()?.getattr("implementation").ok()?.getattr("name").ok()?;
        if cpython.extract::<&str>().ok()? != "cpython" {
            return None;
        }
        let version = py.version_info();
        let layout = match (version.major, version.minor) {
            // 3.10 and 3.11 still have the `wstr` fields.
            (3, 10..=11) => Layout { ascii_size: 48, compact_size: 72, utf8_at: 56 },
            (3, 12..=14) => Layout { ascii_size: 40, compact_size: 56, utf8_at: 48 },
            _ => return None,
        };
        layout.checked(py).then_some(layout)
    }

    /// Whether this layout reads strs of every kind as they are.
    fn checked(self, py: Python<'_>) -> bool {
        [("tokens", 1, true), ("café", 1, false), ("€ 5", 2, false), ("a 😀", 4, false)].iter().all(|&(text, kind, ascii)| {
            let s = PyString::new(py, text);
            let units: Vec<u32> = text.chars().map(u32::from).collect();
            // SAFETY: `s` is a live str; the layout is what is being checked, and every read
            // is within a compact str of `units.len()` chars of `kind` bytes each.
            unsafe {
                let Some(f) = self.fields(&s) else { return false };
                let read = |i: usize| match kind {
                    1 => u32::from(*f.chars.add(i)),
                    2 => u32::from(*(f.chars as *const u16).add(i)),
                    _ => *(f.chars as *const u32).add(i),
                };
                f.kind == kind && f.ascii == ascii && f.len == units.len() && (0..f.len).all(|i| read(i) == units[i])
            }
        })
    }

    /// # Safety
    /// `s` must be a `str` of the Python this layout is of.
    unsafe fn fields(self, s: &Bound<'_, PyString>) -> Option<Fields> {
        let base = s.as_ptr() as *const u8;
        let len = usize::try_from(*(base.add(LENGTH_AT) as *const isize)).ok()?;
        let state = *(base.add(STATE_AT) as *const u32);
        let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1 == 1, state >> 6 & 1 == 1);
        if !compact || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let chars = base.add(if ascii { self.ascii_size } else { self.compact_size });
        // An ASCII str's chars are its UTF-8.
        let has_utf8 = ascii || !(*(base.add(self.utf8_at) as *const *const u8)).is_null();
        Some(Fields { kind, ascii, len, chars, has_utf8 })
    }
}

/// The UTF-8 of `s`: transcoded here where that pays (see the module's comment), else
/// CPython's, whose errors (a lone surrogate) the caller turns into its own.
pub fn utf8<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, str>> {
    static LAYOUT: GILOnceCell<Option<Layout>> = GILOnceCell::new();
    // Most texts are short: their length is asked first, before the layout is looked at.
    // SAFETY: `s` is a str.
    if unsafe { ffi::PyUnicode_GetLength(s.as_ptr()) } < LONG as isize {
        return s.to_str().map(Cow::Borrowed);
    }
    if let Some(layout) = LAYOUT.get_or_init(s.py(), || Layout::of(s.py())) {
        // SAFETY: `layout` was checked against this Python's strs; `s` stays alive (and
        // immutable) while its chars are read.
        if let Some(text) = unsafe { layout.fields(s).filter(|f| !f.has_utf8).and_then(|f| transcode(&f)) } {
            return Ok(Cow::Owned(text));
        }
    }
    s.to_str().map(Cow::Borrowed)
}

/// # Safety
/// `f` must describe a live compact str.
unsafe fn transcode(f: &Fields) -> Option<String> {
    let mut out = Vec::new();
    // At most 2, 3 and 4 bytes a char of Latin-1, UCS-2 and UCS-4. Where that much
    // memory cannot be had, CPython's way, which needs less, says so or copes.
    out.try_reserve_exact(f.len.checked_mul(f.kind as usize + 1)?).ok()?;
    let written = match f.kind {
        1 => simdutf::convert_latin1_to_utf8(f.chars, f.len, out.as_mut_ptr()),
        2 => {
            // A UCS-2 str holds no pair of surrogates, only lone ones, which are not text;
            // simdutf would join two of them into one char. So each piece of 8 k units is
            // tested (a fold without an early exit: 16 units at a time), then transcoded
            // while it is still in the L1 cache: the test over the whole str first read it
            // from memory for as long as simdutf took.
            let units = std::slice::from_raw_parts(f.chars as *const u16, f.len);
            let mut written = 0;
            for piece in units.chunks(8192) {
                if piece.iter().fold(false, |any, &u| any | (u & 0xF800 == 0xD800)) {
                    return None;
                }
                written += simdutf::convert_utf16_to_utf8(piece.as_ptr(), piece.len(), out.as_mut_ptr().add(written));
            }
            written
        }
        // Validating: a lone surrogate writes nothing.
        _ => simdutf::convert_utf32_to_utf8(f.chars as *const u32, f.len, out.as_mut_ptr()),
    };
    if written == 0 {
        return None;
    }
    out.set_len(written);
    // SAFETY: simdutf wrote valid UTF-8 (it validated what it read).
    Some(String::from_utf8_unchecked(out))
}

// `LENGTH_AT` counts on the object head's 16 bytes.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ffi::PyObject>() == 16);
