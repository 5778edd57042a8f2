//! The binary's global allocator: the system allocator, except that huge
//! blocks (16 MiB or more) are anonymous mappings of their own.
//!
//! Why: every FUSE session thread holds a 16 MiB receive buffer (fuser's
//! `vec![0; MAX_WRITE_SIZE + 4096]`) of which a request touches a few KiB.
//! The binary raises glibc's mmap threshold to 64 MiB (so 1 MiB chunk
//! buffers are reused from the heap, not faulted in afresh each time), so
//! glibc serves that buffer from a thread's arena, where a zeroed block is
//! memset: 16 MiB resident per thread, 26 MiB per idle volume. A fresh
//! mapping is zero already and costs only the pages that are used.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Blocks this large or larger are mapped directly (chunk buffers of the
/// usual sizes stay below).
const LARGE: usize = 16 << 20;
const PAGE: usize = 4096;

/// See the module documentation.
pub struct LargeBlocksMapped;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    let p = libc::mmap(
        ptr::null_mut(),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

unsafe impl GlobalAlloc for LargeBlocksMapped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            map(layout.size())
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // Anonymous mappings are zero-filled on first touch.
            map(layout.size())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_large(&layout) {
            libc::munmap(p.cast(), layout.size());
        } else {
            System.dealloc(p, layout)
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (is_large(&layout), is_large(&new_layout)) {
            (false, false) => System.realloc(p, layout, new_size),
            (true, true) => {
                let q = libc::mremap(p.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE);
                if q == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    q.cast()
                }
            }
            _ => {
                let q = self.alloc(new_layout);
                if !q.is_null() {
                    ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                    self.dealloc(p, layout);
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_round_trip_through_growth_and_shrinking() {
        let a = LargeBlocksMapped;
        unsafe {
            let small = Layout::from_size_align(1000, 8).unwrap();
            let p = a.alloc_zeroed(small);
            assert!(!p.is_null());
            p.write_bytes(7, 1000);
            // Small -> large -> larger -> small keeps the bytes.
            let p = a.realloc(p, small, LARGE + 5);
            let big = Layout::from_size_align(LARGE + 5, 8).unwrap();
            assert_eq!(*p.add(999), 7);
            *p.add(LARGE + 4) = 9;
            let p = a.realloc(p, big, 2 * LARGE);
            let bigger = Layout::from_size_align(2 * LARGE, 8).unwrap();
            assert_eq!((*p.add(999), *p.add(LARGE + 4)), (7, 9));
            let p = a.realloc(p, bigger, 500);
            assert_eq!(*p.add(499), 7);
            a.dealloc(p, Layout::from_size_align(500, 8).unwrap());
            let z = a.alloc_zeroed(big);
            assert!((0..LARGE).step_by(4096).all(|i| *z.add(i) == 0));
            a.dealloc(z, big);
        }
    }
}
