//! Shared by the integration tests that need a budget of an exact size.

use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// Every test in one test binary shares one budget, and tests run on parallel
/// threads: the ones that assert exact widths take this lock to run alone.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Builds this process's budget with `total` cores (first call) and returns a guard
/// under which no other test of the binary runs. Checks no tokens leaked before.
#[allow(dead_code)] // not every test binary uses every helper
pub(crate) fn exclusive_budget(total: usize) -> MutexGuard<'static, ()> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        budget::Builder::new()
            .num_threads(total)
            .build_global()
            .expect("this test binary builds the budget before any other use")
    });
    let guard = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(budget::stats().total, total);
    assert_eq!(budget::stats().in_use, 0, "a previous test leaked tokens");
    guard
}

/// Polls `condition` until it holds, failing the test after 30 s instead of hanging.
#[allow(dead_code)]
pub(crate) fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` on a thread and fails (with `what`) if it does not finish in 60 s: a
/// deadlock fails the test instead of hanging the suite.
#[allow(dead_code)]
pub(crate) fn watchdog<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
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
                budget::stats()
            );
            std::process::exit(101);
        }
    }
}

/// The variable that tells a re-run test binary which child case to run.
#[allow(dead_code)]
pub(crate) const CHILD_MODE: &str = "BUDGET_TEST_CHILD";

/// The child case this process was started for by [`run_child`], if any.
#[allow(dead_code)]
pub(crate) fn child_mode() -> Option<String> {
    std::env::var(CHILD_MODE).ok()
}

/// Re-runs the test `test` of this binary as a child process with
/// `BUDGET_TEST_CHILD=mode` and `env`, and returns its stdout. Fails the test if the
/// child failed (a panic, an abort, or its watchdog's exit) or did not run `test`.
#[allow(dead_code)]
pub(crate) fn run_child(test: &str, mode: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut command = std::process::Command::new(exe);
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_MODE, mode)
        .env_remove("BUDGET_NUM_THREADS");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not start {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child {mode:?} failed: {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        output.status
    );
    stdout
}

/// In a child process: exits it with status 1 (after printing `what` and the budget's
/// state) if it is still running after `secs` seconds, so a hang fails the parent.
#[allow(dead_code)]
pub(crate) fn child_watchdog(what: &'static str, secs: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!(
            "watchdog: {what} still running after {secs} s; {}",
            budget::stats()
        );
        std::process::exit(1);
    });
}
