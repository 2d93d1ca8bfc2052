//! The synchronisation primitives of the token protocol, behind one shim.
//!
//! Normally these are `std` atomics and `std` locks (see [`plain`] for why not
//! `parking_lot`). Built with
//! `RUSTFLAGS="--cfg budget_loom"`, they are loom's, so the protocol in
//! [`crate::token`] and [`crate::event`] is model-checked over every interleaving
//! (`scripts/test.sh` runs those models). The region state (`region.rs`, `tree.rs`,
//! `own.rs`) uses it too, so a model runs on the real `Region` and its grants
//! (`region_loom_tests.rs`); the
//! rest of the crate holds process-wide statics, which loom cannot model.

#[cfg(budget_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};

#[cfg(not(budget_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// A mutex whose `lock` returns the guard directly on both backends.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(Inner<T>);

#[cfg(budget_loom)]
type Inner<T> = loom::sync::Mutex<T>;
#[cfg(not(budget_loom))]
type Inner<T> = std::sync::Mutex<T>;

/// The guard of [`Mutex`].
#[cfg(budget_loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
/// The guard of [`Mutex`].
#[cfg(not(budget_loom))]
pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

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
        return self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

/// A condition variable taking and returning the guard by value on both backends.
#[derive(Debug, Default)]
pub(crate) struct Condvar(CondInner);

#[cfg(budget_loom)]
type CondInner = loom::sync::Condvar;
#[cfg(not(budget_loom))]
type CondInner = std::sync::Condvar;

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
        return self
            .0
            .wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// Locks that are never model-checked (process-wide state, the registry's worker
/// queue, task bodies): always `std`'s, whatever the cfg.
///
/// Why not `parking_lot`: it keeps one process-wide table of parked threads, whose
/// entries live on the parked threads' stacks. In a child forked while a budget
/// worker was parked, that table still lists the parent's threads, whose stacks the
/// child reuses for new threads: a later unpark (a region that was open at the fork
/// dispatching a worker) walked it into freed memory (`tests/fork.rs`, about 1 run
/// in 30). `std`'s locks are futex words inside the lock itself: nothing outside
/// them points at another thread.
pub(crate) mod plain {
    use std::sync::PoisonError;

    /// `std::sync::Mutex` whose `lock` ignores poisoning: budget holds its locks only
    /// around code that does not panic, and a user panic never unwinds through one.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

    /// The guard of [`Mutex`].
    pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// `std::sync::Condvar` for [`Mutex`], ignoring poisoning likewise.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(std::sync::Condvar);

    impl Condvar {
        pub(crate) const fn new() -> Self {
            Condvar(std::sync::Condvar::new())
        }

        pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn wait_timeout<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> MutexGuard<'a, T> {
            self.0
                .wait_timeout(guard, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
    }
}
