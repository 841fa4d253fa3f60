//! The process allocator of the `wgbroker` binary: mimalloc for ordinary blocks, the kernel's
//! page mappings for large ones.
//!
//! Why: every tunnel TCP connection owns a receive and a send buffer (`tcp_rx_buffer`,
//! `tcp_tx_buffer`: 64 KiB and 256 KiB by default), allocated zeroed. A general-purpose allocator
//! hands back memory that an earlier connection freed and must clear it byte by byte, which
//! makes every page of it resident although a slow vendor (a silent or dripping head, a stalled
//! body) never puts a byte into most of it: measured through wireguard-go, 2,000 such
//! connections held on a broker that had served a wave before cost 302–305 KiB each, against
//! 42 KiB on a fresh one. And what is freed stays with the allocator (mimalloc purges lazily,
//! per thread): once the connections of those waves and of one 10,000-connection burst were
//! gone, the idle broker sat at 713 MiB, against 19 MiB fresh.
//!
//! A fresh private anonymous mapping reads as zeros without being touched: a page becomes
//! resident when it is first written, so a connection costs the pages its traffic actually
//! used. `munmap` gives every page back to the kernel at once. So blocks of at least
//! [`LARGE`] bytes (with an alignment a page satisfies) are mapped and unmapped one by one,
//! everything else goes to mimalloc. The cost is a system call pair per large block, and the
//! `munmap` interrupts the other CPUs running the process (TLB shootdown); socket buffers are
//! made only when a stack needs more sockets than it has, since busy stacks reuse reaped ones
//! (`netstack::stack`). Through wireguard-go, a new connection per request cost the broker the
//! same CPU as before this allocator.
//!
//! The library itself does not choose an allocator (tests and embedders keep theirs); the
//! binary installs this one with `#[global_allocator]`.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// Smallest block served by its own mapping: a tunnel socket buffer at the smallest default
/// (64 KiB) is one, the per-request structures (request heads, packet buffers) are not.
pub const LARGE: usize = 64 << 10;

/// Largest alignment a mapping is sure to have (mappings start on a page boundary, and pages
/// are at least 4 KiB).
const MAP_ALIGN: usize = 4096;

/// mimalloc for small blocks, one anonymous mapping per large block. See the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct BrokerAlloc;

fn mapped(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= MAP_ALIGN
}

/// A fresh zeroed mapping of `size` bytes, or null.
fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is served either by mimalloc (which upholds GlobalAlloc's contract) or by
// a mapping of at least the requested size, page aligned (so aligned for any `align <=
// MAP_ALIGN`), readable and writable, zeroed, and owned by nobody else until `dealloc`. Which of
// the two served a block depends only on its layout, which the caller passes back unchanged to
// `dealloc` and `realloc`, so a block always returns to the side that made it.
unsafe impl GlobalAlloc for BrokerAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract (non-zero size) passes through.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // A fresh anonymous mapping is already zero, and stays untouched until written.
            map(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `p` came from `map(layout.size())` (same layout, see above) and the caller
            // gives it up; nothing else lives in that mapping.
            unsafe {
                libc::munmap(p.cast(), layout.size());
            }
        } else {
            // SAFETY: `p` came from mimalloc with this layout.
            unsafe { mimalloc::MiMalloc.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, does not
        // overflow isize, which is all `from_size_align_unchecked` requires.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(layout), mapped(new_layout)) {
            // SAFETY: a mimalloc block stays with mimalloc; the caller's contract passes through.
            (false, false) => unsafe { mimalloc::MiMalloc.realloc(p, layout, new_size) },
            (true, true) => {
                // SAFETY: `p` is the start of a mapping of `layout.size()` bytes that the caller
                // gives up; on success the kernel moved or grew it in place, keeping the
                // contents (and the new tail reads as zeros).
                let q = unsafe {
                    libc::mremap(p.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if q == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    q.cast()
                }
            }
            _ => {
                // Across the threshold: a block from the other side, the contents copied.
                // SAFETY: `new_layout` is valid (see above) and non-zero in size.
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    // SAFETY: both blocks are live, distinct, and at least this long.
                    unsafe {
                        ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                }
                q
            }
        }
    }
}

/// Asks mimalloc to give the calling thread's free memory back to the kernel now (it would
/// otherwise purge lazily, as the thread goes on allocating: an executor that went quiet after a
/// burst kept tens of MiB). Costs a walk over the thread's heap; see [`Reclaim`] for when.
pub fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; it
    // only works on mimalloc's own state. Without mimalloc as the global allocator (tests) it
    // has nothing to do.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// When an executor hands freed memory back ([`collect`]): once its load (open connections,
/// idle packet buffers: whatever holds its memory) has fallen to a quarter of the highest it
/// was since the last collection, if that high was at least [`Reclaim::FLOOR`]. So a burst
/// is followed by a few collections as it drains (down to a quarter, a sixteenth, ...), and
/// steady traffic triggers none.
#[derive(Debug, Default)]
pub struct Reclaim {
    peak: usize,
}

impl Reclaim {
    /// A high below this does not call for a collection: what it left is small.
    pub const FLOOR: usize = 64;

    /// Records the current `load`; returns whether to [`collect`] now.
    pub fn due(&mut self, load: usize) -> bool {
        self.peak = self.peak.max(load);
        if self.peak >= Self::FLOOR && load <= self.peak / 4 {
            self.peak = load;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaim_follows_a_draining_burst_and_ignores_small_or_steady_loads() {
        let mut r = Reclaim::default();
        assert!((0..100).all(|_| !r.due(40)), "below the floor");
        assert!(!r.due(1000));
        assert!(!r.due(600), "steady: not below a quarter");
        let fired: Vec<usize> = (0..=1000).rev().step_by(10).filter(|&l| r.due(l)).collect();
        assert_eq!(fired, vec![250, 60]);
        assert!(!r.due(0), "the last high was below the floor");
    }

    #[test]
    fn blocks_on_both_sides_of_the_threshold_keep_their_contents() {
        let a = BrokerAlloc;
        for (size, grown, align) in [
            (100, 200, 8),
            (LARGE - 8, LARGE + 4096, 8),
            (LARGE, 3 * LARGE, 16),
            (3 * LARGE, 100, 64),
            (LARGE, LARGE, 4096),
            (LARGE, 100, 8192),
        ] {
            let l = Layout::from_size_align(size, align).expect("layout");
            // SAFETY: non-zero layouts; every block is written within its size and freed once
            // with the layout it has.
            unsafe {
                let z = a.alloc_zeroed(l);
                assert!(!z.is_null());
                assert_eq!(z as usize % align, 0);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                for i in 0..size {
                    *z.add(i) = (i % 251) as u8;
                }
                let g = a.realloc(z, l, grown);
                assert!(!g.is_null());
                assert_eq!(g as usize % align, 0);
                for i in 0..size.min(grown) {
                    assert_eq!(*g.add(i), (i % 251) as u8, "byte {i} of {size} -> {grown}");
                }
                a.dealloc(g, Layout::from_size_align(grown, align).expect("layout"));
            }
        }
    }
}
