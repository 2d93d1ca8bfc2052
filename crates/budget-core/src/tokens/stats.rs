//! The statistics snapshot, [`Stats`], and the counters behind it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::tokens::tally::{self, Kind};

/// A snapshot of the process-wide budget, from [`stats()`](crate::stats()).
///
/// Counters are read one by one without a lock, so fields taken while regions come
/// and go may disagree by a few counts; with no region running they are exact.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let before = budget::stats();
/// budget::scope(|s| assert!(s.width() >= 1));
/// let after = budget::stats();
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
    /// Regions that got a smaller width than they asked for at entry. Each is
    /// counted under one cause, the first that applies: `narrowed_by_processes`;
    /// for a region nested in another, `narrowed_by_regions` (its enclosing regions
    /// hold tokens); `narrowed_by_leases`; else `narrowed_by_regions`.
    pub grants_below_request: u64,
    /// Of `grants_below_request`: narrowed in a process that shares an outside budget
    /// (make's jobserver, a node budget, `budget run`) while other processes held the
    /// tokens it could not take.
    pub narrowed_by_processes: u64,
    /// Of `grants_below_request`: an outermost region narrowed while
    /// [`Lease`](crate::Lease)s held tokens of this process (an integration's, your
    /// own), and not by other processes.
    pub narrowed_by_leases: u64,
    /// Of `grants_below_request`: the rest, narrowed by other regions of this process.
    pub narrowed_by_regions: u64,
    /// Tokens held by leases now (included in `in_use`).
    pub leased: usize,
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
            "budget: {} cores, {} in use (peak {}, {} leased), {} regions ({} narrowed: {} by \
             regions, {} by leases, {} by other processes; {} tokens regrown, {} overcommitted), \
             {} worker threads",
            self.total,
            self.in_use,
            self.peak_in_use,
            self.leased,
            self.regions,
            self.grants_below_request,
            self.narrowed_by_regions,
            self.narrowed_by_leases,
            self.narrowed_by_processes,
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

/// Why a region got less than it asked for, when it is not other regions of this
/// process (see [`Stats::grants_below_request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NarrowedBy {
    /// Other processes hold the outside tokens this process could not take.
    Processes,
    /// Leases hold tokens of this process.
    Leases,
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

    /// Counts a narrowed region's cause when it is not other regions of this process
    /// (those are the rest of `Narrowed`).
    pub(crate) fn note_cause(&self, cause: NarrowedBy) {
        match cause {
            NarrowedBy::Processes => tally::bump(Kind::NarrowedByProcesses),
            NarrowedBy::Leases => tally::bump(Kind::NarrowedByLeases),
        }
    }

    /// Tokens held by leases now: a sum over every thread's tally (a walk of the
    /// tally slots; read at `stats()` and for the cause of an outermost narrowed
    /// region, never on a fast path).
    pub(crate) fn leased(&self) -> usize {
        tally::sum(Kind::Leased) as usize
    }

    /// `n` more tokens held by leases (a per-thread tally: no shared write).
    #[inline]
    pub(crate) fn lease_add(&self, n: usize) {
        if n > 0 {
            tally::add(Kind::Leased, n as u64);
        }
    }

    /// `n` fewer tokens held by leases.
    #[inline]
    pub(crate) fn lease_sub(&self, n: usize) {
        if n > 0 {
            tally::add(Kind::Leased, (n as u64).wrapping_neg());
        }
    }

    pub(crate) fn note_regrown(&self, n: usize) {
        self.tokens_regrown.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, total: usize, free: usize, worker_threads: usize) -> Stats {
        let narrowed = tally::sum(Kind::Narrowed);
        let by_processes = tally::sum(Kind::NarrowedByProcesses);
        let by_leases = tally::sum(Kind::NarrowedByLeases);
        Stats {
            total,
            in_use: total - free.min(total),
            peak_in_use: self.peak_in_use.load(Ordering::Relaxed),
            regions: tally::sum(Kind::Regions),
            grants_below_request: narrowed,
            narrowed_by_processes: by_processes,
            narrowed_by_leases: by_leases,
            narrowed_by_regions: narrowed.saturating_sub(by_processes + by_leases),
            leased: self.leased(),
            tokens_regrown: self.tokens_regrown.load(Ordering::Relaxed),
            overcommit: tally::sum(Kind::Overcommit),
            worker_threads,
        }
    }
}
