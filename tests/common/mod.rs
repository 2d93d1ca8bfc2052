//! Kept for the integration tests that say `mod common;`: the helpers live in the
//! `budget-testkit` crate (a dev-dependency); new tests can use it directly.

#[allow(unused_imports)] // not every test binary uses every helper
pub(crate) use budget_testkit::budget::{exclusive_budget, wait_for, watchdog};

use std::time::Duration;

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
