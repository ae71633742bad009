//! Moving a large buffer's contents into another buffer by moving its memory pages.
//!
//! Growing an embedding matrix by a few rows means a new, slightly larger buffer holding the
//! old bytes. Copying 1 GB costs the copy plus a page fault and a zero-fill for every 4 KiB
//! page of the new buffer: about 0.3 s per GB on a 2-core machine. On Linux, `mremap` can hand
//! the old buffer's pages to the new one instead, moving page-table entries only (a few ms per
//! GB). `MREMAP_DONTUNMAP` leaves the old range mapped, now empty (it reads as zeros), so the
//! allocator that owns it can free or reuse it as usual; only the pages lying wholly inside
//! the buffer move, and the partial pages at its two ends are copied, so no allocator
//! bookkeeping next to the buffer is touched.
//!
//! The old buffer's contents are gone afterwards: the caller must own it exclusively.

use rayon::prelude::*;

/// Below this many whole pages a copy is as cheap as the system call and the checks.
const MIN_MOVE_BYTES: usize = 1 << 20;
/// Bytes per parallel task when copying.
const COPY_CHUNK: usize = 4 << 20;

/// Copies `len` bytes from `src` to `dst`, moving whole pages instead where it can; returns
/// whether pages moved (and so whether `src`'s contents are now gone).
///
/// Pages move only when both ranges lie in private anonymous read-write memory, `src` and
/// `dst` sit at the same offset within a page, and the kernel supports `MREMAP_DONTUNMAP`
/// (Linux 5.7); otherwise this is a parallel copy and `src` is left as it was.
///
/// # Safety
/// `src` and `dst` must be valid for `len` bytes, must not overlap, and nothing else may
/// read or write either while this runs. If this returns true, `src`'s contents are zeros
/// except for its first and last partial pages.
pub unsafe fn move_or_copy(src: *mut u8, dst: *mut u8, len: usize) -> bool {
    let moved = move_whole_pages(src as usize, dst as usize, len);
    let (start, end) = moved.unwrap_or((src as usize, src as usize));
    // What did not move: everything, or the partial pages at the two ends.
    copy(src, dst, start - src as usize);
    let after = end - src as usize;
    copy(src.add(after), dst.add(after), len - after);
    moved.is_some()
}

/// Moves the pages wholly inside `src..src + len` to the same offsets in `dst`; returns the
/// source range moved, or None when nothing moved.
#[cfg(target_os = "linux")]
fn move_whole_pages(src: usize, dst: usize, len: usize) -> Option<(usize, usize)> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok().filter(|&p| p > 0)?;
    if src % page != dst % page {
        return None;
    }
    let start = src.div_ceil(page) * page;
    let end = (src + len) / page * page;
    if end <= start || end - start < MIN_MOVE_BYTES {
        return None;
    }
    let target = dst + (start - src);
    if !private_anonymous(start, end) || !private_anonymous(target, target + (end - start)) {
        return None;
    }
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP;
    // SAFETY: both ranges are mapped, page-aligned and owned by the caller's buffers; with
    // MREMAP_FIXED the target pages (part of `dst`, unused so far) are replaced, and with
    // MREMAP_DONTUNMAP the source range stays mapped. On failure nothing has changed.
    let result = unsafe {
        libc::mremap(start as *mut libc::c_void, end - start, end - start, flags, target as *mut libc::c_void)
    };
    (result != libc::MAP_FAILED).then_some((start, end))
}

#[cfg(not(target_os = "linux"))]
fn move_whole_pages(_src: usize, _dst: usize, _len: usize) -> Option<(usize, usize)> {
    None
}

/// Whether `start..end` is covered, without gaps, by private anonymous read-write mappings
/// (the heap or anonymous memory; not a file, not shared memory, not the stack). Moving
/// pages of a shared or file mapping would make the new buffer alias that memory.
#[cfg(target_os = "linux")]
fn private_anonymous(start: usize, end: usize) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let mut covered = start;
    for line in maps.lines() {
        // address perms offset device inode [path]
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(_), Some(_), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = fields.next().unwrap_or("");
        let Some((lo, hi)) = range.split_once('-') else { continue };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) else {
            continue;
        };
        if hi <= covered {
            continue;
        }
        let anonymous = inode == "0" && (path.is_empty() || path == "[heap]" || path.starts_with("[anon:"));
        if lo > covered || !perms.starts_with("rw") || !perms.ends_with('p') || !anonymous {
            return false;
        }
        covered = hi;
        if covered >= end {
            return true;
        }
    }
    false
}

/// A parallel copy of `len` bytes.
unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    let (src, dst) = (src as usize, dst as usize);
    (0..len.div_ceil(COPY_CHUNK)).into_par_iter().for_each(|k| {
        let offset = k * COPY_CHUNK;
        let n = COPY_CHUNK.min(len - offset);
        // SAFETY: the caller guarantees both ranges are valid and disjoint; chunks do not overlap.
        unsafe { std::ptr::copy_nonoverlapping((src + offset) as *const u8, (dst + offset) as *mut u8, n) };
    });
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// An anonymous mapping of `len` bytes, unmapped on drop.
    struct Mapping {
        address: *mut u8,
        len: usize,
    }

    impl Mapping {
        fn new(len: usize, flags: libc::c_int) -> Mapping {
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: a fresh anonymous mapping.
            let address = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags | libc::MAP_ANONYMOUS, -1, 0) };
            assert_ne!(address, libc::MAP_FAILED);
            Mapping { address: address as *mut u8, len }
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: the mapping is live for as long as `self`.
            unsafe { std::slice::from_raw_parts(self.address, self.len) }
        }

        fn bytes_mut(&mut self) -> &mut [u8] {
            // SAFETY: as above, and `&mut self` makes the borrow exclusive.
            unsafe { std::slice::from_raw_parts_mut(self.address, self.len) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping what `new` mapped.
            unsafe { libc::munmap(self.address as *mut libc::c_void, self.len) };
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8 | 1).collect()
    }

    /// Fills `offset..offset + len` of a fresh `src`, moves it into a fresh `dst` at the same
    /// offset; returns whether pages moved, after checking `dst` got every byte.
    fn run(len: usize, src_offset: usize, dst_offset: usize, src_flags: libc::c_int) -> (bool, Mapping) {
        let mut src = Mapping::new(len + 3 * 4096, src_flags);
        let dst = Mapping::new(len + 3 * 4096, libc::MAP_PRIVATE);
        let expected = pattern(len);
        src.bytes_mut()[src_offset..src_offset + len].copy_from_slice(&expected);
        // SAFETY: both ranges lie inside their own mappings.
        let moved = unsafe { move_or_copy(src.address.add(src_offset), dst.address.add(dst_offset), len) };
        assert!(dst.bytes()[dst_offset..dst_offset + len] == expected[..]);
        (moved, src)
    }

    #[test]
    fn moves_whole_pages_and_copies_the_ends() {
        let len = (8 << 20) + 1000;
        let (moved, src) = run(len, 64, 64, libc::MAP_PRIVATE);
        assert!(moved);
        // The partial first and last pages were copied and keep their bytes; the rest is empty.
        let bytes = &src.bytes()[64..64 + len];
        let expected = pattern(len);
        assert_eq!(bytes[..4096 - 64], expected[..4096 - 64]);
        assert!(bytes[4096 - 64..len - 1064].iter().all(|&b| b == 0));
        assert_eq!(bytes[len - 1064..], expected[len - 1064..]);
    }

    #[test]
    fn copies_when_it_cannot_move() {
        // Different offsets within a page, too small, and shared memory: copied, source kept.
        for (len, src_offset, dst_offset, flags) in [
            (8 << 20, 64, 128, libc::MAP_PRIVATE),
            (100_000, 64, 64, libc::MAP_PRIVATE),
            (8 << 20, 64, 64, libc::MAP_SHARED),
        ] {
            let (moved, src) = run(len, src_offset, dst_offset, flags);
            assert!(!moved, "{len} {src_offset} {dst_offset} {flags}");
            assert!(src.bytes()[src_offset..src_offset + len] == pattern(len)[..]);
        }
    }
}
