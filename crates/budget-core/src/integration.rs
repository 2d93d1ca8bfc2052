//! Hooks for integrations: code that runs a region's work on threads of its own
//! (budget-rayon's pools, budget-native's OpenMP/BLAS calls), kept apart from the
//! user API as `lock_api` is from `parking_lot`. Applications do not need them.
//!
//! - [`ScopeHooks`]: on a [`Scope`], declare demand that is not in its task queue
//!   ([`with_demand`](ScopeHooks::with_demand)) and tell whether the current thread
//!   runs the region's body itself ([`runs_body`](ScopeHooks::runs_body)).
//! - [`RegionThread`]: mark a thread whose running is paid for by a region's tokens.
//! - [`Lease`]: hold tokens outside any region, for a pool of one's own.

pub use crate::context::RegionThread;
pub use crate::lease::Lease;
use crate::Scope;

/// Integration hooks on a region. Bring them into scope with
/// `use budget_core::integration::ScopeHooks;`.
pub trait ScopeHooks {
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
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use budget_core::integration::ScopeHooks;
    ///
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let record = seen.clone();
    /// budget_core::scope(|s| {
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
    /// use budget_core::integration::ScopeHooks;
    ///
    /// budget_core::scope(|s| {
    ///     assert!(s.runs_body());
    ///     s.join(|| assert!(!s.runs_body()), || assert!(!s.runs_body()));
    ///     s.for_each(0..4, |_| assert!(!s.runs_body()));
    ///     budget_core::scope(|_inner| assert!(!s.runs_body()));
    ///     assert!(s.runs_body());
    /// });
    /// ```
    fn runs_body(&self) -> bool;
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
}
