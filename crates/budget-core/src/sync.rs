//! The synchronisation primitives of the token protocol, behind one shim.
//!
//! Normally these are `std` atomics and `parking_lot` locks. Built with
//! `RUSTFLAGS="--cfg budget_loom"`, they are loom's, so the protocol in
//! [`crate::token`] and [`crate::event`] is model-checked over every interleaving
//! (`scripts/test.sh` runs those models). The region state (`region.rs`, `tree.rs`)
//! uses it too, so a model runs on the real `Region` (`region_loom_tests.rs`); the
//! rest of the crate holds process-wide statics, which loom cannot model.

#[cfg(budget_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

#[cfg(not(budget_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

/// A mutex whose `lock` returns the guard directly on both backends.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(Inner<T>);

#[cfg(budget_loom)]
type Inner<T> = loom::sync::Mutex<T>;
#[cfg(not(budget_loom))]
type Inner<T> = parking_lot::Mutex<T>;

/// The guard of [`Mutex`].
#[cfg(budget_loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
/// The guard of [`Mutex`].
#[cfg(not(budget_loom))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(Inner::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(budget_loom)]
        return self
            .0
            .lock()
            .expect("no panics while a budget lock is held");
        #[cfg(not(budget_loom))]
        return self.0.lock();
    }
}

/// A condition variable taking and returning the guard by value on both backends.
#[derive(Debug, Default)]
pub(crate) struct Condvar(CondInner);

#[cfg(budget_loom)]
type CondInner = loom::sync::Condvar;
#[cfg(not(budget_loom))]
type CondInner = parking_lot::Condvar;

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(CondInner::new())
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        #[cfg(budget_loom)]
        return self
            .0
            .wait(guard)
            .expect("no panics while a budget lock is held");
        #[cfg(not(budget_loom))]
        {
            let mut guard = guard;
            self.0.wait(&mut guard);
            guard
        }
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}
