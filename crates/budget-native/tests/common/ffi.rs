//! The one copy of what the native tests, the native benchmarks and the demo need to
//! load real libraries by path: where `scripts/setup-native.sh` put them, a `dlopen`
//! handle, and the BLAS prototypes. Included with `#[path]` by each of them.
#![allow(dead_code, unreachable_pub)]

use std::ffi::{c_int, c_void, CString};
use std::path::{Path, PathBuf};

/// `.cache/native/libs.env` of the workspace whose root is `root`.
pub(crate) fn libs_env(root: &Path) -> PathBuf {
    root.join(".cache/native/libs.env")
}

/// The path of the library named by `key` (e.g. `BUDGET_NATIVE_OPENBLAS_PTHREAD`):
/// from the environment, else from the `libs_env` file. `None` if neither has it.
pub(crate) fn lib_path(key: &str, libs_env: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(key) {
        return Some(PathBuf::from(p));
    }
    let text = std::fs::read_to_string(libs_env).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(PathBuf::from))
}

/// A `dlopen` handle (RTLD_NOW | RTLD_GLOBAL, so budget finds the library like any
/// other), never closed.
pub(crate) struct Lib(*mut c_void);

// SAFETY: a dlopen handle may be used from any thread (dlsym is thread-safe), and it
// is never closed.
unsafe impl Send for Lib {}
// SAFETY: as above.
unsafe impl Sync for Lib {}

impl Lib {
    /// Loads the library at `path`; the loader's message on failure.
    pub(crate) fn open(path: &Path) -> Result<Lib, String> {
        let c =
            CString::new(path.to_str().ok_or("path is not UTF-8")?).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; loading runs the library's constructors, as
        // linking it would.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a valid C string after a failed dlopen.
            let err = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) };
            return Err(format!(
                "dlopen {}: {}",
                path.display(),
                err.to_string_lossy()
            ));
        }
        Ok(Lib(handle))
    }

    /// The function `name`, typed as `F`; `None` if the library lacks it.
    ///
    /// # Safety
    ///
    /// `F` must be the function's C prototype (a function pointer type).
    pub(crate) unsafe fn func<F: Copy>(&self, name: &str) -> Option<F> {
        let c = CString::new(name).ok()?;
        // SAFETY: a live handle and a valid C string.
        let p = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        // SAFETY: the caller guarantees the prototype; fn pointers are pointer-sized.
        (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }
}

/// LAPACK `dgeqrf_` (32-bit integers).
pub(crate) type Dgeqrf = unsafe extern "C" fn(
    *const c_int,
    *const c_int,
    *mut f64,
    *const c_int,
    *mut f64,
    *mut f64,
    *const c_int,
    *mut c_int,
);

/// CBLAS `cblas_dgemm` with 32-bit integers.
pub(crate) type Cdgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f64,
    *const f64,
    c_int,
    *const f64,
    c_int,
    f64,
    *mut f64,
    c_int,
);

/// The QR factorisation (`dgeqrf_`) of a copy of the n×n matrix `src`.
pub(crate) fn qr(dgeqrf: Dgeqrf, src: &[f64], n: usize) {
    let mut a = src.to_vec();
    let mut tau = vec![0.0; n];
    let mut work = vec![0.0; n * 64];
    let (m, lwork, mut info) = (n as c_int, (n * 64) as c_int, 0);
    // SAFETY: a is n×n column-major with lda n; tau holds n; work holds lwork.
    unsafe {
        dgeqrf(
            &m,
            &m,
            a.as_mut_ptr(),
            &m,
            tau.as_mut_ptr(),
            work.as_mut_ptr(),
            &lwork,
            &mut info,
        )
    };
    assert_eq!(info, 0);
    std::hint::black_box(&a);
}

/// `c = a · b` for n×n row-major matrices, through `cblas_dgemm`.
pub(crate) fn gemm(dgemm: Cdgemm, a: &[f64], b: &[f64], c: &mut [f64], n: usize) {
    assert!(a.len() >= n * n && b.len() >= n * n && c.len() >= n * n);
    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    let n = n as c_int;
    // SAFETY: n×n buffers (checked above), row-major, leading dimension n.
    unsafe {
        dgemm(
            ROW_MAJOR,
            NO_TRANS,
            NO_TRANS,
            n,
            n,
            n,
            1.0,
            a.as_ptr(),
            n,
            b.as_ptr(),
            n,
            0.0,
            c.as_mut_ptr(),
            n,
        )
    };
}
