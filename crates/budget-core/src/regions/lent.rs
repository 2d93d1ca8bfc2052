//! [`Lent`]: where a region's `join`s lend their second halves to the region's other
//! threads when the joining thread holds no deque of the region (`lanes.rs`): a
//! fixed table, made at the region's first such lend, so that later queued or stolen
//! `join`s allocate nothing.
//!
//! A place's state is one word, `generation << 2 | tag`:
//!
//! - `FREE` → `FILLING` (the lender's compare-and-swap, a new generation) → `LENT`
//!   (the lender's SeqCst store, after it wrote the job);
//! - `LENT` → `TAKEN` (a thief's compare-and-swap; it copies the job) → `FREE`;
//! - or `LENT` → `FREE` (the lender takes its loan back, compare-and-swap on the exact
//!   word it stored: a place freed and lent again since has another generation, so a
//!   lender never takes back someone else's loan).
//!
//! Each loan is therefore run by exactly one thread: the one thief whose swap won, or
//! the lender whose take-back won.
//!
//! The table is cut into *lanes* of [`LANE`] places, a place to a cache line: a
//! thread lends in its own lane (by a per-thread number), so two threads recursing
//! at once write no common line. A lender takes the lowest place of its lane where it
//! holds no loan (it keeps the positions in a thread-local mask, so it reads no
//! place it cannot use) and a thief the lowest lent one of a lane, so a thief gets
//! the oldest loan of a recursion, the biggest half. A full lane is no error: the
//! lender runs the half itself.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicUsize as StdAtomic, Ordering as StdOrdering};

use crate::regions::job::JobRef;
// The shim: loom's atomics under `--cfg budget_loom` (the region models).
use crate::sync::{AtomicUsize, Ordering};

const FREE: usize = 0;
const FILLING: usize = 1;
const LENT: usize = 2;
const TAKEN: usize = 3;
const TAG: usize = 0b11;
const GENERATION: usize = TAG + 1;

/// Places per lane: the levels of one thread's recursion that can be lent at once
/// (deeper halves are small, and run by their lender).
pub(crate) const LANE: usize = 8;

thread_local! {
    /// This thread's lane number, before the modulo (threads are numbered in the order
    /// they first lend; `usize::MAX` until then).
    static LANE_NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The places of its lane (by position, in any region) where this thread has a
    /// loan not yet taken back or found stolen: a lend goes straight to the lowest
    /// other one (no scan of lines a thief reads), and with all [`LANE`] in use it is
    /// refused without reading a place (the deep levels of a recursion, most of its
    /// joins).
    static MINE: Cell<u32> = const { Cell::new(0) };
}

/// Clears this thread's mask for a region (its own table: positions held in an outer
/// region's table do not block it) and returns the outer one, for [`restore`] at the
/// region's exit. The opener does so when it takes the region's lane 0 (its first
/// `join` from the body, `Region::take_lane_zero`); a region whose body never joins
/// lends with the enclosing mask, which only refuses lends it could have made (each
/// place's swap decides who owns it). Regions nest strictly on a thread, and every
/// loan of a region is taken back before it exits.
#[inline]
pub(crate) fn enter_region() -> u32 {
    MINE.with(|m| m.replace(0))
}

/// Puts back the mask [`enter_region`] returned.
#[inline]
pub(crate) fn restore(outer: u32) {
    MINE.with(|m| m.set(outer));
}

/// This thread's lane number, before the modulo.
fn lane_number() -> usize {
    static NEXT: StdAtomic = StdAtomic::new(0);
    LANE_NUMBER.with(|mine| {
        if mine.get() == usize::MAX {
            // Relaxed: a number, no data published.
            mine.set(NEXT.fetch_add(1, StdOrdering::Relaxed));
        }
        mine.get()
    })
}

/// See the module docs.
pub(crate) struct Lent {
    places: Box<[Place]>,
    /// One past the highest place ever filled: readers scan no further (a region that
    /// never lends reads one word).
    high: AtomicUsize,
}

/// Aligned to a cache line: a lender's place is not on a line another lender writes.
#[repr(align(64))]
struct Place {
    state: AtomicUsize,
    /// Written by the lender between `FILLING` and `LENT`, read by the thief between
    /// `TAKEN` and `FREE`: the state word orders the two.
    job: UnsafeCell<Option<JobRef>>,
}

// SAFETY: `job` is accessed only by the one thread that owns the place's state at the
// time (`FILLING`: the lender; `TAKEN`: the thief), handed over through `state` with
// release/acquire (SeqCst) operations; `JobRef` is `Send`.
unsafe impl Sync for Lent {}

/// A loan: its place, and the word that marks it lent (its generation). Given to
/// [`Lent::take_back`] exactly once.
#[must_use = "a loan is taken back exactly once (Lent::take_back)"]
pub(crate) struct Loan {
    index: usize,
    lent: usize,
}

impl Lent {
    /// A table of `lanes` lanes (one per thread of the region that may lend at once).
    pub(crate) fn new(lanes: usize) -> Self {
        Lent {
            places: (0..lanes.max(1) * LANE)
                .map(|_| Place {
                    state: AtomicUsize::new(FREE),
                    job: UnsafeCell::new(None),
                })
                .collect(),
            high: AtomicUsize::new(0),
        }
    }

    /// Lends `job`, or gives `None` when this thread's lane is full (the lender runs
    /// it).
    pub(crate) fn lend(&self, job: JobRef) -> Option<Loan> {
        let mine = MINE.with(Cell::get);
        let lanes = self.places.len() / LANE;
        let first = (lane_number() % lanes) * LANE;
        // The lowest position this thread holds no loan in; another thread sharing
        // the lane may hold it (or the next ones): then the next, up to the lane's end.
        for position in (mine.trailing_ones() as usize)..LANE {
            if mine & (1 << position) != 0 {
                continue;
            }
            let index = first + position;
            let place = &self.places[index];
            let seen = place.state.load(Ordering::Relaxed);
            if seen & TAG != FREE {
                continue;
            }
            let filling = (seen & !TAG).wrapping_add(GENERATION) | FILLING;
            // Acquire: the last thief's read of `job` happened before its `FREE`.
            if place
                .state
                .compare_exchange(seen, filling, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SAFETY: `FILLING` makes the place ours alone (see the `Sync` impl).
            unsafe { *place.job.get() = Some(job) };
            // SeqCst, not Relaxed: a larger `high` seen here must be one a reader of
            // `high` sees too (the Dekker pairs read it first).
            if self.high.load(Ordering::SeqCst) <= index {
                self.high.fetch_max(index + 1, Ordering::SeqCst);
            }
            let lent = (filling & !TAG) | LENT;
            // SeqCst: publishes `job`, and is the lender's half of the Dekker pairs
            // with a leaving worker and a sleeping waiter (`Region::lend`).
            place.state.store(lent, Ordering::SeqCst);
            MINE.with(|m| m.set(mine | (1 << position)));
            return Some(Loan { index, lent });
        }
        None
    }

    /// Takes `loan` back if no thief took it: true when the lender must run the job
    /// itself, false when a thief runs (or ran) it. Called once per loan, on the
    /// lending thread.
    pub(crate) fn take_back(&self, loan: Loan) -> bool {
        MINE.with(|m| m.set(m.get() & !(1 << (loan.index % LANE))));
        self.places[loan.index]
            .state
            .compare_exchange(
                loan.lent,
                loan.lent & !TAG,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Takes the lowest lent job, for this thread to run.
    pub(crate) fn steal(&self) -> Option<JobRef> {
        let high = self.high.load(Ordering::SeqCst);
        for place in &self.places[..high] {
            let seen = place.state.load(Ordering::SeqCst);
            if seen & TAG != LENT {
                continue;
            }
            let taken = (seen & !TAG) | TAKEN;
            if place
                .state
                .compare_exchange(seen, taken, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                // SAFETY: `TAKEN` makes the place ours alone; the lender's SeqCst store
                // of `LENT`, read by our swap, published the job.
                let job = unsafe { (*place.job.get()).take() };
                // Release: our read of `job` happens before the next lender's write.
                place.state.store(seen & !TAG, Ordering::Release);
                return Some(job.expect("a lent place holds its job"));
            }
        }
        None
    }

    /// Whether a job is lent now (SeqCst loads: read in the Dekker pairs).
    pub(crate) fn any(&self) -> bool {
        let high = self.high.load(Ordering::SeqCst);
        self.places[..high]
            .iter()
            .any(|place| place.state.load(Ordering::SeqCst) & TAG == LENT)
    }
}

/// Loom models of the table's protocol (run with the others: `--cfg budget_loom`):
/// each loan runs exactly once, taken back or stolen, also when its place is lent
/// again while a thief looks. (A take-back made of a load and a store instead of one
/// compare-and-swap fails both: the job runs twice.)
#[cfg(all(test, budget_loom))]
mod loom_tests {
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use loom::thread;

    use super::Lent;
    use crate::regions::job::StackJob;

    /// A job that counts its runs, alive for the whole model (loom's threads are
    /// `'static`; a leaked box per execution).
    fn counting(runs: &Arc<AtomicUsize>) -> &'static StackJob<impl FnOnce() + Send, ()> {
        let runs = runs.clone();
        Box::leak(Box::new(StackJob::new(move || {
            runs.fetch_add(1, SeqCst);
        })))
    }

    #[test]
    fn loom_a_loan_is_taken_back_or_stolen_once() {
        loom::model(|| {
            let lent = Arc::new(Lent::new(1));
            let runs = Arc::new(AtomicUsize::new(0));
            let job = counting(&runs);
            // SAFETY: the job is leaked (alive for good) and runs once (asserted).
            let job_ref = unsafe { job.as_job_ref() };
            let loan = lent.lend(job_ref).unwrap();
            let thief = {
                let lent = lent.clone();
                thread::spawn(move || {
                    if let Some(job) = lent.steal() {
                        // SAFETY: as above; `steal` hands the loan out once.
                        unsafe { job.run() };
                    }
                })
            };
            if lent.take_back(loan) {
                // SAFETY: taken back: nobody else runs it.
                unsafe { job_ref.run() };
            }
            thief.join().unwrap();
            assert_eq!(runs.load(SeqCst), 1);
            assert!(!lent.any());
        });
    }

    #[test]
    fn loom_a_stale_loan_never_takes_back_the_next() {
        loom::model(|| {
            let lent = Arc::new(Lent::new(1));
            let (runs_a, runs_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (a, b) = (counting(&runs_a), counting(&runs_b));
            // SAFETY: both jobs are leaked and each runs once (asserted).
            let (a, b) = unsafe { (a.as_job_ref(), b.as_job_ref()) };
            let thief = {
                let lent = lent.clone();
                thread::spawn(move || {
                    if let Some(job) = lent.steal() {
                        // SAFETY: as above.
                        unsafe { job.run() };
                    }
                })
            };
            let loan_a = lent.lend(a).unwrap();
            if lent.take_back(loan_a) {
                // SAFETY: taken back: ours alone.
                unsafe { a.run() };
            }
            // The same place again, maybe while the thief holds it.
            if let Some(loan_b) = lent.lend(b) {
                if lent.take_back(loan_b) {
                    // SAFETY: as above.
                    unsafe { b.run() };
                }
            } else {
                // SAFETY: never lent: ours alone.
                unsafe { b.run() };
            }
            thief.join().unwrap();
            assert_eq!((runs_a.load(SeqCst), runs_b.load(SeqCst)), (1, 1));
        });
    }
}

#[cfg(all(test, not(budget_loom)))]
mod tests {
    use super::Lent;
    use crate::regions::job::StackJob;

    /// Each loan runs once: taken back by its lender, or stolen, never both; a place
    /// freed and lent again is not taken back by the earlier lender.
    #[test]
    fn a_loan_runs_once() {
        let lent = Lent::new(1);
        assert!(!lent.any() && lent.steal().is_none());
        let first = StackJob::new(|| 1);
        let second = StackJob::new(|| 2);
        let third = StackJob::new(|| 3);
        // SAFETY: the jobs live to the end of the test and each runs once below.
        let (a, b, c) = unsafe { (first.as_job_ref(), second.as_job_ref(), third.as_job_ref()) };
        let loan_a = lent.lend(a).unwrap();
        let loan_b = lent.lend(b).unwrap();
        let others: Vec<_> = (2..super::LANE).map(|_| lent.lend(c).unwrap()).collect();
        assert!(lent.lend(c).is_none(), "one lane");
        for loan in others {
            assert!(lent.take_back(loan));
        }
        assert!(lent.any());
        // The lowest loan is stolen first.
        let stolen = lent.steal().unwrap();
        assert!(!lent.take_back(loan_a), "stolen: not taken back");
        // SAFETY: stolen once, `first` alive.
        unsafe { stolen.run() };
        assert!(first.done());
        assert_eq!(first.into_result().unwrap(), 1);
        // The freed place is lent again; the old loan's word no longer matches.
        let loan_c = lent.lend(c).unwrap();
        assert!(lent.take_back(loan_b));
        assert_eq!(second.run_here().unwrap(), 2);
        assert!(lent.take_back(loan_c));
        assert!(!lent.any() && lent.steal().is_none());
        assert_eq!(third.run_here().unwrap(), 3);
    }
}
