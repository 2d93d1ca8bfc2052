//! `join` allocates nothing: its second half stays on the joiner's stack and is lent
//! to the region's threads by address (`src/lent.rs`), whether the joiner takes it
//! back (queued, nobody free to steal it) or another thread runs it (stolen).
//!
//! A counting global allocator sees every allocation of every thread of this test
//! binary; it holds one test, so nothing else runs in the measured windows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

thread_local! {
    static MARK: u8 = const { 0 };
}

/// An identity of the current thread that allocates nothing to read.
fn this_thread() -> usize {
    MARK.with(|mark| std::ptr::from_ref(mark) as usize)
}

/// Spins until `flag` is set; false after 20 s (the test then fails, not hangs).
fn until(flag: &AtomicBool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !flag.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            return false;
        }
        std::hint::spin_loop();
    }
    true
}

/// A join whose second half another thread runs: the first half waits for it to
/// start. Returns the threads that ran the halves and the allocations meanwhile.
fn stolen(s: &budget_core::Scope<'_>) -> (usize, usize, usize) {
    let started = AtomicBool::new(false);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let ((a, seen), b) = s.join(
        || (this_thread(), until(&started)),
        || {
            started.store(true, Ordering::SeqCst);
            this_thread()
        },
    );
    let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert!(seen, "the second half never started on another thread");
    (a, b, allocated)
}

/// A join whose second half nobody can steal (the region's one helper slot is busy):
/// the joiner takes it back and runs it.
fn queued(s: &budget_core::Scope<'_>) -> (usize, usize, usize) {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let (a, b) = s.join(this_thread, this_thread);
    (a, b, ALLOCATIONS.load(Ordering::SeqCst) - before)
}

#[test]
fn a_queued_join_and_a_stolen_join_allocate_nothing() {
    budget_core::Builder::new()
        .num_threads(2)
        .build_global()
        .expect("the first use of the budget in this binary");
    // Outlive the region: its tasks borrow them.
    let (busy, release) = (AtomicBool::new(false), AtomicBool::new(false));
    budget_core::scope_with(2, |s| {
        assert_eq!(s.width(), 2, "nothing else holds a token");
        // Warm-up: the region's state, the pool's queue and the lending thread's
        // lane are made in the first round.
        let (a, b, _) = stolen(s);
        assert_ne!(a, b);
        // A worker thread is started (allocating) when a slot is handed out while no
        // worker is parked, at most `total` in a process: a round that started one
        // is not counted; the others must allocate nothing, and most rounds are such.
        let mut clean = 0;
        for round in 0..20 {
            let threads = budget_core::stats().worker_threads;
            let (a, b, allocated) = stolen(s);
            assert_ne!(a, b, "round {round}: stolen");
            if budget_core::stats().worker_threads == threads {
                assert_eq!(allocated, 0, "round {round}: a stolen join allocated");
                clean += 1;
            }
        }
        assert!(clean >= 18, "{clean} of 20 rounds started no thread");

        // Keep the helper slot busy, so that the next halves are not stolen.
        s.spawn(|_| {
            busy.store(true, Ordering::SeqCst);
            until(&release);
        });
        assert!(until(&busy), "the spawned task never started");
        for round in 0..20 {
            let (a, b, allocated) = queued(s);
            assert_eq!(a, b, "round {round}: taken back by the joiner");
            assert_eq!(allocated, 0, "round {round}: a queued join allocated");
        }
        release.store(true, Ordering::SeqCst);
    });
    assert_eq!(budget_core::stats().in_use, 0);
}
