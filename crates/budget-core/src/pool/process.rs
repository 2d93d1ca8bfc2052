//! The process's one budget: the registry installed on first use (or by the
//! [`Builder`](crate::Builder)), found again by every region, and what this copy of
//! budget-core exports to another copy in the same process (`external/handshake.rs`).

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::config::external::handshake::Published;
use crate::config::external::Joined;
use crate::pool::fork::{self, InstallGuard};
use crate::pool::registry::Registry;

/// Why [`install`] with a total failed: a registry of this process runs already,
/// with this total.
#[derive(Debug)]
pub(crate) struct AlreadyRunning(pub(crate) usize);

/// The installed registry, or null before first use.
static GLOBAL: AtomicPtr<Registry> = AtomicPtr::new(ptr::null_mut());

/// The registry of this process, made on first use with the configured total.
#[inline]
pub(crate) fn global() -> &'static Registry {
    // Acquire pairs with the AcqRel compare-and-swap in `install`: the registry's
    // fields are initialised before its pointer is seen.
    let ptr = GLOBAL.load(Ordering::Acquire);
    if !ptr.is_null() {
        // SAFETY: a pointer in GLOBAL came from Box::into_raw and is never freed.
        let registry = unsafe { &*ptr };
        if registry.is_current() {
            return registry;
        }
    }
    install(None).unwrap_or_else(|_| unreachable!("install(None) does not fail"))
}

/// Whether a registry was ever installed in this process (or the parent it was
/// forked from).
pub(crate) fn started() -> bool {
    !GLOBAL.load(Ordering::Acquire).is_null()
}

/// Whether this process's own budget is running (a registry of this fork generation
/// was installed); in a forked child, the parent's does not count.
pub(crate) fn running() -> bool {
    let ptr = GLOBAL.load(Ordering::Acquire);
    // SAFETY: a pointer in GLOBAL came from Box::into_raw and is never freed.
    !ptr.is_null() && unsafe { &*ptr }.is_current()
}

/// Installs a registry of `total` tokens (the configured total when `None`).
/// With `Some`, fails if a registry of this process is already running.
pub(crate) fn install(total: Option<usize>) -> Result<&'static Registry, AlreadyRunning> {
    fork::register_fork_handler();
    // No fork while a registry is being made: `fork` waits for it (the prepare
    // handler), so a child never inherits a `Once`, `OnceLock` or lock of the making
    // half done (it waited for ever on one: the fork hunt, `examples/fork_hunt.rs`).
    let _making = InstallGuard::lock();
    let generation = fork::generation();
    let mut current = GLOBAL.load(Ordering::Acquire);
    if let Some(running) = live(current, generation) {
        return match total {
            Some(_) => Err(AlreadyRunning(running.tokens.total())),
            None => Ok(running),
        };
    }
    let strict = total.is_some();
    // Lazily made process-wide state, made now, before any thread of the budget could
    // be in the middle of making it when the process forks (a `OnceLock` being
    // initialized is copied stuck into the child).
    crate::regions::clock::prime();
    // In a forked child the parent's registry is stale but its total is what the
    // parent configured (Builder or environment): the child keeps it.
    let inherited = (!current.is_null()).then(|| {
        // SAFETY: pointers in GLOBAL come from Box::into_raw and are never freed.
        unsafe { &*current }.tokens.total()
    });
    let total = total
        .or(inherited)
        .unwrap_or_else(crate::config::detect::configured_total);
    let fresh = Box::into_raw(Box::new(Registry::new(total, generation, &OURS)));
    loop {
        match GLOBAL.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // SAFETY: `fresh` came from Box::into_raw just above and is now leaked.
                let installed: &'static Registry = unsafe { &*fresh };
                installed.tokens.start();
                return Ok(installed);
            }
            Err(seen) => {
                current = seen;
                if let Some(running) = live(seen, generation) {
                    // Another thread installed first; ours never ran a thread.
                    // SAFETY: `fresh` was never published, so we own it.
                    drop(unsafe { Box::from_raw(fresh) });
                    return if strict {
                        Err(AlreadyRunning(running.tokens.total()))
                    } else {
                        Ok(running)
                    };
                }
            }
        }
    }
}

fn live(ptr: *mut Registry, generation: usize) -> Option<&'static Registry> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: pointers in GLOBAL come from Box::into_raw and are never freed.
    let registry = unsafe { &*ptr };
    (registry.fork_generation == generation).then_some(registry)
}

extern "C" fn our_total() -> usize {
    global().tokens.total()
}

extern "C" fn our_take(n: usize) -> usize {
    global().tokens.take(n)
}

extern "C" fn our_give(n: usize) {
    global().tokens.release(n);
}

/// What this copy of budget-core exports to another copy in the same process
/// (`external/handshake.rs`): calls into this process's budget.
pub(crate) static OURS: Published = Published::ours(our_total, our_take, our_give);

/// The outside budget this process joined (decided when the budget starts, which
/// this call does if nothing did yet).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let joined = budget::joined();
/// assert_eq!(joined, budget::joined());
/// ```
pub fn joined() -> Joined {
    let _ = global();
    crate::config::external::joined_as_started()
}

/// Tokens this process holds now: all of the budget when it shares none, else its
/// implicit token plus those it got from the jobserver or node budget.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// assert!(budget::held_tokens() >= 1);
/// ```
pub fn held_tokens() -> usize {
    global().tokens.held()
}
