//! A copy of budget-core in a `cdylib`, for `crates/budget-core/tests/two_copies.rs`:
//! the test copies the built library to two paths and opens both with
//! `dlopen(RTLD_LOCAL)`, so the process holds two copies that cargo never saw
//! together, as two Python extension modules would. Each copy's calls:
//!
//! - `budget_copy_total()`: its budget's total;
//! - `budget_copy_hold(n)`: opens a region of at most `n` on a thread of its own and
//!   keeps it open until `budget_copy_release()`; returns the region's width;
//! - `budget_copy_width()`: the width of a region opened now (and closed at once).

use std::sync::mpsc;
use std::sync::Mutex;

/// The thread holding a region open, and how to let it go.
static HELD: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>> = Mutex::new(None);

/// This copy's budget total.
#[no_mangle]
pub extern "C" fn budget_copy_total() -> usize {
    budget_core::stats().total
}

/// Opens a region of at most `n` on a thread and keeps it; returns its width.
#[no_mangle]
pub extern "C" fn budget_copy_hold(n: usize) -> usize {
    let (width_tx, width_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        budget_core::scope_with(n, |s| {
            let _ = width_tx.send(s.width());
            let _ = release_rx.recv();
        });
    });
    let width = width_rx.recv().unwrap_or(0);
    *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some((release_tx, thread));
    width
}

/// Closes the region `budget_copy_hold` opened.
#[no_mangle]
pub extern "C" fn budget_copy_release() {
    if let Some((release, thread)) = HELD.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = release.send(());
        let _ = thread.join();
    }
}

/// The width of a region opened now.
#[no_mangle]
pub extern "C" fn budget_copy_width() -> usize {
    budget_core::scope(|s| s.width())
}
