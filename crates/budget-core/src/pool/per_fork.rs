//! [`PerFork`]: process-wide state that a forked child makes anew instead of using
//! its parent's.
//!
//! A child of `fork` has one thread; locks in its parent's state may be held by
//! threads that do not exist in it, and handles in it name the parent's threads. So
//! such state is kept per *fork generation* ([`crate::pool::fork::generation`],
//! bumped in the child by budget-core's `pthread_atfork` handler): a look from a
//! newer generation makes a fresh value and leaks the parent's, never touching it.
//! The jobserver's held tokens (`external/jobserver.rs`) and budget-rayon's pool
//! cache live in one.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A value of this process's fork generation, made on first use (see the module docs).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use budget::integration::PerFork;
///
/// static CALLS: PerFork<AtomicUsize> = PerFork::new();
/// CALLS.get(|| AtomicUsize::new(0)).fetch_add(1, Ordering::Relaxed);
/// assert_eq!(CALLS.get(|| AtomicUsize::new(0)).load(Ordering::Relaxed), 1);
/// ```
#[derive(Debug)]
pub struct PerFork<T: 'static> {
    current: AtomicPtr<Stamped<T>>,
}

#[derive(Debug)]
struct Stamped<T> {
    generation: usize,
    value: T,
}

impl<T: Send + Sync + 'static> PerFork<T> {
    /// An empty cell, for a `static`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// static NAMES: budget::integration::PerFork<Vec<String>> =
    ///     budget::integration::PerFork::new();
    /// assert!(NAMES.get(Vec::new).is_empty());
    /// ```
    pub const fn new() -> Self {
        PerFork {
            current: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// This process's value, made with `make` if the process has none yet (its first
    /// look, or its first after a fork). Values are never freed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// static ONE: budget::integration::PerFork<u32> = budget::integration::PerFork::new();
    /// assert_eq!(*ONE.get(|| 1), 1);
    /// ```
    pub fn get(&self, make: impl FnOnce() -> T) -> &T {
        self.get_or_install(make, || {})
    }

    /// [`get`](Self::get), calling `installed` once, on the thread whose value was
    /// published, when a value is made for this process.
    pub(crate) fn get_or_install(&self, make: impl FnOnce() -> T, installed: impl FnOnce()) -> &T {
        let generation = crate::pool::fork::generation();
        // Acquire pairs with the AcqRel exchange below: a value is written before its
        // pointer is seen.
        let mut seen = self.current.load(Ordering::Acquire);
        if let Some(value) = Self::of(seen, generation) {
            return value;
        }
        let fresh = Box::into_raw(Box::new(Stamped {
            generation,
            value: make(),
        }));
        loop {
            match self
                .current
                .compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    installed();
                    // SAFETY: `fresh` came from Box::into_raw above; it is now leaked.
                    return unsafe { &(*fresh).value };
                }
                Err(other) => {
                    if let Some(value) = Self::of(other, generation) {
                        // Another thread of this process installed one first.
                        // SAFETY: `fresh` was never published, so we own it.
                        drop(unsafe { Box::from_raw(fresh) });
                        return value;
                    }
                    seen = other;
                }
            }
        }
    }

    /// Whether `value` is this process's value: false for one a parent made, in a
    /// forked child (a handle taken before the fork can tell its state is stale).
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// static ONE: budget::integration::PerFork<u32> = budget::integration::PerFork::new();
    /// let mine = ONE.get(|| 1);
    /// assert!(ONE.holds(mine));
    /// assert!(!ONE.holds(&1));
    /// ```
    pub fn holds(&self, value: &T) -> bool {
        let generation = crate::pool::fork::generation();
        Self::of(self.current.load(Ordering::Acquire), generation)
            .is_some_and(|mine| ptr::eq(mine, value))
    }

    /// The value behind `ptr` if it is of `generation`.
    fn of(ptr: *mut Stamped<T>, generation: usize) -> Option<&'static T> {
        // SAFETY: pointers in `current` come from Box::into_raw and are never freed.
        let stamped = unsafe { ptr.as_ref() }?;
        (stamped.generation == generation).then_some(&stamped.value)
    }
}

impl<T: Send + Sync + 'static> Default for PerFork<T> {
    fn default() -> Self {
        Self::new()
    }
}
