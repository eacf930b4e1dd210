//! Work buffers that outlive one op call: per-thread vectors that the CPU convolutions take for
//! their column and tile matrices and give back when done.
//!
//! A fresh `Vec` of tens of MiB costs a zero-fill on every call (with freed memory kept in the
//! heap, `memory.rs`) or page faults (without): about a millisecond per 10 MiB on this project's
//! machines, a tenth of a 3×3 convolution at 56². A buffer from the pool is filled only where it
//! grows; its old contents stay, so every caller writes what it reads. The pool holds as many
//! vectors as were in use at once on the thread (two or three per convolution), each as long as the
//! longest use it served: memory glibc would keep in the heap anyway (`keep_freed_memory`).

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    static POOL: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A vector taken from this thread's pool, given back when dropped.
pub(crate) struct Scratch<T: 'static> {
    vec: Vec<T>,
}

impl<T: Copy + 'static> Scratch<T> {
    /// The pool's most recently returned vector of `T`, or an empty one.
    pub(crate) fn take() -> Self {
        let vec = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let found = pool.iter().rposition(|entry| entry.is::<Vec<T>>());
            found.and_then(|idx| pool.swap_remove(idx).downcast::<Vec<T>>().ok()).map(|boxed| *boxed)
        });
        Self { vec: vec.unwrap_or_default() }
    }

    /// The first `len` elements, the vector grown with `fill` where it is shorter. Elements
    /// already there keep whatever an earlier user left: write before reading.
    pub(crate) fn slice(&mut self, len: usize, fill: T) -> &mut [T] {
        if self.vec.len() < len {
            self.vec.resize(len, fill);
        }
        &mut self.vec[..len]
    }
}

impl<T: 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let vec = std::mem::take(&mut self.vec);
        if vec.capacity() > 0 {
            // `try_with`: a buffer dropped while the thread's storage is torn down is freed.
            let _ = POOL.try_with(|pool| pool.borrow_mut().push(Box::new(vec)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_and_grown_only_where_short() {
        let mut first = Scratch::<f32>::take();
        first.slice(4, 0.0).copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        let ptr = first.vec.as_ptr();
        drop(first);
        let mut again = Scratch::<f32>::take();
        assert_eq!(again.vec.as_ptr(), ptr, "the same allocation comes back");
        assert_eq!(again.slice(2, 0.0), &[1.0, 2.0], "old contents stay");
        assert_eq!(again.slice(6, 0.0), &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0], "grown with zeros");
        // Another type does not take it.
        assert!(Scratch::<f64>::take().vec.is_empty());
    }
}
