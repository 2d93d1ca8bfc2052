//! `BUDGET_TOKEN_LOG`: one line per change of the tokens a process holds, for tests
//! and for looking into a tree of processes.

use std::sync::OnceLock;

use super::sys;

/// The environment variable naming a file where each process appends a line
/// `<CLOCK_MONOTONIC ns> <pid> held <tokens held> ext <outside tokens held>` each
/// time what it holds changes (after a token arrived, before one leaves), and
/// `<ns> <pid> exit` at exit before the jobserver tokens still held go back, for tests
/// and for looking into a tree of processes. Unset: nothing is written.
pub const ENV_TOKEN_LOG: &str = "BUDGET_TOKEN_LOG";

/// Appends a line to the `BUDGET_TOKEN_LOG` file, if one is named.
pub(crate) fn note(held: usize, ext: usize) {
    log_line(&format!("held {held} ext {ext}"));
}

/// Appends `exit` to the `BUDGET_TOKEN_LOG` file, if one is named: written at exit
/// before the tokens the process still holds go back (a reader of the log counts
/// nothing for the process after it).
pub(crate) fn note_exit() {
    log_line("exit");
}

/// The `BUDGET_TOKEN_LOG` file, opened on first use ([`super::tokens`] does it when the
/// budget starts, before the supplier thread could be in the middle of it at a fork).
pub(super) fn token_log() -> &'static Option<std::fs::File> {
    static LOG: OnceLock<Option<std::fs::File>> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = std::env::var_os(ENV_TOKEN_LOG)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    })
}

/// Appends `<ns> <pid> <what>` to the `BUDGET_TOKEN_LOG` file, if one is named.
fn log_line(what: &str) {
    if let Some(mut file) = token_log().as_ref() {
        let ns = sys::monotonic_ns();
        let line = format!("{ns} {} {what}\n", std::process::id());
        // One write of one line with O_APPEND: lines of processes never interleave.
        let _ = std::io::Write::write_all(&mut file, line.as_bytes());
    }
}
