//! What a library author writes: a function that parallelises internally with
//! budget instead of building its own rayon pool, called from an application's own
//! parallel loop.
//!
//! Run: `cargo run --release --example library_author`
//!
//! The library's `column_norms` asks for every core. Called alone, it gets them.
//! Called from inside the application's `par_iter`, which already holds every core,
//! its region is nested: it runs in place on the application's threads (width 1, no
//! new pool, no extra threads), so the machine never runs more busy threads than it
//! has cores.

use std::time::Instant;

use budget::prelude::*;
use rayon::prelude::*;

/// The library: Euclidean norm of each column of a row-major `rows × cols` matrix.
pub fn column_norms(matrix: &[f64], cols: usize) -> Vec<f64> {
    budget::scope(|s| {
        s.install(|| {
            (0..cols)
                .into_par_iter()
                .map(|c| {
                    matrix
                        .iter()
                        .skip(c)
                        .step_by(cols)
                        .map(|x| x * x)
                        .sum::<f64>()
                        .sqrt()
                })
                .collect()
        })
    })
}

fn main() {
    let (rows, cols) = (400, 300);
    let matrices: Vec<Vec<f64>> = (0..32)
        .map(|m| {
            (0..rows * cols)
                .map(|i| ((i * 7 + m) % 13) as f64)
                .collect()
        })
        .collect();

    // Alone: the library region gets every core.
    let alone = budget::scope(|s| s.width());
    let start = Instant::now();
    let norms = column_norms(&matrices[0], cols);
    println!(
        "library alone:        width {alone}, {} norms in {:.2?}",
        norms.len(),
        start.elapsed()
    );

    // Inside the application's own parallel loop: nested regions run in place.
    let start = Instant::now();
    let widths: Vec<usize> = budget::scope(|app| {
        app.install(|| {
            matrices
                .par_iter()
                .map(|m| {
                    let norms = column_norms(m, cols);
                    assert_eq!(norms.len(), cols);
                    budget::scope(|inner| inner.width())
                })
                .collect()
        })
    });
    println!(
        "inside app's par_iter: inner widths {:?}..., {} matrices in {:.2?}",
        &widths[..4.min(widths.len())],
        matrices.len(),
        start.elapsed()
    );
    println!("{}", budget::stats());
    println!(
        "rayon pools built: {} (reused across {} top-level regions)",
        budget::rayon::stats().pools_built,
        budget::rayon::stats().leases
    );
}
