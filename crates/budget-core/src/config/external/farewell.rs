//! Jobserver tokens given back when a process ends without running `atexit`.
//!
//! make's jobserver has no way back for a byte read by a process that dies holding
//! it: make then runs fewer jobs for the rest of the build, and says `INTERNAL:
//! Exiting with 1 jobserver tokens available; should be 3!` at its end. `exit` (and
//! a panic that ends `main`) gives them back through the `atexit` handler in
//! `jobserver.rs`; this module covers the other ends:
//!
//! - **Catchable fatal signals** (`SIGTERM` from `Pool.terminate()`, `SIGHUP`,
//!   `SIGINT` where nobody handles it, ...): a handler, installed when the process
//!   joins a jobserver and only for signals whose action is still the default, writes
//!   the bytes back, restores the default action and raises the signal again, so
//!   the process ends as it would have. A program that installs its own handler
//!   later replaces ours (and ends through `exit`, or not, as it chooses).
//! - **`_exit` and `exec`** ([`release_outside_tokens`](super::jobserver::release_outside_tokens)): a forked worker of
//!   Python's `multiprocessing` ends with `os._exit`, and the budget module calls
//!   this first (it wraps `os._exit`, `os.execv` and `os.execve`); a Rust program
//!   that calls `libc::_exit` or `exec` calls it itself.
//!
//! `SIGKILL` stays the protocol's limit: nothing runs.
//!
//! The handler cannot take the lock around the held tokens (the thread it
//! interrupted may hold it), so the tokens are also counted in an atomic, as
//! *claims*: raised after a token joined the list ([`added`]); a token leaving the
//! list writes its byte back only if it claims one first ([`claim`], a decrement
//! that fails at 0), else it is dropped without writing. The handler claims them all
//! at once (`swap(0)`) and writes that many. So each byte goes back exactly once,
//! whether the handler or the thread it raced wrote it: a race can lose a token at
//! most (one added to the list but not yet counted when the signal came), never
//! give back one too many (an extra byte would let make run more jobs than `-j`).

#[cfg(unix)]
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

/// Claims on the tokens the process with pid [`PID`] holds (see the module docs).
#[cfg(unix)]
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The process [`COUNT`] belongs to: a forked child inherits the count of its
/// parent's tokens, not the tokens.
#[cfg(unix)]
static PID: AtomicU32 = AtomicU32::new(0);
/// Where bytes go back: the write end of make's pipe, or a descriptor of our own
/// on the fifo; -1 when there is none.
#[cfg(unix)]
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

/// Starts this process's count at 0 (its first use of the jobserver; in a forked
/// child, the parent's count is not its own). The count first, then the pid: a
/// signal in between finds the parent's pid and writes nothing.
pub(crate) fn reset() {
    #[cfg(unix)]
    {
        COUNT.store(0, Ordering::SeqCst);
        PID.store(std::process::id(), Ordering::SeqCst);
    }
}

/// A token joined the held list (called after the push).
pub(crate) fn added() {
    #[cfg(unix)]
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Claims the right to write one token's byte back: false when a signal handler
/// already wrote it (the token must then be dropped without writing).
pub(crate) fn claim() -> bool {
    #[cfg(unix)]
    {
        COUNT
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
    #[cfg(not(unix))]
    true
}

/// Installs the handlers (once per process, for signals whose action is the
/// default) and finds where bytes go back for the jobserver `auth` names.
pub(crate) fn arm(auth: &str) {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let Some(fd) = write_end(auth) else {
                return;
            };
            WRITE_FD.store(fd, Ordering::Relaxed);
            for signal in FATAL {
                install_if_default(signal);
            }
        });
    }
    #[cfg(not(unix))]
    let _ = auth;
}

/// The signals whose default action ends the process and that a program may catch
/// (`SIGUSR1` is left out: the jobserver crate's helper thread uses it).
#[cfg(unix)]
const FATAL: [libc::c_int; 12] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGPIPE,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGABRT,
];

/// The descriptor bytes are written back to: make's write end (`R,W`), or a
/// non-blocking write-only open of the fifo of our own (`fifo:PATH`).
#[cfg(unix)]
fn write_end(auth: &str) -> Option<libc::c_int> {
    if let Some(path) = auth.strip_prefix("fifo:") {
        let path = std::ffi::CString::new(path).ok()?;
        // SAFETY: a valid C string; open has no other precondition.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        return (fd >= 0).then_some(fd);
    }
    let (_, w) = auth.split_once(',')?;
    w.parse().ok()
}

#[cfg(unix)]
fn install_if_default(signal: libc::c_int) {
    // SAFETY: sigaction is plain data; all-zeroes is a valid empty action.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `old`.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } != 0
        || old.sa_sigaction != libc::SIG_DFL
    {
        return; // the program (or Python, or the runtime) handles it: leave it be
    }
    // SAFETY: as above.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_fatal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` names an `extern "C" fn(c_int)` that lives for the whole
    // program and does only async-signal-safe work; its mask is empty.
    unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
}

/// The handler: bytes back, then the default action (the process ends as it would
/// have without us). Async-signal-safe: atomics, `getpid`, `write`, `signal`,
/// `raise`.
#[cfg(unix)]
extern "C" fn on_fatal(signal: libc::c_int) {
    // Called although the action is no longer ours: a handler the program installed
    // later chains to the one it found (signal-hook does). The program handles the
    // signal then, and may not mean to end: write nothing, raise nothing.
    // SAFETY: sigaction is plain data; all-zeroes is a valid empty action.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    let ours = on_fatal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: a null new action only reads the current one; async-signal-safe.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0
        || current.sa_sigaction != ours
    {
        return;
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u32;
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 && PID.load(Ordering::SeqCst) == me {
        // A reader that is gone (make ended) would raise SIGPIPE in here and end
        // the process by that signal instead of this one: ignore it (the process is
        // ending anyway).
        // SAFETY: signal is async-signal-safe.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let mut n = COUNT.swap(0, Ordering::SeqCst);
        let bytes = [b'+'; 64];
        while n > 0 {
            let chunk = n.min(bytes.len());
            // SAFETY: `bytes` is valid for `chunk` bytes; write is async-signal-safe.
            let wrote = unsafe { libc::write(fd, bytes.as_ptr().cast(), chunk) };
            if wrote <= 0 {
                break;
            }
            n -= wrote as usize;
        }
    }
    // SAFETY: both are async-signal-safe; the signal is blocked while this handler
    // runs, so it is delivered (with the default action) once the handler returns.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}
