//! Moving a large buffer's contents into another buffer by moving its memory pages.
//!
//! Growing an embedding matrix by a few rows means a new, slightly larger buffer holding the
//! old bytes. Copying 1 GB costs the copy plus a page fault and a zero-fill for every 4 KiB
//! page of the new buffer: about 0.3 s per GB on a 2-core machine. On Linux, `mremap` can hand
//! the old buffer's pages to the new one instead, moving page-table entries only (a few ms per
//! GB). `MREMAP_DONTUNMAP` leaves the old range mapped, so the allocator (or file mapping)
//! that owns it can free or reuse it as usual; only pages lying wholly inside the buffer move,
//! and the partial pages at its two ends are copied, so no bookkeeping next to the buffer is
//! touched.
//!
//! What the old range reads afterwards: zeros for anonymous memory, the file's bytes for a
//! private file mapping (a model loaded from safetensors by memory map). The caller must own
//! an anonymous buffer exclusively; a file-backed one moves only while none of its pages has
//! been written since it was mapped, so the old range still reads exactly what it held.

use rayon::prelude::*;

/// Below this many whole pages a copy is as cheap as the system calls and the checks.
const MIN_MOVE_BYTES: usize = 1 << 20;
/// Bytes per parallel task when copying.
const COPY_CHUNK: usize = 4 << 20;

/// Copies `len` bytes from `src` to `dst`, moving whole pages instead where it can; returns
/// whether pages moved. `anonymous_ok`: whether `src` may be anonymous memory that reads as
/// zeros afterwards (the caller's exclusive allocation); file-backed pages move either way
/// when unmodified.
///
/// At most one `mremap` runs, over the part of the buffer inside one memory mapping; the rest
/// is copied. Nothing moves when the kernel lacks `MREMAP_DONTUNMAP` (Linux 5.7), when the
/// process is near its mapping-count limit, under an address-space or data rlimit, or under
/// strict overcommit, since those are where `mremap` can fail after unmapping its target.
///
/// # Safety
/// `src` and `dst` must be valid for `len` bytes, must not overlap, and nothing else may
/// read or write either while this runs; `dst` must be private anonymous memory the caller
/// owns. With `anonymous_ok`, `src`'s contents may read as zeros afterwards (except for its
/// first and last partial pages).
pub unsafe fn move_or_copy(src: *mut u8, dst: *mut u8, len: usize, anonymous_ok: bool) -> Result<bool, DestinationLost> {
    let (start, end) = match move_whole_pages(src as usize, dst as usize, len, anonymous_ok) {
        Outcome::Moved(start, end) => (start, end),
        Outcome::NotMoved => (src as usize, src as usize),
        Outcome::DestinationLost => return Err(DestinationLost),
    };
    // What did not move: everything, or the pages before and after the moved range.
    copy(src, dst, start - src as usize);
    let after = end - src as usize;
    copy(src.add(after), dst.add(after), len - after);
    Ok(start != end)
}

/// A failed `mremap` unmapped part of the destination and it could not be mapped again: the
/// destination buffer must not be used (only freed); the source is unchanged.
#[derive(Debug)]
pub struct DestinationLost;

enum Outcome {
    /// This source range moved.
    Moved(usize, usize),
    NotMoved,
    DestinationLost,
}

/// Moves the whole pages of `src..src + len` that lie in the mapping holding the first of
/// them to the same offsets in `dst`.
#[cfg(target_os = "linux")]
fn move_whole_pages(src: usize, dst: usize, len: usize, anonymous_ok: bool) -> Outcome {
    let Some((start, end, target)) = movable_range(src, dst, len, anonymous_ok) else {
        return Outcome::NotMoved;
    };
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP;
    // SAFETY: both ranges are mapped, page-aligned, each inside one mapping and owned by the
    // caller's buffers; MREMAP_FIXED replaces the target pages (part of `dst`, unused so
    // far), and MREMAP_DONTUNMAP leaves the source range mapped.
    let result = unsafe {
        libc::mremap(start as *mut libc::c_void, end - start, end - start, flags, target as *mut libc::c_void)
    };
    if result != libc::MAP_FAILED {
        return Outcome::Moved(start, end);
    }
    // The source is as it was (one mapping moves whole or not at all), but some kernels
    // unmap the target before failing: map fresh pages back where none are left.
    if refill(target, end - start) {
        Outcome::NotMoved
    } else {
        Outcome::DestinationLost
    }
}

/// The page-aligned source range `start..end` to move and its `target` in `dst`, when
/// moving is possible and safe (see `move_or_copy`).
#[cfg(target_os = "linux")]
fn movable_range(src: usize, dst: usize, len: usize, anonymous_ok: bool) -> Option<(usize, usize, usize)> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok().filter(|&p| p > 0)?;
    if src % page != dst % page {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    if !mremap_is_safe(maps.lines().count()) {
        return None;
    }
    let start = src.div_ceil(page) * page;
    let source = mapping_at(&maps, start)?;
    let end = ((src + len) / page * page).min(source.end);
    if end <= start || end - start < MIN_MOVE_BYTES || !source.private_writable() {
        return None;
    }
    let target = dst + (start - src);
    let destination = mapping_at(&maps, target)?;
    if !destination.private_writable() || !destination.anonymous || destination.end < target + (end - start) {
        return None;
    }
    // File pages: MREMAP_DONTUNMAP takes them from Linux 5.13 on (earlier kernels refuse
    // only after unmapping the target).
    let movable = if source.anonymous {
        anonymous_ok
    } else {
        kernel_at_least(5, 13) && unmodified_file_pages(start, end, page)
    };
    movable.then_some((start, end, target))
}

#[cfg(not(target_os = "linux"))]
fn move_whole_pages(_src: usize, _dst: usize, _len: usize, _anonymous_ok: bool) -> Outcome {
    Outcome::NotMoved
}

/// Whether every byte of `[address, address + len)` lies in memory this process may write.
/// A torch tensor made from a read-only memory map looks like any other (torch only warns),
/// and writing into it would crash the process. Linux only; elsewhere assumed.
pub fn writable(address: usize, len: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return true };
        let end = address.saturating_add(len);
        let mut at = address;
        for m in mappings(&maps) {
            if at >= end {
                break;
            }
            if m.end <= at {
                continue;
            }
            if m.start > at || m.perms[1] != b'w' {
                return false;
            }
            at = m.end;
        }
        at >= end
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (address, len);
        true
    }
}

/// One line of /proc/self/maps.
#[cfg(target_os = "linux")]
struct Mapping {
    start: usize,
    end: usize,
    perms: [u8; 4],
    /// Anonymous memory (the heap too).
    anonymous: bool,
    /// A regular file; not a device (pinned or driver memory lives under /dev).
    file: bool,
}

#[cfg(target_os = "linux")]
impl Mapping {
    /// Private anonymous or private file pages: the only kinds that move (not the stack,
    /// not shared memory, not a device).
    fn private_writable(&self) -> bool {
        (self.anonymous || self.file) && &self.perms[..2] == b"rw" && self.perms[3] == b'p'
    }
}

/// The lines of /proc/self/maps, in address order.
#[cfg(target_os = "linux")]
fn mappings(maps: &str) -> impl Iterator<Item = Mapping> + '_ {
    maps.lines().filter_map(|line| {
        // address perms offset device inode [path]
        let mut fields = line.split_whitespace();
        let (range, perms, _, _, inode) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let path = fields.next().unwrap_or("");
        let (start, end) = range.split_once('-')?;
        Some(Mapping {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            perms: perms.as_bytes().try_into().ok()?,
            anonymous: inode == "0" && (path.is_empty() || path == "[heap]" || path.starts_with("[anon:")),
            file: inode != "0" && path.starts_with('/') && !path.starts_with("/dev/"),
        })
    })
}

#[cfg(target_os = "linux")]
fn mapping_at(maps: &str, address: usize) -> Option<Mapping> {
    mappings(maps).find(|m| (m.start..m.end).contains(&address))
}

/// Whether an `mremap` here can only fail before it changes anything: the kernel has
/// `MREMAP_DONTUNMAP` and none of the limits it checks after unmapping the target is near
/// (`mappings`: how many the process has).
#[cfg(target_os = "linux")]
fn mremap_is_safe(mappings: usize) -> bool {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let unlimited = |resource| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given.
        unsafe { libc::getrlimit(resource, &mut limit) == 0 && limit.rlim_cur == libc::RLIM_INFINITY }
    };
    let strict_overcommit = read("/proc/sys/vm/overcommit_memory").is_none_or(|v| v.trim() == "2");
    let max_maps: Option<usize> = read("/proc/sys/vm/max_map_count").and_then(|v| v.trim().parse().ok());
    let room = max_maps.is_some_and(|max| mappings + 64 < max);
    room && !strict_overcommit && unlimited(libc::RLIMIT_AS) && unlimited(libc::RLIMIT_DATA) && kernel_at_least(5, 7)
}

#[cfg(target_os = "linux")]
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else { return false };
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Whether no page of `start..end` (in a private file mapping) has been written since it
/// was mapped: each is absent or still the file's page, none a private copy (/proc/self/pagemap:
/// bit 63 present, 62 swapped, 61 file page).
#[cfg(target_os = "linux")]
fn unmodified_file_pages(start: usize, end: usize, page: usize) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else { return false };
    let mut entries = vec![0u8; 8 * 4096];
    let mut index = start / page;
    while index < end / page {
        let count = (end / page - index).min(4096);
        let buf = &mut entries[..8 * count];
        if pagemap.read_exact_at(buf, (index * 8) as u64).is_err() {
            return false;
        }
        let private_copy = buf.chunks_exact(8).any(|e| {
            let e = u64::from_ne_bytes(e.try_into().expect("8 bytes"));
            let (present, swapped, file) = (e >> 63 & 1 == 1, e >> 62 & 1 == 1, e >> 61 & 1 == 1);
            swapped || (present && !file)
        });
        if private_copy {
            return false;
        }
        index += count;
    }
    true
}

/// Maps fresh anonymous pages wherever `start..start + len` is no longer mapped (never over
/// a mapping: MAP_FIXED_NOREPLACE); returns whether the whole range is mapped now.
#[cfg(target_os = "linux")]
fn refill(start: usize, len: usize) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return false };
    let mut holes = Vec::new();
    let mut at = start;
    for Mapping { start: lo, end: hi, .. } in mappings(&maps) {
        if hi <= at || lo >= start + len {
            continue;
        }
        if lo > at {
            holes.push((at, lo));
        }
        at = hi;
    }
    if at < start + len {
        holes.push((at, start + len));
    }
    holes.into_iter().all(|(lo, hi)| {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        // SAFETY: a fresh mapping over a range that is unmapped (NOREPLACE refuses otherwise).
        let mapped = unsafe { libc::mmap(lo as *mut libc::c_void, hi - lo, prot, flags, -1, 0) };
        mapped as usize == lo
    })
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
    fn run(len: usize, src_offset: usize, dst_offset: usize, src_flags: libc::c_int, anonymous_ok: bool) -> (bool, Mapping) {
        let mut src = Mapping::new(len + 3 * 4096, src_flags);
        let dst = Mapping::new(len + 3 * 4096, libc::MAP_PRIVATE);
        let expected = pattern(len);
        src.bytes_mut()[src_offset..src_offset + len].copy_from_slice(&expected);
        // SAFETY: both ranges lie inside their own mappings.
        let moved = unsafe { move_or_copy(src.address.add(src_offset), dst.address.add(dst_offset), len, anonymous_ok) }.unwrap();
        assert!(dst.bytes()[dst_offset..dst_offset + len] == expected[..]);
        (moved, src)
    }

    #[test]
    fn moves_whole_pages_and_copies_the_ends() {
        let len = (8 << 20) + 1000;
        let (moved, src) = run(len, 64, 64, libc::MAP_PRIVATE, true);
        assert!(moved);
        // The partial first and last pages were copied and keep their bytes; the rest is empty.
        let bytes = &src.bytes()[64..64 + len];
        let expected = pattern(len);
        assert_eq!(bytes[..4096 - 64], expected[..4096 - 64]);
        assert!(bytes[4096 - 64..len - 1064].iter().all(|&b| b == 0));
        assert_eq!(bytes[len - 1064..], expected[len - 1064..]);
    }

    #[test]
    fn moves_again_from_a_buffer_whose_pages_moved_before() {
        // After one move the buffer spans several mappings: the next move takes the first.
        let len = 8 << 20;
        let (a, b, c) = (Mapping::new(len + 8192, libc::MAP_PRIVATE), Mapping::new(len + 8192, libc::MAP_PRIVATE), Mapping::new(len + 8192, libc::MAP_PRIVATE));
        let expected = pattern(len);
        // SAFETY: all ranges lie inside their mappings.
        unsafe {
            std::ptr::copy_nonoverlapping(expected.as_ptr(), a.address.add(64), len);
            assert!(move_or_copy(a.address.add(64), b.address.add(64), len, true).unwrap());
            assert!(move_or_copy(b.address.add(64), c.address.add(64), len, true).unwrap());
        }
        assert!(c.bytes()[64..64 + len] == expected[..]);
    }

    #[test]
    fn file_pages_move_only_while_unmodified() {
        use std::io::Write;
        let len = 4 << 20;
        let path = std::env::temp_dir().join(format!("tokensmith-pages-{}", std::process::id()));
        let expected = pattern(len + 8192);
        std::fs::File::create(&path).unwrap().write_all(&expected).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map_file = || {
            use std::os::fd::AsRawFd;
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: a private (copy-on-write) mapping of the whole file.
            let address = unsafe { libc::mmap(std::ptr::null_mut(), len + 8192, prot, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
            assert_ne!(address, libc::MAP_FAILED);
            Mapping { address: address as *mut u8, len: len + 8192 }
        };
        for modified in [false, true] {
            let mut src = map_file();
            if modified {
                src.bytes_mut()[len / 2] ^= 0xff; // a private copy of one page
            }
            let want = src.bytes()[100..100 + len].to_vec();
            let dst = Mapping::new(len + 8192, libc::MAP_PRIVATE);
            // SAFETY: both ranges lie inside their mappings.
            let moved = unsafe { move_or_copy(src.address.add(100), dst.address.add(100), len, false) }.unwrap();
            assert_eq!(moved, !modified);
            assert!(dst.bytes()[100..100 + len] == want[..]);
            // The source still reads what it held: the file's bytes, or its own copy.
            assert!(src.bytes()[100..100 + len] == want[..]);
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn copies_when_it_cannot_move() {
        // Different offsets within a page, too small, shared memory, and anonymous memory the
        // caller does not own alone: copied, source kept.
        for (len, src_offset, dst_offset, flags, anonymous_ok) in [
            (8 << 20, 64, 128, libc::MAP_PRIVATE, true),
            (100_000, 64, 64, libc::MAP_PRIVATE, true),
            (8 << 20, 64, 64, libc::MAP_SHARED, true),
            (8 << 20, 64, 64, libc::MAP_PRIVATE, false),
        ] {
            let (moved, src) = run(len, src_offset, dst_offset, flags, anonymous_ok);
            assert!(!moved, "{len} {src_offset} {dst_offset} {flags}");
            assert!(src.bytes()[src_offset..src_offset + len] == pattern(len)[..]);
        }
    }
}
