//! The BLAS/LAPACK prototypes and calls used by the tests, the native benchmark and
//! the demo: `dgeqrf_` and `cblas_dgemm` with 32-bit integers, and [`Dgemm`] for
//! ILP64 builds too.

use std::ffi::c_int;

use crate::Lib;

/// `count` row-major n×n matrices, different from each other and well conditioned
/// (entries in 0.5..1.5): the inputs of the QR workloads of the demo, the adoption
/// benchmark and the processes example.
///
/// # Examples
///
/// ```
/// let mats = budget_testkit::blas::matrices(2, 4);
/// assert_eq!((mats.len(), mats[0].len()), (2, 16));
/// assert_ne!(mats[0], mats[1]);
/// ```
pub fn matrices(count: usize, n: usize) -> Vec<Vec<f64>> {
    (0..count)
        .map(|s| {
            (0..n * n)
                .map(|i| ((i * 7919 + s * 104729) % 1000) as f64 / 1000.0 + 0.5)
                .collect()
        })
        .collect()
}

/// LAPACK `dgeqrf_` (32-bit integers).
pub type Dgeqrf = unsafe extern "C" fn(
    *const c_int,
    *const c_int,
    *mut f64,
    *const c_int,
    *mut f64,
    *mut f64,
    *const c_int,
    *mut c_int,
);

/// CBLAS `cblas_dgemm` with integers of type `I` (`c_int` or `i64`).
pub type CdgemmOf<I> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    I,
    I,
    I,
    f64,
    *const f64,
    I,
    *const f64,
    I,
    f64,
    *mut f64,
    I,
);

/// CBLAS `cblas_dgemm` with 32-bit integers.
pub type Cdgemm = CdgemmOf<c_int>;

/// The QR factorisation (`dgeqrf_`) of a copy of the n×n matrix `src`.
///
/// # Panics
///
/// If LAPACK reports an error.
///
/// # Examples
///
/// ```no_run
/// let lib = budget_testkit::Lib::load("BUDGET_NATIVE_OPENBLAS_PTHREAD");
/// // SAFETY: the LAPACK prototype.
/// let dgeqrf = unsafe { lib.func::<budget_testkit::blas::Dgeqrf>("dgeqrf_") };
/// budget_testkit::blas::qr(dgeqrf, &vec![1.0; 64 * 64], 64);
/// ```
pub fn qr(dgeqrf: Dgeqrf, src: &[f64], n: usize) {
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

/// `c = a · b` for n×n row-major matrices, through `cblas_dgemm` with integers of
/// type `I`.
///
/// # Panics
///
/// If a buffer holds fewer than n×n values.
///
/// # Examples
///
/// ```no_run
/// let lib = budget_testkit::Lib::load("BUDGET_NATIVE_OPENBLAS_PTHREAD");
/// // SAFETY: the CBLAS prototype.
/// let dgemm = unsafe { lib.func::<budget_testkit::blas::Cdgemm>("cblas_dgemm") };
/// let (a, mut c) = (vec![1.0; 16], vec![0.0; 16]);
/// budget_testkit::blas::gemm(dgemm, &a, &a, &mut c, 4);
/// assert_eq!(c[0], 4.0);
/// ```
pub fn gemm<I: TryFrom<usize> + Copy>(
    dgemm: CdgemmOf<I>,
    a: &[f64],
    b: &[f64],
    c: &mut [f64],
    n: usize,
) {
    assert!(a.len() >= n * n && b.len() >= n * n && c.len() >= n * n);
    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    let n = I::try_from(n).unwrap_or_else(|_| panic!("n = {n} does not fit the BLAS integer"));
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

/// `cblas_dgemm` of an LP64 (32-bit integers) or ILP64 (64-bit) build.
///
/// # Examples
///
/// ```no_run
/// use budget_testkit::blas::Dgemm;
/// let lib = budget_testkit::Lib::load("BUDGET_NATIVE_SCIPY_OPENBLAS64");
/// let dgemm = Dgemm::of(&lib, true, "scipy_cblas_dgemm64_");
/// let (a, mut c) = (vec![1.0; 16], vec![0.0; 16]);
/// dgemm.run(4, &a, &a, &mut c);
/// ```
#[derive(Clone, Copy, Debug)]
pub enum Dgemm {
    /// 32-bit integers.
    Lp64(Cdgemm),
    /// 64-bit integers.
    Ilp64(CdgemmOf<i64>),
}

impl Dgemm {
    /// `cblas_dgemm` of `lib` under the symbol `name` (`cblas_dgemm`, or
    /// `scipy_cblas_dgemm64_` for NumPy's OpenBLAS).
    ///
    /// # Panics
    ///
    /// If the library has no such symbol.
    pub fn of(lib: &Lib, ilp64: bool, name: &str) -> Dgemm {
        // SAFETY: the CBLAS prototype, with the integer width of the build.
        unsafe {
            if ilp64 {
                Dgemm::Ilp64(lib.func(name))
            } else {
                Dgemm::Lp64(lib.func(name))
            }
        }
    }

    /// `c = a · b` for n×n row-major matrices.
    ///
    /// # Panics
    ///
    /// If a buffer holds fewer than n×n values.
    pub fn run(self, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
        match self {
            Dgemm::Lp64(f) => gemm(f, a, b, c, n),
            Dgemm::Ilp64(f) => gemm(f, a, b, c, n),
        }
    }
}
