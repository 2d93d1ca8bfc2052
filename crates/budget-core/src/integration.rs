//! Hooks for integrations: code that runs a region's work on threads of its own
//! (budget-rayon's pools, budget-native's OpenMP/BLAS calls), kept apart from the
//! user API as `lock_api` is from `parking_lot`. Applications do not need them.
//!
//! - [`ScopeHooks`] (sealed: implemented by [`Scope`] only): on a region, declare
//!   demand that is not in its task queue ([`with_demand`](ScopeHooks::with_demand)),
//!   tell whether the current thread runs the region's body itself
//!   ([`runs_body`](ScopeHooks::runs_body)), run code as the body of this region or of
//!   one nested here, the rule in one place ([`in_body`](ScopeHooks::in_body)), and
//!   name the region ([`id`](ScopeHooks::id), a [`RegionId`]).
//! - [`OpenRegion`]: a region entered without a closure (a `with` block, a C caller),
//!   with `scope_with`'s rule, given back on drop: the state `scope_with` itself holds.
//! - [`RegionThread`]: mark a thread whose running is paid for by a region's tokens.
//! - [`Lease`]: hold tokens outside any region, for a pool of one's own.

pub use crate::pool::per_fork::PerFork;
pub use crate::regions::context::RegionThread;
pub use crate::regions::open::OpenRegion;
pub use crate::tokens::lease::Lease;
use crate::Scope;

mod sealed {
    /// Keeps [`ScopeHooks`](super::ScopeHooks) to budget-core's own `Scope`: its
    /// methods rely on the region's internals, and new ones can be added.
    pub trait Sealed {}
    impl Sealed for crate::Scope<'_> {}
}

/// An open region's identity: unique among the regions of the process for its life
/// (never reused), opaque, cheap to copy and compare. budget-rayon marks the pool a
/// region leases with it.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// use budget::integration::ScopeHooks;
///
/// let outer = budget::scope(|s| {
///     let id = s.id();
///     assert_eq!(id, s.id(), "the same region, the same id");
///     budget::scope(|inner| assert_ne!(inner.id(), id));
///     id
/// });
/// budget::scope(|s| assert_ne!(s.id(), outer, "never reused"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub(crate) std::num::NonZeroUsize);

impl RegionId {
    /// The id as a number (never 0), for an atomic slot that holds "no region" as 0.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// use budget::integration::ScopeHooks;
    /// budget::scope(|s| assert!(s.id().get().get() > 0));
    /// ```
    pub fn get(self) -> std::num::NonZeroUsize {
        self.0
    }
}

/// Integration hooks on a region. Bring them into scope with
/// `use budget_core::integration::ScopeHooks;`. Sealed: [`Scope`] is its one
/// implementation.
pub trait ScopeHooks: sealed::Sealed {
    /// Runs `f` while the region asks the budget for its full request even though it
    /// has no task queued, and calls `on_grow(new_width)` each time the region grows
    /// meanwhile. For integrations that run a region's work on threads of their own:
    /// `budget-rayon` opens a gated rayon pool this way.
    ///
    /// `on_grow` runs on the thread that released the tokens, with the budget's
    /// hand-off lock held: it must be quick, must not block, and must not enter a
    /// region or touch a [`Lease`]. A panic in it is caught and logged, never
    /// propagated.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use budget::integration::ScopeHooks;
    ///
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let record = seen.clone();
    /// budget::scope(|s| {
    ///     let width = s.with_demand(move |w| record.store(w, Ordering::Relaxed), || s.width());
    ///     assert!(width >= 1);
    /// });
    /// ```
    fn with_demand<R>(
        &self,
        on_grow: impl Fn(usize) + Send + Sync + 'static,
        f: impl FnOnce() -> R,
    ) -> R;

    /// Whether the current thread runs this region's body directly: it is the thread
    /// that opened the region, and is neither inside one of the region's tasks (the
    /// closures given to `spawn`, `join` and `for_each`, wherever they run) nor inside
    /// a region nested in it.
    ///
    /// Only then may an integration use the region's whole [`width`](Scope::width)
    /// for threads of its own. Elsewhere other threads of the region may be running
    /// at the same time, so an integration called with this handle must size itself as
    /// the nested region it really is: `budget_core::scope_with(s.requested(), ..)`
    /// (its own thread plus what is free). budget-rayon's `install` and budget-native's
    /// `native` do so.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// use budget::integration::ScopeHooks;
    ///
    /// budget::scope(|s| {
    ///     assert!(s.runs_body());
    ///     s.join(|| assert!(!s.runs_body()), || assert!(!s.runs_body()));
    ///     s.for_each(0..4, |_| assert!(!s.runs_body()));
    ///     budget::scope(|_inner| assert!(!s.runs_body()));
    ///     assert!(s.runs_body());
    /// });
    /// ```
    fn runs_body(&self) -> bool;

    /// Runs `f` as the body of a region: of this one when the current thread
    /// [`runs_body`](ScopeHooks::runs_body), else of a region nested here that asks for
    /// this one's [`requested`](Scope::requested) (its own thread plus what is free),
    /// since other threads of this region may be running. The rule for integrations
    /// that size threads of their own from a handle: budget-rayon's `install` and
    /// budget-native's `native` go through it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// use budget::integration::ScopeHooks;
    ///
    /// budget::scope(|s| {
    ///     let outer = s.id();
    ///     assert_eq!(s.in_body(|b| b.id()), outer, "the body itself");
    ///     s.join(
    ///         || assert_ne!(s.in_body(|b| b.id()), outer, "a task: a nested region"),
    ///         || {},
    ///     );
    /// });
    /// ```
    fn in_body<R>(&self, f: impl FnOnce(&Scope<'_>) -> R) -> R;

    /// This region's identity (see [`RegionId`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// use budget::integration::ScopeHooks;
    /// budget::scope(|s| assert_eq!(s.id(), s.id()));
    /// ```
    fn id(&self) -> RegionId;
}

impl ScopeHooks for Scope<'_> {
    fn with_demand<R>(
        &self,
        on_grow: impl Fn(usize) + Send + Sync + 'static,
        f: impl FnOnce() -> R,
    ) -> R {
        self.with_demand_hook(on_grow, f)
    }

    fn runs_body(&self) -> bool {
        self.runs_body_hook()
    }

    fn in_body<R>(&self, f: impl FnOnce(&Scope<'_>) -> R) -> R {
        if self.runs_body() {
            f(self)
        } else {
            crate::scope_with(self.requested(), |inner| f(inner))
        }
    }

    fn id(&self) -> RegionId {
        RegionId(self.id_hook())
    }
}

/// Counts a region that an integration opened from [`Lease`]s rather than through
/// [`scope`](crate::scope) (a Python `with budget.region()` block) in
/// [`stats`](crate::stats): one more region, narrowed when `width < requested` (its
/// cause taken now, as at a scope's entry: other processes, leases, or other
/// regions), overcommitted when its thread found no token.
///
/// Call it right after taking the region's tokens.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let before = budget::stats();
/// let all = budget::Lease::try_new(usize::MAX);
/// let extra = budget::Lease::try_new(1); // a region asking for 2 gets 1
/// budget::integration::note_region(2, 1 + extra.count(), false);
/// let after = budget::stats();
/// assert_eq!(after.regions, before.regions + 1);
/// assert_eq!(after.narrowed_by_leases, before.narrowed_by_leases + 1);
/// # drop((all, extra));
/// ```
pub fn note_region(requested: usize, width: usize, overcommitted: bool) {
    let tokens = &crate::pool::process::global().tokens;
    tokens
        .counters
        .note_region(width < requested, overcommitted);
    if width < requested {
        tokens.note_cause(false);
    }
}

/// Whether this process's budget has started: a region, a lease, `stats()`,
/// `joined()` or a builder made it. Settings read at start (`BUDGET_NODE`,
/// `BUDGET_NUM_THREADS`, a jobserver) no longer change it then; an integration that
/// sets one for this process checks this first (Python's `share_node` says so with a
/// `RuntimeError`). In a forked child, the parent's budget does not count.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let _ = budget::stats(); // starts it
/// assert!(budget::integration::budget_started());
/// ```
pub fn budget_started() -> bool {
    crate::pool::process::running()
}

/// A job that borrows the caller's stack, made `'static` to hand to a thread pool that
/// wants `'static` jobs (budget-rayon's relay onto a leased rayon pool). budget-core's
/// own task bodies go through the same erasure, the workspace's only one.
///
/// # Safety
///
/// `'a` must not end while the job can still reach anything it borrows for `'a`:
/// the caller waits (and does not unwind) until the job has run or was dropped, or
/// until the job signals that it is done with its borrows, after which the job
/// touches only what it owns (budget-rayon's relay: the job stores its result under
/// a lock it owns through an `Arc`, then signals).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let text = String::from("borrowed");
/// let job: Box<dyn FnOnce() + Send + '_> = Box::new(|| assert_eq!(text.len(), 8));
/// // SAFETY: the job runs right here, while `text` lives.
/// let job = unsafe { budget::integration::erase_job(job) };
/// job();
/// ```
pub unsafe fn erase_job<'a>(job: Box<dyn FnOnce() + Send + 'a>) -> Box<dyn FnOnce() + Send> {
    // SAFETY: the caller upholds the contract above.
    unsafe { crate::regions::job::erase_lifetime(job) }
}

/// Keeps `tokens` cores of this process out of other processes' reach for `window`:
/// for a library whose worker threads busy-wait after a call (OpenBLAS on pthreads
/// spins ~0.1 s after each multi-threaded call; `tokens` is the call's width, its
/// caller and its spinning workers). In a process that shares a jobserver or node
/// budget, the process does not give those tokens back to the outside budget before
/// `window` has passed, so another process does not start threads on cores that the
/// spinning workers occupy (measured: such a neighbour's threads run up to 2× slower,
/// `cargo bench -p budget-threads-native --bench spin`). Inside the process the tokens stay
/// free: the next region takes them, and the next BLAS call runs on those very
/// workers. Without an outside budget it does nothing. budget-native calls it after
/// each wide call of a spinning pool.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// use std::time::Duration;
/// budget::integration::hold_for_spinners(2, Duration::from_millis(100));
/// // Inside this process the tokens stay free for the next region.
/// budget::scope(|s| assert_eq!(s.width(), budget::stats().total));
/// ```
pub fn hold_for_spinners(tokens: usize, window: std::time::Duration) {
    let registry = crate::pool::process::global();
    registry
        .tokens
        .hold_outside(tokens, std::time::Instant::now() + window);
}

/// The stack size set by [`Builder::stack_size`](crate::Builder::stack_size), for
/// integrations that start worker threads of their own (budget-rayon's pools).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let _bytes: Option<usize> = budget::integration::worker_stack_size();
/// ```
pub fn worker_stack_size() -> Option<usize> {
    crate::pool::registry::thread_settings().stack_size
}

/// The name [`Builder::thread_name`](crate::Builder::thread_name) gives the worker
/// thread of index `index`, if a name was set, for integrations that start worker
/// threads of their own.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// assert_eq!(budget::integration::worker_thread_name(0), None); // none set here
/// ```
pub fn worker_thread_name(index: usize) -> Option<String> {
    crate::pool::registry::thread_settings()
        .name
        .map(|name| name(index))
}
