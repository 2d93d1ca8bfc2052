//! Tests that `fork()` the test process itself: the child runs a check and ends in
//! `_exit` with a code; the parent waits for it under a deadline, so a child that
//! hangs fails the test instead of the suite.

use std::any::Any;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// The child's check passed.
pub const OK: i32 = 0;
/// The child's check returned an error (printed on its stderr).
pub const FAILED: i32 = 1;
/// The child's check panicked (the message printed on its stderr).
pub const PANICKED: i32 = 2;

/// A panic payload's message, for reports.
///
/// # Examples
///
/// ```
/// let payload = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
/// assert_eq!(budget_testkit::forked::message(payload.as_ref()), "boom");
/// ```
pub fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string payload>".to_owned())
}

/// Forks the test process: 0 in the child (which must end in [`exit`] or [`run`]),
/// the child's pid in the parent.
///
/// # Examples
///
/// ```no_run
/// use budget_testkit::forked;
/// let pid = forked::fork();
/// if pid == 0 {
///     forked::run(|| Ok(()));
/// }
/// assert_eq!(forked::wait(pid, std::time::Duration::from_secs(30)), forked::OK);
/// ```
pub fn fork() -> libc::pid_t {
    // SAFETY: the child only uses async-signal-safe calls plus what the test is about
    // (budget, malloc, thread creation: fine on glibc), and ends in _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// In the child: reports `what` on fd 2 (the test harness's capture does not reach
/// it) and exits with `code`, without running the parent's exit handlers.
///
/// # Examples
///
/// ```no_run
/// budget_testkit::forked::exit(budget_testkit::forked::OK, "");
/// ```
pub fn exit(code: i32, what: &str) -> ! {
    if !what.is_empty() {
        let _ = writeln!(std::io::stderr(), "forked child: {what}");
    }
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// In the child: runs `check`, then exits [`OK`], [`FAILED`] (with its message) or
/// [`PANICKED`].
///
/// # Examples
///
/// ```no_run
/// budget_testkit::forked::run(|| Err("what went wrong".to_owned()));
/// ```
pub fn run(check: impl FnOnce() -> Result<(), String>) -> ! {
    match panic::catch_unwind(AssertUnwindSafe(check)) {
        Ok(Ok(())) => exit(OK, ""),
        Ok(Err(why)) => exit(FAILED, &why),
        Err(payload) => exit(PANICKED, &message(payload.as_ref())),
    }
}

/// In the parent: waits for the child `pid`, polling; a child still running after
/// `deadline` is killed and the test fails. Returns the child's exit code.
///
/// # Panics
///
/// If the child hangs, or does not exit normally (a signal).
///
/// # Examples
///
/// ```no_run
/// # let pid = budget_testkit::forked::fork();
/// let code = budget_testkit::forked::wait(pid, std::time::Duration::from_secs(30));
/// ```
pub fn wait(pid: libc::pid_t, deadline: Duration) -> i32 {
    let until = Instant::now() + deadline;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            break;
        }
        if rc == -1 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("waitpid({pid}): {error}");
        }
        if Instant::now() > until {
            // SAFETY: plain syscalls on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the forked child hung for {deadline:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status),
        "the forked child did not exit normally (wait status {status:#x}, signal {})",
        libc::WTERMSIG(status)
    );
    libc::WEXITSTATUS(status)
}
