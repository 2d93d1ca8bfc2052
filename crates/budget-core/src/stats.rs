//! The statistics snapshot, [`Stats`], and the counters behind it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::tally::{self, Kind};

/// A snapshot of the process-wide budget, from [`stats()`](crate::stats()).
///
/// Counters are read one by one without a lock, so fields taken while regions come
/// and go may disagree by a few counts; with no region running they are exact.
///
/// # Examples
///
/// ```
/// let before = budget_core::stats();
/// budget_core::scope(|s| assert!(s.width() >= 1));
/// let after = budget_core::stats();
/// assert_eq!(after.regions, before.regions + 1);
/// assert_eq!(after.in_use, 0); // every token is back
/// assert!(after.peak_in_use <= after.total);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Cores in the budget: detected, or set by `BUDGET_NUM_THREADS` or the
    /// [`Builder`](crate::Builder).
    pub total: usize,
    /// Tokens held by regions now (`total - free`).
    pub in_use: usize,
    /// The most tokens ever held at once.
    pub peak_in_use: usize,
    /// Regions entered since the process started (in a forked child, the parent's
    /// count included).
    pub regions: u64,
    /// Regions that got a smaller width than they asked for at entry.
    pub grants_below_request: u64,
    /// Tokens handed to regions after their entry (growing back).
    pub tokens_regrown: u64,
    /// Regions entered by a thread outside every region when no token was free: that
    /// thread runs anyway, one thread more than the budget.
    pub overcommit: u64,
    /// OS threads budget's pool has started (at most `total`).
    pub worker_threads: usize,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "budget: {} cores, {} in use (peak {}), {} regions ({} narrowed, {} tokens regrown, \
             {} overcommitted), {} worker threads",
            self.total,
            self.in_use,
            self.peak_in_use,
            self.regions,
            self.grants_below_request,
            self.tokens_regrown,
            self.overcommit,
            self.worker_threads
        )
    }
}

/// Counters of one budget. Relaxed everywhere: they order nothing, they only count.
/// Region entries are tallied per thread (`tally.rs`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    peak_in_use: AtomicUsize,
    tokens_regrown: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn note_in_use(&self, in_use: usize) {
        // A plain load first keeps the common case (no new peak) free of writes.
        if in_use > self.peak_in_use.load(Ordering::Relaxed) {
            self.peak_in_use.fetch_max(in_use, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn note_region(&self, narrowed: bool, overcommitted: bool) {
        tally::bump(Kind::Regions);
        if narrowed {
            tally::bump(Kind::Narrowed);
        }
        if overcommitted {
            tally::bump(Kind::Overcommit);
        }
    }

    pub(crate) fn note_regrown(&self, n: usize) {
        self.tokens_regrown.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, total: usize, free: usize, worker_threads: usize) -> Stats {
        Stats {
            total,
            in_use: total - free.min(total),
            peak_in_use: self.peak_in_use.load(Ordering::Relaxed),
            regions: tally::sum(Kind::Regions),
            grants_below_request: tally::sum(Kind::Narrowed),
            tokens_regrown: self.tokens_regrown.load(Ordering::Relaxed),
            overcommit: tally::sum(Kind::Overcommit),
            worker_threads,
        }
    }
}
