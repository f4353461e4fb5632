//! A global allocator that keeps a few large freed blocks for reuse while training.
//!
//! A training step allocates and frees the same large buffers every time: the logits of each chunk
//! of the loss (508 × 49,152 f32 = 100 MB on the 135M shape, two of 155 MB on the Qwen2.5-0.5B
//! one). glibc serves blocks above 32 MiB (its cap on `M_MMAP_THRESHOLD`) with a fresh `mmap` and
//! returns them with `munmap`, so every such buffer is faulted in and zeroed by the kernel again,
//! page by page: 25,000 page faults per step of the 135M shape, 2.5% of its time. This allocator
//! keeps up to [`SLOTS`] freed blocks of at least [`LARGE_BLOCK`] bytes (at most [`MAX_KEPT`] in all)
//! and hands one back for a request of the same size class and alignment. Everything else goes to
//! the system allocator unchanged.
//!
//! Large sizes are rounded up to a size class (a sixteenth of their power of two), so that the loss
//! chunks of 256 and 255 rows share one block: the second reuses the first's, and only one exists at
//! a time, as with the system allocator. The rounding is address space, not memory: pages past the
//! requested size are never touched. Peak memory does not grow, since the kept block is the one in
//! use at the step's peak (the loss) and the next step's loss takes it again.
//!
//! It keeps blocks only while asked to ([`KeepLargeBlocks::keeping`], which a training run holds);
//! the last guard dropped frees what is kept, so a merge streaming tensors of many sizes never holds
//! freed memory. A binary opts in with
//! `#[global_allocator] static A: KeepLargeBlocks = KeepLargeBlocks::new();`; without it the guard
//! does nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks of at least this many bytes are kept: glibc's largest mmap threshold, below which its own
/// heap already reuses freed memory (see [`crate::kernels::cpu_kernel::keep_freed_memory`]).
pub const LARGE_BLOCK: usize = 32 << 20;
/// Freed blocks kept at most.
pub const SLOTS: usize = 4;
/// Bytes kept at most.
pub const MAX_KEPT: usize = 1 << 30;

/// Live [`Keeping`] guards: freed large blocks are kept while there is one.
static KEEPING: AtomicUsize = AtomicUsize::new(0);

/// A kept block: address, size class, alignment (0 size: an empty slot).
type Slot = (usize, usize, usize);

/// The kept blocks, process-wide like the allocator itself, so that the last [`Keeping`] guard can
/// free them.
static KEPT: Mutex<[Slot; SLOTS]> = Mutex::new([(0, 0, 0); SLOTS]);

/// The size a block of `size` bytes is allocated with: large sizes rounded up to a sixteenth of
/// their power of two (under 6.25% more address space), other sizes as they are.
pub fn size_class(size: usize) -> usize {
    // Sizes no allocation can have stay as they are (the rounding must not pass isize::MAX).
    if !(LARGE_BLOCK..=isize::MAX as usize / 2).contains(&size) {
        return size;
    }
    let step = 1usize << (usize::BITS - 1 - size.leading_zeros() - 4);
    size.div_ceil(step) * step
}

/// `layout` with its size class.
fn classed(layout: Layout) -> Layout {
    // SAFETY: the align is a valid one, and rounding a size of at least 32 MiB up by less than 1/16
    // cannot overflow isize.
    unsafe { Layout::from_size_align_unchecked(size_class(layout.size()), layout.align()) }
}

/// The allocator: the system allocator plus a few kept large blocks.
#[derive(Default)]
pub struct KeepLargeBlocks;

impl KeepLargeBlocks {
    /// The allocator (its state is process-wide).
    pub const fn new() -> Self {
        Self
    }

    /// Keeps freed large blocks until the returned guard (and any other) is dropped, which frees
    /// the blocks kept. Does nothing when this allocator is not the global one.
    pub fn keeping() -> Keeping {
        KEEPING.fetch_add(1, Ordering::AcqRel);
        Keeping(())
    }

    fn slots(&self) -> std::sync::MutexGuard<'static, [Slot; SLOTS]> {
        // The slots are plain numbers: a panic while holding the lock leaves them consistent.
        KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A kept block of `layout` (already classed), taken out of the slots.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut slots = self.slots();
        let slot = slots.iter_mut().find(|s| s.1 == layout.size() && s.2 == layout.align())?;
        let ptr = slot.0 as *mut u8;
        *slot = (0, 0, 0);
        Some(ptr)
    }

    /// Keeps a freed block if keeping is on and there is room; whether it was kept.
    fn keep(&self, ptr: *mut u8, layout: Layout) -> bool {
        // Checked under the lock, which the last guard's release also takes: a block is never kept
        // after that release.
        let mut slots = self.slots();
        if KEEPING.load(Ordering::Acquire) == 0 {
            return false;
        }
        let kept: usize = slots.iter().map(|s| s.1).sum();
        if kept + layout.size() > MAX_KEPT {
            return false;
        }
        match slots.iter_mut().find(|s| s.1 == 0) {
            Some(slot) => {
                *slot = (ptr as usize, layout.size(), layout.align());
                true
            }
            None => false,
        }
    }

    /// Frees every kept block.
    fn release(&self) {
        let blocks = std::mem::replace(&mut *self.slots(), [(0, 0, 0); SLOTS]);
        for (ptr, size, align) in blocks.into_iter().filter(|s| s.1 > 0) {
            // SAFETY: the block came from System with exactly this layout and is no longer in use.
            unsafe { System.dealloc(ptr as *mut u8, Layout::from_size_align_unchecked(size, align)) };
        }
    }
}

// SAFETY: a large block is allocated from System with its size class, at least the size asked
// for, and whoever frees or resizes it passes the size asked for, whose class is the same; a kept
// block is handed out only for a request of its class and alignment, to one owner at a time.
unsafe impl GlobalAlloc for KeepLargeBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let layout = classed(layout);
        if layout.size() >= LARGE_BLOCK
            && let Some(ptr) = self.take(layout)
        {
            return ptr;
        }
        // SAFETY: forwarded from the caller, with a size at least the one asked for.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let asked = layout.size();
        let layout = classed(layout);
        if layout.size() >= LARGE_BLOCK
            && let Some(ptr) = self.take(layout)
        {
            // SAFETY: the kept block has at least `asked` bytes.
            unsafe { std::ptr::write_bytes(ptr, 0, asked) };
            return ptr;
        }
        // SAFETY: forwarded from the caller, with a size at least the one asked for.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let layout = classed(layout);
        if layout.size() >= LARGE_BLOCK && self.keep(ptr, layout) {
            return;
        }
        // SAFETY: forwarded from the caller, with the layout the block was allocated with.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // System resizes the block in place or moves it (mremap for a large one, no copy); the new
        // block gets the new size's class, as `alloc` would give it.
        // SAFETY: forwarded from the caller, with the layout the block was allocated with.
        unsafe { System.realloc(ptr, classed(layout), size_class(new_size)) }
    }
}

/// While alive, freed large blocks are kept for reuse.
pub struct Keeping(());

impl Drop for Keeping {
    fn drop(&mut self) {
        if KEEPING.fetch_sub(1, Ordering::AcqRel) == 1 {
            KeepLargeBlocks.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(a: &KeepLargeBlocks) -> Vec<usize> {
        a.slots().iter().filter(|s| s.1 > 0).map(|s| s.1).collect()
    }

    #[test]
    fn keeps_large_blocks_only_while_asked_and_reuses_exact_layouts() {
        let a = KeepLargeBlocks::new();
        let large = Layout::from_size_align(LARGE_BLOCK, 64).unwrap();
        // Another size class (classes of 2 MiB between 32 and 64 MiB).
        let other = Layout::from_size_align(LARGE_BLOCK + (3 << 20), 64).unwrap();
        let small = Layout::from_size_align(1 << 20, 64).unwrap();
        // SAFETY: each block is freed once with the layout it was allocated with.
        unsafe {
            // Not keeping: a large block goes back to the system.
            let p = a.alloc(large);
            a.dealloc(p, large);
            assert!(kept(&a).is_empty());

            let guard = KeepLargeBlocks::keeping();
            let (p, q, s) = (a.alloc(large), a.alloc(other), a.alloc(small));
            p.write(7);
            a.dealloc(p, large);
            a.dealloc(q, other);
            a.dealloc(s, small);
            assert_eq!(kept(&a), vec![LARGE_BLOCK, LARGE_BLOCK + (4 << 20)], "large blocks kept, the small one not");
            // The same layout gets the kept block back; zeroed when asked.
            let again = a.alloc_zeroed(large);
            assert_eq!(again, p);
            assert_eq!(again.read(), 0);
            assert_eq!(kept(&a), vec![LARGE_BLOCK + (4 << 20)]);
            // A slightly smaller request of the same class gets that block.
            let near = Layout::from_size_align(LARGE_BLOCK + (3 << 20) - 12_345, 64).unwrap();
            let q2 = a.alloc(near);
            assert_eq!(q2, q);
            a.dealloc(q2, near);
            a.dealloc(again, large);
            // A nested guard's end releases nothing; the last one's releases everything kept.
            drop(KeepLargeBlocks::keeping());
            assert_eq!(kept(&a).len(), 2);
            drop(guard);
            assert!(kept(&a).is_empty());
        }
    }

    #[test]
    fn size_classes_round_large_sizes_up_by_less_than_a_sixteenth() {
        assert_eq!(size_class(1000), 1000);
        assert_eq!(size_class(LARGE_BLOCK - 1), LARGE_BLOCK - 1);
        assert_eq!(size_class(LARGE_BLOCK), LARGE_BLOCK);
        // The Qwen shape's two loss chunks, 256 and 255 rows of 151,936 logits, share a class.
        let (a, b) = (256 * 151_936 * 4, 255 * 151_936 * 4);
        assert_eq!(size_class(a), size_class(b));
        for size in [LARGE_BLOCK + 1, a, b, 99_876_864, (1 << 30) + 1] {
            let c = size_class(size);
            assert!(c >= size && (c - size) * 16 < size, "{size} -> {c}");
        }
    }
}
