//! The native kernels of the demo, the benchmarks and the processes example: OpenBLAS
//! (pthreads) and an OpenMP C kernel, loaded at run time with `dlopen`, so that the
//! demo still runs (and says what to install) where they are missing.
//!
//! # Examples
//!
//! ```no_run
//! let blas = budget_testkit::kernels::Blas::load().expect("OpenBLAS (scripts/setup-native.sh)");
//! blas.set_threads(1);
//! let a = budget_testkit::blas::matrices(1, 64).remove(0);
//! blas.qr(&a, 64);
//! ```

use std::ffi::c_int;

/// What to do when OpenBLAS is missing.
pub const INSTALL_OPENBLAS: &str = "skipped: install libopenblas0-pthread \
     (apt-get install libopenblas0-pthread) or run scripts/setup-native.sh";
/// What to do when libgomp or a C compiler is missing.
pub const INSTALL_OPENMP: &str = "skipped: install gcc and libgomp1 \
     (apt-get install gcc libgomp1) or run scripts/setup.sh and scripts/setup-native.sh";

fn triple() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64-linux-gnu"
    } else {
        "x86_64-linux-gnu"
    }
}

use crate::blas::{self as ffi, Cdgemm, Dgeqrf};
use crate::Lib;

/// OpenBLAS's `dgeqrf_`, `cblas_dgemm` and thread-count functions.
pub struct Blas {
    dgeqrf: Dgeqrf,
    dgemm: Cdgemm,
    set: unsafe extern "C" fn(c_int),
    /// OpenBLAS's thread count when loaded (its default: all cores).
    pub default_threads: usize,
}

impl Blas {
    /// Loads OpenBLAS on pthreads, or says what to install.
    pub fn load() -> Result<Blas, String> {
        let fallback = format!("/usr/lib/{}/openblas-pthread/libopenblas.so.0", triple());
        let lib = crate::libs::lib_path_or("BUDGET_NATIVE_OPENBLAS_PTHREAD", &fallback)
            .and_then(|p| Lib::open(&p).ok())
            .ok_or_else(|| INSTALL_OPENBLAS.to_string())?;
        // SAFETY: the LAPACK / CBLAS / OpenBLAS prototypes declared above.
        let (dgeqrf, dgemm, set, get) = unsafe {
            (
                lib.try_func::<Dgeqrf>("dgeqrf_"),
                lib.try_func::<Cdgemm>("cblas_dgemm"),
                lib.try_func::<unsafe extern "C" fn(c_int)>("openblas_set_num_threads"),
                lib.try_func::<unsafe extern "C" fn() -> c_int>("openblas_get_num_threads"),
            )
        };
        match (dgeqrf, dgemm, set, get) {
            (Some(dgeqrf), Some(dgemm), Some(set), Some(get)) => Ok(Blas {
                dgeqrf,
                dgemm,
                set,
                // SAFETY: `int openblas_get_num_threads(void)`.
                default_threads: unsafe { get() }.max(1) as usize,
            }),
            _ => Err(INSTALL_OPENBLAS.to_string()),
        }
    }

    /// The QR factorisation (`dgeqrf`) of a copy of the n×n matrix `src`.
    pub fn qr(&self, src: &[f64], n: usize) {
        ffi::qr(self.dgeqrf, src, n);
    }

    /// `c = a · b` for n×n row-major matrices.
    pub fn gemm(&self, a: &[f64], b: &[f64], c: &mut [f64], n: usize) {
        ffi::gemm(self.dgemm, a, b, c, n);
    }

    /// Sets OpenBLAS's process-wide thread count; call it outside any BLAS call.
    pub fn set_threads(&self, n: usize) {
        // SAFETY: `void openblas_set_num_threads(int)`; the demo calls it from one
        // thread while no BLAS call runs, so no concurrent call can race with it.
        unsafe { (self.set)(n as c_int) };
    }
}

/// The OpenMP kernel: a parallel loop of `n` elements, ~25 µs single-threaded for 4096.
const KERNEL_C: &str = r#"
#include <math.h>
void kernel(double *x, int n) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        double v = x[i];
        for (int k = 0; k < 8; k++) v = sqrt(v * v + 1.0) * 0.5;
        x[i] = v;
    }
}
"#;

/// The OpenMP C kernel, built here with `cc -O2 -fopenmp`, and libgomp's
/// `omp_set_num_threads`.
pub struct Omp {
    kernel: unsafe extern "C" fn(*mut f64, c_int),
    set: unsafe extern "C" fn(c_int),
}

impl Omp {
    /// Builds and loads the kernel, or says what to install.
    pub fn load() -> Result<Omp, String> {
        let fail = || INSTALL_OPENMP.to_string();
        let gomp_fallback = format!("/usr/lib/{}/libgomp.so.1", triple());
        let gomp = crate::libs::lib_path_or("BUDGET_NATIVE_GOMP", &gomp_fallback)
            .and_then(|p| Lib::open(&p).ok())
            .ok_or_else(fail)?;
        let dir = std::env::temp_dir().join("budget-demo");
        std::fs::create_dir_all(&dir).map_err(|_| fail())?;
        let id = std::process::id();
        let src = dir.join(format!("kernel-{id}.c"));
        let so = dir.join(format!("libkernel_omp-{id}.so"));
        std::fs::write(&src, KERNEL_C).map_err(|_| fail())?;
        let built = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O2", "-fopenmp", "-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-lm")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let lib = built
            .then(|| Lib::open(&so).ok())
            .flatten()
            .ok_or_else(fail)?;
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(&so); // the loaded mapping stays valid
                                           // SAFETY: `void kernel(double *, int)` and `void omp_set_num_threads(int)`.
        let (kernel, set) = unsafe {
            (
                lib.try_func::<unsafe extern "C" fn(*mut f64, c_int)>("kernel"),
                gomp.try_func::<unsafe extern "C" fn(c_int)>("omp_set_num_threads"),
            )
        };
        Ok(Omp {
            kernel: kernel.ok_or_else(fail)?,
            set: set.ok_or_else(fail)?,
        })
    }

    /// Runs the kernel over `x`.
    pub fn call(&self, x: &mut [f64]) {
        // SAFETY: x holds x.len() doubles.
        unsafe { (self.kernel)(x.as_mut_ptr(), x.len() as c_int) };
    }

    /// Sets the calling thread's OpenMP thread count.
    pub fn set_threads(&self, n: usize) {
        // SAFETY: `omp_set_num_threads` sets the calling thread's ICV.
        unsafe { (self.set)(n as c_int) };
    }
}
