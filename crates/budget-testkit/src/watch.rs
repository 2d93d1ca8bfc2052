//! Watchdogs: a hang ends the test process with what it was doing, instead of
//! hanging the suite. One mechanism, [`exit_unless_done`], behind the three shapes
//! the tests use:
//!
//! - [`exit_unless_done`]: exits with a code after a limit unless the returned
//!   [`Done`] is set first, printing a report (a stress or torture run's progress);
//! - [`exit_after`]: the same, never called off (a child process, a test binary);
//! - [`watchdog`]: runs a closure on a thread of its own and exits if it does not
//!   return in 60 s (code that could deadlock the caller).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls the watchdog off when set or dropped (see [`exit_unless_done`]).
#[derive(Debug)]
#[must_use = "dropping it calls the watchdog off at once"]
pub struct Done(Arc<AtomicBool>);

impl Done {
    /// Calls the watchdog off.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.set();
    }
}

/// Exits this process with `code` if it still runs `limit` from now and the returned
/// [`Done`] was not set (or dropped) meanwhile, after printing `what` and `report()`
/// straight to the standard error (libtest's capture would swallow it on exit).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let done = budget_testkit::watch::exit_unless_done(
///     "an example", Duration::from_secs(600), 1, || "no progress to report".to_owned());
/// // ... work that could hang ...
/// done.set();
/// ```
pub fn exit_unless_done(
    what: impl Into<String>,
    limit: Duration,
    code: i32,
    report: impl Fn() -> String + Send + 'static,
) -> Done {
    let what = what.into();
    let done = Arc::new(AtomicBool::new(false));
    let seen = done.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while !seen.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: {what} still running after {limit:?}\n{}\n{}",
                    report(),
                    budget_core::stats()
                );
                std::process::exit(code);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Done(done)
}

/// Exits this process with status 1 (after printing `what` and the budget's state)
/// if it still runs `secs` seconds from now: for a child process or a whole test
/// binary, so that a hang fails at once rather than at the parent's timeout.
///
/// # Examples
///
/// ```
/// budget_testkit::watch::exit_after("an example that never hangs", 600);
/// ```
pub fn exit_after(what: &str, secs: u64) {
    std::mem::forget(exit_unless_done(
        what,
        Duration::from_secs(secs),
        1,
        String::new,
    ));
}

/// Runs `f` on a thread and exits the process (status 101, as a failed test) with
/// `what` if it does not finish in 60 s: a deadlock fails the test instead of
/// hanging the suite. A panic in `f` is resumed here.
///
/// # Examples
///
/// ```
/// assert_eq!(budget_testkit::watch::watchdog("adding", || 1 + 1), 2);
/// ```
pub fn watchdog<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let _done = exit_unless_done(
        format!("{what} (not finished)"),
        Duration::from_secs(60),
        101,
        String::new,
    );
    let worker = std::thread::spawn(f);
    match worker.join() {
        Ok(value) => value,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}
