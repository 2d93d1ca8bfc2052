//! GNU make's jobserver, joined through the `jobserver` crate.
//!
//! The variables (`CARGO_MAKEFLAGS`, `MAKEFLAGS`, `MFLAGS`) are read when the
//! program is loaded, from an `.init_array` constructor, before `main` or any other
//! code can open a file and be handed a descriptor number that make passed down
//! but that was closed on the way (a recipe not marked `+`): a reused number would
//! make us read and write a stranger's file. The crate also checks that both
//! descriptors are pipes (or the fifo of make 4.4).
//!
//! Tokens are read in blocking mode by the crate's helper thread
//! (`into_helper_thread`); each arrives as an `Acquired` that writes its byte back
//! when dropped. They are kept in this process's [`PerProcess`] state and dropped
//! when no region wants them, and all of them at exit (an `atexit` handler), also
//! after a panic in `main`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::sync::plain::Mutex;
use jobserver::{Acquired, Client, HelperThread};

use super::{is_off, warn_once, ENV_JOBSERVER};
use crate::tokens::token::Tokens;

/// A jobserver found in the environment at load.
struct Found {
    var: String,
    auth: String,
    client: Client,
}

/// What the load-time look found: `None` when there is no jobserver (or it is
/// switched off), `Some(Err)` when a variable names one that cannot be used.
static CAPTURED: OnceLock<Option<Result<Found, String>>> = OnceLock::new();

// Runs `captured` when the program (or the shared object holding this crate) is
// loaded, before `main`: see the module docs for why.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static CAPTURE_AT_LOAD: extern "C" fn() = capture_at_load;

#[cfg(target_os = "linux")]
extern "C" fn capture_at_load() {
    let _ = captured();
}

fn captured() -> &'static Option<Result<Found, String>> {
    CAPTURED.get_or_init(|| {
        if std::env::var(ENV_JOBSERVER).is_ok_and(|v| is_off(&v) && !v.trim().is_empty()) {
            return None;
        }
        // Before the crate touches (or takes ownership of) any descriptor: is this
        // provably make's jobserver, inherited by this process, and not a file or
        // pipe of the program's own that reuses the numbers make passed?
        let named = ["CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"]
            .iter()
            .find_map(|&var| std::env::var_os(var).map(|value| (var, value)));
        if let Some((var, value)) = &named {
            if let Some(auth) = value.to_str().and_then(auth_in) {
                if let Err(why) = check_inherited(auth) {
                    return Some(Err(format!(
                        "budget: ignoring the jobserver in {var} ({auth}): {why}; using this \
                         process's own budget. Under make 4.3 only recipes marked `+` (or \
                         running $(MAKE)) get the jobserver; set {ENV_JOBSERVER}=0 to silence \
                         this."
                    )));
                }
            }
        }
        // SAFETY: this runs at load (or at the latest on the budget's first use),
        // before the descriptors make passed could be reused by this program, and
        // `check_inherited` found them inherited across `exec` and of one pipe (or a
        // fifo); the crate only duplicates them (`/dev/fd/N`).
        let found = unsafe { Client::from_env_ext(true) };
        let (var, value) = found.var?;
        let value = value.to_string_lossy().into_owned();
        let auth = auth_in(&value).unwrap_or("").to_owned();
        match found.client {
            Ok(client) => Some(Ok(Found {
                var: var.to_owned(),
                auth,
                client,
            })),
            Err(error) => match error.kind() {
                jobserver::FromEnvErrorKind::NoEnvVar
                | jobserver::FromEnvErrorKind::NoJobserver => None,
                _ => Some(Err(format!(
                    "budget: ignoring the jobserver in {var} ({auth}): {error}; using this \
                     process's own budget. Under make 4.3 only recipes marked `+` (or running \
                     $(MAKE)) get the jobserver; set {ENV_JOBSERVER}=0 to silence this."
                ))),
            },
        }
    })
}

/// The jobserver named in a make flags variable, as make and the `jobserver` crate
/// read it: the last `--jobserver-auth=`, else the last `--jobserver-fds=`.
fn auth_in(value: &str) -> Option<&str> {
    ["--jobserver-auth=", "--jobserver-fds="]
        .iter()
        .find_map(|arg| value.rsplit_once(arg).map(|(_, s)| s))
        .and_then(|s| s.split(' ').next())
}

/// Whether the jobserver `auth` names is make's, before anything reads or writes it:
/// a `fifo:PATH` must be a fifo; descriptors `R,W` must be open, inherited across
/// `exec` (make clears close-on-exec; what Python and Rust open themselves has it
/// set), the read and write ends of one and the same pipe. A program's own
/// descriptors that reuse the numbers of a recipe not marked `+` (make 4.3 closes
/// them) fail one of these, so they are never read or written.
#[cfg(unix)]
fn check_inherited(auth: &str) -> Result<(), String> {
    if let Some(path) = auth.strip_prefix("fifo:") {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
        return if meta.file_type().is_fifo() {
            Ok(())
        } else {
            Err(format!("{path} is not a fifo"))
        };
    }
    let Some((r, w)) = auth.split_once(',') else {
        return Ok(()); // not a form this check knows: the crate decides
    };
    let (Ok(r), Ok(w)) = (r.parse::<i32>(), w.parse::<i32>()) else {
        return Ok(());
    };
    let mut ends = Vec::with_capacity(2);
    for (fd, end) in [(r, "read"), (w, "write")] {
        // SAFETY: F_GETFD, F_GETFL and fstat only read a descriptor's state; an
        // invalid number fails with EBADF.
        let (fd_flags, fl_flags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFD),
                libc::fcntl(fd, libc::F_GETFL),
            )
        };
        if fd_flags == -1 || fl_flags == -1 {
            return Err(format!("descriptor {fd} is not open"));
        }
        if fd_flags & libc::FD_CLOEXEC != 0 {
            return Err(format!(
                "descriptor {fd} was opened by this program (close-on-exec), not inherited \
                 from make"
            ));
        }
        let mode = fl_flags & libc::O_ACCMODE;
        let usable = match end {
            "read" => mode == libc::O_RDONLY || mode == libc::O_RDWR,
            _ => mode == libc::O_WRONLY || mode == libc::O_RDWR,
        };
        if !usable {
            return Err(format!("descriptor {fd} is not open for {end}ing"));
        }
        // SAFETY: `stat` is plain data, written by fstat on an open descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } == -1 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return Err(format!("descriptor {fd} is not a pipe"));
        }
        ends.push((st.st_dev, st.st_ino));
    }
    if ends[0] != ends[1] {
        return Err(format!(
            "descriptors {r} and {w} are not the two ends of one pipe"
        ));
    }
    Ok(())
}

/// Elsewhere (Windows: a semaphore's name) the crate's own checks decide.
#[cfg(not(unix))]
fn check_inherited(_auth: &str) -> Result<(), String> {
    Ok(())
}

/// Whether this process is the first of its tree to give `message`: make 4.3 hands
/// every recipe not marked `+` a jobserver it cannot use, and a build of hundreds of
/// recipes printed the same warning hundreds of times. The tree is the process group
/// (make and its recipes share one); a mark file in the node directory, made with
/// `O_EXCL`, says the warning was given (and is given again once the mark is an hour
/// old: a later build whose group reused the number). Where no mark can be made, every
/// process warns.
fn first_in_tree(message: &str) -> bool {
    #[cfg(unix)]
    {
        use std::hash::{Hash, Hasher};
        // SAFETY: getpgrp has no preconditions and cannot fail.
        let group = unsafe { libc::getpgrp() };
        let Ok(dir) = super::node::directory() else {
            return true;
        };
        // DefaultHasher::new() has fixed keys: the same name in every process.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        message.hash(&mut hasher);
        let mark = dir.join(format!(".warned-{group}-{:016x}", hasher.finish()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&mark)
        {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let old = std::fs::metadata(&mark)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age > std::time::Duration::from_secs(3600));
                if old {
                    let _ = std::fs::remove_file(&mark);
                    let _ = std::fs::File::create(&mark);
                }
                old
            }
            Err(_) => true,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = message;
        true
    }
}

/// The jobserver this process joined, for the driver.
pub(crate) struct Member {
    pub(crate) var: String,
    pub(crate) auth: String,
    client: Client,
    /// Tokens asked of the helper thread and not delivered yet.
    pending: std::sync::Arc<AtomicUsize>,
    /// Set once `try_acquire` is unsupported (or failed): no more attempts.
    no_try: AtomicBool,
}

/// The jobserver state of one process: the tokens it holds, its helper thread, and
/// whether it is giving its tokens back for good.
///
/// Per process, behind a pointer, not in `static` mutexes: a forked child gets a
/// copy of every lock in the state it had at the fork, and a thread of the parent
/// that held one then (a region taking a token at entry, the supplier asking for
/// one: several times per region under make) does not exist in the child, so that
/// copy stays locked for good. The child's first region (`Member::of`), its
/// `release_outside_tokens` before `_exit` and its `exit` (`give_back_all`) then
/// waited forever: 3 of the first 34 children of `examples/fork_hunt.rs` under
/// `make -j2`. A child never locks its parent's state: [`here`] sees the fork generation differ
/// and installs one of its own.
struct PerProcess {
    /// The tokens this process holds; each writes its byte back when dropped.
    held: Mutex<Vec<Acquired>>,
    /// Set by `give_back_all`, under the `held` lock: a token the helper thread
    /// delivers after that goes straight back. Read by the helper's callback under
    /// the same lock, so a token is either in `held` when `give_back_all` empties it,
    /// or written back by the callback itself: never lost (a recipe that lost one made
    /// make 4.3 report "INTERNAL: Exiting with 1 jobserver tokens available; should
    /// be 2").
    exiting: AtomicBool,
    /// The jobserver crate's helper thread; taken and joined by `give_back_all`: a
    /// byte it has read but not delivered yet then reaches the callback (and goes
    /// back) before the process ends.
    helper: Mutex<Option<HelperThread>>,
}

/// This process's jobserver state, per fork generation (an atomic load, where a pid
/// costs a `getpid` call on every look, and a reused pid could match).
static STATE: crate::pool::per_fork::PerFork<PerProcess> = crate::pool::per_fork::PerFork::new();

/// This process's jobserver state, made on its first use in each process.
///
/// In a forked child the first call replaces the parent's state without touching it
/// (its locks may be held by threads that are not in the child) and leaks it: the
/// tokens in it are the parent's, never written back here, and its helper handle
/// names a thread the child does not have (dropping one signalled the missing thread
/// for about a second, 100 × 10 ms).
fn here() -> &'static PerProcess {
    STATE.get_or_install(
        || PerProcess {
            held: Mutex::new(Vec::new()),
            exiting: AtomicBool::new(false),
            helper: Mutex::new(None),
        },
        // The inherited count is the parent's (see `farewell`).
        super::farewell::reset,
    )
}

fn held_here() -> crate::sync::plain::MutexGuard<'static, Vec<Acquired>> {
    here().held.lock()
}

extern "C" fn give_back_at_exit() {
    give_back_all();
}

/// Gives back every jobserver token this process holds, now: for a process about
/// to end with `_exit` or to replace itself with `exec`, where no `atexit` handler
/// runs. Afterwards the process takes no more jobserver tokens (its regions run on
/// the tokens it holds anyway). Does nothing in a process that joined no jobserver
/// (node budget tokens are locks, which the kernel drops at `_exit` and at `exec`).
///
/// # Examples
///
/// ```no_run
/// # use budget_core as budget;
/// // A Rust program about to `exec` another one:
/// budget::release_outside_tokens();
/// let error = std::os::unix::process::CommandExt::exec(&mut std::process::Command::new("make"));
/// # let _ = error;
/// ```
pub fn release_outside_tokens() {
    give_back_all();
}

/// Stops taking tokens and writes back every one this process holds: at exit, and
/// before an `_exit` or `exec` ([`release_outside_tokens`]).
pub(crate) fn give_back_all() {
    let state = here();
    // 1. Stop the helper thread: dropping it interrupts a blocked read and waits for
    //    the thread, so any byte it read has been handed to the callback.
    let helper = state.helper.lock().take();
    {
        // Under the lock: the callback sees `exiting` or its token is cleared below.
        let _held = state.held.lock();
        state.exiting.store(true, Ordering::SeqCst);
    }
    drop(helper);
    // 2. Write back every token still held (each `Acquired`'s drop writes its byte).
    let mut held = state.held.lock();
    if !held.is_empty() {
        super::note_exit(); // before the bytes leave, as every log line
    }
    for token in held.drain(..) {
        write_back(token);
    }
}

/// Writes a token's byte back, unless a signal handler already did (`farewell`).
fn write_back(token: Acquired) {
    if super::farewell::claim() {
        drop(token);
    } else {
        token.drop_without_releasing();
    }
}

/// The jobserver of the environment, if there is one that works; a variable that
/// names one that does not prints one warning.
pub(crate) fn from_env() -> Option<Member> {
    match captured() {
        None => None,
        Some(Err(message)) => {
            if first_in_tree(message) {
                warn_once(message);
            }
            None
        }
        Some(Ok(found)) => Some(Member::of(found)),
    }
}

/// The jobserver of the environment as a second source of a node member: under
/// `budget run` the tree's pipe, whose bytes `budget run` backs with node tokens, so
/// a byte taken from it is a token of the node. Silent when there is none or it
/// cannot be used (the node budget is what the process joined); never started (no
/// helper thread: bytes are taken without waiting, [`Member::try_take`]).
pub(crate) fn bridge() -> Option<Member> {
    match captured() {
        Some(Ok(found)) => Some(Member::of(found)),
        _ => None,
    }
}

impl Member {
    fn of(found: &Found) -> Member {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: a plain `extern "C" fn()` that lives for the whole program.
            unsafe { libc::atexit(give_back_at_exit) };
        });
        super::farewell::arm(&found.auth);
        // A forked child's first use: its own state, not the parent's (see `here`).
        here();
        Member {
            var: found.var.clone(),
            auth: found.auth.clone(),
            client: found.client.clone(),
            pending: std::sync::Arc::new(AtomicUsize::new(0)),
            no_try: AtomicBool::new(false),
        }
    }
}

impl Member {
    /// Starts the helper thread that delivers tokens to `tokens`.
    pub(crate) fn start(&self, tokens: &'static Tokens) {
        let pending = self.pending.clone();
        let helper = self.client.clone().into_helper_thread(move |token| {
            pending.fetch_sub(1, Ordering::SeqCst);
            match token {
                Ok(token) => {
                    let ext = {
                        let state = here();
                        let mut held = state.held.lock();
                        if state.exiting.load(Ordering::SeqCst) {
                            drop(token); // writes the byte back (see `exiting`)
                            return;
                        }
                        held.push(token);
                        super::farewell::added();
                        held.len()
                    };
                    tokens.deposit(1);
                    super::note(tokens.held(), ext);
                }
                Err(error) => warn_once(&format!(
                    "budget: reading a jobserver token failed: {error}; regions stay at the \
                     tokens they hold"
                )),
            }
        });
        match helper {
            Ok(helper) => {
                let old = here().helper.lock().replace(helper);
                drop(old);
            }
            Err(error) => warn_once(&format!(
                "budget: no jobserver helper thread ({error}); regions stay at one token"
            )),
        }
    }

    pub(crate) fn held(&self) -> usize {
        held_here().len()
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Asks for tokens until `more` are held or on their way.
    pub(crate) fn request(&self, more: usize, _tokens: &Tokens) {
        let helper = here().helper.lock();
        let Some(helper) = helper.as_ref() else {
            return; // not started (in this process), or the process is exiting
        };
        let pending = self.pending.load(Ordering::SeqCst);
        for _ in pending..more {
            self.pending.fetch_add(1, Ordering::SeqCst);
            helper.request_token();
        }
    }

    /// Takes up to `n` tokens that are in the jobserver now, without waiting (the
    /// `jobserver` crate's `try_acquire`: a non-blocking read on a descriptor of its
    /// own, so make's descriptors stay as they are); returns how many it took. Where
    /// the crate cannot read without blocking (it says `Unsupported`), it takes none
    /// and never tries again: the helper thread still brings tokens to growers.
    pub(crate) fn try_take(&self, n: usize) -> usize {
        if self.no_try.load(Ordering::Relaxed) {
            return 0;
        }
        let mut got = 0;
        while got < n {
            match self.client.try_acquire() {
                Ok(Some(token)) => {
                    let state = here();
                    let mut held = state.held.lock();
                    if state.exiting.load(Ordering::SeqCst) {
                        drop(token); // writes the byte back (see `exiting`)
                        break;
                    }
                    held.push(token);
                    super::farewell::added();
                    got += 1;
                }
                Ok(None) => break,
                Err(error) => {
                    if error.kind() == std::io::ErrorKind::Unsupported {
                        self.no_try.store(true, Ordering::Relaxed);
                    } else {
                        warn_once(&format!(
                            "budget: taking a jobserver token failed: {error}; regions take \
                             tokens only as the helper thread brings them"
                        ));
                        self.no_try.store(true, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        got
    }

    /// Writes `n` held tokens back to the jobserver.
    pub(crate) fn give_back(&self, n: usize) {
        let mut held = held_here();
        for _ in 0..n {
            if let Some(token) = held.pop() {
                write_back(token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::auth_in;

    #[test]
    fn the_last_auth_wins_as_make_says() {
        assert_eq!(auth_in("-j2 --jobserver-auth=3,4"), Some("3,4"));
        assert_eq!(
            auth_in("--jobserver-auth=3,4 -j --jobserver-auth=fifo:/tmp/f"),
            Some("fifo:/tmp/f")
        );
        assert_eq!(auth_in("-j --jobserver-fds=5,6"), Some("5,6"));
        assert_eq!(auth_in("-j2"), None);
    }

    #[cfg(unix)]
    #[test]
    #[cfg_attr(miri, ignore = "pipes and fcntl: foreign calls")]
    fn only_an_inherited_pipe_or_a_fifo_passes() {
        use super::check_inherited;
        let dir = std::env::temp_dir().join(format!("budget-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("regular");
        std::fs::write(&file, "abcdefghij").unwrap();
        let err = check_inherited(&format!("fifo:{}", file.display())).unwrap_err();
        assert!(err.contains("not a fifo"), "{err}");
        assert!(check_inherited("fifo:/dev/null")
            .unwrap_err()
            .contains("not a fifo"));
        // A pipe of this program's own (std sets close-on-exec).
        let (r, w) = std::io::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let own = format!("{},{}", r.as_raw_fd(), w.as_raw_fd());
        assert!(check_inherited(&own).unwrap_err().contains("close-on-exec"));
        // Inheritable, but the ends of two different pipes.
        let (r2, w2) = std::io::pipe().unwrap();
        for fd in [r.as_raw_fd(), w2.as_raw_fd(), w.as_raw_fd(), r2.as_raw_fd()] {
            // SAFETY: clears FD_CLOEXEC on descriptors this test owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        let crossed = format!("{},{}", r.as_raw_fd(), w2.as_raw_fd());
        assert!(check_inherited(&crossed)
            .unwrap_err()
            .contains("not the two ends"));
        let swapped = format!("{},{}", w.as_raw_fd(), r.as_raw_fd());
        assert!(check_inherited(&swapped)
            .unwrap_err()
            .contains("not open for reading"));
        // One inherited pipe, read end first: make's.
        assert_eq!(
            check_inherited(&format!("{},{}", r.as_raw_fd(), w.as_raw_fd())),
            Ok(())
        );
        assert!(check_inherited("987,988").unwrap_err().contains("not open"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
