//! Thread counts for the duration of a call: [`limit`], its guard [`Limit`], and
//! [`NativeExt::native`] for budget regions.

use std::ffi::c_int;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::control::{Control, Entry};
use crate::stack::{self, Restore};
use crate::{fork, process_wide, scan, spread};

/// A process-wide call a [`Limit`] ends on drop (see the `process_wide` module).
struct ProcessWide {
    entry: Arc<Entry>,
    ticket: process_wide::Ticket,
}

/// Sets every loaded OpenMP/BLAS library's thread count to `n` until the returned guard
/// is dropped, then restores each exactly, also when the guard is dropped by a panic.
///
/// Use it for native calls outside any budget region (inside one, prefer
/// [`NativeExt::native`], which passes the region's width). `n` is clamped to at least
/// 1; it does not take tokens from the budget.
///
/// - OpenMP runtimes (libgomp, LLVM libomp, Intel libiomp5): `omp_set_num_threads(n)`
///   on the calling thread only; other threads keep their own counts. Where the runtime
///   has `kmp_set_blocktime`, the calling thread's blocktime is set to 0 (and left
///   there) so that idle OpenMP threads sleep instead of spinning on cores the budget
///   has handed to others. libgomp has no such call: start the process with
///   `OMP_WAIT_POLICY=passive` for the same effect.
/// - MKL: `mkl_set_num_threads_local(n)` on the calling thread.
/// - OpenBLAS on pthreads, BLIS, FlexiBLAS: one count for the process, changed under one
///   process-wide lock; while several calls are in flight, the count is the smallest
///   of their widths. See the crate's README for the protocol.
/// - OpenBLAS built on OpenMP reads its OpenMP runtime's per-thread count at each call
///   but keeps one global count, which calls with differing counts race on (a hang in
///   0.3.21): while a multi-threaded call of it is in flight, the calling thread's
///   OpenMP count is set to that call's count if `n` allows, else to 1; so OpenMP code
///   under the guard may run narrower than `n`, never wider.
///
/// No library is set above the count its own environment variables asked for at
/// start (`OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`, ... as Ray,
/// Spark and Dask's nanny set them per worker): each gets `min(n, cap)`. The counts
/// `budget run --static-env` set for programs that are not budget-enabled are no caps
/// ([`budget_core::user_thread_variable`]). `BUDGET_NATIVE_ENV_CAP=off` lifts the
/// caps. See `docs/clusters.md`.
///
/// With no such library loaded, this is a cheap no-op (a loader-generation check).
/// Libraries loaded after the guard was made are not affected by it.
///
/// The guard is not `Send`: per-thread counts must be restored on the thread that
/// set them.
///
/// # Blocking
///
/// Only on the process-wide lock, held for a few set calls.
///
/// # Examples
///
/// ```
/// {
///     let _one = budget_native::limit(1);
///     // ... call BLAS or OpenMP code here: it runs on this thread only ...
/// } // counts restored here
/// ```
pub fn limit(n: usize) -> Limit {
    limit_width(n, None)
}

/// [`limit`] for the loaded libraries that `select` accepts only (threadpoolctl's
/// `threadpool_limits(n, user_api="blas")` and its per-library limits); the others
/// keep their counts. `select` sees each library as [`libraries`](crate::libraries)
/// describes it.
///
/// # Examples
///
/// ```
/// use budget_native::{limit_where, Family};
///
/// // BLAS on one thread, OpenMP teams left as they are.
/// let _blas = limit_where(1, |lib| lib.family != Family::OpenMp);
/// ```
pub fn limit_where(n: usize, select: impl Fn(&crate::Library) -> bool) -> Limit {
    limit_width(n, Some(&|entry: &Entry| select(&entry.describe())))
}

/// [`limit`], [`limit_where`] and [`NativeExt::native`]: every library (that `select`
/// accepts) set to `width`.
fn limit_width(width: usize, select: Option<&dyn Fn(&Entry) -> bool>) -> Limit {
    let width = width.max(1);
    fork::register();
    let all = scan::entries();
    let entries: Vec<&Arc<Entry>> = all
        .iter()
        .filter(|e| select.is_none_or(|keep| keep(e)))
        .collect();
    // In a forked child, libgomp cannot fork its team: OpenMP code runs at 1.
    let omp_width = if fork::in_child() && all.iter().any(|e| e.is_libgomp()) {
        1
    } else {
        width
    };
    let frame = stack::push();
    let mut process_wide = Vec::new();
    // Per-thread settings first: a process-wide OpenBLAS on OpenMP may then narrow
    // the OpenMP count it runs at.
    for entry in entries.iter() {
        // Never wider than the environment asked of this library (see `envcap`).
        let omp_n =
            c_int::try_from(crate::envcap::capped(entry.family, omp_width)).unwrap_or(c_int::MAX);
        match entry.control {
            Control::OpenMp {
                get,
                set,
                set_blocktime,
                get_blocktime,
            } => {
                // SAFETY: `omp_get_max_threads`/`omp_set_num_threads` act on the
                // calling thread's ICVs and have no preconditions; the library stays
                // loaded (its handle is never closed).
                let prev = unsafe { get() };
                if prev != omp_n {
                    // SAFETY: as above.
                    unsafe { set(omp_n) };
                    stack::save(frame, Restore::OpenMp(set), prev);
                }
                if let (Some(set_bt), Some(get_bt)) = (set_blocktime, get_blocktime) {
                    // SAFETY: `kmp_get_blocktime`/`kmp_set_blocktime` act on the
                    // calling thread's team settings; no preconditions.
                    unsafe {
                        if get_bt() != 0 {
                            set_bt(0);
                        }
                    }
                }
            }
            Control::Mkl { set_local, .. } => {
                // SAFETY: `mkl_set_num_threads_local` sets the calling thread's count
                // and returns the previous one; no preconditions.
                let prev = unsafe { set_local(omp_n) };
                stack::save(frame, Restore::Mkl(set_local), prev);
            }
            _ => {}
        }
    }
    for entry in entries.iter() {
        // Never wider than the environment asked of this library (see `envcap`).
        let capped = |width| crate::envcap::capped(entry.family, width);
        match entry.control {
            Control::ProcessWideInt { .. } | Control::ProcessWideDim { .. } => {
                process_wide.push(ProcessWide {
                    entry: Arc::clone(entry),
                    ticket: process_wide::enter(entry, capped(width)),
                });
            }
            Control::OpenBlasOpenMp {
                omp_get, omp_set, ..
            } => {
                // SAFETY: as for `Control::OpenMp` (the runtime OpenBLAS links).
                stack::save(frame, Restore::OpenMp(omp_set), unsafe { omp_get() });
                let ticket = process_wide::enter(entry, capped(omp_width));
                // SAFETY: as above; the OpenMP count this call may run at.
                unsafe { omp_set(c_int::try_from(ticket.used).unwrap_or(c_int::MAX)) };
                process_wide.push(ProcessWide {
                    entry: Arc::clone(entry),
                    ticket,
                });
            }
            Control::OpenMp { .. } | Control::Mkl { .. } | Control::Fixed { .. } => {}
        }
    }
    Limit {
        width,
        frame,
        process_wide,
        _not_send: PhantomData,
    }
}

/// The guard of [`limit`]: restores every thread count it changed when dropped.
///
/// Guards may be dropped in any order. On each thread, a per-thread count is that of
/// the newest live guard: dropping an older guard changes nothing now (the newer one
/// will restore what the older one found), dropping the newest restores the count of
/// the next live guard, or the original. A process-wide count is the smallest width of
/// the live guards of every thread, and the original once none is left.
///
/// # Examples
///
/// ```
/// let guard = budget_native::limit(2);
/// assert_eq!(guard.width(), 2);
/// drop(guard); // restored
/// ```
#[must_use = "the thread counts are restored as soon as the guard is dropped"]
pub struct Limit {
    width: usize,
    /// This guard's frame on the thread's stack of per-thread settings.
    frame: u64,
    process_wide: Vec<ProcessWide>,
    /// Per-thread settings must be undone on the thread that made them.
    _not_send: PhantomData<*const ()>,
}

impl Limit {
    /// The thread count this guard set.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(budget_native::limit(0).width(), 1);
    /// ```
    pub fn width(&self) -> usize {
        self.width
    }

    /// How many library settings this guard changed and will restore (0 when nothing
    /// is loaded).
    ///
    /// # Examples
    ///
    /// ```
    /// let guard = budget_native::limit(1);
    /// println!("{} settings changed", guard.changed());
    /// ```
    pub fn changed(&self) -> usize {
        stack::saved(self.frame) + self.process_wide.len()
    }
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("width", &self.width)
            .field("changed", &self.changed())
            .finish()
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        while let Some(p) = self.process_wide.pop() {
            process_wide::exit(&p.entry, p.ticket);
        }
        // On the thread that pushed the frame: the guard is not `Send`.
        stack::pop(self.frame);
    }
}

/// Native calls sized by a budget region: the extension method on
/// [`budget_core::Scope`].
///
/// # Examples
///
/// ```
/// use budget_native::NativeExt;
///
/// let r = budget_core::scope(|s| {
///     s.native(|| {
///         // dgemm, dgeqrf, an OpenMP kernel...: sized to s.width() threads
///         42
///     })
/// });
/// assert_eq!(r, 42);
/// ```
pub trait NativeExt {
    /// Runs `f` with every loaded OpenMP/BLAS library's thread count set to this
    /// region's width ([`limit`] with `self.width()`), and restores the counts when `f`
    /// returns or panics (the panic continues with its original payload).
    ///
    /// Called from a task of the region (inside its `spawn`, `join` or `for_each`, or
    /// a region nested in it), where other threads of the region may be running, it
    /// sizes the call as the nested region that the task is:
    /// `scope_with(requested(), |inner| inner.native(f))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use budget_native::NativeExt;
    /// budget_core::scope_with(2, |s| s.native(|| assert!(s.width() <= 2)));
    /// ```
    fn native<R>(&self, f: impl FnOnce() -> R) -> R;
}

impl NativeExt for budget_core::Scope<'_> {
    fn native<R>(&self, f: impl FnOnce() -> R) -> R {
        // From a task of the region (other threads of it may run now), a nested
        // region: its own thread plus what is free (`ScopeHooks::in_body`).
        budget_core::integration::ScopeHooks::in_body(self, |s| {
            let width = s.width();
            // Beside a spinning pool's workers, a narrow call gets a CPU of its own
            // for the closure (the `spread` module); put back after the counts are
            // restored.
            let _pinned = spread::enter(width);
            let _guard = limit_width(width, None);
            f()
        })
    }
}
