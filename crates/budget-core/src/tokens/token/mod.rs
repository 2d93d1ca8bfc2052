//! Core tokens: the process-wide count of free cores and its hand-off to regions
//! that want to grow.
//!
//! The protocol, its invariants and the argument for why no token is lost and no
//! growing region misses a release are in `README.md` beside this file.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::sync::{fence, AtomicUsize, Mutex, Ordering};
use crate::tokens::stats::{Counters, NarrowedBy};

#[cfg(all(test, budget_loom))]
mod loom_tests;

/// A region that got fewer tokens than it asked for and may take more later.
pub(crate) trait Grower: Send + Sync {
    /// How many more tokens the region could put to work right now (0 when it
    /// has no queued work or already has what it asked for).
    fn wants(&self) -> usize;

    /// Hands `n` tokens to the region. Called with the growers lock held, so a
    /// region that unregisters (under the same lock) never receives a token after.
    fn grant(&self, n: usize);
}

/// The demand of a [`crate::Lease::want`]: a grower that wants a number of tokens
/// and keeps what it is handed (the lease folds `granted` into its count).
///
/// `wanted` only grows outside the growers lock (`add`, by the lease's owner, before
/// a `poke`) and only shrinks under it (`grant`, whose `n` never exceeds what
/// `wants` returned under the same lock), so `grant`'s subtraction cannot wrap.
/// `close` runs after `unregister`, when no grant can come any more.
pub(crate) struct Wanted {
    /// Tokens still wanted. SeqCst: `add`'s write is one side of the Dekker pair with
    /// `release` (README, step 3), read by `rebalance` under the lock.
    wanted: AtomicUsize,
    /// Tokens granted and not yet folded into the lease's count.
    granted: AtomicUsize,
}

impl Wanted {
    pub(crate) fn new(n: usize) -> Self {
        Wanted {
            wanted: AtomicUsize::new(n),
            granted: AtomicUsize::new(0),
        }
    }

    /// Wants `n` more (call [`Tokens::poke`] after it).
    pub(crate) fn add(&self, n: usize) {
        self.wanted.fetch_add(n, Ordering::SeqCst);
    }

    /// Tokens granted since the last `take_granted`.
    pub(crate) fn granted(&self) -> usize {
        self.granted.load(Ordering::SeqCst)
    }

    /// Takes the count of tokens granted so far (they now belong to the caller).
    pub(crate) fn take_granted(&self) -> usize {
        self.granted.swap(0, Ordering::SeqCst)
    }

    /// Wants nothing more (after `unregister`).
    pub(crate) fn close(&self) {
        self.wanted.store(0, Ordering::SeqCst);
    }
}

impl Grower for Wanted {
    fn wants(&self) -> usize {
        self.wanted.load(Ordering::SeqCst)
    }

    fn grant(&self, n: usize) {
        self.wanted.fetch_sub(n, Ordering::SeqCst);
        self.granted.fetch_add(n, Ordering::SeqCst);
    }
}

/// Where a process that joined an outside budget (a jobserver, a node budget) gets
/// the tokens beyond those it holds; see `src/config/external/README.md`.
pub(crate) trait Supplier: Send + Sync {
    /// Called once the `Tokens` it serves is installed for good.
    fn start(&'static self, tokens: &'static Tokens);
    /// A registered region wants tokens and none is free: fetch some (asynchronously:
    /// this runs on a releasing or pushing thread and must not block).
    fn short(&self);
    /// A region or lease is starting and finds fewer free tokens than it asks for:
    /// take up to `n` outside tokens for it now, with one non-blocking attempt per
    /// token (never waiting for one), and return how many tokens of capacity the
    /// process gained. The caller moves them out of `outside` ([`Tokens::adopt`]).
    fn take_now(&self, n: usize) -> usize;
    /// Keeps `n` tokens of the process out of other processes' reach until `until`
    /// (library workers that busy-wait after a call): the supplier gives none of them
    /// back to the outside budget meanwhile.
    fn hold(&self, n: usize, until: std::time::Instant);
}

/// The budget's tokens: `free` plus the tokens every holder has equals the tokens the
/// process holds, `total - outside`.
pub(crate) struct Tokens {
    total: usize,
    /// Free tokens. Taken by compare-and-swap, returned by `fetch_add`. On a cache
    /// line of its own: under contention the CAS/add pair then moves one line, not
    /// also the line of the fields read next to it.
    free: CachePadded<AtomicUsize>,
    /// `growers.len()`, readable without the lock (see the README, step 3).
    growers_len: AtomicUsize,
    /// Regions waiting to grow, oldest first.
    growers: Mutex<Vec<Arc<dyn Grower>>>,
    pub(crate) counters: Counters,
    /// Tokens of `total` the process does not hold: always 0 without a supplier.
    /// Written only by the supplier (`deposit`, `withdraw`); not part of the hand-off
    /// protocol, so a plain std atomic even under loom.
    outside: std::sync::atomic::AtomicUsize,
    /// The outside budget this process joined, if any.
    supplier: Option<Box<dyn Supplier>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("total", &self.total)
            .field("free", &self.free())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// A budget of `total` tokens, all free. `total` is at least 1.
    pub(crate) fn new(total: usize) -> Self {
        debug_assert!(total >= 1);
        Tokens {
            total,
            free: CachePadded::new(AtomicUsize::new(total)),
            growers_len: AtomicUsize::new(0),
            growers: Mutex::new(Vec::new()),
            counters: Counters::default(),
            outside: std::sync::atomic::AtomicUsize::new(0),
            supplier: None,
        }
    }

    /// A budget of `total` tokens of which the process holds one (its implicit
    /// token); `supplier` brings the others when regions want them.
    pub(crate) fn joined(total: usize, supplier: Box<dyn Supplier>) -> Self {
        let tokens = Tokens::new(total);
        tokens.free.store(1, Ordering::SeqCst);
        tokens
            .outside
            .store(total - 1, std::sync::atomic::Ordering::SeqCst);
        Tokens {
            supplier: Some(supplier),
            ..tokens
        }
    }

    /// Starts the supplier, once this value is installed for good.
    pub(crate) fn start(&'static self) {
        if let Some(supplier) = &self.supplier {
            supplier.start(self);
        }
    }

    #[inline]
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Free tokens at this instant (a snapshot; it may change right after).
    pub(crate) fn free(&self) -> usize {
        self.free.load(Ordering::SeqCst)
    }

    /// `free()` for heuristics that order nothing (Relaxed: no write is published
    /// through it).
    #[inline]
    pub(crate) fn free_hint(&self) -> usize {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether a region at width 1 could still grow: a token is free, or a supplier
    /// may bring one (a hint, as `free_hint`).
    pub(crate) fn may_grow(&self) -> bool {
        self.free_hint() > 0 || self.supplier.is_some()
    }

    /// Takes up to `max` tokens for a region or lease that starts now, without ever
    /// waiting: free ones first, then, in a process that joined an outside budget,
    /// outside tokens its supplier can take at once (one non-blocking attempt each).
    /// Returns how many it took.
    ///
    /// This is what a block whose width is fixed at entry (a BLAS call, an OpenMP
    /// team, a Python region) needs: the supplier thread brings tokens only to
    /// registered demand, too late for a call that cannot grow.
    #[inline]
    pub(crate) fn take(&self, max: usize) -> usize {
        let got = self.try_acquire(max);
        if got < max && self.shares() {
            got + self.take_outside(max - got)
        } else {
            got
        }
    }

    /// The outside part of [`Tokens::take`]: the supplier takes up to `n` tokens of
    /// capacity now and they go straight to the taker (not through `free`, where an
    /// older grower would get them first: the taker asked first).
    #[cold]
    fn take_outside(&self, n: usize) -> usize {
        let got = self.supplier.as_ref().map_or(0, |s| s.take_now(n));
        if got > 0 {
            self.adopt(got);
        }
        got
    }

    /// Moves `n` tokens the supplier took for a taker at entry out of `outside`: the
    /// taker holds them. Conservation: `total - outside` rises by `n` and so does
    /// `Σ held`; `free` is unchanged.
    fn adopt(&self, n: usize) {
        let before = self
            .outside
            .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        debug_assert!(before >= n, "more tokens adopted than were outside");
        let held = self.total - (before - n);
        self.counters
            .note_in_use(held.saturating_sub(self.free_hint()));
    }

    /// Whether the process shares an outside budget (a jobserver, a node budget).
    #[inline]
    pub(crate) fn shares(&self) -> bool {
        self.supplier.is_some()
    }

    /// Counts the cause of a region's narrowing beyond "other regions" (already
    /// counted by `Counters::note_region`): other processes hold outside tokens it
    /// could not take; else, for an outermost region, leases hold tokens of this
    /// process. A region nested in another that is not narrowed by other processes
    /// is narrowed by the regions enclosing it, and the caller skips this (the
    /// common case stays as cheap as before).
    #[cold]
    pub(crate) fn note_cause(&self, nested: bool) {
        if self.shares() && self.held() < self.total {
            self.counters.note_cause(NarrowedBy::Processes);
        } else if !nested && self.counters.leased() > 0 {
            self.counters.note_cause(NarrowedBy::Leases);
        }
    }

    /// Takes up to `max` free tokens without ever waiting; returns how many it took.
    #[inline]
    pub(crate) fn try_acquire(&self, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        // Relaxed first read: the compare-and-swap below validates it.
        let mut current = self.free.load(Ordering::Relaxed);
        loop {
            if current == 0 {
                return 0;
            }
            let take = current.min(max);
            // SeqCst on success: a region that publishes demand and then reads
            // `free` (step 3 of the README) must be ordered against this take.
            match self.free.compare_exchange_weak(
                current,
                current - take,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    // Only a process that joined an outside budget has tokens
                    // outside (`supplier` never changes): the common path skips the
                    // load. Relaxed: a statistic, read next to `free`'s line.
                    let outside = match self.supplier {
                        Some(_) => self.outside.load(std::sync::atomic::Ordering::Relaxed),
                        None => 0,
                    };
                    let in_use = self.total.saturating_sub(outside + current - take);
                    self.counters.note_in_use(in_use);
                    return take;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Returns `n` tokens and hands them on to waiting regions, oldest first.
    #[inline]
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.free.fetch_add(n, Ordering::SeqCst);
        debug_assert!(before + n <= self.total, "more tokens released than exist");
        // Dekker pairing with `register` / `poke`: our SeqCst add precedes this
        // SeqCst load, theirs precede their load of `free`; one side sees the other.
        if self.growers_len.load(Ordering::SeqCst) > 0 {
            self.rebalance();
        }
    }

    /// Adds a region to the waiting list, then looks for tokens freed meanwhile.
    pub(crate) fn register(&self, grower: Arc<dyn Grower>) {
        {
            let mut list = self.growers.lock();
            list.push(grower);
            self.growers_len.store(list.len(), Ordering::SeqCst);
        }
        self.poke();
    }

    /// Removes a region from the waiting list. After this returns it is never
    /// granted a token again.
    pub(crate) fn unregister(&self, grower: &Arc<dyn Grower>) {
        let mut list = self.growers.lock();
        list.retain(|g| !Arc::ptr_eq(g, grower));
        self.growers_len.store(list.len(), Ordering::SeqCst);
    }

    /// Called by a registered region after its demand went up (it queued work):
    /// hands it tokens that were already free.
    pub(crate) fn poke(&self) {
        // Pairs with the fence-free SeqCst add in `release`: the caller made its
        // demand visible with a SeqCst write before calling us.
        fence(Ordering::SeqCst);
        if self.free.load(Ordering::SeqCst) > 0 {
            self.rebalance();
        } else if let Some(supplier) = &self.supplier {
            supplier.short();
        }
    }

    /// Moves free tokens to waiting regions, oldest first, under the growers lock.
    fn rebalance(&self) {
        let list = self.growers.lock();
        for grower in list.iter() {
            loop {
                let wants = grower.wants();
                if wants == 0 {
                    break;
                }
                let got = self.try_acquire(wants);
                if got == 0 {
                    if let Some(supplier) = &self.supplier {
                        supplier.short();
                    }
                    return;
                }
                self.counters.note_regrown(got);
                grower.grant(got);
            }
        }
    }
}

/// The supplier's side: tokens entering and leaving the process. Conservation:
/// `free + held by regions == held()` at every step, since `deposit` and
/// `withdraw` move tokens between `free` and `outside` only.
impl Tokens {
    /// Tokens the process holds now: its implicit one plus those its supplier got.
    pub(crate) fn held(&self) -> usize {
        self.total - self.outside.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Tokens no region holds: free ones and those the process does not hold.
    pub(crate) fn unused(&self) -> usize {
        self.free() + self.outside.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Adds `n` tokens the supplier got to `free` and hands them to growers.
    pub(crate) fn deposit(&self, n: usize) {
        self.outside
            .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        self.release(n);
    }

    /// Takes up to `max` free tokens out of the process (for the supplier to give
    /// back); returns how many.
    pub(crate) fn withdraw(&self, max: usize) -> usize {
        let mut current = self.free.load(Ordering::SeqCst);
        loop {
            let take = current.min(max);
            if take == 0 {
                return 0;
            }
            match self.free.compare_exchange_weak(
                current,
                current - take,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.outside
                        .fetch_add(take, std::sync::atomic::Ordering::SeqCst);
                    return take;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Moves `n` tokens that a grant handed to the supplier's reclaim grower out of
    /// the process (they left `free` through `rebalance`).
    pub(crate) fn reclaimed(&self, n: usize) {
        self.outside
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Keeps `n` tokens of this process out of other processes' reach until `until`
    /// ([`Supplier::hold`]); they stay free for this process's own regions. A no-op
    /// without an outside budget.
    pub(crate) fn hold_outside(&self, n: usize, until: std::time::Instant) {
        if let Some(supplier) = &self.supplier {
            supplier.hold(n, until);
        }
    }

    /// What registered regions want beyond what they hold.
    pub(crate) fn demand(&self) -> usize {
        self.growers.lock().iter().map(|g| g.wants()).sum()
    }
}
