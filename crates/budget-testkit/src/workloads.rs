//! The pure-Rust workload kernels of the demo and of `benches/rayon.rs`: spinning
//! work the optimiser cannot remove, a nested parallel sum, and weighted regions.
//!
//! # Examples
//!
//! ```
//! use budget_testkit::workloads::{inner_sum, inner_sum_seq};
//! assert_eq!(inner_sum(1000), inner_sum_seq(1000));
//! ```

use std::hint::black_box;

use rayon::prelude::*;

/// `iterations` steps of an LCG: work the optimiser cannot remove.
pub fn spin(iterations: u64) -> u64 {
    let mut x = iterations;
    for _ in 0..iterations {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}

/// The nested scenario's inner kernel: a parallel sum over `n` elements.
pub fn inner_sum(n: u64) -> u64 {
    (0..n)
        .into_par_iter()
        .map(|x| x.wrapping_mul(x) ^ 0x9e37)
        .reduce(|| 0, u64::wrapping_add)
}

/// [`inner_sum`] on the calling thread only (the "inner = 1" static setting).
pub fn inner_sum_seq(n: u64) -> u64 {
    (0..n)
        .map(|x| x.wrapping_mul(x) ^ 0x9e37)
        .fold(0, u64::wrapping_add)
}

/// Nested scenario: outer tasks; inner regions per task; elements per inner region.
pub const OUTER: usize = 8;
/// Inner regions per outer task at scale 1.
pub const INNER_REGIONS: usize = 20_000;
/// Elements per inner region.
pub const ELEMENTS: u64 = 2_000;

/// Imbalanced scenario: one task of weight 24 and eight of weight 1.
pub const WEIGHTS: [u64; 9] = [24, 1, 1, 1, 1, 1, 1, 1, 1];
/// Spin iterations per piece per unit of weight at scale 1 (about 2 ms per unit).
pub const UNIT_ITERATIONS: u64 = 8_000;

/// About `units` of work in 256 pieces, as an inner parallel region run by `inner`
/// (which opens the region and calls the closure inside it).
pub fn weighted_region(
    units: u64,
    per_unit: u64,
    inner: impl Fn(&(dyn Fn() -> u64 + Sync)) -> u64,
) -> u64 {
    inner(&|| {
        (0..256u64)
            .into_par_iter()
            .map(|piece| spin(units * per_unit + piece))
            .reduce(|| 0, u64::wrapping_add)
    })
}

/// The same work as [`weighted_region`], serially on the calling thread.
pub fn weighted_serial(units: u64, per_unit: u64) -> u64 {
    (0..256u64)
        .map(|piece| spin(units * per_unit + piece))
        .fold(0, u64::wrapping_add)
}
