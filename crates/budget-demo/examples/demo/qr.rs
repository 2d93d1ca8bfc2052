//! The QR workload the scenarios and the worker processes share.

use budget::prelude::*;
use budget_testkit::kernels::Blas;
use rayon::prelude::*;

/// The side of the QR scenarios' matrices.
pub(crate) const QR_N: usize = 256;

/// The small-QR loop with a budget region at both levels: rayon outside, each QR in
/// `s.native` (so at width 1 while the loop holds every core).
pub(crate) fn budget_qr_loop(blas: &Blas, mats: &[Vec<f64>]) {
    budget::scope(|s| {
        s.install(|| {
            mats.par_iter()
                .for_each(|m| budget::scope(|i| i.native(|| blas.qr(m, QR_N))))
        })
    });
}
