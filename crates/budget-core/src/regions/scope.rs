//! Parallel regions: [`scope`], [`scope_with`] and the [`Scope`] handle with its
//! task API (`spawn`, `join`, `for_each`).

use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::pool::process;
use crate::pool::registry::Registry;
use crate::regions::context;
use crate::regions::job::{self, Outliving};
use crate::regions::region::Region;
use crate::tokens::own::OwnToken;

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

/// What an outermost region asks for: `max`, clamped to `1..=total`, and on a worker
/// of a rayon pool that is not budget's (a plain-rayon application's `par_iter`
/// calling a library that uses budget) at most its share of the cores,
/// `max(1, total / threads of that pool)`: every thread of that loop may open such a
/// region, and a region that took the tokens its siblings between two calls did not
/// hold left them to run unpaid (16 images: 40 of 64 regions overcommitted). A
/// worker of budget's own pools is inside a region already and never gets here.
#[inline]
fn foreign_share(max: usize, total: usize) -> usize {
    let max = max.clamp(1, total);
    match rayon_core::current_thread_index() {
        None => max,
        Some(_) => max.min((total / rayon_core::current_num_threads()).max(1)),
    }
}

/// Opens a parallel region that asks for at most `max` cores.
///
/// As [`scope`], with the request capped at `max` (and at the budget's total). A
/// `max` of 0 is taken as 1: a region always has its own thread. On a worker of a
/// rayon pool that is not budget's, an outermost region asks for at most its share,
/// `max(1, total / threads of that pool)` (see `foreign_share`).
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
    let registry = process::global();
    let tokens = &registry.tokens;
    let nested = context::in_region();
    let requested = if nested {
        max.clamp(1, tokens.total())
    } else {
        foreign_share(max, tokens.total())
    };
    let own = OwnToken::take(nested, tokens);
    // Free tokens first; in a process sharing an outside budget, outside ones that
    // can be had at once (a region never waits: one non-blocking try per token).
    let width = 1 + tokens.take(requested - 1);
    tokens
        .counters
        .note_region(width < requested, own.overcommitted());
    if width < requested && (!nested || tokens.shares()) {
        // A cause other than the enclosing regions is possible (`Stats`).
        tokens.note_cause(nested);
    }
    let span = tracing::trace_span!(
        "budget.region",
        requested,
        width,
        regrown = tracing::field::Empty
    );
    let _entered = span.enter();

    let scope = Scope {
        registry,
        requested,
        initial_width: width,
        own,
        shared: OnceLock::new(),
        root: root_of_parent(context::frame()),
        id: std::sync::atomic::AtomicUsize::new(0),
        marker: PhantomData,
    };
    if scope.own.owes() {
        // Runs unpaid: register now, so the first token freed pays for this thread
        // (rare path: an outside thread that found every token taken).
        scope.shared();
    }
    let result = {
        let _in_region = context::enter();
        let result = {
            let _body = context::set_frame(scope.frame(false));
            catch_unwind(AssertUnwindSafe(|| f(&scope)))
        };
        // Tasks borrow from the caller's stack: wait for them even if `f` panicked.
        let waited = scope.shared.get().map(|shared| {
            catch_unwind(AssertUnwindSafe(|| {
                shared.help_until(|| shared.pending.load(Ordering::SeqCst) == 0)
            }))
        });
        match (waited, result) {
            // Waiting panicked (a forked child: see `help_until`); `f`'s own panic,
            // if any, is discarded.
            (Some(Err(payload)), Err(extra)) => {
                job::discard(extra);
                Err(payload)
            }
            (Some(Err(payload)), Ok(value)) => {
                drop(value);
                Err(payload)
            }
            (_, result) => result,
        }
    };

    let final_width = scope.shared.get().map_or(width, |shared| shared.close());
    // Final now: grants stopped at `close` (or never started: no shared state).
    let own = scope.own();
    if final_width > width {
        span.record("regrown", final_width - width);
    }
    if registry.is_current() {
        tokens.release(final_width - 1 + own.returned_at_exit());
    }
    let task_panic = scope.shared.get().and_then(|shared| shared.take_panic());
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
    registry: &'static Registry,
    pub(super) requested: usize,
    initial_width: usize,
    /// How the region's own thread is paid for (`own.rs`), until the shared state
    /// exists; then `Region::own` is.
    own: OwnToken,
    /// Made on the first task: a region that spawns nothing allocates nothing.
    shared: OnceLock<Arc<Region>>,
    /// The outermost region of this region's tree (`tree.rs`); `None` when this is
    /// it. It outlives this region (this one runs inside its body or tasks).
    root: Option<Outliving<Scope<'static>>>,
    /// The region's [`RegionId`](crate::integration::RegionId), 0 until asked for.
    id: std::sync::atomic::AtomicUsize,
    /// Invariant in 'scope, as rayon's Scope: tasks may borrow for exactly 'scope.
    marker: PhantomData<&'scope mut &'scope ()>,
}

/// The root of the tree that the region running `frame` belongs to (`None` outside
/// every region: a new region is a root).
#[inline]
fn root_of_parent(frame: context::Frame) -> Option<Outliving<Scope<'static>>> {
    // SAFETY: a frame's scope is alive while the frame is current (`Frame`), and the
    // root of its tree outlives every region nested in it, so the region being
    // opened; only lifetime-independent fields are read through it (registry,
    // widths, the shared state).
    let parent = unsafe { Outliving::<Scope<'static>>::from_addr(frame.scope) }?;
    Some(parent.get().root.unwrap_or(parent))
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("requested", &self.requested)
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
        self.shared
            .get()
            .map_or(self.initial_width, |shared| shared.width())
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
        self.requested
    }

    /// `integration::ScopeHooks::with_demand`: see there.
    pub(crate) fn with_demand_hook<R>(
        &self,
        on_grow: impl Fn(usize) + Send + Sync + 'static,
        f: impl FnOnce() -> R,
    ) -> R {
        if self.initial_width >= self.requested && !self.own().owes() {
            return f(); // nothing to grow into
        }
        self.shared().with_demand(Arc::new(on_grow), f)
    }

    /// True when queued work could not run sooner than inline: the region has width
    /// 1 and no token is free to grow it. A hint, read without ordering: `join` and
    /// `for_each` check it again at their next call or chunk.
    pub(super) fn alone(&self) -> bool {
        self.width() == 1 && !self.registry.tokens.may_grow() && !self.tree_can_help()
    }

    /// Whether an idle thread of this region's tree could run a queued task now: a
    /// waiter in `help_until`, or a free slot of the root (see `tree.rs`).
    fn tree_can_help(&self) -> bool {
        match self.root {
            None => self
                .shared
                .get()
                .is_some_and(|region| region.tree.waiting() > 0),
            Some(root) => {
                let root = root.get();
                match root.shared.get() {
                    None => root.initial_width > 1,
                    Some(region) => region.tree.waiting() > 0 || region.has_free_slot(),
                }
            }
        }
    }

    /// This region's frame: its body (`task == false`) or one of its tasks.
    #[inline]
    pub(super) fn frame(&self, task: bool) -> context::Frame {
        context::Frame::of(self, task)
    }

    /// Whether the current thread runs this region's body directly: the thread that
    /// opened it, not inside one of its tasks (`spawn`, `join`'s and `for_each`'s
    /// closures) nor inside a region nested in it. See
    /// [`integration::ScopeHooks::runs_body`](crate::integration::ScopeHooks::runs_body).
    #[inline]
    pub(crate) fn runs_body_hook(&self) -> bool {
        context::frame() == self.frame(false)
    }

    /// `integration::ScopeHooks::id`: numbered on first ask, from a process-wide
    /// counter (a region nobody asks costs nothing).
    pub(crate) fn id_hook(&self) -> std::num::NonZeroUsize {
        use std::sync::atomic::AtomicUsize;
        // Relaxed both: a number, no data published with it; the compare-exchange
        // keeps the first number given if two threads ask at once.
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let mut id = self.id.load(Ordering::Relaxed);
        if id == 0 {
            let fresh = NEXT.fetch_add(1, Ordering::Relaxed);
            id = match self
                .id
                .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => fresh,
                Err(first) => first,
            };
        }
        std::num::NonZeroUsize::new(id).expect("region ids start at 1 and do not wrap")
    }

    /// How the region's own thread is paid for (`own.rs`): the shared state's once
    /// it exists (grants change it there), else the state taken at entry.
    #[inline]
    fn own(&self) -> &OwnToken {
        self.shared.get().map_or(&self.own, |shared| &shared.own)
    }

    #[cfg(test)]
    pub(crate) fn shared_for_tests(&self) -> &Arc<Region> {
        self.shared()
    }

    pub(super) fn shared(&self) -> &Arc<Region> {
        self.shared.get_or_init(|| {
            let tree = self.root.map(|root| root.get().shared().tree.clone());
            Region::new(
                self.registry,
                self.requested,
                self.initial_width,
                self.own.snapshot(),
                tree,
            )
        })
    }
}
