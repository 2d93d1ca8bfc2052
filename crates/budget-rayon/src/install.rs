//! [`RayonExt::install`]: running rayon code inside a budget region.

use std::sync::Arc;

use budget_core::integration::ScopeHooks;
use budget_core::Scope;

use crate::gate::Gate;
use crate::pool::{on_pool, PoolLease};

/// Runs rayon code on a budget region. Import it with `use budget::prelude::*`.
pub trait RayonExt {
    /// Runs `op` with rayon sized by the region: `par_iter`, `rayon::join` and
    /// `rayon::scope` inside `op` use a pool of the region's requested width, of
    /// which no more threads run than the region's current width.
    ///
    /// - **Top level** (the caller is not a thread of budget's rayon pools): leases
    ///   a pool of `requested()` threads from a cache (built once, reused after),
    ///   and runs `op` on it. `rayon::current_num_threads()` is then `requested()`,
    ///   which equals `width()` whenever the region got its full request. A region
    ///   that got less holds the extra threads at a gate, and lets them through as
    ///   the budget hands it tokens that other regions release (it grows while `op`
    ///   runs). The calling thread waits for `op`, and its token is the one the
    ///   pool's first thread runs on.
    /// - **From a task of the region** (inside `spawn`, `join` or `for_each` of the
    ///   region, or a region nested in it; see `ScopeHooks::runs_body`): other threads of
    ///   the region may be running, so this opens the nested region that the task is,
    ///   `scope_with(requested(), |inner| inner.install(op))`, of its own thread plus
    ///   what is free.
    /// - **Nested** (called on a worker of budget's rayon pools): runs `op` in place.
    ///   Its parallel work is stolen by the threads of the enclosing region's pool:
    ///   no new pool, no hop to another pool, no blocking; `current_num_threads()`
    ///   is the enclosing pool's.
    ///
    /// # Warning
    ///
    /// In a narrowed region the threads beyond the width wait at the gate, so
    /// `rayon::broadcast` (which needs every thread of the pool) inside `op` waits
    /// until the region grows to its full request. Prefer `par_iter`, `join` and
    /// `scope`, which never wait for a particular thread. Work started with
    /// `rayon::spawn` that outlives `op` delays the pool's next narrowed lease until
    /// it finishes.
    ///
    /// # Panics
    ///
    /// A panic in `op` (or in rayon work inside it) is resumed here with its original
    /// payload; the region then returns every token as it unwinds.
    ///
    /// # Examples
    ///
    /// ```
    /// use budget_rayon::RayonExt;
    /// use rayon::prelude::*;
    ///
    /// let sum: u64 = budget_core::scope(|s| s.install(|| (1..=1000u64).into_par_iter().sum()));
    /// assert_eq!(sum, 500_500);
    /// ```
    fn install<R, OP>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send;
}

impl RayonExt for Scope<'_> {
    fn install<R, OP>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send,
    {
        if on_pool() {
            return op();
        }
        if !self.runs_body() {
            // Called from a task of the region: other threads of it may run now, so
            // this is a nested region (its own thread plus what is free).
            return budget_core::scope_with(self.requested(), |inner| inner.install(op));
        }
        let capacity = self.requested();
        let lease = PoolLease::take(capacity);
        let pool = lease.pool();
        let width = self.width();
        if width >= capacity {
            return pool.install(op);
        }
        // Narrowed: hold `capacity - width` threads at the gate (module `gate`).
        let gate = Arc::new(Gate::new(width));
        let in_gate = gate.clone();
        pool.spawn_broadcast(move |_| in_gate.enter());
        gate.wait_arrivals(capacity);
        struct OpenOnExit<'a>(&'a Gate);
        impl Drop for OpenOnExit<'_> {
            fn drop(&mut self) {
                self.0.open_all();
            }
        }
        let _open = OpenOnExit(&gate);
        let grow = gate.clone();
        // The region may have grown between `width()` and the gate closing.
        gate.open_to(self.width());
        self.with_demand(move |w| grow.open_to(w), || pool.install(op))
    }
}
