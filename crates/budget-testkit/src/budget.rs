//! For tests that need a budget of an exact size, shared by the tests of one binary:
//! [`exclusive_budget`], [`wait_for`] with a deadline, and (from [`crate::watch`]) a
//! [`watchdog`] for code that could deadlock.

use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// Every test in one test binary shares one budget, and tests run on parallel
/// threads: the ones that assert exact widths take this lock to run alone.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Builds this process's budget with `total` cores (first call) and returns a guard
/// under which no other test of the binary runs. Checks no tokens leaked before.
///
/// # Panics
///
/// If the budget was already built with another total, or tokens leaked.
///
/// # Examples
///
/// ```
/// let _alone = budget_testkit::budget::exclusive_budget(2);
/// assert_eq!(budget_core::stats().total, 2);
/// ```
pub fn exclusive_budget(total: usize) -> MutexGuard<'static, ()> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        budget_core::Builder::new()
            .num_threads(total)
            .build_global()
            .expect("this test binary builds the budget before any other use")
    });
    let guard = serial();
    assert_eq!(budget_core::stats().total, total);
    assert_eq!(
        budget_core::stats().in_use,
        0,
        "a previous test leaked tokens"
    );
    guard
}

/// Runs the caller alone among the tests of its binary that take this guard (or
/// [`exclusive_budget`]'s): for tests that start processes computing on every core or
/// assert exact widths, which tests running beside them would distort. The one
/// one-at-a-time lock of the workspace's tests.
///
/// # Examples
///
/// ```
/// let _alone = budget_testkit::budget::serial();
/// ```
#[must_use = "the test runs alone only while the guard lives"]
pub fn serial() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `condition` until it holds, failing the test after 30 s instead of hanging.
///
/// # Examples
///
/// ```
/// budget_testkit::budget::wait_for("nothing", || true);
/// ```
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub use crate::watch::watchdog;
