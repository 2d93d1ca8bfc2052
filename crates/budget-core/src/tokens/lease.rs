//! [`Lease`]: tokens taken from the budget directly, for code that manages its own
//! threads (a native library's pool, a rayon pool, a Python thread) rather than
//! running a region.

use std::sync::Arc;

use crate::pool::process;
use crate::pool::registry::Registry;
use crate::tokens::token::{Grower, Wanted};

/// Tokens held outside any region, returned to the budget on drop.
///
/// A lease is how a consumer that is not a `budget_core::scope` (a BLAS library's thread
/// pool, an external pool) counts against the budget. It never waits: it takes what
/// is free now, possibly nothing. With [`Lease::want`] it also registers demand for
/// what it lacks, like a region that fell short: tokens released later (and, in a
/// process sharing an outside budget, tokens its supplier brings) are handed to it,
/// oldest demand first, still without anyone waiting.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let total = budget::stats().total;
/// let lease = budget::Lease::try_new(total);
/// assert_eq!(lease.count(), total); // nothing else runs
/// budget::scope(|s| assert_eq!(s.width(), 1)); // the lease holds every core
/// drop(lease);
/// assert_eq!(budget::stats().in_use, 0);
/// ```
#[must_use = "a lease returns its tokens as soon as it is dropped"]
pub struct Lease {
    registry: &'static Registry,
    /// Tokens held, not counting those granted to `demand` since it was last settled.
    count: usize,
    /// The registered demand of [`Lease::want`], if any: a grower in the budget's
    /// hand-off list until [`Lease::stop_wanting`] or drop.
    demand: Option<Arc<Wanted>>,
    /// Whether its tokens count in `stats().leased` (false for a lease that stands
    /// for a region, [`Lease::try_new_for_region`]).
    counted: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("count", &self.count())
            .field("wanting", &self.wanting())
            .finish()
    }
}

impl Lease {
    /// Takes up to `max` free tokens, without waiting; the lease may hold fewer,
    /// or none. In a process sharing an outside budget (make's jobserver, a node
    /// budget), outside tokens that can be had at once count as free.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let lease = budget::Lease::try_new(1);
    /// assert!(lease.count() <= 1);
    /// ```
    #[inline]
    pub fn try_new(max: usize) -> Lease {
        Lease::take(max, true)
    }

    /// As [`Lease::try_new`], for tokens an integration holds for a region (budget's
    /// Python module holds, in a process sharing a node budget, the demand for the
    /// rest of a `with budget.region()` block's request in one): its tokens count as
    /// held by a region, not by a lease, in [`Stats`](crate::Stats)'s `leased` and
    /// narrowing causes. Count the region itself with
    /// [`integration::note_region`](crate::integration::note_region).
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let before = budget::stats().leased;
    /// let region = budget::Lease::try_new_for_region(1);
    /// assert_eq!(budget::stats().leased, before);
    /// # drop(region);
    /// ```
    pub fn try_new_for_region(max: usize) -> Lease {
        Lease::take(max, false)
    }

    #[inline]
    fn take(max: usize, counted: bool) -> Lease {
        let registry = process::global();
        let count = registry.tokens.take(max);
        let mut lease = Lease {
            registry,
            count: 0,
            demand: None,
            counted,
        };
        lease.fold(count);
        lease
    }

    /// The number of tokens held, including those handed to it since [`Lease::want`]
    /// (a snapshot: a wanting lease may be handed more right after).
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// assert_eq!(budget::Lease::try_new(0).count(), 0);
    /// ```
    pub fn count(&self) -> usize {
        self.count + self.demand.as_ref().map_or(0, |d| d.granted())
    }

    /// Takes up to `more` additional free tokens now and registers demand for the
    /// rest: tokens released later in this process (and, in a process sharing a node
    /// budget or make's jobserver, tokens its supplier fetches for this demand) are
    /// handed to the lease, oldest demand first, until it got `more` in all or
    /// [`Lease::stop_wanting`] is called. Never waits; returns how many it took now.
    /// Calling it again adds to the demand still open.
    ///
    /// This is how a thread that runs anyway without a token (a Python thread whose
    /// region found none free) is paid from the next release before a new consumer
    /// takes it, as a region that overcommitted owes its own token.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let total = budget::stats().total;
    /// let all = budget::Lease::try_new(total);
    /// let mut late = budget::Lease::try_new(1);
    /// assert_eq!(late.want(1), 0); // nothing free: the demand is registered
    /// assert_eq!(late.wanting(), 1);
    /// drop(all); // the first token released goes to the waiting lease
    /// assert_eq!((late.count(), late.wanting()), (1, 0));
    /// drop(late);
    /// assert_eq!(budget::stats().in_use, 0);
    /// ```
    pub fn want(&mut self, more: usize) -> usize {
        let now = self.try_grow(more);
        let missing = more - now;
        if missing == 0 || !self.registry.is_current() {
            return now;
        }
        match &self.demand {
            Some(demand) => {
                demand.add(missing);
                self.registry.tokens.poke();
            }
            None => {
                let demand = Arc::new(Wanted::new(missing));
                self.demand = Some(Arc::clone(&demand));
                // Registering looks for tokens freed meanwhile, and asks the supplier.
                self.registry.tokens.register(demand);
            }
        }
        now
    }

    /// Tokens still wanted by [`Lease::want`] and not yet handed over.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// assert_eq!(budget::Lease::try_new(0).wanting(), 0);
    /// ```
    pub fn wanting(&self) -> usize {
        self.demand.as_ref().map_or(0, |d| d.wants())
    }

    /// Withdraws the demand of [`Lease::want`]: no token is handed to the lease after
    /// this returns; those handed over already stay held.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let mut lease = budget::Lease::try_new(0);
    /// lease.want(1);
    /// lease.stop_wanting();
    /// assert_eq!(lease.wanting(), 0);
    /// ```
    pub fn stop_wanting(&mut self) {
        if let Some(demand) = self.demand.take() {
            if self.registry.is_current() {
                let grower: Arc<dyn Grower> = demand.clone();
                // After this no grant reaches `demand` (grants run under the same lock).
                self.registry.tokens.unregister(&grower);
            }
            demand.close();
            self.fold(demand.take_granted());
        }
    }

    /// Takes up to `more` additional free tokens, without waiting; returns how many
    /// it took.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let mut lease = budget::Lease::try_new(0);
    /// let got = lease.try_grow(1);
    /// assert_eq!(lease.count(), got);
    /// ```
    pub fn try_grow(&mut self, more: usize) -> usize {
        let got = self.registry.tokens.take(more);
        self.fold(got);
        got
    }

    /// Returns up to `n` tokens to the budget now, keeping the rest; returns how many
    /// it gave back.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let mut lease = budget::Lease::try_new(1);
    /// let held = lease.count();
    /// assert_eq!(lease.shrink(5), held);
    /// assert_eq!(lease.count(), 0);
    /// ```
    #[inline]
    pub fn shrink(&mut self, n: usize) -> usize {
        if let Some(demand) = &self.demand {
            // Fold in what was handed over so far; later grants add to `granted` anew.
            let granted = demand.take_granted();
            self.fold(granted);
        }
        let n = n.min(self.count);
        self.count -= n;
        if self.counted {
            self.registry.tokens.counters.lease_sub(n);
        }
        if self.registry.is_current() {
            self.registry.tokens.release(n);
        }
        n
    }
}

impl Lease {
    /// Adds tokens taken or handed to the lease to its count.
    #[inline]
    fn fold(&mut self, got: usize) {
        self.count += got;
        if self.counted {
            self.registry.tokens.counters.lease_add(got);
        }
    }
}

impl Drop for Lease {
    #[inline]
    fn drop(&mut self) {
        // The common lease never wanted: skip the demand's bookkeeping.
        if self.demand.is_some() {
            self.stop_wanting();
        }
        self.shrink(self.count);
    }
}
