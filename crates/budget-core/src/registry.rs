//! The process-wide registry: one token budget, the pool of worker threads that
//! serve regions, and what happens to both after `fork()`.

use std::collections::VecDeque;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::sync::plain::{Condvar, Mutex};

use crate::builder::BuildError;
use crate::region::Region;
use crate::stats::Stats;
use crate::token::Tokens;

/// The budget and its workers. Registries are leaked: a `&'static Registry` stays
/// valid for the life of the process, also after it is replaced in a forked child.
pub(crate) struct Registry {
    pub(crate) tokens: Tokens,
    /// The value of `FORK_GENERATION` when this registry was made.
    fork_generation: usize,
    queue: Mutex<Queue>,
    wake: Condvar,
    threads: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    /// Regions that reserved a slot and wait for a thread to fill it.
    requests: VecDeque<Arc<Region>>,
    /// Workers parked in `worker_main`.
    idle: usize,
}

/// The installed registry, or null before first use.
static GLOBAL: AtomicPtr<Registry> = AtomicPtr::new(ptr::null_mut());

/// Bumped in the child by the `pthread_atfork` handler: a registry from an older
/// generation belongs to the parent, whose other threads do not exist here.
static FORK_GENERATION: AtomicUsize = AtomicUsize::new(0);

/// How many `fork`s lie between the first process and this one (0 in a process that
/// was not forked from one using budget): an object made in a parent and found in a
/// child compares its generation with this one and stays out of use.
pub(crate) fn fork_generation() -> usize {
    register_fork_handler();
    FORK_GENERATION.load(Ordering::Acquire)
}

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
pub(crate) fn install(total: Option<usize>) -> Result<&'static Registry, BuildError> {
    register_fork_handler();
    // No fork while a registry is being made: `fork` waits for it (the prepare
    // handler), so a child never inherits a `Once`, `OnceLock` or lock of the making
    // half done (it waited for ever on one: the fork hunt, `examples/fork_hunt.rs`).
    let _making = InstallGuard::lock();
    let generation = FORK_GENERATION.load(Ordering::Acquire);
    let mut current = GLOBAL.load(Ordering::Acquire);
    if let Some(running) = live(current, generation) {
        return match total {
            Some(_) => Err(BuildError::AlreadyRunning {
                total: running.tokens.total(),
            }),
            None => Ok(running),
        };
    }
    let strict = total.is_some();
    // Lazily made process-wide state, made now, before any thread of the budget could
    // be in the middle of making it when the process forks (a `OnceLock` being
    // initialized is copied stuck into the child).
    crate::clock::prime();
    // In a forked child the parent's registry is stale but its total is what the
    // parent configured (Builder or environment): the child keeps it.
    let inherited = (!current.is_null()).then(|| {
        // SAFETY: pointers in GLOBAL come from Box::into_raw and are never freed.
        unsafe { &*current }.tokens.total()
    });
    let total = total
        .or(inherited)
        .unwrap_or_else(crate::detect::configured_total);
    let fresh = Box::into_raw(Box::new(Registry::new(total, generation)));
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
                        Err(BuildError::AlreadyRunning {
                            total: running.tokens.total(),
                        })
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

/// Held while a registry is being made, and by `fork` (the prepare handler) until
/// the child and the parent go on: a spin lock of one atomic, which a forked child
/// can reset (a `Mutex` held at the fork would stay locked in the child).
static MAKING: AtomicBool = AtomicBool::new(false);

/// Holds [`MAKING`] while alive.
struct InstallGuard;

impl InstallGuard {
    fn lock() -> InstallGuard {
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

// Under Miri, which runs no `pthread_atfork` (a foreign call): no fork in its tests.
#[cfg(all(unix, not(miri)))]
fn register_fork_handler() {
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
fn register_fork_handler() {}

impl Registry {
    pub(crate) fn new(total: usize, fork_generation: usize) -> Self {
        Registry {
            tokens: crate::external::tokens(total),
            fork_generation,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            threads: AtomicUsize::new(0),
        }
    }

    /// False in a forked child for the parent's registry: its workers are gone, so it
    /// must not be waited on or locked.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        self.fork_generation == FORK_GENERATION.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> Stats {
        self.tokens.counters.snapshot(
            self.tokens.total(),
            self.tokens.unused(),
            self.threads.load(Ordering::Relaxed),
        )
    }

    /// Hands a region's reserved slot to a worker: an idle one, or a new thread while
    /// fewer than `total` exist. With `total` threads busy the request waits in the
    /// queue; a busy thread picks it up when it finishes its region.
    ///
    /// Why `total` threads suffice: a worker runs only inside a slot, and every slot
    /// is a token, so no more than `total` workers are ever busy at once.
    #[cfg(not(budget_loom))]
    pub(crate) fn dispatch(&'static self, region: Arc<Region>) {
        let spawn = {
            let mut queue = self.queue.lock();
            queue.requests.push_back(region);
            let spawn = queue.idle < queue.requests.len()
                && self.threads.load(Ordering::Relaxed) < self.tokens.total();
            if spawn {
                self.threads.fetch_add(1, Ordering::Relaxed);
            } else {
                self.wake.notify_one();
            }
            spawn
        };
        if spawn {
            let index = self.threads.load(Ordering::Relaxed);
            let settings = crate::builder::thread_settings();
            let name = settings
                .name
                .map_or_else(|| format!("budget-worker-{index}"), |name| name(index));
            let mut thread = std::thread::Builder::new().name(name);
            if let Some(bytes) = settings.stack_size {
                thread = thread.stack_size(bytes);
            }
            let started = thread.spawn(move || self.worker_main());
            if let Err(error) = started {
                // The request stays queued; the region's own thread runs its tasks.
                self.threads.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!("budget: could not start a worker thread: {error}");
            }
        }
    }

    /// Under loom: records the request only; a model runs `serve` on a thread of
    /// its own (`region_loom_tests.rs`).
    #[cfg(budget_loom)]
    pub(crate) fn dispatch(&'static self, region: Arc<Region>) {
        self.queue.lock().requests.push_back(region);
    }

    /// Under loom: the requests dispatched and not yet taken.
    #[cfg(all(test, budget_loom))]
    pub(crate) fn take_request(&self) -> Option<Arc<Region>> {
        self.queue.lock().requests.pop_front()
    }

    #[cfg_attr(budget_loom, allow(dead_code))]
    fn worker_main(&'static self) {
        loop {
            let region = {
                let mut queue = self.queue.lock();
                loop {
                    if let Some(region) = queue.requests.pop_front() {
                        break region;
                    }
                    queue.idle += 1;
                    queue = self.wake.wait(queue);
                    queue.idle -= 1;
                }
            };
            region.serve();
        }
    }
}
