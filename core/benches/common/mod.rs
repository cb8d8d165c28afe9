//! What every bench shares: a global allocator that counts allocations and live bytes, so a
//! bench can show that a hot path does not allocate and what state costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counts every allocation and reallocation, and the bytes live, through the global allocator.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `op` many times and returns allocations per call.
#[allow(dead_code)] // not every bench uses every helper
pub fn allocs_per_op<T>(op: impl FnMut() -> T) -> f64 {
    allocs_per_ops(100_000, op)
}

/// Runs `op` `n` times and returns allocations per call.
#[allow(dead_code)]
pub fn allocs_per_ops<T>(n: u64, mut op: impl FnMut() -> T) -> f64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        black_box(op());
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

/// Heap bytes live right now.
#[allow(dead_code)]
pub fn live_bytes() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

/// Prints a table of allocations per operation and fails if any hot path allocates.
#[allow(dead_code)]
pub fn assert_no_allocations(rows: &[(&str, f64)]) {
    println!("allocations per operation (counting global allocator, 100000 calls each):");
    for (name, per_op) in rows {
        println!("  {name:<40} {per_op}");
        assert_eq!(*per_op, 0.0, "{name} allocates on the hot path");
    }
}

/// Allocations made so far, for counting around a part of a bench's work.
#[allow(dead_code)]
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}
