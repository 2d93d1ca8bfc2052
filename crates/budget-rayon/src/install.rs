//! [`RayonExt::install`]: running rayon code inside a budget region.

use std::sync::Arc;
use std::time::Duration;

use budget_core::integration::ScopeHooks;
use budget_core::Scope;

use crate::gate::Gate;
use crate::pool::{pool_region, region_id, LentPool};
use crate::relay::install_blocking;

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
    ///   pool's first thread runs on. A caller that is a worker of another rayon
    ///   pool (the application's global pool, say) blocks meanwhile and runs none of
    ///   that pool's jobs: they would run on no token.
    /// - **Nested** (called on a worker of budget's rayon pools) at width 1: runs
    ///   `op` in place. Its parallel work is stolen by the threads of the enclosing
    ///   region's pool: no new pool, no hop to another pool, no blocking;
    ///   `current_num_threads()` is the enclosing pool's. A nested region that found
    ///   free tokens (width above 1) would leave them unused in place: it leases a
    ///   pool as a top-level region does, and the worker blocks while `op` runs there
    ///   (its core is that pool's first thread). The region that leased the pool,
    ///   called again through its own handle, runs in place.
    /// - **From a task of the region** (inside `spawn`, `join` or `for_each` of the
    ///   region, or a region nested in it; see `ScopeHooks::runs_body`): other threads of
    ///   the region may be running, so this opens the nested region that the task is,
    ///   `scope_with(requested(), |inner| inner.install(op))`, of its own thread plus
    ///   what is free.
    ///
    /// # Warning
    ///
    /// In a narrowed region the threads beyond the width wait at a gate. They still
    /// take the jobs addressed to them, so `rayon::broadcast` and `spawn_broadcast`
    /// inside `op` complete (on every thread of the pool, nested or not, whether
    /// the region grows or not), but while a gated thread runs its part the region
    /// runs beyond its width, and a gated thread looks for such jobs only every few
    /// milliseconds. Prefer `par_iter`, `join` and `scope`, which never wait for a
    /// particular thread. Work started with `rayon::spawn` that outlives `op` keeps
    /// running on the pool; a narrowed region that finds the pool still busy after
    /// 100 ms shuts that pool down once the work ends and builds another, so it
    /// never waits for that work.
    ///
    /// A worker of another rayon pool that calls `install` blocks until `op`
    /// returns and runs none of its pool's jobs meanwhile (they would run on no
    /// token): `op` must not wait for a job queued on that pool which only the
    /// caller could run (the pool's single thread, say).
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
        if in_place_on_pool(self) {
            return op();
        }
        // From a task of the region (other threads of it may run now), a nested
        // region: its own thread plus what is free (`ScopeHooks::in_body`).
        self.in_body(|s| {
            if in_place_on_pool(s) {
                op()
            } else {
                install_in_body(s, op)
            }
        })
    }
}

/// On budget's pool, a region runs its rayon work in place: one opened here at width
/// 1 (nothing would run on the pool's other threads), or the region that leased this
/// pool, through its own handle.
fn in_place_on_pool(scope: &Scope<'_>) -> bool {
    pool_region().is_some_and(|leased_by| scope.width() == 1 || leased_by == region_id(scope))
}

/// `install` from the region's body: the region's own pool, gated to its width.
fn install_in_body<R, OP>(scope: &Scope<'_>, op: OP) -> R
where
    OP: FnOnce() -> R + Send,
    R: Send,
{
    let capacity = scope.requested();
    let lease = LentPool::take(capacity);
    lease.lease_to(region_id(scope));
    if scope.width() >= capacity {
        return run(lease.pool(), op);
    }
    install_gated(scope, lease, op)
}

/// How long a narrowed region waits for an idle pool's workers to arrive at its
/// gate. A worker that takes longer is busy with work an earlier lease left running
/// (`rayon::spawn`), which may wait for this very region: the pool is retired
/// instead, and a fresh one built. Generous, so that a loaded machine (threads
/// slow to wake) rarely retires an idle pool; retiring one costs a pool build.
const ARRIVAL_TIMEOUT: Duration = Duration::from_millis(100);

/// A narrowed region: holds `capacity - width` threads of the pool at the gate
/// (module `gate`) and lets them through as the region grows.
fn install_gated<R, OP>(scope: &Scope<'_>, mut lease: LentPool, op: OP) -> R
where
    OP: FnOnce() -> R + Send,
    R: Send,
{
    let capacity = lease.capacity();
    let gate = loop {
        let gate = Arc::new(Gate::new(scope.width()));
        let in_gate = gate.clone();
        lease.pool().spawn_broadcast(move |_| in_gate.enter());
        // A fresh pool has no earlier work: its workers arrive (waiting is safe).
        let timeout = (!lease.is_fresh()).then_some(ARRIVAL_TIMEOUT);
        if gate.wait_arrivals(capacity, timeout) {
            break gate;
        }
        // Busy with work left by an earlier lease: its gate jobs pass when they run.
        gate.open_all();
        lease.retire();
        lease = LentPool::build(capacity);
        lease.lease_to(region_id(scope));
    };
    struct OpenOnExit<'a>(&'a Gate);
    impl Drop for OpenOnExit<'_> {
        fn drop(&mut self) {
            self.0.open_all();
        }
    }
    let _open = OpenOnExit(&gate);
    let grow = gate.clone();
    // The region may have grown between `width()` and the gate closing.
    gate.open_to(scope.width());
    let pool = lease.pool();
    scope.with_demand(move |w| grow.open_to(w), || run(pool, op))
}

/// Runs `op` on the leased `pool` for a caller that is not one of its threads. A
/// rayon worker (of a foreign pool, or of budget's pools with tokens to spare)
/// blocks without running its own pool's jobs (module `relay`); any other thread
/// blocks in rayon's `install` anyway.
fn run<R, OP>(pool: &rayon::ThreadPool, op: OP) -> R
where
    OP: FnOnce() -> R + Send,
    R: Send,
{
    if rayon::current_thread_index().is_some() {
        install_blocking(pool, op)
    } else {
        pool.install(op)
    }
}
