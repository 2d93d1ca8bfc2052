//! Thread counts for the duration of a call: [`limit`], its guard [`Limit`], and
//! [`NativeExt::native`] for budget regions.

use std::ffi::c_int;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::control::{Control, Entry, SetInt, SetIntRet};
use crate::{pool, scan};

/// What a [`Limit`] undoes on drop, in reverse order.
enum Undo {
    /// `omp_set_num_threads(prev)` on this thread.
    OpenMp { set: SetInt, prev: c_int },
    /// `mkl_set_num_threads_local(prev)` on this thread (`0` = back to the global).
    Mkl { set_local: SetIntRet, prev: c_int },
    /// The process-wide protocol's exit (see the `pool` module).
    ProcessWide {
        entry: Arc<Entry>,
        width: usize,
        used: usize,
    },
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
/// - OpenBLAS built on OpenMP follows its OpenMP runtime's per-thread count.
///
/// No library is set above the count its own environment variables asked for at
/// start (`OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`, ... as Ray,
/// Spark and Dask's nanny set them per worker): each gets `min(n, cap)`.
/// `BUDGET_NATIVE_ENV_CAP=off` lifts the caps. See `docs/clusters.md`.
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
    let width = n.max(1);
    let entries = scan::entries();
    let mut undo = Vec::new();
    for entry in entries.iter() {
        // Never wider than the environment asked of this library (see `envcap`).
        let width = crate::envcap::capped(entry.family, width);
        let n = c_int::try_from(width).unwrap_or(c_int::MAX);
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
                if prev != n {
                    // SAFETY: as above.
                    unsafe { set(n) };
                    undo.push(Undo::OpenMp { set, prev });
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
                let prev = unsafe { set_local(n) };
                undo.push(Undo::Mkl { set_local, prev });
            }
            Control::ProcessWideInt { .. } | Control::ProcessWideDim { .. } => {
                let used = pool::enter(entry, width);
                undo.push(Undo::ProcessWide {
                    entry: Arc::clone(entry),
                    width,
                    used,
                });
            }
            Control::Fixed { .. } => {}
        }
    }
    Limit {
        width,
        undo,
        _not_send: PhantomData,
    }
}

/// The guard of [`limit`]: restores every thread count it changed when dropped.
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
    undo: Vec<Undo>,
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
        self.undo.len()
    }
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("width", &self.width)
            .field("changed", &self.undo.len())
            .finish()
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                // SAFETY: same functions as in `limit`, on the same thread (the guard
                // is not `Send`); restoring the value read there.
                Undo::OpenMp { set, prev } => unsafe { set(prev) },
                Undo::Mkl { set_local, prev } => {
                    // SAFETY: as above; `prev` is what `mkl_set_num_threads_local`
                    // returned, 0 meaning "no local setting".
                    unsafe { set_local(prev) };
                }
                Undo::ProcessWide { entry, width, used } => pool::exit(&entry, width, used),
            }
        }
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
        let _guard = limit(self.width());
        f()
    }
}

/// Tokens held now by the spin leases of process-wide pools (OpenBLAS's idle workers
/// busy-wait for a while after a wide call; budget counts them until they sleep).
///
/// # Examples
///
/// ```
/// assert_eq!(budget_native::spin_leased(), 0); // nothing loaded here
/// ```
pub fn spin_leased() -> usize {
    pool::leased()
}
