//! Core tokens: the process-wide count of free cores and its hand-off to regions
//! that want to grow.
//!
//! The protocol, its invariants and the argument for why no token is lost and no
//! growing region misses a release are in `README.md` beside this file.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::stats::Counters;
use crate::sync::{fence, AtomicUsize, Mutex, Ordering};

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

/// The budget's tokens: `free` plus the tokens every holder has equals `total`.
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
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Free tokens at this instant (a snapshot; it may change right after).
    pub(crate) fn free(&self) -> usize {
        self.free.load(Ordering::SeqCst)
    }

    /// `free()` for heuristics that order nothing (Relaxed: no write is published
    /// through it).
    pub(crate) fn free_hint(&self) -> usize {
        self.free.load(Ordering::Relaxed)
    }

    /// Takes up to `max` free tokens without ever waiting; returns how many it took.
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
                    self.counters.note_in_use(self.total - (current - take));
                    return take;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Returns `n` tokens and hands them on to waiting regions, oldest first.
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
                    return;
                }
                self.counters.note_regrown(got);
                grower.grant(got);
            }
        }
    }
}
