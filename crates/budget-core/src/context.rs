//! What the current thread is doing: inside a region (it holds, or runs under, a
//! token) or outside every region.

use std::cell::Cell;

thread_local! {
    /// True while this thread runs inside a region: as the thread that opened it,
    /// or as a worker occupying one of its slots.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside a region.
pub(crate) fn in_region() -> bool {
    IN_REGION.with(Cell::get)
}

/// Marks the current thread as inside a region until the guard drops (on unwind too).
pub(crate) fn enter() -> Guard {
    Guard {
        previous: IN_REGION.with(|c| c.replace(true)),
    }
}

/// Restores the thread's previous state on drop.
#[derive(Debug)]
pub(crate) struct Guard {
    previous: bool,
}

/// Marks the current thread as working inside a region, for threads that an
/// integration runs on a region's tokens (a rayon pool's workers): regions opened on
/// it take no token for the thread itself, as on budget's own workers.
///
/// Use it only on threads whose running is already paid for by tokens, for example a
/// pool that is only ever given work by a region holding a token per thread.
///
/// # Examples
///
/// ```
/// let _marked = budget_core::RegionThread::enter();
/// // A region opened here takes no token for this thread.
/// budget_core::scope(|s| assert!(s.width() >= 1));
/// assert_eq!(budget_core::stats().in_use, 0);
/// ```
#[derive(Debug)]
#[must_use = "the thread is marked only while the guard lives"]
pub struct RegionThread {
    _guard: Guard,
}

impl RegionThread {
    /// Marks the current thread until the returned guard is dropped (`forget` it to
    /// mark a dedicated thread for good).
    pub fn enter() -> RegionThread {
        RegionThread { _guard: enter() }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        IN_REGION.with(|c| c.set(self.previous));
    }
}
