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
pub(crate) struct Guard {
    previous: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        IN_REGION.with(|c| c.set(self.previous));
    }
}
