//! Parallel regions: [`scope`], [`scope_with`] and the [`Scope`] handle with its
//! task API (`spawn`, `join`, `for_each`).

use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
#[cfg(test)]
use std::sync::Arc;

use crate::regions::context;
use crate::regions::job;
use crate::regions::open::RegionState;
#[cfg(test)]
use crate::regions::region::Region;

/// Opens a parallel region that asks for every core in the budget.
///
/// The region starts at once with `width = 1 + min(total - 1, free)`: the calling
/// thread always counts, so a region that finds the cores busy runs at width 1
/// instead of waiting. Nested at any depth, on any thread, it therefore shrinks
/// rather than oversubscribes. A region that got less than it asked for grows back
/// when other regions release tokens while it still has queued tasks.
///
/// `f` runs on the calling thread, like rayon's `in_place_scope` (not `rayon::scope`,
/// which moves to a pool thread): the caller's thread is the region's own thread.
///
/// Returns what `f` returns, after every task spawned in the region has finished.
/// Every token the region held is back in the budget when `scope` returns or
/// unwinds.
///
/// # Panics
///
/// If `f` or a spawned task panics, the panic is resumed here with its original
/// payload once every task has finished (the panic of `f` wins over a task's; of
/// several tasks, the first recorded). In a child process forked while this region
/// had tasks running on other threads, waiting for them panics with an explanation
/// instead of hanging.
///
/// # Blocking
///
/// Never waits to start. At its end it waits for the region's tasks, running
/// queued ones on the calling thread meanwhile.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let total = budget::stats().total;
/// budget::scope(|outer| {
///     assert_eq!(outer.width(), total); // nothing else is running
///     budget::scope(|inner| {
///         // The outer region holds every core: the inner one runs inline.
///         assert_eq!(inner.width(), 1);
///     });
/// });
/// ```
pub fn scope<'scope, F, R>(f: F) -> R
where
    F: FnOnce(&Scope<'scope>) -> R,
{
    scope_with(usize::MAX, f)
}

/// Opens a parallel region that asks for at most `max` cores.
///
/// As [`scope`], with the request capped at `max` (and at the budget's total). A
/// `max` of 0 is taken as 1: a region always has its own thread. On a worker of a
/// rayon pool that is not budget's, an outermost region asks for at most its share,
/// `max(1, total / threads of that pool)` (see `open.rs`).
///
/// # Panics
///
/// As [`scope`].
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// budget::scope_with(2, |s| {
///     assert!(s.width() <= 2);
///     assert_eq!(s.requested(), 2.min(budget::stats().total));
/// });
/// ```
pub fn scope_with<'scope, F, R>(max: usize, f: F) -> R
where
    F: FnOnce(&Scope<'scope>) -> R,
{
    // The region's state in this frame (returned in place), the handle beside it: a
    // state built, then moved, cost a copy that stalled on its own fresh stores
    // (region entry 7 ns → 24 ns, `benches/core.rs`).
    let mut scope = Scope {
        open: RegionState::enter_in_scope(max),
        marker: PhantomData,
    };
    scope.open.register();
    let result = {
        let _body = context::set_frame(scope.frame(false));
        catch_unwind(AssertUnwindSafe(|| f(&scope)))
    };
    // Tasks borrow from the caller's stack: wait for them even if `f` panicked.
    let result = match (scope.open.wait_for_tasks(), result) {
        // Waiting panicked (a forked child: see `help_until`); `f`'s own panic, if
        // any, is discarded.
        (Some(Err(payload)), Err(extra)) => {
            job::discard(extra);
            Err(payload)
        }
        (Some(Err(payload)), Ok(value)) => {
            drop(value);
            Err(payload)
        }
        (_, result) => result,
    };
    // SAFETY: the one close of the region's state; `scope` is not used after (its
    // drop runs no code: the state has no drop glue).
    let task_panic = unsafe { scope.open.close() };
    match (result, task_panic) {
        (Err(payload), extra) => job::resume_first(payload, extra),
        (Ok(value), Some(payload)) => {
            drop(value);
            resume_unwind(payload)
        }
        (Ok(value), None) => value,
    }
}

/// A parallel region: its width, and the tasks that run on it.
///
/// Made by [`scope`] or [`scope_with`] and passed to their closure, and to every
/// task spawned in it. Tasks may borrow anything that outlives the region.
///
/// # Borrow rules
///
/// A task may not borrow what the region outlives: a local of the region's closure
/// does not live long enough.
///
/// ```compile_fail,E0597
/// budget_core::scope(|s| {
///     let local = vec![1, 2, 3];
///     s.spawn(|_| assert_eq!(local.len(), 3));
/// });
/// ```
///
/// Tasks run on other threads: what they capture must be `Send` (`spawn`, `join`)...
///
/// ```compile_fail,E0277
/// let shared = std::rc::Rc::new(1);
/// budget_core::scope(|s| s.spawn(move |_| assert_eq!(*shared, 1)));
/// ```
///
/// ...and a `for_each` body, called from several threads at once, must be `Sync`.
///
/// ```compile_fail,E0277
/// let count = std::cell::Cell::new(0);
/// budget_core::scope(|s| s.for_each(0..4, |_| count.set(count.get() + 1)));
/// ```
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let mut halves = [0u64; 2];
/// let data: Vec<u64> = (1..=1000).collect();
/// budget::scope(|s| {
///     let (lo, hi) = halves.split_at_mut(1);
///     let (a, b) = data.split_at(500);
///     s.spawn(move |_| lo[0] = a.iter().sum());
///     s.spawn(move |_| hi[0] = b.iter().sum());
/// });
/// assert_eq!(halves[0] + halves[1], 500_500);
/// ```
pub struct Scope<'scope> {
    /// The region's state: its tokens, width, shared state and place in its tree.
    pub(super) open: RegionState,
    /// Invariant in 'scope, as rayon's Scope: tasks may borrow for exactly 'scope.
    marker: PhantomData<&'scope mut &'scope ()>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("requested", &self.requested())
            .field("width", &self.width())
            .finish_non_exhaustive()
    }
}

impl<'scope> Scope<'scope> {
    /// The number of cores this region may use right now, the calling thread
    /// included: always at least 1, never more than [`requested`](Scope::requested),
    /// and it only grows while the region is open.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// budget::scope(|s| assert!(s.width() >= 1 && s.width() <= s.requested()));
    /// ```
    #[inline]
    pub fn width(&self) -> usize {
        self.open.width()
    }

    /// The width this region asked for: `max` of [`scope_with`] (or the budget's
    /// total for [`scope`]), capped at the total and at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// budget::scope_with(1, |s| assert_eq!(s.requested(), 1));
    /// ```
    pub fn requested(&self) -> usize {
        self.open.requested()
    }

    /// `integration::ScopeHooks::with_demand`: see there.
    pub(crate) fn with_demand_hook<R>(
        &self,
        on_grow: impl Fn(usize) + Send + Sync + 'static,
        f: impl FnOnce() -> R,
    ) -> R {
        self.open.with_demand(on_grow, f)
    }

    /// This region's frame: its body (`task == false`) or one of its tasks.
    #[inline]
    pub(super) fn frame(&self, task: bool) -> context::Frame {
        self.open.frame(task)
    }

    /// Whether the current thread runs this region's body directly: the thread that
    /// opened it, not inside one of its tasks (`spawn`, `join`'s and `for_each`'s
    /// closures) nor inside a region nested in it. See
    /// [`integration::ScopeHooks::runs_body`](crate::integration::ScopeHooks::runs_body).
    #[inline]
    pub(crate) fn runs_body_hook(&self) -> bool {
        context::frame() == self.frame(false)
    }

    /// `integration::ScopeHooks::id`.
    pub(crate) fn id_hook(&self) -> std::num::NonZeroUsize {
        self.open.id()
    }

    #[cfg(test)]
    pub(crate) fn shared_for_tests(&self) -> &Arc<Region> {
        self.open.shared()
    }
}
