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

/// How a watched child ended ([`watch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// It was still running at the deadline: its stacks were printed ([`stacks`]) and
    /// it was killed.
    Hung,
}

/// In the parent: waits for the child `pid`, polling (50 µs doubling to 2 ms); a
/// child still running after `deadline` has its stacks printed and is killed.
///
/// # Panics
///
/// If `waitpid` fails for another reason than an interruption.
///
/// # Examples
///
/// ```no_run
/// # let pid = budget_testkit::forked::fork();
/// use budget_testkit::forked::{watch, Outcome};
/// assert_eq!(watch(pid, std::time::Duration::from_secs(30)), Outcome::Exited(0));
/// ```
pub fn watch(pid: libc::pid_t, deadline: Duration) -> Outcome {
    let until = Instant::now() + deadline;
    let mut status = 0;
    let mut pause = Duration::from_micros(50);
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
            stacks(pid);
            // SAFETY: plain syscalls on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Outcome::Hung;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
    if libc::WIFEXITED(status) {
        Outcome::Exited(libc::WEXITSTATUS(status))
    } else {
        Outcome::Signalled(libc::WTERMSIG(status))
    }
}

/// In the parent: waits for the child `pid` as [`watch`] does; a child that hangs or
/// does not exit normally fails the test. Returns the child's exit code.
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
    match watch(pid, deadline) {
        Outcome::Exited(code) => code,
        Outcome::Signalled(signal) => {
            panic!("the forked child did not exit normally (signal {signal})")
        }
        Outcome::Hung => panic!("the forked child hung for {deadline:?} and was killed"),
    }
}

/// Prints every thread's stack of the (hung) process `pid`: gdb's, else eu-stack's,
/// and the kernel's view in any case (state, wait channel, syscall, kernel stack of
/// each task under `/proc`).
///
/// # Examples
///
/// ```no_run
/// budget_testkit::forked::stacks(12345);
/// ```
pub fn stacks(pid: libc::pid_t) {
    use std::process::Command;
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool} >/dev/null")])
            .status()
            .is_ok_and(|s| s.success())
    };
    let pid_s = pid.to_string();
    println!("==== process {pid}: stacks ====");
    let out = if have("gdb") {
        Command::new("timeout")
            .args(["60", "gdb", "-nx", "-batch", "-p", &pid_s])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
            .output()
    } else if have("eu-stack") {
        Command::new("timeout")
            .args(["60", "eu-stack", "-p", &pid_s])
            .output()
    } else {
        Command::new("true").output()
    };
    if let Ok(out) = out {
        println!("{}", String::from_utf8_lossy(&out.stdout));
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.trim().is_empty() {
            println!("(stderr) {err}");
        }
    }
    let tasks = std::path::Path::new("/proc").join(&pid_s).join("task");
    if let Ok(dir) = std::fs::read_dir(&tasks) {
        for entry in dir.flatten() {
            let task = entry.path();
            let read = |name: &str| {
                std::fs::read_to_string(task.join(name)).unwrap_or_else(|e| format!("<{e}>"))
            };
            println!(
                "-- task {}: stat {} | wchan {} | syscall {}\n{}",
                entry.file_name().to_string_lossy(),
                read("stat").trim(),
                read("wchan").trim(),
                read("syscall").trim(),
                read("stack").trim_end()
            );
        }
    }
    println!("==== end of process {pid} ====");
}
