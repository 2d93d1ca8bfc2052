//! [`Gate`]: holds back the threads of a leased rayon pool beyond a region's width,
//! and lets them through one by one as the region grows.
//!
//! Rayon has no hooks to park or wake its workers, so the gate works with stock
//! rayon, in steps:
//!
//! 1. The pool is leased exclusively and idle. `spawn_broadcast` queues one gate job
//!    on every worker. A worker that looks for work takes its broadcast job before
//!    it steals or takes injected jobs.
//! 2. `Gate::wait_arrivals` waits until every worker has *arrived* in its gate job.
//!    Each arrival passes while fewer than `allowed` have passed, otherwise it
//!    blocks. Blocked workers have nothing under them on their stacks (the pool was
//!    idle), so blocking them cannot hold up any job. A worker still busy with work
//!    left by an earlier lease (`rayon::spawn`) may never arrive: the wait gives up
//!    after a timeout and the caller takes another pool (see `install.rs`).
//! 3. Only then is the region's work injected: exactly `allowed` workers can take it.
//! 4. `open_to(w)` (called when the budget grants the region tokens) raises
//!    `allowed`; blocked workers pass and start stealing.
//! 5. At the end of the region `open_all` releases every worker, so the pool goes
//!    back to the cache idle and whole.
//!
//! The gate uses `std::sync` rather than parking_lot: parking_lot parks threads in
//! one process-wide table, which a forked child inherits with entries for threads
//! that no longer exist (glibc reuses their stacks for the child's new threads);
//! std's futex-based lock keeps its state in the lock itself.
//!
//! **Broadcasts.** `rayon::broadcast` (and `spawn_broadcast`) in the region queues
//! one job per worker, gated ones included, and the caller waits for all of them; a
//! gated worker that only slept would hang it until the region grew to its full
//! request, forever for a nested region whose parent waits for it. So a blocked
//! worker wakes now and then (`POLL_MIN` doubling to `POLL_MAX`) and runs the jobs
//! of its *own* queues with `rayon::yield_local`:
//! its local deque is empty (it arrived idle), which leaves exactly the broadcast
//! jobs addressed to it. It never steals, so it takes no share of the region's
//! ordinary work; while it runs a broadcast job the region runs beyond its width
//! (by at most the gated threads, for the length of that job), the price of a
//! broadcast that completes.

use std::time::{Duration, Instant};

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// First wait of a blocked worker before it looks for broadcast jobs.
const POLL_MIN: Duration = Duration::from_micros(200);
/// Longest wait between two looks: the most a broadcast waits for a gated thread.
const POLL_MAX: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
struct State {
    allowed: usize,
    arrived: usize,
    passed: usize,
    open_all: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

impl Gate {
    pub(crate) fn new(allowed: usize) -> Gate {
        Gate {
            state: Mutex::new(State {
                allowed,
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    /// The state, locked. No code that can panic runs under the lock, so a
    /// poisoned lock only means a panic elsewhere: the state is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A worker's gate job (step 2): returns once the worker may run. While
    /// blocked it runs the broadcast jobs addressed to it (module docs).
    pub(crate) fn enter(&self) {
        let mut state = self.lock();
        state.arrived += 1;
        self.changed.notify_all();
        let mut poll = POLL_MIN;
        while !state.open_all && state.passed >= state.allowed {
            let (guard, wait) = self
                .changed
                .wait_timeout(state, poll)
                .unwrap_or_else(PoisonError::into_inner);
            state = guard;
            if wait.timed_out() && !state.open_all && state.passed >= state.allowed {
                // Run this worker's queued broadcast jobs, without the lock: they
                // may take long, enter regions, or wait for other workers.
                drop(state);
                let mut ran = false;
                while rayon::yield_local() == Some(rayon::Yield::Executed) {
                    ran = true;
                }
                poll = if ran {
                    POLL_MIN
                } else {
                    (poll * 2).min(POLL_MAX)
                };
                state = self.lock();
            }
        }
        state.passed += 1;
    }

    /// Waits until `workers` workers have arrived (step 2's closing condition), or
    /// until `timeout` passed; returns whether they all arrived.
    pub(crate) fn wait_arrivals(&self, workers: usize, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        while state.arrived < workers {
            let left = match deadline {
                None => Duration::MAX,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Lets up to `width` workers through in all (step 4).
    pub(crate) fn open_to(&self, width: usize) {
        let mut state = self.lock();
        if width > state.allowed {
            state.allowed = width;
            self.changed.notify_all();
        }
    }

    /// Releases every worker (step 5).
    pub(crate) fn open_all(&self) {
        let mut state = self.lock();
        state.open_all = true;
        self.changed.notify_all();
    }
}
