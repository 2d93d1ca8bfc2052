//! [`Lease`]: tokens taken from the budget directly, for code that manages its own
//! threads (a native library's pool, a rayon pool) rather than running a region.

use crate::registry::{self, Registry};

/// Tokens held outside any region, returned to the budget on drop.
///
/// A lease is how a consumer that is not a `budget_core::scope` (a BLAS library's thread
/// pool, an external pool) counts against the budget. It never waits: it takes what
/// is free now, possibly nothing.
///
/// # Examples
///
/// ```
/// let total = budget_core::stats().total;
/// let lease = budget_core::Lease::try_new(total);
/// assert_eq!(lease.count(), total); // nothing else runs
/// budget_core::scope(|s| assert_eq!(s.width(), 1)); // the lease holds every core
/// drop(lease);
/// assert_eq!(budget_core::stats().in_use, 0);
/// ```
#[must_use = "a lease returns its tokens as soon as it is dropped"]
pub struct Lease {
    registry: &'static Registry,
    count: usize,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("count", &self.count).finish()
    }
}

impl Lease {
    /// Takes up to `max` free tokens, without waiting; the lease may hold fewer,
    /// or none.
    ///
    /// # Examples
    ///
    /// ```
    /// let lease = budget_core::Lease::try_new(1);
    /// assert!(lease.count() <= 1);
    /// ```
    pub fn try_new(max: usize) -> Lease {
        let registry = registry::global();
        let count = registry.tokens.try_acquire(max);
        Lease { registry, count }
    }

    /// The number of tokens held.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(budget_core::Lease::try_new(0).count(), 0);
    /// ```
    pub fn count(&self) -> usize {
        self.count
    }

    /// Takes up to `more` additional free tokens, without waiting; returns how many
    /// it took.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut lease = budget_core::Lease::try_new(0);
    /// let got = lease.try_grow(1);
    /// assert_eq!(lease.count(), got);
    /// ```
    pub fn try_grow(&mut self, more: usize) -> usize {
        let got = self.registry.tokens.try_acquire(more);
        self.count += got;
        got
    }

    /// Returns up to `n` tokens to the budget now, keeping the rest; returns how many
    /// it gave back.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut lease = budget_core::Lease::try_new(1);
    /// let held = lease.count();
    /// assert_eq!(lease.shrink(5), held);
    /// assert_eq!(lease.count(), 0);
    /// ```
    pub fn shrink(&mut self, n: usize) -> usize {
        let n = n.min(self.count);
        self.count -= n;
        if self.registry.is_current() {
            self.registry.tokens.release(n);
        }
        n
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shrink(self.count);
    }
}
