//! The process's fork generation, and the `pthread_atfork` handlers that keep it: a
//! child of `fork` has one thread, so state made by its parent (a registry, a
//! jobserver's held tokens, a pool cache: [`PerFork`](crate::integration::PerFork))
//! is compared by generation and made anew instead of used.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Bumped in the child by the `pthread_atfork` handler: a registry from an older
/// generation belongs to the parent, whose other threads do not exist here.
static FORK_GENERATION: AtomicUsize = AtomicUsize::new(0);

/// How many `fork`s lie between the first process and this one (0 in a process that
/// was not forked from one using budget): an object made in a parent and found in a
/// child compares its generation with this one and stays out of use.
pub(crate) fn generation() -> usize {
    register_fork_handler();
    FORK_GENERATION.load(Ordering::Acquire)
}

/// The generation without registering the handlers (a hot path's check: whoever
/// made the compared value registered them).
#[inline]
pub(crate) fn current() -> usize {
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// Held while a registry is being made, and by `fork` (the prepare handler) until
/// the child and the parent go on: a spin lock of one atomic, which a forked child
/// can reset (a `Mutex` held at the fork would stay locked in the child).
static MAKING: AtomicBool = AtomicBool::new(false);

/// Holds [`MAKING`] while alive.
pub(crate) struct InstallGuard;

impl InstallGuard {
    pub(crate) fn lock() -> InstallGuard {
        take_making();
        InstallGuard
    }
}

impl Drop for InstallGuard {
    fn drop(&mut self) {
        MAKING.store(false, Ordering::Release);
    }
}

/// Spins (yielding) until [`MAKING`] is ours. Acquire pairs with the Release of the
/// one who held it.
fn take_making() {
    while MAKING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

// On Linux the fork handlers are registered when the program (or the library that
// holds this crate) is loaded, before any thread could be in the middle of it.
#[cfg(all(target_os = "linux", not(miri)))]
#[used]
#[link_section = ".init_array"]
static REGISTER_AT_LOAD: extern "C" fn() = register_at_load;

#[cfg(all(target_os = "linux", not(miri)))]
extern "C" fn register_at_load() {
    register_fork_handler();
}

/// Registers the fork handlers (once; cheap after).
// Under Miri, which runs no `pthread_atfork` (a foreign call): no fork in its tests.
#[cfg(all(unix, not(miri)))]
pub(crate) fn register_fork_handler() {
    // An atomic, not a `Once`: a `Once` being run at a fork is copied "running" into
    // the child, which then waits for it for ever. Elsewhere than Linux (no load-time
    // registration), a fork in the microseconds of the first registration may miss
    // the handlers; a later caller does not wait.
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn prepare() {
        // Wait for a registry being made to be done (see `install`).
        take_making();
    }
    extern "C" fn in_parent() {
        MAKING.store(false, Ordering::Release);
    }
    extern "C" fn in_child() {
        // Async-signal-safe: atomic stores and one atomic add, no allocation, no lock.
        MAKING.store(false, Ordering::Release);
        FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    }
    // A load first: `fork_generation` calls this on paths a node member takes at
    // every tick, which must not write a shared line each time.
    if REGISTERED.load(Ordering::Acquire) || REGISTERED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the three are `extern "C" fn()`s that live for the whole program and do
    // only atomic operations (and `sched_yield` while waiting).
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
    if rc != 0 {
        tracing::warn!("budget: pthread_atfork failed ({rc}); a forked child must not use budget");
    }
}

#[cfg(any(not(unix), miri))]
pub(crate) fn register_fork_handler() {}
