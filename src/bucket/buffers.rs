//! Chunk buffers kept for reuse once their chunk is sealed and stored.
//!
//! Why: a fresh 1 MiB buffer is 256 page faults when a write first fills
//! it, most of a 1 MiB write's time on a VM, and that time is spent holding
//! the Mount (other readers and writers of the volume wait). A reused one
//! is resident already. The pool is the node's, shared by all its mounts,
//! and bounded in bytes, so a volume that stopped writing holds none.

use std::sync::Mutex;

/// Bytes of idle buffers the node keeps at most.
const MAX_POOLED_BYTES: usize = 32 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for `capacity` bytes: a pooled one of that
/// size when there is one, else a new one.
pub(super) fn take(capacity: usize) -> Vec<u8> {
    let mut pool = pool();
    match pool.iter().rposition(|b| b.capacity() == capacity) {
        Some(at) => pool.swap_remove(at),
        None => {
            drop(pool);
            Vec::with_capacity(capacity)
        }
    }
}

/// Keep `buf` for a later [`take`]; when the pool is full the oldest go
/// (so sizes no mount uses any more do not stay). Its bytes are sealed
/// chunk bytes, never plaintext, and are cleared.
pub(super) fn give(mut buf: Vec<u8>) {
    if buf.capacity() > MAX_POOLED_BYTES {
        return;
    }
    buf.clear();
    let mut pool = pool();
    let mut pooled: usize = pool.iter().map(Vec::capacity).sum();
    while pooled + buf.capacity() > MAX_POOLED_BYTES {
        pooled -= pool.remove(0).capacity();
    }
    pool.push(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A given buffer comes back (empty) for its size, not for another,
    /// and the pool keeps no more than its bound.
    #[test]
    fn buffers_come_back_by_size_up_to_the_bound() {
        // Sizes no other test uses, so tests running at once do not share them.
        let (size, other) = (3 * 1024 * 1024 + 17, 3 * 1024 * 1024 + 19);
        let mut b = Vec::with_capacity(size);
        b.extend_from_slice(b"sealed");
        let at = b.as_ptr();
        give(b);
        let unlike = take(other);
        assert_ne!(unlike.as_ptr(), at);
        let again = take(size);
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty());
        let many: Vec<Vec<u8>> = (0..MAX_POOLED_BYTES / size + 2)
            .map(|_| Vec::with_capacity(size))
            .collect();
        many.into_iter().for_each(give);
        let pooled: usize = pool().iter().map(Vec::capacity).sum();
        assert!(pooled <= MAX_POOLED_BYTES);
    }
}
