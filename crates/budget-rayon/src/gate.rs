//! [`Gate`]: holds back the threads of a leased rayon pool beyond a region's width,
//! and lets them through one by one as the region grows.
//!
//! Rayon has no hooks to park or wake its workers, so the gate works with stock
//! rayon, in steps:
//!
//! 1. The pool is leased exclusively and idle. `spawn_broadcast` queues one gate job
//!    on every worker. A worker that looks for work takes its broadcast job before
//!    it steals or takes injected jobs.
//! 2. `Gate::close` waits until every worker has *arrived* in its gate job. Each
//!    arrival passes while fewer than `allowed` have passed, otherwise it blocks.
//!    Blocked workers have nothing under them on their stacks (the pool was idle),
//!    so blocking them cannot hold up any job.
//! 3. Only then is the region's work injected: exactly `allowed` workers can take it.
//! 4. `open_to(w)` (called when the budget grants the region tokens) raises
//!    `allowed`; blocked workers pass and start stealing.
//! 5. At the end of the region `open_all` releases every worker, so the pool goes
//!    back to the cache idle and whole.

use parking_lot::{Condvar, Mutex};

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

    /// A worker's gate job (step 2): returns once the worker may run.
    pub(crate) fn enter(&self) {
        let mut state = self.state.lock();
        state.arrived += 1;
        self.changed.notify_all();
        while !state.open_all && state.passed >= state.allowed {
            self.changed.wait(&mut state);
        }
        state.passed += 1;
    }

    /// Waits until `workers` workers have arrived (step 2's closing condition).
    pub(crate) fn wait_arrivals(&self, workers: usize) {
        let mut state = self.state.lock();
        while state.arrived < workers {
            self.changed.wait(&mut state);
        }
    }

    /// Lets up to `width` workers through in all (step 4).
    pub(crate) fn open_to(&self, width: usize) {
        let mut state = self.state.lock();
        if width > state.allowed {
            state.allowed = width;
            self.changed.notify_all();
        }
    }

    /// Releases every worker (step 5).
    pub(crate) fn open_all(&self) {
        let mut state = self.state.lock();
        state.open_all = true;
        self.changed.notify_all();
    }
}
