//! The guest's global allocator: size classes with a free list each, over the system allocator.
//!
//! Every policy call allocates and frees a few dozen small blocks (the strings of the request
//! record the host lowers through `cabi_realloc`, the edits, parsed claims) and a guest runs one
//! call at a time. In a profile of the benchmark chain (jwt-auth + rate-limit + headers),
//! wasi-libc's dlmalloc and its wrappers were a third of the guests' instructions, ~400 per
//! allocate/free pair; talc did no better. Here a small block is a pop or push on its class's
//! list (a few instructions). Blocks up to [`MAX_SMALL`] bytes come from chunks taken from the
//! system allocator and are reused, never returned: the heap keeps its peak per class, which a
//! pooled instance (recycled after `pool_max_uses` calls) can afford. Larger or over-aligned
//! blocks go straight to the system allocator.

#![allow(unsafe_code, reason = "a global allocator is unsafe by definition")]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// Smallest block: holds the free-list link and keeps every block 16-byte aligned.
const MIN_SMALL: usize = 16;
/// Largest block served from the size classes.
pub(crate) const MAX_SMALL: usize = 4096;
/// Classes 16, 32, …, 4096 (powers of two).
const CLASSES: usize = (MAX_SMALL / MIN_SMALL).trailing_zeros() as usize + 1;
/// Chunks taken from the system allocator for the small classes.
const CHUNK: usize = 64 * 1024;

struct State {
    /// Head of each class's free list; a free block's first word is the next block.
    free: [*mut u8; CLASSES],
    /// Unused rest of the current chunk.
    bump: *mut u8,
    end: *mut u8,
}

/// Size classes over `A` (the system allocator in a guest; any allocator in the unit tests).
pub struct SizeClasses<A> {
    state: UnsafeCell<State>,
    backing: A,
}

// SAFETY: only built for targets without threads (wasm32 without atomics), where nothing can
// reach the allocator concurrently; the tests use one instance per thread.
unsafe impl<A: Sync> Sync for SizeClasses<A> {}

/// The class of a layout, or `None` when it goes to the backing allocator.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(MIN_SMALL);
    if size > MAX_SMALL {
        return None;
    }
    let rounded = size.next_power_of_two();
    Some((rounded / MIN_SMALL).trailing_zeros() as usize)
}

const fn class_size(class: usize) -> usize {
    MIN_SMALL << class
}

impl<A> SizeClasses<A> {
    /// An empty allocator; memory is taken from `backing` on first use.
    pub const fn new(backing: A) -> Self {
        SizeClasses {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASSES],
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
            backing,
        }
    }
}

impl<A: GlobalAlloc> SizeClasses<A> {
    /// A fresh block of `class` from the current chunk, or a new chunk.
    ///
    /// # Safety
    /// No other reference to the state may be live.
    unsafe fn carve(&self, st: &mut State, class: usize) -> *mut u8 {
        let size = class_size(class);
        // Blocks sit at multiples of their size within a chunk aligned to MAX_SMALL, so each
        // is aligned to its size, which is at least its layout's alignment.
        let mut at = st.bump.wrapping_add(st.bump.align_offset(size));
        if st.bump.is_null() || (st.end as usize).saturating_sub(at as usize) < size {
            // SAFETY: the layout is valid and non-zero (CHUNK, MAX_SMALL are powers of two).
            let chunk = unsafe {
                self.backing
                    .alloc(Layout::from_size_align_unchecked(CHUNK, MAX_SMALL))
            };
            if chunk.is_null() {
                return ptr::null_mut();
            }
            st.bump = chunk;
            st.end = chunk.wrapping_add(CHUNK);
            at = chunk;
        }
        st.bump = at.wrapping_add(size);
        at
    }
}

// SAFETY: small blocks are handed out once until freed (a free list entry is only ever pushed
// by `dealloc` of a block of that class, and popped once); each is `class_size` bytes aligned to
// that size, which covers the layout. Other layouts are the backing allocator's.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SizeClasses<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.backing.alloc(layout) };
        };
        // SAFETY: single-threaded (see `Sync`), and no reference to the state outlives a call.
        let st = unsafe { &mut *self.state.get() };
        let head = st.free[class];
        if head.is_null() {
            // SAFETY: `st` is the only live reference.
            return unsafe { self.carve(st, class) };
        }
        // SAFETY: a listed block is free, aligned and at least a pointer wide.
        st.free[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: blocks of this layout came from the backing allocator.
            return unsafe { self.backing.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`; the block is ours, free now, aligned and pointer-wide.
        unsafe {
            let st = &mut *self.state.get();
            block.cast::<*mut u8>().write(st.free[class]);
            st.free[class] = block;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old, new) = (class_of(layout), class_of(new_layout));
        if old.is_some() && old == new {
            // Same class: the block already has room (a `String` growing within its class).
            return block;
        }
        if old.is_none() && new.is_none() {
            // SAFETY: both layouts are the backing allocator's.
            return unsafe { self.backing.realloc(block, layout, new_size) };
        }
        // SAFETY: a fresh block of the new layout, the old contents copied, the old one freed.
        unsafe {
            let fresh = self.alloc(new_layout);
            if !fresh.is_null() {
                ptr::copy_nonoverlapping(block, fresh, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn classes_cover_sizes_and_alignments() {
        assert_eq!(CLASSES, 9);
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(4, 64)), Some(2), "alignment sets the class");
        assert_eq!(class_of(layout(4096, 1)), Some(8));
        assert_eq!(class_of(layout(4097, 1)), None);
        assert_eq!(class_of(layout(8, 8192)), None);
    }

    #[test]
    fn blocks_are_aligned_distinct_and_reused_after_free() {
        let a = SizeClasses::new(System);
        unsafe {
            let mut live = Vec::new();
            for (size, align) in [(1, 1), (24, 8), (100, 4), (64, 64), (4000, 16), (3, 2048)] {
                for _ in 0..50 {
                    let l = layout(size, align);
                    let p = a.alloc(l);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size}/{align}");
                    p.write_bytes(0xAB, size);
                    live.push((p, l));
                }
            }
            let mut starts: Vec<usize> = live.iter().map(|(p, _)| *p as usize).collect();
            starts.sort_unstable();
            starts.dedup();
            assert_eq!(starts.len(), live.len(), "no block handed out twice");
            let (p, l) = live[60];
            a.dealloc(p, l);
            assert_eq!(a.alloc(l), p, "a freed block is the next of its class");
            for (p, l) in live {
                a.dealloc(p, l);
            }
        }
    }

    #[test]
    fn realloc_keeps_contents_across_classes_and_the_backing_allocator() {
        let a = SizeClasses::new(System);
        unsafe {
            let l = layout(10, 1);
            let p = a.alloc(l);
            for i in 0..10 {
                p.add(i).write(i as u8);
            }
            assert_eq!(a.realloc(p, l, 16), p, "same class: in place");
            let q = a.realloc(p, layout(16, 1), 300);
            let r = a.realloc(q, layout(300, 1), 10_000);
            let s = a.realloc(r, layout(10_000, 1), 20_000);
            let t = a.realloc(s, layout(20_000, 1), 5);
            for i in 0..5 {
                assert_eq!(t.add(i).read(), i as u8);
            }
            a.dealloc(t, layout(5, 1));
        }
    }

    #[test]
    fn a_failing_backing_allocator_gives_null() {
        struct Empty;
        unsafe impl GlobalAlloc for Empty {
            unsafe fn alloc(&self, _: Layout) -> *mut u8 {
                ptr::null_mut()
            }
            unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
        }
        let a = SizeClasses::new(Empty);
        unsafe {
            assert!(a.alloc(layout(8, 8)).is_null());
            assert!(a.alloc(layout(100_000, 8)).is_null());
        }
    }
}
