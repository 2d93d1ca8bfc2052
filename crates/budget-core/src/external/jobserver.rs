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
//! when dropped. They are kept in [`HELD`] and dropped when no region wants them,
//! and all of them at exit (an `atexit` handler), also after a panic in `main`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::sync::plain::Mutex;
use jobserver::{Acquired, Client, HelperThread};

use super::{is_off, ENV_JOBSERVER};
use crate::token::Tokens;

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
        // SAFETY: this runs at load (or at the latest on the budget's first use),
        // before the descriptors make passed could be reused by this program; the
        // crate checks they are pipes, and only duplicates them (`/dev/fd/N`).
        let found = unsafe { Client::from_env_ext(true) };
        let (var, value) = found.var?;
        let value = value.to_string_lossy().into_owned();
        let auth = value
            .split_whitespace()
            .find_map(|w| {
                w.strip_prefix("--jobserver-auth=")
                    .or_else(|| w.strip_prefix("--jobserver-fds="))
            })
            .unwrap_or("")
            .to_owned();
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

/// Prints `message` once per process (the first caller's).
pub(crate) fn warn_once(message: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{message}");
        eprintln!("{message}");
    }
}

/// The jobserver this process joined, for the driver.
pub(crate) struct Source {
    pub(crate) var: String,
    pub(crate) auth: String,
    client: Client,
    /// Tokens asked of the helper thread and not delivered yet.
    pending: std::sync::Arc<AtomicUsize>,
    /// Set once `try_acquire` is unsupported (or failed): no more attempts.
    no_try: AtomicBool,
}

/// The jobserver tokens this process holds, with the pid they belong to: a forked
/// child inherits the parent's list but not its tokens, and forgets them.
struct Held {
    pid: u32,
    tokens: Vec<Acquired>,
}

static HELD: Mutex<Held> = Mutex::new(Held {
    pid: 0,
    tokens: Vec::new(),
});

/// Set at exit, under the `HELD` lock: a token the helper thread delivers after that
/// goes straight back. Read by the helper's callback under the same lock, so a token
/// is either in `HELD` when the exit handler empties it, or written back by the
/// callback itself: never lost (a recipe that lost one made make 4.3 report "INTERNAL:
/// Exiting with 1 jobserver tokens available; should be 2").
static EXITING: AtomicBool = AtomicBool::new(false);

/// The jobserver crate's helper thread, taken and joined by the exit handler: a byte
/// it has read but not delivered yet then reaches the callback (and goes back)
/// before the process ends.
static HELPER: Mutex<Option<HelperThread>> = Mutex::new(None);

fn held_here() -> crate::sync::plain::MutexGuard<'static, Held> {
    let mut held = HELD.lock();
    let pid = std::process::id();
    if held.pid != pid {
        // Not ours (a forked child's copy of the parent's list): never write back.
        for token in held.tokens.drain(..) {
            token.drop_without_releasing();
        }
        held.pid = pid;
    }
    held
}

extern "C" fn give_back_at_exit() {
    // 1. Stop the helper thread: dropping it interrupts a blocked read and waits for
    //    the thread, so any byte it read has been handed to the callback.
    let helper = HELPER.lock().take();
    {
        // Under the lock: the callback sees EXITING or its token is cleared below.
        let _held = HELD.lock();
        EXITING.store(true, Ordering::SeqCst);
    }
    drop(helper);
    // 2. Write back every token still held (each `Acquired`'s drop writes its byte).
    let mut held = HELD.lock();
    if held.pid == std::process::id() {
        if !held.tokens.is_empty() {
            super::note_exit(); // before the bytes leave, as every log line
        }
        held.tokens.clear();
    }
}

/// The jobserver of the environment, if there is one that works; a variable that
/// names one that does not prints one warning.
pub(crate) fn from_env() -> Option<Source> {
    match captured() {
        None => None,
        Some(Err(message)) => {
            warn_once(message);
            None
        }
        Some(Ok(found)) => Some(Source::of(found)),
    }
}

/// The jobserver of the environment as a second source of a node member: under
/// `budget run` the tree's pipe, whose bytes `budget run` backs with node tokens, so
/// a byte taken from it is a token of the node. Silent when there is none or it
/// cannot be used (the node budget is what the process joined); never started (no
/// helper thread: bytes are taken without waiting, [`Source::try_take`]).
pub(crate) fn bridge() -> Option<Source> {
    match captured() {
        Some(Ok(found)) => Some(Source::of(found)),
        _ => None,
    }
}

impl Source {
    fn of(found: &Found) -> Source {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: a plain `extern "C" fn()` that lives for the whole program.
            unsafe { libc::atexit(give_back_at_exit) };
        });
        drop(held_here());
        Source {
            var: found.var.clone(),
            auth: found.auth.clone(),
            client: found.client.clone(),
            pending: std::sync::Arc::new(AtomicUsize::new(0)),
            no_try: AtomicBool::new(false),
        }
    }
}

impl Source {
    /// Starts the helper thread that delivers tokens to `tokens`.
    pub(crate) fn start(&self, tokens: &'static Tokens) {
        let pending = self.pending.clone();
        let helper = self.client.clone().into_helper_thread(move |token| {
            pending.fetch_sub(1, Ordering::SeqCst);
            match token {
                Ok(token) => {
                    let ext = {
                        let mut held = held_here();
                        if EXITING.load(Ordering::SeqCst) {
                            drop(token); // writes the byte back (see `EXITING`)
                            return;
                        }
                        held.tokens.push(token);
                        held.tokens.len()
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
            Ok(helper) => *HELPER.lock() = Some(helper),
            Err(error) => warn_once(&format!(
                "budget: no jobserver helper thread ({error}); regions stay at one token"
            )),
        }
    }

    pub(crate) fn held(&self) -> usize {
        held_here().tokens.len()
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Asks for tokens until `more` are held or on their way.
    pub(crate) fn request(&self, more: usize, _tokens: &Tokens) {
        let helper = HELPER.lock();
        let Some(helper) = helper.as_ref() else {
            return; // not started, or the process is exiting
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
                    let mut held = held_here();
                    if EXITING.load(Ordering::SeqCst) {
                        drop(token); // writes the byte back (see `EXITING`)
                        break;
                    }
                    held.tokens.push(token);
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
            drop(held.tokens.pop());
        }
    }
}
