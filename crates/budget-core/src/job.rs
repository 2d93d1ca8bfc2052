//! The unsafe pieces of running a task on another thread, with their contracts, in
//! one place (as rayon-core's `job.rs` and `unwind.rs`):
//!
//! - [`erase`]: a task body that borrows the caller's stack, made `'static` so it
//!   can sit in a region's queue. Sound only because the region waits for it.
//! - [`AbortOnUnwind`]: armed while such a body is queued; if anything unwinds past
//!   the frame that owns the borrowed data, the process aborts instead of letting a
//!   queued task read a dead frame.
//! - [`SendPtr`] and [`SlotPtr`]: raw pointers to the caller's stack that a queued
//!   body carries to the thread that runs it.
//! - [`discard`]: drops a panic payload that nobody will see, without letting a
//!   panic of its `Drop` escape (it would unwind out of a task, kill a worker, or end
//!   a region while its tasks still run).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::region::Region;

/// A queued task's body: it receives the region that runs it. Its real lifetime is
/// erased to `'static` by [`erase`].
pub(crate) type Body = Box<dyn FnOnce(&Region) + Send + 'static>;

/// Erases the lifetime of a task body.
///
/// # Safety
///
/// The caller must not let `'a` end before the task is done or its body was taken
/// and dropped: `Scope` waits for `pending == 0`, `join` and `for_each` wait for
/// `done` (or cancel the task) before they return, on unwind too (an
/// [`AbortOnUnwind`] covers the window where they could not).
pub(crate) unsafe fn erase<'a>(body: Box<dyn FnOnce(&Region) + Send + 'a>) -> Body {
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
unsafe impl<'a> Erasable<'a> for Box<dyn FnOnce(&Region) + Send + 'a> {
    type Static = Body;
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

/// A shared reference to a `Sync` value, carried to another thread as a raw pointer
/// (its lifetime is the region's, see [`erase`]).
pub(crate) struct SendPtr<T: Sync>(*const T);

impl<T: Sync> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Sync> Copy for SendPtr<T> {}
// SAFETY: `T: Sync`, so `&T` may be used from any thread; the pointer is only
// dereferenced while the pointee is alive (each use says why).
unsafe impl<T: Sync> Send for SendPtr<T> {}

impl<T: Sync> SendPtr<T> {
    pub(crate) fn of(value: &T) -> Self {
        SendPtr(value)
    }

    /// A method, so closures capture the whole `SendPtr` and not its raw field.
    pub(crate) fn get(&self) -> *const T {
        self.0
    }
}

/// An exclusive slot on the caller's stack that one task writes from another thread
/// (`join`'s second result).
pub(crate) struct SlotPtr<T: Send>(*mut T);

// SAFETY: `T: Send`, so a `T` may be written from another thread; the owner does not
// touch the slot until the writing task is done (see the use in `join`).
unsafe impl<T: Send> Send for SlotPtr<T> {}

impl<T: Send> SlotPtr<T> {
    pub(crate) fn of(slot: &mut T) -> Self {
        SlotPtr(slot)
    }

    /// Writes `value` into the slot.
    ///
    /// # Safety
    ///
    /// The slot is alive and nobody else reads or writes it meanwhile.
    pub(crate) unsafe fn write(self, value: T) {
        // SAFETY: the caller's contract.
        unsafe { *self.0 = value };
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
