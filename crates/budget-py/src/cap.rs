//! The cap on the width of regions opened from Python.
//!
//! The cap is what `threadpoolctl.threadpool_limits(n)` sets through budget's
//! threadpoolctl controller (`set_num_threads(n)`), and what a forked child that
//! inherited libgomp sets to 1 (see `python/budget/__init__.py`). Like threadpoolctl's
//! own limits it is process-wide; regions read it once, at entry.

use std::sync::atomic::{AtomicUsize, Ordering};

/// 0 means "no cap". Relaxed: a region reads a value set before it was opened (the
/// Python call that set it happens-before through the GIL); nothing else is ordered
/// by it.
static CAP: AtomicUsize = AtomicUsize::new(0);
/// The same, for the forked-child rule; kept apart so that threadpoolctl's restore
/// never lifts it.
static FORK_CAP: AtomicUsize = AtomicUsize::new(0);

/// Sets the threadpoolctl cap (`n` ≥ 1; values ≥ the budget's total lift it).
pub(crate) fn set(n: usize) {
    CAP.store(n.max(1), Ordering::Relaxed);
}

/// Sets the forked-child cap (0 lifts it).
pub(crate) fn set_fork(n: usize) {
    FORK_CAP.store(n, Ordering::Relaxed);
}

/// The width a region may ask for now: `total`, lowered by the caps in force.
pub(crate) fn allowed(total: usize) -> usize {
    let mut allowed = total;
    for cap in [
        CAP.load(Ordering::Relaxed),
        FORK_CAP.load(Ordering::Relaxed),
    ] {
        if cap > 0 {
            allowed = allowed.min(cap);
        }
    }
    allowed.max(1)
}

/// The threadpoolctl cap in force, if any.
pub(crate) fn get() -> Option<usize> {
    Some(CAP.load(Ordering::Relaxed)).filter(|&c| c > 0)
}

/// Lifts the threadpoolctl cap.
pub(crate) fn clear() {
    CAP.store(0, Ordering::Relaxed);
}
