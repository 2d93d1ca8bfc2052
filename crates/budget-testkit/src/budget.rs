//! For tests that need a budget of an exact size, shared by the tests of one binary:
//! [`exclusive_budget`], [`wait_for`] with a deadline, and a [`watchdog`] for code that
//! could deadlock.

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
    let guard = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(budget_core::stats().total, total);
    assert_eq!(
        budget_core::stats().in_use,
        0,
        "a previous test leaked tokens"
    );
    guard
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

/// Runs `f` on a thread and fails (with `what`) if it does not finish in 60 s: a
/// deadlock fails the test instead of hanging the suite.
///
/// # Examples
///
/// ```
/// assert_eq!(budget_testkit::budget::watchdog("adding", || 1 + 1), 2);
/// ```
pub fn watchdog<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => std::panic::resume_unwind(payload),
        Err(_) => {
            eprintln!(
                "watchdog: {what} did not finish in 60 s; {}",
                budget_core::stats()
            );
            std::process::exit(101);
        }
    }
}
