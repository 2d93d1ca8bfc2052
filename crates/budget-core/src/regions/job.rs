//! The unsafe pieces of running a task on another thread, with their contracts, in
//! one place (as rayon-core's `job.rs` and `unwind.rs`):
//!
//! - [`StackJob`] and [`JobRef`]: `join`'s second half, kept on the joiner's stack
//!   and lent to the region's other threads by address (`lent.rs`): a queued or
//!   stolen `join` allocates nothing.
//! - [`erase`]: a heap task body (`spawn`, `for_each`'s helpers) that borrows the
//!   caller's stack, made `'static` so it can sit in a region's queue. Sound only
//!   because the region waits for it.
//! - [`Outliving`]: a reference carried where the borrow checker cannot follow it
//!   (to a task on another thread, to the root of a region tree), whose target
//!   outlives every holder by the region protocol.
//! - [`AbortOnUnwind`]: armed while such a body is queued; if anything unwinds past
//!   the frame that owns the borrowed data, the process aborts instead of letting a
//!   queued task read a dead frame.
//! - [`discard`]: drops a panic payload that nobody will see, without letting a
//!   panic of its `Drop` escape (it would unwind out of a task, kill a worker, or end
//!   a region while its tasks still run).

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// A queued task's body: it receives the state `C` of the region that runs it. Its
/// real lifetime is erased to `'static` by [`erase`].
pub(crate) type Body<C> = Box<dyn FnOnce(&C) + Send + 'static>;

/// Erases the lifetime of a task body.
///
/// # Safety
///
/// The caller must not let `'a` end before the task is done or its body was taken
/// and dropped: `Scope` waits for `pending == 0`, `join` and `for_each` wait for
/// `done` (or cancel the task) before they return, on unwind too (an
/// [`AbortOnUnwind`] covers the window where they could not).
pub(crate) unsafe fn erase<'a, C: 'static>(body: Box<dyn FnOnce(&C) + Send + 'a>) -> Body<C> {
    // SAFETY: the caller upholds the lifetime contract above.
    unsafe { erase_lifetime(body) }
}

/// A boxed closure whose only difference from `Static` is its lifetime `'a`: the
/// shapes the workspace erases, one `impl` each, so that a single `transmute` (in
/// [`erase_lifetime`]) serves them all.
///
/// # Safety
///
/// `Static` must be `Self` with `'a` replaced by `'static` (same layout).
pub(crate) unsafe trait Erasable<'a>: Sized {
    type Static: 'static;
}

// SAFETY: the same trait object, `'a` replaced by `'static`.
unsafe impl<'a, C: 'static> Erasable<'a> for Box<dyn FnOnce(&C) + Send + 'a> {
    type Static = Body<C>;
}

// SAFETY: as above.
unsafe impl<'a> Erasable<'a> for Box<dyn FnOnce() + Send + 'a> {
    type Static = Box<dyn FnOnce() + Send + 'static>;
}

/// The workspace's one lifetime-erasing `transmute`.
///
/// # Safety
///
/// Whatever `value` borrows must outlive every use of the result (each caller states
/// how it waits).
pub(crate) unsafe fn erase_lifetime<'a, T: Erasable<'a>>(value: T) -> T::Static {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<T::Static>()) };
    let value = std::mem::ManuallyDrop::new(value);
    // SAFETY: `Erasable` guarantees the same layout (only the lifetime differs), and
    // the `ManuallyDrop` gives up the original, so the box is owned once; the caller
    // upholds the lifetime contract.
    unsafe { std::mem::transmute_copy::<T, T::Static>(&value) }
}

/// Aborts the process if dropped during a panic: armed between queuing a task that
/// borrows the stack and making sure it is done, where unwinding would leave a
/// queued task pointing into a dead frame. Nothing in that window is expected to
/// panic (user closures run under `catch_unwind`, extra payloads go through
/// [`discard`]); this turns "impossible" into a clean abort instead of memory
/// unsafety. Disarm with `mem::forget`.
pub(crate) struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            abort("a panic escaped while a task borrowing the stack was queued");
        }
    }
}

/// Prints why and aborts the process, as rayon does when a panic escapes a job.
pub(crate) fn abort(why: &str) -> ! {
    eprintln!("budget: {why}; aborting");
    std::process::abort();
}

/// A shared reference whose target outlives every holder by the region protocol,
/// not by a lifetime the borrow checker can see: a task's scope and loop state
/// (the region waits for its tasks), the root of a region tree (open while any region
/// nested in it is). `Send` and `Sync` as `&T` is, for `T: Sync`.
pub(crate) struct Outliving<T: ?Sized>(*const T);

impl<T: ?Sized> Clone for Outliving<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for Outliving<T> {}
// SAFETY: an `Outliving<T>` is used only as a `&T` (`get`), which is `Send` when
// `T: Sync`.
unsafe impl<T: ?Sized + Sync> Send for Outliving<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for Outliving<T> {}

impl<T: ?Sized> Outliving<T> {
    /// Carries `target` beyond what its lifetime says.
    ///
    /// # Safety
    ///
    /// `target` stays alive, and is not mutated except through its own interior
    /// mutability, for as long as the result (or a copy) can be used: each caller
    /// says how the region protocol makes it so.
    #[inline]
    pub(crate) unsafe fn new(target: &T) -> Self {
        Outliving(target)
    }

    /// The target whose address is `addr` (a `context::Frame`'s), `None` for 0.
    ///
    /// # Safety
    ///
    /// A non-zero `addr` is the address of a live `T`, with `new`'s contract.
    #[inline]
    pub(crate) unsafe fn from_addr(addr: usize) -> Option<Self>
    where
        T: Sized,
    {
        (addr != 0).then_some(Outliving(addr as *const T))
    }

    /// The target.
    #[inline]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: alive for as long as `self` can be used (`new`'s contract).
        unsafe { &*self.0 }
    }
}

/// A job that another thread can run, by address: what [`StackJob::as_job_ref`]
/// lends. It carries no lifetime: the lender keeps the job alive (see there).
#[derive(Clone, Copy)]
pub(crate) struct JobRef {
    job: *const (),
    run: unsafe fn(*const ()),
}

// SAFETY: a `JobRef` is made only from a `StackJob` whose body and result are
// `Send` (`as_job_ref`'s bounds), and is run once (`run`'s contract).
unsafe impl Send for JobRef {}

impl JobRef {
    /// Whether the two name the same job.
    pub(crate) fn is(&self, other: &JobRef) -> bool {
        std::ptr::eq(self.job, other.job)
    }

    /// Runs the job on this thread, catching its panic into the job's result, and
    /// marks it done; after that the job may be gone.
    ///
    /// # Safety
    ///
    /// At most once per lent job, while its lender keeps it alive.
    pub(crate) unsafe fn run(self) {
        // SAFETY: the caller's contract.
        unsafe { (self.run)(self.job) }
    }
}

/// `join`'s second half, on the joiner's stack: its closure, then its result and a
/// `done` flag once another thread ran it. Lent by address ([`JobRef`]), so a queued
/// or stolen `join` allocates nothing.
pub(crate) struct StackJob<F, R> {
    body: UnsafeCell<Option<F>>,
    result: UnsafeCell<Option<thread::Result<R>>>,
    done: AtomicBool,
}

impl<F, R> StackJob<F, R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    pub(crate) fn new(body: F) -> Self {
        StackJob {
            body: UnsafeCell::new(Some(body)),
            result: UnsafeCell::new(None),
            done: AtomicBool::new(false),
        }
    }

    /// The job by address, for another thread to run.
    ///
    /// # Safety
    ///
    /// `self` is neither moved nor dropped before the reference is run to its end
    /// ([`done`](StackJob::done)) or known never to run (taken back from the lender's
    /// table); it is run at most once.
    pub(crate) unsafe fn as_job_ref(&self) -> JobRef {
        JobRef {
            job: (self as *const Self).cast(),
            run: Self::run_by_ref,
        }
    }

    /// # Safety
    ///
    /// `job` is a live `StackJob<F, R>` lent by `as_job_ref`, run once.
    unsafe fn run_by_ref(job: *const ()) {
        // SAFETY: the contract of `as_job_ref` and `JobRef::run`: alive, run once.
        let this = unsafe { &*job.cast::<Self>() };
        // SAFETY: only the one runner touches `body` and `result` until `done`; the
        // lender reads them only after it saw `done` (or took the job back instead).
        let body = unsafe { (*this.body.get()).take() }.expect("a lent job runs once");
        let outcome = catch_unwind(AssertUnwindSafe(body));
        // SAFETY: as above.
        unsafe { *this.result.get() = Some(outcome) };
        // SeqCst: the lender's wait reads it (`Event`'s "condition first"); the
        // result written above is published by it. The job may be gone after it.
        this.done.store(true, Ordering::SeqCst);
    }

    /// Whether another thread ran the job to its end.
    pub(crate) fn done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Runs the body on this thread: the job was taken back before anyone ran it.
    #[inline(always)]
    pub(crate) fn run_here(self) -> thread::Result<R> {
        let body = self
            .body
            .into_inner()
            .expect("a job taken back still has its body");
        catch_unwind(AssertUnwindSafe(body))
    }

    /// The outcome left by the thread that ran the job ([`done`](StackJob::done)).
    pub(crate) fn into_result(self) -> thread::Result<R> {
        self.result
            .into_inner()
            .expect("a job that is done left its outcome")
    }
}

/// Drops a panic payload that will not be resumed. If its `Drop` panics, that second
/// panic is caught here and its own payload leaked (`mem::forget`): dropping it could
/// panic again, and leaking a box is harmless next to unwinding out of a task.
pub(crate) fn discard(payload: Box<dyn Any + Send>) {
    if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(second);
    }
}

/// Resumes `first`, after discarding `extra` (see [`discard`]).
pub(crate) fn resume_first(first: Box<dyn Any + Send>, extra: Option<Box<dyn Any + Send>>) -> ! {
    if let Some(extra) = extra {
        discard(extra);
    }
    std::panic::resume_unwind(first)
}
