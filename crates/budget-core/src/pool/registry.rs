//! [`Registry`]: one token budget and the pool of worker threads that serve it. The
//! pool knows what it runs only as [`Visit`]: a region's reserved slot, which a worker
//! fills until the region has nothing left for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::sync::plain::{Condvar, Mutex};

use crate::config::external::handshake::Published;
use crate::tokens::stats::Stats;
use crate::tokens::token::Tokens;

/// What a worker does with a slot handed to it: serves the region that reserved it,
/// then returns to the pool.
pub(crate) trait Visit: Send + Sync {
    fn serve(self: Arc<Self>);
}

/// Names a worker thread from its index.
type ThreadName = Arc<dyn Fn(usize) -> String + Send + Sync>;

/// How worker threads are started: budget's own and those of the rayon pools
/// budget-rayon leases. Set once, by the builder that started the budget.
#[derive(Clone, Default)]
pub(crate) struct ThreadSettings {
    pub(crate) stack_size: Option<usize>,
    pub(crate) name: Option<ThreadName>,
}

static THREADS: OnceLock<ThreadSettings> = OnceLock::new();

/// The worker thread settings in force (the defaults if no builder set them).
pub(crate) fn thread_settings() -> ThreadSettings {
    THREADS.get().cloned().unwrap_or_default()
}

/// The name of worker `index`: the builder's `thread_name`, else `budget-worker-N`.
/// A dispatch runs inside `join` and inside a release's hand-off, which must not
/// unwind: a panicking callback gets the default name (and a warning), and a NUL
/// byte, which std's spawn would panic on, is dropped.
#[cfg_attr(budget_loom, allow(dead_code))]
fn worker_name(settings: &ThreadSettings, index: usize) -> String {
    let default = || format!("budget-worker-{index}");
    let Some(name) = &settings.name else {
        return default();
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| name(index))) {
        Ok(name) => name.replace('\0', ""),
        Err(payload) => {
            crate::regions::job::discard(payload);
            tracing::warn!(
                "budget: the Builder::thread_name callback panicked; using {}",
                default()
            );
            default()
        }
    }
}

/// Sets the worker thread settings, if nothing set them yet.
pub(crate) fn set_thread_settings(settings: ThreadSettings) {
    let _ = THREADS.set(settings);
}

/// The budget and its workers. Registries are leaked: a `&'static Registry` stays
/// valid for the life of the process, also after it is replaced in a forked child.
pub(crate) struct Registry {
    pub(crate) tokens: Tokens,
    /// The fork generation (`fork.rs`) when this registry was made.
    pub(crate) fork_generation: usize,
    queue: Mutex<Queue>,
    wake: Condvar,
    threads: AtomicUsize,
    /// `queue.requests.len()`, written under the lock, read by spinning workers
    /// without it.
    requested: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    /// Regions that reserved a slot and wait for a thread to fill it.
    requests: VecDeque<Arc<dyn Visit>>,
    /// Workers parked in `worker_main`.
    idle: usize,
    /// Workers spinning in `worker_main` before they park: each takes a request
    /// without being woken.
    spinning: usize,
}

impl Registry {
    /// A registry of `total` tokens, joined to an outside budget if the
    /// environment names one; `ours` is what this copy exports to another.
    pub(crate) fn new(total: usize, fork_generation: usize, ours: &'static Published) -> Self {
        Registry {
            tokens: crate::config::external::tokens(total, ours),
            fork_generation,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            threads: AtomicUsize::new(0),
            requested: AtomicUsize::new(0),
        }
    }

    /// False in a forked child for the parent's registry: its workers are gone, so it
    /// must not be waited on or locked.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        self.fork_generation == crate::pool::fork::current()
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
    pub(crate) fn dispatch(&'static self, region: Arc<dyn Visit>) {
        let spawn = {
            let mut queue = self.queue.lock();
            queue.requests.push_back(region);
            let requests = queue.requests.len();
            self.requested.store(requests, Ordering::Relaxed);
            // A spinning worker takes a request by itself: no wake, no new thread.
            if requests <= queue.spinning {
                return;
            }
            let spawn = queue.idle + queue.spinning < requests
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
            let settings = thread_settings();
            let mut thread = std::thread::Builder::new().name(worker_name(&settings, index));
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
    pub(crate) fn dispatch(&'static self, region: Arc<dyn Visit>) {
        self.queue.lock().requests.push_back(region);
    }

    /// Under loom: the requests dispatched and not yet taken.
    #[cfg(all(test, budget_loom))]
    pub(crate) fn take_request(&self) -> Option<Arc<dyn Visit>> {
        self.queue.lock().requests.pop_front()
    }

    #[cfg_attr(budget_loom, allow(dead_code))]
    fn worker_main(&'static self) {
        loop {
            let region = {
                let mut queue = self.queue.lock();
                // When this worker's spin ends: set once per idle spell, so a worker
                // that loses a request to another spinner does not start over (with
                // regions coming faster than the spin, every idle worker would spin
                // for good).
                let mut until = None;
                loop {
                    if let Some(region) = queue.requests.pop_front() {
                        self.requested
                            .store(queue.requests.len(), Ordering::Relaxed);
                        break region;
                    }
                    // Spin a while before parking: a program that opens regions one
                    // after another (a library call in a loop) dispatches again within
                    // microseconds, and a parked worker costs it a futex wake and a
                    // trip back onto a core each time (rayon's workers spin too).
                    // Counted in `spinning` under the lock, so a dispatch that finds
                    // a spinner for its request wakes nobody; every way out of the
                    // spin takes the lock and looks at the queue again.
                    let until = *until.get_or_insert_with(|| {
                        crate::regions::clock::after_wakes(Self::SPIN_WAKES)
                    });
                    queue.spinning += 1;
                    drop(queue);
                    let came = self.spin(until);
                    queue = self.queue.lock();
                    queue.spinning -= 1;
                    if came || !queue.requests.is_empty() {
                        continue;
                    }
                    queue.idle += 1;
                    queue = self.wake.wait(queue);
                    queue.idle -= 1;
                }
            };
            region.serve();
        }
    }

    /// Spins (yielding the core to any thread that wants it) until the tick count
    /// `until` or until a request is queued: true if one was.
    #[cfg_attr(budget_loom, allow(dead_code))]
    fn spin(&self, until: u64) -> bool {
        // Relaxed: a hint; the request itself is taken under the lock.
        let queued = || self.requested.load(Ordering::Relaxed) > 0;
        crate::regions::clock::spin_until(until, queued, std::thread::yield_now)
    }

    /// How long an idle worker spins before it parks, counted from its last visit, in
    /// wake costs (`clock.rs`: 5 µs each, so 50 µs): long enough for the gap between
    /// two library calls, short enough that an idle program stops using the core
    /// soon (rayon's workers spin 32 rounds of yields, tens of µs). A spinning worker
    /// holds no token and runs nothing.
    const SPIN_WAKES: u64 = 10;
}
